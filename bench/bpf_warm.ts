/**
 * What the bpf data path's per-packet programs cost with warm caches (as
 * root): on one namespace topology, dpm `--datapath bpf` (server on the
 * gateway, driver on h1) and one short 64 B UDP flood h1 -> p1 that makes
 * the session fast; then `BPF_PROG_TEST_RUN` (`bpftool prog run ...
 * repeat N`) of dpm_host_out and dpm_lan_in on a frame of that session, N
 * times in a row, so the figure is the programs' instructions and helpers
 * with everything in cache (a flood's figure, bench/bpf_parts.ts, adds the
 * cache misses of a packet that meets a cold program and map). The gap
 * between the two says what code size and memory layout cost.
 *
 *   deno run -A bench/bpf_warm.ts [repeat, default 1000000]
 *
 * Not a test: it prints figures and asserts nothing.
 *
 * @module
 */

import { createTopology, destroyOnSignal, type Topology } from "../testing/topology.ts";
import { startDpm } from "../testing/launch.ts";
import { udpFlood } from "./measure.ts";

const repeat = Number(Deno.args[0] ?? 1_000_000);

/** The first attached program named `name` in `ns` and its device's ifindex. */
async function progOf(t: Topology, ns: string, name: string): Promise<number> {
  const r = await t.exec(ns, ["bpftool", "-j", "prog", "show"]);
  const all = JSON.parse(r.stdout) as { id: number; name: string }[];
  const ids = all.filter((p) => p.name === name).map((p) => p.id);
  if (ids.length === 0) throw new Error(`no program ${name}`);
  return Math.max(...ids);
}

/** A fast UDP entry (dir OUT) of the session map dpm_nat of program `prog`: its key bytes. */
async function fastKey(t: Topology, ns: string, prog: number): Promise<number[]> {
  const p = await t.exec(ns, ["bpftool", "-j", "prog", "show", "id", String(prog)]);
  for (const id of JSON.parse(p.stdout).map_ids as number[]) {
    const r = await t.exec(ns, ["bpftool", "-j", "map", "dump", "id", String(id)]);
    const m = await t.exec(ns, ["bpftool", "-j", "map", "show", "id", String(id)]);
    if (JSON.parse(m.stdout).name !== "dpm_nat") continue;
    for (const e of JSON.parse(r.stdout) as { key: string[]; value: string[] }[]) {
      const k = e.key.map((x) => parseInt(x, 16));
      const v = e.value.map((x) => parseInt(x, 16));
      if (k[12] === 17 && k[13] === 1 && (v[12]! & 3) === 3) return k;
    }
  }
  throw new Error(`no fast UDP entry for program ${prog}`);
}

/**
 * An Ethernet + IPv4 + UDP frame with 64 B of payload for a key's addresses
 * and ports, to `dmac` (the device's own: an ingress program sees it as the
 * host's, PACKET_HOST).
 */
function frame(k: number[], dmac: number[]): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + 64);
  f.set([...dmac, 2, 0, 0, 0, 0, 2, 8, 0], 0);
  const ip = [0x45, 0, 0, 92, 0, 1, 0x40, 0, 64, 17, 0, 0, ...k.slice(0, 8)];
  let s = 0;
  for (let i = 0; i < 20; i += 2) s += (ip[i]! << 8) | ip[i + 1]!;
  while (s > 0xffff) s = (s & 0xffff) + (s >> 16);
  ip[10] = (~s >> 8) & 0xff;
  ip[11] = ~s & 0xff;
  f.set(ip, 14);
  f.set([...k.slice(8, 12), 0, 72, 0, 0], 34);
  return f;
}

/** `bpftool prog run` of program `id` in `ns`, `repeat` times: ns per run. */
async function run(t: Topology, ns: string, id: number, f: Uint8Array, ifindex: number) {
  const dir = await Deno.makeTempDir({ prefix: "dpm-bpf-warm-" });
  try {
    await Deno.writeFile(`${dir}/in`, f);
    const ctx = new Uint8Array(192);
    new DataView(ctx.buffer).setUint32(40, ifindex, true);
    await Deno.writeFile(`${dir}/ctx`, ctx);
    const r = await t.exec(ns, [
      "bpftool",
      "-j",
      "prog",
      "run",
      "id",
      String(id),
      "data_in",
      `${dir}/in`,
      "ctx_in",
      `${dir}/ctx`,
      "repeat",
      String(repeat),
    ]);
    if (r.code !== 0) throw new Error(`bpftool prog run: ${r.stderr}`);
    const j = JSON.parse(r.stdout);
    return { retval: j.retval as number, ns: j.duration as number };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function ifindexOf(t: Topology, ns: string, dev: string): Promise<number> {
  const r = await t.exec(ns, ["cat", `/sys/class/net/${dev}/ifindex`]);
  return Number(r.stdout.trim());
}

const t = await createTopology({ hosts: 2, peers: 1 });
const undoSignals = destroyOnSignal(t);
const d = await startDpm(t, { datapath: "bpf", driverHosts: ["h1"] });
try {
  const h1 = t.hosts[0]!.ns;
  const gw = t.gateway.ns;
  const u = await udpFlood(t, h1, t.peers[0]!.ns, 64, 1);
  console.error(`flood: ${u.pps} pps delivered`);
  const rows: [string, string, string][] = [[h1, "dpm_host_out", "eth0"], [
    gw,
    "dpm_lan_in",
    t.gateway.lanIf,
  ]];
  console.log(`| program | ns per run, warm (${repeat} runs) | retval |`);
  console.log("|---|---:|---:|");
  for (const [ns, name, dev] of rows) {
    const id = await progOf(t, ns, name);
    const k = await fastKey(t, ns, id);
    // Keep the next-hop cache fresh: a packet of the session just before.
    await udpFlood(t, h1, t.peers[0]!.ns, 64, 1);
    const mac = (await t.exec(ns, ["cat", `/sys/class/net/${dev}/address`])).stdout.trim();
    const dmac = mac.split(":").map((x) => parseInt(x, 16));
    const r = await run(t, ns, id, frame(k, dmac), await ifindexOf(t, ns, dev));
    console.log(`| ${name} | ${r.ns} | ${r.retval} |`);
  }
} finally {
  await d.stop();
  await d.cleanup();
  undoSignals();
  await t.destroy();
}
