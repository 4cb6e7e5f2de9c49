/**
 * IPv4, TCP, UDP and ICMP headers over a `Uint8Array`: field offsets, drop
 * reasons, and {@link parse}, which checks one packet and fills a reusable
 * {@link PacketInfo}. Parsing untrusted bytes never throws and never
 * allocates: it returns {@link Drop.NONE} or the reason to drop the packet.
 *
 * Addresses are host-order unsigned 32-bit numbers (see `addr.ts`). Ports
 * follow one convention for all three protocols so that the NAT logic is
 * uniform, ICMP echo being treated like UDP:
 *
 * | packet              | `sport`        | `dport`        |
 * | ------------------- | -------------- | -------------- |
 * | TCP, UDP            | source port    | dest. port     |
 * | ICMP echo request   | identifier     | 0              |
 * | ICMP echo reply     | 0              | identifier     |
 * | ICMP error (outer)  | 0              | 0              |
 *
 * The packet quoted in an ICMP error (destination unreachable, time exceeded,
 * parameter problem) is described by the `inner*` fields with the same
 * convention; it is a packet that was sent earlier in the opposite direction.
 *
 * What `parse` deliberately does not do:
 * - Fragments are dropped ({@link Drop.FRAGMENT}): only the first fragment
 *   carries ports, so a fragment cannot be matched to a session on its own.
 *   With the kernel's defragmentation running (conntrack loads it; the raw
 *   table hooks sit after it), dpm sees whole datagrams, and a fragment that
 *   still reaches it is an anomaly.
 * - Header checksums are not verified: the kernel has verified received IPv4
 *   headers and computed those of local packets before the netfilter queue,
 *   and L4 checksums are the receiver's business. Incremental updates keep a
 *   correct checksum correct and a wrong one wrong, so nothing is hidden.
 *
 * @module
 */

import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "./meta.ts";
export { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP };

// ---- IPv4 header (RFC 791 §3.1) ----
/** Offset of version (high nibble) and IHL in 32-bit words (low nibble). */
export const IP_VER_IHL = 0;
/** Offset of the total length (header and data, bytes). */
export const IP_TOTAL_LENGTH = 2;
/** Offset of the identification field. */
export const IP_ID = 4;
/** Offset of flags (3 bits) and fragment offset (13 bits). */
export const IP_FRAG = 6;
/** Offset of the time to live. */
export const IP_TTL = 8;
/** Offset of the protocol number. */
export const IP_PROTO = 9;
/** Offset of the header checksum. */
export const IP_CHECKSUM = 10;
/** Offset of the source address. */
export const IP_SRC = 12;
/** Offset of the destination address. */
export const IP_DST = 16;
/** Length of a header without options. */
export const IP_MIN_HEADER = 20;
/** The "more fragments" flag in the 16-bit flags/offset word. */
export const IP_FLAG_MF = 0x2000;
/** The "don't fragment" flag in the 16-bit flags/offset word. */
export const IP_FLAG_DF = 0x4000;
/** The fragment offset mask (in 8-byte units) in the 16-bit flags/offset word. */
export const IP_FRAG_OFFSET_MASK = 0x1fff;

// ---- TCP header (RFC 9293 §3.1) ----
/** Offset of the TCP source port. */
export const TCP_SPORT = 0;
/** Offset of the TCP destination port. */
export const TCP_DPORT = 2;
/** Offset of the sequence number. */
export const TCP_SEQ = 4;
/** Offset of the acknowledgment number. */
export const TCP_ACK = 8;
/** Offset of the data offset (high nibble, 32-bit words). */
export const TCP_DATA_OFF = 12;
/** Offset of the flags byte (CWR ECE URG ACK PSH RST SYN FIN). */
export const TCP_FLAGS = 13;
/** Offset of the window. */
export const TCP_WINDOW = 14;
/** Offset of the TCP checksum. */
export const TCP_CHECKSUM = 16;
/** Offset of the urgent pointer. */
export const TCP_URGENT = 18;
/** Length of a TCP header without options. */
export const TCP_MIN_HEADER = 20;

// ---- UDP header (RFC 768) ----
/** Offset of the UDP source port. */
export const UDP_SPORT = 0;
/** Offset of the UDP destination port. */
export const UDP_DPORT = 2;
/** Offset of the UDP length (header and data). */
export const UDP_LENGTH = 4;

/** Offset of the UDP checksum (0 = none). */
export const UDP_CHECKSUM = 6;
/** Length of the UDP header. */
export const UDP_HEADER = 8;

