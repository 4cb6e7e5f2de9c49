/**
 * Interface and address facts, and the pool addresses dpm may add to the WAN
 * interface. Uses iproute2's JSON output (`ip -j`), so it runs inside whatever
 * network namespace dpm was started in.
 *
 * @module
 */

import { type Cidr, formatIPv4, parseIPv4, prefixMask } from "../src/wire/addr.ts";
import { ExecError, run } from "./exec.ts";

/** An IPv4 address configured on an interface. */
export interface IfaceAddr {
  addr: number;
  prefixLen: number;
}

/** The IPv4 addresses of `ifname`. Throws when the interface does not exist. */
export async function interfaceAddrs(ifname: string): Promise<IfaceAddr[]> {
  const r = await run("ip", ["-j", "-4", "addr", "show", "dev", ifname]);
  if (r.code !== 0) throw new ExecError(`Interface "${ifname}" not found`, r);
  const out: IfaceAddr[] = [];
  for (
    const link of JSON.parse(r.stdout || "[]") as {
      addr_info?: { local?: string; prefixlen?: number }[];
    }[]
  ) {
    for (const a of link.addr_info ?? []) {
      const n = parseIPv4(a.local ?? "");
      if (n !== null && typeof a.prefixlen === "number") {
        out.push({ addr: n, prefixLen: a.prefixlen });
      }
    }
  }
  return out;
}

/** The prefix of `addr` as configured on `ifname`, or null when it is not there. */
export async function prefixOf(ifname: string, addr: number): Promise<Cidr | null> {
  for (const a of await interfaceAddrs(ifname)) {
    if (a.addr === addr) return { addr: (addr & prefixMask(a.prefixLen)) >>> 0, len: a.prefixLen };
  }
  return null;
}

/** The interface and source address the kernel would use to reach `dst`. */
export async function routeTo(dst: number): Promise<{ dev: string; src: number | null }> {
  const r = await run("ip", ["-j", "-4", "route", "get", formatIPv4(dst)]);
  if (r.code !== 0) throw new ExecError(`No route to ${formatIPv4(dst)}`, r);
  const [first] = JSON.parse(r.stdout) as { dev?: string; prefsrc?: string }[];
  if (!first?.dev) throw new Error(`No route to ${formatIPv4(dst)}`);
  return { dev: first.dev, src: parseIPv4(first.prefsrc ?? "") };
}

/** The LAN prefix of the interface that reaches `gateway` (the driver's default for --lan). */
export async function lanPrefixToward(
  gateway: number,
): Promise<{ lan: Cidr; local: number; dev: string }> {
  const { dev, src } = await routeTo(gateway);
  const addrs = await interfaceAddrs(dev);
  const mine = addrs.find((a) => a.addr === src) ?? addrs[0];
  if (!mine) {
    throw new Error(`Interface "${dev}" toward ${formatIPv4(gateway)} has no IPv4 address`);
  }
  const lan = { addr: (mine.addr & prefixMask(mine.prefixLen)) >>> 0, len: mine.prefixLen };
  if (((gateway & prefixMask(lan.len)) >>> 0) !== lan.addr) {
    throw new Error(
      `The server ${formatIPv4(gateway)} is not on the LAN of ${dev} (${
        formatIPv4(lan.addr)
      }/${lan.len}); give --lan`,
    );
  }
  return { lan, local: mine.addr, dev };
}

/**
 * Adds each address as a /32 to `ifname`, skipping those already there.
 * Returns exactly the addresses it added (to remove on exit).
 */
export async function addAddresses(ifname: string, addrs: number[]): Promise<number[]> {
  const have = new Set((await interfaceAddrs(ifname)).map((a) => a.addr));
  const added: number[] = [];
  try {
    for (const a of addrs) {
      if (have.has(a)) continue;
      const r = await run("ip", ["addr", "add", `${formatIPv4(a)}/32`, "dev", ifname]);
      if (r.code !== 0) throw new ExecError(`Cannot add ${formatIPv4(a)} to ${ifname}`, r);
      added.push(a);
    }
  } catch (e) {
    await removeAddresses(ifname, added);
    throw e;
  }
  return added;
}

