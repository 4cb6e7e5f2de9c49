/**
 * The independent PCP / NAT-PMP test client (testing/pcp_client.ts) against
 * hand-written hex of the RFC 6887 / RFC 6886 layouts, then against the
 * server (src/pcp/server.ts `PcpService.handle`, built as ServerCore builds
 * it): every answer is parsed by the client, never by src/pcp/codec.ts, so a
 * codec bug shows. Ends with a fast-check fuzz of `handle` on random and
 * mutated valid datagrams: it never throws, every reply is a well-formed
 * response that never outgrows its request.
 *
 * Amplification bound used (decided from RFC 6887 sections 7 and 8.3 and
 * RFC 6886 section 3): a PCP reply is never longer than its request (a
 * success answers the same layout, minus the options that are not echoed;
 * an error copies the request, cut to 1100 bytes and to a multiple of 4);
 * a NAT-PMP reply is at most 16 bytes (12 for a 2-byte address request, as
 * RFC 6886 prescribes, 16 for a 12-byte map request, 8 for an error).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { PcpService } from "../../src/pcp/server.ts";
import { LanHosts } from "../../src/policy/hosts.ts";
import { MappingPolicy } from "../../src/policy/mappings.ts";
import { defaultRules } from "../../src/policy/rules.ts";
import { SessionTable } from "../../src/table/table.ts";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import { formatIPv4, parseIPv4 } from "../../src/wire/addr.ts";
import {
  buildAnnounce,
  buildMap,
  buildNatPmpAddress,
  buildNatPmpMap,
  buildPeer,
  filter,
  hex,
  type MapFields,
  mapped,
  NATPMP_RESULT,
  OP,
  OPT,
  parseNatPmpResponse,
  parsePcpResponse,
  type PeerFields,
  preferFailure,
  replyProblems,
  RESULT,
  thirdParty,
  unhex,
} from "../../testing/pcp_client.ts";

const ip = (t: string) => parseIPv4(t)!;
const H1T = "10.0.0.11";
const H2T = "10.0.0.12";
const H1 = ip(H1T);
const H2 = ip(H2T);
const POOL = ["203.0.113.10", "203.0.113.11"];
const NONCE = unhex("0102030405060708090a0b0c");
const NONCE2 = unhex("a1a2a3a4a5a6a7a8a9aaabac");
const LONG = 1800;

// ---------------------------------------------------------------- the client's bytes

Deno.test("pcp client: requests are the RFC 6887 layouts, byte for byte", () => {
  const client = "00000000000000000000ffff0a00000b"; // ::ffff:10.0.0.11
  assert.equal(
    hex(buildAnnounce({ lifetime: 0, client: H1T })),
    "02000000" + "00000000" + client,
  );
  assert.equal(
    hex(buildMap({
      lifetime: 7200,
      client: H1T,
      nonce: NONCE,
      protocol: 6,
      internalPort: 8080,
      externalPort: 80,
      options: [preferFailure()],
    })),
    "02010000" + "00001c20" + client +
      "0102030405060708090a0b0c" + "06000000" + "1f90" + "0050" +
      "00000000000000000000ffff00000000" + // no preference: ::ffff:0.0.0.0 (section 5)
      "02000000", // PREFER_FAILURE, length 0
  );
  assert.equal(
    hex(buildPeer({
      lifetime: 120,
      client: H1T,
      nonce: NONCE,
      protocol: 17,
      internalPort: 4000,
      externalPort: 0,
      externalAddr: "203.0.113.10",
      remotePort: 3478,
      remoteAddr: "198.51.100.10",
    })),
    "02020000" + "00000078" + client +
      "0102030405060708090a0b0c" + "11000000" + "0fa0" + "0000" +
      "00000000000000000000ffffcb00710a" +
      "0d96" + "0000" + "00000000000000000000ffffc633640a",
  );
  assert.equal(
    hex(buildAnnounce({ lifetime: 0, client: H1T, options: [thirdParty("10.0.0.12")] })).slice(48),
    "01000010" + "00000000000000000000ffff0a00000c",
  );
  assert.equal(
    hex(buildAnnounce({
      lifetime: 0,
      client: H1T,
      options: [filter(120, 443, "198.51.100.0"), { code: 200, data: unhex("aabbcc") }],
    })).slice(48),
    "03000014" + "00" + "78" + "01bb" + "00000000000000000000ffffc6336400" +
      "c8000003" + "aabbcc00", // an odd length is padded to 4
  );
  assert.equal(hex(buildNatPmpAddress()), "0000");
  assert.equal(hex(buildNatPmpMap(1, 5000, 6000, 60)), "00010000" + "1388" + "1770" + "0000003c");
  assert.equal(hex(buildNatPmpMap(2, 22, 0, 0)), "00020000" + "0016" + "0000" + "00000000");
  assert.equal(hex(mapped("1.2.3.4")), "00000000000000000000ffff01020304");
  assert.throws(() =>
    buildMap({ lifetime: 1, client: H1T, nonce: new Uint8Array(11), protocol: 6, internalPort: 1 })
  );
});

Deno.test("pcp client: responses parse field by field; layout faults are named", () => {
  const map = unhex(
    "02810000" + "00000258" + "0000002a" + "000000000000000000000000" +
      "0102030405060708090a0b0c" + "06000000" + "1f90" + "1f91" +
      "00000000000000000000ffffcb00710a" + "02000000",
  );
  const r = parsePcpResponse(map);
  assert.deepEqual(r.problems, []);
  assert.equal(r.version, 2);
  assert.equal(r.response, true);
  assert.equal(r.opcode, OP.MAP);
  assert.equal(r.result, 0);
  assert.equal(r.lifetime, 600);
  assert.equal(r.epoch, 42);
  assert.deepEqual(r.nonce, NONCE);
  assert.equal(r.protocol, 6);
  assert.equal(r.internalPort, 8080);
  assert.equal(r.externalPort, 8081);
  assert.equal(r.externalAddr, "203.0.113.10");
  assert.deepEqual(r.options.map((o) => [o.code, o.length]), [[OPT.PREFER_FAILURE, 0]]);
  const peer = parsePcpResponse(unhex(
    "02820002" + "00000708" + "00000001" + "00".repeat(12) + "00".repeat(12) + "11000000" +
      "0fa0" + "0000" + "00".repeat(16) + "0d96" + "0000" + "00000000000000000000ffffc633640a",
  ));
  assert.deepEqual(peer.problems, []);
  assert.equal(peer.result, RESULT.NOT_AUTHORIZED);
  assert.equal(peer.externalAddr, "::");
  assert.equal(peer.remotePort, 3478);
  assert.equal(peer.remoteAddr, "198.51.100.10");
  // Faults: R bit clear, reserved bytes set, bad length, option overrun.
  const bad = map.slice();
  bad[1] = 0x01;
  bad[2] = 7;
  bad[20] = 1;
  bad[38] = 1;
  assert.deepEqual(parsePcpResponse(bad).problems, [
    "R bit clear",
    "reserved byte 2 is 7",
    "reserved bytes 12-23 not zero",
    "MAP reserved bytes not zero",
  ]);
  assert.ok(parsePcpResponse(map.subarray(0, 62)).problems.some((p) => /multiple of 4/.test(p)));
  const over = map.slice();
  over[62] = 0;
  over[63] = 8;
  assert.ok(parsePcpResponse(over).problems.some((p) => /overruns/.test(p)));
  assert.ok(parsePcpResponse(new Uint8Array(23)).problems.length > 0);
  const n = parseNatPmpResponse(unhex("00800000" + "00000005" + "cb00710b"));
  assert.deepEqual(n.problems, []);
  assert.equal(n.externalAddr, "203.0.113.11");
  assert.equal(n.epoch, 5);
  const m = parseNatPmpResponse(unhex("00820004" + "00000005" + "0016" + "0000" + "00000000"));
  assert.deepEqual(n.problems, []);
  assert.deepEqual([m.opcode, m.result, m.internalPort, m.externalPort, m.lifetime], [
    2,
    4,
    22,
    0,
    0,
  ]);
  assert.deepEqual(parseNatPmpResponse(unhex("00000000" + "00000005")).problems, [
    "response bit (128) clear",
    "an 8-byte response with result SUCCESS",
  ]);
});

// ---------------------------------------------------------------- against the server

/** A PcpService as ServerCore builds it, with a clock of its own and roomy limiters. */
function service(o: { mapSupported?: boolean; rate?: number; refusals?: number } = {}) {
  let now = 5_000_000;
  const startedAt = now;
  const table = new SessionTable({
    pool: POOL.map(ip),
    portMin: 1024,
    portMax: 65535,
    gatewayPortMin: 61000,
    gatewayPortMax: 65535,
    maxSessionsPerHost: 4096,
    lifetimes: { max: 86400, min: 30, udp: 300, tcp: 7440, icmp: 60 },
  });
  const logs: string[] = [];
  const lan = { addr: ip("10.0.0.0"), len: 24 };
  const policy = new MappingPolicy({
    table,
    rules: defaultRules([500, 4500, 5060]),
    pool: POOL.map(ip),
    log: (l) => logs.push(l),
  });
  const s = new PcpService({
    table,
    hosts: new LanHosts({ lan, gateway: ip("10.0.0.1"), pool: POOL.map(ip) }),
    policy,
    epochStart: () => startedAt,
    limiter: new RateLimiter(o.rate ?? 1_000_000),
    refusals: new RateLimiter(o.refusals ?? 1_000_000),
    mapSupported: () => o.mapSupported ?? true,
    remoteIsOutside: (x) => !(x >>> 8 === lan.addr >>> 8) && !POOL.map(ip).includes(x),
    log: (l) => logs.push(l),
  });
  return {
    s,
    table,
    logs,
    send: (msg: Uint8Array, src = H1) => s.handle(msg, src, now),
    tick: (ms: number) => (now += ms),
  };
}

