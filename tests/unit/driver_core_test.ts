/**
 * The driver's logic on real packet bytes, talking to a real ServerCore
 * through encoded control messages (no sockets, no kernel): detection of new
 * sessions, holding their first packets, claim 5 rewriting, claim 6 at the
 * server, restoring replies, claims 3 and 11 (replaceable ports, queries),
 * refusal, renewal, idle release and server restarts.
 */

import assert from "node:assert/strict";
import { DriverCore } from "../../src/driver/core.ts";
import { COOKIE_ROTATE_MS } from "../../src/control/cookie.ts";
import { encodeRequest, errorResponseFor, hasCookie } from "../../src/control/proto.ts";
import { ServerCore } from "../../src/server/core.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { FakeDriverDataPath, FakeServerDataPath } from "../../src/datapath/fake.ts";
import { driverShareStart } from "../../src/control/pg.ts";
import { Result } from "../../src/control/result.ts";
import { IPPROTO_UDP, PacketInfo, parse } from "../../src/wire/packet.ts";
import {
  buildIcmpEcho,
  buildIcmpError,
  buildTcp,
  buildUdp,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";
import {
  driverCfg,
  FakePacketIO,
  G,
  H1,
  H2,
  ip,
  LAN,
  P1,
  P2,
  Pipe,
  R1,
  serverCfg,
  settle,
  settleTimeouts,
} from "../../testing/fixtures.ts";

function parsed(pkt: Uint8Array): PacketInfo {
  const info = new PacketInfo();
  assert.equal(parse(pkt, pkt.length, info), 0);
  return info;
}

/** `dpm query udp <local> <remote> [--reserve]` against a driver core, as the operator socket passes it. */
function ask(
  d: DriverCore,
  local: string,
  remote: string,
  reserve = false,
): Promise<Record<string, unknown>> {
  return d.query({ op: "query", proto: "udp", local, remote, reserve }) as Promise<
    Record<string, unknown>
  >;
}

function rig(
  o: { pool?: number[]; fixed?: number[]; now?: () => number; quota?: number; kernel?: boolean } =
    {},
) {
  const scfg = serverCfg({
    pool: o.pool ?? [R1],
    ...(o.quota ? { maxSessionsPerHost: o.quota } : {}),
  });
  const server = new ServerCore(scfg, { lan: LAN, ...(o.now ? { now: o.now } : {}) });
  const mk = (a: number) => {
    const pipe = new Pipe(server, a);
    const d = new DriverCore(driverCfg({ fixedPorts: o.fixed ?? [] }), pipe, {
      lan: LAN,
      ephemeral: [32768, 60999],
      ...(o.now ? { now: o.now } : {}),
    });
    const io = new FakePacketIO();
    const dp = new FakeDriverDataPath(o.kernel ?? false);
    d.attach(dp, io);
    return { d, q: io, raw: io, pipe, dp };
  };
  return { server, h1: mk(H1), h2: mk(H2) };
}

Deno.test("driver: claim 5 proposes Pg and sends the first packet to G:Pg at once; the gateway holds it until the grant, then makes it R:p -> X:px", async () => {
  const { server, h1 } = rig();
  const sdp = new FakeServerDataPath("queue");
  server.attach(sdp);
  const pkt = buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 });
  // Queue path: rewritten at once to G:Pg, Pg from the drivers' share.
  assert.equal(h1.d.handlePacket(pkt, 1, true), Verdict.MODIFIED);
  const lan = parsed(pkt);
  assert.equal(lan.dst, G);
  assert.ok(lan.dport >= driverShareStart([61000, 65535]) && lan.dport <= 65535);
  assert.deepEqual([lan.src, lan.sport], [H1, 40000]);
  assert.ok(verifyIpChecksum(pkt) && verifyL4Checksum(pkt));
  // It reaches the gateway ahead of its request: held there.
  const atGateway = pkt.slice();
  assert.equal(server.handlePacket(atGateway, 0, 77), Verdict.HOLD);
  assert.equal(server.held.size, 1);
  await settle();
  // The first request learns the server's cookie (COOKIE_REQUIRED), the retry carries it;
  // both propose the Pg the packet went to.
  assert.equal(h1.pipe.sent.length, 2);
  const req = h1.pipe.sent[1]!;
  assert.deepEqual([req.internalAddr, req.internalPort, req.remoteAddr, req.remotePort], [
    H1,
    40000,
    P1,
    7000,
  ]);
  assert.equal((req as { gatewayPort?: number }).gatewayPort, lan.dport);
  assert.equal(req.replaceable, true, "claim 3: 40000 is inside the ephemeral range");
  // Granted and committed: the held packet goes on, R:p -> X:px (claim 6).
  assert.equal(server.held.size, 0);
  assert.equal(sdp.io.given.length, 1);
  const v = sdp.io.given[0]!;
  assert.deepEqual([v.id, v.verdict], [77, Verdict.MODIFIED]);
  const out = parsed(v.payload!);
  assert.deepEqual([out.src, out.sport, out.dst, out.dport], [R1, 40000, P1, 7000]);
  // Later packets are rewritten at once, to the same Pg.
  const next = buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 });
  assert.equal(h1.d.handlePacket(next, 2, true), Verdict.MODIFIED);
  assert.equal(parsed(next).dport, lan.dport);
  assert.equal(server.handlePacket(next), Verdict.MODIFIED);
  const wan = parsed(next);
  assert.deepEqual([wan.src, wan.sport, wan.dst, wan.dport], [R1, 40000, P1, 7000]);
  // The reply comes back through both and reaches the app as from X:px.
  const reply = buildUdp({ src: P1, sport: 7000, dst: R1, dport: 40000 });
  assert.equal(server.handlePacket(reply), Verdict.MODIFIED);
  assert.equal(h1.d.handlePacket(reply, 3, false), Verdict.MODIFIED);
  const app = parsed(reply);
  assert.deepEqual([app.src, app.sport, app.dst, app.dport], [P1, 7000, H1, 40000]);
  assert.ok(verifyIpChecksum(reply) && verifyL4Checksum(reply));
});

