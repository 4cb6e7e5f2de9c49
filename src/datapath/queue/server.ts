/**
 * The gateway's queue data path: every packet of a session crosses user
 * space, where the server translates it (`server/translate.ts`). This file
 * opens the netfilter queue, installs the iptables chains that feed it, and
 * pumps packets to the handler. Everything it sets up is undone by `stop`,
 * in reverse order (the sysctls and pool addresses: `datapath/gateway.ts`).
 *
 * Rules (dpm's own chains, so stop and crash recovery remove exactly these):
 *
 * raw PREROUTING → DPM-SRV-PRE
 *   -i LAN -d G, TCP/UDP to the gateway ports Pg, ICMP echo and ICMP errors
 *   -i LAN, marked STEER_MARK (a steered endpoint, below)
 *   -i WAN -d <pool>                                   → CT --notrack, NFQUEUE q
 * filter FORWARD → DPM-SRV-FWD (accept dpm's untracked traffic under a DROP policy;
 *   -i WAN -o LAN marked DIRECT_MARK: delivered to a steered endpoint from the remote itself)
 * nat POSTROUTING → DPM-SRV-NAT: -s LAN -o WAN -j MASQUERADE (hosts without a driver)
 *
 * ## Mappings and direct sessions (PCP/NAT-PMP MAP, PCP PEER)
 *
 * A mapping (`isMapping`: `R:p -> a:pa` for every remote) and a direct
 * session (PCP PEER from a host without a driver: the row's `direct`) are
 * translated here too, but their LAN side is not `G:Pg`: the host sends
 * `a:pa -> X:px` straight at the remote, routed through the gateway, and
 * receives `X:px -> a:pa`. Inbound needs nothing new (the WAN rule queues
 * everything for the pool; the core finds the mapping or the direct
 * session). Outbound, exactly those packets must be queued instead of
 * masqueraded; iptables has no set match without ipset, so they are kept in
 * a small nftables table of this path's own, programmed over netlink
 * (`linux/nftables.ts`, no process per element) from `sessionUp` and
 * `sessionDown`, reference-counted per key (`Steering`). A mapping steers
 * its endpoint for every remote (set `direct`); a direct session steers
 * only its own 5-tuple (set `peers`), so the same endpoint's packets to any
 * other remote are left to MASQUERADE, as on the kernel path:
 *
 * ```
 * table ip dpm-server-q
 *   set direct    proto . a . pa             mapped endpoints (any remote)
 *   set peers     proto . a . pa . X . px    direct (PCP PEER) sessions
 *   chain steer   filter prerouting -350 (before raw): iif LAN, (proto . saddr . sport) in
 *                 @direct or (proto . saddr . sport . daddr . dport) in @peers, daddr
 *                 outside the LAN and routed onward (fib type unicast: not G, a pool
 *                 address, broadcast or multicast) → mark STEER_MARK
 *   chain forward filter forward -10 (before iptables' filter): iif WAN, oif LAN,
 *                 untracked, (proto . daddr . dport) in @direct or
 *                 (proto . daddr . dport . saddr . sport) in @peers → mark DIRECT_MARK
 * ```
 *
 * The marks only select; iptables does the rest, as for every other queued
 * packet (untracked, so MASQUERADE never sees them). The forward mark is
 * exact: only packets dpm itself translated are untracked and only steered
 * endpoints are in the set, so a DROP policy still drops everything else.
 * Without nftables (the table cannot be loaded) the path still runs and
 * mappings are refused (`forwardsMappings` false: PCP UNSUPP_OPCODE).
 * `stop` deletes the table; `dpm server --cleanup` does too
 * (`server/cleanup.ts`).
 *
 * The queue has no --queue-bypass: without dpm running, pool traffic is
 * dropped rather than delivered to the gateway itself. Overflow drops
 * (no FAIL_OPEN): a lost packet is recovered by its transport, while a packet
 * passed untranslated would leak a LAN-side tuple to the outside.
 *
 * @module
 */

import { type Cidr, formatCidr, formatIPv4 } from "../../wire/addr.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import {
  antiSpoofRules,
  controlGuardRules,
  poolRangeText,
  prepareGateway,
  quoteIf,
} from "../gateway.ts";
import {
  type GatewayOptions,
  type GatewaySession,
  isMapping,
  type PacketIO,
  type ServerDataPath,
  type ServerPacketHandler,
  type StopMode,
} from "../datapath.ts";
import { NO_OTHER_PATHS, openQueue, type OtherPaths, pumpGateway } from "../netfilter.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import { type ChainSpec, DEFRAG_ON, installChains, removeChains } from "../../../linux/iptables.ts";
import { concat, NftMaps } from "../../../linux/nftables.ts";
import { loadRuleset } from "../../../linux/nft.ts";

