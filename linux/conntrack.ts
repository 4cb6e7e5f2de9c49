/**
 * A ctnetlink client (IPv4): dump, look up and delete the kernel's conntrack
 * entries over an `AF_NETLINK` / `NETLINK_NETFILTER` socket through Deno FFI
 * (no libnetfilter_conntrack, no `conntrack` process).
 *
 * ## Theory of operation
 *
 * ctnetlink is nfnetlink subsystem 1: a message's type is
 * `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_*`, its body an `nfgenmsg`
 * (family `AF_INET`, version 0, `res_id` 0) followed by attributes. A
 * conntrack is named by its original tuple:
 *
 * ```
 * CTA_TUPLE_ORIG (nested)
 *   CTA_TUPLE_IP (nested)     CTA_IP_V4_SRC be32, CTA_IP_V4_DST be32
 *   CTA_TUPLE_PROTO (nested)  CTA_PROTO_NUM u8,
 *                             CTA_PROTO_SRC_PORT be16, CTA_PROTO_DST_PORT be16
 *                          or CTA_PROTO_ICMP_ID be16, _TYPE u8, _CODE u8
 * ```
 *
 * - **dump**: one `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`. The kernel answers
 *   with datagrams of up to 32 KB, each holding many `IPCTNL_MSG_CT_NEW`
 *   messages, and fills the next datagram only when the previous one has
 *   been read, until `NLMSG_DONE`. One receive buffer is reused, each entry
 *   is decoded straight from it and handed to the callback, so a table of
 *   any size costs one buffer. The dump is not a snapshot: entries created
 *   or deleted meanwhile may or may not be seen.
 * - **get**: `IPCTNL_MSG_CT_GET` without `NLM_F_DUMP` and with the tuple; the
 *   answer is one `IPCTNL_MSG_CT_NEW`, or `ENOENT`.
 * - **delete**: `IPCTNL_MSG_CT_DELETE` with the tuple. Up to
 *   {@link DELETE_CHUNK} messages are concatenated in one datagram (the
 *   kernel handles each message of a datagram in turn, inside `send`). Only
 *   the last of a chunk asks for an acknowledgement (`NLM_F_ACK`): errors
 *   come back for the failed ones anyway, and the last one's answer proves
 *   that all earlier ones were handled. `ENOENT` (already gone) counts as
 *   "not deleted", any other error is thrown after the whole list was tried.
 *   A delete without a tuple would flush the whole table; the encoder never
 *   writes one.
 *
 * Byte order: netlink and attribute headers are host order, every CTA value
 * is big endian. Nested attributes carry `NLA_F_NESTED`.
 *
 * Addresses in {@linkcode CtTuple} are host-order u32 numbers (10.0.0.1 is
 * `0x0a000001`), ports host order.
 *
 * The socket is linux/netlink.ts's {@linkcode NetlinkSocket}: every call
 * blocks until the kernel has answered (a receive timeout guards against a
 * missing answer). Calls must not be nested: do not call `get` or `delete`
 * from a dump callback; collect and act afterwards.
 *
 * Requires `--allow-ffi` and CAP_NET_ADMIN in the network namespace.
 *
 * @module
 */

import { AF_INET, ENOENT, HOST_LITTLE_ENDIAN as LE, OsError } from "./libc.ts";
import {
  align4 as align4_,
  attrLen as attrLen_,
  attrType as attrType_,
  msgLen,
  NETLINK_NETFILTER,
  NetlinkError,
  NetlinkParseError,
  NetlinkSocket,
  Nfgen,
  NFNL_SUBSYS_CTNETLINK,
  nfnlMessage,
  nfnlType,
  Nla,
  NlBuilder,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_REQUEST,
  Nlmsg,
  NLMSG_DONE,
  NLMSG_ERROR,
  parseError,
} from "./netlink.ts";
import { formatIPv4 } from "../src/wire/addr.ts";
import { protoName } from "../src/wire/meta.ts";

export { NFNL_SUBSYS_CTNETLINK };

// ---------------------------------------------------------------------------
// Protocol constants (linux/netfilter/nfnetlink_conntrack.h); the netlink
// framing is linux/netlink.ts's.
// ---------------------------------------------------------------------------

/** `IPCTNL_MSG_CT_NEW`: create (and the type of every entry the kernel sends). */
export const IPCTNL_MSG_CT_NEW = 0;
/** `IPCTNL_MSG_CT_GET`: look up one entry, or dump with `NLM_F_DUMP`. */
export const IPCTNL_MSG_CT_GET = 1;
/** `IPCTNL_MSG_CT_DELETE`: delete by tuple. */
export const IPCTNL_MSG_CT_DELETE = 2;
/** Full netlink message types: `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_*`. */
export const CtMsgType = {
  NEW: nfnlType(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW),
  GET: nfnlType(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET),
  DELETE: nfnlType(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE),
} as const;

