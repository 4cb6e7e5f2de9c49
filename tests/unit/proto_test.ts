/**
 * Tests of the control protocol codec (src/proto.ts) on real bytes: the
 * vectors below are the ones in docs/protocol.md.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  COOKIE_LEN,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  errorResponseFor,
  hasCookie,
  MAGIC,
  newNonce,
  Op,
  PROTOCOL_VERSION as VERSION,
  type Request,
  REQUEST_LEN,
  ResFlag,
  type Response,
  RESPONSE_LEN,
  responseFor,
} from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { parseIPv4 } from "../../src/wire/addr.ts";

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function unhex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  const out = new Uint8Array(t.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function ip(s: string): number {
  const a = parseIPv4(s);
  if (a === null) throw new Error(`bad test address ${s}`);
  return a;
}

// The example exchange of docs/protocol.md: host 192.168.1.20:50000 (UDP,
// replaceable port) reserves toward 198.51.100.7:3478; the server grants
// 203.0.113.5:40000, gateway port 61001, 120 s, epoch 0x1234abcd.
const NONCE = Uint8Array.from([0x5a, 0x17, 0xc3, 0x08, 0x9e, 0x42, 0x6b, 0xd1]);
// The host's cookie, from the server's COOKIE_REQUIRED answer (the vector at the end).
const COOKIE = unhex("9f3e2a71c4d85b06e1a7f230");

const REQ: Request = {
  op: Op.RESERVE,
  nonce: NONCE,
  proto: 17,
  replaceable: true,
  internalAddr: ip("192.168.1.20"),
  internalPort: 50000,
  remoteAddr: ip("198.51.100.7"),
  remotePort: 3478,
  lifetime: 0,
  cookie: COOKIE,
};

const REQ_BYTES = unhex(`
  4450 02 01  5a17c3089e426bd1  11 01 0000
  c0a80114  c6336407  c350 0d96  00000000
  9f3e2a71c4d85b06e1a7f230  00000000
  0000000000000000 0000000000000000`);

const RES: Response = {
  op: Op.RESERVE,
  nonce: NONCE,
  result: Result.OK,
  proto: 17,
  replaced: true,
  shared: false,
  internalAddr: ip("192.168.1.20"),
  internalPort: 50000,
  remoteAddr: ip("198.51.100.7"),
  remotePort: 3478,
  publicAddr: ip("203.0.113.5"),
  publicPort: 40000,
  gatewayPort: 61001,
  lifetime: 120,
  epoch: 0x1234abcd,
  cookie: COOKIE,
};

const RES_BYTES = unhex(`
  4450 02 81  5a17c3089e426bd1  00 11 01 00
  c0a80114  c6336407  c350 0d96
  cb007105  9c40 ee49  00000078  1234abcd  00000000
  9f3e2a71c4d85b06e1a7f230  00000000`);

// The host's first request carried no cookie (zero bytes 32-43); the server
// changed nothing and answered COOKIE_REQUIRED with the host's cookie.
const FIRST_BYTES = unhex(`
  4450 02 01  5a17c3089e426bd1  11 01 0000
  c0a80114  c6336407  c350 0d96  00000000
  000000000000000000000000  00000000
  0000000000000000 0000000000000000`);
const COOKIE_REQUIRED_BYTES = unhex(`
  4450 02 81  5a17c3089e426bd1  0c 11 00 00
  c0a80114  c6336407  c350 0d96
  00000000  0000 0000  00000000  1234abcd  00000000
  9f3e2a71c4d85b06e1a7f230  00000000`);

/** A valid request with one byte changed. */
function reqWith(offset: number, value: number): Uint8Array {
  const b = REQ_BYTES.slice();
  b[offset] = value;
  return b;
}

/** A valid request with a big-endian u16 or u32 field replaced. */
function reqWithField(offset: number, size: 2 | 4, value: number): Uint8Array {
  const b = REQ_BYTES.slice();
  const v = new DataView(b.buffer);
  if (size === 2) v.setUint16(offset, value);
  else v.setUint32(offset, value);
  return b;
}

function expectFail(b: Uint8Array, result: number, reason: string | RegExp): void {
  const d = decodeRequest(b);
  assert.equal(d.ok, false, `expected failure, decoded ${JSON.stringify(d)}`);
  if (d.ok) return;
  assert.equal(d.result, result, `result for "${d.reason}"`);
  if (typeof reason === "string") assert.equal(d.reason, reason);
  else assert.match(d.reason, reason);
}

