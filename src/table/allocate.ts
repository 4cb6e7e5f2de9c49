/**
 * The allocation policy: which public pair `R:p` (and gateway port `Pg`) a
 * new session or an inbound mapping gets (claims 8-10 and 22-23). The
 * table (`table.ts`) answers a repeated request itself (step 1) and stores
 * the row this module decides.
 *
 * ## Allocation policy (`reserve`)
 *
 * 1. The same (proto, a, pa, X, px) is already held: the same session is
 *    returned with its lifetime refreshed, so a retransmitted request gets the
 *    same answer.
 * 2. Quota: a host may hold `maxSessionsPerHost` sessions (QUOTA_EXCEEDED;
 *    the budgets are in `owners.ts`); a host that already uses every `Pg`
 *    for this protocol gets NO_RESOURCES. Paired pooling (default, RFC 6888
 *    REQ-2, RFC 4787 REQ-2, RFC 7857 section 5): a host that holds any
 *    session, of any protocol, is *paired* with that session's public
 *    address (`hosts.ts`), and steps 4-6 only consider that address; a host
 *    with no session considers the whole pool, from its home address on.
 *    With `pooling: "arbitrary"` every request considers the whole pool.
 * 3. Endpoint-independent mapping (RFC 4787 REQ-1): when `a:pa` already has a
 *    session, its `R:p` is reused toward the new remote if (R, p, X, px) is
 *    free. A fixed-port request reuses it only when `p == pa`, or when it is
 *    an inbound mapping's pair (a mapped endpoint answers from its mapping).
 * 4. Port preservation: the first considered pool address, in an order that
 *    starts at `hash(a) mod poolSize` (spreads hosts), where (proto, R, pa)
 *    is unused and not held for another host (`holds.ts`) gets `R:pa`,
 *    exclusively. Replaceable requests of an unpaired host try only a few
 *    addresses here, since any port will do for them.
 * 5. Replaceable: a random port in [portMin, portMax] (RFC 6056 style, not
 *    sequential) on a considered address where (proto, R, p) is unused and
 *    not held at all; the session is flagged `replaced`. No such pair:
 *    NO_RESOURCES. This is claim 23: two hosts asking for the same internal
 *    port get different public ports, and the replaced port tells the
 *    sessions apart.
 * 6. Fixed port not preservable: the first considered address R (same order
 *    as 4) where no session holds (R, pa, X, px). When R:pa is in use it is
 *    shared with its users; packets are told apart by the remote endpoint
 *    (claims 8-10, 22), and the session is flagged `shared`. At least one
 *    side of a shared pair is the fixed-port requester, so two replaceable
 *    requests never share (claim 8). When R:pa is unused it is held for
 *    another host, and a fixed port has nowhere else to go: it is taken
 *    (RFC 6888 REQ-8 exception c, filtering here is address-and-port
 *    dependent). Every considered R already bound to X:px: CONFLICT.
 *
 * With a port slice (`TableOptions.slice`, `dpm server --workers`,
 * `slice.ts`), [portMin, portMax] is the slice's part of the range, and
 * steps 4 and 6 and every mapping take only ports of the slice: a fixed
 * port of another worker's slice gets CONFLICT here (that worker's hosts
 * may have it), so no two workers ever hold the same (proto, R, p).
 *
 * ## Mappings (PCP and NAT-PMP MAP)
 *
 * An inbound mapping (`map`) is a row like a session with `x = px = 0`, no
 * `Pg` (0, not in the LAN index) and a flag: its identity key is
 * (proto, a, pa, 0, 0) and its public key (proto, R, p, 0, 0), so
 * `lookupPublic` (exact) never confuses it with a session and
 * `lookupMapping(proto, R, p)` finds it with one probe. It counts as one
 * session for the host's quota, pairing and port use count, and heads or
 * joins its endpoint's list like any session, so later sessions of the same
 * endpoint reuse its `R:p` (endpoint-independent mapping). A mapping **owns
 * (proto, R, p) for every remote**: it is only created on a pair whose every
 * user is a session of the same internal endpoint (else the suggested port
 * moves: the endpoint's own pair, then a random free port), and no session
 * of another endpoint ever joins a mapped pair (step 6 skips it; steps 4
 * and 5 only take unused ports; step 3 only the endpoint's own pair). So
 * inbound packets toward a mapped pair from a remote with a session of its
 * own go to that session, which is the same endpoint, and all others go to
 * the mapping. A port policy (`MapRequest.ports`, `src/policy/`) narrows
 * every pair a mapping may take.
 *
 * ## Direct sessions (PCP PEER)
 *
 * A session reserved with `direct` (PCP PEER, `src/pcp/server.ts`) is an
 * ordinary row with a `Pg`, flagged: its host may have no driver, so its
 * packets come to the gateway addressed to `X:px` and inbound packets must
 * reach it from `X:px`, not from `G:Pg` (`direct(s)`; the queue data path
 * reads it, the kernel path needs no flag). The flag is set only when the row
 * is created: a PEER for a session a driver already holds leaves it a driver
 * session.
 *
 * @module
 */

