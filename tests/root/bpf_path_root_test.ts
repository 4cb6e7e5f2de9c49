/**
 * What only the bpf data path does, end to end in namespaces
 * (testing/topology.ts), as root, with the real `dpm server` and `dpm
 * driver` (tests/root/kept_sessions_root_test.ts covers the restarts it
 * shares with the kernel path; tests/root/bpf_programs_root_test.ts and
 * bpf_topology_root_test.ts the programs alone):
 *
 * - once the gateway's stack forwarded a session both ways its packets
 *   skip the gateway's conntrack, and the host tracks none of them;
 * - a deleted clsact qdisc on the host (whose programs are tc filters) and
 *   a program detached from the gateway (whose programs are attached with
 *   tcx, which a deleted qdisc leaves alone) are noticed by the watchdog,
 *   logged, put back, counted in the status, and traffic goes on (the
 *   watchdog's period is a second, within the 2 s asked; no timing is
 *   asserted);
 * - a killed driver black-holes nothing: once its heartbeat ran out new
 *   sessions go out untranslated (the gateway's ordinary NAT serves them),
 *   and the next driver holds and translates them again.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import { DPM_ENV, dpmCommand, serveApp, withDpm } from "../../testing/launch.ts";
import { udpClient, udpEcho } from "../../testing/apps.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";
import { BpfRig } from "../../testing/bpf_rig.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const B = { datapath: "bpf" as const, hosts: 2 };

interface Replies {
  replies: { data: string }[];
}

/** One UDP exchange from h1's `port` with p1's echo on 7000: what p1 saw. */
async function once(t: Topology, port: number, rounds = 1): Promise<string[]> {
  const r = await t.exec(
    t.hosts[0]!.ns,
    udpClient(port, [`${t.peers[0]!.addrText}:7000`], { rounds, timeoutMs: 1500 }),
    { timeoutMs: 15_000 },
  );
  const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as Replies;
  return out.replies.map((x) => x.data.split("|")[0]!.replace("seen ", ""));
}

/** `dpm status --driver --json` on h1. */
async function driverStatus(t: Topology, socket: string) {
  const r = await t.exec(t.hosts[0]!.ns, [
    ...dpmCommand(),
    "status",
    "--driver",
    "--json",
    "--socket",
    socket,
  ], { env: DPM_ENV, timeoutMs: 15_000 });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as {
    dataPath: { kind: string; state: string; reinstalls: number; lastError?: string };
    stats: Record<string, number>;
  };
}

/** The packets conntrack counted, both ways, for UDP flows of `port` in `ns` (0: no entry). */
async function tracked(t: Topology, ns: string, port: number): Promise<number> {
  const r = await t.exec(ns, ["conntrack", "-L", "-p", "udp", "-o", "extended"]);
  let n = 0;
  for (const l of r.stdout.split("\n")) {
    if (!l.includes(`sport=${port} `)) continue;
    for (const m of l.matchAll(/packets=(\d+)/g)) n += Number(m[1]);
  }
  return n;
}

Deno.test(needsRoot({
  name:
    "bpf root: a session's packets skip the gateway's conntrack once forwarded both ways, the host tracks none, and status counts them all",
  ...SAN,
  fn: () =>
    withDpm(B, async (t, d) => {
      await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
      const seen = await once(t, 40400, 30);
      assert.equal(seen.length, 30);
      assert.equal(new Set(seen).size, 1, "one public pair");
      assert.match(seen[0]!, /^203\.0\.113\.1[0-3]:/);
      // The gateway's stack saw the slow start only (the first exchange, maybe a second).
      const gw = await tracked(t, t.gateway.ns, 40400);
      assert.ok(gw >= 2 && gw <= 6, `the gateway's conntrack counted ${gw} packet(s) of 60`);
      assert.equal(await tracked(t, t.hosts[0]!.ns, 40400), 0, "nothing tracked on the host");
      const st = await d.status();
      const row = st.shown.find((s) => String(s.internal).endsWith(":40400")) as
        | Record<string, number>
        | undefined;
      assert.ok(row, "the session is listed");
      assert.equal(row.packetsOut, 30, "every datagram out counted, slow or fast");
      assert.equal(row.packetsIn, 30);
    }),
}));

