/**
 * Version 3 of the control protocol: several requests per datagram, one
 * answer datagram per request datagram (docs/protocol.md, "Version 3").
 *
 * A datagram is a 32-byte header and 1 to {@link MAX_ENTRIES} fixed-size
 * entries of 32 bytes. The header carries what every entry shares: the
 * host's address `a` (which must be the datagram's source, claim 2) and its
 * cookie, once per datagram; on answers the server's epoch and the cookie of
 * the address the answer goes to. Each entry is one request (RESERVE, RENEW,
 * RELEASE, MAP) or its answer, with a nonce of its own: entries are matched,
 * retransmitted and answered one by one, whatever datagram carries them. A
 * RESERVE may propose the gateway port `Pg` (the driver picks it from its
 * share of `--gateway-ports` and translates at once; the server grants it
 * when it is free for that host, else another).
 *
 * Request and answer entries have the same length, so an answer datagram is
 * never longer than the request datagram it answers (no amplification), and
 * a 1-entry request (64 bytes) is as long as a version-2 message: a server
 * that speaks only version 2 answers it UNSUPPORTED_VERSION (its reply
 * echoes the datagram's nonce), which tells the client to speak version 2.
 *
 * The first four bytes and the nonce sit where they sit in every version
 * (`proto.ts`, "Common header"). Decoding untrusted bytes never throws;
 * encoding trusted values that do not fit their field throws `RangeError`.
 *
 * @module
 */

import { checkRequestFields, COOKIE_LEN, isKnownOp, MAGIC, Op, RESPONSE_BIT } from "./proto.ts";
import { checkCookie, checkField, hex, view } from "./fields.ts";
import { Result } from "./result.ts";

/** The version of batched datagrams. */
export const BATCH_VERSION = 3;
/** Bytes of a datagram's header, request or answer. */
export const HEADER_LEN = 32;
/** Bytes of one entry, request or answer. */
export const ENTRY_LEN = 32;
/**
 * Entries per datagram at most: 32 + 45 × 32 = 1,472 bytes, a UDP payload
 * that fits an Ethernet MTU of 1,500 unfragmented.
 */
export const MAX_ENTRIES = 45;
/** The longest datagram of this version. */
export const MAX_DATAGRAM = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN;
/** Type byte (offset 3) of a request datagram; answers carry it with {@link RESPONSE_BIT}. */
export const TYPE_REQUESTS = 0x00;

/** Header offsets (both directions). */
const H = {
  MAGIC: 0, // u16
  VERSION: 2, // u8
  TYPE: 3, // u8: 0x00 requests, 0x80 answers
  NONCE: 4, // 8 bytes, the datagram's, echoed
  COUNT: 12, // u8, entries that follow
  RESULT: 13, // u8: requests 0; answers: a result for the whole datagram (then no entries)
  RESERVED: 14, // u16, zero
  ADDR_OR_EPOCH: 16, // u32: requests the host's address a; answers the server's epoch
  COOKIE: 20, // 12 bytes
} as const;

/** Entry offsets an answer shares with its request (the echoed fields). */
const E = {
  NONCE: 4, // 8 bytes
  REMOTE_ADDR: 12, // u32
  INTERNAL_PORT: 16, // u16
  REMOTE_PORT: 18, // u16
} as const;

/** Request entry offsets. */
const Q = {
  OP: 0, // u8
  PROTO: 1, // u8
  FLAGS: 2, // u8: bit 0 REPLACEABLE
  RESERVED1: 3, // u8, zero
  ...E,
  GATEWAY_PORT: 20, // u16: a proposed Pg (RESERVE), 0: none
  RESERVED2: 22, // u16, zero
  LIFETIME: 24, // u32
  RESERVED3: 28, // u32, zero
} as const;

/** Answer entry offsets. */
const A = {
  OP: 0, // u8, the request's
  RESULT: 1, // u8
  PROTO: 2, // u8
  FLAGS: 3, // u8: bit 0 REPLACED, bit 1 SHARED
  ...E, // echoed
  PUBLIC_ADDR: 20, // u32
  PUBLIC_PORT: 24, // u16
  GATEWAY_PORT: 26, // u16
  LIFETIME: 28, // u32
} as const;

