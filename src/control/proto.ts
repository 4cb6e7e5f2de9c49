/**
 * The control protocol between `dpm driver` (on a LAN host) and `dpm server`
 * (on the gateway): two fixed binary layouts over UDP, big-endian fields.
 *
 * - A request is exactly {@link REQUEST_LEN} bytes for every opcode
 *   (RESERVE, RENEW, RELEASE). It carries the session identity: protocol,
 *   the host's internal address and port, and the remote peer's address and
 *   port (claims 1 and 4: the remote endpoint travels in the request).
 * - A response is exactly {@link RESPONSE_LEN} bytes for every opcode and
 *   result. It echoes the nonce and the identity, and carries the public pair
 *   `R:p`, the gateway port `Pg`, the granted lifetime and the server epoch.
 *
 * Like wireguard-go's message types, a message whose length differs from its
 * layout is rejected, reserved bits must be zero, and decoding untrusted bytes
 * never throws: it returns `{ ok: false, ... }` with a short specific reason.
 * Encoding trusted values throws `RangeError` on values that do not fit their
 * field, because that is a programming error, not hostile input.
 *
 * The byte-by-byte layouts, result codes and the exchange rules are in
 * `docs/protocol.md`.
 *
 * @module
 */

import { Result } from "./result.ts";
import { formatIPv4 } from "../wire/addr.ts";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/meta.ts";
import {
  checkCookie,
  checkField,
  checkFields,
  type FieldTable,
  hex,
  view,
  writeFields,
  zeroed,
} from "./fields.ts";

/** The first two bytes of every message: ASCII "DP". */
export const MAGIC = 0x4450;
/**
 * The only (and highest) protocol version this code speaks. Version 2 added
 * the return-routability cookie (docs/protocol.md, "Cookies"); version 1
 * requests are shorter than any answer and get none.
 */
export const PROTOCOL_VERSION = 2;
/**
 * Length of every request, whatever its opcode: padded to the length of a
 * response, so that no answer is ever longer than the datagram it answers.
 */
export const REQUEST_LEN = 64;
/** Length of every response, whatever its opcode and result. */
export const RESPONSE_LEN = 64;
/** Length of the server's cookie, carried in every response and echoed in requests. */
export const COOKIE_LEN = 12;
/** Length of the opaque nonce a client puts in a request and the server echoes. */
export const NONCE_LEN = 8;
/** The UDP port the server listens on (on its LAN address only) unless configured otherwise. */
export const DEFAULT_PORT = 4750;
/**
 * Bit 7 of the opcode byte marks a response. It means the same in every
 * version, so a server can recognise (and ignore) a response it did not
 * expect even when it cannot parse the rest, and two servers can never be
 * made to answer each other in a loop.
 */
export const RESPONSE_BIT = 0x80;

/** Request opcodes. A response carries `opcode | RESPONSE_BIT`. */
export const Op = {
  /** Reserve a public address (and a replacement port when allowed) for a session. */
  RESERVE: 1,
  /** Extend the lifetime of a session the host holds. */
  RENEW: 2,
  /** Give a session back before its lifetime ends. */
  RELEASE: 3,
  /**
   * Create, renew (the same request again) or delete (lifetime 0) an inbound
   * mapping `R:p -> a:pa` for every remote (`dpm map`; the table's MAP, as
   * PCP MAP). The remote address is 0; the remote port field carries the
   * suggested public port (0: the internal port). Without
   * {@link ReqFlag.REPLACEABLE} only the suggested port will do (CONFLICT
   * otherwise). TCP and UDP only.
   */
  MAP: 4,
} as const;

/** Bits of the request's flags byte. */
export const ReqFlag = {
  /** The internal port is ephemeral: the server may map it to another public port. */
  REPLACEABLE: 1,
} as const;

/** Bits of the response's flags byte. */
export const ResFlag = {
  /** The public port differs from the internal port (the port was replaced). */
  REPLACED: 1,
  /**
   * The public pair is shared with another session and told apart by the
   * remote endpoint (claims 8-10).
   */
  SHARED: 2,
} as const;

