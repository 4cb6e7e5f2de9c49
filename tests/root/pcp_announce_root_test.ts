/**
 * The unsolicited announcements of `dpm server` at start (src/pcp/announce.ts,
 * `listenPcp` in src/server/run.ts), as root: a listener on 0.0.0.0:5350 in a
 * LAN host hears, from 10.0.0.1:5351, the NAT-PMP address notification
 * (RFC 6886 section 3.2.1) and the PCP ANNOUNCE response (RFC 6887 section
 * 14.1.3), repeated at 250 ms, then doubling; a listener on the WAN side
 * (the router) hears nothing: the group goes out of the LAN interface only.
 */

import assert from "node:assert/strict";
import { startDpm } from "../../testing/launch.ts";
import { createTopology } from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";
import {
  heard,
  parseNatPmpResponse,
  parsePcpResponse,
  udpListenCommand,
} from "../../testing/pcp_client.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

Deno.test(needsRoot({
  name:
    "pcp announce root [kernel]: a LAN host hears the NAT-PMP and PCP announcements on 224.0.0.1:5350, the WAN side does not",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 2, peers: 1 });
    try {
      const lan = t.spawn(t.hosts[0]!.ns, udpListenCommand(5350));
      const wan = t.spawn(t.router!.ns, udpListenCommand(5350));
      await lan.waitForOutput(/listening/, 10_000);
      await wan.waitForOutput(/listening/, 10_000);
      const d = await startDpm(t, { datapath: "kernel", driverHosts: [] });
      try {
        // Rounds at 0, 250, 750, 1750, 3750 ms after the PCP socket is up.
        const deadline = Date.now() + 15_000;
        while (heard(lan.stdout()).length < 10 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
        }
        const got = heard(lan.stdout());
        assert.ok(got.length >= 10, `5 rounds of 2 datagrams heard: ${lan.output()}`);
        for (const g of got) assert.equal(g.from, `${t.gateway.lanText}:5351`);
        const nat = got.filter((g) => g.bytes[0] === 0);
        const pcp = got.filter((g) => g.bytes[0] === 2);
        assert.equal(nat.length + pcp.length, got.length, "nothing else");
        assert.ok(nat.length >= 5 && pcp.length >= 5, `${nat.length} NAT-PMP, ${pcp.length} PCP`);
        for (const n of nat) {
          const r = parseNatPmpResponse(n.bytes);
          assert.deepEqual(r.problems, []);
          assert.equal(n.bytes.length, 12);
          assert.equal(n.bytes[1], 128, "op 128: the external address response");
          assert.equal(r.result, 0);
          assert.equal(r.externalAddr, "203.0.113.10", "the first pool address");
          assert.ok(r.epoch < 10, `epoch ${r.epoch}: seconds since the start`);
        }
        for (const p of pcp) {
          const r = parsePcpResponse(p.bytes);
          assert.deepEqual(r.problems, []);
          assert.equal(p.bytes.length, 24);
          assert.deepEqual([r.opcode, r.result, r.lifetime], [0, 0, 0]);
        }
        // The intervals: 250, 500, 1000, 2000 ms (timing slack for a loaded machine).
        const gaps = nat.slice(1, 5).map((n, i) => n.t - nat[i]!.t);
        const want = [250, 500, 1000, 2000];
        for (let i = 0; i < gaps.length; i++) {
          assert.ok(
            Math.abs(gaps[i]! - want[i]!) < 200,
            `interval ${i + 1}: ${gaps[i]} ms, want ${want[i]} (${gaps.join(", ")})`,
          );
        }
        const epochs = nat.map((n) => parseNatPmpResponse(n.bytes).epoch);
        assert.ok(epochs.every((e, i) => i === 0 || e >= epochs[i - 1]!), `epochs ${epochs}`);
        assert.ok(epochs.at(-1)! >= 3, `the epoch counts: ${epochs}`);
        assert.equal(heard(wan.stdout()).length, 0, `the WAN side heard: ${wan.output()}`);
      } catch (e) {
        console.error(`--- server output:\n${d.server.output()}`);
        throw e;
      } finally {
        await d.stop();
        await lan.stop();
        await wan.stop();
      }
      // Stopping the server stops the schedule: the listener hears no more.
    } finally {
      await t.destroy();
    }
  },
}));
