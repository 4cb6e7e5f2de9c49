/**
 * The figures of an HA failover, computed from a capture of the WAN segment
 * (testing/pcap.ts) and the hosts' own accounts (testing/ha_traffic.ts).
 * Pure functions, so they are tested on synthetic packets
 * (tests/unit/ha_analysis_test.ts).
 *
 * Names: a flow's *pair* is the public `R:p` its packets leave the WAN
 * with; its *session pair* is the one it had before the first failure (a
 * fresh session's: the one of its first packet). A packet *from a wrong
 * pair* is an outbound packet of a flow whose pair differs from its
 * session pair, an outbound TCP segment of no connection the peers know (no
 * SYN opened its 4-tuple and no busy flow used it before: the peer answers
 * it with RST), or an untranslated one (source in 10.0.0.0/8). The issue
 * insists these are counted, not only the connections that survive.
 *
 * @module
 */

import { decodeArp, decodeFrame, type PcapRecord, TCP_ACK, TCP_RST, TCP_SYN } from "./pcap.ts";
import type { TrafficReport } from "./ha_traffic.ts";

/** One packet on the WAN segment, as the analysis sees it. */
export interface WanPacket {
  /** Capture time, wall clock ms. */
  ts: number;
  /** Who sent it onto the segment: a gateway's name, "router", or "?". */
  by: string;
  proto: number;
  src: string;
  sport: number;
  dst: string;
  dport: number;
  tcpFlags: number;
  icmpType: number;
  /** The flow id in its payload (`U <id> <seq>` or `T <id> <seq>`), or null. */
  flow: string | null;
}

/** A gratuitous ARP seen on the WAN: who claimed which address, when. */
export interface Claim {
  ts: number;
  by: string;
  ip: string;
}

/** A failure or a failback: when, and which gateway should carry the traffic after it. */
export interface HaEvent {
  name: string;
  /** Wall clock ms when it was injected. */
  at: number;
  /** The gateway expected to translate after it. */
  to: string;
}

/** The WAN figures of the window from one event to the next (or the end). */
export interface WindowFigures {
  event: string;
  /** First gratuitous ARP from the new active after the event (it claims the pool), ms; null if none. */
  claimMs: number | null;
  /** First outbound UDP packet of the hosts' traffic (with a flow id) sent by the new active, ms after the event; null if none. */
  takeoverMs: number | null;
  /** The same, counting only packets that left with their session pair. */
  takeoverRightPairMs: number | null;
  /** Outbound packets from a wrong pair (all kinds below together). */
  wrongPair: number;
  /** ... of which: packets of a known flow with another pair. */
  wrongPairFlowPackets: number;
  /** ... of which: TCP segments of no known connection (not SYN). */
  strayTcp: number;
  /** ... of which: untranslated (private source). */
  untranslated: number;
  /**
   * Packets a gateway sent back out of the WAN toward a private destination
   * (a reply it could not deliver to the LAN, e.g. with its LAN link down):
   * not from a wrong pair, but leaked all the same.
   */
  misrouted: number;
  /** Flows (busy and fresh) that sent at least one packet from a wrong pair. */
  wrongPairFlows: string[];
  /** TCP resets the gateways sent toward the peers, and the peers sent back. */
  rstOut: number;
  rstIn: number;
  /**
   * The flow of each RST counted in `rstOut`, by its tuple (the flow whose
   * payload packets left with it, before or after the reset): a busy
   * flow's id (`<host>t<n>`) is an established connection reset, a fresh
   * one's (`<host>f<n>`) a connection being opened. A tuple no payload
   * ever named is shown as `?` and the tuple (`proto/R:p/X:px`), with
   * `+syn` when a SYN opened it (a handshake that never carried data).
   */
  rstOutFlows: string[];
  /** The same for each RST counted in `rstIn` (named by the tuple it answers). */
  rstInFlows: string[];
  /** ICMP errors (type 3, 11) the gateways sent toward the peers, and the peers sent back. */
  icmpOut: number;
  icmpIn: number;
}

