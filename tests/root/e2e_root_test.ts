/**
 * End to end, as root, in real network namespaces (src/topology.ts):
 *
 *   h1 10.0.0.11 ─┐                                                  ┌─ p1 198.51.100.10
 *   h2 10.0.0.12 ─┼─ gw lan0 10.0.0.1 | wan0 203.0.113.1 ── rt ──────┼─ p2 198.51.100.20
 *   h3 10.0.0.13 ─┘  (dpm server; pool 203.0.113.10-13)   (1 hop)    └─ p3 198.51.100.30
 *
 * h1 and h2 run `dpm driver`; h3 runs none (ordinary NAT). Real programs
 * (python3 servers and clients, curl, ping) send real traffic through the
 * real kernel queue and iptables rules. No test sleeps for correctness: each
 * waits on a condition with a deadline.
 */

import assert from "node:assert/strict";
import { createTopology, type Topology } from "../../testing/topology.ts";
import {
  type Dpm,
  DPM_ENV,
  dpmCommand,
  lastJson,
  serveApp,
  startDpm,
  type StartOptions,
  withDpm as withDpmOn,
} from "../../testing/launch.ts";
import { httpSeen, rawSender, udpClient, udpEcho, udpProbe } from "../../testing/apps.ts";
import { waitFor } from "../../testing/wait.ts";
import { type DataPathName, perDataPath } from "../../testing/root.ts";
import { buildUdp } from "../../testing/packets.ts";
import { BpfRig } from "../../testing/bpf_rig.ts";
import { encodeRequest, newNonce, Op } from "../../src/control/proto.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** Every test runs on both data paths; `datapath` is the one of the running test. */
let datapath: DataPathName = "kernel";

function test(def: Omit<Deno.TestDefinition, "fn"> & { fn: () => Promise<void> }): void {
  for (
    const t of perDataPath({
      ...def,
      fn: (dp) => {
        datapath = dp;
        return def.fn();
      },
    })
  ) Deno.test(t);
}

function withDpm(
  opts: StartOptions & { hosts?: number },
  fn: (t: Topology, d: Dpm) => Promise<void>,
): Promise<void> {
  return withDpmOn({ datapath, ...opts }, fn);
}

const h = (t: Topology, i: number) => t.hosts[i]!;
const p = (t: Topology, i: number) => t.peers[i]!;

test({
  name:
    "e2e root: UDP both ways; the peer sees the public pair dpm query reports (claim 11), port preserved",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const out = await lastJson(
        t,
        h(t, 0).ns,
        udpClient(40000, [`${p(t, 0).addrText}:7000`], { rounds: 3 }),
      );
      assert.deepEqual(out.errors, []);
      assert.equal(out.replies.length, 3);
      const seen = out.replies[0].data.split("|")[0].replace("seen ", "");
      assert.equal(
        out.replies[0].from,
        `${p(t, 0).addrText}:7000`,
        "the reply comes from the peer's real address",
      );
      const q = await d.query("h1", "udp", `${h(t, 0).addrText}:40000`, `${p(t, 0).addrText}:7000`);
      assert.equal(q.result, "ok");
      assert.equal(
        q.public,
        seen,
        "claim 11: the driver tells the app exactly what the outside sees",
      );
      assert.match(seen, /^203\.0\.113\.1[0-3]:40000$/, "port preserved, address from the pool");
      const st = await d.status();
      assert.ok(st.shown.some((s) => s.public === seen && s.remote === `${p(t, 0).addrText}:7000`));
    }),
});

