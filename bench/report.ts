/**
 * The shape of a benchmark result (bench/results/latest.json) and its
 * Markdown table: every dpm figure beside the kernel's (iptables MASQUERADE),
 * the ratio, and the project's targets marked met or not met.
 *
 * @module
 */

import type { Percentiles, SessionProbe, TcpRun, UdpRun } from "./measure.ts";

/** CPU spent during one UDP flood. */
export interface CpuRun {
  /** Delivered packets the CPU time is divided by. */
  packets: number;
  /** dpm server process (all threads), microseconds per delivered packet; null for the kernel. */
  serverUsPerPacket: number | null;
  /** dpm driver process on the sending host, microseconds per delivered packet. */
  driverUsPerPacket: number | null;
  /** Both dpm processes. */
  dpmUsPerPacket: number | null;
  /** Whole machine (sender, receiver, softirq, dpm), microseconds per delivered packet. */
  machineUsPerPacket: number;
  /** Whole-machine utilisation during the run, per cent of all cores. */
  machineBusyPct: number;
  /**
   * Packets the netfilter queues dropped during the flood (queue full or
   * netlink socket full), on the driver's host and on the gateway; null for the kernel.
   */
  queueDrops: { driver: number; server: number } | null;
}

/** Everything one mode (dpm or kernel) measured, medians over rounds plus the raw runs. */
export interface ModeResult {
  udp: {
    size: number;
    pps: number;
    sentPps: number;
    lossPct: number;
    /** Of the loss, per cent of sent datagrams dropped at the receiver's full socket. */
    receiverLossPct: number;
    runs: UdpRun[];
  }[];
  tcp: { mbps: number; runs: TcpRun[] };
  /**
   * Kernel only: the same TCP stream with TSO, GSO and GRO off on h1's eth0,
   * so that the kernel too forwards MTU-sized packets one by one (null when
   * ethtool is missing, and for dpm).
   */
  tcpNoOffload: { mbps: number; runs: TcpRun[] } | null;
  /** Steady-state UDP round trip through the path (ping-pong). */
  rtt: { p50Us: number; p99Us: number; runs: (Percentiles & { lost: number })[] };
  /** CPU during the 64-byte flood (median over rounds). */
  cpu: CpuRun & { runs: CpuRun[] };
  /** New sessions: first-packet round trip, second-packet round trip, difference. */
  sessions: {
    firstP50Us: number;
    firstP99Us: number;
    secondP50Us: number;
    secondP99Us: number;
    setupP50Us: number;
    setupP99Us: number;
    lost: number;
    runs: SessionProbe[];
  };
}

/** The reservation load test. */
export interface ReserveResult {
  /** OK answers per second, all requesters together. */
  perSec: number;
  answersPerSec: number;
  ok: number;
  timeouts: number;
  seconds: number;
  hosts: number;
  sockets: number;
  windowPerSocket: number;
  /** Server CPU seconds during the run per OK reservation, microseconds. */
  serverUsPerReservation: number | null;
  /** Sessions in the table afterwards. */
  tableSessions: number | null;
  latencyP50Ms: number | null;
  latencyP99Ms: number | null;
  serverFlags: string[];
  perHost: Record<string, unknown>[];
}

/** One row of bench/table_bench.ts --json. */
import type { Row as TableRow } from "./table_bench.ts";
export type { TableRow };

/** A target and whether this run met it. */
export interface Target {
  name: string;
  target: string;
  value: string;
  met: boolean | null;
}

/** bench/results/latest.json. */
export interface BenchResult {
  bench: "dpm";
  smoke: boolean;
  env: Record<string, string | number | null>;
  config: Record<string, unknown>;
  dataPlane: { dpm: ModeResult; kernel: ModeResult };
  reservations: ReserveResult;
  table: { quick: boolean; gc: boolean; rows: TableRow[] };
  targets: Target[];
  elapsedSeconds: number;
}

const int = (v: number | null | undefined) =>
  v === null || v === undefined || !Number.isFinite(v)
    ? "n/a"
    : Math.round(v).toLocaleString("en-US");
const dec = (v: number | null | undefined, d = 1) =>
  v === null || v === undefined || !Number.isFinite(v) ? "n/a" : v.toFixed(d);
const pct = (a: number, b: number) => (b > 0 ? `${((100 * a) / b).toFixed(0)}%` : "n/a");

