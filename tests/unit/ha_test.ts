/**
 * The HA mode's logic without a kernel (docs/ha.md): the standby's mirror
 * (src/ha/mirror.ts) on a fake target and on a real session table, the
 * role's ordered transitions (src/ha/role.ts) on fake steps, keepalived's
 * FIFO lines, the shared cookie secret, the conntrack event decoder and the
 * timeout update encoder (linux/conntrack.ts). The root tests
 * (tests/root/ha_mirror_root_test.ts, tests/root/ha_root_test.ts) run the
 * same on real kernels.
 */

import assert from "node:assert/strict";
import { Mirror, type MirrorTarget, sessionOfEntry, tableTarget } from "../../src/ha/mirror.ts";
import { HaRole, parseNotifyLine } from "../../src/ha/role.ts";
import { parseConntrackdStats } from "../../src/ha/conntrackd.ts";
import { AdvertWatch, decodeAdvert, SPLIT_QUIET_MS } from "../../src/ha/vrrp.ts";
import { guardRuleset } from "../../src/ha/guard.ts";
import { formatIPv4, parseIPv4 } from "../../src/wire/addr.ts";
import { stateLost } from "../../testing/remap_child.ts";
import { mappingFigures } from "../../testing/ha_dpm.ts";
import type { GatewaySession } from "../../src/datapath/datapath.ts";
import type { CtEntry } from "../../linux/conntrack.ts";
import {
  appendCtTimeout,
  CTA,
  CtMsgType,
  decodeCtEvent,
  encodeCtRequest,
} from "../../linux/conntrack.ts";
import { NlBuilder, NLM_F_CREATE } from "../../linux/netlink.ts";
import { COOKIE_ROTATE_MS, CookieMinter } from "../../src/control/cookie.ts";
import { ServerCore } from "../../src/server/core.ts";
import { ConfigError, serverConfig } from "../../src/config.ts";
import { serverCfg } from "../../testing/fixtures.ts";
import { identityKey } from "../../src/wire/tuple.ts";

const G = 0x0a000001; // 10.0.0.1
const POOL = [0xcb00710a, 0xcb00710b]; // 203.0.113.10-11
const H1 = 0x0a00000b;
const X = 0xc6336410; // 198.51.100.16

function entry(
  o: Partial<
    {
      proto: number;
      a: number;
      pa: number;
      pg: number;
      x: number;
      px: number;
      r: number;
      p: number;
      g: number;
    }
  > = {},
): CtEntry {
  const s = {
    proto: 17,
    a: H1,
    pa: 40000,
    pg: 61000,
    x: X,
    px: 7000,
    r: POOL[0]!,
    p: 40000,
    g: G,
    ...o,
  };
  return {
    orig: { proto: s.proto, src: s.a, dst: s.g, sport: s.pa, dport: s.pg },
    reply: { proto: s.proto, src: s.x, dst: s.r, sport: s.px, dport: s.p },
    id: 1,
    status: 0,
    mark: 0,
    timeout: 120,
    zone: 0,
    packetsOrig: 0,
    bytesOrig: 0,
    packetsReply: 0,
    bytesReply: 0,
  };
}

/** A target that records what the mirror did, holding sessions by identity. */
class FakeTarget implements MirrorTarget {
  readonly held = new Map<string, GatewaySession>();
  readonly calls: string[] = [];
  commits = 0;
  refuse = false;
  up(s: GatewaySession): boolean {
    this.calls.push(`up ${s.pa}`);
    if (this.refuse) return false;
    this.held.set(identityKey(s), s);
    return true;
  }
  down(s: GatewaySession): boolean {
    this.calls.push(`down ${s.pa}`);
    const h = this.held.get(identityKey(s));
    if (!h || h.r !== s.r || h.p !== s.p) return false;
    this.held.delete(identityKey(s));
    return true;
  }
  sessions(): Iterable<GatewaySession> {
    return [...this.held.values()];
  }
  commit(): void {
    this.commits++;
  }
}

