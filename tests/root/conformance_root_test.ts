/**
 * Conformance to the behavioural NAT RFCs, probed end to end from the hosts
 * the way an RFC 5780 client would (real sockets in real namespaces,
 * testing/topology.ts): the mapping behaviour toward two remote addresses
 * and two ports, the filtering behaviour, paired pooling, the port hold,
 * hairpinning between two hosts, and the lifetimes with a short
 * configuration. Every test runs on both data paths. docs/conformance.md
 * maps the requirements to these tests.
 *
 *   h1 10.0.0.11 ─┐                                                  ┌─ p1 198.51.100.10
 *   h2 10.0.0.12 ─┼─ gw lan0 10.0.0.1 | wan0 203.0.113.1 ── rt ──────┼─ p2 198.51.100.20
 *   h3 10.0.0.13 ─┘  (dpm server; pool 203.0.113.10-13)              └─ p3 198.51.100.30
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import {
  type Dpm,
  lastJson,
  serveApp,
  type StartOptions,
  withDpm as withDpmOn,
} from "../../testing/launch.ts";
import {
  httpSeen,
  tcpClient,
  tcpEcho,
  udpClient,
  udpCollect,
  udpEcho,
  udpMultiReply,
  udpProbe,
  udpSendOnce,
} from "../../testing/apps.ts";
import { waitFor } from "../../testing/wait.ts";
import { type DataPathName, perDataPath } from "../../testing/root.ts";

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

/** The public pair a "seen <ip>:<port>|..." answer reports. */
const seenOf = (data: string) => data.split("|")[0]!.replace("seen ", "");

const h = (t: Topology, i: number) => t.hosts[i]!;
const p = (t: Topology, i: number) => t.peers[i]!;

test({
  name:
    "conformance root: RFC 4787 REQ-1 mapping: one socket toward two addresses and two ports of each is seen from one public pair",
  ...SAN,
  fn: () =>
    withDpm({}, async (t) => {
      for (const i of [0, 1]) {
        for (const port of [7000, 7001]) await serveApp(t, p(t, i).ns, udpEcho(port));
      }
      const dests = [0, 1].flatMap((i) =>
        [7000, 7001].map((port) => `${p(t, i).addrText}:${port}`)
      );
      // Ephemeral (replaceable) and fixed ports alike.
      for (const bind of [40000, 5060]) {
        const out = await lastJson(t, h(t, 0).ns, udpClient(bind, dests, { rounds: 2 }));
        assert.deepEqual(out.errors, []);
        assert.equal(out.replies.length, 8);
        const seen = new Set(out.replies.map((r: { data: string }) => seenOf(r.data)));
        assert.equal(seen.size, 1, `one public pair toward every remote: ${[...seen]}`);
        assert.match([...seen][0] as string, new RegExp(`^203\\.0\\.113\\.1[0-3]:${bind}$`));
      }
    }),
});

test({
  name:
    "conformance root: RFC 4787 section 5 filtering: a reply from another port or another address of the outside is not delivered",
  ...SAN,
  fn: () =>
    withDpm({}, async (t) => {
      const peer = await serveApp(t, p(t, 0).ns, udpMultiReply(7000, 7001));
      const dest = `${p(t, 0).addrText}:7000`;
      const host = t.spawn(h(t, 0).ns, udpCollect(40000, dest, 4000));
      await host.waitForOutput(/sent/, 10_000);
      const m = await peer.waitForOutput(/\{"seen": "([0-9.]+:\d+)"\}/, 10_000);
      const pub = m[1]!;
      // Another outside address sends to the host's public pair, from the peer's own port too.
      for (const port of [7000, 7002]) {
        const r = await lastJson(t, p(t, 1).ns, udpSendOnce(port, pub, "stranger"));
        assert.equal(r.sent, true);
      }
      await host.status;
      const got = JSON.parse(host.stdout().trim().split("\n").pop()!).got as {
        from: string;
        data: string;
      }[];
      assert.deepEqual(got.map((g) => g.from), [dest], "only the peer's own address and port");
      assert.equal(seenOf(got[0]!.data), pub);
    }),
});

