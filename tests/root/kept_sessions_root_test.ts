/**
 * What the data paths that keep sessions in the kernel (kernel, bpf)
 * promise and the queue path does not, end to end in namespaces
 * (testing/topology.ts), as root, on each of them:
 *
 * - established sessions survive a restart of either role, by SIGTERM or
 *   SIGKILL (the kernel keeps translating; the new process adopts);
 * - `nft flush ruleset` on the gateway (what Debian's nftables service does
 *   on start and reload) is noticed, logged, repaired without a restart;
 * - one server and one driver per network namespace;
 * - `dpm status` shows per-session packets and bytes counted by the kernel
 *   (conntrack, or the bpf path's map), and established packets never reach
 *   the driver.
 *
 * The rest of the behaviour is the same on every data path and is tested
 * by tests/root/e2e_root_test.ts on each; what only the bpf path does, by
 * tests/root/bpf_path_root_test.ts.
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import { type Dpm, DPM_ENV, dpmCommand, serveApp, withDpm } from "../../testing/launch.ts";
import { steadyFlows, tcpEcho, udpClient, udpEcho } from "../../testing/apps.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
/** The paths that keep established sessions translating while no dpm runs. */
const KEEPING = ["bpf", "kernel"] as const;

interface Flows {
  tcp_ok: number;
  tcp_error: string | null;
  udp_sent: number;
  udp_replies: number;
  udp_max_gap_ms: number;
  tcp_seen: string[];
  udp_seen: string[];
}

/** Runs steady TCP + UDP flows from h1 to p1 while `during` runs; returns what they saw. */
async function flowsAcross(
  t: Topology,
  d: Dpm,
  seconds: number,
  during: () => Promise<void>,
): Promise<Flows> {
  const p1 = t.peers[0]!;
  await serveApp(t, p1.ns, tcpEcho(7100));
  await serveApp(t, p1.ns, udpEcho(7000));
  const c = t.spawn(
    t.hosts[0]!.ns,
    steadyFlows(`${p1.addrText}:7100`, `${p1.addrText}:7000`, { seconds, intervalMs: 100 }),
  );
  await c.waitForOutput(/connected/, 10_000);
  // Both sessions are through dpm before anything is restarted.
  await waitFor(async () => (await d.status()).sessions >= 2, {
    timeoutMs: 10_000,
    what: "two sessions",
  });
  await during();
  await c.status;
  const line = c.stdout().trim().split("\n").pop()!;
  return JSON.parse(line) as Flows;
}

for (const datapath of KEEPING) {
  Deno.test(needsRoot({
    name:
      `${datapath} root: a TCP connection and a UDP flow keep working across SIGTERM and SIGKILL restarts of the server and of a driver`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, hosts: 2 }, async (t, d) => {
        const r = await flowsAcross(t, d, 16, async () => {
          for (const sig of ["SIGTERM", "SIGKILL"] as const) {
            await d.restartServer(sig);
            await new Promise((ok) => setTimeout(ok, 1000));
            await d.restartDriver("h1", sig);
            await new Promise((ok) => setTimeout(ok, 1000));
          }
        });
        assert.equal(r.tcp_error, null, "the TCP connection was never reset");
        assert.ok(r.tcp_ok > 50, `TCP exchanges went on (${r.tcp_ok})`);
        for (const seen of [r.tcp_seen, r.udp_seen]) {
          assert.equal(seen.length, 1, `the peer saw one public pair per flow throughout: ${seen}`);
          assert.match(seen[0]!, /^seen 203\.0\.113\.1[0-3]:/, "a pool address");
        }
        // UDP: datagrams sent while no dpm ran are still translated by the kernel;
        // nothing is lost beyond what a loaded machine loses.
        assert.ok(r.udp_replies >= r.udp_sent - 3, `UDP replies ${r.udp_replies}/${r.udp_sent}`);
        // The new processes adopted the sessions instead of re-reserving them.
        const st = await d.status();
        assert.ok(st.sessions >= 2);
        assert.match(d.server.output(), /adopted \d+ session|restored \d+ of/);
        assert.match(d.drivers.get("h1")!.output(), /adopted \d+ session/);
      }),
  }));
}

