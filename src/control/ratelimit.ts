/**
 * Per-source token buckets for the control listener (as in wireguard-go's
 * ratelimiter): each host may send `rate` requests per second with bursts of
 * `burst`. The clock is passed in, so tests control time. Idle buckets are
 * garbage-collected by `sweep(now)`.
 *
 * The map of sources is bounded (`maxSources`) and fair under a flood of
 * forged source addresses: when it is full, a new source takes the bucket
 * of the source heard from least recently (the map is kept in
 * least-recently-used order). A source whose bucket was taken starts again
 * with a full one, so no host is ever refused because others filled the
 * map; the flood costs each forged address its own bucket, nothing more.
 *
 * @module
 */

interface Bucket {
  tokens: number;
  last: number;
}

/** A token bucket per source address. */
export class RateLimiter {
  readonly #buckets = new Map<number, Bucket>();
  readonly #rate: number;
  readonly #burst: number;
  readonly #maxSources: number;

  /**
   * @param rate tokens per second per source
   * @param burst bucket size (default 2 × rate)
   * @param maxSources sources tracked at most; beyond it the least recently heard is forgotten
   */
  constructor(rate: number, burst = 2 * rate, maxSources = 65536) {
    this.#rate = rate;
    this.#burst = burst;
    this.#maxSources = maxSources;
  }

  /** Takes one token for `src` at time `now` (ms). Returns false when the source is over its rate. */
  allow(src: number, now: number): boolean {
    let b = this.#buckets.get(src);
    if (!b) {
      if (this.#buckets.size >= this.#maxSources) {
        // Full: forget the least recently heard source (the map's first key).
        this.#buckets.delete(this.#buckets.keys().next().value!);
        this.evicted++;
      }
      b = { tokens: this.#burst, last: now };
    } else {
      const dt = Math.max(0, now - b.last) / 1000;
      b.tokens = Math.min(this.#burst, b.tokens + dt * this.#rate);
      b.last = now;
      this.#buckets.delete(src); // re-inserted below: the map stays in least-recently-used order
    }
    this.#buckets.set(src, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /**
   * True when `src` has less than one token at `now`: {@linkcode allow}
   * would refuse it. Takes nothing and changes nothing (not even the
   * least-recently-used order), so a caller can skip work it would only
   * throw away.
   */
  spent(src: number, now: number): boolean {
    const b = this.#buckets.get(src);
    if (!b) return false;
    const dt = Math.max(0, now - b.last) / 1000;
    return Math.min(this.#burst, b.tokens + dt * this.#rate) < 1;
  }

  /** Forgets buckets that have been full (idle) for a while. */
  sweep(now: number): void {
    const full = (this.#burst / this.#rate) * 1000;
    for (const [k, b] of this.#buckets) if (now - b.last > full) this.#buckets.delete(k);
  }

  /** Sources forgotten because the map was full (a flood of sources, forged or not). */
  evicted = 0;

  /** Number of sources tracked. */
  get size(): number {
    return this.#buckets.size;
  }
}

/**
 * A budget of log lines: at most `perSecond` in any one-second window,
 * overall. What it holds back is counted, so the caller can log a
 * "suppressed K" summary once the window has passed.
 */
export class LineBudget {
  readonly #perSecond: number;
  #start = -Infinity;
  #used = 0;
  #suppressed = 0;

  /** @param perSecond lines allowed per one-second window */
  constructor(perSecond: number) {
    this.#perSecond = perSecond;
  }

  /** Whether a line may be written at `now` (ms); when not, it is counted as suppressed. */
  take(now: number): boolean {
    if (now - this.#start >= 1000) {
      this.#start = now;
      this.#used = 0;
    }
    if (this.#used < this.#perSecond) {
      this.#used++;
      return true;
    }
    this.#suppressed++;
    return false;
  }

  /**
   * Lines suppressed in windows that have ended by `now`, and forgets them
   * (0 while the window that suppressed them is still open).
   */
  flush(now: number): number {
    if (this.#suppressed === 0 || now - this.#start < 1000) return 0;
    const k = this.#suppressed;
    this.#suppressed = 0;
    return k;
  }
}