// ---- ICMP (RFC 792) ----
/** Offset of the ICMP type. */
export const ICMP_TYPE = 0;
/** Offset of the ICMP code. */
export const ICMP_CODE = 1;
/** Offset of the ICMP checksum (covers the whole ICMP message, no pseudo-header). */
export const ICMP_CHECKSUM = 2;
/** Offset of the echo identifier. */
export const ICMP_ID = 4;
/** Offset of the echo sequence number. */
export const ICMP_SEQ = 6;
/** Offset of the next-hop MTU in "fragmentation needed" (type 3 code 4, RFC 1191). */
export const ICMP_MTU = 6;
/** Length of the ICMP header; an error's quoted packet starts here. */
export const ICMP_HEADER = 8;
/** Echo reply. */
export const ICMP_ECHO_REPLY = 0;
/** Destination unreachable (code 4: fragmentation needed). */
export const ICMP_DEST_UNREACH = 3;
/** Echo request. */
export const ICMP_ECHO_REQUEST = 8;
/** Time exceeded (code 0: TTL exceeded in transit). */
export const ICMP_TIME_EXCEEDED = 11;
/** Parameter problem. */
export const ICMP_PARAM_PROBLEM = 12;
/** The minimum quoted L4 bytes of an ICMP error ("64 bits of original data", RFC 792). */
export const ICMP_QUOTED_L4 = 8;

/**
 * Drop reasons: small integers, 0 = none, usable as indexes into counter
 * arrays. The first group comes from {@link parse}; the second is for the
 * server and driver, which count their own drops in the same arrays. Only
 * append: the numbers appear in counters.
 */
export const Drop = {
  /** Not dropped. */
  NONE: 0,
  /** Shorter than the IPv4 header, or than the L4 header it announces. */
  TRUNCATED: 1,
  /** IP version is not 4. */
  BAD_VERSION: 2,
  /** IHL below 5 words, or the header is longer than the bytes received. */
  BAD_IHL: 3,
  /** Total length below the header length or beyond the bytes received. */
  BAD_TOTAL_LENGTH: 4,
  /** A fragment (MF set or non-zero offset); see the module notes. */
  FRAGMENT: 5,
  /** Neither TCP, UDP nor ICMP (or, quoted in an ICMP error, not TCP, UDP or ICMP echo). */
  UNSUPPORTED_PROTOCOL: 6,
  /** ICMP that is neither echo nor an error dpm translates (3, 11, 12). */
  UNSUPPORTED_ICMP: 7,
  /** ICMP error whose quoted packet is unusable: short header, not IPv4, or under 8 L4 bytes. */
  ICMP_ERROR_TRUNCATED: 8,
  /** ICMP error quoting an ICMP error (RFC 1122 §3.2.2: never sent; never translated). */
  ICMP_ERROR_NESTED: 9,
  /** TCP data offset below 5 or past the packet; UDP length below 8 or past the packet. */
  BAD_L4_LENGTH: 10,
  /** No session matches the packet. */
  NO_SESSION: 11,
  /** TTL would expire at the gateway. */
  TTL_EXCEEDED: 12,
  /** A packet to a session's gateway port Pg comes from a port other than the session's internal port. */
  INTERNAL_PORT_MISMATCH: 13,
  /** Source or destination is in the public pool where it must not be. */
  POOL_LOOP: 14,
  /** Too many packets held while a reservation is pending. */
  HELD_OVERFLOW: 15,
  /** The server refused the session's reservation. */
  REFUSED: 16,
  /** Not a packet for this instance to translate. */
  NOT_OURS: 17,
  /** The translator threw on this packet (a bug): dropped, counted and logged, never fatal. */
  INTERNAL_ERROR: 18,
} as const;

/** A drop reason code. */
export type DropCode = (typeof Drop)[keyof typeof Drop];

/** Kebab-case names of the drop reasons, indexed by code, for logs, counters and JSON. */
export const DROP_NAMES: readonly string[] = [
  "none",
  "truncated",
  "bad-version",
  "bad-ihl",
  "bad-total-length",
  "fragment",
  "unsupported-protocol",
  "unsupported-icmp",
  "icmp-error-truncated",
  "icmp-error-nested",
  "bad-l4-length",
  "no-session",
  "ttl-exceeded",
  "internal-port-mismatch",
  "pool-loop",
  "held-overflow",
  "refused",
  "not-ours",
  "internal-error",
];

/** Number of drop reasons, `Drop.NONE` included (the size of a counter array). */
export const DROP_COUNT: number = DROP_NAMES.length;

/** The kebab-case name of a drop reason, `unknown-N` for an undefined code. */
export function dropName(code: number): string {
  return DROP_NAMES[code] ?? `unknown-${code}`;
}

