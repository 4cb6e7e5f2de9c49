/**
 * The control plane end to end, as root, over real UDP in network
 * namespaces: drivers reserve (through `dpm query --reserve`), renew and
 * release against the server; `dpm status` shows the table; another host can
 * neither renew nor release a session that is not its own (claim 2); the
 * state file keeps sessions across a server restart, and a restart without
 * it makes drivers reserve again (epoch).
 */

import { StateStore } from "../../src/server/state.ts";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createTopology, type Topology } from "../../testing/topology.ts";
import { DPM_ENV, dpmCommand, startDpm } from "../../testing/launch.ts";
import { waitFor } from "../../testing/wait.ts";
import { needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const CLIENT = fileURLToPath(new URL("../../testing/control_client.ts", import.meta.url));

async function control(
  t: Topology,
  ns: string,
  ...args: string[]
): Promise<Record<string, unknown>> {
  const r = await t.exec(ns, [
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    CLIENT,
    "10.0.0.1:4750",
    ...args,
  ]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test(needsRoot({
  name:
    "control root: reserve via dpm query, status shows it, another host cannot renew or release it; a queue-path driver releases on exit, a kernel-path one keeps it until --cleanup",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 2, peers: 1 });
    try {
      const d = await startDpm(t, { driverHosts: ["h1"], datapath: "queue" });
      try {
        const q = await d.query("h1", "udp", "10.0.0.11:40000", "198.51.100.10:7000", true);
        assert.equal(q.result, "ok");
        const st = await d.status();
        assert.equal(st.sessions, 1);
        assert.equal(st.shown[0]!.public, q.public);
        // The text form an operator reads.
        const text = await t.exec(t.gateway.ns, [
          ...dpmCommand(),
          "status",
          "--socket",
          d.serverSocket,
        ]);
        assert.equal(text.code, 0);
        assert.match(text.stdout, /INTERNAL\s+PG\s+PUBLIC\s+REMOTE/);
        assert.ok(text.stdout.includes(String(q.public)));
        /** A control request from host `i` about `internal` → p1:7000; returns the result name. */
        const ask = async (i: number, op: string, internal: string) =>
          (await control(t, t.hosts[i]!.ns, op, "udp", internal, "198.51.100.10:7000")).result;
        // The host's own view.
        const drv = await t.exec(t.hosts[0]!.ns, [
          ...dpmCommand(),
          "status",
          "--driver",
          "--socket",
          d.driverSocket("h1"),
        ], {
          env: DPM_ENV,
        });
        assert.equal(drv.code, 0, drv.stderr);
        assert.match(drv.stdout, /dpm driver\s+server 10\.0\.0\.1:4750/);
        assert.ok(drv.stdout.includes(String(q.public)));
        // h2 pretends to be h1: not authorized. Speaking for itself: no such session.
        assert.equal(await ask(1, "release", "10.0.0.11:40000"), "not-authorized");
        assert.equal(await ask(1, "renew", "10.0.0.11:40000"), "not-authorized");
        assert.equal(await ask(1, "release", "10.0.0.12:40000"), "no-such-session");
        assert.equal((await d.status()).sessions, 1, "h1's session survives");
        // h1 itself may renew it.
        assert.equal(await ask(0, "renew", "10.0.0.11:40000"), "ok");
        const counted = (await d.status()) as unknown as { results: Record<string, number> };
        assert.equal(counted.results["not-authorized"], 2);
        // Stopping the driver releases its sessions.
        await d.drivers.get("h1")!.stop("SIGTERM", 5000);
        await waitFor(async () => (await d.status()).sessions === 0, {
          what: "the release on driver exit",
          timeoutMs: 5000,
        });
      } finally {
        await d.stop();
      }
      // The kernel path keeps a stopped driver's sessions (the kernel still
      // translates them); `dpm driver --cleanup` gives them back.
      const k = await startDpm(t, { driverHosts: ["h1"], datapath: "kernel" });
      try {
        const q = await k.query("h1", "udp", "10.0.0.11:40010", "198.51.100.10:7000", true);
        assert.equal(q.result, "ok");
        await k.drivers.get("h1")!.stop("SIGTERM", 5000);
        await new Promise((ok) => setTimeout(ok, 500));
        assert.equal((await k.status()).sessions, 1, "kept across the driver's exit");
        const c = await t.exec(t.hosts[0]!.ns, [
          ...dpmCommand(),
          "driver",
          "--server",
          "10.0.0.1",
          "--socket",
          k.driverSocket("h1"),
          "--cleanup",
        ], { env: DPM_ENV, timeoutMs: 20_000 });
        assert.equal(c.code, 0, c.stderr);
        assert.match(c.stderr, /released 1 session/);
        assert.equal((await k.status()).sessions, 0, "released by --cleanup");
        const nft = await t.exec(t.hosts[0]!.ns, ["nft", "list", "tables"]);
        assert.doesNotMatch(nft.stdout, /dpm-driver/, "and its table removed");
      } finally {
        await k.stop();
        await k.cleanup();
      }
    } finally {
      await t.destroy();
    }
  },
}));