Deno.test("ha: a dpm conntrack reads back as its session; others are not dpm's", () => {
  const pool = new Set(POOL);
  assert.deepEqual(sessionOfEntry(entry(), G, pool), {
    proto: 17,
    a: H1,
    pa: 40000,
    pg: 61000,
    x: X,
    px: 7000,
    r: POOL[0],
    p: 40000,
  });
  assert.equal(sessionOfEntry(entry({ g: 0x0a000002 }), G, pool), null, "not to G");
  assert.equal(sessionOfEntry(entry({ r: 0xcb007163 }), G, pool), null, "reply not to the pool");
  assert.equal(sessionOfEntry(entry({ proto: 1 }), G, pool), null, "ICMP stays on the queue");
  assert.equal(sessionOfEntry(entry({ x: POOL[1]! }), G, pool), null, "a hairpin");
});

Deno.test("ha: the mirror applies new, update and destroy events, and only dpm's", () => {
  const t = new FakeTarget();
  const m = new Mirror({ g: G, pool: POOL, target: t, now: () => 5 });
  assert.equal(m.event("new", entry()), true);
  assert.equal(m.event("update", entry()), true);
  assert.equal(m.event("new", entry({ g: 0x0a000002, pa: 1 })), false);
  m.commit();
  assert.equal(t.held.size, 1);
  assert.equal(m.stats.sessions, 1);
  assert.equal(m.event("destroy", entry()), true);
  assert.equal(t.held.size, 0);
  assert.equal(m.stats.sessions, 0);
  assert.equal(m.stats.events, 3);
  assert.equal(m.stats.lastEventAt, 5);
  assert.deepEqual(t.calls, ["up 40000", "up 40000", "down 40000"]);
  assert.equal(t.commits, 1);
  t.refuse = true;
  m.event("new", entry({ pa: 2 }));
  assert.equal(m.stats.refused, 1);
});

Deno.test("ha: reconcile makes the table exactly the replicated sessions", () => {
  const t = new FakeTarget();
  const m = new Mirror({ g: G, pool: POOL, target: t });
  m.event("new", entry({ pa: 1 })); // replica gone since
  m.event("new", entry({ pa: 2 })); // replica kept
  m.event("new", entry({ pa: 3, p: 3 })); // replica now with another pair
  const r = m.reconcile([
    entry({ pa: 2 }),
    entry({ pa: 3, p: 33 }),
    entry({ pa: 4 }),
    entry({ g: 0x0a000002, pa: 5 }),
  ]);
  assert.deepEqual(r, { kept: 3, removed: 2 });
  assert.deepEqual([...t.held.values()].map((s) => `${s.pa}/${s.p}`).sort(), [
    "2/40000",
    "3/33",
    "4/40000",
  ]);
  assert.equal(m.stats.sessions, 3);
  assert.equal(m.stats.reconciles, 1);
});

Deno.test("ha: on a real table, mirrored sessions keep their pair and Pg, and go on destroy", () => {
  const cfg = serverCfg({ lanAddr: G, pool: POOL });
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => 1000 });
  let commits = 0;
  const m = new Mirror({
    g: G,
    pool: POOL,
    target: tableTarget(core.table, core.now, () => commits++),
  });
  m.event("new", entry({ p: 50123, pg: 61234 }));
  m.commit();
  const t = core.table;
  const s = t.lookupIdentity(17, H1, 40000, X, 7000);
  assert.ok(s >= 0);
  assert.deepEqual([t.r(s), t.p(s), t.pg(s)], [POOL[0], 50123, 61234]);
  // A driver's reservation of the same identity at the new epoch gets the same pair.
  const g = t.reserve({
    proto: 17,
    a: H1,
    pa: 40000,
    x: X,
    px: 7000,
    replaceable: true,
    lifetime: 0,
  }, 2000);
  assert.deepEqual([g.r, g.p, g.pg], [POOL[0], 50123, 61234]);
  // The same identity replicated with another pair replaces it.
  m.event("update", entry({ p: 50999, pg: 61234 }));
  const s2 = t.lookupIdentity(17, H1, 40000, X, 7000);
  assert.equal(t.p(s2), 50999);
  m.event("destroy", entry({ p: 50999, pg: 61234 }));
  assert.equal(t.lookupIdentity(17, H1, 40000, X, 7000), -1);
  assert.equal(commits, 1);
});

