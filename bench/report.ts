/**
 * The shape of a benchmark result (bench/results/latest.json) and its
 * Markdown table: the figures of dpm's three data paths (`--datapath bpf`:
 * tc programs translate established sessions; `--datapath kernel`:
 * nftables maps, conntrack translates; `--datapath queue`: every packet
 * through user space) beside the kernel's own NAT (iptables MASQUERADE),
 * the ratios, and the targets (of the bpf path, issue 19, and of the
 * kernel path) marked met or not met.
 *
 * @module
 */

import type { BurstProbe, Percentiles, SessionProbe, TcpRun, UdpRun } from "./measure.ts";
import type { DriverMemory } from "./driver_memory.ts";
export type { DriverMemory };
import type { FloodResult } from "./flood.ts";
export type { FloodResult };

/** CPU spent during one UDP flood. */
export interface CpuRun {
  /** Delivered packets the CPU time is divided by. */
  packets: number;
  /** dpm server process (all threads), microseconds per delivered packet; null for MASQUERADE. */
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
   * The sending iperf3's CPU per sent packet, µs (bench/measure.ts
   * `UdpRun.senderUsPerPacket`: with the forwarding its context runs); null
   * when iperf3 gave none. A figure other load on the machine barely moves.
   */
  senderUsPerPacket: number | null;
  /**
   * Packets the netfilter queues dropped during the flood (queue full or
   * netlink socket full), on the driver's host and on the gateway; null for MASQUERADE.
   */
  queueDrops: { driver: number; server: number } | null;
}

/**
 * A burst of new sessions opened at once from one host (bench/measure.ts
 * `burstSessions`, UDP; `tcpBurstSessions`, TCP connects): medians over
 * rounds of each round's per-session first round trip, and counts summed
 * over rounds.
 */
export interface BurstResult {
  /** Sessions opened at once, per round. */
  sessions: number;
  rounds: number;
  firstP50Us: number;
  firstP99Us: number;
  /** The slowest session's first round trip: until every session had its first reply. */
  firstMaxUs: number;
  /** From the burst's first send to the last first reply (null: a session never got one). */
  allUs: number | null;
  /** Sessions never answered, all rounds. */
  unanswered: number;
  /**
   * First datagrams lost, all rounds: UDP sessions that had to resend
   * (every 2 s) before their first reply; TCP: SYNs the host's kernel
   * retransmitted. Target 0.
   */
  resent: number;
  /**
   * dpm, all rounds: sessions the peer saw from another pair than the public
   * pair the driver reports (e.g. the gateway's MASQUERADE), plus those never
   * answered; null for MASQUERADE. Target 0.
   */
  untranslated: number | null;
  /** Per round, with the driver's fellBack and untranslated counters after it (dpm). */
  runs: (BurstProbe & { fellBack: number | null; driverUntranslated: number | null })[];
}

/** The modes every round measures. */
export type Mode = "masquerade" | "queue" | "kernel" | "bpf";
/** dpm's data paths. */
export type DataPath = "queue" | "kernel" | "bpf";
/** The data paths, in the order each round measures them. */
export const DATA_PATHS: readonly DataPath[] = ["queue", "kernel", "bpf"];

/** Everything one mode measured, medians over rounds plus the raw runs. */
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
   * MASQUERADE only: the same TCP stream with TSO, GSO and GRO off on h1's
   * eth0, so that the kernel too forwards MTU-sized packets one by one (null
   * when ethtool is missing, and for dpm).
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
  /** Bursts of new UDP sessions at once, one per size (`config.bursts`). */
  bursts: BurstResult[];
  /** A burst of TCP connects at once (`config.tcpBurst`). */
  tcpBurst: BurstResult;
}