const mapFields = (o: Partial<MapFields> = {}): MapFields => ({
  lifetime: 600,
  client: H1T,
  nonce: NONCE,
  protocol: 6,
  internalPort: 8080,
  externalPort: 8080,
  ...o,
});

const peerFields = (o: Partial<PeerFields> = {}): PeerFields => ({
  ...mapFields({ protocol: 17, internalPort: 4000, externalPort: 0 }),
  remotePort: 3478,
  remoteAddr: "198.51.100.10",
  ...o,
});

/** Sends a PCP request, requires a reply, parses it strictly (problems must be none). */
function pcp(sv: ReturnType<typeof service>, req: Uint8Array, src = H1) {
  const b = sv.send(req, src);
  assert.ok(b, `a reply to ${hex(req)}`);
  const r = parsePcpResponse(b);
  assert.deepEqual(r.headerProblems, [], hex(b));
  if (r.result === RESULT.SUCCESS) assert.deepEqual(r.problems, [], hex(b));
  assert.ok(b.length <= req.length, `reply ${b.length} bytes to a ${req.length}-byte request`);
  return { r, b };
}

/** An error response per RFC 6887 section 8.3: the request copied, header rewritten. */
function assertCopiedError(req: Uint8Array, b: Uint8Array, result: number, lifetime = LONG) {
  const n = Math.min(req.length, 1100) & ~3;
  assert.equal(b.length, n);
  assert.equal(b[0], 2);
  assert.equal(b[1], 0x80 | (req[1]! & 0x7f));
  assert.equal(b[3], result);
  assert.equal(new DataView(b.buffer, b.byteOffset).getUint32(4), lifetime);
  assert.equal(hex(b.subarray(12, 24)), "00".repeat(12));
  assert.equal(hex(b.subarray(24)), hex(req.subarray(24, n)), "the opcode data and options copied");
}

