/**
 * The queue path's steering of mapped endpoints and direct sessions
 * (`src/datapath/queue/server.ts`): the per-endpoint reference count that
 * decides when a set element is added and deleted, the element layout, the
 * nftables table's text and the iptables rules that act on its marks.
 */

import assert from "node:assert/strict";
import {
  DIRECT_MARK,
  peerKey,
  QUEUE_TABLE,
  serverChains,
  STEER_MARK,
  Steering,
  steerKey,
  steerTable,
} from "../../src/datapath/queue/server.ts";
import type { GatewaySession } from "../../src/datapath/datapath.ts";
import { gatewayOptions } from "../../src/datapath/open.ts";
import { hex } from "../../linux/nftables.ts";
import { H1, H2, P1, R1, serverCfg } from "../../testing/fixtures.ts";

const mapping = (a: number, pa: number, p = pa): GatewaySession => ({
  proto: 17,
  a,
  pa,
  x: 0,
  px: 0,
  r: R1,
  p,
  pg: 0,
});
const session = (a: number, pa: number, px: number, direct?: boolean) => ({
  proto: 17,
  a,
  pa,
  x: P1,
  px,
  r: R1,
  p: pa,
  pg: 61000 + px,
  ...(direct ? { direct } : {}),
});

function fakeSet() {
  const ops: string[] = [];
  return {
    ops,
    set: {
      add: (set: string, keys: Uint8Array[]) =>
        void ops.push(...keys.map((k) => `+${set}:${hex(k)}`)),
      delete: (set: string, keys: Uint8Array[]) =>
        void ops.push(...keys.map((k) => `-${set}:${hex(k)}`)),
    },
  };
}

Deno.test("queue map steer: a mapping holds one endpoint element, a direct session its own 5-tuple; each added with its first holder and deleted with its last", () => {
  const { ops, set } = fakeSet();
  const st = new Steering(set);
  const k = `direct:${hex(steerKey(17, H1, 5000))}`;
  const peer = (px: number) => `peers:${hex(peerKey(17, H1, 5000, P1, px))}`;
  st.up(session(H1, 5000, 7000)); // a driver session: not steered
  assert.deepEqual(ops, []);
  st.up(mapping(H1, 5000, 6000));
  st.up(mapping(H1, 5000, 6000)); // a second holder of the same endpoint
  assert.deepEqual(ops, [`+${k}`], "one add for the endpoint");
  st.up(session(H1, 5000, 7001, true));
  st.up(session(H1, 5000, 7001, true)); // the same 5-tuple again: counted, no second add
  st.up(session(H1, 5000, 7002, true));
  assert.deepEqual(ops, [`+${k}`, `+${peer(7001)}`, `+${peer(7002)}`], "one per 5-tuple");
  assert.ok(st.has(17, H1, 5000) && !st.has(6, H1, 5000) && !st.has(17, H2, 5000));
  assert.ok(st.hasPeer(17, H1, 5000, P1, 7001) && st.hasPeer(17, H1, 5000, P1, 7002));
  assert.ok(!st.hasPeer(17, H1, 5000, P1, 7000) && !st.hasPeer(17, H1, 5000, P1 + 1, 7001));
  assert.equal(st.size, 3);
  st.down(mapping(H1, 5000, 6000));
  st.down(session(H1, 5000, 7001, true));
  assert.equal(ops.length, 3, "both still held once");
  st.down(mapping(H1, 5000, 6000));
  assert.equal(ops.at(-1), `-${k}`, "the last mapping unsteers the endpoint");
  assert.ok(st.hasPeer(17, H1, 5000, P1, 7001), "while its direct sessions stay steered");
  st.down(session(H1, 5000, 7000)); // never counted
  assert.equal(ops.length, 4);
  st.down(session(H1, 5000, 7001, true));
  st.down(session(H1, 5000, 7002, true));
  assert.deepEqual(ops.slice(4), [`-${peer(7001)}`, `-${peer(7002)}`]);
  assert.equal(st.size, 0);
  st.down(mapping(H1, 5000)); // unknown: nothing
  st.down(session(H1, 5000, 7003, true));
  assert.equal(ops.length, 6);
  st.up(mapping(H2, 22));
  assert.equal(ops.at(-1), `+direct:${hex(steerKey(17, H2, 22))}`);
});

Deno.test("queue map steer: a kernel refusal is counted, never thrown into the table", () => {
  const st = new Steering({
    add: () => {
      throw new Error("ENOENT");
    },
    delete: () => {
      throw new Error("ENOENT");
    },
  });
  st.up(mapping(H1, 5000));
  st.down(mapping(H1, 5000));
  assert.equal(st.failures, 2);
});