test({
  name: "e2e root: TCP (curl over HTTP) and ICMP echo (ping) through dpm",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      await serveApp(t, p(t, 1).ns, httpSeen(8080));
      const r = await t.exec(h(t, 0).ns, [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--local-port",
        "45000",
        `http://${p(t, 1).addrText}:8080/`,
      ], { timeoutMs: 15_000 });
      assert.equal(r.code, 0, r.stderr);
      const seen = r.stdout.replace("seen ", "");
      const q = await d.query("h1", "tcp", `${h(t, 0).addrText}:45000`, `${p(t, 1).addrText}:8080`);
      assert.equal(q.public, seen);
      // The gateway stays pingable from hosts with and without a driver.
      for (const host of [h(t, 0), h(t, 2)]) {
        const g = await t.exec(host.ns, ["ping", "-n", "-c", "1", "-W", "2", t.gateway.lanText]);
        assert.equal(g.code, 0, `${host.name} pings the gateway: ${g.stdout}`);
      }
      const ping = await t.exec(h(t, 1).ns, [
        "ping",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        p(t, 2).addrText,
      ]);
      assert.equal(ping.code, 0, ping.stdout + ping.stderr);
      assert.match(ping.stdout, /3 received/);
      const st = await d.status();
      assert.ok(st.shown.some((s) => s.proto === "icmp" && s.remote === p(t, 2).addrText));
    }),
});

test({
  name:
    "e2e root: ICMP errors reach the sender translated: TTL expiry at the router, port unreachable",
  ...SAN,
  fn: () =>
    withDpm({}, async (t) => {
      // TTL 2: the gateway forwards with 1, the router cannot: it reports from 203.0.113.254.
      const r = await t.exec(h(t, 0).ns, [
        "ping",
        "-n",
        "-c",
        "1",
        "-t",
        "2",
        "-W",
        "3",
        p(t, 0).addrText,
      ]);
      assert.match(r.stdout, /From 203\.0\.113\.254 .*Time to live exceeded/i, r.stdout);
      // Nothing listens on p1:9999: the app's connected socket gets ECONNREFUSED.
      const probe = await lastJson(t, h(t, 0).ns, udpProbe(40001, `${p(t, 0).addrText}:9999`));
      assert.equal(probe.result, "refused");
    }),
});

test({
  name:
    "e2e root: claim 23 a replaceable port taken on every public address is replaced, and the query says so",
  ...SAN,
  fn: () =>
    withDpm({ pool: "203.0.113.10" }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const a = await lastJson(t, h(t, 0).ns, udpClient(40000, [`${p(t, 0).addrText}:7000`]));
      const b = await lastJson(t, h(t, 1).ns, udpClient(40000, [`${p(t, 0).addrText}:7000`]));
      const seenA = a.replies[0].data.split("|")[0].replace("seen ", "");
      const seenB = b.replies[0].data.split("|")[0].replace("seen ", "");
      assert.equal(seenA, "203.0.113.10:40000");
      assert.match(seenB, /^203\.0\.113\.10:\d+$/);
      assert.notEqual(seenB, seenA, "the second host's port was replaced");
      const q = await d.query("h2", "udp", `${h(t, 1).addrText}:40000`, `${p(t, 0).addrText}:7000`);
      assert.equal(q.public, seenB);
      assert.equal(q.replaced, true);
    }),
});

test({
  name:
    "e2e root: claims 8-10 two hosts on the same fixed port toward different peers share one public pair",
  ...SAN,
  fn: () =>
    withDpm({ pool: "203.0.113.10" }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(5060));
      await serveApp(t, p(t, 1).ns, udpEcho(5060));
      const [a, b] = await Promise.all([
        lastJson(
          t,
          h(t, 0).ns,
          udpClient(5060, [`${p(t, 0).addrText}:5060`], { rounds: 5, intervalMs: 50 }),
        ),
        lastJson(
          t,
          h(t, 1).ns,
          udpClient(5060, [`${p(t, 1).addrText}:5060`], { rounds: 5, intervalMs: 50 }),
        ),
      ]);
      assert.deepEqual([a.errors, b.errors], [[], []]);
      for (const r of a.replies) {
        assert.equal(r.from, `${p(t, 0).addrText}:5060`, "h1 only hears p1");
      }
      for (const r of b.replies) {
        assert.equal(r.from, `${p(t, 1).addrText}:5060`, "h2 only hears p2");
      }
      assert.equal(a.replies[0].data.split("|")[0], "seen 203.0.113.10:5060");
      assert.equal(b.replies[0].data.split("|")[0], "seen 203.0.113.10:5060");
      const qa = await d.query("h1", "udp", `${h(t, 0).addrText}:5060`, `${p(t, 0).addrText}:5060`);
      const qb = await d.query("h2", "udp", `${h(t, 1).addrText}:5060`, `${p(t, 1).addrText}:5060`);
      assert.equal(qa.public, "203.0.113.10:5060");
      assert.equal(qb.public, "203.0.113.10:5060");
      // Whichever host came second joined the pair and was told it is shared.
      assert.equal([qa.shared, qb.shared].filter(Boolean).length, 1);
    }),
});

