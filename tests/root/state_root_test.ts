/**
 * The state file end to end, as root, on the kernel data path (the
 * default): a server SIGKILLed right after a burst of reservations comes
 * back with every session it had answered; a server restarted with a
 * smaller pool drops the sessions of the addresses it lost, says why, takes
 * a new epoch, removes them from the kernel (and does not adopt them back
 * from its maps), and the drivers learn it: they reserve again and `dpm
 * query` no longer reports the address the gateway gave up.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { denoScript, DPM_ENV, dpmCommand, startDpm, withDpm } from "../../testing/launch.ts";
import { createTopology } from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const LOAD = fileURLToPath(new URL("../../bench/state_load.ts", import.meta.url));

Deno.test(needsRoot({
  name: "state root: SIGKILL right after a burst of reservations loses no answered grant",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 2, peers: 1 });
    const state = `${t.scratch}/state.db`;
    const granted = `${t.scratch}/granted.txt`;
    try {
      const d = await startDpm(t, {
        driverHosts: [],
        serverArgs: ["--state", state, "--rate-limit", "1000000"],
      });
      try {
        const h = t.hosts[0]!;
        const addrs = ["10.0.0.101", "10.0.0.102", "10.0.0.103"];
        for (const a of addrs) {
          const r = await t.exec(h.ns, ["ip", "addr", "add", `${a}/24`, "dev", "eth0"]);
          assert.equal(r.code, 0, r.stderr);
        }
        const load = await t.exec(h.ns, [
          ...denoScript(LOAD),
          "--server",
          t.gateway.lanText,
          "--addrs",
          addrs.join(","),
          "--window",
          "8",
          "--count",
          "354",
          "--seconds",
          "20",
          "--out",
          granted,
        ], { timeoutMs: 60_000, env: DPM_ENV });
        assert.equal(load.code, 0, load.stderr);
        // At once, before any periodic or exit save could run.
        await d.restartServer("SIGKILL");
        const lines = (await Deno.readTextFile(granted)).split("\n").filter(Boolean);
        assert.ok(lines.length >= 354, `${lines.length} grants answered`);
        assert.match(d.server.output(), new RegExp(`restored ${lines.length} of ${lines.length} `));
        const st = await d.status();
        assert.equal(st.sessions, lines.length, "the server holds every answered grant");
        const shown = new Set(
          st.shown.map((s) => `${s.internal} ${s.remote} ${s.public} ${s.gatewayPort}`),
        );
        const lost = lines.filter((l) => !shown.has(l.slice(4)));
        assert.deepEqual(lost, [], `${lost.length} answered grant(s) lost at SIGKILL`);
      } catch (e) {
        console.error(d.server.output());
        throw e;
      } finally {
        await d.stop();
      }
      // A --state in a directory that does not exist fails at start, in one line.
      const bad = await t.exec(t.gateway.ns, [
        ...dpmCommand(),
        "server",
        ...["--lan-if", t.gateway.lanIf, "--wan-if", t.gateway.wanIf],
        ...["--lan-addr", t.gateway.lanText, "--pool", t.poolText],
        ...["--socket", d.serverSocket, "--state", `${t.scratch}/nowhere/state.db`],
      ], { timeoutMs: 30_000, env: DPM_ENV });
      assert.equal(bad.code, 1, bad.stderr);
      const lines = bad.stderr.trim().split("\n");
      assert.equal(lines.length, 1, bad.stderr);
      assert.match(lines[0]!, /--state .*nowhere\/state\.db: directory .*nowhere does not exist/);
      await d.cleanup();
    } finally {
      await t.destroy();
    }
  },
}));

Deno.test(needsRoot({
  name:
    "state root: restarted with a smaller pool, the dropped sessions are named, leave the kernel, and drivers learn it (new epoch, re-reserve)",
  ...SAN,
  fn: async () => {
    await withDpm({ hosts: 2, driverHosts: ["h1"] }, async (t, d) => {
      const state = `${t.scratch}/state.db`;
      // Start over with --state (withDpm's server has none).
      await d.server.stop("SIGTERM", 5000);
      const spawn = (pool: string) =>
        t.spawn(t.gateway.ns, [
          ...dpmCommand(),
          "server",
          ...["--lan-if", t.gateway.lanIf, "--wan-if", t.gateway.wanIf],
          ...["--lan-addr", t.gateway.lanText, "--pool", pool, "--add-pool-addresses"],
          ...["--socket", d.serverSocket, "--state", state],
        ], { env: DPM_ENV });
      d.server = spawn(t.poolText);
      await d.server.waitForOutput(/ready/, 30_000);
      const remote = "198.51.100.10:7000";
      const q1 = await d.query("h1", "udp", "10.0.0.11:40000", remote, true);
      assert.equal(q1.result, "ok");
      const lostAddr = String(q1.public).split(":")[0]!;
      const epoch1 = (await d.status()).epoch;
      // A pool without the address h1 was given (paired pooling: all its sessions are there).
      const pool = ["203.0.113.10", "203.0.113.11", "203.0.113.12", "203.0.113.13"]
        .filter((a) => a !== lostAddr).join(",");
      await d.server.stop("SIGTERM", 5000);
      d.server = spawn(pool);
      await d.server.waitForOutput(/ready/, 30_000);
      const out = d.server.output();
      assert.match(out, /restored 0 of 1 sessions/);
      assert.match(
        out,
        new RegExp(
          `dropped 1 session\\(s\\) from the state file: public address no longer in the pool, ` +
            `e\\.g\\. udp 10\\.0\\.0\\.11:40000 -> 198\\.51\\.100\\.10:7000 as ${
              lostAddr.replaceAll(".", "\\.")
            }:`,
        ),
      );
      assert.match(out, /new epoch/);
      assert.doesNotMatch(out, /adopted/, "not adopted back from the kernel's maps");
      const st = await d.status();
      assert.equal(st.sessions, 0);
      assert.notEqual(st.epoch, epoch1, "a new epoch");
      const maps = await t.exec(t.gateway.ns, ["nft", "list", "table", "ip", "dpm-server"]);
      assert.equal(maps.code, 0, maps.stderr);
      assert.ok(!maps.stdout.includes(lostAddr), "the dropped pair is out of the kernel");
      // The driver's next exchange (any new session) tells it the epoch: it reserves again.
      await d.query("h1", "udp", "10.0.0.11:40001", remote, true);
      await waitFor(async () => {
        const q = await d.query("h1", "udp", "10.0.0.11:40000", remote);
        return q.result === "ok" && !String(q.public).startsWith(`${lostAddr}:`);
      }, {
        what: "the driver to re-reserve 10.0.0.11:40000 off the lost address",
        timeoutMs: 10_000,
      });
      const st2 = await d.status();
      assert.ok(
        st2.shown.some((s) => s.internal === "10.0.0.11:40000"),
        "the server holds it again",
      );
      assert.match(d.drivers.get("h1")!.output(), /epoch changed/);
      await d.stop();
      await d.cleanup();
    });
  },
}));
