/**
 * The server's logic without sockets: control messages as real bytes in and
 * out (claims 1, 2, 4, 7-10, 22), and packet translation on real packet bytes
 * (claim 6), including ICMP errors, hairpinning and every drop path.
 */

import assert from "node:assert/strict";
import {
  decodeAnswerHeader,
  ENTRY_LEN,
  HEADER_LEN,
  MAX_ENTRIES,
  newEntry,
  writeEntry,
  writeRequestHeader,
} from "../../src/control/batch.ts";
import {
  REFUSAL_BURST,
  REFUSAL_LOG_LINES,
  REFUSAL_RATE,
  ServerCore,
} from "../../src/server/core.ts";
import { COOKIE_ROTATE_MS } from "../../src/control/cookie.ts";
import { isSessionRecord } from "../../src/server/restore.ts";
import { Verdict } from "../../src/wire/meta.ts";
import {
  decodeResponse,
  encodeRequest,
  newNonce,
  Op,
  type Request,
  type Response,
} from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import {
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  PacketInfo,
  parse,
} from "../../src/wire/packet.ts";
import {
  buildIcmpEcho,
  buildIcmpError,
  buildTcp,
  buildUdp,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";
import {
  cookieOf,
  G,
  H1,
  H2,
  handleVerified,
  ip,
  P1,
  P2,
  R1,
  R2,
  serverCfg,
} from "../../testing/fixtures.ts";

function req(o: Partial<Request> = {}): Request {
  return {
    op: Op.RESERVE,
    nonce: newNonce(),
    proto: IPPROTO_UDP,
    replaceable: true,
    internalAddr: H1,
    internalPort: 40000,
    remoteAddr: P1,
    remotePort: 7000,
    lifetime: 0,
    ...o,
  };
}

/** A request from `src` as its driver sends it: with the cookie the host holds. */
function ask(core: ServerCore, r: Request, src = r.internalAddr): Response {
  const reply = handleVerified(core, encodeRequest(r), src);
  assert.ok(reply, "server must answer a well-formed request");
  const d = decodeResponse(reply);
  assert.ok(d.ok, "reply must decode");
  assert.deepEqual(d.res.nonce, r.nonce, "nonce echoed");
  return d.res;
}

function parsed(pkt: Uint8Array): PacketInfo {
  const info = new PacketInfo();
  assert.equal(parse(pkt, pkt.length, info), 0, "packet parses");
  return info;
}

Deno.test("server: claim 1/4 reserve grants a pool address, a gateway port and an RFC 4787 lifetime", () => {
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan, epoch: 0x1234 });
  const r = ask(core, req());
  assert.equal(r.result, Result.OK);
  assert.ok([R1, R2].includes(r.publicAddr));
  assert.equal(r.publicPort, 40000, "port preserved when free");
  assert.ok(r.gatewayPort >= 61000 && r.gatewayPort <= 65535);
  assert.ok(r.lifetime >= 120, `UDP lifetime ${r.lifetime} >= 120 s`);
  assert.equal(r.epoch, 0x1234);
  assert.equal(core.table.size, 1);
  // The remote endpoint travelled in the request and is part of the session (claim 4).
  const s = core.table.lookupPublic(IPPROTO_UDP, r.publicAddr, r.publicPort, P1, 7000);
  assert.ok(s >= 0);
  // A retransmission gets the same answer.
  const again = ask(core, { ...req(), nonce: newNonce() });
  assert.deepEqual([again.publicAddr, again.publicPort, again.gatewayPort], [
    r.publicAddr,
    r.publicPort,
    r.gatewayPort,
  ]);
  assert.equal(core.table.size, 1);
});

Deno.test("server: claim 2 a request whose internal address is not its source is not authorized", () => {
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan });
  const r = ask(core, req({ internalAddr: H1 }), H2);
  assert.equal(r.result, Result.NOT_AUTHORIZED);
  assert.equal(core.table.size, 0);
  assert.equal(core.results[Result.NOT_AUTHORIZED], 1);
});