Deno.test("ha: keepalived's FIFO lines", () => {
  assert.deepEqual(parseNotifyLine('INSTANCE "dpm" MASTER 150'), {
    instance: "dpm",
    state: "MASTER",
  });
  assert.deepEqual(parseNotifyLine("INSTANCE dpm BACKUP 100\n"), {
    instance: "dpm",
    state: "BACKUP",
  });
  assert.equal(parseNotifyLine('GROUP "g" MASTER 0'), null);
  assert.equal(parseNotifyLine("INSTANCE dpm MASTERFUL 1"), null);
  assert.equal(parseNotifyLine(""), null);
});

Deno.test("ha: the takeover is ordered (prepare, claim, serve) and changes apply in order", async () => {
  const done: string[] = [];
  let clock = 0;
  const step = (name: string) => () => {
    done.push(name);
    clock += 10;
    return Promise.resolve();
  };
  const role = new HaRole({
    prepare: step("prepare"),
    claim: step("claim"),
    serve: () => void done.push("serve"),
    unserve: () => void done.push("unserve"),
    release: step("release"),
    mirror: step("mirror"),
  }, { now: () => clock });
  assert.equal(role.role, "standby");
  // Three lines at once: applied one after the other.
  // keepalived's first line after its start: BACKUP; the standby asks for a resync.
  await role.line('INSTANCE "dpm" BACKUP 150');
  assert.deepEqual(done.splice(0), ["mirror"]);
  assert.equal(role.status.transitions, 0);
  const p1 = role.line('INSTANCE "dpm" MASTER 150');
  const p2 = role.line('INSTANCE "dpm" BACKUP 150');
  const p3 = role.line('INSTANCE "dpm" MASTER 150');
  await Promise.all([p1, p2, p3]);
  assert.deepEqual(done, [
    "prepare",
    "claim",
    "serve",
    "unserve",
    "release",
    "mirror",
    "prepare",
    "claim",
    "serve",
  ]);
  assert.equal(role.role, "active");
  assert.equal(role.status.transitions, 3);
  // Counted from when keepalived's line arrived: the third waited behind two transitions.
  assert.equal(role.status.lastClaimMs, 60);
  // MASTER again: nothing to do; FAULT: released, then mirroring as "fault".
  await role.vrrp("MASTER");
  assert.equal(done.length, 9);
  await role.vrrp("FAULT");
  assert.equal(role.role, "fault");
  assert.deepEqual(done.slice(9), ["unserve", "release", "mirror"]);
  await role.vrrp("BACKUP");
  assert.equal(role.role, "standby");
  assert.deepEqual(
    done.slice(12),
    ["mirror"],
    "fault to standby: a resync asked for, nothing released",
  );
});

Deno.test("ha: a failed claim leaves the box standby and is counted", async () => {
  const role = new HaRole({
    prepare: () => Promise.resolve(),
    claim: () => Promise.reject(new Error("no such device")),
    serve: () => assert.fail("must not serve"),
    unserve: () => {},
    release: () => Promise.resolve(),
    mirror: () => Promise.resolve(),
  });
  await role.vrrp("MASTER");
  assert.equal(role.role, "standby");
  assert.equal(role.status.failed, 1);
});

Deno.test("ha: two minters with the same key make and accept the same cookies, across a rotation", () => {
  const key = new TextEncoder().encode("0123456789abcdef0123456789abcdef");
  const t0 = 1_700_000_000_000;
  const a = CookieMinter.shared(key, t0);
  const b = CookieMinter.shared(key, t0 + 5000);
  const c = a.cookieFor(H1, t0);
  assert.ok(b.valid(H1, c, t0 + 5000));
  assert.deepEqual(b.cookieFor(H1, t0 + 5000), c);
  // Minted by a in its period, accepted by b in the next one (as by a itself).
  assert.ok(b.valid(H1, c, t0 + COOKIE_ROTATE_MS));
  assert.ok(!b.valid(H1, c, t0 + 3 * COOKIE_ROTATE_MS));
  // Another key, or another address: refused.
  const other = CookieMinter.shared(new TextEncoder().encode("another key, 16 bytes or more"), t0);
  assert.ok(!other.valid(H1, c, t0));
  assert.ok(!a.valid(H1 + 1, c, t0));
  // A random minter does not accept the shared one's cookies.
  assert.ok(!new CookieMinter(t0).valid(H1, c, t0));
});

