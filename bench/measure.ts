/**
 * Measurements for bench/run.ts, each run with real programs inside a
 * topology's namespaces (src/topology.ts): iperf3 for UDP packet rates and
 * TCP throughput, small python3 programs for round-trip latency and
 * new-session round trips, and /proc for CPU time.
 *
 * Every function here only starts processes through the topology, so
 * `Topology.destroy()` stops whatever is left if a measurement fails.
 *
 * @module
 */

import type { Spawned, Topology } from "../testing/topology.ts";
import { tcpConnectBurst, udpBurst } from "../testing/apps.ts";
import { DPM_ENV, dpmCommand } from "../testing/launch.ts";

/** The UDP echo port on the peer used by the latency and session measurements. */
export const ECHO_PORT = 7000;
const IPERF_PORT = 5201;

/** Clock ticks per second of /proc times (USER_HZ; 100 on every Linux ABI Deno runs on). */
export const CLK_TCK = 100;

/** One iperf3 UDP run, as the receiver saw it. */
export interface UdpRun {
  /** Payload bytes per datagram (iperf3 -l). */
  size: number;
  seconds: number;
  /** Datagrams the sender sent. */
  sent: number;
  /** Datagrams the receiver got. */
  received: number;
  /** Delivered datagrams per second. */
  pps: number;
  /** Sent datagrams per second. */
  sentPps: number;
  /** Per cent of sent datagrams that never arrived. */
  lossPct: number;
  /**
   * Datagrams the receiver's kernel dropped because iperf3's socket buffer was
   * full (UDP RcvbufErrors in the receiving namespace): the receiver, not the
   * path, could not keep up.
   */
  receiverDrops: number;
  /**
   * CPU time of the sending iperf3 per sent datagram, µs (its own getrusage,
   * iperf3's `cpu_utilization_percent.host_total`). With tick accounting the
   * softirq work done in its context is its system time too: on veth the
   * host's, the gateway's and the router's forwarding of each datagram runs
   * there. Unlike packets/s it barely depends on how much of the machine
   * other processes take.
   */
  senderUsPerPacket: number | null;
}

/** One iperf3 TCP run. */
export interface TcpRun {
  seconds: number;
  /** Receiver goodput, megabits per second. */
  mbps: number;
  retransmits: number;
}

/** Percentiles of a sample, microseconds. */
export interface Percentiles {
  n: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  minUs: number;
  maxUs: number;
}

/** Result of the new-session probe. */
export interface SessionProbe {
  /** Round trip of the first datagram of a fresh socket (the session is set up on the way). */
  first: Percentiles;
  /** Round trip of the second datagram of the same socket (session already set up). */
  second: Percentiles;
  /** Per session: first minus second round trip. */
  setup: Percentiles;
  /** Sessions whose first or second datagram got no answer within 2 s. */
  lost: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** p50/p99/mean/min/max of microsecond values. */
export function summarize(us: number[]): Percentiles {
  const s = [...us].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  const r = (v: number) => Math.round(v * 10) / 10;
  return {
    n: s.length,
    p50Us: r(percentile(s, 50)),
    p99Us: r(percentile(s, 99)),
    meanUs: r(mean),
    minUs: r(s[0] ?? NaN),
    maxUs: r(s[s.length - 1] ?? NaN),
  };
}

/** Median of numbers (the middle run of an odd count, the lower middle otherwise). */
export function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
}

/** Starts a one-shot iperf3 server on the peer and waits until it listens. */
async function iperfServer(t: Topology, ns: string): Promise<Spawned> {
  const s = t.spawn(ns, ["iperf3", "-s", "-1", "-p", String(IPERF_PORT), "--forceflush"]);
  await s.waitForOutput(/listening/i, 10_000);
  return s;
}

