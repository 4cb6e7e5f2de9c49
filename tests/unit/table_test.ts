/**
 * Tests of the session table and its allocation policy (src/table/: the
 * facade table.ts, the policy allocate.ts), named after the claims they
 * show. The last test runs random operation sequences against a slow,
 * obvious model (an array of plain objects).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { Result } from "../../src/control/result.ts";
import {
  Owner,
  type ReserveRequest,
  SessionTable,
  type TableOptions,
} from "../../src/table/table.ts";

const UDP = 17;
const TCP = 6;
const ICMP = 1;
const R1 = 0xc6336401; // 198.51.100.1
const R2 = 0xc6336402;
const H1 = 0x0a000002; // 10.0.0.2
const H2 = 0x0a000003;
const H3 = 0x0a000004;
const X1 = 0xcb007107; // 203.0.113.7
const X2 = 0xcb007108;
const X3 = 0xcb007109;

function req(over: Partial<ReserveRequest> & { a: number }): ReserveRequest {
  return { proto: UDP, pa: 5060, x: X1, px: 5060, replaceable: false, lifetime: 0, ...over };
}

/** A scripted random source: returns the queued values in order, then fails loudly. */
function script(values: number[]): () => number {
  let i = 0;
  return () => {
    const v = values[i++];
    if (v === undefined) throw new Error(`script exhausted after ${values.length} draws`);
    return v;
  };
}

Deno.test("claim 7: one to one: lookupLan and lookupPublic find the same session, release removes both", () => {
  const t = new SessionTable({ pool: [R1] });
  const g = t.reserve(req({ a: H1, pa: 40000, px: 53, replaceable: true }), 0);
  assert.equal(g.result, Result.OK);
  assert.equal(t.size, 1);
  const s = g.session;
  assert.equal(t.lookupLan(UDP, H1, g.pg), s);
  assert.equal(t.lookupPublic(UDP, g.r, g.p, X1, 53), s);
  assert.equal(t.lookupIdentity(UDP, H1, 40000, X1, 53), s);
  // The slot's fields describe both sides.
  assert.deepEqual(
    [t.proto(s), t.a(s), t.pa(s), t.x(s), t.px(s), t.r(s), t.p(s), t.pg(s)],
    [UDP, H1, 40000, X1, 53, R1, 40000, g.pg],
  );
  assert.ok(g.pg >= 61000 && g.pg <= 65535);
  // Other protocols, hosts, peers and ports do not match.
  assert.equal(t.lookupLan(TCP, H1, g.pg), -1);
  assert.equal(t.lookupLan(UDP, H2, g.pg), -1);
  assert.equal(t.lookupPublic(UDP, g.r, g.p, X1, 54), -1);
  assert.equal(t.lookupPublic(UDP, g.r, g.p, X2, 53), -1);
  assert.equal(t.lookupPublic(TCP, g.r, g.p, X1, 53), -1);
  t.count(s, true);
  t.count(s, true);
  t.count(s, false);
  assert.equal(t.packetsOut(s), 2);
  assert.equal(t.packetsIn(s), 1);

  assert.equal(t.release(UDP, H1, 40000, X1, 53), Result.OK);
  assert.equal(t.size, 0);
  assert.equal(t.lookupLan(UDP, H1, g.pg), -1);
  assert.equal(t.lookupPublic(UDP, g.r, g.p, X1, 53), -1);
  assert.equal(t.portUsers(UDP, R1, 40000), 0);
  assert.equal(t.release(UDP, H1, 40000, X1, 53), Result.NO_SUCH_SESSION);
});

Deno.test("port preservation: a free internal port is kept, spread over the pool", () => {
  const t = new SessionTable({ pool: [R1, R2] });
  const g1 = t.reserve(req({ a: H1, pa: 500 }), 0);
  assert.equal(g1.result, Result.OK);
  assert.equal(g1.p, 500);
  assert.equal(g1.replaced, false);
  assert.equal(g1.shared, false);
  // Same fixed port from another host: the other address, still port 500, exclusive.
  const g2 = t.reserve(req({ a: H2, pa: 500, x: X2 }), 0);
  assert.equal(g2.result, Result.OK);
  assert.equal(g2.p, 500);
  assert.notEqual(g2.r, g1.r);
  assert.equal(g2.shared, false);
  // A replaceable port is preserved too when it is free.
  const g3 = t.reserve(req({ a: H3, pa: 40001, replaceable: true }), 0);
  assert.equal(g3.p, 40001);
  assert.equal(g3.replaced, false);
});

Deno.test("claim 23: the same replaceable port from two hosts gets different public ports", () => {
  const t = new SessionTable({ pool: [R1] });
  const g1 = t.reserve(req({ a: H1, pa: 40000, replaceable: true }), 0);
  const g2 = t.reserve(req({ a: H2, pa: 40000, replaceable: true }), 0);
  assert.equal(g1.result, Result.OK);
  assert.equal(g2.result, Result.OK);
  assert.equal(g1.p, 40000);
  assert.notEqual(g2.p, 40000);
  assert.equal(g2.replaced, true);
  assert.equal(g2.shared, false);
  assert.ok(g2.p >= 1024 && g2.p <= 65535);
  // Both talk to the same X1:5060 through R1: the replaced port tells them apart.
  assert.equal(t.lookupPublic(UDP, R1, g1.p, X1, 5060), g1.session);
  assert.equal(t.lookupPublic(UDP, R1, g2.p, X1, 5060), g2.session);
  assert.equal(t.replaced(g2.session), true);
});

