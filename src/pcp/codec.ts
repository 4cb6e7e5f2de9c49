/**
 * Wire codec of the two mapping-control protocols existing software speaks
 * to a gateway on UDP 5351: NAT-PMP (RFC 6886, version 0) and PCP (RFC 6887,
 * version 2), told apart by the first byte (RFC 6887 section 9). IPv4 only:
 * PCP's 16-byte addresses are IPv4-mapped (`::ffff:a.b.c.d`).
 *
 * Decoders never throw and check exact lengths: a NAT-PMP request is exactly
 * 2 (external address) or 12 (map) bytes; a PCP request is the 24-byte
 * header, the opcode's fixed data (ANNOUNCE 0, MAP 36, PEER 56 bytes) and
 * whole options, at most 1100 bytes and a multiple of 4. Reserved fields are
 * ignored on receipt, as both RFCs say. `docs/pcp.md` has the layouts.
 *
 * @module
 */

/** The UDP port of both protocols (RFC 6886, RFC 6887). */
export const PCP_PORT = 5351;
/** NAT-PMP's version byte. */
export const NATPMP_VERSION = 0;
/** PCP's version byte: the highest version this server speaks. */
export const PCP_VERSION = 2;
/** Longest PCP message (RFC 6887 section 7). */
export const PCP_MAX_LEN = 1100;
/** PCP common header length. */
export const PCP_HEADER_LEN = 24;
/** The response bit of PCP's opcode byte and NAT-PMP's opcode. */
export const RESPONSE_BIT = 0x80;

/** NAT-PMP opcodes (requests; responses add 128). */
export const NatPmpOp = { EXTERNAL_ADDRESS: 0, MAP_UDP: 1, MAP_TCP: 2 } as const;

/** NAT-PMP result codes (RFC 6886 section 3.5). */
export const NatPmpResult = {
  SUCCESS: 0,
  UNSUPP_VERSION: 1,
  NOT_AUTHORIZED: 2,
  NETWORK_FAILURE: 3,
  NO_RESOURCES: 4,
  UNSUPP_OPCODE: 5,
} as const;

/** PCP opcodes (RFC 6887 section 19.2). */
export const PcpOp = { ANNOUNCE: 0, MAP: 1, PEER: 2 } as const;

/** PCP result codes (RFC 6887 section 7.4). */
export const PcpResult = {
  SUCCESS: 0,
  UNSUPP_VERSION: 1,
  NOT_AUTHORIZED: 2,
  MALFORMED_REQUEST: 3,
  UNSUPP_OPCODE: 4,
  UNSUPP_OPTION: 5,
  MALFORMED_OPTION: 6,
  NETWORK_FAILURE: 7,
  NO_RESOURCES: 8,
  UNSUPP_PROTOCOL: 9,
  USER_EX_QUOTA: 10,
  CANNOT_PROVIDE_EXTERNAL: 11,
  ADDRESS_MISMATCH: 12,
  EXCESSIVE_REMOTE_PEERS: 13,
} as const;

/** PCP option codes (RFC 6887 section 13). */
export const PcpOption = { THIRD_PARTY: 1, PREFER_FAILURE: 2, FILTER: 3 } as const;

/** Opcode data length per PCP opcode. */
const OPCODE_LEN: Record<number, number> = { 0: 0, 1: 36, 2: 56 };

/** A PCP option as received. */
export interface PcpOptionField {
  code: number;
  data: Uint8Array;
}

/** A decoded NAT-PMP request. */
export type NatPmpRequest =
  | { kind: "natpmp"; op: 0 }
  | {
    kind: "natpmp";
    op: 1 | 2;
    /** 17 for op 1, 6 for op 2. */
    proto: number;
    internalPort: number;
    /** Suggested external port; 0: any. */
    externalPort: number;
    /** Seconds; 0 deletes. */
    lifetime: number;
  };

/**
 * The MAP / PEER opcode data after the header, the same fields in requests
 * and responses (`docs/pcp.md`); ANNOUNCE has none (all 0, no nonce).
 */
export interface PcpOpcodeData {
  /** MAP/PEER: the mapping nonce (12 bytes); empty for ANNOUNCE. */
  nonce: Uint8Array;
  /** MAP/PEER: IP protocol, 0 = all. */
  proto: number;
  internalPort: number;
  /** Suggested (request) or assigned (response) external port; 0: any. */
  externalPort: number;
  /** External address (IPv4, host order); 0: any (also for `::` and non-IPv4). */
  externalAddr: number;
  /** PEER only: remote peer port and address (IPv4, or null when not IPv4-mapped). */
  remotePort: number;
  remoteAddr: number | null;
}

