/**
 * The gateway's session table: sessions indexed from the LAN side and from
 * the public side, the allocation policy that picks a public pair, and the
 * expiry sweep (claims 7-10 and 21-23). {@link SessionTable} is the one
 * entry point; its parts live beside it.
 *
 * # Theory of operation
 *
 * Names follow the packet walk in README.md ("How it works"). A host `a:pa` (private) talks to
 * a remote peer `X:px` (outside). The server gives the session a public pair
 * `R:p` from the pool and a gateway port `Pg`; the driver sends the
 * session's packets to `G:Pg`, the server forwards them as `R:p -> X:px`, and
 * replies `X:px -> R:p` go back as `G:Pg -> a:pa`. For ICMP echo, `pa` and `p`
 * are echo identifiers and `px` is 0.
 *
 * The parts, each with the documentation of what it does:
 *
 * - `storage.ts`: the rows (a struct of typed arrays), the four slot
 *   indexes, the packet path's lookups and accessors ("Rows", "Indexes",
 *   "Filtering").
 * - `allocate.ts`: the policy of `reserve` and `map` ("Allocation policy",
 *   "Mappings", "Direct sessions").
 * - `ports.ts`: which public pairs are sent from, and how many are busy.
 * - `holds.ts`: freed ports held back from other hosts, RFC 6888 REQ-8 (the
 *   queue and the clock, "Port hold").
 * - `hosts.ts`: rows per host, and the host's paired address.
 * - `owners.ts`: who made a row, and the budgets of unverified rows
 *   ("Owners").
 * - `records.ts`: a row as a plain object, and restoring one.
 * - `options.ts`: the options, checked once; lease lengths ("Lifetimes").
 * - `hashmap.ts`: the typed-array hash structures under all of them.
 *
 * `SessionTable` extends `SessionStore` (storage.ts) rather than holding
 * one, so that `lookupLan` and `lookupPublic` run their probe loops on the
 * table object's own arrays; the other parts are objects it holds. Every
 * row enters through `#insert` and leaves through `#remove`, which keep the
 * parts' counts in step and tell the subscribers ({@link TableSubscriber}).
 *
 * ## Expiry
 *
 * Lookups do not look at the clock: a session lives until `expire(now)`
 * removes it (`now >= expiresAt`). `expire(now)` sweeps all slots in one pass;
 * `expire(now, budget)` scans at most `budget` slots from where the previous
 * call stopped, so a server can spread the sweep of a million sessions over
 * many event-loop turns (measured on a 2-core machine at 1M sessions: a full
 * pass that finds nothing takes about 4 ms; removing costs about 2 us per
 * session, so a sweep that expires 100k sessions at once blocks for about
 * 190 ms, while a 4096-slot step costs at most about 8 ms; see
 * bench/table_bench.ts). `touch(s, now)` extends a lease on traffic (RFC 4787
 * REQ-6 outbound refresh) for servers that want it. Lease lengths: "Lifetimes"
 * in `options.ts`.
 *
 * @module
 */

import { protoIndex } from "../wire/meta.ts";
import { Result } from "../control/result.ts";
import { Allocator, type MapRequest, type NewRow, type ReserveRequest } from "./allocate.ts";
import { HostCounts } from "./hosts.ts";
import { grantedLifetime, type TableConfig, tableConfig, type TableOptions } from "./options.ts";
import { type OwnerKind, Owners } from "./owners.ts";
import { PublicPorts } from "./ports.ts";
import { recordOf, restoredRow, type SessionRecord } from "./records.ts";
import { SessionStore } from "./storage.ts";

/** The IP protocols the table accepts (defined once, in wire/meta.ts). */
export {
  IPPROTO_ICMP as PROTO_ICMP,
  IPPROTO_TCP as PROTO_TCP,
  IPPROTO_UDP as PROTO_UDP,
} from "../wire/meta.ts";
export { inRanges, type MapRequest, type PortFilter, type ReserveRequest } from "./allocate.ts";
export type { Lifetimes, TableOptions } from "./options.ts";
export {
  DESCRIPTION_MAX,
  isUnverified,
  NONCE_LEN,
  Owner,
  OWNER_NAMES,
  ownerByName,
  type OwnerKind,
  type OwnerName,
} from "./owners.ts";
export type { SessionRecord } from "./records.ts";

