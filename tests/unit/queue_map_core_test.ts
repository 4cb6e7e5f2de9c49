/**
 * PCP/NAT-PMP MAP and PCP PEER on the queue data path, in the server's core
 * (`src/server/core.ts`) on real packet bytes: inbound to a mapping from any
 * remote, the mapped host's own packets straight at a remote (steered into
 * the queue), PEER's direct sessions, a driver host's mapped endpoint, ICMP
 * errors, and what the core hands the queue path (`sessionUp` / `sessionDown`
 * of mappings and direct sessions, restored ones at attach).
 */

import assert from "node:assert/strict";
import { ServerCore } from "../../src/server/core.ts";
import { FakeServerDataPath } from "../../src/datapath/fake.ts";
import { isMapping } from "../../src/datapath/datapath.ts";
import { Steering } from "../../src/datapath/queue/server.ts";
import {
  decodeNatPmpResponse,
  decodePcpResponse,
  encodeNatPmpRequest,
  encodePcpRequest,
  NatPmpResult,
  PcpOp,
  PcpResult,
} from "../../src/pcp/codec.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { Drop, IPPROTO_TCP, IPPROTO_UDP, PacketInfo, parse } from "../../src/wire/packet.ts";
import {
  buildIcmpError,
  buildTcp,
  buildUdp,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";
import { G, H1, H2, P1, P2, serverCfg } from "../../testing/fixtures.ts";

const NONCE = Uint8Array.from([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2]);

function setup(forwardsMappings = true) {
  let now = 1_000_000;
  const cfg = serverCfg();
  const c = new ServerCore(cfg, { lan: cfg.lan, now: () => now });
  const dp = new FakeServerDataPath("queue", { forwardsMappings });
  c.attach(dp);
  return { c, dp, tick: (ms: number) => (now += ms) };
}

function fields(pkt: Uint8Array): [number, number, number, number] {
  const i = new PacketInfo();
  assert.equal(parse(pkt, pkt.length, i), Drop.NONE);
  return [i.src, i.sport, i.dst, i.dport];
}

function valid(pkt: Uint8Array): void {
  assert.ok(verifyIpChecksum(pkt), "IP checksum");
  assert.ok(verifyL4Checksum(pkt), "L4 checksum");
}

/** NAT-PMP map of H's internal port to the suggested public one; returns [R, p]. */
function natPmpMap(c: ServerCore, h: number, op: 1 | 2, pa: number, p: number, life = 60) {
  const r = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(op, pa, p, life), h)!)!;
  assert.equal(r.result, NatPmpResult.SUCCESS);
  const slot = c.table.lookupMapOf(op === 1 ? IPPROTO_UDP : IPPROTO_TCP, h, pa);
  assert.ok(slot >= 0 || life === 0);
  return slot >= 0 ? [c.table.r(slot), r.externalPort] as const : [0, 0] as const;
}