Deno.test("ha: conntrack events decode as new, update and destroy; timeout updates encode", () => {
  const orig = { proto: 17, src: H1, dst: G, sport: 40000, dport: 61000 };
  // A get request has the shape of an event (the tuple); its type and flags make the kind.
  const msg = (type: number, flags: number) => {
    const m = encodeCtRequest(type, flags, orig);
    return new DataView(m.buffer, m.byteOffset, m.byteLength);
  };
  const kind = (type: number, flags: number) => {
    const dv = msg(type, flags);
    // The decoder wants the reply tuple too: events always carry it; the request has none.
    try {
      return decodeCtEvent(dv, 0, dv.byteLength)?.kind ?? null;
    } catch (e) {
      return (e as Error).name;
    }
  };
  assert.equal(kind(CtMsgType.GET, 0), null);
  // Without a reply tuple the message is malformed: a decode error, not a crash.
  assert.equal(kind(CtMsgType.NEW, NLM_F_CREATE), "CtDecodeError");
  const b = new NlBuilder();
  appendCtTimeout(b, 0, orig, 120);
  const m = b.finish();
  const dv = new DataView(m.buffer, m.byteOffset, m.byteLength);
  assert.equal(dv.getUint16(4, true), CtMsgType.NEW);
  assert.equal(dv.getUint16(6, true) & NLM_F_CREATE, 0, "an update never creates");
  // The last attribute is CTA_TIMEOUT, big endian.
  assert.equal(dv.getUint16(m.length - 6, true), CTA.TIMEOUT);
  assert.equal(dv.getUint32(m.length - 4, false), 120);
  assert.throws(() => appendCtTimeout(new NlBuilder(), 0, orig, 0), RangeError);
});

const CONNTRACKD_S = `cache internal:
current active connections:	           0
connections created:		           0	failed:	           0
connections updated:		           0	failed:	           0
connections destroyed:		           0	failed:	           0

external inject:
connections created:		         264	failed:	           2
connections updated:		         634	failed:	           1
connections destroyed:		          12	failed:	           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=sync0):
               91724 Bytes sent               83312 Bytes recv
                 802 Pckts sent                 790 Pckts recv
                   0 Error send                    1 Error recv

message tracking:
                   0 Malformed msgs                    5 Lost msgs
`;

const CONNTRACKD_S_QUEUE = `allocated queue nodes:		           0

queue txqueue:
current elements:		           0
maximum elements:		  2147483647
not enough space errors:	           0

queue rsqueue:
current elements:		          17
maximum elements:		      131072
not enough space errors:	           0
`;

Deno.test("ha: conntrackd's statistics (1.4's text, as read from a running conntrackd)", () => {
  assert.deepEqual(parseConntrackdStats(CONNTRACKD_S, CONNTRACKD_S_QUEUE), {
    bytesSent: 91724,
    bytesReceived: 83312,
    packetsSent: 802,
    packetsReceived: 790,
    errors: 1,
    lostMessages: 5,
    malformedMessages: 0,
    injected: { created: 264, updated: 634, destroyed: 12, failed: 3 },
    resendQueue: 17,
  });
  assert.equal(parseConntrackdStats(CONNTRACKD_S)?.resendQueue, null);
  assert.equal(parseConntrackdStats("ERROR: cannot connect to the socket"), null);
});