test({
  name:
    "e2e root: the same fixed port toward the same peer from two hosts: another address, else a visible refusal",
  ...SAN,
  fn: async () => {
    // Two public addresses: the second host gets the other one.
    await withDpm({ pool: "203.0.113.10-203.0.113.11" }, async (t) => {
      await serveApp(t, p(t, 0).ns, udpEcho(5060));
      const a = await lastJson(t, h(t, 0).ns, udpClient(5060, [`${p(t, 0).addrText}:5060`]));
      const b = await lastJson(t, h(t, 1).ns, udpClient(5060, [`${p(t, 0).addrText}:5060`]));
      const sa = a.replies[0].data.split("|")[0];
      const sb = b.replies[0].data.split("|")[0];
      assert.match(sa, /:5060$/);
      assert.match(sb, /:5060$/);
      assert.notEqual(sa, sb, "told apart by public address");
    });
    // One public address: the second host is refused, and it can see why.
    await withDpm({ pool: "203.0.113.10" }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(5060));
      const a = await lastJson(t, h(t, 0).ns, udpProbe(5060, `${p(t, 0).addrText}:5060`));
      assert.equal(a.result, "reply");
      const b = await lastJson(t, h(t, 1).ns, udpProbe(5060, `${p(t, 0).addrText}:5060`));
      assert.notEqual(b.result, "reply", "never a silent mix-up");
      assert.notEqual(
        b.result,
        "timeout",
        "the refusal is immediate (ICMP administratively prohibited)",
      );
      const q = await d.query("h2", "udp", `${h(t, 1).addrText}:5060`, `${p(t, 0).addrText}:5060`);
      assert.equal(q.result, "conflict");
    });
  },
});

test({
  name: "e2e root: one UDP socket talking to three peers keeps every exchange apart",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      for (let i = 0; i < 3; i++) await serveApp(t, p(t, i).ns, udpEcho(7000 + i));
      const dests = [0, 1, 2].map((i) => `${p(t, i).addrText}:${7000 + i}`);
      const out = await lastJson(t, h(t, 0).ns, udpClient(40100, dests, { rounds: 4 }));
      assert.deepEqual(out.errors, []);
      assert.equal(out.replies.length, 12);
      out.replies.forEach((r: { from: string; data: string }, i: number) => {
        assert.equal(r.from, dests[i % 3], "each reply from the peer asked");
        assert.ok(
          r.data.endsWith(`|${dests[i % 3]}#${Math.floor(i / 3)}`),
          "and carrying its own request",
        );
      });
      // Endpoint-independent mapping: all three peers saw the same public pair.
      const seen = new Set(out.replies.map((r: { data: string }) => r.data.split("|")[0]));
      assert.equal(seen.size, 1);
      const st = await d.status();
      const mine = st.shown.filter((s) => s.internal === `${h(t, 0).addrText}:40100`);
      assert.equal(mine.length, 3);
      assert.equal(new Set(mine.map((s) => s.gatewayPort)).size, 3, "one gateway port per peer");
    }),
});

