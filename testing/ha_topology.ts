/**
 * Builds the throw-away network of a high-availability gateway pair (issue
 * 21) in Linux network namespaces, for the HA root tests and the HA
 * benchmark: two gateways on one LAN segment and one WAN segment, a
 * dedicated sync link between them, hosts behind them and peers outside.
 * Requires root, `ip` from iproute2, `sysctl` and `nft`; keepalived and
 * conntrackd are started on it by testing/ha_daemons.ts.
 *
 * ```
 *  LAN 10.0.0.0/24: bridge lan0 in "lsw"        WAN 203.0.113.0/24: bridge gw0 in "rt"
 *                      ┌─ gwa  lan0 10.0.0.2   wan0 203.0.113.2 ─┐
 *  h1 10.0.0.11 ─┐     │       sync0 10.255.0.1                   │    rt gw0 203.0.113.254  ┌─ p1 198.51.100.10
 *  h2 10.0.0.12 ─┼─────┤           │ (veth, the sync link)        ├──     out0 198.51.100.1 ─┼─ p2 198.51.100.20
 *  h3 10.0.0.13 ─┘     │       sync0 10.255.0.2                   │                          └─ p3 198.51.100.30
 *                      └─ gwb  lan0 10.0.0.3   wan0 203.0.113.3 ─┘
 *  G = 10.0.0.1 and the pool 203.0.113.10-13: added by whoever is active (VRRP), not by the builder
 * ```
 *
 * - The LAN is a bridge in its own namespace (role `lsw`, a switch with no
 *   address), so that a gateway's LAN link can go down while the LAN and
 *   the other gateway stay up. Its ports are `lan-h1`..., `lan-gwa`,
 *   `lan-gwb`.
 * - The WAN segment is the router's bridge `gw0` (203.0.113.254/24; ports
 *   `wan-gwa`, `wan-gwb`): both gateways and the router share one L2
 *   segment, so the pool addresses move between gateways with gratuitous
 *   ARP, as on a real upstream switch. The router has 198.51.100.0/24 on
 *   `out0` (ports `out-p1`...) and no route to any private network.
 * - Each gateway has `lan0` (its own LAN address), `wan0` (its own WAN
 *   address, outside the pool: what VRRP and masquerade use), `sync0` (a
 *   veth straight to the other gateway: conntrackd's dedicated link), a
 *   default route via the router, and forwards. Neither has G or the pool:
 *   keepalived (or a hook) adds them on the active one.
 * - Every host has `eth0` and a default route via G; every peer `eth0` and a
 *   default route via 198.51.100.1.
 *
 * Namespaces are `dpmt-<6 hex>-<role>` (roles `h1`..., `lsw`, `gwa`, `gwb`,
 * `rt`, `p1`...), reserved with testing/topology.ts's marker, so that
 * {@linkcode cleanupStaleTopologies} removes a crashed run's leftovers; the
 * escape counter ({@linkcode HaTopology.escaped}) sits in the router's
 * prerouting, as in testing/topology.ts.
 *
 * @module
 */

import {
  checkPrefix,
  type ExecResult,
  ipBatch,
  NamespaceGroup,
  type Node,
  reservePrefix,
  type Spawned,
} from "./topology.ts";
import { parseIPv4 } from "../src/wire/addr.ts";

/** Options of {@linkcode createHaTopology}. */
export interface HaTopologyOptions {
  /**
   * Number of private hosts on the LAN (1..200), named h1, h2...
   * @default {3}
   */
  hosts?: number;
  /**
   * Number of outside peers (1..25), named p1, p2...
   * @default {3}
   */
  peers?: number;
  /**
   * Namespace name prefix: `dpmt-<word>-`, unique among live runs.
   * @default {"dpmt-<6 random hex digits>-"}
   */
  prefix?: string;
}

