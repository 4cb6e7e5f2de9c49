/**
 * The HA rig's pure parts: template rendering (testing/ha_daemons.ts), the
 * pcap reader (testing/pcap.ts), the busy host's helpers
 * (testing/ha_traffic.ts) and the failover figures (testing/ha_analysis.ts),
 * on real bytes and synthetic packets.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  CONNTRACKD_TEMPLATE,
  KEEPALIVED_ANCHOR_TEMPLATE,
  KEEPALIVED_TEMPLATE,
  renderTemplate,
} from "../../testing/ha_daemons.ts";
import { decodeArp, decodeFrame, readPcap, TCP_ACK, TCP_RST, TCP_SYN } from "../../testing/pcap.ts";
import { longestGap, seenPair } from "../../testing/ha_traffic.ts";
import {
  analyzeWan,
  flowOf,
  type HaEvent,
  summarizeHosts,
  type WanPacket,
  wanPackets,
} from "../../testing/ha_analysis.ts";
import type { TrafficReport } from "../../testing/ha_traffic.ts";
import { parseConntrack } from "../../bench/ha/standby_mirror.ts";

Deno.test("ha rig: renderTemplate fills placeholders, indents multi-line values, refuses gaps and typos", () => {
  const t = "a @X@ b\n\t@LIST@\nend @Y@";
  assert.equal(
    renderTemplate(t, { X: "1", LIST: "p\nq", Y: "2" }),
    "a 1 b\n\tp\n\tq\nend 2",
  );
  assert.equal(renderTemplate("x\n  @E@\ny", { E: "" }), "x\ny");
  assert.throws(() => renderTemplate(t, { X: "1", LIST: "" }), {
    name: "RangeError",
    message: 'Template placeholder "@Y@" has no value',
  });
  assert.throws(() => renderTemplate("@X@", { X: "1", Z: "2" }), {
    message: 'Template value "Z" has no placeholder',
  });
  assert.throws(() => renderTemplate("a @X@ b", { X: "1\n2" }), {
    message: 'Template placeholder "@X@" takes one line, got several',
  });
});

Deno.test("ha rig: the shipped templates name exactly the placeholders the rig fills", () => {
  const names = (path: string) =>
    [...Deno.readTextFileSync(path).matchAll(/@([A-Z][A-Z0-9_]*)@/g)].map((m) => m[1]).sort();
  const uniq = (xs: (string | undefined)[]) => [...new Set(xs)];
  assert.deepEqual(uniq(names(CONNTRACKD_TEMPLATE)), [
    "DISABLE_EXTERNAL_CACHE",
    "IGNORE_ADDRESSES",
    "PEER_SYNC_ADDR",
    "RUN_DIR",
    "SYNC_ADDR",
    "SYNC_IF",
    "SYSTEMD",
  ]);
  const keepalived = [
    "ADVERT_INT",
    "LAN_ADDR",
    "LAN_IF",
    "NOTIFY_SCRIPT",
    "PEER_LAN_ADDR",
    "PRIORITY",
    "ROUTER_ID",
    "VRID",
    "WAN_IF",
  ];
  assert.deepEqual(
    uniq(names(KEEPALIVED_TEMPLATE)),
    [
      ...keepalived,
      "PREEMPT_DELAY",
      "RUN_DIR",
    ].sort(),
  );
  assert.deepEqual(
    uniq(names(KEEPALIVED_ANCHOR_TEMPLATE)),
    // The anchor runs a notify script per state; dpm's template reads the FIFO.
    [...keepalived.filter((k) => k !== "NOTIFY_SCRIPT"), "NOTIFY", "VIRTUAL_ADDRESSES"].sort(),
  );
});

// --- pcap -------------------------------------------------------------------

/** A pcap file (little endian, nanosecond magic) holding `frames` at `times` (ms). */
function pcapFile(frames: Uint8Array[], times: number[], nano = true): Uint8Array {
  const parts: Uint8Array[] = [];
  const head = new DataView(new ArrayBuffer(24));
  head.setUint32(0, nano ? 0xa1b23c4d : 0xa1b2c3d4, true);
  head.setUint16(4, 2, true);
  head.setUint16(6, 4, true);
  head.setUint32(16, 128, true);
  head.setUint32(20, 1, true);
  parts.push(new Uint8Array(head.buffer));
  frames.forEach((f, i) => {
    const r = new DataView(new ArrayBuffer(16));
    const ms = times[i]!;
    r.setUint32(0, Math.floor(ms / 1000), true);
    r.setUint32(4, nano ? Math.round((ms % 1000) * 1e6) : Math.round((ms % 1000) * 1e3), true);
    r.setUint32(8, f.length, true);
    r.setUint32(12, f.length + 10, true);
    parts.push(new Uint8Array(r.buffer), f);
  });
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const MAC_A = [0x02, 0, 0, 0, 0, 0xa];
const MAC_R = [0x02, 0, 0, 0, 0, 0xf];

/** An Ethernet + IPv4 + L4 frame (checksums left 0: the reader does not check them). */
function frame(
  o: { src: string; dst: string; proto: number; l4: number[]; payload?: string; mac?: number[] },
): Uint8Array {
  const ip = (s: string) => s.split(".").map(Number);
  const payload = [...new TextEncoder().encode(o.payload ?? "")];
  const l4 = [...o.l4, ...payload];
  const total = 20 + l4.length;
  return new Uint8Array([
    ...MAC_R,
    ...(o.mac ?? MAC_A),
    0x08,
    0x00,
    0x45,
    0,
    total >> 8,
    total & 255,
    0,
    0,
    0x40,
    0,
    64,
    o.proto,
    0,
    0,
    ...ip(o.src),
    ...ip(o.dst),
    ...l4,
  ]);
}
const udp = (
  sport: number,
  dport: number,
) => [sport >> 8, sport & 255, dport >> 8, dport & 255, 0, 8, 0, 0];
const tcp = (sport: number, dport: number, flags: number) => [
  sport >> 8,
  sport & 255,
  dport >> 8,
  dport & 255,
  0,
  0,
  0,
  1,
  0,
  0,
  0,
  0,
  0x50,
  flags,
  0xff,
  0xff,
  0,
  0,
  0,
  0,
];

Deno.test("ha rig: readPcap reads both timestamp precisions and stops at a cut record", () => {
  const f = frame({
    src: "203.0.113.10",
    dst: "198.51.100.10",
    proto: 17,
    l4: udp(40000, 7),
    payload: "U h1u0 5",
  });
  for (const nano of [true, false]) {
    const file = pcapFile([f, f], [1_700_000_000_123.456, 1_700_000_000_124.5], nano);
    const recs = [...readPcap(file)];
    assert.equal(recs.length, 2);
    assert.ok(Math.abs(recs[0]!.ts - 1_700_000_000_123.456) < 0.01);
    assert.equal(recs[1]!.origLen, f.length + 10);
    assert.deepEqual(recs[0]!.data, f);
    // A record cut in the middle (the writer killed) ends the file quietly.
    assert.equal([...readPcap(file.subarray(0, file.length - 3))].length, 1);
  }
  assert.throws(() => [...readPcap(new Uint8Array(24))], { name: "SyntaxError" });
  const raw = pcapFile([], []);
  new DataView(raw.buffer).setUint32(20, 101, true);
  assert.throws(() => [...readPcap(raw)], { message: "Cannot read pcap link type 101" });
});

Deno.test("ha rig: decodeFrame reads UDP, TCP and ICMP; decodeArp reads a gratuitous ARP", () => {
  const u = decodeFrame(
    frame({
      src: "203.0.113.10",
      dst: "198.51.100.10",
      proto: 17,
      l4: udp(40000, 7),
      payload: "U h1u0 5",
    }),
  )!;
  assert.deepEqual(
    [u.srcMac, u.proto, u.src, u.sport, u.dst, u.dport, new TextDecoder().decode(u.payload)],
    ["02:00:00:00:00:0a", 17, "203.0.113.10", 40000, "198.51.100.10", 7, "U h1u0 5"],
  );
  const t = decodeFrame(
    frame({
      src: "203.0.113.10",
      dst: "198.51.100.10",
      proto: 6,
      l4: tcp(40001, 7, TCP_RST | TCP_ACK),
    }),
  )!;
  assert.equal(t.tcpFlags, TCP_RST | TCP_ACK);
  assert.equal(t.payload.length, 0);
  const i = decodeFrame(
    frame({ src: "203.0.113.10", dst: "198.51.100.10", proto: 1, l4: [3, 3, 0, 0, 0, 0, 0, 0] }),
  )!;
  assert.deepEqual([i.icmpType, i.icmpCode], [3, 3]);
  // Cut before its L4 header, or not IPv4: nothing.
  assert.equal(decodeFrame(frame({ src: "1.2.3.4", dst: "5.6.7.8", proto: 6, l4: [0, 1] })), null);
  assert.equal(decodeFrame(new Uint8Array(10)), null);
  const arp = new Uint8Array([
    ...[255, 255, 255, 255, 255, 255],
    ...MAC_A,
    0x08,
    0x06,
    0,
    1,
    8,
    0,
    6,
    4,
    0,
    1,
    ...MAC_A,
    203,
    0,
    113,
    10,
    0,
    0,
    0,
    0,
    0,
    0,
    203,
    0,
    113,
    10,
  ]);
  assert.deepEqual(decodeArp(arp), {
    op: 1,
    senderMac: "02:00:00:00:00:0a",
    senderIp: "203.0.113.10",
    targetIp: "203.0.113.10",
  });
  assert.equal(decodeArp(arp.subarray(0, 30)), null);
});

// --- busy host helpers ---------------------------------------------------------

Deno.test("ha rig: seenPair and longestGap", () => {
  assert.equal(seenPair("seen 203.0.113.10:40000|U h1u0 5"), "203.0.113.10:40000");
  assert.equal(seenPair("garbage"), null);
  const times = [0, 20, 40, 60, 80, 100, 120];
  assert.equal(longestGap(times, new Set([0, 1, 2, 3, 4, 5, 6])), null);
  assert.deepEqual(longestGap(times, new Set([0, 1, 4, 5, 6])), [20, 80]);
  // A run of losses at the end counts to the last one sent.
  assert.deepEqual(longestGap(times, new Set([0, 1, 2])), [40, 120]);
  assert.equal(longestGap(times, new Set()), null);
});

// --- failover figures ---------------------------------------------------------

const pkt = (p: Partial<WanPacket> & { ts: number }): WanPacket => ({
  by: "gwa",
  proto: 17,
  src: "203.0.113.10",
  sport: 40000,
  dst: "198.51.100.10",
  dport: 7,
  tcpFlags: 0,
  icmpType: -1,
  flow: "h1u0",
  ...p,
});

Deno.test("ha rig: flowOf reads the flow id of U and T payloads only", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  assert.equal(flowOf(enc("U h1u0 12")), "h1u0");
  assert.equal(flowOf(enc("T h2t7 3\nT h2t7 4\n")), "h2t7");
  assert.equal(flowOf(enc("seen 1.2.3.4:5|U h1u0 1")), null);
  assert.equal(flowOf(enc("U h1u0")), null);
  assert.equal(flowOf(enc("")), null);
});