/** The answer to reserve and renew. */
export interface Grant {
  /** A {@link Result} code. */
  result: number;
  /** Session slot, or -1 when `result` is not OK. */
  session: number;
  /** Public address (0 on failure). */
  r: number;
  /** Public port or identifier (0 on failure). */
  p: number;
  /** Gateway LAN-side port (0 on failure). */
  pg: number;
  /** Lease granted, in seconds (0 on failure). */
  lifetime: number;
  /** True when `p` differs from the internal port. */
  replaced: boolean;
  /** True when `R:p` is shared with another host's session, told apart by the remote. */
  shared: boolean;
}

function failure(result: number): Grant {
  return { result, session: -1, r: 0, p: 0, pg: 0, lifetime: 0, replaced: false, shared: false };
}

/**
 * Told when sessions come and go, and when a lease changes: the one route
 * of session changes out of the table (the data path programs the kernel
 * from it, the state file writes it, the operator's views count it).
 * Called synchronously, in subscription order: `added` after the session
 * is in the table (so a grant is answered only after every subscriber
 * returned), `renewed` after its lease changed (a renewal, or a repeated
 * grant or mapping request), `removed` before it leaves (its fields are
 * still readable through the slot accessors).
 */
export interface TableSubscriber {
  added?(s: number): void;
  renewed?(s: number): void;
  removed?(s: number): void;
}

/**
 * The session table. See the module documentation for the theory of
 * operation. Slots returned by lookups stay valid until the session is
 * released or expired; the per-slot accessors are meant for the packet path
 * and never allocate.
 *
 * @example
 * ```ts
 * const t = new SessionTable({ pool: [0xc6336401] }); // 198.51.100.1
 * const g = t.reserve({ proto: 17, a: 0x0a000002, pa: 5060, x: 0xcb007107, px: 5060,
 *   replaceable: false, lifetime: 0 }, 0);
 * t.lookupPublic(17, g.r, g.p, 0xcb007107, 5060) === g.session; // true
 * t.lookupLan(17, 0x0a000002, g.pg) === g.session;               // true
 * ```
 */
export class SessionTable extends SessionStore {
  /** Who is told of session changes, in subscription order ({@linkcode subscribe}). */
  #subs: TableSubscriber[] = [];
  readonly #cfg: TableConfig;
  readonly #ports: PublicPorts;
  readonly #hosts: HostCounts;
  readonly #owners: Owners;
  readonly #policy: Allocator;
  /** `#remove`, bound once for the sweep. */
  readonly #removeSlot = (s: number) => this.#remove(s);

  /** Builds an empty table. Throws RangeError on bad options. */
  constructor(opts: TableOptions) {
    const cfg = tableConfig(opts);
    super(cfg);
    this.#cfg = cfg;
    this.#ports = new PublicPorts(cfg);
    this.#hosts = new HostCounts(cfg.seed);
    this.#owners = new Owners(cfg, cfg.seed, cfg.initialCapacity);
    this.#policy = new Allocator(cfg, this, this.#ports, this.#hosts, this.#owners);
  }

  /**
   * Tells `sub` of every session added, renewed or removed from now on.
   * Returns the function that stops it.
   */
  subscribe(sub: TableSubscriber): () => void {
    this.#subs = [...this.#subs, sub];
    return () => {
      this.#subs = this.#subs.filter((x) => x !== sub);
    };
  }

  // ---------------------------------------------------------------- owners