Deno.test("queue map steer: the set keys are nft's register layout of proto . a . pa and proto . a . pa . X . px", () => {
  // udp . 10.0.0.11 . 5000: 11 000000 | 0a00000b | 1388 0000
  assert.equal(hex(steerKey(17, H1, 5000)), "110000000a00000b13880000");
  // udp . 10.0.0.11 . 4000 . 198.51.100.10 . 7777: the kernel path's to_public key layout.
  assert.equal(
    hex(peerKey(17, H1, 4000, P1, 7777)),
    "110000000a00000b0fa00000c633640a1e610000",
  );
});

Deno.test("queue map steer: the table marks steered LAN packets bound onward and translated WAN packets to steered endpoints", () => {
  const sc = serverCfg({ lanIf: "lan0", wanIf: "wan0" });
  const cfg = gatewayOptions(sc, sc.lan!);
  const text = steerTable(cfg, cfg.lan!);
  assert.match(text, new RegExp(`^add table ip ${QUEUE_TABLE}\ndelete table ip ${QUEUE_TABLE}\n`));
  assert.match(text, /set direct \{\s+typeof meta l4proto \. ip saddr \. th sport\s+\}/);
  assert.match(
    text,
    /set peers \{\s+typeof meta l4proto \. ip saddr \. th sport \. ip daddr \. th dport\s+\}/,
  );
  // A direct session is steered by its 5-tuple only: the endpoint's packets to any other
  // remote match no rule and are masqueraded (the only 3-tuple match is the mappings' set).
  const onward = "ip daddr != 10\\.0\\.0\\.0/24 fib daddr type unicast";
  assert.match(
    text,
    new RegExp(
      `\\n\\s+iifname "lan0" meta l4proto \\. ip saddr \\. th sport \\. ip daddr \\. th dport @peers ${onward} meta mark set 0x${
        STEER_MARK.toString(16)
      }\\n`,
    ),
  );
  assert.match(
    text,
    new RegExp(
      `\\n\\s+iifname "wan0" oifname "lan0" ct state untracked meta l4proto \\. ip daddr \\. th dport \\. ip saddr \\. th sport @peers meta mark set 0x${
        DIRECT_MARK.toString(16)
      }\\n`,
    ),
  );
  assert.equal(text.match(/th sport @direct/g)?.length, 1);
  assert.equal(text.match(/th dport @direct/g)?.length, 1);
  assert.match(
    text,
    new RegExp(
      `type filter hook prerouting priority -350;.*\\n\\s+iifname "lan0" meta l4proto \\. ip saddr \\. th sport @direct ip daddr != 10\\.0\\.0\\.0/24 fib daddr type unicast meta mark set 0x${
        STEER_MARK.toString(16)
      }`,
    ),
  );
  assert.match(
    text,
    new RegExp(
      `type filter hook forward priority -10;.*\\n\\s+iifname "wan0" oifname "lan0" ct state untracked meta l4proto \\. ip daddr \\. th dport @direct meta mark set 0x${
        DIRECT_MARK.toString(16)
      }`,
    ),
  );
  assert.throws(() => steerTable({ ...cfg, lanIf: "lan0; flush ruleset" }, cfg.lan!), TypeError);
});

Deno.test("queue map steer: DPM-SRV-PRE queues marked LAN packets untracked, DPM-SRV-FWD accepts the marked WAN ones", () => {
  const sc = serverCfg({ lanIf: "lan0", wanIf: "wan0" });
  const cfg = gatewayOptions(sc, sc.lan!);
  const specs = serverChains(cfg, cfg.lan!);
  const pre = specs.find((s) => s.chain === "DPM-SRV-PRE")!.rules.map((r) => r.join(" "));
  const m = `-i lan0 -m mark --mark ${STEER_MARK}`;
  const nt = pre.indexOf(`${m} -j CT --notrack`);
  const q = pre.indexOf(`${m} -j NFQUEUE --queue-num ${cfg.queue}`);
  assert.ok(nt > 0 && q === nt + 1, pre.join("\n"));
  const fwd = specs.find((s) => s.chain === "DPM-SRV-FWD")!.rules.map((r) => r.join(" "));
  assert.ok(
    fwd.includes(`-i wan0 -o lan0 -m mark --mark ${DIRECT_MARK} -j ACCEPT`),
    fwd.join("\n"),
  );
});
