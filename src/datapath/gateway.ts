/**
 * What both of the gateway's data paths need from the machine before any
 * packet is translated: forwarding and the sysctls that let translated
 * packets through (they carry the gateway's own addresses as source), and
 * the pool's addresses on the WAN interface. Undone by the returned cleanup
 * function, except where `keep` says the kernel must go on translating.
 *
 * @module
 */

import { PCP_PORT } from "../pcp/codec.ts";
import { SSDP_PORT } from "../upnp/ssdp.ts";
import { type Cidr, formatCidr, formatIPv4, prefixMask } from "../wire/addr.ts";
import { sysctlJournal } from "./netfilter.ts";
import type { GatewayOptions } from "./datapath.ts";
import { logger } from "../runtime/log.ts";
import { Cleanup } from "../runtime/cleanup.ts";
import { keepReversePathFilter, recoverSysctls, setSysctls } from "../../linux/sysctl.ts";
import { addAddresses, interfaceAddrs, removeAddresses } from "../../linux/iface.ts";

const log = logger("server");

/**
 * An interface name quoted for nft, or a TypeError for a name nft would read
 * as something else (config validation already limits them).
 */
export function quoteIf(name: string): string {
  if (!/^[A-Za-z0-9_.:@-]{1,15}$/.test(name)) throw new TypeError(`Bad interface name "${name}"`);
  return `"${name}"`;
}

/** Contiguous runs of the sorted pool, for `-m iprange` and nft ranges. */
export function poolRanges(pool: number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const a of [...pool].sort((x, y) => x - y)) {
    const last = out[out.length - 1];
    if (last && a === last[1] + 1) last[1] = a;
    else out.push([a, a]);
  }
  return out;
}

/** `a-b` text ranges of the pool, for iptables' iprange and nftables. */
export function poolRangeText(pool: number[]): string[] {
  return poolRanges(pool).map(([lo, hi]) => `${formatIPv4(lo)}-${formatIPv4(hi)}`);
}

/**
 * The UDP control ports dpm answers on the LAN address (its own protocol,
 * PCP/NAT-PMP on 5351 unless --no-pcp, SSDP on 1900 unless --no-upnp):
 * requests are accepted only when they arrive on the LAN interface from the
 * LAN prefix. dpm turns reverse-path filtering off for its interfaces, so
 * without this rule a datagram forged from the WAN side with a LAN host's
 * source would reach the listener (which checks the source address, claim
 * 2) and act in that host's name; and the gateway, a weak host, would
 * answer on its LAN address whatever reached it from the WAN.
 */
export function controlPorts(cfg: GatewayOptions): number[] {
  // 5351: PCP and NAT-PMP (src/pcp/); 1900: SSDP's unicast searches (src/upnp/).
  return [
    cfg.controlPort,
    ...(cfg.pcp ? [PCP_PORT] : []),
    ...(cfg.upnp ? [SSDP_PORT] : []),
  ];
}

/**
 * The TCP control ports on the LAN address, under the same guard: the UPnP
 * IGD's HTTP port (`--upnp-port`) unless --no-upnp. A connection to it from
 * the WAN side never completes (the SYN is dropped), whatever its source.
 */
export function controlTcpPorts(cfg: GatewayOptions): number[] {
  return cfg.upnp ? [cfg.upnpPort] : [];
}

/**
 * The LAN prefix's network and broadcast addresses (none for a /31 or /32,
 * RFC 3021): never a host's source.
 */
export function lanEdges(lan: Cidr): number[] {
  return lan.len <= 30 ? [lan.addr, (lan.addr | ~prefixMask(lan.len)) >>> 0] : [];
}