Deno.test("driver: a reply from G:Pg that overtakes the answer (a SYN-ACK) reaches the app: the proposed Pg is translated inbound at once", async () => {
  const { server, h1 } = rig();
  const sdp = new FakeServerDataPath("queue");
  server.attach(sdp);
  const syn = buildTcp({ src: H1, sport: 40001, dst: P1, dport: 80, flags: 0x02 });
  assert.equal(h1.d.handlePacket(syn, 1, true), Verdict.MODIFIED);
  const pg = parsed(syn).dport;
  // The gateway grants and sends the SYN on; the remote's SYN-ACK comes back
  // through the gateway before the driver has read its answer.
  assert.equal(server.handlePacket(syn.slice(), 0, 5), Verdict.HOLD);
  const s = [...h1.d.sessions()].find((x) => x.pa === 40001)!;
  assert.equal(s.state, 0, "no answer yet (PENDING)");
  const synAck = buildTcp({ src: G, sport: pg, dst: H1, dport: 40001, flags: 0x12 });
  assert.equal(h1.d.handlePacket(synAck, 2, false), Verdict.MODIFIED);
  const app = parsed(synAck);
  assert.deepEqual([app.src, app.sport, app.dst, app.dport], [P1, 80, H1, 40001]);
  // From another port of the host, G:Pg is not this session's: untouched.
  const stray = buildTcp({ src: G, sport: pg, dst: H1, dport: 40002, flags: 0x12 });
  assert.equal(h1.d.handlePacket(stray, 3, false), Verdict.ACCEPT);
  await settle();
  assert.equal(s.state, 1, "the answer arrived: ACTIVE");
});

