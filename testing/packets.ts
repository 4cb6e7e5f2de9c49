/**
 * Builders of real IPv4 packets for tests, and from-scratch checksum checks.
 *
 * Everything here is deliberately independent of `src/checksum.ts`,
 * `src/packet.ts` and `src/rewrite.ts`: the checksum is the obvious RFC 1071
 * loop, written again, so that tests compare the code under test against
 * something it does not share.
 *
 * Builders return a `Uint8Array` exactly as long as the packet. Addresses
 * are host-order numbers, as everywhere in dpm.
 *
 * @module
 */

/** RFC 1071, the slow obvious way: sum 16-bit big-endian words, fold, complement. */
export function referenceChecksum(bytes: ArrayLike<number>, initial = 0): number {
  let sum = initial;
  for (let i = 0; i < bytes.length; i += 2) {
    const hi = bytes[i]!;
    const lo = i + 1 < bytes.length ? bytes[i + 1]! : 0;
    sum += hi * 256 + lo;
  }
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return 0xffff - sum;
}

function pseudo(src: number, dst: number, proto: number, len: number): number {
  return Math.floor(src / 0x10000) + (src % 0x10000) + Math.floor(dst / 0x10000) +
    (dst % 0x10000) + proto + len;
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

function put32(b: Uint8Array, o: number, v: number): void {
  put16(b, o, Math.floor(v / 0x10000));
  put16(b, o + 2, v % 0x10000);
}

function get16(b: Uint8Array, o: number): number {
  return b[o]! * 256 + b[o + 1]!;
}

function get32(b: Uint8Array, o: number): number {
  return get16(b, o) * 0x10000 + get16(b, o + 2);
}

/** Options shared by every builder's IPv4 header. */
export interface IpOptions {
  /** @default 64 */
  ttl?: number;
  /** IP identification. @default 0x1234 */
  ipId?: number;
  /** Flags and fragment offset word. @default 0x4000 (DF) */
  frag?: number;
  /** IP options, a multiple of 4 bytes. @default none */
  options?: Uint8Array;
}

function ipPacket(
  proto: number,
  src: number,
  dst: number,
  l4: Uint8Array,
  o: IpOptions,
): Uint8Array {
  const opts = o.options ?? new Uint8Array(0);
  const ihl = 20 + opts.length;
  const p = new Uint8Array(ihl + l4.length);
  p[0] = 0x40 | (ihl / 4);
  p[1] = 0;
  put16(p, 2, p.length);
  put16(p, 4, o.ipId ?? 0x1234);
  put16(p, 6, o.frag ?? 0x4000);
  p[8] = o.ttl ?? 64;
  p[9] = proto;
  put32(p, 12, src);
  put32(p, 16, dst);
  p.set(opts, 20);
  put16(p, 10, referenceChecksum(p.subarray(0, ihl)));
  p.set(l4, ihl);
  return p;
}

/** Options of {@link buildUdp}. */
export interface UdpOptions extends IpOptions {
  src: number;
  sport: number;
  dst: number;
  dport: number;
  /** @default 4 bytes "ping" */
  payload?: Uint8Array;
  /** Compute the UDP checksum; false sends 0 ("none"). @default true */
  checksum?: boolean;
  /** IP identification (same as `ipId`, which wins). @default 0x1234 */
  id?: number;
}

/** A UDP datagram. A computed checksum of 0 is sent as 0xffff. */
export function buildUdp(o: UdpOptions): Uint8Array {
  const payload = o.payload ?? new TextEncoder().encode("ping");
  const u = new Uint8Array(8 + payload.length);
  put16(u, 0, o.sport);
  put16(u, 2, o.dport);
  put16(u, 4, u.length);
  u.set(payload, 8);
  if (o.checksum ?? true) {
    const c = referenceChecksum(u, pseudo(o.src, o.dst, 17, u.length));
    put16(u, 6, c === 0 ? 0xffff : c);
  }
  return ipPacket(17, o.src, o.dst, u, { ...o, ipId: o.ipId ?? o.id ?? 0x1234 });
}

/** Options of {@link buildTcp}. */
export interface TcpOptions extends IpOptions {
  src: number;
  sport: number;
  dst: number;
  dport: number;
  /** @default 0x02 (SYN) */
  flags?: number;
  /** @default 1000 */
  seq?: number;
  /** @default 0 */
  ack?: number;
  /** TCP options, a multiple of 4 bytes. @default none */
  tcpOptions?: Uint8Array;
  /** @default empty */
  payload?: Uint8Array;
}

/** A TCP segment with window 65535. */
export function buildTcp(o: TcpOptions): Uint8Array {
  const opts = o.tcpOptions ?? new Uint8Array(0);
  const payload = o.payload ?? new Uint8Array(0);
  const hl = 20 + opts.length;
  const t = new Uint8Array(hl + payload.length);
  put16(t, 0, o.sport);
  put16(t, 2, o.dport);
  put32(t, 4, o.seq ?? 1000);
  put32(t, 8, o.ack ?? 0);
  t[12] = (hl / 4) << 4;
  t[13] = o.flags ?? 0x02;
  put16(t, 14, 0xffff);
  t.set(opts, 20);
  t.set(payload, hl);
  put16(t, 16, referenceChecksum(t, pseudo(o.src, o.dst, 6, t.length)));
  return ipPacket(6, o.src, o.dst, t, o);
}

/** Options of {@link buildIcmpEcho}. */
export interface IcmpEchoOptions extends IpOptions {
  src: number;
  dst: number;
  id: number;
  seq: number;
  /** 8 = echo request, 0 = echo reply. */
  type: 8 | 0;
  /** @default 8 bytes 0..7 */
  payload?: Uint8Array;
}

/** An ICMP echo request or reply. */
export function buildIcmpEcho(o: IcmpEchoOptions): Uint8Array {
  const payload = o.payload ?? Uint8Array.of(0, 1, 2, 3, 4, 5, 6, 7);
  const m = new Uint8Array(8 + payload.length);
  m[0] = o.type;
  put16(m, 4, o.id);
  put16(m, 6, o.seq);
  m.set(payload, 8);
  put16(m, 2, referenceChecksum(m));
  return ipPacket(1, o.src, o.dst, m, o);
}

/** Options of {@link buildIcmpError}. */
export interface IcmpErrorOptions extends IpOptions {
  src: number;
  dst: number;
  /** 3 destination unreachable, 11 time exceeded, 12 parameter problem (any type is built). */
  type: number;
  code: number;
  /** The quoted packet's first bytes. */
  quoted: Uint8Array;
  /** Next-hop MTU, written in bytes 6-7 (type 3 code 4). @default 0 */
  mtu?: number;
}

/** An ICMP error quoting `quoted`. */
export function buildIcmpError(o: IcmpErrorOptions): Uint8Array {
  const m = new Uint8Array(8 + o.quoted.length);
  m[0] = o.type;
  m[1] = o.code;
  put16(m, 6, o.mtu ?? 0);
  m.set(o.quoted, 8);
  put16(m, 2, referenceChecksum(m));
  return ipPacket(1, o.src, o.dst, m, o);
}

/** True when the IPv4 header checksum of the packet at `buf[0]` verifies from scratch. */
export function verifyIpChecksum(buf: Uint8Array): boolean {
  const ihl = (buf[0]! & 15) * 4;
  return referenceChecksum(buf.subarray(0, ihl)) === 0;
}

/**
 * True when the L4 checksum of the packet at `buf[0]` verifies from scratch
 * over the whole L4 message (the packet must be complete): TCP and UDP with
 * the pseudo-header (a UDP checksum of 0 means none and verifies), ICMP
 * without. False for other protocols.
 */
export function verifyL4Checksum(buf: Uint8Array): boolean {
  const ihl = (buf[0]! & 15) * 4;
  const total = get16(buf, 2);
  const proto = buf[9]!;
  const src = get32(buf, 12);
  const dst = get32(buf, 16);
  const l4 = buf.subarray(ihl, total);
  if (proto === 1) return referenceChecksum(l4) === 0;
  if (proto === 6) return referenceChecksum(l4, pseudo(src, dst, 6, l4.length)) === 0;
  if (proto === 17) {
    if (get16(l4, 6) === 0) return true;
    const ulen = get16(l4, 4);
    return referenceChecksum(l4.subarray(0, ulen), pseudo(src, dst, 17, ulen)) === 0;
  }
  return false;
}

/**
 * Copies `pkt` into a larger buffer pre-filled with 0xa5, so that bytes a
 * function should not write show up; `tail` extra bytes follow the packet.
 */
export function inA5(pkt: Uint8Array, tail = 16): Uint8Array {
  const b = new Uint8Array(pkt.length + tail).fill(0xa5);
  b.set(pkt);
  return b;
}

/** Parses hex with optional whitespace (for hard-coded real packets). */
export function hex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  const b = new Uint8Array(t.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return b;
}

// Real packets, generated and checksummed with a separate Python script
// (struct + socket.inet_aton); the checksums in the comments are Python's.

/** `ping 192.0.2.1` from 10.0.0.2: echo request id 0x1c46 seq 1, Linux payload. IP csum 0x3432, ICMP 0xb75e. */
export const PING = hex(
  "4500004c3a7c4000400134320a000002c00002010800b75e1c460001a1b2c3d4000000001011121314151617" +
    "18191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637",
);
/** DNS query for example.com A, 10.0.0.2:53124 -> 192.0.2.53:53. IP csum 0xd07b, UDP 0xe877. */
export const DNS = hex(
  "450000399e0140004011d07b0a000002c0000235cf8400350025e877abcd0100000100000000000007657861" +
    "6d706c6503636f6d0000010001",
);
/** TCP SYN 10.0.0.2:40000 -> 198.51.100.7:443 with MSS, SACK-permitted, timestamps, wscale. IP 0x0680, TCP 0x9623. */
export const SYN = hex(
  "4500003c00004000400606800a000002c63364079c4001bb5eb1a3c000000000a002faf096230000020405b4" +
    "0402080a0001e2400000000001030307",
);
/** Port unreachable from 192.0.2.53 to 10.0.0.2 quoting all of DNS. IP csum 0x6c2f, ICMP 0xc96a. */
export const UNREACH = hex(
  "450000554242000040016c2fc00002350a0000020303c96a00000000450000399e0140004011d07b0a000002" +
    "c0000235cf8400350025e877abcd01000001000000000000076578616d706c6503636f6d0000010001",
);

/**
 * Recomputes, in place and from scratch, the checksums of the packet at
 * `buf[0]` as far as its own length fields allow: the IP header; TCP over
 * the segment; UDP over its length unless the field is 0; ICMP over the
 * message, after the quoted IP header's checksum for an error (3, 11, 12).
 * Tolerates inconsistent lengths (it clamps), for randomised tests.
 */
export function fillChecksums(buf: Uint8Array): void {
  if (buf.length < 20) return;
  const ihl = (buf[0]! & 15) * 4;
  if (ihl < 20 || ihl > buf.length) return;
  put16(buf, 10, 0);
  put16(buf, 10, referenceChecksum(buf.subarray(0, ihl)));
  const total = Math.min(get16(buf, 2), buf.length);
  if (total < ihl) return;
  const l4 = buf.subarray(ihl, total);
  const proto = buf[9]!;
  const src = get32(buf, 12);
  const dst = get32(buf, 16);
  if (proto === 6 && l4.length >= 20) {
    put16(l4, 16, 0);
    put16(l4, 16, referenceChecksum(l4, pseudo(src, dst, 6, l4.length)));
  } else if (proto === 17 && l4.length >= 8 && get16(l4, 6) !== 0) {
    const ulen = Math.min(get16(l4, 4), l4.length);
    put16(l4, 6, 0);
    const c = referenceChecksum(l4.subarray(0, ulen), pseudo(src, dst, 17, ulen));
    put16(l4, 6, c === 0 ? 0xffff : c);
  } else if (proto === 1 && l4.length >= 8) {
    const t = l4[0]!;
    if ((t === 3 || t === 11 || t === 12) && l4.length >= 28) {
      const q = l4.subarray(8);
      const qihl = (q[0]! & 15) * 4;
      if (qihl >= 20 && qihl <= q.length) {
        put16(q, 10, 0);
        put16(q, 10, referenceChecksum(q.subarray(0, qihl)));
      }
    }
    put16(l4, 2, 0);
    put16(l4, 2, referenceChecksum(l4));
  }
}

/** Offsets where `a` and `b` differ (same length required). */
export function diffOffsets(a: Uint8Array, b: Uint8Array): number[] {
  if (a.length !== b.length) throw new RangeError(`Lengths differ: ${a.length} and ${b.length}`);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}
