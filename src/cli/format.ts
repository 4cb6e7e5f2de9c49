/**
 * What the CLI prints for people: the tables and lines of `dpm status`
 * (the gateway's, a host's with `--host`, the driver's with `--driver`),
 * `--watch` events, and the answers of `dpm query` and `dpm map`. Pure
 * functions of the operator socket's replies (src/operator/types.ts);
 * src/cli/main.ts parses the command line, asks, and prints these. `--json`
 * prints the replies themselves instead.
 *
 * @module
 */

import type {
  AdvertStats,
  DriverStatusReply,
  HaStatus,
  HostView,
  MappingProtocols,
  MapReply,
  QueryReply,
  SessionEvent,
  StatusReply,
} from "../operator/types.ts";

/** Rows under a header, each column as wide as its widest cell, two spaces apart. */
function table(head: string[], rows: string[][]): string[] {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join("  ").trimEnd();
  return [fmt(head), ...rows.map(fmt)];
}

/** Renders the status for a terminal. */
export function formatStatus(s: StatusReply): string {
  if (s.error) return `error: ${s.error}`;
  const dp = s.dataPath;
  const lines = [
    `dpm server ${s.version}  epoch ${s.epoch.toString(16).padStart(8, "0")}  up ${
      duration(s.uptime)
    }  ` +
    `LAN ${s.lanAddr}  pool ${s.pool.length} address(es)  data path ${
      dp ? `${dp.kind}${dp.state === "on" || dp.kind === "off" ? "" : ` ${dp.state}`}` : "off"
    }${dp?.lastError ? ` (${dp.lastError})` : ""}`,
    // On the kernel and bpf paths the kernel moves a session's packets and
    // counts them per row; the header's totals are only those dpm's own
    // translator saw (ICMP, hairpins, the queue path's every packet).
    `sessions: ${s.sessions}   ${dp && dp.kind !== "queue" ? "translated in user space: " : ""}` +
    `packets out ${s.packets.out}  in ${s.packets.in}  hairpin ${s.packets.hairpin}`,
  ];
  if (s.host) lines.push(...formatHost(s.host));
  lines.push("");
  const head = [
    "PROTO",
    "INTERNAL",
    "PG",
    "PUBLIC",
    "REMOTE",
    "AGE",
    "IDLE",
    "EXPIRES",
    "FLAGS",
    "PKTS OUT/IN",
    "BYTES OUT/IN",
    "OWNER",
  ];
  const rows = s.shown.map((v) => [
    v.proto,
    v.internal,
    String(v.gatewayPort),
    v.public,
    v.remote,
    v.age === undefined ? "-" : duration(v.age),
    v.idle === undefined ? "-" : duration(v.idle),
    `${v.expiresIn}s`,
    v.flags || "-",
    `${v.packetsOut}/${v.packetsIn}`,
    v.bytesOut === undefined ? "-" : `${bytes(v.bytesOut)}/${bytes(v.bytesIn ?? 0)}`,
    `${v.owner ?? "-"}${v.description ? ` ${JSON.stringify(v.description)}` : ""}`,
  ]);
  lines.push(...table(head, rows));
  const total = s.host ? s.host.sessions : s.sessions;
  if (s.shown.length < total) {
    lines.push(`... ${total - s.shown.length} more (use --json)`);
  }
  const nz = (o: Record<string, number>) =>
    Object.entries(o).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "none";
  lines.push("", `control results: ${nz(s.results)}`, `drops: ${nz(s.drops)}`);
  if (s.protocols) lines.push(...formatProtocols(s.protocols, nz));
  if (s.ha) lines.push(...formatHa(s.ha));
  return lines.join("\n");
}

/** The HA lines (`--ha`): role, peer, the mirror and whether it has fallen behind. */
function formatHa(h: HaStatus): string[] {
  const m = h.mirror;
  return [
    `HA: ${h.role} since ${new Date(h.since).toISOString()} (keepalived: ${
      h.vrrp ?? "nothing yet"
    }), ` +
    `${h.transitions} transition(s)${h.peer ? `, peer ${h.peer}` : ""}` +
    (h.lastTakeoverMs === null ? "" : `, last takeover ${h.lastTakeoverMs} ms`) +
    (h.failedTransitions ? `, ${h.failedTransitions} failed` : ""),
    `  mirror: ${m.sessions} session(s) from replicas, ${m.events} event(s), ${m.reconciles} reconcile(s)` +
    (m.lagSeconds === null ? "" : `, last ${m.lagSeconds.toFixed(1)} s ago`) +
    (m.lost ? `, events lost ${m.lost} time(s)` : "") +
    (m.refused ? `, ${m.refused} refused` : "") +
    (h.behind ? "; BEHIND: the standby has not reconciled for 30 s" : "") +
    (h.role === "active" ? `; ${h.refreshed} timeout(s) refreshed` : ""),
    ...(h.sync
      ? [
        `  sync (conntrackd): ${h.sync.bytesSent}/${h.sync.bytesReceived} bytes sent/received, ` +
        `${h.sync.lostMessages} lost, ${h.sync.malformedMessages} malformed, ` +
        `${h.sync.injected.failed} injection(s) failed` +
        (h.sync.resendQueue === null ? "" : `, resend queue ${h.sync.resendQueue}`),
      ]
      : []),
    ...(h.syncError ? [`  sync: ${h.syncError}`] : []),
    ...(h.adverts ? [formatAdverts(h.adverts, h.priority)] : []),
  ];
}