Deno.test("claim 23: the replacement port follows the injected random source", () => {
  const t = new SessionTable({
    pool: [R1],
    portMin: 2000,
    portMax: 2999,
    random: script([
      0, // H1's Pg: 61000
      0.25, // H2's port: 2000 + 250
      0.5, // H2's Pg: 61000 + 2268
      0.25, // H3's first probe: 2250 again, taken
      0.75, // H3's second probe: 2750
      0, // H3's Pg
    ]),
  });
  const g1 = t.reserve(req({ a: H1, pa: 40000, replaceable: true }), 0);
  assert.deepEqual([g1.p, g1.pg], [40000, 61000]);
  const g2 = t.reserve(req({ a: H2, pa: 40000, replaceable: true }), 0);
  assert.deepEqual([g2.p, g2.pg, g2.replaced], [2250, 63268, true]);
  const g3 = t.reserve(req({ a: H3, pa: 40000, replaceable: true }), 0);
  assert.deepEqual([g3.p, g3.pg, g3.replaced], [2750, 61000, true]);
});

Deno.test("claim 23: with Math.random, 100 replacement ports are distinct and not an arithmetic progression", () => {
  const t = new SessionTable({ pool: [R1] });
  const ports: number[] = [];
  for (let h = 0; h < 101; h++) {
    const g = t.reserve(req({ a: H1 + h, pa: 40000, replaceable: true }), 0);
    assert.equal(g.result, Result.OK);
    if (h > 0) ports.push(g.p);
  }
  assert.equal(new Set(ports).size, 100);
  assert.ok(!ports.includes(40000));
  const steps = new Set(ports.slice(1).map((p, i) => p - ports[i]!));
  assert.ok(steps.size > 1, `ports form an arithmetic progression: ${ports.join(",")}`);
});

Deno.test("claims 8-10, 22: one fixed port from two hosts shares one R, told apart by the remote", () => {
  const t = new SessionTable({ pool: [R1] });
  const g1 = t.reserve(req({ a: H1, pa: 5060, x: X1 }), 0);
  const g2 = t.reserve(req({ a: H2, pa: 5060, x: X2 }), 0);
  assert.equal(g1.result, Result.OK);
  assert.equal(g2.result, Result.OK);
  assert.deepEqual([g1.r, g1.p, g1.shared], [R1, 5060, false]);
  assert.deepEqual([g2.r, g2.p, g2.shared, g2.replaced], [R1, 5060, true, false]);
  assert.equal(t.portUsers(UDP, R1, 5060), 2);
  // Inbound packets to R1:5060 are told apart by X:px (claim 10).
  assert.equal(t.lookupPublic(UDP, R1, 5060, X1, 5060), g1.session);
  assert.equal(t.lookupPublic(UDP, R1, 5060, X2, 5060), g2.session);
  // A peer with no session is filtered (address-and-port-dependent filtering).
  assert.equal(t.lookupPublic(UDP, R1, 5060, X3, 5060), -1);
  assert.equal(t.lookupPublic(UDP, R1, 5060, X1, 5061), -1);
});

Deno.test("claims 8-10, 22: a fixed port toward the same remote: CONFLICT on one address, the second address on two", () => {
  const one = new SessionTable({ pool: [R1] });
  assert.equal(one.reserve(req({ a: H1 }), 0).result, Result.OK);
  const c = one.reserve(req({ a: H2 }), 0);
  assert.equal(c.result, Result.CONFLICT);
  assert.equal(c.session, -1);
  assert.equal(one.size, 1);

  const two = new SessionTable({ pool: [R1, R2] });
  const g1 = two.reserve(req({ a: H1 }), 0);
  // H2 asks for the same fixed port toward the same remote: only the second
  // address can carry it (here by port preservation, since 5060 is free there).
  const g2 = two.reserve(req({ a: H2 }), 0);
  assert.equal(g2.result, Result.OK);
  assert.notEqual(g2.r, g1.r);
  assert.equal(g2.p, 5060);
  const g3 = two.reserve(req({ a: H3 }), 0);
  assert.equal(g3.result, Result.CONFLICT);
  const g4 = two.reserve(req({ a: H3, x: X2 }), 0);
  assert.equal(g4.result, Result.OK);
  assert.equal(g4.shared, true);
});

Deno.test("claim 8: a replaceable owner and a fixed requester share; two replaceable requests do not", () => {
  const t = new SessionTable({ pool: [R1] });
  const owner = t.reserve(req({ a: H1, x: X1, replaceable: true }), 0);
  assert.deepEqual([owner.p, owner.replaced], [5060, false]);
  const fixed = t.reserve(req({ a: H2, x: X2 }), 0);
  assert.deepEqual([fixed.result, fixed.p, fixed.shared], [Result.OK, 5060, true]);
  const other = t.reserve(req({ a: H3, x: X3, replaceable: true }), 0);
  assert.equal(other.result, Result.OK);
  assert.notEqual(other.p, 5060);
  assert.deepEqual([other.replaced, other.shared], [true, false]);
  assert.equal(t.portUsers(UDP, R1, other.p), 1);
});