Deno.test("pcp client vs server: ANNOUNCE answers SUCCESS with the epoch (seconds since start)", () => {
  const sv = service();
  sv.tick(42_500);
  const req = buildAnnounce({ lifetime: 0, client: H1T });
  const { r, b } = pcp(sv, req);
  assert.equal(b.length, 24);
  assert.deepEqual([r.opcode, r.result, r.lifetime, r.epoch], [OP.ANNOUNCE, RESULT.SUCCESS, 0, 42]);
  // ANNOUNCE with a non-mandatory unknown option: ignored, not echoed.
  const opt = pcp(
    sv,
    buildAnnounce({ lifetime: 0, client: H1T, options: [{ code: 250, data: new Uint8Array(3) }] }),
  );
  assert.equal(opt.r.result, RESULT.SUCCESS);
  assert.equal(opt.b.length, 24);
});

Deno.test("pcp client vs server: MAP creates, renews, is refused another nonce, deletes", () => {
  const sv = service();
  const req = buildMap(mapFields({ options: [preferFailure()] }));
  const { r } = pcp(sv, req);
  assert.equal(r.result, RESULT.SUCCESS);
  assert.equal(r.opcode, OP.MAP);
  assert.deepEqual(r.nonce, NONCE);
  assert.equal(r.protocol, 6);
  assert.equal(r.internalPort, 8080);
  assert.equal(r.externalPort, 8080, "the suggested port, free");
  assert.ok(POOL.includes(r.externalAddr!), r.externalAddr!);
  assert.equal(r.lifetime, 600);
  assert.deepEqual(r.options.map((o) => [o.code, o.length]), [[OPT.PREFER_FAILURE, 0]]);
  assert.ok(sv.table.lookupMapOf(6, H1, 8080) >= 0, "a mapping row");

  sv.tick(10_000);
  const renew = pcp(sv, buildMap(mapFields({ lifetime: 3600, externalPort: 0 }))).r;
  assert.equal(renew.result, RESULT.SUCCESS);
  assert.equal(renew.externalPort, 8080, "a renewal keeps the pair");
  assert.equal(renew.externalAddr, r.externalAddr);
  assert.equal(renew.lifetime, 3600);
  assert.equal(renew.epoch, 10);

  for (const lifetime of [600, 0]) {
    const other = buildMap(mapFields({ nonce: NONCE2, lifetime }));
    const { r: no, b } = pcp(sv, other);
    assert.equal(no.result, RESULT.NOT_AUTHORIZED, `another nonce, lifetime ${lifetime}`);
    assertCopiedError(other, b, RESULT.NOT_AUTHORIZED);
  }
  assert.ok(sv.table.lookupMapOf(6, H1, 8080) >= 0, "still there");

  const del = pcp(sv, buildMap(mapFields({ lifetime: 0 }))).r;
  assert.equal(del.result, RESULT.SUCCESS);
  assert.equal(del.lifetime, 0);
  assert.equal(sv.table.lookupMapOf(6, H1, 8080), -1, "deleted");
  // Once deleted, another nonce may map it.
  assert.equal(pcp(sv, buildMap(mapFields({ nonce: NONCE2 }))).r.result, RESULT.SUCCESS);
});

