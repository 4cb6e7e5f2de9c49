/**
 * The packets the host's program held for the driver (`bpf/host.bpf.c`: a
 * new session's TCP SYN or UDP datagram, copied to the perf event array
 * `dpm_held` and kept from the wire), from the record the driver reads to
 * the packets it sends back out once the core decided. Pure: no kernel, so
 * it is tested with bytes.
 *
 * What arrives is what the interface would have sent, after the host's IP
 * layer finished with it:
 *
 * - a plain packet, whose TCP/UDP checksum may be only the pseudo-header
 *   part (CHECKSUM_PARTIAL: the device would have completed it). It is
 *   completed here, since a raw socket sends what it is given;
 * - a UDP GSO packet (`UDP_SEGMENT`, `gso_size` in the record): split here
 *   into the datagrams the device would have sent;
 * - fragments of a datagram larger than the MTU: collected until the
 *   datagram is whole. The core decides on the reassembled datagram; the
 *   fragments themselves are sent back out (a raw socket does not fragment).
 *
 * ICMP comes both ways (the driver's translator handles it, as on the other
 * paths): what was leaving is sent on, what was arriving is delivered to the
 * host (a raw socket's packet to a local address arrives through loopback).
 *
 * Each decision packet gets an id above 2^32 (the netfilter queue's ids are
 * 32-bit). The core's verdict then sends the packets on: ACCEPT sends them as
 * they were (a TCP/UDP session's packets are translated by the program now
 * that its entries exist, or pass), MODIFIED sends the core's rewritten
 * packet (ICMP; refragmented to the interface's MTU when it leaves), DROP
 * forgets them.
 *
 * @module
 */

import { finish, pseudoHeaderSum, sum16 } from "../../wire/checksum.ts";
import { IPPROTO_TCP, IPPROTO_UDP, Verdict, type VerdictValue } from "../../wire/meta.ts";

/** The first id given to a held packet: above every netfilter queue id. */
export const HELD_ID_BASE = 2 ** 32;

/** Link header length of the frames the program copies (Ethernet). */
const ETH_LEN = 14;

/** Fragments kept at most, and how long an incomplete datagram waits for its rest. */
const MAX_FRAGMENTS = 1024;
const FRAGMENT_WAIT_MS = 5000;
/** How long a SYN's later copies are dropped (`HeldPackets.#copyOfSyn`): past the host's 1-s and 3-s retransmissions. */
const SYN_COPY_MS = 5000;

/** A flow as the core sees it (host order). */
export interface Flow {
  proto: number;
  src: number;
  sport: number;
  dst: number;
  dport: number;
}

/** What {@linkcode HeldPackets} needs: where packets go, and the clock. */
export interface HeldContext {
  /** Sends an IPv4 packet on toward `dst` (a raw socket with the pass mark). */
  send(pkt: Uint8Array, dst: number): void;
  /**
   * The core let a leaving TCP/UDP flow go: called before its packets are
   * sent (the path notes a flow that goes untranslated).
   */
  accepted(flow: Flow): void;
  now(): number;
  /** The MTU of the interface toward the gateway: a rewritten leaving packet is cut to it. */
  mtu: number;
}

interface Group {
  /** The packets to send on, in order. */
  packets: Uint8Array[];
  flow: Flow;
  outbound: boolean;
}

interface Pending {
  frags: Uint8Array[];
  since: number;
}

const u16 = (b: Uint8Array, o: number) => (b[o]! << 8) | b[o + 1]!;
const u32 = (b: Uint8Array, o: number) =>
  ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
const put16 = (b: Uint8Array, o: number, v: number) => {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
};

/** Sets the IPv4 header checksum of `p`. */
function ipChecksum(p: Uint8Array): void {
  const ihl = (p[0]! & 0x0f) * 4;
  put16(p, 10, 0);
  put16(p, 10, finish(sum16(p, 0, ihl)));
}

/**
 * Completes the TCP or UDP checksum of a whole (unfragmented) packet when it
 * does not verify: a packet the device was to finish carries only the
 * pseudo-header sum. A UDP checksum of 0 ("none") stays 0.
 */