/** A second `dpm server` on the gateway of `t`, as startDpm starts it, plus `extra` flags. */
function spawnServer(t: Topology, socket: string, ...extra: string[]) {
  return t.spawn(t.gateway.ns, [
    ...dpmCommand(),
    "server",
    ...["--lan-if", "lan0", "--wan-if", "wan0", "--lan-addr", "10.0.0.1", "--pool", t.poolText],
    ...["--add-pool-addresses", "--socket", socket, "--datapath", "queue", ...extra],
  ], { env: DPM_ENV });
}

Deno.test(needsRoot({
  name:
    "control root: --state keeps sessions across a server restart; without it drivers re-reserve (epoch)",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 2, peers: 1 });
    const state = `${t.scratch}/state.json`;
    try {
      let d = await startDpm(t, {
        driverHosts: ["h1"],
        serverArgs: ["--state", state],
        datapath: "queue",
      });
      const q = await d.query("h1", "udp", "10.0.0.11:40000", "198.51.100.10:7000", true);
      const epoch1 = (await d.status()).epoch;
      await d.stop();
      const f = await StateStore.open(state);
      const saved = f.saved!;
      f.close();
      assert.equal(
        saved.sessions.length,
        0,
        "the driver released its session on exit, and the file says so",
      );
      // Keep the driver alive across the server restart this time.
      d = await startDpm(t, {
        driverHosts: ["h1"],
        serverArgs: ["--state", state],
        datapath: "queue",
      });
      const q2 = await d.query("h1", "udp", "10.0.0.11:40000", "198.51.100.10:7000", true);
      await d.server.stop("SIGTERM", 5000);
      const server2 = spawnServer(t, d.serverSocket, "--state", state);
      await server2.waitForOutput(/ready/, 30_000);
      assert.match(server2.output(), /restored 1 of 1 sessions/);
      const st = await d.status();
      assert.equal(st.sessions, 1);
      assert.equal(st.shown[0]!.public, q2.public, "same public pair after the restart");
      assert.notEqual(st.epoch, undefined);
      assert.ok(q.public);
      assert.notEqual(epoch1, undefined);
      await server2.stop("SIGTERM", 5000);
      // Now a restart that lost its state: the driver notices the epoch at its next exchange.
      await Deno.remove(state);
      const server3 = spawnServer(t, d.serverSocket);
      await server3.waitForOutput(/ready/, 30_000);
      await d.query("h1", "udp", "10.0.0.11:40001", "198.51.100.10:7000", true);
      const mine = async () =>
        (await d.status()).shown.filter((s) => String(s.internal).startsWith("10.0.0.11:4000"))
          .length;
      await waitFor(async () => (await mine()) === 2, {
        what: "the driver to re-reserve its session on the new server",
        timeoutMs: 5000,
      }).catch((e) => {
        console.error(d.drivers.get("h1")!.output(), server3.output());
        throw e;
      });
      await server3.stop("SIGTERM", 5000);
      await d.stop();
    } finally {
      await Deno.remove(state).catch(() => {});
      await t.destroy();
    }
  },
}));
