/**
 * The gateway's path through dpm's nftables table: dpm decides, the kernel
 * translates. It is the kernel path (`kernel/server.ts` opens it as is), and
 * the bpf path's slow path (`bpf/server.ts` adds its tc programs and their
 * session map around it, and checks on them through its watchdog).
 *
 * Theory of operation. dpm's nftables table (`rules.ts`) holds two maps
 * filled from the session table: `to_remote` (proto . a . Pg -> X . px,
 * dnat of what arrives from the LAN for G) and `to_public`
 * (proto . a . pa . X . px -> R . p, snat of what leaves by the WAN). The
 * first packet of a session meets the maps in the nat chains; conntrack then
 * translates every later packet, both ways, in the kernel. So:
 *
 * - `sessionUp` queues both elements; `commit`, which the server runs before
 *   it answers the grant, adds every queued session over netlink in one
 *   transaction (`linux/nftables.ts`; a burst of requests shares one, no
 *   process per session); `sessionDown`
 *   deletes them and the session's conntrack (`linux/conntrack.ts`), so a
 *   released pair is free at once and never translated to its old peer.
 * - ICMP sessions (echo identifiers are no ports for nft's `th` keys) and
 *   hairpinned sessions (X is a pool address: the packet must be translated
 *   twice, into another host's session) stay on the queue translator: the
 *   `queued` set marks their packets, iptables queues them.
 * - A conntrack may expire while its lease lives: the next packet meets the
 *   maps again and gets the same translation.
 * - Counters: conntrack accounting is turned on; `counters()` reads them for
 *   `dpm status` (one dump on demand).
 * - Watchdog: once a second the nf_tables generation is compared; when it
 *   moved, the chains are listed, and if dpm's table or iptables chains are
 *   gone (`nft flush ruleset`, a firewall reload) everything is reinstalled
 *   from the session table in one transaction, logged, counted and shown.
 * - Restart without loss: `stop("keep")` leaves the table, maps, conntracks,
 *   chains and sysctls in place, so established sessions go on being
 *   translated while no dpm runs; the next start reads the maps back
 *   (`adopt()`) and replaces the table atomically with the same content.
 *
 * @module
 */

import { formatIPv4 } from "../../wire/addr.ts";
import { IPPROTO_ICMP } from "../../wire/meta.ts";
import { describeSession } from "../../wire/tuple.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import {
  gatewayKey,
  type GatewayOptions,
  type GatewaySession,
  isMapping,
  type PacketIO,
  type ServerDataPath,
  type ServerPacketHandler,
  type SessionCounters,
  type StopMode,
  type WorkerShare,
} from "../datapath.ts";
import { prepareGateway } from "../gateway.ts";
import { NO_OTHER_PATHS, openQueue, type OtherPaths, pumpGateway } from "../netfilter.ts";
import {
  deleteTable,
  HOLD_MARK,
  mapInText,
  mapOutText,
  queuedText,
  SERVER_TABLE,
  serverKernelChains,
  serverTable,
  toPublicText,
  toRemoteText,
} from "./rules.ts";
import { installChains, removeChains } from "../../../linux/iptables.ts";
import { concat, type MapElem, NftMaps, splitConcat } from "../../../linux/nftables.ts";
import { Conntrack } from "../../../linux/conntrack.ts";
import { loadRuleset, tableExists } from "../../../linux/nft.ts";
import { Watchdog, type WatchdogCheck } from "./watchdog.ts";

const log = logger("server");

const WATCHDOG_MS = 1000;

const remoteKey = (s: GatewaySession) => concat([s.proto, 1], [s.a, 4], [s.pa, 2], [s.pg, 2]);
/** The `queued` set's key (hairpinned sessions): proto . a . Pg. */
const queuedKey = (s: GatewaySession) => concat([s.proto, 1], [s.a, 4], [s.pg, 2]);
const remoteData = (s: GatewaySession) => concat([s.x, 4], [s.px, 2]);
const publicKey = (s: GatewaySession) =>
  concat([s.proto, 1], [s.a, 4], [s.pa, 2], [s.x, 4], [s.px, 2]);