/** A control request. Addresses are host-order u32, see `addr.ts`. */
export interface Request {
  /** One of {@link Op}. */
  op: number;
  /** Opaque 8 bytes chosen by the client; the server echoes them. */
  nonce: Uint8Array;
  /** IP protocol number: 1 ICMP, 6 TCP, 17 UDP. */
  proto: number;
  /** Whether the internal port may be replaced by another public port. */
  replaceable: boolean;
  /** The host's private address `a`. Must equal the datagram's source address (claim 2). */
  internalAddr: number;
  /** The host's port `pa` (ICMP: the echo identifier). */
  internalPort: number;
  /** The outside peer's address `X`. */
  remoteAddr: number;
  /** The outside peer's port `px` (0 for ICMP). */
  remotePort: number;
  /** Requested lifetime in seconds; 0 asks for the server default. RELEASE: 0. */
  lifetime: number;
  /**
   * The server's cookie for this host ({@link COOKIE_LEN} bytes, from its
   * last response); absent or all zero when the host has none yet.
   */
  cookie?: Uint8Array;
}

/** A control response. Addresses are host-order u32, see `addr.ts`. */
export interface Response {
  /** The request opcode this answers, without {@link RESPONSE_BIT} (the wire byte has it set). */
  op: number;
  /** The request's nonce, echoed. */
  nonce: Uint8Array;
  /** A code from `result.ts`. Unknown (newer) codes decode as-is. */
  result: number;
  /** The request's protocol, echoed. */
  proto: number;
  /** {@link ResFlag.REPLACED}: public port differs from the internal port. */
  replaced: boolean;
  /** {@link ResFlag.SHARED}: the public pair is shared, told apart by the remote endpoint. */
  shared: boolean;
  /** Echoed from the request. */
  internalAddr: number;
  /** Echoed from the request. */
  internalPort: number;
  /** Echoed from the request. */
  remoteAddr: number;
  /** Echoed from the request. */
  remotePort: number;
  /** The public address `R` (0 on errors). */
  publicAddr: number;
  /** The public port `p` (0 on errors). */
  publicPort: number;
  /** The gateway's LAN-side port `Pg` this session must use (0 on errors). */
  gatewayPort: number;
  /** Granted lifetime in seconds (0 on errors and on RELEASE). */
  lifetime: number;
  /** The server's epoch; a change means the server lost its state. */
  epoch: number;
  /**
   * The cookie the host must echo in its next requests ({@link COOKIE_LEN}
   * bytes; all zero when the server sent none). Absent when encoding: zero.
   */
  cookie?: Uint8Array;
}

/** Outcome of {@link decodeRequest}: the request, or the result code to answer with. */
export type DecodeRequestResult =
  | { ok: true; req: Request }
  | { ok: false; result: number; reason: string };

/** Outcome of {@link decodeResponse}. */
export type DecodeResponseResult =
  | { ok: true; res: Response }
  | { ok: false; reason: string };

/** Byte offsets of the request fields (see docs/protocol.md). */
export const Req = {
  MAGIC: 0, // u16
  VERSION: 2, // u8
  OPCODE: 3, // u8
  NONCE: 4, // 8 bytes
  PROTO: 12, // u8
  FLAGS: 13, // u8
  RESERVED: 14, // u16, zero
  INTERNAL_ADDR: 16, // u32
  REMOTE_ADDR: 20, // u32
  INTERNAL_PORT: 24, // u16
  REMOTE_PORT: 26, // u16
  LIFETIME: 28, // u32
  COOKIE: 32, // 12 bytes
  PADDING: 44, // 20 bytes, zero
} as const;

/** Byte offsets of the response fields (see docs/protocol.md). */
const Res = {
  MAGIC: 0, // u16
  VERSION: 2, // u8
  OPCODE: 3, // u8, request opcode | 0x80
  NONCE: 4, // 8 bytes
  RESULT: 12, // u8
  PROTO: 13, // u8
  FLAGS: 14, // u8
  RESERVED1: 15, // u8, zero
  INTERNAL_ADDR: 16, // u32
  REMOTE_ADDR: 20, // u32
  INTERNAL_PORT: 24, // u16
  REMOTE_PORT: 26, // u16
  PUBLIC_ADDR: 28, // u32
  PUBLIC_PORT: 32, // u16
  GATEWAY_PORT: 34, // u16
  LIFETIME: 36, // u32
  EPOCH: 40, // u32
  RESERVED2: 44, // u32, zero
  COOKIE: 48, // 12 bytes
  RESERVED3: 60, // u32, zero
} as const;