import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/meta.ts";
import type { SessionIdentity } from "../wire/tuple.ts";
import { Result } from "../control/result.ts";
import { fmix } from "./hashmap.ts";
import type { HostCounts } from "./hosts.ts";
import type { TableConfig } from "./options.ts";
import { type Owned, Owner, type OwnerKind, type Owners } from "./owners.ts";
import type { PublicPorts } from "./ports.ts";
import { type Row, rowFlags, type SessionStore } from "./storage.ts";

/** How hard each search tries before it settles or scans. */
const TRIES = {
  /** Pool addresses tried for port preservation by a replaceable request. */
  preserveReplaceable: 4,
  /** Random probes before a replacement-port search falls back to a scan. */
  randomPort: 64,
  /** Random probes that stay on the host's home address before roaming. */
  randomPortHome: 16,
  /** Random probes for a free Pg before scanning the range. */
  randomPg: 32,
  /** Addresses tried for a mapping's suggested port before the endpoint's own pair. */
  suggested: 8,
} as const;

/** A reservation request, as the server decoded it: the identity it names, and how. */
export interface ReserveRequest extends SessionIdentity {
  /** True when the internal port may be replaced (an ephemeral port). */
  replaceable: boolean;
  /** Requested lease in seconds; 0 asks for the protocol's default. */
  lifetime: number;
  /**
   * A direct session (PCP PEER): the host has no driver, its packets reach
   * the gateway addressed to the remote itself and inbound ones are
   * delivered from the remote's own pair. Set only when the session is
   * created (an idempotent repeat keeps the row as it was).
   */
  direct?: boolean;
  /** Who asks (kept in a new row; decides its budget). @default Owner.DPM */
  owner?: OwnerKind;
  /**
   * The gateway port the driver proposes (protocol version 3): granted when
   * it lies in the drivers' share and (proto, a) uses it for no other
   * session; otherwise the table picks one. @default none
   */
  pg?: number;
  /**
   * The table may pick Pg anywhere in the range, the drivers' share too (a
   * version-2 driver, which never proposes). @default false: below the
   * drivers' share only
   */
  pgAnywhere?: boolean;
  /** PCP's mapping nonce (`NONCE_LEN` bytes), kept in a new row. */
  nonce?: Uint8Array;
}

