/**
 * The mapping policy (src/policy/): the port rules, the LAN-host source
 * check, the gateway's own ports, and `MappingPolicy` deciding for every
 * protocol (ownership, rules, gateway ports, budgets) on a real table; and
 * the same decisions reached through `ServerCore` with real bytes of dpm's
 * protocol, PCP and NAT-PMP.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  allowedPorts,
  decidingRule,
  defaultRules,
  type MapRule,
  parseMapRule,
} from "../../src/policy/rules.ts";
import { LanHosts } from "../../src/policy/hosts.ts";
import { type BoundPort, GatewayPorts } from "../../src/policy/gateway_ports.ts";
import { MappingPolicy } from "../../src/policy/mappings.ts";
import { inRanges, Owner, SessionTable } from "../../src/table/table.ts";
import { Result } from "../../src/control/result.ts";
import { boundIPv4, parseProcNet, type ProcNetSocket } from "../../linux/procnet.ts";
import { ServerCore } from "../../src/server/core.ts";
import {
  decodeNatPmpResponse,
  decodePcpResponse,
  encodeNatPmpRequest,
  encodePcpRequest,
  NatPmpResult,
  PcpOp,
  PcpOption,
  PcpResult,
} from "../../src/pcp/codec.ts";
import { FakeServerDataPath } from "../../src/datapath/fake.ts";
import { G, H1, H2, handleVerified, ip, LAN, R1, R2, serverCfg } from "../../testing/fixtures.ts";
import {
  decodeResponse,
  encodeRequest,
  newNonce,
  Op,
  type Request,
} from "../../src/control/proto.ts";

/** A request of dpm's protocol from `src` with its cookie; the decoded answer, or null. */
function dpmAsk(c: ServerCore, req: Request, src: number) {
  const b = handleVerified(c, encodeRequest(req), src);
  if (!b) return null;
  const d = decodeResponse(b);
  assert.ok(d.ok);
  return d.res;
}

const rule = (text: string, allow: boolean): MapRule => {
  const r = parseMapRule(text, allow);
  if (typeof r === "string") throw new Error(r);
  return r;
};

// ---------------------------------------------------------------- rules

Deno.test("policy rules: parse HOSTS [INTERNAL [PUBLIC]], * and missing fields are any; bad ones say why", () => {
  const r = rule("10.0.0.5 22 2222", true);
  assert.deepEqual([r.allow, r.hosts, r.internal, r.external], [
    true,
    { addr: ip("10.0.0.5"), len: 32 },
    [22, 22],
    [2222, 2222],
  ]);
  assert.equal(r.text, "allow 10.0.0.5/32 22 2222");
  const d = rule("10.0.0.0/24", false);
  assert.deepEqual([d.internal, d.external], [[1, 65535], [1, 65535]]);
  assert.equal(rule("* * 1-1023", false).text, "deny 0.0.0.0/0 1-65535 1-1023");
  for (
    const [bad, why] of [
      ["", /want HOSTS/],
      ["10.0.0.5 1 2 3", /want HOSTS/],
      ["10.0.0.300", /hosts "10\.0\.0\.300"/],
      ["10.0.0.5 0", /internal ports "0"/],
      ["10.0.0.5 9-8", /internal ports "9-8"/],
      ["10.0.0.5 * 70000", /public ports "70000"/],
    ] as const
  ) {
    const p = parseMapRule(bad, true);
    assert.equal(typeof p, "string", bad);
    assert.match(p as string, why);
    assert.match(p as string, /--map-allow/);
  }
});

