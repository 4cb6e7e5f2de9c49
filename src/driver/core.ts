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
 * ran out (`leases.ts`, `#quarantine`).
 *
 * Where things are. This file composes the parts and owns the sessions,
 * the data path and the counters. The lease client (`reserve`, `#apply`,
 * `#renew`, epoch changes, fall-back and retry, the quarantine, kernel
 * activity) is `leases.ts`; a turn's sessions and packets, committed
 * together, `turn.ts`. A host packet translated
 * ({@linkcode DriverCore.handlePacket}, held packets, ICMP refusals) is in
 * `translate.ts`, mirroring the server's; the answers to `dpm query`,
 * `dpm map` and `dpm status --driver`, and whose sessions a user may see,
 * in `answers.ts`; the inbound mappings of `dpm map` in `mappings.ts`; a
 * session's fields, states and indexes in `session.ts`.
 *
 * @module
 */

import { type Cidr, formatIPv4 } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import type { ControlTransport } from "../control/client.ts";
import { logger } from "../runtime/log.ts";
import { Result } from "../control/result.ts";
import { DROP_COUNT, DROP_NAMES, IPPROTO_ICMP } from "../wire/packet.ts";
import type { DriverDataPath, HostSessionKey, PacketIO } from "../datapath/datapath.ts";
import type { DataPathStatus, DriverStatusReply, MapReply, QueryReply } from "../operator/types.ts";
import { type HostSession, HostSessions, newHostSession, State } from "./session.ts";
import { HostTranslator } from "./translate.ts";
import { Leases } from "./leases.ts";
import { Turn } from "./turn.ts";
import * as timers from "./timers.ts";
import { HostMappings } from "./mappings.ts";
import {
  answer,
  answerMap,
  type AnswerSource,
  type Asker,
  type MapAsk,
  type OwnerOf,
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
  /** This turn's sessions and packets, committed together (`turn.ts`). */
  readonly #turn: Turn;
  /** Reservations, renewals, releases, the server's epoch (`leases.ts`). */
  readonly #leases: Leases;
  readonly now: () => number;
  /** The host's sessions, by outbound identity and by gateway port. */
  readonly #sessions = new HostSessions();
  /** The packet translation (`translate.ts`). */
  readonly #translator: HostTranslator;
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

  constructor(cfg: DriverConfig, client: ControlTransport, opts: DriverCoreOptions) {
    this.#cfg = cfg;
    this.#client = client;
    this.#lan = opts.lan;
    this.#eph = opts.ephemeral;
    this.#fixed = new Set(cfg.fixedPorts);
    this.now = opts.now ?? Date.now;
    this.#mappings = new HostMappings({
      local: opts.local ?? 0,
      now: () => this.now(),
      ask: (req) => this.#leases.ask(req),
      noteEpoch: (epoch) => this.#leases.noteEpoch(epoch),
    });
    this.#ownerOf = opts.ownerOf ?? null;
    this.#answers = {
      now: () => this.now(),
      lan: this.#lan,
      ownerOf: opts.ownerOf ?? null,
      mappings: this.#mappings,
      sessions: () => this.sessions(),
      find: (proto, a, pa, x, px) => this.#sessions.get(proto, a, pa, x, px),
      reserve: (proto, a, pa, x, px) => {
        const s = this.#newSession(proto, a, pa, x, px, this.now());
        this.#leases.reserve(s);
        return s;
      },
      server: () => `${formatIPv4(this.#cfg.server)}:${this.#cfg.serverPort}`,
      epoch: () => this.#leases.epoch,
      dataPath: () => this.#dp?.status() ?? { kind: "off", state: "off", reinstalls: 0 },
      stats: () => this.stats(),
      control: () => this.controlView(),
    };
    if ("onLate" in client) client.onLate = (res) => this.#leases.onLate(res);
    this.#turn = new Turn({
      g: cfg.server,
      dp: () => this.#dp,
      io: () => this.#io,
      flush: () => this.#client.flush(),
      settleHeld: (s, v) => this.#translator.settleHeld(s, v),
    });
    this.#leases = new Leases({
      cfg,
      client,
      sessions: this.#sessions,
      counters: this.counters,
      now: () => this.now(),
      turn: this.#turn,
      dp: () => this.#dp,
      mappings: this.#mappings,
      settleHeld: (s, v) => this.#translator.settleHeld(s, v),
      refuseSession: (s) => this.#translator.refuseSession(s),
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
      reserve: (s) => this.#leases.reserve(s),
      reserveAgain: (s) => this.#leases.reserveAgain(s),
      waitForCommit: (s, id) => this.#turn.waitForCommit(s, id),
      committed: (s) => this.#turn.committed(s),
    });
  }

  /** Claim 3: the driver decides whether a port is replaceable. */
  isReplaceable(proto: number, port: number): boolean {
    if (proto === IPPROTO_ICMP) return true; // identifiers are restored on the way back
    return port >= this.#eph[0] && port <= this.#eph[1] && !this.#fixed.has(port);
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
    if (this.#turn.size >= TURN_MAX) this.endTurn();
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

  /**
   * The end of a turn of the event loop: the turn's requests leave (the
   * request goes ahead of its first packet), the data path commits the
   * turn's sessions in one transaction, then the packets that waited for it
   * go (the map translates them now) and those of sessions granted this
   * turn (held until the grant): `turn.ts`. Runs by itself as a microtask
   * of the turn that queued work; callable any time.
   */
  endTurn(): void {
    this.#turn.end();
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
      if (this.#sessions.get(k.proto, k.a, k.pa, k.x, k.px)) continue;
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

  /**
   * The periodic work: renew busy sessions, forget idle and expired ones
   * (releasing them on the server). Call about once a second.
   */
  tick(): void {
    const now = this.now();
    this.#leases.poll(now);
    this.#mappings.tick(now);
    if (this.#ownerOf && now >= this.#orphanCheckAt) {
      // Mappings made for unprivileged users last only while their socket holds the port.
      this.#orphanCheckAt = now + timers.ORPHAN_CHECK_MS;
      this.#mappings.revokeOrphans(this.#ownerOf);
    }
    this.#leases.tick(now);
  }

  /** Releases every active session (on exit). */
  releaseAll(): Promise<void> {
    return this.#leases.releaseAll();
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

  /** Whether the server answers, for `dpm status --driver`. */
  controlView(): NonNullable<DriverStatusReply["control"]> {
    return this.#leases.health.view(this.now());
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
