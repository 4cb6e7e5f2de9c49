/**
 * The gateway's bpf data path: the kernel path (`nft/server.ts`: dpm's
 * nftables table, conntrack, the iptables chains, the queue for ICMP and
 * hairpins, the watchdog) with the gateway's tc programs in front
 * (`bpf/gateway.bpf.c`), which translate a session's packets from one
 * interface straight to the other once the stack forwarded it both ways.
 *
 * Theory of operation (docs/datapath.md, "The bpf path"):
 *
 * - A session granted is programmed twice, in the same turn, before its
 *   grant is answered (`commit`): its nftables elements (the slow path
 *   every first packet takes, where the operator's forward rules judge it)
 *   and its two entries in the session map `dpm_nat`, without SEEN bits.
 *   The egress programs set them as the stack forwards the session's
 *   packets each way; with both, the ingress programs take it.
 * - A first packet that reaches the gateway before its request was granted
 *   (a version-3 driver lets it go at once: docs/protocol.md, "Version 3")
 *   has no entry: the stack hands it to the kernel path's hold chain, which
 *   queues it to the server until the grant is committed (`server/held.ts`).
 * - A session that ends loses both, and its conntrack; a mapping also the
 *   flows the programs learned from it.
 * - ICMP sessions and hairpinned ones get no entries: they stay on the
 *   queue translator, as on the kernel path. So do fragments, IP options
 *   and whatever the programs leave to the stack (docs/datapath.md).
 * - Counters for `dpm status` come from the map: every packet that left the
 *   gateway in a session's direction is counted there, slow or fast.
 * - The watchdog (every second) checks the table and chains as on the
 *   kernel path and, every round, that the four programs are attached: a
 *   deleted clsact qdisc or filter is put back from the loaded programs,
 *   whose map never left, so no session is lost.
 * - Restart without loss: `stop("keep")` leaves the programs attached (the
 *   kernel keeps them and their maps with no process), the next start finds
 *   them and loads its programs on the same map (`BpfPrograms.load`), then
 *   replaces the filters.
 *
 * @module
 */

import { logger } from "../../runtime/log.ts";
import { IPPROTO_ICMP } from "../../wire/meta.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import {
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
import { NO_OTHER_PATHS, type OtherPaths } from "../netfilter.ts";
import { NftServerPath } from "../nft/server.ts";
import type { WatchdogCheck } from "../nft/watchdog.ts";
import { BpfPrograms, mapText, NatMap } from "./programs.ts";
import {
  gatewayRecords,
  learnedOf,
  NatFlag,
  NatHandoff,
  type NatKey,
  type NatRecord,
} from "./layout.ts";
import { peerInOtherNamespace } from "../../../linux/iface.ts";
import { gatewayCounters, idleLearned, keyId } from "./counters.ts";
import { CLOCK_MONOTONIC, clockNs } from "../../../linux/libc.ts";

const log = logger("server");

/**
 * Entries of the gateway's session map for `--bpf-sessions` (two per
 * session; a mapping's learned flows count too). Not preallocated: memory
 * follows the sessions, but the hash buckets (16 B each, one per entry
 * rounded up to a power of two) are allocated at load. Sessions beyond it
 * are translated by the kernel path only.
 */
export function gatewayMapEntries(sessions: number): number {
  return 2 * sessions;
}

/** How often, and after how long quiet, a mapping's learned flows are forgotten. */
const LEARNED_SWEEP_MS = 10_000;
const LEARNED_IDLE_NS = 300n * 1_000_000_000n;

/** The gateway's interfaces as the programs name them. */
function ifaces(cfg: GatewayOptions): { lan: string; wan: string } {
  return { lan: cfg.lanIf, wan: cfg.wanIf };
}

/**
 * How the programs hand fast packets to each device: straight into the
 * peer's ingress when the device is a veth (or netkit) whose peer is in
 * another namespace (a container's or a namespace's link), else to the
 * device's own egress. Learned once, at start.
 */
async function handoffs(cfg: GatewayOptions): Promise<{ lan: NatHandoff; wan: NatHandoff }> {
  const of = async (dev: string) =>
    await peerInOtherNamespace(dev) ? NatHandoff.PEER : NatHandoff.XMIT;
  const [lan, wan] = await Promise.all([of(cfg.lanIf), of(cfg.wanIf)]);
  const say = (h: NatHandoff) => h === NatHandoff.PEER ? "its peer's ingress" : "its egress";
  log.info(`bpf: fast packets go to ${cfg.lanIf}: ${say(lan)}; to ${cfg.wanIf}: ${say(wan)}`);
  return { lan, wan };
}

