/**
 * What the host's kernel and bpf paths share for leases: their `activity()`
 * reads the kernel (conntrack, or the session map) at most every
 * {@link ACTIVITY_EVERY_MS}, and in between hands back the last reading.
 * The driver's core asks on every lease tick of every session, and one
 * reading covers them all; a dump per question would cost a netlink round
 * trip each.
 *
 * @module
 */

import type { Activity } from "./datapath.ts";

/** How often the kernel is read for lease activity, ms. */
export const ACTIVITY_EVERY_MS = 2000;

/** Lease activity by `hostKey`, read at most every {@link ACTIVITY_EVERY_MS}. */
export class ActivityReadings {
  readonly #read: (last: Map<number, Activity> | null) => Map<number, Activity>;
  readonly #now: () => number;
  #last: Map<number, Activity> | null = null;
  #at = -Infinity;

  /**
   * @param read a fresh reading; it gets the last one (null before the
   *   first) and handles its own errors (logs them, returns what it has)
   * @param now the clock, ms (tests pass a fake)
   */
  constructor(
    read: (last: Map<number, Activity> | null) => Map<number, Activity>,
    now: () => number = () => performance.now(),
  ) {
    this.#read = read;
    this.#now = now;
  }

  /** The last reading when it is younger than {@link ACTIVITY_EVERY_MS}, else a new one. */
  get(): Map<number, Activity> {
    const now = this.#now();
    if (this.#last && now - this.#at < ACTIVITY_EVERY_MS) return this.#last;
    this.#last = this.#read(this.#last);
    this.#at = now;
    return this.#last;
  }
}