Deno.test("pcp client vs server: MAP with PREFER_FAILURE and an address not to be had is CANNOT_PROVIDE_EXTERNAL", () => {
  const sv = service();
  const req = buildMap(mapFields({ externalAddr: "198.51.100.99", options: [preferFailure()] }));
  const { r, b } = pcp(sv, req);
  assert.equal(r.result, RESULT.CANNOT_PROVIDE_EXTERNAL);
  assert.equal(r.lifetime, 30, "a short-lifetime error");
  assertCopiedError(req, b, RESULT.CANNOT_PROVIDE_EXTERNAL, 30);
  assert.equal(sv.table.lookupMapOf(6, H1, 8080), -1, "nothing mapped");
  // Without PREFER_FAILURE the server picks a pool address and says which.
  const other = pcp(sv, buildMap(mapFields({ externalAddr: "198.51.100.99" }))).r;
  assert.equal(other.result, RESULT.SUCCESS);
  assert.ok(POOL.includes(other.externalAddr!));
});

/**
 * RFC 6887 section 13.2: with PREFER_FAILURE the server maps exactly the
 * suggested external address and port, or fails (this once found
 * SessionTable.map trying every other pool address after the suggestion).
 */
Deno.test({
  name:
    "pcp client vs server: MAP with PREFER_FAILURE on a taken suggested pair fails, never moves",
  fn: () => {
    const sv = service();
    const first = pcp(sv, buildMap(mapFields())).r;
    assert.equal(first.result, RESULT.SUCCESS);
    const req = buildMap({
      ...mapFields({ internalPort: 9090, externalPort: 8080, externalAddr: first.externalAddr! }),
      client: H2T,
      options: [preferFailure()],
    });
    const { r } = pcp(sv, req, H2);
    assert.ok(
      r.result === RESULT.CANNOT_PROVIDE_EXTERNAL ||
        (r.externalAddr === first.externalAddr && r.externalPort === 8080),
      `PREFER_FAILURE answered ${r.result} ${r.externalAddr}:${r.externalPort}`,
    );
    assert.equal(r.result, RESULT.CANNOT_PROVIDE_EXTERNAL, "the pair is H1's");
  },
});

Deno.test("pcp client vs server: PEER makes one session toward the remote; lifetime 0 releases it", () => {
  const sv = service();
  const { r } = pcp(sv, buildPeer(peerFields()));
  assert.equal(r.result, RESULT.SUCCESS);
  assert.equal(r.opcode, OP.PEER);
  assert.deepEqual(r.nonce, NONCE);
  assert.equal(r.remotePort, 3478);
  assert.equal(r.remoteAddr, "198.51.100.10");
  assert.ok(POOL.includes(r.externalAddr!));
  assert.ok(r.externalPort! > 0);
  assert.ok(r.lifetime > 0 && r.lifetime <= 600, `lifetime ${r.lifetime}`);
  const x = ip("198.51.100.10");
  assert.ok(sv.table.lookupIdentity(17, H1, 4000, x, 3478) >= 0);
  const wrong = pcp(sv, buildPeer(peerFields({ nonce: NONCE2, lifetime: 0 }))).r;
  assert.equal(wrong.result, RESULT.NOT_AUTHORIZED);
  const del = pcp(sv, buildPeer(peerFields({ lifetime: 0 }))).r;
  assert.equal(del.result, RESULT.SUCCESS);
  assert.equal(sv.table.lookupIdentity(17, H1, 4000, x, 3478), -1);
  const inside = pcp(sv, buildPeer(peerFields({ remoteAddr: "10.0.0.12" }))).r;
  assert.equal(inside.result, RESULT.NOT_AUTHORIZED, "a remote on the LAN");
  const noRemote = buildPeer(peerFields({ remotePort: 0 }));
  const m = pcp(sv, noRemote);
  assert.equal(m.r.result, RESULT.MALFORMED_REQUEST);
  assertCopiedError(noRemote, m.b, RESULT.MALFORMED_REQUEST);
});

