import assert from "node:assert/strict";
import fc from "fast-check";
import { parseIPv4 } from "../../src/wire/addr.ts";
import {
  Drop,
  DROP_COUNT,
  DROP_NAMES,
  dropName,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  PacketInfo,
  parse,
} from "../../src/wire/packet.ts";
import {
  buildIcmpEcho,
  buildIcmpError,
  buildTcp,
  buildUdp,
  DNS,
  PING,
  referenceChecksum,
  SYN,
  UNREACH,
} from "../../testing/packets.ts";

const ip = (s: string): number => parseIPv4(s)!;

function parsed(buf: Uint8Array, len = buf.length): PacketInfo {
  const info = new PacketInfo();
  assert.equal(dropName(parse(buf, len, info)), "none");
  return info;
}

function reason(buf: Uint8Array, len = buf.length): string {
  return dropName(parse(buf, len, new PacketInfo()));
}

Deno.test("drop names are kebab-case, one per code", () => {
  assert.equal(DROP_NAMES.length, DROP_COUNT);
  assert.equal(Object.keys(Drop).length, DROP_COUNT);
  for (const [k, v] of Object.entries(Drop)) {
    assert.equal(DROP_NAMES[v], k.toLowerCase().replaceAll("_", "-"));
  }
  assert.equal(dropName(99), "unknown-99");
});

Deno.test("real ping: echo request identifier is sport, dport 0", () => {
  const i = parsed(PING);
  assert.deepEqual(
    [i.len, i.ihl, i.l4, i.ttl, i.proto, i.src, i.dst, i.sport, i.dport],
    [76, 20, 20, 64, IPPROTO_ICMP, ip("10.0.0.2"), ip("192.0.2.1"), 0x1c46, 0],
  );
  assert.equal(i.icmpType, 8);
  assert.equal(i.icmpError, false);
  // Cross-check the Python checksums with the test's reference.
  assert.equal(referenceChecksum(PING.subarray(0, 20)), 0);
  assert.equal(referenceChecksum(PING.subarray(20)), 0);
});

Deno.test("real echo reply: identifier is dport, sport 0", () => {
  const i = parsed(
    buildIcmpEcho({ src: ip("192.0.2.1"), dst: ip("10.0.0.2"), id: 7, seq: 1, type: 0 }),
  );
  assert.equal(i.sport, 0);
  assert.equal(i.dport, 7);
  assert.equal(i.icmpType, 0);
});

Deno.test("real DNS query over UDP", () => {
  const i = parsed(DNS);
  assert.deepEqual(
    [i.len, i.proto, i.src, i.dst, i.sport, i.dport, i.icmpError],
    [57, IPPROTO_UDP, ip("10.0.0.2"), ip("192.0.2.53"), 53124, 53, false],
  );
});

Deno.test("real TCP SYN with options", () => {
  const i = parsed(SYN);
  assert.deepEqual(
    [i.len, i.proto, i.src, i.dst, i.sport, i.dport],
    [60, IPPROTO_TCP, ip("10.0.0.2"), ip("198.51.100.7"), 40000, 443],
  );
});

Deno.test("real port unreachable quoting the DNS query", () => {
  const i = parsed(UNREACH);
  assert.equal(i.icmpError, true);
  assert.deepEqual([i.icmpType, i.icmpCode, i.sport, i.dport], [3, 3, 0, 0]);
  assert.deepEqual(
    [i.src, i.dst, i.innerOff, i.innerIhl, i.innerProto],
    [ip("192.0.2.53"), ip("10.0.0.2"), 28, 20, IPPROTO_UDP],
  );
  assert.deepEqual(
    [i.innerSrc, i.innerSport, i.innerDst, i.innerDport],
    [ip("10.0.0.2"), 53124, ip("192.0.2.53"), 53],
  );
});

Deno.test("trailing bytes after the total length are ignored", () => {
  const b = new Uint8Array(DNS.length + 7).fill(0xa5);
  b.set(DNS);
  assert.equal(parsed(b).len, DNS.length);
  // len is clamped to the buffer rather than trusted.
  assert.equal(parse(DNS, 9999, new PacketInfo()), Drop.NONE);
});

Deno.test("IP options move the L4 header", () => {
  const p = buildUdp({
    src: 1,
    sport: 2,
    dst: 3,
    dport: 4,
    options: Uint8Array.of(0x94, 4, 0, 0), // router alert
  });
  const i = parsed(p);
  assert.deepEqual([i.ihl, i.l4, i.sport, i.dport], [24, 24, 2, 4]);
});

