/**
 * The data path seam from the roles' side, with the fakes of
 * src/datapath/fake.ts: what each core asks of a kernel-style data path
 * (program before the grant, remove on release and expiry, hold the first
 * packet and let it go unchanged, leases from kernel activity, adoption
 * after a restart). Real cores, real encoded control messages, no kernel.
 */

import assert from "node:assert/strict";
import { DriverCore } from "../../src/driver/core.ts";
import { ServerCore } from "../../src/server/core.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { FakeDriverDataPath, FakePacketIO, FakeServerDataPath } from "../../src/datapath/fake.ts";
import { gatewayKey, hostKey } from "../../src/datapath/datapath.ts";
import { decodeResponse, encodeRequest, newNonce, Op } from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { buildIcmpEcho, buildTcp, buildUdp } from "../../testing/packets.ts";
import { PacketInfo, parse } from "../../src/wire/packet.ts";
import {
  driverCfg,
  G,
  H1,
  handleVerified,
  LAN,
  P1,
  Pipe,
  R1,
  serverCfg,
  settle,
} from "../../testing/fixtures.ts";

function reserveBytes(pa: number, px: number) {
  return encodeRequest({
    op: Op.RESERVE,
    nonce: newNonce(),
    proto: 17,
    replaceable: true,
    internalAddr: H1,
    internalPort: pa,
    remoteAddr: P1,
    remotePort: px,
    lifetime: 0,
  });
}

Deno.test("seam: the server programs a session before its grant is answered and removes it on release and expiry", () => {
  let now = 1_000_000;
  const core = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: () => now });
  const dp = new FakeServerDataPath();
  let upBeforeReply = false;
  const orig = dp.sessionUp.bind(dp);
  dp.sessionUp = (s) => {
    upBeforeReply = true;
    orig(s);
  };
  core.attach(dp);
  const reply = handleVerified(core, reserveBytes(40000, 7000), H1)!;
  assert.ok(upBeforeReply, "sessionUp ran inside handleControl, before the reply existed");
  const r = decodeResponse(reply);
  assert.ok(r.ok && r.res.result === Result.OK);
  assert.equal(dp.up.length, 1);
  const s = dp.up[0]!;
  assert.deepEqual(
    [s.proto, s.a, s.pa, s.x, s.px, s.r, s.p, s.pg],
    [17, H1, 40000, P1, 7000, R1, 40000, r.ok ? r.res.gatewayPort : -1],
  );
  // Asking again for the same session is idempotent: nothing programmed twice.
  handleVerified(core, reserveBytes(40000, 7000), H1);
  assert.equal(dp.up.length, 1);
  // Release removes it.
  handleVerified(
    core,
    encodeRequest({
      op: Op.RELEASE,
      nonce: newNonce(),
      proto: 17,
      replaceable: true,
      internalAddr: H1,
      internalPort: 40000,
      remoteAddr: P1,
      remotePort: 7000,
      lifetime: 0,
    }),
    H1,
  );
  assert.equal(dp.down.length, 1);
  assert.deepEqual(dp.down[0], s);
  // Expiry removes too.
  handleVerified(core, reserveBytes(40001, 7000), H1);
  now += 86_400_000;
  core.expire();
  assert.equal(dp.down.length, 2);
  assert.equal(dp.down[1]!.pa, 40001);
  // Detached: the table no longer reports.
  core.detach();
  handleVerified(core, reserveBytes(40002, 7000), H1);
  assert.equal(dp.up.length, 2);
});

Deno.test("seam: the server's status merges the data path's per-session kernel counters", () => {
  const core = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const dp = new FakeServerDataPath();
  core.attach(dp);
  handleVerified(core, reserveBytes(40000, 7000), H1);
  const pg = dp.up[0]!.pg;
  dp.counterMap = new Map([[gatewayKey(17, H1, pg), {
    packetsOut: 7,
    bytesOut: 700,
    packetsIn: 5,
    bytesIn: 500,
  }]]);
  const st = core.status();
  assert.equal(st.dataPath.kind, "kernel");
  const row = st.shown[0]!;
  assert.deepEqual(
    [row.packetsOut, row.packetsIn, row.bytesOut, row.bytesIn],
    [7, 5, 700, 500],
  );
});

function hostRig(now: () => number) {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now });
  const pipe = new Pipe(server, H1);
  const d = new DriverCore(driverCfg(), pipe, { lan: LAN, ephemeral: [32768, 60999], now });
  const io = new FakePacketIO();
  const dp = new FakeDriverDataPath(true);
  return { server, pipe, d, io, dp };
}