  /** Who created slot `s` ({@linkcode Owner}). */
  owner(s: number): OwnerKind {
    return this.#owners.owner(s);
  }
  /** Slot `s` was created with PCP nonce `nonce` (12 bytes). */
  nonceIs(s: number, nonce: Uint8Array): boolean {
    return this.#owners.nonceIs(s, nonce);
  }
  /** The PCP nonce of slot `s` (zeros when it has none). */
  nonceOf(s: number): Uint8Array {
    return this.#owners.nonceOf(s);
  }
  /**
   * Gives live slot `s` a new owner (and nonce): an ADOPTED row that a
   * protocol speaks for again (`src/policy/`). Keeps the budgets exact.
   */
  claim(s: number, owner: OwnerKind, nonce?: Uint8Array): void {
    const a = this.a(s);
    const pi = protoIndex(this.proto(s));
    this.#owners.clear(s, a, pi);
    this.#owners.set(s, a, pi, { owner, nonce });
  }

  /** What slot `s` is for (a UPnP mapping's description); "" when none was given. */
  description(s: number): string {
    return this.#owners.description(s);
  }

  /**
   * Sets what live slot `s` is for ("" removes it; longer than
   * {@linkcode DESCRIPTION_MAX} is cut). The subscribers learn it with the
   * next renewal; `map` with a description does both at once.
   */
  setDescription(s: number, text: string): void {
    this.#owners.setDescription(s, text);
  }

  /** Unverified rows (PCP, NAT-PMP) held by internal address `a`. */
  unverifiedOf(a: number): number {
    return this.#owners.unverifiedOf(a);
  }

  /** UPnP rows held by internal address `a`. */
  upnpOf(a: number): number {
    return this.#owners.upnpOf(a);
  }

  /** Unverified rows of IP protocol `proto`, all hosts. */
  unverifiedCount(proto: number): number {
    const pi = protoIndex(proto);
    return pi < 0 ? 0 : this.#owners.unverifiedCount(pi);
  }

  /**
   * The slots of host `a`'s unverified rows (PCP, NAT-PMP), newest first,
   * as an array (so the caller may release them while walking it).
   */
  unverifiedRows(a: number): number[] {
    return this.#owners.unverifiedRows(a);
  }

  // ---------------------------------------------------------------- sizes

  /** Sessions held by internal address `a`, all protocols. */
  sessionsOf(a: number): number {
    return this.#hosts.total(a);
  }

  /** Number of sessions sending from (proto, R, p); 0 when unused or not a pool address. */
  portUsers(proto: number, r: number, p: number): number {
    const pi = protoIndex(proto);
    const ri = this.#cfg.poolIndex.get(r);
    return pi < 0 || ri === undefined ? 0 : this.#ports.users(pi, ri, p);
  }

  /**
   * The host a freed public port (proto, R, p) is held for (RFC 6888
   * REQ-8), or -1 when it is not held (in use, never used, or its hold
   * ended), as of the last call that passed a clock.
   */
  heldFor(proto: number, r: number, p: number): number {
    const pi = protoIndex(proto);
    const ri = this.#cfg.poolIndex.get(r);
    return pi < 0 || ri === undefined ? -1 : this.#ports.heldFor(pi, ri, p);
  }

  /** Number of freed public ports currently held (all protocols). */
  get heldPorts(): number {
    return this.#ports.held;
  }

  /** True when `addr` is one of the pool's public addresses. */
  isPoolAddress(addr: number): boolean {
    return this.#cfg.poolIndex.has(addr);
  }

