/**
 * The host's kernel data path: dpm decides, the kernel translates.
 *
 * Theory of operation. dpm's table `ip dpm-driver` (`rules.ts`) holds one
 * map, `to_gateway` (proto . X . px . pa -> G . Pg), met by a session's first
 * packet in the nat output chain; conntrack translates the rest of the
 * session both ways (replies `G:Pg -> a:pa` come back as `X:px -> a:pa`).
 *
 * The first packet of every new TCP/UDP conntrack toward the outside goes
 * through the queue first (mangle OUTPUT, `--ctstate NEW`, before nat): the
 * driver holds it for the rest of its turn, adds the map elements of every
 * session of the turn (`sessionUp`: its proposed gateway port, or the one a
 * grant named) in one transaction (`commit`), and lets the packets go
 * unchanged; the nat chain that follows translates them. Packets of
 * established sessions never reach user space. ICMP stays on the queue
 * translator.
 *
 * Leases: `activity()` reads conntrack (accounting on) at most every two
 * seconds: a session whose packet count moved is busy (renewed), one whose
 * conntrack is in TIME_WAIT or CLOSE is closed (released), one whose
 * conntrack is gone is idle.
 *
 * Restart without loss: `stop("keep")` leaves the table and conntracks; the
 * next start reads the map (`adopt()`), so its sessions are active at once
 * and renewed with the server.
 *
 * @module
 */

import { IPPROTO_ICMP, IPPROTO_TCP, Verdict } from "../../wire/meta.ts";
import { describeSession } from "../../wire/tuple.ts";
import type { VerdictValue } from "../../wire/meta.ts";
import type { PacketInfo } from "../../wire/packet.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import {
  type Activity,
  type DriverDataPath,
  type DriverPacketHandler,
  hostKey,
  type HostOptions,
  type HostSessionKey,
  type PacketIO,
  type StopMode,
} from "../datapath.ts";
import {
  NO_OTHER_PATHS,
  openQueue,
  type OtherPaths,
  pumpHost,
  sysctlJournal,
} from "../netfilter.ts";
import { ActivityReadings } from "../activity.ts";
import { rewriteToGateway } from "../../wire/rewrite.ts";
import {
  deleteTable,
  DRIVER_TABLE,
  driverKernelChains,
  driverTable,
  fromGatewayText,
  toGatewayText,
} from "../nft/rules.ts";
import { Watchdog } from "../nft/watchdog.ts";
import { installChains, removeChains } from "../../../linux/iptables.ts";
import type { NfQueue } from "../../../linux/nfqueue.ts";
import { concat, NftMaps, splitConcat } from "../../../linux/nftables.ts";
import { Conntrack, TcpState } from "../../../linux/conntrack.ts";
import { loadRuleset, tableExists } from "../../../linux/nft.ts";
import { recoverSysctls, setSysctls } from "../../../linux/sysctl.ts";

const log = logger("driver");

const gwKey = (k: HostSessionKey) => concat([k.proto, 1], [k.x, 4], [k.px, 2], [k.pa, 2]);
const gwData = (k: HostSessionKey) => concat([k.g, 4], [k.pg, 2]);
const fromKey = (k: HostSessionKey) => concat([k.proto, 1], [k.pg, 2]);
const fromData = (k: HostSessionKey) => concat([k.x, 4], [k.px, 2]);

/** The host's kernel data path. */
export class KernelDriverDataPath implements DriverDataPath {
  readonly kind = "kernel" as const;
  readonly can = { keepsSessions: true, commitsFirst: true } as const;
  readonly io: PacketIO;
  readonly #o: HostOptions;
  readonly #nft: NftMaps;
  readonly #ct: Conntrack;
  readonly #queue: NfQueue;
  readonly #undo: Cleanup;
  readonly #kept = new Cleanup(log);
  readonly #others: OtherPaths;
  readonly #live = new Map<number, HostSessionKey>();
  readonly #watchdog: Watchdog;
  readonly #activity = new ActivityReadings(() => this.#readActivity());
  #stopped = false;