Deno.test("ha rig: analyzeWan counts wrong-pair packets, stray TCP, resets and the takeover", () => {
  const events: HaEvent[] = [{ name: "crash", at: 1000, to: "gwb" }];
  const packets: WanPacket[] = [
    // Before: the session pairs are learnt.
    pkt({ ts: 900 }),
    pkt({ ts: 910, proto: 6, sport: 41000, flow: "h1t1" }),
    pkt({ ts: 920, proto: 6, sport: 41000, flow: null, tcpFlags: TCP_ACK }),
    // After: the new active sends one datagram from a fresh port, then the right one.
    pkt({ ts: 1150, by: "gwb", sport: 55555 }),
    pkt({ ts: 1160, by: "gwb" }),
    // A TCP ACK of no known connection (the peer will reset it), the peer's RST.
    pkt({ ts: 1170, by: "gwb", proto: 6, sport: 41999, flow: null, tcpFlags: TCP_ACK }),
    pkt({
      ts: 1171,
      by: "router",
      proto: 6,
      src: "198.51.100.10",
      sport: 7,
      dst: "203.0.113.10",
      dport: 41999,
      flow: null,
      tcpFlags: TCP_RST,
    }),
    // A fresh session's SYN opens its tuple: its ACK is no stray.
    pkt({ ts: 1180, by: "gwb", proto: 6, sport: 42000, flow: null, tcpFlags: TCP_SYN }),
    pkt({ ts: 1181, by: "gwb", proto: 6, sport: 42000, flow: null, tcpFlags: TCP_ACK }),
    // The busy TCP connection goes on with its pair.
    pkt({ ts: 1190, by: "gwb", proto: 6, sport: 41000, flow: "h1t1" }),
    // An untranslated packet; an ICMP error toward a peer.
    pkt({ ts: 1200, by: "gwb", src: "10.0.0.11", flow: "h1u9" }),
    pkt({ ts: 1210, by: "gwb", proto: 1, icmpType: 3, flow: null }),
    // A peer's reply sent back out toward its private destination (the old active, LAN down).
    pkt({
      ts: 1220,
      by: "gwa",
      proto: 6,
      src: "198.51.100.10",
      sport: 7,
      dst: "10.0.0.11",
      dport: 41000,
      flow: null,
      tcpFlags: TCP_ACK,
    }),
  ];
  const f = analyzeWan(packets, events, ["gwa", "gwb"], [{
    ts: 1140,
    by: "gwb",
    ip: "203.0.113.10",
  }]);
  const w = f.windows[0]!;
  assert.equal(f.wrongPairBefore, 0);
  assert.equal(f.spuriousClaims, 0);
  // The standby claiming the pool before any failure: a spurious takeover.
  assert.equal(
    analyzeWan(packets, events, ["gwa", "gwb"], [{ ts: 700, by: "gwb", ip: "203.0.113.10" }], "gwa")
      .spuriousClaims,
    1,
  );
  assert.equal(w.takeoverMs, 150);
  assert.equal(w.takeoverRightPairMs, 160);
  assert.equal(w.claimMs, 140);
  assert.equal(w.wrongPairFlowPackets, 1);
  assert.equal(w.strayTcp, 1);
  assert.equal(w.untranslated, 1);
  assert.equal(w.misrouted, 1);
  assert.equal(w.wrongPair, 3);
  assert.deepEqual(w.wrongPairFlows, ["h1u0", "h1u9"]);
  assert.deepEqual([w.rstIn, w.rstOut, w.icmpOut, w.icmpIn], [1, 0, 1, 0]);
  // h1u0 came back to its pair: not changed at the end.
  assert.deepEqual(f.pairChanged, []);
  // One that stays on the wrong pair is.
  const g = analyzeWan([...packets, pkt({ ts: 1300, by: "gwb", sport: 55555 })], events, [
    "gwa",
    "gwb",
  ]);
  assert.deepEqual(g.pairChanged, ["h1u0"]);
  assert.equal(g.windows[0]!.claimMs, null);
  // Nothing after the event from the new active: no takeover.
  assert.equal(
    analyzeWan(packets.slice(0, 3), events, ["gwa", "gwb"]).windows[0]!.takeoverMs,
    null,
  );
});