Deno.test("driver: the kernel path holds a new session's first packets for the rest of the turn, commits once, then lets them go", async () => {
  const { h1 } = rig({ kernel: true });
  const ids = [1, 2, 3];
  for (const id of ids) {
    const pkt = buildUdp({ src: H1, sport: 40000 + id, dst: P1, dport: 7000 });
    assert.equal(h1.d.handlePacket(pkt, id, true), Verdict.HOLD);
  }
  assert.equal(h1.dp.up.length, 3, "three sessions programmed with their proposals");
  assert.equal(h1.dp.commits, 0, "not committed yet");
  h1.d.endTurn();
  assert.equal(h1.dp.commits, 1, "one commit for the turn");
  assert.deepEqual(h1.q.given.map((g) => [g.id, g.verdict]), [
    [1, Verdict.ACCEPT],
    [2, Verdict.ACCEPT],
    [3, Verdict.ACCEPT],
  ]);
  // Before any answer: the requests went first (one datagram after the cookie's).
  await settle();
  assert.equal(
    [...h1.d.sessions()].filter((s) => s.state === 1).length,
    3,
    "granted as proposed",
  );
  assert.equal(h1.dp.up.length, 3, "nothing to program again");
});

Deno.test("driver: claim 11 query answers the public pair the server chose; --reserve reserves first", async () => {
  const { h1 } = rig();
  assert.deepEqual(
    await ask(h1.d, "10.0.0.11:5000", "198.51.100.10:7000"),
    {
      result: "no-session",
    },
  );
  const r = await ask(h1.d, "10.0.0.11:5000", "198.51.100.10:7000", true);
  assert.equal(r.result, "ok");
  assert.equal(r.public, "203.0.113.10:5000");
  assert.equal(r.replaced, false);
  // A packet of that session now goes out without a reservation round trip.
  const pkt = buildUdp({ src: H1, sport: 5000, dst: P1, dport: 7000 });
  assert.equal(h1.d.handlePacket(pkt, 1, true), Verdict.MODIFIED);
  assert.equal(h1.pipe.sent.length, 2, "the cookie handshake and the reservation");
  assert.equal((await h1.d.query({ op: "bogus" }) as Record<string, unknown>).result, "error");
  assert.equal(
    (await h1.d.query({ op: "query", proto: "sctp", local: "x", remote: "y" }) as Record<
      string,
      unknown
    >).result,
    "error",
  );
});

Deno.test("driver: claims 3, 23 a replaceable port taken everywhere is replaced; the query tells the new one", async () => {
  const { h1, h2 } = rig();
  const a = await ask(h1.d, "10.0.0.11:40000", "198.51.100.10:7000", true);
  const b = await ask(h2.d, "10.0.0.12:40000", "198.51.100.10:7000", true);
  assert.equal(a.public, "203.0.113.10:40000");
  assert.equal(b.replaced, true);
  assert.notEqual(b.public, a.public);
  // The packet carries the replaced port outside.
  const { server } = { server: h2.pipe.server };
  const pkt = buildUdp({ src: H2, sport: 40000, dst: P1, dport: 7000 });
  assert.equal(h2.d.handlePacket(pkt, 1, true), Verdict.MODIFIED);
  assert.equal(server.handlePacket(pkt), Verdict.MODIFIED);
  assert.equal(`203.0.113.10:${parsed(pkt).sport}`, b.public);
});

