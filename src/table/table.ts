/**
 * The gateway's session table: sessions indexed from the LAN side and from
 * the public side, the allocation policy that picks a public pair, and the
 * expiry sweep (claims 7-10 and 21-23).
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
 * A session is one row of a struct-of-arrays: every field is a typed array
 * indexed by the session's *slot* number. Free slots are chained through
 * `gnext` (LIFO); arrays double when full. No JavaScript object exists per
 * session, which is what keeps a million sessions near 100 bytes each.
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
 * still checks `pa(s)` against the packet for TCP and UDP.
 *
 * Port use is a {@link U32Map} per protocol keyed by (pool index, port) with
 * a reference count: how many sessions send from `R:p`. The allocator only
 * needs to know "unused" versus "in use"; the public index tells which remote
 * endpoints an `R:p` is already bound to. Host use is a U32Map keyed by `a`
 * with the session count in total and per protocol (quota and `Pg`
 * exhaustion are O(1)).
 *
 * ## Allocation policy (`reserve`)
 *
 * 1. The same (proto, a, pa, X, px) is already held: the same session is
 *    returned with its lifetime refreshed, so a retransmitted request gets the
 *    same answer.
 * 2. Quota: a host may hold `maxSessionsPerHost` sessions (QUOTA_EXCEEDED);
 *    a host that already uses every `Pg` for this protocol gets NO_RESOURCES.
 *    Paired pooling (default, RFC 6888 REQ-2, RFC 4787 REQ-2, RFC 7857
 *    section 5): a host that holds any session, of any protocol, is *paired*
 *    with that session's public address, and steps 4-6 only consider that
 *    address; a host with no session considers the whole pool, from its home
 *    address on. With `pooling: "arbitrary"` every request considers the
 *    whole pool.
 * 3. Endpoint-independent mapping (RFC 4787 REQ-1): when `a:pa` already has a
 *    session, its `R:p` is reused toward the new remote if (R, p, X, px) is
 *    free. A fixed-port request reuses it only when `p == pa`.
 * 4. Port preservation: the first considered pool address, in an order that
 *    starts at `hash(a) mod poolSize` (spreads hosts), where (proto, R, pa)
 *    is unused and not held for another host (see "Port hold") gets `R:pa`,
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
 * ## Port hold
 *
 * When the last session sending from (proto, R, p) leaves (release or
 * expiry), the port is *held* for `portHold` seconds (default 120, RFC 6888
 * REQ-8) for the host that last used it: that host may have it back at once
 * (a re-reservation keeps its pair), other hosts get it only through step 6
 * above. A hold starts at the `now` of the release (`release(..., now)`,
 * `expire(now)`) or, for a release without a clock, at the next call that
 * passes one. Holds are in a queue in release order and end lazily at the
 * next clocked call; they are not in the state file (a restarted server
 * starts without holds).
 *
 * ## Filtering
 *
 * The public index is keyed on the remote endpoint too, so a packet from an
 * outside peer that has no session with `R:p` finds nothing and is dropped:
 * address-and-port-dependent filtering (RFC 4787 section 5). A host that
 * wants to hear from a new peer reserves a session toward it; with
 * endpoint-independent mapping that session reuses the same `R:p`.
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
 * of another endpoint ever joins a mapped pair (allocation step 6 skips it;
 * steps 4 and 5 only take unused ports; step 3 only the endpoint's own pair).
 * So inbound packets toward a mapped pair from a remote with a session of
 * its own go to that session, which is the same endpoint, and all others go
 * to the mapping.
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
 * ## Owners
 *
 * Every row records who created it (`owner(s)`, {@link Owner}): dpm's own
 * protocol (a driver's RESERVE or `dpm map`, proven by the cookie), PCP
 * (with its 12-byte mapping nonce, kept in the row: RFC 6887 section 11.3)
 * or NAT-PMP; rows restored without one (an older state file, the kernel's
 * maps adopted without a state file) are ADOPTED. The table only stores the
 * owner; who may renew or delete a row is decided by `src/policy/`.
 *
 * Rows of the protocols that cannot prove the host's address (PCP and
 * NAT-PMP: no cookie, so a LAN host can forge another's source) are
 * *unverified* and have budgets of their own, apart from the host's quota
 * (`maxSessionsPerHost` counts only the other rows):
 * `maxUnverifiedPerHost` rows per host (QUOTA_EXCEEDED), and
 * `maxUnverifiedPerProto` rows per protocol over all hosts (NO_RESOURCES),
 * so that forged requests can hold only a bounded share of the pool. A
 * host's unverified rows are also chained (`unverifiedRows(a)`), so that a
 * "delete all" walks only them.
 *
 * ## Lifetimes and expiry
 *
 * Lifetimes are leases in seconds. Defaults honour the RFC minima for idle
 * timers: UDP 300 s (RFC 4787 REQ-5: at least 120 s, 300 s recommended), TCP
 * 7440 s (RFC 5382 REQ-5: established at least 2 h 4 min), ICMP 60 s (RFC
 * 5508 REQ-1). A requested lifetime of 0 means the default; any other value
 * is clamped to [min, max] (default 30 s .. 86400 s). A host may ask for a
 * lease shorter than the RFC idle minimum because it renews its own busy
 * sessions (as a PCP client picks its lifetime, RFC 6887 section 15); the RFC
 * minima bind a NAT that decides on its own that a mapping is idle.
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
 * REQ-6 outbound refresh) for servers that want it.
 *
 * All addresses are host-order unsigned 32-bit numbers (`>>> 0`), all ports
 * integers in 0..65535; the hot-path functions do not validate them.
 *
 * @module
 */

import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, protoIndex } from "../wire/meta.ts";
import { Result } from "../control/result.ts";
import { fmix, mix, SlotIndex, U32Map } from "./hashmap.ts";

/** The IP protocols the table accepts (defined once, in wire/meta.ts). */
export { IPPROTO_ICMP as PROTO_ICMP, IPPROTO_TCP as PROTO_TCP, IPPROTO_UDP as PROTO_UDP };

/** Session flag bits (internal). */
const F_LIVE = 1;
const F_REPLACEABLE = 2;
const F_REPLACED = 4;
const F_SHARED = 8;
/** An inbound mapping (PCP/NAT-PMP MAP): x = px = 0, no Pg, owns (proto, R, p) for every remote. */
const F_MAP = 16;
/**
 * A direct session (PCP PEER from a host without a driver): its host sends
 * `a:pa -> X:px` straight through the gateway and receives `X:px -> a:pa`
 * (not `G:Pg -> a:pa`); the queue data path translates it so.
 */
const F_DIRECT = 32;

/**
 * Who created a row (see "Owners" in the module documentation). Numbers are
 * stored in the table and the state file: only ever appended.
 */
export const Owner = {
  /** Restored without an owner (an older state file, adopted from the kernel's maps). */
  ADOPTED: 0,
  /** dpm's own protocol: a driver's RESERVE, or `dpm map` (the cookie proves the address). */
  DPM: 1,
  /** PCP MAP or PEER, with its nonce. */
  PCP: 2,
  /** NAT-PMP map. */
  NATPMP: 3,
} as const;
/** One of {@linkcode Owner}. */
export type OwnerKind = (typeof Owner)[keyof typeof Owner];
/** The owners' names, by number (status, state file, logs). */
export const OWNER_NAMES = ["adopted", "dpm", "pcp", "natpmp"] as const;
/** An owner's name. */
export type OwnerName = (typeof OWNER_NAMES)[number];

/** The owner whose name is `name`, or null. */
export function ownerByName(name: string): OwnerKind | null {
  const i = (OWNER_NAMES as readonly string[]).indexOf(name);
  return i < 0 ? null : i as OwnerKind;
}