/**
 * Summary of one IPv4 packet, filled in place by {@link parse}. Allocate one
 * and reuse it for every packet. After a successful parse every field is
 * set (fields that do not apply are 0/false); after a drop, the fields are
 * unspecified except that `len`, `ihl`, `l4`, `ttl`, `proto`, `src` and `dst`
 * are set once the IPv4 header itself passed (reasons other than
 * TRUNCATED, BAD_VERSION, BAD_IHL, BAD_TOTAL_LENGTH).
 */
export class PacketInfo {
  /** IP total length: the packet's bytes; anything after it is ignored. */
  len = 0;
  /** IP header length in bytes. */
  ihl = 0;
  /** Offset of the L4 header (= `ihl`). */
  l4 = 0;
  /** Time to live. */
  ttl = 0;
  /** IP protocol number. */
  proto = 0;
  /** Source address, host order. */
  src = 0;
  /** Destination address, host order. */
  dst = 0;
  /** Source port, or echo request identifier (see the module's port convention). */
  sport = 0;
  /** Destination port, or echo reply identifier. */
  dport = 0;
  /** ICMP type (ICMP only). */
  icmpType = 0;
  /** ICMP code (ICMP only). */
  icmpCode = 0;
  /** ICMP destination unreachable (3), time exceeded (11), parameter problem (12): the payload quotes an earlier packet. */
  icmpError = false;
  /** ICMP errors: offset of the quoted IP header in the buffer. */
  innerOff = 0;
  /** ICMP errors: the quoted IP header's length in bytes. */
  innerIhl = 0;
  /** ICMP errors: the quoted packet's protocol. */
  innerProto = 0;
  /** ICMP errors: the quoted packet's source address. */
  innerSrc = 0;
  /** ICMP errors: the quoted packet's destination address. */
  innerDst = 0;
  /** ICMP errors: the quoted packet's source port or echo request identifier. */
  innerSport = 0;
  /** ICMP errors: the quoted packet's destination port or echo reply identifier. */
  innerDport = 0;
}

/** Reads a big-endian 16-bit value. The caller has checked the bounds. */
export function read16(buf: Uint8Array, off: number): number {
  return (buf[off]! << 8) | buf[off + 1]!;
}

/** Reads a big-endian 32-bit value as an unsigned number. The caller has checked the bounds. */
export function read32(buf: Uint8Array, off: number): number {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

/** Writes a big-endian 16-bit value. */
export function write16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v;
}

/** Writes a big-endian 32-bit value. */
export function write32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}

/** True for the ICMP types whose payload quotes an earlier packet. */
export function isIcmpError(type: number): boolean {
  return type === ICMP_DEST_UNREACH || type === ICMP_TIME_EXCEEDED ||
    type === ICMP_PARAM_PROBLEM;
}

/**
 * Checks the IPv4 packet in `buf[0, len)` and fills `out`.
 *
 * Accepted: version 4, IHL >= 5 within the bytes, total length between the
 * header length and `len` (bytes past the total length, such as Ethernet
 * padding, are ignored), not a fragment, and a complete TCP (data offset >=
 * 5 within the packet), UDP (length field from 8 to the IP payload length)
 * or ICMP header. ICMP must be echo request/reply or an error (3, 11, 12);
 * an error must quote a complete IPv4 header and at least 8 bytes of its L4
 * header (RFC 792), of TCP, UDP or ICMP echo, and not a fragment past the
 * first. The quoted header's total length may exceed the quoted bytes; that
 * is normal and not checked.
 *
 * @param buf the packet, starting at the IPv4 header
 * @param len bytes of `buf` that hold the packet (clamped to `buf.length`)
 * @param out filled in place
 * @returns `Drop.NONE`, or the reason to drop the packet
 */