Deno.test("a reused PacketInfo is fully overwritten", () => {
  const info = new PacketInfo();
  assert.equal(parse(UNREACH, UNREACH.length, info), Drop.NONE);
  assert.equal(parse(SYN, SYN.length, info), Drop.NONE);
  assert.deepEqual(
    [info.icmpError, info.icmpType, info.innerOff, info.innerSrc, info.innerSport],
    [false, 0, 0, 0, 0],
  );
});

// ---- malformed packets, one named case per reason ----

Deno.test("truncation at every length never throws and never passes", () => {
  for (const pkt of [PING, DNS, SYN, UNREACH]) {
    for (let n = 0; n < pkt.length; n++) {
      const r = parse(pkt.subarray(0, n), n, new PacketInfo());
      assert.notEqual(r, Drop.NONE, `length ${n} of ${pkt.length}`);
      if (n < 20) assert.equal(r, Drop.TRUNCATED);
      else assert.equal(r, Drop.BAD_TOTAL_LENGTH);
    }
  }
});

Deno.test("bad version", () => {
  const b = DNS.slice();
  b[0] = 0x65;
  assert.equal(reason(b), "bad-version");
});

Deno.test("small IHL", () => {
  const b = DNS.slice();
  b[0] = 0x44;
  assert.equal(reason(b), "bad-ihl");
});

Deno.test("IHL beyond the buffer", () => {
  const b = DNS.slice(0, 40);
  b[0] = 0x4f; // 60 bytes of header in 40 bytes
  assert.equal(reason(b), "bad-ihl");
});

Deno.test("total length overflow and underflow", () => {
  const b = DNS.slice();
  b[3] = DNS.length + 1;
  assert.equal(reason(b), "bad-total-length");
  b[2] = 0;
  b[3] = 19;
  assert.equal(reason(b), "bad-total-length");
});

Deno.test("fragments: first (MF) and later (offset) are dropped; DF is fine", () => {
  const first = buildUdp({ src: 1, sport: 2, dst: 3, dport: 4, frag: 0x2000 });
  const later = buildUdp({ src: 1, sport: 2, dst: 3, dport: 4, frag: 0x0010 });
  const df = buildUdp({ src: 1, sport: 2, dst: 3, dport: 4, frag: 0x4000 });
  assert.equal(reason(first), "fragment");
  assert.equal(reason(later), "fragment");
  assert.equal(reason(df), "none");
});

Deno.test("unknown protocol (GRE)", () => {
  const b = DNS.slice();
  b[9] = 47;
  const info = new PacketInfo();
  assert.equal(parse(b, b.length, info), Drop.UNSUPPORTED_PROTOCOL);
  // The IP fields are still filled, for logging.
  assert.equal(info.src, ip("10.0.0.2"));
});

Deno.test("unsupported ICMP type (timestamp)", () => {
  const b = buildIcmpError({ src: 1, dst: 2, type: 13, code: 0, quoted: new Uint8Array(12) });
  assert.equal(reason(b), "unsupported-icmp");
});

Deno.test("L4 header truncated inside the total length", () => {
  const tcp = SYN.slice(0, 39);
  tcp[3] = 39;
  assert.equal(reason(tcp), "truncated");
  const udp = DNS.slice(0, 27);
  udp[3] = 27;
  assert.equal(reason(udp), "truncated");
  const icmp = PING.slice(0, 27);
  icmp[3] = 27;
  assert.equal(reason(icmp), "truncated");
});

Deno.test("bad UDP length: below 8 and past the IP payload", () => {
  const b = DNS.slice();
  b[24] = 0;
  b[25] = 7;
  assert.equal(reason(b), "bad-l4-length");
  b[25] = DNS.length - 20 + 1;
  assert.equal(reason(b), "bad-l4-length");
  b[25] = 8; // shorter than the payload is allowed (the rest is IP padding)
  assert.equal(reason(b), "none");
});

Deno.test("bad TCP data offset: below 5 and past the packet", () => {
  const b = SYN.slice();
  b[32] = 0x40;
  assert.equal(reason(b), "bad-l4-length");
  b[32] = 0xb0; // 44 bytes in a 40-byte segment
  assert.equal(reason(b), "bad-l4-length");
});

