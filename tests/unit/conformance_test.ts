/**
 * Conformance to the behavioural NAT RFCs (RFC 4787, 5382, 5508, 6888, 7857)
 * that can be shown without root: the session table's allocation policy
 * (mapping, pooling, port hold) and the lifetimes, with an injected clock.
 * docs/conformance.md maps every requirement to these tests and to
 * tests/root/conformance_root_test.ts.
 */

import assert from "node:assert/strict";
import { Result } from "../../src/control/result.ts";
import { type ReserveRequest, SessionTable } from "../../src/table/table.ts";
import { DriverCore } from "../../src/driver/core.ts";
import { ServerCore } from "../../src/server/core.ts";
import { FakeDriverDataPath } from "../../src/datapath/fake.ts";
import { buildIcmpError, buildTcp, buildUdp } from "../../testing/packets.ts";
import { Verdict } from "../../src/wire/meta.ts";
import {
  driverCfg,
  FakePacketIO,
  G,
  H1,
  LAN,
  P1,
  Pipe,
  R1,
  serverCfg,
  settle,
} from "../../testing/fixtures.ts";

const UDP = 17;
const TCP = 6;
const ICMP = 1;
const RA = 0xc6336401; // 198.51.100.1
const RB = 0xc6336402;
const X1 = 0xcb007107; // 203.0.113.7
const X2 = 0xcb007108;
const A1 = 0x0a000002; // 10.0.0.2

function req(over: Partial<ReserveRequest> & { a: number }): ReserveRequest {
  return { proto: UDP, pa: 5060, x: X1, px: 5060, replaceable: false, lifetime: 0, ...over };
}

/** A host other than `a` whose first session lands on the same pool address as `a`'s. */
function neighbourOf(a: number, pool: number[]): number {
  const probe = (h: number) => {
    const t = new SessionTable({ pool });
    return t.reserve(req({ a: h, pa: 7 }), 0).r;
  };
  const home = probe(a);
  for (let h = a + 1;; h++) if (probe(h) === home) return h;
}

Deno.test("RFC 4787 REQ-1, RFC 5382 REQ-1, RFC 5508 REQ-1a: one internal endpoint keeps one public pair toward every remote, UDP, TCP and ICMP, replaceable or fixed", () => {
  const t = new SessionTable({ pool: [RA, RB] });
  for (const proto of [UDP, TCP, ICMP]) {
    for (const replaceable of [true, false]) {
      const pa = replaceable ? 40000 : 5060;
      const px = (p: number) => proto === ICMP ? 0 : p;
      const first = t.reserve(req({ a: A1, proto, pa, x: X1, px: px(3478), replaceable }), 0);
      assert.equal(first.result, Result.OK);
      for (const [x, p] of [[X1, 3479], [X2, 3478], [X2, 3479]] as const) {
        const g = t.reserve(req({ a: A1, proto, pa, x, px: px(p), replaceable }), 0);
        if (proto === ICMP && x === X1) {
          // ICMP has no remote port: the same remote is the same session.
          assert.equal(g.session, first.session);
          continue;
        }
        assert.equal(g.result, Result.OK);
        assert.deepEqual([g.r, g.p], [first.r, first.p], `proto ${proto} toward ${x}:${p}`);
        assert.notEqual(g.session, first.session, "a session per remote (filtering)");
      }
    }
  }
});

Deno.test("RFC 4787 REQ-3, RFC 5382 REQ-7: no port overloading: R:p toward one X:px is one session; only fixed ports share R:p, toward different remotes", () => {
  const t = new SessionTable({ pool: [RA] });
  // Two replaceable requests for the same port toward the same remote: different R:p.
  const a = t.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  const b = t.reserve(req({ a: A1 + 1, pa: 40000, replaceable: true }), 0);
  assert.notDeepEqual([a.r, a.p], [b.r, b.p]);
  assert.equal(b.shared, false);
  // A fixed port from another host toward the same remote on the same R: refused, never overloaded.
  t.reserve(req({ a: A1 + 2, pa: 500 }), 0);
  assert.equal(t.reserve(req({ a: A1 + 3, pa: 500 }), 0).result, Result.CONFLICT);
  // Toward another remote it is shared (dpm's claims 8-10), told apart by X:px.
  const s = t.reserve(req({ a: A1 + 3, pa: 500, x: X2 }), 0);
  assert.deepEqual([s.result, s.p, s.shared], [Result.OK, 500, true]);
  assert.notEqual(t.lookupPublic(UDP, RA, 500, X1, 5060), t.lookupPublic(UDP, RA, 500, X2, 5060));
});

