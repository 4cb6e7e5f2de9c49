/**
 * The driver's kernel wiring: the netfilter queue, the iptables chains that
 * feed it, and a raw socket for ICMP refusals. Undone by the returned cleanup.
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
import { type DriverCore, DriverVerdict } from "../../driver/core.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import {
  Handled,
  NfQueue,
  pump,
  SKB_INFO_CSUM_NOT_READY,
  SKB_INFO_GSO,
} from "../../../linux/nfqueue.ts";
import { SKB_CSUM_NOT_READY, SKB_GSO } from "../../wire/packet.ts";
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

/** Sets up the driver's data path and starts translating; returns the cleanup. */
export async function startDriverDataPath(
  cfg: DriverConfig,
  lan: Cidr,
  dev: string,
  core: DriverCore,
  onFatal: (e: Error) => void,
): Promise<() => Promise<void>> {
  const undo = new Cleanup(log);
  try {
    if (Handled.HOLD !== DriverVerdict.HOLD || Handled.MODIFIED !== DriverVerdict.MODIFIED) {
      throw new Error("internal: verdict numbering differs between driver.ts and ffi/nfqueue.ts");
    }
    if (SKB_INFO_CSUM_NOT_READY !== SKB_CSUM_NOT_READY || SKB_INFO_GSO !== SKB_GSO) {
      throw new Error("internal: NFQA_SKB_INFO bits differ between packet.ts and ffi/nfqueue.ts");
    }
    const queue = NfQueue.open({ queue: cfg.queue, failOpen: false });
    undo.push(() => queue.close());
    core.queue = queue;
    undo.push(() => {
      core.queue = null;
    });
    const raw = RawSocket.open();
    undo.push(() => raw.close());
    core.raw = raw;
    const specs = driverChains(cfg, lan, dev);
    await installChains(specs);
    undo.push(() => removeChains(specs));
    const handler = (pkt: Uint8Array, id: number, hook: number, skbInfo: number) =>
      core.handlePacket(pkt, id, hook === HOOK_LOCAL_OUT, skbInfo);
    undo.push(pump(queue, handler, onFatal));
    log.info(`data path on: queue ${cfg.queue}, LAN ${formatCidr(lan)} on ${dev}`);
    return () => undo.run();
  } catch (e) {
    await undo.run();
    throw e;
  }
}