/** An inbound mapping request (PCP MAP, NAT-PMP map). */
export interface MapRequest {
  /** 6 (TCP) or 17 (UDP). */
  proto: number;
  /** Internal address. */
  a: number;
  /** Internal port (1..65535). */
  pa: number;
  /** Suggested public port; 0: any. */
  p: number;
  /** Suggested public address; 0: any (ignored when not in the pool). */
  r: number;
  /** Requested lease in seconds (0: the protocol's default). */
  lifetime: number;
  /** Only the suggested pair will do (PCP PREFER_FAILURE): else CONFLICT. */
  preferFailure?: boolean;
  /** Who asks (kept in a new row; decides its budget). @default Owner.DPM */
  owner?: OwnerKind;
  /** PCP's mapping nonce (`NONCE_LEN` bytes), kept in a new row. */
  nonce?: Uint8Array;
  /**
   * What the mapping is for (UPnP's NewPortMappingDescription), kept with
   * the row and replaced by a renewal that gives one; at most
   * `DESCRIPTION_MAX` characters (longer is cut).
   */
  description?: string;
  /**
   * The public ports a new mapping may take (the port policy,
   * `src/policy/`): every pair the allocator considers, the suggested one
   * included, must be inside `ranges` and `usable`. Absent: any port.
   */
  ports?: PortFilter;
}

/** Which public pairs a new mapping may take (`MapRequest.ports`). */
export interface PortFilter {
  /** Allowed public ports, as sorted, disjoint, inclusive ranges. */
  ranges: readonly (readonly [number, number])[];
  /** False for a pair that must not be taken (a gateway socket holds it, say). */
  usable(r: number, p: number): boolean;
}

/** `p` lies in one of the sorted, disjoint, inclusive `ranges`. */
export function inRanges(ranges: readonly (readonly [number, number])[], p: number): boolean {
  for (const [lo, hi] of ranges) {
    if (p < lo) return false;
    if (p <= hi) return true;
  }
  return false;
}

/** A row to store: its fields and its owner. */
export type NewRow = Row & Owned;

/** The policy of reserve and map (see the module documentation). */
export class Allocator {
  readonly #cfg: TableConfig;
  readonly #rows: SessionStore;
  readonly #ports: PublicPorts;
  readonly #hosts: HostCounts;
  readonly #owners: Owners;
  /** [portMin, portMax]: the replacement ports when no port policy narrows them. */
  readonly #allPorts: Ranges;

  constructor(
    cfg: TableConfig,
    rows: SessionStore,
    ports: PublicPorts,
    hosts: HostCounts,
    owners: Owners,
  ) {
    this.#cfg = cfg;
    this.#rows = rows;
    this.#ports = ports;
    this.#hosts = hosts;
    this.#owners = owners;
    this.#allPorts = [[cfg.portMin, cfg.portMax]];
  }

  /** The host's first pool address: stable across restarts, spreads hosts. */
  home(a: number): number {
    return fmix(a) % this.#cfg.pool.length;
  }

  /** The pool index host `a` is paired with (paired pooling), or -1. */
  pairOf(a: number): number {
    return this.#cfg.paired ? this.#hosts.paired(a) : -1;
  }