const quotedEcho = buildIcmpEcho({
  src: ip("10.0.0.2"),
  dst: ip("192.0.2.1"),
  id: 9,
  seq: 1,
  type: 8,
});

Deno.test("time exceeded quoting an echo request", () => {
  const e = buildIcmpError({
    src: ip("203.0.113.1"),
    dst: ip("10.0.0.2"),
    type: 11,
    code: 0,
    quoted: quotedEcho.subarray(0, 28),
  });
  const i = parsed(e);
  assert.deepEqual(
    [i.innerProto, i.innerSrc, i.innerSport, i.innerDst, i.innerDport],
    [IPPROTO_ICMP, ip("10.0.0.2"), 9, ip("192.0.2.1"), 0],
  );
});

Deno.test("ICMP error quoting an ICMP error is nested", () => {
  const inner = buildIcmpError({
    src: 5,
    dst: 6,
    type: 3,
    code: 1,
    quoted: quotedEcho.subarray(0, 28),
  });
  const e = buildIcmpError({ src: 7, dst: 8, type: 11, code: 0, quoted: inner.subarray(0, 28) });
  assert.equal(reason(e), "icmp-error-nested");
});

Deno.test("ICMP error quoting an unsupported protocol or ICMP type", () => {
  const gre = DNS.slice(0, 28);
  gre[9] = 47;
  assert.equal(
    reason(buildIcmpError({ src: 1, dst: 2, type: 3, code: 1, quoted: gre })),
    "unsupported-protocol",
  );
  const ts = quotedEcho.slice(0, 28);
  ts[20] = 13;
  assert.equal(
    reason(buildIcmpError({ src: 1, dst: 2, type: 3, code: 1, quoted: ts })),
    "unsupported-protocol",
  );
});

Deno.test("ICMP error with a truncated quote: short header, bad IHL, under 8 L4 bytes", () => {
  const err = (q: Uint8Array) =>
    reason(buildIcmpError({ src: 1, dst: 2, type: 3, code: 3, quoted: q }));
  assert.equal(err(DNS.subarray(0, 19)), "icmp-error-truncated");
  assert.equal(err(DNS.subarray(0, 27)), "icmp-error-truncated");
  assert.equal(err(DNS.subarray(0, 28)), "none");
  const badIhl = DNS.slice(0, 28);
  badIhl[0] = 0x44;
  assert.equal(err(badIhl), "icmp-error-truncated");
  const longIhl = DNS.slice(0, 28);
  longIhl[0] = 0x46; // options would leave only 4 L4 bytes
  assert.equal(err(longIhl), "icmp-error-truncated");
  const v6 = DNS.slice(0, 28);
  v6[0] = 0x65;
  assert.equal(err(v6), "icmp-error-truncated");
});

Deno.test("ICMP error quoting a non-first fragment", () => {
  const q = buildUdp({ src: 1, sport: 2, dst: 3, dport: 4, frag: 0x0100 }).subarray(0, 28);
  assert.equal(
    reason(buildIcmpError({ src: 1, dst: 2, type: 11, code: 1, quoted: q })),
    "fragment",
  );
  const first = buildUdp({ src: 1, sport: 2, dst: 3, dport: 4, frag: 0x2000 }).subarray(0, 28);
  assert.equal(
    reason(buildIcmpError({ src: 1, dst: 2, type: 11, code: 1, quoted: first })),
    "none",
  );
});

Deno.test("property: parse never throws on arbitrary bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 120 }), fc.nat(200), (bytes, len) => {
      const r = parse(bytes, len, new PacketInfo());
      return Number.isInteger(r) && r >= 0 && r < DROP_COUNT;
    }),
    { numRuns: 5000 },
  );
});

Deno.test("property: parse never throws on mutated real packets", () => {
  const info = new PacketInfo();
  fc.assert(
    fc.property(
      fc.constantFrom(PING, DNS, SYN, UNREACH),
      fc.array(fc.tuple(fc.nat(90), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
      (pkt, edits) => {
        const b = pkt.slice();
        for (const [at, v] of edits) if (at < b.length) b[at] = v;
        const r = parse(b, b.length, info);
        return r >= 0 && r < DROP_COUNT;
      },
    ),
    { numRuns: 5000 },
  );
  // Sanity: the builders agree with the real bytes' structure.
  assert.equal(reason(buildTcp({ src: 1, sport: 2, dst: 3, dport: 4 })), "none");
});