const REPLACEABLE = 1;
const REPLACED = 1;
const SHARED = 2;

/** One request entry, decoded or to encode (host-order numbers; the nonce as two u32 halves). */
export interface EntryRequest {
  op: number;
  proto: number;
  replaceable: boolean;
  /** The nonce's first and last 4 bytes (big-endian). */
  nonceHi: number;
  nonceLo: number;
  remoteAddr: number;
  internalPort: number;
  remotePort: number;
  /** A proposed gateway port (RESERVE), 0 when none. */
  gatewayPort: number;
  lifetime: number;
}

/** One answer entry (the nonce as two u32 halves). */
export interface EntryAnswer {
  op: number;
  result: number;
  proto: number;
  replaced: boolean;
  shared: boolean;
  nonceHi: number;
  nonceLo: number;
  remoteAddr: number;
  internalPort: number;
  remotePort: number;
  publicAddr: number;
  publicPort: number;
  gatewayPort: number;
  lifetime: number;
}

/** A new entry object to decode into (reuse it: decoding writes every field). */
export function newEntry(): EntryRequest {
  return {
    op: 0,
    proto: 0,
    replaceable: false,
    nonceHi: 0,
    nonceLo: 0,
    remoteAddr: 0,
    internalPort: 0,
    remotePort: 0,
    gatewayPort: 0,
    lifetime: 0,
  };
}

/** A new answer object to decode into. */
export function newAnswer(): EntryAnswer {
  return {
    op: 0,
    result: 0,
    proto: 0,
    replaced: false,
    shared: false,
    nonceHi: 0,
    nonceLo: 0,
    remoteAddr: 0,
    internalPort: 0,
    remotePort: 0,
    publicAddr: 0,
    publicPort: 0,
    gatewayPort: 0,
    lifetime: 0,
  };
}

/** What {@linkcode decodeRequestHeader} found. */
export type RequestHeader =
  | { ok: true; count: number; internalAddr: number; cookie: Uint8Array }
  | { ok: false; result: number; reason: string; silent: boolean };

/** What {@linkcode decodeAnswerHeader} found. */
export type AnswerHeader =
  | {
    ok: true;
    count: number;
    result: number;
    epoch: number;
    nonceHi: number;
    nonceLo: number;
    cookie: Uint8Array;
  }
  | { ok: false; reason: string };

/**
 * The fields an answer entry echoes from its request entry, at the same
 * offsets in both (`E`): the nonce's halves, the remote, the host's port.
 */
type Echoed = Pick<
  EntryRequest,
  "nonceHi" | "nonceLo" | "remoteAddr" | "internalPort" | "remotePort"
>;

/** Reads the echoed fields of the entry at `o` into `out`. */
function readEchoed(v: DataView, o: number, out: Echoed): void {
  out.nonceHi = v.getUint32(o + E.NONCE);
  out.nonceLo = v.getUint32(o + E.NONCE + 4);
  out.remoteAddr = v.getUint32(o + E.REMOTE_ADDR);
  out.internalPort = v.getUint16(o + E.INTERNAL_PORT);
  out.remotePort = v.getUint16(o + E.REMOTE_PORT);
}

/** Writes the echoed fields of `e` into the entry at `o`. */
function writeEchoed(v: DataView, o: number, e: Echoed): void {
  v.setUint32(o + E.NONCE, e.nonceHi >>> 0);
  v.setUint32(o + E.NONCE + 4, e.nonceLo >>> 0);
  v.setUint32(o + E.REMOTE_ADDR, e.remoteAddr >>> 0);
  v.setUint16(o + E.INTERNAL_PORT, e.internalPort & 0xffff);
  v.setUint16(o + E.REMOTE_PORT, e.remotePort & 0xffff);
}

/**
 * Checks a request datagram's header from untrusted bytes. Never throws.
 * `silent`: never answer (too short, no magic, the response bit set);
 * otherwise the header-only answer of {@linkcode writeRefusal} carries
 * `result`. The cookie is a view into `b`.
 */