export function completeChecksum(p: Uint8Array): void {
  const ihl = (p[0]! & 0x0f) * 4;
  const proto = p[9]!;
  const total = Math.min(u16(p, 2), p.length);
  const l4len = total - ihl;
  const off = proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : -1;
  if (off < 0 || l4len < off + 2) return;
  if (proto === IPPROTO_UDP && u16(p, ihl + 6) === 0) return;
  const ph = pseudoHeaderSum(u32(p, 12), u32(p, 16), proto, l4len);
  if (sum16(p, ihl, l4len, ph) === 0xffff) return;
  put16(p, ihl + off, 0);
  let c = finish(sum16(p, ihl, l4len, ph));
  if (proto === IPPROTO_UDP && c === 0) c = 0xffff;
  put16(p, ihl + off, c);
}

/**
 * The datagrams of a UDP GSO packet (`gso` bytes of payload each, the last
 * shorter), each a whole IPv4/UDP packet with its lengths, IP id (the
 * first's plus its index, as the kernel numbers them) and checksums.
 */
export function splitUdpGso(p: Uint8Array, gso: number): Uint8Array[] {
  const ihl = (p[0]! & 0x0f) * 4;
  const hdr = ihl + 8;
  const total = Math.min(u16(p, 2), p.length);
  const payload = total - hdr;
  if (gso <= 0 || payload <= gso) return [p];
  const out: Uint8Array[] = [];
  const id = u16(p, 4);
  for (let off = 0, i = 0; off < payload; off += gso, i++) {
    const n = Math.min(gso, payload - off);
    const s = new Uint8Array(hdr + n);
    s.set(p.subarray(0, hdr));
    s.set(p.subarray(hdr + off, hdr + off + n), hdr);
    put16(s, 2, hdr + n);
    put16(s, 4, (id + i) & 0xffff);
    ipChecksum(s);
    put16(s, ihl + 4, 8 + n);
    put16(s, ihl + 6, 0);
    const ph = pseudoHeaderSum(u32(s, 12), u32(s, 16), IPPROTO_UDP, 8 + n);
    const c = finish(sum16(s, ihl, 8 + n, ph));
    put16(s, ihl + 6, c === 0 ? 0xffff : c);
    out.push(s);
  }
  return out;
}

/**
 * Reassembles a datagram from its fragments (any order), or null while a
 * piece is missing. The result is one IPv4 packet with the first
 * fragment's header, offset and flags cleared.
 */
export function reassemble(frags: Uint8Array[]): Uint8Array | null {
  let first: Uint8Array | null = null;
  let end = -1;
  const pieces: { off: number; data: Uint8Array }[] = [];
  for (const f of frags) {
    const ihl = (f[0]! & 0x0f) * 4;
    const fo = u16(f, 6);
    const off = (fo & 0x1fff) * 8;
    const data = f.subarray(ihl, Math.min(u16(f, 2), f.length));
    if (off === 0) first = f;
    if ((fo & 0x2000) === 0) end = off + data.length;
    pieces.push({ off, data });
  }
  if (!first || end < 0) return null;
  pieces.sort((a, b) => a.off - b.off);
  let covered = 0;
  for (const p of pieces) {
    if (p.off > covered) return null;
    covered = Math.max(covered, p.off + p.data.length);
  }
  if (covered < end) return null;
  const ihl = (first[0]! & 0x0f) * 4;
  const out = new Uint8Array(ihl + end);
  out.set(first.subarray(0, ihl));
  for (const p of pieces) out.set(p.data.subarray(0, Math.max(0, end - p.off)), ihl + p.off);
  put16(out, 2, out.length);
  put16(out, 6, u16(first, 6) & 0x4000);
  ipChecksum(out);
  return out;
}

/**
 * `p` (a whole IPv4 packet) cut into fragments of at most `mtu` bytes, as
 * the kernel would (offsets in 8-byte units, MF on all but the last, the
 * header checksum of each); `p` itself when it fits or forbids it (DF).
 */
