/**
 * Reading the session map back (src/datapath/bpf/counters.ts): the
 * gateway's per-session counters, the host's lease activity and the idle
 * learned flows of mappings, from records as a dump returns them. No root.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  gatewayCounters,
  hostActivity,
  idleLearned,
  keyId,
} from "../../src/datapath/bpf/counters.ts";
import {
  gatewayRecords,
  hostRecords,
  NatDir,
  NatFlag,
  type NatRecord,
} from "../../src/datapath/bpf/layout.ts";
import { gatewayKey, type GatewaySession, hostKey } from "../../src/datapath/datapath.ts";
import { G, H1, H2, P1, P2, R1 } from "../../testing/fixtures.ts";

const S: GatewaySession = {
  proto: 17,
  a: H1,
  pa: 40000,
  x: P1,
  px: 5060,
  r: R1,
  p: 40001,
  pg: 61001,
};

/** `recs` with counters: [packets, bytes, flags, lastNs] per record, in order. */
function counted(recs: NatRecord[], ...c: [number, number, number?, bigint?][]): NatRecord[] {
  return recs.map((r, i) => ({
    key: r.key,
    entry: {
      ...r.entry,
      packets: c[i]![0],
      bytes: c[i]![1],
      flags: r.entry.flags | (c[i]![2] ?? 0),
      lastNs: c[i]![3] ?? 1n,
    },
  }));
}

Deno.test("bpf counters: a driver's and a direct session's two directions, one missing counted 0; sessions with no entries left out", () => {
  const direct: GatewaySession = { ...S, a: H2, pa: 5000, p: 5000, pg: 61005, direct: true };
  const records = [
    ...counted(gatewayRecords(S, G), [10, 1000], [7, 900]),
    ...counted(gatewayRecords(direct, G), [3, 300], [2, 200]),
  ];
  const icmp: GatewaySession = { ...S, proto: 1, pg: 61009 };
  const unwritten: GatewaySession = { ...S, pa: 1, p: 40009, pg: 61010 };
  // Only what counted something is passed (BpfServerPath.counters): no reply yet.
  const oneWay: GatewaySession = { ...S, pa: 2, p: 40010, pg: 61011 };
  records.push(...counted(gatewayRecords(oneWay, G), [4, 400], [0, 0]).slice(0, 1));
  const c = gatewayCounters(records, [S, direct, icmp, unwritten, oneWay], G);
  assert.deepEqual(c.get(gatewayKey(17, H1, 61001)), {
    packetsOut: 10,
    bytesOut: 1000,
    packetsIn: 7,
    bytesIn: 900,
  });
  assert.deepEqual(c.get(gatewayKey(17, H2, 61005)), {
    packetsOut: 3,
    bytesOut: 300,
    packetsIn: 2,
    bytesIn: 200,
  });
  assert.deepEqual(c.get(gatewayKey(17, H1, 61011)), {
    packetsOut: 4,
    bytesOut: 400,
    packetsIn: 0,
    bytesIn: 0,
  });
  assert.equal(c.size, 3);
});