export function parse(buf: Uint8Array, len: number, out: PacketInfo): number {
  const n = len < buf.length ? len : buf.length;
  if (n < IP_MIN_HEADER) return Drop.TRUNCATED;
  const vi = buf[IP_VER_IHL]!;
  if (vi >> 4 !== 4) return Drop.BAD_VERSION;
  const ihl = (vi & 0x0f) << 2;
  if (ihl < IP_MIN_HEADER || ihl > n) return Drop.BAD_IHL;
  const total = read16(buf, IP_TOTAL_LENGTH);
  if (total < ihl || total > n) return Drop.BAD_TOTAL_LENGTH;

  const proto = buf[IP_PROTO]!;
  out.len = total;
  out.ihl = ihl;
  out.l4 = ihl;
  out.ttl = buf[IP_TTL]!;
  out.proto = proto;
  out.src = read32(buf, IP_SRC);
  out.dst = read32(buf, IP_DST);
  out.sport = 0;
  out.dport = 0;
  out.icmpType = 0;
  out.icmpCode = 0;
  out.icmpError = false;
  out.innerOff = 0;
  out.innerIhl = 0;
  out.innerProto = 0;
  out.innerSrc = 0;
  out.innerDst = 0;
  out.innerSport = 0;
  out.innerDport = 0;

  if ((read16(buf, IP_FRAG) & (IP_FLAG_MF | IP_FRAG_OFFSET_MASK)) !== 0) return Drop.FRAGMENT;

  const l4 = ihl;
  const l4len = total - ihl;
  if (proto === IPPROTO_TCP) {
    if (l4len < TCP_MIN_HEADER) return Drop.TRUNCATED;
    const doff = (buf[l4 + TCP_DATA_OFF]! >> 4) << 2;
    if (doff < TCP_MIN_HEADER || doff > l4len) return Drop.BAD_L4_LENGTH;
    out.sport = read16(buf, l4 + TCP_SPORT);
    out.dport = read16(buf, l4 + TCP_DPORT);
    return Drop.NONE;
  }
  if (proto === IPPROTO_UDP) {
    if (l4len < UDP_HEADER) return Drop.TRUNCATED;
    const ulen = read16(buf, l4 + UDP_LENGTH);
    if (ulen < UDP_HEADER || ulen > l4len) return Drop.BAD_L4_LENGTH;
    out.sport = read16(buf, l4 + UDP_SPORT);
    out.dport = read16(buf, l4 + UDP_DPORT);
    return Drop.NONE;
  }
  if (proto !== IPPROTO_ICMP) return Drop.UNSUPPORTED_PROTOCOL;

  if (l4len < ICMP_HEADER) return Drop.TRUNCATED;
  const type = buf[l4 + ICMP_TYPE]!;
  out.icmpType = type;
  out.icmpCode = buf[l4 + ICMP_CODE]!;
  if (type === ICMP_ECHO_REQUEST) {
    out.sport = read16(buf, l4 + ICMP_ID);
    return Drop.NONE;
  }
  if (type === ICMP_ECHO_REPLY) {
    out.dport = read16(buf, l4 + ICMP_ID);
    return Drop.NONE;
  }
  if (!isIcmpError(type)) return Drop.UNSUPPORTED_ICMP;
  out.icmpError = true;
  return parseQuoted(buf, l4 + ICMP_HEADER, total, out);
}

/**
 * Checks the packet quoted by an ICMP error, from `off` to `end` (the outer
 * total length), and fills the `inner*` fields of `out`.
 */
function parseQuoted(buf: Uint8Array, off: number, end: number, out: PacketInfo): number {
  if (end - off < IP_MIN_HEADER) return Drop.ICMP_ERROR_TRUNCATED;
  const vi = buf[off + IP_VER_IHL]!;
  const ihl = (vi & 0x0f) << 2;
  // A quote that is not IPv4 or has a bad IHL cannot be translated either;
  // counted with the short quotes rather than as an outer-header fault.
  if (vi >> 4 !== 4 || ihl < IP_MIN_HEADER) return Drop.ICMP_ERROR_TRUNCATED;
  const l4 = off + ihl;
  if (end - l4 < ICMP_QUOTED_L4) return Drop.ICMP_ERROR_TRUNCATED;
  // A non-first fragment carries no L4 header, so its "ports" are payload.
  if ((read16(buf, off + IP_FRAG) & IP_FRAG_OFFSET_MASK) !== 0) return Drop.FRAGMENT;

  const proto = buf[off + IP_PROTO]!;
  out.innerOff = off;
  out.innerIhl = ihl;
  out.innerProto = proto;
  out.innerSrc = read32(buf, off + IP_SRC);
  out.innerDst = read32(buf, off + IP_DST);
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP) {
    // TCP and UDP ports sit at the same offsets.
    out.innerSport = read16(buf, l4 + UDP_SPORT);
    out.innerDport = read16(buf, l4 + UDP_DPORT);
    return Drop.NONE;
  }
  if (proto !== IPPROTO_ICMP) return Drop.UNSUPPORTED_PROTOCOL;
  const type = buf[l4 + ICMP_TYPE]!;
  if (type === ICMP_ECHO_REQUEST) {
    out.innerSport = read16(buf, l4 + ICMP_ID);
    return Drop.NONE;
  }
  if (type === ICMP_ECHO_REPLY) {
    out.innerDport = read16(buf, l4 + ICMP_ID);
    return Drop.NONE;
  }
  if (isIcmpError(type)) return Drop.ICMP_ERROR_NESTED;
  return Drop.UNSUPPORTED_PROTOCOL;
}