/** The gateway's bpf data path: open, remove, and what it adds to the kernel path. */
export const BpfServerDataPath = {
  /** Shares dpm's nftables table with the kernel path (see `open.ts`). */
  family: "nft" as const,
  /**
   * Loads the programs (reusing a previous run's session map when its
   * programs are still attached) and opens the kernel path's sockets.
   * Nothing attached or installed yet: a kernel that cannot load the
   * programs fails here, before anything changed.
   */
  async open(cfg: GatewayOptions, others: OtherPaths = NO_OTHER_PATHS): Promise<ServerDataPath> {
    const progs = BpfPrograms.load("gateway", ifaces(cfg), {
      maxEntries: gatewayMapEntries(cfg.bpfSessions),
      lan: cfg.lan,
      gateway: cfg.lanAddr,
      handoff: await handoffs(cfg),
    });
    try {
      let path: BpfServerPath | null = null;
      const check: WatchdogCheck = {
        missing: () => path?.attached ? progs.missing() : [],
        repair: () => `${progs.attach()} BPF program(s) on ${cfg.lanIf} and ${cfg.wanIf}`,
      };
      const nft = await NftServerPath.open(cfg, others, { kind: "bpf", checks: [check] });
      path = new BpfServerPath(cfg, nft, progs);
      return path;
    } catch (e) {
      progs.close();
      throw e;
    }
  },
  /**
   * A worker thread's path (`dpm server --workers`): the kernel path's
   * netlink sockets and the main thread's session map (`share.natMapFd`),
   * never begun; it programs its sessions into both, as the main thread's
   * path does. `sessions`: the worker's, for the counters.
   */
  async openWorker(
    cfg: GatewayOptions,
    share: WorkerShare,
    sessions: () => Iterable<GatewaySession>,
  ): Promise<ServerDataPath> {
    if (share.natMapFd === undefined) throw new Error("no session map to share with a worker");
    const nft = await NftServerPath.open(cfg, NO_OTHER_PATHS, { kind: "bpf" });
    return new BpfServerPath(cfg, nft, null, new NatMap(share.natMapFd), sessions);
  },
  /** Removes what a run of this path left: its programs, then the kernel path's table and chains. */
  async remove(cfg: GatewayOptions): Promise<string> {
    const progs = BpfServerDataPath.removeExtras(cfg);
    return `${await progs}; ${await NftServerPath.remove(cfg)}`;
  },
  /** Removes only what this path adds to the table it shares with the kernel path: the programs. */
  removeExtras(cfg: GatewayOptions): Promise<string> {
    const n = BpfPrograms.removeFrom("gateway", ifaces(cfg));
    return Promise.resolve(`${n} BPF filter(s)`);
  },
};

/** The bpf path around the kernel path's table. */
class BpfServerPath implements ServerDataPath {
  readonly kind = "bpf" as const;
  readonly can = {
    forwardsMappings: () => true,
    countsPerSession: true,
    keepsSessions: true,
    // A first packet ahead of its request takes the slow path: the kernel
    // path's hold chain queues it, and once committed the stack translates it.
    kernelTranslates: true,
  } as const;
  /** The kernel path's queue: held first packets' verdicts, ICMP and hairpins. */
  get io(): PacketIO | null {
    return this.#nft.io;
  }
  /** Whether the programs were attached by this run (the watchdog checks them from then on). */
  attached = false;
  readonly #cfg: GatewayOptions;
  readonly #nft: NftServerPath;
  /** The programs; null in a worker thread's path, which only writes the map. */
  readonly #progs: BpfPrograms | null;
  readonly #nat: NatMap;
  readonly #pool: Set<number>;
  #sessions: () => Iterable<GatewaySession> = () => [];
  /** Entries of the sessions granted this turn, written by `commit`. */
  #pending: NatRecord[] = [];
  #sweep: ReturnType<typeof setInterval> | null = null;
  #adopted = 0;
  #putErrors = 0;
  #stopped = false;

  constructor(
    cfg: GatewayOptions,
    nft: NftServerPath,
    progs: BpfPrograms | null,
    nat: NatMap = progs!.nat,
    sessions: () => Iterable<GatewaySession> = () => [],
  ) {
    this.#cfg = cfg;
    this.#nft = nft;
    this.#progs = progs;
    this.#nat = nat;
    this.#sessions = sessions;
    this.#pool = new Set(cfg.pool);
  }

  async adopt(): Promise<GatewaySession[]> {
    const out = await this.#nft.adopt();
    this.#adopted = out.length;
    return out;
  }