test({
  name: "e2e root: a host without a driver still reaches the outside through ordinary NAT",
  ...SAN,
  fn: () =>
    withDpm({ driverHosts: ["h1", "h2"] }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const out = await lastJson(t, h(t, 2).ns, udpClient(40000, [`${p(t, 0).addrText}:7000`]));
      assert.deepEqual(out.errors, []);
      assert.equal(
        out.replies[0].data.split("|")[0].split(":")[0],
        "seen 203.0.113.1",
        "masqueraded to the WAN address",
      );
      const ping = await t.exec(h(t, 2).ns, ["ping", "-n", "-c", "1", "-W", "2", p(t, 0).addrText]);
      assert.equal(ping.code, 0);
      assert.equal((await d.status()).sessions, 0, "no dpm session for it");
    }),
});

test({
  name: "e2e root: hairpinning, a host reaches another host's public pair from inside the LAN",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      const p1 = `${p(t, 0).addrText}:7000`;
      const a0 = await d.query("h1", "udp", `${h(t, 0).addrText}:40000`, p1, true);
      const b0 = await d.query("h2", "udp", `${h(t, 1).addrText}:41000`, p1, true);
      assert.equal(a0.result, "ok");
      assert.equal(b0.result, "ok");
      // Each now opens a session toward the other's public pair (as ICE would).
      const a = await d.query("h1", "udp", `${h(t, 0).addrText}:40000`, String(b0.public), true);
      const b = await d.query("h2", "udp", `${h(t, 1).addrText}:41000`, String(a0.public), true);
      assert.equal(a.public, a0.public, "same public pair toward every peer");
      assert.equal(b.public, b0.public);
      await serveApp(t, h(t, 1).ns, udpEcho(41000));
      const out = await lastJson(
        t,
        h(t, 0).ns,
        udpClient(40000, [String(b0.public)], { rounds: 2 }),
      );
      assert.deepEqual(out.errors, []);
      assert.equal(out.replies[0].from, b0.public, "the reply comes from h2's public pair");
      assert.equal(
        out.replies[0].data.split("|")[0],
        `seen ${a0.public}`,
        "h2 saw h1's public pair",
      );
      const st = await d.status() as unknown as { packets: { hairpin: number } };
      assert.ok(st.packets.hairpin >= 4);
    }),
});

test({
  name: "e2e root: an idle session leaves the table; a busy one is renewed and keeps working",
  ...SAN,
  fn: () =>
    withDpm({ serverArgs: ["--lifetime", "4"] }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const idle = await d.query(
        "h1",
        "udp",
        `${h(t, 0).addrText}:40500`,
        `${p(t, 0).addrText}:7000`,
        true,
      );
      assert.equal(idle.result, "ok");
      assert.ok(Number(idle.expiresIn) <= 4);
      // 40 exchanges over ~12 s, three lifetimes: every one answered.
      const busyP = lastJson(
        t,
        h(t, 0).ns,
        udpClient(40600, [`${p(t, 0).addrText}:7000`], { rounds: 40, intervalMs: 300 }),
        40_000,
      );
      await waitFor(
        async () =>
          !(await d.status()).shown.some((s) => s.internal === `${h(t, 0).addrText}:40500`),
        {
          what: "the idle session to leave the server's table",
          timeoutMs: 15_000,
          intervalMs: 250,
        },
      );
      const busy = await busyP;
      assert.deepEqual(busy.errors, []);
      assert.equal(busy.replies.length, 40);
      const st = await d.status();
      assert.ok(
        st.shown.some((s) => s.internal === `${h(t, 0).addrText}:40600`),
        "the busy session is still there",
      );
      const q = await d.query("h1", "udp", `${h(t, 0).addrText}:40500`, `${p(t, 0).addrText}:7000`);
      assert.equal(q.result, "no-session");
    }),
});