Deno.test("RFC 4787 REQ-1: one a:pa toward two remotes keeps R:p, with a different Pg", () => {
  const t = new SessionTable({ pool: [R1, R2] });
  const g1 = t.reserve(req({ a: H1, pa: 40000, x: X1, px: 3478, replaceable: true }), 0);
  const g2 = t.reserve(req({ a: H1, pa: 40000, x: X2, px: 3478, replaceable: true }), 0);
  assert.equal(g2.result, Result.OK);
  assert.deepEqual([g2.r, g2.p], [g1.r, g1.p]);
  assert.notEqual(g2.pg, g1.pg);
  assert.notEqual(g2.session, g1.session);
  assert.equal(t.lookupEndpoint(UDP, H1, 40000), g1.session);
  // A replaced mapping is kept too.
  const t2 = new SessionTable({ pool: [R1] });
  t2.reserve(req({ a: H2, pa: 40000, replaceable: true }), 0);
  const m1 = t2.reserve(req({ a: H1, pa: 40000, x: X1, replaceable: true }), 0);
  const m2 = t2.reserve(req({ a: H1, pa: 40000, x: X2, replaceable: true }), 0);
  assert.equal(m1.replaced, true);
  assert.deepEqual([m2.p, m2.replaced], [m1.p, true]);
  // Releasing the first session keeps the endpoint's mapping through the second.
  assert.equal(t2.release(UDP, H1, 40000, X1, 5060), Result.OK);
  assert.equal(t2.lookupEndpoint(UDP, H1, 40000), m2.session);
  const m3 = t2.reserve(req({ a: H1, pa: 40000, x: X3, replaceable: true }), 0);
  assert.equal(m3.p, m1.p);
});

Deno.test("idempotence: a retransmitted reserve gets the same answer and a fresh lifetime", () => {
  const t = new SessionTable({ pool: [R1] });
  const g1 = t.reserve(req({ a: H1, pa: 40000, replaceable: true }), 1000);
  const g2 = t.reserve(req({ a: H1, pa: 40000, replaceable: true }), 5000);
  assert.deepEqual(
    [g2.session, g2.r, g2.p, g2.pg, g2.lifetime],
    [g1.session, g1.r, g1.p, g1.pg, g1.lifetime],
  );
  assert.equal(t.size, 1);
  assert.equal(t.expiresAt(g1.session), 5000 + 300_000);
});

Deno.test("quota: maxSessionsPerHost caps one host, not the others", () => {
  const t = new SessionTable({ pool: [R1], maxSessionsPerHost: 3 });
  for (let i = 0; i < 3; i++) {
    assert.equal(t.reserve(req({ a: H1, px: 1000 + i }), 0).result, Result.OK);
  }
  assert.equal(t.reserve(req({ a: H1, px: 2000, proto: TCP }), 0).result, Result.QUOTA_EXCEEDED);
  assert.equal(t.sessionsOf(H1), 3);
  // A retransmission of a held request is still answered.
  assert.equal(t.reserve(req({ a: H1, px: 1000 }), 0).result, Result.OK);
  assert.equal(t.reserve(req({ a: H2 }), 0).result, Result.OK);
  assert.equal(t.release(UDP, H1, 5060, X1, 1001), Result.OK);
  assert.equal(t.reserve(req({ a: H1, px: 2000 }), 0).result, Result.OK);
});

Deno.test("NO_RESOURCES: every replacement port of a tiny range in use", () => {
  const t = new SessionTable({ pool: [R1], portMin: 2000, portMax: 2003 });
  const got: number[] = [];
  for (let h = 0; h < 5; h++) {
    const g = t.reserve(req({ a: H1 + h, pa: 40000, replaceable: true }), 0);
    assert.equal(g.result, Result.OK);
    got.push(g.p);
  }
  assert.deepEqual(got.slice(1).sort(), [2000, 2001, 2002, 2003]);
  const full = t.reserve(req({ a: H1 + 9, pa: 40000, replaceable: true }), 0);
  assert.equal(full.result, Result.NO_RESOURCES);
  // A free internal port is still preserved.
  assert.equal(t.reserve(req({ a: H1 + 9, pa: 40001, replaceable: true }), 0).p, 40001);
  // Releasing a replaced session frees its port, for another host once its
  // hold (RFC 6888 REQ-8, 120 s) is over.
  assert.equal(t.release(UDP, H1 + 2, 40000, X1, 5060, 0), Result.OK);
  const held = t.reserve(req({ a: H1 + 9, pa: 40000, replaceable: true }), 119_999);
  assert.equal(held.result, Result.NO_RESOURCES, "still held for its last host");
  const again = t.reserve(req({ a: H1 + 9, pa: 40000, replaceable: true }), 120_000);
  assert.equal(again.result, Result.OK);
  assert.equal(again.p, got[2]);
});

