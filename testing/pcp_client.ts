/**
 * A byte-exact PCP (RFC 6887) and NAT-PMP (RFC 6886) client for tests,
 * written from the RFCs' layouts and deliberately independent of
 * `src/pcp/codec.ts` (it imports nothing from `src/`), so that a bug in the
 * codec shows up as a disagreement instead of being shared.
 *
 * - Builders: {@linkcode buildAnnounce}, {@linkcode buildMap},
 *   {@linkcode buildPeer}, {@linkcode buildNatPmpAddress},
 *   {@linkcode buildNatPmpMap}; options {@linkcode preferFailure},
 *   {@linkcode thirdParty}, {@linkcode filter}.
 * - Parsers: {@linkcode parsePcpResponse} and {@linkcode parseNatPmpResponse}
 *   return every field and a list of `problems` (every MUST of the response
 *   layouts that the bytes break), never throw.
 * - {@linkcode udpExchange}: sends datagrams from inside a network namespace
 *   (python3 under `ip netns exec`, through `Topology.exec`), one fresh socket
 *   per datagram so that every reply is attributed to its request.
 *
 * Layouts (RFC 6887 sections 7.1, 7.2, 7.3, 11.1, 12.1, 13; RFC 6886 3.2, 3.3):
 *
 * ```
 * PCP request header (24)   version=2 | R=0,opcode | reserved(16) | lifetime(32) | client IP(128)
 * PCP response header (24)  version=2 | R=1,opcode | reserved(8) | result(8) | lifetime(32)
 *                           | epoch(32) | reserved(96)
 * MAP data (36)             nonce(96) | protocol(8) | reserved(24) | internal port(16)
 *                           | (suggested / assigned) external port(16) | external IP(128)
 * PEER data (56)            MAP data | remote peer port(16) | reserved(16) | remote peer IP(128)
 * option                    code(8) | reserved(8) | length(16) | data, padded to 4
 * NAT-PMP requests          0 | 0                                       (2)
 *                           0 | 1 udp / 2 tcp | reserved(16) | internal port | external port
 *                           | lifetime(32)                              (12)
 * NAT-PMP responses         0 | 128 | result(16) | epoch(32) | external IPv4   (12)
 *                           0 | 128+op | result(16) | epoch(32) | internal port
 *                           | mapped external port | lifetime(32)            (16)
 * ```
 *
 * @module
 */

import type { Topology } from "./topology.ts";