export function decodeRequestHeader(b: Uint8Array): RequestHeader {
  if (b.length < HEADER_LEN) {
    return {
      ok: false,
      silent: true,
      result: Result.MALFORMED,
      reason: `too short (${b.length} bytes)`,
    };
  }
  const v = view(b);
  if (v.getUint16(H.MAGIC) !== MAGIC) {
    return {
      ok: false,
      silent: true,
      result: Result.MALFORMED,
      reason: `bad magic ${hex(v.getUint16(H.MAGIC), 4)}`,
    };
  }
  const type = v.getUint8(H.TYPE);
  if ((type & RESPONSE_BIT) !== 0) {
    return {
      ok: false,
      silent: true,
      result: Result.MALFORMED,
      reason: `type ${hex(type, 2)} is an answer`,
    };
  }
  const version = v.getUint8(H.VERSION);
  if (version !== BATCH_VERSION) {
    return {
      ok: false,
      silent: false,
      result: Result.UNSUPPORTED_VERSION,
      reason: `unsupported version ${version}`,
    };
  }
  const fail = (reason: string): RequestHeader => ({
    ok: false,
    silent: false,
    result: Result.MALFORMED,
    reason,
  });
  if (type !== TYPE_REQUESTS) return fail(`unknown type ${hex(type, 2)}`);
  const count = v.getUint8(H.COUNT);
  if (count < 1 || count > MAX_ENTRIES) return fail(`${count} entries, want 1-${MAX_ENTRIES}`);
  if (b.length !== HEADER_LEN + count * ENTRY_LEN) {
    return fail(`bad length ${b.length}, want ${HEADER_LEN + count * ENTRY_LEN} for ${count}`);
  }
  if (v.getUint8(H.RESULT) !== 0 || v.getUint16(H.RESERVED) !== 0) {
    return fail("reserved header bytes not zero");
  }
  return {
    ok: true,
    count,
    internalAddr: v.getUint32(H.ADDR_OR_EPOCH),
    cookie: b.subarray(H.COOKIE, H.COOKIE + COOKIE_LEN),
  };
}

/**
 * Decodes request entry `i` of a datagram whose header passed into `out`
 * (every field written, also when the entry is refused, as far as it was
 * read). Returns null when it passes, else the result code and a reason.
 * `internalAddr`: the header's. Never throws.
 */
export function decodeEntry(
  b: Uint8Array,
  i: number,
  internalAddr: number,
  out: EntryRequest,
): { result: number; reason: string } | null {
  const v = view(b);
  const o = HEADER_LEN + i * ENTRY_LEN;
  const op = v.getUint8(o + Q.OP);
  const flags = v.getUint8(o + Q.FLAGS);
  out.op = op;
  out.proto = v.getUint8(o + Q.PROTO);
  out.replaceable = (flags & REPLACEABLE) !== 0;
  readEchoed(v, o, out);
  out.gatewayPort = v.getUint16(o + Q.GATEWAY_PORT);
  out.lifetime = v.getUint32(o + Q.LIFETIME);
  if (!isKnownOp(op)) return { result: Result.UNSUPPORTED_OPCODE, reason: `unknown opcode ${op}` };
  if ((flags & ~REPLACEABLE) !== 0) {
    return { result: Result.MALFORMED, reason: `reserved flag bits set (${hex(flags, 2)})` };
  }
  if (
    v.getUint8(o + Q.RESERVED1) !== 0 || v.getUint16(o + Q.RESERVED2) !== 0 ||
    v.getUint32(o + Q.RESERVED3) !== 0
  ) {
    return { result: Result.MALFORMED, reason: "reserved entry bytes not zero" };
  }
  if (out.gatewayPort !== 0 && op !== Op.RESERVE) {
    return { result: Result.MALFORMED, reason: "a gateway port proposed outside RESERVE" };
  }
  return checkRequestFields(
    op,
    out.proto,
    internalAddr,
    out.internalPort,
    out.remoteAddr,
    out.remotePort,
    out.lifetime,
  );
}

/**
 * Writes a request datagram's header into `out` (at least
 * {@link HEADER_LEN} bytes; the reserved bytes are zeroed) for `count`
 * entries. `cookie`: the host's (zero when it has none).
 */