/**
 * True for owners whose protocol cannot prove the host's address (no
 * cookie): their rows count against the unverified budgets.
 */
export function isUnverified(owner: number): boolean {
  return owner === Owner.PCP || owner === Owner.NATPMP;
}

/** Bytes of a PCP mapping nonce. */
export const NONCE_LEN = 12;

/** Pool addresses tried for port preservation by a replaceable request. */
const PRESERVE_TRIES_REPLACEABLE = 4;
/** Random probes before a replacement-port search falls back to a scan. */
const RANDOM_PORT_TRIES = 64;
/** Random probes that stay on the host's home address before roaming. */
const RANDOM_PORT_HOME_TRIES = 16;
/** Random probes for a free Pg before scanning the range. */
const RANDOM_PG_TRIES = 32;
/**
 * Counters per host in the hosts map: total, icmp, tcp, udp, paired pool
 * index, sessions on it, unverified rows, first unverified row + 1 (0: none).
 */
const HS = 8;

/** Lease lengths in seconds. */
export interface Lifetimes {
  /** Default UDP lease. @default 300 */
  udp?: number;
  /** Default TCP lease. @default 7440 */
  tcp?: number;
  /** Default ICMP echo lease. @default 60 */
  icmp?: number;
  /** Shortest lease granted for a non-zero request. @default 30 */
  min?: number;
  /** Longest lease granted. @default 86400 */
  max?: number;
}

/** Options of {@link SessionTable}. */
export interface TableOptions {
  /** Public addresses (host order), at most 65536, no duplicates. Order is kept. */
  pool: number[];
  /** Lowest replacement port. @default 1024 */
  portMin?: number;
  /** Highest replacement port. @default 65535 */
  portMax?: number;
  /** Lowest gateway LAN-side port (Pg). @default 61000 */
  gatewayPortMin?: number;
  /** Highest gateway LAN-side port (Pg). @default 65535 */
  gatewayPortMax?: number;
  /**
   * The first Pg of the drivers' share (`src/control/pg.ts`): a driver's
   * proposal is granted only from it, and the table's own choices come from
   * below it (unless a request lets it pick anywhere). @default none: every
   * Pg is the table's to choose
   */
  driverPortMin?: number;
  /**
   * Rows one internal address may hold, all protocols together, not
   * counting unverified ones (PCP, NAT-PMP). @default 4096
   */
  maxSessionsPerHost?: number;
  /** Unverified rows (PCP, NAT-PMP) one internal address may hold. @default 64 */
  maxUnverifiedPerHost?: number;
  /**
   * Unverified rows per IP protocol over all hosts (a share of the pool's
   * pairs: `src/policy/`). @default no limit
   */
  maxUnverifiedPerProto?: number;
  /** Lease lengths. */
  lifetimes?: Lifetimes;
  /** Uniform random numbers in [0, 1); injectable for tests. @default Math.random */
  random?: () => number;
  /** Sessions to hold before the first growth. @default 1024 */
  initialCapacity?: number;
  /**
   * IP address pooling (RFC 4787 section 4.1). "paired": while a host holds
   * any session (any protocol), every new session of that host uses the same
   * public address (RFC 6888 REQ-2, RFC 7857 section 5). "arbitrary": each
   * request picks the best address for itself, starting at the host's home
   * address. @default "paired"
   */
  pooling?: "paired" | "arbitrary";
  /**
   * Seconds a freed public port (proto, R, p) is held back from other hosts
   * before it is handed out again (RFC 6888 REQ-8); the host that last used
   * it may have it back at once. 0 disables the hold. @default 120
   */
  portHold?: number;
}

/** A reservation request, as the server decoded it. */
export interface ReserveRequest {
  /** IP protocol: 1 (ICMP echo), 6 (TCP) or 17 (UDP). */
  proto: number;
  /** Internal (private) address. */
  a: number;
  /** Internal port, or ICMP echo identifier. */
  pa: number;
  /** Remote peer address. */
  x: number;
  /** Remote peer port; 0 for ICMP. */
  px: number;
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
  /** PCP's mapping nonce ({@linkcode NONCE_LEN} bytes), kept in a new row. */
  nonce?: Uint8Array;
}

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

/** One session as a plain object, for status output and the state file. */
export interface SessionRecord {
  /** IP protocol number. */
  proto: number;
  /** Internal address. */
  a: number;
  /** Internal port or ICMP identifier. */
  pa: number;
  /** Remote address. */
  x: number;
  /** Remote port (0 for ICMP). */
  px: number;
  /** Public address. */
  r: number;
  /** Public port or identifier. */
  p: number;
  /** Gateway LAN-side port. */
  pg: number;
  /** Expiry time, milliseconds on the caller's clock. */
  expiresAt: number;
  /** The lease granted, seconds (restore uses the protocol default when absent). */
  lifetime?: number;
  /** The host said the internal port may be replaced. */
  replaceable: boolean;
  /** The public port differs from the internal one. */
  replaced: boolean;
  /** The public pair was granted shared with another host (claims 8-10). */
  shared: boolean;
  /** Packets counted host -> remote. */
  packetsOut: number;
  /** Packets counted remote -> host. */
  packetsIn: number;
  /**
   * An inbound mapping (PCP/NAT-PMP MAP, see "Mappings" in the module
   * documentation): `x`, `px` and `pg` are 0. A record with `x = px = 0`
   * is restored as one even without this field.
   */
  map?: boolean;
  /** A direct session (`ReserveRequest.direct`: PCP PEER from a host without a driver). */
  direct?: boolean;
  /** Who created it; "adopted" when absent. */
  owner?: OwnerName;
  /** PCP's mapping nonce, 24 hex digits (PCP rows only). */
  nonce?: string;
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
  /** PCP's mapping nonce ({@linkcode NONCE_LEN} bytes), kept in a new row. */
  nonce?: Uint8Array;
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

function failure(result: number): Grant {
  return { result, session: -1, r: 0, p: 0, pg: 0, lifetime: 0, replaced: false, shared: false };
}

/** `p` lies in one of the sorted, disjoint, inclusive `ranges`. */
export function inRanges(ranges: readonly (readonly [number, number])[], p: number): boolean {
  for (const [lo, hi] of ranges) {
    if (p < lo) return false;
    if (p <= hi) return true;
  }
  return false;
}

function hexOf(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** 24 hex digits as a nonce's bytes, or null. */
function bytesOfHex(h: string): Uint8Array | null {
  if (typeof h !== "string" || !/^[0-9a-fA-F]{24}$/.test(h)) return null;
  return Uint8Array.from({ length: NONCE_LEN }, (_, i) => parseInt(h.slice(i * 2, i * 2 + 2), 16));
}

function checkInt(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`Option ${name} must be an integer in ${lo}..${hi}, got "${v}"`);
  }
  return v;
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

export class SessionTable {
  /** Who is told of session changes, in subscription order ({@linkcode subscribe}). */
  #subs: TableSubscriber[] = [];

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

  #renewed(s: number): void {
    for (const sub of this.#subs) sub.renewed?.(s);
  }

  // ---- configuration ----
  readonly #pool: Uint32Array;
  readonly #poolIndex: Map<number, number>;
  readonly #portMin: number;
  readonly #portMax: number;
  readonly #pgMin: number;
  readonly #pgMax: number;
  /** The first Pg of the drivers' share (`#pgMax + 1`: none). */
  readonly #pgDriverMin: number;
  readonly #maxPerHost: number;
  readonly #maxUnverifiedPerHost: number;
  readonly #maxUnverifiedPerProto: number;
  readonly #defaults: [number, number, number];
  readonly #lifeMin: number;
  readonly #lifeMax: number;
  readonly #random: () => number;
  readonly #seed: number;
  readonly #paired: boolean;
  readonly #holdMs: number;