function mustDecodeResponse(b: Uint8Array): Response {
  const d = decodeResponse(b);
  if (!d.ok) throw new Error(`response did not decode: ${d.reason}`);
  return d.res;
}

// ---------------------------------------------------------------------------
// Vectors

Deno.test("vector: request encodes to the documented bytes", () => {
  assert.equal(REQ_BYTES.length, REQUEST_LEN);
  assert.equal(hex(encodeRequest(REQ)), hex(REQ_BYTES));
});

Deno.test("vector: documented request bytes decode to the request", () => {
  const d = decodeRequest(REQ_BYTES);
  assert.ok(d.ok, d.ok ? "" : d.reason);
  assert.deepEqual(d.req, REQ);
});

Deno.test("vector: response encodes to the documented bytes", () => {
  assert.equal(RES_BYTES.length, RESPONSE_LEN);
  assert.equal(hex(encodeResponse(RES)), hex(RES_BYTES));
});

Deno.test("vector: documented response bytes decode to the response", () => {
  assert.deepEqual(mustDecodeResponse(RES_BYTES), RES);
});

Deno.test("vector: responseFor builds the documented response", () => {
  const r = responseFor(
    REQ,
    {
      result: Result.OK,
      replaced: true,
      publicAddr: ip("203.0.113.5"),
      publicPort: 40000,
      gatewayPort: 61001,
      lifetime: 120,
    },
    0x1234abcd,
    COOKIE,
  );
  assert.equal(hex(encodeResponse(r)), hex(RES_BYTES));
});

Deno.test("vector: a first request without a cookie, and the documented COOKIE_REQUIRED answer", () => {
  const d = decodeRequest(FIRST_BYTES);
  assert.ok(d.ok, d.ok ? "" : d.reason);
  assert.equal(hasCookie(d.req.cookie), false, "all-zero: no cookie");
  const { cookie: _, ...noCookie } = REQ;
  assert.equal(hex(encodeRequest(noCookie)), hex(FIRST_BYTES), "absent cookie encodes as zeros");
  const reply = encodeResponse(
    responseFor(d.req, { result: Result.COOKIE_REQUIRED }, 0x1234abcd, COOKIE),
  );
  assert.equal(hex(reply), hex(COOKIE_REQUIRED_BYTES));
  const r = mustDecodeResponse(COOKIE_REQUIRED_BYTES);
  assert.equal(r.result, Result.COOKIE_REQUIRED);
  assert.deepEqual(r.cookie, COOKIE);
  assert.equal(COOKIE.length, COOKIE_LEN);
});

Deno.test("vector: the documented UNSUPPORTED_VERSION reply", () => {
  const reply = errorResponseFor(reqWith(2, 4), { result: Result.UNSUPPORTED_VERSION }, 0x1234abcd);
  assert.ok(reply !== null);
  assert.equal(
    hex(reply),
    hex(unhex(`
      4450 02 81  5a17c3089e426bd1  01 00 00 00
      00000000 00000000 0000 0000
      00000000 0000 0000 00000000 1234abcd 00000000
      000000000000000000000000 00000000`)),
  );
});

Deno.test("vector: a version-1 request (32 bytes) is refused and never answered", () => {
  const v1 = unhex(`
    4450 01 01  5a17c3089e426bd1  11 01 0000
    c0a80114  c6336407  c350 0d96  00000000`);
  expectFail(v1, Result.UNSUPPORTED_VERSION, "unsupported version 1");
  assert.equal(errorResponseFor(v1, { result: Result.UNSUPPORTED_VERSION }, 1), null);
});

Deno.test("encode into a dirty buffer writes every byte, reserved ones zero", () => {
  const buf = new Uint8Array(80).fill(0xa5);
  const m = encodeRequest(REQ, buf);
  assert.equal(m.length, REQUEST_LEN);
  assert.equal(m.buffer, buf.buffer, "writes into the given buffer");
  assert.equal(hex(m), hex(REQ_BYTES));
  assert.equal(buf[REQUEST_LEN], 0xa5, "does not write past the message");

  const rbuf = new Uint8Array(RESPONSE_LEN).fill(0xa5);
  assert.equal(hex(encodeResponse(RES, rbuf)), hex(RES_BYTES));
});