Deno.test("server: a second host cannot renew or release the first host's session", () => {
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan });
  assert.equal(ask(core, req()).result, Result.OK);
  // Claiming to be H1 from H2 is refused...
  assert.equal(ask(core, req({ op: Op.RENEW }), H2).result, Result.NOT_AUTHORIZED);
  assert.equal(ask(core, req({ op: Op.RELEASE }), H2).result, Result.NOT_AUTHORIZED);
  // ...and speaking for itself, H2 holds no such session.
  assert.equal(ask(core, req({ op: Op.RENEW, internalAddr: H2 })).result, Result.NO_SUCH_SESSION);
  assert.equal(ask(core, req({ op: Op.RELEASE, internalAddr: H2 })).result, Result.NO_SUCH_SESSION);
  assert.equal(core.table.size, 1, "H1's session survives");
  // H1 itself can renew and release it.
  assert.equal(ask(core, req({ op: Op.RENEW })).result, Result.OK);
  assert.equal(ask(core, req({ op: Op.RELEASE })).result, Result.OK);
  assert.equal(core.table.size, 0);
});

Deno.test("server: requests from outside the LAN and toward LAN remotes are refused", () => {
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan });
  const outsider = ip("192.0.2.7");
  assert.equal(
    core.handleControl(encodeRequest(req({ internalAddr: outsider })), outsider),
    null,
    "no answer outside",
  );
  assert.equal(core.results[Result.NOT_AUTHORIZED], 1);
  assert.equal(ask(core, req({ remoteAddr: H2 })).result, Result.BAD_REMOTE);
  assert.equal(ask(core, req({ remoteAddr: G })).result, Result.BAD_REMOTE);
  assert.equal(core.table.size, 0);
});

Deno.test("server: garbage gets no answer, a wrong version a precise one, and both are counted", () => {
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan });
  assert.equal(core.handleControl(new Uint8Array([1, 2, 3]), H1), null);
  assert.equal(core.handleControl(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"), H1), null);
  const bad = encodeRequest(req());
  bad[2] = 9; // a version after 3: told in version 3's header, which is shorter
  const reply = core.handleControl(bad, H1);
  assert.ok(reply);
  assert.ok(reply.length <= bad.length);
  const d = decodeAnswerHeader(reply);
  assert.ok(d.ok, d.ok ? "" : d.reason);
  assert.equal(d.result, Result.UNSUPPORTED_VERSION);
  assert.equal(d.count, 0);
  assert.deepEqual([d.nonceHi, d.nonceLo], [
    new DataView(bad.buffer).getUint32(4),
    new DataView(bad.buffer).getUint32(8),
  ]);
  // Version 1 (32 bytes, shorter than any version-2 answer) still gets none.
  const v1 = bad.slice(0, 32);
  v1[2] = 1;
  assert.equal(core.handleControl(v1, H1), null);
  assert.equal(core.results[Result.MALFORMED], 2);
  assert.equal(core.results[Result.UNSUPPORTED_VERSION], 2);
});

Deno.test("server: a host over its request rate is told so, a few times a second, others are not affected", () => {
  let now = 1_000_000;
  const core = new ServerCore(serverCfg({ rateLimit: 5 }), {
    lan: serverCfg().lan,
    now: () => now,
  });
  const results: (number | null)[] = [];
  for (let i = 0; i < 40; i++) {
    const reply = handleVerified(core, encodeRequest(req({ internalPort: 40000 + i })), H1);
    results.push(reply ? (decodeResponse(reply) as { res: Response }).res.result : null);
  }
  assert.equal(results.filter((r) => r === Result.OK).length, 10, "burst of 2 x rate");
  const told = results.filter((r) => r === Result.RATE_LIMITED).length;
  assert.ok(told >= 1 && told <= REFUSAL_BURST, `told ${told} times, then silence`);
  assert.equal(results.filter((r) => r === null).length, 30 - told, "the rest unanswered");
  assert.equal(core.results[Result.RATE_LIMITED], 30, "all counted");
  assert.equal(
    ask(core, req({ internalAddr: H2 })).result,
    Result.OK,
    "another host is not limited",
  );
  now += 2000;
  assert.equal(ask(core, req({ internalPort: 50000 })).result, Result.OK, "tokens refill");
});

function setup(over = {}) {
  const cfg = serverCfg(over);
  const core = new ServerCore(cfg, { lan: cfg.lan });
  return { core, cfg };
}

