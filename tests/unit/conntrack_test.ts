/**
 * Tests of the ctnetlink codec (linux/conntrack.ts) on bytes, without root:
 * requests against the kernel's own tuple encoding, and a dump message
 * captured from kernel 6.18 (a TCP connection over loopback with
 * `nf_conntrack_acct=1`; `conntrack -L` showed it as below).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CtDecodeError,
  type CtEntry,
  CtMsgType,
  CtStatus,
  type CtTuple,
  decodeCtDatagram,
  decodeCtEntry,
  encodeCtDumpRequest,
  encodeCtRequest,
  formatTuple,
  TcpState,
} from "../../linux/conntrack.ts";

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function unhex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  const out = new Uint8Array(t.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const LOCALHOST = 0x7f000001;

// `tcp 6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40001 dport=8080
//  packets=4 bytes=221 src=127.0.0.1 dst=127.0.0.1 sport=8080 dport=40001
//  packets=3 bytes=170 [ASSURED] mark=0 use=1 id=2761310433`
// One IPCTNL_MSG_CT_NEW message of a dump (little-endian host).
const TUPLE_ORIG_HEX = "3400 0180" + // CTA_TUPLE_ORIG, 52 bytes, nested
  "1400 0180 0800 0100 7f000001 0800 0200 7f000001" + // CTA_TUPLE_IP
  "1c00 0280 0500 0100 06000000 0600 0200 9c410000 0600 0300 1f900000"; // CTA_TUPLE_PROTO
const CAPTURED = unhex(
  "0c010000 0001 2200 a9acbc54 53130000 02000000" +
    TUPLE_ORIG_HEX +
    "3400028014000180080001007f000001080002007f0000011c0002800500010006000000060002001f90" +
    "0000060003009c410000080003000000000e080008000000000008000c00a49640e108000b0000000001" +
    "080007000006977f300004802c0001800500010003000000050002000a000000050003000a0000000600" +
    "04002300000006000500230000001c0009800c00010000000000000000040c00020000000000000000dd" +
    "1c000a800c00010000000000000000030c00020000000000000000aa",
);
const CAPTURED_SEQ = 0x54bcaca9;

const TCP_ORIG: CtTuple = { proto: 6, src: LOCALHOST, dst: LOCALHOST, sport: 40001, dport: 8080 };

Deno.test("conntrack: a get request carries the tuple exactly as the kernel encodes it", () => {
  const m = encodeCtRequest(CtMsgType.GET, 0, TCP_ORIG, 7);
  assert.equal(
    hex(m),
    hex(unhex(
      "48000000 0101 0100 07000000 00000000" + // len 72, CT_GET, NLM_F_REQUEST, seq 7
        "02000000" + // nfgenmsg: AF_INET, v0, res_id 0
        TUPLE_ORIG_HEX,
    )),
  );
});

Deno.test("conntrack: a delete request of a UDP tuple", () => {
  const m = encodeCtRequest(
    CtMsgType.DELETE,
    4, // NLM_F_ACK
    { proto: 17, src: 0x0a090001, dst: 0x0a090002, sport: 1000, dport: 53 },
    0x01020304,
  );
  assert.equal(
    hex(m),
    hex(unhex(
      "48000000 0201 0500 04030201 00000000 02000000" +
        "3400 0180" +
        "1400 0180 0800 0100 0a090001 0800 0200 0a090002" +
        "1c00 0280 0500 0100 11000000 0600 0200 03e80000 0600 0300 00350000",
    )),
  );
});

Deno.test("conntrack: an ICMP tuple has id, type and code (echo request by default)", () => {
  const m = encodeCtRequest(CtMsgType.DELETE, 0, {
    proto: 1,
    src: 0x0a000001,
    dst: 0x0a000002,
    sport: 77,
    dport: 0,
  });
  assert.equal(
    hex(m),
    hex(unhex(
      "50000000 0201 0100 00000000 00000000 02000000" +
        "3c00 0180" +
        "1400 0180 0800 0100 0a000001 0800 0200 0a000002" +
        "2400 0280 0500 0100 01000000 0600 0400 004d0000 0500 0500 08000000 0500 0600 00000000",
    )),
  );
  const reply = encodeCtRequest(CtMsgType.GET, 0, {
    proto: 1,
    src: 1,
    dst: 2,
    sport: 77,
    dport: 0,
    icmpType: 0,
    icmpCode: 0,
  });
  assert.equal(reply[reply.length - 12], 0); // the ICMP_TYPE value (type, then code, last)
});

Deno.test("conntrack: the dump request", () => {
  assert.equal(
    hex(encodeCtDumpRequest(9)),
    hex(unhex("14000000 0101 0103 09000000 00000000 02000000")),
  );
});

Deno.test("conntrack: malformed tuples are refused before anything is encoded", () => {
  for (
    const t of [
      { ...TCP_ORIG, sport: 70000 },
      { ...TCP_ORIG, src: -1 },
      { ...TCP_ORIG, dst: 2 ** 32 },
      { ...TCP_ORIG, proto: 256 },
      { ...TCP_ORIG, dport: 1.5 },
    ]
  ) {
    assert.throws(() => encodeCtRequest(CtMsgType.DELETE, 0, t), RangeError);
  }
});

const EXPECTED: CtEntry = {
  orig: TCP_ORIG,
  reply: { proto: 6, src: LOCALHOST, dst: LOCALHOST, sport: 8080, dport: 40001 },
  id: 2761310433,
  status: CtStatus.SEEN_REPLY | CtStatus.ASSURED | CtStatus.CONFIRMED,
  mark: 0,
  timeout: 431999,
  zone: 0,
  tcpState: TcpState.ESTABLISHED,
  packetsOrig: 4,
  bytesOrig: 221,
  packetsReply: 3,
  bytesReply: 170,
};

Deno.test("conntrack: a captured dump message decodes", () => {
  assert.deepEqual(decodeCtEntry(CAPTURED), EXPECTED);
  assert.equal(formatTuple(EXPECTED.orig), "tcp 127.0.0.1:40001 -> 127.0.0.1:8080");
});

/** A NLMSG_DONE of `seq` (16-byte header, int 0). */
function done(seq: number): Uint8Array {
  const b = new Uint8Array(20);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 20, true);
  dv.setUint16(4, 3, true);
  dv.setUint16(6, 2, true);
  dv.setUint32(8, seq, true);
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

