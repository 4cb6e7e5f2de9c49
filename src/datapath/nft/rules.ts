/**
 * The kernel data path's rules, as text: dpm's own nftables table for each
 * role (loaded with one `nft -f -`, at start and when the watchdog finds it
 * gone) and the few iptables chains that remain (only iptables has the
 * NFQUEUE target here, and only a rule in iptables' own filter table can
 * accept forwarded traffic that the gateway's firewall would drop).
 *
 * Gateway, `table ip dpm-server` (G: LAN address, a:pa host, Pg gateway
 * port, X:px remote, R:p public pair):
 *
 * ```
 * map to_remote  proto . a . pa . Pg   -> X . px   dnat in nat prerouting (-101), iif LAN, daddr G
 * map to_public  proto . a . pa . X . px -> R . p  snat in nat postrouting (99), oif WAN
 * set queued     proto . a . Pg                    hairpinned sessions: the queue translates them
 * map map_in     proto . R . p          -> a . pa  PCP/NAT-PMP MAP: dnat in nat prerouting (-101), iif WAN
 * map map_out    proto . a . pa         -> R . p   the same MAP outbound: snat after to_public, oif WAN
 * chain antispoof  the WAN never speaks as the LAN or the pool, the LAN never as the
 *                  gateway (fib saddr type local), the pool, or the prefix's network or
 *                  broadcast: dpm needs accept_local and no strict rp_filter (gateway.ts)
 * chain guard    control requests (UDP: dpm, PCP, SSDP; TCP: the UPnP IGD's HTTP) to G only
 *                from the LAN interface and prefix (datapath/gateway.ts)
 * chain hold     filter prerouting (-160, after conntrack): a new conntrack from the LAN to
 *                G:Pg in the drivers' share that to_remote does not know (a first packet
 *                ahead of its request, `server/held.ts`) gets HOLD_MARK; iptables mangle
 *                PREROUTING (DPM-SRV-HOLD) queues it to the server, which lets it go on
 *                once the session is committed (nat prerouting then meets it in to_remote)
 * ```
 * Host, `table ip dpm-driver`:
 * ```
 * map to_gateway   proto . X . px . pa -> G . Pg  dnat in nat output (-101), oif toward G
 * map from_gateway proto . Pg          -> X . px  snat in nat input (99), from G (inbound first)
 * ```
 * Only the first packet of each conntrack meets these chains; conntrack
 * translates the rest both ways, replies included. ICMP (echo and errors)
 * stays on the queue translator in both roles.
 *
 * @module
 */

import { type Cidr, formatCidr, formatIPv4 } from "../../wire/addr.ts";
import type { GatewayOptions, HostOptions } from "../datapath.ts";
import type { ChainSpec } from "../../../linux/iptables.ts";
import { DEFRAG_ON } from "../../../linux/iptables.ts";
import {
  controlPorts,
  controlTcpPorts,
  lanEdges,
  poolRanges,
  poolRangeText,
  quoteIf,
} from "../gateway.ts";
import { protoName } from "../../wire/meta.ts";
import { driverShare } from "../../control/pg.ts";

/** The gateway's nftables table. */
export const SERVER_TABLE = "dpm-server";
/** The host's nftables table. */
export const DRIVER_TABLE = "dpm-driver";
/** Packet mark that sends a hairpinned session's packets to the queue (nft sets it, iptables queues). */
export const QUEUE_MARK = 0x64706d01; // "dpm" 01
/**
 * Packet mark of a first packet that went ahead of its request (nft's hold
 * chain sets it, iptables queues it; the server holds it: `server/held.ts`).
 */
export const HOLD_MARK = 0x64706d04; // "dpm" 04

/**
 * The guard chain's rules: dpm's UDP control ports and the TCP ones
 * (`controlPorts`, `controlTcpPorts` of gateway.ts) on G, only from the
 * LAN interface and the LAN prefix.
 */
