/**
 * The table's rows: a struct of typed arrays indexed by slot, the four
 * hashes that find a slot, and the packet path's lookups and accessors.
 * `SessionTable` (`table.ts`) extends {@link SessionStore}, so that the data
 * path's lookups read these arrays straight from the table object, with no
 * hop between the call and the probe loop.
 *
 * ## Rows
 *
 * A session is one row of a struct-of-arrays: every field is a typed array
 * indexed by the session's *slot* number. Free slots are chained through
 * `gnext` (LIFO); arrays double when full. No JavaScript object exists per
 * session, which is what keeps a million sessions near 100 bytes each. The
 * fields of a row are named as in README.md ("How it works"): `a:pa` the
 * host, `X:px` the remote, `R:p` the public pair (`ri` is R's index in the
 * pool), `Pg` the gateway port.
 *
 * ## Indexes
 *
 * Four {@link SlotIndex} hashes point at slots; each is one-to-one:
 *
 * | index    | key                       | used for                                   |
 * |----------|---------------------------|--------------------------------------------|
 * | lan      | (proto, a, Pg)            | every outbound packet (`lookupLan`)        |
 * | public   | (proto, R, p, X, px)      | every inbound packet (`lookupPublic`)      |
 * | identity | (proto, a, pa, X, px)     | idempotent reserve, renew, release         |
 * | endpoint | (proto, a, pa) -> 1st slot | endpoint-independent mapping, `dpm query` |
 *
 * The endpoint index holds the first session of each internal endpoint; the
 * others hang off it in a doubly linked list (`gnext`/`gprev`), so removing
 * any session is O(1) and the index always names a live member.
 *
 * `Pg` is unique per (proto, a), so the LAN key needs no `pa`; the server
 * still checks `pa(s)` against the packet for TCP and UDP. An inbound
 * mapping (`F_MAP`, see "Mappings" in `allocate.ts`) has no `Pg` and is not
 * in the LAN index; its `X:px` is 0:0, so that `lookupPublic` (exact) never
 * confuses it with a session and `lookupMapping` finds it with one probe.
 *
 * How many sessions send from each public pair is counted apart
 * (`ports.ts`), and so is what each host holds (`hosts.ts`).
 *
 * ## Filtering
 *
 * The public index is keyed on the remote endpoint too, so a packet from an
 * outside peer that has no session with `R:p` finds nothing and is dropped:
 * address-and-port-dependent filtering (RFC 4787 section 5). A host that
 * wants to hear from a new peer reserves a session toward it; with
 * endpoint-independent mapping that session reuses the same `R:p`.
 *
 * All addresses are host-order unsigned 32-bit numbers (`>>> 0`), all ports
 * integers in 0..65535; the hot-path functions do not validate them.
 *
 * @module
 */

import type { SessionBinding, SessionIdentity } from "../wire/tuple.ts";
import { fmix, grown, mix, SlotIndex } from "./hashmap.ts";
import type { TableConfig } from "./options.ts";

/** Row flag bits: a live row. */
const F_LIVE = 1;
/** The host declared the internal port replaceable. */
const F_REPLACEABLE = 2;
/** The public port differs from the internal one. */
const F_REPLACED = 4;
/** The public pair was granted shared with another host's session. */
const F_SHARED = 8;
/** An inbound mapping (PCP/NAT-PMP MAP): x = px = 0, no Pg, owns (proto, R, p) for every remote. */
const F_MAP = 16;
/**
 * A direct session (PCP PEER from a host without a driver): its host sends
 * `a:pa -> X:px` straight through the gateway and receives `X:px -> a:pa`
 * (not `G:Pg -> a:pa`); the queue data path translates it so.
 */
const F_DIRECT = 32;

/** What a row is, as its flags tell (the accessors of the same names read them back). */
export interface RowKind {
  replaceable: boolean;
  replaced: boolean;
  shared: boolean;
  map: boolean;
  direct: boolean;
}

/** The flags (`Row.flags`) of a live row of kind `k`. */
export function rowFlags(k: RowKind): number {
  return F_LIVE | (k.replaceable ? F_REPLACEABLE : 0) | (k.replaced ? F_REPLACED : 0) |
    (k.shared ? F_SHARED : 0) | (k.map ? F_MAP : 0) | (k.direct ? F_DIRECT : 0);
}