Deno.test("seam: on a kernel path the driver proposes Pg, programs the session, commits at the turn's end, then lets the packet go unchanged", async () => {
  const { d, io, dp } = hostRig(Date.now);
  d.attach(dp, io);
  const pkt = buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 });
  const before = pkt.slice();
  assert.equal(d.handlePacket(pkt, 1, true), Verdict.HOLD);
  assert.equal(dp.up.length, 1, "programmed at once with its proposed Pg");
  assert.equal(dp.commits, 0);
  assert.deepEqual(io.given, [], "not before the commit");
  await settle();
  assert.equal(dp.commits >= 1, true, "committed at the end of the turn");
  assert.equal(dp.up.length, 1, "granted as proposed: nothing programmed again");
  const k = dp.up[0]!;
  assert.deepEqual([k.proto, k.a, k.pa, k.x, k.px, k.g], [17, H1, 40000, P1, 7000, G]);
  assert.ok(k.pg >= 61000);
  assert.deepEqual(io.given, [{ id: 1, verdict: Verdict.ACCEPT }], "accepted without a payload");
  assert.deepEqual(pkt, before, "the driver did not rewrite it: the kernel will");
  // A later new conntrack of the same session: accepted as it is, no new reservation.
  assert.equal(
    d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 2, true),
    Verdict.ACCEPT,
  );
  assert.equal(dp.up.length, 1);
  // ICMP stays with the translator in user space on a kernel path: rewritten to G:Pg.
  const echo = buildIcmpEcho({ src: H1, dst: P1, id: 77, seq: 1, type: 8 });
  const info = new PacketInfo();
  assert.equal(parse(echo, echo.length, info), 0);
  assert.equal(dp.outbound(echo, info, G, 61234, 0), Verdict.MODIFIED);
  assert.equal(parse(echo, echo.length, info), 0);
  assert.deepEqual([info.dst, info.sport], [G, 61234], "to G, the identifier replaced by Pg");
});

Deno.test("seam: on a kernel path leases follow kernel activity: a moving counter renews, a closed TCP conntrack releases", async () => {
  let now = 5_000_000;
  const { server, d, io, dp } = hostRig(() => now);
  d.attach(dp, io);
  d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 1, true);
  d.handlePacket(buildTcp({ src: H1, sport: 40001, dst: P1, dport: 80, flags: 0x02 }), 2, true);
  await settle();
  assert.equal(dp.up.length, 2);
  assert.equal(server.table.size, 2);
  const [udp, tcp] = dp.up;
  let packets = 1;
  for (let t = 0; t < 3 * 300_000; t += 10_000) {
    now += 10_000;
    packets += 3;
    // The kernel saw UDP traffic (the driver saw none of it); TCP is idle but open.
    dp.activityMap.set(hostKey(17, H1, udp!.pg), { packets, bytes: packets * 100, closed: false });
    dp.activityMap.set(hostKey(6, H1, tcp!.pg), { packets: 3, bytes: 180, closed: false });
    d.tick();
    server.expire();
    await settle();
  }
  const st = d.stats() as Record<string, number>;
  assert.ok(st.renewed! >= 3, `renewed ${st.renewed} times from kernel counters`);
  assert.equal(server.table.size, 2, "both alive: UDP busy, TCP established (RFC 5382)");
  // The TCP connection closes (the kernel's conntrack says TIME_WAIT); released after the 4 min transitory time.
  dp.activityMap.set(hostKey(6, H1, tcp!.pg), { packets: 9, bytes: 400, closed: true });
  for (let i = 0; i < 250; i++) {
    now += 1000;
    packets++;
    dp.activityMap.set(hostKey(17, H1, udp!.pg), { packets, bytes: packets * 100, closed: false });
    d.tick();
    await settle();
  }
  assert.equal(dp.down.length, 1, "the closed TCP session was removed from the kernel");
  assert.equal(dp.down[0]!.pa, 40001);
  assert.equal(server.table.size, 1, "and released at the server");
});

Deno.test("seam: sessions the kernel still translates after a restart are adopted and renewed at once", async () => {
  const now = 9_000_000;
  const { server, d, io, dp } = hostRig(() => now);
  // The server knows the session (it adopted its own maps).
  const granted = decodeResponse(handleVerified(server, reserveBytes(40000, 7000), H1)!);
  assert.ok(granted.ok);
  dp.leftover = [{
    proto: 17,
    a: H1,
    pa: 40000,
    x: P1,
    px: 7000,
    g: G,
    pg: granted.res.gatewayPort,
  }];
  d.attach(dp, io);
  d.adopt(await dp.adopt());
  assert.equal((d.stats() as Record<string, number>).adopted, 1);
  d.tick();
  await settle();
  const q = await d.query({
    op: "query",
    proto: "udp",
    local: "10.0.0.11:40000",
    remote: "198.51.100.10:7000",
  }) as Record<string, unknown>;
  assert.equal(q.result, "ok");
  assert.equal(q.public, `203.0.113.10:40000`, "the public pair learned from the renewal");
  assert.equal(dp.up.length, 0, "already in the kernel: not programmed again");
  // Its next new conntrack goes straight through.
  assert.equal(
    d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 3, true),
    Verdict.ACCEPT,
  );
});