Deno.test("driver: a fixed port refused by the server is dropped and the application gets ICMP prohibited", async () => {
  const { h1, h2 } = rig({ fixed: [] });
  // 5060 is outside the ephemeral range: not replaceable (claim 3).
  const a = buildUdp({ src: H1, sport: 5060, dst: P1, dport: 5060 });
  assert.equal(h1.d.handlePacket(a, 1, true), Verdict.MODIFIED);
  await settle();
  assert.equal(h1.pipe.sent[0]!.replaceable, false);
  const b = buildUdp({ src: H2, sport: 5060, dst: P1, dport: 5060 });
  // Proposed and let go (the gateway holds it, then drops it: refused).
  assert.equal(h2.d.handlePacket(b, 1, true), Verdict.MODIFIED);
  await settle();
  assert.equal(h2.raw.sent.length, 1, "the application is told");
  const icmp = parsed(h2.raw.sent[0]!.pkt);
  assert.deepEqual([icmp.icmpType, icmp.icmpCode, icmp.dst, icmp.src], [3, 13, H2, P1]);
  assert.deepEqual([icmp.innerSrc, icmp.innerSport, icmp.innerDst, icmp.innerDport], [
    H2,
    5060,
    P1,
    5060,
  ]);
  assert.ok(verifyIpChecksum(h2.raw.sent[0]!.pkt) && verifyL4Checksum(h2.raw.sent[0]!.pkt));
  const q = await ask(h2.d, "10.0.0.12:5060", "198.51.100.10:5060");
  assert.equal(q.result, "conflict", "the refusal is visible to the application");
  // Its next packet is dropped here, with the same ICMP.
  const again = buildUdp({ src: H2, sport: 5060, dst: P1, dport: 5060 });
  assert.equal(h2.d.handlePacket(again, 2, true), Verdict.DROP);
  assert.equal(h2.raw.sent.length, 2);
  // The same fixed port toward another peer is shared (claims 8-10).
  const c = buildUdp({ src: H2, sport: 5060, dst: P2, dport: 5060 });
  assert.equal(h2.d.handlePacket(c, 3, true), Verdict.MODIFIED, "rewritten and let go");
  await settle();
  const ok = await ask(h2.d, "10.0.0.12:5060", "198.51.100.20:5060");
  assert.equal(ok.result, "ok");
});

Deno.test("driver: a fixed port listed with --fixed-ports is never replaceable, even inside the ephemeral range", () => {
  const { h1 } = rig({ fixed: [40000] });
  assert.equal(h1.d.isReplaceable(IPPROTO_UDP, 40000), false);
  assert.equal(h1.d.isReplaceable(IPPROTO_UDP, 40001), true);
  assert.equal(h1.d.isReplaceable(IPPROTO_UDP, 5060), false);
  assert.equal(h1.d.isReplaceable(1, 5), true, "ICMP identifiers are always replaceable");
});

Deno.test("driver: LAN-local traffic and unparsable packets pass untouched", () => {
  const { h1 } = rig();
  const local = buildUdp({ src: H1, sport: 40000, dst: H2, dport: 53 });
  const copy = local.slice();
  assert.equal(h1.d.handlePacket(local, 1, true), Verdict.ACCEPT);
  assert.deepEqual(local, copy);
  assert.equal(h1.d.handlePacket(new Uint8Array([0x60, 0, 0, 0]), 2, true), Verdict.ACCEPT);
  assert.equal(h1.pipe.sent.length, 0);
});

Deno.test("driver: no answer from the server passes the session untranslated (ordinary NAT still works)", async () => {
  const { h1 } = rig();
  h1.pipe.drop = true;
  const pkt = buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 });
  const copy = pkt.slice();
  // Proposed: on its way to G:Pg (the gateway would hold it for the request that never comes).
  assert.equal(h1.d.handlePacket(pkt, 1, true), Verdict.MODIFIED);
  await settleTimeouts();
  const s = [...h1.d.sessions()][0]!;
  assert.equal(s.state, 3, "fell back");
  assert.equal(s.pg, 0, "its proposal is given up");
  const next = copy.slice();
  assert.equal(h1.d.handlePacket(next, 2, true), Verdict.ACCEPT);
  assert.deepEqual(next, copy);
});

Deno.test("driver: with a server that speaks only version 2, new sessions wait for their answer", async () => {
  const { h1 } = rig();
  // A version-2 server answers a version-3 datagram UNSUPPORTED_VERSION.
  const link = h1.pipe.link;
  const real = link.server.handleControl.bind(link.server);
  link.server.handleControl = (msg, src) => {
    if (msg[2] === 3) return errorResponseFor(msg, { result: Result.UNSUPPORTED_VERSION }, 1);
    return real(msg, src);
  };
  const first = buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 });
  assert.equal(h1.d.handlePacket(first, 1, true), Verdict.MODIFIED, "proposed before it knew");
  await settle();
  assert.equal(h1.pipe.proposes, false);
  const pkt = buildUdp({ src: H1, sport: 40001, dst: P1, dport: 7000 });
  assert.equal(h1.d.handlePacket(pkt, 2, true), Verdict.HOLD, "held until the answer");
  await settle();
  assert.equal(h1.q.given.at(-1)?.id, 2);
  assert.equal(h1.q.given.at(-1)?.verdict, Verdict.MODIFIED);
  assert.ok(h1.pipe.sent.slice(-1)[0]!.nonce.length === 8);
  assert.equal([...h1.d.sessions()].filter((s) => s.state === 1).length, 2, "both granted");
});