const publicData = (s: GatewaySession) => concat([s.r, 4], [s.p, 2]);
// PCP/NAT-PMP mappings: map_in (proto . R . p -> a . pa), map_out (proto . a . pa -> R . p).
const mapInKey = (s: GatewaySession) => concat([s.proto, 1], [s.r, 4], [s.p, 2]);
const mapInData = (s: GatewaySession) => concat([s.a, 4], [s.pa, 2]);
const mapOutKey = (s: GatewaySession) => concat([s.proto, 1], [s.a, 4], [s.pa, 2]);

/** An earlier version's to_remote key (proto, a, Pg) as (proto, a, pa unknown: -1, Pg). */
function withoutPa([proto, a, pg]: number[]): number[] {
  return [proto!, a!, -1, pg!];
}

/** What a path built on the table adds (`bpf/server.ts`). */
export interface NftServerOptions {
  /** The path's kind, for status and logs. */
  kind: "kernel" | "bpf";
  /** More for the watchdog to check every round (the bpf path's programs). */
  checks?: WatchdogCheck[];
}

/** The gateway's path through dpm's nftables table. */
export class NftServerPath implements ServerDataPath {
  readonly kind: "kernel" | "bpf";
  readonly can = {
    forwardsMappings: () => true,
    countsPerSession: true,
    keepsSessions: true,
    kernelTranslates: true,
  } as const;
  #io: PacketIO | null = null;
  /** The queue's verdicts and the raw socket, once begun. */
  get io(): PacketIO | null {
    return this.#io;
  }
  readonly #cfg: GatewayOptions;
  readonly #pool: Set<number>;
  readonly #nft: NftMaps;
  readonly #ct: Conntrack;
  readonly #others: OtherPaths;
  readonly #undo = new Cleanup(log);
  /** Undone only by stop("remove"): what keeps translating while no dpm runs. */
  readonly #kept = new Cleanup(log);
  #sessions: () => Iterable<GatewaySession> = () => [];
  /** Sessions a previous run left translating (a failed start keeps them going). */
  #adopted = 0;
  #stopped = false;
  readonly #watchdog: Watchdog;