Deno.test("ha: the flags go together, and --ha refuses what it cannot do", () => {
  const base = {
    "lan-addr": "10.0.0.1",
    pool: "203.0.113.10-203.0.113.13",
    "lan-if": "lan0",
    "wan-if": "wan0",
  };
  const ok = serverConfig({
    ...base,
    ha: true,
    "ha-fifo": "/run/keepalived/notify.fifo",
    "ha-marker": "169.254.0.51",
    "ha-peer": "10.255.0.2",
    upnp: false,
    "cookie-secret-file": "/etc/dpm/cookie.secret",
  });
  assert.equal(ok.ha, true);
  assert.equal(ok.haMarker, 0xa9fe0033);
  assert.equal(ok.haRefresh, 20);
  const problem = (raw: Record<string, unknown>) => {
    try {
      serverConfig({ ...base, ...raw });
      return "";
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.message;
    }
  };
  assert.match(problem({ ha: true, upnp: false }), /--ha needs .*--ha-fifo/);
  assert.match(problem({ ha: true, "ha-fifo": "/f" }), /--no-upnp/);
  assert.match(
    problem({ ha: true, "ha-fifo": "/f", upnp: false, "add-pool-addresses": true }),
    /drop --add-pool-addresses/,
  );
  assert.match(problem({ "ha-fifo": "/f" }), /need --ha/);
  assert.match(problem({ "ha-peer": "nonsense" }), /--ha-peer/);
});

/** A VRRPv3 advert in an IPv4 packet (RFC 5798 section 5.1). */
function advert(
  o: { from: string; vrid?: number; priority: number; addrs: string[]; proto?: number },
) {
  const p = new Uint8Array(20 + 8 + 4 * o.addrs.length);
  const dv = new DataView(p.buffer);
  p[0] = 0x45;
  p[8] = 255;
  p[9] = o.proto ?? 112;
  dv.setUint32(12, parseIPv4(o.from)!);
  dv.setUint32(16, parseIPv4("10.0.0.3")!);
  p[20] = 0x31;
  p[21] = o.vrid ?? 51;
  p[22] = o.priority;
  p[23] = o.addrs.length;
  dv.setUint16(24, 5); // 0.05 s
  o.addrs.forEach((a, i) => dv.setUint32(28 + 4 * i, parseIPv4(a)!));
  return p;
}

Deno.test("ha: VRRP adverts decode; other packets do not", () => {
  const a = decodeAdvert(advert({ from: "10.0.0.2", priority: 150, addrs: ["169.254.0.51"] }))!;
  assert.equal(formatIPv4(a.from), "10.0.0.2");
  assert.deepEqual([a.version, a.vrid, a.priority, a.intervalCs], [3, 51, 150, 5]);
  assert.deepEqual(a.addrs.map(formatIPv4), ["169.254.0.51"]);
  assert.equal(decodeAdvert(advert({ from: "10.0.0.2", priority: 1, addrs: [], proto: 17 })), null);
  const short = advert({ from: "10.0.0.2", priority: 1, addrs: ["1.2.3.4"] }).subarray(0, 30);
  assert.equal(decodeAdvert(short), null, "a count that overruns the packet");
  assert.equal(decodeAdvert(new Uint8Array(3)), null);
});

Deno.test("ha: adverts heard: the standby's heartbeat; split brains counted once per run, preemption not", () => {
  const marker = parseIPv4("169.254.0.51")!;
  const w = new AdvertWatch(marker);
  const mine = (priority: number) =>
    advert({ from: "10.0.0.2", priority, addrs: ["169.254.0.51"] });
  // Standby: the active's adverts, no split brain.
  w.packet(mine(150), 1000, null, 100, formatIPv4);
  w.packet(mine(150), 1050, null, 100, formatIPv4);
  assert.deepEqual(
    [w.stats.heard, w.stats.lastAt, w.stats.lastFrom, w.stats.lastPriority, w.stats.splitBrains],
    [2, 1050, "10.0.0.2", 150, 0],
  );
  // Another instance (no marker) is ignored.
  w.packet(
    advert({ from: "10.0.0.9", priority: 200, addrs: ["169.254.0.52"] }),
    1060,
    0,
    150,
    formatIPv4,
  );
  assert.equal(w.stats.ignored, 1);
  // Active at 150: a higher priority is a preemption (failback), not counted.
  w.packet(mine(200), 1100, 0, 150, formatIPv4);
  assert.equal(w.stats.splitBrains, 0);
  // A lower priority claims while this box is active: one run, counted once.
  // Just active (the old master's last adverts): not counted.
  w.packet(mine(100), 1500, 1000, 150, formatIPv4);
  assert.equal(w.stats.splitBrains, 0);
  for (let t = 2000; t < 2500; t += 50) w.packet(mine(100), t, 0, 150, formatIPv4);
  assert.deepEqual([w.stats.splitBrains, w.stats.whileActive], [1, 10]);
  // Quiet for longer than SPLIT_QUIET_MS: the next claim is another run.
  w.packet(mine(100), 2450 + SPLIT_QUIET_MS + 1, 0, 150, formatIPv4);
  assert.equal(w.stats.splitBrains, 2);
  // Released, then active again: a new run at once.
  w.released();
  w.packet(mine(100), 2450 + SPLIT_QUIET_MS + 50, 0, 150, formatIPv4);
  assert.equal(w.stats.splitBrains, 3);
  // Priority 0: the peer resigns.
  w.packet(mine(0), 9000, 0, 150, formatIPv4);
  assert.equal(w.stats.splitBrains, 3);
});