Deno.test("policy rules: the defaults refuse fixed ports and ports below 1024, allow the rest; the first matching rule decides", () => {
  const dflt = defaultRules([500, 4500, 5060, 500]);
  assert.deepEqual(allowedPorts(dflt, H1, 5000), [[1024, 4499], [4501, 5059], [5061, 65535]]);
  assert.equal(decidingRule(dflt, H1, 22, 22)!.allow, false);
  assert.match(decidingRule(dflt, H1, 22, 22)!.text, /default: well-known ports/);
  assert.match(decidingRule(dflt, H1, 500, 500)!.text, /fixed port/);
  // An allow before the defaults opens what they close, for whom it says only.
  const rules = [rule("10.0.0.11 80 80", true), ...dflt];
  assert.ok(inRanges(allowedPorts(rules, H1, 80), 80));
  assert.ok(!inRanges(allowedPorts(rules, H1, 81), 80), "internal port 81 is not the rule's");
  assert.ok(!inRanges(allowedPorts(rules, H2, 80), 80), "nor is another host");
  // A deny of everything first: nothing at all.
  assert.deepEqual(allowedPorts([rule("0.0.0.0/0", false), ...dflt], H1, 5000), []);
  // Interleaved: the order given decides.
  const order = [rule("10.0.0.0/24 * 6000-6999", false), rule("10.0.0.11 * 6500", true), ...dflt];
  assert.ok(!inRanges(allowedPorts(order, H1, 7000), 6500), "the deny came first");
  const swapped = [order[1]!, order[0]!, ...dflt];
  assert.ok(inRanges(allowedPorts(swapped, H1, 7000), 6500), "the allow came first");
  assert.deepEqual(allowedPorts([], H1, 1), [], "no rule matches: refused");
});

