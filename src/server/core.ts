/**
 * The gateway role (`dpm server`): its decisions, and the parts it composes.
 *
 * Theory of operation. The server owns the public pool and the lookup table
 * (`table.ts`). Its control listener (UDP on the LAN address G, port 4750)
 * answers reserve / renew / release / map requests from drivers, after
 * checking that the source is a unicast LAN host and not the gateway
 * (`policy/hosts.ts`), that each request's internal address is the
 * datagram's source (claim 2), that the host holds a valid cookie, and that
 * it is within its request rate; PCP and NAT-PMP (UDP 5351,
 * `pcp/server.ts`) share the table and the source check, with rate limits
 * and budgets of their own, and so does the UPnP IGD (`upnp/`: its sockets
 * are `run.ts`'s, its mappings {@linkcode ServerCore.upnp}, on this table).
 * Every mapping, whichever protocol asks, is
 * decided by one policy (`policy/mappings.ts`: ownership, port rules, the
 * gateway's own ports, budgets). Refusals are answered within a
 * per-source budget and logged within a line budget. {@link ServerCore}
 * holds these decisions and composes the rest:
 *
 * - `translate.ts` (`Translator`): where a packet is translated at the
 *   gateway (`handlePacket`, the queue data path's packets and the kernel
 *   path's ICMP errors and hairpins): LAN to WAN, WAN to LAN, hairpinning,
 *   mappings and direct sessions, ICMP errors (RFC 5508);
 * - `first.ts` (`FirstPackets`): what becomes of a packet handed up, and of
 *   a first packet held for its request (`held.ts`) until the turn's
 *   commit (`releaseHeld`) or its expiry;
 * - `views.ts` (`ServerViews`): the operator's side (`status`, `rows`,
 *   `hostView`, `drop`, `watch` and its session events, the per-session
 *   bytes, ages and idle times);
 * - the data path (`attach`, `detach`): told every session added or removed.
 *
 * The counters (`results`, `drops`, `packets`) are this class's; the parts
 * above count into them. Only this file and the driver's `core.ts` read the
 * clock: the parts are given it.
 *
 * @module
 */

import { type Cidr, cidrContains } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { LineBudget, RateLimiter } from "../control/ratelimit.ts";
import { CookieMinter } from "../control/cookie.ts";
import { RESULT_COUNT } from "../control/result.ts";
import { driverShareStart } from "../control/pg.ts";
import { PcpService } from "../pcp/server.ts";
import { NO_LINK, TableUpnpMappings } from "../upnp/gateway.ts";
import type { LinkState } from "../upnp/mappings.ts";
import { SessionTable } from "../table/table.ts";
import { LanHosts } from "../policy/hosts.ts";
import { MappingPolicy } from "../policy/mappings.ts";
import type { BoundPort } from "../policy/gateway_ports.ts";
import { DROP_COUNT } from "../wire/packet.ts";
import type {
  HaStatus,
  HostView,
  MappingProtocols,
  SessionEvent,
  SessionView,
  StatusReply,
  UpnpStatus,
} from "../operator/types.ts";
import { NatPmpResult, PcpResult } from "../pcp/codec.ts";
import type { GatewaySession, ServerDataPath, SessionCounters } from "../datapath/datapath.ts";
import { type DropLog, kernelRecord, restoreRecord } from "./restore.ts";
import { Translator } from "./translate.ts";
import { ServerViews } from "./views.ts";
import { ControlService } from "./control.ts";
import { HeldPackets } from "./held.ts";
import type { PortSlice } from "../table/slice.ts";
import { FirstPackets, type FirstPacketsContext } from "./first.ts";

export { sessionView } from "./views.ts";

const log = logger("server");