/** The targets of the task, evaluated on a result. */
export function evaluateTargets(r: Omit<BenchResult, "targets">): Target[] {
  const d = r.dataPlane.dpm;
  const k = r.dataPlane.kernel;
  const u64 = (m: ModeResult) => m.udp.find((u) => u.size === 64)?.pps ?? NaN;
  const big = r.table.rows.reduce<TableRow | null>(
    (a, x) => (a === null || x.sessions > a.sessions ? x : a),
    null,
  );
  const at1M = big !== null && big.sessions >= 900_000;
  return [
    {
      name: "UDP 64 B packets/s vs MASQUERADE",
      target: ">= 50%",
      value: pct(u64(d), u64(k)),
      met: u64(d) >= 0.5 * u64(k),
    },
    {
      name: "TCP throughput vs MASQUERADE",
      target: ">= 60%",
      value: pct(d.tcp.mbps, k.tcp.mbps),
      met: d.tcp.mbps >= 0.6 * k.tcp.mbps,
    },
    {
      name: "Reservations per second, one server",
      target: ">= 20,000/s",
      value: `${int(r.reservations.perSec)}/s`,
      met: r.reservations.perSec >= 20_000,
    },
    {
      name: at1M
        ? "Table bytes per session at 1M"
        : `Table bytes per session (${big?.sessions ?? 0})`,
      target: "<= 150 B at 1M",
      value: big ? `${big.bytesPerSession} B` : "n/a",
      met: at1M && big ? big.bytesPerSession <= 150 : null,
    },
    {
      name: "Session setup p50 (first minus steady RTT)",
      target: "< 1 ms",
      value: `${dec(d.sessions.setupP50Us / 1000, 3)} ms`,
      met: d.sessions.setupP50Us < 1000,
    },
  ];
}

const met = (m: boolean | null) => (m === null ? "not measured" : m ? "met" : "NOT met");

