/**
 * `dpm map` end to end, as root, on both data paths: a host with a driver
 * asks for an inbound mapping of a UDP and a TCP port; outside peers that
 * never heard from the host reach it at the printed public pair, the host's
 * answers leave from that pair, `dpm status` (driver and server) lists the
 * mappings, and `--lifetime 0` closes them. Bad usage exits 2, no driver 3.
 */

import assert from "node:assert/strict";
import { DPM_ENV, dpmCommand, serveApp, withDpm } from "../../testing/launch.ts";
import { tcpClient, tcpEcho, udpCollect, udpEcho } from "../../testing/apps.ts";
import type { Topology } from "../../testing/topology.ts";
import { perDataPath } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** `dpm <args...>` in `ns`. */
function dpm(t: Topology, ns: string, ...args: string[]) {
  return t.exec(ns, [...dpmCommand(), ...args], { timeoutMs: 30_000, env: DPM_ENV });
}

/** What the peer got back from `dest` (udpCollect's last line). */
async function collect(t: Topology, ns: string, bind: number, dest: string, ms: number) {
  const r = await t.exec(ns, udpCollect(bind, dest, ms), { timeoutMs: ms + 10_000 });
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout.trim().split("\n").pop()!) as {
    got: { from: string; data: string }[];
  }).got;
}

for (
  const def of perDataPath({
    name:
      "map root: dpm map through the driver lets any outside peer reach the host's UDP and TCP port at the public pair; status lists the mappings; lifetime 0 closes them",
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        const h1 = t.hosts[0]!;
        const [p1, p2] = t.peers as [typeof t.peers[0], typeof t.peers[0]];
        const sock = d.driverSocket("h1");
        const udp = await serveApp(t, h1.ns, udpEcho(6000));
        const tcp = await serveApp(t, h1.ns, tcpEcho(8080));

        const m = await dpm(
          t,
          h1.ns,
          "map",
          "udp",
          "6000",
          "--lifetime",
          "120",
          "--json",
          "--socket",
          sock,
        );
        assert.equal(m.code, 0, m.stdout + m.stderr);
        const um = JSON.parse(m.stdout) as { result: string; public: string; local: string };
        assert.equal(um.result, "ok");
        assert.equal(um.local, `${h1.addrText}:6000`);
        assert.match(um.public, /^203\.0\.113\.\d+:\d+$/);

        // Two peers that never heard from h1 reach it; each answer leaves from the mapped pair.
        for (const [peer, bind] of [[p1, 7001], [p2, 7002]] as const) {
          const got = await collect(t, peer.ns, bind, um.public, 2000);
          assert.equal(got.length, 1, `${peer.name} got an answer through the mapping`);
          assert.equal(got[0]!.from, um.public, "the answer leaves from the mapped public pair");
          assert.equal(
            got[0]!.data,
            `seen ${peer.addrText}:${bind}|hello`,
            "the host sees the peer's real pair",
          );
        }

        // TCP: the text output, then a connection from outside.
        const tm = await dpm(t, h1.ns, "map", "tcp", "8080", "--socket", sock);
        assert.equal(tm.code, 0, tm.stdout + tm.stderr);
        const tpub = /^tcp (\S+) -> /.exec(tm.stdout)?.[1];
        assert.ok(tpub, tm.stdout);
        const c = await t.exec(p1.ns, tcpClient(0, tpub, "ping"), { timeoutMs: 15_000 });
        const reply = JSON.parse(c.stdout.trim()) as { reply?: string; error?: string };
        assert.match(
          String(reply.reply),
          new RegExp(`^seen ${p1.addrText.replaceAll(".", "\\.")}:\\d+\\|ping$`),
          c.stdout,
        );

        // Both views list them.
        const ds = await dpm(t, h1.ns, "status", "--driver", "--socket", sock);
        assert.equal(ds.code, 0, ds.stderr);
        assert.match(ds.stdout, /mappings: 2/);
        assert.ok(ds.stdout.includes(um.public), ds.stdout);
        const st = await d.status();
        const rows = st.shown.filter((v) => String(v.flags).includes("map"));
        assert.equal(rows.length, 2, JSON.stringify(st.shown));
        assert.ok(rows.every((v) => v.remote === "*" && v.internal !== undefined));

        // Deleted: nothing comes in any more.
        const del = await dpm(t, h1.ns, "map", "udp", "6000", "--lifetime", "0", "--socket", sock);
        assert.equal(del.code, 0, del.stdout + del.stderr);
        assert.match(del.stdout, /mapping deleted/);
        assert.equal((await collect(t, p2.ns, 7003, um.public, 1500)).length, 0);
        const after = await t.exec(p1.ns, tcpClient(0, tpub, "ping"), { timeoutMs: 15_000 });
        assert.match(after.stdout, /reply/, "the TCP mapping is still there");

        // Usage and a missing driver are told apart by the exit code.
        assert.equal((await dpm(t, h1.ns, "map", "icmp", "1")).code, 2);
        assert.equal((await dpm(t, h1.ns, "map", "udp", "70000")).code, 2);
        const none = await dpm(
          t,
          h1.ns,
          "map",
          "udp",
          "6000",
          "--json",
          "--socket",
          "/run/dpm-none.sock",
        );
        assert.equal(none.code, 3, none.stdout + none.stderr);
        assert.equal(JSON.parse(none.stdout).result, "no-driver");
        await udp.stop();
        await tcp.stop();
      }),
  })
) Deno.test(def);