Deno.test("server: claim 6 translates a:pa -> G:Pg into R:p -> X:px and the reply back", () => {
  const { core } = setup();
  const g = ask(core, req());
  const out = buildUdp({ src: H1, sport: 40000, dst: G, dport: g.gatewayPort, ttl: 64 });
  assert.equal(core.handlePacket(out), Verdict.MODIFIED);
  let i = parsed(out);
  assert.deepEqual([i.src, i.sport, i.dst, i.dport], [g.publicAddr, g.publicPort, P1, 7000]);
  assert.ok(verifyIpChecksum(out) && verifyL4Checksum(out));
  const back = buildUdp({ src: P1, sport: 7000, dst: g.publicAddr, dport: g.publicPort });
  assert.equal(core.handlePacket(back), Verdict.MODIFIED);
  i = parsed(back);
  assert.deepEqual([i.src, i.sport, i.dst, i.dport], [G, g.gatewayPort, H1, 40000]);
  assert.ok(verifyIpChecksum(back) && verifyL4Checksum(back));
  assert.deepEqual(core.packets, { in: 1, out: 1, hairpin: 0 });
});

Deno.test("server: TCP translation keeps checksums valid both ways", () => {
  const { core } = setup();
  const g = ask(core, req({ proto: IPPROTO_TCP, remotePort: 80 }));
  const syn = buildTcp({ src: H1, sport: 40000, dst: G, dport: g.gatewayPort });
  assert.equal(core.handlePacket(syn), Verdict.MODIFIED);
  assert.ok(verifyIpChecksum(syn) && verifyL4Checksum(syn));
  const synack = buildTcp({
    src: P1,
    sport: 80,
    dst: g.publicAddr,
    dport: g.publicPort,
    flags: 0x12,
  });
  assert.equal(core.handlePacket(synack), Verdict.MODIFIED);
  const i = parsed(synack);
  assert.deepEqual([i.src, i.sport, i.dst, i.dport], [G, g.gatewayPort, H1, 40000]);
  assert.ok(verifyL4Checksum(synack));
});

Deno.test("server: claims 8-10, 22 two hosts share a fixed port, replies told apart by the remote", () => {
  const { core } = setup({ pool: [R1] });
  const a = ask(
    core,
    req({
      internalAddr: H1,
      internalPort: 5060,
      replaceable: false,
      remoteAddr: P1,
      remotePort: 5060,
    }),
  );
  const b = ask(
    core,
    req({
      internalAddr: H2,
      internalPort: 5060,
      replaceable: false,
      remoteAddr: P2,
      remotePort: 5060,
    }),
  );
  assert.equal(a.result, Result.OK);
  assert.equal(b.result, Result.OK);
  assert.deepEqual([a.publicAddr, a.publicPort], [R1, 5060]);
  assert.deepEqual([b.publicAddr, b.publicPort], [R1, 5060]);
  assert.ok(b.shared, "second session flagged shared");
  const fromP2 = buildUdp({ src: P2, sport: 5060, dst: R1, dport: 5060 });
  const fromP1 = buildUdp({ src: P1, sport: 5060, dst: R1, dport: 5060 });
  assert.equal(core.handlePacket(fromP2), Verdict.MODIFIED);
  assert.equal(core.handlePacket(fromP1), Verdict.MODIFIED);
  assert.equal(parsed(fromP2).dst, H2);
  assert.equal(parsed(fromP1).dst, H1);
  // The same fixed port toward the same remote cannot be told apart: refused.
  const c = ask(
    core,
    req({
      internalAddr: ip("10.0.0.13"),
      internalPort: 5060,
      replaceable: false,
      remoteAddr: P1,
      remotePort: 5060,
    }),
  );
  assert.equal(c.result, Result.CONFLICT);
  // An outside peer with no session gets nothing.
  const stranger = buildUdp({ src: ip("198.51.100.99"), sport: 5060, dst: R1, dport: 5060 });
  assert.equal(core.handlePacket(stranger), Verdict.DROP);
  assert.equal(core.drops[11], 1, "counted as no-session");
});

