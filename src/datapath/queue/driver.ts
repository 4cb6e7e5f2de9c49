/**
 * The host's queue data path: every packet of a session crosses user space,
 * where the driver's core translates it (`driver/core.ts`). This file opens
 * the netfilter queue and a raw socket for ICMP refusals, and installs the
 * iptables chains that feed the queue. Undone by `stop`.
 *
 * raw OUTPUT → DPM-DRV-OUT: TCP/UDP/ICMP leaving by the interface toward G for
 *   outside the LAN (not loopback, multicast or broadcast) → CT --notrack, NFQUEUE q
 * raw PREROUTING → DPM-DRV-PRE: arriving on that interface from G, TCP/UDP from
 *   the gateway ports Pg and ICMP echo replies; ICMP errors from G or from
 *   outside the LAN → same.
 *
 * The queue uses --queue-bypass: if the driver is not running, packets pass
 * untranslated and the gateway's ordinary NAT still serves the host. Overflow
 * drops (no FAIL_OPEN): an untranslated packet in the middle of a translated
 * session would reach the peer from the wrong address and could reset it.
 *
 * @module
 */

import { formatCidr, formatIPv4 } from "../../wire/addr.ts";
import type {
  DriverDataPath,
  DriverPacketHandler,
  HostOptions,
  HostSessionKey,
  PacketIO,
  StopMode,
} from "../datapath.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import type { PacketInfo } from "../../wire/packet.ts";
import type { VerdictValue } from "../../wire/meta.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import { NO_OTHER_PATHS, openQueue, type OtherPaths, pumpHost } from "../netfilter.ts";
import { rewriteToGateway } from "../../wire/rewrite.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import type { NfQueue } from "../../../linux/nfqueue.ts";

const log = logger("driver");

/** The iptables chains of the driver role. */
export function driverChains(o: HostOptions): ChainSpec[] {
  const q = ["-j", "NFQUEUE", "--queue-num", String(o.queue), "--queue-bypass"];
  const nt = ["-j", "CT", "--notrack"];
  const g = formatIPv4(o.server);
  const pg = `${o.gatewayPorts[0]}:${o.gatewayPorts[1]}`;
  const dev = o.dev;
  const lan = o.lan;
  const out: string[][] = [
    ["-d", formatCidr(lan), "-j", "RETURN"],
    ["-d", "127.0.0.0/8", "-j", "RETURN"],
    ["-d", "224.0.0.0/4", "-j", "RETURN"],
    ["-d", "255.255.255.255/32", "-j", "RETURN"],
  ];
  // Only what leaves toward the gateway: another uplink of the host is left alone.
  for (const p of ["tcp", "udp", "icmp"]) {
    out.push(["-o", dev, "-p", p, ...nt], ["-o", dev, "-p", p, ...q]);
  }
  const matches: string[][] = [
    ["-s", g, "-p", "udp", "--sport", pg],
    ["-s", g, "-p", "tcp", "--sport", pg],
    ["-s", g, "-p", "icmp", "--icmp-type", "echo-reply"],
  ];
  for (const t of ["destination-unreachable", "time-exceeded", "parameter-problem"]) {
    matches.push(["-s", g, "-p", "icmp", "--icmp-type", t]);
    matches.push(["!", "-s", formatCidr(lan), "-p", "icmp", "--icmp-type", t]);
  }
  const pre: string[][] = [[...DEFRAG_ON]];
  for (const m of matches) pre.push(["-i", dev, ...m, ...nt], ["-i", dev, ...m, ...q]);
  return [
    { table: "raw", hook: "OUTPUT", chain: "DPM-DRV-OUT", rules: out },
    { table: "raw", hook: "PREROUTING", chain: "DPM-DRV-PRE", rules: pre },
  ];
}

/** The netfilter-queue data path of a host. */
export class QueueDriverDataPath implements DriverDataPath {
  readonly kind = "queue" as const;
  readonly can = { keepsSessions: false, commitsFirst: false } as const;
  readonly io: PacketIO;
  readonly #undo: Cleanup;
  readonly #queue: NfQueue;
  readonly #specs: ChainSpec[];
  readonly #others: OtherPaths;

  private constructor(
    undo: Cleanup,
    queue: NfQueue,
    io: PacketIO,
    specs: ChainSpec[],
    others: OtherPaths,
  ) {
    this.#undo = undo;
    this.#queue = queue;
    this.io = io;
    this.#specs = specs;
    this.#others = others;
  }

  /** Opens the queue and the raw socket; `begin` installs the rules and starts the pump. */
  static async open(
    o: HostOptions,
    others: OtherPaths = NO_OTHER_PATHS,
  ): Promise<QueueDriverDataPath> {
    const undo = new Cleanup(log);
    try {
      const { queue, io } = openQueue(o.queue, undo);
      return new QueueDriverDataPath(undo, queue, io, driverChains(o), others);
    } catch (e) {
      await undo.run();
      throw e;
    }
  }

  /** Nothing survives a queue-path run: its leftovers are removed, never adopted. */
  static leftovers(): Promise<HostSessionKey[]> {
    return Promise.resolve([]);
  }

  /** Removes the chains a (SIGKILLed) queue-path run left. */
  static async remove(o: HostOptions): Promise<string> {
    await removeChains(driverChains(o));
    return "the queue path's chains";
  }

  adopt(): Promise<HostSessionKey[]> {
    return Promise.resolve([]);
  }

  /** Installs the rules and starts handing packets to `packets`. */
  async begin(packets: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void> {
    try {
      await this.#others.removeLeftovers();
      const specs = this.#specs;
      this.#undo.push(() => removeChains(specs));
      await installChains(specs);
      this.#undo.push(pumpHost(this.#queue, packets, onFatal));
    } catch (e) {
      await this.#undo.run();
      throw e;
    }
    log.info(`data path on (queue): queue ${this.#queue.queue}`);
  }

  /** Every packet is rewritten here, in user space. */
  outbound(pkt: Uint8Array, info: PacketInfo, g: number, pg: number, skb: number): VerdictValue {
    return rewriteToGateway(pkt, info, g, pg, skb);
  }
  sessionUp(_s: HostSessionKey): void {}
  commit(): void {}
  sessionDown(_s: HostSessionKey): void {}
  activity(): null {
    return null;
  }
  status(): DataPathStatus {
    return { kind: "queue", state: "on", reinstalls: 0 };
  }
  /** Removes everything either way: a queue path keeps nothing. */
  async stop(_mode: StopMode): Promise<void> {
    await this.#undo.run();
  }
}