Deno.test(needsRoot({
  name:
    "bpf root: a deleted clsact qdisc on the host, or a program detached on the gateway, is noticed, logged, put back and counted; traffic goes on",
  ...SAN,
  fn: () =>
    withDpm(B, async (t, d) => {
      await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
      assert.equal((await once(t, 40500)).length, 1, "works before");

      // The gateway's programs are tcx ones: a deleted qdisc does not touch them.
      await t.exec(t.gateway.ns, ["tc", "qdisc", "del", "dev", "lan0", "clsact"]);
      const rig = await BpfRig.start(t.gateway.ns);
      const names = async () =>
        ((await rig.call({ op: "filters", dev: "lan0" })).ingress as { name: string }[])
          .map((f) => f.name);
      try {
        assert.deepEqual(await names(), ["dpm_lan_in"], "still attached");
        // Someone detaches it.
        const r = await rig.call({
          op: "detachTcx",
          dev: "lan0",
          point: "ingress",
          prog: "dpm_lan_in",
        });
        assert.equal(r.detached, 1);
        await d.server.waitForOutput(
          /kernel rules were removed or changed \(missing dpm_/,
          10_000,
        );
        await d.server.waitForOutput(/reinstalled \d+ BPF program\(s\)/, 10_000);
        assert.deepEqual(await names(), ["dpm_lan_in"], "the program is back");
      } finally {
        await rig.close();
      }
      const st = await d.status() as unknown as {
        dataPath: { kind: string; state: string; reinstalls: number; lastError?: string };
      };
      assert.equal(st.dataPath.kind, "bpf");
      assert.equal(st.dataPath.state, "on");
      assert.ok(st.dataPath.reinstalls >= 1, "status counts the repair");
      assert.match(st.dataPath.lastError ?? "", /missing dpm_lan/);

      const hdel = await t.exec(t.hosts[0]!.ns, ["tc", "qdisc", "del", "dev", "eth0", "clsact"]);
      assert.equal(hdel.code, 0, hdel.stderr);
      const h1 = d.drivers.get("h1")!;
      await h1.waitForOutput(/kernel rules were removed or changed \(missing dpm_host/, 10_000);
      await h1.waitForOutput(/reinstalled \d+ BPF program\(s\) on eth0/, 10_000);
      const ds = await driverStatus(t, d.driverSocket("h1"));
      assert.equal(ds.dataPath.kind, "bpf");
      assert.ok(ds.dataPath.reinstalls >= 1, "the driver's status counts it too");

      // The old session and a new one are translated again.
      assert.match((await once(t, 40500))[0] ?? "", /^203\.0\.113\./, "the old session");
      assert.match((await once(t, 40501))[0] ?? "", /^203\.0\.113\./, "a new session");
    }),
}));

Deno.test(needsRoot({
  name:
    "bpf root: a killed driver black-holes nothing: new sessions go out untranslated once its heartbeat ran out; the next driver translates them",
  ...SAN,
  fn: () =>
    withDpm(B, async (t, d) => {
      await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
      const wan = t.gateway.wanText;
      assert.match((await once(t, 40600))[0] ?? "", /^203\.0\.113\.1[0-3]:/);
      const h1 = d.drivers.get("h1")!;
      await h1.stop("SIGKILL", 0);
      // No driver reads held packets: after the heartbeat (2 s) the program holds nothing.
      await waitFor(async () => (await once(t, 40601)).length === 1, {
        timeoutMs: 15_000,
        what: "a new session answered with no driver",
      });
      const bypassed = await once(t, 40602);
      assert.equal(bypassed.length, 1);
      assert.ok(bypassed[0]!.startsWith(`${wan}:`), `MASQUERADE's address: ${bypassed[0]}`);
      // The established session is still translated by the programs.
      assert.match((await once(t, 40600))[0] ?? "", /^203\.0\.113\.1[0-3]:/);
      await d.restartDriver("h1", "SIGKILL");
      assert.match((await once(t, 40603))[0] ?? "", /^203\.0\.113\.1[0-3]:/, "held and translated");
    }),
}));
