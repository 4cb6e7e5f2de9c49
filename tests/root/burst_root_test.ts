/**
 * Bursts of new sessions, as root, in the e2e topology (testing/topology.ts):
 * h1 runs `dpm driver` with dpm's defaults, p1 a UDP echo and a TCP server
 * that answer with the source they saw.
 *
 * - 3,000 new UDP sessions at once from one host, each socket sending ONE
 *   datagram and never again (`resendMs: 0`): every socket gets its answer
 *   (so every first datagram reached the peer: none was dropped at the
 *   host's queue, the gateway's hold or anywhere else), and every answer
 *   shows the public pair the driver reports for that socket (none went out
 *   untranslated, none through another pair).
 * - 1,000 TCP connects at once: every connection is established, the peer
 *   saw the driver's public pair for each, and the host's kernel
 *   retransmitted no SYN (no first packet was lost or held past the
 *   kernel's 1 s retransmission).
 *
 * The tests print the figures they saw (per-session first round trip p50 /
 * p99, the gateway's held-packet counters) but assert no timing: the machine
 * is shared.
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import { type Dpm, serveApp, withDpm } from "../../testing/launch.ts";
import { tcpSeen, udpEcho } from "../../testing/apps.ts";
import { perDataPath } from "../../testing/root.ts";
import { burstSessions, driverPairs, judgeBurst, tcpBurstSessions } from "../../bench/measure.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/**
 * One session first, so that the driver holds the server's cookie (what a
 * driver that has run for a while has): the bursts test the steady state.
 */
async function warmUp(t: Topology, ns: string, dest: string): Promise<void> {
  const w = await burstSessions(t, ns, dest, 1, 30_000);
  assert.equal(w.sessions[0]?.seen.length ? 1 : 0, 1, "the warm-up session got no answer");
}

/** The gateway's held-packet counters (`dpm status --json`: `held`), for the log. */
async function heldCounters(d: Dpm): Promise<unknown> {
  const st = await d.status();
  return st.held ?? null;
}

for (
  const def of perDataPath({
    name:
      "burst root: 3,000 new UDP sessions at once from one host, one datagram each: every first datagram answered, every answer from the driver's public pair",
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
        const dest = `${t.peers[0]!.addrText}:7000`;
        const h1 = t.hosts[0]!;
        await warmUp(t, h1.ns, dest);
        const N = 3000;
        // One datagram per socket, never resent: an answer proves the first one arrived.
        const run = await burstSessions(t, h1.ns, dest, N, 30_000, 0);
        assert.equal(run.sessions.length, N);
        const { stats, pub } = await driverPairs(t, h1, d.driverSocket("h1"), dest);
        const b = judgeBurst(run, (port) => pub.get(port));
        console.log(
          `${datapath}: first round trip p50 ${b.first.p50Us} µs, p99 ${b.first.p99Us} µs, ` +
            `max ${b.first.maxUs} µs, all in ${b.allUs} µs; held at the gateway ` +
            `${JSON.stringify(await heldCounters(d))}; driver ${JSON.stringify(stats)}`,
        );
        assert.equal(run.sessions.filter((s) => s.sends !== 1).length, 0, "a socket sent twice");
        assert.equal(b.unanswered, 0, `${b.unanswered} of ${N} first datagrams never answered`);
        assert.equal(b.untranslated, 0, `untranslated: ${b.examples.join("; ")}`);
        const missing = run.sessions.filter((s) => !pub.has(s.port)).length;
        assert.equal(missing, 0, "the driver reports every session reserved");
      }),
  })
) Deno.test(def);

for (
  const def of perDataPath({
    name:
      "burst root: 1,000 TCP connects at once from one host: all established from the driver's public pair, no SYN retransmitted",
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
        await serveApp(t, t.peers[0]!.ns, tcpSeen(7001));
        const h1 = t.hosts[0]!;
        await warmUp(t, h1.ns, `${t.peers[0]!.addrText}:7000`);
        const dest = `${t.peers[0]!.addrText}:7001`;
        const N = 1000;
        const run = await tcpBurstSessions(t, h1.ns, dest, N, 30_000);
        const { stats, pub } = await driverPairs(t, h1, d.driverSocket("h1"), dest, "tcp");
        const b = judgeBurst(run, (port) => pub.get(port));
        console.log(
          `${datapath}: connect p50 ${b.first.p50Us} µs, p99 ${b.first.p99Us} µs, max ${b.first.maxUs} µs; ` +
            `SYNs retransmitted ${run.synRetrans}; held at the gateway ` +
            `${JSON.stringify(await heldCounters(d))}; driver ${JSON.stringify(stats)}`,
        );
        assert.equal(b.unanswered, 0, `${b.unanswered} of ${N} connects never established`);
        assert.equal(b.untranslated, 0, `untranslated: ${b.examples.join("; ")}`);
        assert.equal(run.synRetrans, 0, "the host's kernel retransmitted SYNs");
      }),
  })
) Deno.test(def);