const log = logger("server");

/** The queue path's nftables table: the steered endpoints (see the module documentation). */
export const QUEUE_TABLE = "dpm-server-q";
/** Mark of a steered endpoint's packet from the LAN (nft sets it, DPM-SRV-PRE queues it). */
export const STEER_MARK = 0x64706d02; // "dpm" 02
/** Mark of a translated packet from the WAN to a steered endpoint (DPM-SRV-FWD accepts it). */
export const DIRECT_MARK = 0x64706d03; // "dpm" 03

/** A session as the core hands it to this path (`direct`: a PCP PEER session, table/allocate.ts). */
export type QueueSession = GatewaySession;

/** The session's packets must be steered into the queue: a mapping or a direct session. */
export function steered(s: QueueSession): boolean {
  return element(s) !== null;
}

/** The queue path's nftables table as `nft -f` text, replacing any previous one. */
export function steerTable(cfg: GatewayOptions, lan: Cidr): string {
  const lanIf = quoteIf(cfg.lanIf!);
  const wanIf = quoteIf(cfg.wanIf!);
  const hex = (m: number) => `0x${m.toString(16)}`;
  const onward = `ip daddr != ${formatCidr(lan)} fib daddr type unicast`;
  const steer = hex(STEER_MARK);
  const direct = hex(DIRECT_MARK);
  return `add table ip ${QUEUE_TABLE}
delete table ip ${QUEUE_TABLE}
table ip ${QUEUE_TABLE} {
  comment "dpm server (queue path): endpoints steered to the queue, programmed by dpm; do not edit"
  set direct {
    typeof meta l4proto . ip saddr . th sport
  }
  set peers {
    typeof meta l4proto . ip saddr . th sport . ip daddr . th dport
  }
  chain steer {
    type filter hook prerouting priority -350; policy accept;
    iifname ${lanIf} meta l4proto . ip saddr . th sport @direct ${onward} meta mark set ${steer}
    iifname ${lanIf} meta l4proto . ip saddr . th sport . ip daddr . th dport @peers ${onward} meta mark set ${steer}
  }
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname ${wanIf} oifname ${lanIf} ct state untracked meta l4proto . ip daddr . th dport @direct meta mark set ${direct}
    iifname ${wanIf} oifname ${lanIf} ct state untracked meta l4proto . ip daddr . th dport . ip saddr . th sport @peers meta mark set ${direct}
  }
}
`;
}

/** Removes table dpm-server-q (no error when absent): stop and `--cleanup`. */
export function deleteSteerTable(): string {
  return `add table ip ${QUEUE_TABLE}\ndelete table ip ${QUEUE_TABLE}\n`;
}

/** The key of endpoint (proto, a, pa) in the `direct` set (nft's register layout). */
export function steerKey(proto: number, a: number, pa: number): Uint8Array {
  return concat([proto, 1], [a, 4], [pa, 2]);
}

/**
 * The key of direct session (proto, a, pa, X, px) in the `peers` set: the
 * layout of the kernel path's `to_public` keys (`datapath/nft/server.ts`).
 */
export function peerKey(proto: number, a: number, pa: number, x: number, px: number): Uint8Array {
  return concat([proto, 1], [a, 4], [pa, 2], [x, 4], [px, 2]);
}

/** The sets of table dpm-server-q: mapped endpoints, direct sessions' 5-tuples. */
export type SteerSetName = "direct" | "peers";

/** Where {@linkcode Steering} puts its elements (the kernel's sets, or a test's fake). */
export interface SteerSet {
  add(set: SteerSetName, keys: Uint8Array[]): void;
  delete(set: SteerSetName, keys: Uint8Array[]): void;
}

/**
 * What is steered, reference-counted per set element: a mapping steers its
 * endpoint (proto, a, pa) for every remote (`direct`), a direct session
 * only its own (proto, a, pa, X, px) (`peers`); an element is added with
 * the first session holding it and deleted with the last. A refused kernel
 * change is logged and counted, never thrown into the table's listener.
 */