  private constructor(
    o: HostOptions,
    nft: NftMaps,
    ct: Conntrack,
    queue: NfQueue,
    io: PacketIO,
    undo: Cleanup,
    others: OtherPaths,
  ) {
    this.#o = o;
    this.#nft = nft;
    this.#ct = ct;
    this.#queue = queue;
    this.io = io;
    this.#undo = undo;
    this.#others = others;
    this.#watchdog = new Watchdog(
      log,
      "kernel",
      nft,
      [
        `ip ${DRIVER_TABLE} out`,
        `ip ${DRIVER_TABLE} in`,
        `ip raw DPM-DRV-OUT`,
        `ip mangle DPM-DRV-NEW`,
        `ip raw DPM-DRV-PRE`,
      ],
      async () =>
        `table ip ${DRIVER_TABLE} with ${await this
          .#install()} session(s) and dpm's iptables chains`,
    );
  }

  /**
   * Opens the netlink sockets, the queue and the raw socket. Changes
   * nothing yet (see {@linkcode adopt}, {@linkcode begin}).
   */
  static async open(
    o: HostOptions,
    others: OtherPaths = NO_OTHER_PATHS,
  ): Promise<KernelDriverDataPath> {
    const undo = new Cleanup(log);
    try {
      const nft = NftMaps.open();
      undo.push(() => nft.close());
      const ct = Conntrack.open();
      undo.push(() => ct.close());
      const { queue, io } = openQueue(o.queue, undo);
      return new KernelDriverDataPath(o, nft, ct, queue, io, undo, others);
    } catch (e) {
      await undo.run();
      throw e;
    }
  }

  /** The sessions a previous run left in the map (`--cleanup` gives them back). */
  static async leftovers(o: HostOptions): Promise<HostSessionKey[]> {
    if (!(await tableExists(DRIVER_TABLE))) return [];
    const nft = NftMaps.open();
    try {
      return readMap(nft, o.local);
    } finally {
      nft.close();
    }
  }

  /** Removes the table and chains a run of this path left, and its sysctls. */
  static async remove(o: HostOptions): Promise<string> {
    await loadRuleset(deleteTable(DRIVER_TABLE));
    await removeChains(driverKernelChains(o));
    const n = await recoverSysctls(journalOf(o));
    return `table ip ${DRIVER_TABLE} and the kernel path's chains; ${n} sysctl(s) restored`;
  }

  /** The sessions a previous run left in the map: translated from now on again. */
  async adopt(): Promise<HostSessionKey[]> {
    if (!(await tableExists(DRIVER_TABLE))) return [];
    const adopted = readMap(this.#nft, this.#o.local);
    for (const k of adopted) this.#live.set(hostKey(k.proto, k.a, k.pg), k);
    return adopted;
  }

  /** Installs the table (with the adopted sessions), the chains, and starts the pump and the watchdog. */
  async begin(packets: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void> {
    const journal = journalOf(this.#o);
    try {
      await recoverSysctls(journal);
      await this.#others.removeLeftovers();
      // Per-session counters for leases and status; read when a conntrack is created.
      this.#kept.push(await setSysctls({ "net.netfilter.nf_conntrack_acct": "1" }, { journal }));
      this.#kept.push(() => loadRuleset(deleteTable(DRIVER_TABLE)));
      const specs = driverKernelChains(this.#o);
      this.#kept.push(() => removeChains(specs));
      const n = await this.#install();
      this.#undo.push(pumpHost(this.#queue, packets, onFatal));
      this.#watchdog.start();
      this.#undo.push(() => this.#watchdog.stop());
      log.info(
        `data path on (kernel): table ip ${DRIVER_TABLE} with ${n} session(s) on ${this.#o.dev}; ` +
          `queue ${this.#o.queue} for new sessions and ICMP`,
      );
    } catch (e) {
      // A failed start leaves nothing, unless sessions of a previous run go on in the kernel.
      await this.stop(this.#live.size > 0 ? "keep" : "remove");
      throw e;
    }
  }

  async #install(): Promise<number> {
    const live = [...this.#live.values()];
    await loadRuleset(driverTable(this.#o.dev, this.#o.server, {
      toGateway: live.map((k) => toGatewayText(k.proto, k.x, k.px, k.pa, k.g, k.pg)),
      fromGateway: live.map((k) => fromGatewayText(k.proto, k.pg, k.x, k.px)),
    }));
    await installChains(driverKernelChains(this.#o));
    return live.length;
  }

  /**
   * TCP and UDP: the session is in the map, the nat output chain after the
   * queue rewrites the packet as it goes on. ICMP stays on the queue
   * translator: rewritten here.
   */
  outbound(pkt: Uint8Array, info: PacketInfo, g: number, pg: number, skb: number): VerdictValue {
    return info.proto === IPPROTO_ICMP ? rewriteToGateway(pkt, info, g, pg, skb) : Verdict.ACCEPT;
  }

  /** Sessions up since the last commit, by host key (a later sessionDown takes one back). */
  readonly #pending = new Map<number, HostSessionKey>();

  sessionUp(k: HostSessionKey): void {
    if (k.proto === IPPROTO_ICMP) return;
    const key = hostKey(k.proto, k.a, k.pg);
    this.#live.set(key, k);
    this.#pending.set(key, k);
  }

  commit(): void {
    if (this.#pending.size === 0) return;
    const ks = [...this.#pending.values()];
    this.#pending.clear();
    try {
      // Both maps of every session of the turn in one transaction.
      this.#nft.addAll(DRIVER_TABLE, [
        { set: "to_gateway", elems: ks.map((k) => ({ key: gwKey(k), data: gwData(k) })) },
        { set: "from_gateway", elems: ks.map((k) => ({ key: fromKey(k), data: fromData(k) })) },
      ]);
    } catch (e) {
      this.#watchdog.suspect(
        `programming ${ks.length} session(s), ${describeSession(ks[0]!)} first: ${
          (e as Error).message
        }`,
      );
    }
  }

  sessionDown(k: HostSessionKey): void {
    if (k.proto === IPPROTO_ICMP) return;
    const key = hostKey(k.proto, k.a, k.pg);
    this.#live.delete(key);
    // Not committed yet: it never will be.
    this.#pending.delete(key);
    try {
      this.#nft.delete(DRIVER_TABLE, "to_gateway", [gwKey(k)]);
      this.#nft.delete(DRIVER_TABLE, "from_gateway", [fromKey(k)]);
      this.#ct.delete([{ proto: k.proto, src: k.a, dst: k.x, sport: k.pa, dport: k.px }]);
    } catch (e) {
      this.#watchdog.suspect(`removing ${describeSession(k)}: ${(e as Error).message}`);
    }
  }

  activity(): Map<number, Activity> {
    return this.#activity.get();
  }

  /** Conntrack's counters of the sessions; on an error, what was read until then. */
  #readActivity(): Map<number, Activity> {
    const out = new Map<number, Activity>();
    const g = this.#o.server;
    try {
      this.#ct.dump((e) => {
        // After the dnat, the reply tuple is G:Pg -> a:pa.
        if (e.reply.src !== g || e.orig.proto === IPPROTO_ICMP) return;
        const st = e.tcpState ?? 0;
        out.set(hostKey(e.orig.proto, e.reply.dst, e.reply.sport), {
          packets: e.packetsOrig + e.packetsReply,
          bytes: e.bytesOrig + e.bytesReply,
          closed: e.orig.proto === IPPROTO_TCP &&
            (st === TcpState.TIME_WAIT || st === TcpState.CLOSE),
        });
      });
    } catch (e) {
      log.warn(`reading conntrack for lease activity: ${(e as Error).message}`);
    }
    return out;
  }

  status(): DataPathStatus {
    return this.#watchdog.status();
  }

  async stop(mode: StopMode): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#undo.run();
    if (mode === "remove") await this.#kept.run();
    else {
      log.info(
        `left table ip ${DRIVER_TABLE} translating ${this.#live.size} session(s) (dpm driver --cleanup removes it)`,
      );
    }
  }
}

/** Where the host's sysctl journal lives: beside its socket. */
function journalOf(o: HostOptions): string {
  return sysctlJournal(o.socket);
}

/** The sessions in the host's map (`local`: the host's address, the `a` of every session). */
function readMap(nft: NftMaps, local: number): HostSessionKey[] {
  const out: HostSessionKey[] = [];
  try {
    for (const e of nft.list(DRIVER_TABLE, "to_gateway")) {
      const [proto, x, px, pa] = splitConcat(e.key, [1, 4, 2, 2]);
      const [g, pg] = splitConcat(e.data, [4, 2]);
      out.push({ proto: proto!, a: local, pa: pa!, x: x!, px: px!, g: g!, pg: pg! });
    }
  } catch (e) {
    log.warn(`reading the previous run's map: ${(e as Error).message}`);
  }
  return out;
}