Deno.test("driver: ICMP echo and its ICMP errors cross both translators", async () => {
  const { server, h1 } = rig();
  const ping = buildIcmpEcho({ src: H1, dst: P1, id: 0x4242, seq: 1, type: 8 });
  assert.equal(h1.d.handlePacket(ping, 1, true), Verdict.HOLD);
  await settle();
  const lan = h1.q.given[0]!.payload!;
  const li = parsed(lan);
  assert.equal(li.dst, G);
  assert.ok(li.sport >= 61000, "the identifier on the LAN is Pg");
  assert.equal(server.handlePacket(lan), Verdict.MODIFIED);
  const wan = parsed(lan);
  assert.equal(wan.dst, P1);
  const pong = buildIcmpEcho({ src: P1, dst: wan.src, id: wan.sport, seq: 1, type: 0 });
  assert.equal(server.handlePacket(pong), Verdict.MODIFIED);
  assert.equal(h1.d.handlePacket(pong, 2, false), Verdict.MODIFIED);
  const back = parsed(pong);
  assert.deepEqual([back.src, back.dst, back.dport], [P1, H1, 0x4242]);
  assert.ok(verifyL4Checksum(pong));
  // Time exceeded from a router, about the echo request as it left the gateway.
  const router = ip("203.0.113.254");
  const err = buildIcmpError({
    src: router,
    dst: wan.src,
    type: 11,
    code: 0,
    quoted: lan.subarray(0, 28),
  });
  assert.equal(server.handlePacket(err), Verdict.MODIFIED);
  assert.equal(h1.d.handlePacket(err, 3, false), Verdict.MODIFIED);
  const e = parsed(err);
  assert.deepEqual([e.src, e.dst, e.innerSrc, e.innerSport, e.innerDst], [
    router,
    H1,
    H1,
    0x4242,
    P1,
  ]);
  assert.ok(verifyIpChecksum(err) && verifyL4Checksum(err));
});

Deno.test("driver: TCP errors from outside reach the app with the original endpoints quoted", async () => {
  const { server, h1 } = rig();
  const syn = buildTcp({ src: H1, sport: 45000, dst: P1, dport: 80 });
  assert.equal(h1.d.handlePacket(syn, 1, true), Verdict.MODIFIED);
  await settle();
  const lan = syn.slice();
  assert.equal(server.handlePacket(lan), Verdict.MODIFIED);
  const unreach = buildIcmpError({
    src: P1,
    dst: R1,
    type: 3,
    code: 3,
    quoted: lan.subarray(0, 28),
  });
  assert.equal(server.handlePacket(unreach), Verdict.MODIFIED);
  assert.equal(h1.d.handlePacket(unreach, 2, false), Verdict.MODIFIED);
  const e = parsed(unreach);
  assert.deepEqual([e.innerSrc, e.innerSport, e.innerDst, e.innerDport], [H1, 45000, P1, 80]);
});