/** `enum ctattr_type`: top-level attributes of a conntrack message. */
export const CTA = {
  TUPLE_ORIG: 1,
  TUPLE_REPLY: 2,
  /** be32, `IPS_*` bits ({@linkcode CtStatus}). */
  STATUS: 3,
  PROTOINFO: 4,
  HELP: 5,
  NAT_SRC: 6,
  /** be32 seconds left. */
  TIMEOUT: 7,
  /** be32 */
  MARK: 8,
  COUNTERS_ORIG: 9,
  COUNTERS_REPLY: 10,
  USE: 11,
  /** be32, the kernel's id of the entry. */
  ID: 12,
  NAT_DST: 13,
  TUPLE_MASTER: 14,
  SEQ_ADJ_ORIG: 15,
  SEQ_ADJ_REPLY: 16,
  SECMARK: 17,
  /** be16 */
  ZONE: 18,
  SECCTX: 19,
  TIMESTAMP: 20,
  MARK_MASK: 21,
  LABELS: 22,
  LABELS_MASK: 23,
  SYNPROXY: 24,
  FILTER: 25,
  STATUS_MASK: 26,
} as const;

/** `enum ctattr_tuple` */
export const CTA_TUPLE = { IP: 1, PROTO: 2, ZONE: 3 } as const;
/** `enum ctattr_ip` */
export const CTA_IP = { V4_SRC: 1, V4_DST: 2, V6_SRC: 3, V6_DST: 4 } as const;
/** `enum ctattr_l4proto` */
export const CTA_PROTO = {
  NUM: 1,
  SRC_PORT: 2,
  DST_PORT: 3,
  ICMP_ID: 4,
  ICMP_TYPE: 5,
  ICMP_CODE: 6,
} as const;
/** `enum ctattr_protoinfo` */
export const CTA_PROTOINFO = { TCP: 1, DCCP: 2, SCTP: 3 } as const;
/** `enum ctattr_protoinfo_tcp` */
export const CTA_PROTOINFO_TCP = {
  STATE: 1,
  WSCALE_ORIGINAL: 2,
  WSCALE_REPLY: 3,
  FLAGS_ORIGINAL: 4,
  FLAGS_REPLY: 5,
} as const;
/** `enum ctattr_counters`: be64 (or be32 for the `32` variants of old kernels). */
export const CTA_COUNTERS = { PACKETS: 1, BYTES: 2, PACKETS32: 3, BYTES32: 4 } as const;

/** `enum tcp_conntrack`: the value of `CTA_PROTOINFO_TCP_STATE`. */
export const TcpState = {
  NONE: 0,
  SYN_SENT: 1,
  SYN_RECV: 2,
  ESTABLISHED: 3,
  FIN_WAIT: 4,
  CLOSE_WAIT: 5,
  LAST_ACK: 6,
  TIME_WAIT: 7,
  CLOSE: 8,
  SYN_SENT2: 9,
} as const;

/** `enum ip_conntrack_status` bits of {@linkcode CtEntry.status}. */
export const CtStatus = {
  EXPECTED: 1 << 0,
  SEEN_REPLY: 1 << 1,
  ASSURED: 1 << 2,
  CONFIRMED: 1 << 3,
  SRC_NAT: 1 << 4,
  DST_NAT: 1 << 5,
  SEQ_ADJUST: 1 << 6,
  SRC_NAT_DONE: 1 << 7,
  DST_NAT_DONE: 1 << 8,
  DYING: 1 << 9,
  FIXED_TIMEOUT: 1 << 10,
  TEMPLATE: 1 << 11,
  UNTRACKED: 1 << 12,
  HELPER: 1 << 13,
  OFFLOAD: 1 << 14,
  HW_OFFLOAD: 1 << 15,
} as const;

/** IP protocol numbers that have special tuple encodings. */
const IPPROTO_ICMP = 1;
/** ICMP echo request: the type of an ICMP echo conntrack's original tuple. */
export const ICMP_ECHO = 8;
/** ICMP echo reply: the type of its reply tuple. */
export const ICMP_ECHOREPLY = 0;

/** Deletes per datagram (each message is 72 bytes; 512 are 36 KB). */
export const DELETE_CHUNK = 512;

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/**
 * One direction of a conntrack. Addresses are host-order u32 numbers, ports
 * host order. ICMP: `sport` is the echo id, `dport` 0, and `icmpType` /
 * `icmpCode` are set in decoded tuples; when encoding an ICMP tuple they
 * default to echo request (8) and 0, which is what an original tuple of a
 * ping holds.
 */