/** The fields echoed from a request into its response: at the same offsets in both layouts. */
const ECHOED_FIELDS: FieldTable<
  Pick<Request, "internalAddr" | "remoteAddr" | "internalPort" | "remotePort">
> = [
  ["internalAddr", Req.INTERNAL_ADDR, 4],
  ["remoteAddr", Req.REMOTE_ADDR, 4],
  ["internalPort", Req.INTERNAL_PORT, 2],
  ["remotePort", Req.REMOTE_PORT, 2],
];

/** A request's numeric fields but the opcode (7 bits), in the order the encoder checks them. */
const REQUEST_FIELDS: FieldTable<Request> = [
  ["proto", Req.PROTO, 1],
  ...ECHOED_FIELDS,
  ["lifetime", Req.LIFETIME, 4],
];

/** A response's numeric fields but the opcode, in the order the encoder checks them. */
const RESPONSE_FIELDS: FieldTable<Response> = [
  ["result", Res.RESULT, 1],
  ["proto", Res.PROTO, 1],
  ...ECHOED_FIELDS,
  ["publicAddr", Res.PUBLIC_ADDR, 4],
  ["publicPort", Res.PUBLIC_PORT, 2],
  ["gatewayPort", Res.GATEWAY_PORT, 2],
  ["lifetime", Res.LIFETIME, 4],
  ["epoch", Res.EPOCH, 4],
];

/**
 * The request body that is echoed verbatim into a response: addresses and
 * ports sit at the same offsets (16..28) in both layouts, on purpose.
 */
const ECHO_START = Req.INTERNAL_ADDR;
const ECHO_END = Req.LIFETIME;

const REQ_FLAGS_KNOWN = ReqFlag.REPLACEABLE;
const RES_FLAGS_KNOWN = ResFlag.REPLACED | ResFlag.SHARED;

/** Whether `op` is an opcode of the protocol (every version has the same four). */
export function isKnownOp(op: number): boolean {
  return op === Op.RESERVE || op === Op.RENEW || op === Op.RELEASE || op === Op.MAP;
}

/**
 * Why an address can never be a session endpoint, or null. These are the
 * addresses no host can own or reach as a unicast peer; whether an address is
 * inside the LAN or in the pool is policy, checked by the server.
 */
function _addrProblem(a: number): string | null {
  if (a === 0xffffffff) return "is the limited broadcast address";
  const first = a >>> 24;
  if (first === 0) return "is in 0/8 (this network)";
  if (first === 127) return "is loopback";
  if (first >= 224 && first <= 239) return "is multicast";
  return null;
}

function _checkNonce(n: Uint8Array): void {
  if (n.length !== NONCE_LEN) {
    throw new RangeError(`Nonce is ${n.length} bytes, want ${NONCE_LEN}`);
  }
}

/** True when `c` is a cookie at all: present and not all zero. */
export function hasCookie(c: Uint8Array | undefined): c is Uint8Array {
  if (c === undefined) return false;
  let any = 0;
  for (let i = 0; i < c.length; i++) any |= c[i]!;
  return any !== 0;
}

/** A message of this version as the encoders see it. */
type Message = Pick<Request, "op" | "nonce" | "cookie">;

/** An encoder's checks: the opcode (7 bits), the nonce, the numeric `fields`, the cookie. */
function _check<T extends Message>(r: T, fields: FieldTable<T>): void {
  checkField("op", r.op, 0x7f);
  _checkNonce(r.nonce);
  checkFields(r, fields);
  checkCookie(r.cookie, COOKIE_LEN);
}

/**
 * Writes a checked message of `len` bytes (into `out` when given): magic,
 * version, the `opcode` byte, the nonce, the `flags` byte at `flagsAt`, the
 * numeric `fields`, and the cookie at `cookieAt` (zero when absent).
 */