Deno.test("server: ICMP echo uses the identifier as the port, Pg on the LAN side", () => {
  const { core } = setup();
  const g = ask(core, req({ proto: IPPROTO_ICMP, internalPort: 777, remotePort: 0 }));
  assert.equal(g.result, Result.OK);
  const ping = buildIcmpEcho({ src: H1, dst: G, id: g.gatewayPort, seq: 1, type: 8 });
  assert.equal(core.handlePacket(ping), Verdict.MODIFIED);
  let i = parsed(ping);
  assert.deepEqual([i.src, i.sport, i.dst], [g.publicAddr, g.publicPort, P1]);
  assert.ok(verifyL4Checksum(ping));
  const pong = buildIcmpEcho({ src: P1, dst: g.publicAddr, id: g.publicPort, seq: 1, type: 0 });
  assert.equal(core.handlePacket(pong), Verdict.MODIFIED);
  i = parsed(pong);
  assert.deepEqual([i.src, i.dst, i.dport], [G, H1, g.gatewayPort]);
  assert.ok(verifyL4Checksum(pong));
});

Deno.test("server: ICMP errors from outside come back translated with their quoted header (RFC 5508)", () => {
  const { core } = setup();
  const g = ask(core, req());
  const router = ip("203.0.113.254");
  // What left the gateway: R:p -> X:px. A router reports TTL expiry.
  const sent = buildUdp({ src: g.publicAddr, sport: g.publicPort, dst: P1, dport: 7000, ttl: 1 });
  const err = buildIcmpError({
    src: router,
    dst: g.publicAddr,
    type: 11,
    code: 0,
    quoted: sent.subarray(0, 28),
  });
  assert.equal(core.handlePacket(err), Verdict.MODIFIED);
  const i = parsed(err);
  assert.equal(i.src, router, "the reporting router keeps its address");
  assert.equal(i.dst, H1);
  assert.deepEqual([i.innerSrc, i.innerSport, i.innerDst, i.innerDport], [
    H1,
    40000,
    G,
    g.gatewayPort,
  ]);
  assert.ok(verifyIpChecksum(err) && verifyL4Checksum(err));
  // Port unreachable from the peer itself.
  const unreach = buildIcmpError({
    src: P1,
    dst: g.publicAddr,
    type: 3,
    code: 3,
    quoted: sent.subarray(0, 28),
  });
  assert.equal(core.handlePacket(unreach), Verdict.MODIFIED);
  assert.equal(parsed(unreach).innerDport, g.gatewayPort);
  // An error about a session nobody holds is dropped.
  const other = buildUdp({ src: g.publicAddr, sport: 9, dst: P1, dport: 9 });
  const orphan = buildIcmpError({
    src: router,
    dst: g.publicAddr,
    type: 11,
    code: 0,
    quoted: other.subarray(0, 28),
  });
  assert.equal(core.handlePacket(orphan), Verdict.DROP);
});

Deno.test("server: an ICMP error from a host about a reply goes out translated", () => {
  const { core } = setup();
  const g = ask(core, req());
  // H1's kernel got G:Pg -> a:pa (the translated reply) and reports port unreachable.
  const got = buildUdp({ src: G, sport: g.gatewayPort, dst: H1, dport: 40000 });
  const err = buildIcmpError({ src: H1, dst: G, type: 3, code: 3, quoted: got.subarray(0, 28) });
  assert.equal(core.handlePacket(err), Verdict.MODIFIED);
  const i = parsed(err);
  assert.deepEqual([i.src, i.dst], [g.publicAddr, P1]);
  assert.deepEqual([i.innerSrc, i.innerSport, i.innerDst, i.innerDport], [
    P1,
    7000,
    g.publicAddr,
    g.publicPort,
  ]);
  assert.ok(verifyL4Checksum(err));
});

Deno.test("server: hairpinning delivers a host's packet to another host's public pair inside the LAN", () => {
  const { core } = setup();
  // Both learn their public pairs, then reserve toward each other's.
  const a0 = ask(core, req({ internalAddr: H1, internalPort: 40000 }));
  const b0 = ask(core, req({ internalAddr: H2, internalPort: 41000 }));
  const a = ask(
    core,
    req({
      internalAddr: H1,
      internalPort: 40000,
      remoteAddr: b0.publicAddr,
      remotePort: b0.publicPort,
    }),
  );
  const b = ask(
    core,
    req({
      internalAddr: H2,
      internalPort: 41000,
      remoteAddr: a0.publicAddr,
      remotePort: a0.publicPort,
    }),
  );
  assert.deepEqual(
    [a.publicAddr, a.publicPort],
    [a0.publicAddr, a0.publicPort],
    "endpoint-independent mapping",
  );
  const pkt = buildUdp({ src: H1, sport: 40000, dst: G, dport: a.gatewayPort });
  assert.equal(core.handlePacket(pkt), Verdict.MODIFIED);
  const i = parsed(pkt);
  assert.deepEqual([i.src, i.sport, i.dst, i.dport], [G, b.gatewayPort, H2, 41000]);
  assert.ok(verifyL4Checksum(pkt));
  assert.equal(core.packets.hairpin, 1);
});