Deno.test("queue map core: a NAT-PMP mapping takes any remote's packets to R:p to a:pa from the remote's own pair; a:pa's packets leave as R:p", () => {
  const { c, dp } = setup();
  const [r, p] = natPmpMap(c, H1, 1, 5000, 6000);
  assert.equal(p, 6000);
  assert.equal(dp.up.length, 1);
  assert.ok(isMapping(dp.up[0]!), "the queue path is told to steer the mapped endpoint");
  assert.deepEqual([dp.up[0]!.a, dp.up[0]!.pa, dp.up[0]!.r, dp.up[0]!.p], [H1, 5000, r, 6000]);

  for (const [x, px] of [[P1, 7777], [P2, 40001]] as const) {
    const inb = buildUdp({ src: x, sport: px, dst: r, dport: 6000 });
    assert.equal(c.handlePacket(inb), Verdict.MODIFIED);
    assert.deepEqual(fields(inb), [x, px, H1, 5000], "dst rewritten, the remote's pair kept");
    valid(inb);
    const out = buildUdp({ src: H1, sport: 5000, dst: x, dport: px });
    assert.equal(c.handlePacket(out), Verdict.MODIFIED);
    assert.deepEqual(fields(out), [r, 6000, x, px], "the answer leaves from the mapped pair");
    valid(out);
  }
  // Unsolicited too: the host sends first, to a remote that never wrote.
  const first = buildUdp({ src: H1, sport: 5000, dst: P2, dport: 53 });
  assert.equal(c.handlePacket(first), Verdict.MODIFIED);
  assert.deepEqual(fields(first), [r, 6000, P2, 53]);
  assert.deepEqual(c.packets, { in: 2, out: 3, hairpin: 0 });
  const slot = c.table.lookupMapOf(IPPROTO_UDP, H1, 5000);
  assert.equal(c.table.packetsIn(slot), 2);
  assert.equal(c.table.packetsOut(slot), 3);

  // Another port of the pair, another protocol, another internal port: not the mapping's.
  const other = buildUdp({ src: P1, sport: 7777, dst: r, dport: 6001 });
  assert.equal(c.handlePacket(other), Verdict.DROP);
  const tcp = buildTcp({ src: P1, sport: 7777, dst: r, dport: 6000 });
  assert.equal(c.handlePacket(tcp), Verdict.DROP);
  const stranger = buildUdp({ src: H1, sport: 5001, dst: P1, dport: 7777 });
  assert.equal(c.handlePacket(stranger), Verdict.DROP, "an endpoint without a row never leaks");

  // Delete: the endpoint is no longer steered, and nothing is translated.
  natPmpMap(c, H1, 1, 5000, 6000, 0);
  assert.equal(dp.down.length, 1);
  assert.ok(isMapping(dp.down[0]!));
  const after = buildUdp({ src: P1, sport: 7777, dst: r, dport: 6000 });
  assert.equal(c.handlePacket(after), Verdict.DROP);
  assert.ok(c.drops[Drop.NO_SESSION]! >= 4);
});

Deno.test("queue map core: TCP through a PCP MAP mapping both ways, checksums valid", () => {
  const { c, dp } = setup();
  const m = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.MAP,
        lifetime: 120,
        client: H2,
        nonce: NONCE,
        proto: IPPROTO_TCP,
        internalPort: 8080,
        externalPort: 8080,
      }),
      H2,
    )!,
  )!;
  assert.equal(m.result, PcpResult.SUCCESS);
  assert.equal(dp.up.length, 1);
  const syn = buildTcp({ src: P1, sport: 50000, dst: m.externalAddr, dport: m.externalPort });
  assert.equal(c.handlePacket(syn), Verdict.MODIFIED);
  assert.deepEqual(fields(syn), [P1, 50000, H2, 8080]);
  valid(syn);
  const synack = buildTcp({ src: H2, sport: 8080, dst: P1, dport: 50000, flags: 0x12, ack: 1001 });
  assert.equal(c.handlePacket(synack), Verdict.MODIFIED);
  assert.deepEqual(fields(synack), [m.externalAddr, m.externalPort, P1, 50000]);
  valid(synack);
});

Deno.test("queue map core: a queue path that cannot steer refuses MAP and PEER; the address still answers", () => {
  const { c, dp } = setup(false);
  const m = decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(1, 5000, 6000, 60), H1)!)!;
  assert.equal(m.result, NatPmpResult.UNSUPP_OPCODE);
  const peer = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.PEER,
        lifetime: 120,
        client: H1,
        nonce: NONCE,
        proto: IPPROTO_UDP,
        internalPort: 4000,
        remotePort: 3478,
        remoteAddr: P1,
      }),
      H1,
    )!,
  )!;
  assert.equal(peer.result, PcpResult.UNSUPP_OPCODE);
  assert.equal(decodeNatPmpResponse(c.handlePcp(encodeNatPmpRequest(0), H1)!)!.result, 0);
  assert.equal(dp.up.length, 0);
  assert.equal(c.table.size, 0);
});