  // ---- sessions, struct of arrays, indexed by slot ----
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
  #owner = new Uint8Array(0); // Owner
  #nonce = new Uint32Array(0); // PCP nonce, NONCE_LEN / 4 words per slot
  #onext = new Int32Array(0); // the host's unverified rows
  #oprev = new Int32Array(0);
  /** Unverified rows per protocol index (icmp, tcp, udp), all hosts. */
  readonly #unverified: [number, number, number] = [0, 0, 0];

  // ---- indexes ----
  readonly #lan: SlotIndex;
  readonly #pub: SlotIndex;
  readonly #id: SlotIndex;
  readonly #ep: SlotIndex;
  readonly #portUse: [U32Map, U32Map, U32Map];
  /** In-range ports used or held, per protocol. */
  readonly #inRangeBusy: [number, number, number] = [0, 0, 0];
  /** In-range ports used or held, per protocol and pool address: `[pi * poolSize + ri]`. */
  readonly #busy: Uint32Array;
  readonly #hosts: U32Map; // a -> [total, icmp, tcp, udp, paired ri, sessions on paired ri]

  // ---- port hold (RFC 6888 REQ-8) ----
  /** Per protocol: (ri << 16 | p) -> [host that last used it, hold sequence number]. */
  readonly #held: [U32Map, U32Map, U32Map];
  /** Holds in release order (a ring): key, protocol index, release time (NaN: not stamped yet), sequence. */
  #hqKey = new Uint32Array(64);
  #hqPi = new Uint8Array(64);
  #hqTime = new Float64Array(64);
  #hqSeq = new Uint32Array(64);
  #hqHead = 0;
  #hqLen = 0;
  /** Holds at the tail of the ring released without a clock, stamped by the next clocked call. */
  #hqPending = 0;
  #hqNextSeq = 1;