Deno.test("server: drops are deliberate and counted: malformed, fragments, TTL, unknown sessions", () => {
  const { core } = setup();
  const g = ask(core, req());
  assert.equal(core.handlePacket(new Uint8Array([0x45, 0, 0])), Verdict.DROP);
  const frag = buildUdp({ src: P1, sport: 7000, dst: g.publicAddr, dport: g.publicPort });
  frag[6] = 0x20; // MF
  assert.equal(core.handlePacket(frag), Verdict.DROP);
  const ttl1 = buildUdp({ src: H1, sport: 40000, dst: G, dport: g.gatewayPort, ttl: 1 });
  assert.equal(core.handlePacket(ttl1), Verdict.DROP);
  const wrongPort = buildUdp({ src: H1, sport: 40001, dst: G, dport: g.gatewayPort });
  assert.equal(core.handlePacket(wrongPort), Verdict.DROP);
  // TCP/UDP to an unknown Pg pass to the kernel, which answers from G (the driver learns the session is gone).
  const unknown = buildUdp({ src: H2, sport: 40000, dst: G, dport: 61000 });
  assert.equal(core.handlePacket(unknown), Verdict.ACCEPT);
  const st = core.status();
  assert.equal(st.drops["truncated"], 1);
  assert.equal(st.drops["fragment"], 1);
  assert.equal(st.drops["ttl-exceeded"], 1);
  assert.equal(st.drops["internal-port-mismatch"], 1);
  assert.equal(st.drops["not-ours"], 1);
  // A ping of the gateway itself is the kernel's to answer.
  const ping = buildIcmpEcho({ src: H2, dst: G, id: 0x1234, seq: 1, type: 8 });
  assert.equal(core.handlePacket(ping), Verdict.ACCEPT);
  assert.equal(st.sessions, 1);
  assert.equal(
    st.shown[0]?.public,
    `${[203, 0, 113, g.publicAddr & 255].join(".")}:${g.publicPort}`,
  );
});

Deno.test("server: sessions expire with the injected clock", () => {
  let now = 5_000_000;
  const cfg = serverCfg();
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  const g = ask(core, req());
  assert.equal(core.expire(), 0);
  now += g.lifetime * 1000 + 1;
  assert.equal(core.expire(), 1);
  assert.equal(core.table.size, 0);
  const late = buildUdp({ src: P1, sport: 7000, dst: g.publicAddr, dport: g.publicPort });
  assert.equal(core.handlePacket(late), Verdict.DROP);
});

Deno.test("server: a flood of garbage from many LAN sources cannot lock hosts out for good", () => {
  let now = 9_000_000;
  const cfg = serverCfg({ lan: { addr: ip("10.0.0.0"), len: 8 } });
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  for (let i = 0; i < 70_000; i++) {
    core.handleControl(new Uint8Array([1, 2, 3, 4]), (ip("10.1.0.0") + i) >>> 0);
  }
  now += 10_000;
  core.sweepRateLimits();
  assert.equal(
    ask(core, req({ internalAddr: H2 })).result,
    Result.OK,
    "a new host is served after the sweep",
  );
});

Deno.test("server: state-file records are checked before they are restored", () => {
  const cfg = serverCfg();
  const core = new ServerCore(cfg, { lan: cfg.lan });
  ask(core, req());
  const [rec] = [...core.table.entries()];
  assert.ok(rec && isSessionRecord(rec), "a real record passes");
  for (
    const bad of [
      null,
      7,
      { ...rec, a: "10.0.0.11" },
      { ...rec, proto: 47 },
      { ...rec, p: 70000 },
      { ...rec, shared: 1 },
    ]
  ) {
    assert.equal(isSessionRecord(bad), false, JSON.stringify(bad));
  }
});