/** The opcode data to encode: an absent field is written 0. */
export type PcpOpcodeFields = Partial<Omit<PcpOpcodeData, "remoteAddr"> & { remoteAddr: number }>;

/** A decoded PCP request (ANNOUNCE, MAP or PEER). */
export interface PcpRequest extends PcpOpcodeData {
  kind: "pcp";
  op: number;
  /** Requested lifetime, seconds (MAP/PEER: 0 deletes). */
  lifetime: number;
  /** The client's IP address field, as sent (16 bytes). */
  client: Uint8Array;
  /** That address as IPv4 (host order), or null when it is not IPv4-mapped. */
  clientV4: number | null;
  /** Options in order (unknown optional ones included). */
  options: PcpOptionField[];
  /** PREFER_FAILURE was present (MAP). */
  preferFailure: boolean;
}

/** What a decoder returns. `answer` false: send nothing (garbage, a response). */
export type DecodeResult =
  | { ok: true; req: NatPmpRequest | PcpRequest }
  | { ok: false; answer: boolean; version: number; result: number; reason: string };

const V4_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/** The IPv4 address of a 16-byte IPv4-mapped address, or null. */
export function fromMapped(b: Uint8Array, off = 0): number | null {
  if (b.length < off + 16) return null;
  for (let i = 0; i < 12; i++) if (b[off + i] !== V4_PREFIX[i]) return null;
  return ((b[off + 12]! << 24) | (b[off + 13]! << 16) | (b[off + 14]! << 8) | b[off + 15]!) >>> 0;
}

/** Writes `::ffff:a` at `off`. */
export function writeMapped(b: Uint8Array, off: number, a: number): void {
  b.set(V4_PREFIX, off);
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off + 12, a >>> 0);
}

function fail(answer: boolean, version: number, result: number, reason: string): DecodeResult {
  return { ok: false, answer, version, result, reason };
}

/**
 * Decodes a datagram received on UDP 5351. Never throws. Version 0 is
 * NAT-PMP, 2 is PCP; any other version gets PCP's UNSUPP_VERSION (with
 * version 2, the highest spoken) when the datagram is at least a PCP header
 * long, else nothing.
 */
export function decodeRequest(b: Uint8Array): DecodeResult {
  if (b.length < 2) return fail(false, 0, 0, `${b.length} byte(s)`);
  const version = b[0]!;
  const opByte = b[1]!;
  if (version === NATPMP_VERSION) return decodeNatPmp(b);
  if (opByte & RESPONSE_BIT) return fail(false, version, 0, "a response");
  if (version !== PCP_VERSION) {
    return fail(
      b.length >= PCP_HEADER_LEN,
      version,
      PcpResult.UNSUPP_VERSION,
      `version ${version}`,
    );
  }
  return decodePcp(b);
}

function decodeNatPmp(b: Uint8Array): DecodeResult {
  const op = b[1]!;
  if (op & RESPONSE_BIT) return fail(false, 0, 0, "a response");
  if (op === NatPmpOp.EXTERNAL_ADDRESS) {
    if (b.length !== 2) return fail(false, 0, 0, `bad length ${b.length}, want 2`);
    return { ok: true, req: { kind: "natpmp", op: 0 } };
  }
  if (op !== NatPmpOp.MAP_UDP && op !== NatPmpOp.MAP_TCP) {
    return fail(true, 0, NatPmpResult.UNSUPP_OPCODE, `opcode ${op}`);
  }
  if (b.length !== 12) return fail(false, 0, 0, `bad length ${b.length}, want 12`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    ok: true,
    req: {
      kind: "natpmp",
      op,
      proto: op === NatPmpOp.MAP_UDP ? 17 : 6,
      internalPort: v.getUint16(4),
      externalPort: v.getUint16(6),
      lifetime: v.getUint32(8),
    },
  };
}

