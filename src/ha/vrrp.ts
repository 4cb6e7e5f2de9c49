/**
 * What dpm learns from the VRRP advertisements it hears (docs/ha.md,
 * "Adverts heard and split brain"): keepalived owns the VRRP state, dpm only
 * listens (a raw socket for IP protocol 112, linux/vrrp_socket.ts) to say
 * in `dpm status` when the peer last spoke and to count split brains.
 *
 * In VRRP only the master sends advertisements (RFC 5798 section 6.4.3):
 *
 * - on the standby, adverts are the active peer's heartbeat: their age is
 *   how long ago the peer last proved it lives (the takeover follows
 *   3 x `advert_int` + skew of silence);
 * - on the active, an advert of the same instance from another router of
 *   a priority not above this box's means the peer claims master too: both
 *   hold G and the pool (split brain; keepalived ends it when the lower
 *   priority hears the higher, e.g. a standby that missed adverts under
 *   load and took over while the active lived). Adverts in the first
 *   {@linkcode SPLIT_GRACE_MS} of being active are the old master's last
 *   ones (a takeover, a failback) and are not counted. Each run of such adverts
 *   counts once; it ends when none was heard for {@linkcode SPLIT_QUIET_MS}
 *   or this box stops being active. An advert of a higher priority is a
 *   preemption (a failback: this box yields), not counted. A split brain in
 *   which no advert crosses (the link between the pair cut) cannot be seen
 *   this way.
 *
 * VRRPv3 advertisement (RFC 5798 section 5.1), after the IPv4 header:
 *
 * ```
 * version(4)=3 | type(4)=1 | VRID(8) | priority(8) | count IPvX addr(8)
 * rsvd(4) | max adver int(12, centiseconds) | checksum(16)
 * IPvX addresses (count x 4 bytes for IPv4)
 * ```
 *
 * The instance is recognised by an address it advertises: keepalived's
 * marker (`--ha-marker`, `169.254.0.<vrid>` in contrib/ha/keepalived.conf.in)
 * is in every advert of dpm's instance and of no other. Pure.
 *
 * @module
 */

import type { AdvertStats } from "../operator/types.ts";

export type { AdvertStats };

/** VRRP's IP protocol number. */
export const IPPROTO_VRRP = 112;
/** A run of adverts heard while active ends after this long without one (ms). */
export const SPLIT_QUIET_MS = 1000;
/**
 * Adverts heard in this long after becoming active are not counted (ms): at
 * a takeover the old master's last adverts are still on their way, and at
 * a preemption it advertises until it hears this box.
 */
export const SPLIT_GRACE_MS = 1000;

/** One decoded advertisement. */
export interface Advert {
  /** The sender (the IPv4 header's source), host order. */
  from: number;
  version: number;
  vrid: number;
  /** 0: the master resigns (RFC 5798 section 6.4.3); 255: the address owner. */
  priority: number;
  /** Max advert interval, centiseconds (VRRPv3; VRRPv2's seconds x 100). */
  intervalCs: number;
  /** The IPv4 addresses it advertises, host order. */
  addrs: number[];
}

/**
 * Decodes an IPv4 packet carrying a VRRP advertisement (version 2 or 3,
 * IPv4 addresses); null for anything else (too short, another protocol,
 * not an advertisement, a count that overruns the packet). Never throws.
 */
export function decodeAdvert(p: Uint8Array): Advert | null {
  if (p.length < 20 || p[0]! >> 4 !== 4) return null;
  const ihl = (p[0]! & 0x0f) * 4;
  if (ihl < 20 || p[9] !== IPPROTO_VRRP || p.length < ihl + 8) return null;
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const v = p[ihl]! >> 4;
  const type = p[ihl]! & 0x0f;
  if ((v !== 2 && v !== 3) || type !== 1) return null;
  const count = p[ihl + 3]!;
  if (p.length < ihl + 8 + count * 4) return null;
  const addrs: number[] = [];
  for (let i = 0; i < count; i++) addrs.push(dv.getUint32(ihl + 8 + i * 4));
  return {
    from: dv.getUint32(12),
    version: v,
    vrid: p[ihl + 1]!,
    priority: p[ihl + 2]!,
    intervalCs: v === 3 ? dv.getUint16(ihl + 4) & 0x0fff : p[ihl + 5]! * 100,
    addrs,
  };
}

/** Counts adverts (see the module's text). */
export class AdvertWatch {
  readonly stats: AdvertStats = {
    heard: 0,
    lastAt: null,
    lastFrom: null,
    lastPriority: null,
    whileActive: 0,
    splitBrains: 0,
    ignored: 0,
  };
  readonly #marker: number | null;
  readonly #self: ReadonlySet<number>;
  #splitUntil = 0;

  /**
   * `marker`: an address every advert of dpm's instance carries (null:
   * every advert counts); `self`: this box's own addresses (its own adverts,
   * should one be looped back, are not the peer's).
   */
  constructor(marker: number | null, self: Iterable<number> = []) {
    this.#marker = marker;
    this.#self = new Set(self);
  }

  /**
   * One packet read at `now` (wall ms); `activeSince`: when this box
   * became active (wall ms), null while it is not; `own` its VRRP priority
   * (keepalived's last FIFO line; null: unknown).
   * While active (for {@linkcode SPLIT_GRACE_MS} at least), an advert of a
   * priority not above this box's own is the peer claiming master too (one
   * above is a preemption: this box yields, as at a failback, and is not
   * counted).
   */
  packet(
    p: Uint8Array,
    now: number,
    activeSince: number | null,
    own: number | null,
    format: (a: number) => string,
  ): void {
    const a = decodeAdvert(p);
    if (
      !a || this.#self.has(a.from) || (this.#marker !== null && !a.addrs.includes(this.#marker))
    ) {
      this.stats.ignored++;
      return;
    }
    const s = this.stats;
    s.heard++;
    s.lastAt = now;
    s.lastFrom = format(a.from);
    s.lastPriority = a.priority;
    // Priority 0: the peer resigns (it stops being master), no claim.
    const active = activeSince !== null && now - activeSince >= SPLIT_GRACE_MS;
    if (!active || a.priority === 0 || (own !== null && a.priority > own)) {
      this.#splitUntil = 0;
      return;
    }
    s.whileActive++;
    if (now >= this.#splitUntil) s.splitBrains++;
    this.#splitUntil = now + SPLIT_QUIET_MS;
  }

  /** This box stopped being active: a later advert while active starts a new run. */
  released(): void {
    this.#splitUntil = 0;
  }
}