Deno.test("queue map core: PCP PEER is a direct session: a:pa -> X:px leaves as R:p, X:px -> R:p comes back from X:px; a driver session keeps G:Pg", () => {
  const { c, dp } = setup();
  const peer = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.PEER,
        lifetime: 120,
        client: H1,
        nonce: NONCE,
        proto: IPPROTO_UDP,
        internalPort: 4000,
        remotePort: 3478,
        remoteAddr: P1,
      }),
      H1,
    )!,
  )!;
  assert.equal(peer.result, PcpResult.SUCCESS);
  const s = c.table.lookupIdentity(IPPROTO_UDP, H1, 4000, P1, 3478);
  assert.ok(s >= 0 && c.table.direct(s), "flagged direct in the table");
  assert.equal(dp.up.length, 1);
  assert.equal((dp.up[0] as { direct?: boolean }).direct, true, "the queue path is told");
  assert.ok(!isMapping(dp.up[0]!));

  const out = buildUdp({ src: H1, sport: 4000, dst: P1, dport: 3478 });
  assert.equal(c.handlePacket(out), Verdict.MODIFIED);
  assert.deepEqual(fields(out), [peer.externalAddr, peer.externalPort, P1, 3478]);
  valid(out);
  const back = buildUdp({ src: P1, sport: 3478, dst: peer.externalAddr, dport: peer.externalPort });
  assert.equal(c.handlePacket(back), Verdict.MODIFIED);
  assert.deepEqual(fields(back), [P1, 3478, H1, 4000], "from the remote itself, not G:Pg");
  valid(back);
  // PEER filters: another remote gets nothing (there is no mapping).
  const other = buildUdp({
    src: P2,
    sport: 3478,
    dst: peer.externalAddr,
    dport: peer.externalPort,
  });
  assert.equal(c.handlePacket(other), Verdict.DROP);
  // The same endpoint toward another remote is not steered at all: the queue path steers
  // the PEER's own 5-tuple, so MASQUERADE takes the rest, as on the kernel path.
  const keys: string[] = [];
  const st = new Steering({
    add: (set, ks) => void keys.push(...ks.map((k) => `${set}:${k.join(",")}`)),
    delete: () => {},
  });
  for (const u of dp.up) st.up(u);
  assert.deepEqual(keys.map((k) => k.split(":")[0]), ["peers"], "one 5-tuple element, no endpoint");
  assert.ok(st.hasPeer(IPPROTO_UDP, H1, 4000, P1, 3478));
  assert.ok(!st.hasPeer(IPPROTO_UDP, H1, 4000, P2, 3478), "another remote is not steered");
  assert.ok(!st.has(IPPROTO_UDP, H1, 4000), "the endpoint is not steered for every remote");
  // Should such a packet reach the queue anyway (untracked): it has no row, so it is dropped
  // uncounted against the session and never leaves with the private pair.
  const noSession = c.drops[Drop.NO_SESSION]!;
  const elsewhere = buildUdp({ src: H1, sport: 4000, dst: P2, dport: 3478 });
  assert.equal(c.handlePacket(elsewhere), Verdict.DROP);
  assert.equal(c.drops[Drop.NO_SESSION], noSession + 1);
  assert.deepEqual(fields(elsewhere), [H1, 4000, P2, 3478], "not rewritten");
  assert.equal(c.table.packetsOut(s), 1);

  // A driver host's session on the same gateway: unchanged, G:Pg both ways.
  const g = c.table.reserve({
    proto: IPPROTO_UDP,
    a: H2,
    pa: 40000,
    x: P1,
    px: 7000,
    replaceable: true,
    lifetime: 0,
  }, 1_000_000);
  assert.ok(!c.table.direct(g.session));
  assert.equal((dp.up[1] as { direct?: boolean }).direct, undefined);
  const dOut = buildUdp({ src: H2, sport: 40000, dst: G, dport: g.pg });
  assert.equal(c.handlePacket(dOut), Verdict.MODIFIED);
  assert.deepEqual(fields(dOut), [g.r, g.p, P1, 7000]);
  const dIn = buildUdp({ src: P1, sport: 7000, dst: g.r, dport: g.p });
  assert.equal(c.handlePacket(dIn), Verdict.MODIFIED);
  assert.deepEqual(fields(dIn), [G, g.pg, H2, 40000]);

  // Lifetime 0 releases the PEER session; the queue path stops steering it.
  const del = decodePcpResponse(
    c.handlePcp(
      encodePcpRequest({
        op: PcpOp.PEER,
        lifetime: 0,
        client: H1,
        nonce: NONCE,
        proto: IPPROTO_UDP,
        internalPort: 4000,
        remotePort: 3478,
        remoteAddr: P1,
      }),
      H1,
    )!,
  )!;
  assert.equal(del.result, PcpResult.SUCCESS);
  assert.equal((dp.down.at(-1) as { direct?: boolean }).direct, true);
  const gone = buildUdp({ src: P1, sport: 3478, dst: peer.externalAddr, dport: peer.externalPort });
  assert.equal(c.handlePacket(gone), Verdict.DROP);
});