/** Options of the translator core that tests set. */
export interface ServerCoreOptions {
  /** LAN prefix; requests' remotes inside it are refused. Null: only G and the pool are refused. */
  lan: Cidr | null;
  /** Epoch to use (a restored state keeps its epoch); random when absent. */
  epoch?: number;
  /** Clock, ms. */
  now?: () => number;
  /** Where refusal lines go (rate-limited); the server's info log when absent. */
  refusalLog?: (line: string) => void;
  /** The WAN link as the UPnP IGD shows it (`run.ts` reads the WAN interface); up, no counts when absent. */
  link?: () => LinkState;
  /**
   * The key cookies derive from (`--cookie-secret-file`: an HA pair shares
   * it, `CookieMinter.shared`); random secrets when absent.
   */
  cookieKey?: Uint8Array;
  /**
   * The slice of the public ports this core's table owns (`dpm server
   * --workers`, `table/slice.ts`); every port when absent.
   */
  slice?: PortSlice;
  /**
   * Where the control protocol's decisions on held first packets go: a
   * worker's core relays them to the thread that holds the packets
   * (`worker.ts`); a core of its own when absent.
   */
  held?: HeldPackets;
  /** `--workers`: held first packets of another worker's sessions go there (`first.ts`). */
  elsewhere?: FirstPacketsContext["elsewhere"];
}

/**
 * Refusals answered per source address per second (and the burst), for the
 * answers that are not a verified host's own business: COOKIE_REQUIRED,
 * NOT_AUTHORIZED, RATE_LIMITED and undecodable requests. Beyond it the
 * server is silent, so forged requests cannot be reflected at a host.
 */
export const REFUSAL_RATE = 4;
export const REFUSAL_BURST = 8;
/** Refusal log lines per second, overall; the rest are counted in a "suppressed" line. */
export const REFUSAL_LOG_LINES = 10;

/**
 * The server's state and logic without sockets: control-message handling and
 * packet translation (`translate.ts`) are methods tests can call directly
 * with bytes; the operator's views (`views.ts`) are methods too.
 */
export class ServerCore {
  readonly table: SessionTable;
  readonly startedAt: number;
  readonly results = new Float64Array(RESULT_COUNT);
  readonly drops = new Float64Array(DROP_COUNT);
  readonly packets = { in: 0, out: 0, hairpin: 0 };
  readonly #cfg: ServerConfig;
  readonly #lan: Cidr | null;
  readonly #limiter: RateLimiter;
  /** PCP's and NAT-PMP's own per-host rate (`--pcp-rate-limit`). */
  readonly #pcpLimiter: RateLimiter;
  readonly #refusals = new RateLimiter(REFUSAL_RATE, REFUSAL_BURST);
  readonly #cookies: CookieMinter;
  readonly #lines = new LineBudget(REFUSAL_LOG_LINES);
  readonly #refusalLog: (line: string) => void;
  /** dpm's control protocol, every version (`control.ts`). */
  readonly #control: ControlService;
  /** First packets that went ahead of their request (`held.ts`). */
  readonly held: HeldPackets;
  /** Packets handed up, first packets held and let go (`first.ts`). */
  readonly #first: FirstPackets;
  readonly now: () => number;

  #dp: ServerDataPath | null = null;
  /** Stops telling the data path of session changes (detach). */
  #unsubscribeDp: () => void = () => {};
  /** What applies a turn's changes before its grants are answered: the data path, the state file. */
  readonly #committers: Committer[] = [];
  #epoch: number;
  /** When the epoch began (ms): PCP and NAT-PMP count their epoch time from it. */
  #epochStart: number;
  /** The operator's side (`views.ts`). */
  readonly #views: ServerViews;
  /** The packet translation (`translate.ts`). */
  readonly #translator: Translator;