Deno.test("NO_RESOURCES: a host that uses every gateway port of a protocol", () => {
  const t = new SessionTable({ pool: [R1], gatewayPortMin: 62000, gatewayPortMax: 62002 });
  const pgs = new Set<number>();
  for (let i = 0; i < 3; i++) pgs.add(t.reserve(req({ a: H1, px: 1000 + i }), 0).pg);
  assert.deepEqual([...pgs].sort(), [62000, 62001, 62002]);
  assert.equal(t.reserve(req({ a: H1, px: 2000 }), 0).result, Result.NO_RESOURCES);
  assert.equal(t.reserve(req({ a: H1, px: 2000, proto: TCP }), 0).result, Result.OK);
  assert.equal(t.reserve(req({ a: H2, px: 2000 }), 0).result, Result.OK);
});

Deno.test("requests the table refuses: protocol, malformed ports; a pool remote is hairpinning", () => {
  const t = new SessionTable({ pool: [R1] });
  assert.equal(t.reserve(req({ a: H1, proto: 47 }), 0).result, Result.UNSUPPORTED_PROTOCOL);
  const hp = t.reserve(req({ a: H2, x: R1, px: 5555 }), 0);
  assert.equal(hp.result, Result.OK);
  assert.equal(t.releaseSlot(hp.session), true);
  assert.equal(t.reserve(req({ a: H1, pa: 0 }), 0).result, Result.MALFORMED);
  assert.equal(t.reserve(req({ a: H1, px: 70000 }), 0).result, Result.MALFORMED);
  assert.equal(t.reserve(req({ a: H1, lifetime: -1 }), 0).result, Result.MALFORMED);
  // ICMP echo: identifiers, px 0.
  const g = t.reserve(req({ a: H1, proto: ICMP, pa: 0x1234, px: 0 }), 0);
  assert.equal(g.result, Result.OK);
  assert.equal(g.lifetime, 60);
  assert.equal(t.lookupPublic(ICMP, R1, 0x1234, X1, 0), g.session);
  assert.equal(t.size, 1);
  assert.throws(() => new SessionTable({ pool: [] }), RangeError);
  assert.throws(() => new SessionTable({ pool: [R1], portMin: 3000, portMax: 2000 }), RangeError);
  assert.throws(() => new SessionTable({ pool: [R1, R1] }), RangeError);
});

Deno.test("lifetimes: RFC defaults, clamping, renew, and expire(now) with an injected clock", () => {
  const t = new SessionTable({ pool: [R1] });
  const udp = t.reserve(req({ a: H1 }), 0);
  const tcp = t.reserve(req({ a: H1, proto: TCP }), 0);
  assert.ok(udp.lifetime >= 120, "RFC 4787 REQ-5"); // UDP mapping timer >= 2 min
  assert.ok(tcp.lifetime >= 7440, "RFC 5382 REQ-5"); // established TCP >= 2 h 4 min
  assert.equal(t.grantedLifetime(UDP, 1), 30);
  assert.equal(t.grantedLifetime(UDP, 10 ** 9), 86400);
  assert.equal(t.grantedLifetime(UDP, 45), 45);

  const now = 1_000_000;
  const t2 = new SessionTable({ pool: [R1], gatewayPortMin: 62000, gatewayPortMax: 62009 });
  const short = t2.reserve(req({ a: H1, px: 1, lifetime: 40 }), now); // expires now+40 s
  const long = t2.reserve(req({ a: H1, px: 2, lifetime: 100 }), now); // now+100 s
  const renewed = t2.reserve(req({ a: H2, pa: 7000, px: 3, lifetime: 40 }), now);
  assert.equal(t2.renew(UDP, H2, 7000, X1, 3, 200, now + 10_000).lifetime, 200);
  assert.equal(t2.renew(UDP, H2, 7000, X1, 4, 200, now).result, Result.NO_SUCH_SESSION);
  assert.equal(t2.expiresAt(renewed.session), now + 210_000);

  assert.equal(t2.expire(now + 39_999), 0);
  assert.equal(t2.expire(now + 40_000), 1); // exactly at expiresAt: gone
  assert.equal(t2.size, 2);
  assert.equal(t2.lookupLan(UDP, H1, short.pg), -1);
  assert.equal(t2.lookupPublic(UDP, R1, 5060, X1, 1), -1);
  assert.equal(t2.lookupIdentity(UDP, H1, 5060, X1, 2), long.session);
  assert.equal(t2.expire(now + 100_000), 1);
  assert.equal(t2.portUsers(UDP, R1, 5060), 0, "port freed");
  assert.equal(t2.sessionsOf(H1), 0);
  assert.equal(t2.size, 1);
  // The freed port and Pg are available again.
  const back = t2.reserve(req({ a: H3, px: 9 }), now + 100_000);
  assert.deepEqual([back.p, back.shared], [5060, false]);
  assert.equal(t2.expire(now + 210_000), 1);
  assert.equal(t2.lookupIdentity(UDP, H2, 7000, X1, 3), -1);
});

Deno.test("expire(now, budget) covers the whole table over several calls", () => {
  const t = new SessionTable({ pool: [R1, R2], initialCapacity: 8 });
  for (let i = 0; i < 100; i++) {
    t.reserve(req({ a: H1 + (i % 10), pa: 10000 + i, lifetime: i % 2 === 0 ? 40 : 100 }), 0);
  }
  let removed = 0;
  for (let k = 0; k < 10; k++) removed += t.expire(50_000, 10);
  assert.equal(removed, 50);
  assert.equal(t.size, 50);
  for (const rec of t.entries()) assert.equal(rec.expiresAt, 100_000);
  assert.equal(t.expire(50_000, 10), 0);
});