/** The reservation load test against one server. */
export interface ReserveResult {
  /** `--datapath` of the server. */
  datapath: DataPath;
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

/** Growth of the kernel's memory between two snapshots (bench/measure.ts `kernelGrowth`). */
export interface KernelGrowth {
  /** Growth of slab objects in use (/proc/slabinfo active_objs × objsize), caches that grew. */
  slabBytes: number;
  /** Net growth over all caches (others may shrink meanwhile), for reference. */
  netSlabBytes: number;
  /** Slab pages (/proc/meminfo Slab), for reference; not in totalBytes. */
  slabPagesBytes: number;
  vmallocBytes: number;
  percpuBytes: number;
  totalBytes: number;
  topCaches: { name: string; bytes: number }[];
}

/** Memory after filling one server's table to a size with reservations. */
export interface MemoryPoint {
  datapath: DataPath;
  /** Sessions in the server's table (dpm status). */
  sessions: number;
  /** Seconds the fill from the previous point took, and its rate. */
  fillSeconds: number;
  fillPerSec: number;
  /** Growth of the server process's RSS since before the first reservation. */
  dpmRssBytes: number;
  /** Growth of the kernel's slab + vmalloc + per-CPU memory since then. */
  kernel: KernelGrowth;
  /**
   * Kernel memory the server allocated at start, before the first
   * reservation, for the sessions to come (the bpf path's session map hash
   * buckets: 16 B per entry, its size rounded up to a power of two), so
   * not in `kernel`; counted in the per-session figures. 0 on the others.
   */
  preallocBytes: number;
  dpmBytesPerSession: number;
  kernelBytesPerSession: number;
  totalBytesPerSession: number;
}

/** Kernel memory of conntrack entries made through MASQUERADE (one UDP datagram per flow). */
export interface ConntrackPoint {
  /** Conntrack entries the datagrams created (conntrack -C in every namespace, after − before). */
  entries: number;
  kernel: KernelGrowth;
  bytesPerEntry: number;
}

/** The memory section. */
export interface MemoryResult {
  bpf: MemoryPoint[];
  kernel: MemoryPoint[];
  queue: MemoryPoint[];
  conntrack: ConntrackPoint[];
  /** Pool and flags of the filled servers. */
  pool: string;
  serverFlags: string[];
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
  dataPlane: Record<Mode, ModeResult>;
  reservations: Record<DataPath, ReserveResult>;
  /**
   * Reservations/s of one server with 1 and 2 workers (`--workers`, kernel
   * and bpf paths, programming the maps), in the same run, each 2-worker
   * run right after its 1-worker run (`result.datapath` names the path);
   * absent in older results.
   */
  reservationsByWorkers?: { workers: number; result: ReserveResult }[];
  /** bench/flood.ts per data path: an honest host's reservations alone and beside a flood. */
  flood: Record<DataPath, FloodResult>;
  memory: MemoryResult;
  table: { quick: boolean; gc: boolean; rows: TableRow[] };
  /** bench/driver_memory.ts per data path: the driver's heap per session. */
  driverMemory: Record<DataPath, DriverMemory>;
  targets: Target[];
  elapsedSeconds: number;
}

const int = (v: number | null | undefined) =>
  v === null || v === undefined || !Number.isFinite(v)
    ? "n/a"
    : Math.round(v).toLocaleString("en-US");
const dec = (v: number | null | undefined, d = 1) =>
  v === null || v === undefined || !Number.isFinite(v) ? "n/a" : v.toFixed(d);
const ratio = (
  a: number,
  b: number,
) => (b > 0 && Number.isFinite(a) ? `${(a / b).toFixed(2)}x` : "n/a");
const signed = (v: number) => (Number.isFinite(v) ? `${v >= 0 ? "+" : ""}${v.toFixed(1)}` : "n/a");

const u64 = (m: ModeResult) => m.udp.find((u) => u.size === 64)?.pps ?? NaN;

/**
 * The targets, evaluated on a result: the bpf path's (issue 19: ahead of
 * MASQUERADE; "stretch" marks the issue's further targets) and the kernel
 * path's (within a few per cent of MASQUERADE).
 */
export function evaluateTargets(r: Omit<BenchResult, "targets">): Target[] {
  const b = r.dataPlane.bpf;
  const k = r.dataPlane.kernel;
  const m = r.dataPlane.masquerade;
  const big = r.table.rows.reduce<TableRow | null>(
    (a, x) => (a === null || x.sessions > a.sessions ? x : a),
    null,
  );
  const at1M = big !== null && big.sessions >= 900_000;
  const added = k.rtt.p50Us - m.rtt.p50Us;
  const addedB = b.rtt.p50Us - m.rtt.p50Us;
  const cpuB = b.cpu.machineUsPerPacket / m.cpu.machineUsPerPacket;
  const bigB = r.memory.bpf.at(-1);
  const bigB1M = bigB !== undefined && bigB.sessions >= 900_000;
  return [
    {
      name: "bpf path UDP 64 B packets/s vs MASQUERADE",
      target: ">= 1.2x",
      value: ratio(u64(b), u64(m)),
      met: u64(b) >= 1.2 * u64(m),
    },
    {
      name: "bpf path TCP throughput vs MASQUERADE",
      target: ">= 1.05x",
      value: ratio(b.tcp.mbps, m.tcp.mbps),
      met: b.tcp.mbps >= 1.05 * m.tcp.mbps,
    },
    {
      name: "bpf path UDP 64 B packets/s vs MASQUERADE (stretch)",
      target: ">= 1.5x",
      value: ratio(u64(b), u64(m)),
      met: u64(b) >= 1.5 * u64(m),
    },
    {
      name: "bpf path TCP throughput vs MASQUERADE (stretch)",
      target: ">= 1.2x",
      value: ratio(b.tcp.mbps, m.tcp.mbps),
      met: b.tcp.mbps >= 1.2 * m.tcp.mbps,
    },
    {
      name: "bpf path machine CPU per delivered 64 B packet vs MASQUERADE (stretch)",
      target: "<= 0.7x",
      value: Number.isFinite(cpuB) ? `${cpuB.toFixed(2)}x` : "n/a",
      met: Number.isFinite(cpuB) ? cpuB <= 0.7 : null,
    },
    {
      name: "bpf path added round trip p50 (stretch)",
      target: "<= 0 µs",
      value: `${signed(addedB)} µs`,
      met: addedB <= 0,
    },
    {
      name: bigB1M
        ? "bpf path memory per session at 1M, dpm RSS + kernel (stretch)"
        : `bpf path memory per session at ${int(bigB?.sessions ?? 0)} (stretch)`,
      target: "<= 384 B at 1M",
      value: bigB ? `${int(bigB.totalBytesPerSession)} B` : "n/a",
      met: bigB1M && bigB ? bigB.totalBytesPerSession <= 384 : null,
    },
    {
      name: "Kernel path UDP 64 B packets/s vs MASQUERADE",
      target: ">= 0.95x",
      value: ratio(u64(k), u64(m)),
      met: u64(k) >= 0.95 * u64(m),
    },
    {
      name: "Kernel path TCP throughput vs MASQUERADE",
      target: ">= 0.95x",
      value: ratio(k.tcp.mbps, m.tcp.mbps),
      met: k.tcp.mbps >= 0.95 * m.tcp.mbps,
    },
    {
      name: "Kernel path added round trip p50",
      target: "<= 10 µs",
      value: `${signed(added)} µs`,
      met: added <= 10,
    },
    {
      name: "Kernel path session setup p50 / p99 (first minus second RTT)",
      target: "<= 0.2 / 1 ms",
      value: `${dec(k.sessions.setupP50Us / 1000, 3)} / ${dec(k.sessions.setupP99Us / 1000, 3)} ms`,
      met: k.sessions.setupP50Us <= 200 && k.sessions.setupP99Us <= 1000,
    },
    {
      name: "bpf path session setup p50 / p99 (first minus second RTT)",
      target: "<= 0.2 / 1 ms",
      value: `${dec(b.sessions.setupP50Us / 1000, 3)} / ${dec(b.sessions.setupP99Us / 1000, 3)} ms`,
      met: b.sessions.setupP50Us <= 200 && b.sessions.setupP99Us <= 1000,
    },
    {
      name: "Kernel path reservations per second, one server, programming the maps",
      target: ">= 50,000/s",
      value: `${int(r.reservations.kernel.perSec)}/s`,
      met: r.reservations.kernel.perSec >= 50_000,
    },
    ...(["bpf", "kernel"] as const).flatMap((dp) => {
      const w = (n: number) =>
        r.reservationsByWorkers?.find((x) => x.result.datapath === dp && x.workers === n);
      const one = w(1), two = w(2);
      if (!one || !two) return [];
      return [{
        name: `${dp} path reservations per second grow with workers (2 workers against 1)`,
        target: "more with 2 workers than with 1",
        value: `1: ${int(one.result.perSec)}/s, 2: ${int(two.result.perSec)}/s`,
        met: two.result.perSec > one.result.perSec,
      }];
    }),
    ...(["bpf", "kernel"] as const).map((dp) => {
      const f = r.flood[dp].flooded;
      return {
        name: `${dp} path: an honest host's reservations beside a flood from another host, p99`,
        target: "< 50 ms, every one answered",
        value: `${dec(f.latencyMs.p99, 1)} ms, ${int(f.answered)} of ${int(f.sent)} answered`,
        met: f.latencyMs.p99 !== null && f.latencyMs.p99 < 50 && f.answered === f.sent,
      };
    }),
    {
      name: at1M
        ? "Table bytes per session at 1M"
        : `Table bytes per session (${big?.sessions ?? 0})`,
      target: "<= 150 B at 1M",
      value: big ? `${big.bytesPerSession} B` : "n/a",
      met: at1M && big ? big.bytesPerSession <= 150 : null,
    },
    ...[...k.bursts.map((_, i) => ({ label: "UDP", pick: (x: ModeResult) => x.bursts[i] })), {
      label: "TCP",
      pick: (x: ModeResult) => x.tcpBurst,
    }].map(({ label, pick }) => burstTarget(label, pick, r)),
    {
      name: "Driver bytes per session in flight vs settled, every data path",
      target: "<= 2x",
      value: DATA_PATHS.map((dp) => {
        const d = r.driverMemory?.[dp];
        return `${d ? ratio(d.inFlightBytesPerSession, d.driverBytesPerSession) : "n/a"} (${dp})`;
      }).join(", "),
      met: DATA_PATHS.every((dp) => r.driverMemory?.[dp])
        ? DATA_PATHS.every((dp) => {
          const d = r.driverMemory[dp];
          return d.inFlightBytesPerSession <= 2 * d.driverBytesPerSession;
        })
        : null,
    },
  ];
}

/**
 * A burst's target (issue 20), on the kernel and bpf paths (the queue
 * path's figures are shown beside them, not judged): the last session's
 * first reply within 3x MASQUERADE's, no first datagram lost (none resent,
 * none unanswered), none untranslated.
 */
function burstTarget(
  label: string,
  pick: (x: ModeResult) => BurstResult | undefined,
  r: Omit<BenchResult, "targets">,
): Target {
  const m = pick(r.dataPlane.masquerade);
  const per = DATA_PATHS.map((dp) => ({ dp, x: pick(r.dataPlane[dp]) }));
  const ok = (x: BurstResult | undefined) =>
    x !== undefined && m !== undefined && x.firstMaxUs <= 3 * m.firstMaxUs && x.resent === 0 &&
    x.unanswered === 0 && x.untranslated === 0;
  return {
    name: `Burst of ${int(m?.sessions)} new ${label} sessions at once: ` +
      "slowest first reply vs MASQUERADE; first packets lost; untranslated (kernel and bpf paths)",
    target: "<= 3x; 0; 0",
    value: per.map(({ dp, x }) =>
      x
        ? `${ratio(x.firstMaxUs, m?.firstMaxUs ?? NaN)}; ${int(x.resent + x.unanswered)}; ${
          int(x.untranslated)
        } (${dp})`
        : `n/a (${dp})`
    ).join(", "),
    met: m === undefined || per.some(({ x }) => x === undefined || x.untranslated === null)
      ? null
      : per.every(({ dp, x }) => dp === "queue" || ok(x)),
  };
}

const met = (m: boolean | null) => (m === null ? "not measured" : m ? "met" : "NOT met");

/**
 * Each round's ratio to MASQUERADE of the same round (64 B packets/s, TCP,
 * machine CPU per 64 B packet), per data path, with their median and
 * range: on a shared machine the spread says how far a median ratio holds.
 */
function perRound(r: BenchResult): string[] {
  const m = r.dataPlane.masquerade;
  const paired = (x: ModeResult, f: (y: ModeResult, i: number) => number | undefined) =>
    m.tcp.runs.map((_, i) => {
      const a = f(x, i), b = f(m, i);
      return a !== undefined && b !== undefined && b > 0 ? a / b : null;
    }).filter((v): v is number => v !== null);
  const cell = (v: number[]) =>
    v.length === 0
      ? "n/a"
      : `${v.map((x) => x.toFixed(2)).join(", ")} (median ${
        [...v].sort((a, b) => a - b)[Math.floor((v.length - 1) / 2)]!.toFixed(2)
      }, ${Math.min(...v).toFixed(2)}-${Math.max(...v).toFixed(2)})`;
  const L = [
    "",
    "Per round, each mode against MASQUERADE of the same round (median, range):",
    "",
    "| data path | UDP 64 B packets/s | TCP | machine CPU per 64 B packet | sender's CPU per 64 B packet |",
    "|---|---|---|---|---|",
  ];
  for (const dp of ["bpf", "kernel", "queue"] as const) {
    const x = r.dataPlane[dp];
    L.push(
      `| ${dp} | ${cell(paired(x, (y, i) => y.udp.find((u) => u.size === 64)?.runs[i]?.pps))} | ${
        cell(paired(x, (y, i) => y.tcp.runs[i]?.mbps))
      } | ${cell(paired(x, (y, i) => y.cpu.runs[i]?.machineUsPerPacket))} | ${
        cell(paired(x, (y, i) => y.cpu.runs[i]?.senderUsPerPacket ?? undefined))
      } |`,
    );
  }
  return L;
}

/** The Markdown report: one comparison table, the targets, memory, the table bench. */
export function markdown(r: BenchResult): string {
  const b = r.dataPlane.bpf;
  const k = r.dataPlane.kernel;
  const q = r.dataPlane.queue;
  const m = r.dataPlane.masquerade;
  const L: string[] = [];
  const row = (...c: string[]) => L.push(`| ${c.join(" | ")} |`);
  const tgt = (...names: string[]): [string, string] => {
    const ts = names.map((n) => r.targets.find((x) => x.name.startsWith(n)));
    if (ts.every((t) => t === undefined)) return ["", ""];
    return [
      ts.map((t) => t?.target ?? "").join("; "),
      ts.map((t) => (t ? met(t.met) : "")).join("; "),
    ];
  };
  /** A row with the four modes, the three ratios to MASQUERADE, the targets (bpf; kernel). */
  const row4 = (
    what: string,
    f: (x: ModeResult) => string,
    ratios: [string, string, string] = ["", "", ""],
    target: [string, string] = ["", ""],
  ) => row(what, f(b), f(k), f(q), f(m), ...ratios, target[0], target[1]);
  const ratios = (f: (x: ModeResult) => number): [string, string, string] => [
    ratio(f(b), f(m)),
    ratio(f(k), f(m)),
    ratio(f(q), f(m)),
  ];
  L.push(
    `# dpm benchmark${r.smoke ? " (smoke: tiny durations, not representative)" : ""}`,
    "",
    `${r.env.date}; kernel ${r.env.kernel}; ${r.env.cpu} × ${r.env.cores}; Deno ${r.env.deno}; ` +
      `${r.env.iperf3}. Median of ${r.config.rounds} round(s), ${r.config.seconds} s per flood; ` +
      "each round measures MASQUERADE, then dpm `--datapath queue`, `--datapath kernel` and " +
      "`--datapath bpf`. MASQUERADE = iptables MASQUERADE on the gateway, no dpm running. " +
      "Targets: the bpf path's first, then the kernel path's (`target (bpf; kernel)`).",
    "",
    "| measure | dpm bpf | dpm kernel | dpm queue | MASQUERADE | bpf / MASQ | kernel / MASQ | queue / MASQ | target (bpf; kernel) | met |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
  );
  for (const u of m.udp) {
    const at = (x: ModeResult) => x.udp.find((y) => y.size === u.size)!;
    row4(
      `UDP ${u.size} B delivered packets/s (loss; of it at the receiver)`,
      (x) => `${int(at(x).pps)} (${dec(at(x).lossPct)}%; ${dec(at(x).receiverLossPct)}%)`,
      ratios((x) => at(x).pps),
      u.size === 64 ? tgt("bpf path UDP 64 B packets/s vs MASQUERADE", "Kernel path UDP 64 B") : [
        "",
        "",
      ],
    );
  }
  row4(
    "TCP throughput, Mbit/s",
    (x) => int(x.tcp.mbps),
    ratios((x) => x.tcp.mbps),
    tgt("bpf path TCP throughput vs MASQUERADE", "Kernel path TCP"),
  );
  if (m.tcpNoOffload) {
    const no = m.tcpNoOffload.mbps;
    row(
      "TCP, MASQUERADE with TSO/GSO/GRO off on h1 (context), Mbit/s",
      "",
      "",
      "",
      int(no),
      ratio(b.tcp.mbps, no),
      ratio(k.tcp.mbps, no),
      ratio(q.tcp.mbps, no),
      "",
      "",
    );
  }
  row4(
    "UDP round trip p50 / p99, µs",
    (x) => `${dec(x.rtt.p50Us)} / ${dec(x.rtt.p99Us)}`,
  );
  const addedRtt = (x: ModeResult) =>
    `${signed(x.rtt.p50Us - m.rtt.p50Us)} / ${signed(x.rtt.p99Us - m.rtt.p99Us)}`;
  row(
    "Added round trip vs MASQUERADE p50 / p99, µs",
    addedRtt(b),
    addedRtt(k),
    addedRtt(q),
    "0",
    "",
    "",
    "",
    ...tgt("bpf path added round trip", "Kernel path added round trip"),
  );
  const dpmCpu = (x: ModeResult) =>
    x.cpu.dpmUsPerPacket === null
      ? "n/a (no dpm)"
      : `${dec(x.cpu.dpmUsPerPacket, 2)} (${dec(x.cpu.serverUsPerPacket, 2)} + ${
        dec(x.cpu.driverUsPerPacket, 2)
      })`;
  row4("CPU of the dpm processes per 64 B packet, server + driver, µs", dpmCpu);
  row4(
    "Machine CPU per delivered 64 B packet, µs (busy %)",
    (x) => `${dec(x.cpu.machineUsPerPacket, 2)} (${dec(x.cpu.machineBusyPct, 0)}%)`,
    ratios((x) => x.cpu.machineUsPerPacket),
    tgt("bpf path machine CPU"),
  );
  if ([b, k, q, m].every((x) => x.cpu.senderUsPerPacket !== null)) {
    row4(
      "Sender's CPU per sent 64 B packet (iperf3 -c with the forwarding its context runs), µs",
      (x) => dec(x.cpu.senderUsPerPacket, 2),
      ratios((x) => x.cpu.senderUsPerPacket!),
    );
  }
  row4(
    "64 B flood: packets dropped by the netfilter queues (driver / server)",
    (x) =>
      x.cpu.queueDrops
        ? `${int(x.cpu.queueDrops.driver)} / ${int(x.cpu.queueDrops.server)}`
        : "n/a",
  );
  row4(
    "New session: first-packet RTT p50 / p99, µs",
    (x) => `${dec(x.sessions.firstP50Us)} / ${dec(x.sessions.firstP99Us)}`,
  );
  row4(
    "New session: second-packet RTT p50 / p99, µs",
    (x) => `${dec(x.sessions.secondP50Us)} / ${dec(x.sessions.secondP99Us)}`,
  );
  row4(
    "Session setup (first − second RTT) p50 / p99, µs",
    (x) => `${dec(x.sessions.setupP50Us)} / ${dec(x.sessions.setupP99Us)}`,
    ["", "", ""],
    tgt("bpf path session setup", "Kernel path session setup"),
  );
  const ms = (v: number | null) => dec(v === null ? null : v / 1000, 1);
  const burstRows = (label: string, pick: (x: ModeResult) => BurstResult | undefined) => {
    const mb = pick(m);
    if (!mb || !pick(b) || !pick(k) || !pick(q)) return;
    const name = `Burst of ${int(mb.sessions)} new ${label} sessions at once`;
    row4(
      `${name} from one host: first reply p50 / p99 / max, ms`,
      (x) => {
        const y = pick(x)!;
        return `${ms(y.firstP50Us)} / ${ms(y.firstP99Us)} / ${ms(y.firstMaxUs)}`;
      },
      ratios((x) => pick(x)!.firstMaxUs),
      tgt(name),
    );
    row4(
      `${name}: first packets lost (${
        label === "UDP" ? "resent" : "SYNs retransmitted"
      }) / unanswered / untranslated, of ${int(mb.sessions * mb.rounds)}`,
      (x) => {
        const y = pick(x)!;
        return `${int(y.resent)} / ${int(y.unanswered)} / ${
          y.untranslated === null ? "n/a" : int(y.untranslated)
        }`;
      },
    );
  };
  m.bursts.forEach((_, i) => burstRows("UDP", (x) => x.bursts[i]));
  burstRows("TCP", (x) => x.tcpBurst);
  const rv = (x: ReserveResult) =>
    `${int(x.perSec)} (p50 ${dec(x.latencyP50Ms, 2)} ms, server ${
      dec(x.serverUsPerReservation, 1)
    } µs CPU each)`;
  const rk = r.reservations.kernel;
  row(
    `Reservations/s, one server (${rk.hosts} hosts × ${
      rk.sockets / rk.hosts
    } sockets × ${rk.windowPerSocket} outstanding)`,
    rv(r.reservations.bpf),
    rv(rk),
    rv(r.reservations.queue),
    "n/a",
    "",
    "",
    "",
    ...tgt("Kernel path reservations per second, one server"),
  );
  if (r.reservationsByWorkers?.length) {
    const byWorkers = (dp: DataPath) =>
      r.reservationsByWorkers!.filter((w) => w.result.datapath === dp)
        .map((w) => `${w.workers} worker(s): ${rv(w.result)}`).join("; ") || "n/a";
    row(
      "Reservations/s with 1 and 2 workers (`--workers`)",
      byWorkers("bpf"),
      byWorkers("kernel"),
      "n/a (not with --workers)",
      "n/a",
      "",
      "",
      "",
      ...tgt("bpf path reservations per second grow", "kernel path reservations per second grow"),
    );
  }
  const fl = r.flood;
  const fk = fl.kernel;
  const probe = (x: FloodResult["quiet"]) =>
    `${dec(x.latencyMs.p50, 2)} / ${dec(x.latencyMs.p99, 1)} / ${dec(x.latencyMs.max, 1)} (${
      int(x.answered)
    } of ${int(x.sent)})`;
  row(
    `Honest host's reservations alone (h1, ${int(fk.honestRate)}/s for ${fk.seconds} s): ` +
      "p50 / p99 / max ms (answered of sent)",
    probe(fl.bpf.quiet),
    probe(fk.quiet),
    probe(fl.queue.quiet),
    "n/a",
    "",
    "",
    "",
    "",
    "",
  );
  row(
    `... beside a flood from h2 (${
      fk.source === "forged" ? "forged in h3's name" : "in its own name"
    }, cookie-less version-2 requests; sent/s bpf ${int(fl.bpf.floodPerSec)}, kernel ${
      int(fk.floodPerSec)
    }, queue ${int(fl.queue.floodPerSec)})`,
    probe(fl.bpf.flooded),
    probe(fk.flooded),
    probe(fl.queue.flooded),
    "n/a",
    "",
    "",
    "",
    ...tgt("bpf path: an honest host", "kernel path: an honest host"),
  );
  const mem = r.memory;
  for (const pk of mem.kernel) {
    const near = (xs: MemoryPoint[]) =>
      xs.find((x) => x.sessions >= 0.9 * pk.sessions && x.sessions <= 1.1 * pk.sessions);
    const cell = (p: MemoryPoint | undefined) =>
      p
        ? `${int(p.totalBytesPerSession)} (${int(p.dpmBytesPerSession)} + ${
          int(p.kernelBytesPerSession)
        })`
        : "n/a";
    const ct = mem.conntrack.length ? mem.conntrack[mem.conntrack.length - 1]! : null;
    const pb = near(mem.bpf);
    row(
      `Memory per session at ${int(pk.sessions)} sessions (dpm RSS + kernel), bytes`,
      cell(pb),
      cell(pk),
      cell(near(mem.queue)),
      ct ? `${int(ct.bytesPerEntry)} per conntrack` : "n/a",
      "",
      "",
      "",
      ...(pb === mem.bpf.at(-1) ? tgt("bpf path memory per session") : ["", ""]),
    );
  }
  const dm = r.driverMemory;
  if (dm?.kernel && dm.queue && dm.bpf) {
    const f = (x: DriverMemory) =>
      `${int(x.driverBytesPerSession)} / ${int(x.inFlightBytesPerSession)}`;
    row(
      `Driver bytes/session (settled / in flight), ${
        int(dm.kernel.sessions)
      } sessions (bench/driver_memory.ts)`,
      f(dm.bpf),
      f(dm.kernel),
      f(dm.queue),
      "n/a",
      "",
      "",
      "",
      ...tgt("Driver bytes per session in flight"),
    );
  }
  const rows = r.table.rows;
  const big = rows[rows.length - 1];
  if (big) {
    row(
      `Table bytes/session at ${int(big.sessions)} (bench/table_bench.ts)`,
      `${big.bytesPerSession}`,
      `${big.bytesPerSession}`,
      `${big.bytesPerSession}`,
      "n/a",
      "",
      "",
      "",
      ...tgt("Table bytes"),
    );
  }
  L.push("", "Targets (bpf path: issue 19; kernel path):", "");
  for (const t of r.targets) L.push(`- ${t.name}: ${t.value} (target ${t.target}) — ${met(t.met)}`);
  L.push(...perRound(r));

  L.push(
    "",
    "Memory (one server filled with reservations through the real control protocol; " +
      "kernel = growth of the slab caches that grew (objects in use, /proc/slabinfo) + VmallocUsed + Percpu, machine-wide; " +
      "dpm = growth of the server's VmRSS):",
    "",
    "| data path | sessions | fill rate, /s | dpm RSS growth | kernel growth (+ at start) | dpm B/session | kernel B/session | total B/session | largest slab growth |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
  );
  const mb = (b: number) => `${dec(b / 1048576, 1)} MiB`;
  const caches = (g: KernelGrowth) =>
    g.topCaches.slice(0, 3).map((c) => `${c.name} ${mb(c.bytes)}`).join(", ");
  for (const p of [...mem.bpf, ...mem.kernel, ...mem.queue]) {
    L.push(
      `| ${p.datapath} | ${int(p.sessions)} | ${int(p.fillPerSec)} | ${mb(p.dpmRssBytes)} | ${
        mb(p.kernel.totalBytes)
      }${p.preallocBytes ? ` (+ ${mb(p.preallocBytes)})` : ""} | ${int(p.dpmBytesPerSession)} | ${
        int(p.kernelBytesPerSession)
      } | ${int(p.totalBytesPerSession)} | ${caches(p.kernel)} |`,
    );
  }
  for (const c of mem.conntrack) {
    L.push(
      `| MASQUERADE (conntrack only) | ${int(c.entries)} conntracks | | n/a | ${
        mb(c.kernel.totalBytes)
      } | 0 | ${int(c.bytesPerEntry)} | ${int(c.bytesPerEntry)} | ${caches(c.kernel)} |`,
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
  L.push(
    "",
    `Reservation load and memory fill: servers started with ${rk.serverFlags.join(" ")} ` +
      "(the default per-host rate limit of 2000/s and quota of 4096 sessions would refuse the " +
      "load generator) and real --lan-if/--wan-if, so on the kernel and bpf paths every grant " +
      "also adds two nft map elements over netlink (and, on the bpf path, two BPF map entries). " +
      `Memory fill pool: ${mem.pool}; the bpf server's map sized for the largest fill ` +
      "(`--bpf-sessions`), its hash buckets allocated at start (+ in the kernel growth column).",
    "",
  );
  return L.join("\n");
}
