/**
 * The session table's options, checked once into the {@link TableConfig}
 * that every part of the table reads (`table.ts` gives the map of the
 * parts).
 *
 * ## Lifetimes
 *
 * Lifetimes are leases in seconds. Defaults honour the RFC minima for idle
 * timers: UDP 300 s (RFC 4787 REQ-5: at least 120 s, 300 s recommended), TCP
 * 7440 s (RFC 5382 REQ-5: established at least 2 h 4 min), ICMP 60 s (RFC
 * 5508 REQ-1). A requested lifetime of 0 means the default; any other value
 * is clamped to [min, max] (default 30 s .. 86400 s) by
 * {@link grantedLifetime}. A host may ask for a lease shorter than the RFC
 * idle minimum because it renews its own busy sessions (as a PCP client
 * picks its lifetime, RFC 6887 section 15); the RFC minima bind a NAT that
 * decides on its own that a mapping is idle. How a lease ends is told in
 * `table.ts` ("Expiry").
 *
 * @module
 */

import { protoIndex } from "../wire/meta.ts";
import { type PortSlice, sliceOf, sliceRange, WHOLE } from "./slice.ts";

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

/** Options of `SessionTable`. */
export interface TableOptions {
  /** Public addresses (host order), at most 65536, no duplicates. Order is kept. */
  pool: number[];
  /** Lowest replacement port. @default 1024 */
  portMin?: number;
  /** Highest replacement port. @default 65535 */
  portMax?: number;
  /**
   * The slice of the public ports this table owns (`dpm server --workers`,
   * `slice.ts`): replacement ports come from its part of [portMin,
   * portMax], and no port of another slice is preserved, shared or mapped.
   * @default every port
   */
  slice?: PortSlice;
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
   * UPnP rows one internal address may hold (they also count toward
   * `maxSessionsPerHost`: TCP proves UPnP's address). @default 64
   */
  maxUpnpPerHost?: number;
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

/** {@link TableOptions} checked, with every default filled in. */
export interface TableConfig {
  /** The pool, in configuration order. */
  readonly pool: Uint32Array;
  /** Public address -> its index in `pool`. */
  readonly poolIndex: ReadonlyMap<number, number>;
  /** The replacement ports of this table's slice (`TableOptions.slice`). */
  readonly portMin: number;
  readonly portMax: number;
  /** Public port `p` lies in this table's slice (always true without one). */
  readonly owns: (p: number) => boolean;
  /** Gateway LAN-side ports (Pg). */
  readonly pgMin: number;
  readonly pgMax: number;
  /** The first Pg of the drivers' share (`pgMax + 1`: none). */
  readonly pgDriverMin: number;
  readonly maxPerHost: number;
  readonly maxUnverifiedPerHost: number;
  readonly maxUpnpPerHost: number;
  /** Infinity when there is no limit. */
  readonly maxUnverifiedPerProto: number;
  /** Default leases, seconds, by protocol index (icmp, tcp, udp). */
  readonly defaults: readonly [number, number, number];
  readonly lifeMin: number;
  readonly lifeMax: number;
  readonly random: () => number;
  /** Seeds every hash of the table: the public key contains the outsider's X:px. */
  readonly seed: number;
  /** Paired pooling (`TableOptions.pooling`). */
  readonly paired: boolean;
  /** Port hold, milliseconds (0: none). */
  readonly holdMs: number;
  readonly initialCapacity: number;
}

function checkInt(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`Option ${name} must be an integer in ${lo}..${hi}, got "${v}"`);
  }
  return v;
}

