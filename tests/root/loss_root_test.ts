/**
 * The control protocol under loss and bursts, as root, in the e2e topology
 * (testing/topology.ts): h1 runs `dpm driver`, p1 a UDP echo that answers
 * with the source it saw.
 *
 * - 30% of control datagrams lost each way (iptables `statistic` on the
 *   gateway's control port: netem is not built here): every new session
 *   still ends up reserved, the peer sees the public pair the driver
 *   reports, and driver and server agree on which sessions exist.
 * - A burst of 1,500 new UDP sessions at once from one host: every reply
 *   shows a public pair of the pool (none went out untranslated).
 *
 * Each test's iptables rules live in the gateway's namespace, which the
 * topology removes with everything else, also on failure. No test sleeps for
 * correctness: each waits on a condition with a deadline.
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import { type Dpm, DPM_ENV, dpmCommand, serveApp, withDpm } from "../../testing/launch.ts";
import { udpBurst, udpEcho } from "../../testing/apps.ts";
import { waitFor } from "../../testing/wait.ts";
import { DATAPATHS, needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/**
 * `n` UDP sockets each sending to `dest` at once ({@linkcode udpBurst}), for
 * `rounds` rounds. The command and how to read its output: {"local port":
 * ["ip:port" the peer saw in each reply]}.
 */
function burstClient(
  n: number,
  dest: string,
  rounds: number,
  roundMs: number,
  gate = "",
): string[] {
  return udpBurst(n, dest, { rounds, roundMs, gate });
}

/** The per-port replies of a {@linkcode burstClient} run. */
function burstSeen(stdout: string): Record<string, string[]> {
  const run = JSON.parse(stdout.trim().split("\n").pop()!) as {
    sessions: { port: number; seen: string[] }[];
  };
  return Object.fromEntries(run.sessions.map((x) => [String(x.port), x.seen]));
}

async function driverStatus(t: Topology, d: Dpm, host: string) {
  const h = t.hosts.find((x) => x.name === host)!;
  const r = await t.exec(h.ns, [
    ...dpmCommand(),
    "status",
    "--driver",
    "--json",
    "--socket",
    d.driverSocket(host),
  ], { timeoutMs: 20_000, env: DPM_ENV });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as {
    stats: Record<string, number>;
    sessions: { result: string; local: string; remote: string; public?: string }[];
  };
}

/**
 * One session first, so that the driver holds the server's cookie: a burst
 * of cookie-less requests gets COOKIE_REQUIRED answers only within the
 * server's small refusal budget, and the rest time out.
 */
async function warmUp(t: Topology, ns: string, dest: string): Promise<void> {
  const w = await t.exec(ns, burstClient(1, dest, 1, 30_000), { timeoutMs: 40_000 });
  assert.equal(w.code, 0, w.stderr);
}

/** Checks every reply shows the public pair the driver reports for that socket, inside the pool. */
function assertTranslated(
  t: Topology,
  seen: Record<string, string[]>,
  sessions: { result: string; local: string; public?: string }[],
  host: string,
): void {
  const pub = new Map<number, string>();
  for (const s of sessions) {
    if (s.result === "ok" && s.local.startsWith(`${host}:`)) {
      pub.set(Number(s.local.split(":")[1]), s.public!);
    }
  }
  const pool = t.poolText.split("-");
  const inPool = (a: string) => {
    const n = (x: string) => x.split(".").reduce((v, o) => v * 256 + Number(o), 0);
    return n(a) >= n(pool[0]!) && n(a) <= n(pool[1] ?? pool[0]!);
  };
  let replies = 0;
  const bad: string[] = [];
  for (const [port, list] of Object.entries(seen)) {
    assert.ok(list.length > 0, `socket ${port} got no reply`);
    for (const s of list) {
      replies++;
      const pair = s.replace(/^seen /, "");
      if (!inPool(pair.split(":")[0]!) || pub.get(Number(port)) !== pair) {
        bad.push(`${port}: peer saw ${pair}, driver says ${pub.get(Number(port)) ?? "nothing"}`);
      }
    }
  }
  assert.deepEqual(bad.slice(0, 20), [], `${bad.length} of ${replies} replies untranslated`);
}