function guardLines(cfg: GatewayOptions, lan: Cidr, lanIf: string): string {
  const g = formatIPv4(cfg.lanAddr);
  const out: string[] = [];
  const groups = [["udp", controlPorts(cfg)], ["tcp", controlTcpPorts(cfg)]] as const;
  for (const [proto, ports] of groups) {
    if (ports.length === 0) continue;
    const m = `ip daddr ${g} ${proto} dport { ${ports.join(", ")} }`;
    out.push(`    ${m} iifname != ${lanIf} drop`, `    ${m} ip saddr != ${formatCidr(lan)} drop`);
  }
  if (cfg.dropMisses) {
    // A packet to G:Pg that reaches the input hook missed its translation
    // (hairpinned and ICMP sessions are marked for the queue, and pass);
    // so did a TCP or UDP packet from the WAN to a pool address (the
    // gateway serves nothing there). Dropped, not answered with a reset or
    // a port unreachable: the sender retransmits until the state is there.
    const [lo, hi] = cfg.gatewayPorts;
    out.push(
      `    iifname ${lanIf} ip daddr ${g} meta l4proto { tcp, udp } th dport ${lo}-${hi} meta mark != ${QUEUE_MARK} counter drop`,
      `    iifname ${quoteIf(cfg.wanIf)} ip daddr { ${
        poolRangeText(cfg.pool).join(", ")
      } } meta l4proto { tcp, udp } meta mark != ${QUEUE_MARK} counter drop`,
    );
  }
  return out.join("\n");
}

/**
 * The gateway's table, replacing any previous one in the same transaction
 * (`add` then `delete` then the definition: valid whether or not it existed).
 * `elements`: nft element lines for the maps (see `serverElementsText`),
 * loaded in the same transaction, so a reinstall is atomic.
 */
export function serverTable(
  cfg: GatewayOptions,
  lan: Cidr,
  elements: {
    toRemote: string[];
    toPublic: string[];
    queued: string[];
    mapIn?: string[];
    mapOut?: string[];
  } = {
    toRemote: [],
    toPublic: [],
    queued: [],
  },
): string {
  const lanIf = quoteIf(cfg.lanIf!);
  const wanIf = quoteIf(cfg.wanIf!);
  const g = formatIPv4(cfg.lanAddr);
  const share = driverShare(cfg.gatewayPorts);
  const el = (xs: string[]) => xs.length ? `\n    elements = { ${xs.join(",\n      ")} }` : "";
  return `add table ip ${SERVER_TABLE}
delete table ip ${SERVER_TABLE}
table ip ${SERVER_TABLE} {
  comment "dpm server: per-session NAT maps, programmed by dpm; do not edit"
  map to_remote {
    typeof meta l4proto . ip saddr . th sport . th dport : ip daddr . th dport${
    el(elements.toRemote)
  }
  }
  map to_public {
    typeof meta l4proto . ip saddr . th sport . ip daddr . th dport : ip saddr . th sport${
    el(elements.toPublic)
  }
  }
  set queued {
    typeof meta l4proto . ip saddr . th dport${el(elements.queued)}
  }
  map map_in {
    typeof meta l4proto . ip daddr . th dport : ip daddr . th dport${el(elements.mapIn ?? [])}
  }
  map map_out {
    typeof meta l4proto . ip saddr . th sport : ip saddr . th sport${el(elements.mapOut ?? [])}
  }
  chain antispoof {
    type filter hook prerouting priority -400; policy accept;
    iifname ${wanIf} ip saddr ${formatCidr(lan)} counter drop
    iifname ${wanIf} ip saddr { ${poolRangeText(cfg.pool).join(", ")} } counter drop
    iifname ${lanIf} fib saddr type local counter drop
    iifname ${lanIf} ip saddr { ${poolRangeText(cfg.pool).join(", ")} } counter drop${
    lanEdges(lan).length
      ? `\n    iifname ${lanIf} ip saddr { ${
        lanEdges(lan).map(formatIPv4).join(", ")
      } } counter drop`
      : ""
  }
  }
  chain guard {
    type filter hook input priority -150; policy accept;
${guardLines(cfg, lan, lanIf)}
  }
  chain steer {
    type filter hook prerouting priority -350; policy accept;
    iifname ${lanIf} ip daddr ${g} meta l4proto . ip saddr . th dport @queued meta mark set ${QUEUE_MARK}
  }
  chain hold {
    type filter hook prerouting priority -160; policy accept;
    iifname ${lanIf} ip daddr ${g} meta l4proto { tcp, udp } th dport ${share[0]}-${
    share[1]
  } ct state new meta l4proto . ip saddr . th sport . th dport != @to_remote meta mark set ${HOLD_MARK}
  }
  chain from_lan {
    type nat hook prerouting priority -101; policy accept;
    iifname ${lanIf} ip daddr ${g} dnat ip to meta l4proto . ip saddr . th sport . th dport map @to_remote
  }
  chain from_wan {
    type nat hook prerouting priority -101; policy accept;
    iifname ${wanIf} dnat ip to meta l4proto . ip daddr . th dport map @map_in
  }
  chain to_wan {
    type nat hook postrouting priority 99; policy accept;
    oifname ${wanIf} snat ip to meta l4proto . ip saddr . th sport . ip daddr . th dport map @to_public
    oifname ${wanIf} snat ip to meta l4proto . ip saddr . th sport map @map_out${
    cfg.masquerade ? `\n    oifname ${wanIf} ip saddr ${formatCidr(lan)} masquerade` : ""
  }
  }
}
`;
}