Deno.test("pcp client vs server: ADDRESS_MISMATCH, UNSUPP_VERSION (version 2), UNSUPP_OPCODE, UNSUPP_PROTOCOL", () => {
  const sv = service();
  const forged = buildMap(mapFields({ client: H2T }));
  const a = pcp(sv, forged, H1);
  assert.equal(a.r.result, RESULT.ADDRESS_MISMATCH);
  assertCopiedError(forged, a.b, RESULT.ADDRESS_MISMATCH);
  assert.equal(sv.table.lookupMapOf(6, H2, 8080), -1);

  for (const version of [1, 3, 255]) {
    const req = buildMap(mapFields({ version }));
    const { r, b } = pcp(sv, req);
    assert.equal(r.version, 2, "the highest version spoken");
    assert.equal(r.result, RESULT.UNSUPP_VERSION, `version ${version}`);
    assertCopiedError(req, b, RESULT.UNSUPP_VERSION);
  }
  assert.equal(sv.send(Uint8Array.of(3, 1, 0, 0)), null, "shorter than a header: no answer");

  for (const op of [3, 0x40, 0x7f]) {
    const req = buildAnnounce({ lifetime: 0, client: H1T, opByte: op });
    const { r, b } = pcp(sv, req);
    assert.equal(r.result, RESULT.UNSUPP_OPCODE, `opcode ${op}`);
    assert.equal(r.opcode, op);
    assertCopiedError(req, b, RESULT.UNSUPP_OPCODE);
  }
  const proto0 = pcp(sv, buildMap(mapFields({ protocol: 0, internalPort: 0, externalPort: 0 }))).r;
  assert.equal(proto0.result, RESULT.UNSUPP_PROTOCOL, "protocol 0 (all) is refused");
  const sctp = pcp(sv, buildMap(mapFields({ protocol: 132 }))).r;
  assert.equal(sctp.result, RESULT.UNSUPP_PROTOCOL);
});

Deno.test("pcp client vs server: options — mandatory unknown refused, optional unknown ignored, THIRD_PARTY / FILTER refused, malformed", () => {
  const sv = service();
  const mand = buildMap(mapFields({ options: [{ code: 100, data: new Uint8Array(4) }] }));
  const m = pcp(sv, mand);
  assert.equal(m.r.result, RESULT.UNSUPP_OPTION);
  assertCopiedError(mand, m.b, RESULT.UNSUPP_OPTION);
  assert.equal(sv.table.lookupMapOf(6, H1, 8080), -1, "nothing mapped");

  const opt = buildMap(
    mapFields({
      options: [{ code: 128, data: new Uint8Array(5) }, { code: 255, data: new Uint8Array(0) }],
    }),
  );
  const o = pcp(sv, opt);
  assert.equal(o.r.result, RESULT.SUCCESS, "128-255 may be ignored");
  assert.deepEqual(o.r.options, [], "and are not echoed");
  assert.equal(o.b.length, 60);
  pcp(sv, buildMap(mapFields({ lifetime: 0 })));

  for (const option of [thirdParty(H1T), filter(128, 443, "198.51.100.10")]) {
    const req = buildMap(mapFields({ options: [option] }));
    const r = pcp(sv, req);
    assert.equal(r.r.result, RESULT.UNSUPP_OPTION, `option ${option.code}`);
    assertCopiedError(req, r.b, RESULT.UNSUPP_OPTION);
  }
  const twice = pcp(sv, buildMap(mapFields({ options: [preferFailure(), preferFailure()] }))).r;
  assert.equal(twice.result, RESULT.MALFORMED_OPTION, "PREFER_FAILURE twice");
  const onPeer = pcp(sv, buildPeer(peerFields({ options: [preferFailure()] }))).r;
  assert.equal(onPeer.result, RESULT.MALFORMED_OPTION, "PREFER_FAILURE is MAP's only");
  const badLen =
    pcp(sv, buildMap(mapFields({ options: [{ code: OPT.THIRD_PARTY, data: new Uint8Array(4) }] })))
      .r;
  assert.equal(badLen.result, RESULT.MALFORMED_OPTION, "THIRD_PARTY of 4 bytes");
  const overrun = buildMap(mapFields({ options: [{ code: 200, data: new Uint8Array(4) }] }));
  overrun[63] = 9; // length 9 in an 8-byte option slot
  assert.equal(pcp(sv, overrun).r.result, RESULT.MALFORMED_OPTION);
});