export function fragment(p: Uint8Array, mtu: number): Uint8Array[] {
  const ihl = (p[0]! & 0x0f) * 4;
  const total = Math.min(u16(p, 2), p.length);
  if (total <= mtu || (u16(p, 6) & 0x4000) !== 0) return [p];
  const step = Math.floor((mtu - ihl) / 8) * 8;
  if (step <= 0) return [p];
  const out: Uint8Array[] = [];
  const base = u16(p, 6) & 0x1fff;
  const moreAfter = u16(p, 6) & 0x2000;
  for (let off = 0; off < total - ihl; off += step) {
    const n = Math.min(step, total - ihl - off);
    const f = new Uint8Array(ihl + n);
    f.set(p.subarray(0, ihl));
    f.set(p.subarray(ihl + off, ihl + off + n), ihl);
    put16(f, 2, f.length);
    const last = off + n >= total - ihl;
    put16(f, 6, (last ? moreAfter : 0x2000) | (base + off / 8));
    ipChecksum(f);
    out.push(f);
  }
  return out;
}

/** The flow of a whole TCP/UDP packet (ports 0 when it has none). */
function flowOf(p: Uint8Array): Flow {
  const ihl = (p[0]! & 0x0f) * 4;
  const ports = p.length >= ihl + 4;
  return {
    proto: p[9]!,
    src: u32(p, 12),
    dst: u32(p, 16),
    sport: ports ? u16(p, ihl) : 0,
    dport: ports ? u16(p, ihl + 2) : 0,
  };
}

/** The held packets waiting for the core's verdict. */
export class HeldPackets {
  readonly #c: HeldContext;
  readonly #groups = new Map<number, Group>();
  /** Fragments of datagrams not whole yet, by source, destination, IP id, protocol. */
  readonly #pending = new Map<string, Pending>();
  /** TCP SYNs taken (source, ports, destination, sequence number), when: see `#copyOfSyn`. */
  readonly #syns = new Map<string, number>();
  /** Datagrams decided while fragments of them may still come: the id of their group. */
  readonly #decided = new Map<string, { id: number; verdict: VerdictValue; at: number }>();
  #fragments = 0;
  #next = HELD_ID_BASE;
  /** Packets (or fragments) dropped: short records, too many waiting. */
  dropped = 0;
  /** Retransmitted TCP SYNs dropped: the same SYN was taken just before (see `#copyOfSyn`). */
  duplicateSyns = 0;

  constructor(ctx: HeldContext) {
    this.#c = ctx;
  }

  /** Decision packets waiting for a verdict. */
  get size(): number {
    return this.#groups.size;
  }

  /**
   * Takes one held frame (Ethernet, as the program copied it). Returns the
   * packet the core must decide on and its id, or null (a fragment waiting
   * for the rest of its datagram, one of a datagram already decided, or
   * something that is not an IPv4 packet).
   */
  take(
    frame: Uint8Array,
    gsoSize: number,
    outbound = true,
  ): { id: number; pkt: Uint8Array; outbound: boolean } | null {
    if (frame.length < ETH_LEN + 20 || (frame[ETH_LEN]! >> 4) !== 4) {
      this.dropped++;
      return null;
    }
    const p = frame.slice(ETH_LEN);
    const fo = u16(p, 6);
    if ((fo & 0x3fff) === 0) {
      if (this.#copyOfSyn(p)) {
        this.duplicateSyns++;
        return null;
      }
      const packets = gsoSize > 0 && p[9] === IPPROTO_UDP ? splitUdpGso(p, gsoSize) : [p];
      if (packets.length === 1) completeChecksum(packets[0]!);
      return this.#group(packets, packets[0]!, outbound);
    }
    return this.#fragment(p, outbound);
  }