export function writeRequestHeader(
  out: Uint8Array,
  nonceHi: number,
  nonceLo: number,
  count: number,
  internalAddr: number,
  cookie: Uint8Array | null,
): void {
  checkField("count", count, MAX_ENTRIES);
  if (count < 1) throw new RangeError("A request datagram carries at least one entry");
  checkCookie(cookie, COOKIE_LEN);
  out.fill(0, 0, HEADER_LEN);
  const v = view(out);
  v.setUint16(H.MAGIC, MAGIC);
  v.setUint8(H.VERSION, BATCH_VERSION);
  v.setUint8(H.TYPE, TYPE_REQUESTS);
  v.setUint32(H.NONCE, nonceHi >>> 0);
  v.setUint32(H.NONCE + 4, nonceLo >>> 0);
  v.setUint8(H.COUNT, count);
  v.setUint32(H.ADDR_OR_EPOCH, internalAddr >>> 0);
  if (cookie !== null) out.set(cookie, H.COOKIE);
}

/** Writes request entry `i` of a datagram into `out`. */
export function writeEntry(out: Uint8Array, i: number, e: EntryRequest): void {
  checkField("op", e.op, 0x7f);
  checkField("proto", e.proto, 0xff);
  checkField("remoteAddr", e.remoteAddr, 0xffffffff);
  checkField("internalPort", e.internalPort, 0xffff);
  checkField("remotePort", e.remotePort, 0xffff);
  checkField("gatewayPort", e.gatewayPort, 0xffff);
  checkField("lifetime", e.lifetime, 0xffffffff);
  const o = HEADER_LEN + i * ENTRY_LEN;
  out.fill(0, o, o + ENTRY_LEN);
  const v = view(out);
  v.setUint8(o + Q.OP, e.op);
  v.setUint8(o + Q.PROTO, e.proto);
  v.setUint8(o + Q.FLAGS, e.replaceable ? REPLACEABLE : 0);
  writeEchoed(v, o, e);
  v.setUint16(o + Q.GATEWAY_PORT, e.gatewayPort);
  v.setUint32(o + Q.LIFETIME, e.lifetime >>> 0);
}

/**
 * Writes the header of the answer to request datagram `req` into `out`:
 * its nonce echoed, `count` entries, `result` for the whole datagram (OK:
 * see the entries), the server's epoch and the cookie of the address the
 * answer goes to.
 */
export function writeAnswerHeader(
  out: Uint8Array,
  req: Uint8Array,
  count: number,
  result: number,
  epoch: number,
  cookie: Uint8Array | null,
): void {
  checkField("count", count, MAX_ENTRIES);
  out.fill(0, 0, HEADER_LEN);
  const v = view(out);
  v.setUint16(H.MAGIC, MAGIC);
  v.setUint8(H.VERSION, BATCH_VERSION);
  v.setUint8(H.TYPE, TYPE_REQUESTS | RESPONSE_BIT);
  out.set(req.subarray(H.NONCE, H.NONCE + 8), H.NONCE);
  v.setUint8(H.COUNT, count);
  v.setUint8(H.RESULT, result & 0xff);
  v.setUint32(H.ADDR_OR_EPOCH, epoch >>> 0);
  if (cookie !== null && cookie.length === COOKIE_LEN) out.set(cookie, H.COOKIE);
}

/**
 * The header-only answer to a request datagram the server will not read
 * entry by entry (`result`: UNSUPPORTED_VERSION, MALFORMED), or null when it
 * must stay silent: shorter than a header, no magic, an answer. Never longer
 * than `req`. Never throws.
 */
export function writeRefusal(
  req: Uint8Array,
  result: number,
  epoch: number,
  cookie: Uint8Array | null,
): Uint8Array | null {
  if (req.length < HEADER_LEN) return null;
  const v = view(req);
  if (v.getUint16(H.MAGIC) !== MAGIC || (v.getUint8(H.TYPE) & RESPONSE_BIT) !== 0) return null;
  const out = new Uint8Array(HEADER_LEN);
  writeAnswerHeader(out, req, 0, result === Result.OK ? Result.MALFORMED : result, epoch, cookie);
  return out;
}

/**
 * Writes answer entry `i` into `out`. For a result other than OK the grant
 * fields and flags are written zero whatever `a` says.
 */