/**
 * The host's table, replacing any previous one in the same transaction.
 * `from_gateway` (proto . Pg -> X . px) serves a session whose first packet
 * comes in (a hairpinned peer, or a reply to a reservation made before the
 * application sent anything): nat input rewrites the source `G:Pg` to
 * `X:px`, and conntrack then translates the application's answers back.
 */
export function driverTable(
  dev: string,
  g: number,
  elements: { toGateway: string[]; fromGateway: string[] } = { toGateway: [], fromGateway: [] },
): string {
  const list = (xs: string[]) => xs.length ? `\n    elements = { ${xs.join(",\n      ")} }` : "";
  const el = list(elements.toGateway);
  return `add table ip ${DRIVER_TABLE}
delete table ip ${DRIVER_TABLE}
table ip ${DRIVER_TABLE} {
  comment "dpm driver: per-session NAT map, programmed by dpm; do not edit"
  map to_gateway {
    typeof meta l4proto . ip daddr . th dport . th sport : ip daddr . th dport${el}
  }
  map from_gateway {
    typeof meta l4proto . th sport : ip saddr . th sport${list(elements.fromGateway)}
  }
  chain out {
    type nat hook output priority -101; policy accept;
    oifname ${quoteIf(dev)} dnat ip to meta l4proto . ip daddr . th dport . th sport map @to_gateway
  }
  chain in {
    type nat hook input priority 99; policy accept;
    iifname ${quoteIf(dev)} ip saddr ${
    formatIPv4(g)
  } snat ip to meta l4proto . th sport map @from_gateway
  }
}
`;
}

/** Removes a role's table (no error when absent). */
export function deleteTable(name: string): string {
  return `add table ip ${name}\ndelete table ip ${name}\n`;
}

const NAME = protoName;

/** One `to_remote` element as nft text. */
export function toRemoteText(
  proto: number,
  a: number,
  pa: number,
  pg: number,
  x: number,
  px: number,
): string {
  return `${NAME(proto)} . ${formatIPv4(a)} . ${pa} . ${pg} : ${formatIPv4(x)} . ${px}`;
}

/** One `to_public` element as nft text. */
export function toPublicText(
  proto: number,
  a: number,
  pa: number,
  x: number,
  px: number,
  r: number,
  p: number,
): string {
  return `${NAME(proto)} . ${formatIPv4(a)} . ${pa} . ${formatIPv4(x)} . ${px} : ${
    formatIPv4(r)
  } . ${p}`;
}

/** One `map_in` element (proto . R . p : a . pa) as nft text. */
export function mapInText(proto: number, r: number, p: number, a: number, pa: number): string {
  return `${NAME(proto)} . ${formatIPv4(r)} . ${p} : ${formatIPv4(a)} . ${pa}`;
}

/** One `map_out` element (proto . a . pa : R . p) as nft text. */
export function mapOutText(proto: number, a: number, pa: number, r: number, p: number): string {
  return `${NAME(proto)} . ${formatIPv4(a)} . ${pa} : ${formatIPv4(r)} . ${p}`;
}

