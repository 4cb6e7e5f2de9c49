/**
 * In-place address and port translation of parsed packets, with
 * incremental checksum updates (RFC 1624) and ICMP error translation
 * (RFC 5508 §4.2, RFC 3022 §4.3).
 *
 * Both functions take a packet that {@link parse} accepted together with the
 * {@link PacketInfo} it filled, write only the fields whose value changes,
 * adjust every checksum that covers a changed field, and update `info` so
 * that it describes the rewritten packet. They never change the TTL (the
 * kernel decrements it when it forwards), never read past `info.len`, and
 * never allocate.
 *
 * Checksums are adjusted, never recomputed: a quoted packet is truncated and
 * its L4 checksum cannot be recomputed, and adjusting is cheaper for the
 * others. Each changed 16-bit word contributes a delta `~m + m'`; one delta
 * total is applied per checksum field (see `checksum.ts`). Because a changed
 * checksum field is itself covered by an enclosing checksum (the inner
 * IP/L4 checksums of a quote are inside the ICMP message), its change is
 * chained into the enclosing delta too.
 *
 * @module
 */

import { Meta, Verdict } from "./meta.ts";
import {
  csumApply,
  csumDelta16,
  csumDelta32,
  finish,
  pseudoHeaderSum,
  sum16,
  udpWireChecksum,
} from "./checksum.ts";
import {
  ICMP_CHECKSUM,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMP_ID,
  IP_CHECKSUM,
  IP_DST,
  IP_SRC,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  type PacketInfo,
  read16,
  TCP_CHECKSUM,
  TCP_DPORT,
  TCP_SPORT,
  UDP_CHECKSUM,
  UDP_DPORT,
  UDP_LENGTH,
  UDP_SPORT,
  write16,
  write32,
} from "./packet.ts";

/**
 * Writes the IP source and destination that differ, fixes the IP header
 * checksum incrementally, updates `info`, and returns the checksum delta of
 * the address change (0 when nothing changed), which a TCP/UDP pseudo-header
 * shares.
 */
function setAddresses(buf: Uint8Array, info: PacketInfo, src: number, dst: number): number {
  const delta = writeAddresses(buf, 0, info.src, src, info.dst, dst);
  info.src = src;
  info.dst = dst;
  if (delta !== 0) write16(buf, IP_CHECKSUM, csumApply(read16(buf, IP_CHECKSUM), delta));
  return delta;
}

/**
 * Writes the source and destination of the IP header at `ip` where they
 * change and returns the checksum delta (0 when nothing changed). Shared by
 * the packet's own header and the header quoted in an ICMP error.
 */
function writeAddresses(
  buf: Uint8Array,
  ip: number,
  oldSrc: number,
  src: number,
  oldDst: number,
  dst: number,
): number {
  const delta = change32(buf, ip + IP_SRC, oldSrc, src, 0);
  return change32(buf, ip + IP_DST, oldDst, dst, delta);
}

/**
 * Writes the 32-bit field at `off` when its value changes from `old` to `v`
 * and returns `delta` plus the checksum delta of the change.
 */
function change32(buf: Uint8Array, off: number, old: number, v: number, delta: number): number {
  if (v === old) return delta;
  write32(buf, off, v);
  return csumDelta32(delta, old, v);
}

/** {@link change32} for a 16-bit field (a port). */
function change16(buf: Uint8Array, off: number, old: number, v: number, delta: number): number {
  if (v === old) return delta;
  write16(buf, off, v);
  return csumDelta16(delta, old, v);
}

/**
 * Rewrites source and destination address and port of a parsed TCP, UDP or
 * ICMP echo packet in place, fixing the IP header checksum and the L4
 * checksum incrementally (TCP and UDP include the pseudo-header, so an
 * address change reaches them; ICMP has none, so only the identifier changes
 * its checksum). A UDP checksum of 0 ("none") stays 0; an updated UDP
 * checksum of 0 is written as 0xffff.
 *
 * For ICMP echo, "port" is the identifier following the port convention of
 * `packet.ts`: a request takes `sport`, a reply takes `dport`, and the other
 * one is ignored (it stays 0 in `info`).
 *
 * Precondition: `parse(buf, n, info)` returned `Drop.NONE` and
 * `info.icmpError` is false (use {@link rewriteIcmpError} for errors).
 *
 * @param buf the packet
 * @param info its parse result; updated to the new addresses and ports
 * @param src new source address, host order
 * @param sport new source port (echo request: identifier)
 * @param dst new destination address, host order
 * @param dport new destination port (echo reply: identifier)
 * @param skbInfo the queue's `NFQA_SKB_INFO` bits ({@link Meta.PARTIAL_CHECKSUM},
 *   {@link Meta.GSO}); either one means the L4 checksum field is not a
 *   complete checksum of these bytes, so it is recomputed from scratch after
 *   the rewrite instead of adjusted (see {@link recomputeL4Checksum}).
 *   Requires the whole packet in `buf` then.
 */