Deno.test("queue map core: a driver host's mapped endpoint: inbound through the mapping, the reply through its driver as a session on the mapping's R:p", () => {
  const { c } = setup();
  const t = c.table;
  // As `dpm map` does (table.map), the public port equal to the internal one.
  const m = t.map({ proto: IPPROTO_UDP, a: H1, pa: 5060, p: 5060, r: 0, lifetime: 120 }, 1_000_000);
  assert.equal(m.result, 0);
  const inb = buildUdp({ src: P1, sport: 5070, dst: m.r, dport: m.p });
  assert.equal(c.handlePacket(inb), Verdict.MODIFIED);
  assert.deepEqual(fields(inb), [P1, 5070, H1, 5060]);
  // The application answers; its driver reserves a session toward P1:5070 (fixed port).
  const g = t.reserve({
    proto: IPPROTO_UDP,
    a: H1,
    pa: 5060,
    x: P1,
    px: 5070,
    replaceable: false,
    lifetime: 0,
  }, 1_000_000);
  assert.equal(g.result, 0);
  assert.deepEqual([g.r, g.p], [m.r, m.p], "the session uses the mapping's pair");
  const out = buildUdp({ src: H1, sport: 5060, dst: G, dport: g.pg });
  assert.equal(c.handlePacket(out), Verdict.MODIFIED);
  assert.deepEqual(fields(out), [m.r, m.p, P1, 5070]);
  // From now on P1:5070 has a session of its own: G:Pg, which the driver undoes.
  const again = buildUdp({ src: P1, sport: 5070, dst: m.r, dport: m.p });
  assert.equal(c.handlePacket(again), Verdict.MODIFIED);
  assert.deepEqual(fields(again), [G, g.pg, H1, 5060]);
  // Any other remote still reaches the mapping.
  const other = buildUdp({ src: P2, sport: 9, dst: m.r, dport: m.p });
  assert.equal(c.handlePacket(other), Verdict.MODIFIED);
  assert.deepEqual(fields(other), [P2, 9, H1, 5060]);
  // A reply that left straight (its conntrack's reply direction, no driver in the way) is translated too.
  const straight = buildUdp({ src: H1, sport: 5060, dst: P2, dport: 9 });
  assert.equal(c.handlePacket(straight), Verdict.MODIFIED);
  assert.deepEqual(fields(straight), [m.r, m.p, P2, 9]);
});

Deno.test("queue map core: an ICMP error about a mapping's packet reaches the host quoting a:pa -> X:px", () => {
  const { c } = setup();
  const [r] = natPmpMap(c, H1, 1, 5000, 6000);
  const router = P2 + 1;
  // Outside, the host's packet was R:6000 -> P1:7777; a router says P1 is unreachable.
  const quoted = buildUdp({ src: r, sport: 6000, dst: P1, dport: 7777 }).subarray(0, 28);
  const err = buildIcmpError({ src: router, dst: r, type: 3, code: 1, quoted: quoted.slice() });
  assert.equal(c.handlePacket(err), Verdict.MODIFIED);
  const i = new PacketInfo();
  assert.equal(parse(err, err.length, i), Drop.NONE);
  assert.ok(i.icmpError);
  assert.deepEqual([i.src, i.dst], [router, H1]);
  assert.deepEqual([i.innerSrc, i.innerSport, i.innerDst, i.innerDport], [H1, 5000, P1, 7777]);
  assert.ok(verifyIpChecksum(err));
});

Deno.test("queue map core: mappings and direct sessions already in the table are handed to the data path at begin, whichever path", async () => {
  const cfg = serverCfg();
  const c = new ServerCore(cfg, { lan: cfg.lan, now: () => 1_000_000 });
  c.table.map({ proto: IPPROTO_UDP, a: H1, pa: 5000, p: 6000, r: 0, lifetime: 60 }, 1_000_000);
  c.table.reserve({
    proto: IPPROTO_UDP,
    a: H2,
    pa: 4000,
    x: P1,
    px: 3478,
    replaceable: true,
    lifetime: 0,
    direct: true,
  }, 1_000_000);
  for (const kind of ["kernel", "queue"] as const) {
    const dp = new FakeServerDataPath(kind, { forwardsMappings: true });
    c.attach(dp);
    assert.equal(dp.up.length, 0, "attach hands over nothing: begin gets the whole table");
    await dp.begin(() => c.sessions(), () => 0, () => {});
    const begun = dp.begun!;
    assert.equal(begun.length, 2, kind);
    assert.ok(begun.some((s) => isMapping(s) && s.a === H1 && s.pa === 5000));
    assert.ok(begun.some((s) => (s as { direct?: boolean }).direct === true && s.a === H2));
    c.detach();
  }
  // The flag survives the table's record and restore (the state file's round trip holds it
  // only where the store writes it).
  const rec = [...c.table.entries()].find((e) => e.a === H2)!;
  assert.equal(rec.direct, true);
});