export interface CtTuple {
  /** IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...). */
  proto: number;
  src: number;
  dst: number;
  sport: number;
  dport: number;
  /** ICMP only. */
  icmpType?: number;
  /** ICMP only. */
  icmpCode?: number;
}

/** One conntrack entry as the kernel reports it. */
export interface CtEntry {
  orig: CtTuple;
  reply: CtTuple;
  /** `CTA_ID`: the kernel's id, unique among live entries. */
  id: number;
  /** `CTA_STATUS`: {@linkcode CtStatus} bits. */
  status: number;
  /** `CTA_MARK` (0 when absent). */
  mark: number;
  /** `CTA_TIMEOUT`: seconds left. */
  timeout: number;
  /** `CTA_ZONE` (0 when absent). */
  zone: number;
  /** `CTA_PROTOINFO_TCP_STATE` ({@linkcode TcpState}); TCP only. */
  tcpState?: number;
  /**
   * `CTA_COUNTERS_*`: 0 when accounting is off
   * (`net.netfilter.nf_conntrack_acct`, per namespace, read when the entry
   * was created).
   */
  packetsOrig: number;
  bytesOrig: number;
  packetsReply: number;
  bytesReply: number;
}

/** A message the kernel sent that does not decode; thrown by {@linkcode decodeCtEntry}. */
export class CtDecodeError extends Error {
  /** @param what what is wrong, with the offset where it was found. */
  constructor(what: string) {
    super(`Malformed conntrack message: ${what}`);
    this.name = "CtDecodeError";
  }
}

/** A request the kernel refused; carries the error number (`errno`). */
export class CtError extends NetlinkError {
  /** Entries deleted before the error was thrown ({@linkcode Conntrack.delete} only). */
  readonly deleted: number;
  /** @param what what was attempted; @param err the error number; @param deleted see above. */
  constructor(what: string, err: number, deleted = 0) {
    super(what, err);
    this.name = "CtError";
    this.deleted = deleted;
  }
}

// ---------------------------------------------------------------------------
// Encoding (pure)
// ---------------------------------------------------------------------------

/** Bytes of one get/delete request: header, nfgenmsg, the tuple. */
export function ctRequestSize(t: CtTuple): number {
  // nlmsghdr 16 + nfgenmsg 4 + ORIG 4 + IP (4 + 8 + 8) + PROTO (4 + NUM 8 + two or three 8s)
  return t.proto === IPPROTO_ICMP ? 80 : 72;
}

function checkTuple(t: CtTuple): void {
  const ok = Number.isInteger(t.proto) && t.proto >= 0 && t.proto <= 255 &&
    Number.isInteger(t.src) && t.src >= 0 && t.src <= 0xffffffff &&
    Number.isInteger(t.dst) && t.dst >= 0 && t.dst <= 0xffffffff &&
    Number.isInteger(t.sport) && t.sport >= 0 && t.sport <= 0xffff &&
    Number.isInteger(t.dport) && t.dport >= 0 && t.dport <= 0xffff;
  if (!ok) throw new RangeError(`Not a valid IPv4 conntrack tuple: ${JSON.stringify(t)}`);
}

/**
 * Appends one ctnetlink request carrying `orig` as `CTA_TUPLE_ORIG` to `b`.
 * `type` is a {@linkcode CtMsgType}; `flags` the netlink flags
 * (`NLM_F_REQUEST` is added). The sequence number is left 0: the socket
 * numbers messages when it sends them.
 *
 * @throws {RangeError} for a tuple with out-of-range fields.
 */
export function appendCtRequest(b: NlBuilder, type: number, flags: number, orig: CtTuple): void {
  checkTuple(orig);
  b.begin(type, flags | NLM_F_REQUEST).nfgen(AF_INET, 0);
  appendTuple(b, CTA.TUPLE_ORIG, orig);
  b.end();
}

/** Appends a nested tuple attribute (IPv4 addresses, then the protocol part). */
function appendTuple(b: NlBuilder, attr: number, t: CtTuple): void {
  b.nest(attr);
  b.nest(CTA_TUPLE.IP).be32(CTA_IP.V4_SRC, t.src).be32(CTA_IP.V4_DST, t.dst).endNest();
  b.nest(CTA_TUPLE.PROTO).u8(CTA_PROTO.NUM, t.proto);
  if (t.proto === IPPROTO_ICMP) {
    b.be16(CTA_PROTO.ICMP_ID, t.sport)
      .u8(CTA_PROTO.ICMP_TYPE, t.icmpType ?? ICMP_ECHO)
      .u8(CTA_PROTO.ICMP_CODE, t.icmpCode ?? 0);
  } else {
    b.be16(CTA_PROTO.SRC_PORT, t.sport).be16(CTA_PROTO.DST_PORT, t.dport);
  }
  b.endNest();
  b.endNest();
}