export function rewrite(
  buf: Uint8Array,
  info: PacketInfo,
  src: number,
  sport: number,
  dst: number,
  dport: number,
  skbInfo = 0,
): void {
  const recompute = (skbInfo & (Meta.PARTIAL_CHECKSUM | Meta.GSO)) !== 0;
  src >>>= 0;
  dst >>>= 0;
  const l4 = info.l4;

  // Address changes: one delta for the IP header checksum, reused for the
  // TCP/UDP pseudo-header.
  const addrDelta = setAddresses(buf, info, src, dst);

  const proto = info.proto;
  if (proto === IPPROTO_ICMP) {
    // Echo: only the identifier moves; no pseudo-header.
    let id: number;
    if (info.icmpType === ICMP_ECHO_REQUEST) {
      id = sport & 0xffff;
      if (id === info.sport) return recomputeIf(recompute, buf, info, skbInfo);
      info.sport = id;
    } else if (info.icmpType === ICMP_ECHO_REPLY) {
      id = dport & 0xffff;
      if (id === info.dport) return recomputeIf(recompute, buf, info, skbInfo);
      info.dport = id;
    } else {
      return recomputeIf(recompute, buf, info, skbInfo);
    }
    const old = read16(buf, l4 + ICMP_ID);
    write16(buf, l4 + ICMP_ID, id);
    if (recompute) return recomputeL4Checksum(buf, info, skbInfo);
    const c = l4 + ICMP_CHECKSUM;
    write16(buf, c, csumApply(read16(buf, c), csumDelta16(0, old, id)));
    return;
  }

  // TCP and UDP keep their ports at the same offsets.
  sport &= 0xffff;
  dport &= 0xffff;
  let delta = change16(buf, l4 + TCP_SPORT, info.sport, sport, addrDelta);
  delta = change16(buf, l4 + TCP_DPORT, info.dport, dport, delta);
  info.sport = sport;
  info.dport = dport;
  if (recompute) return recomputeL4Checksum(buf, info, skbInfo);
  if (delta === 0) return;
  if (proto === IPPROTO_TCP) {
    const c = l4 + TCP_CHECKSUM;
    write16(buf, c, csumApply(read16(buf, c), delta));
  } else if (proto === IPPROTO_UDP) {
    const c = l4 + UDP_CHECKSUM;
    const old = read16(buf, c);
    // 0 means the sender computed no checksum: there is nothing to keep right.
    if (old !== 0) write16(buf, c, udpWireChecksum(csumApply(old, delta)));
  }
}

/** The new values {@linkcode rewriteIcmpError} writes into an ICMP error. */
export interface IcmpErrorRewrite {
  /** New source of the error. */
  outerSrc: number;
  /** New destination of the error. */
  outerDst: number;
  /** New source of the quoted packet. */
  innerSrc: number;
  /** New source port of the quoted packet (echo request: identifier). */
  innerSport: number;
  /** New destination of the quoted packet. */
  innerDst: number;
  /** New destination port of the quoted packet (echo reply: identifier). */
  innerDport: number;
}

/**
 * Rewrites an ICMP error in place (RFC 5508 §4.2): the outer source and
 * destination, and the quoted packet's addresses and ports (echo: identifier,
 * by the port convention). Fixes the outer IP header checksum, the quoted IP
 * header checksum, the quoted UDP checksum when non-zero, the quoted TCP
 * checksum only when the quoted bytes hold all of it, the quoted ICMP echo
 * checksum, and the error's own ICMP checksum, which covers the whole quote
 * including those checksum fields. Everything else, the next-hop MTU of
 * "fragmentation needed" included, is left as is.
 *
 * Quoted L4 checksums are adjusted by the delta of what changed, never
 * recomputed or validated: the quote is usually truncated, and adjusting
 * keeps it exactly as consistent as it was.
 *
 * Precondition: `parse(buf, n, info)` returned `Drop.NONE` and
 * `info.icmpError` is true.
 *
 * @param buf the ICMP error packet
 * @param info its parse result; updated to the new values
 * @param to the error's new outer addresses and its quoted packet's new
 *   addresses and ports (see {@linkcode IcmpErrorRewrite})
 * @param skbInfo the queue's `NFQA_SKB_INFO` bits: with
 *   {@link Meta.PARTIAL_CHECKSUM} (unusual for ICMP) the error's own checksum is
 *   recomputed from scratch at the end instead of adjusted
 */
