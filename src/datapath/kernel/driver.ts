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
 * driver holds it while it asks the server (claims 1, 3), adds the map
 * element on the grant (`sessionUp`), and lets the packet go unchanged; the
 * nat chain that follows translates it. Packets of established sessions
 * never reach user space. ICMP stays on the queue translator.
 *
 * Leases: `activity()` reads conntrack (accounting on) at most every two
 * seconds: a session whose packet count moved is busy (renewed), one whose
 * conntrack is in TIME_WAIT or CLOSE is closed (released), one whose
 * conntrack is gone is idle.
 *
 * Restart without loss: `stop(false)` leaves the table and conntracks; the
 * next start reads the map (`adopted()`), so its sessions are active at once
 * and renewed with the server.
 *
 * @module
 */

import type { Cidr } from "../../wire/addr.ts";
import type { DriverConfig } from "../../config.ts";
import { describeSession, IPPROTO_ICMP, IPPROTO_TCP } from "../../wire/meta.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import {
  type Activity,
  type DriverDataPath,
  hostKey,
  type HostSessionKey,
  type PacketIO,
} from "../datapath.ts";
import {
  driverChains,
  type DriverPacketHandler,
  openHostQueue,
  pumpHost,
} from "../queue/driver.ts";
import {
  deleteTable,
  DRIVER_TABLE,
  driverKernelChains,
  driverTable,
  fromGatewayText,
  toGatewayText,
} from "./rules.ts";
import { Watchdog } from "./watchdog.ts";
import { installChains, removeChains } from "../../../linux/iptables.ts";
import type { NfQueue } from "../../../linux/nfqueue.ts";
import { concat, NftMaps, splitConcat } from "../../../linux/nftables.ts";
import { Conntrack, TcpState } from "../../../linux/conntrack.ts";
import { loadRuleset, tableExists } from "../../../linux/nft.ts";
import { recoverSysctls, setSysctls } from "../../../linux/sysctl.ts";

const log = logger("driver");

/** How often conntrack is read for lease activity. */
const ACTIVITY_EVERY_MS = 2000;

const gwKey = (k: HostSessionKey) => concat([k.proto, 1], [k.x, 4], [k.px, 2], [k.pa, 2]);
const gwData = (k: HostSessionKey) => concat([k.g, 4], [k.pg, 2]);
const fromKey = (k: HostSessionKey) => concat([k.proto, 1], [k.pg, 2]);
const fromData = (k: HostSessionKey) => concat([k.x, 4], [k.px, 2]);

/** The host's kernel data path. */
export class KernelDriverDataPath implements DriverDataPath {
  readonly kind = "kernel" as const;
  readonly io: PacketIO;
  readonly #cfg: DriverConfig;
  readonly #lan: Cidr;
  readonly #dev: string;
  readonly #local: number;
  readonly #nft: NftMaps;
  readonly #ct: Conntrack;
  readonly #queue: NfQueue;
  readonly #undo: Cleanup;
  readonly #kept = new Cleanup(log);
  readonly #adopted: HostSessionKey[];
  readonly #live = new Map<number, HostSessionKey>();
  readonly #watchdog: Watchdog;
  #activity: Map<number, Activity> | null = null;
  #activityAt = -Infinity;

