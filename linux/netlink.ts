/**
 * A small `AF_NETLINK` socket for control operations (request/acknowledge,
 * batched transactions, dumps), spoken over Deno FFI, plus a message builder
 * and an attribute parser. Shared by the nf_tables client
 * (`linux/nftables.ts`) and the ctnetlink client.
 *
 * ## Theory of operation
 *
 * The kernel handles a request sent to a netlink socket inside the `send(2)`
 * call itself: when `send` returns, every acknowledgement or error answer of
 * that datagram is already queued on the socket. A dump is different: the
 * kernel fills the first part at once and the rest each time user space
 * reads. So:
 *
 * - {@linkcode NetlinkSocket.requestAll} gives each message a sequence
 *   number, sends all of them in ONE datagram (a nfnetlink batch must arrive
 *   as one buffer: the kernel refuses a batch cut in two), then reads the
 *   answers until every message that asked for an acknowledgement
 *   (`NLM_F_ACK`) has one. An error answer for a message that did not ask
 *   for one (a batch header the kernel rejected, say) ends the wait once
 *   nothing more is queued. Reads are blocking with a receive timeout
 *   (`SO_RCVTIMEO`), so a kernel that never answers cannot hang the process;
 *   it costs nothing in the normal case, where the answers are queued already.
 * - {@linkcode NetlinkSocket.dump} sends one `NLM_F_DUMP` request and reads
 *   until `NLMSG_DONE`; {@linkcode NetlinkSocket.query} sends one request
 *   and reads its reply messages until its acknowledgement.
 *
 * These calls block the calling thread (and so Deno's event loop) for as
 * long as the kernel works: that is meant for short control operations, not
 * for a packet path.
 *
 * The socket asks for capped acknowledgements (`NETLINK_CAP_ACK`: an error
 * answer carries the failed request's header only) and extended
 * acknowledgements (`NETLINK_EXT_ACK`: the kernel's error text and the
 * offset of the offending attribute), which {@linkcode NetlinkError} reports.
 *
 * Byte order: the netlink message header and attribute headers are host
 * order; `nfgenmsg.res_id` and, in netfilter subsystems, every integer
 * attribute value are big endian (the `be*` methods).
 *
 * Requires `--allow-ffi` once a socket is opened; most netfilter requests
 * need root (CAP_NET_ADMIN). The builder and parser need nothing.
 *
 * @module
 */

import {
  AF_NETLINK,
  EAGAIN,
  EINTR,
  ENOBUFS,
  errno,
  ETIMEDOUT,
  HOST_LITTLE_ENDIAN,
  libc,
  MSG_DONTWAIT,
  MSG_TRUNC,
  OsError,
  OwnedFd,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_RCVTIMEO,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SOCK_CLOEXEC,
  SOCK_RAW,
  SOL_SOCKET,
  strerror,
} from "./libc.ts";

// The walks below run per packet and per conntrack entry: they read these
// module-local numbers, which cost less there than an imported or exported
// binding (each read of one of those is checked for initialisation).
const LE = HOST_LITTLE_ENDIAN;
const NLMSG_HDRLEN = 16;
const NLA_HDRLEN = 4;
const NLA_TYPE_BITS = 0x3fff;

// Protocols (linux/netlink.h).
/** `NETLINK_NETFILTER`: nfnetlink (nf_tables, ctnetlink, queue, log...). */
export const NETLINK_NETFILTER = 12;

// Message header flags (linux/netlink.h).
/** It is a request message (set on everything user space sends). */
export const NLM_F_REQUEST = 0x1;
/** Multipart message (a dump reply), terminated by `NLMSG_DONE`. */
export const NLM_F_MULTI = 0x2;
/** Ask for an acknowledgement (an `NLMSG_ERROR` with error 0) on success. */
export const NLM_F_ACK = 0x4;
/** Echo the request back (used by `nft --echo`). */
export const NLM_F_ECHO = 0x8;
/** In a dump reply: the dump was inconsistent (the object changed meanwhile). */
export const NLM_F_DUMP_INTR = 0x10;
/** GET modifier: the whole table (`NLM_F_ROOT | NLM_F_MATCH`). */
export const NLM_F_DUMP = 0x300;
/** NEW modifier: replace an existing object. */
export const NLM_F_REPLACE = 0x100;
/** NEW modifier: fail with EEXIST when the object exists. */
export const NLM_F_EXCL = 0x200;
/** NEW modifier: create the object when it does not exist. */
export const NLM_F_CREATE = 0x400;
/** NEW modifier: add to the end of a list. */
export const NLM_F_APPEND = 0x800;
/** In an error answer: the request was capped (only its header is echoed). */
export const NLM_F_CAPPED = 0x100;
/** In an error answer: extended acknowledgement attributes follow. */
export const NLM_F_ACK_TLVS = 0x200;

// Control message types (linux/netlink.h).
/** Nothing; to be ignored. */
export const NLMSG_NOOP = 0x1;
/** Error or acknowledgement: `struct nlmsgerr` (int error, then the request's header). */
export const NLMSG_ERROR = 0x2;
/** End of a dump: an int error (0 or negative errno). */
export const NLMSG_DONE = 0x3;
/** Data lost. */
export const NLMSG_OVERRUN = 0x4;