export function rewriteIcmpError(
  buf: Uint8Array,
  info: PacketInfo,
  to: IcmpErrorRewrite,
  skbInfo = 0,
): void {
  const outerSrc = to.outerSrc >>> 0;
  const outerDst = to.outerDst >>> 0;
  const innerSrc = to.innerSrc >>> 0;
  const innerDst = to.innerDst >>> 0;
  const innerSport = to.innerSport & 0xffff;
  const innerDport = to.innerDport & 0xffff;

  // Outer IP header: its checksum covers only the header, not the ICMP message.
  setAddresses(buf, info, outerSrc, outerDst);

  // Every byte from here on is inside the ICMP message.
  let icmpDelta = 0;

  // Quoted IP header: always complete (parse checked it).
  const ip = info.innerOff;
  const addrDelta = writeAddresses(buf, ip, info.innerSrc, innerSrc, info.innerDst, innerDst);
  info.innerSrc = innerSrc;
  info.innerDst = innerDst;
  if (addrDelta !== 0) {
    icmpDelta += addrDelta;
    icmpDelta = replaceChecksum(buf, ip + IP_CHECKSUM, addrDelta, icmpDelta, false);
  }

  // Quoted L4 header: parse guaranteed its first 8 bytes.
  const l4 = ip + info.innerIhl;
  const proto = info.innerProto;
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP) {
    let portDelta = change16(buf, l4 + UDP_SPORT, info.innerSport, innerSport, 0);
    portDelta = change16(buf, l4 + UDP_DPORT, info.innerDport, innerDport, portDelta);
    info.innerSport = innerSport;
    info.innerDport = innerDport;
    icmpDelta += portDelta;
    const l4Delta = addrDelta + portDelta;
    if (l4Delta !== 0) {
      if (proto === IPPROTO_UDP) {
        // Within the 8 quoted bytes; 0 means "no checksum" and stays 0.
        if (read16(buf, l4 + UDP_CHECKSUM) !== 0) {
          icmpDelta = replaceChecksum(buf, l4 + UDP_CHECKSUM, l4Delta, icmpDelta, true);
        }
      } else if (l4 + TCP_CHECKSUM + 2 <= info.len) {
        // TCP's checksum is at bytes 16-17: often, but not always, quoted.
        icmpDelta = replaceChecksum(buf, l4 + TCP_CHECKSUM, l4Delta, icmpDelta, false);
      }
    }
  } else if (proto === IPPROTO_ICMP) {
    // A quoted echo: its identifier is the "port"; its checksum has no pseudo-header.
    let id = -1;
    if (buf[l4] === ICMP_ECHO_REQUEST && innerSport !== info.innerSport) {
      id = innerSport;
      info.innerSport = id;
    } else if (buf[l4] === ICMP_ECHO_REPLY && innerDport !== info.innerDport) {
      id = innerDport;
      info.innerDport = id;
    }
    if (id >= 0) {
      const d = csumDelta16(0, read16(buf, l4 + ICMP_ID), id);
      write16(buf, l4 + ICMP_ID, id);
      icmpDelta += d;
      icmpDelta = replaceChecksum(buf, l4 + ICMP_CHECKSUM, d, icmpDelta, false);
    }
  }

  if ((skbInfo & (Meta.PARTIAL_CHECKSUM | Meta.GSO)) !== 0) {
    recomputeL4Checksum(buf, info, skbInfo);
  } else if (icmpDelta !== 0) {
    const c = info.l4 + ICMP_CHECKSUM;
    write16(buf, c, csumApply(read16(buf, c), icmpDelta));
  }
}

/**
 * Applies `delta` to the checksum field at `off` and returns `enclosing`
 * plus the delta of that field's own change, for the checksum that covers it.
 */
