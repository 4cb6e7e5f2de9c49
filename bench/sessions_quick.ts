/**
 * Development harness (not part of `deno task bench`): the new-session rows
 * only, MASQUERADE and dpm kernel alternating in one topology.
 *
 *   deno run -A bench/sessions_quick.ts [--rounds 2] [--burst 1500,3000] [--tcp 1000]
 *     [--sessions 300] [--reserve 5] [--modes masq,kernel]
 *
 * @module
 */

import { createTopology, destroyOnSignal, type Topology } from "../testing/topology.ts";
import { type Dpm, DPM_ENV, dpmCommand, serveApp, startDpm } from "../testing/launch.ts";
import { tcpConnectBurst, tcpSeen, udpBurst, udpEcho } from "../testing/apps.ts";
import { judgeBurst, newSessions, startEcho } from "./measure.ts";

const args = Deno.args;
const opt = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const rounds = Number(opt("--rounds", "1"));
const bursts = opt("--burst", "1500,3000").split(",").filter(Boolean).map(Number);
const tcpN = Number(opt("--tcp", "1000"));
const nSessions = Number(opt("--sessions", "300"));
const modes = opt("--modes", "masq,kernel").split(",");
const driverArgs = opt("--driver-args", "").split(" ").filter(Boolean);
const serverArgs = opt("--server-args", "").split(" ").filter(Boolean);
const SEEN = 7001;
const TCP_SEEN = 7002;
const log = (s: string) => console.error(`quick: ${s}`);

async function publicOf(t: Topology, d: Dpm): Promise<Map<number, string>> {
  const h1 = t.hosts[0]!;
  const r = await t.exec(h1.ns, [
    ...dpmCommand(),
    "status",
    "--driver",
    "--json",
    "--socket",
    d.driverSocket("h1"),
  ], { timeoutMs: 60_000, env: DPM_ENV });
  const st = JSON.parse(r.stdout) as {
    stats: Record<string, unknown>;
    sessions: { result: string; local: string; remote: string; public?: string }[];
  };
  const pub = new Map<number, string>();
  for (const s of st.sessions) {
    if (s.result === "ok" && s.local.startsWith(`${h1.addrText}:`)) {
      pub.set(Number(s.local.slice(s.local.lastIndexOf(":") + 1)), s.public ?? "");
    }
  }
  log(`driver stats ${JSON.stringify(st.stats)}`);
  return pub;
}

async function mode(t: Topology, name: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = { mode: name };
  for (const what of ["setup", ...bursts.map((n) => `burst${n}`), ...(tcpN > 0 ? ["tcp"] : [])]) {
    Object.assign(out, await probe(t, name, what));
  }
  return out;
}

async function probe(t: Topology, name: string, what: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = { mode: name };
  let d: Dpm | null = null;
  const gw = t.gateway.ns;
  if (name === "masq") {
    await t.exec(gw, [
      "iptables",
      "-w",
      "-t",
      "nat",
      "-A",
      "POSTROUTING",
      "-s",
      "10.0.0.0/24",
      "-o",
      "wan0",
      "-j",
      "MASQUERADE",
    ]);
  } else {
    d = await startDpm(t, { driverHosts: ["h1"], datapath: "kernel", driverArgs, serverArgs });
  }
  try {
    const h1 = t.hosts[0]!;
    const p1 = t.peers[0]!;
    if (what === "setup") {
      const s = await newSessions(t, h1.ns, p1.addrText, nSessions);
      out.setup = {
        p50: s.setup.p50Us,
        p99: s.setup.p99Us,
        firstP50: s.first.p50Us,
        secondP50: s.second.p50Us,
        lost: s.lost,
      };
      log(`${name}: setup ${JSON.stringify(out.setup)}`);
    }
    for (const n of bursts) {
      if (what !== `burst${n}`) continue;
      const r = await t.exec(
        h1.ns,
        udpBurst(n, `${p1.addrText}:${SEEN}`, { roundMs: 30_000 }),
        { timeoutMs: 90_000 },
      );
      const run = JSON.parse(r.stdout.trim().split("\n").pop()!);
      const pub = d ? await publicOf(t, d) : null;
      const j = judgeBurst(run, pub ? (port) => pub.get(port) : null);
      out[`burst${n}`] = {
        p50ms: +(j.first.p50Us / 1000).toFixed(1),
        p99ms: +(j.first.p99Us / 1000).toFixed(1),
        maxms: +(j.first.maxUs / 1000).toFixed(1),
        resent: j.resent,
        unanswered: j.unanswered,
        untranslated: j.untranslated,
      };
      log(`${name}: burst ${n} ${JSON.stringify(out[`burst${n}`])} ${j.examples.join("; ")}`);
    }
    if (what === "tcp") {
      const r = await t.exec(
        h1.ns,
        tcpConnectBurst(tcpN, `${p1.addrText}:${TCP_SEEN}`, { timeoutMs: 30_000 }),
        { timeoutMs: 90_000 },
      );
      const run = JSON.parse(r.stdout.trim().split("\n").pop()!);
      const pub = d ? await publicOf(t, d) : null;
      const j = judgeBurst(run, pub ? (port) => pub.get(port) : null);
      out.tcp = {
        p50ms: +(j.first.p50Us / 1000).toFixed(1),
        p99ms: +(j.first.p99Us / 1000).toFixed(1),
        maxms: +(j.first.maxUs / 1000).toFixed(1),
        unanswered: j.unanswered,
        untranslated: j.untranslated,
      };
      log(`${name}: tcp ${tcpN} ${JSON.stringify(out.tcp)} ${j.examples.join("; ")}`);
    }
  } finally {
    if (d) {
      await d.stop();
      await d.cleanup();
    } else {
      await t.exec(gw, [
        "iptables",
        "-w",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-s",
        "10.0.0.0/24",
        "-o",
        "wan0",
        "-j",
        "MASQUERADE",
      ]);
    }
    for (const ns of [gw, ...t.hosts.map((h) => h.ns)]) await t.exec(ns, ["conntrack", "-F"]);
  }
  return out;
}

const t = await createTopology({ hosts: 3, peers: 1 });
const undo = destroyOnSignal(t);
const all: Record<string, unknown>[] = [];
try {
  await startEcho(t, t.peers[0]!.ns);
  await serveApp(t, t.peers[0]!.ns, udpEcho(SEEN));
  await serveApp(t, t.peers[0]!.ns, tcpSeen(TCP_SEEN));
  for (let r = 0; r < rounds; r++) {
    for (const m of modes) all.push(await mode(t, m));
  }
} finally {
  await t.destroy();
  undo();
}
console.log(JSON.stringify(all));