Deno.test("RFC 4787 REQ-3a: replacement ports come from 1024-65535 by default; a preserved port keeps its own range", () => {
  const t = new SessionTable({ pool: [RA] });
  t.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  for (let h = 1; h <= 50; h++) {
    const g = t.reserve(req({ a: A1 + h, pa: 40000, replaceable: true }), 0);
    assert.ok(g.replaced && g.p >= 1024 && g.p <= 65535, `port ${g.p}`);
  }
  const low = t.reserve(req({ a: A1 + 99, pa: 500 }), 0);
  assert.deepEqual([low.p, low.replaced], [500, false]);
});

Deno.test("RFC 6888 REQ-2, RFC 4787 REQ-2, RFC 7857 section 5: paired pooling: a host's sessions of every protocol use one public address while it has any", () => {
  const pool = [RA, RB];
  const h2 = neighbourOf(A1, pool);
  const t = new SessionTable({ pool });
  const first = t.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  const home = first.r;
  assert.equal(t.pairedAddress(A1), home);
  // h2 (same home address) takes 5060 and 40001 there.
  assert.equal(t.reserve(req({ a: h2, pa: 5060, x: X1 }), 0).r, home);
  assert.equal(t.reserve(req({ a: h2, pa: 40001, x: X1, replaceable: true }), 0).r, home);
  // Port preservation alone would now move A1 to the other address; pairing keeps it home:
  // a fixed port toward another remote is shared there,
  const fixed = t.reserve(req({ a: A1, pa: 5060, x: X2 }), 0);
  assert.deepEqual([fixed.result, fixed.r, fixed.p, fixed.shared], [Result.OK, home, 5060, true]);
  // a replaceable port is replaced there,
  const rep = t.reserve(req({ a: A1, pa: 40001, x: X1, replaceable: true }), 0);
  assert.deepEqual([rep.result, rep.r, rep.replaced], [Result.OK, home, true]);
  // and a fixed port toward the very remote that holds it there is refused, not moved.
  assert.equal(t.reserve(req({ a: A1, pa: 5060, x: X1 }), 0).result, Result.CONFLICT);
  // Every protocol (RFC 7857 section 5: paired across protocols).
  assert.equal(t.reserve(req({ a: A1, proto: TCP, pa: 45000, replaceable: true }), 0).r, home);
  assert.equal(t.reserve(req({ a: A1, proto: ICMP, pa: 77, px: 0, replaceable: true }), 0).r, home);
  for (const rec of t.entries()) if (rec.a === A1) assert.equal(rec.r, home);
  // Once the host holds nothing it is unpaired: the next session may use any address.
  for (const rec of [...t.entries()].filter((r) => r.a === A1)) {
    assert.equal(t.release(rec.proto, rec.a, rec.pa, rec.x, rec.px, 0), Result.OK);
  }
  assert.equal(t.pairedAddress(A1), -1);
  const moved = t.reserve(req({ a: A1, pa: 5060, x: X1 }), 0);
  assert.deepEqual([moved.result, moved.p, moved.shared], [Result.OK, 5060, false]);
  assert.notEqual(moved.r, home, "preserved on the other address");
  assert.equal(t.pairedAddress(A1), moved.r);

  // pooling "arbitrary": the old behaviour, port preservation across addresses.
  const u = new SessionTable({ pool, pooling: "arbitrary" });
  const f = u.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  u.reserve(req({ a: h2, pa: 5060, x: X1 }), 0);
  const g = u.reserve(req({ a: A1, pa: 5060, x: X1 }), 0);
  assert.deepEqual([g.result, g.p], [Result.OK, 5060]);
  assert.notEqual(g.r, f.r);
  assert.equal(u.pairedAddress(A1), -1);
  assert.throws(() => new SessionTable({ pool, pooling: "x" as "paired" }), RangeError);
});

