/**
 * The server's kernel wiring: the netfilter queue it reads, the iptables
 * chains that feed it, the sysctls and pool addresses it needs. Everything it
 * sets up is undone by the returned cleanup function, in reverse order.
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
import type { ServerCore } from "../../server/core.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import {
  Handled,
  NfQueue,
  pump,
  SKB_INFO_CSUM_NOT_READY,
  SKB_INFO_GSO,
} from "../../../linux/nfqueue.ts";
import { SKB_CSUM_NOT_READY, SKB_GSO } from "../../wire/packet.ts";
import { readSysctl, recoverSysctls, setSysctls } from "../../../linux/sysctl.ts";
import { addAddresses, interfaceAddrs, removeAddresses } from "../../../linux/iface.ts";

const log = logger("server");

/**
 * The kernel applies max(all, interface) for rp_filter, so turning it off
 * for dpm's two interfaces means setting `all` to 0. To leave every other
 * interface (and ones created later, via `default`) filtering exactly as
 * before, each gets max(old all, its own) explicitly. Restored on exit.
 */
async function keepReversePathFilter(except: string[]): Promise<Record<string, string>> {
  const all = Number(await readSysctl("net.ipv4.conf.all.rp_filter"));
  const out: Record<string, string> = {};
  if (!(all > 0)) return out;
  for await (const e of Deno.readDir("/proc/sys/net/ipv4/conf")) {
    if (e.name === "all" || e.name === "lo" || except.includes(e.name)) continue;
    if (!/^[A-Za-z0-9_.-]+$/.test(e.name)) continue; // not expressible as a sysctl name
    const name = `net.ipv4.conf.${e.name.replaceAll(".", "/")}.rp_filter`;
    const own = Number(await readSysctl(name));
    if (own < all) out[name] = String(all);
  }
  return out;
}

/** Contiguous runs of the sorted pool, for `-m iprange`. */
export function poolRanges(pool: number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const a of [...pool].sort((x, y) => x - y)) {
    const last = out[out.length - 1];
    if (last && a === last[1] + 1) last[1] = a;
    else out.push([a, a]);
  }
  return out;
}

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
  const ranges = poolRanges(cfg.pool).map(([lo, hi]) => `${formatIPv4(lo)}-${formatIPv4(hi)}`);
  for (const r of ranges) matches.push(["-i", wanIf, "-m", "iprange", "--dst-range", r]);
  const pre: string[][] = [[...DEFRAG_ON]];
  for (const m of matches) pre.push([...m, ...nt], [...m, ...q]);
  const fwd: string[][] = [];
  for (const r of ranges) {
    fwd.push(["-i", lanIf, "-o", wanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
  }
  fwd.push(["-i", wanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  fwd.push(["-i", lanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  const specs: ChainSpec[] = [
    { table: "raw", hook: "PREROUTING", chain: "DPM-SRV-PRE", rules: pre },
    { table: "filter", hook: "FORWARD", chain: "DPM-SRV-FWD", rules: fwd },
  ];
  specs.push({
    table: "nat",
    hook: "POSTROUTING",
    chain: "DPM-SRV-NAT",
    rules: cfg.masquerade ? [["-s", formatCidr(lan), "-o", wanIf, "-j", "MASQUERADE"]] : [],
  });
  return specs;
}

/**
 * Sets up the data path and starts translating. Returns the cleanup function.
 * `onFatal` is called if the queue fails while running.
 */
export async function startServerDataPath(
  cfg: ServerConfig,
  lan: Cidr,
  core: ServerCore,
  onFatal: (e: Error) => void,
): Promise<() => Promise<void>> {
  const undo = new Cleanup(log);
  try {
    const lanIf = cfg.lanIf!;
    const wanIf = cfg.wanIf!;
    const wanAddrs = await interfaceAddrs(wanIf);
    const primary = wanAddrs.find((a) => !cfg.pool.includes(a.addr));
    if (cfg.masquerade && !primary) {
      log.warn(
        `every address of ${wanIf} is in the pool: hosts without a driver are masqueraded ` +
          `behind a pool address and may collide with dpm's sessions; give ${wanIf} an address outside the pool`,
      );
    }
    // A run killed with SIGKILL left its sysctls changed: put the originals back first,
    // so that this run records (and at exit restores) the gateway's real settings.
    const journal = `${cfg.socket}.sysctls.json`;
    const recovered = await recoverSysctls(journal);
    if (recovered) log.info(`restored ${recovered} sysctl(s) left changed by a killed run`);
    const restoreSysctls = await setSysctls({
      ...await keepReversePathFilter([lanIf, wanIf]),
      "net.ipv4.ip_forward": "1",
      // Rewritten packets carry the gateway's own addresses as source (R on the
      // way out, G on the way in): without accept_local they are martians.
      "net.ipv4.conf.all.rp_filter": "0",
      [`net.ipv4.conf.${lanIf}.rp_filter`]: "0",
      [`net.ipv4.conf.${wanIf}.rp_filter`]: "0",
      [`net.ipv4.conf.${lanIf}.accept_local`]: "1",
      [`net.ipv4.conf.${wanIf}.accept_local`]: "1",
      // Hairpinned packets leave by the interface they came in on: no redirects.
      "net.ipv4.conf.all.send_redirects": "0",
      [`net.ipv4.conf.${lanIf}.send_redirects`]: "0",
    }, { journal });
    undo.push(restoreSysctls);
    if (cfg.addPoolAddresses) {
      const added = await addAddresses(wanIf, cfg.pool);
      // dpm owns the pool: on exit it removes every pool address, including
      // those a crashed run left behind (which addAddresses found present).
      undo.push(() => removeAddresses(wanIf, cfg.pool));
      log.info(`added ${added.length} pool address(es) to ${wanIf}`);
    }
    const queue = NfQueue.open({ queue: cfg.queue, failOpen: false });
    undo.push(() => queue.close());
    const specs = serverChains(cfg, lan);
    await installChains(specs);
    undo.push(() => removeChains(specs));
    log.info(`data path on: queue ${cfg.queue}, LAN ${lanIf} ${formatCidr(lan)}, WAN ${wanIf}`);

    const handler = (pkt: Uint8Array, _id: number, _hook: number, skbInfo: number): number =>
      core.handlePacket(pkt, skbInfo);
    undo.push(pump(queue, handler, onFatal));
    // Handled.* and Verdict.* share their numbers; keep them from drifting.
    if (Handled.DROP !== 0 || Handled.ACCEPT !== 1 || Handled.MODIFIED !== 2) {
      throw new Error("internal: verdict numbering differs between server.ts and ffi/nfqueue.ts");
    }
    if (SKB_INFO_CSUM_NOT_READY !== SKB_CSUM_NOT_READY || SKB_INFO_GSO !== SKB_GSO) {
      throw new Error("internal: NFQA_SKB_INFO bits differ between packet.ts and ffi/nfqueue.ts");
    }
    return () => undo.run();
  } catch (e) {
    await undo.run();
    throw e;
  }
}