Deno.test("pcp client vs server: short, long, unaligned datagrams; a response is dropped silently", () => {
  const sv = service();
  for (const n of [0, 1]) assert.equal(sv.send(new Uint8Array(n)), null, `${n} bytes`);
  const ann = buildAnnounce({ lifetime: 0, client: H1T });
  for (let n = 2; n < 24; n++) assert.equal(sv.send(ann.subarray(0, n)), null, `PCP of ${n} bytes`);
  // 25..27 bytes: not a multiple of 4. MALFORMED_REQUEST, cut to 24.
  for (const n of [25, 26, 27]) {
    const req = new Uint8Array(n);
    req.set(ann);
    const { r, b } = pcp(sv, req);
    assert.equal(r.result, RESULT.MALFORMED_REQUEST);
    assert.equal(b.length, 24);
  }
  // Longer than 1100: MALFORMED_REQUEST, the first 1100 bytes copied.
  const long = new Uint8Array(1104);
  long.set(buildMap(mapFields()));
  const l = pcp(sv, long);
  assert.equal(l.r.result, RESULT.MALFORMED_REQUEST);
  assert.equal(l.b.length, 1100);
  // A MAP shorter than its opcode data.
  const short = buildMap(mapFields()).subarray(0, 56);
  const s = pcp(sv, short);
  assert.equal(s.r.result, RESULT.MALFORMED_REQUEST);
  assertCopiedError(short, s.b, RESULT.MALFORMED_REQUEST);
  // A trailing partial option (a multiple of 4, but not a whole option header).
  const trail = new Uint8Array(64);
  trail.set(buildMap(mapFields()));
  trail[60] = 200;
  trail[63] = 4;
  assert.equal(pcp(sv, trail).r.result, RESULT.MALFORMED_OPTION);

  // The R bit set: silently dropped (RFC 6887 section 8.3), whatever the version.
  for (const version of [0, 1, 2, 3]) {
    for (const op of [0x80, 0x81, 0x82, 0xff]) {
      const req = buildMap(mapFields({ version, opByte: op }));
      assert.equal(sv.send(req), null, `version ${version} opcode byte ${op}`);
    }
  }
  assert.equal(sv.send(Uint8Array.of(0, 0x80)), null, "a NAT-PMP response");
  assert.equal(sv.send(unhex("00800000" + "00000005" + "cb00710b")), null);
  assert.equal(sv.send(unhex("00810000" + "00000005" + "13881770" + "0000003c")), null);
  // Outside the LAN: never answered.
  assert.equal(
    sv.send(buildAnnounce({ lifetime: 0, client: "198.51.100.10" }), ip("198.51.100.10")),
    null,
  );
  assert.equal(sv.send(buildNatPmpAddress(), ip("198.51.100.10")), null);
});

