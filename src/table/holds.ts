/**
 * Port holds (RFC 6888 REQ-8): a freed public port is kept back from other
 * hosts for a while.
 *
 * ## Port hold
 *
 * When the last session sending from (proto, R, p) leaves (release or
 * expiry), the port is *held* for `portHold` seconds (default 120, RFC 6888
 * REQ-8) for the host that last used it: that host may have it back at once
 * (a re-reservation keeps its pair), other hosts get it only through
 * allocation step 6 (`allocate.ts`). A hold starts at the `now` of the
 * release (`release(..., now)`, `expire(now)`) or, for a release without a
 * clock, at the next call that passes one. Holds are in a queue in release
 * order and end lazily at the next clocked call ({@link PortHolds.clock});
 * they are not in the state file (a restarted server starts without holds).
 *
 * A held port counts as busy for the allocator (`ports.ts` keeps that
 * count); this module tells it when a hold ends on time.
 *
 * Ports are named by their key in `ports.ts`: `(pool index << 16 | p) >>> 0`,
 * one key space per protocol index (icmp, tcp, udp).
 *
 * @module
 */

import { U32Map } from "./hashmap.ts";

/** The held ports and the queue of their hold times. */
export class PortHolds {
  /** Per protocol: key -> [host that last used it, hold sequence number]. */
  readonly #held: [U32Map, U32Map, U32Map];
  /** Holds in release order (a ring): key, protocol index, release time (NaN: not stamped yet), sequence. */
  #qKey = new Uint32Array(64);
  #qPi = new Uint8Array(64);
  #qTime = new Float64Array(64);
  #qSeq = new Uint32Array(64);
  #qHead = 0;
  #qLen = 0;
  /** Holds at the tail of the ring released without a clock, stamped by the next clocked call. */
  #qPending = 0;
  #nextSeq = 1;
  readonly #holdMs: number;
  readonly #ended: (pi: number, key: number) => void;

  /**
   * @param holdMs how long a hold lasts, ms (0: ports are never held).
   * @param seed the table's hash seed.
   * @param ended told when a hold ends on time (not when {@link end} ends it).
   */
  constructor(holdMs: number, seed: number, ended: (pi: number, key: number) => void) {
    this.#holdMs = holdMs;
    this.#ended = ended;
    this.#held = [new U32Map(2, seed, 64), new U32Map(2, seed, 64), new U32Map(2, seed, 64)];
  }

  /** Freed ports are held at all (`portHold` > 0). */
  get enabled(): boolean {
    return this.#holdMs > 0;
  }

  /** Number of ports held (all protocols). */
  get size(): number {
    return this.#held[0].size + this.#held[1].size + this.#held[2].size;
  }

  /** Bytes of the maps and the queue. */
  get bytes(): number {
    let n = this.#qKey.length * (4 + 1 + 8 + 4);
    for (const u of this.#held) n += u.bytes;
    return n;
  }

  /** The host port `key` is held for, or -1. */
  holder(pi: number, key: number): number {
    const held = this.#held[pi]!;
    const h = held.find(key);
    return h < 0 ? -1 : held.vals[h * 2]!;
  }

  /** Holds the freed port `key` for host `a` (its release time is stamped by {@link clock}). */
  hold(pi: number, key: number, a: number): void {
    if (this.#qLen === this.#qKey.length) this.#grow();
    const seq = this.#nextSeq;
    this.#nextSeq = (seq + 1) >>> 0 || 1;
    const j = (this.#qHead + this.#qLen) % this.#qKey.length;
    this.#qKey[j] = key;
    this.#qPi[j] = pi;
    this.#qTime[j] = NaN;
    this.#qSeq[j] = seq;
    this.#qLen++;
    this.#qPending++;
    const held = this.#held[pi]!;
    const b = held.upsert(key);
    held.vals[b * 2] = a;
    held.vals[b * 2 + 1] = seq;
  }

  /**
   * Ends the hold of `key` early (the port is being used again). Returns
   * true when it was held. Its queue entry stays, skipped by sequence.
   */
  end(pi: number, key: number): boolean {
    const held = this.#held[pi]!;
    const b = held.find(key);
    if (b < 0) return false;
    held.deleteAt(b);
    return true;
  }

  /**
   * Stamps holds released without a clock with `now`, then ends every hold
   * whose time is up (`now >= released + portHold`). Queue entries of holds
   * that ended early are skipped by sequence.
   */
  clock(now: number): void {
    const cap = this.#qKey.length;
    for (; this.#qPending > 0; this.#qPending--) {
      this.#qTime[(this.#qHead + this.#qLen - this.#qPending) % cap] = now;
    }
    while (this.#qLen > 0) {
      const j = this.#qHead;
      if (!(this.#qTime[j]! + this.#holdMs <= now)) break;
      const pi = this.#qPi[j]!;
      const key = this.#qKey[j]!;
      const held = this.#held[pi]!;
      const b = held.find(key);
      if (b >= 0 && held.vals[b * 2 + 1] === this.#qSeq[j]) {
        held.deleteAt(b);
        this.#ended(pi, key);
      }
      this.#qHead = (j + 1) % cap;
      this.#qLen--;
    }
  }

  #grow(): void {
    const cap = this.#qKey.length;
    const n = cap * 2;
    const key = new Uint32Array(n);
    const pi = new Uint8Array(n);
    const time = new Float64Array(n);
    const seq = new Uint32Array(n);
    for (let k = 0; k < this.#qLen; k++) {
      const j = (this.#qHead + k) % cap;
      key[k] = this.#qKey[j]!;
      pi[k] = this.#qPi[j]!;
      time[k] = this.#qTime[j]!;
      seq[k] = this.#qSeq[j]!;
    }
    this.#qKey = key;
    this.#qPi = pi;
    this.#qTime = time;
    this.#qSeq = seq;
    this.#qHead = 0;
  }
}