// nfnetlink (linux/netfilter/nfnetlink.h).
/** Opens a batch (transaction); `res_id` names the subsystem. */
export const NFNL_MSG_BATCH_BEGIN = 0x10;
/** Closes (commits) a batch. */
export const NFNL_MSG_BATCH_END = 0x11;
/** `NFNL_BATCH_GENID` (be32) in a batch begin: abort with ERESTART unless the generation matches. */
export const NFNL_BATCH_GENID = 1;
/** ctnetlink: conntrack entries. */
export const NFNL_SUBSYS_CTNETLINK = 1;
/** ctnetlink expectations. */
export const NFNL_SUBSYS_CTNETLINK_EXP = 2;
/** nfnetlink_queue. */
export const NFNL_SUBSYS_QUEUE = 3;
/** nf_tables. */
export const NFNL_SUBSYS_NFTABLES = 10;
/** `NFNETLINK_V0`, the only nfgenmsg version. */
export const NFNETLINK_V0 = 0;
/** `AF_UNSPEC` / `NFPROTO_UNSPEC` */
export const NFPROTO_UNSPEC = 0;
/** `NFPROTO_IPV4` (family `ip` in nft). */
export const NFPROTO_IPV4 = 2;

// Attribute type bits (linux/netlink.h).
/** The attribute's value is a list of attributes. */
export const NLA_F_NESTED = 0x8000;
/** The attribute's value is in network byte order. */
export const NLA_F_NET_BYTEORDER = 0x4000;
/** The attribute type without the two flag bits. */
export const NLA_TYPE_MASK = NLA_TYPE_BITS;

/** `struct nlmsghdr` (host order): len u32, type u16, flags u16, seq u32, pid u32. */
export const Nlmsg = { LEN: 0, TYPE: 4, FLAGS: 6, SEQ: 8, PID: 12, SIZE: NLMSG_HDRLEN } as const;
/** `struct nfgenmsg`: family u8, version u8, res_id be16. */
export const Nfgen = { FAMILY: 0, VERSION: 1, RES_ID: 2, SIZE: 4 } as const;
/** `struct nlattr` (host order): len u16, type u16. */
export const Nla = { LEN: 0, TYPE: 2, SIZE: NLA_HDRLEN } as const;
/** The largest attribute: its length field is a u16. */
export const NLA_MAX_LEN = 0xffff;

const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const NLMSGERR_ATTR_MSG = 1;
const NLMSGERR_ATTR_OFFS = 2;
/** `struct sockaddr_nl`: family u16, pad u16, pid u32, groups u32. */
const SOCKADDR_NL_SIZE = 12;
/** Room for one read: dump parts are at most 32 KB, single messages at most 64 KB and a bit. */
const RX_SIZE = 256 * 1024;

/** Rounds up to the 4-byte alignment of netlink messages and attributes. */
export const align4 = (n: number): number => (n + 3) & ~3;

/** The nfnetlink message type of `msg` in subsystem `subsys`. */
export function nfnlType(subsys: number, msg: number): number {
  return ((subsys & 0xff) << 8) | (msg & 0xff);
}

/**
 * Writes a `struct nlmsghdr` at `off`: the message's total length (header
 * included), type, flags, sequence number and port id.
 */
export function putMsgHeader(
  dv: DataView,
  off: number,
  len: number,
  type: number,
  flags: number,
  seq = 0,
): void {
  dv.setUint32(off + Nlmsg.LEN, len, LE);
  dv.setUint16(off + Nlmsg.TYPE, type, LE);
  dv.setUint16(off + Nlmsg.FLAGS, flags, LE);
  dv.setUint32(off + Nlmsg.SEQ, seq, LE);
  dv.setUint32(off + Nlmsg.PID, 0, LE);
}

/** Writes a `struct nfgenmsg` at `off`: family, version 0, `res_id` big endian. */
export function putNfgen(dv: DataView, off: number, family: number, resId: number): void {
  dv.setUint8(off + Nfgen.FAMILY, family);
  dv.setUint8(off + Nfgen.VERSION, NFNETLINK_V0);
  dv.setUint16(off + Nfgen.RES_ID, resId, false);
}

/**
 * Writes a `struct nlattr` at `off`: `len` is the attribute's length with
 * its header, without padding.
 */
export function putAttrHeader(dv: DataView, off: number, len: number, type: number): void {
  dv.setUint16(off + Nla.LEN, len, LE);
  dv.setUint16(off + Nla.TYPE, type, LE);
}

/** The kernel refused a request (an `NLMSG_ERROR` answer with a non-zero error). */
export class NetlinkError extends Error {
  /** The positive errno (EEXIST, ENOENT...). */
  readonly errno: number;
  /** Index of the refused message among those sent (-1: not known). */
  readonly index: number;
  /** The refused message's type. */
  readonly msgType: number;
  /** The kernel's own explanation (extended ack), "" when none. */
  readonly detail: string;
  /** Byte offset of the offending attribute in the refused message (-1: none given). */
  readonly attrOffset: number;

