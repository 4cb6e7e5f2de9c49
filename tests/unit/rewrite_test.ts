import { Meta } from "../../src/wire/meta.ts";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseIPv4 } from "../../src/wire/addr.ts";
import { Drop, dropName, PacketInfo, parse } from "../../src/wire/packet.ts";
import { rewrite, rewriteIcmpError } from "../../src/wire/rewrite.ts";
import {
  buildIcmpEcho,
  buildIcmpError,
  buildTcp,
  buildUdp,
  diffOffsets,
  DNS,
  fillChecksums,
  inA5,
  SYN,
  UNREACH,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";

const ip = (s: string): number => parseIPv4(s)!;

const A = ip("10.0.0.2"); // private host
const G = ip("10.0.0.1"); // gateway LAN address
const R = ip("203.0.113.5"); // public pool address
const X = ip("198.51.100.7"); // remote peer
const Y = ip("192.0.2.254"); // a router on the way

/** Parses `buf` (which must pass) into a fresh PacketInfo. */
function parsed(buf: Uint8Array, len: number): PacketInfo {
  const info = new PacketInfo();
  assert.equal(dropName(parse(buf, len, info)), "none");
  return info;
}

/** Checks the 0xa5 tail after the packet is untouched. */
function tailIntact(buf: Uint8Array, len: number): void {
  for (let i = len; i < buf.length; i++) assert.equal(buf[i], 0xa5, `byte ${i} after the packet`);
}

Deno.test("TCP: the real SYN rewritten a:pa -> X:px into R:p -> X:px (claim 6)", () => {
  const buf = inA5(SYN);
  const info = parsed(buf, SYN.length);
  rewrite(buf, info, R, 61000, X, 443);
  const pkt = buf.subarray(0, SYN.length);
  assert.ok(verifyIpChecksum(pkt), "IP header checksum");
  assert.ok(verifyL4Checksum(pkt), "TCP checksum");
  // Only the source address, the source port and the two checksums moved.
  for (const o of diffOffsets(pkt, SYN)) {
    assert.ok([10, 11, 12, 13, 14, 15, 20, 21, 36, 37].includes(o), `offset ${o} changed`);
  }
  tailIntact(buf, SYN.length);
  assert.deepEqual([info.src, info.sport, info.dst, info.dport], [R, 61000, X, 443]);
  // The rewritten packet parses to what info now says.
  const again = parsed(pkt, pkt.length);
  assert.deepEqual(again, info);
});

Deno.test("UDP: the real DNS query rewritten to a:pa -> G:Pg (claim 5)", () => {
  const buf = inA5(DNS);
  const info = parsed(buf, DNS.length);
  rewrite(buf, info, A, 53124, G, 40001);
  const pkt = buf.subarray(0, DNS.length);
  assert.ok(verifyIpChecksum(pkt));
  assert.ok(verifyL4Checksum(pkt));
  for (const o of diffOffsets(pkt, DNS)) {
    assert.ok([10, 11, 16, 17, 18, 19, 22, 23, 26, 27].includes(o), `offset ${o} changed`);
  }
  tailIntact(buf, DNS.length);
  // Equal to the same datagram built from scratch by Python-checked code.
  assert.deepEqual(
    pkt,
    buildUdp({
      src: A,
      sport: 53124,
      dst: G,
      dport: 40001,
      payload: DNS.subarray(28),
      id: 0x9e01,
    }),
  );
});

Deno.test("UDP: a checksum of 0 (none) stays 0", () => {
  const p = buildUdp({ src: A, sport: 5000, dst: X, dport: 53, checksum: false });
  const buf = inA5(p);
  const info = parsed(buf, p.length);
  rewrite(buf, info, R, 6000, X, 53);
  assert.deepEqual([buf[26], buf[27]], [0, 0]);
  assert.ok(verifyIpChecksum(buf));
  tailIntact(buf, p.length);
});

/** A payload that makes the UDP checksum of `o` compute to 0 (so it is sent as 0xffff). */
function payloadForZeroChecksum(o: { src: number; sport: number; dst: number; dport: number }) {
  const payload = new Uint8Array(6);
  const c = buildUdp({ ...o, payload });
  const csum = c[26]! * 256 + c[27]!;
  // Adding the word ~S to a sum S makes it 0xffff: its complement is 0.
  payload[0] = csum >> 8;
  payload[1] = csum & 0xff;
  return payload;
}

Deno.test("UDP: an updated checksum of 0 is sent as 0xffff", () => {
  const to = { src: R, sport: 61000, dst: X, dport: 5060 };
  const payload = payloadForZeroChecksum(to);
  const expected = buildUdp({ ...to, payload });
  assert.deepEqual([expected[26], expected[27]], [0xff, 0xff]);

  const before = buildUdp({ src: A, sport: 5060, dst: X, dport: 5060, payload });
  assert.notDeepEqual([before[26], before[27]], [0xff, 0xff]);
  const buf = inA5(before);
  rewrite(buf, parsed(buf, before.length), to.src, to.sport, to.dst, to.dport);
  assert.deepEqual(buf.subarray(0, before.length), expected);
  assert.ok(verifyL4Checksum(expected));

  // And back: a 0xffff checksum (computed 0) updates like any other.
  const back = inA5(expected);
  rewrite(back, parsed(back, expected.length), A, 5060, X, 5060);
  assert.deepEqual(back.subarray(0, before.length), before);
});

Deno.test("ICMP echo request: identifier is sport, dport ignored", () => {
  const p = buildIcmpEcho({ src: A, dst: X, id: 0x1c46, seq: 3, type: 8 });
  const buf = inA5(p);
  const info = parsed(buf, p.length);
  rewrite(buf, info, R, 0x2000, X, 999);
  const pkt = buf.subarray(0, p.length);
  assert.deepEqual(pkt, buildIcmpEcho({ src: R, dst: X, id: 0x2000, seq: 3, type: 8 }));
  assert.ok(verifyIpChecksum(pkt) && verifyL4Checksum(pkt));
  assert.deepEqual([info.sport, info.dport], [0x2000, 0]);
  tailIntact(buf, p.length);
});

Deno.test("ICMP echo reply: identifier is dport, sport ignored", () => {
  const p = buildIcmpEcho({ src: X, dst: R, id: 0x2000, seq: 3, type: 0 });
  const buf = inA5(p);
  const info = parsed(buf, p.length);
  rewrite(buf, info, X, 777, A, 0x1c46);
  assert.deepEqual(
    buf.subarray(0, p.length),
    buildIcmpEcho({ src: X, dst: A, id: 0x1c46, seq: 3, type: 0 }),
  );
  assert.deepEqual([info.sport, info.dport], [0, 0x1c46]);
  tailIntact(buf, p.length);
});

Deno.test("rewriting to the same values touches nothing", () => {
  const buf = inA5(SYN);
  const info = parsed(buf, SYN.length);
  rewrite(buf, info, info.src, info.sport, info.dst, info.dport);
  assert.deepEqual(buf.subarray(0, SYN.length), SYN);
});

// ---- ICMP errors (RFC 5508) ----

/** Verifies the outer IP, the quoted IP header and the ICMP checksum from scratch. */
function verifyError(pkt: Uint8Array, info: PacketInfo): void {
  assert.ok(verifyIpChecksum(pkt), "outer IP checksum");
  assert.ok(verifyIpChecksum(pkt.subarray(info.innerOff)), "quoted IP checksum");
  assert.ok(verifyL4Checksum(pkt), "ICMP checksum");
}

Deno.test("port unreachable quoting UDP: the real one, translated back to the host", () => {
  // The server sent DNS out as R:61000 -> 192.0.2.53:53; the unreachable comes
  // back to R; translated, the host sees it about its own a:53124 datagram.
  const out = buildUdp({
    src: R,
    sport: 61000,
    dst: ip("192.0.2.53"),
    dport: 53,
    payload: DNS.subarray(28),
    id: 0x9e01,
  });
  const arriving = buildIcmpError({
    src: ip("192.0.2.53"),
    dst: R,
    type: 3,
    code: 3,
    quoted: out,
    ipId: 0x4242,
    frag: 0,
  });
  const buf = inA5(arriving);
  const info = parsed(buf, arriving.length);
  rewriteIcmpError(buf, info, {
    outerSrc: ip("192.0.2.53"),
    outerDst: A,
    innerSrc: A,
    innerSport: 53124,
    innerDst: ip("192.0.2.53"),
    innerDport: 53,
  });
  const pkt = buf.subarray(0, arriving.length);
  verifyError(pkt, info);
  assert.ok(verifyL4Checksum(pkt.subarray(info.innerOff)), "quoted UDP checksum (fully quoted)");
  // Byte for byte the real port unreachable generated by Python.
  assert.deepEqual(pkt, UNREACH);
  tailIntact(buf, arriving.length);
  assert.deepEqual(
    [info.src, info.dst, info.innerSrc, info.innerSport, info.innerDst, info.innerDport],
    [ip("192.0.2.53"), A, A, 53124, ip("192.0.2.53"), 53],
  );
});

Deno.test("port unreachable quoting UDP without checksum: the quoted 0 stays 0", () => {
  const q = buildUdp({ src: R, sport: 61000, dst: X, dport: 53, checksum: false });
  const e = buildIcmpError({ src: X, dst: R, type: 3, code: 3, quoted: q });
  const buf = inA5(e);
  const info = parsed(buf, e.length);
  rewriteIcmpError(buf, info, {
    outerSrc: X,
    outerDst: A,
    innerSrc: A,
    innerSport: 5353,
    innerDst: X,
    innerDport: 53,
  });
  assert.deepEqual([buf[info.innerOff + 26], buf[info.innerOff + 27]], [0, 0]);
  verifyError(buf.subarray(0, e.length), info);
});

Deno.test("port unreachable quoting UDP: a quoted checksum updated to 0 is sent as 0xffff", () => {
  const to = { src: A, sport: 5060, dst: X, dport: 5060 };
  const payload = payloadForZeroChecksum(to);
  const q = buildUdp({ src: R, sport: 61000, dst: X, dport: 5060, payload });
  const e = buildIcmpError({ src: X, dst: R, type: 3, code: 3, quoted: q });
  const buf = inA5(e);
  const info = parsed(buf, e.length);
  rewriteIcmpError(buf, info, {
    outerSrc: X,
    outerDst: A,
    innerSrc: to.src,
    innerSport: to.sport,
    innerDst: to.dst,
    innerDport: to.dport,
  });
  assert.deepEqual([buf[info.innerOff + 26], buf[info.innerOff + 27]], [0xff, 0xff]);
  const expected = buildIcmpError({
    src: X,
    dst: A,
    type: 3,
    code: 3,
    quoted: buildUdp({ ...to, payload }),
  });
  assert.deepEqual(buf.subarray(0, e.length), expected);
  verifyError(buf.subarray(0, e.length), info);
});

Deno.test("time exceeded quoting an echo request (28 bytes quoted)", () => {
  const q = buildIcmpEcho({ src: R, dst: X, id: 0x2000, seq: 5, type: 8 });
  const e = buildIcmpError({ src: Y, dst: R, type: 11, code: 0, quoted: q.subarray(0, 28) });
  const buf = inA5(e);
  const info = parsed(buf, e.length);
  rewriteIcmpError(buf, info, {
    outerSrc: Y,
    outerDst: A,
    innerSrc: A,
    innerSport: 0x1c46,
    innerDst: X,
    innerDport: 0,
  });
  const pkt = buf.subarray(0, e.length);
  verifyError(pkt, info);
  const q2 = buildIcmpEcho({ src: A, dst: X, id: 0x1c46, seq: 5, type: 8 });
  assert.deepEqual(
    pkt,
    buildIcmpError({ src: Y, dst: A, type: 11, code: 0, quoted: q2.subarray(0, 28) }),
  );
  tailIntact(buf, e.length);
});

Deno.test("fragmentation needed quoting TCP: MTU kept, TCP checksum updated only when quoted", () => {
  const q = buildTcp({
    src: R,
    sport: 61000,
    dst: X,
    dport: 443,
    flags: 0x18,
    payload: new Uint8Array(100).fill(7),
  });
  const q2 = buildTcp({
    src: A,
    sport: 40000,
    dst: X,
    dport: 443,
    flags: 0x18,
    payload: new Uint8Array(100).fill(7),
  });
  for (const quoted of [28, 37, 38, 48, q.length]) {
    const e = buildIcmpError({
      src: Y,
      dst: R,
      type: 3,
      code: 4,
      mtu: 1400,
      quoted: q.subarray(0, quoted),
    });
    const buf = inA5(e);
    const info = parsed(buf, e.length);
    rewriteIcmpError(buf, info, {
      outerSrc: Y,
      outerDst: A,
      innerSrc: A,
      innerSport: 40000,
      innerDst: X,
      innerDport: 443,
    });
    const pkt = buf.subarray(0, e.length);
    verifyError(pkt, info);
    assert.deepEqual([pkt[26], pkt[27]], [1400 >> 8, 1400 & 0xff], "next-hop MTU");
    const expected = buildIcmpError({
      src: Y,
      dst: A,
      type: 3,
      code: 4,
      mtu: 1400,
      quoted: q2.subarray(0, quoted),
    });
    const tcpCsum = info.innerOff + 20 + 16;
    if (quoted >= 38) {
      assert.deepEqual(pkt, expected, `quoted ${quoted}`);
    } else {
      // The TCP checksum is not (wholly) quoted: it must be left alone, and
      // the ICMP checksum must still cover the bytes as they are.
      const diffs = diffOffsets(pkt, expected);
      assert.ok(
        diffs.every((o) => o === tcpCsum || o === tcpCsum + 1 || o === 22 || o === 23),
        `quoted ${quoted}`,
      );
      assert.equal(pkt[tcpCsum], e[tcpCsum]);
    }
    if (quoted === q.length) {
      assert.ok(verifyL4Checksum(pkt.subarray(info.innerOff)), "quoted TCP checksum");
    }
    tailIntact(buf, e.length);
  }
});

// ---- properties ----

const addr = fc.nat(0xffffffff);
const port = fc.nat(0xffff);
const ends = fc.record({ src: addr, sport: port, dst: addr, dport: port });
type Ends = { src: number; sport: number; dst: number; dport: number };
const ipOpts = fc.constantFrom(
  new Uint8Array(0),
  Uint8Array.of(0x94, 4, 0, 0),
  new Uint8Array(8).fill(1),
);

/** Builds a packet of `kind` with the given ends (echo: request uses sport, reply dport). */
function build(kind: number, e: Ends, payload: Uint8Array, options: Uint8Array): Uint8Array {
  switch (kind) {
    case 0:
      return buildUdp({ ...e, payload, options });
    case 1:
      return buildUdp({ ...e, payload, options, checksum: false });
    case 2:
      return buildTcp({ ...e, payload, options, seq: 0xdeadbeef });
    case 3:
      return buildIcmpEcho({
        src: e.src,
        dst: e.dst,
        id: e.sport,
        seq: 1,
        type: 8,
        payload,
        options,
      });
    default:
      return buildIcmpEcho({
        src: e.src,
        dst: e.dst,
        id: e.dport,
        seq: 1,
        type: 0,
        payload,
        options,
      });
  }
}

Deno.test("property: rewrite equals building the rewritten packet from scratch", () => {
  fc.assert(
    fc.property(
      fc.nat(4),
      ends,
      ends,
      fc.uint8Array({ maxLength: 64 }),
      ipOpts,
      (kind, from, to, payload, options) => {
        const before = build(kind, from, payload, options);
        const buf = inA5(before);
        const info = parsed(buf, before.length);
        rewrite(buf, info, to.src, to.sport, to.dst, to.dport);
        const after = build(kind, to, payload, options);
        assert.deepEqual(buf.subarray(0, before.length), after);
        tailIntact(buf, before.length);
        assert.deepEqual(info, parsed(after, after.length));
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("property: rewriteIcmpError equals building the translated error from scratch", () => {
  fc.assert(
    fc.property(
      fc.nat(4),
      fc.constantFrom(3, 11, 12),
      ends,
      ends,
      fc.tuple(addr, addr, addr, addr),
      fc.uint8Array({ maxLength: 40 }),
      ipOpts,
      fc.nat(200),
      (kind, type, from, to, [os, od, ns, nd], payload, options, cut) => {
        const q = build(kind, from, payload, options);
        const qlen = Math.min(q.length, 28 + options.length + cut);
        const e = buildIcmpError({ src: os, dst: od, type, code: 1, quoted: q.subarray(0, qlen) });
        const buf = inA5(e);
        const info = parsed(buf, e.length);
        rewriteIcmpError(buf, info, {
          outerSrc: ns,
          outerDst: nd,
          innerSrc: to.src,
          innerSport: to.sport,
          innerDst: to.dst,
          innerDport: to.dport,
        });
        const pkt = buf.subarray(0, e.length);
        verifyError(pkt, info);
        const q2 = build(kind, to, payload, options);
        const expected = buildIcmpError({
          src: ns,
          dst: nd,
          type,
          code: 1,
          quoted: q2.subarray(0, qlen),
        });
        const tcpCsum = info.innerOff + 20 + options.length + 16;
        const tcpUncovered = kind === 2 && tcpCsum + 2 > e.length;
        const diffs = diffOffsets(pkt, expected);
        if (!tcpUncovered) assert.deepEqual(diffs, []);
        else {assert.ok(diffs.every((o) =>
            o === tcpCsum || o === tcpCsum + 1 || o === 22 || o === 23
          ));}
        if (qlen === q.length) assert.ok(verifyL4Checksum(pkt.subarray(info.innerOff)));
        tailIntact(buf, e.length);
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("property: on mutated packets that still parse, valid checksums stay valid", () => {
  let rewritten = 0;
  fc.assert(
    fc.property(
      fc.nat(4),
      ends,
      ends,
      fc.uint8Array({ maxLength: 48 }),
      fc.boolean(),
      fc.array(fc.tuple(fc.nat(120), fc.nat(255)), { maxLength: 6 }),
      (kind, from, to, payload, asError, edits) => {
        let p = build(kind, from, payload, new Uint8Array(0));
        if (asError) {
          p = buildIcmpError({ src: to.dst, dst: from.src, type: 3, code: 3, quoted: p });
        }
        for (const [at, v] of edits) if (at < p.length) p[at] = v;
        fillChecksums(p);
        const validBefore = verifyIpChecksum(p) && verifyL4Checksum(p);
        const buf = inA5(p);
        const info = new PacketInfo();
        if (parse(buf, p.length, info) !== Drop.NONE) return;
        const pkt = buf.subarray(0, p.length);
        if (info.icmpError) {
          rewriteIcmpError(buf, info, {
            outerSrc: to.src,
            outerDst: to.dst,
            innerSrc: to.dst,
            innerSport: to.dport,
            innerDst: to.src,
            innerDport: to.sport,
          });
          if (validBefore) verifyError(pkt, info);
        } else {
          rewrite(buf, info, to.src, to.sport, to.dst, to.dport);
          if (validBefore) assert.ok(verifyIpChecksum(pkt) && verifyL4Checksum(pkt));
        }
        if (validBefore) rewritten++;
        tailIntact(buf, p.length);
      },
    ),
    { numRuns: 3000 },
  );
  // The property must have exercised rewriting, not only drops.
  assert.ok(rewritten > 500, `only ${rewritten} packets were rewritten`);
});

// --- Packets the queue reports as CHECKSUM_PARTIAL or GSO (NFQA_CFG_F_GSO) ---

/** The folded pseudo-header sum, as the kernel leaves it in a CHECKSUM_PARTIAL packet. */
function pseudoSum(src: number, dst: number, proto: number, len: number): number {
  let s = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** Turns a built packet into what a local CHECKSUM_PARTIAL send looks like in the queue. */
function asPartial(pkt: Uint8Array): Uint8Array {
  const b = pkt.slice();
  const dv = new DataView(b.buffer);
  const proto = b[9]!;
  const l4len = dv.getUint16(2) - 20;
  const field = 20 + (proto === 6 ? 16 : 6);
  dv.setUint16(field, pseudoSum(dv.getUint32(12), dv.getUint32(16), proto, l4len));
  return b;
}

/** Completes a partial checksum as skb_checksum_help does: sum from the L4 header, field included. */
function kernelComplete(pkt: Uint8Array): void {
  const dv = new DataView(pkt.buffer, pkt.byteOffset);
  const field = 20 + (pkt[9] === 6 ? 16 : 6);
  let s = 0;
  for (let i = 20; i + 1 < pkt.length; i += 2) s += dv.getUint16(i);
  if (pkt.length & 1) s += pkt[pkt.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  dv.setUint16(field, ~s & 0xffff || 0xffff);
}

const PAYLOAD = new Uint8Array(3001).map((_, i) => (i * 31 + 7) & 0xff); // odd length on purpose

Deno.test("partial (CSUMNOTREADY): the kernel's own completion of the input is valid (fixture check)", () => {
  for (
    const p of [
      buildTcp({ src: A, sport: 40000, dst: G, dport: 20001, flags: 0x18, payload: PAYLOAD }),
      buildUdp({ src: A, sport: 40000, dst: G, dport: 20001, payload: PAYLOAD }),
    ]
  ) {
    const b = asPartial(p);
    assert.ok(!verifyL4Checksum(b), "a partial checksum does not verify as it is");
    kernelComplete(b);
    assert.ok(verifyL4Checksum(b), "completed by the kernel, it verifies");
  }
});

Deno.test("partial (CSUMNOTREADY): TCP and UDP rewritten, addresses and ports, leave a complete checksum", () => {
  const cases = [
    buildTcp({ src: A, sport: 40000, dst: G, dport: 20001, flags: 0x18, payload: PAYLOAD }),
    buildUdp({ src: A, sport: 40000, dst: G, dport: 20001, payload: PAYLOAD }),
    buildTcp({ src: A, sport: 40000, dst: X, dport: 443, flags: 0x02 }),
  ];
  for (const p of cases) {
    const b = asPartial(p);
    const info = parsed(b, b.length);
    rewrite(b, info, R, 61000, X, 8443, Meta.PARTIAL_CHECKSUM);
    // A payload verdict marks the packet CHECKSUM_NONE: the field must be complete now.
    assert.ok(verifyIpChecksum(b), "IP header checksum");
    assert.ok(verifyL4Checksum(b), "L4 checksum verifies from scratch");
    assert.deepEqual([info.src, info.sport, info.dst, info.dport], [R, 61000, X, 8443]);
    // Same bytes as translating the complete packet the ordinary way.
    const full = p.slice();
    rewrite(full, parsed(full, full.length), R, 61000, X, 8443);
    assert.deepEqual(b, full);
  }
});

Deno.test("partial: the kernel-style address-only update of the pseudo-header sum, then completion, agrees", () => {
  // What inet_proto_csum_replace4(pseudohdr=true) does on CHECKSUM_PARTIAL:
  // field' = ~csum_fold(field + ~old + new) = fold(field + ~old + new); ports untouched.
  const p = buildTcp({ src: A, sport: 40000, dst: G, dport: 20001, flags: 0x18, payload: PAYLOAD });
  const b = asPartial(p);
  const dv = new DataView(b.buffer);
  let s = dv.getUint16(36) + (~(A >>> 16) & 0xffff) + (~A & 0xffff) + (R >>> 16) + (R & 0xffff);
  s += (~(G >>> 16) & 0xffff) + (~G & 0xffff) + (X >>> 16) + (X & 0xffff);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  dv.setUint32(12, R);
  dv.setUint32(16, X);
  dv.setUint16(36, s);
  dv.setUint16(20, 61000);
  dv.setUint16(22, 8443);
  kernelComplete(b);
  const ours = asPartial(p);
  rewrite(ours, parsed(ours, ours.length), R, 61000, X, 8443, Meta.PARTIAL_CHECKSUM);
  assert.equal(dv.getUint16(36), new DataView(ours.buffer).getUint16(36));
});

Deno.test("GSO (GRO-merged): a checksum valid for no byte range is recomputed; UDP 0 stays 0", () => {
  const t = buildTcp({ src: X, sport: 443, dst: R, dport: 61000, flags: 0x10, payload: PAYLOAD });
  new DataView(t.buffer).setUint16(36, 0x1234); // the first segment's checksum
  const info = parsed(t, t.length);
  rewrite(t, info, G, 20001, A, 40000, Meta.GSO);
  assert.ok(verifyL4Checksum(t));
  const u = buildUdp({
    src: X,
    sport: 53,
    dst: R,
    dport: 61000,
    payload: PAYLOAD,
    checksum: false,
  });
  rewrite(u, parsed(u, u.length), G, 20001, A, 40000, Meta.GSO);
  assert.equal(new DataView(u.buffer).getUint16(26), 0, "no checksum stays none");
});

Deno.test("partial: ICMP echo and a 64 KB TCP packet", () => {
  const e = buildIcmpEcho({ src: A, dst: G, id: 7, seq: 1, type: 8 });
  new DataView(e.buffer).setUint16(22, 0); // not yet computed
  rewrite(e, parsed(e, e.length), R, 20001, X, 0, Meta.PARTIAL_CHECKSUM);
  assert.ok(verifyL4Checksum(e));
  const big = new Uint8Array(65531 - 40).map((_, i) => (i * 13) & 0xff);
  const t = asPartial(buildTcp({ src: A, sport: 1, dst: G, dport: 2, flags: 0x10, payload: big }));
  assert.equal(t.length, 65531);
  rewrite(t, parsed(t, t.length), R, 3, X, 4, Meta.PARTIAL_CHECKSUM | Meta.GSO);
  assert.ok(verifyL4Checksum(t));
});
