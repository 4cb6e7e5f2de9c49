/**
 * The gateway's queue data path: every packet of a session crosses user
 * space, where the server's core translates it (`server/core.ts`). This file
 * opens the netfilter queue, installs the iptables chains that feed it, and
 * pumps packets to the handler. Everything it sets up is undone by `stop`,
 * in reverse order (the sysctls and pool addresses: `datapath/gateway.ts`).
 *
 * Rules (dpm's own chains, so stop and crash recovery remove exactly these):
 *
 * raw PREROUTING → DPM-SRV-PRE
 *   -i LAN -d G, TCP/UDP to the gateway ports Pg, ICMP echo and ICMP errors
 *   -i WAN -d <pool>                                   → CT --notrack, NFQUEUE q
 * filter FORWARD → DPM-SRV-FWD (accept dpm's untracked traffic under a DROP policy)
 * nat POSTROUTING → DPM-SRV-NAT: -s LAN -o WAN -j MASQUERADE (hosts without a driver)
 *
 * The queue has no --queue-bypass: without dpm running, pool traffic is
 * dropped rather than delivered to the gateway itself. Overflow drops
 * (no FAIL_OPEN): a lost packet is recovered by its transport, while a packet
 * passed untranslated would leak a LAN-side tuple to the outside.
 *
 * @module
 */

import { type Cidr, formatCidr, formatIPv4 } from "../../wire/addr.ts";
import type { ServerConfig } from "../../config.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import { controlGuardRules, poolRangeText, prepareGateway } from "../gateway.ts";
import type { ServerDataPath } from "../datapath.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import { NfQueue, pump } from "../../../linux/nfqueue.ts";

const log = logger("server");

/** The iptables chains of the server role. */
export function serverChains(cfg: ServerConfig, lan: Cidr): ChainSpec[] {
  const lanIf = cfg.lanIf!;
  const wanIf = cfg.wanIf!;
  const g = formatIPv4(cfg.lanAddr);
  const q = ["-j", "NFQUEUE", "--queue-num", String(cfg.queue)];
  const nt = ["-j", "CT", "--notrack"];
  const pg = `${cfg.gatewayPorts[0]}:${cfg.gatewayPorts[1]}`;
  const matches: string[][] = [
    ["-i", lanIf, "-d", g, "-p", "udp", "--dport", pg],
    ["-i", lanIf, "-d", g, "-p", "tcp", "--dport", pg],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "echo-request"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "destination-unreachable"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "time-exceeded"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "parameter-problem"],
  ];
  const ranges = poolRangeText(cfg.pool);
  for (const r of ranges) matches.push(["-i", wanIf, "-m", "iprange", "--dst-range", r]);
  const pre: string[][] = [[...DEFRAG_ON]];
  for (const m of matches) pre.push([...m, ...nt], [...m, ...q]);
  const fwd: string[][] = [];
  for (const r of ranges) {
    fwd.push(["-i", lanIf, "-o", wanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
    // A hairpinned ICMP error goes back into the LAN from a public address.
    fwd.push(["-i", lanIf, "-o", lanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
  }
  fwd.push(["-i", wanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  fwd.push(["-i", lanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  const specs: ChainSpec[] = [
    { table: "raw", hook: "PREROUTING", chain: "DPM-SRV-PRE", rules: pre },
    { table: "filter", hook: "FORWARD", chain: "DPM-SRV-FWD", rules: fwd },
    { table: "filter", hook: "INPUT", chain: "DPM-SRV-IN", rules: controlGuardRules(cfg, lan) },
  ];
  specs.push({
    table: "nat",
    hook: "POSTROUTING",
    chain: "DPM-SRV-NAT",
    rules: cfg.masquerade ? [["-s", formatCidr(lan), "-o", wanIf, "-j", "MASQUERADE"]] : [],
  });
  return specs;
}

/** A queued packet's handler: returns a Verdict (see `wire/meta.ts`). */
export type ServerPacketHandler = (pkt: Uint8Array, meta: number) => number;

/** The netfilter-queue data path of the gateway. */
export class QueueServerDataPath implements ServerDataPath {
  readonly kind = "queue" as const;
  readonly #undo: Cleanup;

  private constructor(undo: Cleanup) {
    this.#undo = undo;
  }

  /**
   * Sets up the data path and starts translating with `handle`. `onFatal` is
   * called if the queue fails while running.
   */
  static async start(
    cfg: ServerConfig,
    lan: Cidr,
    handle: ServerPacketHandler,
    onFatal: (e: Error) => void,
  ): Promise<QueueServerDataPath> {
    const undo = new Cleanup(log);
    try {
      const gw = await prepareGateway(cfg);
      undo.push(() => gw.run());
      const queue = NfQueue.open({ queue: cfg.queue, failOpen: false });
      undo.push(() => queue.close());
      const specs = serverChains(cfg, lan);
      await installChains(specs);
      undo.push(() => removeChains(specs));
      undo.push(pump(queue, (pkt, _id, _hook, meta) => handle(pkt, meta), onFatal));
      log.info(
        `data path on (queue): queue ${cfg.queue}, LAN ${cfg.lanIf} ${
          formatCidr(lan)
        }, WAN ${cfg.wanIf}`,
      );
      return new QueueServerDataPath(undo);
    } catch (e) {
      await undo.run();
      throw e;
    }
  }

  /** Nothing to program: the core looks every packet up in the table. */
  sessionUp(): void {}
  sessionDown(): void {}
  commit(): void {}
  counters(): null {
    return null;
  }
  status(): DataPathStatus {
    return { kind: "queue", state: "on", reinstalls: 0 };
  }
  async stop(): Promise<void> {
    await this.#undo.run();
  }
}