function _write<T extends Message>(
  r: T,
  fields: FieldTable<T>,
  len: number,
  opcode: number,
  flagsAt: number,
  flags: number,
  cookieAt: number,
  out: Uint8Array | undefined,
): Uint8Array {
  const m = zeroed(len, out);
  const v = view(m);
  v.setUint16(Req.MAGIC, MAGIC);
  v.setUint8(Req.VERSION, PROTOCOL_VERSION);
  v.setUint8(Req.OPCODE, opcode);
  m.set(r.nonce, Req.NONCE);
  v.setUint8(flagsAt, flags);
  writeFields(v, 0, r, fields);
  if (r.cookie) m.set(r.cookie, cookieAt);
  return m;
}

/**
 * Writes a request. Any representable request is written, even one the
 * decoder will reject (tests and fuzzers rely on that); only values that do
 * not fit their field throw.
 *
 * @param r the request
 * @param out optional buffer of at least {@link REQUEST_LEN} bytes to write into
 * @returns the {@link REQUEST_LEN}-byte message (a view of `out` when given)
 * @throws {RangeError} when a field is out of range or the nonce is not 8 bytes
 */
export function encodeRequest(r: Request, out?: Uint8Array): Uint8Array {
  _check(r, REQUEST_FIELDS);
  const flags = r.replaceable ? ReqFlag.REPLACEABLE : 0;
  return _write(r, REQUEST_FIELDS, REQUEST_LEN, r.op, Req.FLAGS, flags, Req.COOKIE, out);
}

/**
 * Writes a response. For a result other than OK the public address, public
 * port, gateway port, lifetime and flags must be zero (use {@link responseFor},
 * which guarantees it).
 *
 * @param r the response; `r.op` is the request opcode, the wire byte gets {@link RESPONSE_BIT}
 * @param out optional buffer of at least {@link RESPONSE_LEN} bytes to write into
 * @returns the {@link RESPONSE_LEN}-byte message (a view of `out` when given)
 * @throws {RangeError} when a field is out of range, or an error response carries a grant
 */
export function encodeResponse(r: Response, out?: Uint8Array): Uint8Array {
  _check(r, RESPONSE_FIELDS);
  if (r.result !== Result.OK && _grantProblem(r) !== null) {
    throw new RangeError(`Error response (result ${r.result}) ${_grantProblem(r)}`);
  }
  const flags = (r.replaced ? ResFlag.REPLACED : 0) | (r.shared ? ResFlag.SHARED : 0);
  const op = r.op | RESPONSE_BIT;
  return _write(r, RESPONSE_FIELDS, RESPONSE_LEN, op, Res.FLAGS, flags, Res.COOKIE, out);
}

/** Which grant field an error response wrongly carries, or null. */
function _grantProblem(r: Response): string | null {
  if (r.publicAddr !== 0) return "carries a public address";
  if (r.publicPort !== 0) return "carries a public port";
  if (r.gatewayPort !== 0) return "carries a gateway port";
  if (r.lifetime !== 0) return "carries a lifetime";
  if (r.replaced || r.shared) return "carries flags";
  return null;
}

function _fail(result: number, reason: string): { ok: false; result: number; reason: string } {
  return { ok: false, result, reason };
}

/**
 * Checks the version-independent header (length, magic, version, response
 * bit). Shared by {@link decodeRequest} and {@link errorResponseFor} so that
 * both agree on what is garbage.
 */
function _header(b: Uint8Array): { silent: boolean; result: number; reason: string } | null {
  if (b.length < 4) {
    return { silent: true, result: Result.MALFORMED, reason: `too short (${b.length} bytes)` };
  }
  const magic = (b[0]! << 8) | b[1]!;
  if (magic !== MAGIC) {
    return { silent: true, result: Result.MALFORMED, reason: `bad magic ${hex(magic, 4)}` };
  }
  const opcode = b[3]!;
  if ((opcode & RESPONSE_BIT) !== 0) {
    return {
      silent: true,
      result: Result.MALFORMED,
      reason: `opcode ${hex(opcode, 2)} is a response`,
    };
  }
  const version = b[2]!;
  if (version !== PROTOCOL_VERSION) {
    return {
      silent: false,
      result: Result.UNSUPPORTED_VERSION,
      reason: `unsupported version ${version}`,
    };
  }
  return null;
}

/**
 * The checks of a request's fields that every version shares (after its
 * layout is known): protocol, ports, MAP's rules, RELEASE's lifetime,
 * unusable addresses. Returns null when they pass, else the result code to
 * answer with and a short reason. Whether the remote is outside the LAN,
 * and whether the internal address is the source, are the server's checks.
 */
