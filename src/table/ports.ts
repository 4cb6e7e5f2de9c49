/**
 * Public port use: which pairs (proto, R, p) of the pool are sent from, by
 * how many sessions, and which are free for the allocator (`allocate.ts`).
 *
 * Port use is a {@link U32Map} per protocol keyed by `(pool index << 16 |
 * p) >>> 0` with a reference count: how many sessions send from `R:p`. The
 * allocator only needs to know "unused" versus "in use"; the public index
 * (`storage.ts`) tells which remote endpoints an `R:p` is already bound to.
 * A port whose last user left may be held for that user ({@link PortHolds},
 * `holds.ts`).
 *
 * The allocator's random search needs to know in O(1) whether any free
 * port is left, so the in-range ports ([portMin, portMax]) used or held are
 * counted per protocol, and per protocol and pool address.
 *
 * @module
 */

import { U32Map } from "./hashmap.ts";
import { PortHolds } from "./holds.ts";
import type { TableConfig } from "./options.ts";

/** The key of (pool index `ri`, port `p`) in the maps of this module and of holds.ts. */
export function portKey(ri: number, p: number): number {
  return ((ri << 16) | p) >>> 0;
}

/** Use counts, holds and busy counts of the pool's public ports. */
export class PublicPorts {
  /** Per protocol: key -> sessions sending from it. */
  readonly #use: [U32Map, U32Map, U32Map];
  /** In-range ports used or held, per protocol. */
  readonly #inRangeBusy: [number, number, number] = [0, 0, 0];
  /** In-range ports used or held, per protocol and pool address: `[pi * poolSize + ri]`. */
  readonly #busy: Uint32Array;
  readonly #holds: PortHolds;
  readonly #poolSize: number;
  readonly #portMin: number;
  readonly #portMax: number;

  constructor(cfg: TableConfig) {
    this.#poolSize = cfg.pool.length;
    this.#portMin = cfg.portMin;
    this.#portMax = cfg.portMax;
    this.#busy = new Uint32Array(3 * cfg.pool.length);
    const cap = cfg.initialCapacity;
    this.#use = [
      new U32Map(1, cfg.seed, 64),
      new U32Map(1, cfg.seed, cap),
      new U32Map(1, cfg.seed, cap),
    ];
    this.#holds = new PortHolds(cfg.holdMs, cfg.seed, (pi, key) => this.#idle(pi, key));
  }

  /** Bytes of the maps, counts and holds. */
  get bytes(): number {
    let n = this.#busy.byteLength + this.#holds.bytes;
    for (const u of this.#use) n += u.bytes;
    return n;
  }

  /** A session of protocol index `pi` now sends from (R_ri, p). */
  take(pi: number, ri: number, p: number): void {
    const use = this.#use[pi]!;
    const key = portKey(ri, p);
    // A held port was busy already; a free one becomes busy.
    if (use.find(key) < 0 && !this.#holds.end(pi, key) && this.#inRange(p)) {
      this.#inRangeBusy[pi]!++;
      this.#busy[pi * this.#poolSize + ri]!++;
    }
    use.vals[use.upsert(key)]!++;
  }

  /** A session of host `a` stopped sending from (R_ri, p): the last one leaving holds it for `a`. */
  leave(pi: number, ri: number, p: number, a: number): void {
    const use = this.#use[pi]!;
    const key = portKey(ri, p);
    const b = use.find(key);
    if (--use.vals[b]! !== 0) return;
    use.deleteAt(b);
    // The port stays busy while it is held (RFC 6888 REQ-8).
    if (this.#holds.enabled) this.#holds.hold(pi, key, a);
    else this.#idle(pi, key);
  }

  /** Ends the holds whose time is up at `now` (see holds.ts). */
  clock(now: number): void {
    this.#holds.clock(now);
  }

  /** Sessions sending from (proto index `pi`, R_ri, p). */
  users(pi: number, ri: number, p: number): number {
    return this.#use[pi]!.get(portKey(ri, p));
  }

  /** Some session sends from (R_ri, p). */
  used(pi: number, ri: number, p: number): boolean {
    return this.#use[pi]!.find(portKey(ri, p)) >= 0;
  }

  /** (R_ri, p) is neither used nor held for anyone. */
  free(pi: number, ri: number, p: number): boolean {
    const k = portKey(ri, p);
    return this.#use[pi]!.find(k) < 0 && this.#holds.holder(pi, k) < 0;
  }

  /** (R_ri, p) is unused and not held for a host other than `a`. */
  availableTo(pi: number, ri: number, p: number, a: number): boolean {
    const k = portKey(ri, p);
    if (this.#use[pi]!.find(k) >= 0) return false;
    const h = this.#holds.holder(pi, k);
    return h < 0 || h === a;
  }

  /** The host (R_ri, p) is held for, or -1. */
  heldFor(pi: number, ri: number, p: number): number {
    return this.#holds.holder(pi, portKey(ri, p));
  }

  /** Number of ports held, all protocols. */
  get held(): number {
    return this.#holds.size;
  }

  /** Every in-range port of R_ri is used or held. */
  addressFull(pi: number, ri: number): boolean {
    return this.#busy[pi * this.#poolSize + ri]! >= this.#portMax - this.#portMin + 1;
  }

  /** Every in-range port of every pool address is used or held. */
  poolFull(pi: number): boolean {
    return this.#inRangeBusy[pi]! >= this.#poolSize * (this.#portMax - this.#portMin + 1);
  }

  #inRange(p: number): boolean {
    return p >= this.#portMin && p <= this.#portMax;
  }

  /** Port `key`, neither used nor held any longer, is not busy. */
  #idle(pi: number, key: number): void {
    if (this.#inRange(key & 0xffff)) {
      this.#inRangeBusy[pi]!--;
      this.#busy[pi * this.#poolSize + (key >>> 16)]!--;
    }
  }
}
