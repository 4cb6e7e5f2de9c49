/**
 * `deno task bench` (as root): both dpm data paths against the kernel's own
 * NAT on one namespace topology (testing/topology.ts), in one run.
 *
 * ```
 *  h1 10.0.0.11 ─┐ (dpm driver on h1)                                       ┌ p1 198.51.100.10
 *  h2 10.0.0.12 ─┼─ gw lan0 10.0.0.1 | wan0 203.0.113.1 ── rt (1 hop) ──────┘ (iperf3 -s, UDP echo)
 *  h3 10.0.0.13 ─┘  dpm server, or iptables MASQUERADE (the reference)
 * ```
 *
 * Each round measures four modes one after the other, so that a noisy
 * neighbour affects all alike: MASQUERADE (the rule on the gateway, no dpm
 * process anywhere), dpm `--datapath queue`, `--datapath kernel` and
 * `--datapath bpf` (server on the gateway, driver on h1; the kernel and bpf
 * paths are removed with `--cleanup` after their round, since they keep
 * translating after SIGTERM, and conntrack is flushed between modes). The
 * report gives the median of the rounds:
 *
 * - UDP floods h1 -> p1 (`iperf3 -u -b 0 -l 64|512|1400`): packets/s the
 *   receiver got, loss; CPU time of the dpm processes and of the machine per
 *   delivered packet (/proc);
 * - one TCP stream (`iperf3`): receiver goodput;
 * - UDP ping-pong round trips (python3, one datagram in flight): p50/p99;
 * - new sessions: a fresh socket's first round trip against its second;
 * - bursts of new sessions at once from one host (1,500 from h2 and 3,000
 *   from h3, smoke 200 from h2; each host that bursts runs a driver and
 *   opened one session first, so it holds the server's cookie), each a
 *   fresh socket sending its first datagram to p1's `udpEcho`
 *   (testing/apps.ts, which answers with the source it saw) in the same
 *   loop and again every 2 s until answered: per-session first round trip
 *   p50/p99/max, the sessions whose first datagram was lost (they had to
 *   send again), and for dpm the sessions that went out untranslated (the
 *   peer saw another pair than the public pair the driver reports for them,
 *   or nothing came back);
 * - a burst of 1,000 TCP connects at once from h2 (smoke 100) to p1's
 *   `tcpSeen`: connect() to established p50/p99/max, the SYNs h2's kernel
 *   had to retransmit, and for dpm the connections untranslated;
 *
 * Then, on each data path, one server (`--rate-limit 1000000
 * --max-sessions-per-host 1048576`, real --lan-if/--wan-if: on the kernel
 * and bpf paths every grant adds two nft map elements, and on the bpf path
 * two BPF map entries) takes reservations from
 * bench/reserve_load.ts on three hosts at once; on each data path a server
 * with dpm's default limits serves an honest host's new sessions (h1, 200/s)
 * alone and then beside a raw-socket flood of cookie-less requests from h2
 * forged in h3's name (bench/flood.ts); one server per data path is
 * filled to 100k and 1M sessions (smoke: a few thousand) while its RSS and
 * the kernel's slab/vmalloc memory are read; conntrack entries made through
 * MASQUERADE are measured the same way; bench/table_bench.ts measures the
 * session table alone; and bench/driver_memory.ts (one process per data
 * path) the driver's heap per session, settled and while in flight.
 *
 * ```sh
 * sudo deno task bench                  # full run, about 15 minutes
 * deno run -A bench/run.ts --smoke      # under a minute, for CI
 * deno run -A bench/run.ts --json --out /tmp/x --rounds 5
 * deno run -A bench/run.ts --no-memory  # without the memory rows (the 1M fills)
 * deno run -A bench/run.ts --profile    # CPU profiles of server and driver under a 64 B flood
 * deno run -A bench/run.ts --modes masquerade,bpf --sizes 64 --rounds 3   # data plane only
 * ```
 *
 * Writes latest.json, latest.md, pps_by_size.svg and latency.svg to `--out`
 * (default bench/results/) and prints the Markdown table (or, with `--json`,
 * the JSON) on stdout; progress goes to stderr.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { createTopology, destroyOnSignal, type Topology } from "../testing/topology.ts";
import {
  denoScript,
  type Dpm,
  DPM_ENV,
  MOD,
  serveApp,
  startDpm,
  type StartOptions,
} from "../testing/launch.ts";
import { tcpSeen, udpEcho } from "../testing/apps.ts";
import {
  type BurstProbe,
  burstSessions,
  CLK_TCK,
  conntrackCount,
  conntrackFlush,
  driverPairs,
  haveEthtool,
  judgeBurst,
  kernelGrowth,
  kernelMemory,
  median,
  newSessions,
  type Percentiles,
  pingPong,
  processTicks,
  queueCounters,
  rssBytes,
  type SessionProbe,
  setOffloads,
  startEcho,
  systemTicks,
  tcpBurstSessions,
  type TcpRun,
  tcpStream,
  udpFlood,
  type UdpRun,
  udpSpray,
} from "./measure.ts";
import {
  type BenchResult,
  type BurstResult,
  type ConntrackPoint,
  type CpuRun,
  DATA_PATHS,
  type DataPath,
  evaluateTargets,
  markdown,
  type MemoryPoint,
  type MemoryResult,
  type Mode,
  type ModeResult,
  type ReserveResult,
  type TableRow,
} from "./report.ts";
import { barChart } from "./chart.ts";
import { summarizeProfiles } from "./profile.ts";
import { type DriverMemory, driverMemoryChild } from "./driver_memory.ts";
import { type FloodResult, floodRow } from "./flood.ts";

const HERE = fileURLToPath(new URL(".", import.meta.url));

interface Config {
  rounds: number;
  seconds: number;
  sizes: number[];
  pings: number;
  sessions: number;
  /** Sizes of the UDP bursts (the first from h2, the second from h3), and how long each may take. */
  bursts: number[];
  burstTimeoutMs: number;
  /** TCP connects at once from h2. */
  tcpBurst: number;
  /** Sessions of bench/driver_memory.ts, per data path. */
  driverMemorySessions: number;
  reserveSeconds: number;
  /** The flood row's seconds (alone, then flooded) and the honest host's reservations/s. */
  floodSeconds: number;
  floodRate: number;
  reserveAddrsPerHost: number;
  /**
   * Requests in flight per source address in the reservation row (version
   * 3: two full datagrams). The total in flight (hosts × addresses × window)
   * stays a few thousand: reserve_load gives a request up after 1 s, so a
   * total the server cannot answer within a second on a loaded machine would
   * time out and be sent again all at once.
   */
  reserveWindow: number;
  /**
   * Requests in flight per source address while filling a server for the
   * memory rows: 6, as before version 3 (30 made a bpf server's `dpm status`
   * time out during its fill to 1M on a loaded machine, once).
   */
  fillWindow: number;
  /** Table sizes at which a filled server's memory is read (one fill per data path). */
  memorySessions: number[];
  /** Conntrack entries made through MASQUERADE, per memory point. */
  conntrackEntries: number[];
  tableQuick: boolean;
}