async function iperfClient(
  t: Topology,
  from: string,
  to: string,
  args: string[],
  seconds: number,
): Promise<any> {
  const srv = await iperfServer(t, to);
  try {
    const peer = t.peers.find((p) => p.ns === to)!;
    const r = await t.exec(from, [
      "iperf3",
      "-c",
      peer.addrText,
      "-p",
      String(IPERF_PORT),
      "-t",
      String(seconds),
      "--json",
      ...pinArgs(),
      ...args,
    ], { timeoutMs: (seconds + 20) * 1000 });
    let j: any;
    try {
      j = JSON.parse(r.stdout);
    } catch {
      throw new Error(`iperf3 ${args.join(" ")} printed no JSON (${r.code}): ${r.stderr}`);
    }
    if (j.error) throw new Error(`iperf3 ${args.join(" ")}: ${j.error}`);
    return j;
  } finally {
    await srv.stop("SIGTERM", 2000);
  }
}

/**
 * `iperf3 -A client,server` when `DPM_BENCH_PIN` is set ("0,1": the client
 * on CPU 0, the server on CPU 1), else nothing (the scheduler places them).
 */
function pinArgs(): string[] {
  const pin = Deno.env.get("DPM_BENCH_PIN");
  return pin ? ["-A", pin] : [];
}

/**
 * Unlimited-rate UDP (`iperf3 -u -b 0 -l size`) from `from` to the peer
 * namespace `to`. The receiver's count is the figure: what the path delivered.
 */
export async function udpFlood(
  t: Topology,
  from: string,
  to: string,
  size: number,
  seconds: number,
): Promise<UdpRun> {
  const e0 = await udpRcvbufErrors(t, to);
  const j = await iperfClient(t, from, to, ["-u", "-b", "0", "-l", String(size)], seconds);
  const e1 = await udpRcvbufErrors(t, to);
  const sent = j.end.sum_sent.packets as number;
  const rx = j.end.sum_received;
  const received = Math.round(rx.bytes / size);
  const secs = rx.seconds as number;
  return {
    size,
    seconds: +secs.toFixed(3),
    sent,
    received,
    pps: Math.round(received / secs),
    sentPps: Math.round(sent / (j.end.sum_sent.seconds as number)),
    lossPct: sent > 0 ? +((100 * (sent - received)) / sent).toFixed(2) : 0,
    receiverDrops: e1 - e0,
    senderUsPerPacket: senderUs(j, sent),
  };
}

/** The sending iperf3's CPU µs per sent datagram, from its JSON; null when it gives none. */
function senderUs(j: any, sent: number): number | null {
  const pct = j.end?.cpu_utilization_percent?.host_total;
  const secs = j.end?.sum_sent?.seconds;
  if (typeof pct !== "number" || typeof secs !== "number" || sent <= 0) return null;
  return +((pct / 100) * secs * 1e6 / sent).toFixed(3);
}

/** UDP RcvbufErrors of a namespace (/proc/net/snmp). */
export async function udpRcvbufErrors(t: Topology, ns: string): Promise<number> {
  const r = await t.exec(ns, ["cat", "/proc/net/snmp"]);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("Udp:"));
  if (lines.length < 2) return 0;
  const names = lines[0]!.trim().split(/\s+/);
  const values = lines[1]!.trim().split(/\s+/);
  const i = names.indexOf("RcvbufErrors");
  return i > 0 ? Number(values[i]) : 0;
}

/** One TCP stream (`iperf3 -c`) for `seconds`; the receiver's goodput. */
export async function tcpStream(
  t: Topology,
  from: string,
  to: string,
  seconds: number,
): Promise<TcpRun> {
  const j = await iperfClient(t, from, to, [], seconds);
  return {
    seconds: +(j.end.sum_received.seconds as number).toFixed(3),
    mbps: Math.round((j.end.sum_received.bits_per_second as number) / 1e5) / 10,
    retransmits: (j.end.sum_sent.retransmits as number | undefined) ?? 0,
  };
}

/** A UDP echo on {@link ECHO_PORT} (python3), answering every datagram with itself. */
export async function startEcho(t: Topology, ns: string): Promise<Spawned> {
  const s = t.spawn(ns, [
    "python3",
    "-u",
    "-c",
    `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("0.0.0.0", ${ECHO_PORT}))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
`,
  ]);
  await s.waitForOutput(/listening/, 10_000);
  return s;
}