/** One gateway of the pair. */
export interface HaGateway {
  /** "gwa" or "gwb". */
  name: string;
  ns: string;
  /** Its LAN link, "lan0". */
  lanIf: string;
  /** Its WAN link, "wan0". */
  wanIf: string;
  /** The dedicated sync link to the other gateway, "sync0". */
  syncIf: string;
  /** Its own LAN address (not G): "10.0.0.2" or "10.0.0.3". */
  lanText: string;
  /** Its own WAN address (outside the pool): "203.0.113.2" or "203.0.113.3". */
  wanText: string;
  /** Its sync link address: "10.255.0.1" or "10.255.0.2". */
  syncText: string;
  /** The switch port its LAN link plugs into, in {@linkcode HaTopology.lanSwitch}. */
  lanPort: string;
  /** The bridge port its WAN link plugs into, in the router's namespace. */
  wanPort: string;
}

/** The links of a gateway that {@linkcode HaTopology.setLinks} can take down. */
export type HaLink = "lan" | "wan" | "sync";

/** A built HA network. Dispose it (`await using`) or call {@linkcode destroy}. */
export interface HaTopology extends AsyncDisposable {
  /** The namespace name prefix, `dpmt-<6 hex>-`. */
  readonly prefix: string;
  /** A directory for the run's files (configs, sockets, pid files), removed with the topology. */
  readonly scratch: string;
  readonly hosts: Node[];
  readonly peers: Node[];
  /** The two gateways, gwa first (the one configured to start active). */
  readonly gateways: readonly [HaGateway, HaGateway];
  readonly router: Node;
  /** The LAN switch's namespace (bridge `lan0`). */
  readonly lanSwitch: string;
  /** G, the LAN address the pair shares: "10.0.0.1" (prefix length {@linkcode lanPrefixLen}). */
  readonly vipText: string;
  /** The LAN's prefix length, 24. */
  readonly lanPrefixLen: number;
  /** "10.0.0.0/24". */
  readonly lanCidr: string;
  /** The public pool the pair shares, "203.0.113.10-203.0.113.13". */
  readonly poolText: string;
  /** The pool's addresses, dotted quads. */
  readonly pool: readonly string[];
  /** Every namespace of the topology. */
  readonly namespaces: readonly string[];
  /** See testing/topology.ts `Topology.exec`. */
  exec(
    ns: string,
    cmd: string[],
    opts?: { timeoutMs?: number; stdin?: string; env?: Record<string, string> },
  ): Promise<ExecResult>;
  /** See testing/topology.ts `Topology.spawn`. */
  spawn(
    ns: string,
    cmd: string[],
    opts?: { env?: Record<string, string>; stdin?: "piped" | "null" },
  ): Spawned;
  /** Packets sent toward an address outside the topology; must stay 0. */
  escaped(): Promise<number>;
  /**
   * Takes a gateway's links down or up (`ip link set ... down|up` on the
   * gateway's side, in one `ip -batch`): its LAN link, its WAN link, its
   * sync link. The other ends lose carrier with it, as a pulled cable does.
   * The default route, which the kernel removes with the WAN link, comes
   * back with it.
   */
  setLinks(gw: HaGateway, links: readonly HaLink[], state: "up" | "down"): Promise<void>;
  /** Stops every spawned process, deletes every namespace and the scratch directory. Never throws. */
  destroy(): Promise<void>;
}

/** G in the default layout. */
export const HA_VIP = "10.0.0.1";
/** The pool in the default layout. */
export const HA_POOL_TEXT = "203.0.113.10-203.0.113.13";

const LAN_NET = "10.0.0.0/24";
const LAN_LEN = 24;
const WAN_RT = "203.0.113.254";
const OUT_RT = "198.51.100.1";
const POOL = ["203.0.113.10", "203.0.113.11", "203.0.113.12", "203.0.113.13"];
const GATEWAYS = [
  { name: "gwa", lan: "10.0.0.2", wan: "203.0.113.2", sync: "10.255.0.1" },
  { name: "gwb", lan: "10.0.0.3", wan: "203.0.113.3", sync: "10.255.0.2" },
] as const;
const SYNC_LEN = 30;