Deno.test("pcp client vs server: NAT-PMP address, map, renew, delete, unknown opcode, wrong lengths", () => {
  const sv = service();
  sv.tick(3000);
  const a = sv.send(buildNatPmpAddress())!;
  assert.equal(a.length, 12);
  const pa = parseNatPmpResponse(a);
  assert.deepEqual(pa.problems, []);
  assert.deepEqual([pa.version, pa.opcode, pa.result, pa.epoch], [0, 0, 0, 3]);
  assert.ok(POOL.includes(pa.externalAddr!));
  const m = parseNatPmpResponse(sv.send(buildNatPmpMap(1, 5000, 6000, 60))!);
  assert.deepEqual(m.problems, []);
  assert.equal(m.length, 16);
  assert.deepEqual([m.opcode, m.result, m.internalPort, m.externalPort, m.lifetime], [
    1,
    0,
    5000,
    6000,
    60,
  ]);
  assert.ok(sv.table.lookupMapOf(17, H1, 5000) >= 0);
  const renew = parseNatPmpResponse(sv.send(buildNatPmpMap(1, 5000, 0, 7200))!);
  assert.deepEqual([renew.externalPort, renew.lifetime], [6000, 7200]);
  const tcp = parseNatPmpResponse(sv.send(buildNatPmpMap(2, 22, 2222, 60))!);
  assert.deepEqual([tcp.opcode, tcp.result, tcp.externalPort], [2, 0, 2222]);
  const del = parseNatPmpResponse(sv.send(buildNatPmpMap(1, 5000, 0, 0))!);
  assert.deepEqual([del.result, del.lifetime, del.externalPort], [0, 0, 0]);
  assert.equal(sv.table.lookupMapOf(17, H1, 5000), -1);
  const noPort = parseNatPmpResponse(sv.send(buildNatPmpMap(2, 0, 0, 60))!);
  assert.equal(noPort.result, NATPMP_RESULT.NOT_AUTHORIZED, "internal port 0 with a lifetime");
  const delAll = parseNatPmpResponse(sv.send(buildNatPmpMap(2, 0, 0, 0))!);
  assert.equal(delAll.result, 0);
  assert.equal(sv.table.lookupMapOf(6, H1, 22), -1, "internal port 0, lifetime 0: all of TCP");

  for (const op of [3, 4, 100, 127]) {
    const b = sv.send(Uint8Array.of(0, op, 0, 0))!;
    const r = parseNatPmpResponse(b);
    assert.deepEqual(r.problems, []);
    assert.deepEqual([r.opcode, r.result, r.length], [op, NATPMP_RESULT.UNSUPP_OPCODE, 8]);
  }
  for (const len of [1, 3, 4, 11, 13, 16]) {
    const b = new Uint8Array(len);
    b[1] = len === 3 || len === 4 ? 0 : 1;
    assert.equal(sv.send(b), null, `NAT-PMP of ${len} bytes`);
  }
});

Deno.test("pcp client vs server: a data path that forwards no mappings answers MAP and PEER UNSUPP_OPCODE, NAT-PMP map 5", () => {
  const sv = service({ mapSupported: false });
  const req = buildMap(mapFields());
  const m = pcp(sv, req);
  assert.equal(m.r.result, RESULT.UNSUPP_OPCODE);
  assertCopiedError(req, m.b, RESULT.UNSUPP_OPCODE);
  assert.equal(pcp(sv, buildPeer(peerFields())).r.result, RESULT.UNSUPP_OPCODE);
  assert.equal(pcp(sv, buildAnnounce({ lifetime: 0, client: H1T })).r.result, RESULT.SUCCESS);
  assert.equal(
    parseNatPmpResponse(sv.send(buildNatPmpMap(1, 1, 1, 60))!).result,
    NATPMP_RESULT.UNSUPP_OPCODE,
  );
  assert.equal(parseNatPmpResponse(sv.send(buildNatPmpAddress())!).result, 0);
});

Deno.test("pcp client vs server: over the rate, NO_RESOURCES (short lifetime) within the refusal budget, then silence", () => {
  const sv = service({ rate: 1, refusals: 1 });
  const results: (number | null)[] = [];
  for (let i = 0; i < 10; i++) {
    const b = sv.send(buildAnnounce({ lifetime: 0, client: H1T }));
    results.push(b ? parsePcpResponse(b).result : null);
  }
  assert.equal(results[0], RESULT.SUCCESS);
  assert.ok(results.includes(RESULT.NO_RESOURCES), JSON.stringify(results));
  assert.ok(results.includes(null), "beyond the budget: no answer");
  const sv2 = service({ rate: 1, refusals: 100 });
  sv2.send(buildAnnounce({ lifetime: 0, client: H1T }));
  sv2.send(buildAnnounce({ lifetime: 0, client: H1T }));
  const r = parsePcpResponse(sv2.send(buildAnnounce({ lifetime: 0, client: H1T }))!);
  assert.deepEqual([r.result, r.lifetime], [RESULT.NO_RESOURCES, 30]);
});

// ---------------------------------------------------------------- fuzz

/** The rules every reply obeys, whatever the request (see the module doc). */
function checkReply(req: Uint8Array, reply: Uint8Array | null, src: number): void {
  const fromLan = src >>> 8 === ip("10.0.0.0") >>> 8;
  if (!fromLan) return assert.equal(reply, null, "outside the LAN: never answered");
  if (req.length < 2 || (req[1]! & 0x80)) return assert.equal(reply, null, "a response or a stub");
  if (reply === null) return;
  assert.deepEqual(replyProblems(req, reply), [], `reply ${hex(reply)} to ${hex(req)}`);
}

