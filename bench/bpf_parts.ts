/**
 * What the bpf data path's programs cost per packet (as root): on one
 * namespace topology, dpm `--datapath bpf` (server on the gateway, driver
 * on h1), then 64 B UDP floods h1 -> p1 (bench/measure.ts `udpFlood`) with
 * the kernel's BPF run-time statistics on (`kernel.bpf_stats_enabled`,
 * restored after): per program attached in the topology's namespaces
 * (`bpftool net show`), the runs and the nanoseconds per run during each
 * flood. These figures are the programs' own time only (not the stack
 * they skip or the redirects they do) and, unlike packets/s, barely depend
 * on what else the machine runs, so they compare program versions on a busy
 * machine. Prints the medians over the floods.
 *
 *   deno run -A bench/bpf_parts.ts [floods, default 5] [size, default 64]
 *
 * Not a test: it prints figures and asserts nothing.
 *
 * @module
 */

import { createTopology, destroyOnSignal, type Topology } from "../testing/topology.ts";
import { denoScript, DPM_ENV, startDpm } from "../testing/launch.ts";
import { TcPoint, tcxQuery } from "../linux/libbpf.ts";
import { ifIndex } from "../linux/libc.ts";
import { median, udpFlood } from "./measure.ts";

// `--tcx IF,...` (run by the main part inside a namespace, where bpftool 7.1
// does not list tcx links): the ids of the programs attached there with tcx.
if (Deno.args[0] === "--tcx") {
  const out: Record<string, number[]> = {};
  for (const name of (Deno.args[1] ?? "").split(",")) {
    for (const [pt, label] of [[TcPoint.INGRESS, "ingress"], [TcPoint.EGRESS, "egress"]] as const) {
      out[`${name} tcx/${label}`] = tcxQuery(ifIndex(name), pt) ?? [];
    }
  }
  console.log(JSON.stringify(out));
  Deno.exit(0);
}

const floods = Number(Deno.args[0] ?? 5);
const size = Number(Deno.args[1] ?? 64);

interface ProgStat {
  name: string;
  where: string;
  runs: number;
  ns: number;
}

/** The dpm programs attached in `ns` (tc and XDP), by id. */
async function attached(t: Topology, ns: string): Promise<Map<number, string>> {
  const r = await t.exec(ns, ["bpftool", "-j", "net", "show"]);
  if (r.code !== 0) throw new Error(`bpftool net show: ${r.stderr}`);
  const out = new Map<number, string>();
  for (const part of JSON.parse(r.stdout) as Record<string, any[]>[]) {
    for (const [kind, list] of Object.entries(part)) {
      for (const a of list ?? []) {
        // tc filters name their program `id`, tcx links `prog_id`.
        const id = typeof a.prog_id === "number" ? a.prog_id : a.id;
        if (typeof id === "number") {
          out.set(id, `${ns.replace(t.prefix, "")} ${a.devname ?? ""} ${a.kind ?? kind}`);
        }
      }
    }
  }
  return out;
}

async function stats(t: Topology, ids: Map<number, string>): Promise<Map<number, ProgStat>> {
  const out = new Map<number, ProgStat>();
  for (const [id, where] of ids) {
    const r = await t.exec(t.gateway.ns, ["bpftool", "-j", "prog", "show", "id", String(id)]);
    if (r.code !== 0) continue;
    const p = JSON.parse(r.stdout);
    out.set(id, { name: p.name, where, runs: p.run_cnt ?? 0, ns: p.run_time_ns ?? 0 });
  }
  return out;
}

const before = (await Deno.readTextFile("/proc/sys/kernel/bpf_stats_enabled")).trim();
const t = await createTopology({ hosts: 2, peers: 1 });
const undoSignals = destroyOnSignal(t);
const d = await startDpm(t, { datapath: "bpf", driverHosts: ["h1"] });
try {
  await Deno.writeTextFile("/proc/sys/kernel/bpf_stats_enabled", "1");
  const ids = new Map<number, string>();
  for (const ns of [t.gateway.ns, t.hosts[0]!.ns]) {
    for (const [id, w] of await attached(t, ns)) ids.set(id, w);
  }
  const gw = t.gateway;
  const r = await t.exec(
    gw.ns,
    denoScript(new URL(import.meta.url).pathname, [
      "--tcx",
      `${gw.lanIf},${gw.wanIf}`,
    ]),
    { env: DPM_ENV },
  );
  if (r.code !== 0) throw new Error(`listing the gateway's tcx programs: ${r.stderr}`);
  for (const [where, list] of Object.entries(JSON.parse(r.stdout) as Record<string, number[]>)) {
    for (const id of list) ids.set(id, `gw ${where}`);
  }
  const rows = new Map<number, { runs: number[]; nsPerRun: number[] }>();
  const pps: number[] = [];
  for (let i = 0; i < floods; i++) {
    const s0 = await stats(t, ids);
    const u = await udpFlood(t, t.hosts[0]!.ns, t.peers[0]!.ns, size, 2);
    const s1 = await stats(t, ids);
    pps.push(u.pps);
    for (const [id, a] of s1) {
      const b = s0.get(id);
      if (!b) continue;
      const runs = a.runs - b.runs;
      const row = rows.get(id) ?? { runs: [], nsPerRun: [] };
      row.runs.push(runs);
      row.nsPerRun.push(runs > 0 ? (a.ns - b.ns) / runs : 0);
      rows.set(id, row);
    }
    console.error(`flood ${i + 1} of ${floods}: ${u.pps} pps delivered`);
  }
  const s = await stats(t, ids);
  console.log(`${size} B UDP h1 -> p1, median of ${floods} floods: ${median(pps)} pps delivered`);
  console.log("| program | where | runs per flood | ns per run |");
  console.log("|---|---|---:|---:|");
  for (const [id, r] of rows) {
    const p = s.get(id)!;
    console.log(
      `| ${p.name} | ${p.where} | ${median(r.runs)} | ${median(r.nsPerRun).toFixed(0)} |`,
    );
  }
} finally {
  await Deno.writeTextFile("/proc/sys/kernel/bpf_stats_enabled", before).catch(() => {});
  await d.stop();
  await d.cleanup();
  undoSignals();
  await t.destroy();
}
