/**
 * The gateway's Prometheus metrics (`--metrics-addr`): sessions by protocol
 * and kind, inbound mappings by owner, control results by reason, PCP,
 * NAT-PMP and UPnP answers, packet drops by reason, translated
 * packets (queue path) and per-session kernel counters summed (kernel path),
 * the data path's state, the reservation latency histogram, table memory.
 *
 * @module
 */

import { protoName } from "../wire/meta.ts";
import {
  byLabel,
  dataPathFamilies,
  type Family,
  Histogram,
  LATENCY_BUCKETS,
  processFamilies,
  single,
} from "../operator/metrics.ts";
import type { ServerCore } from "./core.ts";
import { NatPmpResult, PcpResult } from "../pcp/codec.ts";
import type { UpnpStatus } from "../operator/types.ts";

/** How long the server takes from a request to its answer (commit included), seconds. */
export const reserveLatency = new Histogram(LATENCY_BUCKETS);

/** Beyond this many sessions a scrape does not walk the table for the per-kind breakdown. */
const WALK_LIMIT = 200_000;

/** The families, read at scrape time. */
export function serverFamilies(core: ServerCore): Family[] {
  const st = core.status(0);
  const t = core.table;
  const kinds: Family = {
    name: "dpm_sessions",
    help:
      "Sessions in the table, by protocol and kind (plain, replaced port, shared by remote, inbound mapping).",
    type: "gauge",
    samples: [],
  };
  if (t.size <= WALK_LIMIT) {
    const n = new Map<string, number>();
    for (const p of ["tcp", "udp", "icmp"]) {
      for (const k of ["plain", "replaced", "shared", "map"]) {
        if (p !== "icmp" || k !== "map") n.set(`${p}/${k}`, 0);
      }
    }
    for (const r of t.entries()) {
      const kind = r.map ? "map" : r.shared ? "shared" : r.replaced ? "replaced" : "plain";
      const k = `${protoName(r.proto)}/${kind}`;
      n.set(k, (n.get(k) ?? 0) + 1);
    }
    for (const [k, v] of n) {
      const [proto, kind] = k.split("/") as [string, string];
      kinds.samples.push({ labels: { proto, kind }, value: v });
    }
  }
  const counters = t.size <= WALK_LIMIT ? core.kernelTotals() : null;
  const fams: Family[] = [
    single("dpm_table_sessions", "Sessions in the table.", "gauge", st.sessions),
    kinds,
    byLabel(
      "dpm_control_results_total",
      "Control requests answered or refused, by result.",
      "counter",
      "result",
      st.results,
    ),
    pcpResults(core),
    ...(st.protocols
      ? [
        byLabel(
          "dpm_mappings",
          "Inbound mappings in the table, by owner (dpm, pcp, natpmp, upnp, adopted).",
          "gauge",
          "owner",
          st.protocols.mappings,
        ),
      ]
      : []),
    ...upnpFamilies(st.protocols?.upnp),
    byLabel(
      "dpm_drops_total",
      "Packets dropped or passed, by reason.",
      "counter",
      "reason",
      st.drops,
    ),
    byLabel(
      "dpm_translated_packets_total",
      "Packets translated in user space (queue path; ICMP and hairpin on the kernel path).",
      "counter",
      "direction",
      st.packets,
    ),
    ...dataPathFamilies(st.dataPath),
    {
      name: "dpm_request_duration_seconds",
      help: "Time from a control request to its answer, kernel programming included.",
      type: "histogram",
      samples: reserveLatency.samples(),
    },
    single(
      "dpm_table_bytes",
      "Memory of the session table's arrays and indexes.",
      "gauge",
      t.bytes,
    ),
    single(
      "dpm_epoch",
      "The server's epoch (changes when it restarts without its state).",
      "gauge",
      st.epoch,
    ),
    ...processFamilies(core.startedAt),
  ];
  if (counters) {
    fams.push(
      byLabel(
        "dpm_kernel_packets",
        "Packets of the sessions' conntracks, summed (kernel path).",
        "gauge",
        "direction",
        { out: counters.packetsOut, in: counters.packetsIn },
      ),
      byLabel(
        "dpm_kernel_bytes",
        "Bytes of the sessions' conntracks, summed (kernel path).",
        "gauge",
        "direction",
        { out: counters.bytesOut, in: counters.bytesIn },
      ),
    );
  }
  return fams;
}

/** The UPnP IGD's counters (none with --no-upnp). */
function upnpFamilies(u: UpnpStatus | undefined): Family[] {
  if (!u) return [];
  const snake = (o: Record<string, number>) =>
    Object.fromEntries(
      Object.entries(o).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v]),
    );
  return [
    byLabel(
      "dpm_upnp_http_responses_total",
      "UPnP IGD HTTP requests answered, by status code.",
      "counter",
      "status",
      u.http,
    ),
    byLabel(
      "dpm_upnp_actions_total",
      "UPnP IGD SOAP actions answered without a fault, by action.",
      "counter",
      "action",
      u.actions,
    ),
    byLabel(
      "dpm_upnp_faults_total",
      "UPnP IGD SOAP faults answered, by UPnP error code (606 not authorized, 718 conflict...).",
      "counter",
      "code",
      u.faults,
    ),
    byLabel(
      "dpm_upnp_ssdp_total",
      "SSDP searches (answered, unmatched, malformed, not_lan, rate_limited), answers sent " +
        "(answers) and answers left out by the 4x bound (over_budget).",
      "counter",
      "event",
      snake(u.ssdp),
    ),
    byLabel(
      "dpm_upnp_connections_total",
      "UPnP IGD HTTP connections: served, busy (over the caps), refused (not a LAN host), " +
        "timed_out, malformed.",
      "counter",
      "outcome",
      snake(u.listener),
    ),
  ];
}

/** PCP and NAT-PMP answers by protocol and result code name (RFC 6887 section 7.4, RFC 6886 section 3.5). */
function pcpResults(core: ServerCore): Family {
  const f: Family = {
    name: "dpm_pcp_results_total",
    help: "PCP and NAT-PMP requests answered (UDP 5351), by protocol and result.",
    type: "counter",
    samples: [],
  };
  const name = (codes: Record<string, number>, i: number) =>
    Object.entries(codes).find(([, v]) => v === i)?.[0]?.toLowerCase() ?? `code_${i}`;
  const add = (protocol: string, codes: Record<string, number>, counts: Float64Array) => {
    for (let i = 0; i < counts.length; i++) {
      f.samples.push({ labels: { protocol, result: name(codes, i) }, value: counts[i]! });
    }
  };
  add("pcp", PcpResult, core.pcp.pcpResults);
  add("natpmp", NatPmpResult, core.pcp.natPmpResults);
  return f;
}