Deno.test("ha rig: wanPackets names senders by MAC and keeps gratuitous ARPs apart", () => {
  const u = frame({
    src: "203.0.113.10",
    dst: "198.51.100.10",
    proto: 17,
    l4: udp(40000, 7),
    payload: "U h1u0 5",
  });
  const r = frame({
    src: "198.51.100.10",
    dst: "203.0.113.10",
    proto: 17,
    l4: udp(7, 40000),
    mac: MAC_R,
  });
  const vrrp = frame({ src: "10.0.0.2", dst: "10.0.0.3", proto: 112, l4: [0, 0, 0, 0] });
  const macs = new Map([["02:00:00:00:00:0a", "gwa"], ["02:00:00:00:00:0f", "router"]]);
  const got = wanPackets(readPcap(pcapFile([u, r, vrrp], [1, 2, 3])), macs);
  assert.deepEqual(got.packets.map((p) => [p.by, p.flow]), [["gwa", "h1u0"], ["router", null]]);
  assert.equal(got.undecoded, 1);
  assert.deepEqual(got.claims, []);
});

Deno.test("ha rig: summarizeHosts sums losses, broken connections and fresh sessions per window", () => {
  const events: HaEvent[] = [{ name: "crash", at: 1000, to: "gwb" }];
  const r: TrafficReport = {
    udp: [
      {
        id: "h1u0",
        local: 1,
        sent: 100,
        echoed: 90,
        pairs: { "a:1": 90 },
        gap: [900, 1200],
        errors: [],
      },
      {
        id: "h1u1",
        local: 2,
        sent: 100,
        echoed: 100,
        pairs: { "a:2": 99, "a:9": 1 },
        gap: null,
        errors: [],
      },
    ],
    tcp: [
      {
        id: "h1t0",
        local: 3,
        sent: 10,
        echoed: 8,
        pairs: { "a:3": 8 },
        gap: [950, 1600],
        error: "ConnectionReset: x",
        errorAt: 1600,
      },
    ],
    fresh: [
      { id: "h1f0", proto: "udp", at: 500, okAt: 501, pair: "a:4", error: null },
      { id: "h1f1", proto: "tcp", at: 1100, okAt: null, pair: null, error: "timeout" },
      { id: "h1f2", proto: "udp", at: 1200, okAt: 1400, pair: "a:5", error: null },
    ],
  };
  const h = summarizeHosts([r], events);
  assert.deepEqual(
    [h.udpLost, h.udpLostMax, h.udpFlowsWithLoss, h.udpMaxGapMs, h.tcpBroken, h.tcpMaxGapMs],
    [10, 10, 1, 300, 1, 650],
  );
  assert.deepEqual(h.pairsSeenChanged, ["h1u1"]);
  assert.deepEqual(h.fresh, [
    { started: 1, ok: 1, failed: 0, firstOkAfterMs: null },
    { started: 2, ok: 1, failed: 1, firstOkAfterMs: 400 },
  ]);
});