async function python(t: Topology, ns: string, code: string, timeoutMs: number): Promise<any> {
  const r = await t.exec(ns, ["python3", "-u", "-c", code], { timeoutMs });
  if (r.code !== 0) throw new Error(`python3 probe failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

/**
 * Steady-state round trips: one connected UDP socket, `warmup` unmeasured
 * exchanges (the first sets the session up), then `count` timed ones, one at
 * a time (ping-pong, 64-byte payload).
 */
export async function pingPong(
  t: Topology,
  from: string,
  to: string,
  count: number,
  warmup = 50,
): Promise<Percentiles & { lost: number }> {
  const j = await python(
    t,
    from,
    `
import socket, json, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("${to}", ${ECHO_PORT}))
s.settimeout(1)
msg = b"x" * 64
rtt = []
lost = 0
for i in range(${warmup} + ${count}):
    t0 = time.perf_counter_ns()
    s.send(msg)
    try:
        s.recv(2048)
    except socket.timeout:
        lost += 1
        continue
    t1 = time.perf_counter_ns()
    if i >= ${warmup}:
        rtt.append((t1 - t0) / 1000)
print(json.dumps({"rtt": rtt, "lost": lost}))
`,
    60_000 + count * 10,
  );
  return { ...summarize(j.rtt as number[]), lost: j.lost as number };
}

/**
 * New sessions: `count` times, a fresh socket on a fresh ephemeral port sends
 * one datagram and times the reply (the first packet of a new session), then
 * a second one on the same socket (the session exists). The difference is the
 * cost of setting the session up, NAT and all.
 */
export async function newSessions(
  t: Topology,
  from: string,
  to: string,
  count: number,
): Promise<SessionProbe> {
  const j = await python(
    t,
    from,
    `
import socket, json, time
first, second, lost = [], [], 0
for i in range(${count}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.connect(("${to}", ${ECHO_PORT}))
    s.settimeout(2)
    try:
        t0 = time.perf_counter_ns()
        s.send(b"first")
        s.recv(2048)
        t1 = time.perf_counter_ns()
        s.send(b"second")
        s.recv(2048)
        t2 = time.perf_counter_ns()
        first.append((t1 - t0) / 1000)
        second.append((t2 - t1) / 1000)
    except socket.timeout:
        lost += 1
    s.close()
print(json.dumps({"first": first, "second": second, "lost": lost}))
`,
    60_000 + count * 100,
  );
  const first = j.first as number[];
  const second = j.second as number[];
  return {
    first: summarize(first),
    second: summarize(second),
    setup: summarize(first.map((f, i) => f - second[i]!)),
    lost: j.lost as number,
  };
}

/** utime + stime of a process (all its threads), in clock ticks; 0 when it is gone. */
export function processTicks(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of stat; f[0] is field 3.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/** Busy and total clock ticks of the whole machine, from /proc/stat. */
export function systemTicks(): { busy: number; total: number } {
  const line = Deno.readTextFileSync("/proc/stat").split("\n")[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest is inside user).
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** Counters of the netfilter queues of a namespace (/proc/net/netfilter/nfnetlink_queue), summed. */
export interface QueueCounters {
  /** Packets dropped because the queue was full (queue_dropped). */
  queueDropped: number;
  /** Packets dropped because the netlink socket's buffer was full (user_dropped). */
  userDropped: number;
  /** Last packet id handed out (id_sequence). */
  idSequence: number;
}

/** Reads the queue counters in `ns`; null when no queue is bound there. */
export async function queueCounters(t: Topology, ns: string): Promise<QueueCounters | null> {
  const r = await t.exec(ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"]);
  const lines = r.stdout.trim().split("\n").filter(Boolean);
  if (r.code !== 0 || lines.length === 0) return null;
  const c: QueueCounters = { queueDropped: 0, userDropped: 0, idSequence: 0 };
  for (const l of lines) {
    // queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
    const f = l.trim().split(/\s+/).map(Number);
    c.queueDropped += f[5] ?? 0;
    c.userDropped += f[6] ?? 0;
    c.idSequence += f[7] ?? 0;
  }
  return c;
}

/** Whether `ethtool` can be run (to switch segmentation offloads off for a reference). */
export async function haveEthtool(): Promise<boolean> {
  try {
    const o = await new Deno.Command("ethtool", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return o.success;
  } catch {
    return false;
  }
}

/** Switches TSO, GSO and GRO of `dev` in `ns` on or off. */
export async function setOffloads(
  t: Topology,
  ns: string,
  dev: string,
  on: boolean,
): Promise<void> {
  const v = on ? "on" : "off";
  const r = await t.exec(ns, ["ethtool", "-K", dev, "tso", v, "gso", v, "gro", v]);
  if (r.code !== 0) throw new Error(`ethtool -K ${dev} ${v} failed: ${r.stderr}`);
}

/** Fields of /proc/meminfo, in bytes (the file gives kB). */
export function memInfo(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of Deno.readTextFileSync("/proc/meminfo").split("\n")) {
    const m = /^(\w+):\s+(\d+)(?:\s+kB)?/.exec(l);
    if (m) out[m[1]!] = Number(m[2]) * (l.endsWith("kB") ? 1024 : 1);
  }
  return out;
}

/**
 * Bytes of the objects in use in each slab cache (active_objs × objsize,
 * /proc/slabinfo); empty when unreadable. Objects in use rather than pages:
 * freed objects stay in their pages until the slab is shrunk, and would be
 * counted again by the next fill.
 */
export function slabCaches(): Map<string, number> {
  const out = new Map<string, number>();
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/slabinfo");
  } catch {
    return out;
  }
  for (const l of text.split("\n").slice(2)) {
    const f = l.trim().split(/\s+/);
    if (f.length < 4) continue;
    out.set(f[0]!, Number(f[1]) * Number(f[3]));
  }
  return out;
}

/** Kernel memory that per-object allocations can grow: slab, vmalloc and per-CPU areas. */
export interface KernelMemory {
  /** Slab objects in use, all caches (/proc/slabinfo). */
  slabBytes: number;
  /** Slab pages (/proc/meminfo Slab), for reference. */
  slabPagesBytes: number;
  vmallocBytes: number;
  percpuBytes: number;
  caches: Map<string, number>;
}

/** A snapshot of {@linkcode KernelMemory}. */
export function kernelMemory(): KernelMemory {
  const m = memInfo();
  const caches = slabCaches();
  let used = 0;
  for (const v of caches.values()) used += v;
  return {
    slabBytes: used,
    slabPagesBytes: m.Slab ?? 0,
    vmallocBytes: m.VmallocUsed ?? 0,
    percpuBytes: m.Percpu ?? 0,
    caches,
  };
}

/**
 * Growth between two snapshots: `slabBytes` sums the caches that grew (the
 * machine's other caches may shrink meanwhile, e.g. freed namespaces, and
 * would hide growth in a net figure, kept as `netSlabBytes`); totalBytes =
 * slab + vmalloc + per-CPU growth; and the caches that grew the most.
 */
export function kernelGrowth(
  a: KernelMemory,
  b: KernelMemory,
  top = 6,
): {
  slabBytes: number;
  netSlabBytes: number;
  slabPagesBytes: number;
  vmallocBytes: number;
  percpuBytes: number;
  totalBytes: number;
  topCaches: { name: string; bytes: number }[];
} {
  const grown: { name: string; bytes: number }[] = [];
  for (const [name, v] of b.caches) {
    const d = v - (a.caches.get(name) ?? 0);
    if (d > 0) grown.push({ name, bytes: d });
  }
  grown.sort((x, y) => y.bytes - x.bytes);
  const slab = grown.reduce((n, c) => n + c.bytes, 0);
  const vm = b.vmallocBytes - a.vmallocBytes;
  const pc = b.percpuBytes - a.percpuBytes;
  return {
    slabBytes: slab,
    netSlabBytes: b.slabBytes - a.slabBytes,
    slabPagesBytes: b.slabPagesBytes - a.slabPagesBytes,
    vmallocBytes: vm,
    percpuBytes: pc,
    totalBytes: slab + vm + pc,
    topCaches: grown.slice(0, top),
  };
}

/** Resident set size of a process, bytes (VmRSS); 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Entries in the conntrack table of a namespace (`conntrack -C`); 0 when none or unreadable. */
export async function conntrackCount(t: Topology, ns: string): Promise<number> {
  const r = await t.exec(ns, ["conntrack", "-C"]);
  const n = Number(r.stdout.trim());
  return r.code === 0 && Number.isFinite(n) ? n : 0;
}

/** Forgets every conntrack entry of a namespace (`conntrack -F`). */
export async function conntrackFlush(t: Topology, ns: string): Promise<void> {
  await t.exec(ns, ["conntrack", "-F"]);
}

/**
 * Creates about `n` UDP flows from `from` to the peer address `to`: one
 * datagram each, from `ceil(n / 50000)` sockets to 50,000 destination ports
 * each, paced in bursts so the veth backlog does not drop them. Nothing needs
 * to listen: each datagram makes one conntrack entry on a NATing gateway.
 */
export async function udpSpray(t: Topology, from: string, to: string, n: number): Promise<void> {
  await python(
    t,
    from,
    `
import socket, json, time
n, per, k = ${n}, 50000, 0
socks = []
while k < n:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    socks.append(s)
    for i in range(min(per, n - k)):
        s.sendto(b"x", ("${to}", 10000 + i))
        if i % 500 == 499:
            time.sleep(0.001)
    k += per
print(json.dumps({"sent": k}))
`,
    120_000 + n,
  );
}

/** One session of a burst ({@linkcode burstSessions}). */
export interface BurstSession {
  /** The socket's local (ephemeral) port on the sending host. */
  port: number;
  /** Datagrams the socket sent (one, plus one every 2 s until answered). */
  sends: number;
  /** From its first send to its first reply, microseconds; null when never answered. */
  firstUs: number | null;
  /** The source pair the peer saw, one per reply ("ip:port", testing/apps.ts `udpEcho`). */
  seen: string[];
}

/** A raw burst: every session, and the time from the first send to the last session's first reply. */
export interface BurstRun {
  sessions: BurstSession[];
  /** Microseconds from the burst's first send to the last first reply; null if one never came. */
  allUs: number | null;
}

/**
 * A burst of `n` new UDP sessions at once from `from`: `n` sockets on fresh
 * ephemeral ports, each sending its first datagram to `dest` ("ip:port", a
 * testing/apps.ts `udpEcho`, which answers with the source it saw) in one
 * loop, then again every `resendMs` (default 2 s; 0: never) until answered
 * or `timeoutMs` is up; replies that arrive within 300 ms after the last
 * first reply are kept too (testing/apps.ts `udpBurst`; the root tests of
 * tests/root/burst_root_test.ts run it too).
 */
export async function burstSessions(
  t: Topology,
  from: string,
  dest: string,
  n: number,
  timeoutMs: number,
  resendMs = 2000,
): Promise<BurstRun> {
  const r = await t.exec(from, udpBurst(n, dest, { roundMs: timeoutMs, resendMs }), {
    timeoutMs: timeoutMs + 60_000,
  });
  if (r.code !== 0) throw new Error(`burst probe failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as BurstRun;
}

/**
 * A burst of `n` TCP connects at once from `from` to `dest` (a
 * testing/apps.ts `tcpSeen`), as a {@linkcode BurstRun}: `firstUs` is
 * connect() to established, `seen` the source the peer saw, and `sends` 1
 * plus the SYNs the sending host's kernel retransmitted during the whole
 * burst, all counted on the first session (TcpExt TCPSynRetrans of the
 * namespace: a SYN lost or held too long is resent by the kernel after 1 s).
 */
export async function tcpBurstSessions(
  t: Topology,
  from: string,
  dest: string,
  n: number,
  timeoutMs: number,
): Promise<BurstRun & { synRetrans: number }> {
  const before = await synRetrans(t, from);
  const r = await t.exec(from, tcpConnectBurst(n, dest, { timeoutMs }), {
    timeoutMs: timeoutMs + 60_000,
  });
  if (r.code !== 0) throw new Error(`TCP connect burst failed (${r.code}): ${r.stderr}`);
  const run = JSON.parse(r.stdout.trim().split("\n").pop()!) as BurstRun;
  const retrans = (await synRetrans(t, from)) - before;
  if (run.sessions[0]) run.sessions[0].sends += retrans;
  return { ...run, synRetrans: retrans };
}

/** TcpExt TCPSynRetrans of namespace `ns` (/proc/net/netstat read inside it). */
export async function synRetrans(t: Topology, ns: string): Promise<number> {
  const r = await t.exec(ns, ["cat", "/proc/net/netstat"]);
  if (r.code !== 0) throw new Error(`reading /proc/net/netstat in ${ns}: ${r.stderr}`);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("TcpExt:"));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const i = names.indexOf("TCPSynRetrans");
  if (i < 0) throw new Error("no TcpExt TCPSynRetrans in /proc/net/netstat");
  return Number(values[i]);
}