test({
  name:
    "conformance root: RFC 6888 REQ-2 paired pooling: a host's UDP, TCP and ICMP sessions all use one public address, even where port preservation would move them",
  ...SAN,
  fn: () =>
    // In a 2-address pool h2 and h3 have the same home address (203.0.113.10).
    withDpm(
      { pool: "203.0.113.10-203.0.113.11", driverHosts: ["h1", "h2", "h3"] },
      async (t, d) => {
        await serveApp(t, p(t, 0).ns, udpEcho(5060));
        await serveApp(t, p(t, 1).ns, udpEcho(5060));
        await serveApp(t, p(t, 1).ns, httpSeen(8080));
        // h3 holds 203.0.113.10:5060 toward p1.
        const h3 = await lastJson(t, h(t, 2).ns, udpClient(5060, [`${p(t, 0).addrText}:5060`]));
        const home = seenOf(h3.replies[0].data);
        assert.equal(home, "203.0.113.10:5060");
        // h2's first session pairs it with its home address.
        const first = await lastJson(t, h(t, 1).ns, udpClient(40000, [`${p(t, 1).addrText}:5060`]));
        assert.equal(seenOf(first.replies[0].data), "203.0.113.10:40000");
        // Port 5060 is taken there: preservation alone would use 203.0.113.11:5060;
        // pairing shares 203.0.113.10:5060 (told apart by the remote, claims 8-10).
        const fixed = await lastJson(t, h(t, 1).ns, udpClient(5060, [`${p(t, 1).addrText}:5060`]));
        assert.deepEqual(fixed.errors, []);
        assert.equal(seenOf(fixed.replies[0].data), "203.0.113.10:5060");
        const q = await d.query(
          "h2",
          "udp",
          `${h(t, 1).addrText}:5060`,
          `${p(t, 1).addrText}:5060`,
        );
        assert.equal(q.shared, true);
        // TCP and ICMP of the same host: the same address.
        const curl = await t.exec(h(t, 1).ns, [
          "curl",
          "-sS",
          "--max-time",
          "10",
          `http://${p(t, 1).addrText}:8080/`,
        ], { timeoutMs: 15_000 });
        assert.equal(curl.code, 0, curl.stderr);
        assert.match(curl.stdout, /^seen 203\.0\.113\.10:\d+$/);
        const ping = await t.exec(h(t, 1).ns, [
          "ping",
          "-n",
          "-c",
          "1",
          "-W",
          "2",
          p(t, 1).addrText,
        ]);
        assert.equal(ping.code, 0, ping.stdout);
        const st = await d.status();
        const mine = st.shown.filter((s) => String(s.internal).startsWith(`${h(t, 1).addrText}:`));
        assert.ok(mine.some((s) => s.proto === "icmp"));
        assert.ok(mine.some((s) => s.proto === "tcp"));
        for (const s of mine) assert.match(String(s.public), /^203\.0\.113\.10:/, `${s.proto}`);
      },
    ),
});

test({
  name:
    "conformance root: RFC 6888 REQ-8 a public port freed by an idle session is held from other hosts, and its own host gets it back",
  ...SAN,
  fn: () =>
    withDpm({ pool: "203.0.113.10", serverArgs: ["--lifetime", "4"] }, async (t, d) => {
      await serveApp(t, p(t, 0).ns, udpEcho(7000));
      const dest = `${p(t, 0).addrText}:7000`;
      const a = await lastJson(t, h(t, 0).ns, udpClient(40000, [dest]));
      assert.equal(seenOf(a.replies[0].data), "203.0.113.10:40000");
      // The idle session leaves the table (lease 4 s).
      await waitFor(async () => (await d.status()).sessions === 0, {
        what: "h1's idle session to leave the table",
        timeoutMs: 20_000,
        intervalMs: 250,
      });
      // Within 120 s another host asking for the same port gets another one.
      const b = await lastJson(t, h(t, 1).ns, udpClient(40000, [dest]));
      assert.deepEqual(b.errors, []);
      const seenB = seenOf(b.replies[0].data);
      assert.match(seenB, /^203\.0\.113\.10:\d+$/);
      assert.notEqual(seenB, "203.0.113.10:40000", "the freed port is held for h1");
      // h1 itself gets its port back at once.
      const again = await lastJson(t, h(t, 0).ns, udpClient(40000, [dest]));
      assert.equal(seenOf(again.replies[0].data), "203.0.113.10:40000");
    }),
});