export function checkRequestFields(
  op: number,
  proto: number,
  internalAddr: number,
  internalPort: number,
  remoteAddr: number,
  remotePort: number,
  lifetime: number,
): { ok: false; result: number; reason: string } | null {
  if (proto !== IPPROTO_ICMP && proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) {
    return _fail(Result.UNSUPPORTED_PROTOCOL, `unsupported protocol ${proto}`);
  }
  if (op === Op.MAP) {
    // An inbound mapping: no remote; the remote port is the suggested public port.
    if (proto === IPPROTO_ICMP) return _fail(Result.UNSUPPORTED_PROTOCOL, "MAP of ICMP");
    if (internalPort === 0) return _fail(Result.MALFORMED, "internal port 0");
    if (remoteAddr !== 0) {
      return _fail(Result.MALFORMED, `MAP with remote address ${formatIPv4(remoteAddr)}`);
    }
  } else if (proto === IPPROTO_ICMP) {
    // ICMP echo has an identifier (carried as the internal port, 0 is a
    // valid identifier) and nothing on the remote side.
    if (remotePort !== 0) return _fail(Result.MALFORMED, `ICMP with remote port ${remotePort}`);
  } else {
    // Port 0 is never on the wire for TCP or UDP.
    if (internalPort === 0) return _fail(Result.MALFORMED, "internal port 0");
    if (remotePort === 0) return _fail(Result.MALFORMED, "remote port 0");
  }
  if (op === Op.RELEASE && lifetime !== 0) {
    return _fail(Result.MALFORMED, `RELEASE with lifetime ${lifetime}`);
  }
  const ia = _addrProblem(internalAddr);
  if (ia !== null) {
    return _fail(Result.MALFORMED, `internal address ${formatIPv4(internalAddr)} ${ia}`);
  }
  const ra = op === Op.MAP ? null : _addrProblem(remoteAddr);
  if (ra !== null) return _fail(Result.MALFORMED, `remote address ${formatIPv4(remoteAddr)} ${ra}`);
  return null;
}

/**
 * Parses and validates a request from untrusted bytes. Never throws.
 *
 * Checks, in order: length >= 4 and magic; response bit clear; version;
 * opcode known (before the length, since an unknown opcode has no known
 * layout); length exactly {@link REQUEST_LEN}; reserved bits zero; protocol;
 * ports; RELEASE lifetime; unusable addresses. Whether the remote is outside
 * the LAN, and whether the source address matches, are the server's checks.
 *
 * @param b the UDP payload
 * @returns the request, or the result code to answer with and a short reason
 */
export function decodeRequest(b: Uint8Array): DecodeRequestResult {
  const h = _header(b);
  if (h !== null) return _fail(h.result, h.reason);
  const op = b[Req.OPCODE]!;
  if (!isKnownOp(op)) return _fail(Result.UNSUPPORTED_OPCODE, `unknown opcode ${op}`);
  if (b.length !== REQUEST_LEN) {
    return _fail(Result.MALFORMED, `bad length ${b.length}, want ${REQUEST_LEN}`);
  }
  const v = view(b);
  const flags = v.getUint8(Req.FLAGS);
  if ((flags & ~REQ_FLAGS_KNOWN) !== 0) {
    return _fail(Result.MALFORMED, `reserved flag bits set (${hex(flags, 2)})`);
  }
  const reserved = v.getUint16(Req.RESERVED);
  if (reserved !== 0) return _fail(Result.MALFORMED, `reserved field is ${hex(reserved, 4)}`);
  for (let i = Req.PADDING; i < REQUEST_LEN; i++) {
    if (b[i] !== 0) return _fail(Result.MALFORMED, `padding byte ${i} is ${hex(b[i]!, 2)}`);
  }

  const proto = v.getUint8(Req.PROTO);
  const internalPort = v.getUint16(Req.INTERNAL_PORT);
  const remotePort = v.getUint16(Req.REMOTE_PORT);
  const lifetime = v.getUint32(Req.LIFETIME);
  const internalAddr = v.getUint32(Req.INTERNAL_ADDR);
  const remoteAddr = v.getUint32(Req.REMOTE_ADDR);
  const bad = checkRequestFields(
    op,
    proto,
    internalAddr,
    internalPort,
    remoteAddr,
    remotePort,
    lifetime,
  );
  if (bad !== null) return bad;

  return {
    ok: true,
    req: {
      op,
      // Copy: the caller's receive buffer may be reused for the next datagram.
      nonce: b.slice(Req.NONCE, Req.NONCE + NONCE_LEN),
      proto,
      replaceable: (flags & ReqFlag.REPLACEABLE) !== 0,
      internalAddr,
      internalPort,
      remoteAddr,
      remotePort,
      lifetime,
      cookie: b.slice(Req.COOKIE, Req.COOKIE + COOKIE_LEN),
    },
  };
}