/** Removes /32 addresses from `ifname`; never throws for ones already gone. */
export async function removeAddresses(ifname: string, addrs: number[]): Promise<void> {
  for (const a of addrs) await run("ip", ["addr", "del", `${formatIPv4(a)}/32`, "dev", ifname]);
}

/**
 * Whether `ifname` is one end of a pair whose other end (its peer) lives in
 * another network namespace: a veth or netkit device (`ip -d`'s
 * `linkinfo.info_kind`) that names its peer by a namespace id
 * (`link_netnsid`, present only when the peer's namespace is not this one).
 * Such a device's peer can be handed a packet straight into its ingress
 * (`bpf_redirect_peer`). False for anything else, and when `ip` cannot say.
 */
export async function peerInOtherNamespace(ifname: string): Promise<boolean> {
  const r = await run("ip", ["-j", "-d", "link", "show", "dev", ifname]);
  if (r.code !== 0) return false;
  return parsePeerInOtherNamespace(r.stdout);
}

/** The device kinds whose peer `bpf_redirect_peer` can enter. */
const PEER_KINDS = new Set(["veth", "netkit"]);

/** {@linkcode peerInOtherNamespace}'s reading of `ip -j -d link show dev X`'s output. */
export function parsePeerInOtherNamespace(json: string): boolean {
  let links: unknown;
  try {
    links = JSON.parse(json || "[]");
  } catch {
    return false;
  }
  if (!Array.isArray(links) || links.length !== 1) return false;
  const l = links[0] as { link_netnsid?: unknown; linkinfo?: { info_kind?: unknown } };
  return typeof l.link_netnsid === "number" && PEER_KINDS.has(String(l.linkinfo?.info_kind));
}

/** The kernel's ephemeral port range (net.ipv4.ip_local_port_range). */
export async function ephemeralRange(): Promise<[number, number]> {
  try {
    const t = await Deno.readTextFile("/proc/sys/net/ipv4/ip_local_port_range");
    const [lo, hi] = t.trim().split(/\s+/).map(Number);
    if (lo && hi && lo <= hi) return [lo, hi];
  } catch { /* not Linux, or no /proc: fall back to the kernel default */ }
  return [32768, 60999];
}

/** An interface's state and totals, as sysfs shows them (`readLinkStats`). */
export interface LinkStats {
  /** Operationally up (`operstate` up, or unknown with carrier). */
  up: boolean;
  /** Link speed, bits per second; 0 when the driver does not say (`speed` -1 or absent). */
  bps: number;
  txBytes: number;
  rxBytes: number;
  txPackets: number;
  rxPackets: number;
}

/**
 * `ifname`'s state and byte and packet totals since it came up, from
 * `/sys/class/net/<ifname>` (sysfs of the network namespace dpm runs in:
 * `ip netns exec` mounts the namespace's own). Null when the interface is
 * not there. Synchronous: a handful of small reads.
 */
export function readLinkStats(ifname: string, dir = "/sys/class/net"): LinkStats | null {
  const read = (f: string): string | null => {
    try {
      return Deno.readTextFileSync(`${dir}/${ifname}/${f}`).trim();
    } catch {
      return null; // absent, or EINVAL (carrier and speed of a down link)
    }
  };
  const oper = read("operstate");
  if (oper === null) return null;
  const num = (f: string) => {
    const n = Number(read(`statistics/${f}`));
    return Number.isFinite(n) && n >= 0 ? n : 0;
  };
  const speed = Number(read("speed"));
  return {
    up: oper === "up" || (oper === "unknown" && read("carrier") === "1"),
    bps: Number.isFinite(speed) && speed > 0 ? speed * 1_000_000 : 0,
    txBytes: num("tx_bytes"),
    rxBytes: num("rx_bytes"),
    txPackets: num("tx_packets"),
    rxPackets: num("rx_packets"),
  };
}
