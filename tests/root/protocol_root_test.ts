/**
 * Protocol versions, as root, in the e2e topology (testing/topology.ts): the
 * server speaks versions 2 and 3 (docs/protocol.md). h1's driver speaks only
 * version 2, as drivers before version 3 did (`--protocol 2`: one request per
 * datagram, no proposed gateway port, every first packet waits for its
 * answer); h2's driver speaks version 3. Both are served.
 *
 * What shows it: both hosts' sessions to p1's UDP echo are answered from the
 * public pair their driver reports; the server counted version-2 datagrams
 * (h1's) and version-3 ones (h2's); h1's driver proposed nothing and sent
 * one datagram per request, h2's proposed its gateway ports, which lie in
 * the drivers' share (`control/pg.ts`).
 */

import assert from "node:assert/strict";
import { serveApp, withDpm } from "../../testing/launch.ts";
import { udpEcho } from "../../testing/apps.ts";
import { perDataPath } from "../../testing/root.ts";
import { burstSessions, driverPairs, judgeBurst } from "../../bench/measure.ts";
import { driverShareStart } from "../../src/control/pg.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

for (
  const def of perDataPath({
    name:
      "protocol root: a version-2 driver (--protocol 2) is served beside a version-3 one: both hosts' sessions reserved and translated, each in its version",
    ...SAN,
    fn: (datapath) =>
      withDpm({
        datapath,
        driverHosts: ["h1", "h2"],
        driverArgsFor: { h1: ["--protocol", "2"] },
      }, async (t, d) => {
        await serveApp(t, t.peers[0]!.ns, udpEcho(7000));
        const dest = `${t.peers[0]!.addrText}:7000`;
        const N = 50;
        const seen: Record<string, { stats: Record<string, unknown> }> = {};
        for (const h of [t.hosts[0]!, t.hosts[1]!]) {
          const run = await burstSessions(t, h.ns, dest, N, 30_000);
          const { stats, pub } = await driverPairs(t, h, d.driverSocket(h.name), dest);
          const b = judgeBurst(run, (port) => pub.get(port));
          assert.equal(b.unanswered, 0, `${h.name}: ${b.unanswered} of ${N} never answered`);
          assert.equal(b.untranslated, 0, `${h.name}: untranslated: ${b.examples.join("; ")}`);
          seen[h.name] = { stats };
        }
        const control = (h: string) => seen[h]!.stats.control as Record<string, number>;
        // h1 spoke version 2: no proposal, one datagram per transmission.
        assert.equal(seen.h1!.stats.proposed, 0);
        assert.equal(control("h1").datagrams, control("h1").sent);
        // h2 spoke version 3: it proposed, and batched at least once or sent one per datagram.
        assert.equal(seen.h2!.stats.proposed, N);
        const st = await d.status();
        const dg = st.datagrams as Record<string, number>;
        console.log(`server datagrams ${JSON.stringify(dg)}; h1 ${JSON.stringify(control("h1"))}`);
        assert.ok(dg.v2! >= N, `the server saw ${dg.v2} version-2 datagrams`);
        assert.ok(dg.v3! >= 1, `the server saw ${dg.v3} version-3 datagrams`);
        // h2's gateway ports are its proposals, from the drivers' share.
        const share = driverShareStart([61000, 65535]);
        const rows = st.shown as { internal: string; gatewayPort: number }[];
        const pgOf = (h: string) =>
          rows.filter((r) => r.internal.startsWith(`${h}:`)).map((r) => r.gatewayPort);
        const h1Pg = pgOf(t.hosts[0]!.addrText);
        const h2Pg = pgOf(t.hosts[1]!.addrText);
        assert.equal(h1Pg.length, N);
        assert.equal(h2Pg.length, N);
        assert.deepEqual(h2Pg.filter((p) => p < share), [], "h2's Pg from the drivers' share");
      }),
  })
) Deno.test(def);