Deno.test("driver: busy sessions are renewed, idle ones released, and the server's table follows", async () => {
  let now = 1_000_000;
  const clock = () => now;
  const { server, h1 } = rig({ now: clock });
  await ask(h1.d, "10.0.0.11:40000", "198.51.100.10:7000", true);
  await ask(h1.d, "10.0.0.11:40001", "198.51.100.10:7000", true);
  assert.equal(server.table.size, 2);
  const lifetime = 300_000; // UDP default
  for (let t = 0; t < 3 * lifetime; t += 10_000) {
    now += 10_000;
    // Only 40000 carries traffic.
    h1.d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 1, true);
    h1.d.tick();
    server.expire();
    await settle();
  }
  assert.equal(server.table.size, 1, "the idle session is gone from the server");
  const busy = await ask(h1.d, "10.0.0.11:40000", "198.51.100.10:7000");
  assert.equal(busy.result, "ok", "the busy one lives on past three lifetimes");
  const idle = await ask(h1.d, "10.0.0.11:40001", "198.51.100.10:7000");
  assert.equal(idle.result, "no-session");
  const st = h1.d.stats() as Record<string, number>;
  assert.ok(st.renewed! >= 3, `renewed ${st.renewed} times`);
  assert.equal(st.released, 1);
});

Deno.test("driver: a server restart (new epoch) makes the driver reserve its sessions again", async () => {
  const { h1 } = rig();
  await ask(h1.d, "10.0.0.11:40000", "198.51.100.10:7000", true);
  // A new server without state behind the same pipe.
  const fresh = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, epoch: 99 });
  h1.pipe.server = fresh;
  await ask(h1.d, "10.0.0.11:40001", "198.51.100.10:7000", true);
  await settle();
  await settle();
  assert.equal(fresh.table.size, 2, "both sessions exist on the restarted server");
  assert.equal((h1.d.stats() as Record<string, number>).epochChanges, 1);
});

Deno.test("driver: a TCP session closed by FIN both ways (or RST) is released after RFC 5382's 4 min transitory time", async () => {
  let now = 2_000_000;
  const { server, h1 } = rig({ now: () => now });
  const syn = buildTcp({ src: H1, sport: 45000, dst: P1, dport: 80 });
  h1.d.handlePacket(syn, 1, true);
  await settle();
  assert.equal(server.table.size, 1);
  const finOut = buildTcp({ src: H1, sport: 45000, dst: P1, dport: 80, flags: 0x11 });
  assert.equal(h1.d.handlePacket(finOut, 2, true), Verdict.MODIFIED);
  const pg = parsed(finOut).dport;
  const finIn = buildTcp({ src: G, sport: pg, dst: H1, dport: 45000, flags: 0x11 });
  assert.equal(h1.d.handlePacket(finIn, 3, false), Verdict.MODIFIED);
  now += 230_000;
  h1.d.tick();
  await settle();
  assert.equal(server.table.size, 1, "still lingering under 4 min");
  now += 11_000;
  h1.d.tick();
  await settle();
  assert.equal(server.table.size, 0, "released after the linger");
  // A half-closed connection (FIN one way only) is kept.
  const syn2 = buildTcp({ src: H1, sport: 45001, dst: P1, dport: 80 });
  h1.d.handlePacket(syn2, 4, true);
  await settle();
  h1.d.handlePacket(buildTcp({ src: H1, sport: 45001, dst: P1, dport: 80, flags: 0x11 }), 5, true);
  now += 20_000;
  h1.d.tick();
  await settle();
  assert.equal(server.table.size, 1, "half-closed stays");
  // An RST closes at once (after the linger).
  h1.d.handlePacket(buildTcp({ src: H1, sport: 45001, dst: P1, dport: 80, flags: 0x04 }), 6, true);
  now += 241_000;
  h1.d.tick();
  await settle();
  assert.equal(server.table.size, 0);
});

Deno.test("driver: a refusal that may pass (quota) is asked again while the application keeps sending", async () => {
  let now = 3_000_000;
  const { server, h1 } = rig({ now: () => now, quota: 1 });
  await ask(h1.d, "10.0.0.11:40000", "198.51.100.10:7000", true);
  const send = () =>
    h1.d.handlePacket(buildUdp({ src: H1, sport: 40001, dst: P1, dport: 7000 }), 9, true);
  assert.equal(send(), Verdict.MODIFIED, "proposed and let go");
  await settle();
  assert.equal(send(), Verdict.DROP, "refused: quota");
  // The first session goes away; the app never stops sending.
  server.table.release(17, H1, 40000, P1, 7000);
  for (let i = 0; i < 7; i++) {
    now += 1000;
    send();
    h1.d.tick();
  }
  assert.equal(send(), Verdict.MODIFIED, "asked again, proposed again");
  await settle();
  assert.equal(send(), Verdict.MODIFIED);
  assert.equal([...h1.d.sessions()].find((s) => s.pa === 40001)?.state, 1, "granted");
});

