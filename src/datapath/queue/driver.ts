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

import { type Cidr, formatCidr, formatIPv4 } from "../../wire/addr.ts";
import type { DriverConfig } from "../../config.ts";
import type { DriverDataPath, HostSessionKey, PacketIO } from "../datapath.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import { NfQueue, pump } from "../../../linux/nfqueue.ts";
import { RawSocket } from "../../../linux/rawsock.ts";

const log = logger("driver");

/** NF_INET_LOCAL_OUT: the hook number of raw OUTPUT. */
const HOOK_LOCAL_OUT = 3;

/** The iptables chains of the driver role. */
export function driverChains(cfg: DriverConfig, lan: Cidr, dev: string): ChainSpec[] {
  const q = ["-j", "NFQUEUE", "--queue-num", String(cfg.queue), "--queue-bypass"];
  const nt = ["-j", "CT", "--notrack"];
  const g = formatIPv4(cfg.server);
  const pg = `${cfg.gatewayPorts[0]}:${cfg.gatewayPorts[1]}`;
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

/** A queued packet's handler: returns a Verdict (see `wire/meta.ts`). */
export type DriverPacketHandler = (
  pkt: Uint8Array,
  id: number,
  outbound: boolean,
  meta: number,
) => number;

/** Sets up the queue and the raw socket, without rules yet; shared with the kernel path. */
export function openHostQueue(
  queueNum: number,
  undo: Cleanup,
): { queue: NfQueue; io: PacketIO } {
  const queue = NfQueue.open({ queue: queueNum, failOpen: false });
  undo.push(() => queue.close());
  const raw = RawSocket.open();
  undo.push(() => raw.close());
  const io: PacketIO = {
    verdict: (id, v, payload) => queue.verdict(id, v, payload),
    flush: () => queue.flush(),
    send: (pkt, len, dst) => raw.send(pkt, len, dst),
  };
  return { queue, io };
}

/** Pumps `queue` into `handle`; the cleanup stops it. */
export function pumpHost(
  queue: NfQueue,
  handle: DriverPacketHandler,
  onFatal: (e: Error) => void,
): () => void {
  return pump(
    queue,
    (pkt, id, hook, meta) => handle(pkt, id, hook === HOOK_LOCAL_OUT, meta),
    onFatal,
  );
}

/** The netfilter-queue data path of a host. */
export class QueueDriverDataPath implements DriverDataPath {
  readonly kind = "queue" as const;
  readonly io: PacketIO;
  readonly #undo: Cleanup;
  readonly #queue: NfQueue;
  readonly #specs: ChainSpec[];

  private constructor(undo: Cleanup, queue: NfQueue, io: PacketIO, specs: ChainSpec[]) {
    this.#undo = undo;
    this.#queue = queue;
    this.io = io;
    this.#specs = specs;
  }

  /** Opens the queue and the raw socket; `begin` installs the rules and starts the pump. */
  static async open(cfg: DriverConfig, lan: Cidr, dev: string): Promise<QueueDriverDataPath> {
    const undo = new Cleanup(log);
    try {
      const { queue, io } = openHostQueue(cfg.queue, undo);
      return new QueueDriverDataPath(undo, queue, io, driverChains(cfg, lan, dev));
    } catch (e) {
      await undo.run();
      throw e;
    }
  }

  /** Installs the rules and starts handing packets to `handle`. */
  async begin(handle: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void> {
    await installChains(this.#specs);
    const specs = this.#specs;
    this.#undo.push(() => removeChains(specs));
    this.#undo.push(pumpHost(this.#queue, handle, onFatal));
    log.info(`data path on (queue): queue ${this.#queue.queue}`);
  }

  kernelTranslates(): boolean {
    return false;
  }
  sessionUp(_s: HostSessionKey): void {}
  sessionDown(_s: HostSessionKey): void {}
  activity(): null {
    return null;
  }
  adopted(): HostSessionKey[] {
    return [];
  }
  status(): DataPathStatus {
    return { kind: "queue", state: "on", reinstalls: 0 };
  }
  async stop(): Promise<void> {
    await this.#undo.run();
  }
}