function decodePcp(b: Uint8Array): DecodeResult {
  const len = b.length;
  const M = PcpResult.MALFORMED_REQUEST;
  // Shorter than a header: an answer would be longer than the request.
  if (len < PCP_HEADER_LEN) return fail(false, 2, M, `${len} bytes, shorter than a header`);
  if (len > PCP_MAX_LEN || len % 4 !== 0) {
    return fail(true, 2, M, `bad length ${len} (at most ${PCP_MAX_LEN}, a multiple of 4)`);
  }
  const op = b[1]! & 0x7f;
  const dataLen = OPCODE_LEN[op];
  if (dataLen === undefined) return fail(true, 2, PcpResult.UNSUPP_OPCODE, `opcode ${op}`);
  if (len < PCP_HEADER_LEN + dataLen) {
    return fail(true, 2, M, `bad length ${len}, opcode ${op} wants at least ${24 + dataLen}`);
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const client = b.slice(8, 24);
  const req: PcpRequest = {
    kind: "pcp",
    op,
    lifetime: v.getUint32(4),
    client,
    clientV4: fromMapped(client),
    ...readOpcodeData(b, v, op),
    options: [],
    preferFailure: false,
  };
  if (op === PcpOp.MAP || op === PcpOp.PEER) {
    if (op === PcpOp.PEER) {
      if (req.remotePort === 0 || req.remoteAddr === null || req.remoteAddr === 0) {
        return fail(true, 2, M, "PEER without a remote IPv4 address and port");
      }
    }
    if (req.proto !== 0 && req.internalPort === 0 && req.lifetime !== 0) {
      return fail(true, 2, M, "internal port 0 with a protocol and a lifetime");
    }
    if (op === PcpOp.PEER && (req.proto === 0 || req.internalPort === 0)) {
      return fail(true, 2, M, "PEER with protocol or internal port 0");
    }
  }
  // Options: code, reserved, length, data padded to 4 (RFC 6887 section 7.3).
  let off = PCP_HEADER_LEN + dataLen;
  while (off < len) {
    if (len - off < 4) return fail(true, 2, PcpResult.MALFORMED_OPTION, "truncated option");
    const code = b[off]!;
    const olen = v.getUint16(off + 2);
    const padded = (olen + 3) & ~3;
    if (off + 4 + padded > len) {
      return fail(true, 2, PcpResult.MALFORMED_OPTION, `option ${code} overruns the message`);
    }
    const data = b.slice(off + 4, off + 4 + olen);
    off += 4 + padded;
    const known = code === PcpOption.THIRD_PARTY || code === PcpOption.PREFER_FAILURE ||
      code === PcpOption.FILTER;
    if (!known) {
      // 0-127 must be processed (unknown: UNSUPP_OPTION); 128-255 may be ignored.
      if (code < 128) return fail(true, 2, PcpResult.UNSUPP_OPTION, `option ${code}`);
      req.options.push({ code, data });
      continue;
    }
    const valid = code === PcpOption.THIRD_PARTY
      ? op !== PcpOp.ANNOUNCE && olen === 16
      : code === PcpOption.PREFER_FAILURE
      ? op === PcpOp.MAP && olen === 0 && !req.preferFailure
      : op === PcpOp.MAP && olen === 20;
    if (!valid) return fail(true, 2, PcpResult.MALFORMED_OPTION, `option ${code} not valid here`);
    if (code === PcpOption.PREFER_FAILURE) req.preferFailure = true;
    req.options.push({ code, data });
  }
  return { ok: true, req };
}

// ------------------------------------------------------------------ encoders

/**
 * A NAT-PMP response of `size` bytes with the header every response starts
 * with (version 0, the opcode with the response bit, result, epoch); the
 * caller writes the rest.
 */
function natPmpResponse(
  size: number,
  op: number,
  result: number,
  epoch: number,
): [Uint8Array, DataView] {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b[1] = RESPONSE_BIT | (op & 0x7f);
  v.setUint16(2, result);
  v.setUint32(4, epoch >>> 0);
  return [b, v];
}

/** NAT-PMP external address response (12 bytes). */
export function natPmpAddressResponse(result: number, epoch: number, addr: number): Uint8Array {
  const [b, v] = natPmpResponse(12, NatPmpOp.EXTERNAL_ADDRESS, result, epoch);
  v.setUint32(8, result === NatPmpResult.SUCCESS ? addr >>> 0 : 0);
  return b;
}

/** NAT-PMP map response (16 bytes). */
export function natPmpMapResponse(
  op: number,
  result: number,
  epoch: number,
  internalPort: number,
  externalPort: number,
  lifetime: number,
): Uint8Array {
  const [b, v] = natPmpResponse(16, op, result, epoch);
  v.setUint16(8, internalPort);
  v.setUint16(10, externalPort);
  v.setUint32(12, lifetime >>> 0);
  return b;
}

/** A NAT-PMP error for an opcode that has no layout (8 bytes: version, op, result, epoch). */
export function natPmpErrorResponse(op: number, result: number, epoch: number): Uint8Array {
  return natPmpResponse(8, op, result, epoch)[0];
}

/**
 * The fields of a PCP response. MAP/PEER: the echoed nonce, protocol and
 * internal port, the assigned external pair; PEER: the echoed remote.
 */
export interface PcpResponse extends PcpOpcodeFields {
  op: number;
  result: number;
  lifetime: number;
  epoch: number;
  /** Options to send back (those the server processed, RFC 6887 section 7.3). */
  options?: PcpOptionField[];
}

function optionsLen(opts: PcpOptionField[]): number {
  let n = 0;
  for (const o of opts) n += 4 + ((o.data.length + 3) & ~3);
  return n;
}

/**
 * The opcode data of `op` at `PCP_HEADER_LEN`, as {@link writeBody} writes
 * it: zeros and no nonce for ANNOUNCE, the remote peer for PEER only. The
 * caller has checked that the message holds the opcode's data.
 */
function readOpcodeData(b: Uint8Array, v: DataView, op: number): PcpOpcodeData {
  const o = PCP_HEADER_LEN;
  const has = (OPCODE_LEN[op] ?? 0) > 0;
  const peer = op === PcpOp.PEER;
  return {
    nonce: has ? b.slice(o, o + 12) : new Uint8Array(0),
    proto: has ? b[o + 12]! : 0,
    internalPort: has ? v.getUint16(o + 16) : 0,
    externalPort: has ? v.getUint16(o + 18) : 0,
    externalAddr: has ? fromMapped(b, o + 20) ?? 0 : 0,
    remotePort: peer ? v.getUint16(o + 36) : 0,
    remoteAddr: peer ? fromMapped(b, o + 40) : null,
  };
}

/**
 * The MAP / PEER opcode data and the options after the header, the same in
 * requests and responses. An external address of 0 is written
 * `::ffff:0.0.0.0` (RFC 6887 section 11.1: no preference / none).
 */
function writeBody(
  b: Uint8Array,
  v: DataView,
  r: PcpOpcodeFields & { op: number },
  dataLen: number,
  opts: PcpOptionField[],
): void {
  if (dataLen) {
    const o = PCP_HEADER_LEN;
    b.set((r.nonce ?? new Uint8Array(12)).subarray(0, 12), o);
    b[o + 12] = r.proto ?? 0;
    v.setUint16(o + 16, r.internalPort ?? 0);
    v.setUint16(o + 18, r.externalPort ?? 0);
    writeMapped(b, o + 20, r.externalAddr ?? 0);
    if (r.op === PcpOp.PEER) {
      v.setUint16(o + 36, r.remotePort ?? 0);
      writeMapped(b, o + 40, r.remoteAddr ?? 0);
    }
  }
  let off = PCP_HEADER_LEN + dataLen;
  for (const o of opts) {
    b[off] = o.code;
    v.setUint16(off + 2, o.data.length);
    b.set(o.data, off + 4);
    off += 4 + ((o.data.length + 3) & ~3);
  }
}

/**
 * A PCP message of `r.op`'s length: the version, `opByte`, the opcode data
 * and the options; the caller writes the rest of the header.
 */
function pcpMessage(
  r: PcpOpcodeFields & { op: number; options?: PcpOptionField[] },
  opByte: number,
): [Uint8Array, DataView] {
  const dataLen = OPCODE_LEN[r.op] ?? 0;
  const opts = r.options ?? [];
  const b = new Uint8Array(PCP_HEADER_LEN + dataLen + optionsLen(opts));
  const v = new DataView(b.buffer);
  b[0] = PCP_VERSION;
  b[1] = opByte;
  writeBody(b, v, r, dataLen, opts);
  return [b, v];
}

/** Encodes a PCP response. */
export function encodePcpResponse(r: PcpResponse): Uint8Array {
  const [b, v] = pcpMessage(r, RESPONSE_BIT | r.op);
  b[3] = r.result;
  v.setUint32(4, r.lifetime >>> 0);
  v.setUint32(8, r.epoch >>> 0);
  return b;
}

/**
 * A PCP error response built from the request's own bytes (RFC 6887 section
 * 8.3: the request is copied, R bit, result, lifetime and epoch set, the rest
 * of the header zeroed): never longer than the request, at most 1100 bytes,
 * a multiple of 4; null when the request is shorter than a header.
 */
export function pcpErrorResponse(
  req: Uint8Array,
  result: number,
  lifetime: number,
  epoch: number,
): Uint8Array | null {
  const n = Math.min(req.length, PCP_MAX_LEN) & ~3;
  if (n < PCP_HEADER_LEN) return null;
  const b = req.slice(0, n);
  const v = new DataView(b.buffer);
  b[0] = PCP_VERSION;
  b[1] = RESPONSE_BIT | (b[1]! & 0x7f);
  b[2] = 0;
  b[3] = result;
  v.setUint32(4, lifetime >>> 0);
  v.setUint32(8, epoch >>> 0);
  b.fill(0, 12, 24);
  return b;
}

// ------------------------------------------------------------------ client side (tests, `dpm map`)

/** A PCP request to encode. */
export interface PcpRequestFields extends PcpOpcodeFields {
  op: number;
  lifetime: number;
  client: number;
  options?: PcpOptionField[];
}

/** Encodes a PCP request. */
export function encodePcpRequest(r: PcpRequestFields): Uint8Array {
  const [b, v] = pcpMessage(r, r.op & 0x7f);
  v.setUint32(4, r.lifetime >>> 0);
  writeMapped(b, 8, r.client);
  return b;
}

/** Encodes a NAT-PMP request: op 0 (2 bytes) or a map (12 bytes). */
export function encodeNatPmpRequest(
  op: number,
  internalPort = 0,
  externalPort = 0,
  lifetime = 0,
): Uint8Array {
  if (op === 0) return Uint8Array.of(0, 0);
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  b[1] = op;
  v.setUint16(4, internalPort);
  v.setUint16(6, externalPort);
  v.setUint32(8, lifetime >>> 0);
  return b;
}

/** A decoded PCP response (MAP/PEER fields zero for ANNOUNCE; the remote 0 but for PEER). */
export interface DecodedPcpResponse extends Omit<PcpOpcodeData, "remoteAddr"> {
  op: number;
  result: number;
  lifetime: number;
  epoch: number;
  remoteAddr: number;
}

/** Decodes a PCP response, or null (not one, wrong length). Never throws. */
export function decodePcpResponse(b: Uint8Array): DecodedPcpResponse | null {
  if (b.length < PCP_HEADER_LEN || b.length > PCP_MAX_LEN || b.length % 4) return null;
  if (b[0] !== PCP_VERSION || !(b[1]! & RESPONSE_BIT)) return null;
  const op = b[1]! & 0x7f;
  const dataLen = OPCODE_LEN[op] ?? 0;
  if (b.length < PCP_HEADER_LEN + dataLen) return null;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const data = readOpcodeData(b, v, op);
  return {
    op,
    result: b[3]!,
    lifetime: v.getUint32(4),
    epoch: v.getUint32(8),
    ...data,
    remoteAddr: data.remoteAddr ?? 0,
  };
}

/** A decoded NAT-PMP response. */
export interface DecodedNatPmpResponse {
  op: number;
  result: number;
  epoch: number;
  /** op 0: the external address. */
  externalAddr: number;
  internalPort: number;
  externalPort: number;
  lifetime: number;
}

/** Decodes a NAT-PMP response, or null. Never throws. */
export function decodeNatPmpResponse(b: Uint8Array): DecodedNatPmpResponse | null {
  if (b.length < 8 || b[0] !== NATPMP_VERSION || !(b[1]! & RESPONSE_BIT)) return null;
  const op = b[1]! & 0x7f;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const base = { op, result: v.getUint16(2), epoch: v.getUint32(4) };
  if (b.length === 8) {
    return { ...base, externalAddr: 0, internalPort: 0, externalPort: 0, lifetime: 0 };
  }
  if (op === 0 && b.length === 12) {
    return { ...base, externalAddr: v.getUint32(8), internalPort: 0, externalPort: 0, lifetime: 0 };
  }
  if ((op === 1 || op === 2) && b.length === 16) {
    return {
      ...base,
      externalAddr: 0,
      internalPort: v.getUint16(8),
      externalPort: v.getUint16(10),
      lifetime: v.getUint32(12),
    };
  }
  return null;
}