Deno.test("restore: records from entries() rebuild an equal table; clashes are refused", () => {
  const t = new SessionTable({ pool: [R1, R2] });
  t.reserve(req({ a: H1 }), 0);
  t.reserve(req({ a: H2, x: X2 }), 0);
  t.reserve(req({ a: H3, x: X3, pa: 5060, replaceable: true }), 0);
  t.reserve(req({ a: H3, pa: 40000, replaceable: true, lifetime: 77 }), 0);
  const s = t.lookupIdentity(UDP, H1, 5060, X1, 5060);
  t.count(s, true);
  const recs = [...t.entries()];
  assert.equal(recs.length, 4);

  const u = new SessionTable({ pool: [R1, R2] });
  for (const rec of recs) assert.equal(u.restore(rec), Result.OK);
  assert.deepEqual([...u.entries()], recs);
  for (const rec of recs) {
    const slot = u.lookupPublic(rec.proto, rec.r, rec.p, rec.x, rec.px);
    assert.equal(u.lookupLan(rec.proto, rec.a, rec.pg), slot);
  }
  assert.equal(u.restore(recs[0]!), Result.CONFLICT);
  assert.equal(u.restore({ ...recs[0]!, px: 9999 }), Result.CONFLICT, "LAN key clash");
  assert.equal(u.restore({ ...recs[0]!, r: 0x08080808, px: 9999, pg: 1 }), Result.CONFLICT);
  // Restored state is allocated around: port 5060 on H1's address is taken.
  assert.equal(u.portUsers(UDP, recs[0]!.r, 5060) >= 1, true);
});

Deno.test("map under a port policy: when the random probes miss, the scan finds the one allowed free pair; then NO_RESOURCES", () => {
  // random() === 0: every probe asks for the first allowed port, which is taken.
  const t = new SessionTable({
    pool: [R1, R2],
    portMin: 2000,
    portMax: 2100,
    pooling: "arbitrary",
    random: () => 0,
  });
  const ports = { ranges: [[2010, 2012], [2050, 2050]] as const, usable: () => true };
  // H2 and H3 take 2010-2012 on both addresses, H2 2050 on one: one allowed pair stays free.
  for (const pa of [2010, 2011, 2012]) {
    for (const a of [H2, H3]) assert.equal(t.reserve(req({ a, pa }), 0).result, Result.OK);
  }
  assert.equal(t.reserve(req({ a: H2, pa: 2050 }), 0).result, Result.OK);
  const free = [R1, R2].filter((r) => t.portUsers(UDP, r, 2050) === 0);
  assert.equal(free.length, 1);
  const m = { proto: UDP, a: H1, p: 0, r: 0, lifetime: 0, ports };
  const g = t.map({ ...m, pa: 3000 }, 0);
  assert.equal(g.result, Result.OK);
  assert.deepEqual([g.r, g.p, g.replaced], [free[0], 2050, true]);
  assert.equal(t.map({ ...m, pa: 3001 }, 0).result, Result.NO_RESOURCES);
});

Deno.test("growth: past the initial capacity every session is still found, through release", () => {
  const t = new SessionTable({ pool: [R1, R2, R1 + 7], initialCapacity: 2 });
  const grants = [];
  for (let i = 0; i < 3000; i++) {
    const g = t.reserve(req({ a: H1 + (i % 50), pa: 1024 + i, px: 1 + (i % 7) }), 0);
    assert.equal(g.result, Result.OK);
    grants.push({ i, ...g });
  }
  assert.equal(t.size, 3000);
  for (const g of grants) {
    assert.equal(t.lookupLan(UDP, H1 + (g.i % 50), g.pg), g.session);
    assert.equal(t.lookupPublic(UDP, g.r, g.p, X1, 1 + (g.i % 7)), g.session);
  }
  for (const g of grants) {
    if (g.i % 3 === 0) {
      assert.equal(t.release(UDP, H1 + (g.i % 50), 1024 + g.i, X1, 1 + (g.i % 7)), Result.OK);
    }
  }
  assert.equal(t.size, 2000);
  for (const g of grants) {
    const want = g.i % 3 === 0 ? -1 : g.session;
    assert.equal(t.lookupLan(UDP, H1 + (g.i % 50), g.pg), want);
    assert.equal(t.lookupPublic(UDP, g.r, g.p, X1, 1 + (g.i % 7)), want);
  }
});

// ---------------------------------------------------------------- model test

interface MSession {
  proto: number;
  a: number;
  pa: number;
  x: number;
  px: number;
  r: number;
  p: number;
  pg: number;
  exp: number;
  replaceable: boolean;
}

/** A freed public port held back from other hosts (RFC 6888 REQ-8). */
interface MHold {
  proto: number;
  r: number;
  p: number;
  /** Hosts it may be held for: one, unless sessions of several hosts freed it in one sweep. */
  hosts: number[];
  /** When the hold ends, ms; NaN until the next clocked call stamps a clock-less release. */
  until: number;
}