  constructor(cfg: ServerConfig, opts: ServerCoreOptions) {
    this.#cfg = cfg;
    this.#lan = opts.lan;
    this.now = opts.now ?? Date.now;
    this.startedAt = this.now();
    this.#epochStart = this.startedAt;
    this.#epoch = (opts.epoch ?? randomEpoch()) >>> 0;
    this.held = opts.held ?? new HeldPackets();
    this.table = new SessionTable({
      pool: cfg.pool,
      ...(opts.slice ? { slice: opts.slice } : {}),
      portMin: cfg.portRange[0],
      portMax: cfg.portRange[1],
      gatewayPortMin: cfg.gatewayPorts[0],
      gatewayPortMax: cfg.gatewayPorts[1],
      driverPortMin: driverShareStart(cfg.gatewayPorts),
      maxSessionsPerHost: cfg.maxSessionsPerHost,
      // PCP and NAT-PMP (no cookie): a cap per host, and a share of each protocol's public pairs.
      maxUnverifiedPerHost: cfg.pcpMaxPerHost,
      maxUnverifiedPerProto: unverifiedShare(cfg),
      // UPnP (TCP proves the address): within the host's quota, and a cap per host.
      maxUpnpPerHost: cfg.upnpMaxPerHost,
      // --lifetime caps every lifetime; the RFC-respecting defaults apply below it.
      lifetimes: {
        max: cfg.lifetime,
        min: Math.min(30, cfg.lifetime),
        udp: Math.min(300, cfg.lifetime),
        tcp: Math.min(7440, cfg.lifetime),
        icmp: Math.min(60, cfg.lifetime),
      },
    });
    this.#limiter = new RateLimiter(cfg.rateLimit);
    this.#pcpLimiter = new RateLimiter(cfg.pcpRateLimit);
    this.#cookies = opts.cookieKey
      ? CookieMinter.shared(opts.cookieKey, this.startedAt)
      : new CookieMinter(this.startedAt);
    this.#refusalLog = opts.refusalLog ?? ((line) => log.info(line));
    this.hosts = new LanHosts({ lan: this.#lan, gateway: cfg.lanAddr, pool: cfg.pool });
    this.policy = new MappingPolicy({
      table: this.table,
      rules: cfg.mapRules,
      pool: cfg.pool,
      log: (line) => this.#logRefusal(this.now(), line),
      notice: (line) => log.warn(line),
    });
    // PCP and NAT-PMP (UDP 5351): the same table, source check and mapping policy.
    this.pcp = new PcpService({
      table: this.table,
      hosts: this.hosts,
      policy: this.policy,
      epochStart: () => this.#epochStart,
      limiter: this.#pcpLimiter,
      refusals: this.#refusals,
      mapSupported: () => this.#forwardsMappings(),
      remoteIsOutside: (x) => this.#remoteIsOutside(x),
      log: (line) => this.#logRefusal(this.now(), line),
    });
    // The UPnP IGD's mappings: the same table, source check and mapping policy.
    this.upnp = new TableUpnpMappings({
      table: this.table,
      policy: this.policy,
      hosts: this.hosts,
      mapSupported: () => this.#forwardsMappings(),
      link: opts.link ?? (() => NO_LINK),
    });
    const views = new ServerViews({
      table: this.table,
      cfg,
      epoch: () => this.#epoch,
      startedAt: this.startedAt,
      now: this.now,
      results: this.results,
      drops: this.drops,
      packets: this.packets,
      dataPath: () => this.#dp,
      protocols: () => this.protocols(),
      ha: () => this.haStatus?.() ?? null,
      held: () => ({ ...this.held.stats, now: this.held.size }),
      datagrams: () => ({ ...this.#control.datagrams }),
    });
    this.#views = views;
    this.#translator = new Translator({
      table: this.table,
      cfg,
      drops: this.drops,
      packets: this.packets,
      countBytes: (s, outbound, n) => views.countBytes(s, outbound, n),
    });
    this.#first = new FirstPackets({
      table: this.table,
      held: this.held,
      translator: this.#translator,
      drops: this.drops,
      dp: () => this.#dp,
      now: this.now,
      ...(opts.elsewhere ? { elsewhere: opts.elsewhere } : {}),
    });
    this.table.subscribe({ added: (s) => views.added(s), removed: (s) => views.removed(s) });
    this.#control = new ControlService({
      cfg,
      table: this.table,
      hosts: this.hosts,
      policy: this.policy,
      limiter: this.#limiter,
      refusals: this.#refusals,
      cookies: this.#cookies,
      held: this.held,
      results: this.results,
      epoch: () => this.#epoch,
      forwardsMappings: () => this.#forwardsMappings(),
      remoteIsOutside: (x) => this.#remoteIsOutside(x),
      noteRefusal: (src, result, request, now) => views.noteRefusal(src, result, request, now),
      logRefusal: (now, line) => this.#logRefusal(now, line),
    });
  }

  /** The server's epoch: drivers that see it change reserve their sessions again. */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Starts a new epoch, keeping the table: after a restore dropped sessions
   * a driver may still hold (`DropLog.renewsEpoch`), every driver learns at
   * its next exchange that it must reserve again, and PCP and NAT-PMP
   * clients (whose epoch time starts again at 0) that they must map again.
   */
  renewEpoch(to?: number): void {
    const was = this.#epoch;
    // A worker takes the epoch its main thread chose (`workers.ts`).
    if (to !== undefined) this.#epoch = to >>> 0;
    else do this.#epoch = randomEpoch(); while (this.#epoch === was);
    this.#epochStart = this.now();
  }

  /**
   * Takes into the table the sessions the data path still translates from
   * a previous run (`ServerDataPath.adopt`) that the table (restored from the
   * state file, or empty) does not hold. Returns the ones the table will
   * not hold (a clash, or dropped by the state file's restore as `drops`
   * tells): the caller has the data path remove them before it begins.
   */
  adopt(found: GatewaySession[], drops: DropLog): { adopted: number; stale: GatewaySession[] } {
    const t = this.table;
    const now = this.now();
    let adopted = 0;
    const stale: GatewaySession[] = [];
    for (const s of found) {
      const held = t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px);
      if (held >= 0) {
        if (t.r(held) !== s.r || t.p(held) !== s.p || t.pg(held) !== s.pg) stale.push(s);
        continue;
      }
      // A session the state file dropped stays dropped.
      if (drops.dropped(s)) {
        stale.push(s);
        continue;
      }
      const rec = kernelRecord(t, s, now);
      if (restoreRecord(t, rec, now, drops, "the kernel's maps")) adopted++;
      else stale.push(s);
    }
    return { adopted, stale };
  }

  /**
   * Something that must apply a turn's session changes before the turn's
   * grants are answered (the data path, the state file): `commit` runs them
   * all, in the order they were added.
   */
  addCommitter(c: Committer): void {
    this.#committers.push(c);
  }

  /**
   * Applies the turn's session changes: the data path programs the kernel,
   * the state file commits. Every answer that grants (dpm's protocol, PCP,
   * NAT-PMP, the operator's drop) is sent only after this returned.
   */
  commit(): void {
    for (const c of this.#committers) c.commit();
  }

  /** The PCP / NAT-PMP service (`src/pcp/server.ts`). */
  readonly pcp: PcpService;
  /** The UPnP IGD's mappings on the table (`src/upnp/gateway.ts`); `run.ts` serves them. */
  readonly upnp: TableUpnpMappings;
  /** The HA role's status (`run.ts` sets it with --ha). */
  haStatus: (() => HaStatus) | null = null;
  /** What the running IGD counted (`run.ts` sets it; null: --no-upnp). */
  upnpStatus: (() => UpnpStatus) | null = null;

  /** The mappings by owner and each mapping protocol's answers (status, metrics). */
  protocols(): MappingProtocols {
    const named = (codes: Record<string, number>, counts: Float64Array) => {
      const out: Record<string, number> = {};
      for (const [name, i] of Object.entries(codes)) out[name.toLowerCase()] = counts[i] ?? 0;
      return out;
    };
    return {
      mappings: this.upnp.countByOwner(),
      ...(this.#cfg.pcp
        ? {
          pcp: named(PcpResult, this.pcp.pcpResults),
          natpmp: named(NatPmpResult, this.pcp.natPmpResults),
        }
        : {}),
      ...(this.upnpStatus ? { upnp: this.upnpStatus() } : {}),
    };
  }
  /** Which sources are LAN hosts (every protocol's first check). */
  readonly hosts: LanHosts;
  /** The mapping decisions of every protocol (`src/policy/mappings.ts`). */
  readonly policy: MappingPolicy;
  /** Control datagrams dropped unanswered because their source is not a LAN host. */
  get notHost(): number {
    return this.#control.notHost;
  }

  /** Refusals not answered (over a source's refusal budget, or shorter than an answer). */
  get unanswered(): number {
    return this.#control.unanswered;
  }

  /** Unverified control datagrams shed undecoded while their source's refusal budget was spent (in `unanswered` too). */
  get shed(): number {
    return this.#control.shed;
  }

  /**
   * What the gateway's kernel says now (`run.ts`, once a second, read in
   * its namespace): its own addresses (`readLocalAddresses`), never a
   * host's, and its TCP and UDP sockets, whose public ports no mapping
   * takes; a mapping on a port the gateway has started to hold goes.
   * Returns how many mappings went.
   */
  gatewayState(
    local: ReadonlySet<number>,
    tcp: Iterable<BoundPort>,
    udp: Iterable<BoundPort>,
  ): number {
    this.hosts.setLocal(local);
    return this.policy.gatewayListening(tcp, udp, this.now());
  }

  /**
   * After a restore (`run.ts`): removes rows a current server would not
   * have granted (a host that is not a LAN host; a mapping on a public port
   * the rules refuse or the gateway holds). Returns how many went.
   */
  audit(): number {
    return this.policy.audit((a) => this.hosts.isHost(a), this.now());
  }

  /** Handles one PCP or NAT-PMP datagram (UDP 5351) from `src`; the reply or null. */
  handlePcp(msg: Uint8Array, src: number): Uint8Array | null {
    return this.pcp.handle(msg, src, this.now());
  }

  /**
   * Handles one control datagram from `src` (host order), of any protocol
   * version (`control.ts`). Returns the reply bytes, or null when nothing
   * must be sent (garbage is never answered). Grants are committed by
   * {@linkcode commit}, which the caller runs before it sends them.
   */
  handleControl(msg: Uint8Array, src: number): Uint8Array | null {
    return this.#control.handle(msg, src, this.now());
  }

  /**
   * Logs a line of a protocol served outside this class (the UPnP IGD's
   * faults and grants) within the refusal lines' budget.
   */
  logLimited(line: string): void {
    this.#logRefusal(this.now(), line);
  }

  /** Writes a refusal line within the log budget, after a summary of what it held back. */
  #logRefusal(now: number, line: string | (() => string)): void {
    this.#flushRefusalLog(now);
    if (this.#lines.take(now)) this.#refusalLog(typeof line === "function" ? line() : line);
  }

  #flushRefusalLog(now: number): void {
    const k = this.#lines.flush(now);
    if (k) {
      this.#refusalLog(
        `suppressed ${k} refusal line(s) (more than ${REFUSAL_LOG_LINES} a second)`,
      );
    }
  }

  #remoteIsOutside(x: number): boolean {
    if (x === this.#cfg.lanAddr) return false;
    if (this.#lan && cidrContains(this.#lan, x)) return false;
    // A pool address is a valid remote: that is hairpinning to another host's public pair.
    return true;
  }

  /**
   * Translates one packet the data path handed up, in place
   * (`translate.ts`). Returns Verdict.MODIFIED when the bytes were
   * rewritten, ACCEPT to let it pass unchanged, DROP otherwise (each drop
   * counted by reason), HOLD for the first packet of a session whose
   * request has not been granted yet (`first.ts`, `held.ts`: its verdict comes through
   * the data path's `io` once the request is answered, `id` is its queue
   * id). `skbInfo`: the queue's `NFQA_SKB_INFO` bits for this packet
   * (CHECKSUM_PARTIAL, GSO; see `rewrite`), and `Meta.MISSED` when the
   * kernel's maps had no session for it.
   */
  handlePacket(pkt: Uint8Array, skbInfo = 0, id = -1): number {
    return this.#first.handle(pkt, skbInfo, id);
  }

  /**
   * The held packets whose request was answered (and committed): those of a
   * grant go on, the others are dropped (`first.ts`). The control listener
   * runs it after the turn's commit (`run.ts`).
   */
  releaseHeld(): void {
    this.#first.release();
  }

  /**
   * The data path forwards mappings and direct sessions (as it declares);
   * without a data path (control plane only, as in tests), the operator's
   * own network does, until the server stops.
   */
  #forwardsMappings(): boolean {
    const dp = this.#dp;
    if (dp === null) return !this.#detached;
    return dp.can.forwardsMappings();
  }

  /**
   * Connects the data path: every session added or removed from now on is
   * handed to it (`begin` gets every session the table holds already), and
   * it commits with the turn ({@linkcode commit}).
   */
  attach(dp: ServerDataPath): void {
    this.#dp = dp;
    this.#committers.unshift(dp);
    const t = this.table;
    this.#unsubscribeDp = t.subscribe({
      added: (s) => dp.sessionUp(gatewaySessionOf(t, s)),
      removed: (s) => dp.sessionDown(gatewaySessionOf(t, s)),
    });
  }

  /** Every session as the data path sees it (to program them all at once). */
  *sessions(): IterableIterator<GatewaySession> {
    const t = this.table;
    for (const s of t.slots()) yield gatewaySessionOf(t, s);
  }

  /** Disconnects the data path (on stop): the table no longer reports to it. */
  detach(): void {
    const dp = this.#dp;
    this.#dp = null;
    this.#unsubscribeDp();
    const i = dp ? this.#committers.indexOf(dp) : -1;
    if (i >= 0) this.#committers.splice(i, 1);
    this.#detached = true;
  }

  /** Detached (stopping): nothing forwards mappings any more. */
  #detached = false;

  /**
   * Forgets idle rate-limit buckets, and logs how many refusal lines were
   * suppressed (call periodically).
   */
  sweepRateLimits(): void {
    const now = this.now();
    this.#limiter.sweep(now);
    this.#pcpLimiter.sweep(now);
    this.#refusals.sweep(now);
    this.#flushRefusalLog(now);
  }

  /**
   * Expires sessions past their lifetime; returns how many left. With a
   * `budget` (slots scanned), the sweep is incremental and resumes where it
   * stopped, so a million-session table never blocks the event loop for long.
   */
  expire(budget?: number): number {
    this.#first.expire(this.now());
    try {
      return this.#views.removing(
        "expired",
        () =>
          budget === undefined
            ? this.table.expire(this.now())
            : this.table.expire(this.now(), budget),
      );
    } finally {
      // Where the core sees every packet, last-seen is sampled along the sweep.
      if (!this.#dp?.can.countsPerSession) this.#views.sample(budget);
    }
  }

  // ---- the operator's side (views.ts) ----

  /** The data path's per-session kernel counters summed, or null when it keeps none. */
  kernelTotals(): SessionCounters | null {
    return this.#views.kernelTotals();
  }

  /** The status reply for `dpm status`. */
  status(limit = 1000): StatusReply {
    return this.#views.status(limit);
  }

  /**
   * The status without its rows (`dpm status` streams the rows after it);
   * with `host`, that host's quota use and refusals too.
   */
  statusHeader(host?: number): Omit<StatusReply, "shown"> {
    return this.#views.statusHeader(host);
  }

  /**
   * The table's rows for status, in slot order, one at a time (a million
   * are never one array): all of them, or one host's, at most `limit`.
   * Kernel counters are read once, when the first row is asked for. Rows
   * may be taken across event-loop turns: a session added or removed
   * meanwhile may or may not be listed (as with `conntrack -L`).
   */
  rows(o: { host?: number; limit?: number } = {}): Generator<SessionView> {
    return this.#views.rows(o);
  }

  /** One host's share: its sessions by protocol against the quota, its pairing, its refusals. */
  hostView(a: number): HostView {
    return this.#views.hostView(a);
  }

  /**
   * Drops sessions as an operator asks (`dpm drop`, like `conntrack -D`):
   * one by its identity, or every session of a host. They leave the table,
   * and so the data path (the kernel's maps and conntracks); their hosts
   * learn it at their next renewal. Returns how many went.
   */
  drop(
    sel: { host: number } | { proto: number; a: number; pa: number; x: number; px: number },
  ): number {
    return this.#views.drop(sel);
  }

  /** Calls `fn` with every session event (up, down, refused) until the returned function is called. */
  watch(fn: (e: SessionEvent) => void): () => void {
    return this.#views.watch(fn);
  }

  /** Bytes this core keeps per session for the operator's view (not counted in table.bytes). */
  get viewBytes(): number {
    return this.#views.viewBytes;
  }
}

/**
 * The most rows PCP and NAT-PMP may hold per IP protocol, all hosts
 * together: `--pcp-max-share` percent of the pool's public pairs
 * (addresses times replacement ports).
 */
export function unverifiedShare(
  cfg: Pick<ServerConfig, "pool" | "portRange" | "pcpMaxShare">,
): number {
  const pairs = cfg.pool.length * (cfg.portRange[1] - cfg.portRange[0] + 1);
  return Math.floor((pairs * cfg.pcpMaxShare) / 100);
}

/** Applies a turn's session changes (see {@linkcode ServerCore.commit}). */
export interface Committer {
  commit(): void;
}

function randomEpoch(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/** Slot `s` of `t` as the data path sees it (`direct`: PCP PEER, table/allocate.ts). */
function gatewaySessionOf(t: SessionTable, s: number): GatewaySession {
  return t.direct(s) ? { ...t.binding(s), direct: true } : t.binding(s);
}