/** The Markdown report: one comparison table, the targets, the table bench. */
export function markdown(r: BenchResult): string {
  const d = r.dataPlane.dpm;
  const k = r.dataPlane.kernel;
  const L: string[] = [];
  const row = (...c: string[]) => L.push(`| ${c.join(" | ")} |`);
  const tgt = (name: string) => {
    const t = r.targets.find((x) => x.name.startsWith(name));
    return t ? [t.target, met(t.met)] : ["", ""];
  };
  L.push(
    `# dpm benchmark${r.smoke ? " (smoke: tiny durations, not representative)" : ""}`,
    "",
    `${r.env.date}; kernel ${r.env.kernel}; ${r.env.cpu} × ${r.env.cores}; Deno ${r.env.deno}; ` +
      `${r.env.iperf3}. Median of ${r.config.rounds} round(s), ${r.config.seconds} s per flood. ` +
      `Kernel = iptables MASQUERADE on the gateway, no dpm running.`,
    "",
    "| measure | dpm | kernel (MASQUERADE) | dpm / kernel | target | met |",
    "|---|---:|---:|---:|---|---|",
  );
  for (const u of d.udp) {
    const ku = k.udp.find((x) => x.size === u.size)!;
    const [t, m] = u.size === 64 ? tgt("UDP 64 B") : ["", ""];
    row(
      `UDP ${u.size} B delivered packets/s (loss; of it at the receiver)`,
      `${int(u.pps)} (${dec(u.lossPct)}%; ${dec(u.receiverLossPct)}%)`,
      `${int(ku.pps)} (${dec(ku.lossPct)}%; ${dec(ku.receiverLossPct)}%)`,
      pct(u.pps, ku.pps),
      t!,
      m!,
    );
  }
  row(
    "TCP throughput, Mbit/s",
    int(d.tcp.mbps),
    int(k.tcp.mbps),
    pct(d.tcp.mbps, k.tcp.mbps),
    ...tgt("TCP") as [string, string],
  );
  if (k.tcpNoOffload) {
    row(
      "TCP vs kernel with TSO/GSO/GRO off on h1, Mbit/s",
      int(d.tcp.mbps),
      int(k.tcpNoOffload.mbps),
      pct(d.tcp.mbps, k.tcpNoOffload.mbps),
      "(context)",
      "",
    );
  }
  row(
    "UDP round trip p50 / p99, µs",
    `${dec(d.rtt.p50Us)} / ${dec(d.rtt.p99Us)}`,
    `${dec(k.rtt.p50Us)} / ${dec(k.rtt.p99Us)}`,
    `+${dec(d.rtt.p50Us - k.rtt.p50Us)} / +${dec(d.rtt.p99Us - k.rtt.p99Us)} µs added`,
    "",
    "",
  );
  row(
    "CPU per 64 B packet, dpm server + driver, µs",
    `${dec(d.cpu.dpmUsPerPacket, 2)} (${dec(d.cpu.serverUsPerPacket, 2)} + ${
      dec(d.cpu.driverUsPerPacket, 2)
    })`,
    "n/a (in softirq)",
    "",
    "",
    "",
  );
  if (d.cpu.queueDrops) {
    row(
      "64 B flood: packets dropped by the netfilter queues (driver / server)",
      `${int(d.cpu.queueDrops.driver)} / ${int(d.cpu.queueDrops.server)}`,
      "n/a",
      "",
      "",
      "",
    );
  }
  row(
    "Machine CPU per delivered 64 B packet, µs (busy %)",
    `${dec(d.cpu.machineUsPerPacket, 2)} (${dec(d.cpu.machineBusyPct, 0)}%)`,
    `${dec(k.cpu.machineUsPerPacket, 2)} (${dec(k.cpu.machineBusyPct, 0)}%)`,
    pct(d.cpu.machineUsPerPacket, k.cpu.machineUsPerPacket),
    "",
    "",
  );
  row(
    "New session: first-packet RTT p50 / p99, µs",
    `${dec(d.sessions.firstP50Us)} / ${dec(d.sessions.firstP99Us)}`,
    `${dec(k.sessions.firstP50Us)} / ${dec(k.sessions.firstP99Us)}`,
    "",
    "",
    "",
  );
  row(
    "New session: second-packet RTT p50 / p99, µs",
    `${dec(d.sessions.secondP50Us)} / ${dec(d.sessions.secondP99Us)}`,
    `${dec(k.sessions.secondP50Us)} / ${dec(k.sessions.secondP99Us)}`,
    "",
    "",
    "",
  );
  row(
    "Session setup (first − second RTT) p50 / p99, µs",
    `${dec(d.sessions.setupP50Us)} / ${dec(d.sessions.setupP99Us)}`,
    `${dec(k.sessions.setupP50Us)} / ${dec(k.sessions.setupP99Us)}`,
    "",
    ...tgt("Session setup") as [string, string],
  );
  const rv = r.reservations;
  row(
    `Reservations/s, one server (${rv.hosts} hosts × ${
      rv.sockets / rv.hosts
    } sockets × ${rv.windowPerSocket} outstanding)`,
    `${int(rv.perSec)} (p50 ${dec(rv.latencyP50Ms, 2)} ms, server ${
      dec(rv.serverUsPerReservation, 1)
    } µs CPU each)`,
    "n/a",
    "",
    ...tgt("Reservations") as [string, string],
  );
  const rows = r.table.rows;
  const big = rows[rows.length - 1];
  if (big) {
    row(
      `Table bytes/session at ${int(big.sessions)}`,
      `${big.bytesPerSession}`,
      "n/a",
      "",
      ...tgt("Table bytes") as [string, string],
    );
  }
  L.push(
    "",
    "Session table (bench/table_bench.ts" + (r.table.quick ? " --quick" : "") + "):",
    "",
    "| sessions | bytes/session | reserve/s | lookupPublic/s | lookupLan/s | full sweep, none expired | full sweep, 10% expired | 4096-slot step, all expired |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const t of rows) {
    L.push(
      `| ${int(t.sessions)} | ${t.bytesPerSession} | ${int(t.reservePerSec)} | ${
        int(t.lookupPublicPerSec)
      } | ${int(t.lookupLanPerSec)} | ${dec(t.sweepNoneExpiredMs, 2)} ms | ${
        dec(t.sweepTenthExpiredMs, 2)
      } ms | ${dec(t.sweepStep4096AllExpiredMs, 2)} ms |`,
    );
  }
  L.push("", "Targets:", "");
  for (const t of r.targets) L.push(`- ${t.name}: ${t.value} (target ${t.target}) — ${met(t.met)}`);
  L.push(
    "",
    `Reservation load: server started with ${rv.serverFlags.join(" ")} (the default per-host ` +
      "rate limit of 2000/s and quota of 4096 sessions would refuse the load generator).",
    "",
  );
  return L.join("\n");
}