/** The stored fields of a new row (names as in the module documentation). */
export interface Row extends SessionIdentity {
  /** Pool index of the public address R. */
  ri: number;
  p: number;
  pg: number;
  /** {@link rowFlags}. */
  flags: number;
  /** Expiry time, ms on the caller's clock. */
  expiresAt: number;
  /** The lease granted, seconds. */
  lifetime: number;
  packetsOut: number;
  packetsIn: number;
}

/** Bytes per slot of the columns below. */
const SLOT_BYTES = 1 + 1 + 4 + 2 + 4 + 2 + 4 + 2 + 2 + 2 + 8 + 4 + 8 + 8 + 4 + 4;

/**
 * The rows and their indexes. Slots returned by lookups stay valid until
 * the row is removed; the per-slot accessors are meant for the packet path
 * and never allocate. Rows are added and removed by the table
 * (`addRow`/`dropRow`), which keeps the counts of the other parts with them.
 */
export class SessionStore {
  readonly #pool: Uint32Array;
  readonly #seed: number;

  #cap = 0;
  #hw = 0; // slots >= hw were never used
  #freeHead = -1;
  #size = 0;
  #sweepCursor = 0;
  #proto = new Uint8Array(0);
  #flags = new Uint8Array(0);
  #a = new Uint32Array(0);
  #pa = new Uint16Array(0);
  #x = new Uint32Array(0);
  #px = new Uint16Array(0);
  #r = new Uint32Array(0);
  #ri = new Uint16Array(0); // pool index of r
  #p = new Uint16Array(0);
  #pg = new Uint16Array(0);
  #exp = new Float64Array(0);
  #life = new Uint32Array(0);
  #out = new Float64Array(0);
  #in = new Float64Array(0);
  #gnext = new Int32Array(0); // endpoint list, and the free list
  #gprev = new Int32Array(0);

  readonly #lan: SlotIndex;
  readonly #pub: SlotIndex;
  readonly #id: SlotIndex;
  readonly #ep: SlotIndex;