/** The VRRP adverts heard from the peer: when it last spoke; split brains. */
function formatAdverts(a: AdvertStats, priority: number | null): string {
  const last = a.lastAt === null
    ? "none heard"
    : `last ${
      ((Date.now() - a.lastAt) / 1000).toFixed(1)
    } s ago from ${a.lastFrom} (priority ${a.lastPriority})`;
  return `  VRRP adverts from the peer: ${a.heard}, ${last}` +
    (priority === null ? "" : `; own priority ${priority}`) +
    `; split brains ${a.splitBrains}` +
    (a.whileActive ? ` (${a.whileActive} advert(s) heard while active)` : "");
}

/** The mapping protocols' lines: mappings by owner, PCP and NAT-PMP answers, the UPnP IGD. */
function formatProtocols(
  p: MappingProtocols,
  nz: (o: Record<string, number>) => string,
): string[] {
  const lines = [`mappings: ${nz(p.mappings)}`];
  if (p.pcp) lines.push(`PCP: ${nz(p.pcp)}; NAT-PMP: ${nz(p.natpmp ?? {})}`);
  const u = p.upnp;
  if (u) {
    lines.push(
      `UPnP: ${u.locations.join(" ")} (boot id ${u.bootId}); actions: ${nz(u.actions)}; ` +
        `faults: ${nz(u.faults)}; SSDP: ${nz(u.ssdp)}`,
    );
  }
  return lines;
}

/** The `--host` lines: quota use, pairing, refusals. */
function formatHost(h: HostView): string[] {
  const by = Object.entries(h.byProto).map(([p, n]) => `${p} ${n}`).join(", ");
  const refused = Object.entries(h.refusals).map(([k, n]) => `${k} ${n}`).join(", ");
  return [
    `host ${h.host}: ${h.sessions}/${h.quota} sessions (${by})${
      h.paired ? `, paired with ${h.paired}` : ""
    }`,
    `  refused: ${refused || "none"}${
      h.lastRefusal
        ? `; last ${
          duration(h.lastRefusal.ago)
        } ago: ${h.lastRefusal.request}: ${h.lastRefusal.result}`
        : ""
    }`,
  ];
}

/** One `--watch` line, like `conntrack -E`: time, event, the session. */
export function formatEvent(
  e: SessionEvent | { event: "lost"; count: number },
  at = new Date(),
): string {
  const t = at.toTimeString().slice(0, 8);
  switch (e.event) {
    case "up":
      return `${t} [UP]      ${e.proto} ${e.internal} -> ${e.remote}  public ${e.public}  pg ${e.gatewayPort}  expires ${e.expiresIn}s${
        e.flags ? `  ${e.flags}` : ""
      }`;
    case "down":
      return `${t} [DOWN]    ${e.proto} ${e.internal} -> ${e.remote}  public ${e.public}  ${e.reason}${
        e.age === undefined ? "" : ` after ${duration(e.age)}`
      }  packets ${e.packetsOut}/${e.packetsIn}${
        e.bytesOut === undefined ? "" : `  bytes ${bytes(e.bytesOut)}/${bytes(e.bytesIn ?? 0)}`
      }`;
    case "refused":
      return `${t} [REFUSED] ${e.host}: ${e.request}: ${e.result}`;
    case "lost":
      return `${t} [LOST]    ${e.count} event(s) (the reader was too slow)`;
    default:
      return `${t} ${JSON.stringify(e)}`;
  }
}

/** Seconds as `45s`, `3m12s`, `2h04m`, `3d02h`. */
export function duration(sec: number): string {
  const s = Math.max(0, Math.round(sec));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  }
  return `${Math.floor(s / 86400)}d${String(Math.floor(s / 3600) % 24).padStart(2, "0")}h`;
}