export function writeAnswer(out: Uint8Array, i: number, a: EntryAnswer): void {
  const ok = a.result === Result.OK;
  const o = HEADER_LEN + i * ENTRY_LEN;
  const v = view(out);
  v.setUint8(o + A.OP, a.op & 0x7f);
  v.setUint8(o + A.RESULT, a.result & 0xff);
  v.setUint8(o + A.PROTO, a.proto & 0xff);
  v.setUint8(o + A.FLAGS, ok ? (a.replaced ? REPLACED : 0) | (a.shared ? SHARED : 0) : 0);
  writeEchoed(v, o, a);
  v.setUint32(o + A.PUBLIC_ADDR, ok ? a.publicAddr >>> 0 : 0);
  v.setUint16(o + A.PUBLIC_PORT, ok ? a.publicPort & 0xffff : 0);
  v.setUint16(o + A.GATEWAY_PORT, ok ? a.gatewayPort & 0xffff : 0);
  v.setUint32(o + A.LIFETIME, ok ? a.lifetime >>> 0 : 0);
}

/**
 * Checks an answer datagram's header from untrusted bytes. Never throws.
 * The cookie is a view into `b`.
 */
export function decodeAnswerHeader(b: Uint8Array): AnswerHeader {
  if (b.length < HEADER_LEN) return { ok: false, reason: `too short (${b.length} bytes)` };
  const v = view(b);
  if (v.getUint16(H.MAGIC) !== MAGIC) {
    return { ok: false, reason: `bad magic ${hex(v.getUint16(H.MAGIC), 4)}` };
  }
  if (v.getUint8(H.VERSION) !== BATCH_VERSION) {
    return { ok: false, reason: `unsupported version ${v.getUint8(H.VERSION)}` };
  }
  if (v.getUint8(H.TYPE) !== (TYPE_REQUESTS | RESPONSE_BIT)) {
    return { ok: false, reason: `type ${hex(v.getUint8(H.TYPE), 2)} is not an answer` };
  }
  const count = v.getUint8(H.COUNT);
  if (count > MAX_ENTRIES || b.length !== HEADER_LEN + count * ENTRY_LEN) {
    return { ok: false, reason: `bad length ${b.length} for ${count} entries` };
  }
  const result = v.getUint8(H.RESULT);
  if (count > 0 && result !== Result.OK) {
    return { ok: false, reason: `a refused datagram (${result}) with entries` };
  }
  if (v.getUint16(H.RESERVED) !== 0) return { ok: false, reason: "reserved header bytes not zero" };
  return {
    ok: true,
    count,
    result,
    epoch: v.getUint32(H.ADDR_OR_EPOCH),
    nonceHi: v.getUint32(H.NONCE),
    nonceLo: v.getUint32(H.NONCE + 4),
    cookie: b.subarray(H.COOKIE, H.COOKIE + COOKIE_LEN),
  };
}

/**
 * Decodes answer entry `i` of a datagram whose header passed into `out`.
 * Returns null when it is well formed, else a reason (unknown flags, an
 * error answer that carries a grant). Unknown result codes are accepted.
 */
export function decodeAnswer(b: Uint8Array, i: number, out: EntryAnswer): string | null {
  const v = view(b);
  const o = HEADER_LEN + i * ENTRY_LEN;
  const flags = v.getUint8(o + A.FLAGS);
  out.op = v.getUint8(o + A.OP);
  out.result = v.getUint8(o + A.RESULT);
  out.proto = v.getUint8(o + A.PROTO);
  out.replaced = (flags & REPLACED) !== 0;
  out.shared = (flags & SHARED) !== 0;
  readEchoed(v, o, out);
  out.publicAddr = v.getUint32(o + A.PUBLIC_ADDR);
  out.publicPort = v.getUint16(o + A.PUBLIC_PORT);
  out.gatewayPort = v.getUint16(o + A.GATEWAY_PORT);
  out.lifetime = v.getUint32(o + A.LIFETIME);
  if ((flags & ~(REPLACED | SHARED)) !== 0) return `reserved flag bits set (${hex(flags, 2)})`;
  if (
    out.result !== Result.OK &&
    (out.publicAddr | out.publicPort | out.gatewayPort | out.lifetime | flags) !== 0
  ) {
    return "an error answer carries a grant";
  }
  return null;
}