for (const datapath of KEEPING) {
  Deno.test(needsRoot({
    name:
      `${datapath} root: after \`nft flush ruleset\` on the gateway traffic works again within seconds, the error is logged and status shows it`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, hosts: 2 }, async (t, d) => {
        const p1 = t.peers[0]!;
        await serveApp(t, p1.ns, udpEcho(7000));
        const once = async (port: number) => {
          const r = await t.exec(
            t.hosts[0]!.ns,
            udpClient(port, [`${p1.addrText}:7000`], { rounds: 1, timeoutMs: 1500 }),
            { timeoutMs: 10_000 },
          );
          return JSON.parse(r.stdout.trim().split("\n").pop()!) as {
            replies: { data: string }[];
          };
        };
        assert.equal((await once(40100)).replies.length, 1, "works before");
        const flushed = await t.exec(t.gateway.ns, ["nft", "flush", "ruleset"]);
        assert.equal(flushed.code, 0, flushed.stderr);
        await d.server.waitForOutput(/kernel rules were removed or changed/, 5000);
        await d.server.waitForOutput(/reinstalled table ip dpm-server/, 10_000);
        // A new session and the old one both go through dpm again.
        let ok = false;
        for (let i = 0; i < 10 && !ok; i++) {
          const r = await once(40101 + i);
          ok = r.replies.length === 1 && r.replies[0]!.data.startsWith("seen 203.0.113.");
        }
        assert.ok(ok, "a new session is translated by dpm again");
        const again = await once(40100);
        assert.match(again.replies[0]?.data ?? "", /^seen 203\.0\.113\./, "the old session too");
        const st = await d.status() as unknown as {
          dataPath: { kind: string; state: string; reinstalls: number; lastError?: string };
        };
        assert.equal(st.dataPath.kind, datapath);
        assert.equal(st.dataPath.state, "on");
        assert.ok(st.dataPath.reinstalls >= 1, "status counts the reinstall");
        assert.match(st.dataPath.lastError ?? "", /missing chain/);
      }),
  }));
}

for (const datapath of KEEPING) {
  Deno.test(needsRoot({
    name:
      `${datapath} root: a second server or driver in the same namespace refuses to start with a one-line reason; the first keeps working`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, hosts: 2 }, async (t, _d) => {
        const second = await t.exec(t.gateway.ns, [
          ...dpmCommand(),
          "server",
          "--lan-addr",
          t.gateway.lanText,
          "--pool",
          t.poolText,
          "--lan-if",
          t.gateway.lanIf,
          "--wan-if",
          t.gateway.wanIf,
          "--socket",
          `${t.scratch}/second.sock`,
        ], { env: DPM_ENV, timeoutMs: 20_000 });
        assert.equal(second.code, 1);
        assert.match(second.stderr, /another dpm server runs in this network namespace/);
        const drv = await t.exec(t.hosts[0]!.ns, [
          ...dpmCommand(),
          "driver",
          "--server",
          t.gateway.lanText,
          "--socket",
          `${t.scratch}/second-h1.sock`,
        ], { env: DPM_ENV, timeoutMs: 20_000 });
        assert.equal(drv.code, 1);
        assert.match(drv.stderr, /another dpm driver runs in this network namespace/);
        // The first ones' rules are untouched and they still translate.
        const p1 = t.peers[0]!;
        await serveApp(t, p1.ns, udpEcho(7000));
        const r = await t.exec(t.hosts[0]!.ns, udpClient(40200, [`${p1.addrText}:7000`]), {
          timeoutMs: 10_000,
        });
        const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
        assert.match(out.replies[0].data, /^seen 203\.0\.113\.1[0-3]:40200\|/);
      }),
  }));
}

for (const datapath of KEEPING) {
  Deno.test(needsRoot({
    name:
      `${datapath} root: dpm status shows each session's packets and bytes as the kernel counted them; established packets never reach the driver`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, hosts: 2 }, async (t, d) => {
        const p1 = t.peers[0]!;
        await serveApp(t, p1.ns, udpEcho(7000));
        const r = await t.exec(
          t.hosts[0]!.ns,
          udpClient(40300, [`${p1.addrText}:7000`], { rounds: 20, intervalMs: 10 }),
          { timeoutMs: 20_000 },
        );
        const out = JSON.parse(r.stdout.trim().split("\n").pop()!);
        assert.equal(out.replies.length, 20);
        const st = await d.status();
        const row = st.shown.find((s) => String(s.internal).endsWith(":40300")) as
          | Record<string, number>
          | undefined;
        assert.ok(row, "the session is listed");
        assert.equal(row.packetsOut, 20, "20 datagrams out, counted by the kernel");
        assert.equal(row.packetsIn, 20);
        assert.ok(row.bytesOut! > 20 * 28 && row.bytesIn! > 20 * 28, "bytes counted");
        // The driver saw the first packet only (held until the grant); the kernel did the rest.
        const ds = await t.exec(t.hosts[0]!.ns, [
          ...dpmCommand(),
          "status",
          "--driver",
          "--json",
          "--socket",
          d.driverSocket("h1"),
        ], { env: DPM_ENV, timeoutMs: 10_000 });
        const drv = JSON.parse(ds.stdout);
        assert.equal(drv.dataPath.kind, datapath);
        assert.ok(drv.stats.out <= 2, `the driver handled ${drv.stats.out} outbound packet(s)`);
        assert.equal(drv.stats.in, 0, "and no inbound one");
      }),
  }));
}