/** dpm's iptables chains, nftables tables and BPF filters (tc, any interface) in `ns`. */
async function dpmRules(t: Topology, ns: string): Promise<string[]> {
  const r = await t.exec(ns, ["iptables-save"]);
  const nft = await t.exec(ns, ["nft", "list", "tables"]);
  const links = (await t.exec(ns, ["ip", "-o", "link", "show"])).stdout.split("\n")
    .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1]).filter((n): n is string => n !== undefined);
  const filters: string[] = [];
  for (const dev of links) {
    for (const dir of ["ingress", "egress"]) {
      const f = await t.exec(ns, ["tc", "filter", "show", "dev", dev, dir]);
      for (const l of f.stdout.split("\n")) {
        // Without program ids: a restart loads the programs anew.
        if (/dpm_/.test(l)) filters.push(`${dev} ${dir}: ${l.replace(/:\[\d+\]| id \d+/g, "")}`);
      }
    }
  }
  if (datapath === "bpf") {
    // tcx programs (the gateway's), which tc does not list.
    const rig = await BpfRig.start(ns);
    try {
      for (const dev of links) {
        const f = await rig.call({ op: "filters", dev });
        for (const dir of ["ingress", "egress"] as const) {
          for (const p of f[dir] as { kind: string; name: string }[]) {
            if (p.kind === "tcx" && p.name.startsWith("dpm_")) {
              filters.push(`${dev} ${dir}: tcx ${p.name}`);
            }
          }
        }
      }
    } finally {
      await rig.close();
    }
  }
  return [
    ...r.stdout.split("\n").filter((l) => l.includes("DPM-")),
    ...nft.stdout.split("\n").filter((l) => /dpm-(server|driver)/.test(l)),
    ...filters,
  ];
}

/**
 * Stops dpm the way each data path is stopped for good: SIGTERM, and on the
 * kernel and bpf paths (which keep translating established sessions after
 * SIGTERM) `--cleanup` with the same flags.
 */
async function stopForGood(t: Topology, d: Dpm): Promise<void> {
  await d.stop();
  if (datapath !== "queue") {
    const left = await dpmRules(t, t.gateway.ns);
    assert.ok(
      left.some((l) => l.includes("dpm-server")),
      "the kernel and bpf paths keep translating after SIGTERM",
    );
    if (datapath === "bpf") assert.ok(left.some((l) => l.includes("dpm_lan_in")), "programs stay");
    await d.cleanup();
  }
}

