/**
 * Version 3 of the control protocol (src/control/batch.ts): the example
 * bytes of docs/protocol.md ("Version 3", "Example: two reservations in one
 * datagram") both ways, the header's and the entries' checks, the
 * no-amplification rule, and a fuzz that decoding never throws.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  BATCH_VERSION,
  decodeAnswer,
  decodeAnswerHeader,
  decodeEntry,
  decodeRequestHeader,
  ENTRY_LEN,
  type EntryAnswer,
  type EntryRequest,
  HEADER_LEN,
  MAX_DATAGRAM,
  MAX_ENTRIES,
  newAnswer,
  newEntry,
  writeAnswer,
  writeAnswerHeader,
  writeEntry,
  writeRefusal,
  writeRequestHeader,
} from "../../src/control/batch.ts";
import { Result } from "../../src/control/result.ts";

function unhex(s: string): Uint8Array {
  const h = s.replace(/^[0-9a-f]{4} {2}/gm, "").replace(/\s+/g, "");
  return Uint8Array.from(h.match(/../g)!.map((x) => parseInt(x, 16)));
}

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

const COOKIE = unhex("9f3e2a71c4d85b06e1a7f230");
const HOST = 0xc0a80114; // 192.168.1.20
const X = 0xc6336407; // 198.51.100.7
const R = 0xcb007105; // 203.0.113.5

// docs/protocol.md, "Example: two reservations in one datagram".
const REQUEST = unhex(`
0000  44 50 03 00 0c 0f fe e0 00 00 00 01 02 00 00 00
0010  c0 a8 01 14 9f 3e 2a 71 c4 d8 5b 06 e1 a7 f2 30
0020  01 11 01 00 5a 17 c3 08 9e 42 6b d1 c6 33 64 07
0030  c3 50 0d 96 f8 0c 00 00 00 00 00 00 00 00 00 00
0040  01 06 01 00 5a 17 c3 08 9e 42 6b d2 c6 33 64 07
0050  c3 51 01 bb f8 0d 00 00 00 00 00 00 00 00 00 00
`);
const ANSWER = unhex(`
0000  44 50 03 80 0c 0f fe e0 00 00 00 01 02 00 00 00
0010  12 34 ab cd 9f 3e 2a 71 c4 d8 5b 06 e1 a7 f2 30
0020  01 00 11 01 5a 17 c3 08 9e 42 6b d1 c6 33 64 07
0030  c3 50 0d 96 cb 00 71 05 9c 40 f8 0c 00 00 00 78
0040  01 00 06 00 5a 17 c3 08 9e 42 6b d2 c6 33 64 07
0050  c3 51 01 bb cb 00 71 05 c3 51 ee 49 00 00 1d 10
`);

const UDP_ENTRY: EntryRequest = {
  op: 1,
  proto: 17,
  replaceable: true,
  nonceHi: 0x5a17c308,
  nonceLo: 0x9e426bd1,
  remoteAddr: X,
  internalPort: 50000,
  remotePort: 3478,
  gatewayPort: 63500,
  lifetime: 0,
};
const TCP_ENTRY: EntryRequest = {
  ...UDP_ENTRY,
  proto: 6,
  nonceLo: 0x9e426bd2,
  internalPort: 50001,
  remotePort: 443,
  gatewayPort: 63501,
};
const UDP_ANSWER: EntryAnswer = {
  op: 1,
  result: Result.OK,
  proto: 17,
  replaced: true,
  shared: false,
  nonceHi: 0x5a17c308,
  nonceLo: 0x9e426bd1,
  remoteAddr: X,
  internalPort: 50000,
  remotePort: 3478,
  publicAddr: R,
  publicPort: 40000,
  gatewayPort: 63500,
  lifetime: 120,
};
const TCP_ANSWER: EntryAnswer = {
  ...UDP_ANSWER,
  proto: 6,
  replaced: false,
  nonceLo: 0x9e426bd2,
  internalPort: 50001,
  remotePort: 443,
  publicPort: 50001,
  gatewayPort: 61001,
  lifetime: 7440,
};

function request(entries: EntryRequest[], cookie: Uint8Array | null = COOKIE): Uint8Array {
  const b = new Uint8Array(HEADER_LEN + entries.length * ENTRY_LEN);
  writeRequestHeader(b, 0x0c0ffee0, 1, entries.length, HOST, cookie);
  entries.forEach((e, i) => writeEntry(b, i, e));
  return b;
}

Deno.test("batch vector: the documented request datagram, encoded and decoded", () => {
  assert.equal(hex(request([UDP_ENTRY, TCP_ENTRY])), hex(REQUEST));
  const h = decodeRequestHeader(REQUEST);
  assert.ok(h.ok);
  assert.equal(h.count, 2);
  assert.equal(h.internalAddr, HOST);
  assert.equal(hex(h.cookie), hex(COOKIE));
  const e = newEntry();
  assert.equal(decodeEntry(REQUEST, 0, h.internalAddr, e), null);
  assert.deepEqual(e, UDP_ENTRY);
  assert.equal(decodeEntry(REQUEST, 1, h.internalAddr, e), null);
  assert.deepEqual(e, TCP_ENTRY);
});

Deno.test("batch vector: the documented answer datagram, encoded and decoded", () => {
  const out = new Uint8Array(REQUEST.length);
  writeAnswerHeader(out, REQUEST, 2, Result.OK, 0x1234abcd, COOKIE);
  writeAnswer(out, 0, UDP_ANSWER);
  writeAnswer(out, 1, TCP_ANSWER);
  assert.equal(hex(out), hex(ANSWER));
  const h = decodeAnswerHeader(ANSWER);
  assert.ok(h.ok);
  assert.deepEqual([h.count, h.result, h.epoch, h.nonceHi, h.nonceLo], [
    2,
    Result.OK,
    0x1234abcd,
    0x0c0ffee0,
    1,
  ]);
  const a = newAnswer();
  assert.equal(decodeAnswer(ANSWER, 0, a), null);
  assert.deepEqual(a, UDP_ANSWER);
  assert.equal(decodeAnswer(ANSWER, 1, a), null);
  assert.deepEqual(a, TCP_ANSWER);
});

Deno.test("batch: a 1-entry request is 64 bytes (a version-2 message's length); 45 entries fit 1,472 bytes", () => {
  assert.equal(request([UDP_ENTRY]).length, 64);
  assert.equal(MAX_DATAGRAM, 1472);
  const full = request(Array.from({ length: MAX_ENTRIES }, () => UDP_ENTRY));
  assert.equal(full.length, MAX_DATAGRAM);
  assert.ok(decodeRequestHeader(full).ok);
  assert.throws(() =>
    writeRequestHeader(new Uint8Array(HEADER_LEN), 0, 0, MAX_ENTRIES + 1, 1, null)
  );
  assert.throws(() => writeRequestHeader(new Uint8Array(HEADER_LEN), 0, 0, 0, 1, null));
});

Deno.test("batch: bad headers are refused as a whole (answered within a header) or silently", () => {
  const silent = (b: Uint8Array, why: RegExp) => {
    const h = decodeRequestHeader(b);
    assert.ok(!h.ok && h.silent, JSON.stringify(h));
    assert.match(h.reason, why);
    assert.equal(writeRefusal(b, Result.MALFORMED, 1, null), null);
  };
  const answered = (b: Uint8Array, result: number, why: RegExp) => {
    const h = decodeRequestHeader(b);
    assert.ok(!h.ok && !h.silent, JSON.stringify(h));
    assert.equal(h.result, result);
    assert.match(h.reason, why);
    const r = writeRefusal(b, result, 7, COOKIE)!;
    assert.equal(r.length, HEADER_LEN, "a refusal is the header alone");
    assert.ok(r.length <= b.length, "never longer than the request");
    const a = decodeAnswerHeader(r);
    assert.ok(a.ok);
    assert.deepEqual([a.count, a.result, a.epoch], [0, result, 7]);
  };
  silent(REQUEST.slice(0, HEADER_LEN - 1), /too short/);
  const noMagic = REQUEST.slice();
  noMagic[0] = 0;
  silent(noMagic, /bad magic/);
  silent(ANSWER, /is an answer/);
  const v4 = REQUEST.slice();
  v4[2] = 4;
  answered(v4, Result.UNSUPPORTED_VERSION, /unsupported version 4/);
  const count = REQUEST.slice();
  count[12] = 3;
  answered(count, Result.MALFORMED, /bad length 96, want 128 for 3/);
  const zero = REQUEST.slice(0, HEADER_LEN);
  zero[12] = 0;
  answered(zero, Result.MALFORMED, /0 entries/);
  const reserved = REQUEST.slice();
  reserved[14] = 1;
  answered(reserved, Result.MALFORMED, /reserved header bytes/);
  const type = REQUEST.slice();
  type[3] = 0x01;
  answered(type, Result.MALFORMED, /unknown type/);
});

Deno.test("batch: a bad entry is refused in its slot; the others decode", () => {
  const b = request([UDP_ENTRY, UDP_ENTRY, UDP_ENTRY, UDP_ENTRY, TCP_ENTRY]);
  const at = (i: number, off: number) => HEADER_LEN + i * ENTRY_LEN + off;
  b[at(0, 0)] = 9; // unknown opcode
  b[at(1, 2)] = 0x80; // reserved flag bit
  b[at(2, 0)] = 2; // RENEW with a proposed Pg
  b[at(3, 28)] = 1; // reserved bytes
  const h = decodeRequestHeader(b);
  assert.ok(h.ok);
  const e = newEntry();
  assert.equal(decodeEntry(b, 0, HOST, e)?.result, Result.UNSUPPORTED_OPCODE);
  assert.match(decodeEntry(b, 1, HOST, e)!.reason, /reserved flag bits/);
  assert.match(decodeEntry(b, 2, HOST, e)!.reason, /outside RESERVE/);
  assert.match(decodeEntry(b, 3, HOST, e)!.reason, /reserved entry bytes/);
  assert.equal(decodeEntry(b, 4, HOST, e), null);
  assert.deepEqual(e, TCP_ENTRY);
});

Deno.test("batch: a refused answer entry carries no grant; a decoder rejects one that does", () => {
  const out = new Uint8Array(HEADER_LEN + ENTRY_LEN);
  writeAnswerHeader(out, request([UDP_ENTRY]), 1, Result.OK, 1, null);
  writeAnswer(out, 0, { ...UDP_ANSWER, result: Result.QUOTA_EXCEEDED });
  const a = newAnswer();
  assert.equal(decodeAnswer(out, 0, a), null);
  assert.deepEqual([a.publicAddr, a.publicPort, a.gatewayPort, a.lifetime, a.replaced], [
    0,
    0,
    0,
    0,
    false,
  ]);
  out[HEADER_LEN + 27] = 1; // a gateway port on a refusal
  assert.match(decodeAnswer(out, 0, a)!, /carries a grant/);
});

Deno.test("batch: every answer datagram is as long as its request (no amplification)", () => {
  fc.assert(fc.property(fc.integer({ min: 1, max: MAX_ENTRIES }), (n) => {
    const req = request(Array.from({ length: n }, () => UDP_ENTRY));
    const out = new Uint8Array(req.length);
    writeAnswerHeader(out, req, n, Result.OK, 1, COOKIE);
    for (let i = 0; i < n; i++) writeAnswer(out, i, UDP_ANSWER);
    const h = decodeAnswerHeader(out);
    return h.ok && h.count === n && out.length === req.length;
  }));
});

Deno.test("batch fuzz: decoding arbitrary bytes never throws", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: MAX_DATAGRAM + 40 }), (b) => {
      if (b.length >= 3 && b[0] === 0x44) b[2] = BATCH_VERSION;
      const h = decodeRequestHeader(b);
      if (h.ok) { for (let i = 0; i < h.count; i++) decodeEntry(b, i, h.internalAddr, newEntry()); }
      writeRefusal(b, Result.MALFORMED, 1, null);
      const a = decodeAnswerHeader(b);
      if (a.ok) { for (let i = 0; i < a.count; i++) decodeAnswer(b, i, newAnswer()); }
      return true;
    }),
    { numRuns: 2000 },
  );
});
