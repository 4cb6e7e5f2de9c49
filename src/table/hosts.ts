/**
 * Per-host counts: how many rows each internal address holds, in total and
 * per protocol, and which public address it is paired with.
 *
 * Host use is a {@link U32Map} keyed by the internal address `a`, so that
 * the quota, `Pg` exhaustion and the paired address (allocation step 2,
 * `allocate.ts`) are O(1). A host leaves the map with its last row.
 *
 * Paired pooling: the host's first row (or the first after its paired
 * address emptied, which only restored state can cause) sets the address;
 * the map counts the host's rows on it.
 *
 * @module
 */

import { U32Map } from "./hashmap.ts";

/**
 * Counters per host (HS of them): total, icmp, tcp, udp (PER_PROTO + protocol
 * index), the paired pool index, the host's rows on it.
 */
const [TOTAL, PER_PROTO, PAIRED, ON_PAIRED, HS] = [0, 1, 4, 5, 6] as const;

/** Rows per internal address. */
export class HostCounts {
  readonly #hosts: U32Map;

  constructor(seed: number) {
    this.#hosts = new U32Map(HS, seed, 64);
  }

  /** Bytes of the map. */
  get bytes(): number {
    return this.#hosts.bytes;
  }

  /** Host `a` holds a new row of protocol index `pi` on pool address `ri`. */
  add(a: number, pi: number, ri: number): void {
    const hb = this.#hosts.upsert(a) * HS;
    const hv = this.#hosts.vals;
    hv[hb + TOTAL]!++;
    hv[hb + PER_PROTO + pi]!++;
    if (hv[hb + ON_PAIRED] === 0) {
      hv[hb + PAIRED] = ri;
      hv[hb + ON_PAIRED] = 1;
    } else if (hv[hb + PAIRED] === ri) hv[hb + ON_PAIRED]!++;
  }

  /** Host `a` let go a row of protocol index `pi` on pool address `ri`. */
  remove(a: number, pi: number, ri: number): void {
    const b = this.#hosts.find(a);
    const hb = b * HS;
    const hv = this.#hosts.vals;
    hv[hb + PER_PROTO + pi]!--;
    if (hv[hb + PAIRED] === ri && hv[hb + ON_PAIRED]! > 0) hv[hb + ON_PAIRED]!--;
    if (--hv[hb + TOTAL]! === 0) this.#hosts.deleteAt(b);
  }

  /** Rows of host `a`, all protocols. */
  total(a: number): number {
    return this.#hosts.get(a, TOTAL);
  }

  /** Rows of host `a` of protocol index `pi`. */
  ofProto(a: number, pi: number): number {
    return this.#hosts.get(a, PER_PROTO + pi);
  }

  /** The pool index host `a` is paired with, or -1 when it holds no row there. */
  paired(a: number): number {
    const hb = this.#hosts.find(a);
    if (hb < 0 || this.#hosts.vals[hb * HS + ON_PAIRED]! === 0) return -1;
    return this.#hosts.vals[hb * HS + PAIRED]!;
  }
}