export class Steering {
  readonly #refs = new Map<string, number>();
  readonly #set: SteerSet;
  /** Kernel changes that failed. */
  failures = 0;
  constructor(set: SteerSet) {
    this.#set = set;
  }
  /** Set elements held now (both sets). */
  get size(): number {
    return this.#refs.size;
  }
  /** True when endpoint (proto, a, pa) is steered for every remote (a mapping). */
  has(proto: number, a: number, pa: number): boolean {
    return this.#refs.has(refKey("direct", steerKey(proto, a, pa)));
  }
  /** True when the 5-tuple (proto, a, pa, X, px) is steered (a direct session). */
  hasPeer(proto: number, a: number, pa: number, x: number, px: number): boolean {
    return this.#refs.has(refKey("peers", peerKey(proto, a, pa, x, px)));
  }
  up(s: QueueSession): void {
    const e = element(s);
    if (e === null) return;
    const k = refKey(e.set, e.key);
    const n = this.#refs.get(k) ?? 0;
    this.#refs.set(k, n + 1);
    if (n === 0) this.#apply("add", e.set, e.key, s);
  }
  down(s: QueueSession): void {
    const e = element(s);
    if (e === null) return;
    const k = refKey(e.set, e.key);
    const n = this.#refs.get(k) ?? 0;
    if (n === 0) return;
    if (n > 1) {
      this.#refs.set(k, n - 1);
      return;
    }
    this.#refs.delete(k);
    this.#apply("delete", e.set, e.key, s);
  }
  #apply(op: "add" | "delete", set: SteerSetName, key: Uint8Array, s: QueueSession): void {
    try {
      this.#set[op](set, [key]);
    } catch (e) {
      if (this.failures++ < 10) {
        const what = set === "direct"
          ? `${formatIPv4(s.a)}:${s.pa}`
          : `${formatIPv4(s.a)}:${s.pa} -> ${formatIPv4(s.x)}:${s.px}`;
        log.error(
          `cannot ${op} ${what} (proto ${s.proto}) in ${QUEUE_TABLE} set ${set}: ${
            (e as Error).message
          }`,
        );
      }
    }
  }
}

/** The set element steering session `s`, or null when it is not steered. */
function element(s: QueueSession): { set: SteerSetName; key: Uint8Array } | null {
  if (isMapping(s)) return { set: "direct", key: steerKey(s.proto, s.a, s.pa) };
  if (s.direct === true) return { set: "peers", key: peerKey(s.proto, s.a, s.pa, s.x, s.px) };
  return null;
}

function refKey(set: SteerSetName, key: Uint8Array): string {
  return `${set}:${key.join(",")}`;
}

