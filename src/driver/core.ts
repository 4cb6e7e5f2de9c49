/**
 * The host role (`dpm driver`): its sessions, the packets it translates and
 * the leases it holds for them.
 *
 * Theory of operation. The driver sees every packet the host sends to an
 * address outside the LAN (raw OUTPUT → netfilter queue). For a session it
 * does not know yet, it asks the server to reserve a public pair (telling it
 * the remote endpoint and whether the local port is replaceable, claims 1,
 * 3), and rewrites that and every later packet `a:pa -> X:px` into
 * `a:pa -> G:Pg` (claim 5). It does not wait for the answer to name `Pg`: it
 * proposes one from its share of the gateway ports (`control/pg.ts`,
 * protocol version 3), programs it, sends the request and lets the first
 * packet go in the same turn of the event loop; the gateway holds that
 * packet until the exchange that names the remote has granted the session
 * (`server/held.ts`), so the claim holds. The server grants the proposal
 * when it is free, else another port, and the session moves there. A TCP or
 * UDP session that cannot propose (its share used up, a server that speaks
 * only version 2) and an ICMP echo session wait as before: their packets are
 * held here until the answer. Replies `G:Pg -> a:pa` (raw PREROUTING) are
 * restored to `X:px -> a:pa` before the application sees them. ICMP echo
 * uses the identifier as its port: on the LAN wire the identifier is Pg.
 * ICMP errors are translated with their quoted headers both ways.
 *
 * Turns: what the packets of one turn of the event loop ask (requests, map
 * elements, verdicts) is batched: at the end of the turn the requests leave
 * (one datagram for up to 45), the data path commits the turn's sessions in
 * one transaction, then the turn's first packets go
 * ({@linkcode DriverCore.endTurn}).
 *
 * It renews sessions that carried traffic before they expire, releases idle
 * ones, and re-reserves everything when the server's epoch changes (the
 * server restarted without its state).
 *
 * If the server refuses a session (conflict, quota, ...), the held packets
 * are dropped (here, or at the gateway for a proposed session) and the
 * application gets an ICMP "administratively prohibited" error, so it sees a
 * clear refusal rather than a silent timeout. If the server does not answer
 * at all (the client retransmits for about 10 s), the session passes
 * untranslated (ordinary NAT on the gateway still serves it), is logged and
 * listed as fallen back, and (UDP, ICMP) is reserved again in the
 * background: once granted it is translated from then on. A grant whose
 * answer came too late, or that the driver no longer wants, is given back.
 * A gateway port the server may still hold for a session this driver let go
 * is not proposed again until the server confirmed the release or the lease
 * ran out (`#quarantine`).
 *
 * Where things are. This file: the reservation client and its leases
 * (`#reserve`, `#apply`, `#renew`, epoch changes, fall-back
 * and retry, {@linkcode DriverCore.tick}, kernel activity). A host packet
 * translated ({@linkcode DriverCore.handlePacket}, held packets, ICMP
 * refusals) is in `translate.ts`, mirroring the server's; the answers to
 * `dpm query`, `dpm map` and `dpm status --driver`, and whose sessions a
 * user may see, in `answers.ts`; the inbound mappings of `dpm map` in
 * `mappings.ts`; a session's fields, states and indexes in `session.ts`.
 *
 * @module
 */

import { type Cidr, formatIPv4 } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import { ControlTimeout, type ControlTransport } from "../control/client.ts";
import { logger } from "../runtime/log.ts";
import { newNonce, Op, type Request, type Response } from "../control/proto.ts";
import { Result, resultName } from "../control/result.ts";
import { driverShare } from "../control/pg.ts";
import { DROP_COUNT, DROP_NAMES, IPPROTO_ICMP, IPPROTO_TCP } from "../wire/packet.ts";
import {
  type DriverDataPath,
  hostKey,
  type HostSessionKey,
  type PacketIO,
} from "../datapath/datapath.ts";
import { Verdict } from "../wire/meta.ts";
import { describeSession, lanKey } from "../wire/tuple.ts";
import type { DataPathStatus, DriverStatusReply, MapReply, QueryReply } from "../operator/types.ts";
import {
  CLOSE_RST,
  type HostSession,
  HostSessions,
  isClosed,
  newHostSession,
  State,
} from "./session.ts";
import { HostTranslator } from "./translate.ts";
import { Releases } from "./releases.ts";
import * as timers from "./timers.ts";
import { HostMappings } from "./mappings.ts";
import {
  answer,
  answerMap,
  type AnswerSource,
  type Asker,
  type MapAsk,
  type OwnerOf,
  ServerHealth,
} from "./answers.ts";