test({
  name:
    "e2e root: stopping leaves no rule, sysctl or address behind; SIGKILL then restart leaves no duplicates",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 2, peers: 1 });
    try {
      const before =
        (await t.exec(t.gateway.ns, ["sysctl", "-n", "net.ipv4.conf.wan0.accept_local"])).stdout;
      // A gateway that filters by reverse path keeps doing so on the interfaces dpm does not own.
      const sysctl = async (name: string) =>
        (await t.exec(t.gateway.ns, ["sysctl", "-n", name])).stdout.trim();
      await t.exec(t.gateway.ns, ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=2"]);
      const portBefore = await sysctl("net.ipv4.conf.lan-h1.rp_filter");
      let d = await startDpm(t, { driverHosts: ["h1"], datapath });
      assert.equal(await sysctl("net.ipv4.conf.all.rp_filter"), "0");
      assert.equal(
        await sysctl("net.ipv4.conf.lan-h1.rp_filter"),
        "2",
        "other interfaces keep their filter",
      );
      assert.equal(
        await sysctl("net.ipv4.conf.default.rp_filter"),
        "2",
        "and interfaces made later",
      );
      assert.ok((await dpmRules(t, t.gateway.ns)).length > 0, "server rules installed");
      assert.ok((await dpmRules(t, h(t, 0).ns)).length > 0, "driver rules installed");
      await stopForGood(t, d);
      assert.deepEqual(await dpmRules(t, t.gateway.ns), []);
      assert.deepEqual(await dpmRules(t, h(t, 0).ns), []);
      const after =
        (await t.exec(t.gateway.ns, ["sysctl", "-n", "net.ipv4.conf.wan0.accept_local"])).stdout;
      assert.equal(after, before, "sysctl restored");
      assert.equal(await sysctl("net.ipv4.conf.all.rp_filter"), "2", "rp_filter restored");
      assert.equal(await sysctl("net.ipv4.conf.lan-h1.rp_filter"), portBefore);
      const addrs =
        (await t.exec(t.gateway.ns, ["ip", "-4", "addr", "show", "dev", "wan0"])).stdout;
      assert.ok(!addrs.includes("203.0.113.10/32"), "pool addresses removed");

      // A crash leaves rules; the next start replaces them exactly once.
      d = await startDpm(t, { driverHosts: ["h1"], datapath });
      const rulesOnce = await dpmRules(t, t.gateway.ns);
      await d.server.stop("SIGKILL", 0);
      await d.drivers.get("h1")!.stop("SIGKILL", 0);
      assert.deepEqual(
        await dpmRules(t, t.gateway.ns),
        rulesOnce,
        "SIGKILL leaves the rules (nothing can run)",
      );
      assert.equal(
        await sysctl("net.ipv4.conf.all.rp_filter"),
        "0",
        "SIGKILL leaves sysctls changed",
      );
      d = await startDpm(t, { driverHosts: ["h1"], datapath });
      assert.deepEqual(await dpmRules(t, t.gateway.ns), rulesOnce, "no duplicate after restart");
      const hostRules = await dpmRules(t, h(t, 0).ns);
      const jumps = hostRules.filter((l) => l.startsWith("-A OUTPUT"));
      assert.equal(
        jumps.length,
        { kernel: 2, queue: 1, bpf: 0 }[datapath],
        "one jump per table into the driver's chains (the bpf host has no netfilter rule)",
      );
      if (datapath === "bpf") {
        assert.equal(
          hostRules.filter((l) => /dpm_host_(in|out)/.test(l)).length,
          2,
          "two programs",
        );
      }
      // And it still translates.
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const out = await lastJson(t, h(t, 0).ns, udpClient(0, [`${p(t, 0).addrText}:7000`]));
      assert.deepEqual(out.errors, []);
      await stopForGood(t, d);
      assert.deepEqual(await dpmRules(t, t.gateway.ns), []);
      assert.deepEqual(await dpmRules(t, h(t, 0).ns), []);
      assert.equal(
        await sysctl("net.ipv4.conf.all.rp_filter"),
        "2",
        "the killed run's changes undone too",
      );
      assert.equal(await sysctl("net.ipv4.conf.wan0.accept_local"), before.trim());
    } finally {
      await t.destroy();
    }
  },
});

test({
  name: "e2e root: bad flags and config exit 2 with a one-line reason; nothing is installed",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 1, peers: 1 });
    try {
      const cases: [string[], RegExp][] = [
        [
          ["server", "--lan-addr", "10.0.0.1", "--pool", "203.0.113.300"],
          /Cannot parse pool address "203\.0\.113\.300"/,
        ],
        [["server", "--lan-addr", "10.0.0.1"], /Missing required --pool/],
        [
          ["server", "--lan-addr", "10.0.0.1", "--pool", "203.0.113.10", "--control-port", "70000"],
          /"70000"/,
        ],
        [["server", "--lan-addr", "10.0.0.1", "--pool", "203.0.113.10", "--bogus"], /bogus/],
        [["driver", "--server", "10.0.0.1:x"], /Invalid --server "10\.0\.0\.1:x"/],
        [["query", "sctp", "1.2.3.4:5", "6.7.8.9:10"], /Unknown protocol "sctp"/],
        [["nonsense"], /Unknown command "nonsense"/],
      ];
      for (const [args, re] of cases) {
        const r = await t.exec(t.gateway.ns, [...dpmCommand(), ...args], { env: DPM_ENV });
        assert.equal(r.code, 2, `${args.join(" ")} → ${r.code}: ${r.stderr}`);
        assert.match(r.stderr.split("\n")[0]!, re);
        // A bad flag prints the usage; a bad value points at the command's help.
        assert.match(r.stderr, /Usage|see 'dpm help/);
      }
      // A data-plane start that fails late (interface missing) cleans up.
      const r = await t.exec(t.gateway.ns, [
        ...dpmCommand(),
        "server",
        "--lan-addr",
        "10.0.0.1",
        "--pool",
        "203.0.113.10",
        "--lan-if",
        "lan0",
        "--wan-if",
        "nope0",
        "--socket",
        `${t.scratch}/bad.sock`,
      ], { timeoutMs: 20_000, env: DPM_ENV });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /nope0/);
      assert.deepEqual(await dpmRules(t, t.gateway.ns), []);
    } finally {
      await t.destroy();
    }
  },
});