/**
 * Parses and validates a response from untrusted bytes. Never throws.
 *
 * Rejects: length other than {@link RESPONSE_LEN}, bad magic, a version other
 * than {@link PROTOCOL_VERSION}, a clear response bit, non-zero reserved bits, and an
 * error response that carries a grant. Unknown opcodes and result codes are
 * accepted (a server answers an unknown opcode with UNSUPPORTED_OPCODE, and
 * result codes are only ever appended).
 *
 * @param b the UDP payload
 * @returns the response, or a short reason
 */
export function decodeResponse(b: Uint8Array): DecodeResponseResult {
  if (b.length < 4) return { ok: false, reason: `too short (${b.length} bytes)` };
  const v = view(b);
  const magic = v.getUint16(Res.MAGIC);
  if (magic !== MAGIC) return { ok: false, reason: `bad magic ${hex(magic, 4)}` };
  const version = v.getUint8(Res.VERSION);
  if (version !== PROTOCOL_VERSION) return { ok: false, reason: `unsupported version ${version}` };
  const opcode = v.getUint8(Res.OPCODE);
  if ((opcode & RESPONSE_BIT) === 0) {
    return { ok: false, reason: `opcode ${hex(opcode, 2)} is not a response` };
  }
  if (b.length !== RESPONSE_LEN) {
    return { ok: false, reason: `bad length ${b.length}, want ${RESPONSE_LEN}` };
  }
  const flags = v.getUint8(Res.FLAGS);
  if ((flags & ~RES_FLAGS_KNOWN) !== 0) {
    return { ok: false, reason: `reserved flag bits set (${hex(flags, 2)})` };
  }
  const r1 = v.getUint8(Res.RESERVED1);
  if (r1 !== 0) return { ok: false, reason: `reserved byte is ${hex(r1, 2)}` };
  const r2 = v.getUint32(Res.RESERVED2);
  if (r2 !== 0) return { ok: false, reason: `reserved field is ${hex(r2, 8)}` };
  const r3 = v.getUint32(Res.RESERVED3);
  if (r3 !== 0) return { ok: false, reason: `reserved field is ${hex(r3, 8)}` };
  const res: Response = {
    op: opcode & ~RESPONSE_BIT,
    nonce: b.slice(Res.NONCE, Res.NONCE + NONCE_LEN),
    result: v.getUint8(Res.RESULT),
    proto: v.getUint8(Res.PROTO),
    replaced: (flags & ResFlag.REPLACED) !== 0,
    shared: (flags & ResFlag.SHARED) !== 0,
    internalAddr: v.getUint32(Res.INTERNAL_ADDR),
    internalPort: v.getUint16(Res.INTERNAL_PORT),
    remoteAddr: v.getUint32(Res.REMOTE_ADDR),
    remotePort: v.getUint16(Res.REMOTE_PORT),
    publicAddr: v.getUint32(Res.PUBLIC_ADDR),
    publicPort: v.getUint16(Res.PUBLIC_PORT),
    gatewayPort: v.getUint16(Res.GATEWAY_PORT),
    lifetime: v.getUint32(Res.LIFETIME),
    epoch: v.getUint32(Res.EPOCH),
    cookie: b.slice(Res.COOKIE, Res.COOKIE + COOKIE_LEN),
  };
  if (res.result !== Result.OK) {
    const g = _grantProblem(res);
    if (g !== null) return { ok: false, reason: `error response ${g}` };
  }
  return { ok: true, res };
}