/** The CIDR blocks covering [lo, hi] exactly, as `a.b.c.d/n`. */
export function rangeCidrs(lo: number, hi: number): string[] {
  const out: string[] = [];
  let a = lo;
  while (a <= hi) {
    let n = 32;
    while (n > 0) {
      const size = 2 ** (33 - n);
      if (a % size !== 0 || a + size - 1 > hi) break;
      n--;
    }
    out.push(`${formatIPv4(a)}/${n}`);
    a += 2 ** (32 - n);
  }
  return out;
}

/** One `queued` element as nft text. */
export function queuedText(proto: number, a: number, pg: number): string {
  return `${NAME(proto)} . ${formatIPv4(a)} . ${pg}`;
}

/** One `from_gateway` element as nft text. */
export function fromGatewayText(proto: number, pg: number, x: number, px: number): string {
  return `${NAME(proto)} . ${pg} : ${formatIPv4(x)} . ${px}`;
}

/** One `to_gateway` element as nft text. */
export function toGatewayText(
  proto: number,
  x: number,
  px: number,
  pa: number,
  g: number,
  pg: number,
): string {
  return `${NAME(proto)} . ${formatIPv4(x)} . ${px} . ${pa} : ${formatIPv4(g)} . ${pg}`;
}

/**
 * The gateway's iptables chains on the kernel path: ICMP and hairpinned
 * sessions to the queue (untracked, as on the queue path), forwarded
 * traffic of dpm's sessions accepted ahead of the firewall.
 */