  private constructor(
    cfg: GatewayOptions,
    nft: NftMaps,
    ct: Conntrack,
    others: OtherPaths,
    opts: NftServerOptions,
  ) {
    this.kind = opts.kind;
    this.#cfg = cfg;
    this.#pool = new Set(cfg.pool);
    this.#nft = nft;
    this.#ct = ct;
    this.#others = others;
    this.#watchdog = new Watchdog(
      log,
      opts.kind,
      nft,
      [
        `ip ${SERVER_TABLE} guard`,
        `ip ${SERVER_TABLE} steer`,
        `ip ${SERVER_TABLE} from_lan`,
        `ip ${SERVER_TABLE} from_wan`,
        `ip ${SERVER_TABLE} to_wan`,
        `ip ${SERVER_TABLE} hold`,
        `ip raw DPM-SRV-PRE`,
        `ip filter DPM-SRV-FWD`,
        `ip mangle DPM-SRV-HOLD`,
      ],
      async () =>
        `table ip ${SERVER_TABLE} with ${await this
          .#install()} session(s) and dpm's iptables chains`,
      opts.checks ?? [],
    );
  }

  /** Opens the netlink sockets. Nothing is changed yet (see {@linkcode begin}). */
  static open(
    cfg: GatewayOptions,
    others: OtherPaths = NO_OTHER_PATHS,
    opts: NftServerOptions = { kind: "kernel" },
  ): Promise<NftServerPath> {
    const nft = NftMaps.open();
    let ct: Conntrack;
    try {
      ct = Conntrack.open();
    } catch (e) {
      nft.close();
      throw e;
    }
    return Promise.resolve(new NftServerPath(cfg, nft, ct, others, opts));
  }

  /** Removes the table and chains a run of this path left (`dpm server --cleanup`). */
  static async remove(cfg: GatewayOptions): Promise<string> {
    await loadRuleset(deleteTable(SERVER_TABLE));
    await removeChains(serverKernelChains(cfg));
    return `table ip ${SERVER_TABLE} and the kernel path's chains`;
  }

  /**
   * The sessions a previous run left in the kernel (the two maps joined by
   * (proto, a)): what a restart without a state file adopts. Empty when
   * there is no table.
   */
  async adopt(): Promise<GatewaySession[]> {
    const out = await this.#readMaps();
    this.#adopted = out.length;
    return out;
  }

  async #readMaps(): Promise<GatewaySession[]> {
    if (!(await tableExists(SERVER_TABLE))) return [];
    let remote: MapElem[];
    let pub: MapElem[];
    let mapIn: MapElem[] = [];
    try {
      remote = this.#nft.list(SERVER_TABLE, "to_remote");
      pub = this.#nft.list(SERVER_TABLE, "to_public");
    } catch (e) {
      log.warn(`reading the previous run's maps: ${(e as Error).message}`);
      return [];
    }
    try {
      mapIn = this.#nft.list(SERVER_TABLE, "map_in");
    } catch {
      // A table from a version without mappings.
    }
    // to_public: (proto, a, pa, x, px) -> (r, p); to_remote: (proto, a, pg) -> (x, px).
    const byId = new Map<string, [number, number]>();
    for (const e of pub) {
      const [proto, a, pa, x, px] = splitConcat(e.key, [1, 4, 2, 4, 2]);
      const [r, p] = splitConcat(e.data, [4, 2]);
      byId.set(`${proto}/${a}/${pa}/${x}/${px}`, [r!, p!]);
    }
    const out: GatewaySession[] = [];
    // A to_remote element names (a, Pg, X, px); the pa is the one whose
    // to_public key carries the same (a, X, px).
    const byRemote = new Map<string, [number, number, number, number][]>();
    for (const [k, [r, p]] of byId) {
      const [proto, a, pa, x, px] = k.split("/").map(Number) as [
        number,
        number,
        number,
        number,
        number,
      ];
      const rk = `${proto}/${a}/${x}/${px}`;
      let l = byRemote.get(rk);
      if (!l) byRemote.set(rk, l = []);
      l.push([pa, r, p, 0]);
    }
    for (const e of remote) {
      // proto . a . pa . Pg (16 bytes); a table of an earlier version: proto . a . Pg (12).
      const [proto, a, pa, pg] = e.key.length >= 16
        ? splitConcat(e.key, [1, 4, 2, 2])
        : withoutPa(splitConcat(e.key, [1, 4, 2]));
      const [x, px] = splitConcat(e.data, [4, 2]);
      const l = byRemote.get(`${proto}/${a}/${x}/${px}`);
      const m = l?.find((c) => c[3] === 0 && (pa === -1 || c[0] === pa));
      if (!m) continue;
      m[3] = 1;
      out.push({ proto: proto!, a: a!, pa: m[0], x: x!, px: px!, r: m[1], p: m[2], pg: pg! });
    }
    // Mappings: x = px = pg = 0 (datapath.ts isMapping).
    for (const e of mapIn) {
      const [proto, r, p] = splitConcat(e.key, [1, 4, 2]);
      const [a, pa] = splitConcat(e.data, [4, 2]);
      out.push({ proto: proto!, a: a!, pa: pa!, x: 0, px: 0, r: r!, p: p!, pg: 0 });
    }
    return out;
  }

  /**
   * Installs everything and starts: the gateway's sysctls and addresses,
   * dpm's table with every session of `sessions()` in one transaction, the
   * iptables chains, the queue for ICMP and hairpin, the watchdog. A start
   * that fails undoes all of it, unless a previous run's sessions were
   * adopted: those go on being translated as before.
   */
  async begin(
    sessions: () => Iterable<GatewaySession>,
    packets: ServerPacketHandler,
    onFatal: (e: Error) => void,
  ): Promise<void> {
    this.#sessions = sessions;
    try {
      const gw = await prepareGateway(this.#cfg, {
        // Per-session packets and bytes for dpm status; read when a conntrack is created.
        "net.netfilter.nf_conntrack_acct": "1",
      });
      this.#kept.push(() => gw.run());
      // A queue-path run may have left its chains (SIGKILL): they must not steal packets.
      await this.#others.removeLeftovers();
      const { queue, io } = openQueue(this.#cfg.queue, this.#undo);
      this.#io = io;
      this.#kept.push(() => loadRuleset(deleteTable(SERVER_TABLE)));
      const specs = serverKernelChains(this.#cfg);
      this.#kept.push(() => removeChains(specs));
      const n = await this.#install();
      this.#undo.push(pumpGateway(queue, packets, onFatal, HOLD_MARK));
      this.#watchdog.start(WATCHDOG_MS);
      this.#undo.push(() => this.#watchdog.stop());
      log.info(
        `data path on (${this.kind}): table ip ${SERVER_TABLE} with ${n} session(s), queue ${this.#cfg.queue} ` +
          `for ICMP and hairpin; LAN ${this.#cfg.lanIf}, WAN ${this.#cfg.wanIf}`,
      );
    } catch (e) {
      await this.stop(this.#adopted > 0 ? "keep" : "remove");
      throw e;
    }
  }

  /** Loads the table with every session, and the iptables chains. Returns the session count. */
  async #install(): Promise<number> {
    // The table's sessions include the queued ones: the script programs them all.
    this.#pending.toRemote.length = this.#pending.toPublic.length = this.#pending.queued.length = 0;
    this.#pending.mapIn.length = this.#pending.mapOut.length = 0;
    const toRemote: string[] = [];
    const toPublic: string[] = [];
    const queued: string[] = [];
    const mapIn: string[] = [];
    const mapOut: string[] = [];
    let n = 0;
    for (const s of this.#sessions()) {
      if (s.proto === IPPROTO_ICMP) continue;
      n++;
      if (isMapping(s)) {
        mapIn.push(mapInText(s.proto, s.r, s.p, s.a, s.pa));
        mapOut.push(mapOutText(s.proto, s.a, s.pa, s.r, s.p));
      } else if (this.#pool.has(s.x)) queued.push(queuedText(s.proto, s.a, s.pg));
      else {
        toRemote.push(toRemoteText(s.proto, s.a, s.pa, s.pg, s.x, s.px));
        toPublic.push(toPublicText(s.proto, s.a, s.pa, s.x, s.px, s.r, s.p));
      }
    }
    await loadRuleset(
      serverTable(this.#cfg, this.#cfg.lan, { toRemote, toPublic, queued, mapIn, mapOut }),
    );
    await installChains(serverKernelChains(this.#cfg));
    return n;
  }

  /** Elements queued by sessionUp, applied by commit in one transaction. */
  readonly #pending = {
    toRemote: [] as { key: Uint8Array; data: Uint8Array }[],
    toPublic: [] as { key: Uint8Array; data: Uint8Array }[],
    queued: [] as { key: Uint8Array }[],
    mapIn: [] as { key: Uint8Array; data: Uint8Array }[],
    mapOut: [] as { key: Uint8Array; data: Uint8Array }[],
  };

  sessionUp(s: GatewaySession): void {
    if (s.proto === IPPROTO_ICMP) return;
    const p = this.#pending;
    if (isMapping(s)) {
      p.mapIn.push({ key: mapInKey(s), data: mapInData(s) });
      p.mapOut.push({ key: mapOutKey(s), data: publicData(s) });
    } else if (this.#pool.has(s.x)) p.queued.push({ key: queuedKey(s) });
    else {
      p.toRemote.push({ key: remoteKey(s), data: remoteData(s) });
      p.toPublic.push({ key: publicKey(s), data: publicData(s) });
    }
  }

  commit(): void {
    const p = this.#pending;
    const n = p.toRemote.length + p.queued.length + p.mapIn.length;
    if (n === 0) return;
    const parts = [
      { set: "to_remote", elems: p.toRemote.splice(0) },
      { set: "to_public", elems: p.toPublic.splice(0) },
      { set: "queued", elems: p.queued.splice(0) },
      { set: "map_in", elems: p.mapIn.splice(0) },
      { set: "map_out", elems: p.mapOut.splice(0) },
    ];
    try {
      // Both directions of every session in one transaction: never half a session.
      this.#nft.addAll(SERVER_TABLE, parts);
    } catch (e) {
      this.#fail(`programming ${n} session(s)`, e);
    }
  }

  workerShare(): WorkerShare {
    return { kind: this.kind };
  }

  reinstalled(sessions: Iterable<GatewaySession>): void {
    for (const s of sessions) this.sessionUp(s);
    this.commit();
  }

  /** False on an HA standby: conntrackd owns the conntracks (`ServerDataPath.ownConntracks`). */
  #ownConntracks = true;

  ownConntracks(own: boolean): void {
    this.#ownConntracks = own;
  }

  sessionDown(s: GatewaySession): void {
    if (s.proto === IPPROTO_ICMP) return;
    // A session may go before its grant was committed (refused late, expired at once).
    this.commit();
    if (isMapping(s)) {
      this.#mappingDown(s);
      return;
    }
    try {
      if (this.#pool.has(s.x)) {
        this.#nft.delete(SERVER_TABLE, "queued", [queuedKey(s)]);
      } else {
        this.#nft.delete(SERVER_TABLE, "to_remote", [remoteKey(s)]);
        this.#nft.delete(SERVER_TABLE, "to_public", [publicKey(s)]);
      }
      // The NAT binding lives in the conntrack: without this, a released pair
      // would go on being translated to its old peer until conntrack forgot it.
      if (!this.#ownConntracks) return;
      this.#ct.delete([{
        proto: s.proto,
        src: s.a,
        dst: this.#cfg.lanAddr,
        sport: s.pa,
        dport: s.pg,
      }]);
    } catch (e) {
      this.#fail(`removing ${describeSession(s)}`, e);
    }
  }

  /**
   * A mapping goes: its two elements, then the conntracks it made (inbound
   * toward R:p from any remote, outbound from a:pa snatted to R:p), found by
   * one dump (mappings are few; sessions have exact tuples instead).
   */
  #mappingDown(s: GatewaySession): void {
    try {
      this.#nft.delete(SERVER_TABLE, "map_in", [mapInKey(s)]);
      this.#nft.delete(SERVER_TABLE, "map_out", [mapOutKey(s)]);
      if (!this.#ownConntracks) return;
      const gone: { proto: number; src: number; dst: number; sport: number; dport: number }[] = [];
      this.#ct.dump((e) => {
        if (e.orig.proto !== s.proto) return;
        const inbound = e.orig.dst === s.r && e.orig.dport === s.p && e.reply.src === s.a &&
          e.reply.sport === s.pa;
        const outbound = e.orig.src === s.a && e.orig.sport === s.pa && e.reply.dst === s.r &&
          e.reply.dport === s.p;
        if (inbound || outbound) gone.push({ ...e.orig });
      });
      if (gone.length) this.#ct.delete(gone);
    } catch (e) {
      this.#fail(`removing the mapping ${formatIPv4(s.r)}:${s.p} -> ${formatIPv4(s.a)}:${s.pa}`, e);
    }
  }

  #fail(what: string, e: unknown): void {
    // The watchdog checks and repairs on its next round.
    this.#watchdog.suspect(`${what}: ${(e as Error).message}`);
  }

  counters(): Map<number, SessionCounters> {
    const out = new Map<number, SessionCounters>();
    const g = this.#cfg.lanAddr;
    try {
      this.#ct.dump((e) => {
        if (e.orig.dst !== g || e.orig.proto === IPPROTO_ICMP) return;
        out.set(gatewayKey(e.orig.proto, e.orig.src, e.orig.dport), {
          packetsOut: e.packetsOrig,
          bytesOut: e.bytesOrig,
          packetsIn: e.packetsReply,
          bytesIn: e.bytesReply,
        });
      });
    } catch (e) {
      log.warn(`reading conntrack counters: ${(e as Error).message}`);
    }
    return out;
  }

  status(): DataPathStatus {
    return this.#watchdog.status();
  }

  async stop(mode: StopMode): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#io = null;
    await this.#undo.run();
    if (mode === "remove") {
      await this.#kept.run();
      log.info(`removed table ip ${SERVER_TABLE} and dpm's chains`);
    } else if (this.#kept.size > 0) {
      log.info(
        `left table ip ${SERVER_TABLE} translating established sessions (dpm server --cleanup removes it)`,
      );
    }
    this.#nft.close();
    this.#ct.close();
  }
}