export { type HostSession, State } from "./session.ts";
export { DEFAULT_MAP_LIFETIME, type HostMapping } from "./mappings.ts";
export type { Asker, OwnerOf } from "./answers.ts";
export type { ControlTransport } from "../control/client.ts";

const log = logger("driver");

/**
 * New sessions per turn at most: a burst of thousands is committed (and its
 * first packets let go) 256 at a time, so that the first ones leave while
 * the queue still holds the rest.
 */
export const TURN_MAX = 256;

/** Options of the driver core. */
export interface DriverCoreOptions {
  /** The host's LAN prefix: destinations inside it are not translated. */
  lan: Cidr;
  /** The kernel's ephemeral range: ports inside it are replaceable unless fixed. */
  ephemeral: [number, number];
  /** Clock, ms. */
  now?: () => number;
  /** The host's own address toward the gateway (the `a` of its mappings); 0: unknown. */
  local?: number;
  /** Who holds a local port, for answers per user (none: only root is answered then). */
  ownerOf?: OwnerOf;
}

/**
 * The driver's state and logic without the kernel: packet handling, the
 * reservation client, and (through `answers.ts` and `mappings.ts`) query
 * answers and mappings; tests drive it with bytes and a real ControlClient.
 */
export class DriverCore {
  readonly #cfg: DriverConfig;
  readonly #lan: Cidr;
  readonly #eph: [number, number];
  readonly #fixed: Set<number>;
  readonly #client: ControlTransport;
  /** Inbound mappings this host holds (`dpm map`). */
  readonly #mappings: HostMappings;
  /** Who owns a local port (`--socket-group`: per-user answers); null when every asker is root. */
  readonly #ownerOf: OwnerOf | null;
  #orphanCheckAt = 0;
  /** What the query socket's answers read (see `answers.ts`). */
  readonly #answers: AnswerSource;
  /** The drivers' share of the gateway ports: what this driver proposes from. */
  readonly #share: [number, number];
  /**
   * Gateway ports not to propose (lanKey → until, ms): the server may still
   * hold them for a session this driver let go, or drop what goes to them.
   */
  readonly #quarantined = new Map<number, number>();
  /** Sessions programmed in this turn: their packets wait for the turn's commit. */
  readonly #turnSessions = new Set<HostSession>();
  /** Packets (queue ids) of those sessions, and each one's session, for the turn's end. */
  readonly #turnIds: number[] = [];
  readonly #turnOf: HostSession[] = [];
  /** Sessions granted in this turn whose held packets go after the turn's commit. */
  readonly #settleAfter: HostSession[] = [];
  #turnQueued = false;
  /** The answer to a reservation (one function for every session: no closure per request). */
  readonly #reserved: (s: HostSession, res: Response | null) => void;
  readonly now: () => number;
  /** The host's sessions, by outbound identity and by gateway port. */
  readonly #sessions = new HostSessions();
  /** The packet translation (`translate.ts`). */
  readonly #translator: HostTranslator;
  #epoch: number | null = null;
  #io: PacketIO | null = null;
  #dp: DriverDataPath | null = null;
  readonly drops = new Float64Array(DROP_COUNT);
  readonly counters = {
    out: 0,
    in: 0,
    reserved: 0,
    refused: 0,
    renewed: 0,
    released: 0,
    epochChanges: 0,
    bypassed: 0,
    adopted: 0,
    /** Sessions that fell back to ordinary NAT (no answer), and of them those reserved since. */
    fellBack: 0,
    recovered: 0,
    /** Grants given back because the driver learned of them too late or no longer wanted them. */
    lateReleased: 0,
    /** Sessions that proposed their gateway port, and of them those the server moved to another. */
    proposed: 0,
    moved: 0,
  };
  /** Releases, and those asked again from tick() (`releases.ts`). */
  readonly #releases: Releases;