/**
 * One get or delete request as a new array (see {@linkcode appendCtRequest});
 * `seq` is written into the header (for tests and captures).
 */
export function encodeCtRequest(type: number, flags: number, orig: CtTuple, seq = 0): Uint8Array {
  const b = new NlBuilder(ctRequestSize(orig));
  appendCtRequest(b, type, flags, orig);
  const m = b.finish();
  new DataView(m.buffer).setUint32(Nlmsg.SEQ, seq >>> 0, LE);
  return m;
}

/**
 * The request that dumps the IPv4 table: `IPCTNL_MSG_CT_GET` with
 * `NLM_F_DUMP`, family `AF_INET` (the kernel then skips other families).
 */
export function encodeCtDumpRequest(seq = 0): Uint8Array {
  const m = nfnlMessage(CtMsgType.GET, NLM_F_REQUEST | NLM_F_DUMP, AF_INET, 0);
  new DataView(m.buffer).setUint32(Nlmsg.SEQ, seq >>> 0, LE);
  return m;
}

// ---------------------------------------------------------------------------
// Decoding (pure)
// ---------------------------------------------------------------------------

/**
 * Decodes one `IPCTNL_MSG_CT_NEW` message: `msg` holds the whole netlink
 * message from its header. Returns null for an entry of another family
 * (IPv6) or a message of another type. Unknown attributes are ignored.
 *
 * @throws {CtDecodeError} when lengths are inconsistent or the tuples are
 * missing or incomplete.
 */
export function decodeCtEntry(msg: Uint8Array): CtEntry | null {
  const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  if (msg.length < Nlmsg.SIZE + Nfgen.SIZE) {
    throw new CtDecodeError(`${msg.length} bytes is shorter than the headers`);
  }
  const len = dv.getUint32(Nlmsg.LEN, LE);
  if (len < Nlmsg.SIZE + Nfgen.SIZE || len > msg.length) {
    throw new CtDecodeError(`length field ${len} does not fit the ${msg.length} bytes given`);
  }
  return decodeAt(dv, 0, len);
}

/** What a conntrack event message says happened (`NFNLGRP_CONNTRACK_*`, linux/ct_events.ts). */
export type CtEventKind = "new" | "update" | "destroy";

/**
 * Decodes one event message a socket subscribed to the conntrack groups
 * receives: `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE` (a new entry), without
 * it (an update: state, timeout, mark), `IPCTNL_MSG_CT_DELETE` (the entry
 * is gone). `dv[off, off + len)` is the whole message from its header.
 * Null for another message type or family.
 *
 * @throws {CtDecodeError} as {@linkcode decodeCtEntry}.
 */
export function decodeCtEvent(
  dv: DataView,
  off: number,
  len: number,
): { kind: CtEventKind; entry: CtEntry } | null {
  const type = dv.getUint16(off + Nlmsg.TYPE, LE);
  if (type !== CtMsgType.NEW && type !== CtMsgType.DELETE) return null;
  if (len < ATTRS_AT) throw new CtDecodeError(`message of ${len} bytes`);
  if (dv.getUint8(off + Nlmsg.SIZE + Nfgen.FAMILY) !== AF_INET) return null;
  let entry: CtEntry;
  try {
    entry = decodeAttrs(dv, off + ATTRS_AT, off + len);
  } catch (e) {
    throw e instanceof NetlinkParseError ? new CtDecodeError(e.message) : e;
  }
  const kind: CtEventKind = type === CtMsgType.DELETE
    ? "destroy"
    : (dv.getUint16(off + Nlmsg.FLAGS, LE) & NLM_F_CREATE) !== 0
    ? "new"
    : "update";
  return { kind, entry };
}

/**
 * Appends one timeout update (`IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE`,
 * the original tuple and `CTA_TIMEOUT`): the entry keeps everything but
 * its timeout, and the kernel reports the change as an update event, which
 * conntrackd replicates (docs/ha.md, "Replicas kept fresh").
 */
export function appendCtTimeout(
  b: NlBuilder,
  flags: number,
  orig: CtTuple,
  timeout: number,
): void {
  checkTuple(orig);
  if (!Number.isInteger(timeout) || timeout < 1 || timeout > 0x7fffffff) {
    throw new RangeError(`Not a conntrack timeout: ${timeout}`);
  }
  b.begin(CtMsgType.NEW, flags | NLM_F_REQUEST).nfgen(AF_INET, 0);
  appendTuple(b, CTA.TUPLE_ORIG, orig);
  b.be32(CTA.TIMEOUT, timeout);
  b.end();
}

// Module-local names for what the per-entry walks below use: V8 checks an
// imported binding for initialisation at every use, a local const it does not.
const align4 = align4_;
const attrLen = attrLen_;
const attrType = attrType_;
/** Header sizes as module-local numbers, for the per-entry walks below. */
const ATTRS_AT = Nlmsg.SIZE + Nfgen.SIZE;
const NLA_HDRLEN = Nla.SIZE;