/** Everything the capture tells. */
export interface WanFigures {
  windows: WindowFigures[];
  /** Wrong-pair packets before the first event (must be 0: the rig is sound). */
  wrongPairBefore: number;
  /**
   * Gratuitous ARPs before the first event from a gateway other than the
   * active one (`activeBefore`): a spurious takeover (the standby missed
   * adverts while the active lived), which disturbs the run.
   */
  spuriousClaims: number;
  /** Flows whose last pair differs from their session pair. */
  pairChanged: string[];
  /** Packets captured, and those the capture could not decode (ARP, VRRP, cut frames). */
  packets: number;
  undecoded: number;
}

/** Parses `U <id> <seq>` / `T <id> <seq>` at the start of a payload. */
export function flowOf(payload: Uint8Array): string | null {
  if (payload.length < 4 || (payload[0] !== 0x55 && payload[0] !== 0x54) || payload[1] !== 0x20) {
    return null;
  }
  let end = 2;
  while (end < payload.length && end < 40 && payload[end] !== 0x20) end++;
  if (end === 2 || end >= payload.length) return null;
  return new TextDecoder().decode(payload.subarray(2, end));
}

/**
 * The capture's packets as {@linkcode WanPacket}s; `macs` names the senders
 * (MAC -> "gwa", "gwb", "router").
 */
export function wanPackets(
  records: Iterable<PcapRecord>,
  macs: ReadonlyMap<string, string>,
): { packets: WanPacket[]; undecoded: number; claims: Claim[] } {
  const packets: WanPacket[] = [];
  const claims: Claim[] = [];
  let undecoded = 0;
  for (const r of records) {
    const f = decodeFrame(r.data);
    if (!f) {
      const arp = decodeArp(r.data);
      if (arp && arp.senderIp === arp.targetIp) {
        claims.push({ ts: r.ts, by: macs.get(arp.senderMac) ?? "?", ip: arp.senderIp });
      } else {
        undecoded++;
      }
      continue;
    }
    packets.push({
      ts: r.ts,
      by: macs.get(f.srcMac) ?? "?",
      proto: f.proto,
      src: f.src,
      sport: f.sport,
      dst: f.dst,
      dport: f.dport,
      tcpFlags: f.tcpFlags,
      icmpType: f.icmpType,
      flow: f.proto === 6 || f.proto === 17 ? flowOf(f.payload) : null,
    });
  }
  return { packets, undecoded, claims };
}

const isPrivate = (a: string) => a.startsWith("10.");

/**
 * The figures of {@linkcode WanFigures} from the packets (in capture order),
 * the events (in time order), the names of the gateways, the gratuitous
 * ARPs, and which gateway was active before the first event.
 */