/** Checks `opts` and fills in the defaults. Throws RangeError on bad options. */
export function tableConfig(opts: TableOptions): TableConfig {
  if (opts.pool.length === 0) throw new RangeError("Option pool must not be empty");
  if (opts.pool.length > 65536) {
    throw new RangeError(`Option pool has "${opts.pool.length}" addresses, more than 65536`);
  }
  const pool = new Uint32Array(opts.pool.length);
  const poolIndex = new Map<number, number>();
  opts.pool.forEach((addr, i) => {
    checkInt("pool", addr, 0, 0xffffffff);
    if (poolIndex.has(addr)) throw new RangeError(`Option pool repeats "${addr}"`);
    pool[i] = addr;
    poolIndex.set(addr, i);
  });
  // In the order of the options above, so that the first bad one is the one reported.
  const rangeMin = checkInt("portMin", opts.portMin ?? 1024, 1, 65535);
  const rangeMax = checkInt("portMax", opts.portMax ?? 65535, rangeMin, 65535);
  const slice = opts.slice ?? WHOLE;
  const [portMin, portMax] = sliceRange(rangeMin, rangeMax, slice);
  const owns = slice.count === 1
    ? () => true
    : (p: number) => sliceOf(rangeMin, rangeMax, slice.count, p) === slice.index;
  const pgMin = checkInt("gatewayPortMin", opts.gatewayPortMin ?? 61000, 1, 65535);
  const pgMax = checkInt("gatewayPortMax", opts.gatewayPortMax ?? 65535, pgMin, 65535);
  const pgDriverMin = checkInt("driverPortMin", opts.driverPortMin ?? pgMax + 1, pgMin, pgMax + 1);
  const maxPerHost = checkInt("maxSessionsPerHost", opts.maxSessionsPerHost ?? 4096, 1, 2 ** 31);
  const maxUnverifiedPerHost = checkInt(
    "maxUnverifiedPerHost",
    opts.maxUnverifiedPerHost ?? 64,
    0,
    2 ** 31,
  );
  const maxUpnpPerHost = checkInt("maxUpnpPerHost", opts.maxUpnpPerHost ?? 64, 0, 2 ** 31);
  const maxUnverifiedPerProto = opts.maxUnverifiedPerProto === undefined
    ? Infinity
    : checkInt("maxUnverifiedPerProto", opts.maxUnverifiedPerProto, 0, 2 ** 32);
  const l = opts.lifetimes ?? {};
  const lifeMax = checkInt("lifetimes.max", l.max ?? 86400, 1, 2 ** 31);
  const lifeMin = checkInt("lifetimes.min", l.min ?? 30, 1, lifeMax);
  const defaults = [
    checkInt("lifetimes.icmp", l.icmp ?? 60, lifeMin, lifeMax),
    checkInt("lifetimes.tcp", l.tcp ?? 7440, lifeMin, lifeMax),
    checkInt("lifetimes.udp", l.udp ?? 300, lifeMin, lifeMax),
  ] as const;
  const pooling = opts.pooling ?? "paired";
  if (pooling !== "paired" && pooling !== "arbitrary") {
    throw new RangeError(`Option pooling must be "paired" or "arbitrary", got "${pooling}"`);
  }
  const holdMs = checkInt("portHold", opts.portHold ?? 120, 0, 86400) * 1000;
  const initialCapacity = checkInt("initialCapacity", opts.initialCapacity ?? 1024, 1, 2 ** 30);
  return {
    pool,
    poolIndex,
    portMin,
    portMax,
    owns,
    pgMin,
    pgMax,
    pgDriverMin,
    maxPerHost,
    maxUnverifiedPerHost,
    maxUpnpPerHost,
    maxUnverifiedPerProto,
    defaults,
    lifeMin,
    lifeMax,
    random: opts.random ?? Math.random,
    seed: crypto.getRandomValues(new Uint32Array(1))[0]! | 0,
    paired: pooling === "paired",
    holdMs,
    initialCapacity,
  };
}

/** The lease that a request for `lifetime` seconds gets (0 = default); 0 for an unknown protocol. */
export function grantedLifetime(cfg: TableConfig, proto: number, lifetime: number): number {
  const pi = protoIndex(proto);
  if (pi < 0) return 0;
  if (lifetime === 0) return cfg.defaults[pi]!;
  return Math.min(cfg.lifeMax, Math.max(cfg.lifeMin, Math.floor(lifetime)));
}