function parseArgs(argv: string[]) {
  const o = {
    smoke: false,
    json: false,
    profile: false,
    memory: true,
    datapath: "queue" as DataPath,
    /** --out: where the results go; null = bench/results, or a fresh temporary directory for --smoke (its figures are not representative and must not replace the recorded ones). */
    out: null as string | null,
    rounds: 0,
    /** --modes: the data-plane modes measured; anything but all four implies --data-plane-only. */
    modes: ["masquerade", ...DATA_PATHS] as Mode[],
    dataPlaneOnly: false,
    sizes: null as number[] | null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--smoke") o.smoke = true;
    else if (a === "--json") o.json = true;
    else if (a === "--profile") o.profile = true;
    else if (a === "--no-memory") o.memory = false;
    else if (a === "--datapath") {
      const v = argv[++i];
      if (v !== "kernel" && v !== "queue" && v !== "bpf") {
        throw new Error(`--datapath bpf|kernel|queue, not "${v}"`);
      }
      o.datapath = v;
    } else if (a === "--out") o.out = argv[++i] ?? o.out;
    else if (a === "--rounds") o.rounds = Number(argv[++i]);
    else if (a === "--data-plane-only") o.dataPlaneOnly = true;
    else if (a === "--sizes") o.sizes = (argv[++i] ?? "").split(",").map(Number);
    else if (a === "--modes") {
      const all: Mode[] = ["masquerade", ...DATA_PATHS];
      const v = (argv[++i] ?? "").split(",");
      const bad = v.find((m) => !all.includes(m as Mode));
      if (bad !== undefined) throw new Error(`--modes takes ${all.join(",")}, not "${bad}"`);
      o.modes = all.filter((m) => v.includes(m));
      if (o.modes.length < all.length) o.dataPlaneOnly = true;
    } else if (a === "--help" || a === "-h") {
      console.log(
        "usage: deno run -A bench/run.ts [--smoke] [--json] [--out DIR] [--rounds N] [--no-memory] " +
          "[--profile [--datapath bpf|kernel|queue]] " +
          "[--data-plane-only] [--modes masquerade,queue,kernel,bpf] [--sizes 64,512,1400]",
      );
      Deno.exit(0);
    } else throw new Error(`Unknown argument "${a}"`);
  }
  return o;
}

const args = parseArgs(Deno.args);
const cfg: Config = args.smoke
  ? {
    rounds: 1,
    seconds: 1,
    sizes: [64, 512, 1400],
    pings: 200,
    sessions: 30,
    bursts: [200],
    burstTimeoutMs: 20_000,
    tcpBurst: 100,
    driverMemorySessions: 2000,
    reserveSeconds: 1,
    floodSeconds: 1,
    floodRate: 200,
    reserveAddrsPerHost: 2,
    reserveWindow: 90,
    fillWindow: 6,
    memorySessions: [3000, 6000],
    conntrackEntries: [5000],
    tableQuick: true,
  }
  : {
    rounds: 5,
    seconds: 3,
    sizes: [64, 512, 1400],
    pings: 2000,
    sessions: 300,
    bursts: [1500, 3000],
    burstTimeoutMs: 40_000,
    tcpBurst: 1000,
    driverMemorySessions: 20_000,
    reserveSeconds: 5,
    floodSeconds: 5,
    floodRate: 200,
    reserveAddrsPerHost: 20,
    reserveWindow: 90,
    fillWindow: 6,
    memorySessions: [100_000, 1_000_000],
    conntrackEntries: [100_000, 200_000],
    tableQuick: false,
  };
if (args.rounds > 0) cfg.rounds = args.rounds;
if (args.sizes) cfg.sizes = args.sizes;
const RESERVE_FLAGS = ["--rate-limit", "1000000", "--max-sessions-per-host", "1048576"];
const MASQ = ["-s", "10.0.0.0/24", "-o", "wan0", "-j", "MASQUERADE"];
/** p1's testing/apps.ts `udpEcho` (answers "seen ip:port|..."), for the bursts. */
const SEEN_PORT = 7001;
/** p1's testing/apps.ts `tcpSeen` (writes "seen ip:port"), for the TCP connect burst. */
const TCP_SEEN_PORT = 7002;
/**
 * Pool of the servers filled for the memory figures: 1M sessions need more
 * than the topology's four addresses × 64,512 ports × 2 protocols. Only
 * reservations are made with it: no packet is sent from or to it.
 */
const MEMORY_POOL = "203.0.113.100-203.0.113.131";
/** A source address holds about 2 × 4,536 gateway ports (61000-65535, UDP and TCP). */
const SESSIONS_PER_ADDR = 9000;

const log = (s: string) => console.error(`bench: ${s}`);
const ethtool = await haveEthtool();
const started = performance.now();