/**
 * Builds the network described in the module doc. On failure it tears down
 * whatever it made, then throws.
 *
 * @example
 * ```ts
 * await using t = await createHaTopology({ hosts: 2 });
 * await t.exec(t.gateways[0].ns, ["ping", "-c1", "-W1", t.gateways[1].syncText]);
 * ```
 */
export async function createHaTopology(opts: HaTopologyOptions = {}): Promise<HaTopology> {
  const hostCount = opts.hosts ?? 3;
  const peerCount = opts.peers ?? 3;
  if (!Number.isInteger(hostCount) || hostCount < 1 || hostCount > 200) {
    throw new RangeError(`Cannot build "${hostCount}" hosts: expected 1..200`);
  }
  if (!Number.isInteger(peerCount) || peerCount < 1 || peerCount > 25) {
    throw new RangeError(`Cannot build "${peerCount}" peers: expected 1..25`);
  }
  const prefix = checkPrefix(opts.prefix);
  const ip4 = (t: string) => parseIPv4(t)!;
  const node = (name: string, addrText: string): Node => ({
    name,
    ns: `${prefix}${name}`,
    addr: ip4(addrText),
    addrText,
  });
  const hosts = Array.from({ length: hostCount }, (_, i) => node(`h${i + 1}`, `10.0.0.${11 + i}`));
  const peers = Array.from(
    { length: peerCount },
    (_, i) => node(`p${i + 1}`, `198.51.100.${10 * (i + 1)}`),
  );
  const gateways = GATEWAYS.map((g): HaGateway => ({
    name: g.name,
    ns: `${prefix}${g.name}`,
    lanIf: "lan0",
    wanIf: "wan0",
    syncIf: "sync0",
    lanText: g.lan,
    wanText: g.wan,
    syncText: g.sync,
    lanPort: `lan-${g.name}`,
    wanPort: `wan-${g.name}`,
  })) as unknown as readonly [HaGateway, HaGateway];
  const router = node("rt", WAN_RT);
  const lanSwitch = `${prefix}lsw`;
  const namespaces = [
    ...hosts.map((h) => h.ns),
    lanSwitch,
    ...gateways.map((g) => g.ns),
    router.ns,
    ...peers.map((p) => p.ns),
  ];
  await reservePrefix(prefix, namespaces);
  const t = new HaNetns(prefix, namespaces, hosts, peers, gateways, router, lanSwitch);
  try {
    await t.build();
  } catch (e) {
    await t.destroy();
    throw e;
  }
  return t;
}

class HaNetns extends NamespaceGroup implements HaTopology {
  readonly vipText = HA_VIP;
  readonly lanPrefixLen = LAN_LEN;
  readonly lanCidr = LAN_NET;
  readonly poolText = HA_POOL_TEXT;
  readonly pool = POOL;

  constructor(
    prefix: string,
    namespaces: readonly string[],
    readonly hosts: Node[],
    readonly peers: Node[],
    readonly gateways: readonly [HaGateway, HaGateway],
    readonly router: Node,
    readonly lanSwitch: string,
  ) {
    super(prefix, namespaces);
  }