Deno.test("bpf counters: a mapping counts the flows learned from it, not other mappings' or sessions'", () => {
  const m: GatewaySession = { proto: 17, a: H1, pa: 7000, x: 0, px: 0, r: R1, p: 7000, pg: 0 };
  const other: GatewaySession = { ...m, pa: 7001, p: 7001 };
  const flow = (
    mp: GatewaySession,
    x: number,
    px: number,
    out: number,
    inn: number,
  ): NatRecord[] => [
    {
      key: { proto: 17, dir: NatDir.OUT, saddr: mp.a, sport: mp.pa, daddr: x, dport: px },
      entry: {
        to: { saddr: mp.r, sport: mp.p, daddr: x, dport: px },
        flags: NatFlag.LEARNED,
        packets: out,
        bytes: out * 100,
        lastNs: 1n,
      },
    },
    {
      key: { proto: 17, dir: NatDir.IN, saddr: x, sport: px, daddr: mp.r, dport: mp.p },
      entry: {
        to: { saddr: x, sport: px, daddr: mp.a, dport: mp.pa },
        flags: NatFlag.LEARNED,
        packets: inn,
        bytes: inn * 100,
        lastNs: 1n,
      },
    },
  ];
  const records = [
    ...gatewayRecords(m, G),
    ...gatewayRecords(other, G),
    ...flow(m, P1, 9, 4, 5),
    ...flow(m, P2, 9, 1, 2),
    ...flow(other, P1, 9, 100, 100),
    ...counted(gatewayRecords(S, G), [50, 50], [50, 50]),
  ];
  const c = gatewayCounters(records, [m], G);
  assert.deepEqual(c.get(gatewayKey(17, H1, 0)), {
    packetsOut: 5,
    bytesOut: 500,
    packetsIn: 7,
    bytesIn: 700,
  });
  assert.equal(c.size, 1);
  // No flow learned yet: no counters.
  assert.equal(gatewayCounters(gatewayRecords(m, G), [m], G).size, 0);
});

Deno.test("bpf counters: the host's activity sums both directions; TCP is closed after a FIN each way or an RST", () => {
  const k = { proto: 6, a: H1, pa: 41000, x: P1, px: 443, g: G, pg: 61003 };
  const u = { ...k, proto: 17, pa: 41001, pg: 61004 };
  const key = hostKey(6, H1, 61003);
  const act = (flagsOut: number, flagsIn: number) =>
    hostActivity(counted(hostRecords(k), [5, 500, flagsOut], [4, 400, flagsIn]), G).get(key)!;
  assert.deepEqual(act(0, 0), { packets: 9, bytes: 900, closed: false });
  assert.equal(act(NatFlag.FIN, 0).closed, false, "half closed");
  assert.equal(act(NatFlag.FIN, NatFlag.FIN).closed, true);
  assert.equal(act(0, NatFlag.RST).closed, true);
  // UDP is never "closed"; gateway records are not host sessions.
  const a = hostActivity([
    ...counted(hostRecords(u), [1, 10, NatFlag.FIN], [1, 10, NatFlag.FIN]),
    ...gatewayRecords(S, G),
  ], G);
  assert.deepEqual([...a.keys()], [hostKey(17, H1, 61004)]);
  assert.equal(a.get(hostKey(17, H1, 61004))!.closed, false);
});

Deno.test("bpf counters: learned flows idle both ways are found; a flow busy either way, and sessions, are not", () => {
  const learned = (x: number, outNs: bigint, inNs: bigint): NatRecord[] => [
    {
      key: { proto: 17, dir: NatDir.OUT, saddr: H1, sport: 7000, daddr: x, dport: 9 },
      entry: {
        to: { saddr: R1, sport: 7000, daddr: x, dport: 9 },
        flags: NatFlag.LEARNED | NatFlag.FAST,
        packets: 1,
        bytes: 1,
        lastNs: outNs,
      },
    },
    {
      key: { proto: 17, dir: NatDir.IN, saddr: x, sport: 9, daddr: R1, dport: 7000 },
      entry: {
        to: { saddr: x, sport: 9, daddr: H1, dport: 7000 },
        flags: NatFlag.LEARNED | NatFlag.FAST,
        packets: 1,
        bytes: 1,
        lastNs: inNs,
      },
    },
  ];
  const sec = 1_000_000_000n;
  const now = 1000n * sec;
  const records = [
    ...learned(P1, 100n * sec, 200n * sec), // idle both ways
    ...learned(P2, 100n * sec, 990n * sec), // answered recently
    ...counted(gatewayRecords(S, G), [1, 1, 0, 1n], [1, 1, 0, 1n]), // a session: dpm's own lease decides
  ];
  const idle = idleLearned(records, now, 120n * sec).map(keyId).sort();
  assert.deepEqual(idle, records.slice(0, 2).map((r) => keyId(r.key)).sort());
});
