/**
 * The driver under control-packet loss, with an injected clock and a lossy
 * in-memory network (testing/fixtures.ts LossyPipe): sessions that fell back
 * to ordinary NAT are reserved again and then translated, grants the driver
 * never learned of are given back, unanswered releases are asked again, and
 * afterwards the driver and the server agree on which sessions exist.
 */

import assert from "node:assert/strict";
import { DriverCore, State } from "../../src/driver/core.ts";
import { ServerCore } from "../../src/server/core.ts";
import { FakeDriverDataPath } from "../../src/datapath/fake.ts";
import { buildTcp, buildUdp } from "../../testing/packets.ts";
import {
  driverCfg,
  FakePacketIO,
  H1,
  LAN,
  LossyPipe,
  P1,
  R1,
  R2,
  serverCfg,
  settle,
  settleTimeouts,
} from "../../testing/fixtures.ts";
import { IPPROTO_TCP, IPPROTO_UDP } from "../../src/wire/packet.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { formatIPv4 } from "../../src/wire/addr.ts";
import { Op } from "../../src/control/proto.ts";

async function rig(loss: number, o: { tries?: number; kernel?: boolean; seed?: number } = {}) {
  let t = 1_000_000;
  const now = () => t;
  const server = new ServerCore(serverCfg({ pool: [R1, R2] }), { lan: LAN, now });
  const pipe = new LossyPipe(server, H1, 0, o.tries ?? 10, o.seed ?? 7);
  const d = new DriverCore(driverCfg(), pipe, { lan: LAN, ephemeral: [32768, 60999], now });
  const io = new FakePacketIO();
  const dp = new FakeDriverDataPath(o.kernel ?? true);
  d.attach(dp, io);
  // The cookie first (a harmless RENEW), so that what the tests lose is the exchange itself.
  await pipe.request({
    op: Op.RENEW,
    nonce: new Uint8Array(8),
    proto: 17,
    replaceable: false,
    internalAddr: H1,
    internalPort: 9,
    remoteAddr: P1,
    remotePort: 9,
    lifetime: 0,
  });
  pipe.loss = loss;
  return {
    server,
    pipe,
    d,
    io,
    dp,
    advance: (ms: number) => (t += ms),
  };
}

/** Lets the client's requests be answered or given up (real time: its timers are quick). */
async function quiet(r: Awaited<ReturnType<typeof rig>>): Promise<void> {
  await settle();
  for (let i = 0; i < 100 && r.pipe.pending > 0; i++) await settleTimeouts(5);
}

function udp(sport: number, dport = 7000): Uint8Array {
  return buildUdp({ src: H1, dst: P1, sport, dport });
}

/** The driver's translated sessions and the server's table, as comparable sorted lists. */
function agree(d: DriverCore, server: ServerCore): { driver: string[]; server: string[] } {
  const driver = [...d.sessions()].filter((s) => s.state === State.ACTIVE)
    .map((s) => `${s.proto} ${s.pa} ${s.px} ${formatIPv4(s.r)}:${s.p}`).sort();
  const srv = server.status().shown.map((v) =>
    `${v.proto === "udp" ? IPPROTO_UDP : v.proto === "tcp" ? IPPROTO_TCP : 1} ${
      v.internal.split(":")[1]
    } ${v.remote.split(":")[1]} ${v.public}`
  ).sort();
  return { driver, server: srv };
}

/** Runs the driver's timer for `ms` of injected time, letting answers apply. */
async function run(r: Awaited<ReturnType<typeof rig>>, ms: number): Promise<void> {
  for (let i = 0; i < ms / 500; i++) {
    r.advance(500);
    r.d.tick();
    await quiet(r);
  }
}

Deno.test("driver loss: a UDP session that fell back (no answer) is reserved again and then translated", async () => {
  const r = await rig(0);
  r.pipe.loss = 1; // the server is unreachable for the first request
  assert.equal(r.d.handlePacket(udp(40000), 1, true), Verdict.HOLD);
  await quiet(r);
  const s = [...r.d.sessions()][0]!;
  assert.equal(s.state, State.BYPASS);
  // Proposed, so let go to G:Pg at the turn's end (the gateway would have held it).
  assert.deepEqual(r.io.given, [{ id: 1, verdict: Verdict.ACCEPT }]);
  const view = await r.d.query({
    op: "query",
    proto: "udp",
    local: "10.0.0.11:40000",
    remote: "198.51.100.10:7000",
  }) as Record<string, unknown>;
  assert.equal(view.result, "server-unreachable");
  assert.equal(view.fellBack, true);
  assert.equal((r.d.stats() as { untranslated: number }).untranslated, 1);

  r.pipe.loss = 0; // the network heals
  await run(r, 3000);
  assert.equal(s.state, State.ACTIVE, "reserved in the background");
  assert.equal(r.d.counters.fellBack, 1);
  assert.equal(r.d.counters.recovered, 1);
  // Kernel path: the proposal was programmed, then taken back at the fall-back; once
  // granted, the untranslated conntrack is deleted, then the map element added.
  assert.equal(r.dp.up.length, 2);
  assert.equal(r.dp.down.length, 2);
  // The next packet is translated (kernel path: the map does it).
  assert.equal(r.d.handlePacket(udp(40000), 2, true), Verdict.ACCEPT);
  const a = agree(r.d, r.server);
  assert.deepEqual(a.driver, a.server);
  assert.equal(a.driver.length, 1);
});

