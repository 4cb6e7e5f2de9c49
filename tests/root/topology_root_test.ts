/**
 * The namespace topology builder, on real namespaces. Needs root, `ip`,
 * `sysctl` and `ping` (Debian: iproute2, procps, iputils-ping).
 */

import assert from "node:assert/strict";
import {
  _writeMarkerFor,
  cleanupStaleTopologies,
  createTopology,
  EXEC_TIMEOUT_CODE,
  MARKER_DIR,
  type Topology,
} from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";

function netnsList(): string[] {
  const out = new Deno.Command("ip", { args: ["netns", "list"] }).outputSync();
  return new TextDecoder().decode(out.stdout).split("\n").map((l) => l.split(" ")[0]!).filter(
    Boolean,
  );
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function ping(t: Topology, ns: string, dst: string): Promise<boolean> {
  const r = await t.exec(ns, ["ping", "-n", "-c", "1", "-W", "1", dst], { timeoutMs: 5000 });
  return r.code === 0;
}

Deno.test(needsRoot(
  "topology root: default layout connects LAN and outside, and destroy removes all",
  async () => {
    const t0 = performance.now();
    const t = await createTopology();
    let destroyed = false;
    try {
      const ms = performance.now() - t0;
      assert.ok(ms < 2000, `creation took ${ms.toFixed(0)} ms`);
      assert.equal(t.hosts.length, 3);
      assert.equal(t.peers.length, 3);
      assert.deepEqual(t.hosts.map((h) => h.addrText), ["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
      assert.deepEqual(t.peers.map((p) => p.addrText), [
        "198.51.100.10",
        "198.51.100.20",
        "198.51.100.30",
      ]);
      assert.equal(t.hosts[0]!.addr, 0x0a00000b);
      assert.equal(t.gateway.lanText, "10.0.0.1");
      assert.equal(t.gateway.wanText, "203.0.113.1");
      assert.equal(t.gateway.lanCidr, "10.0.0.0/24");
      assert.equal(t.router?.addrText, "203.0.113.254");
      assert.equal(t.poolText, "203.0.113.10-203.0.113.13");
      assert.match(t.prefix, /^dpmt-[0-9a-f]{6}-$/);
      for (const ns of t.namespaces) assert.ok(ns.startsWith(t.prefix), ns);
      assert.deepEqual(
        netnsList().filter((n) => n.startsWith(t.prefix)).sort(),
        [...t.namespaces].sort(),
      );

      const h1 = t.hosts[0]!.ns;
      const p1 = t.peers[0]!.ns;
      assert.ok(await ping(t, h1, "10.0.0.1"), "h1 -> gateway");
      assert.ok(await ping(t, h1, "10.0.0.12"), "h1 -> h2");
      assert.ok(await ping(t, p1, "198.51.100.20"), "p1 -> p2");
      assert.ok(await ping(t, p1, "198.51.100.1"), "p1 -> router");
      assert.ok(await ping(t, t.gateway.ns, "198.51.100.10"), "gateway -> p1");
      // One TTL hop between the gateway and the peers.
      const tr = await t.exec(t.gateway.ns, ["ping", "-n", "-c", "1", "-W", "1", "198.51.100.10"]);
      assert.match(tr.stdout, /ttl=63/);
      // The "Internet" knows no private addresses: without NAT, h1 gets no answer.
      assert.equal(await ping(t, h1, "198.51.100.10"), false, "h1 -> p1 must fail without NAT");

      const routes = async (ns: string) =>
        (await t.exec(ns, ["ip", "route", "show", "default"])).stdout;
      assert.match(await routes(h1), /^default via 10\.0\.0\.1 dev eth0/);
      assert.match(await routes(p1), /^default via 198\.51\.100\.1 dev eth0/);
      assert.match(await routes(t.gateway.ns), /^default via 203\.0\.113\.254 dev wan0/);
      assert.equal(await routes(t.router!.ns), "", "the router has no default route");

      const sys = await t.exec(t.gateway.ns, [
        "sysctl",
        "-n",
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
      ]);
      assert.equal(sys.stdout, "1\n1\n1\n");
      const hs = await t.exec(h1, ["sysctl", "-n", "net.ipv4.ip_forward"]);
      assert.equal(hs.stdout, "0\n");
      const lo = await t.exec(p1, ["ip", "-br", "link", "show", "lo"]);
      assert.match(lo.stdout, /UNKNOWN|UP/);
      const v6 = await t.exec(h1, ["ip", "-6", "addr"]);
      assert.equal(v6.stdout.trim(), "");
      const fd = await t.exec(t.gateway.ns, ["cat", "/sys/class/net/lan0/bridge/forward_delay"]);
      assert.equal(fd.stdout.trim(), "0");

      const sleeper = t.spawn(p1, ["sh", "-c", "echo ready; exec sleep 1000"]);
      await sleeper.waitForOutput(/ready/, 3000);
      assert.ok(exists(`/proc/${sleeper.pid}`));

      await t.destroy();
      destroyed = true;
      const st = await sleeper.status;
      assert.equal(st.signal, "SIGTERM");
      assert.equal(exists(`/proc/${sleeper.pid}`), false);
      assert.deepEqual(netnsList().filter((n) => n.startsWith(t.prefix)), []);
      assert.equal(exists(`${MARKER_DIR}/${t.prefix}.pid`), false);
      await t.destroy(); // idempotent
    } finally {
      if (!destroyed) await t.destroy();
    }
  },
));

Deno.test(needsRoot("topology root: a failing test body still cleans up", async () => {
  let prefix = "";
  let pid = 0;
  await assert.rejects(async () => {
    const t = await createTopology({ hosts: 1, peers: 1 });
    try {
      prefix = t.prefix;
      // A process that ignores SIGTERM must still go (SIGKILL after the grace).
      const s = t.spawn(t.hosts[0]!.ns, [
        "sh",
        "-c",
        "trap '' TERM; echo up; while :; do sleep 1; done",
      ]);
      pid = s.pid;
      await s.waitForOutput(/up/, 3000);
      throw new Error("boom");
    } finally {
      await t.destroy();
    }
  }, /boom/);
  assert.notEqual(prefix, "");
  assert.deepEqual(netnsList().filter((n) => n.startsWith(prefix)), []);
  assert.equal(exists(`/proc/${pid}`), false);

  // The same with `await using`.
  await assert.rejects(async () => {
    await using t = await createTopology({ hosts: 1, peers: 1 });
    prefix = t.prefix;
    throw new Error("boom again");
  }, /boom again/);
  assert.deepEqual(netnsList().filter((n) => n.startsWith(prefix)), []);
}));

Deno.test(
  needsRoot("topology root: router false puts the peers on the gateway's link", async () => {
    await using t = await createTopology({ hosts: 2, peers: 2, router: false });
    assert.equal(t.router, null);
    assert.equal(t.namespaces.length, 2 + 1 + 1 + 2);
    const r = await t.exec(t.gateway.ns, ["ping", "-n", "-c", "1", "-W", "1", "198.51.100.20"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /ttl=64/);
    assert.ok(await ping(t, t.peers[0]!.ns, "203.0.113.1"));
    assert.ok(await ping(t, t.hosts[1]!.ns, "10.0.0.11"));
    assert.equal(await ping(t, t.hosts[0]!.ns, "198.51.100.10"), false);
  }),
);

Deno.test(
  needsRoot("topology root: exec and spawn report output, exit codes and timeouts", async () => {
    await using t = await createTopology({ hosts: 1, peers: 1 });
    const ns = t.hosts[0]!.ns;
    const ok = await t.exec(ns, ["sh", "-c", "cat; echo err >&2; exit 3"], {
      stdin: "in",
      env: { X: "1" },
    });
    assert.deepEqual(ok, { code: 3, stdout: "in", stderr: "err\n" });
    const env = await t.exec(ns, ["sh", "-c", "echo $DPM_T"], { env: { DPM_T: "v" } });
    assert.equal(env.stdout, "v\n");
    const started = performance.now();
    const slow = await t.exec(ns, ["sleep", "30"], { timeoutMs: 200 });
    assert.equal(slow.code, EXEC_TIMEOUT_CODE);
    assert.ok(performance.now() - started < 5000);
    await assert.rejects(t.exec("dpmt-nope-h1", ["true"]), TypeError);

    const quick = t.spawn(ns, ["sh", "-c", "echo a; echo b >&2; exit 0"]);
    await assert.rejects(quick.waitForOutput(/never/, 3000), /exited before printing/);
    assert.equal((await quick.status).code, 0);
    assert.equal(quick.stdout(), "a\n");
    assert.equal(quick.stderr(), "b\n");
    assert.match(quick.output(), /a\n/);
    assert.match(quick.output(), /b\n/);

    const silent = t.spawn(ns, ["sleep", "1000"]);
    await assert.rejects(silent.waitForOutput(/x/, 100), /Timed out after 100 ms/);
    const st = await silent.stop("SIGINT");
    assert.equal(st.signal, "SIGINT");
    assert.equal((await silent.stop()).signal, "SIGINT"); // stop() again is harmless
  }),
);

Deno.test(needsRoot(
  "topology root: cleanupStaleTopologies removes dead creators' namespaces only",
  async () => {
    const tag = crypto.randomUUID().slice(0, 6);
    const stale = `dpmt-stale${tag}-`;
    const live = `dpmt-live${tag}-`;
    const made: string[] = [];
    await using t = await createTopology({ hosts: 1, peers: 1 });
    try {
      // A pid that certainly belonged to a process that has exited.
      const dead = new Deno.Command("true").spawn();
      await dead.status;
      for (const ns of [`${stale}h1`, `${stale}gw`, `${live}h1`]) {
        const r = new Deno.Command("ip", { args: ["netns", "add", ns] }).outputSync();
        assert.ok(r.success, new TextDecoder().decode(r.stderr));
        made.push(ns);
      }
      // A process left running inside the stale namespace must not keep it alive.
      const orphan = new Deno.Command("ip", {
        args: ["netns", "exec", `${stale}h1`, "sleep", "1000"],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await _writeMarkerFor(stale, dead.pid);
      await _writeMarkerFor(live, Deno.pid);

      const n = await cleanupStaleTopologies();
      assert.ok(n >= 2, `deleted ${n}`);
      assert.equal((await orphan.status).signal, "SIGKILL");
      const left = netnsList();
      assert.equal(left.includes(`${stale}h1`), false);
      assert.equal(left.includes(`${stale}gw`), false);
      assert.equal(exists(`${MARKER_DIR}/${stale}.pid`), false);
      assert.ok(left.includes(`${live}h1`), "a live creator's namespace stays");
      for (const ns of t.namespaces) assert.ok(left.includes(ns), `${ns} of a live topology stays`);
      assert.ok(await ping(t, t.hosts[0]!.ns, "10.0.0.1"));
    } finally {
      for (const ns of made) {
        new Deno.Command("ip", { args: ["netns", "del", ns], stderr: "null" }).outputSync();
      }
      for (const p of [stale, live]) await Deno.remove(`${MARKER_DIR}/${p}.pid`).catch(() => {});
    }
  },
));

/** Starts a Deno child that builds a topology, installs the signal handlers and reports its prefix. */
async function childWithTopology(mode: "signal" | "exit") {
  const mod = new URL("../../testing/topology.ts", import.meta.url).href;
  const code = `
    import { createTopology, destroyOnSignal } from ${JSON.stringify(mod)};
    const t = await createTopology({ hosts: 1, peers: 1 });
    destroyOnSignal(t);
    t.spawn(t.hosts[0].ns, ["sleep", "1000"]);
    console.log("prefix " + t.prefix);
    if (${JSON.stringify(mode)} === "exit") Deno.exit(7);
    setInterval(() => {}, 1000);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", code],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let prefix = "";
  while (!prefix) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
    prefix = /prefix (\S+)/.exec(out)?.[1] ?? "";
  }
  return { child, reader, prefix };
}

Deno.test(needsRoot("topology root: SIGINT and process exit tear the topology down", async () => {
  const children: Deno.ChildProcess[] = [];
  try {
    const cases = [["signal", "SIGINT", 130], ["signal", "SIGTERM", 143], [
      "exit",
      null,
      7,
    ]] as const;
    for (const [mode, sig, want] of cases) {
      const { child, reader, prefix } = await childWithTopology(mode);
      children.push(child);
      assert.notEqual(prefix, "", "the child reported its topology");
      if (sig) {
        assert.ok(netnsList().some((n) => n.startsWith(prefix)));
        child.kill(sig);
      }
      const st = await child.status;
      await reader.cancel();
      await child.stderr.cancel();
      assert.equal(st.code, want);
      assert.deepEqual(netnsList().filter((n) => n.startsWith(prefix)), [], `${mode} ${sig}`);
      assert.equal(exists(`${MARKER_DIR}/${prefix}.pid`), false);
    }
  } finally {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await c.status;
    }
    // The children are dead now, so whatever they left is stale.
    await cleanupStaleTopologies();
  }
}));

Deno.test(needsRoot(
  "topology root: the escape counter sees a packet toward an address outside the topology, and nothing else",
  async () => {
    for (const router of [true, false]) {
      const t = await createTopology({ hosts: 1, peers: 1, router });
      try {
        const h1 = t.hosts[0]!;
        // Traffic inside the topology is not counted.
        const ping = await t.exec(h1.ns, ["ping", "-c1", "-W2", t.gateway.lanText]);
        assert.equal(ping.code, 0, ping.stderr);
        assert.equal(await t.escaped(), 0, `router ${router}: inside traffic`);
        // A datagram toward a documentation address outside the topology is.
        const send = await t.exec(h1.ns, [
          "python3",
          "-c",
          "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.99', 9))",
        ]);
        assert.equal(send.code, 0, send.stderr);
        assert.equal(await t.escaped(), 1, `router ${router}: one packet tried to leave`);
      } finally {
        await t.destroy();
      }
    }
  },
));