/**
 * Decodes the message at `off` of length `len` (already checked to fit in `dv`).
 *
 * @throws {CtDecodeError} for a malformed message (the framing's
 * {@linkcode NetlinkParseError} included).
 */
function decodeAt(dv: DataView, off: number, len: number): CtEntry | null {
  if (dv.getUint16(off + Nlmsg.TYPE, LE) !== CtMsgType.NEW) return null;
  if (len < ATTRS_AT) throw new CtDecodeError(`message of ${len} bytes`);
  if (dv.getUint8(off + Nlmsg.SIZE + Nfgen.FAMILY) !== AF_INET) return null;
  try {
    return decodeAttrs(dv, off + ATTRS_AT, off + len);
  } catch (e) {
    throw e instanceof NetlinkParseError ? new CtDecodeError(e.message) : e;
  }
}

/** The entry whose attributes are `dv[start, end)`. */
function decodeAttrs(dv: DataView, start: number, end: number): CtEntry {
  let orig: CtTuple | null = null;
  let reply: CtTuple | null = null;
  const e: CtEntry = {
    orig: EMPTY_TUPLE,
    reply: EMPTY_TUPLE,
    id: 0,
    status: 0,
    mark: 0,
    timeout: 0,
    zone: 0,
    packetsOrig: 0,
    bytesOrig: 0,
    packetsReply: 0,
    bytesReply: 0,
  };
  for (let a = start, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
    const v = a + NLA_HDRLEN;
    const vend = a + len;
    switch (attrType(dv, a)) {
      case CTA.TUPLE_ORIG:
        orig = decodeTuple(dv, v, vend, "CTA_TUPLE_ORIG");
        break;
      case CTA.TUPLE_REPLY:
        reply = decodeTuple(dv, v, vend, "CTA_TUPLE_REPLY");
        break;
      case CTA.STATUS:
      case CTA.TIMEOUT:
      case CTA.MARK:
      case CTA.ID: {
        const [field, name] = BE32_ATTRS[attrType(dv, a) as keyof typeof BE32_ATTRS];
        e[field] = be32(dv, v, vend, name);
        break;
      }
      case CTA.ZONE:
        if (vend - v < 2) throw new CtDecodeError("CTA_ZONE shorter than 2 bytes");
        e.zone = dv.getUint16(v, false);
        break;
      case CTA.COUNTERS_ORIG:
        [e.packetsOrig, e.bytesOrig] = decodeCounters(dv, v, vend, "CTA_COUNTERS_ORIG");
        break;
      case CTA.COUNTERS_REPLY:
        [e.packetsReply, e.bytesReply] = decodeCounters(dv, v, vend, "CTA_COUNTERS_REPLY");
        break;
      case CTA.PROTOINFO: {
        const s = decodeTcpState(dv, v, vend);
        if (s >= 0) e.tcpState = s;
        break;
      }
    }
  }
  if (orig === null) throw new CtDecodeError("no CTA_TUPLE_ORIG");
  if (reply === null) throw new CtDecodeError("no CTA_TUPLE_REPLY");
  e.orig = orig;
  e.reply = reply;
  return e;
}

/** The entry's plain be32 attributes: the field each fills and its name in errors. */
const BE32_ATTRS = {
  [CTA.STATUS]: ["status", "CTA_STATUS"],
  [CTA.TIMEOUT]: ["timeout", "CTA_TIMEOUT"],
  [CTA.MARK]: ["mark", "CTA_MARK"],
  [CTA.ID]: ["id", "CTA_ID"],
} as const satisfies Record<number, readonly [keyof CtEntry, string]>;

const EMPTY_TUPLE: CtTuple = Object.freeze({ proto: 0, src: 0, dst: 0, sport: 0, dport: 0 });

/** The be32 value at `dv[v, vend)`; `what` names it in an error. */
function be32(dv: DataView, v: number, vend: number, what: string): number {
  if (vend - v < 4) throw new CtDecodeError(`${what} shorter than 4 bytes`);
  return dv.getUint32(v, false);
}

/** A be64 (or be32) counter as a number (exact below 2^53). */
function counter(dv: DataView, v: number, vend: number, what: string): number {
  if (vend - v >= 8) return dv.getUint32(v, false) * 0x1_0000_0000 + dv.getUint32(v + 4, false);
  return be32(dv, v, vend, what);
}

