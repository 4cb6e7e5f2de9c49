/**
 * Compact open-addressing hash structures over typed arrays, for tables that
 * must hold a million entries without a JavaScript object or a string per
 * entry and must look up without allocating.
 *
 * Both structures use linear probing with a power-of-two bucket array, a
 * maximum load of 0.7, growth by doubling, and backward-shift deletion (no
 * tombstones, so probe sequences never degrade after churn; see Knuth, TAOCP
 * vol. 3, 6.4, Algorithm R).
 *
 * - {@link SlotIndex} stores only slot numbers. The key lives in the owner's
 *   struct-of-arrays record for that slot; the owner supplies the hash of a
 *   slot's key (needed when entries move) and writes its own probe loop for
 *   lookups, comparing fields in place. Cost: 4 bytes per bucket.
 * - {@link U32Map} maps a 32-bit key to a fixed number (`stride`) of 32-bit
 *   counters. Cost: 5 + 4 * stride bytes per bucket.
 *
 * @module
 */

/** Maximum load factor, as a fraction numerator/denominator: 7/10. */
const LOAD_NUM = 7;
const LOAD_DEN = 10;

/** murmur3 32-bit mixing step: folds `k` into the running hash `h`. */
export function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** murmur3 finaliser: avalanches all bits of `h`. Returns an unsigned 32-bit number. */
export function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** `n` with `old` copied to its start: a typed array grown to `n`'s length. */
export function grown<T extends ArrayLike<number> & { set(a: ArrayLike<number>): void }>(
  old: T,
  n: T,
): T {
  n.set(old);
  return n;
}

/** Smallest power of two that is at least `n` (and at least 16). */
function pow2AtLeast(n: number): number {
  let c = 16;
  while (c < n) c *= 2;
  return c;
}

/**
 * A set of slot numbers (0 .. 2^31-2) placed by a hash of the key the owner
 * keeps for each slot. Buckets hold `slot + 1`; 0 marks an empty bucket.
 *
 * Lookups are the owner's job (so that the key comparison reads the owner's
 * arrays directly, with no callback and no allocation):
 *
 * ```ts
 * const b = idx.buckets, m = idx.mask;
 * for (let i = hash & m;; i = (i + 1) & m) {
 *   const v = b[i]!;
 *   if (v === 0) return -1;          // not present
 *   if (keyMatches(v - 1)) return v - 1;
 * }
 * ```
 *
 * `buckets` and `mask` change when the index grows: read them afresh for
 * every lookup.
 */
export class SlotIndex {
  /** The buckets: `slot + 1`, or 0 when empty. */
  buckets: Int32Array;
  /** `buckets.length - 1`. */
  mask: number;
  /** Number of slots held. */
  size = 0;
  readonly #hashOf: (slot: number) => number;

  /**
   * @param hashOf the hash of the key currently stored for `slot`; called when
   *   entries move (deletion, growth), so it must stay valid for every slot
   *   held until that slot is removed.
   * @param capacity initial number of entries to hold without growing.
   */
  constructor(hashOf: (slot: number) => number, capacity = 16) {
    this.#hashOf = hashOf;
    const n = pow2AtLeast(Math.ceil((capacity * LOAD_DEN) / LOAD_NUM));
    this.buckets = new Int32Array(n);
    this.mask = n - 1;
  }

  /** Bytes used by the bucket array. */
  get bytes(): number {
    return this.buckets.byteLength;
  }

  /**
   * Adds `slot` whose key hashes to `hash`. The caller guarantees that no
   * slot with an equal key is present (the index does not compare keys).
   */
  insert(slot: number, hash: number): void {
    if ((this.size + 1) * LOAD_DEN > this.buckets.length * LOAD_NUM) this.#grow();
    const b = this.buckets;
    const m = this.mask;
    let i = hash & m;
    while (b[i] !== 0) i = (i + 1) & m;
    b[i] = slot + 1;
    this.size++;
  }

  /**
   * Replaces `oldSlot` by `newSlot` in place. Both must have equal keys (the
   * same `hash`). Returns false when `oldSlot` is not held.
   */
  replace(oldSlot: number, newSlot: number, hash: number): boolean {
    const i = this.#find(oldSlot, hash);
    if (i < 0) return false;
    this.buckets[i] = newSlot + 1;
    return true;
  }

  /** Removes `slot`, whose key hashes to `hash`. Returns false when it is not held. */
  remove(slot: number, hash: number): boolean {
    let i = this.#find(slot, hash);
    if (i < 0) return false;
    const b = this.buckets;
    const m = this.mask;
    // Backward shift: walk the cluster after the hole; an entry whose home
    // bucket is not cyclically within (hole, j] can move back into the hole.
    let j = i;
    for (;;) {
      j = (j + 1) & m;
      const v = b[j]!;
      if (v === 0) break;
      const k = this.#hashOf(v - 1) & m;
      const stays = i <= j ? i < k && k <= j : i < k || k <= j;
      if (!stays) {
        b[i] = v;
        i = j;
      }
    }
    b[i] = 0;
    this.size--;
    return true;
  }