export function serverKernelChains(cfg: GatewayOptions): ChainSpec[] {
  const lanIf = cfg.lanIf!;
  const wanIf = cfg.wanIf!;
  const g = formatIPv4(cfg.lanAddr);
  const q = ["-j", "NFQUEUE", "--queue-num", String(cfg.queue)];
  const nt = ["-j", "CT", "--notrack"];
  const matches: string[][] = [
    ["-i", lanIf, "-d", g, "-m", "mark", "--mark", String(QUEUE_MARK)],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "echo-request"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "destination-unreachable"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "time-exceeded"],
    ["-i", lanIf, "-d", g, "-p", "icmp", "--icmp-type", "parameter-problem"],
  ];
  const ranges = poolRangeText(cfg.pool);
  for (const r of ranges) {
    matches.push(["-i", wanIf, "-p", "icmp", "-m", "iprange", "--dst-range", r]);
  }
  // Every forwarded packet walks this chain: the mark rules first, then
  // anything that is not ICMP leaves at once (the kernel translates it).
  const [mark, ...icmp] = matches;
  const pre: string[][] = [[...DEFRAG_ON], [...mark!, ...nt], [...mark!, ...q]];
  pre.push(["!", "-p", "icmp", "-j", "RETURN"]);
  for (const m of icmp) pre.push([...m, ...nt], [...m, ...q]);
  const fwd: string[][] = [];
  // Conntrack-translated sessions: their original destination is G.
  const ct = ["-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", g, "-j", "ACCEPT"];
  fwd.push(["-i", lanIf, "-o", wanIf, ...ct], ["-i", wanIf, "-o", lanIf, ...ct]);
  // Inbound mappings (map_in: PCP, NAT-PMP, dpm map, so also with --no-pcp): conntracks whose
  // original destination is a pool pair.
  for (const [lo, hi] of poolRanges(cfg.pool)) {
    for (const c of rangeCidrs(lo, hi)) {
      const m = ["-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", c, "-j", "ACCEPT"];
      fwd.push(["-i", wanIf, "-o", lanIf, ...m], ["-i", lanIf, "-o", wanIf, ...m]);
    }
  }
  // What the queue translates (ICMP, hairpin) is untracked, as on the queue path.
  for (const r of ranges) {
    fwd.push(["-i", lanIf, "-o", wanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
    // A hairpinned ICMP error goes back into the LAN from a public address.
    fwd.push(["-i", lanIf, "-o", lanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
  }
  fwd.push(["-i", wanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  fwd.push(["-i", lanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  // A first packet ahead of its request (nft's hold chain marked it, after
  // conntrack): held by the server, tracked, so that nat prerouting
  // translates it once it goes on. Bypassed while no server listens: it then
  // reaches G itself, which answers port unreachable.
  const hold = [[
    "-i",
    lanIf,
    "-d",
    g,
    "-m",
    "mark",
    "--mark",
    String(HOLD_MARK),
    ...q,
    "--queue-bypass",
  ]];
  return [
    { table: "raw", hook: "PREROUTING", chain: "DPM-SRV-PRE", rules: pre },
    { table: "filter", hook: "FORWARD", chain: "DPM-SRV-FWD", rules: fwd },
    { table: "mangle", hook: "PREROUTING", chain: "DPM-SRV-HOLD", rules: hold },
  ];
}

/**
 * The host's iptables chains on the kernel path: a new TCP/UDP conntrack
 * toward the outside goes to the queue (the driver holds it until the grant
 * and then lets it go unchanged: the nat output chain, which comes after
 * mangle, translates it); ICMP as on the queue path (`driverIcmpChains`,
 * with the kernel's defragmentation on).
 */
export function driverKernelChains(o: HostOptions): ChainSpec[] {
  const [out, pre] = driverIcmpChains(o);
  const q = ["-j", "NFQUEUE", "--queue-num", String(o.queue), "--queue-bypass"];
  const fresh: string[][] = [
    ["-m", "conntrack", "!", "--ctstate", "NEW", "-j", "RETURN"],
    ...lanSkip(o),
  ];
  for (const p of ["tcp", "udp"]) {
    fresh.push(["-o", o.dev, "-p", p, "-m", "conntrack", "--ctstate", "NEW", ...q]);
  }
  return [
    out!,
    { table: "mangle", hook: "OUTPUT", chain: "DPM-DRV-NEW", rules: fresh },
    { ...pre!, rules: [[...DEFRAG_ON], ...pre!.rules] },
  ];
}

/** Destinations a host never translates: its LAN, loopback, multicast, broadcast. */
function lanSkip(o: HostOptions): string[][] {
  return [
    ["-d", formatCidr(o.lan), "-j", "RETURN"],
    ["-d", "127.0.0.0/8", "-j", "RETURN"],
    ["-d", "224.0.0.0/4", "-j", "RETURN"],
    ["-d", "255.255.255.255/32", "-j", "RETURN"],
  ];
}

/**
 * The host's ICMP chains (raw OUTPUT and PREROUTING): ICMP toward the
 * outside, echo replies from G and ICMP errors go to the queue translator,
 * untracked. Everything else leaves each chain at its first rule. On the
 * bpf path these are the host's only rules: no conntrack match among them,
 * so the kernel does not track (or defragment) the host's packets for dpm.
 */
export function driverIcmpChains(o: HostOptions): ChainSpec[] {
  const q = ["-j", "NFQUEUE", "--queue-num", String(o.queue), "--queue-bypass"];
  const nt = ["-j", "CT", "--notrack"];
  const g = formatIPv4(o.server);
  const { lan, dev } = o;
  const icmp = ["-o", dev, "-p", "icmp"];
  const out: string[][] = [
    ["!", "-p", "icmp", "-j", "RETURN"],
    ...lanSkip(o),
    [...icmp, ...nt],
    [...icmp, ...q],
  ];
  const matches: string[][] = [["-s", g, "-p", "icmp", "--icmp-type", "echo-reply"]];
  for (const t of ["destination-unreachable", "time-exceeded", "parameter-problem"]) {
    matches.push(["-s", g, "-p", "icmp", "--icmp-type", t]);
    matches.push(["!", "-s", formatCidr(lan), "-p", "icmp", "--icmp-type", t]);
  }
  const pre: string[][] = [["!", "-p", "icmp", "-j", "RETURN"]];
  for (const m of matches) pre.push(["-i", dev, ...m, ...nt], ["-i", dev, ...m, ...q]);
  return [
    { table: "raw", hook: "OUTPUT", chain: "DPM-DRV-OUT", rules: out },
    { table: "raw", hook: "PREROUTING", chain: "DPM-DRV-PRE", rules: pre },
  ];
}