Deno.test("encode rejects a too-small output buffer and out-of-range fields", () => {
  assert.throws(() => encodeRequest(REQ, new Uint8Array(REQUEST_LEN - 1)), RangeError);
  assert.throws(() => encodeResponse(RES, new Uint8Array(RESPONSE_LEN - 1)), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, cookie: new Uint8Array(8) }), RangeError);
  assert.throws(() => encodeResponse({ ...RES, cookie: new Uint8Array(16) }), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, internalPort: 65536 }), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, remoteAddr: -1 }), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, lifetime: 1.5 }), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, op: 0x81 }), RangeError);
  assert.throws(() => encodeRequest({ ...REQ, nonce: new Uint8Array(7) }), RangeError);
  assert.throws(() => encodeResponse({ ...RES, epoch: 2 ** 32 }), RangeError);
  // An error response must not carry a grant.
  assert.throws(() => encodeResponse({ ...RES, result: Result.CONFLICT }), RangeError);
});

Deno.test("decode works on a view with a byte offset (node Buffer, shared receive buffer)", () => {
  const big = new Uint8Array(100 + REQUEST_LEN);
  big.set(REQ_BYTES, 17);
  const d = decodeRequest(big.subarray(17, 17 + REQUEST_LEN));
  assert.ok(d.ok);
  assert.deepEqual(d.req, REQ);
});

Deno.test("decoded nonce is a copy, not a view of the receive buffer", () => {
  const b = REQ_BYTES.slice();
  const d = decodeRequest(b);
  assert.ok(d.ok);
  b.fill(0);
  assert.deepEqual(d.req.nonce, NONCE);
  assert.deepEqual(d.req.cookie, COOKIE, "so is the cookie");
  const rb = RES_BYTES.slice();
  const r = mustDecodeResponse(rb);
  rb.fill(0);
  assert.deepEqual(r.nonce, NONCE);
  assert.deepEqual(r.cookie, COOKIE);
});

// ---------------------------------------------------------------------------
// Round trips

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const port = fc.integer({ min: 1, max: 0xffff });
const nonceArb = fc.uint8Array({ minLength: 8, maxLength: 8 });
const cookieArb = fc.uint8Array({ minLength: COOKIE_LEN, maxLength: COOKIE_LEN });
// Usable unicast addresses: first octet 1..126, 128..223, 240..255 (not the
// limited broadcast).
const goodAddr = u32.filter((a) => {
  const f = a >>> 24;
  return f !== 0 && f !== 127 && !(f >= 224 && f <= 239) && a !== 0xffffffff;
});

const validRequest: fc.Arbitrary<Request> = fc.record({
  op: fc.constantFrom(Op.RESERVE, Op.RENEW, Op.RELEASE),
  nonce: nonceArb,
  proto: fc.constantFrom(1, 6, 17),
  replaceable: fc.boolean(),
  internalAddr: goodAddr,
  internalPort: port,
  remoteAddr: goodAddr,
  remotePort: port,
  lifetime: u32,
  cookie: cookieArb,
}).map((r) => ({
  ...r,
  // ICMP: identifier may be 0, no remote port.
  internalPort: r.proto === 1 ? r.internalPort - 1 : r.internalPort,
  remotePort: r.proto === 1 ? 0 : r.remotePort,
  lifetime: r.op === Op.RELEASE ? 0 : r.lifetime,
}));

const validResponse: fc.Arbitrary<Response> = fc.record({
  op: fc.integer({ min: 0, max: 0x7f }),
  nonce: nonceArb,
  result: fc.integer({ min: 0, max: 0xff }),
  proto: fc.integer({ min: 0, max: 0xff }),
  replaced: fc.boolean(),
  shared: fc.boolean(),
  internalAddr: u32,
  internalPort: u16,
  remoteAddr: u32,
  remotePort: u16,
  publicAddr: u32,
  publicPort: u16,
  gatewayPort: u16,
  lifetime: u32,
  epoch: u32,
  cookie: cookieArb,
}).map((r) =>
  r.result === Result.OK ? { ...r } : {
    ...r,
    replaced: false,
    shared: false,
    publicAddr: 0,
    publicPort: 0,
    gatewayPort: 0,
    lifetime: 0,
  }
);