const validRequests = (): fc.Arbitrary<Uint8Array> =>
  fc.oneof(
    fc.constant(buildNatPmpAddress()),
    fc.record({
      op: fc.constantFrom(1 as const, 2 as const),
      a: fc.integer({ min: 0, max: 65535 }),
      b: fc.integer({ min: 0, max: 65535 }),
      l: fc.nat(),
    }).map(({ op, a, b, l }) => buildNatPmpMap(op, a, b, l)),
    fc.constant(buildAnnounce({ lifetime: 0, client: H1T })),
    fc.record({
      lifetime: fc.oneof(fc.constant(0), fc.nat()),
      protocol: fc.constantFrom(0, 6, 17, 1, 132),
      internalPort: fc.integer({ min: 0, max: 65535 }),
      externalPort: fc.integer({ min: 0, max: 65535 }),
      nonce: fc.uint8Array({ minLength: 12, maxLength: 12 }),
      pf: fc.boolean(),
      peer: fc.boolean(),
      remotePort: fc.integer({ min: 0, max: 65535 }),
      opt: fc.option(fc.record({ code: fc.nat(255), data: fc.uint8Array({ maxLength: 24 }) })),
    }).map((f) => {
      const options = [...(f.pf ? [preferFailure()] : []), ...(f.opt ? [f.opt] : [])];
      const m: MapFields = { ...mapFields(), ...f, options };
      return f.peer
        ? buildPeer({ ...m, remotePort: f.remotePort, remoteAddr: "198.51.100.10" })
        : buildMap(m);
    }),
  );

/** A valid request, then bytes flipped, cut or extended. */
const mutated = (): fc.Arbitrary<Uint8Array> =>
  fc.tuple(
    validRequests(),
    fc.array(fc.tuple(fc.nat(1200), fc.nat(255)), { maxLength: 4 }),
    fc.oneof(fc.constant(null), fc.nat(1200)),
    fc.uint8Array({ maxLength: 1100 }),
  ).map(([req, flips, cut, tail]) => {
    let b = req.slice();
    for (const [i, v] of flips) if (b.length) b[i % b.length] = v;
    if (cut !== null) b = b.slice(0, cut % (b.length + 1));
    else if (tail.length) {
      const n = new Uint8Array(b.length + tail.length);
      n.set(b);
      n.set(tail, b.length);
      b = n;
    }
    return b;
  });

Deno.test("pcp client vs server fuzz: random and mutated datagrams never throw, replies are well-formed and never larger", () => {
  const sv = service();
  const src = fc.oneof(fc.constant(H1), fc.constant(H2), fc.constant(ip("198.51.100.10")));
  let answered = 0;
  fc.assert(
    fc.property(
      fc.oneof(fc.uint8Array({ maxLength: 1200 }), validRequests(), mutated()),
      src,
      fc.boolean(),
      (req, from, fix) => {
        // Mostly, the client address field is the source's, so the checks go deep.
        if (fix && req.length >= 24) req.set(mapped(formatIPv4(from)), 8);
        const reply = sv.send(req, from);
        if (reply) answered++;
        checkReply(req, reply, from);
        sv.tick(7);
      },
    ),
    { numRuns: 4000 },
  );
  assert.ok(answered > 500, `the fuzz reached the answering paths (${answered} replies)`);
});

Deno.test("pcp client vs server fuzz: the tight refusal budget never lets an answer through to a response or stub", () => {
  const sv = service({ rate: 10, refusals: 4 });
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), mutated()), (req) => {
      checkReply(req, sv.send(req, H2), H2);
      sv.tick(1);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("pcp client vs server: MAP with internal port 0 and lifetime 0 deletes all the client's mappings made with its nonce (RFC 6887 section 15)", () => {
  const sv = service();
  const other = new Uint8Array(12).fill(9);
  for (
    const [port, nonce, protocol] of [[8080, NONCE, 6], [8081, NONCE, 17], [
      8082,
      other,
      6,
    ]] as const
  ) {
    const r = pcp(
      sv,
      buildMap(mapFields({ internalPort: port, externalPort: port, nonce, protocol })),
    );
    assert.equal(r.r.result, RESULT.SUCCESS);
  }
  assert.equal(sv.table.lookupMapOf(6, H1, 8080) >= 0, true);
  const del = pcp(
    sv,
    buildMap(mapFields({ protocol: 0, internalPort: 0, externalPort: 0, lifetime: 0 })),
  );
  assert.equal(del.r.result, RESULT.SUCCESS);
  assert.equal(del.r.lifetime, 0);
  assert.equal(sv.table.lookupMapOf(6, H1, 8080), -1, "same nonce: deleted");
  assert.equal(sv.table.lookupMapOf(17, H1, 8081), -1, "protocol 0: every protocol");
  assert.ok(sv.table.lookupMapOf(6, H1, 8082) >= 0, "another nonce's mapping stays");
});