/**
 * Sources that cannot be, by interface (queue path, raw PREROUTING, as
 * iptables rules; the kernel path has the same in its nft table's
 * `antispoof` chain). The gateway needs `accept_local` and no strict
 * reverse-path filter (docs/datapath.md, "Sysctls and sources"), so these rules do
 * their work:
 *
 * - the WAN never speaks as the LAN or as the pool: a packet forged there
 *   with a LAN host's source would reach a mapping's host as if from
 *   inside, one with a pool source could pass for a hairpinned peer;
 * - the LAN never speaks as the gateway: none of its local addresses
 *   (`addrtype LOCAL`: G, the WAN's, the pool's when added), no pool
 *   address (added or not), not the prefix's network or broadcast address.
 *   Such a datagram to the PCP port would ask for a mapping "for G",
 *   exposing the gateway's LAN-only services; sent onward, it would speak
 *   as another host's public pair.
 */
export function antiSpoofRules(cfg: GatewayOptions, lan: Cidr): string[][] {
  const wan = cfg.wanIf!;
  const lanIf = cfg.lanIf!;
  const pool = poolRangeText(cfg.pool);
  return [
    ["-i", wan, "-s", formatCidr(lan), "-j", "DROP"],
    ...pool.map((r) => ["-i", wan, "-m", "iprange", "--src-range", r, "-j", "DROP"]),
    ["-i", lanIf, "-m", "addrtype", "--src-type", "LOCAL", "-j", "DROP"],
    ...pool.map((r) => ["-i", lanIf, "-m", "iprange", "--src-range", r, "-j", "DROP"]),
    ...lanEdges(lan).map((a) => ["-i", lanIf, "-s", `${formatIPv4(a)}/32`, "-j", "DROP"]),
  ];
}

/** The guard as iptables rules (queue path): filter INPUT -> DPM-SRV-IN. */
export function controlGuardRules(cfg: GatewayOptions, lan: Cidr): string[][] {
  const g = formatIPv4(cfg.lanAddr);
  const out: string[][] = [];
  for (
    const [proto, ports] of [["udp", controlPorts(cfg)], ["tcp", controlTcpPorts(cfg)]] as const
  ) {
    if (ports.length === 0) continue;
    const m = ["-p", proto, "-d", g, "-m", "multiport", "--dports", ports.join(",")];
    out.push([...m, "!", "-i", cfg.lanIf!, "-j", "DROP"], [
      ...m,
      "!",
      "-s",
      formatCidr(lan),
      "-j",
      "DROP",
    ]);
  }
  return out;
}

/**
 * Prepares the gateway: sysctls (journaled next to the operator socket, so a
 * run killed with SIGKILL is undone by the next start) and, with
 * `--add-pool-addresses`, the pool on the WAN interface. `extra` sysctls are
 * set with the others (the kernel path turns conntrack accounting on).
 * Returns the cleanup.
 */
export async function prepareGateway(
  cfg: GatewayOptions,
  extra: Record<string, string> = {},
): Promise<Cleanup> {
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
    const journal = sysctlJournal(cfg.socket);
    const recovered = await recoverSysctls(journal);
    if (recovered) log.info(`restored ${recovered} sysctl(s) left changed by a previous run`);
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
      ...extra,
    }, { journal });
    undo.push(restoreSysctls);
    if (cfg.addPoolAddresses) {
      const added = await addAddresses(wanIf, cfg.pool);
      // dpm owns the pool: on exit it removes every pool address, including
      // those a crashed run left behind (which addAddresses found present).
      undo.push(() => removeAddresses(wanIf, cfg.pool));
      if (added.length) log.info(`added ${added.length} pool address(es) to ${wanIf}`);
    }
    return undo;
  } catch (e) {
    await undo.run();
    throw e;
  }
}

/**
 * Undoes what {@linkcode prepareGateway} did, for `dpm server --cleanup`
 * after a run that left it (kernel path, or SIGKILL): the sysctls from
 * the journal and, with `--add-pool-addresses`, the pool addresses.
 * Returns a log phrase.
 */
export async function removeGateway(cfg: GatewayOptions): Promise<string> {
  const n = await recoverSysctls(sysctlJournal(cfg.socket));
  if (cfg.addPoolAddresses) await removeAddresses(cfg.wanIf, cfg.pool);
  return `${n} sysctl(s) restored` +
    (cfg.addPoolAddresses ? `; the pool removed from ${cfg.wanIf}` : "");
}