  /**
   * Steps 2-6 for a request that step 1 did not answer: the new session's
   * row (leased for `lifetime` seconds from `now`), or QUOTA_EXCEEDED,
   * NO_RESOURCES or CONFLICT. `pi` is the protocol's index.
   */
  session(req: ReserveRequest, pi: number, lifetime: number, now: number): NewRow | number {
    const { proto, a, pa, x, px } = req;
    const owner = req.owner ?? Owner.DPM;
    const quota = this.#quota(a, pi, owner);
    if (quota !== Result.OK) return quota;
    const cfg = this.#cfg;
    if (this.#hosts.ofProto(a, pi) >= cfg.pgMax - cfg.pgMin + 1) return Result.NO_RESOURCES;
    const pair = this.pairOf(a);
    const P = cfg.pool.length;
    const home = this.home(a);
    const rows = this.#rows;
    let ri = -1;
    let p = 0;
    let shared = false;

    // 3. Endpoint-independent mapping. A mapped endpoint's sessions take the
    // mapping's pair whatever its port (fixed or not): the mapping owns it for
    // the endpoint, and a remote that came in through it must hear back from it.
    const mapped = rows.lookupMapOf(proto, a, pa);
    const first = mapped >= 0 ? mapped : rows.lookupEndpoint(proto, a, pa);
    if (first >= 0) {
      const fp = rows.p(first);
      if (
        (mapped >= 0 || req.replaceable || fp === pa) &&
        rows.lookupPublic(proto, rows.r(first), fp, x, px) < 0
      ) {
        ri = rows.poolIndex(first);
        p = fp;
        shared = rows.shared(first);
      }
    }

    // 4. Port preservation, exclusive, on a port neither used nor held for another host.
    if (ri < 0) {
      const n = pair >= 0 ? 1 : req.replaceable ? Math.min(P, TRIES.preserveReplaceable) : P;
      for (let k = 0; k < n && ri < 0; k++) {
        const i = pair >= 0 ? pair : (home + k) % P;
        if (this.#cfg.owns(pa) && this.#ports.availableTo(pi, i, pa, a)) ri = i;
      }
      if (ri >= 0) p = pa;
    }

    if (ri < 0) {
      if (req.replaceable) {
        // 5. Replacement port.
        const c = this.#randomPort(pi, home, pair, undefined);
        if (c < 0) return Result.NO_RESOURCES;
        ri = Math.floor(c / 65536);
        p = c % 65536;
      } else {
        // 6. Share R:pa, told apart by the remote endpoint; or take R:pa while it
        // is held for another host (RFC 6888 REQ-8 exception c: filtering is
        // address-and-port dependent, so the new session only ever receives
        // from its own remote).
        for (let k = 0; k < (pair >= 0 ? 1 : P) && ri < 0; k++) {
          const i = pair >= 0 ? pair : (home + k) % P;
          const r = cfg.pool[i]!;
          if (
            cfg.owns(pa) && rows.lookupPublic(proto, r, pa, x, px) < 0 &&
            !this.mappedByOther(proto, r, pa, a, pa)
          ) {
            ri = i;
          }
        }
        if (ri < 0) return Result.CONFLICT;
        p = pa;
        shared = this.#ports.used(pi, ri, pa);
      }
    }
    const pg = this.#freeGatewayPort(proto, a, req.pg ?? 0, req.pgAnywhere ?? false);
    if (pg < 0) return Result.NO_RESOURCES;
    const flags = rowFlags({
      replaceable: req.replaceable,
      replaced: p !== pa,
      shared,
      map: false,
      direct: req.direct === true,
    });
    return newRow(req, { x, px, ri, p, pg, flags }, lifetime, now);
  }

  /**
   * A new inbound mapping's row (see "Mappings"), or QUOTA_EXCEEDED,
   * NO_RESOURCES, or CONFLICT when `preferFailure` and the suggested pair
   * cannot be had.
   */
  mapping(req: MapRequest, pi: number, lifetime: number, now: number): NewRow | number {
    const { a, pa } = req;
    const quota = this.#quota(a, pi, req.owner ?? Owner.DPM);
    if (quota !== Result.OK) return quota;
    const pair = this.pairOf(a);
    const pool = this.#cfg.pool;
    const P = pool.length;
    const home = this.home(a);
    // Addresses considered: the paired one only, else the suggested one, then from home on.
    const sugg = req.r ? this.#cfg.poolIndex.get(req.r) ?? -1 : -1;
    const order: number[] = [];
    if (pair >= 0) order.push(pair);
    else {
      if (sugg >= 0) order.push(sugg);
      for (let k = 0; k < P && order.length < P; k++) {
        const i = (home + k) % P;
        if (i !== sugg) order.push(i);
      }
    }
    const want = req.p || pa;
    const f = req.ports;
    // The port policy's verdict on a pair (every pair considered below passes it), and ownership.
    const fits = (i: number, port: number) =>
      (!f || (inRanges(f.ranges, port) && f.usable(pool[i]!, port))) &&
      this.ownable(pi, i, port, a, pa);
    let ri = -1;
    let p = want;
    if (req.preferFailure) {
      // Exactly the suggestion (any address of the considered ones when none was named;
      // a named address only: RFC 6887 section 13.2).
      if (req.r && (sugg < 0 || (pair >= 0 && sugg !== pair))) return Result.CONFLICT;
      ri = (req.r ? [sugg] : order).find((i) => fits(i, want)) ?? -1;
      if (ri < 0) return Result.CONFLICT;
    } else {
      // 1. The suggested (or internal) port. 2. The endpoint's current pair.
      ri = order.slice(0, TRIES.suggested).find((i) => fits(i, want)) ?? -1;
      const first = this.#rows.lookupEndpoint(req.proto, a, pa);
      if (ri < 0 && first >= 0) {
        const fi = this.#rows.poolIndex(first);
        const fp = this.#rows.p(first);
        if ((pair < 0 || fi === pair) && fits(fi, fp)) {
          ri = fi;
          p = fp;
        }
      }
      // 3. A random free port, as for a replaceable session (one the policy allows).
      if (ri < 0) {
        const c = this.#randomPort(pi, home, pair, f);
        if (c < 0) return Result.NO_RESOURCES;
        ri = Math.floor(c / 65536);
        p = c % 65536;
      }
    }
    const flags = rowFlags({
      replaceable: true,
      replaced: p !== pa,
      shared: false,
      map: true,
      direct: false,
    });
    return newRow(req, { x: 0, px: 0, ri, p, pg: 0, flags }, lifetime, now, req.description);
  }

  /**
   * A mapping for (a, pa) may own (proto, R_i, p): every session sending
   * from it belongs to the internal endpoint (proto, a, pa) itself (none:
   * the port must also not be held for another host).
   */
  ownable(pi: number, i: number, p: number, a: number, pa: number): boolean {
    // Another worker's slice (`slice.ts`) is never this table's to give.
    if (p < 1 || !this.#cfg.owns(p)) return false;
    const users = this.#ports.users(pi, i, p);
    if (users === 0) return this.#ports.availableTo(pi, i, p, a);
    const rows = this.#rows;
    const proto = pi === 1 ? IPPROTO_TCP : IPPROTO_UDP;
    let own = 0;
    for (let s = rows.lookupEndpoint(proto, a, pa); s >= 0; s = rows.endpointNext(s)) {
      if (rows.poolIndex(s) === i && rows.p(s) === p) own++;
    }
    return own === users;
  }

  /** (proto, R, p) is owned by the inbound mapping of an endpoint other than (a, pa). */
  mappedByOther(proto: number, r: number, p: number, a: number, pa: number): boolean {
    if (proto === IPPROTO_ICMP) return false;
    const m = this.#rows.lookupMapping(proto, r, p);
    return m >= 0 && (this.#rows.a(m) !== a || this.#rows.pa(m) !== pa);
  }

  /** The budgets a new row of `owner` for host `a` must fit in (`owners.ts`). */
  #quota(a: number, pi: number, owner: number): number {
    return this.#owners.quota(a, pi, owner, this.#hosts.total(a));
  }

  /**
   * A random (pool index, port) with the port in [portMin, portMax] (and in
   * `f.ranges`, and `usable`, under a port policy) and (proto, R, p)
   * neither used nor held, as `index * 65536 + port`; -1 when there is
   * none. With `pair >= 0` only that address is tried (paired pooling);
   * otherwise random probes on the host's home address, then anywhere. Then
   * a scan from a random offset over the allowed pairs only (a narrow rule
   * scans little; without a policy the scan must succeed, because the busy
   * counts of ports.ts said a free pair exists).
   */
  #randomPort(pi: number, home: number, pair: number, f: PortFilter | undefined): number {
    const { portMin, portMax, pool, random: rnd } = this.#cfg;
    const allowed = f ? clip(f.ranges, portMin, portMax) : this.#allPorts;
    const total = f ? size(allowed) : portMax - portMin + 1;
    if (total === 0) return -1;
    const ports = this.#ports;
    if (pair >= 0 ? ports.addressFull(pi, pair) : ports.poolFull(pi)) return -1;
    const P = pool.length;
    for (let t = 0; t < TRIES.randomPort; t++) {
      const i = pair >= 0 ? pair : t < TRIES.randomPortHome ? home : Math.floor(rnd() * P);
      const p = nth(allowed, Math.floor(rnd() * total));
      if (ports.free(pi, i, p) && (!f || f.usable(pool[i]!, p))) return i * 65536 + p;
    }
    const n = (pair >= 0 ? 1 : P) * total;
    const start = Math.floor(rnd() * n);
    for (let k = 0; k < n; k++) {
      const c = (start + k) % n;
      const i = pair >= 0 ? pair : Math.floor(c / total);
      const p = nth(allowed, c % total);
      if (ports.free(pi, i, p) && (!f || f.usable(pool[i]!, p))) return i * 65536 + p;
    }
    return -1;
  }

  /**
   * The Pg of a new session of (proto, a), or -1: the proposal when it lies
   * in the drivers' share and is free, else a random free one below the
   * drivers' share (anywhere in the range with `anywhere`).
   */
  #freeGatewayPort(proto: number, a: number, proposal: number, anywhere: boolean): number {
    const { pgMin, pgMax, pgDriverMin, random: rnd } = this.#cfg;
    if (
      proposal >= pgDriverMin && proposal <= pgMax && this.#rows.lookupLan(proto, a, proposal) < 0
    ) return proposal;
    const hi = anywhere ? pgMax : pgDriverMin - 1;
    const range = hi - pgMin + 1;
    if (range <= 0) return -1;
    for (let t = 0; t < TRIES.randomPg; t++) {
      const pg = pgMin + Math.floor(rnd() * range);
      if (this.#rows.lookupLan(proto, a, pg) < 0) return pg;
    }
    const start = Math.floor(rnd() * range);
    for (let k = 0; k < range; k++) {
      const pg = pgMin + ((start + k) % range);
      if (this.#rows.lookupLan(proto, a, pg) < 0) return pg;
    }
    return -1;
  }
}

/** Sorted, disjoint, inclusive port ranges (`PortFilter.ranges`). */
type Ranges = readonly (readonly [number, number])[];

/** The parts of `ranges` within [lo, hi]. */
function clip(ranges: Ranges, lo: number, hi: number): Ranges {
  const out: [number, number][] = [];
  for (const [a, b] of ranges) {
    if (Math.max(a, lo) <= Math.min(b, hi)) out.push([Math.max(a, lo), Math.min(b, hi)]);
  }
  return out;
}

/** How many ports `ranges` hold. */
function size(ranges: Ranges): number {
  let n = 0;
  for (const [a, b] of ranges) n += b - a + 1;
  return n;
}

/** The `k`-th port of `ranges` (k below their size). */
function nth(ranges: Ranges, k: number): number {
  for (let j = 0; j < ranges.length; j++) {
    const [a, b] = ranges[j]!;
    if (k <= b - a) return a + k;
    k -= b - a + 1;
  }
  return -1; // unreachable: k < size(ranges)
}

/** Where a new row goes: its remote, public pair, gateway port and flags. */
type Placement = Pick<Row, "x" | "px" | "ri" | "p" | "pg" | "flags">;

/**
 * The row of `req`'s new session or mapping, placed at `at`, leased for
 * `lifetime` s from `now`, for what `description` says.
 */
function newRow(
  req: ReserveRequest | MapRequest,
  at: Placement,
  lifetime: number,
  now: number,
  description?: string,
): NewRow {
  return {
    proto: req.proto,
    a: req.a,
    pa: req.pa,
    x: at.x,
    px: at.px,
    ri: at.ri,
    p: at.p,
    pg: at.pg,
    flags: at.flags,
    expiresAt: now + lifetime * 1000,
    lifetime,
    packetsOut: 0,
    packetsIn: 0,
    owner: req.owner ?? Owner.DPM,
    nonce: req.nonce,
    description,
  };
}