  /** The map entries of `s`: none for ICMP and hairpinned sessions (the queue translates them). */
  #records(s: GatewaySession): NatRecord[] {
    if (s.proto === IPPROTO_ICMP || (!isMapping(s) && this.#pool.has(s.x))) return [];
    return gatewayRecords(s, this.#cfg.lanAddr);
  }

  async begin(
    sessions: () => Iterable<GatewaySession>,
    packets: ServerPacketHandler,
    onFatal: (e: Error) => void,
  ): Promise<void> {
    const progs = this.#progs;
    if (progs === null) throw new Error("a worker thread's bpf path is never begun");
    this.#sessions = sessions;
    await this.#nft.begin(sessions, packets, onFatal);
    try {
      const n = this.#sync();
      progs.attach();
      this.attached = true;
      this.#sweep = setInterval(() => this.#sweepLearned(), LEARNED_SWEEP_MS);
      log.info(
        `bpf programs on ${this.#cfg.lanIf} and ${this.#cfg.wanIf} (${mapText(progs.mapOrigin)}, ` +
          `${n} session(s))`,
      );
    } catch (e) {
      await this.stop(this.#adopted > 0 ? "keep" : "remove");
      throw e;
    }
  }

  /**
   * Makes the map hold every session's entries: what an adopted map holds
   * for them stays as it is (fast state and counters survive a restart),
   * what is missing or different is written, what belongs to no session
   * (and no live mapping's learned flow) goes. Returns the session count.
   */
  #sync(): number {
    const have = new Map<string, NatRecord>();
    this.#nat.forEach((r) => have.set(keyId(r.key), r));
    const want = new Set<string>();
    const put: NatRecord[] = [];
    const mappings: GatewaySession[] = [];
    let n = 0;
    for (const s of this.#sessions()) {
      const recs = this.#records(s);
      if (recs.length) n++;
      if (isMapping(s)) mappings.push(s);
      for (const r of recs) {
        const id = keyId(r.key);
        want.add(id);
        const h = have.get(id);
        const t = h?.entry.to;
        if (
          !h || t!.saddr !== r.entry.to.saddr || t!.daddr !== r.entry.to.daddr ||
          t!.sport !== r.entry.to.sport || t!.dport !== r.entry.to.dport ||
          (h.entry.flags & NatFlag.WILDCARD) !== (r.entry.flags & NatFlag.WILDCARD)
        ) put.push(r);
      }
    }
    const gone: NatKey[] = [];
    for (const [id, r] of have) {
      if (want.has(id)) continue;
      if (mappings.some((m) => learnedOf(m, r))) continue;
      gone.push(r.key);
    }
    this.#nat.delete(gone);
    this.#put(put);
    return n;
  }

  /** Writes records; a full map leaves the rest to the kernel path (logged, not fatal). */
  #put(records: NatRecord[]): void {
    if (records.length === 0) return;
    try {
      this.#nat.put(records);
    } catch (e) {
      if (this.#putErrors++ < 10) {
        log.warn(
          `writing ${records.length / 2} session(s) to the BPF map: ${(e as Error).message}; ` +
            "they are translated by the kernel path only",
        );
      }
    }
  }

  sessionUp(s: GatewaySession): void {
    this.#nft.sessionUp(s);
    for (const r of this.#records(s)) this.#pending.push(r);
  }

  commit(): void {
    this.#nft.commit();
    const p = this.#pending;
    if (p.length === 0) return;
    this.#pending = [];
    this.#put(p);
  }

  workerShare(): WorkerShare {
    return { kind: "bpf", natMapFd: this.#nat.fd };
  }

  reinstalled(sessions: Iterable<GatewaySession>): void {
    // The nft table only: rewriting the map would reset the entries' state and counters.
    this.#nft.reinstalled(sessions);
  }

  ownConntracks(own: boolean): void {
    this.#nft.ownConntracks(own);
  }

  sessionDown(s: GatewaySession): void {
    // Granted and gone in the same turn: its entries were never written.
    this.commit();
    this.#nft.sessionDown(s);
    const recs = this.#records(s);
    if (recs.length === 0) return;
    try {
      this.#nat.delete(recs.map((r) => r.key));
      if (isMapping(s)) this.#nat.deleteWhere((r) => learnedOf(s, r));
    } catch (e) {
      log.warn(`removing a session from the BPF map: ${(e as Error).message}`);
    }
  }

  /** A mapping's flows that went quiet leave the map (the slow path learns them again). */
  #sweepLearned(): void {
    try {
      const learned = this.#nat.all((flags) => (flags & NatFlag.LEARNED) !== 0);
      const gone = idleLearned(learned, clockNs(CLOCK_MONOTONIC), LEARNED_IDLE_NS);
      this.#nat.delete(gone);
    } catch (e) {
      log.warn(`sweeping the BPF map: ${(e as Error).message}`);
    }
  }

  counters(): Map<number, SessionCounters> {
    try {
      // Only entries that counted something: a session none of whose packets passed has none.
      const counted = this.#nat.all((_flags, packets) => packets > 0);
      return gatewayCounters(counted, this.#sessions(), this.#cfg.lanAddr);
    } catch (e) {
      log.warn(`reading the BPF map's counters: ${(e as Error).message}`);
      return new Map();
    }
  }

  status(): DataPathStatus {
    return this.#nft.status();
  }

  async stop(mode: StopMode): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#sweep !== null) clearInterval(this.#sweep);
    this.attached = false;
    if (this.#progs === null) {
      // A worker thread's path: the map is the main thread's; its sockets close.
      await this.#nft.stop("keep");
      return;
    }
    if (mode === "remove") {
      try {
        this.#progs.remove();
      } catch (e) {
        log.warn(`removing the BPF programs: ${(e as Error).message}`);
      }
    } else {
      // The kernel keeps the attached programs and their map running.
      this.#progs.close();
    }
    await this.#nft.stop(mode);
  }
}