Deno.test("ha rig: the standby mirror reads dpm sessions back from conntrack -L lines", () => {
  const text = [
    // A dpm session on the kernel path: a:pa -> G:Pg, reply X:px -> R:p.
    "udp      17 28 src=10.0.0.12 dst=10.0.0.1 sport=54725 dport=62905 src=198.51.100.10 dst=203.0.113.10 sport=7 dport=54725 mark=0 use=1",
    "tcp      6 431999 ESTABLISHED src=10.0.0.14 dst=10.0.0.1 sport=35884 dport=61766 src=198.51.100.20 dst=203.0.113.11 sport=7 dport=35884 [ASSURED] mark=0 use=1",
    // dpm's control traffic to G (reply to G, not to the pool): not a session.
    "udp      17 119 src=10.0.0.14 dst=10.0.0.1 sport=37910 dport=4750 src=10.0.0.1 dst=10.0.0.14 sport=4750 dport=37910 [ASSURED] mark=0 use=1",
    // SNAT of a driverless host (not addressed to G), the sync link, ICMP, garbage.
    "udp      17 29 src=10.0.0.11 dst=198.51.100.10 sport=40000 dport=7 src=198.51.100.10 dst=203.0.113.10 sport=7 dport=40000 mark=0 use=1",
    "udp      17 29 src=10.255.0.1 dst=10.255.0.2 sport=53084 dport=3780 [UNREPLIED] src=10.255.0.2 dst=10.255.0.1 sport=3780 dport=53084 mark=0 use=1",
    "icmp     1 29 src=10.0.0.11 dst=10.0.0.1 type=8 code=0 id=7 src=198.51.100.10 dst=203.0.113.10 type=0 code=0 id=7 mark=0 use=1",
    "udp      17 29 src=10.0.0.11",
    "",
  ].join("\n");
  const pool = new Set([0xcb00710a, 0xcb00710b, 0xcb00710c, 0xcb00710d]);
  assert.deepEqual(parseConntrack(text, 0x0a000001, pool), [
    {
      proto: 17,
      a: 0x0a00000c,
      pa: 54725,
      pg: 62905,
      x: 0xc633640a,
      px: 7,
      r: 0xcb00710a,
      p: 54725,
    },
    {
      proto: 6,
      a: 0x0a00000e,
      pa: 35884,
      pg: 61766,
      x: 0xc6336414,
      px: 7,
      r: 0xcb00710b,
      p: 35884,
    },
  ]);
});