  /** The pool, in configuration order. */
  get pool(): readonly number[] {
    return Array.from(this.#cfg.pool);
  }

  /**
   * The pool address host `a` is paired with (every session of the host uses
   * it), or -1 when the host holds no session or pooling is "arbitrary".
   */
  pairedAddress(a: number): number {
    const ri = this.#policy.pairOf(a);
    return ri < 0 ? -1 : this.#cfg.pool[ri]!;
  }

  /**
   * The public address host `a` is told it has (NAT-PMP's external address):
   * its paired address while it holds sessions, else its home address, where
   * its first session or mapping would go.
   */
  externalAddressOf(a: number): number {
    const r = this.pairedAddress(a);
    return r >= 0 ? r : this.#cfg.pool[this.#policy.home(a)]!;
  }

  /** The lease that a request for `lifetime` seconds gets (0 = default). */
  grantedLifetime(proto: number, lifetime: number): number {
    return grantedLifetime(this.#cfg, proto, lifetime);
  }

  /** Bytes held by the table's typed arrays (not counting the JS objects around them). */
  get bytes(): number {
    return this.rowBytes + this.#owners.bytes + this.#ports.bytes + this.#hosts.bytes;
  }

  // ---------------------------------------------------------------- requests

  /**
   * Reserves a public pair for a session (see "Allocation policy" in
   * allocate.ts). Returns a grant whose `result` is OK, or
   * UNSUPPORTED_PROTOCOL, MALFORMED (port out of range), QUOTA_EXCEEDED, NO_RESOURCES or CONFLICT.
   *
   * @param now the caller's clock, ms.
   */
  reserve(req: ReserveRequest, now: number): Grant {
    const { proto, a, pa, x, px } = req;
    const pi = protoIndex(proto);
    if (pi < 0) return failure(Result.UNSUPPORTED_PROTOCOL);
    if (
      !Number.isInteger(pa) || !Number.isInteger(px) || pa < 0 || pa > 65535 || px < 0 ||
      px > 65535 || (pi !== 0 && (pa === 0 || px === 0)) ||
      !Number.isInteger(a) || !Number.isInteger(x) || a < 0 || x < 0 || a > 0xffffffff ||
      x > 0xffffffff || !(req.lifetime >= 0)
    ) return failure(Result.MALFORMED);
    // A remote inside the pool is another session's public pair: that is
    // hairpinning, which the server translates twice (server.ts).
    const life = this.grantedLifetime(proto, req.lifetime);
    this.#ports.clock(now);
    // 1. Idempotence.
    const held = this.lookupIdentity(proto, a, pa, x, px);
    if (held >= 0) return this.#renewed(held, life, now);
    return this.#create(this.#policy.session(req, pi, life, now));
  }

  /**
   * Extends a held session's lease to `now + lifetime` (0 = default).
   * Returns NO_SUCH_SESSION when (proto, a, pa, X, px) is not held.
   */
  renew(
    proto: number,
    a: number,
    pa: number,
    x: number,
    px: number,
    lifetime: number,
    now: number,
  ): Grant {
    this.#ports.clock(now);
    const s = this.lookupIdentity(proto, a, pa, x, px);
    if (s < 0) return failure(Result.NO_SUCH_SESSION);
    return this.#renewed(s, this.grantedLifetime(proto, lifetime), now);
  }

  /**
   * Creates or refreshes an inbound mapping (PCP MAP, NAT-PMP map; see
   * "Mappings" in allocate.ts): every remote's packets to the
   * returned `R:p` go to `a:pa`. The same (proto, a, pa) already mapped gets
   * its mapping back with the lease refreshed (the suggestion is ignored).
   * Returns OK, UNSUPPORTED_PROTOCOL (not TCP/UDP), MALFORMED, QUOTA_EXCEEDED,
   * NO_RESOURCES, or CONFLICT when `preferFailure` and the suggested pair
   * cannot be had. `pg` of the grant is 0.
   */
  map(req: MapRequest, now: number): Grant {
    const { proto, a, pa } = req;
    const pi = protoIndex(proto);
    if (pi <= 0) return failure(Result.UNSUPPORTED_PROTOCOL);
    if (
      !Number.isInteger(pa) || pa < 1 || pa > 65535 || !Number.isInteger(req.p) || req.p < 0 ||
      req.p > 65535 || !Number.isInteger(a) || a < 0 || a > 0xffffffff || !(req.lifetime >= 0)
    ) return failure(Result.MALFORMED);
    const life = this.grantedLifetime(proto, req.lifetime);
    this.#ports.clock(now);
    const held = this.lookupIdentity(proto, a, pa, 0, 0);
    if (held >= 0) {
      if (req.description !== undefined) this.setDescription(held, req.description);
      return this.#renewed(held, life, now);
    }
    return this.#create(this.#policy.mapping(req, pi, life, now));
  }

  /**
   * Removes a held session. Returns OK, or NO_SUCH_SESSION. `now` (ms) starts
   * the hold of a port this frees (RFC 6888 REQ-8); without it the hold
   * starts at the next call that passes a clock (reserve, renew, expire),
   * which is never earlier than the release.
   */
  release(proto: number, a: number, pa: number, x: number, px: number, now?: number): number {
    const s = this.lookupIdentity(proto, a, pa, x, px);
    return this.releaseSlot(s, now) ? Result.OK : Result.NO_SUCH_SESSION;
  }

  /**
   * Removes the session in slot `s` (e.g. on TCP RST). Returns false when `s`
   * is not live. `now` as in {@link release}.
   */
  releaseSlot(s: number, now?: number): boolean {
    if (!this.isLive(s)) return false;
    this.#remove(s);
    if (now !== undefined) this.#ports.clock(now);
    return true;
  }

  /**
   * Removes every session with `expiresAt <= now` and frees its public port
   * and Pg. Returns how many were removed.
   *
   * Without `budget` this sweeps every slot in one pass. With `budget` it
   * scans at most that many slots, continuing from where the previous
   * budgeted call stopped and wrapping around, so that repeated calls cover
   * the whole table in `ceil(slots / budget)` steps without blocking the
   * event loop for long.
   */
  expire(now: number, budget?: number): number {
    this.#ports.clock(now);
    const removed = this.sweep(now, budget, this.#removeSlot);
    this.#ports.clock(now);
    return removed;
  }

  // ---------------------------------------------------------------- records

  /** The record of live slot `s`. */
  record(s: number): SessionRecord {
    return recordOf(this, s);
  }

  /** Every live session, in slot order. Do not modify the table while iterating. */
  *entries(): IterableIterator<SessionRecord> {
    for (const s of this.slots()) yield this.record(s);
  }

  /**
   * Re-inserts a session from the state file. Returns OK, UNSUPPORTED_PROTOCOL,
   * MALFORMED, or CONFLICT when `r` is not in the pool or the record clashes
   * with a live session (same identity, LAN key or public key). The quota is
   * not applied: the session was granted before. Expired records are
   * accepted; the next `expire(now)` removes them.
   */
  restore(rec: SessionRecord): number {
    const row = restoredRow(rec, this.#cfg, this, this.#policy);
    if (typeof row === "number") return row;
    this.#insert(row);
    return Result.OK;
  }

  // ---------------------------------------------------------------- internals

  /** Leases live slot `s` `lifetime` seconds from `now`, tells the subscribers, grants it. */
  #renewed(s: number, lifetime: number, now: number): Grant {
    this.setLease(s, now + lifetime * 1000, lifetime);
    for (const sub of this.#subs) sub.renewed?.(s);
    return this.#grant(s);
  }

  /** Stores the row the policy decided on, or fails with its result. */
  #create(row: NewRow | number): Grant {
    return typeof row === "number" ? failure(row) : this.#grant(this.#insert(row));
  }

  #grant(s: number): Grant {
    return {
      result: Result.OK,
      session: s,
      r: this.r(s),
      p: this.p(s),
      pg: this.pg(s),
      lifetime: this.lifetime(s),
      replaced: this.replaced(s),
      shared: this.shared(s),
    };
  }

  /** Stores `row`, counts it in every part, tells the subscribers. Returns its slot. */
  #insert(row: NewRow): number {
    const s = this.addRow(row);
    const pi = protoIndex(row.proto);
    this.#ports.take(pi, row.ri, row.p);
    this.#hosts.add(row.a, pi, row.ri);
    this.#owners.set(s, row.a, pi, row);
    for (const sub of this.#subs) sub.added?.(s);
    return s;
  }

  /** Tells the subscribers, then takes live slot `s` out of every part. */
  #remove(s: number): void {
    for (const sub of this.#subs) sub.removed?.(s);
    const a = this.a(s);
    const pi = protoIndex(this.proto(s));
    const ri = this.poolIndex(s);
    this.#owners.remove(s, a, pi);
    this.#ports.leave(pi, ri, this.p(s), a);
    this.#hosts.remove(a, pi, ri);
    this.dropRow(s);
  }
}
