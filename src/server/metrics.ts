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
import type { HaStatus, StatusReply, UpnpStatus } from "../operator/types.ts";

/** How long the server takes from a request to its answer (commit included), seconds. */
export const reserveLatency = new Histogram(LATENCY_BUCKETS);

/** Beyond this many sessions a scrape does not walk the table for the per-kind breakdown. */
const WALK_LIMIT = 200_000;

/**
 * The families, read at scrape time. `header`: the status header the
 * totals come from (`dpm server --workers`: every worker's, merged);
 * the core's own when absent.
 */
export function serverFamilies(
  core: ServerCore,
  header?: () => Omit<StatusReply, "shown">,
): Family[] {
  const st = header ? header() : core.status(0);
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
    ...haFamilies(st.ha),
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

/** The HA role (`--ha`, docs/ha.md; none without it). */
function haFamilies(h: HaStatus | undefined): Family[] {
  if (!h) return [];
  const g = (name: string, help: string, value: number): Family => ({
    name,
    help,
    type: "gauge",
    samples: [{ value }],
  });
  return [
    {
      name: "dpm_ha_role",
      help:
        "The HA role: 1 for the role this gateway plays (active, standby, fault), 0 for the others.",
      type: "gauge",
      samples: ["active", "standby", "fault"].map((role) => ({
        labels: { role },
        value: h.role === role ? 1 : 0,
      })),
    },
    {
      name: "dpm_ha_transitions_total",
      help: "HA role changes since start.",
      type: "counter",
      samples: [{ value: h.transitions }],
    },
    ...(h.lastTakeoverMs === null ? [] : [
      g(
        "dpm_ha_last_takeover_seconds",
        "The last takeover here: from keepalived's MASTER to serving (state applied, addresses claimed), seconds.",
        h.lastTakeoverMs / 1000,
      ),
    ]),
    g(
      "dpm_ha_mirror_sessions",
      "Sessions in the table mirrored from replicated conntracks.",
      h.mirror.sessions,
    ),
    {
      name: "dpm_ha_mirror_events_total",
      help: "Conntrack events the mirror applied.",
      type: "counter",
      samples: [{ value: h.mirror.events }],
    },
    {
      name: "dpm_ha_mirror_lost_total",
      help: "Times the kernel dropped conntrack events (each followed by a full reconcile).",
      type: "counter",
      samples: [{ value: h.mirror.lost }],
    },
    ...(h.mirror.lagSeconds === null ? [] : [
      g(
        "dpm_ha_mirror_lag_seconds",
        "Age of the standby mirror's last full reconcile, seconds.",
        h.mirror.lagSeconds,
      ),
    ]),
    ...(h.adverts === null ? [] : [
      {
        name: "dpm_ha_adverts_heard_total",
        help:
          "VRRP adverts of dpm's instance heard from the peer (on the standby: the active's heartbeat).",
        type: "counter",
        samples: [{ value: h.adverts.heard }],
      } as Family,
      ...(h.adverts.lastAt === null ? [] : [
        g(
          "dpm_ha_last_advert_age_seconds",
          "Seconds since the last VRRP advert of dpm's instance was heard from the peer.",
          Math.max(0, (Date.now() - h.adverts.lastAt) / 1000),
        ),
      ]),
      {
        name: "dpm_ha_split_brain_total",
        help:
          "Times the peer claimed master (its adverts heard, of a priority not above this box's) while this box was active.",
        type: "counter",
        samples: [{ value: h.adverts.splitBrains }],
      } as Family,
    ]),
    g(
      "dpm_ha_behind",
      "1 when the standby's mirror has fallen behind (no reconcile for 30 s).",
      h.behind ? 1 : 0,
    ),
    ...(h.sync
      ? [
        {
          name: "dpm_ha_sync_bytes_total",
          help: "Bytes on the sync link as conntrackd counts them, by direction.",
          type: "counter" as const,
          samples: [
            { labels: { direction: "sent" }, value: h.sync.bytesSent },
            { labels: { direction: "received" }, value: h.sync.bytesReceived },
          ],
        },
        {
          name: "dpm_ha_sync_lost_messages_total",
          help: "Sync messages from the peer that conntrackd lost (a replica may be missing).",
          type: "counter" as const,
          samples: [{ value: h.sync.lostMessages }],
        },
        {
          name: "dpm_ha_sync_inject_failed_total",
          help: "Entries from the peer that conntrackd failed to create, update or destroy here.",
          type: "counter" as const,
          samples: [{ value: h.sync.injected.failed }],
        },
        ...(h.sync.resendQueue === null ? [] : [
          g(
            "dpm_ha_sync_resend_queue",
            "Messages conntrackd holds to resend to the peer.",
            h.sync.resendQueue,
          ),
        ]),
      ]
      : []),
    {
      name: "dpm_ha_refreshed_total",
      help: "Conntrack timeouts refreshed while active (their replicas stay alive).",
      type: "counter",
      samples: [{ value: h.refreshed }],
    },
  ];
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