  /**
   * @param what what was attempted; @param err positive errno; @param index
   * which message; @param msgType its type; @param detail the kernel's text;
   * @param attrOffset the offending attribute's offset.
   */
  constructor(
    what: string,
    err: number,
    index = -1,
    msgType = 0,
    detail = "",
    attrOffset = -1,
  ) {
    const which = index >= 0 ? ` (message ${index}, type 0x${msgType.toString(16)})` : "";
    const why = detail !== "" ? `: ${detail}` : "";
    super(`${what}${which}: ${errText(err)} (errno ${err})${why}`);
    this.name = "NetlinkError";
    this.errno = err;
    this.index = index;
    this.msgType = msgType;
    this.detail = detail;
    this.attrOffset = attrOffset;
  }
}

/** Malformed netlink data (a length that does not fit, a truncated header). */
export class NetlinkParseError extends Error {
  /** @param what what was wrong, and where. */
  constructor(what: string) {
    super(what);
    this.name = "NetlinkParseError";
  }
}

/** strerror when libc can be used, a bare number otherwise (no --allow-ffi). */
function errText(err: number): string {
  try {
    return strerror(err);
  } catch {
    return `error ${err}`;
  }
}

// ---------------------------------------------------------------------------
// Builder

/**
 * Builds one or more netlink messages into a growing buffer: a header, an
 * optional `nfgenmsg`, then attributes, each padded to 4 bytes, nests
 * included. Integer attribute values are big endian (`be*`) as netfilter
 * wants them, or host order (`u16`, `u32`).
 *
 * @example
 * ```ts ignore
 * const b = new NlBuilder();
 * b.begin(nfnlType(NFNL_SUBSYS_NFTABLES, 16), NLM_F_REQUEST | NLM_F_ACK).nfgen(NFPROTO_UNSPEC, 0);
 * const msg = b.end().finish();
 * ```
 */
export class NlBuilder {
  #buf: Uint8Array;
  #dv: DataView;
  #len = 0;
  /** Start of the open message, -1 when none. */
  #msg = -1;
  #nests: number[] = [];

  /** @param capacity initial bytes (grows as needed). */
  constructor(capacity = 4096) {
    this.#buf = new Uint8Array(Math.max(64, capacity));
    this.#dv = new DataView(this.#buf.buffer);
  }

  /** Bytes written so far (all messages). */
  get length(): number {
    return this.#len;
  }

  /** Bytes of the open message so far (0 when none is open). */
  get messageLength(): number {
    return this.#msg < 0 ? 0 : this.#len - this.#msg;
  }