/** `CTA_COUNTERS_*` in `dv[start, end)`: packets and bytes. */
function decodeCounters(dv: DataView, start: number, end: number, what: string): [number, number] {
  let packets = 0;
  let bytes = 0;
  for (let a = start, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
    const t = attrType(dv, a);
    if (t === CTA_COUNTERS.PACKETS || t === CTA_COUNTERS.PACKETS32) {
      packets = counter(dv, a + NLA_HDRLEN, a + len, `${what} packets`);
    } else if (t === CTA_COUNTERS.BYTES || t === CTA_COUNTERS.BYTES32) {
      bytes = counter(dv, a + NLA_HDRLEN, a + len, `${what} bytes`);
    }
  }
  return [packets, bytes];
}

/** `CTA_PROTOINFO { CTA_PROTOINFO_TCP { CTA_PROTOINFO_TCP_STATE } }` in `dv[start, end)`, or -1. */
function decodeTcpState(dv: DataView, start: number, end: number): number {
  for (let a = start, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
    if (attrType(dv, a) !== CTA_PROTOINFO.TCP) continue;
    const tend = a + len;
    for (let b = a + NLA_HDRLEN, blen = 0; (blen = attrLen(dv, b, tend)) !== 0; b += align4(blen)) {
      if (attrType(dv, b) !== CTA_PROTOINFO_TCP.STATE) continue;
      if (blen < NLA_HDRLEN + 1) throw new CtDecodeError("empty CTA_PROTOINFO_TCP_STATE");
      return dv.getUint8(b + NLA_HDRLEN);
    }
  }
  return -1;
}

/** A tuple (`CTA_TUPLE_ORIG` or `_REPLY`) whose nested attributes are `dv[start, end)`. */
function decodeTuple(dv: DataView, start: number, end: number, what: string): CtTuple {
  let src = -1;
  let dst = -1;
  let proto = -1;
  let sport = 0;
  let dport = 0;
  let icmpType = -1;
  let icmpCode = -1;
  for (let a = start, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
    const t = attrType(dv, a);
    if (t !== CTA_TUPLE.IP && t !== CTA_TUPLE.PROTO) continue;
    const tend = a + len;
    for (let b = a + NLA_HDRLEN, blen = 0; (blen = attrLen(dv, b, tend)) !== 0; b += align4(blen)) {
      const bt = attrType(dv, b);
      const n = blen - NLA_HDRLEN;
      const v = b + NLA_HDRLEN;
      if (t === CTA_TUPLE.IP) {
        if (bt === CTA_IP.V4_SRC && n >= 4) src = dv.getUint32(v, false);
        else if (bt === CTA_IP.V4_DST && n >= 4) dst = dv.getUint32(v, false);
      } else if (n >= 1) {
        if (bt === CTA_PROTO.NUM) proto = dv.getUint8(v);
        else if (bt === CTA_PROTO.SRC_PORT && n >= 2) sport = dv.getUint16(v, false);
        else if (bt === CTA_PROTO.DST_PORT && n >= 2) dport = dv.getUint16(v, false);
        else if (bt === CTA_PROTO.ICMP_ID && n >= 2) sport = dv.getUint16(v, false);
        else if (bt === CTA_PROTO.ICMP_TYPE) icmpType = dv.getUint8(v);
        else if (bt === CTA_PROTO.ICMP_CODE) icmpCode = dv.getUint8(v);
      }
    }
  }
  if (src < 0 || dst < 0) throw new CtDecodeError(`${what} without IPv4 addresses`);
  if (proto < 0) throw new CtDecodeError(`${what} without CTA_PROTO_NUM`);
  const tuple: CtTuple = { proto, src, dst, sport, dport };
  if (icmpType >= 0) tuple.icmpType = icmpType;
  if (icmpCode >= 0) tuple.icmpCode = icmpCode;
  return tuple;
}

/** What {@linkcode decodeCtDatagram} found besides entries. */
export interface DatagramResult {
  /** Entries handed to the callback. */
  entries: number;
  /** `IPCTNL_MSG_CT_NEW` messages that did not decode (skipped). */
  malformed: number;
  /** The first decode error's text, when `malformed > 0`. */
  firstMalformed: string;
  /** `NLMSG_DONE` of sequence `seq` was seen: the dump is complete. */
  done: boolean;
  /**
   * The error number of an `NLMSG_ERROR` for `seq` (0 for an
   * acknowledgement), or -1 when none was seen.
   */
  error: number;
  /** A message had `NLM_F_DUMP_INTR`: the table changed under the dump. */
  interrupted: boolean;
  /** The framing broke (a message length past the end): the rest was skipped. */
  broken: boolean;
}

/**
 * Walks the netlink messages of one received datagram, `buf[0..n)`, and
 * calls `onEntry` for each IPv4 conntrack entry whose sequence number is
 * `seq` (messages of other sequences, left over from an abandoned request,
 * are ignored). Malformed entries are counted and skipped; a broken framing
 * ends the walk. Never throws except what `onEntry` throws.
 */