/**
 * Makes h1 (local port `pa1`) and h2 (local port `pa2`) each hold a session
 * toward the other's public pair (as ICE would), and returns the pairs.
 */
async function hairpinPairs(
  t: Topology,
  d: Dpm,
  proto: "udp" | "tcp",
  pa1: number,
  pa2: number,
): Promise<{ a: string; b: string }> {
  const p1 = `${p(t, 0).addrText}:7000`;
  const a0 = await d.query("h1", proto, `${h(t, 0).addrText}:${pa1}`, p1, true);
  const b0 = await d.query("h2", proto, `${h(t, 1).addrText}:${pa2}`, p1, true);
  assert.equal(a0.result, "ok");
  assert.equal(b0.result, "ok");
  const a = String(a0.public);
  const b = String(b0.public);
  const toB = await d.query("h1", proto, `${h(t, 0).addrText}:${pa1}`, b, true);
  const toA = await d.query("h2", proto, `${h(t, 1).addrText}:${pa2}`, a, true);
  assert.equal(toB.public, a, "endpoint-independent: the same pair toward the other host");
  assert.equal(toA.public, b);
  return { a, b };
}

test({
  name:
    "conformance root: RFC 4787 REQ-9, RFC 5382 REQ-8 hairpinning UDP and TCP between two hosts, each seeing the other's public pair",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      // UDP.
      const u = await hairpinPairs(t, d, "udp", 40000, 41000);
      await serveApp(t, h(t, 1).ns, udpEcho(41000));
      const out = await lastJson(t, h(t, 0).ns, udpClient(40000, [u.b], { rounds: 2 }));
      assert.deepEqual(out.errors, []);
      assert.equal(out.replies[0].from, u.b, "the reply comes from h2's public pair");
      assert.equal(seenOf(out.replies[0].data), u.a, "h2 saw h1's public pair (REQ-9a)");
      // TCP.
      const c = await hairpinPairs(t, d, "tcp", 45000, 46000);
      await serveApp(t, h(t, 1).ns, tcpEcho(46000));
      const r = await lastJson(t, h(t, 0).ns, tcpClient(45000, c.b, "hello"));
      assert.equal(r.error, undefined, r.error);
      assert.equal(r.reply, `seen ${c.a}|hello`, "h2 saw h1's public pair (REQ-8a)");
      const st = await d.status() as unknown as { packets: { hairpin: number } };
      assert.ok(st.packets.hairpin >= 6, `hairpinned packets: ${st.packets.hairpin}`);
    }),
});

// The server translates an ICMP error about a hairpinned session a second
// time, into the sender's session (src/server/translate.ts `Translator.#fromLan`).
test({
  name:
    "conformance root: RFC 5508 REQ-7 a hairpinned ICMP error (port unreachable from the other host) reaches the sender translated",
  ...SAN,
  fn: () =>
    withDpm({}, async (t, d) => {
      const u = await hairpinPairs(t, d, "udp", 40000, 41000);
      // Nothing listens on h2:41000: h2's kernel answers port unreachable.
      const probe = await lastJson(t, h(t, 0).ns, udpProbe(40000, u.b));
      assert.equal(probe.result, "refused");
    }),
});