/**
 * The public pair h's driver reports for each of its sessions toward
 * `dest` ("ip:port"), by local port, and its counters (`dpm status
 * --driver --json` on the host's operator socket `socket`). `proto`: the
 * sessions' protocol name as the status shows it.
 */
export async function driverPairs(
  t: Topology,
  host: { ns: string; addrText: string },
  socket: string,
  dest: string,
  proto: "udp" | "tcp" = "udp",
): Promise<{ stats: Record<string, unknown>; pub: Map<number, string> }> {
  const r = await t.exec(host.ns, [
    ...dpmCommand(),
    "status",
    "--driver",
    "--json",
    "--socket",
    socket,
  ], { timeoutMs: 30_000, env: DPM_ENV });
  if (r.code !== 0) throw new Error(`dpm status --driver failed (${r.code}): ${r.stderr}`);
  const st = JSON.parse(r.stdout) as {
    stats: Record<string, unknown>;
    sessions: { proto?: string; result: string; local: string; remote: string; public?: string }[];
  };
  const pub = new Map<number, string>();
  for (const s of st.sessions) {
    if (
      s.result === "ok" && s.remote === dest && s.local.startsWith(`${host.addrText}:`) &&
      (s.proto === undefined || s.proto === proto)
    ) {
      pub.set(Number(s.local.slice(s.local.lastIndexOf(":") + 1)), s.public ?? "");
    }
  }
  return { stats: st.stats, pub };
}

