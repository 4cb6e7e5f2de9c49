/**
 * Where the kernel data path's per-packet cost goes (as root): on one
 * namespace topology, 64 B UDP floods h1 -> p1 (bench/measure.ts
 * `udpFlood`) through MASQUERADE, then through dpm's kernel path, then
 * again after removing, one at a time, the per-packet rules dpm keeps in
 * iptables: the host's mangle OUTPUT chain (DPM-DRV-NEW: `ct state ! new
 * return`, the hold of a new session's first packet), the host's raw chains
 * (DPM-DRV-OUT, DPM-DRV-PRE: ICMP to the queue), the gateway's
 * (DPM-SRV-FWD, DPM-SRV-PRE). Removing them breaks new sessions, ICMP and a
 * DROP forward policy; an established flood keeps flowing, which is what is
 * measured. Each iteration runs every step once (a noisy neighbour affects
 * all alike); prints the medians and per-iteration ratios to MASQUERADE.
 *
 *   deno run -A bench/kernel_parts.ts [iterations, default 5]
 *
 * Not a test: it prints figures and asserts nothing.
 *
 * @module
 */

import { createTopology, destroyOnSignal } from "../testing/topology.ts";
import { startDpm } from "../testing/launch.ts";
import { median, udpFlood } from "./measure.ts";

const iterations = Number(Deno.args[0] ?? 5);
const t = await createTopology({ hosts: 2, peers: 1 });
const undoSignals = destroyOnSignal(t);
try {
  const h1 = t.hosts[0]!.ns, p1 = t.peers[0]!.ns, gw = t.gateway.ns;
  const ex = async (ns: string, cmd: string[]) => {
    const r = await t.exec(ns, cmd);
    if (r.code !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr}`);
  };
  const flush = (ns: string, table: string, chain: string) =>
    ex(ns, ["iptables", "-w", "-t", table, "-F", chain]);
  const flood = async () => (await udpFlood(t, h1, p1, 64, 2)).pps;
  const steps = ["MASQUERADE", "dpm kernel", "- host mangle", "- host raw", "- gateway"] as const;
  const out = new Map<string, number[]>(steps.map((s) => [s, []]));
  const masq = ["-s", "10.0.0.0/24", "-o", "wan0", "-j", "MASQUERADE"];
  for (let i = 0; i < iterations; i++) {
    console.error(`iteration ${i + 1} of ${iterations}`);
    await ex(gw, ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", ...masq]);
    out.get("MASQUERADE")!.push(await flood());
    await ex(gw, ["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", ...masq]);
    await ex(gw, ["conntrack", "-F"]).catch(() => {});
    const d = await startDpm(t, { datapath: "kernel", driverHosts: ["h1"] });
    try {
      out.get("dpm kernel")!.push(await flood());
      await flush(h1, "mangle", "DPM-DRV-NEW");
      out.get("- host mangle")!.push(await flood());
      await flush(h1, "raw", "DPM-DRV-OUT");
      await flush(h1, "raw", "DPM-DRV-PRE");
      out.get("- host raw")!.push(await flood());
      await flush(gw, "filter", "DPM-SRV-FWD");
      await flush(gw, "raw", "DPM-SRV-PRE");
      out.get("- gateway")!.push(await flood());
    } finally {
      await d.stop();
      await d.cleanup();
    }
  }
  const m0 = median(out.get("MASQUERADE")!);
  console.log("| step (each removes more) | median pps | / MASQUERADE | per iteration |");
  console.log("|---|---:|---:|---|");
  for (const [k, v] of out) {
    const ratios = v.map((x, i) => (x / out.get("MASQUERADE")![i]!).toFixed(2)).join(" ");
    console.log(
      `| ${k} | ${Math.round(median(v))} | ${(median(v) / m0).toFixed(2)}x | ${ratios} |`,
    );
  }
} finally {
  undoSignals();
  await t.destroy();
}