Deno.test("ha rig: analyzeWan names the flow of each reset the gateways send", () => {
  const events = [{ name: "kill", at: 1000, to: "gwb" }];
  const packets = [
    // A busy connection and a fresh one carried payload before: their tuples are known.
    pkt({ ts: 900, proto: 6, sport: 41000, flow: "h1t3", tcpFlags: TCP_ACK }),
    pkt({ ts: 950, proto: 6, sport: 41001, flow: "h2f7", tcpFlags: TCP_ACK }),
    pkt({ ts: 1100, by: "gwb", proto: 6, sport: 41001, flow: null, tcpFlags: TCP_RST }),
    pkt({ ts: 1200, by: "gwb", proto: 6, sport: 41000, flow: null, tcpFlags: TCP_RST | TCP_ACK }),
    pkt({ ts: 1300, by: "gwb", proto: 6, sport: 49999, flow: null, tcpFlags: TCP_RST }),
    // A handshake that never carried data, reset; the peer resets it too.
    pkt({ ts: 1350, by: "gwb", proto: 6, sport: 42000, flow: null, tcpFlags: TCP_SYN }),
    pkt({ ts: 1400, by: "gwb", proto: 6, sport: 42000, flow: null, tcpFlags: TCP_RST }),
    pkt({
      ts: 1450,
      by: "router",
      proto: 6,
      src: "198.51.100.10",
      sport: 7,
      dst: "203.0.113.10",
      dport: 42000,
      flow: null,
      tcpFlags: TCP_RST,
    }),
    // A reset before the flow's first payload is named by that payload.
    pkt({ ts: 1500, by: "gwb", proto: 6, sport: 43000, flow: null, tcpFlags: TCP_RST }),
    pkt({ ts: 1600, by: "gwb", proto: 6, sport: 43000, flow: "h3f9", tcpFlags: TCP_ACK }),
  ];
  const [w] = analyzeWan(packets, events, ["gwa", "gwb"], [], "gwa").windows;
  assert.equal(w!.rstOut, 5);
  assert.deepEqual(w!.rstOutFlows, [
    "h2f7",
    "h1t3",
    "?6/203.0.113.10:49999/198.51.100.10:7",
    "?6/203.0.113.10:42000/198.51.100.10:7+syn",
    "h3f9",
  ]);
  assert.equal(w!.rstIn, 1);
  assert.deepEqual(w!.rstInFlows, ["?6/203.0.113.10:42000/198.51.100.10:7+syn"]);
});