type Op =
  | {
    kind: "reserve";
    proto: number;
    a: number;
    pa: number;
    x: number;
    px: number;
    rep: boolean;
    life: number;
  }
  | { kind: "release"; pick: number }
  | { kind: "renew"; pick: number; life: number }
  | { kind: "advance"; ms: number; budget: number | null };

const HOSTS = [H1, H2, H3];
const PORTS = [1000, 1001, 1003, 5060];
const PEERS = [X1, X2];
const PEER_PORTS = [53, 5060];

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant("reserve" as const),
      proto: fc.constantFrom(UDP, TCP, ICMP),
      a: fc.constantFrom(...HOSTS),
      pa: fc.constantFrom(...PORTS),
      x: fc.constantFrom(...PEERS),
      px: fc.constantFrom(...PEER_PORTS),
      rep: fc.boolean(),
      life: fc.constantFrom(0, 40, 100),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("renew" as const),
      pick: fc.nat(),
      life: fc.constantFrom(0, 40, 100),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("advance" as const),
      ms: fc.integer({ min: 0, max: 120_000 }),
      budget: fc.option(fc.integer({ min: 1, max: 8 })),
    }),
  },
);

const HOLD_MS = 120_000;

const configArb = fc.record({
  poolSize: fc.integer({ min: 1, max: 3 }),
  ports: fc.integer({ min: 1, max: 5 }),
  pgs: fc.integer({ min: 1, max: 5 }),
  quota: fc.integer({ min: 1, max: 8 }),
  seed: fc.integer(),
});

/** Checks every index and counter of `t` against the model sessions `m`. */
function checkAgainstModel(t: SessionTable, m: MSession[], pool: number[]): void {
  assert.equal(t.size, m.length);
  const pubKeys = new Set<string>();
  const lanKeys = new Set<string>();
  for (const s of m) {
    const pk = `${s.proto}/${s.r}:${s.p}/${s.x}:${s.px}`;
    const lk = `${s.proto}/${s.a}/${s.pg}`;
    assert.ok(!pubKeys.has(pk), `two sessions with public key ${pk}`);
    assert.ok(!lanKeys.has(lk), `two sessions with LAN key ${lk}`);
    pubKeys.add(pk);
    lanKeys.add(lk);
    const slot = t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px);
    assert.ok(slot >= 0);
    assert.equal(t.lookupLan(s.proto, s.a, s.pg), slot);
    assert.equal(t.lookupPublic(s.proto, s.r, s.p, s.x, s.px), slot);
    assert.deepEqual([t.r(slot), t.p(slot), t.pg(slot), t.expiresAt(slot)], [
      s.r,
      s.p,
      s.pg,
      s.exp,
    ]);
    assert.ok(pool.includes(s.r));
    const users = m.filter((o) => o.proto === s.proto && o.r === s.r && o.p === s.p).length;
    assert.equal(t.portUsers(s.proto, s.r, s.p), users);
  }
  for (const a of HOSTS) {
    const mine = m.filter((s) => s.a === a);
    assert.equal(t.sessionsOf(a), mine.length);
    // Paired pooling (RFC 6888 REQ-2): one public address per host, all protocols.
    assert.equal(new Set(mine.map((s) => s.r)).size <= 1, true, "a host on two addresses");
    assert.equal(t.pairedAddress(a), mine.length > 0 ? mine[0]!.r : -1);
  }
  assert.equal([...t.entries()].length, m.length);
}

/**
 * Checks the table's held ports against the model's holds (RFC 6888 REQ-8)
 * and pins a hold whose host the model could not know (several hosts freed
 * it in one sweep; the table holds it for the last one it removed).
 */
function checkHolds(t: SessionTable, holds: MHold[]): void {
  assert.equal(t.heldPorts, holds.length);
  for (const h of holds) {
    const by = t.heldFor(h.proto, h.r, h.p);
    assert.ok(h.hosts.includes(by), `held for ${by}, expected one of ${h.hosts}`);
    h.hosts = [by];
  }
}

Deno.test("mappings: a mapped endpoint's fixed-port session takes the mapping's pair even when its port differs (the remote that came in through it hears back from it)", () => {
  const t = new SessionTable({ pool: [R1, R2] });
  const m = t.map({ proto: UDP, a: H1, pa: 5000, p: 6000, r: R1, lifetime: 600 }, 0);
  assert.equal(m.result, Result.OK);
  assert.deepEqual([m.r, m.p], [R1, 6000]);
  const g = t.reserve(req({ a: H1, pa: 5000, x: X1, px: 7000, replaceable: false }), 0);
  assert.equal(g.result, Result.OK);
  assert.deepEqual([g.r, g.p, g.replaced], [R1, 6000, true]);
  // An unmapped endpoint's fixed port keeps its own number.
  const f = t.reserve(req({ a: H1, pa: 5001, x: X1, px: 7000, replaceable: false }), 0);
  assert.equal(f.p, 5001);
});