Deno.test("property: decodeRequest(encodeRequest(x)) equals x for valid x", () => {
  fc.assert(
    fc.property(validRequest, (r) => {
      const b = encodeRequest(r);
      assert.equal(b.length, REQUEST_LEN);
      const d = decodeRequest(b);
      assert.ok(d.ok, d.ok ? "" : d.reason);
      assert.deepEqual(d.req, r);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("property: decodeResponse(encodeResponse(x)) equals x for valid x", () => {
  fc.assert(
    fc.property(validResponse, (r) => {
      const b = encodeResponse(r);
      assert.equal(b.length, RESPONSE_LEN);
      assert.deepEqual(mustDecodeResponse(b), r);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("property: a decoded request's response round-trips and echoes it", () => {
  fc.assert(fc.property(validRequest, u32, fc.boolean(), (req, epoch, ok) => {
    const res = responseFor(
      req,
      ok
        ? { result: Result.OK, publicAddr: 0xcb007105, publicPort: 1, gatewayPort: 2, lifetime: 3 }
        : { result: Result.NO_RESOURCES, publicAddr: 0xcb007105, lifetime: 3 },
      epoch,
    );
    const back = mustDecodeResponse(encodeResponse(res));
    assert.equal(back.op, req.op);
    assert.deepEqual(back.nonce, req.nonce);
    assert.equal(back.proto, req.proto);
    assert.equal(back.internalAddr, req.internalAddr);
    assert.equal(back.internalPort, req.internalPort);
    assert.equal(back.remoteAddr, req.remoteAddr);
    assert.equal(back.remotePort, req.remotePort);
    assert.equal(back.epoch, epoch);
    assert.equal(back.publicAddr, ok ? 0xcb007105 : 0, "errors carry no grant");
    assert.equal(back.lifetime, ok ? 3 : 0);
  }));
});

// ---------------------------------------------------------------------------
// Malformed requests, each named

Deno.test("malformed: every length 0..65 except 64; nothing shorter than an answer is answered", () => {
  const long = new Uint8Array(REQUEST_LEN + 1);
  long.set(REQ_BYTES);
  for (let n = 0; n <= REQUEST_LEN + 1; n++) {
    if (n === REQUEST_LEN) continue;
    const b = long.slice(0, n);
    const d = decodeRequest(b);
    assert.equal(d.ok, false, `length ${n} decoded`);
    if (d.ok) continue;
    assert.equal(d.result, Result.MALFORMED, `length ${n}`);
    const reply = errorResponseFor(b, d, 7);
    if (n < 4) {
      assert.equal(d.reason, `too short (${n} bytes)`);
      assert.equal(reply, null, `length ${n} must not be answered`);
      continue;
    }
    assert.equal(d.reason, `bad length ${n}, want ${REQUEST_LEN}`);
    if (n < RESPONSE_LEN) {
      assert.equal(reply, null, `length ${n}: an answer would be longer than the request`);
      continue;
    }
    assert.ok(reply !== null, `length ${n} must be answered`);
    const r = mustDecodeResponse(reply);
    assert.equal(r.result, Result.MALFORMED);
    assert.equal(r.op, Op.RESERVE);
    assert.equal(r.epoch, 7);
    // The nonce is echoed only when all 8 bytes are present.
    assert.deepEqual(r.nonce, NONCE, `nonce at length ${n}`);
    // Other fields are not echoed from a message of the wrong length.
    assert.equal(r.internalAddr, 0);
    assert.equal(r.proto, 0);
  }
});

Deno.test("malformed: bad magic is never answered", () => {
  for (const magic of [0x0000, 0x5044, 0x4451, 0xc450, 0xffff]) {
    const b = reqWithField(0, 2, magic);
    expectFail(b, Result.MALFORMED, `bad magic 0x${magic.toString(16).padStart(4, "0")}`);
    assert.equal(errorResponseFor(b, { result: Result.MALFORMED }, 1), null);
  }
});

Deno.test("malformed: a response sent to the server is never answered", () => {
  expectFail(RES_BYTES, Result.MALFORMED, "opcode 0x81 is a response");
  assert.equal(errorResponseFor(RES_BYTES, { result: Result.MALFORMED }, 1), null);
  // Even with a version we do not speak: bit 7 means "response" in every version.
  const b = reqWith(3, 0x81);
  b[2] = 9;
  assert.equal(errorResponseFor(b, { result: Result.UNSUPPORTED_VERSION }, 1), null);
});

Deno.test("bad version: UNSUPPORTED_VERSION reply, version 2, nonce echoed", () => {
  for (const version of [0, 1, 3, 255]) {
    const b = reqWith(2, version);
    expectFail(b, Result.UNSUPPORTED_VERSION, `unsupported version ${version}`);
    const reply = errorResponseFor(b, { result: Result.UNSUPPORTED_VERSION }, 0xdeadbeef);
    assert.ok(reply !== null);
    assert.equal(reply[2], VERSION, "reply advertises the highest supported version");
    const r = mustDecodeResponse(reply);
    assert.equal(r.result, Result.UNSUPPORTED_VERSION);
    assert.deepEqual(r.nonce, NONCE);
    assert.equal(r.epoch, 0xdeadbeef);
    // The body of another version is not interpreted, so nothing else is echoed.
    assert.equal(r.internalAddr, 0);
    assert.equal(r.remotePort, 0);
  }
  // A message of another version and length gets the answer when it is long enough.
  const other = new Uint8Array(70);
  other.set(unhex("4450 03 01 0102030405060708 ff"));
  expectFail(other, Result.UNSUPPORTED_VERSION, "unsupported version 3");
  const r = mustDecodeResponse(errorResponseFor(other, { result: Result.UNSUPPORTED_VERSION }, 0)!);
  assert.deepEqual(r.nonce, unhex("0102030405060708"));
  expectFail(other.slice(0, 20), Result.UNSUPPORTED_VERSION, "unsupported version 3");
  assert.equal(
    errorResponseFor(other.slice(0, 20), { result: Result.UNSUPPORTED_VERSION }, 0),
    null,
  );
});

Deno.test("unknown opcode: UNSUPPORTED_OPCODE, whatever the length (answered when not shorter)", () => {
  for (const op of [0, 5, 6, 0x7f]) {
    const b = reqWith(3, op);
    expectFail(b, Result.UNSUPPORTED_OPCODE, `unknown opcode ${op}`);
    expectFail(b.slice(0, 20), Result.UNSUPPORTED_OPCODE, `unknown opcode ${op}`);
    assert.equal(errorResponseFor(b.slice(0, 20), { result: Result.UNSUPPORTED_OPCODE }, 1), null);
    const reply = errorResponseFor(b, { result: Result.UNSUPPORTED_OPCODE }, 1);
    assert.ok(reply !== null);
    assert.equal(reply[3], op | 0x80);
    const r = mustDecodeResponse(reply);
    assert.equal(r.op, op);
    assert.equal(r.result, Result.UNSUPPORTED_OPCODE);
  }
});

Deno.test("reserved: each reserved flag bit is MALFORMED", () => {
  for (let bit = 1; bit < 8; bit++) {
    const flags = 1 | (1 << bit);
    expectFail(
      reqWith(13, flags),
      Result.MALFORMED,
      `reserved flag bits set (0x${flags.toString(16).padStart(2, "0")})`,
    );
  }
});

Deno.test("reserved: non-zero reserved bytes 14 and 15 are MALFORMED", () => {
  expectFail(reqWith(14, 1), Result.MALFORMED, "reserved field is 0x0100");
  expectFail(reqWith(15, 0x80), Result.MALFORMED, "reserved field is 0x0080");
});

Deno.test("reserved: every non-zero padding byte 44-63 is MALFORMED; any cookie decodes", () => {
  for (let i = 44; i < REQUEST_LEN; i++) {
    expectFail(reqWith(i, 1), Result.MALFORMED, `padding byte ${i} is 0x01`);
  }
  for (let i = 32; i < 44; i++) assert.ok(decodeRequest(reqWith(i, 0xff)).ok, `cookie byte ${i}`);
});

Deno.test("unknown protocol: UNSUPPORTED_PROTOCOL", () => {
  for (const proto of [0, 2, 41, 58, 132, 255]) {
    expectFail(reqWith(12, proto), Result.UNSUPPORTED_PROTOCOL, `unsupported protocol ${proto}`);
  }
});

Deno.test("port zero: TCP and UDP need both ports", () => {
  for (const proto of [6, 17]) {
    expectFail(reqWith(12, proto).fill(0, 24, 26), Result.MALFORMED, "internal port 0");
    expectFail(reqWith(12, proto).fill(0, 26, 28), Result.MALFORMED, "remote port 0");
  }
});

Deno.test("ICMP: identifier 0 is valid, a remote port is MALFORMED", () => {
  const ok = reqWith(12, 1).fill(0, 24, 28);
  const d = decodeRequest(ok);
  assert.ok(d.ok, d.ok ? "" : d.reason);
  assert.equal(d.req.proto, 1);
  assert.equal(d.req.internalPort, 0);
  const bad = reqWith(12, 1);
  expectFail(bad, Result.MALFORMED, "ICMP with remote port 3478");
});

Deno.test("RELEASE with a lifetime is MALFORMED; RESERVE and RENEW may ask for one", () => {
  const rel = reqWithField(28, 4, 60);
  rel[3] = Op.RELEASE;
  expectFail(rel, Result.MALFORMED, "RELEASE with lifetime 60");
  rel.fill(0, 28, 32);
  assert.ok(decodeRequest(rel).ok);
  for (const op of [Op.RESERVE, Op.RENEW]) {
    const b = reqWithField(28, 4, 0xffffffff);
    b[3] = op;
    const d = decodeRequest(b);
    assert.ok(d.ok);
    assert.equal(d.req.lifetime, 0xffffffff);
  }
});

Deno.test("bad addresses: internal and remote", () => {
  const cases: [string, string][] = [
    ["0.0.0.0", "is in 0/8 (this network)"],
    ["0.1.2.3", "is in 0/8 (this network)"],
    ["255.255.255.255", "is the limited broadcast address"],
    ["127.0.0.1", "is loopback"],
    ["127.255.0.9", "is loopback"],
    ["224.0.0.1", "is multicast"],
    ["239.255.255.250", "is multicast"],
  ];
  for (const [addr, why] of cases) {
    expectFail(reqWithField(16, 4, ip(addr)), Result.MALFORMED, `internal address ${addr} ${why}`);
    expectFail(reqWithField(20, 4, ip(addr)), Result.MALFORMED, `remote address ${addr} ${why}`);
  }
  // Neighbours of the bad ranges are fine (inside/outside is the server's check).
  for (const addr of ["1.0.0.0", "126.255.255.255", "128.0.0.0", "223.255.255.255", "240.0.0.1"]) {
    assert.ok(decodeRequest(reqWithField(20, 4, ip(addr))).ok, addr);
  }
});

// ---------------------------------------------------------------------------
// Error replies

Deno.test("errorResponseFor echoes a full-length request (RATE_LIMITED before decoding)", () => {
  const reply = errorResponseFor(REQ_BYTES, { result: Result.RATE_LIMITED }, 42);
  assert.ok(reply !== null);
  assert.equal(reply.length, RESPONSE_LEN);
  const r = mustDecodeResponse(reply);
  assert.deepEqual(r, {
    ...RES,
    result: Result.RATE_LIMITED,
    replaced: false,
    publicAddr: 0,
    publicPort: 0,
    gatewayPort: 0,
    lifetime: 0,
    epoch: 42,
    cookie: new Uint8Array(COOKIE_LEN),
  });
  const withCookie = mustDecodeResponse(
    errorResponseFor(REQ_BYTES, { result: Result.RATE_LIMITED }, 42, COOKIE)!,
  );
  assert.deepEqual(withCookie.cookie, COOKIE);
});

Deno.test("errorResponseFor matches responseFor for a decodable request", () => {
  const d = decodeRequest(REQ_BYTES);
  assert.ok(d.ok);
  const viaReq = encodeResponse(responseFor(d.req, { result: Result.NOT_AUTHORIZED }, 5));
  const viaBytes = errorResponseFor(REQ_BYTES, { result: Result.NOT_AUTHORIZED }, 5);
  assert.equal(hex(viaBytes!), hex(viaReq));
});

Deno.test("responseFor zeros the grant on errors and copies the nonce", () => {
  const r = responseFor(REQ, {
    result: Result.CONFLICT,
    replaced: true,
    shared: true,
    publicAddr: 1,
    publicPort: 2,
    gatewayPort: 3,
    lifetime: 4,
  }, 9);
  assert.equal(r.replaced || r.shared, false);
  assert.equal(r.publicAddr + r.publicPort + r.gatewayPort + r.lifetime, 0);
  assert.notEqual(r.nonce, REQ.nonce, "not the same array");
  assert.deepEqual(r.nonce, REQ.nonce);
  const ok = responseFor(REQ, { result: Result.OK, shared: true, publicAddr: 1 }, 9);
  assert.equal(ok.shared, true);
  assert.equal(ok.replaced, false);
  assert.equal(ok.publicAddr, 1);
  assert.equal(encodeResponse(ok)[14], ResFlag.SHARED);
});

// ---------------------------------------------------------------------------
// Malformed responses

Deno.test("decodeResponse rejects each malformed response", () => {
  const bad = (mutate: (b: Uint8Array) => Uint8Array, reason: string) => {
    const d = decodeResponse(mutate(RES_BYTES.slice()));
    assert.equal(d.ok, false, `accepted: ${reason}`);
    if (!d.ok) assert.equal(d.reason, reason);
  };
  bad((b) => b.slice(0, 3), "too short (3 bytes)");
  bad((b) => b.slice(0, 63), "bad length 63, want 64");
  bad((b) => Uint8Array.from([...b, 0]), "bad length 65, want 64");
  bad((b) => (b[0] = 0x45, b), "bad magic 0x4550");
  bad((b) => (b[2] = 1, b), "unsupported version 1");
  bad((b) => (b[3] = 0x01, b), "opcode 0x01 is not a response");
  bad((b) => (b[14] = 4, b), "reserved flag bits set (0x04)");
  bad((b) => (b[15] = 1, b), "reserved byte is 0x01");
  bad((b) => (b[47] = 1, b), "reserved field is 0x00000001");
  bad((b) => (b[60] = 1, b), "reserved field is 0x01000000");
  bad((b) => (b[12] = Result.NO_RESOURCES, b), "error response carries a public address");
  // A request is not a response.
  const d = decodeResponse(REQ_BYTES);
  assert.equal(d.ok, false);
});

Deno.test("decodeResponse accepts unknown result codes (codes are only appended)", () => {
  const b = encodeResponse(responseFor(REQ, { result: 200 }, 1));
  assert.equal(mustDecodeResponse(b).result, 200);
});

// ---------------------------------------------------------------------------
// Hostile bytes

Deno.test("property: decoders and errorResponseFor never throw on arbitrary bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 100 }), fc.integer({ min: 0, max: 20 }), (b, code) => {
      decodeRequest(b);
      decodeResponse(b);
      const reply = errorResponseFor(b, { result: code }, 1, COOKIE);
      if (reply !== null) {
        assert.ok(decodeResponse(reply).ok, "every error reply is well formed");
        assert.ok(reply.length <= b.length, "and never longer than what it answers");
      }
    }),
    { numRuns: 5000 },
  );
});

Deno.test("property: mutated valid messages never throw, and any accepted request re-encodes identically", () => {
  const mutated = (base: Uint8Array) =>
    fc.tuple(
      fc.array(fc.tuple(fc.nat({ max: base.length - 1 }), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 4,
      }),
      fc.integer({ min: -2, max: 2 }),
    ).map(([edits, dl]) => {
      const b = new Uint8Array(Math.max(0, base.length + dl));
      b.set(base.subarray(0, b.length));
      for (const [i, v] of edits) if (i < b.length) b[i] = v;
      return b;
    });
  fc.assert(
    fc.property(mutated(REQ_BYTES), (b) => {
      const d = decodeRequest(b);
      // Exact layout: whatever is accepted is exactly what the encoder writes.
      if (d.ok) assert.equal(hex(encodeRequest(d.req)), hex(b));
      errorResponseFor(b, { result: Result.MALFORMED }, 0);
    }),
    { numRuns: 5000 },
  );
  fc.assert(
    fc.property(mutated(RES_BYTES), (b) => {
      const d = decodeResponse(b);
      if (d.ok) assert.equal(hex(encodeResponse(d.res)), hex(b));
    }),
    { numRuns: 5000 },
  );
});

Deno.test("property: errorResponseFor never answers a datagram without the magic", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 64 }), (b) => {
      fc.pre(b.length < 2 || ((b[0]! << 8) | b[1]!) !== MAGIC);
      for (const result of [Result.MALFORMED, Result.UNSUPPORTED_VERSION, Result.RATE_LIMITED]) {
        assert.equal(errorResponseFor(b, { result }, 1), null);
      }
    }),
    { numRuns: 5000 },
  );
});

Deno.test("newNonce gives 8 fresh random bytes", () => {
  const a = newNonce();
  const b = newNonce();
  assert.equal(a.length, 8);
  assert.notEqual(hex(a), hex(b));
});