/** The iptables chains of the server role. */
export function serverChains(cfg: GatewayOptions, lan: Cidr): ChainSpec[] {
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
    // Mapped endpoints and direct sessions sending straight at the remote (table dpm-server-q).
    ["-i", lanIf, "-m", "mark", "--mark", String(STEER_MARK)],
  ];
  const ranges = poolRangeText(cfg.pool);
  for (const r of ranges) matches.push(["-i", wanIf, "-m", "iprange", "--dst-range", r]);
  const pre: string[][] = [[...DEFRAG_ON], ...antiSpoofRules(cfg, lan)];
  for (const m of matches) pre.push([...m, ...nt], [...m, ...q]);
  const fwd: string[][] = [];
  for (const r of ranges) {
    fwd.push(["-i", lanIf, "-o", wanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
    // A hairpinned ICMP error goes back into the LAN from a public address.
    fwd.push(["-i", lanIf, "-o", lanIf, "-m", "iprange", "--src-range", r, "-j", "ACCEPT"]);
  }
  fwd.push(["-i", wanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  fwd.push(["-i", lanIf, "-o", lanIf, "-s", g, "-j", "ACCEPT"]);
  // Translated for a mapping or a direct session: from the remote itself (table dpm-server-q).
  fwd.push(["-i", wanIf, "-o", lanIf, "-m", "mark", "--mark", String(DIRECT_MARK), "-j", "ACCEPT"]);
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

/** The netfilter-queue data path of the gateway. */
export class QueueServerDataPath implements ServerDataPath {
  readonly kind = "queue" as const;
  readonly can = {
    /** Mappings and direct sessions need the steering table (`forwardsMappings` in the module doc). */
    forwardsMappings: () => this.#steering !== null,
    countsPerSession: false,
    keepsSessions: false,
    kernelTranslates: false,
  } as const;
  #io: PacketIO | null = null;
  /** The queue's verdicts and the raw socket, once begun. */
  get io(): PacketIO | null {
    return this.#io;
  }
  readonly #cfg: GatewayOptions;
  readonly #others: OtherPaths;
  readonly #undo = new Cleanup(log);
  /** The steered endpoints; null without the nftables table (mappings refused). */
  #steering: Steering | null = null;

  private constructor(cfg: GatewayOptions, others: OtherPaths) {
    this.#cfg = cfg;
    this.#others = others;
  }

  /** Nothing is changed yet (see {@linkcode begin}). */
  static open(
    cfg: GatewayOptions,
    others: OtherPaths = NO_OTHER_PATHS,
  ): Promise<QueueServerDataPath> {
    return Promise.resolve(new QueueServerDataPath(cfg, others));
  }

  /** Removes the chains and the steering table a (SIGKILLed) queue-path run left. */
  static async remove(cfg: GatewayOptions): Promise<string> {
    await loadRuleset(deleteSteerTable());
    await removeChains(serverChains(cfg, cfg.lan));
    return `table ip ${QUEUE_TABLE} and the queue path's chains`;
  }

  /** A queue path leaves nothing translating: there is nothing to adopt. */
  adopt(): Promise<GatewaySession[]> {
    return Promise.resolve([]);
  }

  /**
   * Sets up the gateway (sysctls, addresses), the chains that feed the
   * queue and the steering table with the mappings and direct sessions of
   * `sessions()`, and starts translating with `packets`. `onFatal` is
   * called if the queue fails while running. A failed start undoes it all.
   */
  async begin(
    sessions: () => Iterable<GatewaySession>,
    packets: ServerPacketHandler,
    onFatal: (e: Error) => void,
  ): Promise<void> {
    const cfg = this.#cfg;
    const undo = this.#undo;
    try {
      const gw = await prepareGateway(cfg);
      undo.push(() => gw.run());
      await this.#others.removeLeftovers();
      const { queue, io } = openQueue(cfg.queue, undo);
      this.#io = io;
      const specs = serverChains(cfg, cfg.lan);
      undo.push(() => removeChains(specs));
      await installChains(specs);
      this.#steering = await QueueServerDataPath.#steer(cfg, undo);
      // Restored mappings' and direct sessions' endpoints are steered from the start.
      for (const s of sessions()) this.#steering?.up(s);
      undo.push(pumpGateway(queue, packets, onFatal));
    } catch (e) {
      await this.stop("remove");
      throw e;
    }
    log.info(
      `data path on (queue): queue ${cfg.queue}, LAN ${cfg.lanIf} ${
        formatCidr(cfg.lan)
      }, WAN ${cfg.wanIf}`,
    );
  }

  /** Loads table dpm-server-q and opens its netlink socket; null (and a warning) when it cannot. */
  static async #steer(cfg: GatewayOptions, undo: Cleanup): Promise<Steering | null> {
    try {
      await loadRuleset(steerTable(cfg, cfg.lan));
    } catch (e) {
      log.warn(
        `PCP/NAT-PMP mappings and PEER are refused on this gateway: cannot load table ip ${QUEUE_TABLE} (${
          (e as Error).message
        })`,
      );
      return null;
    }
    undo.push(() => loadRuleset(deleteSteerTable()));
    const nft = NftMaps.open();
    undo.push(() => nft.close());
    return new Steering({
      add: (set, keys) => nft.add(QUEUE_TABLE, set, keys.map((key) => ({ key }))),
      delete: (set, keys) => nft.delete(QUEUE_TABLE, set, keys),
    });
  }

  /**
   * Per-session work is only for mappings and direct sessions: a mapping's
   * endpoint, a direct session's 5-tuple, is steered into the queue (the
   * core looks every packet up in the table). Applied at once over
   * netlink, so `commit` has nothing left.
   */
  sessionUp(s: QueueSession): void {
    this.#steering?.up(s);
  }
  sessionDown(s: QueueSession): void {
    this.#steering?.down(s);
  }
  commit(): void {}
  counters(): null {
    return null;
  }
  status(): DataPathStatus {
    return { kind: "queue", state: "on", reinstalls: 0 };
  }
  /** Removes everything either way: a queue path keeps nothing. */
  async stop(_mode: StopMode): Promise<void> {
    this.#steering = null;
    this.#io = null;
    await this.#undo.run();
  }
}