Deno.test("ha rig: the PCP/NAT-PMP client's epoch check (RFC 6887 8.5) and the mapping probes' figures", () => {
  const prev = { epoch: 100, at: 1000 };
  assert.equal(stateLost(null, 0, 0), false, "nothing to compare with");
  assert.equal(stateLost(prev, 110, 1010), false, "both clocks moved 10 s");
  assert.equal(stateLost(prev, 98, 1000), true, "the epoch went back");
  assert.equal(stateLost(prev, 3, 1010), true, "a new server (a takeover's new epoch)");
  assert.equal(stateLost(prev, 101, 1030), true, "the server's clock fell behind by far");
  // Probes answered every 50 ms, a gap from 1000 to 1400 after an event at 900.
  const sent: number[] = [];
  for (let t = 0; t < 3000; t += 50) if (t <= 1000 || t >= 1400) sent.push(t);
  const f = mappingFigures(sent, 900, 1200, 3000);
  assert.deepEqual(f, { outageMs: 400, backAfterMs: 500, withinWindow: true });
  // Never stopped.
  const all = Array.from({ length: 60 }, (_, i) => i * 50);
  assert.deepEqual(mappingFigures(all, 900, 1000, 3000), {
    outageMs: 50,
    backAfterMs: 0,
    withinWindow: true,
  });
  // Stopped for good.
  assert.equal(mappingFigures(sent.filter((t) => t < 1000), 900, 1000, 3000).backAfterMs, null);
});

Deno.test("ha: the standby's guard drops new conntracks for G, the pool and the LAN from the WAN; off deletes it", () => {
  const scope = {
    lanIf: "lan0",
    wanIf: "wan0",
    g: parseIPv4("10.0.0.1")!,
    lan: { addr: parseIPv4("10.0.0.0")!, len: 24 },
    pool: [parseIPv4("203.0.113.10")!, parseIPv4("203.0.113.11")!],
  };
  const on = guardRuleset(true, scope);
  assert.match(
    on,
    /^table ip dpm_ha_guard\ndelete table ip dpm_ha_guard\ntable ip dpm_ha_guard \{/,
  );
  assert.match(
    on,
    /type filter hook prerouting priority mangle; policy accept;\n {4}ct state != new accept\n/,
  );
  assert.match(on, /iifname "wan0" ip daddr \{ 203\.0\.113\.10, 203\.0\.113\.11 \} counter drop/);
  assert.match(on, /iifname "wan0" ip daddr 10\.0\.0\.0\/24 counter drop/);
  assert.match(on, /iifname "lan0" ip daddr 10\.0\.0\.1 counter drop/);
  assert.match(on, /type filter hook forward priority filter; policy accept;/);
  assert.match(on, /oifname "wan0" ip daddr 10\.0\.0\.0\/24 counter drop/);
  assert.equal(guardRuleset(false, scope), "table ip dpm_ha_guard\ndelete table ip dpm_ha_guard\n");
});