export function analyzeWan(
  packets: readonly WanPacket[],
  events: readonly HaEvent[],
  gateways: readonly string[],
  claims: readonly Claim[] = [],
  activeBefore: string | null = null,
): WanFigures {
  const gw = new Set(gateways);
  const sessionPair = new Map<string, string>();
  const lastPair = new Map<string, string>();
  /** TCP 4-tuples the peers know: opened by a SYN or used by a flow before the first event. */
  const known = new Set<string>();
  /**
   * TCP tuples (proto/R:p/X:px) of the flows whose payload packets carried
   * them (over the whole capture: a reset may come before a flow's first
   * payload), and the tuples a SYN opened.
   */
  const flowOfTuple = new Map<string, string>();
  const opened = new Set<string>();
  for (const p of packets) {
    if (p.proto !== 6 || !gw.has(p.by)) continue;
    const tuple = `6/${p.src}:${p.sport}/${p.dst}:${p.dport}`;
    if (p.flow !== null) flowOfTuple.set(tuple, p.flow);
    else if ((p.tcpFlags & TCP_SYN) && !(p.tcpFlags & TCP_ACK)) opened.add(tuple);
  }
  const rstFlow = (tuple: string) =>
    flowOfTuple.get(tuple) ?? `?${tuple}${opened.has(tuple) ? "+syn" : ""}`;
  const firstEvent = events[0]?.at ?? Infinity;
  const windows: WindowFigures[] = events.map((e, i) => ({
    event: e.name,
    claimMs: firstClaim(claims, e, events[i + 1]?.at ?? Infinity),
    takeoverMs: null,
    takeoverRightPairMs: null,
    wrongPair: 0,
    wrongPairFlowPackets: 0,
    strayTcp: 0,
    untranslated: 0,
    misrouted: 0,
    wrongPairFlows: [],
    rstOut: 0,
    rstIn: 0,
    rstOutFlows: [],
    rstInFlows: [],
    icmpOut: 0,
    icmpIn: 0,
  }));
  const wrongFlows = windows.map(() => new Set<string>());
  let wrongPairBefore = 0;
  const sorted = [...packets].sort((a, b) => a.ts - b.ts);
  for (const p of sorted) {
    let w = -1;
    for (let i = events.length - 1; i >= 0; i--) {
      if (p.ts >= events[i]!.at) {
        w = i;
        break;
      }
    }
    const win = w >= 0 ? windows[w]! : null;
    const outbound = gw.has(p.by);
    if (!outbound) {
      if (p.by === "router" && win) {
        if (p.proto === 6 && (p.tcpFlags & TCP_RST)) {
          win.rstIn++;
          win.rstInFlows.push(rstFlow(`6/${p.dst}:${p.dport}/${p.src}:${p.sport}`));
        }
        if (p.proto === 1 && (p.icmpType === 3 || p.icmpType === 11)) win.icmpIn++;
      }
      continue;
    }
    if (isPrivate(p.dst)) {
      if (win) win.misrouted++;
      continue;
    }
    if (p.proto === 1) {
      if (win && (p.icmpType === 3 || p.icmpType === 11)) win.icmpOut++;
      continue;
    }
    const pair = `${p.src}:${p.sport}`;
    const tuple = `${p.proto}/${pair}/${p.dst}:${p.dport}`;
    let wrong: "flow" | "stray" | "untranslated" | null = null;
    if (isPrivate(p.src)) {
      wrong = "untranslated";
    } else if (p.flow !== null) {
      const want = sessionPair.get(p.flow);
      if (want === undefined) sessionPair.set(p.flow, pair);
      else if (want !== pair) wrong = "flow";
      lastPair.set(p.flow, pair);
      if (p.proto === 6 && (wrong === null || p.ts < firstEvent)) known.add(tuple);
    } else if (p.proto === 6) {
      if ((p.tcpFlags & TCP_SYN) && !(p.tcpFlags & TCP_ACK)) known.add(tuple);
      else if (!known.has(tuple) && p.ts >= firstEvent) wrong = "stray";
    }
    if (win && p.proto === 6 && (p.tcpFlags & TCP_RST)) {
      win.rstOut++;
      win.rstOutFlows.push(rstFlow(tuple));
    }
    if (win && p.proto === 17 && p.flow !== null && p.by === events[w]!.to) {
      const ms = p.ts - events[w]!.at;
      win.takeoverMs ??= ms;
      if (wrong === null) win.takeoverRightPairMs ??= ms;
    }
    if (wrong === null) continue;
    if (!win) {
      wrongPairBefore++;
      continue;
    }
    win.wrongPair++;
    if (wrong === "flow") win.wrongPairFlowPackets++;
    if (wrong === "stray") win.strayTcp++;
    if (wrong === "untranslated") win.untranslated++;
    if (p.flow !== null) wrongFlows[w]!.add(p.flow);
  }
  windows.forEach((win, i) => win.wrongPairFlows = [...wrongFlows[i]!].sort());
  const pairChanged = [...lastPair].filter(([f, p]) => sessionPair.get(f) !== p).map(([f]) => f)
    .sort();
  const spuriousClaims =
    claims.filter((c) =>
      c.ts < firstEvent && activeBefore !== null && c.by !== activeBefore && gw.has(c.by)
    ).length;
  return {
    windows,
    wrongPairBefore,
    spuriousClaims,
    pairChanged,
    packets: packets.length,
    undecoded: 0,
  };
}