// ---------------------------------------------------------------------------
// Forged sources (cookies), refusal budgets and refusal logs

const H3 = ip("10.0.0.13");

/** What the server answers raw `bytes` from `src` with: the decoded response, or null for silence. */
function raw(core: ServerCore, r: Request, src = r.internalAddr): Response | null {
  const reply = core.handleControl(encodeRequest(r), src);
  if (reply === null) return null;
  const d = decodeResponse(reply);
  assert.ok(d.ok, "reply must decode");
  return d.res;
}

Deno.test("server: requests forged in another host's name create, renew and release nothing (cookies)", () => {
  let now = 2_000_000;
  const cfg = serverCfg({ maxSessionsPerHost: 50 });
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  const mine = ask(core, req({ internalPort: 40000 }));
  assert.equal(mine.result, Result.OK);
  const expiresAt = core.table.expiresAt(
    core.table.lookupIdentity(IPPROTO_UDP, H1, 40000, P1, 7000),
  );
  // From h2, with h1's source address: no cookie, a guessed cookie, h2's own cookie.
  const h2Cookie = cookieOf(core, H2)!;
  const forgeries: Request[] = [];
  for (const cookie of [undefined, crypto.getRandomValues(new Uint8Array(12)), h2Cookie]) {
    const c = cookie ? { cookie } : {};
    forgeries.push(req({ op: Op.RENEW, internalPort: 40000, lifetime: 86400, ...c }));
    forgeries.push(req({ op: Op.RELEASE, internalPort: 40000, ...c }));
    for (let i = 0; i < 50; i++) {
      forgeries.push(req({ internalPort: 41000 + i, lifetime: 86400, ...c }));
      forgeries.push(req({ internalAddr: H3, internalPort: 41000 + i, lifetime: 86400, ...c }));
    }
  }
  for (const f of forgeries) {
    const r = raw(core, f);
    if (r) assert.equal(r.result, Result.COOKIE_REQUIRED, "refused, nothing done");
  }
  assert.equal(core.table.size, 1, "no session was created in h1's or h3's name");
  const s = core.table.lookupIdentity(IPPROTO_UDP, H1, 40000, P1, 7000);
  assert.ok(s >= 0, "h1's session was not released");
  assert.equal(core.table.expiresAt(s), expiresAt, "nor renewed");
  // (and the two handshakes of cookieOf)
  assert.equal(core.results[Result.COOKIE_REQUIRED], forgeries.length + 2);
  // h1 and h3 are served for themselves: h3's quota is whole. h1 holds a cookie and is
  // served at once; h3 has none and waits for the forgery to stop to get one (its
  // refusal budget was spent answering the forger: docs/protocol.md, Cookies).
  assert.equal(ask(core, req({ internalPort: 40001 })).result, Result.OK);
  assert.equal(cookieOf(core, H3), null);
  now += 1000;
  for (let i = 0; i < 50; i++) {
    assert.equal(ask(core, req({ internalAddr: H3, internalPort: 42000 + i })).result, Result.OK);
  }
  // A cookie stays good for the next period of the secret, not for the one after.
  const held = cookieOf(core, H1)!;
  now += COOKIE_ROTATE_MS;
  assert.equal(raw(core, req({ internalPort: 40002, cookie: held }))!.result, Result.OK);
  now += 2 * COOKIE_ROTATE_MS;
  const stale = raw(core, req({ internalPort: 40003, cookie: held }))!;
  assert.equal(stale.result, Result.COOKIE_REQUIRED);
  assert.notDeepEqual(stale.cookie, held, "the answer carries the new cookie");
  assert.equal(raw(core, req({ internalPort: 40003, cookie: stale.cookie! }))!.result, Result.OK);
});