async function run(
  cmd: string[],
  timeoutMs = 600_000,
): Promise<{ code: number; out: string; err: string }> {
  const c = new Deno.Command(cmd[0]!, { args: cmd.slice(1), stdout: "piped", stderr: "piped" })
    .spawn();
  const timer = setTimeout(() => {
    try {
      c.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, timeoutMs);
  try {
    const o = await c.output();
    return {
      code: o.code,
      out: new TextDecoder().decode(o.stdout),
      err: new TextDecoder().decode(o.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

async function environment(): Promise<Record<string, string | number | null>> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const firstLine = async (cmd: string[]) => {
    try {
      const r = await run(cmd, 10_000);
      return (r.out + r.err).trim().split("\n")[0] ?? null;
    } catch {
      return null;
    }
  };
  return {
    date: new Date().toISOString(),
    kernel: Deno.osRelease(),
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    iperf3: await firstLine(["iperf3", "--version"]),
    python3: await firstLine(["python3", "--version"]),
    loadavgAtStart: (await Deno.readTextFile("/proc/loadavg").catch(() => "")).trim(),
  };
}

/** Retries a measurement once: a shared machine occasionally loses an iperf3 control connection. */
async function retry<T>(what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    log(`${what} failed (${(e as Error).message.split("\n")[0]}); retrying once`);
    return await f();
  }
}

interface RoundData {
  udp: UdpRun[];
  cpu: CpuRun;
  tcp: TcpRun;
  tcpNoOffload: TcpRun | null;
  rtt: Percentiles & { lost: number };
  sessions: SessionProbe;
  /** One per `cfg.bursts` size. */
  bursts: BurstRound[];
  tcpBurst: BurstRound;
}

/** A burst as one round saw it, with the driver's counters after it (dpm). */
type BurstRound = BurstProbe & { driverStats: Record<string, unknown> | null };

/** One round of every data-plane measurement in the current mode. */
async function measureMode(t: Topology, label: string, dpm: Dpm | null): Promise<RoundData> {
  const h1 = t.hosts[0]!;
  const p1 = t.peers[0]!;
  log(`${label}: round trips and new sessions`);
  const rtt = await retry("ping-pong", () => pingPong(t, h1.ns, p1.addrText, cfg.pings));
  const sessions = await retry(
    "new sessions",
    () => newSessions(t, h1.ns, p1.addrText, cfg.sessions),
  );
  const udp: UdpRun[] = [];
  let cpu: CpuRun | null = null;
  for (const size of cfg.sizes) {
    log(`${label}: UDP ${size} B flood, ${cfg.seconds} s`);
    const serverPid = dpm?.server.pid ?? 0;
    const driverPid = dpm?.drivers.get("h1")?.pid ?? 0;
    const s0 = processTicks(serverPid);
    const d0 = processTicks(driverPid);
    const q0 = dpm && size === 64 ? await queueDrops(t) : null;
    const m0 = systemTicks();
    const u = await retry(`UDP ${size}`, () => udpFlood(t, h1.ns, p1.ns, size, cfg.seconds));
    const s1 = processTicks(serverPid);
    const d1 = processTicks(driverPid);
    const m1 = systemTicks();
    const q1 = dpm && size === 64 ? await queueDrops(t) : null;
    udp.push(u);
    if (size === 64) {
      const us = (ticks: number) => +((ticks * 1e6) / CLK_TCK / Math.max(1, u.received)).toFixed(3);
      const busyPct = +((100 * (m1.busy - m0.busy)) / Math.max(1, m1.total - m0.total)).toFixed(1);
      cpu = {
        packets: u.received,
        serverUsPerPacket: dpm ? us(s1 - s0) : null,
        driverUsPerPacket: dpm ? us(d1 - d0) : null,
        dpmUsPerPacket: dpm ? us(s1 - s0 + d1 - d0) : null,
        machineUsPerPacket: us(m1.busy - m0.busy),
        machineBusyPct: busyPct,
        senderUsPerPacket: u.senderUsPerPacket,
        queueDrops: q0 && q1
          ? { driver: q1.driver - q0.driver, server: q1.server - q0.server }
          : null,
      };
    }
    log(`${label}: UDP ${size} B: ${u.pps} pps delivered, ${u.lossPct}% lost`);
  }
  log(`${label}: TCP stream, ${cfg.seconds} s`);
  const tcp = await retry("TCP", () => tcpStream(t, h1.ns, p1.ns, cfg.seconds));
  log(`${label}: TCP ${tcp.mbps} Mbit/s`);
  let tcpNoOffload: TcpRun | null = null;
  if (!dpm && ethtool) {
    // The reference for per-packet work: the kernel forwarding MTU-sized segments too.
    await setOffloads(t, h1.ns, "eth0", false);
    try {
      tcpNoOffload = await retry("TCP", () => tcpStream(t, h1.ns, p1.ns, cfg.seconds));
    } finally {
      await setOffloads(t, h1.ns, "eth0", true);
    }
    log(`${label}: TCP with offloads off on h1: ${tcpNoOffload.mbps} Mbit/s`);
  }
  // Last: the bursts leave their sessions in dpm's tables and conntrack. Each
  // from a host of its own (h2, h3), so that none meets the sessions of
  // another in its quota or its gateway ports.
  const bursts: BurstRound[] = [];
  for (const [i, n] of cfg.bursts.entries()) {
    const host = t.hosts[1 + (i % 2)]!;
    log(`${label}: burst of ${n} new UDP sessions at once from ${host.name}`);
    const b = await retry("burst", () => burstMode(t, dpm, host, n));
    logBurst(label, `burst of ${n}`, b);
    bursts.push(b);
  }
  log(`${label}: burst of ${cfg.tcpBurst} TCP connects at once from h2`);
  const tcpBurst = await retry("TCP burst", () => tcpBurstMode(t, dpm, t.hosts[1]!));
  logBurst(label, `TCP burst of ${cfg.tcpBurst}`, tcpBurst);
  return { udp, cpu: cpu!, tcp, tcpNoOffload, rtt, sessions, bursts, tcpBurst };
}

function logBurst(label: string, what: string, b: BurstRound): void {
  log(
    `${label}: ${what}: first reply p50 ${(b.first.p50Us / 1000).toFixed(1)} ms, max ${
      (b.first.maxUs / 1000).toFixed(1)
    } ms; ${b.resent} resent, ${b.unanswered} unanswered; untranslated ${b.untranslated ?? "n/a"}`,
  );
  for (const e of b.examples) log(`${label}: ${what}: untranslated ${e}`);
}

/**
 * A burst of `n` new UDP sessions from `host` to p1's `udpEcho`, judged:
 * with dpm, each session's replies must show the public pair the host's
 * driver reports for it. One session first (not counted), so that the
 * driver holds the server's cookie, as a driver that has run a while does.
 */
async function burstMode(
  t: Topology,
  dpm: Dpm | null,
  host: Topology["hosts"][number],
  n: number,
): Promise<BurstRound> {
  const dest = `${t.peers[0]!.addrText}:${SEEN_PORT}`;
  await burstSessions(t, host.ns, dest, 1, cfg.burstTimeoutMs);
  const run = await burstSessions(t, host.ns, dest, n, cfg.burstTimeoutMs);
  if (!dpm) return { ...judgeBurst(run, null), driverStats: null };
  const { stats, pub } = await driverPairs(t, host, dpm.driverSocket(host.name), dest);
  return { ...judgeBurst(run, (port) => pub.get(port)), driverStats: stats };
}

/** The TCP connect burst from `host` to p1's `tcpSeen`, judged as {@linkcode burstMode}. */
async function tcpBurstMode(
  t: Topology,
  dpm: Dpm | null,
  host: Topology["hosts"][number],
): Promise<BurstRound> {
  const dest = `${t.peers[0]!.addrText}:${TCP_SEEN_PORT}`;
  const run = await tcpBurstSessions(t, host.ns, dest, cfg.tcpBurst, cfg.burstTimeoutMs);
  if (!dpm) return { ...judgeBurst(run, null), driverStats: null };
  const { stats, pub } = await driverPairs(t, host, dpm.driverSocket(host.name), dest, "tcp");
  return { ...judgeBurst(run, (port) => pub.get(port)), driverStats: stats };
}

/** Queue drops (queue full + socket full) on the driver's host and on the gateway. */
async function queueDrops(t: Topology): Promise<{ driver: number; server: number }> {
  const sum = (c: { queueDropped: number; userDropped: number } | null) =>
    c ? c.queueDropped + c.userDropped : 0;
  const [h, g] = await Promise.all([
    queueCounters(t, t.hosts[0]!.ns),
    queueCounters(t, t.gateway.ns),
  ]);
  return { driver: sum(h), server: sum(g) };
}

function aggregate(rounds: RoundData[]): ModeResult {
  const med = (f: (r: RoundData) => number) => median(rounds.map(f));
  const udp = cfg.sizes.map((size) => {
    const runs = rounds.map((r) => r.udp.find((u) => u.size === size)!);
    const mid = [...runs].sort((a, b) => a.pps - b.pps)[Math.floor((runs.length - 1) / 2)]!;
    return {
      size,
      pps: mid.pps,
      sentPps: mid.sentPps,
      lossPct: mid.lossPct,
      receiverLossPct: mid.sent > 0 ? +((100 * mid.receiverDrops) / mid.sent).toFixed(2) : 0,
      runs,
    };
  });
  const cpuRuns = rounds.map((r) => r.cpu);
  const medOrNull = (f: (c: CpuRun) => number | null) => {
    const v = cpuRuns.map(f).filter((x): x is number => x !== null);
    return v.length ? median(v) : null;
  };
  return {
    udp,
    tcp: { mbps: med((r) => r.tcp.mbps), runs: rounds.map((r) => r.tcp) },
    tcpNoOffload: rounds.every((r) => r.tcpNoOffload !== null)
      ? {
        mbps: med((r) => r.tcpNoOffload!.mbps),
        runs: rounds.map((r) => r.tcpNoOffload!),
      }
      : null,
    rtt: {
      p50Us: med((r) => r.rtt.p50Us),
      p99Us: med((r) => r.rtt.p99Us),
      runs: rounds.map((r) => r.rtt),
    },
    cpu: {
      packets: median(cpuRuns.map((c) => c.packets)),
      serverUsPerPacket: medOrNull((c) => c.serverUsPerPacket),
      driverUsPerPacket: medOrNull((c) => c.driverUsPerPacket),
      dpmUsPerPacket: medOrNull((c) => c.dpmUsPerPacket),
      machineUsPerPacket: median(cpuRuns.map((c) => c.machineUsPerPacket)),
      machineBusyPct: median(cpuRuns.map((c) => c.machineBusyPct)),
      senderUsPerPacket: medOrNull((c) => c.senderUsPerPacket),
      queueDrops: cpuRuns.every((c) => c.queueDrops !== null)
        ? {
          driver: median(cpuRuns.map((c) => c.queueDrops!.driver)),
          server: median(cpuRuns.map((c) => c.queueDrops!.server)),
        }
        : null,
      runs: cpuRuns,
    },
    sessions: {
      firstP50Us: med((r) => r.sessions.first.p50Us),
      firstP99Us: med((r) => r.sessions.first.p99Us),
      secondP50Us: med((r) => r.sessions.second.p50Us),
      secondP99Us: med((r) => r.sessions.second.p99Us),
      setupP50Us: med((r) => r.sessions.setup.p50Us),
      setupP99Us: med((r) => r.sessions.setup.p99Us),
      lost: rounds.reduce((a, r) => a + r.sessions.lost, 0),
      runs: rounds.map((r) => r.sessions),
    },
    bursts: cfg.bursts.map((n, i) => aggregateBurst(n, rounds.map((r) => r.bursts[i]!))),
    tcpBurst: aggregateBurst(cfg.tcpBurst, rounds.map((r) => r.tcpBurst)),
  };
}

function aggregateBurst(sessions: number, runs: BurstRound[]): BurstResult {
  const med = (f: (b: BurstProbe) => number) => median(runs.map(f));
  const sum = (f: (b: BurstProbe) => number) => runs.reduce((a, b) => a + f(b), 0);
  return {
    sessions,
    rounds: runs.length,
    firstP50Us: med((b) => b.first.p50Us),
    firstP99Us: med((b) => b.first.p99Us),
    firstMaxUs: med((b) => b.first.maxUs),
    allUs: runs.every((b) => b.allUs !== null) ? med((b) => b.allUs!) : null,
    unanswered: sum((b) => b.unanswered),
    resent: sum((b) => b.resent),
    untranslated: runs.every((b) => b.untranslated !== null) ? sum((b) => b.untranslated!) : null,
    runs: runs.map(({ driverStats, ...b }) => ({
      ...b,
      fellBack: typeof driverStats?.fellBack === "number" ? driverStats.fellBack : null,
      driverUntranslated: typeof driverStats?.untranslated === "number"
        ? driverStats.untranslated
        : null,
    })),
  };
}

async function iptablesMasq(t: Topology, op: "-A" | "-D"): Promise<void> {
  const r = await t.exec(t.gateway.ns, ["iptables", "-w", "-t", "nat", op, "POSTROUTING", ...MASQ]);
  if (r.code !== 0) throw new Error(`iptables ${op} MASQUERADE failed: ${r.stderr}`);
}

async function masqueradeRound(t: Topology): Promise<RoundData> {
  await iptablesMasq(t, "-A");
  try {
    return await measureMode(t, "MASQUERADE", null);
  } finally {
    await iptablesMasq(t, "-D");
    await forgetFlows(t);
  }
}

/** Flushes conntrack in every namespace of the topology, so that no mode inherits another's flows. */
async function forgetFlows(t: Topology): Promise<void> {
  await Promise.all(
    [t.gateway.ns, ...t.hosts.map((h) => h.ns)].map((ns) => conntrackFlush(t, ns)),
  );
}

/**
 * Stops dpm for good: SIGTERM, then on the kernel and bpf paths (which keep
 * translating established sessions after SIGTERM) `--cleanup` of both roles.
 */
async function stopForGood(t: Topology, d: Dpm, datapath: DataPath): Promise<void> {
  await d.stop();
  if (datapath !== "queue") await d.cleanup();
  await forgetFlows(t);
}

async function dpmRound(t: Topology, datapath: DataPath): Promise<RoundData> {
  const d = await startDpm(t, { driverHosts: ["h1", "h2", "h3"], datapath });
  try {
    return await measureMode(t, `dpm ${datapath}`, d);
  } catch (e) {
    log(`dpm server output:\n${d.server.output().slice(-3000)}`);
    throw e;
  } finally {
    await stopForGood(t, d, datapath);
  }
}

/** Many requesters on every host against one server on `datapath`. */
async function reservationLoad(
  t: Topology,
  datapath: DataPath,
  workers = 1,
): Promise<ReserveResult> {
  const d = await startDpm(t, {
    driverHosts: [],
    serverArgs: [...RESERVE_FLAGS, ...(workers > 1 ? ["--workers", String(workers)] : [])],
    datapath,
  });
  try {
    return { datapath, ...(await reserveWith(t, d)) };
  } finally {
    await stopForGood(t, d, datapath);
  }
}

/**
 * bench/flood.ts on a server of `datapath` with dpm's default limits (the
 * flood meets the real rate limits and refusal budgets).
 */
async function floodLoad(t: Topology, datapath: DataPath): Promise<FloodResult> {
  const d = await startDpm(t, { driverHosts: [], datapath });
  try {
    return await floodRow(t, d, datapath, {
      seconds: cfg.floodSeconds,
      rate: cfg.floodRate,
      source: "forged",
    });
  } finally {
    await stopForGood(t, d, datapath);
  }
}

/** Load-generator source addresses per host block: h1 10.0.0.101-151, h2 152-202, h3 203-253. */
const ADDR_BLOCK = 51;

/**
 * Source addresses of host `hi` for the load generator. Each host keeps its
 * own block for the whole run: an address that moved to another host would
 * be answered to the old one until the gateway's ARP entry went stale.
 */
function loadAddrs(hi: number, per: number): string[] {
  if (per > ADDR_BLOCK) throw new Error(`at most ${ADDR_BLOCK} load addresses per host`);
  return Array.from({ length: per }, (_, k) => `10.0.0.${101 + hi * ADDR_BLOCK + k}`);
}

/** Configures the first `per` load-generator addresses of every host's block (idempotent). */
async function addLoadAddrs(t: Topology, per: number): Promise<void> {
  if (t.hosts.length > 3) throw new Error("the load-address blocks are laid out for 3 hosts");
  await Promise.all(t.hosts.map(async (h, hi) => {
    const r = await t.exec(h.ns, ["ip", "-batch", "-"], {
      stdin: loadAddrs(hi, per).map((a) => `addr replace ${a}/24 dev eth0`).join("\n") + "\n",
    });
    if (r.code !== 0) throw new Error(`adding addresses on ${h.name}: ${r.stderr}`);
  }));
}

/** Runs bench/reserve_load.ts on every host at once; returns each host's JSON line. */
async function loadFromHosts(
  t: Topology,
  per: number,
  extra: string[],
  seconds: number,
  start: number,
  window = cfg.reserveWindow,
): Promise<Record<string, any>[]> {
  const results = await Promise.all(t.hosts.map((h, hi) =>
    t.exec(h.ns, [
      ...denoScript(`${HERE}reserve_load.ts`),
      "--server",
      t.gateway.lanText,
      "--addrs",
      loadAddrs(hi, per).join(","),
      "--window",
      String(window),
      "--seconds",
      String(seconds),
      "--start",
      String(start),
      ...extra,
    ], { timeoutMs: (seconds + 60) * 1000, env: DPM_ENV })
  ));
  return results.map((r, i) => {
    if (r.code !== 0) throw new Error(`reserve_load on h${i + 1} failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, any>;
  });
}

/**
 * Memory per session on one data path: a server (real interfaces, so the
 * kernel path programs its maps) is filled with reservations up to each of
 * `cfg.memorySessions`; at each point the growth of its RSS and of the
 * kernel's memory since before the first reservation is read.
 */
async function memoryFill(t: Topology, datapath: DataPath): Promise<MemoryPoint[]> {
  const top = Math.max(...cfg.memorySessions);
  const per = Math.ceil((top * 1.15) / SESSIONS_PER_ADDR / t.hosts.length);
  await addLoadAddrs(t, per);
  // The bpf server's map holds the largest fill; its hash buckets are allocated at start.
  const bpfSessions = datapath === "bpf" ? Math.max(1024, Math.ceil(top * 1.05)) : 0;
  const preallocBytes = bpfSessions ? 16 * 2 ** Math.ceil(Math.log2(2 * bpfSessions)) : 0;
  const d = await startDpm(t, {
    driverHosts: [],
    serverArgs: [
      ...RESERVE_FLAGS,
      ...(bpfSessions ? ["--bpf-sessions", String(bpfSessions)] : []),
    ],
    datapath,
    pool: MEMORY_POOL,
  });
  const points: MemoryPoint[] = [];
  try {
    await new Promise((r) => setTimeout(r, 1000));
    const rss0 = rssBytes(d.server.pid);
    const k0 = kernelMemory();
    let have = 0;
    for (const target of cfg.memorySessions) {
      log(`memory, ${datapath} path: filling to ${target} sessions`);
      // Deno starts in about a second on a loaded 2-core machine; start together after that.
      const start = Date.now() + (args.smoke ? 2500 : 4000);
      const want = Math.ceil((target - have) / t.hosts.length);
      const hosts = await loadFromHosts(
        t,
        per,
        ["--count", String(want)],
        args.smoke ? 30 : 300,
        start,
        cfg.fillWindow,
      );
      const fillSeconds = Math.max(...hosts.map((h) => h.seconds as number));
      await new Promise((r) => setTimeout(r, 1000));
      // A million sessions' status on a shared machine can take a minute.
      const st = await d.status(300_000);
      const sessions = st.sessions;
      const g = kernelGrowth(k0, kernelMemory());
      const rss = rssBytes(d.server.pid) - rss0;
      const n = Math.max(1, sessions);
      const kernel = g.totalBytes + preallocBytes;
      points.push({
        datapath,
        sessions,
        fillSeconds: +fillSeconds.toFixed(1),
        fillPerSec: Math.round((sessions - have) / Math.max(0.001, fillSeconds)),
        dpmRssBytes: rss,
        kernel: g,
        preallocBytes,
        dpmBytesPerSession: Math.round(rss / n),
        kernelBytesPerSession: Math.round(kernel / n),
        totalBytesPerSession: Math.round((rss + kernel) / n),
      });
      log(
        `memory, ${datapath} path: ${sessions} sessions: dpm ${Math.round(rss / n)} B + kernel ${
          Math.round(kernel / n)
        } B per session`,
      );
      have = sessions;
    }
  } finally {
    await stopForGood(t, d, datapath);
  }
  return points;
}

/**
 * Kernel memory of conntrack entries through MASQUERADE: h1 sends one UDP
 * datagram per flow to p1 (nothing listens there), each flow one conntrack on
 * the gateway; growth of slab + vmalloc + per-CPU divided by the entries
 * created (counted with `conntrack -C` in every namespace that tracks).
 */
async function conntrackMemory(t: Topology): Promise<ConntrackPoint[]> {
  const all = [t.gateway.ns, ...t.hosts.map((h) => h.ns), ...t.peers.map((p) => p.ns)];
  const count = async () =>
    (await Promise.all(all.map((ns) => conntrackCount(t, ns)))).reduce((a, b) => a + b, 0);
  const out: ConntrackPoint[] = [];
  await iptablesMasq(t, "-A");
  try {
    for (const n of cfg.conntrackEntries) {
      await Promise.all(all.map((ns) => conntrackFlush(t, ns)));
      await new Promise((r) => setTimeout(r, 1000)); // RCU frees the flushed entries
      const c0 = await count();
      const k0 = kernelMemory();
      log(`memory, MASQUERADE: ${n} UDP flows h1 -> p1`);
      await udpSpray(t, t.hosts[0]!.ns, t.peers[0]!.addrText, n);
      const k1 = kernelMemory();
      const entries = (await count()) - c0;
      const g = kernelGrowth(k0, k1);
      out.push({
        entries,
        kernel: g,
        bytesPerEntry: Math.round(g.totalBytes / Math.max(1, entries)),
      });
      log(
        `memory, MASQUERADE: ${entries} conntracks, ${out[out.length - 1]!.bytesPerEntry} B each`,
      );
    }
  } finally {
    await iptablesMasq(t, "-D");
    await Promise.all(all.map((ns) => conntrackFlush(t, ns)));
  }
  return out;
}

async function reserveWith(t: Topology, d: Dpm): Promise<Omit<ReserveResult, "datapath">> {
  const per = cfg.reserveAddrsPerHost;
  await addLoadAddrs(t, per);
  // Deno starts in about a second on a loaded 2-core machine; start together after that.
  const start = Date.now() + (args.smoke ? 2500 : 4000);
  const procs = loadFromHosts(t, per, [], cfg.reserveSeconds, start);
  // Server CPU over the measured window only.
  await new Promise((r) => setTimeout(r, Math.max(0, start - Date.now())));
  const c0 = processTicks(d.server.pid);
  const perHost = await procs;
  const c1 = processTicks(d.server.pid);
  const ok = perHost.reduce((a, h) => a + h.ok, 0);
  const st = await d.status().catch(() => null);
  const lat = perHost.map((h) => h.latencyMs).filter((l) => l.p50 !== null);
  return {
    perSec: perHost.reduce((a, h) => a + h.okPerSec, 0),
    answersPerSec: perHost.reduce((a, h) => a + h.answersPerSec, 0),
    ok,
    timeouts: perHost.reduce((a, h) => a + h.timeouts, 0),
    seconds: cfg.reserveSeconds,
    hosts: t.hosts.length,
    sockets: per * t.hosts.length,
    windowPerSocket: cfg.reserveWindow,
    serverUsPerReservation: ok > 0 ? +(((c1 - c0) * 1e6) / CLK_TCK / ok).toFixed(2) : null,
    tableSessions: st?.sessions ?? null,
    latencyP50Ms: lat.length ? median(lat.map((l) => l.p50)) : null,
    latencyP99Ms: lat.length ? Math.max(...lat.map((l) => l.p99)) : null,
    serverFlags: RESERVE_FLAGS,
    perHost,
  };
}

/** bench/driver_memory.ts on each data path, each in its own process (it needs gc and a clean heap). */
async function driverMemories(): Promise<Record<DataPath, DriverMemory>> {
  const out = {} as Record<DataPath, DriverMemory>;
  for (const dp of DATA_PATHS) {
    log(`driver memory, ${dp} path: ${cfg.driverMemorySessions} sessions`);
    out[dp] = await driverMemoryChild(cfg.driverMemorySessions, dp);
    log(
      `driver memory, ${dp} path: ${out[dp].driverBytesPerSession} B/session settled, ${
        out[dp].inFlightBytesPerSession
      } B in flight`,
    );
  }
  return out;
}

async function tableBench(): Promise<{ quick: boolean; gc: boolean; rows: TableRow[] }> {
  log(`table bench${cfg.tableQuick ? " --quick" : ""}`);
  const r = await run([
    Deno.execPath(),
    "run",
    "-A",
    "--v8-flags=--expose-gc",
    `${HERE}table_bench.ts`,
    "--json",
    ...(cfg.tableQuick ? ["--quick"] : []),
  ]);
  if (r.code !== 0) throw new Error(`table_bench failed (${r.code}): ${r.err}`);
  const j = JSON.parse(r.out.trim().split("\n").pop()!);
  return { quick: cfg.tableQuick, gc: j.gc, rows: j.rows };
}

/** Starts dpm with every role under `deno run --cpu-prof` (profiles written on exit into `dir`). */
async function startProfiled(t: Topology, dir: string, o: StartOptions): Promise<Dpm> {
  const wrapper = `${dir}/dpm-prof.sh`;
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\nexec "${Deno.execPath()}" run --allow-all --quiet --cpu-prof --cpu-prof-dir="${dir}" "${MOD}" "$@"\n`,
  );
  await Deno.chmod(wrapper, 0o755);
  // src/launch.ts runs DPM_BIN instead of `deno run mod.ts` when it is set.
  Deno.env.set("DPM_BIN", wrapper);
  try {
    return await startDpm(t, o);
  } finally {
    Deno.env.delete("DPM_BIN");
  }
}

/**
 * --profile: CPU profiles of the server and the driver while h1 floods p1
 * with 64 B UDP, then of the server under the reservation load.
 */
async function profile(t: Topology): Promise<void> {
  const base = await Deno.makeTempDir({ prefix: "dpm-prof-" });
  const flood = `${base}/flood`;
  const reserve = `${base}/reserve`;
  await Deno.mkdir(flood);
  await Deno.mkdir(reserve);
  const datapath = args.datapath;
  let d = await startProfiled(t, flood, { driverHosts: ["h1"], datapath });
  try {
    const u = await udpFlood(t, t.hosts[0]!.ns, t.peers[0]!.ns, 64, cfg.seconds + 1);
    log(`profile: ${u.pps} pps delivered`);
  } finally {
    await stopForGood(t, d, datapath);
  }
  d = await startProfiled(t, reserve, { driverHosts: [], serverArgs: RESERVE_FLAGS, datapath });
  try {
    const r = await reserveWith(t, d);
    log(`profile: ${r.perSec} reservations/s`);
  } finally {
    await stopForGood(t, d, datapath);
  }
  console.log(`# 64 B UDP flood h1 -> p1\n${await summarizeProfiles(flood)}\n`);
  console.log(`# reservation load\n${await summarizeProfiles(reserve)}`);
  log(`profiles in ${base}`);
}

async function main(): Promise<number> {
  if (Deno.uid() !== 0) {
    console.error("bench: needs root (network namespaces, iptables): sudo deno task bench");
    return 2;
  }
  const env = await environment();
  const quick = args.profile || args.dataPlaneOnly;
  const table = quick ? null : await tableBench();
  const driverMemory = quick ? null : await driverMemories();
  log("building the topology");
  const t = await createTopology({ hosts: 3, peers: 1 });
  const undoSignals = destroyOnSignal(t);
  const rounds: Record<Mode, RoundData[]> = { masquerade: [], queue: [], kernel: [], bpf: [] };
  let reservations: Record<DataPath, ReserveResult>;
  const reservationsByWorkers: { workers: number; result: ReserveResult }[] = [];
  let flood: Record<DataPath, FloodResult>;
  let memory: MemoryResult;
  try {
    await startEcho(t, t.peers[0]!.ns);
    await serveApp(t, t.peers[0]!.ns, udpEcho(SEEN_PORT));
    await serveApp(t, t.peers[0]!.ns, tcpSeen(TCP_SEEN_PORT));
    if (args.profile) {
      await profile(t);
      return 0;
    }
    for (let r = 1; r <= cfg.rounds; r++) {
      log(`round ${r} of ${cfg.rounds}`);
      for (const m of args.modes) {
        rounds[m].push(m === "masquerade" ? await masqueradeRound(t) : await dpmRound(t, m));
      }
    }
    if (args.dataPlaneOnly) {
      console.log(dataPlaneSummary(rounds));
      return 0;
    }
    reservations = {} as Record<DataPath, ReserveResult>;
    for (const dp of DATA_PATHS) {
      log(`reservation load, ${dp} path, ${cfg.reserveSeconds} s`);
      reservations[dp] = await reservationLoad(t, dp);
      log(`reservations, ${dp} path: ${reservations[dp].perSec}/s`);
      if (dp === "queue") continue;
      // The same load with 2 workers, right after 1 (--workers: bpf and kernel paths).
      reservationsByWorkers.push({ workers: 1, result: reservations[dp] });
      log(`reservation load, ${dp} path, 2 workers, ${cfg.reserveSeconds} s`);
      const two = await reservationLoad(t, dp, 2);
      reservationsByWorkers.push({ workers: 2, result: two });
      log(`reservations, ${dp} path, 2 workers: ${two.perSec}/s`);
    }
    flood = {} as Record<DataPath, FloodResult>;
    for (const dp of DATA_PATHS) {
      log(`flood, ${dp} path, ${cfg.floodSeconds} s alone and ${cfg.floodSeconds} s flooded`);
      const f = flood[dp] = await floodLoad(t, dp);
      log(
        `flood, ${dp} path: honest p99 ${f.quiet.latencyMs.p99} ms alone, ${f.flooded.latencyMs.p99} ms beside ${f.floodPerSec}/s (${f.flooded.answered}/${f.flooded.sent} answered)`,
      );
    }
    // --no-memory: the memory rows are left out (n/a), for runs about the rest.
    memory = {
      bpf: args.memory ? await memoryFill(t, "bpf") : [],
      kernel: args.memory ? await memoryFill(t, "kernel") : [],
      queue: args.memory ? await memoryFill(t, "queue") : [],
      conntrack: args.memory ? await conntrackMemory(t) : [],
      pool: MEMORY_POOL,
      serverFlags: RESERVE_FLAGS,
    };
  } finally {
    await t.destroy();
    undoSignals();
  }
  const partial: Omit<BenchResult, "targets"> = {
    bench: "dpm",
    smoke: args.smoke,
    env,
    config: {
      ...cfg,
      topology: "3 hosts, gateway, router, 1 peer (testing/topology.ts)",
      // The namespaces' prefix, so that a caller can check none is left.
      namespacePrefix: t.prefix,
    },
    dataPlane: {
      masquerade: aggregate(rounds.masquerade),
      queue: aggregate(rounds.queue),
      kernel: aggregate(rounds.kernel),
      bpf: aggregate(rounds.bpf),
    },
    reservations,
    reservationsByWorkers,
    flood,
    memory,
    table: table!,
    driverMemory: driverMemory!,
    elapsedSeconds: 0,
  };
  const result: BenchResult = {
    ...partial,
    targets: evaluateTargets(partial),
    elapsedSeconds: Math.round((performance.now() - started) / 1000),
  };
  await writeOutputs(result);
  if (args.json) console.log(JSON.stringify(result));
  else console.log(markdown(result));
  return 0;
}

/**
 * --data-plane-only: each round's figures per mode and, for each dpm path,
 * its ratio to MASQUERADE's figure of the same round (nothing is written).
 */
function dataPlaneSummary(rounds: Record<Mode, RoundData[]>): string {
  const lines = [
    "mode\tround\t" + cfg.sizes.map((s) => `udp${s}`).join("\t") +
    "\ttcp Mbit/s\trtt p50 µs\tmachine µs/64B\tsender µs/64B",
  ];
  for (const m of args.modes) {
    rounds[m].forEach((r, i) => {
      const base = rounds.masquerade[i];
      const ratio = (v: number, b: number | undefined) =>
        m !== "masquerade" && b ? ` (${(v / b).toFixed(2)}x)` : "";
      const cells = r.udp.map((u, k) => `${u.pps}${ratio(u.pps, base?.udp[k]?.pps)}`);
      const cpu = r.cpu?.machineUsPerPacket;
      lines.push([
        m,
        i + 1,
        ...cells,
        `${r.tcp.mbps}${ratio(r.tcp.mbps, base?.tcp.mbps)}`,
        `${r.rtt.p50Us}${base ? ` (${(r.rtt.p50Us - base.rtt.p50Us).toFixed(1)})` : ""}`,
        `${cpu ?? "n/a"}${cpu && base?.cpu ? ratio(cpu, base.cpu.machineUsPerPacket) : ""}`,
        `${r.cpu?.senderUsPerPacket ?? "n/a"}${
          r.cpu?.senderUsPerPacket && base?.cpu?.senderUsPerPacket
            ? ratio(r.cpu.senderUsPerPacket, base.cpu.senderUsPerPacket)
            : ""
        }`,
      ].join("\t"));
    });
  }
  return lines.join("\n");
}

async function writeOutputs(r: BenchResult): Promise<void> {
  const dir = args.out ??
    (args.smoke ? await Deno.makeTempDir({ prefix: "dpm-bench-smoke-" }) : `${HERE}results`);
  await Deno.mkdir(dir, { recursive: true });
  const out = dir.replace(/\/$/, "");
  console.error(`bench: results written to ${out}/`);
  await Deno.writeTextFile(`${out}/latest.json`, JSON.stringify(r, null, 2) + "\n");
  await Deno.writeTextFile(`${out}/latest.md`, markdown(r));
  const dp = r.dataPlane;
  const modes: { name: string; color: string; m: ModeResult }[] = [
    { name: "MASQUERADE", color: "#9e9e9e", m: dp.masquerade },
    { name: "dpm queue", color: "#ff7f0e", m: dp.queue },
    { name: "dpm kernel", color: "#1f77b4", m: dp.kernel },
    { name: "dpm bpf", color: "#2ca02c", m: dp.bpf },
  ];
  const sub = `${r.env.cpu} × ${r.env.cores}, kernel ${r.env.kernel}, ${r.env.date}`.slice(0, 110);
  await Deno.writeTextFile(
    `${out}/pps_by_size.svg`,
    barChart({
      title: "UDP packets/s delivered h1 → p1, by payload size",
      subtitle: sub,
      categories: cfg.sizes.map((s) => `${s} B`),
      series: modes.map((x) => ({
        name: x.name,
        color: x.color,
        values: x.m.udp.map((u) => u.pps),
      })),
      yLabel: "packets per second (receiver)",
      xLabel: "UDP payload size",
    }),
  );
  await Deno.writeTextFile(
    `${out}/latency.svg`,
    barChart({
      title: "UDP round trip h1 ↔ p1, microseconds",
      subtitle: sub,
      categories: ["steady p50", "steady p99", "new session p50", "new session p99"],
      series: modes.map((x) => ({
        name: x.name,
        color: x.color,
        values: [x.m.rtt.p50Us, x.m.rtt.p99Us, x.m.sessions.firstP50Us, x.m.sessions.firstP99Us],
      })),
      yLabel: "microseconds",
      xLabel: "",
    }),
  );
  log(`wrote ${out}/latest.json, latest.md, pps_by_size.svg, latency.svg`);
}

Deno.exit(await main());