export function decodeCtDatagram(
  buf: Uint8Array,
  n: number,
  seq: number,
  onEntry: (e: CtEntry) => void,
): DatagramResult {
  const dv = new DataView(buf.buffer, buf.byteOffset, Math.min(n, buf.length));
  const r: DatagramResult = {
    entries: 0,
    malformed: 0,
    firstMalformed: "",
    done: false,
    error: -1,
    interrupted: false,
    broken: false,
  };
  const end = dv.byteLength;
  for (let off = 0, len = 0;; off += align4(len)) {
    try {
      len = msgLen(dv, off, end);
    } catch (e) {
      if (!(e instanceof NetlinkParseError)) throw e;
      r.broken = true;
      break;
    }
    if (len === 0) break;
    const type = dv.getUint16(off + Nlmsg.TYPE, LE);
    const mseq = dv.getUint32(off + Nlmsg.SEQ, LE);
    if (type === NLMSG_ERROR) {
      // struct nlmsgerr: int error, then the request's header (or a short answer).
      const m = { type, flags: 0, seq: mseq, off: off + Nlmsg.SIZE, len: len - Nlmsg.SIZE };
      const a = parseError(dv, m);
      if (a !== null) {
        if (a.seq === seq) r.error = a.errno;
      } else if (mseq === seq && m.len >= 4) {
        r.error = -dv.getInt32(m.off, LE);
      }
    } else if (mseq === seq) {
      if (dv.getUint16(off + Nlmsg.FLAGS, LE) & NLM_F_DUMP_INTR) r.interrupted = true;
      if (type === NLMSG_DONE) {
        r.done = true;
      } else if (type === CtMsgType.NEW) {
        let e: CtEntry | null = null;
        try {
          e = decodeAt(dv, off, len);
        } catch (err) {
          if (!(err instanceof CtDecodeError)) throw err;
          if (r.malformed++ === 0) r.firstMalformed = err.message;
        }
        if (e !== null) {
          r.entries++;
          onEntry(e);
        }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/** Options of {@linkcode Conntrack.open}. */
export interface ConntrackOptions {
  /**
   * Milliseconds to wait for each answer of the kernel before giving up.
   * @default {10000}
   */
  timeoutMs?: number;
}

/** Counters of one client. */
export interface ConntrackStats {
  /** Entry messages that did not decode and were skipped, over all dumps. */
  malformed: number;
  /** The first such decode error. */
  lastMalformed: string;
}

/** A ctnetlink socket for the current network namespace. */
export class Conntrack {
  readonly #nl: NetlinkSocket;
  /** Counters (see {@linkcode ConntrackStats}). */
  readonly stats: ConntrackStats = { malformed: 0, lastMalformed: "" };

  private constructor(nl: NetlinkSocket) {
    this.#nl = nl;
  }

  /**
   * Opens a `NETLINK_NETFILTER` socket in the caller's network namespace.
   * Requires `--allow-ffi`; the requests need CAP_NET_ADMIN there.
   *
   * @throws {OsError} when the socket cannot be opened.
   */
  static open(opts: ConntrackOptions = {}): Conntrack {
    return new Conntrack(
      NetlinkSocket.open(NETLINK_NETFILTER, { timeoutMs: opts.timeoutMs ?? 10000 }),
    );
  }

  /**
   * Dumps the IPv4 conntrack table, calling `onEntry` once per entry as the
   * kernel's datagrams arrive (no copy of the table is kept). Returns the
   * number of entries. Malformed entries are skipped and counted in
   * {@linkcode stats}. If `onEntry` throws, the rest of the dump is still
   * read and discarded (a netlink socket cannot start another dump while one
   * is unfinished) and the first exception is rethrown.
   *
   * @throws {NetlinkError} when the kernel refuses the dump (EPERM without
   * CAP_NET_ADMIN); {@linkcode OsError} when the socket fails or times out.
   */
  dump(onEntry: (e: CtEntry) => void): number {
    let count = 0;
    let thrown: { e: unknown } | null = null;
    this.#nl.dump(
      encodeCtDumpRequest(),
      (type, dv, off, len) => {
        if (type !== CtMsgType.NEW) return;
        let e: CtEntry | null;
        try {
          e = decodeAt(dv, off - Nlmsg.SIZE, len + Nlmsg.SIZE);
        } catch (err) {
          if (!(err instanceof CtDecodeError)) throw err;
          if (this.stats.malformed++ === 0) this.stats.lastMalformed = err.message;
          return;
        }
        if (e === null) return;
        count++;
        if (thrown !== null) return;
        try {
          onEntry(e);
        } catch (err) {
          thrown = { e: err };
        }
      },
      "conntrack dump",
    );
    if (thrown !== null) throw (thrown as { e: unknown }).e;
    return count;
  }

  /**
   * The entry whose original tuple is `orig`, or null when there is none.
   *
   * @throws {NetlinkError} for any refusal but ENOENT; {@linkcode CtDecodeError}
   * when the answer does not decode.
   */
  get(orig: CtTuple): CtEntry | null {
    let found: CtEntry | null = null;
    try {
      this.#nl.query(
        encodeCtRequest(CtMsgType.GET, 0, orig),
        (type, dv, off, len) => {
          if (type === CtMsgType.NEW) found = decodeAt(dv, off - Nlmsg.SIZE, len + Nlmsg.SIZE);
        },
        `conntrack get ${formatTuple(orig)}`,
      );
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === ENOENT) return null;
      throw e;
    }
    return found;
  }

  /**
   * Deletes the entries with these original tuples, {@link DELETE_CHUNK}
   * requests per datagram. Tuples with no entry (ENOENT) are skipped.
   * Returns how many entries were deleted.
   *
   * @throws {RangeError} for a malformed tuple, before anything is sent.
   * @throws {CtError} after every tuple was tried, when the kernel refused
   * one for another reason than ENOENT; its `deleted` is the count.
   */
  delete(origs: readonly CtTuple[]): number {
    for (const t of origs) checkTuple(t);
    return this.#perEntry(
      origs,
      80,
      "conntrack delete",
      (b, t, flags) => appendCtRequest(b, CtMsgType.DELETE, flags, t),
      (t) => `conntrack delete ${formatTuple(t)}`,
    );
  }

  /**
   * Sets the timeout of each entry named by its original tuple
   * ({@linkcode appendCtTimeout}), {@link DELETE_CHUNK} per datagram.
   * Entries gone meanwhile (ENOENT) are skipped. Returns how many were
   * updated.
   *
   * @throws {CtError} after every entry was tried, when the kernel refused
   * one for another reason than ENOENT.
   */
  setTimeouts(entries: readonly { orig: CtTuple; timeout: number }[]): number {
    return this.#perEntry(
      entries,
      88,
      "conntrack timeout update",
      (b, e, flags) => appendCtTimeout(b, flags, e.orig, e.timeout),
      (e) => `conntrack update ${formatTuple(e.orig)}`,
    );
  }

  /**
   * One request per item, {@link DELETE_CHUNK} per datagram; counts the
   * items the kernel did (an entry gone meanwhile, ENOENT, is skipped).
   * Only the last message of a datagram asks for an acknowledgement:
   * failures are answered anyway, and its answer comes after the others.
   *
   * @param size bytes one request takes, to size the builder.
   * @param label names the request in a socket error.
   * @param what names an item in the kernel's refusal.
   * @throws {CtError} after every item was tried, for the first refusal
   *   other than ENOENT; its `deleted` is the count done.
   */
  #perEntry<T>(
    items: readonly T[],
    size: number,
    label: string,
    append: (b: NlBuilder, item: T, flags: number) => void,
    what: (item: T) => string,
  ): number {
    let done = 0;
    let firstErr: { what: string; err: number } | null = null;
    const b = new NlBuilder(Math.min(items.length, DELETE_CHUNK) * size);
    for (let i = 0; i < items.length; i += DELETE_CHUNK) {
      const n = Math.min(DELETE_CHUNK, items.length - i);
      for (let j = 0; j < n; j++) append(b, items[i + j]!, j === n - 1 ? NLM_F_ACK : 0);
      const answers = this.#nl.requestAll([b.finish()], label);
      for (let j = 0; j < n; j++) {
        const err = answers[j]!.errno;
        if (err <= 0) done++; // 0: acknowledged; -1: no answer, which means success
        else if (err !== ENOENT && firstErr === null) firstErr = { what: what(items[i + j]!), err };
      }
    }
    if (firstErr !== null) {
      const f = firstErr as { what: string; err: number };
      throw new CtError(f.what, f.err, done);
    }
    return done;
  }

  /** Closes the socket. Idempotent. */
  close(): void {
    this.#nl.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `udp 10.0.0.1:1000 -> 10.0.0.2:53`, for messages. */
export function formatTuple(t: CtTuple): string {
  const ip = formatIPv4;
  const known = protoName(t.proto);
  const name = known === String(t.proto) ? `proto ${t.proto}` : known;
  if (t.proto === IPPROTO_ICMP) {
    return `${name} ${ip(t.src)} -> ${ip(t.dst)} id ${t.sport} type ${t.icmpType ?? ICMP_ECHO}`;
  }
  return `${name} ${ip(t.src)}:${t.sport} -> ${ip(t.dst)}:${t.dport}`;
}

// Re-exported for callers that catch errors of this module.
export { NetlinkError, OsError };