/** Bytes as `512 B`, `1.5 KiB`, `3.2 MiB`, as `wg show` prints them. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)} ${units[i]}`;
}

/** The driver's inbound mappings (`dpm map`), as a table after its sessions. */
function formatMappings(ms: MapReply[]): string[] {
  if (!ms.length) return [];
  const head = ["PROTO", "PUBLIC", "LOCAL", "REMOTE", "EXPIRES"];
  const rows = ms.map((m) => [
    String(m.proto),
    String(m.public),
    String(m.local),
    "any (mapping)",
    `${m.expiresIn ?? 0}s`,
  ]);
  return ["", `mappings: ${ms.length}`, ...table(head, rows)];
}

/** Renders a driver's status for a terminal. */
export function formatDriverStatus(s: DriverStatusReply): string {
  const head = ["PROTO", "LOCAL", "REMOTE", "PUBLIC", "PG", "STATE", "IDLE", "EXPIRES"];
  const rows = s.sessions.map((v) => [
    String(v.proto),
    String(v.local),
    String(v.remote),
    String(v.public ?? "-"),
    String(v.gatewayPort ?? "-"),
    v.fellBack
      ? `fell-back${v.retryIn === undefined ? "" : ` (retry in ${v.retryIn}s)`}`
      : String(v.result),
    typeof v.idle === "number" ? duration(v.idle) : "-",
    v.expiresIn === undefined ? "-" : `${v.expiresIn}s`,
  ]);
  const st = s.stats as Record<string, number | Record<string, number>>;
  const num = (k: string) => Number(st[k] ?? 0);
  const drops = Object.entries((st.drops ?? {}) as Record<string, number>).map(([k, n]) =>
    `${k} ${n}`
  ).join(", ");
  const ctl = (st.control ?? {}) as Record<string, number>;
  const c = s.control;
  const answers = !c
    ? ""
    : `server ${c.answering ? "answering" : "NOT ANSWERING"}: last answer ${
      c.lastAnswer === undefined ? "never" : `${duration(c.lastAnswer)} ago`
    }, last timeout ${c.lastTimeout === undefined ? "never" : `${duration(c.lastTimeout)} ago`}`;
  return [
    `dpm driver  server ${s.server}  epoch ${
      s.epoch === null ? "unknown" : s.epoch.toString(16).padStart(8, "0")
    }`,
    ...(answers ? [answers] : []),
    `control: sent ${ctl.sent ?? 0}  retransmits ${ctl.retransmits ?? 0}  timeouts ${
      ctl.timeouts ?? 0
    }  rate-limited ${ctl.rateLimited ?? 0}  late ${ctl.late ?? 0}  queued ${
      ctl.queued ?? 0
    }  cookie retries ${ctl.cookieRetries ?? 0}`,
    `packets out ${num("out")}  in ${num("in")}  reserved ${num("reserved")}  refused ${
      num("refused")
    }  ` +
    `renewed ${num("renewed")}  released ${num("released")}  held ${num("held")}`,
    `fell back to ordinary NAT ${num("fellBack")}  untranslated now ${num("untranslated")}  ` +
    `reserved since ${num("recovered")}  late grants given back ${num("lateReleased")}`,
    "",
    ...table(head, rows),
    ...formatMappings(s.mappings ?? []),
    "",
    `drops: ${drops || "none"}`,
  ].join("\n");
}

/**
 * The answer to `dpm query PROTO LOCAL REMOTE` (`proto` as typed, lower
 * case): the public pair, or why there is none. A `not-yours` refusal
 * starts with `dpm: ` (it goes to stderr).
 */
export function formatQueryReply(
  proto: string,
  local: string,
  remote: string,
  res: QueryReply,
): string {
  const what = `${proto} ${local} -> ${remote}`;
  if (res.result === "ok") {
    return `${what}: public ${res.public} (gateway port ${res.gatewayPort}, ` +
      `${res.replaced ? "port replaced" : "port preserved"}${
        res.shared ? ", shared by remote" : ""
      }, ` +
      `expires in ${res.expiresIn}s)`;
  }
  if (res.result === "not-yours") {
    return `dpm: query ${what} refused, not yours: ${res.error ?? ""}`;
  }
  return `${what}: ${res.result}${res.error ? ` (${res.error})` : ""}`;
}

/**
 * The answer to `dpm map PROTO PORT`: the mapping made or deleted, or (with
 * `dpm: `, for stderr) why not.
 */
export function formatMapReply(proto: string, port: string, res: MapReply): string {
  if (res.result === "ok" && res.deleted) return `${proto} ${res.local}: mapping deleted`;
  if (res.result === "ok") {
    return `${proto} ${res.public} -> ${res.local} (every remote; expires in ${res.expiresIn}s)`;
  }
  if (res.result === "not-yours") {
    return `dpm: map ${proto} ${port} refused, not yours: ${res.error ?? ""}`;
  }
  return `dpm: map ${proto} ${res.local ?? port}: ${res.result}${
    res.error ? ` (${res.error})` : ""
  }`;
}
