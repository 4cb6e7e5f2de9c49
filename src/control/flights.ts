/**
 * The control client's requests in flight, by nonce (`client.ts`).
 *
 * Why not a `Map`: a request in flight is looked up by its nonce's low half
 * (`seq`) once per answer and per wheel slot, and a `Map` entry costs ~46
 * bytes per request in a burst (V8's ordered hash table: three words per
 * entry, half a word per bucket, a power-of-two capacity), a quarter of
 * what a request in flight costs the driver. The nonce is the client's to
 * choose, so it is chosen to fit the table: a request takes a `seq` whose
 * slot (`seq & mask`) is free ({@linkcode FlightTable.free}), and lookup is
 * one array read and a compare, with no collisions to chain. One pointer
 * per slot, the table at most 3/4 full: 8-16 bytes per request.
 *
 * Growing keeps every request in its slot (two `seq`s that share a slot of
 * the doubled table shared one of the old); shrinking may not (two may
 * share a slot of the halved table), so the table shrinks only when that
 * does not happen, and tries again only after it emptied by half again.
 *
 * @module
 */

/** What the table needs of a request: its nonce's low half (0: none). */
export interface HasSeq {
  seq: number;
}

/** The smallest table, slots (a power of two). */
export const MIN_SLOTS = 64;

/** Requests in flight by `seq`: at most one per slot `seq & mask`. */
export class FlightTable<F extends HasSeq> {
  #slots: (F | undefined)[] = new Array(MIN_SLOTS).fill(undefined);
  #mask = MIN_SLOTS - 1;
  #size = 0;
  /** No shrinking tried again before the table holds fewer than this. */
  #shrinkBelow = Infinity;

  /** Requests in the table. */
  get size(): number {
    return this.#size;
  }

  /** Slots of the table (for tests and memory figures). */
  get capacity(): number {
    return this.#mask + 1;
  }

  /** The request of nonce low half `seq`, if it is in the table. */
  get(seq: number): F | undefined {
    const f = this.#slots[seq & this.#mask];
    return f !== undefined && f.seq === seq ? f : undefined;
  }

  /** Whether a new request may take `seq` (its slot is free). Call {@linkcode room} first. */
  free(seq: number): boolean {
    return this.#slots[seq & this.#mask] === undefined;
  }

  /** Makes room for one more request (grows at 3/4 full); before choosing its `seq`. */
  room(): void {
    if ((this.#size + 1) * 4 > this.capacity * 3) this.#resize(this.capacity * 2);
  }

  /** Files `f` at `f.seq`, whose slot must be free ({@linkcode free}). */
  add(f: F): void {
    const i = f.seq & this.#mask;
    if (f.seq === 0 || this.#slots[i] !== undefined) {
      throw new Error(`flight table: slot of seq ${f.seq} is not free`);
    }
    this.#slots[i] = f;
    this.#size++;
  }

  /** Takes `f` out (before its `seq` changes); false when it was not in. */
  delete(f: F): boolean {
    const i = f.seq & this.#mask;
    if (this.#slots[i] !== f) return false;
    this.#slots[i] = undefined;
    this.#size--;
    if (this.capacity > MIN_SLOTS && this.#size * 8 < this.capacity) {
      if (this.#size < this.#shrinkBelow) this.#shrink();
    }
    return true;
  }

  /** Every request in the table (a copy: the table may change meanwhile). */
  values(): F[] {
    const out: F[] = [];
    for (const f of this.#slots) if (f !== undefined) out.push(f);
    return out;
  }

  /** Empties the table (to its smallest size). */
  clear(): void {
    this.#slots = new Array(MIN_SLOTS).fill(undefined);
    this.#mask = MIN_SLOTS - 1;
    this.#size = 0;
    this.#shrinkBelow = Infinity;
  }

  #shrink(): void {
    let n = this.capacity;
    while (n > MIN_SLOTS && this.#size * 8 < n) n /= 2;
    if (this.#resize(n)) this.#shrinkBelow = Infinity;
    else this.#shrinkBelow = Math.floor(this.#size / 2);
  }

  /** Moves every request to a table of `n` slots; false (nothing moved) when two would share one. */
  #resize(n: number): boolean {
    const slots: (F | undefined)[] = new Array(n).fill(undefined);
    const mask = n - 1;
    for (const f of this.#slots) {
      if (f === undefined) continue;
      const i = f.seq & mask;
      if (slots[i] !== undefined) return false;
      slots[i] = f;
    }
    this.#slots = slots;
    this.#mask = mask;
    return true;
  }
}