Deno.test("driver: an idle established TCP connection keeps its mapping for RFC 5382's 2 h 4 min", async () => {
  let now = 4_000_000;
  const { server, h1 } = rig({ now: () => now });
  h1.d.handlePacket(buildTcp({ src: H1, sport: 45000, dst: P1, dport: 22 }), 1, true);
  await settle();
  const step = 60_000;
  for (let t = 0; t < 7380_000; t += step) {
    now += step;
    h1.d.tick();
    server.expire();
    await settle();
  }
  assert.equal(server.table.size, 1, "still mapped after 2 h 3 min of silence");
  for (let t = 0; t < 300_000; t += step) {
    now += step;
    h1.d.tick();
    server.expire();
    await settle();
  }
  assert.equal(server.table.size, 0, "released once past 2 h 4 min");
});

Deno.test("driver: learns the server's cookie once, retries transparently when told COOKIE_REQUIRED, and is not starved by forgeries", async () => {
  let now = 7_000_000;
  const { server, h1 } = rig({ now: () => now });
  const send = async (pa: number) => {
    assert.equal(
      h1.d.handlePacket(buildUdp({ src: H1, sport: pa, dst: P1, dport: 7000 }), pa, true),
      Verdict.MODIFIED,
    );
    await settle();
    return h1.pipe.sent.slice(-1)[0]!;
  };
  await send(40000);
  assert.deepEqual(h1.pipe.sent.map((r) => hasCookie(r.cookie)), [false, true], "one handshake");
  await send(40001);
  assert.equal(h1.pipe.sent.length, 3, "later requests carry the cookie at once: no extra trip");
  // Someone floods the server in h1's name without the cookie...
  const forged = encodeRequest({ ...h1.pipe.sent[0]!, internalPort: 50000, lifetime: 86400 });
  for (let i = 0; i < 1000; i++) server.handleControl(forged, H1);
  // ...h1's next reservation is still served, in one request.
  await send(40002);
  assert.equal(h1.pipe.sent.length, 4);
  assert.equal(server.table.size, 3);
  // After the secret has rotated twice, one request is refused for its cookie and retried.
  now += 2 * COOKIE_ROTATE_MS;
  await send(40003);
  assert.equal(h1.pipe.sent.length, 6);
  assert.equal(server.table.size, 4);
  const stats = h1.d.stats() as { control: { cookieRetries: number }; refused: number };
  assert.equal(stats.control.cookieRetries, 2);
  assert.equal(stats.refused, 0, "the application never saw a refusal");
});

Deno.test("driver: an idle ICMP query mapping lives at least 60 s and an idle UDP one 2 min (RFC 5508 REQ-2, RFC 4787 REQ-5)", async () => {
  let now = 3_000_000;
  const { server, h1 } = rig({ now: () => now });
  h1.d.handlePacket(buildIcmpEcho({ src: H1, dst: P1, id: 777, seq: 1, type: 8 }), 1, true);
  h1.d.handlePacket(buildUdp({ src: H1, sport: 46000, dst: P1, dport: 53 }), 2, true);
  await settle();
  assert.equal(server.table.size, 2);
  const alive = async (secs: number) => {
    for (let t = 0; t < secs; t++) {
      now += 1000;
      h1.d.tick();
      server.expire();
      await settle();
    }
    return server.table.size;
  };
  assert.equal(await alive(59), 2, "ICMP idle 59 s: kept");
  assert.equal(await alive(61), 1, "ICMP released after 60 s or more idle; UDP kept at 120 s");
  assert.equal(await alive(200), 0, "UDP released after more than 2 min idle");
});