Deno.test("owners: UPnP rows count toward the host's quota and its own UPnP cap; a description stays with its row; a claim moves the counts", () => {
  const t = new SessionTable({ pool: [R1], maxUpnpPerHost: 2, maxSessionsPerHost: 3 });
  const up = { proto: UDP, a: H1, p: 0, r: 0, lifetime: 600, owner: Owner.UPNP };
  assert.equal(t.map({ ...up, pa: 5000, description: "a" }, 0).result, Result.OK);
  assert.equal(t.map({ ...up, pa: 5001, description: "x".repeat(300) }, 0).result, Result.OK);
  assert.equal(t.description(t.lookupMapOf(UDP, H1, 5001)).length, 256, "cut at 256");
  assert.equal(t.map({ ...up, pa: 5002 }, 0).result, Result.QUOTA_EXCEEDED, "the UPnP cap");
  assert.equal(t.upnpOf(H1), 2);
  // The host's quota counts them: one more dpm row fits, then none.
  assert.equal(t.reserve(req({ a: H1, pa: 40000, replaceable: true }), 0).result, Result.OK);
  assert.equal(
    t.reserve(req({ a: H1, pa: 40001, replaceable: true }), 0).result,
    Result.QUOTA_EXCEEDED,
  );
  // Released: its description goes with it, the slot's next row has none.
  const s = t.lookupMapOf(UDP, H1, 5000);
  t.releaseSlot(s, 0);
  assert.equal(t.upnpOf(H1), 1);
  const n = t.map({ proto: UDP, a: H1, pa: 5003, p: 0, r: 0, lifetime: 600 }, 0);
  assert.equal(t.description(n.session), "");
  // An ADOPTED mapping claimed by UPnP counts from then on.
  t.claim(n.session, Owner.UPNP);
  assert.equal(t.upnpOf(H1), 2);
  t.claim(n.session, Owner.NATPMP);
  assert.equal(t.upnpOf(H1), 1);
  assert.equal(t.unverifiedOf(H1), 1);
  // A record carries the description; restored, it comes back.
  const rec = t.record(t.lookupMapOf(UDP, H1, 5001));
  assert.equal(rec.owner, "upnp");
  const t2 = new SessionTable({ pool: [R1] });
  assert.equal(t2.restore(rec), Result.OK);
  assert.equal(t2.description(t2.lookupMapOf(UDP, H1, 5001)), "x".repeat(256));
  assert.equal(t2.upnpOf(H1), 1);
});

