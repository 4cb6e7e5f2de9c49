/**
 * PCP (RFC 6887) and NAT-PMP (RFC 6886): the codec (src/pcp/codec.ts) on
 * real bytes and random ones, the table's inbound mappings (MAP rows) and
 * the server's answers (src/pcp/server.ts through ServerCore.handlePcp).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  decodeNatPmpResponse,
  decodePcpResponse,
  decodeRequest,
  encodeNatPmpRequest,
  encodePcpRequest,
  encodePcpResponse,
  NatPmpResult,
  PCP_HEADER_LEN,
  PCP_MAX_LEN,
  pcpErrorResponse,
  PcpOp,
  PcpOption,
  PcpResult,
} from "../../src/pcp/codec.ts";
import { SessionTable } from "../../src/table/table.ts";
import { Result } from "../../src/control/result.ts";
import { ServerCore } from "../../src/server/core.ts";
import { FakeServerDataPath } from "../../src/datapath/fake.ts";
import { isMapping } from "../../src/datapath/datapath.ts";
import { G, H1, H2, ip, P1, P2, R1, R2, serverCfg } from "../../testing/fixtures.ts";

const NONCE = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------- codec

Deno.test("pcp codec: NAT-PMP requests decode at their exact lengths only", () => {
  assert.deepEqual(decodeRequest(Uint8Array.of(0, 0)), {
    ok: true,
    req: { kind: "natpmp", op: 0 },
  });
  const m = encodeNatPmpRequest(1, 5000, 6000, 60);
  assert.equal(hex(m), "00010000138817700000003c");
  const d = decodeRequest(m);
  assert.ok(d.ok);
  assert.deepEqual(d.req, {
    kind: "natpmp",
    op: 1,
    proto: 17,
    internalPort: 5000,
    externalPort: 6000,
    lifetime: 60,
  });
  for (const len of [3, 11, 13]) {
    const b = new Uint8Array(len);
    b[1] = len === 3 ? 0 : 2;
    const r = decodeRequest(b);
    assert.ok(!r.ok && !r.answer, `length ${len} is dropped`);
  }
  const bad = decodeRequest(Uint8Array.of(0, 7));
  assert.ok(!bad.ok && bad.answer && bad.result === NatPmpResult.UNSUPP_OPCODE);
  const resp = decodeRequest(Uint8Array.of(0, 0x80, 0, 0));
  assert.ok(!resp.ok && !resp.answer, "a response is never answered");
});

Deno.test("pcp codec: PCP MAP and PEER requests round-trip; lengths and options are checked", () => {
  const map = encodePcpRequest({
    op: PcpOp.MAP,
    lifetime: 7200,
    client: H1,
    nonce: NONCE,
    proto: 6,
    internalPort: 8080,
    externalPort: 80,
    options: [{ code: PcpOption.PREFER_FAILURE, data: new Uint8Array(0) }],
  });
  assert.equal(map.length, 24 + 36 + 4);
  const d = decodeRequest(map);
  assert.ok(d.ok && d.req.kind === "pcp");
  assert.equal(d.req.op, PcpOp.MAP);
  assert.equal(d.req.clientV4, H1);
  assert.equal(d.req.lifetime, 7200);
  assert.deepEqual(d.req.nonce, NONCE);
  assert.equal(d.req.internalPort, 8080);
  assert.equal(d.req.externalPort, 80);
  assert.equal(d.req.externalAddr, 0);
  assert.equal(d.req.preferFailure, true);

  const peer = encodePcpRequest({
    op: PcpOp.PEER,
    lifetime: 60,
    client: H1,
    nonce: NONCE,
    proto: 17,
    internalPort: 4000,
    remotePort: 3478,
    remoteAddr: P1,
  });
  assert.equal(peer.length, 80);
  const p = decodeRequest(peer);
  assert.ok(p.ok && p.req.kind === "pcp" && p.req.remoteAddr === P1 && p.req.remotePort === 3478);

  const short = decodeRequest(map.subarray(0, 56));
  assert.ok(!short.ok && short.result === PcpResult.MALFORMED_REQUEST && short.answer);
  const odd = decodeRequest(new Uint8Array([...map, 0]));
  assert.ok(!odd.ok && odd.result === PcpResult.MALFORMED_REQUEST);
  const tiny = decodeRequest(Uint8Array.of(2, 1, 0, 0));
  assert.ok(!tiny.ok && !tiny.answer, "shorter than a header: no answer (no amplification)");
  const v1 = map.slice();
  v1[0] = 1;
  const uv = decodeRequest(v1);
  assert.ok(!uv.ok && uv.result === PcpResult.UNSUPP_VERSION && uv.answer);
  const unknownMandatory = map.slice();
  unknownMandatory[60] = 99;
  const um = decodeRequest(unknownMandatory);
  assert.ok(!um.ok && um.result === PcpResult.UNSUPP_OPTION);
  const unknownOptional = map.slice();
  unknownOptional[60] = 200;
  assert.ok(decodeRequest(unknownOptional).ok, "options 128-255 may be ignored");
  const overrun = map.slice();
  overrun[63] = 8;
  const ov = decodeRequest(overrun);
  assert.ok(!ov.ok && ov.result === PcpResult.MALFORMED_OPTION);
  const op9 = map.slice();
  op9[1] = 9;
  const uo = decodeRequest(op9);
  assert.ok(!uo.ok && uo.result === PcpResult.UNSUPP_OPCODE);
});

Deno.test("pcp codec: decode never throws on random bytes; error replies never outgrow requests", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 1200 }), (b) => {
      const d = decodeRequest(b);
      if (!d.ok && d.answer && d.version !== 0) {
        const r = pcpErrorResponse(b, d.result, 30, 1);
        assert.ok(r !== null && r.length <= b.length && r.length <= PCP_MAX_LEN);
        assert.equal(r.length % 4, 0);
        const back = decodePcpResponse(r);
        assert.ok(back !== null && back.result === d.result);
      }
      decodePcpResponse(b);
      decodeNatPmpResponse(b);
    }),
    { numRuns: 3000 },
  );
  // Random PCP-shaped messages (version 2, a known opcode, a multiple of 4 long).
  fc.assert(
    fc.property(
      fc.constantFrom(0, 1, 2),
      fc.integer({ min: 6, max: 40 }),
      fc.uint8Array({ minLength: 1100, maxLength: 1100 }),
      (op, words, body) => {
        const b = body.slice(0, words * 4);
        b[0] = 2;
        b[1] = op;
        const d = decodeRequest(b);
        if (d.ok) assert.ok(b.length >= PCP_HEADER_LEN);
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("pcp codec: requests round-trip for any field values", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(1, 2),
      fc.integer({ min: 1, max: 65535 }),
      fc.integer({ min: 0, max: 65535 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.uint8Array({ minLength: 12, maxLength: 12 }),
      fc.integer({ min: 0x01000000, max: 0xdfffffff }),
      (op, ip_, ep, life, nonce, client) => {
        const n = decodeRequest(encodeNatPmpRequest(op, ip_, ep, life));
        assert.ok(n.ok && n.req.kind === "natpmp" && n.req.op === op);
        const r = encodePcpRequest({
          op: PcpOp.MAP,
          lifetime: life,
          client,
          nonce,
          proto: op === 1 ? 17 : 6,
          internalPort: ip_,
          externalPort: ep,
        });
        const d = decodeRequest(r);
        assert.ok(d.ok && d.req.kind === "pcp");
        assert.equal(d.req.internalPort, ip_);
        assert.equal(d.req.externalPort, ep);
        assert.equal(d.req.lifetime, life);
        assert.equal(d.req.clientV4, client);
        assert.deepEqual(d.req.nonce, nonce);
        const resp = decodePcpResponse(encodePcpResponse({
          op: PcpOp.MAP,
          result: 0,
          lifetime: life,
          epoch: 5,
          nonce,
          proto: 17,
          internalPort: ip_,
          externalPort: ep,
          externalAddr: client,
        }));
        assert.ok(resp && resp.externalAddr === client && resp.externalPort === ep);
      },
    ),
  );
});

// ---------------------------------------------------------------- table

function table(over: Partial<ConstructorParameters<typeof SessionTable>[0]> = {}) {
  return new SessionTable({ pool: [R1, R2], portHold: 0, ...over });
}

Deno.test("pcp table: a MAP owns R:p for every remote; sessions of other hosts are moved or refused", () => {
  const t = table();
  const g = t.map({ proto: 17, a: H1, pa: 5000, p: 6000, r: 0, lifetime: 60 }, 0);
  assert.equal(g.result, Result.OK);
  assert.equal(g.p, 6000);
  assert.equal(g.pg, 0);
  assert.equal(t.lookupMapping(17, g.r, 6000), g.session);
  assert.equal(t.lookupPublic(17, g.r, 6000, P1, 7000), -1, "lookupPublic stays exact");
  assert.ok(t.isMap(g.session) && t.record(g.session).map === true);
  // Idempotent: the same endpoint gets the same mapping back.
  const again = t.map({ proto: 17, a: H1, pa: 5000, p: 7777, r: 0, lifetime: 120 }, 1000);
  assert.equal(again.session, g.session);
  assert.equal(again.p, 6000);
  assert.equal(again.lifetime, 120);
  // Another host's fixed port 6000 cannot share the mapped pair: it goes elsewhere.
  const other = t.reserve(
    { proto: 17, a: H2, pa: 6000, x: P1, px: 7000, replaceable: false, lifetime: 0 },
    0,
  );
  assert.equal(other.result, Result.OK);
  assert.ok(!(other.r === g.r && other.p === 6000), "never on the mapped pair");
  // The mapping's own endpoint reuses its pair toward a remote (EIM).
  const own = t.reserve(
    { proto: 17, a: H1, pa: 5000, x: P2, px: 9, replaceable: true, lifetime: 0 },
    0,
  );
  assert.equal(own.r, g.r);
  assert.equal(own.p, 6000);
  // A second host asking for the mapped port gets another one; PREFER_FAILURE gets CONFLICT.
  const m2 = t.map({ proto: 17, a: H2, pa: 5001, p: 6000, r: g.r, lifetime: 60 }, 0);
  assert.equal(m2.result, Result.OK);
  assert.ok(!(m2.r === g.r && m2.p === 6000));
  const pf = t.map(
    { proto: 17, a: ip("10.0.0.13"), pa: 1, p: 6000, r: g.r, lifetime: 60, preferFailure: true },
    0,
  );
  assert.equal(pf.result, Result.CONFLICT);
  // Delete: the pair is free again.
  assert.equal(t.release(17, H1, 5000, 0, 0, 0), Result.OK);
  assert.equal(t.lookupMapping(17, g.r, 6000), -1);
  assert.equal(t.release(17, H1, 5000, P2, 9, 0), Result.OK);
  assert.equal(t.portUsers(17, g.r, 6000), 0);
});

Deno.test("pcp table: a MAP is not created on a pair another endpoint's session uses", () => {
  const t = table({ pool: [R1] });
  const s = t.reserve(
    { proto: 6, a: H2, pa: 443, x: P1, px: 443, replaceable: false, lifetime: 0 },
    0,
  );
  assert.equal(s.p, 443);
  const g = t.map({ proto: 6, a: H1, pa: 443, p: 443, r: 0, lifetime: 60 }, 0);
  assert.equal(g.result, Result.OK);
  assert.notEqual(g.p, 443, "moved to a free port");
  assert.equal(g.replaced, true);
  // Restore refuses a MAP over a used pair, and restores one as a MAP from x = px = 0.
  const t2 = table({ pool: [R1] });
  t2.reserve({ proto: 6, a: H2, pa: 443, x: P1, px: 443, replaceable: false, lifetime: 0 }, 0);
  const rec = { ...t.record(g.session), p: 443 };
  assert.equal(t2.restore(rec), Result.CONFLICT);
  const { map: _m, ...plain } = t.record(g.session);
  assert.equal(t2.restore(plain), Result.OK);
  const back = t2.lookupMapOf(6, H1, 443);
  assert.ok(back >= 0 && t2.isMap(back));
  assert.equal(t2.lookupLan(6, H1, 0), -1, "no LAN key");
});

Deno.test("pcp table: quota counts mappings", () => {
  const t = table({ maxSessionsPerHost: 2 });
  assert.equal(t.map({ proto: 17, a: H1, pa: 1, p: 0, r: 0, lifetime: 60 }, 0).result, Result.OK);
  assert.equal(t.map({ proto: 6, a: H1, pa: 1, p: 0, r: 0, lifetime: 60 }, 0).result, Result.OK);
  assert.equal(
    t.map({ proto: 6, a: H1, pa: 2, p: 0, r: 0, lifetime: 60 }, 0).result,
    Result.QUOTA_EXCEEDED,
  );
  assert.equal(
    t.map({ proto: 1, a: H2, pa: 2, p: 0, r: 0, lifetime: 60 }, 0).result,
    Result.UNSUPPORTED_PROTOCOL,
  );
  assert.equal(t.expire(61_000), 2, "mappings expire like sessions");
});

// ---------------------------------------------------------------- server

function core(over = {}) {
  let now = 1_000_000;
  const c = new ServerCore(serverCfg(over), { lan: serverCfg().lan, now: () => now });
  return { c, tick: (ms: number) => (now += ms) };
}

Deno.test("pcp server: NAT-PMP external address, map, renew, delete; epoch counts seconds", () => {
  const { c, tick } = core();
  const dp = new FakeServerDataPath();
  c.attach(dp);
  const a = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(0), H1)!)!;
  assert.equal(a.result, 0);
  assert.ok(a.externalAddr === R1 || a.externalAddr === R2);
  tick(5000);
  const m = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(1, 5000, 6000, 60), H1)!)!;
  assert.equal(m.result, 0);
  assert.equal(m.epoch, 5);
  assert.equal(m.internalPort, 5000);
  assert.equal(m.externalPort, 6000);
  assert.equal(m.lifetime, 60);
  assert.equal(dp.up.length, 1);
  assert.ok(isMapping(dp.up[0]!));
  assert.equal(dp.up[0]!.r, a.externalAddr, "the address NAT-PMP announced");
  const again = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(1, 5000, 0, 3600), H1)!)!;
  assert.equal(again.externalPort, 6000);
  assert.equal(again.lifetime, 3600);
  assert.equal(dp.up.length, 1, "a renewal is not a new mapping");
  const del = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(1, 5000, 0, 0), H1)!)!;
  assert.equal(del.result, 0);
  assert.equal(del.lifetime, 0);
  assert.equal(dp.down.length, 1);
  // Outsiders get nothing.
  assert.equal(c.handlePcp(encodeNatPmpRequest(0), P1), null);
});

Deno.test("pcp server: PCP ANNOUNCE, MAP with nonce rules, ADDRESS_MISMATCH, PEER", () => {
  const { c } = core();
  const ann = decodePcpResponse(
    c.handlePcp(encodePcpRequest({ op: PcpOp.ANNOUNCE, lifetime: 0, client: H1 }), H1)!,
  )!;
  assert.equal(ann.result, PcpResult.SUCCESS);
  const mapReq = (o: Partial<Parameters<typeof encodePcpRequest>[0]> = {}) =>
    encodePcpRequest({
      op: PcpOp.MAP,
      lifetime: 600,
      client: H1,
      nonce: NONCE,
      proto: 6,
      internalPort: 8080,
      externalPort: 8080,
      ...o,
    });
  const ok = decodePcpResponse(c.handlePcp(mapReq(), H1)!)!;
  assert.equal(ok.result, PcpResult.SUCCESS);
  assert.equal(ok.externalPort, 8080);
  assert.ok(ok.externalAddr === R1 || ok.externalAddr === R2);
  assert.equal(ok.lifetime, 600);
  assert.deepEqual(ok.nonce, NONCE);
  const wrong = decodePcpResponse(c.handlePcp(mapReq({ nonce: new Uint8Array(12) }), H1)!)!;
  assert.equal(wrong.result, PcpResult.NOT_AUTHORIZED, "another nonce may not renew");
  const delWrong = decodePcpResponse(
    c.handlePcp(mapReq({ nonce: new Uint8Array(12), lifetime: 0 }), H1)!,
  )!;
  assert.equal(delWrong.result, PcpResult.NOT_AUTHORIZED, "nor delete");
  const forged = c.handlePcp(mapReq(), H2)!;
  assert.equal(decodePcpResponse(forged)!.result, PcpResult.ADDRESS_MISMATCH);
  assert.equal(forged.length, mapReq().length, "error replies copy the request");
  const del = decodePcpResponse(c.handlePcp(mapReq({ lifetime: 0 }), H1)!)!;
  assert.equal(del.result, PcpResult.SUCCESS);
  assert.equal(c.table.lookupMapOf(6, H1, 8080), -1);
  const third = decodePcpResponse(
    c.handlePcp(
      mapReq({ options: [{ code: PcpOption.THIRD_PARTY, data: new Uint8Array(16) }] }),
      H1,
    )!,
  )!;
  assert.equal(third.result, PcpResult.UNSUPP_OPTION);
  const peer = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.PEER,
        lifetime: 120,
        client: H1,
        nonce: NONCE,
        proto: 17,
        internalPort: 4000,
        remotePort: 3478,
        remoteAddr: P1,
      }),
      H1,
    )!,
  )!;
  assert.equal(peer.result, PcpResult.SUCCESS);
  assert.equal(peer.remoteAddr, P1);
  assert.ok(c.table.lookupIdentity(17, H1, 4000, P1, 3478) >= 0, "a dpm session");
  const lan = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.PEER,
        lifetime: 120,
        client: H1,
        nonce: NONCE,
        proto: 17,
        internalPort: 4001,
        remotePort: 53,
        remoteAddr: G,
      }),
      H1,
    )!,
  )!;
  assert.equal(lan.result, PcpResult.NOT_AUTHORIZED);
});

Deno.test("pcp server: a queue data path without its steering table (no nftables) answers MAP with UNSUPP_OPCODE, address still works", () => {
  const { c } = core();
  c.attach(new FakeServerDataPath("queue"));
  const m = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(2, 22, 22, 60), H1)!)!;
  assert.equal(m.result, NatPmpResult.UNSUPP_OPCODE);
  assert.equal(decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(0), H1)!)!.result, 0);
});

Deno.test("pcp server: the host's rate limit of PCP and NAT-PMP (--pcp-rate-limit) applies, apart from dpm's protocol's", () => {
  const { c } = core({ pcpRateLimit: 1 });
  const results: number[] = [];
  for (let i = 0; i < 20; i++) {
    const r = c.handlePcp(encodeNatPmpRequest(0), H1);
    if (r) results.push(decodeNatPmpResponse(r)!.result);
  }
  assert.ok(results.includes(NatPmpResult.NO_RESOURCES));
  assert.ok(results.length < 20, "refusals beyond the budget are not answered");
});
