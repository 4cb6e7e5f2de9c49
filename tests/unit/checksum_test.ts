import assert from "node:assert/strict";
import fc from "fast-check";
import {
  csumApply,
  csumDelta16,
  csumDelta32,
  csumReplace16,
  csumReplace32,
  finish,
  fold,
  pseudoHeaderSum,
  sum16,
  udpWireChecksum,
} from "../../src/wire/checksum.ts";
import { DNS, hex, PING, referenceChecksum, SYN, UNREACH } from "../../testing/packets.ts";

/**
 * The most naive reference possible: ones'-complement addition one word at a
 * time with the end-around carry applied after every addition (RFC 1071 §1).
 */
function naive(bytes: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    const w = bytes[i]! * 256 + (i + 1 < bytes.length ? bytes[i + 1]! : 0);
    s += w;
    if (s > 0xffff) s -= 0xffff;
  }
  return 0xffff - s;
}

/** Ones'-complement equality: 0x0000 and 0xffff are both zero. */
function same(a: number, b: number): boolean {
  return a === b || (a % 0xffff === 0 && b % 0xffff === 0);
}

Deno.test("RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2", () => {
  const b = hex("0001f203f4f5f6f7");
  assert.equal(sum16(b, 0, 8), 0xddf2);
  assert.equal(finish(sum16(b, 0, 8)), 0x220d);
  // Byte order independence (§2B): the swapped sum is the swapped result.
  assert.equal(sum16(hex("0100 03f2 f5f4 f7f6"), 0, 8), 0xf2dd);
});

Deno.test("well-known IPv4 header checksum b861", () => {
  // The header used in many textbooks: 192.168.0.1 -> 192.168.0.199, UDP.
  const h = hex("45000073000040004011 0000 c0a80001c0a800c7");
  assert.equal(finish(sum16(h, 0, 20)), 0xb861);
  h[10] = 0xb8;
  h[11] = 0x61;
  assert.equal(sum16(h, 0, 20), 0xffff);
});

Deno.test("real packets: header and L4 checksums verify with sum16", () => {
  for (const p of [PING, DNS, SYN, UNREACH]) assert.equal(sum16(p, 0, 20), 0xffff);
  assert.equal(sum16(PING, 20, PING.length - 20), 0xffff);
  assert.equal(sum16(UNREACH, 20, UNREACH.length - 20), 0xffff);
  // UDP and TCP include the pseudo-header.
  const dns = pseudoHeaderSum(0x0a000002, 0xc0000235, 17, DNS.length - 20);
  assert.equal(sum16(DNS, 20, DNS.length - 20, dns), 0xffff);
  const syn = pseudoHeaderSum(0x0a000002, 0xc6336407, 6, SYN.length - 20);
  assert.equal(sum16(SYN, 20, SYN.length - 20, syn), 0xffff);
});

Deno.test("odd lengths pad the last byte as a high byte", () => {
  assert.equal(sum16(hex("ab"), 0, 1), 0xab00);
  assert.equal(sum16(hex("0102ab"), 0, 3), 0xac02);
  // An offset into a larger buffer reads only the range.
  assert.equal(sum16(hex("ffff0102abff"), 2, 3), 0xac02);
});

Deno.test("fold: end-around carry, and 0 only for 0", () => {
  assert.equal(fold(0), 0);
  assert.equal(fold(0xffff), 0xffff);
  assert.equal(fold(0x10000), 1);
  assert.equal(fold(0x1fffe), 0xffff);
  assert.equal(fold(2 ** 48 + 5), 6); // words 0001 0000 0000 0005
  assert.equal(fold(2 ** 40 + 5), 0x105); // words 0100 0000 0005
});

Deno.test("UDP: a computed 0 is sent as 0xffff, anything else as is", () => {
  assert.equal(udpWireChecksum(0), 0xffff);
  assert.equal(udpWireChecksum(0x1234), 0x1234);
  assert.equal(udpWireChecksum(0xffff), 0xffff);
});

Deno.test("property: sum16 matches two independent references", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 1600 }), (b) => {
      const c = finish(sum16(b, 0, b.length));
      return same(c, naive(b)) && c === referenceChecksum(b);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("property: large sums (64 KiB of 0xff) fold correctly", () => {
  const b = new Uint8Array(65535).fill(0xff);
  assert.equal(finish(sum16(b, 0, b.length)), referenceChecksum(b));
  assert.ok(same(finish(sum16(b, 0, b.length)), naive(b)));
});

Deno.test("property: sums compose over a split at an even offset", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(150), (b, k) => {
      const cut = Math.min(2 * k, b.length & ~1);
      const split = sum16(b, cut, b.length - cut, sum16(b, 0, cut));
      return same(finish(split), referenceChecksum(b));
    }),
  );
});

Deno.test("property: pseudo-header sum equals summing its 12 bytes", () => {
  fc.assert(
    fc.property(
      fc.nat(0xffffffff),
      fc.nat(0xffffffff),
      fc.nat(255),
      fc.nat(0xffff),
      (s, d, p, l) => {
        const b = new Uint8Array(12);
        const v = new DataView(b.buffer);
        v.setUint32(0, s);
        v.setUint32(4, d);
        b[9] = p;
        v.setUint16(10, l);
        return same(finish(pseudoHeaderSum(s, d, p, l)), referenceChecksum(b));
      },
    ),
  );
});