Deno.test("model: random operation sequences keep the indexes consistent and the policy's promises", () => {
  fc.assert(
    fc.property(configArb, fc.array(opArb, { maxLength: 80 }), (cfg, ops) => {
      const pool = [R1, R2, R1 + 100].slice(0, cfg.poolSize);
      const portMin = 2000;
      const portMax = 2000 + cfg.ports - 1;
      const pgMin = 61000;
      const pgMax = 61000 + cfg.pgs - 1;
      let rs = cfg.seed >>> 0;
      const opts: TableOptions = {
        pool,
        portMin,
        portMax,
        gatewayPortMin: pgMin,
        gatewayPortMax: pgMax,
        maxSessionsPerHost: cfg.quota,
        initialCapacity: 1,
        // A small deterministic LCG so that failures replay.
        random: () => {
          rs = (Math.imul(rs, 1664525) + 1013904223) >>> 0;
          return rs / 2 ** 32;
        },
      };
      const t = new SessionTable(opts);
      let m: MSession[] = [];
      let holds: MHold[] = [];
      let now = 0;
      /** The model's side of removing sessions `gone` at `now`: their freed ports are held. */
      const removeAll = (gone: MSession[], clocked: boolean) => {
        m = m.filter((s) => !gone.includes(s));
        for (const g of gone) {
          if (m.some((s) => s.proto === g.proto && s.r === g.r && s.p === g.p)) continue;
          const h = holds.find((o) => o.proto === g.proto && o.r === g.r && o.p === g.p);
          if (h) h.hosts = [...new Set([...h.hosts, g.a])];
          else {
            const until = clocked ? now + HOLD_MS : NaN;
            holds.push({ proto: g.proto, r: g.r, p: g.p, hosts: [g.a], until });
          }
        }
      };
      /** What the table does at every call that passes the clock: stamp, then end holds. */
      const clock = () => {
        for (const h of holds) if (Number.isNaN(h.until)) h.until = now + HOLD_MS;
        holds = holds.filter((h) => now < h.until);
      };
      const life = (proto: number, l: number) =>
        l === 0 ? (proto === UDP ? 300 : proto === TCP ? 7440 : 60) : l;

      for (const op of ops) {
        if (op.kind === "reserve") {
          const px = op.proto === ICMP ? 0 : op.px;
          clock();
          const before = m;
          const held = before.find((s) =>
            s.proto === op.proto && s.a === op.a && s.pa === op.pa && s.x === op.x && s.px === px
          );
          const g = t.reserve(
            {
              proto: op.proto,
              a: op.a,
              pa: op.pa,
              x: op.x,
              px,
              replaceable: op.rep,
              lifetime: op.life,
            },
            now,
          );
          const exp = now + life(op.proto, op.life) * 1000;
          if (held) {
            assert.equal(g.result, Result.OK);
            assert.deepEqual([g.r, g.p, g.pg], [held.r, held.p, held.pg]);
            held.exp = exp;
          } else {
            const mine = before.filter((s) => s.a === op.a);
            const pgUsed = mine.filter((s) => s.proto === op.proto).length;
            const endpoint = before.filter((s) =>
              s.proto === op.proto && s.a === op.a && s.pa === op.pa
            );
            // Paired pooling: a host with sessions (any protocol) stays on their address.
            const candidates = mine.length > 0 ? [mine[0]!.r] : pool;
            const usedBy = (r: number, p: number) =>
              before.filter((s) => s.proto === op.proto && s.r === r && s.p === p);
            const holdOf = (r: number, p: number) =>
              holds.find((h) => h.proto === op.proto && h.r === r && h.p === p);
            // Replacement ports are never held ones; preservation may take its own host's.
            const freeInRange = candidates.some((r) => {
              for (let p = portMin; p <= portMax; p++) {
                if (usedBy(r, p).length === 0 && !holdOf(r, p)) return true;
              }
              return false;
            });
            const availableTo = (r: number, p: number) => {
              const h = holdOf(r, p);
              return usedBy(r, p).length === 0 && (!h || h.hosts[0] === op.a);
            };
            const preservable = candidates.some((r) => availableTo(r, op.pa));
            const shareable = candidates.some((r) =>
              !before.some((s) =>
                s.proto === op.proto && s.r === r && s.p === op.pa && s.x === op.x && s.px === px
              )
            );
            if (mine.length >= cfg.quota) {
              assert.equal(g.result, Result.QUOTA_EXCEEDED);
            } else if (pgUsed >= cfg.pgs) {
              assert.equal(g.result, Result.NO_RESOURCES);
            } else if (op.rep) {
              // Replaceable: granted whenever pa is preservable or some port is free;
              // otherwise only the endpoint's existing mapping can still serve it.
              if (freeInRange || preservable) assert.equal(g.result, Result.OK);
              else if (endpoint.length === 0) assert.equal(g.result, Result.NO_RESOURCES);
              else if (g.result === Result.OK) {
                assert.ok(endpoint.some((s) => s.r === g.r && s.p === g.p), "reused mapping");
              } else assert.equal(g.result, Result.NO_RESOURCES);
            } else {
              assert.equal(g.result, shareable ? Result.OK : Result.CONFLICT);
            }
            if (g.result === Result.OK) {
              assert.ok(candidates.includes(g.r), "paired pooling: the host's address");
              assert.ok(g.pg >= pgMin && g.pg <= pgMax);
              if (!op.rep) assert.equal(g.p, op.pa, "a fixed port is never replaced");
              assert.equal(g.replaced, g.p !== op.pa);
              const sameEndpoint = endpoint.some((s) => s.r === g.r && s.p === g.p);
              const others = usedBy(g.r, g.p).filter((s) => !(s.a === op.a && s.pa === op.pa));
              const hold = holdOf(g.r, g.p);
              if (!sameEndpoint && others.length === 0 && hold && hold.hosts[0] !== op.a) {
                // Only a fixed port with nowhere else to go takes a port held for
                // another host (RFC 6888 REQ-8 exception c).
                assert.ok(!op.rep, "a port held for another host went to a replaceable request");
                assert.ok(!preservable, "a held port taken while a free one was there");
              }
              if (hold) holds = holds.filter((h) => h !== hold);
              if (!sameEndpoint) {
                if (g.replaced) {
                  assert.ok(g.p >= portMin && g.p <= portMax);
                  assert.equal(others.length, 0, "a replacement port is exclusive");
                }
                if (!g.shared) assert.equal(others.length, 0, "unshared means exclusive");
                else assert.ok(!op.rep, "two replaceable requests never share");
                if (!op.rep && endpoint.length === 0 && preservable) {
                  assert.equal(g.shared, false, "port preservation before sharing");
                }
              }
              m = [...before, {
                proto: op.proto,
                a: op.a,
                pa: op.pa,
                x: op.x,
                px,
                r: g.r,
                p: g.p,
                pg: g.pg,
                exp,
                replaceable: op.rep,
              }];
            }
          }
        } else if (op.kind === "release") {
          if (m.length === 0) {
            assert.equal(t.release(UDP, H1, 1, X1, 1), Result.NO_SUCH_SESSION);
          } else {
            const s = m[op.pick % m.length]!;
            // Half the releases pass the clock; the others are stamped by the next clocked call.
            const clocked = op.pick % 2 === 0;
            const res = clocked
              ? t.release(s.proto, s.a, s.pa, s.x, s.px, now)
              : t.release(s.proto, s.a, s.pa, s.x, s.px);
            assert.equal(res, Result.OK);
            removeAll([s], clocked);
            if (clocked) clock();
          }
        } else if (op.kind === "renew") {
          if (m.length > 0) {
            const s = m[op.pick % m.length]!;
            const g = t.renew(s.proto, s.a, s.pa, s.x, s.px, op.life, now);
            clock();
            assert.equal(g.result, Result.OK);
            s.exp = now + life(s.proto, op.life) * 1000;
          }
        } else {
          now += op.ms;
          clock();
          const dead = m.filter((s) => s.exp <= now);
          if (op.budget === null) {
            assert.equal(t.expire(now), dead.length);
          } else {
            // A budgeted sweep removes only expired sessions; finish with a full one.
            const n = t.expire(now, op.budget);
            assert.ok(n <= dead.length);
            t.expire(now);
          }
          removeAll(dead, true);
        }
        checkAgainstModel(t, m, pool);
        checkHolds(t, holds);
      }
    }),
    { numRuns: 300 },
  );
});