  #room(n: number): void {
    const need = this.#len + n;
    if (need <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < need) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.#buf.subarray(0, this.#len));
    this.#buf = nb;
    this.#dv = new DataView(nb.buffer);
  }

  /** Starts a message of `type` with `flags` (seq and pid 0: the socket sets the seq). */
  begin(type: number, flags: number): this {
    if (this.#msg >= 0) throw new Error("NlBuilder.begin: the previous message is not ended");
    this.#room(Nlmsg.SIZE);
    this.#msg = this.#len;
    putMsgHeader(this.#dv, this.#len, 0, type, flags); // the length is written by end()
    this.#len += Nlmsg.SIZE;
    return this;
  }

  /** Appends a `struct nfgenmsg`: family, version 0, `res_id` big endian. */
  nfgen(family: number, resId = 0): this {
    this.#open("nfgen");
    this.#room(Nfgen.SIZE);
    putNfgen(this.#dv, this.#len, family, resId);
    this.#len += Nfgen.SIZE;
    return this;
  }

  /** Appends raw bytes to the message body (a fixed header of another family), padded to 4. */
  raw(bytes: Uint8Array): this {
    this.#open("raw");
    const n = align4(bytes.length);
    this.#room(n);
    this.#buf.set(bytes, this.#len);
    this.#buf.fill(0, this.#len + bytes.length, this.#len + n);
    this.#len += n;
    return this;
  }

  #open(what: string): void {
    if (this.#msg < 0) throw new Error(`NlBuilder.${what}: no message begun`);
  }

  /** Appends an attribute whose value is `bytes`. */
  bytes(type: number, bytes: Uint8Array): this {
    const off = this.#attr(type, bytes.length);
    this.#buf.set(bytes, off);
    return this;
  }

  /** Writes an attribute header for a value of `n` bytes; returns the value's offset. */
  #attr(type: number, n: number): number {
    this.#open("attribute");
    const total = Nla.SIZE + n;
    if (total > NLA_MAX_LEN) {
      throw new RangeError(`Netlink attribute ${type & NLA_TYPE_MASK} of ${n} bytes is too long`);
    }
    const padded = align4(total);
    this.#room(padded);
    const a = this.#len;
    putAttrHeader(this.#dv, a, total, type);
    this.#buf.fill(0, a + total, a + padded);
    this.#len += padded;
    return a + Nla.SIZE;
  }

  /** Appends a u8 attribute. */
  u8(type: number, v: number): this {
    this.#buf[this.#attr(type, 1)] = v;
    return this;
  }

  /** Appends a big-endian u16 attribute. */
  be16(type: number, v: number): this {
    this.#dv.setUint16(this.#attr(type, 2), v, false);
    return this;
  }

  /** Appends a big-endian u32 attribute. */
  be32(type: number, v: number): this {
    this.#dv.setUint32(this.#attr(type, 4), v >>> 0, false);
    return this;
  }

  /** Appends a big-endian u64 attribute. */
  be64(type: number, v: bigint): this {
    this.#dv.setBigUint64(this.#attr(type, 8), v, false);
    return this;
  }

  /** Appends a host-order u16 attribute. */
  u16(type: number, v: number): this {
    this.#dv.setUint16(this.#attr(type, 2), v, LE);
    return this;
  }

  /** Appends a host-order u32 attribute. */
  u32(type: number, v: number): this {
    this.#dv.setUint32(this.#attr(type, 4), v >>> 0, LE);
    return this;
  }

  /** Appends a NUL-terminated string attribute (UTF-8). */
  str(type: number, s: string): this {
    const enc = new TextEncoder().encode(s);
    const off = this.#attr(type, enc.length + 1);
    this.#buf.set(enc, off);
    this.#buf[off + enc.length] = 0;
    return this;
  }

  /** Opens a nested attribute (`NLA_F_NESTED` is added); close it with {@linkcode endNest}. */
  nest(type: number): this {
    this.#open("nest");
    this.#room(Nla.SIZE);
    this.#nests.push(this.#len);
    putAttrHeader(this.#dv, this.#len, 0, type | NLA_F_NESTED); // the length is written by endNest()
    this.#len += Nla.SIZE;
    return this;
  }

  /** Closes the innermost open nest, writing its length. */
  endNest(): this {
    const a = this.#nests.pop();
    if (a === undefined) throw new Error("NlBuilder.endNest: no nest is open");
    const len = this.#len - a;
    if (len > NLA_MAX_LEN) {
      throw new RangeError(`Nested netlink attribute of ${len} bytes exceeds ${NLA_MAX_LEN}`);
    }
    this.#dv.setUint16(a + Nla.LEN, len, LE);
    return this;
  }

  /** Bytes in the innermost open nest so far (its header included). */
  get nestLength(): number {
    const a = this.#nests.at(-1);
    return a === undefined ? 0 : this.#len - a;
  }

  /** Ends the open message, writing its length. Nests must be closed. */
  end(): this {
    this.#open("end");
    if (this.#nests.length > 0) throw new Error("NlBuilder.end: a nest is still open");
    this.#dv.setUint32(this.#msg + Nlmsg.LEN, this.#len - this.#msg, LE);
    this.#msg = -1;
    return this;
  }

  /** A copy of every message built; the builder is emptied for reuse. */
  finish(): Uint8Array {
    if (this.#msg >= 0) throw new Error("NlBuilder.finish: a message is not ended");
    const out = this.#buf.slice(0, this.#len);
    this.#len = 0;
    return out;
  }
}

/** A bare nfnetlink message: header, nfgenmsg, no attributes. */
export function nfnlMessage(type: number, flags: number, family: number, resId = 0): Uint8Array {
  return new NlBuilder(32).begin(type, flags).nfgen(family, resId).end().finish();
}

// ---------------------------------------------------------------------------
// Parser

/** One attribute found by {@linkcode attrs}: the value is `dv[off, off + len)`. */
export interface NlAttr {
  /** Type without flag bits. */
  type: number;
  /** `NLA_F_NESTED` was set. */
  nested: boolean;
  /** Offset of the value in the view. */
  off: number;
  /** Length of the value (header excluded, padding excluded). */
  len: number;
}

/**
 * The length of the attribute at `a` (header included, padding not), which
 * must end by `end`; 0 when fewer bytes than a header are left (padding:
 * the walk is over). The one check of attribute framing, as libmnl's
 * `mnl_attr_ok`; a walk without allocation reads:
 *
 * ```ts ignore
 * for (let a = off, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
 *   if (attrType(dv, a) === WANTED) value = dv.getUint32(a + Nla.SIZE, false);
 * }
 * ```
 *
 * @throws {NetlinkParseError} when the length is below the header or runs
 * past `end`.
 */
export function attrLen(dv: DataView, a: number, end: number): number {
  // nla_len is at offset 0.
  return a + NLA_HDRLEN > end ? 0 : fits(a, dv.getUint16(a, LE), end, NLA_HDRLEN, "attribute");
}

/** The type of the attribute at `a`, without the flag bits. */
export function attrType(dv: DataView, a: number): number {
  return dv.getUint16(a + 2, LE) & NLA_TYPE_BITS; // nla_type is at offset 2
}

/**
 * `len`, the length field of a message or attribute at `off` with a header
 * of `hdr` bytes, when it covers the header and ends by `end`.
 *
 * @throws {NetlinkParseError} otherwise.
 */
function fits(off: number, len: number, end: number, hdr: number, what: string): number {
  if (len < hdr || off + len > end) {
    throw new NetlinkParseError(`Netlink ${what} at ${off} has length ${len}, data ends at ${end}`);
  }
  return len;
}

/**
 * The attributes in `dv[off, end)`, in order, each as a new object (see
 * {@linkcode attrLen} for a walk without allocation). Stops at trailing
 * bytes too short for a header (padding).
 *
 * @throws {NetlinkParseError} when an attribute's length is below its header
 * or runs past `end`.
 */
export function* attrs(dv: DataView, off: number, end: number): Generator<NlAttr> {
  if (off < 0 || end > dv.byteLength || off > end) {
    throw new NetlinkParseError(`Attribute region ${off}-${end} is outside ${dv.byteLength} bytes`);
  }
  for (let a = off, len = 0; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
    const nested = (dv.getUint16(a + Nla.TYPE, LE) & NLA_F_NESTED) !== 0;
    yield { type: attrType(dv, a), nested, off: a + NLA_HDRLEN, len: len - NLA_HDRLEN };
  }
}

/**
 * The attributes of `dv[off, end)` indexed by type (types above `max` are
 * skipped; a repeated type keeps the last one).
 *
 * @throws {NetlinkParseError} on malformed data, as {@linkcode attrs}.
 */
export function attrTable(
  dv: DataView,
  off: number,
  end: number,
  max: number,
): (NlAttr | undefined)[] {
  const t: (NlAttr | undefined)[] = new Array(max + 1);
  for (const a of attrs(dv, off, end)) if (a.type <= max) t[a.type] = a;
  return t;
}

/** The attributes nested in `a`. */
export function nested(dv: DataView, a: NlAttr): Generator<NlAttr> {
  return attrs(dv, a.off, a.off + a.len);
}

function need(a: NlAttr, n: number, what: string): void {
  if (a.len < n) {
    throw new NetlinkParseError(
      `Netlink attribute ${a.type} has ${a.len} bytes, ${what} needs ${n}`,
    );
  }
}

/** The attribute's value as a u8. */
export function getU8(dv: DataView, a: NlAttr): number {
  need(a, 1, "u8");
  return dv.getUint8(a.off);
}

/** The attribute's value as a big-endian u16. */
export function getBe16(dv: DataView, a: NlAttr): number {
  need(a, 2, "be16");
  return dv.getUint16(a.off, false);
}

/** The attribute's value as a big-endian u32. */
export function getBe32(dv: DataView, a: NlAttr): number {
  need(a, 4, "be32");
  return dv.getUint32(a.off, false);
}

/** The attribute's value as a big-endian u64. */
export function getBe64(dv: DataView, a: NlAttr): bigint {
  need(a, 8, "be64");
  return dv.getBigUint64(a.off, false);
}

/** The attribute's value as a host-order u32. */
export function getU32(dv: DataView, a: NlAttr): number {
  need(a, 4, "u32");
  return dv.getUint32(a.off, LE);
}

/** A copy of the attribute's value. */
export function getBytes(dv: DataView, a: NlAttr): Uint8Array {
  return new Uint8Array(dv.buffer, dv.byteOffset + a.off, a.len).slice();
}

/** The attribute's value as a string, up to its first NUL. */
export function getStr(dv: DataView, a: NlAttr): string {
  const b = new Uint8Array(dv.buffer, dv.byteOffset + a.off, a.len);
  const z = b.indexOf(0);
  return new TextDecoder().decode(z < 0 ? b : b.subarray(0, z));
}

/** One message found by {@linkcode messages}: its payload is `dv[off, off + len)`. */
export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  /** Offset of the payload (after the header). */
  off: number;
  /** Payload length. */
  len: number;
}

/**
 * {@linkcode attrLen} for the netlink message at `off` (libmnl's
 * `mnl_nlmsg_ok`): its length, header included; the next message starts at
 * `off + align4(len)`.
 */
export function msgLen(dv: DataView, off: number, end: number): number {
  // nlmsg_len is at offset 0.
  return off + NLMSG_HDRLEN > end
    ? 0
    : fits(off, dv.getUint32(off, LE), end, NLMSG_HDRLEN, "message");
}

/**
 * The netlink messages in `dv[0, n)`, each as a new object (see
 * {@linkcode msgLen} for a walk without allocation).
 *
 * @throws {NetlinkParseError} when a message length is below the header or
 * runs past `n`.
 */
export function* messages(dv: DataView, n: number): Generator<NlMsg> {
  for (let off = 0, len = 0; (len = msgLen(dv, off, n)) !== 0; off += align4(len)) {
    yield {
      type: dv.getUint16(off + Nlmsg.TYPE, LE),
      flags: dv.getUint16(off + Nlmsg.FLAGS, LE),
      seq: dv.getUint32(off + Nlmsg.SEQ, LE),
      off: off + NLMSG_HDRLEN,
      len: len - NLMSG_HDRLEN,
    };
  }
}

/** A decoded `NLMSG_ERROR` payload. */
export interface NlErrorAnswer {
  /** Positive errno, 0 for an acknowledgement. */
  errno: number;
  /** Sequence number of the request answered. */
  seq: number;
  /** Extended ack text, "" when none. */
  detail: string;
  /** Extended ack attribute offset, -1 when none. */
  attrOffset: number;
}

/**
 * Decodes the payload of an `NLMSG_ERROR` message (`m` from
 * {@linkcode messages}); null when it is too short.
 */
export function parseError(dv: DataView, m: NlMsg): NlErrorAnswer | null {
  if (m.len < 4 + Nlmsg.SIZE) return null;
  const err = -dv.getInt32(m.off, LE);
  const seq = dv.getUint32(m.off + 4 + Nlmsg.SEQ, LE);
  let detail = "";
  let attrOffset = -1;
  if ((m.flags & NLM_F_ACK_TLVS) !== 0) {
    // Capped: only the request's header follows; otherwise the whole request.
    const reqLen = (m.flags & NLM_F_CAPPED) !== 0
      ? Nlmsg.SIZE
      : dv.getUint32(m.off + 4 + Nlmsg.LEN, LE);
    const start = m.off + 4 + align4(reqLen);
    if (start <= m.off + m.len) {
      try {
        for (const a of attrs(dv, start, m.off + m.len)) {
          if (a.type === NLMSGERR_ATTR_MSG) detail = getStr(dv, a);
          else if (a.type === NLMSGERR_ATTR_OFFS && a.len >= 4) attrOffset = getU32(dv, a);
        }
      } catch (e) {
        if (!(e instanceof NetlinkParseError)) throw e;
      }
    }
  }
  return { errno: err, seq, detail, attrOffset };
}

// ---------------------------------------------------------------------------
// Socket

/** Options of {@linkcode NetlinkSocket.open}. */
export interface NetlinkSocketOptions {
  /**
   * Longest wait for the kernel's answer to one read, in milliseconds
   * (`SO_RCVTIMEO`).
   * @default {5000}
   */
  timeoutMs?: number;
  /**
   * Receive buffer in bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`):
   * room for many acknowledgements and dump parts.
   * @default {8388608}
   */
  rcvbuf?: number;
  /**
   * Initial send buffer in bytes; grown on demand for a larger datagram
   * (one batch is one datagram).
   * @default {4194304}
   */
  sndbuf?: number;
  /**
   * The socket also receives messages nobody asked for (a netfilter queue's
   * packets): a receive buffer that overflowed with those (`ENOBUFS`) is
   * not an error while waiting for answers; an answer lost with them shows
   * as a timeout.
   * @default {false}
   */
  unsolicited?: boolean;
}

/** Handles one message of a dump or query reply; `dv` is reused by the next read. */
export type MessageHandler = (type: number, dv: DataView, off: number, len: number) => void;

/** One message to send: where it lies in its buffer, and what it asked for. */
interface Sent {
  type: number;
  flags: number;
  /** Answer: undefined until one arrived. */
  answer?: NlErrorAnswer;
}

/**
 * A blocking netlink socket for control requests. Not thread safe; one
 * operation at a time.
 *
 * @example
 * ```ts ignore
 * using nl = NetlinkSocket.open();
 * nl.request([msg]);           // throws NetlinkError when refused
 * nl.dump(get, (type, dv, off, len) => {  });
 * ```
 */
export class NetlinkSocket extends OwnedFd {
  /** The protocol (`NETLINK_NETFILTER`...). */
  readonly protocol: number;
  #seq: number;
  #sndbuf: number;
  readonly #timeoutMs: number;
  readonly #unsolicited: boolean;
  readonly #rx = new Uint8Array(RX_SIZE);
  readonly #rxDv = new DataView(this.#rx.buffer);

  private constructor(
    fd: number,
    protocol: number,
    sndbuf: number,
    timeoutMs: number,
    unsolicited: boolean,
  ) {
    super(fd);
    this.protocol = protocol;
    this.#sndbuf = sndbuf;
    this.#timeoutMs = timeoutMs;
    this.#unsolicited = unsolicited;
    // Distinct sequence numbers per socket make stray answers recognisable.
    this.#seq = (Math.floor(Math.random() * 0x7fff_ffff) | 1) >>> 0;
  }

  /**
   * Opens and binds a netlink socket of `protocol`, with capped and extended
   * acknowledgements, a receive timeout and large buffers.
   *
   * @throws {OsError} when the socket cannot be created or configured; it is
   * closed first.
   */
  static open(protocol = NETLINK_NETFILTER, opts: NetlinkSocketOptions = {}): NetlinkSocket {
    const timeoutMs = opts.timeoutMs ?? 5000;
    if (!(timeoutMs > 0)) throw new RangeError(`Netlink timeout "${timeoutMs}" is not positive`);
    const rcvbuf = opts.rcvbuf ?? 8 << 20;
    const sndbuf = opts.sndbuf ?? 4 << 20;
    const c = libc();
    const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd < 0) throw new OsError(`socket(AF_NETLINK, protocol ${protocol})`, errno());
    try {
      const sa = new Uint8Array(SOCKADDR_NL_SIZE);
      new DataView(sa.buffer).setUint16(0, AF_NETLINK, LE); // pid 0: the kernel assigns one
      if (c.bind(fd, sa, sa.length) < 0) throw new OsError("bind(AF_NETLINK)", errno());
      setIntOpt(fd, SOL_SOCKET, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf, "SO_RCVBUF");
      setIntOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE, SO_SNDBUF, sndbuf, "SO_SNDBUF");
      setIntOpt(fd, SOL_NETLINK, NETLINK_CAP_ACK, -1, 1, null);
      setIntOpt(fd, SOL_NETLINK, NETLINK_EXT_ACK, -1, 1, null);
      const tv = new Uint8Array(16); // struct timeval { long tv_sec; long tv_usec; }
      const tvDv = new DataView(tv.buffer);
      tvDv.setBigInt64(0, BigInt(Math.floor(timeoutMs / 1000)), LE);
      tvDv.setBigInt64(8, BigInt(Math.round((timeoutMs % 1000) * 1000)), LE);
      if (c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16) < 0) {
        throw new OsError("setsockopt(SO_RCVTIMEO)", errno());
      }
      return new NetlinkSocket(fd, protocol, sndbuf, timeoutMs, opts.unsolicited ?? false);
    } catch (e) {
      c.close(fd);
      throw e;
    }
  }

  // `fd` (OwnedFd's) serves a caller that moves its own traffic over the
  // socket (a queue's packets and verdicts) beside the requests made here.

  #check(): void {
    if (this.fd < 0) throw new Error("Netlink socket is closed");
  }

  /** Sends `buf` as one datagram, growing the send buffer when needed. */
  #send(buf: Uint8Array, what: string): void {
    if (buf.length + 4096 > this.#sndbuf) {
      this.#sndbuf = 2 * buf.length + 4096;
      setIntOpt(this.fd, SOL_SOCKET, SO_SNDBUFFORCE, SO_SNDBUF, this.#sndbuf, "SO_SNDBUF");
    }
    for (;;) {
      const n = Number(libc().send(this.fd, buf, BigInt(buf.length), 0));
      if (n >= 0) return;
      const e = errno();
      if (e === EINTR) continue;
      throw new OsError(`Cannot send ${what} (${buf.length} bytes)`, e);
    }
  }

  /**
   * One read into the receive buffer; returns its length, or 0 when nothing
   * came (`wait`: within the timeout; else: nothing queued).
   */
  #recv(wait: boolean, what: string): number {
    for (;;) {
      const n = Number(
        libc().recv(this.fd, this.#rx, BigInt(RX_SIZE), MSG_TRUNC | (wait ? 0 : MSG_DONTWAIT)),
      );
      if (n >= 0) {
        if (n > RX_SIZE) {
          throw new NetlinkParseError(
            `${what}: a ${n}-byte answer exceeds the ${RX_SIZE}-byte buffer`,
          );
        }
        return n;
      }
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return 0;
      if (e === ENOBUFS && this.#unsolicited) continue; // unsolicited messages were lost
      if (e === ENOBUFS) {
        throw new OsError(`${what}: answers were lost (receive buffer overflowed)`, e);
      }
      throw new OsError(`${what}: recv`, e);
    }
  }

  /** Walks `bufs`, numbers each message and records its type and flags. */
  #number(bufs: Uint8Array[]): { sent: Sent[]; bySeq: Map<number, number>; out: Uint8Array } {
    let total = 0;
    for (const b of bufs) total += align4(b.length);
    const out = new Uint8Array(total);
    const dv = new DataView(out.buffer);
    let pos = 0;
    for (const b of bufs) {
      out.set(b, pos);
      pos += align4(b.length);
    }
    const sent: Sent[] = [];
    const bySeq = new Map<number, number>();
    for (const m of messages(dv, total)) {
      const h = m.off - Nlmsg.SIZE;
      const seq = this.#seq;
      this.#seq = (this.#seq + 1) >>> 0 || 1;
      dv.setUint32(h + Nlmsg.SEQ, seq, LE);
      dv.setUint32(h + Nlmsg.PID, 0, LE);
      dv.setUint16(h + Nlmsg.FLAGS, m.flags | NLM_F_REQUEST, LE);
      bySeq.set(seq, sent.length);
      sent.push({ type: m.type, flags: m.flags | NLM_F_REQUEST });
    }
    if (sent.length === 0) throw new NetlinkParseError("No netlink message to send");
    return { sent, bySeq, out };
  }

  /**
   * Sends every message of `msgs` (each buffer may hold several) in one
   * datagram and collects the answers: for each message, its errno (0 for
   * an acknowledgement), or -1 when no answer came (a message without
   * `NLM_F_ACK` that succeeded, or one the kernel skipped because an earlier
   * one of the batch was refused). Never throws for refusals. Messages
   * read meanwhile that are not answers (an echo, a queue's packets) go to
   * `onOther` when given.
   *
   * @throws {OsError} when sending fails, or when a message that asked for
   * an acknowledgement got none within the timeout (`ETIMEDOUT`).
   * @throws {NetlinkParseError} when `msgs` or an answer is malformed.
   */
  requestAll(
    msgs: Uint8Array[],
    what = "netlink request",
    onOther?: MessageHandler,
  ): NlErrorAnswer[] {
    return this.#request(msgs, what, onOther).map((s) =>
      s.answer ?? { errno: -1, seq: 0, detail: "", attrOffset: -1 }
    );
  }

  /**
   * Like {@linkcode requestAll}, but throws the first refusal as a
   * {@linkcode NetlinkError} naming the message's index and type.
   */
  request(msgs: Uint8Array[], what = "netlink request"): void {
    const sent = this.#request(msgs, what);
    for (let i = 0; i < sent.length; i++) {
      const a = sent[i]!.answer;
      if (a !== undefined && a.errno > 0) {
        throw new NetlinkError(what, a.errno, i, sent[i]!.type, a.detail, a.attrOffset);
      }
    }
  }

  /** Sends `msgs` in one datagram; each message with its answer, when one came. */
  #request(msgs: Uint8Array[], what: string, onOther?: MessageHandler): Sent[] {
    this.#check();
    const { sent, bySeq, out } = this.#number(msgs);
    let pending = 0;
    for (const s of sent) if ((s.flags & NLM_F_ACK) !== 0) pending++;
    this.#send(out, what);
    let sawError = false;
    // Unsolicited messages can keep every read busy: the timeout is overall.
    const deadline = performance.now() + this.#timeoutMs;
    const noAnswer = () =>
      new OsError(`${what}: no answer from the kernel for ${pending} message(s)`, ETIMEDOUT);
    while (pending > 0) {
      if (performance.now() >= deadline) throw noAnswer();
      // Answers of a request are queued by the time send returns; wait only
      // when some are still missing and no refusal explains why.
      let n = this.#recv(false, what);
      if (n === 0) {
        if (sawError) break;
        n = this.#recv(true, what);
        if (n === 0) throw noAnswer();
      }
      for (const m of messages(this.#rxDv, n)) {
        if (m.type !== NLMSG_ERROR) {
          onOther?.(m.type, this.#rxDv, m.off, m.len);
          continue;
        }
        const e = parseError(this.#rxDv, m);
        if (e === null) continue;
        const i = bySeq.get(e.seq);
        if (i === undefined) continue; // a stray answer of an earlier request
        const s = sent[i]!;
        if (s.answer !== undefined) continue;
        s.answer = e;
        if ((s.flags & NLM_F_ACK) !== 0) pending--;
        if (e.errno !== 0) sawError = true;
      }
    }
    return sent;
  }

  /**
   * Sends one request (`NLM_F_REQUEST | NLM_F_ACK` added) and hands each
   * reply message to `onMessage` until the acknowledgement.
   *
   * @throws {NetlinkError} when the kernel refuses the request.
   * @throws {OsError} when no answer comes within the timeout.
   */
  query(msg: Uint8Array, onMessage: MessageHandler, what = "netlink query"): void {
    this.#exchange(msg, NLM_F_REQUEST | NLM_F_ACK, onMessage, what, false);
  }

  /**
   * Sends one dump request (`NLM_F_REQUEST | NLM_F_DUMP` added) and hands
   * each reply message to `onMessage` until `NLMSG_DONE`.
   *
   * @throws {NetlinkError} when the kernel refuses the dump, or with errno
   * `EINTR` when it reports the dump inconsistent (`NLM_F_DUMP_INTR`: the
   * object changed meanwhile; messages already handed over may be partial,
   * so start again).
   * @throws {OsError} when the kernel stops answering (timeout).
   */
  dump(msg: Uint8Array, onMessage: MessageHandler, what = "netlink dump"): void {
    this.#exchange(msg, NLM_F_REQUEST | NLM_F_DUMP, onMessage, what, true);
  }

  #exchange(
    msg: Uint8Array,
    flags: number,
    onMessage: MessageHandler,
    what: string,
    isDump: boolean,
  ): void {
    this.#check();
    const dv0 = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
    if (msg.length < Nlmsg.SIZE || dv0.getUint32(Nlmsg.LEN, LE) !== msg.length) {
      throw new NetlinkParseError(`${what}: expects exactly one netlink message`);
    }
    const copy = msg.slice();
    const cdv = new DataView(copy.buffer);
    cdv.setUint16(Nlmsg.FLAGS, cdv.getUint16(Nlmsg.FLAGS, LE) | flags, LE);
    const { sent, bySeq, out } = this.#number([copy]);
    const seq = [...bySeq.keys()][0]!;
    this.#send(out, what);
    let interrupted = false;
    for (;;) {
      const n = this.#recv(true, what);
      if (n === 0) throw new OsError(`${what}: the kernel stopped answering`, ETIMEDOUT);
      for (const m of messages(this.#rxDv, n)) {
        if (m.seq !== seq) continue; // a stray answer of an earlier request
        if (m.type === NLMSG_ERROR) {
          const e = parseError(this.#rxDv, m);
          if (e === null) throw new NetlinkParseError(`${what}: short error answer`);
          if (e.errno !== 0) {
            throw new NetlinkError(what, e.errno, 0, sent[0]!.type, e.detail, e.attrOffset);
          }
          if (!isDump) return;
          continue;
        }
        if (m.type === NLMSG_DONE) {
          if (!isDump) continue;
          const err = m.len >= 4 ? -this.#rxDv.getInt32(m.off, LE) : 0;
          if (err > 0) throw new NetlinkError(what, err, 0, sent[0]!.type);
          if (interrupted) {
            throw new NetlinkError(what, EINTR, 0, sent[0]!.type, "dump interrupted by a change");
          }
          return;
        }
        if (m.type === NLMSG_NOOP || m.type === NLMSG_OVERRUN) continue;
        if ((m.flags & NLM_F_DUMP_INTR) !== 0) interrupted = true;
        onMessage(m.type, this.#rxDv, m.off, m.len);
      }
    }
  }
}

/** Sets an int socket option, trying `forced` then `plain` (-1: none). `what` null: ignore failure. */
function setIntOpt(
  fd: number,
  level: number,
  forced: number,
  plain: number,
  value: number,
  what: string | null,
): void {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, Math.min(value, 0x3fff_ffff), LE);
  const c = libc();
  if (c.setsockopt(fd, level, forced, v, 4) === 0) return;
  if (plain >= 0 && c.setsockopt(fd, level, plain, v, 4) === 0) return;
  if (what !== null) throw new OsError(`setsockopt(${what})`, errno());
}