Deno.test("property: RFC 1624 incremental updates equal a full recompute", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 8, maxLength: 200 }),
      fc.nat(),
      fc.nat(0xffff),
      fc.nat(0xffffffff),
      (raw, at, w16, w32) => {
        // A checksummed message: field at 0-1, data after it.
        const b = raw.slice();
        b[0] = b[1] = 0;
        const c = referenceChecksum(b);
        b[0] = c >> 8;
        b[1] = c & 0xff;
        // Replace one aligned 16-bit word (not the checksum).
        const o16 = 2 + 2 * (at % ((b.length - 2) >> 1));
        const old16 = b[o16]! * 256 + b[o16 + 1]!;
        b[o16] = w16 >> 8;
        b[o16 + 1] = w16 & 0xff;
        const c16 = csumReplace16(c, old16, w16);
        const full16 = full(b);
        if (!sameSum(c16, full16, b)) return false;
        b[0] = c16 >> 8;
        b[1] = c16 & 0xff;
        // Replace an aligned 32-bit value where it fits.
        if (b.length < 6) return true;
        const o32 = 2 + 2 * (at % ((b.length - 4) >> 1));
        const v = new DataView(b.buffer);
        const old32 = v.getUint32(o32);
        v.setUint32(o32, w32);
        return sameSum(csumReplace32(c16, old32, w32), full(b), b);
      },
    ),
    { numRuns: 3000 },
  );
});

/**
 * Whether an incremental checksum equals the full one. RFC 1624's equation 3
 * gives 0x0000 where a full computation gives 0xffff (the two zeros of
 * one's complement) when every data word is zero; no IP, TCP, UDP or ICMP
 * checksum covers only zeros (the headers and pseudo-headers never are), so
 * that one case accepts either.
 */
function sameSum(incremental: number, whole: number, b: Uint8Array): boolean {
  if (incremental === whole) return true;
  return b.subarray(2).every((x) => x === 0) && incremental === 0 && whole === 0xffff;
}

/** Recomputes the checksum at bytes 0-1 of `b` from scratch. */
function full(b: Uint8Array): number {
  const t = b.slice();
  t[0] = t[1] = 0;
  return referenceChecksum(t);
}

Deno.test("property: chained deltas equal sequential replacements", () => {
  fc.assert(
    fc.property(
      fc.nat(0xffff),
      fc.array(fc.tuple(fc.nat(0xffff), fc.nat(0xffff)), { maxLength: 12 }),
      (c, changes) => {
        let seq = c;
        let delta = 0;
        for (const [m, m2] of changes) {
          seq = csumReplace16(seq, m, m2);
          delta = csumDelta16(delta, m, m2);
        }
        return same(csumApply(c, delta), seq);
      },
    ),
  );
  assert.equal(
    csumDelta32(0, 0x12345678, 0x9abcdef0),
    csumDelta16(csumDelta16(0, 0x1234, 0x9abc), 0x5678, 0xdef0),
  );
});

Deno.test("RFC 1624 §3: eqn. 3 avoids the -0 of eqn. 2", () => {
  // RFC 1624's example: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives 0x0000, not 0xffff.
  assert.equal(csumReplace16(0xdd2f, 0x5555, 0x3285), 0x0000);
  // A zero delta leaves the checksum alone.
  assert.equal(csumApply(0x1234, 0), 0x1234);
  assert.equal(csumApply(0xffff, 0), 0xffff);
});

Deno.test("sum16: the 32-bit path for long aligned ranges matches the byte loop", () => {
  const ref = (b: Uint8Array, off: number, len: number, init: number): number => {
    let s = init;
    let i = off;
    for (; i + 1 < off + len; i += 2) s += (b[i]! << 8) | b[i + 1]!;
    if (len & 1) s += b[i]! << 8;
    while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
    return s;
  };
  for (let k = 0; k < 500; k++) {
    const len = 256 + ((k * 7919) % 66000);
    const off = (k % 5) * 4 + (k % 3 === 0 ? 2 : 0); // aligned and not
    const b = new Uint8Array(off + len + 3).map((_, i) => (i * 31 + k) & 0xff);
    if (k % 50 === 0) b.fill(0xff);
    const init = (k * 40503) % 0x30000;
    assert.equal(sum16(b, off, len, init), ref(b, off, len, init), `len ${len} off ${off}`);
  }
});

Deno.test("RFC 1624 equation 3: over all-zero data the incremental sum is 0x0000 where the full one is 0xffff (the one case the property allows)", () => {
  const b = new Uint8Array(8); // checksum 0-1, data 2..7
  b[3] = 5;
  const c = full(b);
  assert.equal(c, 0xfffa);
  b[3] = 0;
  assert.equal(csumReplace16(c, 5, 0), 0x0000);
  assert.equal(full(b), 0xffff);
  assert.ok(sameSum(0x0000, 0xffff, b));
  b[5] = 1;
  assert.ok(!sameSum(0x0000, 0xffff, b), "only over all-zero data");
});