test({
  name: "e2e root: datagrams larger than the MTU cross fragmented, both ways, translated",
  ...SAN,
  fn: () =>
    withDpm({}, async (t) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      // 3000 bytes out (fragmented by h1, reassembled at the gateway) and 3000+ back
      // (fragmented by the router, reassembled at the gateway, fragmented again on the LAN).
      const r = await t.exec(h(t, 0).ns, [
        "python3",
        "-c",
        `
import socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40700))
s.settimeout(3)
s.sendto(b"x" * 3000, ("${p(t, 0).addrText}", 7000))
d, a = s.recvfrom(65535)
print(json.dumps({"len": len(d), "from": "%s:%d" % a}))
`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.equal(
        out.from,
        `${p(t, 0).addrText}:7000`,
        "the reassembled reply is restored to the peer's address",
      );
      assert.ok(out.len > 3000);
    }),
});

test({
  name:
    "e2e root: control requests forged from the WAN side in a LAN host's name are dropped: no release, no reservation",
  ...SAN,
  fn: () =>
    withDpm({ hosts: 2 }, async (t, d) => {
      const h1 = h(t, 0);
      const p1 = `${p(t, 0).addrText}:7000`;
      const q = await d.query("h1", "udp", `${h1.addrText}:40000`, p1, true);
      assert.equal(q.result, "ok");
      assert.equal((await d.status()).sessions, 1);
      // The ISP side routes the LAN prefix to the gateway's WAN address and forges h1.
      const rt = t.router!.ns;
      const route = await t.exec(rt, [
        "ip",
        "route",
        "add",
        "10.0.0.0/24",
        "via",
        t.gateway.wanText,
      ]);
      assert.equal(route.code, 0, route.stderr);
      const req = (op: number, pa: number) =>
        encodeRequest({
          op,
          nonce: newNonce(),
          proto: 17,
          replaceable: true,
          internalAddr: h1.addr,
          internalPort: pa,
          remoteAddr: p(t, 0).addr,
          remotePort: 7000,
          lifetime: 86400,
        });
      const forged = [
        req(Op.RELEASE, 40000),
        ...Array.from({ length: 10 }, (_, i) => req(Op.RESERVE, 41000 + i)),
      ].map((payload) =>
        buildUdp({ src: h1.addr, sport: 4750, dst: t.gateway.lanAddr, dport: 4750, payload })
      ).map((b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(""));
      const sent = await t.exec(rt, rawSender(forged));
      assert.equal(sent.code, 0, sent.stderr);
      assert.match(sent.stdout, /sent 11/);
      await new Promise((ok) => setTimeout(ok, 500));
      const st = await d.status();
      assert.equal(st.sessions, 1, "no session was created in h1's name");
      assert.equal(
        String(st.shown[0]!.internal),
        `${h1.addrText}:40000`,
        "h1's own session was not released",
      );
      // The same requests from the LAN side are still served.
      const again = await d.query("h1", "udp", `${h1.addrText}:40001`, p1, true);
      assert.equal(again.result, "ok");
    }),
});