Deno.test("conntrack: a datagram of entries, then NLMSG_DONE; other sequences ignored", () => {
  const other = CAPTURED.slice();
  new DataView(other.buffer).setUint32(8, CAPTURED_SEQ + 1, true);
  const dg = concat(CAPTURED, other, CAPTURED, done(CAPTURED_SEQ));
  const got: CtEntry[] = [];
  const r = decodeCtDatagram(dg, dg.length, CAPTURED_SEQ, (e) => got.push(e));
  assert.equal(r.entries, 2);
  assert.equal(r.done, true);
  assert.equal(r.malformed, 0);
  assert.equal(r.broken, false);
  assert.deepEqual(got, [EXPECTED, EXPECTED]);
});

Deno.test("conntrack: an IPv6 entry (family AF_INET6) is skipped, not misread", () => {
  const v6 = CAPTURED.slice();
  v6[16] = 10;
  assert.equal(decodeCtEntry(v6), null);
});

Deno.test("conntrack: every truncation gives a CtDecodeError or a valid entry, never a crash", () => {
  for (let n = 0; n < CAPTURED.length; n++) {
    const cut = CAPTURED.slice(0, n);
    if (n >= 4) new DataView(cut.buffer).setUint32(0, n, true); // a message that claims to be whole
    try {
      const e = decodeCtEntry(cut);
      assert.ok(e === null || typeof e.id === "number");
    } catch (err) {
      assert.ok(err instanceof CtDecodeError, `length ${n}: ${err}`);
    }
  }
  // A cut inside a tuple names the problem.
  const cut = CAPTURED.slice(0, 40);
  new DataView(cut.buffer).setUint32(0, 40, true);
  assert.throws(() => decodeCtEntry(cut), /Malformed conntrack message: .*length/);
});

Deno.test("conntrack: random corruption is skipped and counted in a datagram", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(CAPTURED.length - 1), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 8,
      }),
      (edits) => {
        const m = CAPTURED.slice();
        for (const [i, v] of edits) m[i] = v;
        let entries = 0;
        const r = decodeCtDatagram(m, m.length, CAPTURED_SEQ, () => entries++);
        assert.equal(r.entries, entries);
        assert.ok(r.entries + r.malformed <= 1 || r.broken);
        try {
          decodeCtEntry(m);
        } catch (err) {
          if (!(err instanceof CtDecodeError)) throw err;
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("conntrack: an error answer of the request is reported with its errno", () => {
  // NLMSG_ERROR, error -1 (EPERM), then the request's header (capped ack).
  const b = new Uint8Array(36);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 36, true);
  dv.setUint16(4, 2, true);
  dv.setInt32(16, -1, true);
  dv.setUint32(20, 20, true);
  dv.setUint16(24, CtMsgType.GET, true);
  dv.setUint32(28, 5, true);
  const r = decodeCtDatagram(b, b.length, 5, () => {});
  assert.equal(r.error, 1);
  assert.equal(decodeCtDatagram(b, b.length, 6, () => {}).error, -1);
});