  constructor(cfg: DriverConfig, client: ControlTransport, opts: DriverCoreOptions) {
    this.#cfg = cfg;
    this.#client = client;
    this.#lan = opts.lan;
    this.#eph = opts.ephemeral;
    this.#fixed = new Set(cfg.fixedPorts);
    this.#share = driverShare(cfg.gatewayPorts);
    this.now = opts.now ?? Date.now;
    this.#reserved = (s, res) => {
      if (res) this.#health.answered(this.now());
      else this.#health.timedOut(this.now());
      this.#apply(s, res);
    };
    this.#mappings = new HostMappings({
      local: opts.local ?? 0,
      now: () => this.now(),
      ask: (req) => this.#ask(req),
      noteEpoch: (epoch) => this.#noteEpoch(epoch),
    });
    this.#ownerOf = opts.ownerOf ?? null;
    this.#answers = {
      now: () => this.now(),
      lan: this.#lan,
      ownerOf: opts.ownerOf ?? null,
      mappings: this.#mappings,
      sessions: () => this.sessions(),
      find: (proto, a, pa, x, px) => this.#get(proto, a, pa, x, px),
      reserve: (proto, a, pa, x, px) => {
        const s = this.#newSession(proto, a, pa, x, px, this.now());
        this.#reserve(s);
        return s;
      },
      server: () => `${formatIPv4(this.#cfg.server)}:${this.#cfg.serverPort}`,
      epoch: () => this.#epoch,
      dataPath: () => this.#dp?.status() ?? { kind: "off", state: "off", reinstalls: 0 },
      stats: () => this.stats(),
      control: () => this.controlView(),
    };
    if ("onLate" in client) client.onLate = (res) => this.#onLate(res);
    this.#releases = new Releases({
      send: (s, op) => this.#send(s, op),
      sessions: this.#sessions,
      now: () => this.now(),
      released: (s) => {
        this.counters.released++;
        // The server let it go: its gateway port may be proposed again.
        if (s.pg) this.#quarantined.delete(lanKey(s.proto, s.a, s.pg));
      },
    });
    this.#translator = new HostTranslator({
      g: cfg.server,
      lan: this.#lan,
      sessions: this.#sessions,
      now: () => this.now(),
      dp: () => this.#dp,
      io: () => this.#io,
      counters: this.counters,
      drops: this.drops,
      newSession: (proto, a, pa, x, px) => this.#newSession(proto, a, pa, x, px, this.now()),
      reserve: (s) => this.#reserve(s),
      reserveAgain: (s) => this.#reserveAgain(s),
      waitForCommit: (s, id) => this.#waitForCommit(s, id),
      committed: (s) => this.#committed(s),
    });
  }

  /** Claim 3: the driver decides whether a port is replaceable. */
  isReplaceable(proto: number, port: number): boolean {
    if (proto === IPPROTO_ICMP) return true; // identifiers are restored on the way back
    return port >= this.#eph[0] && port <= this.#eph[1] && !this.#fixed.has(port);
  }

  #get(proto: number, a: number, pa: number, x: number, px: number): HostSession | undefined {
    return this.#sessions.get(proto, a, pa, x, px);
  }

  #delete(s: HostSession): void {
    s.deleted = true;
    this.#unprogram(s);
    this.#sessions.remove(s);
    // The server may still hold it (a release on its way, a lease it ends later).
    if (s.pg) this.#quarantine(s.proto, s.a, s.pg, Math.max(s.expiresAt, this.now()) + 60_000);
  }

  /** Keeps gateway port `pg` of (proto, a) from being proposed until `until` (ms). */
  #quarantine(proto: number, a: number, pg: number, until: number): void {
    const k = lanKey(proto, a, pg);
    if ((this.#quarantined.get(k) ?? 0) < until) this.#quarantined.set(k, until);
  }

  /**
   * A gateway port from the drivers' share that no session of (proto, a)
   * here uses and that is not quarantined, or 0 when there is none.
   */
  #proposal(proto: number, a: number, now: number): number {
    const [lo, hi] = this.#share;
    const range = hi - lo + 1;
    const free = (pg: number) => {
      if (this.#sessions.byPg(proto, a, pg)) return false;
      const k = lanKey(proto, a, pg);
      const until = this.#quarantined.get(k);
      if (until === undefined) return true;
      if (until > now) return false;
      this.#quarantined.delete(k);
      return true;
    };
    for (let t = 0; t < 32; t++) {
      const pg = lo + Math.floor(Math.random() * range);
      if (free(pg)) return pg;
    }
    const start = Math.floor(Math.random() * range);
    for (let k = 0; k < range; k++) {
      const pg = lo + ((start + k) % range);
      if (free(pg)) return pg;
    }
    return 0;
  }

  /** All sessions (for listing). */
  sessions(): IterableIterator<HostSession> {
    return this.#sessions.all();
  }

  /**
   * Handles one queued packet (`translate.ts`); `outbound` is true for raw
   * OUTPUT. Returns a Verdict; HOLD means the driver keeps a copy and gives
   * the verdict later. `skbInfo`: the queue's `NFQA_SKB_INFO` bits.
   */
  handlePacket(pkt: Uint8Array, id: number, outbound: boolean, skbInfo = 0): number {
    // A burst: the turn ends once it holds TURN_MAX new sessions, before the
    // next packet (whose predecessors' verdicts the queue has recorded by now).
    if (this.#turnSessions.size >= TURN_MAX) this.endTurn();
    return this.#translator.handle(pkt, id, outbound, skbInfo);
  }

  #newSession(
    proto: number,
    a: number,
    pa: number,
    x: number,
    px: number,
    now: number,
  ): HostSession {
    const s = newHostSession(proto, a, pa, x, px, this.isReplaceable(proto, pa), now);
    this.#sessions.put(s);
    return s;
  }

  /** Sends one control request about `s` (a fresh nonce; the server default lifetime). */
  #send(s: HostSession, op: number): Promise<Response> {
    return this.#ask({
      op,
      nonce: newNonce(),
      proto: s.proto,
      replaceable: s.replaceable,
      internalAddr: s.a,
      internalPort: s.pa,
      remoteAddr: s.x,
      remotePort: s.px,
      lifetime: 0,
    });
  }

  /** Sends one control request (the client carries the server's cookie). */
  #ask(req: Request): Promise<Response> {
    // Answers and timeouts are timed for `dpm status --driver`.
    return this.#client.request(req).then((res) => {
      this.#health.answered(this.now());
      return res;
    }, (e) => {
      if (e instanceof ControlTimeout) this.#health.timedOut(this.now());
      throw e;
    });
  }

  /**
   * Asks the server for new session `s` (from its first packet, or a query
   * that reserves). A TCP or UDP session proposes its gateway port when it
   * can: programmed now, committed at the end of the turn, when its first
   * packets go too (the gateway holds them until the grant). The answer
   * applies in `#apply`.
   */
  #reserve(s: HostSession): void {
    if (s.proto !== IPPROTO_ICMP && this.#client.proposes) {
      const pg = this.#proposal(s.proto, s.a, this.now());
      if (pg !== 0) {
        s.pg = pg;
        this.#sessions.setPg(s);
        this.#program(s);
        this.counters.proposed++;
      }
    }
    this.#client.submit(Op.RESERVE, s, this.#reserved, { pg: s.pg, urgent: true });
    this.#turnEnds();
  }

  /**
   * A packet (queue id `id`) of `s`, programmed in this turn: it goes at the
   * end of the turn, once the data path committed `s` (kernel path; the
   * queue path rewrites it at once). Returns the verdict for now.
   */
  #waitForCommit(s: HostSession, id: number): number {
    this.#turnIds.push(id);
    this.#turnOf.push(s);
    this.#turnEnds();
    return Verdict.HOLD;
  }

  /** The end of this turn is scheduled (`endTurn` runs once, as a microtask). */
  #turnEnds(): void {
    if (this.#turnQueued) return;
    this.#turnQueued = true;
    queueMicrotask(() => this.endTurn());
  }

  /**
   * The end of a turn of the event loop: the turn's requests leave (the
   * request goes ahead of its first packet), the data path commits the
   * turn's sessions in one transaction, then the packets that waited for it
   * go (the map translates them now) and those of sessions granted this
   * turn (held until the grant). Runs by itself as a microtask of the turn
   * that queued work; callable any time.
   */
  endTurn(): void {
    this.#turnQueued = false;
    this.#client.flush();
    this.#dp?.commit();
    this.#turnSessions.clear();
    const io = this.#io;
    const ids = this.#turnIds;
    const of = this.#turnOf;
    if (ids.length > 0 && io) {
      for (let i = 0; i < ids.length; i++) {
        const s = of[i]!;
        // Programmed still (not refused meanwhile): the map translates it; else as refused.
        io.verdict(ids[i]!, s.programmed !== 0 ? Verdict.ACCEPT : Verdict.DROP);
      }
      io.flush();
    }
    ids.length = 0;
    of.length = 0;
    if (this.#settleAfter.length > 0) {
      for (const s of this.#settleAfter) this.#translator.settleHeld(s, Verdict.MODIFIED);
      this.#settleAfter.length = 0;
    }
  }

  /** Whether `s`'s packets may go now (false: programmed in this turn, not committed yet). */
  #committed(s: HostSession): boolean {
    return !this.#dp?.can.commitsFirst || !this.#turnSessions.has(s);
  }

  #apply(s: HostSession, res: Response | null): void {
    const now = this.now();
    if (s.deleted) {
      // Answered after the session was dropped here: hand a grant straight back.
      if (res?.result === Result.OK) this.#releases.send(s);
      this.#wake(s);
      return;
    }
    if (res === null) {
      // No answer: pass the session untranslated (ordinary NAT still serves it).
      const retry = s.proto !== IPPROTO_TCP;
      log.warn(
        `no answer from the server for ${
          describeSession(s)
        }: fell back to ordinary NAT, untranslated` +
          (retry ? "; reserving it again in the background" : ""),
      );
      this.#unpropose(s, now + timers.TCP_IDLE_MS);
      s.state = State.BYPASS;
      s.result = -1;
      s.expiresAt = now + timers.NEGATIVE_IDLE_MS;
      s.retries = 0;
      s.renewAt = now + timers.bypassRetryMs(0);
      this.counters.fellBack++;
      // The server may have granted it and lost only the answer: give that back
      // (TCP stays untranslated while it lasts; UDP and ICMP pick it up again).
      if (!retry) this.#releases.send(s);
      this.#translator.settleHeld(s, Verdict.ACCEPT);
    } else {
      this.#noteEpoch(res.epoch);
      s.result = res.result;
      if (res.result === Result.OK) {
        const was = s.pg;
        s.state = State.ACTIVE;
        s.r = res.publicAddr;
        s.p = res.publicPort;
        s.pg = res.gatewayPort;
        s.replaced = res.replaced;
        s.shared = res.shared;
        this.#setLifetime(s, res.lifetime, now);
        this.#sessions.setPg(s, was);
        if (was !== 0 && was !== s.pg) {
          // The proposal was taken: the session moves to the server's Pg (what
          // went ahead to the proposed one was dropped at the gateway).
          this.counters.moved++;
          this.#quarantine(s.proto, s.a, was, now + 10_000);
          log.debug(`${describeSession(s)} moved from Pg ${was} (taken) to ${s.pg}`);
        }
        this.#program(s);
        this.counters.reserved++;
        if (
          res.gatewayPort < this.#cfg.gatewayPorts[0] || res.gatewayPort > this.#cfg.gatewayPorts[1]
        ) {
          log.error(
            `server gave gateway port ${res.gatewayPort} outside --gateway-ports ` +
              `${this.#cfg.gatewayPorts.join("-")}: replies will not be restored; align both sides`,
          );
        }
        log.debug(`reserved ${describeSession(s)}`);
        if (s.held) {
          // Held here (no proposal): they go once the grant is committed.
          if (this.#committed(s)) this.#translator.settleHeld(s, Verdict.MODIFIED);
          else {
            this.#settleAfter.push(s);
            this.#turnEnds();
          }
        }
      } else {
        const proposed = s.programmed !== 0 && !s.held;
        // The gateway dropped what went ahead; this port stays out of proposals a little.
        this.#unpropose(s, now + 10_000);
        s.state = State.REFUSED;
        // Try again later: soon when the cause may pass (quota, resources, rate),
        // later for a conflict, which lasts as long as the other session.
        s.expiresAt = now +
          (res.result === Result.CONFLICT ? timers.NEGATIVE_IDLE_MS : timers.RETRY_SOON_MS);
        this.counters.refused++;
        log.info(`server refused ${describeSession(s)}: ${resultName(res.result)}`);
        if (proposed) this.#translator.refuseSession(s);
        this.#translator.settleHeld(s, Verdict.DROP);
      }
    }
    this.#wake(s);
  }

  /**
   * `s` did not get the gateway port it proposed (refused, or no answer):
   * its translation goes (the kernel path forgets its conntrack, so its next
   * packet meets what it is now), and the port is not proposed again before
   * `until`.
   */
  #unpropose(s: HostSession, until: number): void {
    this.#unprogram(s);
    if (s.pg) {
      this.#quarantine(s.proto, s.a, s.pg, until);
      this.#sessions.unsetPg(s);
      s.pg = 0;
    }
  }

  #wake(s: HostSession): void {
    const w = s.waiters;
    s.waiters = null;
    if (w) { for (const f of w) f(s); }
  }

  /**
   * A fallen-back UDP or ICMP session is reserved again; once granted it is
   * translated from its next packet on (on the kernel path the untranslated
   * conntrack is deleted, so that the next packet meets the map).
   */
  #retryBypass(s: HostSession): void {
    s.renewing = true;
    s.retries++;
    this.#send(s, Op.RESERVE).then((res) => {
      s.renewing = false;
      if (s.deleted || s.state !== State.BYPASS) {
        if (res.result === Result.OK && s.deleted) this.#releases.send(s);
        return;
      }
      if (res.result !== Result.OK) {
        // Keep the flow untranslated (dropping it now would break it); ask again later.
        s.renewAt = this.now() + timers.bypassRetryMs(s.retries);
        return;
      }
      this.#recover(s, res);
    }).catch(() => {
      s.renewing = false;
      s.renewAt = this.now() + timers.bypassRetryMs(s.retries);
    });
  }

  #recover(s: HostSession, res: Response): void {
    // Its packets so far made an untranslated conntrack: remove it, so the
    // next packet is translated (sessionDown of a key never programmed only
    // deletes that conntrack).
    this.#dp?.sessionDown(this.#key(s, res.gatewayPort));
    this.counters.recovered++;
    log.info(
      `${describeSession(s)} reserved after falling back: ${
        formatIPv4(res.publicAddr)
      }:${res.publicPort}` +
        " from now on",
    );
    this.#apply(s, res);
  }

  /** An answer that came after its request timed out. */
  #onLate(res: Response): void {
    if (res.op === Op.MAP) return this.#mappings.late(res);
    if (res.op !== Op.RESERVE || res.result !== Result.OK) return;
    const s = this.#get(
      res.proto,
      res.internalAddr,
      res.internalPort,
      res.remoteAddr,
      res.remotePort,
    );
    // Active here: the server's reserve is idempotent, so this is the grant it holds.
    if (s?.state === State.ACTIVE) return;
    if (s?.state === State.BYPASS && s.proto !== IPPROTO_TCP && !s.renewing) {
      return this.#recover(s, res);
    }
    if (s?.state === State.PENDING || s?.renewing) return; // a request about it is on its way
    // Granted, but nobody here uses it: give it back.
    this.counters.lateReleased++;
    this.#releases.send(
      s ?? {
        proto: res.proto,
        replaceable: false,
        a: res.internalAddr,
        pa: res.internalPort,
        x: res.remoteAddr,
        px: res.remotePort,
      } as HostSession,
    );
  }

  #setLifetime(s: HostSession, lifetime: number, now: number): void {
    s.lifetime = lifetime;
    s.expiresAt = now + lifetime * 1000;
    s.renewAt = timers.renewAt(now, lifetime);
    s.busy = false;
  }

  /**
   * Connects the data path and its packet I/O (the path's own, unless a
   * test or `--cleanup` gives another, or none: no verdicts then).
   */
  attach(dp: DriverDataPath, io: PacketIO | null = dp.io): void {
    this.#dp = dp;
    this.#io = io;
  }

  /**
   * Takes the sessions the kernel still translates from a previous run
   * (`DriverDataPath.adopt`): active at once, renewed right away to learn
   * their public pair and lease. Sessions of another gateway are skipped.
   */
  adopt(keys: HostSessionKey[]): void {
    const now = this.now();
    for (const k of keys) {
      if (k.g !== this.#cfg.server) continue;
      if (this.#get(k.proto, k.a, k.pa, k.x, k.px)) continue;
      const s = this.#newSession(k.proto, k.a, k.pa, k.x, k.px, now);
      s.state = State.ACTIVE;
      s.pg = k.pg;
      s.programmed = k.pg;
      s.result = Result.OK;
      s.lifetime = 60;
      s.expiresAt = now + 60_000;
      s.renewAt = now;
      this.#sessions.setPg(s);
      this.counters.adopted++;
    }
    if (this.counters.adopted) {
      log.info(`adopted ${this.counters.adopted} session(s) the kernel was still translating`);
    }
  }

  /** The data path's state for status and metrics. */
  dataPathStatus(): DataPathStatus {
    return this.#dp?.status() ?? { kind: "off", state: "off", reinstalls: 0 };
  }

  /** Disconnects the data path (on stop). */
  detach(): void {
    this.#dp = null;
    this.#io = null;
  }

  #key(s: HostSession, pg: number): HostSessionKey {
    return { proto: s.proto, a: s.a, pa: s.pa, x: s.x, px: s.px, g: this.#cfg.server, pg };
  }

  /** Tells the data path about an active session (again, if its gateway port changed). */
  #program(s: HostSession): void {
    if (!this.#dp || s.programmed === s.pg) return;
    this.#unprogram(s);
    this.#dp.sessionUp(this.#key(s, s.pg));
    s.programmed = s.pg;
    // Committed at the end of the turn; its packets wait for that (`#committed`).
    this.#turnSessions.add(s);
    this.#turnEnds();
  }

  #unprogram(s: HostSession): void {
    if (!this.#dp || s.programmed === 0) return;
    this.#dp.sessionDown(this.#key(s, s.programmed));
    s.programmed = 0;
  }

  /** Reads the kernel's activity (kernel path) into the sessions' lease state. */
  #pollActivity(now: number): void {
    const act = this.#dp?.activity();
    if (!act) return;
    for (const s of this.sessions()) {
      // Only sessions the kernel translates have activity (not ICMP, on the kernel path).
      if (s.state !== State.ACTIVE) continue;
      const a = act.get(hostKey(s.proto, s.a, s.pg));
      if (!a) continue;
      if (a.packets !== s.kernelPackets) {
        s.kernelPackets = a.packets;
        s.busy = true;
        s.lastUsed = now;
      }
      if (a.closed && s.proto === IPPROTO_TCP) s.closing |= CLOSE_RST;
      else if (s.proto === IPPROTO_TCP && (s.closing & CLOSE_RST) && !a.closed) s.closing = 0;
    }
  }

  #noteEpoch(epoch: number): void {
    if (this.#epoch !== null && this.#epoch !== epoch) {
      this.counters.epochChanges++;
      log.warn(
        `server epoch changed (${this.#epoch.toString(16)} → ${
          epoch.toString(16)
        }): re-reserving sessions`,
      );
      this.#epoch = epoch;
      for (const s of this.sessions()) if (s.state === State.ACTIVE) this.#reserveAgain(s);
      this.#mappings.again();
      return;
    }
    this.#epoch = epoch;
  }

  /**
   * The server lost `s` (a new epoch, NO_SUCH_SESSION to a renewal, or port
   * unreachable from G:Pg): reserve it again, proposing the gateway port it
   * has, so that nothing changes on the host when the server grants it.
   */
  #reserveAgain(s: HostSession): void {
    if (s.renewing || s.state === State.PENDING) return;
    s.renewing = true;
    this.#client.submit(Op.RESERVE, s, this.#reservedAgain, {
      pg: s.state === State.ACTIVE ? s.pg : 0,
    });
  }

  readonly #reservedAgain = (s: HostSession, res: Response | null): void => {
    s.renewing = false;
    if (res === null) {
      this.#health.timedOut(this.now());
      return;
    }
    this.#health.answered(this.now());
    if (res.result === Result.OK && (res.publicAddr !== s.r || res.publicPort !== s.p)) {
      log.warn(
        `${describeSession(s)} moved to ${
          formatIPv4(res.publicAddr)
        }:${res.publicPort} after a server restart`,
      );
    }
    this.#apply(s, res);
  };

  /**
   * The periodic work: renew busy sessions, forget idle and expired ones
   * (releasing them on the server). Call about once a second.
   */
  tick(): void {
    const now = this.now();
    this.#pollActivity(now);
    this.#releases.retry(now);
    this.#mappings.tick(now);
    if (this.#ownerOf && now >= this.#orphanCheckAt) {
      // Mappings made for unprivileged users last only while their socket holds the port.
      this.#orphanCheckAt = now + timers.ORPHAN_CHECK_MS;
      this.#mappings.revokeOrphans(this.#ownerOf);
    }
    for (const s of [...this.sessions()]) {
      if (s.state === State.PENDING) continue;
      if (s.state === State.REFUSED) {
        // Forget the refusal when it is due, even if the application keeps sending:
        // its next packet asks the server again.
        if (now >= s.expiresAt) this.#delete(s);
        continue;
      }
      if (s.state !== State.ACTIVE) {
        // Fallen back: keep the flow untranslated while it lasts; forget it once
        // quiet. A UDP or ICMP flow is reserved again meanwhile (TCP would break).
        if (now - s.lastUsed > timers.NEGATIVE_IDLE_MS) {
          this.#delete(s);
          if (s.retries > 0) this.#releases.send(s); // a lost answer may have granted it
        } else if (s.proto !== IPPROTO_TCP && !s.renewing && now >= s.renewAt) {
          this.#retryBypass(s);
        }
        continue;
      }
      if (now >= s.expiresAt) {
        this.#delete(s);
        continue;
      }
      if (isClosed(s.closing) && now - s.lastUsed >= timers.TCP_CLOSE_LINGER_MS) {
        // The connection ended (FIN both ways, or RST) and stayed quiet: give the pair back.
        this.#delete(s);
        this.#releases.send(s);
        continue;
      }
      if (now < s.renewAt || s.renewing) continue;
      if (s.busy) this.#renew(s);
      else if (s.proto === IPPROTO_TCP && !s.closing && now - s.lastUsed < timers.TCP_IDLE_MS) {
        // An idle established TCP connection keeps its mapping for at least
        // 2 h 4 min (RFC 5382 REQ-5), as a NAT's conntrack would.
        this.#renew(s);
      } else if (now - s.lastUsed < Math.min(timers.MIN_IDLE_MS[s.proto] ?? 0, s.lifetime * 1000)) {
        // RFC 4787 REQ-5 / RFC 5508 REQ-2: an idle UDP mapping lives at least
        // 2 min and an ICMP query one 60 s (unless the server grants less).
        this.#renew(s);
      } else if (now - s.lastUsed >= s.lifetime * 1000 * 2 / 3) {
        // Idle for most of its lifetime: give it back now rather than let it linger.
        this.#delete(s);
        this.#releases.send(s);
      } else s.renewAt = Math.min(s.expiresAt - 1000, now + 1000);
    }
  }

  #renew(s: HostSession): void {
    s.renewing = true;
    this.#send(s, Op.RENEW).then((res) => {
      s.renewing = false;
      if (s.deleted) return;
      this.#noteEpoch(res.epoch);
      if (res.result === Result.OK) {
        this.#setLifetime(s, res.lifetime, this.now());
        // An adopted session learns its public pair from its first renewal.
        s.r = res.publicAddr || s.r;
        s.p = res.publicPort || s.p;
        s.replaced = res.replaced;
        s.shared = res.shared;
        this.counters.renewed++;
      } else if (res.result === Result.NO_SUCH_SESSION) {
        this.#reserveAgain(s);
      } else log.warn(`renew ${describeSession(s)}: ${resultName(res.result)}`);
    }).catch(() => {
      s.renewing = false;
      s.renewAt = this.now() + 1000; // try again; the session lives until expiresAt
    });
  }

  /** Releases every active session (on exit). */
  async releaseAll(): Promise<void> {
    const all = [...this.sessions()].filter((s) => s.state === State.ACTIVE);
    for (const s of all) this.#delete(s);
    await Promise.all(all.map((s) => this.#releases.send(s)));
  }

  /**
   * Answers `dpm query` (claims 11, 19, 24): the public pair of the session
   * (proto, local, remote); with `reserve`, reserves it first when absent.
   * Also `map`, `status` and `sessions`. `asker` (absent: root's socket)
   * limits the answers to that user's (see `answers.ts`).
   */
  query(
    req: unknown,
    asker?: Asker,
  ): Promise<QueryReply | MapReply | { sessions: unknown[] } | DriverStatusReply> {
    return answer(this.#answers, req, asker);
  }

  /**
   * `dpm map`: creates, renews (asked again) or deletes (lifetime 0) the
   * inbound mapping of this host's `proto` port `port`: every remote's
   * packets to the public pair it answers reach `a:port`. With `only` (a
   * uid), only a port a socket of that user holds now.
   */
  map(r: MapAsk, only: number | null = null): Promise<MapReply> {
    return answerMap(this.#answers, r, only);
  }

  /** The mappings this host holds (`dpm status --driver`). */
  mappings(): MapReply[] {
    return [...this.#mappings.all()].map((m) => this.#mappings.view(m));
  }

  /** When the server last answered and a request last timed out. */
  readonly #health = new ServerHealth();

  /** Whether the server answers, for `dpm status --driver`. */
  controlView(): NonNullable<DriverStatusReply["control"]> {
    return this.#health.view(this.now());
  }

  /** Counters for logs and tests. */
  stats(): Record<string, unknown> {
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_COUNT; i++) if (this.drops[i]) drops[DROP_NAMES[i]!] = this.drops[i]!;
    let untranslated = 0;
    for (const s of this.sessions()) if (s.state === State.BYPASS) untranslated++;
    return {
      ...this.counters,
      held: this.#translator.heldTotal,
      untranslated,
      drops,
      control: { ...this.#client.stats },
    };
  }
}