Deno.test("server: a forged flood gets a few short answers a second, never more bytes than it sent, and the host stays served", () => {
  let now = 3_000_000;
  const cfg = serverCfg({ rateLimit: 2000 });
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  assert.equal(ask(core, req({ internalPort: 30000 })).result, Result.OK); // h1 holds a cookie
  const cookie = cookieOf(core, H1)!;
  let replies = 0;
  let replyBytes = 0;
  let requestBytes = 0;
  let own = 0;
  // 4 s of 62,500 forged requests a second in h1's name, and h1's own 20 reservations among them.
  const forged = encodeRequest(req({ internalPort: 50000, lifetime: 86400 }));
  for (let i = 0; i < 250_000; i++) {
    now = 3_000_000 + Math.floor(i / 62.5);
    const reply = core.handleControl(forged, H1);
    requestBytes += forged.length;
    if (reply) {
      replies++;
      replyBytes += reply.length;
      assert.ok(reply.length <= forged.length, "no answer is longer than its request");
    }
    if (i % 12_500 === 0) {
      const r = raw(core, req({ internalPort: 31000 + own, cookie }));
      assert.equal(r?.result, Result.OK, `h1's own reservation ${own} is served`);
      own++;
    }
  }
  assert.equal(own, 20);
  const budget = REFUSAL_BURST + REFUSAL_RATE * 4;
  assert.ok(replies <= budget, `${replies} replies to 250,000 forged requests (budget ${budget})`);
  assert.ok(replyBytes <= requestBytes);
  assert.equal(core.table.size, 21);
  assert.equal(core.unanswered, 250_000 - replies);
  // A version-1 request (32 bytes) is never answered: the answer would be longer.
  const v1 = encodeRequest(req()).slice(0, 32);
  v1[2] = 1;
  assert.equal(core.handleControl(v1, H2), null);
});

Deno.test("server: once a source's refusal budget is spent, its unverified datagrams are counted and shed undecoded; its verified ones are still served", () => {
  let now = 3_500_000;
  const lines: string[] = [];
  const cfg = serverCfg();
  const core = new ServerCore(cfg, {
    lan: cfg.lan,
    now: () => now,
    refusalLog: (l) => lines.push(l),
  });
  assert.equal(ask(core, req({ internalPort: 30000 })).result, Result.OK);
  const cookie = cookieOf(core, H1)!;
  const before = core.results[Result.COOKIE_REQUIRED]!;
  // Spend h1's refusal budget with cookie-less requests: the first REFUSAL_BURST are answered.
  let answered = 0;
  for (let i = 0; i < 100; i++) {
    if (core.handleControl(encodeRequest(req({ internalPort: 50000 + i })), H1)) answered++;
  }
  assert.ok(
    answered > 0 && answered < REFUSAL_BURST,
    `${answered} answered (the handshake took one)`,
  );
  const shed0 = core.shed;
  assert.ok(shed0 > 0, "the rest were shed");
  // A version-2 request with a malformed body: shed by its header's claim, so cookie-required, not malformed.
  const bad = encodeRequest(req({ internalPort: 50500 }));
  bad[60] = 1; // padding
  const malformed = core.results[Result.MALFORMED]!;
  assert.equal(core.handleControl(bad, H1), null);
  assert.equal(core.results[Result.MALFORMED], malformed);
  // A version-3 datagram of 45 entries with a wrong cookie: 45 refusals, one shed datagram.
  const b = new Uint8Array(HEADER_LEN + MAX_ENTRIES * ENTRY_LEN);
  writeRequestHeader(b, 0, 1, MAX_ENTRIES, H1, new Uint8Array(12).fill(7));
  const e = newEntry();
  for (let i = 0; i < MAX_ENTRIES; i++) {
    Object.assign(e, { op: Op.RESERVE, proto: IPPROTO_UDP, replaceable: true, nonceLo: i });
    Object.assign(e, { internalPort: 51000 + i, remoteAddr: P1, remotePort: 7000 });
    writeEntry(b, i, e);
  }
  assert.equal(core.handleControl(b, H1), null);
  assert.equal(core.shed, shed0 + 2);
  assert.equal(core.results[Result.COOKIE_REQUIRED]! - before, 100 + 1 + MAX_ENTRIES);
  // In another host's name from h1's address: not authorized, shed too.
  const na = core.results[Result.NOT_AUTHORIZED]!;
  assert.equal(core.handleControl(encodeRequest(req({ internalAddr: H2 })), H1), null);
  assert.equal(core.results[Result.NOT_AUTHORIZED], na + 1);
  assert.equal(core.shed, shed0 + 3);
  // h1's own request with its cookie is served, budget or not.
  const r = core.handleControl(encodeRequest(req({ internalPort: 30001, cookie })), H1);
  assert.ok(r);
  const dr = decodeResponse(r);
  assert.ok(dr.ok);
  assert.equal(dr.res.result, Result.OK);
  assert.equal(core.table.size, 2);
  // Lines within the line budget are the full path's, even for shed datagrams.
  assert.equal(lines.length, REFUSAL_LOG_LINES);
  assert.match(lines.at(-1)!, /cookie-required \(no cookie\) .*; not answered \(refusal budget\)$/);
  // A second later the budget is back: answered again.
  now += 1000;
  assert.ok(core.handleControl(encodeRequest(req({ internalPort: 52000 })), H1));
});