Deno.test("RFC 6888 REQ-8: a freed public port is held 120 s from other hosts; its own host may have it back at once", () => {
  const t = new SessionTable({ pool: [RA] });
  const A2 = A1 + 1;
  const A3 = A1 + 2;
  const g = t.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  assert.equal(g.p, 40000);
  assert.equal(t.release(UDP, A1, 40000, X1, 5060, 1_000), Result.OK);
  assert.equal(t.heldFor(UDP, RA, 40000), A1);
  assert.equal(t.heldPorts, 1);
  // Another host asking for the same port gets another one (not the held one).
  const other = t.reserve(req({ a: A2, pa: 40000, replaceable: true }), 2_000);
  assert.deepEqual([other.result, other.replaced], [Result.OK, true]);
  assert.notEqual(other.p, 40000);
  // The host that freed it has it back at once (toward any remote).
  const back = t.reserve(req({ a: A1, pa: 40000, x: X2, replaceable: true }), 3_000);
  assert.deepEqual([back.p, back.replaced], [40000, false]);
  assert.equal(t.heldFor(UDP, RA, 40000), -1, "in use again: not held");
  // Expiry holds too; the hold lasts 120 s from the expiry.
  const end = t.expiresAt(back.session);
  assert.equal(t.expire(end), 2, "A1's session and A2's, reserved a second earlier");
  assert.equal(t.heldFor(UDP, RA, 40000), A1);
  const early = t.reserve(req({ a: A3, pa: 40000, replaceable: true }), end + 119_999);
  assert.notEqual(early.p, 40000);
  t.release(UDP, A3, 40000, X1, 5060, end + 119_999);
  const late = t.reserve(req({ a: A3, pa: 40000, x: X2, replaceable: true }), end + 120_000);
  assert.deepEqual([late.p, late.replaced], [40000, false], "free for anyone after 120 s");

  // A release without a clock starts its hold at the next clocked call.
  const u = new SessionTable({ pool: [RA] });
  u.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  u.release(UDP, A1, 40000, X1, 5060);
  u.expire(50_000);
  assert.notEqual(u.reserve(req({ a: A2, pa: 40000, replaceable: true }), 169_999).p, 40000);
  assert.equal(u.reserve(req({ a: A3, pa: 40000, replaceable: true }), 170_000).p, 40000);

  // Replacement ports never come from held ones: a tiny range runs out while its ports are held.
  const v = new SessionTable({ pool: [RA], portMin: 2000, portMax: 2001 });
  v.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  const r1 = v.reserve(req({ a: A2, pa: 40000, replaceable: true }), 0);
  const r2 = v.reserve(req({ a: A3, pa: 40000, replaceable: true }), 0);
  assert.deepEqual([r1.p, r2.p].sort(), [2000, 2001]);
  v.release(UDP, A2, 40000, X1, 5060, 10_000);
  const full = v.reserve(req({ a: A1 + 9, pa: 40000, replaceable: true }), 10_000);
  assert.equal(full.result, Result.NO_RESOURCES);
  assert.equal(v.reserve(req({ a: A1 + 9, pa: 40000, replaceable: true }), 130_000).p, r1.p);

  // A fixed port with nowhere else to go takes a held port (exception c: the
  // filtering is address-and-port dependent); it is not "shared".
  const w = new SessionTable({ pool: [RA] });
  w.reserve(req({ a: A1, pa: 500 }), 0);
  w.release(UDP, A1, 500, X1, 5060, 0);
  const fixed = w.reserve(req({ a: A2, pa: 500, x: X2 }), 1_000);
  assert.deepEqual([fixed.result, fixed.p, fixed.shared], [Result.OK, 500, false]);

  // portHold 0: no hold.
  const z = new SessionTable({ pool: [RA], portHold: 0 });
  z.reserve(req({ a: A1, pa: 40000, replaceable: true }), 0);
  z.release(UDP, A1, 40000, X1, 5060, 0);
  assert.equal(z.heldPorts, 0);
  assert.equal(z.reserve(req({ a: A2, pa: 40000, replaceable: true }), 0).p, 40000);
});

Deno.test("RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2: default leases with an injected clock: UDP 300 s, TCP 7440 s, ICMP 60 s, kept to their end", () => {
  const leases: [number, number][] = [[UDP, 300], [TCP, 7440], [ICMP, 60]];
  for (const [proto, secs] of leases) {
    const t = new SessionTable({ pool: [RA] });
    const g = t.reserve(req({ a: A1, proto, pa: 40000, px: proto === ICMP ? 0 : 53 }), 0);
    assert.equal(g.lifetime, secs);
    assert.equal(t.expire(secs * 1000 - 1), 0, `proto ${proto} kept until its lease ends`);
    assert.equal(t.expire(secs * 1000), 1);
  }
});