/**
 * The reply the server sends for a request it will not serve without
 * decoding it (decode failure, or a refusal such as RATE_LIMITED taken on the
 * raw bytes), or null when it must stay silent: shorter than 4 bytes, no
 * magic, the response bit set (never answer garbage or a response, so the
 * server cannot be used to amplify or to loop), or shorter than a response
 * (never send more bytes than arrived: a version-1 request, 32 bytes, gets
 * no answer).
 *
 * The reply is always version {@link PROTOCOL_VERSION} (for UNSUPPORTED_VERSION that
 * tells the client the highest version spoken). It echoes the opcode and, when
 * present, the nonce; for a full-length current-version message it also echoes the
 * protocol, addresses and ports. Grant fields are zero.
 *
 * Never throws on any bytes.
 *
 * @param b the datagram that failed
 * @param failure the result code to send (from {@link decodeRequest} or the server)
 * @param epoch the server's epoch
 * @param cookie the cookie for the datagram's source ({@link COOKIE_LEN} bytes), or none
 * @returns a {@link RESPONSE_LEN}-byte reply, or null
 */
export function errorResponseFor(
  b: Uint8Array,
  failure: { result: number },
  epoch: number,
  cookie?: Uint8Array,
): Uint8Array | null {
  const h = _header(b);
  if (h !== null && h.silent) return null;
  if (b.length < RESPONSE_LEN) return null;
  const m = new Uint8Array(RESPONSE_LEN);
  const v = view(m);
  v.setUint16(Res.MAGIC, MAGIC);
  v.setUint8(Res.VERSION, PROTOCOL_VERSION);
  v.setUint8(Res.OPCODE, b[Req.OPCODE]! | RESPONSE_BIT);
  if (b.length >= Req.NONCE + NONCE_LEN) {
    m.set(b.subarray(Req.NONCE, Req.NONCE + NONCE_LEN), Res.NONCE);
  }
  // An out-of-range code would be a caller bug; mask rather than throw so a
  // server loop can never die on the error path. OK is not an error: send MALFORMED.
  const result = failure.result & 0xff;
  v.setUint8(Res.RESULT, result === Result.OK ? Result.MALFORMED : result);
  if (h === null && b.length === REQUEST_LEN) {
    // The body is a current request layout: echo what a stateless client
    // matches on. The echoed block has the same offsets in both layouts.
    v.setUint8(Res.PROTO, b[Req.PROTO]!);
    m.set(b.subarray(ECHO_START, ECHO_END), ECHO_START);
  }
  v.setUint32(Res.EPOCH, epoch >>> 0);
  if (cookie !== undefined && cookie.length === COOKIE_LEN) m.set(cookie, Res.COOKIE);
  return m;
}

/**
 * Builds the response to a decoded request. Copies the opcode, nonce,
 * protocol and the echoed identity; for a result other than OK the grant
 * fields and flags are zero whatever `outcome` says.
 *
 * @param req the decoded request
 * @param outcome the result and, for OK, the grant
 * @param epoch the server's epoch
 * @param cookie the cookie for the request's source, sent with every answer
 * @returns the response, ready for {@link encodeResponse}
 */
export function responseFor(
  req: Request,
  outcome: {
    result: number;
    replaced?: boolean;
    shared?: boolean;
    publicAddr?: number;
    publicPort?: number;
    gatewayPort?: number;
    lifetime?: number;
  },
  epoch: number,
  cookie?: Uint8Array,
): Response {
  const ok = outcome.result === Result.OK;
  return {
    op: req.op,
    nonce: req.nonce.slice(),
    result: outcome.result,
    proto: req.proto,
    replaced: ok && (outcome.replaced ?? false),
    shared: ok && (outcome.shared ?? false),
    internalAddr: req.internalAddr,
    internalPort: req.internalPort,
    remoteAddr: req.remoteAddr,
    remotePort: req.remotePort,
    publicAddr: ok ? outcome.publicAddr ?? 0 : 0,
    publicPort: ok ? outcome.publicPort ?? 0 : 0,
    gatewayPort: ok ? outcome.gatewayPort ?? 0 : 0,
    lifetime: ok ? outcome.lifetime ?? 0 : 0,
    epoch,
    ...(cookie ? { cookie: cookie.slice() } : {}),
  };
}

/** A fresh random nonce (`crypto.getRandomValues`). Use one per transaction, the same for its retransmissions. */
export function newNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(NONCE_LEN));
}