function firstClaim(claims: readonly Claim[], e: HaEvent, until: number): number | null {
  let first: number | null = null;
  for (const c of claims) {
    if (c.by === e.to && c.ts >= e.at && c.ts < until && (first === null || c.ts < first)) {
      first = c.ts;
    }
  }
  return first === null ? null : first - e.at;
}

/** What the hosts saw, summed. */
export interface HostFigures {
  udpFlows: number;
  /** Datagrams sent without an echo, per flow: sum, max, and how many flows lost any. */
  udpLost: number;
  udpLostMax: number;
  udpFlowsWithLoss: number;
  /** The longest silence of a UDP flow (send times around its longest run of losses), ms. */
  udpMaxGapMs: number;
  tcpConns: number;
  /** Connections that ended with an error (a reset, mostly) before the end. */
  tcpBroken: number;
  tcpErrors: string[];
  /** The longest pause between two echoes of one connection, ms. */
  tcpMaxGapMs: number;
  /** Flows whose echoes reported more than one pair. */
  pairsSeenChanged: string[];
  /** Fresh sessions started, answered, and failed, per window (index as the events; -1: before). */
  fresh: { started: number; ok: number; failed: number; firstOkAfterMs: number | null }[];
}

/** Sums the hosts' reports; `events` splits the fresh sessions into windows. */
export function summarizeHosts(
  reports: readonly TrafficReport[],
  events: readonly HaEvent[],
): HostFigures {
  const out: HostFigures = {
    udpFlows: 0,
    udpLost: 0,
    udpLostMax: 0,
    udpFlowsWithLoss: 0,
    udpMaxGapMs: 0,
    tcpConns: 0,
    tcpBroken: 0,
    tcpErrors: [],
    tcpMaxGapMs: 0,
    pairsSeenChanged: [],
    fresh: [
      { started: 0, ok: 0, failed: 0, firstOkAfterMs: null },
      ...events.map(() => ({
        started: 0,
        ok: 0,
        failed: 0,
        firstOkAfterMs: null as number | null,
      })),
    ],
  };
  for (const r of reports) {
    for (const f of r.udp) {
      out.udpFlows++;
      const lost = f.sent - f.echoed;
      out.udpLost += lost;
      out.udpLostMax = Math.max(out.udpLostMax, lost);
      if (lost > 0) out.udpFlowsWithLoss++;
      if (f.gap) out.udpMaxGapMs = Math.max(out.udpMaxGapMs, f.gap[1] - f.gap[0]);
      if (Object.keys(f.pairs).length > 1) out.pairsSeenChanged.push(f.id);
    }
    for (const c of r.tcp) {
      out.tcpConns++;
      if (c.error !== null) {
        out.tcpBroken++;
        if (out.tcpErrors.length < 5) out.tcpErrors.push(`${c.id}: ${c.error}`);
      }
      if (c.gap) out.tcpMaxGapMs = Math.max(out.tcpMaxGapMs, c.gap[1] - c.gap[0]);
      if (Object.keys(c.pairs).length > 1) out.pairsSeenChanged.push(c.id);
    }
    for (const s of r.fresh) {
      let w = 0;
      for (let i = events.length - 1; i >= 0; i--) {
        if (s.at >= events[i]!.at) {
          w = i + 1;
          break;
        }
      }
      const slot = out.fresh[w]!;
      slot.started++;
      if (s.okAt !== null) {
        slot.ok++;
        if (w > 0) {
          const after = s.okAt - events[w - 1]!.at;
          if (slot.firstOkAfterMs === null || after < slot.firstOkAfterMs) {
            slot.firstOkAfterMs = after;
          }
        }
      } else {
        slot.failed++;
      }
    }
  }
  out.pairsSeenChanged.sort();
  return out;
}