/** PCP opcodes (RFC 6887 section 19.2). */
export const OP = { ANNOUNCE: 0, MAP: 1, PEER: 2 } as const;
/** PCP option codes (RFC 6887 section 13). */
export const OPT = { THIRD_PARTY: 1, PREFER_FAILURE: 2, FILTER: 3 } as const;
/** PCP result codes (RFC 6887 section 7.4), by name. */
export const RESULT = {
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
/** NAT-PMP result codes (RFC 6886 section 3.5). */
export const NATPMP_RESULT = {
  SUCCESS: 0,
  UNSUPP_VERSION: 1,
  NOT_AUTHORIZED: 2,
  NETWORK_FAILURE: 3,
  NO_RESOURCES: 4,
  UNSUPP_OPCODE: 5,
} as const;

/** A PCP option to send: its code and unpadded data. */
export interface Option {
  code: number;
  data: Uint8Array;
}

// ---------------------------------------------------------------- addresses

/** Dotted quad to its four bytes; throws on anything else (tests only). */
export function v4Bytes(text: string): Uint8Array {
  const parts = text.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${text}`);
  return Uint8Array.from(parts.map((p) => {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new Error(`not an IPv4 address: ${text}`);
    return n;
  }));
}

/** `::ffff:a.b.c.d` as 16 bytes (RFC 6887 section 5; the all-zeros IPv4 is `::ffff:0.0.0.0`). */
export function mapped(text: string): Uint8Array {
  const b = new Uint8Array(16);
  b[10] = 0xff;
  b[11] = 0xff;
  b.set(v4Bytes(text), 12);
  return b;
}

/** A 16-byte PCP address as text: dotted quad when IPv4-mapped, `::` when all zeros, else hex. */
export function addrText(b: Uint8Array): string {
  if (b.length !== 16) return `<${b.length} bytes>`;
  if (b.every((x) => x === 0)) return "::";
  const v4 = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  if (v4) return Array.from(b.subarray(12)).join(".");
  return hex(b);
}

/** Lower-case hex of bytes. */
export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Bytes of a hex string; spaces and newlines are ignored. */
export function unhex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  if (t.length % 2 || /[^0-9a-fA-F]/.test(t)) throw new Error(`bad hex: ${s}`);
  const b = new Uint8Array(t.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return b;
}

function put16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 24) & 0xff;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

function get16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

function get32(b: Uint8Array, off: number): number {
  return ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
}

// ---------------------------------------------------------------- options

/** PREFER_FAILURE (code 2, no data; MAP only). */
export function preferFailure(): Option {
  return { code: OPT.PREFER_FAILURE, data: new Uint8Array(0) };
}

/** THIRD_PARTY (code 1): the internal IP address the request is for (16 bytes). */
export function thirdParty(internal: string): Option {
  return { code: OPT.THIRD_PARTY, data: mapped(internal) };
}

/**
 * FILTER (code 3, 20 bytes: reserved, prefix length, remote peer port,
 * remote peer IP). For IPv4 the prefix length counts the mapped form
 * (96 + the IPv4 prefix), as RFC 6887 section 13.3 says.
 */
export function filter(prefixLength: number, remotePort: number, remote: string): Option {
  const d = new Uint8Array(20);
  d[1] = prefixLength;
  put16(d, 2, remotePort);
  d.set(mapped(remote), 4);
  return { code: OPT.FILTER, data: d };
}

function optionsBytes(opts: readonly Option[]): Uint8Array {
  const total = opts.reduce((n, o) => n + 4 + Math.ceil(o.data.length / 4) * 4, 0);
  const b = new Uint8Array(total);
  let off = 0;
  for (const o of opts) {
    b[off] = o.code;
    put16(b, off + 2, o.data.length);
    b.set(o.data, off + 4);
    off += 4 + Math.ceil(o.data.length / 4) * 4;
  }
  return b;
}

// ---------------------------------------------------------------- PCP requests

/** Fields of every PCP request. */
export interface Common {
  /** Requested lifetime, seconds. */
  lifetime: number;
  /** The client's IP address field (dotted quad, sent IPv4-mapped). */
  client: string;
  /** Version byte (default 2): other values test UNSUPP_VERSION. */
  version?: number;
  /** Opcode byte as sent, overriding R and opcode (tests of the R bit). */
  opByte?: number;
  /** Options after the opcode data. */
  options?: readonly Option[];
}

/** MAP fields (RFC 6887 section 11.1). */
export interface MapFields extends Common {
  /** 12 bytes. */
  nonce: Uint8Array;
  /** IP protocol: 6, 17, 0 = all. */
  protocol: number;
  internalPort: number;
  /** Suggested external port (0: no preference). */
  externalPort?: number;
  /** Suggested external address (dotted quad; default `::ffff:0.0.0.0`, no preference). */
  externalAddr?: string;
}

/** PEER fields (RFC 6887 section 12.1). */
export interface PeerFields extends MapFields {
  remotePort: number;
  remoteAddr: string;
}

function header(op: number, c: Common, dataLen: number): Uint8Array {
  const opts = optionsBytes(c.options ?? []);
  const b = new Uint8Array(24 + dataLen + opts.length);
  b[0] = c.version ?? 2;
  b[1] = c.opByte ?? (op & 0x7f);
  put32(b, 4, c.lifetime >>> 0);
  b.set(mapped(c.client), 8);
  b.set(opts, 24 + dataLen);
  return b;
}

function mapData(b: Uint8Array, f: MapFields): void {
  if (f.nonce.length !== 12) throw new Error(`a nonce is 12 bytes, not ${f.nonce.length}`);
  b.set(f.nonce, 24);
  b[36] = f.protocol;
  put16(b, 40, f.internalPort);
  put16(b, 42, f.externalPort ?? 0);
  b.set(mapped(f.externalAddr ?? "0.0.0.0"), 44);
}

/** An ANNOUNCE request (24 bytes plus options). */
export function buildAnnounce(c: Common): Uint8Array {
  return header(OP.ANNOUNCE, c, 0);
}

/** A MAP request (60 bytes plus options). */
export function buildMap(f: MapFields): Uint8Array {
  const b = header(OP.MAP, f, 36);
  mapData(b, f);
  return b;
}

/** A PEER request (80 bytes plus options). */
export function buildPeer(f: PeerFields): Uint8Array {
  const b = header(OP.PEER, f, 56);
  mapData(b, f);
  put16(b, 60, f.remotePort);
  b.set(mapped(f.remoteAddr), 64);
  return b;
}

/** NAT-PMP external address request (2 bytes). */
export function buildNatPmpAddress(): Uint8Array {
  return Uint8Array.of(0, 0);
}

/** NAT-PMP map request (12 bytes): op 1 UDP, 2 TCP. */
export function buildNatPmpMap(
  op: 1 | 2,
  internalPort: number,
  externalPort: number,
  lifetime: number,
): Uint8Array {
  const b = new Uint8Array(12);
  b[1] = op;
  put16(b, 4, internalPort);
  put16(b, 6, externalPort);
  put32(b, 8, lifetime >>> 0);
  return b;
}

/** 12 random nonce bytes. */
export function randomNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(12));
}

// ---------------------------------------------------------------- PCP responses

/** A parsed PCP response option. */
export interface ParsedOption {
  code: number;
  length: number;
  data: Uint8Array;
}

/** Every field of a PCP response, and what is wrong with it. */
export interface PcpResponse {
  version: number;
  /** The R bit. */
  response: boolean;
  opcode: number;
  result: number;
  lifetime: number;
  epoch: number;
  /** MAP/PEER (null for ANNOUNCE and unknown opcodes). */
  nonce: Uint8Array | null;
  protocol: number | null;
  internalPort: number | null;
  externalPort: number | null;
  /** Assigned external address as text (dotted quad, `::`, or hex). */
  externalAddr: string | null;
  /** PEER. */
  remotePort: number | null;
  remoteAddr: string | null;
  options: ParsedOption[];
  /** Layout rules the bytes break; empty for a well-formed response. */
  problems: string[];
  /**
   * Those of the common header alone (length, version, R bit, reserved
   * header bytes). An error response copies the request's opcode data and
   * options (RFC 6887 section 8.3), so only these bind it.
   */
  headerProblems: string[];
  length: number;
}

/** Opcode data length of the opcodes RFC 6887 defines. */
export function opcodeDataLength(op: number): number | null {
  return op === OP.ANNOUNCE ? 0 : op === OP.MAP ? 36 : op === OP.PEER ? 56 : null;
}

/**
 * Parses a PCP response. Never throws. An error response copies the
 * request's opcode data (RFC 6887 section 8.3), so an unknown opcode's data
 * is not parsed, only its length checked.
 */
export function parsePcpResponse(b: Uint8Array): PcpResponse {
  const problems: string[] = [];
  const r: PcpResponse = {
    version: b[0] ?? -1,
    response: ((b[1] ?? 0) & 0x80) !== 0,
    opcode: (b[1] ?? 0) & 0x7f,
    result: b[3] ?? -1,
    lifetime: b.length >= 8 ? get32(b, 4) : 0,
    epoch: b.length >= 12 ? get32(b, 8) : 0,
    nonce: null,
    protocol: null,
    internalPort: null,
    externalPort: null,
    externalAddr: null,
    remotePort: null,
    remoteAddr: null,
    options: [],
    problems,
    headerProblems: [],
    length: b.length,
  };
  if (b.length < 24) {
    problems.push(`${b.length} bytes, shorter than the 24-byte header`);
    r.headerProblems = problems.slice();
    return r;
  }
  if (b.length > 1100) problems.push(`${b.length} bytes, longer than 1100`);
  if (b.length % 4) problems.push(`${b.length} bytes, not a multiple of 4`);
  if (r.version !== 2) problems.push(`version ${r.version}, not 2`);
  if (!r.response) problems.push("R bit clear");
  if (b[2] !== 0) problems.push(`reserved byte 2 is ${b[2]}`);
  if (!b.subarray(12, 24).every((x) => x === 0)) problems.push("reserved bytes 12-23 not zero");
  r.headerProblems = problems.slice();
  const dataLen = opcodeDataLength(r.opcode);
  if (dataLen === null) return r; // an error reply to an unknown opcode: the request's bytes
  if (b.length < 24 + dataLen) {
    problems.push(`${b.length} bytes, opcode ${r.opcode} needs ${24 + dataLen}`);
    return r;
  }
  if (dataLen > 0) {
    r.nonce = b.slice(24, 36);
    r.protocol = b[36]!;
    if (!b.subarray(37, 40).every((x) => x === 0)) problems.push("MAP reserved bytes not zero");
    r.internalPort = get16(b, 40);
    r.externalPort = get16(b, 42);
    r.externalAddr = addrText(b.subarray(44, 60));
  }
  if (r.opcode === OP.PEER) {
    r.remotePort = get16(b, 60);
    if (get16(b, 62) !== 0) problems.push("PEER reserved bytes not zero");
    r.remoteAddr = addrText(b.subarray(64, 80));
  }
  let off = 24 + dataLen;
  while (off < b.length) {
    if (b.length - off < 4) {
      problems.push(`${b.length - off} trailing bytes, not an option`);
      break;
    }
    const code = b[off]!;
    const length = get16(b, off + 2);
    const padded = Math.ceil(length / 4) * 4;
    if (off + 4 + padded > b.length) {
      problems.push(`option ${code} (length ${length}) overruns the message`);
      break;
    }
    if (b[off + 1] !== 0) problems.push(`option ${code} reserved byte not zero`);
    if (!b.subarray(off + 4 + length, off + 4 + padded).every((x) => x === 0)) {
      problems.push(`option ${code} padding not zero`);
    }
    r.options.push({ code, length, data: b.slice(off + 4, off + 4 + length) });
    off += 4 + padded;
  }
  return r;
}

/** Every field of a NAT-PMP response, and what is wrong with it. */
export interface NatPmpResponse {
  version: number;
  /** The opcode without the response bit (128). */
  opcode: number;
  response: boolean;
  result: number;
  epoch: number;
  /** op 0: the external address (dotted quad). */
  externalAddr: string | null;
  /** op 1/2. */
  internalPort: number | null;
  externalPort: number | null;
  lifetime: number | null;
  problems: string[];
  length: number;
}

/**
 * Parses a NAT-PMP response (RFC 6886 sections 3.2, 3.3, 3.5): 12 bytes for
 * op 0, 16 for ops 1 and 2, 8 for an error with no layout of its own (the
 * "unsupported version" layout). Never throws.
 */
export function parseNatPmpResponse(b: Uint8Array): NatPmpResponse {
  const problems: string[] = [];
  const r: NatPmpResponse = {
    version: b[0] ?? -1,
    opcode: (b[1] ?? 0) & 0x7f,
    response: ((b[1] ?? 0) & 0x80) !== 0,
    result: b.length >= 4 ? get16(b, 2) : -1,
    epoch: b.length >= 8 ? get32(b, 4) : 0,
    externalAddr: null,
    internalPort: null,
    externalPort: null,
    lifetime: null,
    problems,
    length: b.length,
  };
  if (b.length < 8) {
    problems.push(`${b.length} bytes, shorter than 8`);
    return r;
  }
  if (r.version !== 0) problems.push(`version ${r.version}, not 0`);
  if (!r.response) problems.push("response bit (128) clear");
  if (r.opcode === 0 && b.length === 12) {
    r.externalAddr = Array.from(b.subarray(8, 12)).join(".");
  } else if ((r.opcode === 1 || r.opcode === 2) && b.length === 16) {
    r.internalPort = get16(b, 8);
    r.externalPort = get16(b, 10);
    r.lifetime = get32(b, 12);
  } else if (b.length !== 8) {
    problems.push(`${b.length} bytes for opcode ${r.opcode}`);
  } else if (r.result === 0) {
    problems.push("an 8-byte response with result SUCCESS");
  }
  return r;
}

// ---------------------------------------------------------------- UDP from a namespace

/** One datagram's fate in {@linkcode udpExchange}. */
export interface Exchanged {
  /** The request, as sent. */
  sent: Uint8Array;
  /** The reply to it, or null when none came within the timeout. */
  reply: Uint8Array | null;
  /** The reply's source `addr:port`. */
  from: string | null;
}

const EXCHANGE_PY = `
import json, selectors, socket, sys, time
cfg = json.load(sys.stdin)
dgrams = [bytes.fromhex(h) for h in cfg["hex"]]
target = (cfg["host"], cfg["port"])
timeout = cfg["timeoutMs"] / 1000.0
window = cfg["window"]
sel = selectors.DefaultSelector()
out = [None] * len(dgrams)
nxt = 0
live = {}
while nxt < len(dgrams) or live:
    while nxt < len(dgrams) and len(live) < window:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if cfg.get("bind"):
            s.bind((cfg["bind"], 0))
        try:
            s.sendto(dgrams[nxt], target)
        except OSError as e:
            out[nxt] = {"error": str(e)}
            s.close()
            nxt += 1
            continue
        sel.register(s, selectors.EVENT_READ, nxt)
        live[s] = (nxt, time.monotonic() + timeout)
        nxt += 1
    wait = max(0.0, min(d for (_, d) in live.values()) - time.monotonic()) if live else 0
    for key, _ in sel.select(wait):
        s = key.fileobj
        try:
            d, a = s.recvfrom(65535)
            out[key.data] = {"reply": d.hex(), "from": "%s:%d" % a}
        except OSError as e:
            out[key.data] = {"error": str(e)}
        sel.unregister(s)
        del live[s]
        s.close()
    now = time.monotonic()
    for s, (i, d) in list(live.items()):
        if d <= now:
            sel.unregister(s)
            del live[s]
            s.close()
print(json.dumps(out))
`;

/**
 * Sends each datagram to `host:port` from namespace `ns`, each from a fresh
 * UDP socket (so a reply is its request's), at most `window` in flight, and
 * waits up to `timeoutMs` for each reply. Throws when python3 fails.
 */
export async function udpExchange(
  t: Pick<Topology, "exec">,
  ns: string,
  host: string,
  port: number,
  datagrams: readonly Uint8Array[],
  opts: { timeoutMs?: number; window?: number; bind?: string } = {},
): Promise<Exchanged[]> {
  const timeoutMs = opts.timeoutMs ?? 300;
  const window = opts.window ?? 64;
  const cfg = {
    hex: datagrams.map(hex),
    host,
    port,
    timeoutMs,
    window,
    bind: opts.bind ?? null,
  };
  const budget = 15_000 + Math.ceil(datagrams.length / window) * (timeoutMs + 50);
  const r = await t.exec(ns, ["python3", "-c", EXCHANGE_PY], {
    stdin: JSON.stringify(cfg),
    timeoutMs: budget,
  });
  if (r.code !== 0) throw new Error(`udpExchange failed (${r.code}): ${r.stderr}`);
  const out = JSON.parse(
    r.stdout,
  ) as ({ reply: string; from: string } | { error: string } | null)[];
  return out.map((o, i) => {
    if (o && "error" in o) throw new Error(`udpExchange: datagram ${i}: ${o.error}`);
    return {
      sent: datagrams[i]!,
      reply: o ? unhex(o.reply) : null,
      from: o ? o.from : null,
    };
  });
}

const LISTEN_PY = `
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
t0 = time.monotonic()
while True:
    d, a = s.recvfrom(65535)
    print(json.dumps({"t": round((time.monotonic() - t0) * 1000), "from": "%s:%d" % a,
                      "hex": d.hex()}), flush=True)
`;

/**
 * A command for `Topology.spawn` that listens on `0.0.0.0:port` (5350: the
 * clients' port for unsolicited announcements), prints "listening", then one
 * JSON line `{t, from, hex}` per datagram (`t`: ms since it started).
 */
export function udpListenCommand(port = 5350): string[] {
  return ["python3", "-u", "-c", LISTEN_PY, String(port)];
}

/** The datagrams a {@linkcode udpListenCommand} printed so far. */
export function heard(output: string): { t: number; from: string; bytes: Uint8Array }[] {
  return output.split("\n").filter((l) => l.startsWith("{")).map((l) => {
    const o = JSON.parse(l) as { t: number; from: string; hex: string };
    return { t: o.t, from: o.from, bytes: unhex(o.hex) };
  });
}

// ---------------------------------------------------------------- reply rules

/**
 * What is wrong with `reply` as the server's answer to `req` (empty: all
 * is well): a response or a datagram under 2 bytes is never answered
 * (RFC 6887 section 8.3, RFC 6886 section 3.5); a NAT-PMP reply is a
 * well-formed response to the same opcode, at most 16 bytes (no
 * amplification beyond the RFC's own 12-byte answer to a 2-byte request);
 * a PCP reply is version 2 with the R bit and the request's opcode, its
 * header well-formed (a success: all of it), a multiple of 4, at most 1100
 * bytes and never longer than the request; a version other than 0 and 2 is
 * answered UNSUPP_VERSION, a success echoes the nonce.
 */
export function replyProblems(req: Uint8Array, reply: Uint8Array): string[] {
  const out: string[] = [];
  if (req.length < 2) return [`a ${req.length}-byte datagram was answered`];
  if (req[1]! & 0x80) return ["a datagram with the R bit set was answered"];
  if (reply.length > 1100) out.push(`reply of ${reply.length} bytes`);
  if (req[0] === 0) {
    const r = parseNatPmpResponse(reply);
    out.push(...r.problems);
    if (r.opcode !== req[1]) out.push(`NAT-PMP reply opcode ${r.opcode} to opcode ${req[1]}`);
    if (reply.length > Math.max(req.length, 16)) {
      out.push(`NAT-PMP reply of ${reply.length} bytes to ${req.length}`);
    }
    return out;
  }
  const r = parsePcpResponse(reply);
  out.push(...(r.result === RESULT.SUCCESS ? r.problems : r.headerProblems));
  if (reply.length > req.length) out.push(`PCP reply of ${reply.length} bytes to ${req.length}`);
  if (r.opcode !== (req[1]! & 0x7f)) out.push(`PCP reply opcode ${r.opcode} to ${req[1]! & 0x7f}`);
  if (req[0] !== 2 && r.result !== RESULT.UNSUPP_VERSION) {
    out.push(`version ${req[0]} answered result ${r.result}, not UNSUPP_VERSION`);
  }
  if (r.result === RESULT.SUCCESS) {
    if (req[0] !== 2 || req.length % 4 || req.length > 1100) {
      out.push("a malformed request succeeded");
    }
    if (r.nonce && hex(r.nonce) !== hex(req.subarray(24, 36))) out.push("nonce not echoed");
  }
  return out;
}