  private constructor(
    cfg: DriverConfig,
    lan: Cidr,
    dev: string,
    local: number,
    nft: NftMaps,
    ct: Conntrack,
    queue: NfQueue,
    io: PacketIO,
    undo: Cleanup,
    adopted: HostSessionKey[],
  ) {
    this.#cfg = cfg;
    this.#lan = lan;
    this.#dev = dev;
    this.#local = local;
    this.#nft = nft;
    this.#ct = ct;
    this.#queue = queue;
    this.io = io;
    this.#undo = undo;
    this.#adopted = adopted;
    for (const k of adopted) this.#live.set(hostKey(k.proto, k.a, k.pg), k);
    this.#watchdog = new Watchdog(
      log,
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
   * Opens the netlink sockets, the queue and the raw socket, and reads the
   * sessions a previous run left in the kernel (`local`: the host's address
   * toward the gateway). Changes nothing yet (see {@linkcode begin}).
   */
  static async open(
    cfg: DriverConfig,
    lan: Cidr,
    dev: string,
    local: number,
  ): Promise<KernelDriverDataPath> {
    const undo = new Cleanup(log);
    try {
      const nft = NftMaps.open();
      undo.push(() => nft.close());
      const ct = Conntrack.open();
      undo.push(() => ct.close());
      const adopted: HostSessionKey[] = [];
      if (await tableExists(DRIVER_TABLE)) {
        try {
          for (const e of nft.list(DRIVER_TABLE, "to_gateway")) {
            const [proto, x, px, pa] = splitConcat(e.key, [1, 4, 2, 2]);
            const [g, pg] = splitConcat(e.data, [4, 2]);
            adopted.push({ proto: proto!, a: local, pa: pa!, x: x!, px: px!, g: g!, pg: pg! });
          }
        } catch (e) {
          log.warn(`reading the previous run's map: ${(e as Error).message}`);
        }
      }
      const { queue, io } = openHostQueue(cfg.queue, undo);
      return new KernelDriverDataPath(cfg, lan, dev, local, nft, ct, queue, io, undo, adopted);
    } catch (e) {
      await undo.run();
      throw e;
    }
  }

  /** Installs the table (with the adopted sessions), the chains, and starts the pump and the watchdog. */
  async begin(handle: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void> {
    const journal = `${this.#cfg.socket}.sysctls.json`;
    await recoverSysctls(journal);
    // Per-session counters for leases and status; read when a conntrack is created.
    const restore = await setSysctls({ "net.netfilter.nf_conntrack_acct": "1" }, { journal });
    this.#kept.push(restore);
    // A queue-path run killed with SIGKILL may have left its chains.
    await removeChains(driverChains(this.#cfg, this.#lan, this.#dev));
    const n = await this.#install();
    this.#kept.push(() => loadRuleset(deleteTable(DRIVER_TABLE)));
    const specs = driverKernelChains(this.#cfg, this.#lan, this.#dev);
    this.#kept.push(() => removeChains(specs));
    this.#undo.push(pumpHost(this.#queue, handle, onFatal));
    this.#watchdog.start();
    this.#undo.push(() => this.#watchdog.stop());
    log.info(
      `data path on (kernel): table ip ${DRIVER_TABLE} with ${n} session(s) on ${this.#dev}; ` +
        `queue ${this.#cfg.queue} for new sessions and ICMP`,
    );
  }

  async #install(): Promise<number> {
    const live = [...this.#live.values()];
    await loadRuleset(driverTable(this.#dev, this.#cfg.server, {
      toGateway: live.map((k) => toGatewayText(k.proto, k.x, k.px, k.pa, k.g, k.pg)),
      fromGateway: live.map((k) => fromGatewayText(k.proto, k.pg, k.x, k.px)),
    }));
    await installChains(driverKernelChains(this.#cfg, this.#lan, this.#dev));
    return live.length;
  }

  adopted(): HostSessionKey[] {
    return this.#adopted;
  }

  kernelTranslates(proto: number): boolean {
    return proto !== IPPROTO_ICMP;
  }

  sessionUp(k: HostSessionKey): void {
    if (k.proto === IPPROTO_ICMP) return;
    this.#live.set(hostKey(k.proto, k.a, k.pg), k);
    try {
      this.#nft.addAll(DRIVER_TABLE, [
        { set: "to_gateway", elems: [{ key: gwKey(k), data: gwData(k) }] },
        { set: "from_gateway", elems: [{ key: fromKey(k), data: fromData(k) }] },
      ]);
    } catch (e) {
      this.#watchdog.suspect(`programming ${describeSession(k)}: ${(e as Error).message}`);
    }
  }

  sessionDown(k: HostSessionKey): void {
    if (k.proto === IPPROTO_ICMP) return;
    this.#live.delete(hostKey(k.proto, k.a, k.pg));
    try {
      this.#nft.delete(DRIVER_TABLE, "to_gateway", [gwKey(k)]);
      this.#nft.delete(DRIVER_TABLE, "from_gateway", [fromKey(k)]);
      this.#ct.delete([{ proto: k.proto, src: k.a, dst: k.x, sport: k.pa, dport: k.px }]);
    } catch (e) {
      this.#watchdog.suspect(`removing ${describeSession(k)}: ${(e as Error).message}`);
    }
  }

  activity(): Map<number, Activity> {
    const now = performance.now();
    if (this.#activity && now - this.#activityAt < ACTIVITY_EVERY_MS) return this.#activity;
    const out = new Map<number, Activity>();
    const g = this.#cfg.server;
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
    this.#activity = out;
    this.#activityAt = now;
    return out;
  }

  status(): DataPathStatus {
    return this.#watchdog.status();
  }

  async stop(remove: boolean): Promise<void> {
    await this.#undo.run();
    if (remove) await this.#kept.run();
    else {
      log.info(
        `left table ip ${DRIVER_TABLE} translating ${this.#live.size} session(s) (dpm driver --cleanup removes it)`,
      );
    }
  }

  /** The host address the adopted sessions were given. */
  get local(): number {
    return this.#local;
  }
}