for (const datapath of DATAPATHS) {
  Deno.test(needsRoot({
    name:
      `loss root [${datapath}]: 30% control loss each way: 100 new UDP sessions all reserved, the peer sees what the driver says, driver and server agree`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        const gw = t.gateway.ns;
        for (
          const rule of [
            ["INPUT", "--dport"],
            ["OUTPUT", "--sport"],
          ]
        ) {
          const r = await t.exec(gw, [
            "iptables",
            "-w",
            "-I",
            rule[0]!,
            "-p",
            "udp",
            rule[1]!,
            "4750",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.3",
            "-j",
            "DROP",
          ]);
          assert.equal(r.code, 0, r.stderr);
        }
        await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
        const dest = `${t.peers[0]!.addrText}:7000`;
        const h1 = t.hosts[0]!;
        await warmUp(t, h1.ns, dest);
        const ALL = 101; // with the warm-up's
        // Two rounds: the first while sessions are being reserved (up to ~9 s of
        // retransmissions; some may fall back and be reserved again in the
        // background), the second once the driver has them all.
        const gate = `${t.scratch}/loss-round-2`;
        const app = t.spawn(h1.ns, burstClient(100, dest, 2, 30_000, gate));
        await app.waitForOutput(/round 1 done/, 60_000);
        const ok = async () =>
          (await driverStatus(t, d, "h1")).sessions.filter((s) =>
            s.local.startsWith(`${h1.addrText}:`) && s.result === "ok"
          ).length === ALL;
        await waitFor(ok, { timeoutMs: 60_000, intervalMs: 500, what: "every session reserved" });
        await Deno.writeTextFile(gate, "");
        const status = await app.status;
        assert.equal(status.code, 0, app.stderr());
        const r = { stdout: app.stdout() };
        const seen = burstSeen(r.stdout);
        const st = await driverStatus(t, d, "h1");
        const mine = st.sessions.filter((s) => s.local.startsWith(`${h1.addrText}:`));
        // For the log (no timing is asserted): how long each session's first
        // reply took (its first packet waited for the reservation) and how
        // many sessions had to send again.
        const first = (JSON.parse(r.stdout.trim().split("\n").pop()!) as {
          sessions: { firstUs: number | null; sends: number }[];
        }).sessions;
        const us = first.map((x) => x.firstUs ?? Infinity).sort((a, b) => a - b);
        const at = (p: number) =>
          Math.round(us[Math.min(us.length - 1, Math.ceil(p * us.length) - 1)]!);
        console.log(
          `first reply p50 ${at(0.5)} µs, p99 ${at(0.99)} µs, max ${at(1)} µs; ` +
            `${first.filter((x) => x.sends > 2).length} sessions resent in round 1; ` +
            `fell back at first ${st.stats.fellBack}, reserved since ${st.stats.recovered}, ` +
            `control ${JSON.stringify(st.stats.control)}`,
        );
        assert.equal(mine.length, ALL);
        assert.equal(mine.filter((s) => s.result === "ok").length, ALL, JSON.stringify(st.stats));
        // Round 2: every reply shows the public pair the driver reports.
        const last: Record<string, string[]> = {};
        for (const [port, list] of Object.entries(seen)) last[port] = list.slice(-1);
        assertTranslated(t, last, st.sessions, h1.addrText);
        // Driver and server agree on what exists (the gateway's table holds h1's sessions only).
        await waitFor(async () => (await d.status()).sessions === ALL, {
          timeoutMs: 20_000,
          what: "the server to hold exactly the driver's sessions",
        });
        const srv = await d.status();
        const driverPairs = mine.map((s) => s.public).sort();
        const serverPairs = srv.shown.map((v) => String(v.public)).sort();
        assert.deepEqual(serverPairs, driverPairs);
      }),
  }));
}

// The paths that hold a new session's first packet in the kernel until the grant.
for (const datapath of ["bpf", "kernel"] as const) {
  Deno.test(needsRoot({
    name:
      `loss root [${datapath}]: a burst of 1,500 new UDP sessions at once from one host: every reply shows the public pair`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
        const dest = `${t.peers[0]!.addrText}:7000`;
        const h1 = t.hosts[0]!;
        await warmUp(t, h1.ns, dest);
        const r = await t.exec(h1.ns, burstClient(1500, dest, 1, 40_000), { timeoutMs: 90_000 });
        assert.equal(r.code, 0, r.stderr);
        const seen = burstSeen(r.stdout);
        assert.equal(Object.keys(seen).length, 1500);
        const st = await driverStatus(t, d, "h1");
        assert.equal(st.stats.fellBack ?? 0, 0, JSON.stringify(st.stats));
        assertTranslated(t, seen, st.sessions, h1.addrText);
      }),
  }));
}