  /** Builds an empty table. Throws RangeError on bad options. */
  constructor(opts: TableOptions) {
    if (opts.pool.length === 0) throw new RangeError("Option pool must not be empty");
    if (opts.pool.length > 65536) {
      throw new RangeError(`Option pool has "${opts.pool.length}" addresses, more than 65536`);
    }
    this.#pool = new Uint32Array(opts.pool.length);
    this.#poolIndex = new Map();
    opts.pool.forEach((addr, i) => {
      checkInt("pool", addr, 0, 0xffffffff);
      if (this.#poolIndex.has(addr)) throw new RangeError(`Option pool repeats "${addr}"`);
      this.#pool[i] = addr;
      this.#poolIndex.set(addr, i);
    });
    this.#portMin = checkInt("portMin", opts.portMin ?? 1024, 1, 65535);
    this.#portMax = checkInt("portMax", opts.portMax ?? 65535, this.#portMin, 65535);
    this.#pgMin = checkInt("gatewayPortMin", opts.gatewayPortMin ?? 61000, 1, 65535);
    this.#pgMax = checkInt("gatewayPortMax", opts.gatewayPortMax ?? 65535, this.#pgMin, 65535);
    this.#pgDriverMin = checkInt(
      "driverPortMin",
      opts.driverPortMin ?? this.#pgMax + 1,
      this.#pgMin,
      this.#pgMax + 1,
    );
    this.#maxPerHost = checkInt("maxSessionsPerHost", opts.maxSessionsPerHost ?? 4096, 1, 2 ** 31);
    this.#maxUnverifiedPerHost = checkInt(
      "maxUnverifiedPerHost",
      opts.maxUnverifiedPerHost ?? 64,
      0,
      2 ** 31,
    );
    this.#maxUnverifiedPerProto = opts.maxUnverifiedPerProto === undefined
      ? Infinity
      : checkInt("maxUnverifiedPerProto", opts.maxUnverifiedPerProto, 0, 2 ** 32);
    const l = opts.lifetimes ?? {};
    this.#lifeMax = checkInt("lifetimes.max", l.max ?? 86400, 1, 2 ** 31);
    this.#lifeMin = checkInt("lifetimes.min", l.min ?? 30, 1, this.#lifeMax);
    this.#defaults = [
      checkInt("lifetimes.icmp", l.icmp ?? 60, this.#lifeMin, this.#lifeMax),
      checkInt("lifetimes.tcp", l.tcp ?? 7440, this.#lifeMin, this.#lifeMax),
      checkInt("lifetimes.udp", l.udp ?? 300, this.#lifeMin, this.#lifeMax),
    ];
    this.#random = opts.random ?? Math.random;
    const pooling = opts.pooling ?? "paired";
    if (pooling !== "paired" && pooling !== "arbitrary") {
      throw new RangeError(`Option pooling must be "paired" or "arbitrary", got "${pooling}"`);
    }
    this.#paired = pooling === "paired";
    this.#holdMs = checkInt("portHold", opts.portHold ?? 120, 0, 86400) * 1000;
    this.#busy = new Uint32Array(3 * opts.pool.length);
    // The public key contains the outsider's X:px, so seed the hashes.
    this.#seed = crypto.getRandomValues(new Uint32Array(1))[0]! | 0;
    const cap = checkInt("initialCapacity", opts.initialCapacity ?? 1024, 1, 2 ** 30);
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
    this.#portUse = [
      new U32Map(1, this.#seed, 64),
      new U32Map(1, this.#seed, cap),
      new U32Map(1, this.#seed, cap),
    ];
    this.#hosts = new U32Map(HS, this.#seed, 64);
    this.#held = [
      new U32Map(2, this.#seed, 64),
      new U32Map(2, this.#seed, 64),
      new U32Map(2, this.#seed, 64),
    ];
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
  /** The host's first pool address: stable across restarts, spreads hosts. */
  #home(a: number): number {
    return fmix(a) % this.#pool.length;
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
   * mapping: what `dpm query` reports.
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
  /** Packets counted host -> remote on slot `s`. */
  packetsOut(s: number): number {
    return this.#out[s]!;
  }
  /** Packets counted remote -> host on slot `s`. */
  packetsIn(s: number): number {
    return this.#in[s]!;
  }

  /** Who created slot `s` ({@linkcode Owner}). */
  owner(s: number): OwnerKind {
    return this.#owner[s]! as OwnerKind;
  }
  /** Slot `s` was created with PCP nonce `nonce` (12 bytes). */
  nonceIs(s: number, nonce: Uint8Array): boolean {
    if (nonce.length !== NONCE_LEN) return false;
    const v = new DataView(nonce.buffer, nonce.byteOffset, NONCE_LEN);
    const w = s * (NONCE_LEN / 4);
    return this.#nonce[w] === v.getUint32(0) && this.#nonce[w + 1] === v.getUint32(4) &&
      this.#nonce[w + 2] === v.getUint32(8);
  }
  /** The PCP nonce of slot `s` (zeros when it has none). */
  nonceOf(s: number): Uint8Array {
    const out = new Uint8Array(NONCE_LEN);
    const v = new DataView(out.buffer);
    for (let k = 0; k < NONCE_LEN / 4; k++) v.setUint32(k * 4, this.#nonce[s * 3 + k]!);
    return out;
  }
  /**
   * Gives live slot `s` a new owner (and nonce): an ADOPTED row that a
   * protocol speaks for again (`src/policy/`). Keeps the budgets exact.
   */
  claim(s: number, owner: OwnerKind, nonce?: Uint8Array): void {
    const a = this.#a[s]!;
    const was = isUnverified(this.#owner[s]!);
    if (was) this.#unlinkUnverified(s, a);
    this.#owner[s] = owner;
    this.#setNonce(s, nonce);
    if (isUnverified(owner)) this.#linkUnverified(s, a);
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

  // ---------------------------------------------------------------- sizes

  /** Number of live sessions. */
  get size(): number {
    return this.#size;
  }

  /** Sessions held by internal address `a`, all protocols. */
  sessionsOf(a: number): number {
    return this.#hosts.get(a, 0);
  }

  /** Unverified rows (PCP, NAT-PMP) held by internal address `a`. */
  unverifiedOf(a: number): number {
    const hb = this.#hosts.find(a);
    return hb < 0 ? 0 : this.#hosts.vals[hb * HS + 6]!;
  }

  /** Unverified rows of IP protocol `proto`, all hosts. */
  unverifiedCount(proto: number): number {
    const pi = protoIndex(proto);
    return pi < 0 ? 0 : this.#unverified[pi]!;
  }

  /**
   * The slots of host `a`'s unverified rows (PCP, NAT-PMP), newest first,
   * as an array (so the caller may release them while walking it).
   */
  unverifiedRows(a: number): number[] {
    const hb = this.#hosts.find(a);
    const out: number[] = [];
    if (hb < 0) return out;
    for (let s = this.#hosts.vals[hb * HS + 7]! - 1; s >= 0; s = this.#onext[s]!) out.push(s);
    return out;
  }

  /** Number of sessions sending from (proto, R, p); 0 when unused or not a pool address. */
  portUsers(proto: number, r: number, p: number): number {
    const pi = protoIndex(proto);
    const ri = this.#poolIndex.get(r);
    if (pi < 0 || ri === undefined) return 0;
    return this.#portUse[pi]!.get(((ri << 16) | p) >>> 0);
  }

  /** True when `addr` is one of the pool's public addresses. */
  isPoolAddress(addr: number): boolean {
    return this.#poolIndex.has(addr);
  }

  /** The pool, in configuration order. */
  get pool(): readonly number[] {
    return Array.from(this.#pool);
  }

  /** The lease that a request for `lifetime` seconds gets (0 = default). */
  grantedLifetime(proto: number, lifetime: number): number {
    const pi = protoIndex(proto);
    if (pi < 0) return 0;
    if (lifetime === 0) return this.#defaults[pi]!;
    return Math.min(this.#lifeMax, Math.max(this.#lifeMin, Math.floor(lifetime)));
  }

  /** Bytes held by the table's typed arrays (not counting the JS objects around them). */
  get bytes(): number {
    let n = this.#cap *
      (1 + 1 + 4 + 2 + 4 + 2 + 4 + 2 + 2 + 2 + 8 + 4 + 8 + 8 + 4 + 4 + 1 + NONCE_LEN + 4 + 4);
    n += this.#lan.bytes + this.#pub.bytes + this.#id.bytes + this.#ep.bytes;
    for (const u of this.#portUse) n += u.bytes;
    for (const u of this.#held) n += u.bytes;
    n += this.#busy.byteLength + this.#hqKey.length * (4 + 1 + 8 + 4);
    return n + this.#hosts.bytes;
  }

  // ---------------------------------------------------------------- policy

  /**
   * Reserves a public pair for a session (see "Allocation policy" in the
   * module documentation). Returns a grant whose `result` is OK, or
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
    this.#clock(now);

    // 1. Idempotence.
    const held = this.lookupIdentity(proto, a, pa, x, px);
    if (held >= 0) {
      this.#exp[held] = now + life * 1000;
      this.#life[held] = life;
      this.#renewed(held);
      return this.#grant(held);
    }

    // 2. Quota and Pg room; the host's paired address, if it holds sessions.
    const owner = req.owner ?? Owner.DPM;
    const quota = this.#quota(a, pi, owner);
    if (quota !== Result.OK) return failure(quota);
    const hb = this.#hosts.find(a);
    let pair = -1;
    if (hb >= 0) {
      const hv = this.#hosts.vals;
      if (hv[hb * HS + 1 + pi]! >= this.#pgMax - this.#pgMin + 1) {
        return failure(Result.NO_RESOURCES);
      }
      if (this.#paired && hv[hb * HS + 5]! > 0) pair = hv[hb * HS + 4]!;
    }

    const P = this.#pool.length;
    const home = this.#home(a);
    const use = this.#portUse[pi]!;
    let ri = -1;
    let p = 0;
    let flags = F_LIVE | (req.replaceable ? F_REPLACEABLE : 0) | (req.direct ? F_DIRECT : 0);

    // 3. Endpoint-independent mapping.
    const first = this.lookupEndpoint(proto, a, pa);
    if (first >= 0) {
      const fp = this.#p[first]!;
      if (
        (req.replaceable || fp === pa) && this.lookupPublic(proto, this.#r[first]!, fp, x, px) < 0
      ) {
        ri = this.#ri[first]!;
        p = fp;
        flags |= this.#flags[first]! & F_SHARED;
      }
    }

    // 4. Port preservation, exclusive, on a port neither used nor held for another host.
    if (ri < 0) {
      if (pair >= 0) {
        if (this.#availableTo(pi, pair, pa, a)) {
          ri = pair;
          p = pa;
        }
      } else {
        const tries = req.replaceable ? Math.min(P, PRESERVE_TRIES_REPLACEABLE) : P;
        for (let k = 0; k < tries; k++) {
          const i = (home + k) % P;
          if (this.#availableTo(pi, i, pa, a)) {
            ri = i;
            p = pa;
            break;
          }
        }
      }
    }

    if (ri < 0) {
      if (req.replaceable) {
        // 5. Replacement port.
        const c = this.#randomFreePort(pi, home, pair);
        if (c < 0) return failure(Result.NO_RESOURCES);
        ri = Math.floor(c / 65536);
        p = c % 65536;
      } else {
        // 6. Share R:pa, told apart by the remote endpoint; or take R:pa while it
        // is held for another host (RFC 6888 REQ-8 exception c: filtering is
        // address-and-port dependent, so the new session only ever receives
        // from its own remote).
        const n = pair >= 0 ? 1 : P;
        for (let k = 0; k < n; k++) {
          const i = pair >= 0 ? pair : (home + k) % P;
          if (
            this.lookupPublic(proto, this.#pool[i]!, pa, x, px) < 0 &&
            !this.#mappedByOther(proto, this.#pool[i]!, pa, a, pa)
          ) {
            ri = i;
            p = pa;
            if (use.find(((i << 16) | pa) >>> 0) >= 0) flags |= F_SHARED;
            break;
          }
        }
        if (ri < 0) return failure(Result.CONFLICT);
      }
    }
    if (p !== pa) flags |= F_REPLACED;

    const pg = this.#freeGatewayPort(proto, a, req.pg ?? 0, req.pgAnywhere ?? false);
    if (pg < 0) return failure(Result.NO_RESOURCES);

    const s = this.#insert(
      proto,
      a,
      pa,
      x,
      px,
      ri,
      p,
      pg,
      flags,
      now + life * 1000,
      life,
      0,
      0,
      owner,
      req.nonce,
    );
    return this.#grant(s);
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
    this.#clock(now);
    const s = this.lookupIdentity(proto, a, pa, x, px);
    if (s < 0) return failure(Result.NO_SUCH_SESSION);
    const life = this.grantedLifetime(proto, lifetime);
    this.#exp[s] = now + life * 1000;
    this.#life[s] = life;
    this.#renewed(s);
    return this.#grant(s);
  }

  /**
   * Removes a held session. Returns OK, or NO_SUCH_SESSION. `now` (ms) starts
   * the hold of a port this frees (RFC 6888 REQ-8); without it the hold
   * starts at the next call that passes a clock (reserve, renew, expire),
   * which is never earlier than the release.
   */
  release(proto: number, a: number, pa: number, x: number, px: number, now?: number): number {
    const s = this.lookupIdentity(proto, a, pa, x, px);
    if (s < 0) return Result.NO_SUCH_SESSION;
    this.#remove(s);
    if (now !== undefined) this.#clock(now);
    return Result.OK;
  }

  /**
   * Removes the session in slot `s` (e.g. on TCP RST). Returns false when `s`
   * is not live. `now` as in {@link release}.
   */
  releaseSlot(s: number, now?: number): boolean {
    if (!this.isLive(s)) return false;
    this.#remove(s);
    if (now !== undefined) this.#clock(now);
    return true;
  }

  /**
   * Creates or refreshes an inbound mapping (PCP MAP, NAT-PMP map; see
   * "Mappings" in the module documentation): every remote's packets to the
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
    this.#clock(now);
    const held = this.lookupIdentity(proto, a, pa, 0, 0);
    if (held >= 0) {
      this.#exp[held] = now + life * 1000;
      this.#life[held] = life;
      this.#renewed(held);
      return this.#grant(held);
    }
    const owner = req.owner ?? Owner.DPM;
    const quota = this.#quota(a, pi, owner);
    if (quota !== Result.OK) return failure(quota);
    const hb = this.#hosts.find(a);
    let pair = -1;
    if (hb >= 0) {
      const hv = this.#hosts.vals;
      if (this.#paired && hv[hb * HS + 5]! > 0) pair = hv[hb * HS + 4]!;
    }
    const P = this.#pool.length;
    const home = this.#home(a);
    // Addresses considered: the paired one only, else the suggested one, then from home on.
    const sugg = req.r ? this.#poolIndex.get(req.r) ?? -1 : -1;
    const order: number[] = [];
    if (pair >= 0) order.push(pair);
    else {
      if (sugg >= 0) order.push(sugg);
      for (let k = 0; k < P && order.length < P; k++) {
        const i = (home + k) % P;
        if (i !== sugg) order.push(i);
      }
    }
    let ri = -1;
    let p = 0;
    const want = req.p || pa;
    const f = req.ports;
    // The port policy's verdict on a pair (every pair considered below passes it).
    const allowed = (i: number, port: number) =>
      !f || (inRanges(f.ranges, port) && f.usable(this.#pool[i]!, port));
    if (req.preferFailure) {
      // Exactly the suggestion (any address of the considered ones when none was named;
      // a named address only: RFC 6887 section 13.2).
      if (req.r && (sugg < 0 || (pair >= 0 && sugg !== pair))) return failure(Result.CONFLICT);
      for (const i of req.r ? [sugg] : order) {
        if (allowed(i, want) && this.#ownable(pi, i, want, a, pa)) {
          ri = i;
          p = want;
          break;
        }
      }
      if (ri < 0) return failure(Result.CONFLICT);
    } else {
      // 1. The suggested (or internal) port. 2. The endpoint's current pair.
      for (const i of order.slice(0, 8)) {
        if (allowed(i, want) && this.#ownable(pi, i, want, a, pa)) {
          ri = i;
          p = want;
          break;
        }
      }
      const first = this.lookupEndpoint(proto, a, pa);
      if (ri < 0 && first >= 0) {
        const fi = this.#ri[first]!;
        const fp = this.#p[first]!;
        if ((pair < 0 || fi === pair) && allowed(fi, fp) && this.#ownable(pi, fi, fp, a, pa)) {
          ri = fi;
          p = fp;
        }
      }
      // 3. A random free port, as for a replaceable session (one the policy allows).
      if (ri < 0) {
        const c = f
          ? this.#randomAllowedPort(pi, home, pair, f)
          : this.#randomFreePort(pi, home, pair);
        if (c < 0) return failure(Result.NO_RESOURCES);
        ri = Math.floor(c / 65536);
        p = c % 65536;
      }
    }
    const flags = F_LIVE | F_MAP | F_REPLACEABLE | (p !== pa ? F_REPLACED : 0);
    const s = this.#insert(
      proto,
      a,
      pa,
      0,
      0,
      ri,
      p,
      0,
      flags,
      now + life * 1000,
      life,
      0,
      0,
      owner,
      req.nonce,
    );
    return this.#grant(s);
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

  /**
   * Slot `s`'s host takes its packets from the remote's own pair, not from
   * `G:Pg`: an inbound mapping or a direct (PCP PEER) session, whose host
   * has no driver to undo `G:Pg`.
   */
  fromRemote(s: number): boolean {
    return (this.#flags[s]! & (F_MAP | F_DIRECT)) !== 0;
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

  /** Slot `s` is an inbound mapping (x, px and pg are 0). */
  isMap(s: number): boolean {
    return (this.#flags[s]! & F_MAP) !== 0;
  }

  /** Slot `s` is a direct session (`ReserveRequest.direct`). */
  direct(s: number): boolean {
    return (this.#flags[s]! & F_DIRECT) !== 0;
  }

  /**
   * The public address host `a` is told it has (NAT-PMP's external address):
   * its paired address while it holds sessions, else its home address, where
   * its first session or mapping would go.
   */
  externalAddressOf(a: number): number {
    const r = this.pairedAddress(a);
    return r >= 0 ? r : this.#pool[this.#home(a)]!;
  }

  /**
   * A MAP for (a, pa) may own (proto, R_i, p): every session sending from it
   * belongs to the internal endpoint (proto, a, pa) itself (none: the port
   * must also not be held for another host).
   */
  #ownable(pi: number, i: number, p: number, a: number, pa: number): boolean {
    if (p < 1) return false;
    const k = ((i << 16) | p) >>> 0;
    const users = this.#portUse[pi]!.get(k);
    if (users === 0) return this.#availableTo(pi, i, p, a);
    const proto = pi === 1 ? IPPROTO_TCP : IPPROTO_UDP;
    let own = 0;
    for (let s = this.lookupEndpoint(proto, a, pa); s >= 0; s = this.#gnext[s]!) {
      if (this.#ri[s] === i && this.#p[s] === p) own++;
    }
    return own === users;
  }

  /** (proto, R, p) is owned by the inbound mapping of an endpoint other than (a, pa). */
  #mappedByOther(proto: number, r: number, p: number, a: number, pa: number): boolean {
    if (proto === IPPROTO_ICMP) return false;
    const m = this.lookupMapping(proto, r, p);
    return m >= 0 && (this.#a[m] !== a || this.#pa[m] !== pa);
  }

  /**
   * The host a freed public port (proto, R, p) is held for (RFC 6888
   * REQ-8), or -1 when it is not held (in use, never used, or its hold
   * ended), as of the last call that passed a clock.
   */
  heldFor(proto: number, r: number, p: number): number {
    const pi = protoIndex(proto);
    const ri = this.#poolIndex.get(r);
    if (pi < 0 || ri === undefined) return -1;
    const h = this.#held[pi]!.find(((ri << 16) | p) >>> 0);
    return h < 0 ? -1 : this.#held[pi]!.vals[h * 2]!;
  }

  /** Number of freed public ports currently held (all protocols). */
  get heldPorts(): number {
    return this.#held[0].size + this.#held[1].size + this.#held[2].size;
  }

  /**
   * The pool address host `a` is paired with (every session of the host uses
   * it), or -1 when the host holds no session or pooling is "arbitrary".
   */
  pairedAddress(a: number): number {
    if (!this.#paired) return -1;
    const hb = this.#hosts.find(a);
    if (hb < 0 || this.#hosts.vals[hb * HS + 5]! === 0) return -1;
    return this.#pool[this.#hosts.vals[hb * HS + 4]!]!;
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
    this.#clock(now);
    const exp = this.#exp;
    const flags = this.#flags;
    let removed = 0;
    if (budget === undefined) {
      for (let s = 0; s < this.#hw; s++) {
        if ((flags[s]! & F_LIVE) !== 0 && exp[s]! <= now) {
          this.#remove(s);
          removed++;
        }
      }
      this.#clock(now);
      return removed;
    }
    let s = this.#sweepCursor;
    for (let n = Math.min(budget, this.#hw); n > 0; n--) {
      if (s >= this.#hw) s = 0;
      if ((flags[s]! & F_LIVE) !== 0 && exp[s]! <= now) {
        this.#remove(s);
        removed++;
      }
      s++;
    }
    this.#sweepCursor = s;
    this.#clock(now);
    return removed;
  }

  /** The record of live slot `s`. */
  record(s: number): SessionRecord {
    const f = this.#flags[s]!;
    return {
      proto: this.#proto[s]!,
      a: this.#a[s]!,
      pa: this.#pa[s]!,
      x: this.#x[s]!,
      px: this.#px[s]!,
      r: this.#r[s]!,
      p: this.#p[s]!,
      pg: this.#pg[s]!,
      expiresAt: this.#exp[s]!,
      lifetime: this.#life[s]!,
      replaceable: (f & F_REPLACEABLE) !== 0,
      replaced: (f & F_REPLACED) !== 0,
      shared: (f & F_SHARED) !== 0,
      packetsOut: this.#out[s]!,
      packetsIn: this.#in[s]!,
      ...((f & F_MAP) !== 0 ? { map: true } : {}),
      ...((f & F_DIRECT) !== 0 ? { direct: true } : {}),
      ...(this.#owner[s] ? { owner: OWNER_NAMES[this.#owner[s]!] } : {}),
      ...(this.#owner[s] === Owner.PCP ? { nonce: hexOf(this.nonceOf(s)) } : {}),
    };
  }

  /** The slot of every live session, in slot order. Do not modify the table while iterating. */
  *slots(): IterableIterator<number> {
    for (let s = 0; s < this.#hw; s++) {
      if ((this.#flags[s]! & F_LIVE) !== 0) yield s;
    }
  }

  /** Every live session, in slot order. Do not modify the table while iterating. */
  *entries(): IterableIterator<SessionRecord> {
    for (let s = 0; s < this.#hw; s++) {
      if ((this.#flags[s]! & F_LIVE) !== 0) yield this.record(s);
    }
  }

  /**
   * Re-inserts a session from the state file. Returns OK, UNSUPPORTED_PROTOCOL,
   * MALFORMED, or CONFLICT when `r` is not in the pool or the record clashes
   * with a live session (same identity, LAN key or public key). The quota is
   * not applied: the session was granted before. Expired records are
   * accepted; the next `expire(now)` removes them.
   */
  restore(rec: SessionRecord): number {
    const pi = protoIndex(rec.proto);
    if (pi < 0) return Result.UNSUPPORTED_PROTOCOL;
    for (const v of [rec.pa, rec.px, rec.p, rec.pg]) {
      if (!Number.isInteger(v) || v < 0 || v > 65535) return Result.MALFORMED;
    }
    if (!Number.isFinite(rec.expiresAt)) return Result.MALFORMED;
    const owner = rec.owner === undefined ? Owner.ADOPTED : ownerByName(rec.owner);
    if (owner === null) return Result.MALFORMED;
    const nonce = rec.nonce === undefined ? undefined : bytesOfHex(rec.nonce);
    if (nonce === null || (nonce && owner !== Owner.PCP)) return Result.MALFORMED;
    const ri = this.#poolIndex.get(rec.r);
    if (ri === undefined) return Result.CONFLICT;
    const isMap = rec.map === true || (rec.x === 0 && rec.px === 0);
    if (isMap) {
      if (rec.proto === IPPROTO_ICMP || rec.pa === 0 || rec.p === 0 || rec.pg !== 0) {
        return Result.MALFORMED;
      }
      if (this.lookupIdentity(rec.proto, rec.a, rec.pa, 0, 0) >= 0) return Result.CONFLICT;
      if (!this.#ownable(pi, ri, rec.p, rec.a, rec.pa)) return Result.CONFLICT;
    } else if (
      this.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px) >= 0 ||
      this.lookupLan(rec.proto, rec.a, rec.pg) >= 0 ||
      this.lookupPublic(rec.proto, rec.r, rec.p, rec.x, rec.px) >= 0 ||
      this.#mappedByOther(rec.proto, rec.r, rec.p, rec.a, rec.pa)
    ) return Result.CONFLICT;
    const flags = F_LIVE | (rec.replaceable ? F_REPLACEABLE : 0) |
      (rec.p !== rec.pa ? F_REPLACED : 0) | (rec.shared ? F_SHARED : 0) | (isMap ? F_MAP : 0) |
      (rec.direct && !isMap ? F_DIRECT : 0);
    const life = rec.lifetime !== undefined && rec.lifetime > 0
      ? this.grantedLifetime(rec.proto, rec.lifetime)
      : this.#defaults[pi]!;
    this.#insert(
      rec.proto,
      rec.a,
      rec.pa,
      isMap ? 0 : rec.x,
      isMap ? 0 : rec.px,
      ri,
      rec.p,
      rec.pg,
      flags,
      rec.expiresAt,
      life,
      rec.packetsOut,
      rec.packetsIn,
      owner,
      nonce,
    );
    return Result.OK;
  }

  // ---------------------------------------------------------------- internals

  #grant(s: number): Grant {
    const f = this.#flags[s]!;
    return {
      result: Result.OK,
      session: s,
      r: this.#r[s]!,
      p: this.#p[s]!,
      pg: this.#pg[s]!,
      lifetime: this.#life[s]!,
      replaced: (f & F_REPLACED) !== 0,
      shared: (f & F_SHARED) !== 0,
    };
  }

  /**
   * A random (pool index, port) with the port in [portMin, portMax] and
   * (proto, R, p) neither used nor held, as `index * 65536 + port`; -1 when
   * there is none. With `pair >= 0` only that address is tried (paired
   * pooling); otherwise random probes on the host's home address, then
   * anywhere. Then a scan from a random offset, which must succeed because
   * the in-range busy count says a free pair exists.
   */
  #randomFreePort(pi: number, home: number, pair: number): number {
    const P = this.#pool.length;
    const range = this.#portMax - this.#portMin + 1;
    const rnd = this.#random;
    if (pair >= 0) {
      if (this.#busy[pi * P + pair]! >= range) return -1;
      for (let t = 0; t < RANDOM_PORT_TRIES; t++) {
        const p = this.#portMin + Math.floor(rnd() * range);
        if (this.#free(pi, pair, p)) return pair * 65536 + p;
      }
      const start = Math.floor(rnd() * range);
      for (let k = 0; k < range; k++) {
        const p = this.#portMin + ((start + k) % range);
        if (this.#free(pi, pair, p)) return pair * 65536 + p;
      }
      return -1; // unreachable while #busy is exact
    }
    const total = P * range;
    if (this.#inRangeBusy[pi]! >= total) return -1;
    for (let t = 0; t < RANDOM_PORT_TRIES; t++) {
      const i = t < RANDOM_PORT_HOME_TRIES ? home : Math.floor(rnd() * P);
      const p = this.#portMin + Math.floor(rnd() * range);
      if (this.#free(pi, i, p)) return i * 65536 + p;
    }
    const start = Math.floor(rnd() * total);
    for (let k = 0; k < total; k++) {
      const c = (start + k) % total;
      const i = Math.floor(c / range);
      const p = this.#portMin + (c % range);
      if (this.#free(pi, i, p)) return i * 65536 + p;
    }
    return -1; // unreachable while #inRangeBusy is exact
  }

  /**
   * {@link #randomFreePort} for a mapping under a port policy: a random
   * (pool index, port) with the port in `f.ranges` and [portMin, portMax],
   * free, and `usable`; -1 when there is none. Random probes first, then a
   * scan of the allowed ports only (a narrow rule scans little; the full
   * range is scanned only when it is nearly full, as without a policy).
   */
  #randomAllowedPort(pi: number, home: number, pair: number, f: PortFilter): number {
    const eff: [number, number][] = [];
    let total = 0;
    for (const [lo, hi] of f.ranges) {
      const a = Math.max(lo, this.#portMin);
      const b = Math.min(hi, this.#portMax);
      if (a <= b) {
        eff.push([a, b]);
        total += b - a + 1;
      }
    }
    if (total === 0) return -1;
    const P = this.#pool.length;
    const range = this.#portMax - this.#portMin + 1;
    if (pair >= 0 && this.#busy[pi * P + pair]! >= range) return -1;
    if (pair < 0 && this.#inRangeBusy[pi]! >= P * range) return -1;
    const nth = (k: number): number => {
      for (const [lo, hi] of eff) {
        if (k <= hi - lo) return lo + k;
        k -= hi - lo + 1;
      }
      return -1; // unreachable: k < total
    };
    const rnd = this.#random;
    const ok = (i: number, p: number) => this.#free(pi, i, p) && f.usable(this.#pool[i]!, p);
    for (let t = 0; t < RANDOM_PORT_TRIES; t++) {
      const i = pair >= 0 ? pair : t < RANDOM_PORT_HOME_TRIES ? home : Math.floor(rnd() * P);
      const p = nth(Math.floor(rnd() * total));
      if (ok(i, p)) return i * 65536 + p;
    }
    const addrs = pair >= 0 ? 1 : P;
    const first = Math.floor(rnd() * addrs);
    const start = Math.floor(rnd() * total);
    for (let j = 0; j < addrs; j++) {
      const i = pair >= 0 ? pair : (first + j) % P;
      for (let k = 0; k < total; k++) {
        const p = nth((start + k) % total);
        if (ok(i, p)) return i * 65536 + p;
      }
    }
    return -1;
  }

  /** (proto, R_i, p) is neither used nor held for anyone. */
  #free(pi: number, i: number, p: number): boolean {
    const k = ((i << 16) | p) >>> 0;
    return this.#portUse[pi]!.find(k) < 0 && this.#held[pi]!.find(k) < 0;
  }

  /** (proto, R_i, p) is unused and not held for a host other than `a`. */
  #availableTo(pi: number, i: number, p: number, a: number): boolean {
    const k = ((i << 16) | p) >>> 0;
    if (this.#portUse[pi]!.find(k) >= 0) return false;
    const held = this.#held[pi]!;
    const h = held.find(k);
    return h < 0 || held.vals[h * 2] === a;
  }

  #inRange(p: number): boolean {
    return p >= this.#portMin && p <= this.#portMax;
  }

  /** Holds the freed port `key` for host `a` (its release time is stamped by #clock). */
  #hold(pi: number, key: number, a: number): void {
    if (this.#hqLen === this.#hqKey.length) this.#growHoldQueue();
    const seq = this.#hqNextSeq;
    this.#hqNextSeq = (seq + 1) >>> 0 || 1;
    const j = (this.#hqHead + this.#hqLen) % this.#hqKey.length;
    this.#hqKey[j] = key;
    this.#hqPi[j] = pi;
    this.#hqTime[j] = NaN;
    this.#hqSeq[j] = seq;
    this.#hqLen++;
    this.#hqPending++;
    const held = this.#held[pi]!;
    const b = held.upsert(key);
    held.vals[b * 2] = a;
    held.vals[b * 2 + 1] = seq;
  }

  /** Ends the hold of `key`, if any (the port is being used again). */
  #unhold(pi: number, key: number): void {
    const held = this.#held[pi]!;
    const b = held.find(key);
    if (b < 0) return;
    held.deleteAt(b);
    if (this.#inRange(key & 0xffff)) {
      this.#inRangeBusy[pi]!--;
      this.#busy[pi * this.#pool.length + (key >>> 16)]!--;
    }
  }

  /**
   * Stamps holds released without a clock with `now`, then ends every hold
   * whose time is up (`now >= released + portHold`). Queue entries of holds
   * that ended early (the port was used again) are skipped by sequence.
   */
  #clock(now: number): void {
    const cap = this.#hqKey.length;
    for (; this.#hqPending > 0; this.#hqPending--) {
      this.#hqTime[(this.#hqHead + this.#hqLen - this.#hqPending) % cap] = now;
    }
    while (this.#hqLen > 0) {
      const j = this.#hqHead;
      if (!(this.#hqTime[j]! + this.#holdMs <= now)) break;
      const pi = this.#hqPi[j]!;
      const key = this.#hqKey[j]!;
      const held = this.#held[pi]!;
      const b = held.find(key);
      if (b >= 0 && held.vals[b * 2 + 1] === this.#hqSeq[j]) this.#unhold(pi, key);
      this.#hqHead = (j + 1) % cap;
      this.#hqLen--;
    }
  }

  #growHoldQueue(): void {
    const cap = this.#hqKey.length;
    const n = cap * 2;
    const key = new Uint32Array(n);
    const pi = new Uint8Array(n);
    const time = new Float64Array(n);
    const seq = new Uint32Array(n);
    for (let k = 0; k < this.#hqLen; k++) {
      const j = (this.#hqHead + k) % cap;
      key[k] = this.#hqKey[j]!;
      pi[k] = this.#hqPi[j]!;
      time[k] = this.#hqTime[j]!;
      seq[k] = this.#hqSeq[j]!;
    }
    this.#hqKey = key;
    this.#hqPi = pi;
    this.#hqTime = time;
    this.#hqSeq = seq;
    this.#hqHead = 0;
  }

  /**
   * The Pg of a new session of (proto, a), or -1: the proposal when it lies
   * in the drivers' share and is free, else a random free one below the
   * drivers' share (anywhere in the range with `anywhere`).
   */
  #freeGatewayPort(proto: number, a: number, proposal: number, anywhere: boolean): number {
    if (
      proposal >= this.#pgDriverMin && proposal <= this.#pgMax &&
      this.lookupLan(proto, a, proposal) < 0
    ) return proposal;
    const hi = anywhere ? this.#pgMax : this.#pgDriverMin - 1;
    const range = hi - this.#pgMin + 1;
    if (range <= 0) return -1;
    const rnd = this.#random;
    for (let t = 0; t < RANDOM_PG_TRIES; t++) {
      const pg = this.#pgMin + Math.floor(rnd() * range);
      if (this.lookupLan(proto, a, pg) < 0) return pg;
    }
    const start = Math.floor(rnd() * range);
    for (let k = 0; k < range; k++) {
      const pg = this.#pgMin + ((start + k) % range);
      if (this.lookupLan(proto, a, pg) < 0) return pg;
    }
    return -1;
  }

  #resize(cap: number): void {
    const grow = <T extends { length: number; set(a: ArrayLike<number>): void }>(
      old: T,
      make: (n: number) => T,
    ): T => {
      const n = make(cap);
      n.set(old as unknown as ArrayLike<number>);
      return n;
    };
    this.#proto = grow(this.#proto, (n) => new Uint8Array(n));
    this.#flags = grow(this.#flags, (n) => new Uint8Array(n));
    this.#a = grow(this.#a, (n) => new Uint32Array(n));
    this.#pa = grow(this.#pa, (n) => new Uint16Array(n));
    this.#x = grow(this.#x, (n) => new Uint32Array(n));
    this.#px = grow(this.#px, (n) => new Uint16Array(n));
    this.#r = grow(this.#r, (n) => new Uint32Array(n));
    this.#ri = grow(this.#ri, (n) => new Uint16Array(n));
    this.#p = grow(this.#p, (n) => new Uint16Array(n));
    this.#pg = grow(this.#pg, (n) => new Uint16Array(n));
    this.#exp = grow(this.#exp, (n) => new Float64Array(n));
    this.#life = grow(this.#life, (n) => new Uint32Array(n));
    this.#out = grow(this.#out, (n) => new Float64Array(n));
    this.#in = grow(this.#in, (n) => new Float64Array(n));
    this.#gnext = grow(this.#gnext, (n) => new Int32Array(n));
    this.#gprev = grow(this.#gprev, (n) => new Int32Array(n));
    this.#owner = grow(this.#owner, (n) => new Uint8Array(n));
    this.#nonce = grow(this.#nonce, (n) => new Uint32Array(n * (NONCE_LEN / 4)));
    this.#onext = grow(this.#onext, (n) => new Int32Array(n));
    this.#oprev = grow(this.#oprev, (n) => new Int32Array(n));
    this.#cap = cap;
  }

  #insert(
    proto: number,
    a: number,
    pa: number,
    x: number,
    px: number,
    ri: number,
    p: number,
    pg: number,
    flags: number,
    expiresAt: number,
    life: number,
    out: number,
    inb: number,
    owner: OwnerKind,
    nonce: Uint8Array | undefined,
  ): number {
    let s: number;
    if (this.#freeHead >= 0) {
      s = this.#freeHead;
      this.#freeHead = this.#gnext[s]!;
    } else {
      if (this.#hw === this.#cap) this.#resize(this.#cap * 2);
      s = this.#hw++;
    }
    const r = this.#pool[ri]!;
    this.#proto[s] = proto;
    this.#flags[s] = flags;
    this.#a[s] = a;
    this.#pa[s] = pa;
    this.#x[s] = x;
    this.#px[s] = px;
    this.#r[s] = r;
    this.#ri[s] = ri;
    this.#p[s] = p;
    this.#pg[s] = pg;
    this.#exp[s] = expiresAt;
    this.#life[s] = life;
    this.#out[s] = out;
    this.#in[s] = inb;

    this.#id.insert(s, this.#hashId(proto, a, pa, x, px));
    if ((flags & F_MAP) === 0) this.#lan.insert(s, this.#hashLan(proto, a, pg));
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

    const pi = protoIndex(proto);
    const use = this.#portUse[pi]!;
    const key = ((ri << 16) | p) >>> 0;
    if (use.find(key) < 0) {
      this.#unhold(pi, key);
      if (this.#inRange(p)) {
        this.#inRangeBusy[pi]!++;
        this.#busy[pi * this.#pool.length + ri]!++;
      }
    }
    use.vals[use.upsert(key)]!++;
    const hb = this.#hosts.upsert(a);
    const hv = this.#hosts.vals;
    hv[hb * HS]!++;
    hv[hb * HS + 1 + pi]!++;
    // Paired pooling: the first session (or the first after the paired address
    // emptied, which only restored state can cause) sets the host's address.
    if (hv[hb * HS + 5] === 0) {
      hv[hb * HS + 4] = ri;
      hv[hb * HS + 5] = 1;
    } else if (hv[hb * HS + 4] === ri) hv[hb * HS + 5]!++;
    this.#owner[s] = owner;
    this.#setNonce(s, nonce);
    if (isUnverified(owner)) this.#linkUnverified(s, a);
    this.#size++;
    for (const sub of this.#subs) sub.added?.(s);
    return s;
  }

  /** The budgets a new row of `owner` for host `a` must fit in: OK, QUOTA_EXCEEDED or NO_RESOURCES. */
  #quota(a: number, pi: number, owner: number): number {
    const hb = this.#hosts.find(a);
    const hv = this.#hosts.vals;
    const total = hb < 0 ? 0 : hv[hb * HS]!;
    const unverified = hb < 0 ? 0 : hv[hb * HS + 6]!;
    if (!isUnverified(owner)) {
      return total - unverified >= this.#maxPerHost ? Result.QUOTA_EXCEEDED : Result.OK;
    }
    if (unverified >= this.#maxUnverifiedPerHost) return Result.QUOTA_EXCEEDED;
    return this.#unverified[pi]! >= this.#maxUnverifiedPerProto ? Result.NO_RESOURCES : Result.OK;
  }

  #setNonce(s: number, nonce: Uint8Array | undefined): void {
    const w = s * (NONCE_LEN / 4);
    if (!nonce || nonce.length !== NONCE_LEN) {
      this.#nonce.fill(0, w, w + NONCE_LEN / 4);
      return;
    }
    const v = new DataView(nonce.buffer, nonce.byteOffset, NONCE_LEN);
    for (let k = 0; k < NONCE_LEN / 4; k++) this.#nonce[w + k] = v.getUint32(k * 4);
  }

  /** Puts live slot `s` at the head of host `a`'s unverified rows (its host entry exists). */
  #linkUnverified(s: number, a: number): void {
    const hb = this.#hosts.find(a);
    const hv = this.#hosts.vals;
    const head = hv[hb * HS + 7]! - 1;
    this.#oprev[s] = -1;
    this.#onext[s] = head;
    if (head >= 0) this.#oprev[head] = s;
    hv[hb * HS + 7] = s + 1;
    hv[hb * HS + 6]!++;
    this.#unverified[protoIndex(this.#proto[s]!)]!++;
  }

  #unlinkUnverified(s: number, a: number): void {
    const hb = this.#hosts.find(a);
    const hv = this.#hosts.vals;
    const prev = this.#oprev[s]!;
    const next = this.#onext[s]!;
    if (prev < 0) hv[hb * HS + 7] = next + 1;
    else this.#onext[prev] = next;
    if (next >= 0) this.#oprev[next] = prev;
    hv[hb * HS + 6]!--;
    this.#unverified[protoIndex(this.#proto[s]!)]!--;
  }

  #remove(s: number): void {
    for (const sub of this.#subs) sub.removed?.(s);
    const proto = this.#proto[s]!;
    const a = this.#a[s]!;
    const pa = this.#pa[s]!;
    const x = this.#x[s]!;
    const px = this.#px[s]!;
    const p = this.#p[s]!;
    const ri = this.#ri[s]!;
    this.#id.remove(s, this.#hashId(proto, a, pa, x, px));
    if ((this.#flags[s]! & F_MAP) === 0) this.#lan.remove(s, this.#hashLan(proto, a, this.#pg[s]!));
    this.#pub.remove(s, this.#hashPub(proto, this.#r[s]!, p, x, px));

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

    if (isUnverified(this.#owner[s]!)) this.#unlinkUnverified(s, a);
    this.#owner[s] = Owner.ADOPTED;

    const pi = protoIndex(proto);
    const use = this.#portUse[pi]!;
    const key = ((ri << 16) | p) >>> 0;
    const b = use.find(key);
    if (--use.vals[b]! === 0) {
      use.deleteAt(b);
      // The port stays busy while it is held (RFC 6888 REQ-8).
      if (this.#holdMs > 0) this.#hold(pi, key, a);
      else if (this.#inRange(p)) {
        this.#inRangeBusy[pi]!--;
        this.#busy[pi * this.#pool.length + ri]!--;
      }
    }
    const hb = this.#hosts.find(a);
    const hv = this.#hosts.vals;
    hv[hb * HS + 1 + pi]!--;
    if (hv[hb * HS + 4] === ri && hv[hb * HS + 5]! > 0) hv[hb * HS + 5]!--;
    if (--hv[hb * HS]! === 0) this.#hosts.deleteAt(hb);

    this.#flags[s] = 0;
    this.#gnext[s] = this.#freeHead;
    this.#freeHead = s;
    this.#size--;
  }
}