  constructor(cfg: TableConfig) {
    this.#pool = cfg.pool;
    this.#seed = cfg.seed;
    const cap = cfg.initialCapacity;
    this.#resize(cap);
    this.#lan = new SlotIndex(
      (s) => this.#hashLan(this.#proto[s]!, this.#a[s]!, this.#pg[s]!),
      cap,
    );
    this.#pub = new SlotIndex(
      (s) => this.#hashPub(this.#proto[s]!, this.#r[s]!, this.#p[s]!, this.#x[s]!, this.#px[s]!),
      cap,
    );
    this.#id = new SlotIndex(
      (s) => this.#hashId(this.#proto[s]!, this.#a[s]!, this.#pa[s]!, this.#x[s]!, this.#px[s]!),
      cap,
    );
    this.#ep = new SlotIndex((s) => this.#hashEp(this.#proto[s]!, this.#a[s]!, this.#pa[s]!), cap);
  }

  // ---------------------------------------------------------------- hashes

  #hashLan(proto: number, a: number, pg: number): number {
    return fmix(mix(mix(this.#seed ^ proto, a), pg));
  }
  #hashPub(proto: number, r: number, p: number, x: number, px: number): number {
    return fmix(mix(mix(mix(this.#seed ^ (proto << 8), r), x), (p << 16) | px));
  }
  #hashId(proto: number, a: number, pa: number, x: number, px: number): number {
    return fmix(mix(mix(mix(this.#seed ^ (proto << 16), a), x), (pa << 16) | px));
  }
  #hashEp(proto: number, a: number, pa: number): number {
    return fmix(mix(mix(this.#seed ^ (proto << 24), a), pa));
  }

  // ---------------------------------------------------------------- lookups (hot path)

  /**
   * The session an outbound packet belongs to: the driver sent it from `a`
   * to the gateway port `pg`. Returns the slot, or -1.
   */
  lookupLan(proto: number, a: number, pg: number): number {
    const idx = this.#lan;
    const b = idx.buckets;
    const m = idx.mask;
    const ap = this.#a;
    const gp = this.#pg;
    const pr = this.#proto;
    for (let i = this.#hashLan(proto, a, pg) & m;; i = (i + 1) & m) {
      const v = b[i]!;
      if (v === 0) return -1;
      const s = v - 1;
      if (gp[s] === pg && ap[s] === a && pr[s] === proto) return s;
    }
  }

  /**
   * The session an inbound packet `X:px -> R:p` belongs to. Returns the slot,
   * or -1: a peer with no session toward `R:p` is dropped (address-and-port-
   * dependent filtering).
   */
  lookupPublic(proto: number, r: number, p: number, x: number, px: number): number {
    const idx = this.#pub;
    const b = idx.buckets;
    const m = idx.mask;
    const xs = this.#x;
    const ps = this.#p;
    const pxs = this.#px;
    const rs = this.#r;
    const pr = this.#proto;
    for (let i = this.#hashPub(proto, r, p, x, px) & m;; i = (i + 1) & m) {
      const v = b[i]!;
      if (v === 0) return -1;
      const s = v - 1;
      if (xs[s] === x && ps[s] === p && pxs[s] === px && rs[s] === r && pr[s] === proto) return s;
    }
  }

  /** The session with request identity (proto, a, pa, X, px), or -1. */
  lookupIdentity(proto: number, a: number, pa: number, x: number, px: number): number {
    const idx = this.#id;
    const b = idx.buckets;
    const m = idx.mask;
    for (let i = this.#hashId(proto, a, pa, x, px) & m;; i = (i + 1) & m) {
      const v = b[i]!;
      if (v === 0) return -1;
      const s = v - 1;
      if (
        this.#x[s] === x && this.#pa[s] === pa && this.#px[s] === px && this.#a[s] === a &&
        this.#proto[s] === proto
      ) return s;
    }
  }

  /**
   * One session of the internal endpoint `a:pa` (the oldest live one), or -1.
   * With endpoint-independent mapping its `R:p` is the endpoint's public
   * mapping: what `dpm query` reports. The others follow through
   * {@link endpointNext}.
   */
  lookupEndpoint(proto: number, a: number, pa: number): number {
    const idx = this.#ep;
    const b = idx.buckets;
    const m = idx.mask;
    for (let i = this.#hashEp(proto, a, pa) & m;; i = (i + 1) & m) {
      const v = b[i]!;
      if (v === 0) return -1;
      const s = v - 1;
      if (this.#pa[s] === pa && this.#a[s] === a && this.#proto[s] === proto) return s;
    }
  }

  /**
   * The row a packet from `X:px` to `R:p` belongs to: the remote's own
   * session, else the inbound mapping that owns `R:p` for every remote
   * (there are no ICMP mappings); -1 when none.
   */
  lookupInbound(proto: number, r: number, p: number, x: number, px: number): number {
    const s = this.lookupPublic(proto, r, p, x, px);
    return s >= 0 ? s : this.lookupMapping(proto, r, p);
  }

  /** The inbound mapping that owns (proto, R, p) for every remote, or -1. */
  lookupMapping(proto: number, r: number, p: number): number {
    const s = this.lookupPublic(proto, r, p, 0, 0);
    return s >= 0 && (this.#flags[s]! & F_MAP) !== 0 ? s : -1;
  }

  /** The inbound mapping of internal endpoint (proto, a, pa), or -1. */
  lookupMapOf(proto: number, a: number, pa: number): number {
    const s = this.lookupIdentity(proto, a, pa, 0, 0);
    return s >= 0 && (this.#flags[s]! & F_MAP) !== 0 ? s : -1;
  }

  // ---------------------------------------------------------------- per-slot accessors

  /** IP protocol of slot `s`. */
  proto(s: number): number {
    return this.#proto[s]!;
  }
  /** Internal address of slot `s`. */
  a(s: number): number {
    return this.#a[s]!;
  }
  /** Internal port (or ICMP identifier) of slot `s`. */
  pa(s: number): number {
    return this.#pa[s]!;
  }
  /** Remote address of slot `s`. */
  x(s: number): number {
    return this.#x[s]!;
  }
  /** Remote port of slot `s`. */
  px(s: number): number {
    return this.#px[s]!;
  }
  /** Public address of slot `s`. */
  r(s: number): number {
    return this.#r[s]!;
  }
  /** Index in the pool of slot `s`'s public address. */
  poolIndex(s: number): number {
    return this.#ri[s]!;
  }
  /** Public port (or ICMP identifier) of slot `s`. */
  p(s: number): number {
    return this.#p[s]!;
  }
  /** Gateway LAN-side port of slot `s`. */
  pg(s: number): number {
    return this.#pg[s]!;
  }
  /** Expiry time of slot `s`, ms. */
  expiresAt(s: number): number {
    return this.#exp[s]!;
  }
  /** Lease granted to slot `s`, seconds. */
  lifetime(s: number): number {
    return this.#life[s]!;
  }
  /** True when slot `s` holds a session. */
  isLive(s: number): boolean {
    return s >= 0 && s < this.#hw && (this.#flags[s]! & F_LIVE) !== 0;
  }
  /** The host declared slot `s`'s internal port replaceable. */
  replaceable(s: number): boolean {
    return (this.#flags[s]! & F_REPLACEABLE) !== 0;
  }
  /** Slot `s`'s public port differs from its internal port. */
  replaced(s: number): boolean {
    return (this.#flags[s]! & F_REPLACED) !== 0;
  }
  /** Slot `s` was granted a public pair shared with another host. */
  shared(s: number): boolean {
    return (this.#flags[s]! & F_SHARED) !== 0;
  }
  /** Slot `s` is an inbound mapping (x, px and pg are 0). */
  isMap(s: number): boolean {
    return (this.#flags[s]! & F_MAP) !== 0;
  }
  /** Slot `s` is a direct session (`ReserveRequest.direct`). */
  direct(s: number): boolean {
    return (this.#flags[s]! & F_DIRECT) !== 0;
  }
  /**
   * Slot `s`'s host takes its packets from the remote's own pair, not from
   * `G:Pg`: an inbound mapping or a direct (PCP PEER) session, whose host
   * has no driver to undo `G:Pg`.
   */
  fromRemote(s: number): boolean {
    return (this.#flags[s]! & (F_MAP | F_DIRECT)) !== 0;
  }
  /** The next session of slot `s`'s internal endpoint ({@link lookupEndpoint}), or -1. */
  endpointNext(s: number): number {
    return this.#gnext[s]!;
  }
  /** Packets counted host -> remote on slot `s`. */
  packetsOut(s: number): number {
    return this.#out[s]!;
  }
  /** Packets counted remote -> host on slot `s`. */
  packetsIn(s: number): number {
    return this.#in[s]!;
  }

  /** Slot `s`'s addresses (`wire/tuple.ts`), as a new object. */
  binding(s: number): SessionBinding {
    return {
      proto: this.#proto[s]!,
      a: this.#a[s]!,
      pa: this.#pa[s]!,
      x: this.#x[s]!,
      px: this.#px[s]!,
      r: this.#r[s]!,
      p: this.#p[s]!,
      pg: this.#pg[s]!,
    };
  }

  /** Counts one packet on slot `s`. */
  count(s: number, outbound: boolean): void {
    if (outbound) this.#out[s]!++;
    else this.#in[s]!++;
  }

  /**
   * Extends slot `s`'s lease to `now` + its granted lifetime, if that is
   * later (RFC 4787 REQ-6 outbound refresh, for servers that refresh on
   * traffic rather than only on renew).
   */
  touch(s: number, now: number): void {
    const e = now + this.#life[s]! * 1000;
    if (e > this.#exp[s]!) this.#exp[s] = e;
  }

  // ---------------------------------------------------------------- all rows

  /** Number of live sessions. */
  get size(): number {
    return this.#size;
  }

  /** The slot of every live session, in slot order. Do not modify the table while iterating. */
  *slots(): IterableIterator<number> {
    for (let s = 0; s < this.#hw; s++) {
      if ((this.#flags[s]! & F_LIVE) !== 0) yield s;
    }
  }

  /** Bytes of the columns and the indexes. */
  protected get rowBytes(): number {
    return this.#cap * SLOT_BYTES + this.#lan.bytes + this.#pub.bytes + this.#id.bytes +
      this.#ep.bytes;
  }

  /** Gives live slot `s` a new lease. */
  protected setLease(s: number, expiresAt: number, lifetime: number): void {
    this.#exp[s] = expiresAt;
    this.#life[s] = lifetime;
  }

  /**
   * Calls `remove` for every live row with `expiresAt <= now` (it must drop
   * the row) and returns how many. Without `budget`, over every slot; with
   * it, over at most `budget` slots from where the previous budgeted call
   * stopped, wrapping around.
   */
  protected sweep(now: number, budget: number | undefined, remove: (s: number) => void): number {
    const exp = this.#exp;
    const flags = this.#flags;
    let removed = 0;
    if (budget === undefined) {
      for (let s = 0; s < this.#hw; s++) {
        if ((flags[s]! & F_LIVE) !== 0 && exp[s]! <= now) {
          remove(s);
          removed++;
        }
      }
      return removed;
    }
    let s = this.#sweepCursor;
    for (let n = Math.min(budget, this.#hw); n > 0; n--) {
      if (s >= this.#hw) s = 0;
      if ((flags[s]! & F_LIVE) !== 0 && exp[s]! <= now) {
        remove(s);
        removed++;
      }
      s++;
    }
    this.#sweepCursor = s;
    return removed;
  }

  /**
   * Stores `row` in a free slot and indexes it. The caller has checked that
   * its keys are free. Returns the slot.
   */
  protected addRow(row: Row): number {
    let s: number;
    if (this.#freeHead >= 0) {
      s = this.#freeHead;
      this.#freeHead = this.#gnext[s]!;
    } else {
      if (this.#hw === this.#cap) this.#resize(this.#cap * 2);
      s = this.#hw++;
    }
    const { proto, a, pa, x, px, p } = row;
    const r = this.#pool[row.ri]!;
    this.#proto[s] = proto;
    this.#flags[s] = row.flags;
    this.#a[s] = a;
    this.#pa[s] = pa;
    this.#x[s] = x;
    this.#px[s] = px;
    this.#r[s] = r;
    this.#ri[s] = row.ri;
    this.#p[s] = p;
    this.#pg[s] = row.pg;
    this.#exp[s] = row.expiresAt;
    this.#life[s] = row.lifetime;
    this.#out[s] = row.packetsOut;
    this.#in[s] = row.packetsIn;

    this.#id.insert(s, this.#hashId(proto, a, pa, x, px));
    if ((row.flags & F_MAP) === 0) this.#lan.insert(s, this.#hashLan(proto, a, row.pg));
    this.#pub.insert(s, this.#hashPub(proto, r, p, x, px));

    // Endpoint list: a new endpoint heads its own list; otherwise the session
    // goes right after the head, so the head (the index entry) stays put.
    const head = this.lookupEndpoint(proto, a, pa);
    if (head < 0) {
      this.#gprev[s] = -1;
      this.#gnext[s] = -1;
      this.#ep.insert(s, this.#hashEp(proto, a, pa));
    } else {
      const nx = this.#gnext[head]!;
      this.#gprev[s] = head;
      this.#gnext[s] = nx;
      this.#gnext[head] = s;
      if (nx >= 0) this.#gprev[nx] = s;
    }
    this.#size++;
    return s;
  }

  /** Takes live slot `s` out of the indexes and frees it. */
  protected dropRow(s: number): void {
    const proto = this.#proto[s]!;
    const a = this.#a[s]!;
    const pa = this.#pa[s]!;
    const x = this.#x[s]!;
    const px = this.#px[s]!;
    this.#id.remove(s, this.#hashId(proto, a, pa, x, px));
    if ((this.#flags[s]! & F_MAP) === 0) this.#lan.remove(s, this.#hashLan(proto, a, this.#pg[s]!));
    this.#pub.remove(s, this.#hashPub(proto, this.#r[s]!, this.#p[s]!, x, px));

    const prev = this.#gprev[s]!;
    const next = this.#gnext[s]!;
    if (prev < 0) {
      const h = this.#hashEp(proto, a, pa);
      if (next < 0) this.#ep.remove(s, h);
      else {
        this.#ep.replace(s, next, h);
        this.#gprev[next] = -1;
      }
    } else {
      this.#gnext[prev] = next;
      if (next >= 0) this.#gprev[next] = prev;
    }

    this.#flags[s] = 0;
    this.#gnext[s] = this.#freeHead;
    this.#freeHead = s;
    this.#size--;
  }

  #resize(cap: number): void {
    this.#proto = grown(this.#proto, new Uint8Array(cap));
    this.#flags = grown(this.#flags, new Uint8Array(cap));
    this.#a = grown(this.#a, new Uint32Array(cap));
    this.#pa = grown(this.#pa, new Uint16Array(cap));
    this.#x = grown(this.#x, new Uint32Array(cap));
    this.#px = grown(this.#px, new Uint16Array(cap));
    this.#r = grown(this.#r, new Uint32Array(cap));
    this.#ri = grown(this.#ri, new Uint16Array(cap));
    this.#p = grown(this.#p, new Uint16Array(cap));
    this.#pg = grown(this.#pg, new Uint16Array(cap));
    this.#exp = grown(this.#exp, new Float64Array(cap));
    this.#life = grown(this.#life, new Uint32Array(cap));
    this.#out = grown(this.#out, new Float64Array(cap));
    this.#in = grown(this.#in, new Float64Array(cap));
    this.#gnext = grown(this.#gnext, new Int32Array(cap));
    this.#gprev = grown(this.#gprev, new Int32Array(cap));
    this.#cap = cap;
  }
}