  /** Removes everything. */
  clear(): void {
    this.buckets.fill(0);
    this.size = 0;
  }

  #find(slot: number, hash: number): number {
    const b = this.buckets;
    const m = this.mask;
    const target = slot + 1;
    for (let i = hash & m;; i = (i + 1) & m) {
      const v = b[i]!;
      if (v === 0) return -1;
      if (v === target) return i;
    }
  }

  #grow(): void {
    const old = this.buckets;
    const n = old.length * 2;
    const b = new Int32Array(n);
    const m = n - 1;
    for (let k = 0; k < old.length; k++) {
      const v = old[k]!;
      if (v === 0) continue;
      let i = this.#hashOf(v - 1) & m;
      while (b[i] !== 0) i = (i + 1) & m;
      b[i] = v;
    }
    this.buckets = b;
    this.mask = m;
  }
}

/**
 * A map from unsigned 32-bit keys to `stride` unsigned 32-bit counters.
 * Bucket numbers returned by {@link find} and {@link upsert} are valid only
 * until the next `upsert` or `deleteAt`.
 */
export class U32Map {
  /** Keys, by bucket. */
  keys: Uint32Array;
  /** 1 where the bucket holds a key. */
  used: Uint8Array;
  /** Counters: bucket `i` owns `vals[i * stride .. i * stride + stride - 1]`. */
  vals: Uint32Array;
  /** `keys.length - 1`. */
  mask: number;
  /** Number of keys held. */
  size = 0;
  /** Counters per key. */
  readonly stride: number;
  readonly #seed: number;

  /**
   * @param stride counters per key.
   * @param seed hash seed (randomise it when outsiders choose keys).
   * @param capacity initial number of keys to hold without growing.
   */
  constructor(stride: number, seed = 0, capacity = 16) {
    this.stride = stride;
    this.#seed = seed | 0;
    const n = pow2AtLeast(Math.ceil((capacity * LOAD_DEN) / LOAD_NUM));
    this.keys = new Uint32Array(n);
    this.used = new Uint8Array(n);
    this.vals = new Uint32Array(n * stride);
    this.mask = n - 1;
  }

  /** Bytes used by the arrays. */
  get bytes(): number {
    return this.keys.byteLength + this.used.byteLength + this.vals.byteLength;
  }

  /** The bucket of `key`'s hash. */
  #home(key: number): number {
    return fmix(key ^ this.#seed) & this.mask;
  }

  /** The bucket holding `key`, or -1. */
  find(key: number): number {
    const k = this.keys;
    const u = this.used;
    const m = this.mask;
    for (let i = this.#home(key);; i = (i + 1) & m) {
      if (u[i] === 0) return -1;
      if (k[i] === key) return i;
    }
  }

  /** The first counter of `key`, or 0 when absent. */
  get(key: number, col = 0): number {
    const i = this.find(key);
    return i < 0 ? 0 : this.vals[i * this.stride + col]!;
  }

  /** The bucket holding `key`, inserting it with zeroed counters when absent. */
  upsert(key: number): number {
    const found = this.find(key);
    if (found >= 0) return found;
    if ((this.size + 1) * LOAD_DEN > this.keys.length * LOAD_NUM) this.#grow();
    const k = this.keys;
    const u = this.used;
    const m = this.mask;
    let i = this.#home(key);
    while (u[i] !== 0) i = (i + 1) & m;
    k[i] = key;
    u[i] = 1;
    this.vals.fill(0, i * this.stride, i * this.stride + this.stride);
    this.size++;
    return i;
  }

  /** Removes the key in bucket `i` (backward-shift deletion). */
  deleteAt(i: number): void {
    const k = this.keys;
    const u = this.used;
    const v = this.vals;
    const s = this.stride;
    const m = this.mask;
    let j = i;
    for (;;) {
      j = (j + 1) & m;
      if (u[j] === 0) break;
      const h = this.#home(k[j]!);
      const stays = i <= j ? i < h && h <= j : i < h || h <= j;
      if (!stays) {
        k[i] = k[j]!;
        v.copyWithin(i * s, j * s, j * s + s);
        i = j;
      }
    }
    u[i] = 0;
    this.size--;
  }

  #grow(): void {
    const ok = this.keys;
    const ou = this.used;
    const ov = this.vals;
    const s = this.stride;
    const n = ok.length * 2;
    this.keys = new Uint32Array(n);
    this.used = new Uint8Array(n);
    this.vals = new Uint32Array(n * s);
    this.mask = n - 1;
    for (let j = 0; j < ok.length; j++) {
      if (ou[j] === 0) continue;
      let i = this.#home(ok[j]!);
      while (this.used[i] !== 0) i = (i + 1) & this.mask;
      this.keys[i] = ok[j]!;
      this.used[i] = 1;
      for (let c = 0; c < s; c++) this.vals[i * s + c] = ov[j * s + c]!;
    }
  }
}
