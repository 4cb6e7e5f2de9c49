/**
 * The queue path's steering of mapped endpoints and direct sessions
 * (`src/datapath/queue/server.ts`): the per-endpoint reference count that
 * decides when a set element is added and deleted, the element layout, the
 * nftables table's text and the iptables rules that act on its marks.
 */

import assert from "node:assert/strict";
import {
  DIRECT_MARK,
  QUEUE_TABLE,
  serverChains,
  STEER_MARK,
  Steering,
  steerKey,
  steerTable,
} from "../../src/datapath/queue/server.ts";
import type { GatewaySession } from "../../src/datapath/datapath.ts";
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
      add: (keys: Uint8Array[]) => void ops.push(...keys.map((k) => `+${hex(k)}`)),
      delete: (keys: Uint8Array[]) => void ops.push(...keys.map((k) => `-${hex(k)}`)),
    },
  };
}

Deno.test("queue map steer: one element per endpoint, added with its first mapping or direct session and deleted with its last", () => {
  const { ops, set } = fakeSet();
  const st = new Steering(set);
  const k = `${hex(steerKey(17, H1, 5000))}`;
  st.up(session(H1, 5000, 7000)); // a driver session: not steered
  assert.deepEqual(ops, []);
  st.up(mapping(H1, 5000, 6000));
  st.up(session(H1, 5000, 7001, true));
  st.up(session(H1, 5000, 7002, true));
  assert.deepEqual(ops, [`+${k}`], "one add for the endpoint");
  assert.ok(st.has(17, H1, 5000) && !st.has(6, H1, 5000) && !st.has(17, H2, 5000));
  st.down(session(H1, 5000, 7001, true));
  st.down(mapping(H1, 5000, 6000));
  assert.deepEqual(ops, [`+${k}`], "still steered while a direct session lives");
  st.down(session(H1, 5000, 7000)); // never counted
  assert.deepEqual(ops, [`+${k}`]);
  st.down(session(H1, 5000, 7002, true));
  assert.deepEqual(ops, [`+${k}`, `-${k}`]);
  assert.equal(st.size, 0);
  st.down(mapping(H1, 5000)); // unknown: nothing
  assert.equal(ops.length, 2);
  st.up(mapping(H2, 22));
  assert.equal(ops.at(-1), `+${hex(steerKey(17, H2, 22))}`);
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

Deno.test("queue map steer: the set key is nft's register layout of proto . a . pa", () => {
  // udp . 10.0.0.11 . 5000: 11 000000 | 0a00000b | 1388 0000
  assert.equal(hex(steerKey(17, H1, 5000)), "110000000a00000b13880000");
});

Deno.test("queue map steer: the table marks steered LAN packets bound onward and translated WAN packets to steered endpoints", () => {
  const cfg = serverCfg({ lanIf: "lan0", wanIf: "wan0" });
  const text = steerTable(cfg, cfg.lan!);
  assert.match(text, new RegExp(`^add table ip ${QUEUE_TABLE}\ndelete table ip ${QUEUE_TABLE}\n`));
  assert.match(text, /set direct \{\s+typeof meta l4proto \. ip saddr \. th sport\s+\}/);
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
  const cfg = serverCfg({ lanIf: "lan0", wanIf: "wan0" });
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