Deno.test("policy rules: allowedPorts agrees with decidingRule on every port (random rules)", () => {
  const arbRule = fc.record({
    allow: fc.boolean(),
    host: fc.constantFrom("10.0.0.11", "10.0.0.0/24", "10.0.0.12", "*"),
    ilo: fc.integer({ min: 1, max: 65535 }),
    ilen: fc.integer({ min: 0, max: 40000 }),
    elo: fc.integer({ min: 1, max: 65535 }),
    elen: fc.integer({ min: 0, max: 40000 }),
  }).map((r) => {
    const ihi = Math.min(65535, r.ilo + r.ilen);
    const ehi = Math.min(65535, r.elo + r.elen);
    return rule(`${r.host} ${r.ilo}-${ihi} ${r.elo}-${ehi}`, r.allow);
  });
  fc.assert(
    fc.property(
      fc.array(arbRule, { maxLength: 6 }),
      fc.integer({ min: 1, max: 65535 }),
      fc.array(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 30 }),
      (rs, pa, ps) => {
        const rules = [...rs, ...defaultRules([500])];
        const ranges = allowedPorts(rules, H1, pa);
        for (let i = 1; i < ranges.length; i++) {
          assert.ok(ranges[i]![0] > ranges[i - 1]![1] + 1, "sorted, disjoint, merged");
        }
        for (const p of [...ps, 1, 500, 1023, 1024, 65535]) {
          assert.equal(inRanges(ranges, p), decidingRule(rules, H1, pa, p)?.allow === true, `${p}`);
        }
      },
    ),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------- sources

Deno.test("policy hosts: a LAN host, never the gateway, its other addresses, the pool, the prefix's edges", () => {
  const h = new LanHosts({ lan: LAN, gateway: G, pool: [R1, R2] });
  assert.ok(h.isHost(H1));
  for (
    const [a, why] of [
      [G, "the gateway's own address"],
      [ip("10.0.0.0"), "network"],
      [ip("10.0.0.255"), "broadcast"],
      [ip("192.168.1.5"), "outside the LAN"],
      [ip("0.0.0.0"), "unicast"],
      [ip("127.0.0.1"), "unicast"],
      [ip("224.0.0.1"), "unicast"],
      [ip("255.255.255.255"), "unicast"],
    ] as const
  ) {
    assert.ok(!h.isHost(a), h.describe(a));
    assert.match(h.why(a)!, new RegExp(why));
  }
  // Another address the gateway owns on the LAN (from its local table).
  assert.ok(h.isHost(ip("10.0.0.2")));
  h.setLocal(new Set([ip("10.0.0.2")]));
  assert.ok(!h.isHost(ip("10.0.0.2")));
  assert.equal(h.describe(ip("10.0.0.2")), "10.0.0.2 (the gateway's own address)");
  // /31 and /32 have no network or broadcast address; without a prefix, the pool still is not a host.
  const p31 = new LanHosts({
    lan: { addr: ip("10.9.0.0"), len: 31 },
    gateway: ip("10.9.0.0"),
    pool: [],
  });
  assert.ok(p31.isHost(ip("10.9.0.1")));
  const none = new LanHosts({ lan: null, gateway: G, pool: [R1] });
  assert.ok(none.isHost(ip("192.168.1.5")));
  assert.ok(!none.isHost(R1));
});

// ---------------------------------------------------------------- the gateway's ports

/** A /proc/net line for a socket on `addr` (8 or 32 hex digits as the kernel prints) and `port`. */
function procSock(addr: string, port: number, inode = 1234): ProcNetSocket {
  const line = `   0: ${addr}:${port.toString(16).toUpperCase().padStart(4, "0")} ${
    "0".repeat(addr.length)
  }:0000 0A 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1`;
  return parseProcNet(`  sl  local_address rem_address\n${line}\n`)[0]!;
}

/** What such a socket is bound to, as run.ts hands it over (`boundIPv4`); none for TIME_WAIT. */
function sock(addr: string, port: number, inode = 1234): BoundPort[] {
  return boundIPv4([procSock(addr, port, inode)]);
}

Deno.test("policy gateway ports: sockets on 0.0.0.0, :: or a pool address hold a public port; G's or TIME_WAIT's do not; update tells what is new", () => {
  const gp = new GatewayPorts([R1, R2]);
  // 0.0.0.0:22 (TCP), ::ffff:203.0.113.10:8080 (v4-mapped, TCP), 10.0.0.1:53 (G, UDP), :: 5353 UDP.
  const r1 = "0A7100CB"; // 203.0.113.10 as /proc prints it on a little-endian machine
  const fresh = gp.update(
    [...sock("00000000", 22), ...sock(`0000000000000000FFFF0000${r1}`, 8080), ...sock(r1, 9000, 0)],
    [...sock("0100000A", 53), ...sock("00000000000000000000000000000000", 5353)],
  );
  assert.deepEqual(fresh.map((h) => `${h.proto}/${h.r}/${h.p}`).sort(), [
    `17/0/5353`,
    `6/0/22`,
    `6/${R1}/8080`,
  ]);
  assert.ok(gp.holds(6, R1, 22) && gp.holds(6, R2, 22), "0.0.0.0 holds it on every pool address");
  assert.ok(gp.holds(6, R1, 8080) && !gp.holds(6, R2, 8080), "a pool address only there");
  assert.ok(!gp.holds(17, R1, 22), "per protocol");
  assert.ok(!gp.holds(17, R1, 53), "G's socket does not matter");
  assert.ok(!gp.holds(6, R1, 9000), "TIME_WAIT holds nothing");
  assert.ok(gp.holds(17, R2, 5353), ":: receives IPv4 too");
  assert.deepEqual(gp.update([...sock("00000000", 22)], []), [], "nothing new");
  assert.ok(!gp.holds(6, R1, 8080), "a closed socket holds nothing");
});

// ---------------------------------------------------------------- the decisions

function rig(o: { rules?: MapRule[]; perHost?: number; perProto?: number } = {}) {
  let now = 1_000_000;
  const table = new SessionTable({
    pool: [R1, R2],
    maxSessionsPerHost: 100,
    maxUnverifiedPerHost: o.perHost ?? 64,
    ...(o.perProto !== undefined ? { maxUnverifiedPerProto: o.perProto } : {}),
  });
  const logs: string[] = [];
  const notices: string[] = [];
  const policy = new MappingPolicy({
    table,
    rules: o.rules ?? defaultRules([500, 4500, 5060]),
    pool: [R1, R2],
    log: (l) => logs.push(l),
    notice: (l) => notices.push(l),
  });
  return { table, policy, logs, notices, now: () => now, tick: (ms: number) => (now += ms) };
}

const ask = (
  pa: number,
  o: Partial<{ p: number; exact: boolean; proto: number; lifetime: number }> = {},
) => ({
  proto: o.proto ?? 17,
  pa,
  p: o.p ?? 0,
  r: 0,
  lifetime: o.lifetime ?? 600,
  exact: o.exact ?? false,
});
const N1 = Uint8Array.from({ length: 12 }, (_, i) => i + 1);
const N2 = Uint8Array.from({ length: 12 }, (_, i) => 100 + i);
const DPM = (a = H1) => ({ owner: Owner.DPM, a });
const PCP = (nonce = N1, a = H1) => ({ owner: Owner.PCP, a, nonce });
const NATPMP = (a = H1) => ({ owner: Owner.NATPMP, a });

Deno.test("policy mappings: each row keeps its owner; PCP touches only its own with the same nonce, NAT-PMP only its own, neither dpm's; dpm's protocol may touch all of the host's", () => {
  const { table, policy, now, logs } = rig();
  const dm = policy.map(DPM(), ask(6000), now());
  const pm = policy.map(PCP(), ask(7000), now());
  const nm = policy.map(NATPMP(), ask(7001), now());
  for (const o of [dm, pm, nm]) assert.equal(o.result, Result.OK);
  assert.equal(table.owner(dm.grant!.session), Owner.DPM);
  assert.equal(table.owner(pm.grant!.session), Owner.PCP);
  assert.ok(table.nonceIs(pm.grant!.session, N1) && !table.nonceIs(pm.grant!.session, N2));
  assert.equal(table.owner(nm.grant!.session), Owner.NATPMP);

  const no = (o: { result: number }) => assert.equal(o.result, Result.NOT_AUTHORIZED);
  no(policy.unmap(PCP(N2), 17, 6000, now())); // dpm's
  no(policy.map(PCP(), ask(6000, { lifetime: 86400 }), now())); // renew dpm's
  no(policy.unmap(NATPMP(), 17, 6000, now()));
  no(policy.unmap(PCP(N2), 17, 7000, now())); // another nonce
  no(policy.map(PCP(N2), ask(7000), now()));
  no(policy.unmap(NATPMP(), 17, 7000, now())); // PCP's
  no(policy.unmap(PCP(), 17, 7001, now())); // NAT-PMP's
  assert.equal(policy.unmapAll(PCP(N2), 0, now()), 0);
  assert.equal(policy.unmapAll(NATPMP(), 17, now()), 1, "NAT-PMP's delete-all: its own only");
  assert.equal(table.size, 2);
  assert.match(
    logs.join("\n"),
    /refused PCP delete udp 10\.0\.0\.11:6000: not-authorized: the mapping is dpm's/,
  );
  assert.match(logs.join("\n"), /PCP's, made with another nonce/);
  // Another host never touches them, whatever it claims.
  no({ result: policy.mayTouch(DPM(H2), dm.grant!.session) ? Result.OK : Result.NOT_AUTHORIZED });
  // The owners can.
  assert.equal(policy.map(PCP(), ask(7000), now()).result, Result.OK, "renewed with its nonce");
  assert.equal(policy.unmapAll(PCP(), 0, now()), 1);
  assert.equal(policy.unmap(DPM(), 17, 6000, now()).result, Result.OK);
  assert.equal(table.size, 0);
  assert.equal(policy.unmap(PCP(), 17, 6000, now()).result, Result.OK, "a delete of nothing is OK");
});

Deno.test("policy mappings: PEER sessions: PCP releases only its own; never a driver's session", () => {
  const { table, policy, now } = rig();
  const x = ip("198.51.100.10");
  const drv = table.reserve(
    { proto: 17, a: H1, pa: 40000, x, px: 7000, replaceable: true, lifetime: 0 },
    now(),
  );
  assert.equal(drv.result, Result.OK);
  const peer = { proto: 17, pa: 40000, x, px: 7000 };
  assert.equal(policy.unpeer(PCP(), peer, now()).result, Result.NOT_AUTHORIZED);
  assert.equal(
    policy.peer(PCP(), { ...peer, lifetime: 86400 }, now()).result,
    Result.NOT_AUTHORIZED,
  );
  assert.equal(table.lifetime(drv.session), 300, "not renewed for a day");
  const mine = policy.peer(PCP(), { ...peer, pa: 4000, lifetime: 600 }, now());
  assert.equal(mine.result, Result.OK);
  assert.ok(table.direct(mine.grant!.session));
  assert.equal(table.owner(mine.grant!.session), Owner.PCP);
  assert.equal(policy.unpeer(PCP(N2), { ...peer, pa: 4000 }, now()).result, Result.NOT_AUTHORIZED);
  assert.equal(policy.unpeer(PCP(), { ...peer, pa: 4000 }, now()).result, Result.OK);
  assert.equal(table.size, 1);
});

Deno.test("policy mappings: an ADOPTED mapping (restored without an owner) is claimed by the first protocol that renews it; an ADOPTED session is only dpm's protocol's", () => {
  const { table, policy, now } = rig();
  const g = table.map({ proto: 17, a: H1, pa: 7000, p: 7000, r: 0, lifetime: 600 }, now());
  const rec = table.record(g.session);
  table.releaseSlot(g.session);
  delete rec.owner;
  assert.equal(table.restore(rec), Result.OK);
  const s = table.lookupMapOf(17, H1, 7000);
  assert.equal(table.owner(s), Owner.ADOPTED);
  assert.equal(policy.map(PCP(), ask(7000), now()).result, Result.OK);
  assert.equal(table.owner(s), Owner.PCP);
  assert.ok(table.nonceIs(s, N1));
  assert.equal(policy.unmap(NATPMP(), 17, 7000, now()).result, Result.NOT_AUTHORIZED);
  // An adopted session (a driver's, as far as anyone can tell) is never PCP's to release.
  const x = ip("198.51.100.10");
  const d = table.reserve(
    { proto: 17, a: H1, pa: 40000, x, px: 7000, replaceable: true, lifetime: 0 },
    now(),
  );
  const drec = table.record(d.session);
  table.releaseSlot(d.session);
  delete drec.owner;
  assert.equal(table.restore(drec), Result.OK);
  const peer = { proto: 17, pa: 40000, x, px: 7000 };
  assert.equal(policy.unpeer(PCP(), peer, now()).result, Result.NOT_AUTHORIZED);
  assert.equal(policy.peer(PCP(), { ...peer, lifetime: 600 }, now()).result, Result.NOT_AUTHORIZED);
  assert.ok(policy.mayTouch(DPM(), table.lookupIdentity(17, H1, 40000, x, 7000)));
});

Deno.test("policy mappings: ports below 1024 and fixed ports move (or are refused when exact); a rule opens one; no public port at all is NOT_AUTHORIZED", () => {
  const { policy, now, logs } = rig({
    rules: [rule("10.0.0.11 80 80", true), ...defaultRules([500])],
  });
  const moved = policy.map(NATPMP(H2), ask(22, { p: 22, proto: 6 }), now());
  assert.equal(moved.result, Result.OK);
  assert.ok(moved.grant!.p >= 1024, `moved to ${moved.grant!.p}`);
  const ike = policy.map(NATPMP(H2), ask(500), now());
  assert.notEqual(ike.grant!.p, 500);
  assert.equal(
    policy.map(PCP(N1, H2), ask(501, { p: 500, exact: true }), now()).result,
    Result.NOT_AUTHORIZED,
  );
  assert.match(
    logs.at(-1)!,
    /public port 500 refused \(rule "deny 0\.0\.0\.0\/0 1-65535 500 \(default: a fixed port/,
  );
  const web = policy.map(DPM(), ask(80, { proto: 6, exact: true }), now());
  assert.equal(web.result, Result.OK);
  assert.equal(web.grant!.p, 80);
  const none = rig({ rules: [rule("10.0.0.12", false), ...defaultRules([])] });
  const o = none.policy.map(NATPMP(H2), ask(6000), none.now());
  assert.equal(o.result, Result.NOT_AUTHORIZED);
  assert.match(o.why!, /no public port allowed for it \(rule "deny 10\.0\.0\.12\/32/);
});

Deno.test("policy mappings: a port the gateway holds is never taken, exact asks get CONFLICT; a mapping goes when the gateway starts listening on its port", () => {
  const { table, policy, now, notices } = rig();
  policy.gatewayListening([...sock("00000000", 8022)], [], now());
  const o = policy.map(NATPMP(), ask(8022, { p: 8022, proto: 6 }), now());
  assert.equal(o.result, Result.OK);
  assert.notEqual(o.grant!.p, 8022);
  const ex = policy.map(PCP(), ask(8024, { p: 8022, proto: 6, exact: true }), now());
  assert.equal(ex.result, Result.CONFLICT);
  assert.match(ex.why!, /the gateway's own/);
  const m = policy.map(NATPMP(H2), ask(8023, { p: 8023, proto: 6 }), now());
  assert.equal(m.grant!.p, 8023);
  // The random choice avoids it too: the only port left in a tiny range is the gateway's.
  const tiny = new SessionTable({ pool: [R1], portMin: 30000, portMax: 30001 });
  const tp = new MappingPolicy({ table: tiny, rules: defaultRules([]), pool: [R1], log: () => {} });
  tp.gatewayListening([], [...sock("00000000", 30001)], now());
  assert.equal(tp.map(NATPMP(), ask(5000, { p: 30000 }), now()).grant!.p, 30000);
  assert.equal(tp.map(NATPMP(H2), ask(30001), now()).result, Result.NO_RESOURCES);
  // The gateway starts listening on 8023 (on R's own address) and on UDP 8023: the TCP mapping goes.
  const r = table.r(m.grant!.session);
  const rHex = (r >>> 0).toString(16).padStart(8, "0").match(/../g)!.reverse().join("")
    .toUpperCase();
  assert.equal(
    policy.gatewayListening(
      [...sock("00000000", 8022), ...sock(rHex, 8023)],
      [...sock("00000000", 8023)],
      now(),
    ),
    1,
  );
  assert.equal(table.lookupMapOf(6, H2, 8023), -1);
  assert.match(
    notices.join("\n"),
    /mapping tcp 203\.0\.113\.1[01]:8023 -> 10\.0\.0\.12:8023 \(natpmp\) removed: the gateway now holds that public port itself/,
  );
  assert.equal(policy.gatewayListening([...sock(rHex, 8023)], [], now()), 0, "already gone");
});

Deno.test("policy mappings: PCP and NAT-PMP rows have their own cap per host and share of the pool, apart from the host's quota", () => {
  const { table, policy, now } = rig({ perHost: 3, perProto: 5 });
  for (let i = 0; i < 3; i++) {
    assert.equal(policy.map(NATPMP(), ask(7000 + i), now()).result, Result.OK);
  }
  const over = policy.map(PCP(), ask(7100), now());
  assert.equal(over.result, Result.QUOTA_EXCEEDED, "the host's PCP/NAT-PMP cap");
  assert.match(over.why!, /holds 3 PCP\/NAT-PMP mappings/);
  // dpm's protocol is not in that budget, and renewals are not new rows.
  assert.equal(policy.map(DPM(), ask(6000), now()).result, Result.OK);
  assert.equal(policy.map(NATPMP(), ask(7000), now()).result, Result.OK);
  assert.equal(table.unverifiedOf(H1), 3);
  assert.equal(table.sessionsOf(H1), 4);
  // The share: 5 UDP rows over all hosts.
  assert.equal(policy.map(NATPMP(H2), ask(7000), now()).result, Result.OK);
  assert.equal(policy.map(NATPMP(H2), ask(7001), now()).result, Result.OK);
  assert.equal(policy.map(NATPMP(H2), ask(7002), now()).result, Result.NO_RESOURCES);
  assert.equal(
    policy.map(NATPMP(H2), ask(7002, { proto: 6 }), now()).result,
    Result.OK,
    "per protocol",
  );
  assert.equal(table.unverifiedCount(17), 5);
  // Releases give the budget back.
  assert.equal(policy.unmapAll(NATPMP(), 17, now()), 3);
  assert.equal(table.unverifiedOf(H1), 0);
  assert.equal(policy.map(NATPMP(ip("10.0.0.13")), ask(7002), now()).result, Result.OK);
});

Deno.test("policy mappings: audit removes restored rows a current server would refuse", () => {
  const { table, policy, now, notices } = rig();
  const t0 = new SessionTable({ pool: [R1, R2] });
  const ok = t0.map({ proto: 17, a: H1, pa: 7000, p: 7000, r: 0, lifetime: 600 }, now());
  const low = t0.map({ proto: 6, a: H1, pa: 22, p: 22, r: 0, lifetime: 600 }, now());
  const gw = t0.map({ proto: 6, a: G, pa: 8022, p: 8022, r: 0, lifetime: 600 }, now());
  for (const g of [ok, low, gw]) assert.equal(table.restore(t0.record(g.session)), Result.OK);
  const hosts = new LanHosts({ lan: LAN, gateway: G, pool: [R1, R2] });
  assert.equal(policy.audit((a) => hosts.isHost(a), now()), 2);
  assert.deepEqual([...table.entries()].map((r) => `${r.proto}/${r.pa}`), ["17/7000"]);
  assert.match(notices.join("\n"), /10\.0\.0\.1 is not a LAN host/);
  assert.match(notices.join("\n"), /public port 22 refused/);
});

// ---------------------------------------------------------------- through the server core

function core(over = {}) {
  let now = 2_000_000;
  const c = new ServerCore(serverCfg(over), { lan: LAN, now: () => now });
  c.attach(new FakeServerDataPath());
  return { c, tick: (ms: number) => (now += ms) };
}

Deno.test("policy core: dpm's protocol, PCP and NAT-PMP from G or the prefix's edges are dropped unanswered and counted", () => {
  const { c } = core();
  for (const src of [G, ip("10.0.0.0"), ip("10.0.0.255")]) {
    assert.equal(c.handlePcp(encodeNatPmpRequest(2, 22, 22, 3600), src), null);
    assert.equal(
      c.handlePcp(
        encodePcpRequest({
          op: PcpOp.MAP,
          lifetime: 3600,
          client: src,
          nonce: N1,
          proto: 6,
          internalPort: 8022,
          externalPort: 8022,
        }),
        src,
      ),
      null,
    );
    assert.equal(
      dpmAsk(c, {
        op: Op.MAP,
        nonce: newNonce(),
        proto: 6,
        replaceable: true,
        internalAddr: src,
        internalPort: 8022,
        remoteAddr: 0,
        remotePort: 0,
        lifetime: 600,
      }, src),
      null,
    );
  }
  assert.equal(c.table.size, 0);
  assert.equal(c.pcp.notHost, 6);
  assert.ok(c.notHost >= 3);
});

Deno.test("policy core: dpm map, PCP and NAT-PMP share the policy: below 1024 refused (dpm NOT_AUTHORIZED, answered), moved for NAT-PMP; PCP's rate is its own", () => {
  const { c } = core({ pcpRateLimit: 1 });
  const r = dpmAsk(c, {
    op: Op.MAP,
    nonce: newNonce(),
    proto: 6,
    replaceable: false,
    internalAddr: H1,
    internalPort: 22,
    remoteAddr: 0,
    remotePort: 22,
    lifetime: 600,
  }, H1)!;
  assert.equal(r.result, Result.NOT_AUTHORIZED);
  const nat = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(2, 22, 22, 600), H2)!)!;
  assert.equal(nat.result, NatPmpResult.SUCCESS);
  assert.ok(nat.externalPort! >= 1024);
  const pcp = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.MAP,
        lifetime: 600,
        client: H1,
        nonce: N1,
        proto: 6,
        internalPort: 80,
        externalPort: 80,
        options: [{ code: PcpOption.PREFER_FAILURE, data: new Uint8Array(0) }],
      }),
      H1,
    )!,
  )!;
  assert.equal(pcp.result, PcpResult.NOT_AUTHORIZED);
  // H2's PCP bucket (1/s, burst 2) is spent; its dpm-protocol requests are not limited by it.
  let limited = 0;
  for (let i = 0; i < 5; i++) {
    const b = c.handlePcp(encodeNatPmpRequest(0), H2);
    if (b && decodeNatPmpResponse(b)!.result === NatPmpResult.NO_RESOURCES) limited++;
  }
  assert.ok(limited > 0);
  const ok = dpmAsk(c, {
    op: Op.MAP,
    nonce: newNonce(),
    proto: 17,
    replaceable: true,
    internalAddr: H2,
    internalPort: 6000,
    remoteAddr: 0,
    remotePort: 0,
    lifetime: 600,
  }, H2)!;
  assert.equal(ok.result, Result.OK);
  assert.equal(c.table.owner(c.table.lookupMapOf(17, H2, 6000)), Owner.DPM);
});