/** A server core and one driver core joined by real encoded control messages (tests/unit/driver_core_test.ts). */
function rig(now: () => number) {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now });
  const d = new DriverCore(driverCfg({ fixedPorts: [] }), new Pipe(server, H1), {
    lan: LAN,
    ephemeral: [32768, 60999],
    now,
  });
  d.attach(new FakeDriverDataPath(false), new FakePacketIO());
  return { server, d };
}

Deno.test("RFC 4787 REQ-5: an idle UDP mapping lives at least 2 minutes (the driver releases it after 200 s idle)", async () => {
  let now = 1_000_000;
  const { server, d } = rig(() => now);
  d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 1, true);
  await settle();
  assert.equal(server.table.size, 1);
  for (let t = 0; t < 199_000; t += 1000) {
    now += 1000;
    d.tick();
    server.expire();
    await settle();
  }
  assert.equal(server.table.size, 1, "still mapped after 199 s of silence");
  for (let t = 0; t < 5000; t += 1000) {
    now += 1000;
    d.tick();
    server.expire();
    await settle();
  }
  assert.equal(server.table.size, 0, "released once idle for 2/3 of its 300 s lease");
});

Deno.test("RFC 4787 REQ-6: outbound traffic refreshes a mapping, and so does inbound traffic (REQ-6a)", async () => {
  let now = 5_000_000;
  const { server, d } = rig(() => now);
  d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 1, true);
  d.handlePacket(buildUdp({ src: H1, sport: 40001, dst: P1, dport: 7000 }), 2, true);
  await settle();
  const pgOf = (pa: number) => server.table.pg(server.table.lookupIdentity(UDP, H1, pa, P1, 7000));
  const pgIn = pgOf(40001);
  // For 15 minutes (three leases) 40000 only sends, 40001 only receives.
  for (let t = 0; t < 900_000; t += 10_000) {
    now += 10_000;
    d.handlePacket(buildUdp({ src: H1, sport: 40000, dst: P1, dport: 7000 }), 3, true);
    d.handlePacket(buildUdp({ src: G, sport: pgIn, dst: H1, dport: 40001 }), 4, false);
    d.tick();
    server.expire();
    await settle();
  }
  assert.ok(server.table.lookupIdentity(UDP, H1, 40000, P1, 7000) >= 0, "outbound refresh");
  assert.ok(server.table.lookupIdentity(UDP, H1, 40001, P1, 7000) >= 0, "inbound refresh");
});

Deno.test("RFC 4787 REQ-12, RFC 5382 REQ-10, RFC 5508 REQ-6: an ICMP error from outside neither ends nor refreshes the session it is about; RFC 5382 REQ-4: an unsolicited SYN gets no answer", () => {
  const now = 7_000_000;
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: () => now });
  const g = server.table.reserve({
    proto: TCP,
    a: H1,
    pa: 45000,
    x: P1,
    px: 80,
    replaceable: true,
    lifetime: 0,
  }, now);
  const exp = server.table.expiresAt(g.session);
  const sent = buildTcp({ src: g.r, sport: g.p, dst: P1, dport: 80 });
  for (const [type, code] of [[3, 1], [3, 3], [11, 0], [12, 0]]) {
    const err = buildIcmpError({
      src: P1,
      dst: g.r,
      type: type!,
      code: code!,
      quoted: sent.subarray(0, 28),
    });
    assert.equal(
      server.handlePacket(err),
      Verdict.MODIFIED,
      `type ${type} code ${code} translated`,
    );
  }
  assert.ok(server.table.isLive(g.session), "the session lives on");
  assert.equal(server.table.expiresAt(g.session), exp, "and its lease is not refreshed");
  // An unsolicited SYN from a peer without a session: dropped, nothing sent back.
  const syn = buildTcp({ src: P1, sport: 80, dst: g.r, dport: 46000, flags: 0x02 });
  assert.equal(server.handlePacket(syn), Verdict.DROP);
  const other = buildTcp({ src: P1, sport: 81, dst: g.r, dport: g.p, flags: 0x02 });
  assert.equal(server.handlePacket(other), Verdict.DROP, "another port of the peer: filtered");
});