Deno.test("queue map core: hairpinning into a mapping: a driver host's packet to R2:p2 reaches the mapped a2:pa2 from its own R1:p1; the mapped host's driver answers back through the hairpin", () => {
  const { c } = setup();
  const t = c.table;
  const [r2, p2] = natPmpMap(c, H2, 1, 5000, 6000);
  // H1's driver reserves a session toward the mapping's public pair.
  const g1 = t.reserve({
    proto: IPPROTO_UDP,
    a: H1,
    pa: 40000,
    x: r2,
    px: p2,
    replaceable: true,
    lifetime: 0,
  }, 1_000_000);
  assert.equal(g1.result, 0);
  const out = buildUdp({ src: H1, sport: 40000, dst: G, dport: g1.pg });
  assert.equal(c.handlePacket(out), Verdict.MODIFIED);
  assert.deepEqual(fields(out), [g1.r, g1.p, H2, 5000], "as from outside: H1's public pair");
  valid(out);
  assert.equal(c.packets.hairpin, 1);
  const m = t.lookupMapOf(IPPROTO_UDP, H2, 5000);
  assert.equal(t.packetsIn(m), 1);
  assert.equal(t.packetsOut(g1.session), 1);

  // An ICMP error from H1 about such a packet (it quotes G:Pg -> a1:pa1) reaches H2 from
  // H1's public address, quoting a2:pa2 -> R1:p1 as H2 sent it.
  const quoted = buildUdp({ src: G, sport: g1.pg, dst: H1, dport: 40000 }).subarray(0, 28);
  const err = buildIcmpError({ src: H1, dst: G, type: 3, code: 3, quoted: quoted.slice() });
  assert.equal(c.handlePacket(err), Verdict.MODIFIED);
  const i = new PacketInfo();
  assert.equal(parse(err, err.length, i), Drop.NONE);
  assert.deepEqual([i.src, i.dst], [g1.r, H2]);
  assert.deepEqual([i.innerSrc, i.innerSport, i.innerDst, i.innerDport], [H2, 5000, g1.r, g1.p]);
  assert.ok(verifyIpChecksum(err));

  // H2 has a driver too: its answer is a session toward R1:p1 on the mapping's pair, and
  // hairpins back into H1's session (G:Pg, undone by H1's driver).
  const g2 = t.reserve({
    proto: IPPROTO_UDP,
    a: H2,
    pa: 5000,
    x: g1.r,
    px: g1.p,
    replaceable: true,
    lifetime: 0,
  }, 1_000_000);
  assert.equal(g2.result, 0);
  assert.deepEqual([g2.r, g2.p], [r2, p2], "on the mapping's pair");
  const back = buildUdp({ src: H2, sport: 5000, dst: G, dport: g2.pg });
  assert.equal(c.handlePacket(back), Verdict.MODIFIED);
  assert.deepEqual(fields(back), [G, g1.pg, H1, 40000]);
  valid(back);
  // From now on H1's packets find H2's session first (G:Pg2, not the mapping).
  const again = buildUdp({ src: H1, sport: 40000, dst: G, dport: g1.pg });
  assert.equal(c.handlePacket(again), Verdict.MODIFIED);
  assert.deepEqual(fields(again), [G, g2.pg, H2, 5000]);
  assert.equal(c.packets.hairpin, 4);

  // Without the mapping (deleted), nothing is delivered.
  t.releaseSlot(g2.session);
  natPmpMap(c, H2, 1, 5000, 6000, 0);
  const none = buildUdp({ src: H1, sport: 40000, dst: G, dport: g1.pg });
  assert.equal(c.handlePacket(none), Verdict.DROP);
});
