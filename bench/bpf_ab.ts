/**
 * Two builds of the bpf data path against MASQUERADE, alternated in one
 * session (as root): on one namespace topology, each round measures
 * MASQUERADE (the iptables rule on the gateway, no dpm), then dpm
 * `--datapath bpf` from build A, then from build B (server on the
 * gateway, driver on h1), each with a 64 B UDP flood h1 -> p1 and one TCP
 * stream (bench/measure.ts). A build is a command that runs dpm (the
 * `DPM_BIN` of testing/launch.ts), e.g. a script that runs another
 * checkout's mod.ts; `-` is this checkout. Prints each round's figures and
 * the ratios against that round's MASQUERADE (packets/s, TCP Mbit/s, and
 * the sending iperf3's CPU per 64 B datagram), so that a change to the
 * programs is judged against the same noise as the build before it. With
 * `DPM_BENCH_PIN=0,1` (bench/measure.ts) the iperf3 client and server run
 * pinned to those CPUs.
 *
 *   deno run -A bench/bpf_ab.ts A B [rounds, default 5] [seconds, default 3]
 *
 * Not a test: it prints figures and asserts nothing.
 *
 * @module
 */

import { createTopology, destroyOnSignal, type Topology } from "../testing/topology.ts";
import { startDpm } from "../testing/launch.ts";
import { conntrackFlush, median, tcpStream, udpFlood } from "./measure.ts";

const [buildA = "-", buildB = "-"] = Deno.args;
const rounds = Number(Deno.args[2] ?? 5);
const seconds = Number(Deno.args[3] ?? 3);
const MASQ = ["-s", "10.0.0.0/24", "-o", "wan0", "-j", "MASQUERADE"];

interface Figures {
  pps: number;
  mbps: number;
  /** The sending iperf3's CPU µs per sent 64 B datagram (the whole in-kernel path's cost). */
  us: number;
}

/** With BPF_AB_PERF=DIR: `perf record -a` during each flood, into DIR/<label>-<n>.data. */
const PERF = Deno.env.get("BPF_AB_PERF");
let perfRuns = 0;

async function measure(t: Topology, label: string): Promise<Figures> {
  const perf = PERF
    ? new Deno.Command("perf", {
      args: [
        "record",
        "-a",
        "-g",
        "-e",
        "cpu-clock",
        "-F",
        "1999",
        "-o",
        `${PERF}/${label}-${++perfRuns}.data`,
        "--",
        "sleep",
        String(Math.max(1, seconds - 1)),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn()
    : null;
  const u = await udpFlood(t, t.hosts[0]!.ns, t.peers[0]!.ns, 64, seconds);
  await perf?.status;
  console.error(`${label}: ${u.pps} pps delivered (${u.sentPps} sent, ${u.lossPct}% lost)`);
  const tcp = await tcpStream(t, t.hosts[0]!.ns, t.peers[0]!.ns, seconds);
  return { pps: u.pps, mbps: tcp.mbps, us: u.senderUsPerPacket ?? NaN };
}

async function forget(t: Topology): Promise<void> {
  await Promise.all([t.gateway.ns, t.hosts[0]!.ns].map((ns) => conntrackFlush(t, ns)));
}

async function masquerade(t: Topology): Promise<Figures> {
  const rule = (op: string) =>
    t.exec(t.gateway.ns, ["iptables", "-w", "-t", "nat", op, "POSTROUTING", ...MASQ]);
  await rule("-A");
  try {
    return await measure(t, "masq");
  } finally {
    await rule("-D");
    await forget(t);
  }
}

async function bpf(t: Topology, build: string): Promise<Figures> {
  if (build === "-") Deno.env.delete("DPM_BIN");
  else Deno.env.set("DPM_BIN", build);
  const d = await startDpm(t, { datapath: "bpf", driverHosts: ["h1"] });
  try {
    return await measure(t, build === "-" ? "b" : "a");
  } finally {
    await d.stop();
    await d.cleanup();
    await forget(t);
  }
}

const t = await createTopology({ hosts: 1, peers: 1 });
const undoSignals = destroyOnSignal(t);
const ratios = {
  a: { pps: [] as number[], tcp: [] as number[], us: [] as number[] },
  b: { pps: [] as number[], tcp: [] as number[], us: [] as number[] },
};
try {
  console.log(
    "| round | MASQ pps | A pps | B pps | MASQ Mbit/s | A Mbit/s | B Mbit/s | A/M pps | B/M pps | A/M TCP | B/M TCP | A/M sender µs | B/M sender µs |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (let r = 1; r <= rounds; r++) {
    const m = await masquerade(t);
    const a = await bpf(t, buildA);
    const b = await bpf(t, buildB);
    const f = (x: number) => x.toFixed(2);
    ratios.a.pps.push(a.pps / m.pps);
    ratios.b.pps.push(b.pps / m.pps);
    ratios.a.tcp.push(a.mbps / m.mbps);
    ratios.b.tcp.push(b.mbps / m.mbps);
    ratios.a.us.push(a.us / m.us);
    ratios.b.us.push(b.us / m.us);
    console.log(
      `| ${r} | ${m.pps} | ${a.pps} | ${b.pps} | ${m.mbps} | ${a.mbps} | ${b.mbps} | ${
        f(a.pps / m.pps)
      } | ${f(b.pps / m.pps)} | ${f(a.mbps / m.mbps)} | ${f(b.mbps / m.mbps)} | ${
        f(a.us / m.us)
      } | ${f(b.us / m.us)} |`,
    );
  }
  const f = (v: number[]) => median(v).toFixed(2);
  console.log(
    `median: A/M pps ${f(ratios.a.pps)}, B/M pps ${f(ratios.b.pps)}, A/M TCP ${
      f(ratios.a.tcp)
    }, B/M TCP ${f(ratios.b.tcp)}, A/M sender µs ${f(ratios.a.us)}, B/M sender µs ${
      f(ratios.b.us)
    }`,
  );
} finally {
  Deno.env.delete("DPM_BIN");
  undoSignals();
  await t.destroy();
}