  /** Namespaces and links in one root batch, then each namespace's addresses and routes in parallel. */
  async build(): Promise<void> {
    const [ga, gb] = this.gateways;
    const forwarding = new Set([ga.ns, gb.ns, this.router.ns]);
    const sysctls = (ns: string) =>
      [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        `net.ipv4.ip_forward=${forwarding.has(ns) ? 1 : 0}`,
        "net.bridge.bridge-nf-call-iptables=0",
        "net.bridge.bridge-nf-call-arptables=0",
      ].join(" ");
    const root: string[] = [];
    for (const ns of this.namespaces) root.push(`netns add ${ns}`);
    for (const ns of this.namespaces) root.push(`netns exec ${ns} sysctl -q -e -w ${sysctls(ns)}`);
    root.push(`link add name lan0 netns ${this.lanSwitch} type bridge forward_delay 0`);
    root.push(`link add name gw0 netns ${this.router.ns} type bridge forward_delay 0`);
    root.push(`link add name out0 netns ${this.router.ns} type bridge forward_delay 0`);
    for (const h of this.hosts) {
      root.push(
        `link add name lan-${h.name} netns ${this.lanSwitch} type veth peer name eth0 netns ${h.ns}`,
      );
    }
    for (const g of this.gateways) {
      root.push(
        `link add name ${g.lanPort} netns ${this.lanSwitch} type veth peer name ${g.lanIf} netns ${g.ns}`,
      );
      root.push(
        `link add name ${g.wanPort} netns ${this.router.ns} type veth peer name ${g.wanIf} netns ${g.ns}`,
      );
    }
    root.push(
      `link add name ${ga.syncIf} netns ${ga.ns} type veth peer name ${gb.syncIf} netns ${gb.ns}`,
    );
    for (const p of this.peers) {
      root.push(
        `link add name out-${p.name} netns ${this.router.ns} type veth peer name eth0 netns ${p.ns}`,
      );
    }
    await ipBatch([], root);

    const jobs: Promise<void>[] = [];
    for (const h of this.hosts) {
      jobs.push(ipBatch(["-n", h.ns], [
        "link set lo up",
        `addr add ${h.addrText}/${LAN_LEN} dev eth0`,
        "link set eth0 up",
        `route add default via ${HA_VIP}`,
      ]));
    }
    const sw = ["link set lo up", "link set lan0 up"];
    for (const h of this.hosts) sw.push(`link set lan-${h.name} master lan0 up`);
    for (const g of this.gateways) sw.push(`link set ${g.lanPort} master lan0 up`);
    jobs.push(ipBatch(["-n", this.lanSwitch], sw));
    for (const g of this.gateways) {
      jobs.push(ipBatch(["-n", g.ns], [
        "link set lo up",
        `addr add ${g.lanText}/${LAN_LEN} dev ${g.lanIf}`,
        `link set ${g.lanIf} up`,
        `addr add ${g.wanText}/24 dev ${g.wanIf}`,
        `link set ${g.wanIf} up`,
        `addr add ${g.syncText}/${SYNC_LEN} dev ${g.syncIf}`,
        `link set ${g.syncIf} up`,
        `route add default via ${WAN_RT}`,
      ]));
    }
    const rt = [
      "link set lo up",
      `addr add ${WAN_RT}/24 dev gw0`,
      "link set gw0 up",
      `addr add ${OUT_RT}/24 dev out0`,
      "link set out0 up",
    ];
    for (const g of this.gateways) rt.push(`link set ${g.wanPort} master gw0 up`);
    for (const p of this.peers) rt.push(`link set out-${p.name} master out0 up`);
    jobs.push(ipBatch(["-n", this.router.ns], rt));
    for (const p of this.peers) {
      jobs.push(ipBatch(["-n", p.ns], [
        "link set lo up",
        `addr add ${p.addrText}/24 dev eth0`,
        "link set eth0 up",
        `route add default via ${OUT_RT}`,
      ]));
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await this.watchEscapes(
      this.router.ns,
      "type filter hook prerouting priority -500; policy accept;",
      "",
      [LAN_NET, "10.255.0.0/30", "203.0.113.0/24", "198.51.100.0/24"],
    );
  }

  async setLinks(gw: HaGateway, links: readonly HaLink[], state: "up" | "down"): Promise<void> {
    const dev = { lan: gw.lanIf, wan: gw.wanIf, sync: gw.syncIf };
    const lines = links.map((l) => `link set ${dev[l]} ${state}`);
    // A link going down takes its routes with it; the box's own
    // configuration brings the default route back with the link.
    if (state === "up" && links.includes("wan")) lines.push(`route replace default via ${WAN_RT}`);
    await ipBatch(["-n", gw.ns], lines);
  }
}