Deno.test("driver loss: a TCP session that fell back gives back the grant whose answer was lost", async () => {
  const r = await rig(0);
  r.pipe.holdAnswers = true; // granted at the server, the answer never comes
  r.d.handlePacket(buildTcp({ src: H1, dst: P1, sport: 40001, dport: 80, flags: 0x02 }), 1, true);
  await quiet(r);
  assert.equal([...r.d.sessions()][0]!.state, State.BYPASS);
  r.pipe.holdAnswers = false;
  await quiet(r);
  // The reserve was granted (its answer lost), then given back.
  const ops = r.pipe.sent.filter((q) => q.internalPort !== 9).map((q) => q.op); // not the warm-up
  assert.deepEqual([...new Set(ops)], [Op.RESERVE, Op.RELEASE]);
  assert.equal(r.server.table.size, 0, "the driver released what it never learned it got");
});

Deno.test("driver loss: an answer that comes after its request timed out is applied or given back", async () => {
  const r = await rig(0);
  r.pipe.holdAnswers = true;
  r.d.handlePacket(udp(40002), 1, true);
  await quiet(r);
  const s = [...r.d.sessions()][0]!;
  assert.equal(s.state, State.BYPASS);
  r.pipe.holdAnswers = false;
  r.pipe.deliverLate(); // the fallen-back session takes the grant it was late for
  assert.equal(s.state, State.ACTIVE);
  assert.equal(r.server.table.size, 1);

  // A late grant for a session the driver no longer has is released.
  r.pipe.holdAnswers = true;
  r.d.handlePacket(udp(40003), 2, true);
  await quiet(r);
  const s2 = [...r.d.sessions()].find((x) => x.pa === 40003)!;
  assert.equal(s2.state, State.BYPASS);
  await run(r, 31_000); // quiet: forgotten; every answer about it held back
  assert.equal([...r.d.sessions()].filter((x) => x.pa === 40003).length, 0);
  r.pipe.holdAnswers = false;
  r.pipe.deliverLate();
  await quiet(r);
  assert.ok(r.d.counters.lateReleased >= 1);
  assert.equal(r.server.table.size, 1, "only the first session is left");
  const a = agree(r.d, r.server);
  assert.deepEqual(a.driver, a.server);
});

Deno.test("driver loss: an unanswered release is asked again until the server forgets the session", async () => {
  const r = await rig(0);
  r.d.handlePacket(udp(40004), 1, true);
  await quiet(r);
  assert.equal(r.server.table.size, 1);
  r.pipe.loss = 1; // every release is lost
  await run(r, 300_000 * 2 / 3 + 1000); // idle for 2/3 of the 300 s lifetime: released
  assert.equal([...r.d.sessions()].length, 0);
  assert.equal(r.server.table.size, 1, "the release was lost");
  r.pipe.loss = 0;
  await run(r, 6000);
  assert.equal(r.server.table.size, 0, "asked again");
});

Deno.test("driver loss: at 30% loss each way 100 new UDP sessions all end up reserved, and driver and server agree", async () => {
  // Short schedules (a few transmissions per request): some of the first
  // reservations may fall back, and must then be recovered.
  const r = await rig(0.3, { seed: 12345, tries: 4 });
  for (let i = 0; i < 100; i++) r.d.handlePacket(udp(41000 + i), i + 1, true);
  await quiet(r);
  // The application keeps sending (a packet per session per second) for a while.
  for (let sec = 0; sec < 20; sec++) {
    for (let i = 0; i < 100; i++) r.d.handlePacket(udp(41000 + i), 1000 + sec * 100 + i, true);
    await run(r, 1000);
  }
  const all = [...r.d.sessions()];
  assert.equal(all.length, 100);
  assert.equal(all.filter((s) => s.state === State.ACTIVE).length, 100);
  const a = agree(r.d, r.server);
  assert.deepEqual(a.driver, a.server);
  assert.equal(r.d.counters.recovered, r.d.counters.fellBack, "every fallen-back one recovered");
});