Deno.test("server: a host over its rate with its refusal budget spent is shed too, counted rate-limited; a second later it is served", () => {
  let now = 3_700_000;
  const cfg = serverCfg({ rateLimit: 10 }); // burst 20
  const core = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  const cookie = cookieOf(core, H1)!;
  let answers = 0;
  for (let i = 0; i < 200; i++) {
    if (core.handleControl(encodeRequest(req({ internalPort: 20000 + i, cookie })), H1)) answers++;
  }
  const ok = core.results[Result.OK]!;
  assert.equal(core.table.size, ok);
  assert.ok(ok >= 19 && ok <= 20, `${ok} granted within the burst`);
  assert.equal(core.results[Result.RATE_LIMITED], 200 - ok, "every other one counted rate-limited");
  assert.ok(answers - ok <= REFUSAL_BURST, `${answers - ok} refusals answered`);
  assert.ok(core.shed >= 200 - ok - REFUSAL_BURST, `${core.shed} shed`);
  now += 1000;
  const r = core.handleControl(encodeRequest(req({ internalPort: 29999, cookie })), H1);
  assert.ok(r);
  const d = decodeResponse(r);
  assert.ok(d.ok);
  assert.equal(d.res.result, Result.OK);
});

Deno.test("server: refusals are logged at info, rate-limited, with host, tuple, reason and quota use", () => {
  let now = 4_000_000;
  const lines: string[] = [];
  const cfg = serverCfg({ maxSessionsPerHost: 2, pool: [R1] });
  const core = new ServerCore(cfg, {
    lan: cfg.lan,
    now: () => now,
    refusalLog: (l) => lines.push(l),
  });
  // The normal handshake (a first request without a cookie) is not a refusal worth a line.
  assert.equal(ask(core, req({ internalPort: 40000 })).result, Result.OK);
  assert.equal(ask(core, req({ internalPort: 40001 })).result, Result.OK);
  assert.equal(lines.length, 0, lines.join("\n"));
  assert.equal(ask(core, req({ internalPort: 40002 })).result, Result.QUOTA_EXCEEDED);
  assert.equal(lines.length, 1);
  assert.match(
    lines[0]!,
    /^refused reserve udp 10\.0\.0\.11:40002 -> 198\.51\.100\.10:7000 from 10\.0\.0\.11: quota-exceeded \(host holds 2\/2 sessions\)$/,
  );
  // A flood of forged requests: at most REFUSAL_LOG_LINES lines a second, then a summary.
  lines.length = 0;
  now += 1000;
  for (let i = 0; i < 1000; i++) raw(core, req({ internalPort: 45000 + i, lifetime: 86400 }));
  assert.equal(lines.length, REFUSAL_LOG_LINES);
  assert.match(
    lines.at(-1)!,
    /10\.0\.0\.11:45\d+ .* cookie-required \(no cookie\) \(host holds 2\/2 sessions\)/,
  );
  assert.ok(lines.some((l) => l.endsWith("; not answered (refusal budget)")));
  now += 1000;
  core.sweepRateLimits();
  // The first few were answered with the cookie (the handshake, not logged).
  const logged = 1000 - REFUSAL_BURST;
  assert.equal(
    lines.at(-1),
    `suppressed ${
      logged - REFUSAL_LOG_LINES
    } refusal line(s) (more than ${REFUSAL_LOG_LINES} a second)`,
  );
  // An old driver's version-1 request is named.
  const v1 = encodeRequest(req()).slice(0, 32);
  v1[2] = 1;
  assert.equal(core.handleControl(v1, H2), null);
  assert.match(
    lines.at(-1)!,
    /^refused a request from 10\.0\.0\.12: unsupported-version \(unsupported version 1\); not answered$/,
  );
});