function replaceChecksum(
  buf: Uint8Array,
  off: number,
  delta: number,
  enclosing: number,
  udp: boolean,
): number {
  const old = read16(buf, off);
  let updated = csumApply(old, delta);
  if (udp) updated = udpWireChecksum(updated);
  write16(buf, off, updated);
  return csumDelta16(enclosing, old, updated);
}

/**
 * Recomputes the L4 checksum of a parsed packet from scratch: TCP and UDP
 * over the pseudo-header and the segment (UDP: its length field), ICMP over
 * the message. A UDP checksum field of 0 ("none") stays 0 unless the
 * packet is CHECKSUM_PARTIAL ({@link Meta.PARTIAL_CHECKSUM} in `skbInfo`: the
 * field then holds the pseudo-header sum, and the sender wants a checksum);
 * a computed UDP 0 is written as 0xffff.
 *
 * Why a recomputation and not an adjustment: with `NFQA_CFG_F_GSO` the queue
 * hands over packets whose L4 checksum is not complete. A locally sent
 * packet (CHECKSUM_PARTIAL, flagged `NFQA_SKB_CSUMNOTREADY`) holds only the
 * folded pseudo-header sum in its checksum field, to be completed by the
 * NIC or `skb_checksum_help`; a GRO-merged packet (flagged `NFQA_Meta.GSO`)
 * keeps the first segment's checksum, valid for no byte range of the merged
 * packet. A payload verdict, though, marks the packet `CHECKSUM_NONE`
 * (`nfqnl_mangle` in net/netfilter/nfnetlink_queue.c, still so in 6.x): the
 * kernel then trusts the field as a complete checksum — a local receiver
 * verifies it, and GSO segmentation of a TCP packet rewrites it anyway
 * (`tcp4_gso_segment` re-seeds the pseudo-header when the packet is not
 * CHECKSUM_PARTIAL). So the only value right in every case is the full
 * checksum of the rewritten bytes.
 *
 * Precondition: `buf` holds the whole packet (`info.len` bytes).
 *
 * @param buf the packet, already rewritten
 * @param info its parse result (addresses as now in `buf`)
 * @param skbInfo the queue's `NFQA_SKB_INFO` bits
 */
export function recomputeL4Checksum(buf: Uint8Array, info: PacketInfo, skbInfo: number): void {
  const l4 = info.l4;
  const proto = info.proto;
  if (proto === IPPROTO_TCP) {
    const n = info.len - l4;
    write16(buf, l4 + TCP_CHECKSUM, 0);
    const sum = sum16(buf, l4, n, pseudoHeaderSum(info.src, info.dst, IPPROTO_TCP, n));
    write16(buf, l4 + TCP_CHECKSUM, finish(sum));
  } else if (proto === IPPROTO_UDP) {
    const c = l4 + UDP_CHECKSUM;
    if ((skbInfo & Meta.PARTIAL_CHECKSUM) === 0 && read16(buf, c) === 0) return;
    const n = read16(buf, l4 + UDP_LENGTH);
    write16(buf, c, 0);
    const sum = sum16(buf, l4, n, pseudoHeaderSum(info.src, info.dst, IPPROTO_UDP, n));
    write16(buf, c, udpWireChecksum(finish(sum)));
  } else if (proto === IPPROTO_ICMP) {
    write16(buf, l4 + ICMP_CHECKSUM, 0);
    write16(buf, l4 + ICMP_CHECKSUM, finish(sum16(buf, l4, info.len - l4)));
  }
}

function recomputeIf(recompute: boolean, buf: Uint8Array, info: PacketInfo, skbInfo: number): void {
  if (recompute) recomputeL4Checksum(buf, info, skbInfo);
}

/**
 * The host's rewrite of claim 5: `a:pa -> X:px` becomes `a:pa -> G:Pg`
 * (ICMP echo: the identifier becomes Pg, the "port" 0). For the data paths
 * that rewrite a host's packets in user space. Returns Verdict.MODIFIED.
 */
export function rewriteToGateway(
  pkt: Uint8Array,
  info: PacketInfo,
  g: number,
  pg: number,
  skbInfo = 0,
): typeof Verdict.MODIFIED {
  const icmp = info.proto === IPPROTO_ICMP;
  rewrite(pkt, info, info.src, icmp ? pg : info.sport, g, icmp ? 0 : pg, skbInfo);
  return Verdict.MODIFIED;
}