  /**
   * Whether `p` is a TCP SYN (no ACK) whose copy (the same flow, the same
   * sequence number) was taken within `SYN_COPY_MS`, waiting for its verdict
   * or sent on since: the host's own retransmission of a SYN held while the
   * core decides (1 s, 3 s, ... after it, when a takeover or a busy core
   * keeps it that long), read here before or just after the verdict. Sent
   * on, each copy would get its own verdict and leave tens of ms after the
   * first; a copy that reaches the peer after the connection it opened has
   * closed opens a new handshake there, which ends in resets (seen at HA
   * takeovers). A copy the host sends after the session's entries exist is
   * not held at all, so a first SYN lost on the way is still retransmitted.
   * Notes `p` as the flow's SYN otherwise.
   */
  #copyOfSyn(p: Uint8Array): boolean {
    const ihl = (p[0]! & 0x0f) * 4;
    if (p[9] !== IPPROTO_TCP || p.length < ihl + 14) return false;
    if ((p[ihl + 13]! & 0x12) !== 0x02) return false; // SYN without ACK
    const now = this.#c.now();
    for (const [k, at] of this.#syns) if (now - at >= SYN_COPY_MS) this.#syns.delete(k);
    const key = `${u32(p, 12)}/${u16(p, ihl)}/${u32(p, 16)}/${u16(p, ihl + 2)}/${u32(p, ihl + 4)}`;
    if (this.#syns.has(key)) return true;
    if (this.#syns.size < MAX_FRAGMENTS) this.#syns.set(key, now);
    return false;
  }

  #group(
    packets: Uint8Array[],
    decide: Uint8Array,
    outbound: boolean,
  ): { id: number; pkt: Uint8Array; outbound: boolean } {
    const id = this.#next++;
    this.#groups.set(id, { packets, flow: flowOf(decide), outbound });
    return { id, pkt: decide, outbound };
  }

  #fragment(
    p: Uint8Array,
    outbound: boolean,
  ): { id: number; pkt: Uint8Array; outbound: boolean } | null {
    const now = this.#c.now();
    this.#expire(now);
    const key = `${outbound ? "o" : "i"}/${u32(p, 12)}/${u32(p, 16)}/${u16(p, 4)}/${p[9]}`;
    const done = this.#decided.get(key);
    if (done) {
      // The rest of a datagram already decided: as its fragments went.
      const g = this.#groups.get(done.id);
      if (g) g.packets.push(p);
      else if (done.verdict !== Verdict.DROP) this.#c.send(p, u32(p, 16));
      return null;
    }
    if (this.#fragments >= MAX_FRAGMENTS) {
      this.dropped++;
      return null;
    }
    let w = this.#pending.get(key);
    if (!w) this.#pending.set(key, w = { frags: [], since: now });
    w.frags.push(p);
    this.#fragments++;
    const whole = reassemble(w.frags);
    if (!whole) return null;
    this.#pending.delete(key);
    this.#fragments -= w.frags.length;
    // Sent back in the order the host sent them: the first fragment first.
    const frags = w.frags.slice().sort((a, b) => (u16(a, 6) & 0x1fff) - (u16(b, 6) & 0x1fff));
    const g = this.#group(frags, whole, outbound);
    this.#decided.set(key, { id: g.id, verdict: Verdict.HOLD, at: now });
    return g;
  }

  /** Forgets incomplete datagrams and decisions older than the wait. */
  #expire(now: number): void {
    for (const [k, w] of this.#pending) {
      if (now - w.since < FRAGMENT_WAIT_MS) continue;
      this.#pending.delete(k);
      this.#fragments -= w.frags.length;
      this.dropped += w.frags.length;
    }
    for (const [k, d] of this.#decided) if (now - d.at >= FRAGMENT_WAIT_MS) this.#decided.delete(k);
  }

  /**
   * The core's verdict for held packet `id` (false: not a held packet's
   * id). ACCEPT sends the packets on as they were (a leaving TCP/UDP flow
   * is noted first: {@linkcode HeldContext.accepted}); MODIFIED with a
   * `payload` (the core's rewritten packet) sends that instead; DROP
   * forgets them.
   */
  verdict(id: number, v: VerdictValue, payload?: Uint8Array): boolean {
    const g = this.#groups.get(id);
    if (!g) return id >= HELD_ID_BASE;
    this.#groups.delete(id);
    for (const d of this.#decided.values()) if (d.id === id) d.verdict = v;
    if (v === Verdict.DROP) return true;
    let packets = g.packets;
    if (v === Verdict.MODIFIED && payload) {
      packets = g.outbound ? fragment(payload, this.#c.mtu) : [payload];
    } else if (g.outbound && (g.flow.proto === IPPROTO_TCP || g.flow.proto === IPPROTO_UDP)) {
      this.#c.accepted(g.flow);
    }
    for (const p of packets) this.#c.send(p, u32(p, 16));
    return true;
  }

  /** Drops everything waiting (the path stops). */
  clear(): void {
    this.#groups.clear();
    this.#pending.clear();
    this.#decided.clear();
    this.#syns.clear();
    this.#fragments = 0;
  }
}