/** What a burst showed: first round trips, and the sessions that went out untranslated. */
export interface BurstProbe {
  /** Sessions opened at once. */
  sessions: number;
  /** Per-session first round trip, of the answered sessions. */
  first: Percentiles;
  /** From the burst's first send until every session had its first reply, µs (null: some never did). */
  allUs: number | null;
  /** Sessions that never got a reply. */
  unanswered: number;
  /** Sessions that had to send more than once before their first reply. */
  resent: number;
  /**
   * dpm: sessions the peer saw from a pair other than the public pair the
   * driver reports for them (e.g. the gateway's MASQUERADE), plus those
   * never answered; null for MASQUERADE (there is no dpm pair to compare to).
   */
  untranslated: number | null;
  /** Up to 5 untranslated sessions, for the log. */
  examples: string[];
}

/**
 * Judges a burst. `publicOf` maps a local port to the public pair the driver
 * reports for it ("ip:port"); null for MASQUERADE. A dpm session is
 * translated when every reply it got shows exactly that pair.
 */
export function judgeBurst(
  run: BurstRun,
  publicOf: ((port: number) => string | undefined) | null,
): BurstProbe {
  const answered = run.sessions.filter((s) => s.firstUs !== null);
  const examples: string[] = [];
  let untranslated = 0;
  if (publicOf) {
    for (const s of run.sessions) {
      const want = publicOf(s.port);
      const bad = s.seen.length === 0 || want === undefined || s.seen.some((x) => x !== want);
      if (bad) {
        untranslated++;
        if (examples.length < 5) {
          examples.push(
            `port ${s.port}: peer saw ${s.seen.join(", ") || "nothing"}, driver says ${
              want ?? "nothing"
            }`,
          );
        }
      }
    }
  }
  return {
    sessions: run.sessions.length,
    first: summarize(answered.map((s) => s.firstUs!)),
    allUs: run.allUs === null ? null : Math.round(run.allUs),
    unanswered: run.sessions.length - answered.length,
    resent: answered.filter((s) => s.sends > 1).length,
    untranslated: publicOf ? untranslated : null,
    examples,
  };
}
