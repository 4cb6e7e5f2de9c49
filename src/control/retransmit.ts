/**
 * The control client's retransmission machinery: when a request is sent
 * again, the timer wheel that files every request in flight, and the
 * pacing of transmissions. The request API, the datagrams and the answers
 * are `client.ts`'s (its module notes tell the whole schedule).
 *
 * @module
 */

/** Retransmission and pacing settings. */
export interface RetryOptions {
  /** First retransmission timeout of a request nothing waits on, ms. @default 250 */
  initialMs?: number;
  /** Cap of the doubling retransmission timeout, ms. @default 1000 */
  maxMs?: number;
  /** Transmissions in all of a request nothing waits on. @default 10 */
  tries?: number;
  /** Retransmission interval while a first packet waits (`urgent`), ms. @default 100 */
  fastMs?: number;
  /** How long that fixed schedule lasts before doubling, ms. @default 3000 */
  fastForMs?: number;
  /** An urgent request is given up this long after its first transmission, ms. @default 10000 */
  giveUpMs?: number;
  /** Requests in flight at most; later ones wait. @default 4096 */
  window?: number;
  /** RATE_LIMITED answers retried per request before that answer is final. @default 8 */
  rateLimitedTries?: number;
  /** Transmissions per second at most, in bursts of twice as many. @default 1800 */
  rate?: number;
  /**
   * The protocol version to speak: 3 (batches, proposed gateway ports; it
   * falls back to 2 by itself when the server speaks only 2), or 2 from the
   * start, as drivers before version 3 do (`dpm driver --protocol 2`).
   * @default 3
   */
  version?: 2 | 3;
}

/** The retransmission settings with every default filled in. */
export type RetrySchedule = Required<Omit<RetryOptions, "version">>;

/** `o` with its defaults. */
export function retrySchedule(o: RetryOptions): RetrySchedule {
  return {
    initialMs: o.initialMs ?? 250,
    maxMs: o.maxMs ?? 1000,
    tries: o.tries ?? 10,
    fastMs: o.fastMs ?? 100,
    fastForMs: o.fastForMs ?? 3000,
    giveUpMs: o.giveUpMs ?? 10_000,
    window: o.window ?? 4096,
    rateLimitedTries: o.rateLimitedTries ?? 8,
    rate: o.rate ?? 1800,
  };
}

/**
 * How long the server takes per request ahead of a new one (ms): with
 * thousands in flight, the first retransmission waits for them.
 */
export const BACKLOG_MS = 0.1;
/** The retransmission wheel: slots of this many ms. */
export const SLOT_MS = 10;
/** Slots of the wheel (a horizon of 5.12 s: longer delays wait a turn). */
export const SLOTS = 512;

/** ±25% */
export function jitter(ms: number): number {
  return ms * (0.75 + Math.random() * 0.5);
}

/** What the schedule knows of a request in flight (`client.ts` keeps the rest). */
export interface Scheduled {
  /** The entry's nonce (low half); 0 once answered or given up. */
  seq: number;
  /** A first packet waits on it: the fast schedule. */
  urgent: boolean;
  /** Transmissions so far (0: waiting for its first, or to go again at once). */
  sent: number;
  /** When it was first sent, ms. */
  first: number;
  /** When it is due again, ms. */
  due: number;
  /** The wheel slot (absolute) it is filed in: entries in other slots are stale. */
  slot: number;
}

/**
 * The wait before `f`'s next transmission, after one at `now` (jittered):
 * the fast schedule while an urgent request is young, else doubling from
 * `initialMs` to `maxMs`; never before the server can have answered (twice
 * the smoothed round trip `srtt`, and `inFlight` requests ahead of it).
 */
export function retryDelay(
  o: RetrySchedule,
  f: Scheduled,
  now: number,
  srtt: number,
  inFlight: number,
): number {
  const floor = Math.max(2 * srtt, inFlight * BACKLOG_MS);
  if (f.urgent && now - f.first < o.fastForMs) return jitter(Math.max(o.fastMs, floor));
  const k = f.urgent ? Math.max(0, f.sent - 1 - Math.floor(o.fastForMs / o.fastMs)) : f.sent - 1;
  return jitter(Math.max(Math.min(o.initialMs * 2 ** Math.min(k, 16), o.maxMs), floor));
}

/**
 * One timer wheel for every request in flight: per slot of {@link SLOT_MS},
 * the nonces of the requests due then. A request answered or filed again
 * since stays in its old slot and is skipped there (its `slot` differs):
 * nothing is ever searched for or removed.
 */
export class Wheel {
  readonly #slots: number[][] = Array.from({ length: SLOTS }, () => []);
  /** The first slot (absolute) not yet turned. */
  #at: number;

  constructor(now: number) {
    this.#at = Math.floor(now / SLOT_MS);
  }

  /**
   * Files `f` at its due time (within the wheel's horizon); returns when
   * the timer must fire for it, ms.
   */
  file(f: Scheduled): number {
    const slot = Math.min(Math.max(Math.floor(f.due / SLOT_MS), this.#at), this.#at + SLOTS - 1);
    f.slot = slot;
    this.#slots[slot % SLOTS]!.push(f.seq);
    return Math.max(f.due, slot * SLOT_MS);
  }

  /**
   * Turns the wheel to `now`: each request of the slots passed that is due
   * goes to `due` (its `slot` reset), one filed there but due later is
   * filed again. Returns the earliest time the timer must fire for those,
   * ms (Infinity: none).
   */
  turn<F extends Scheduled>(
    now: number,
    flights: { get(seq: number): F | undefined },
    due: (f: F) => void,
  ): number {
    const last = Math.floor(now / SLOT_MS);
    const later: F[] = [];
    const end = Math.min(last, this.#at + SLOTS - 1);
    for (let t = this.#at; t <= end; t++) {
      const slot = this.#slots[t % SLOTS]!;
      if (slot.length === 0) continue;
      for (const seq of slot) {
        const f = flights.get(seq);
        // Answered, waiting to be sent again, or filed elsewhere since: not this slot's.
        if (f === undefined || f.sent === 0 || f.slot !== t) continue;
        if (f.due > now) {
          later.push(f);
          continue;
        }
        f.slot = -1;
        due(f);
      }
      slot.length = 0;
    }
    this.#at = Math.max(this.#at, last);
    let at = Infinity;
    for (const f of later) at = Math.min(at, this.file(f));
    return at;
  }

  /** When the next slot with something in it begins, ms (Infinity: the wheel is empty). */
  next(): number {
    for (let t = this.#at + 1; t < this.#at + SLOTS; t++) {
      if (this.#slots[t % SLOTS]!.length > 0) return t * SLOT_MS;
    }
    return Infinity;
  }
}

/** Transmissions paced at `rate` per second, in bursts of twice that (a token bucket). */
export class Pacer {
  readonly #rate: number;
  #tokens: number;
  #at: number;

  constructor(rate: number, now: number) {
    this.#rate = rate;
    this.#tokens = 2 * rate;
    this.#at = now;
  }

  /** Books a transmission at `now`; returns how long to wait for a token, ms (0: go). */
  take(now: number): number {
    const rate = this.#rate;
    this.#tokens = Math.min(2 * rate, this.#tokens + ((now - this.#at) * rate) / 1000);
    this.#at = now;
    if (this.#tokens < 1) return ((1 - this.#tokens) / rate) * 1000;
    this.#tokens -= 1;
    return 0;
  }
}
