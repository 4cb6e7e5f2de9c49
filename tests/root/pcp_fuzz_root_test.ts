/**
 * A real `dpm server` (withDpm) under hostile PCP / NAT-PMP traffic, as
 * root, on both data paths: a LAN host sends a few thousand random and
 * mutated datagrams to 10.0.0.1:5351, each from a fresh socket so every
 * reply is matched to its request (testing/pcp_client.ts `udpExchange`);
 * every reply must obey the reply rules (`replyProblems`: well-formed,
 * never larger than the request, never to a response); the per-source
 * refusal budget must keep the answers few; the WAN side (an outside
 * peer, and a forged LAN source arriving on the WAN link) gets no answer
 * at all. Afterwards the server still runs, logged its refusals and no
 * handler error, and answers a valid ANNOUNCE, NAT-PMP and MAP correctly.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { withDpm } from "../../testing/launch.ts";
import { type DataPathName, perDataPath } from "../../testing/root.ts";
import {
  buildAnnounce,
  buildMap,
  buildNatPmpAddress,
  buildNatPmpMap,
  buildPeer,
  filter,
  heard,
  hex,
  type MapFields,
  parseNatPmpResponse,
  parsePcpResponse,
  preferFailure,
  randomNonce,
  replyProblems,
  RESULT,
  thirdParty,
  udpExchange,
  udpListenCommand,
} from "../../testing/pcp_client.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const POOL = ["203.0.113.10", "203.0.113.11", "203.0.113.12", "203.0.113.13"];

/** Valid requests of every kind from `client`, to be mutated. */
function valid(client: string): fc.Arbitrary<Uint8Array> {
  const map = fc.record({
    lifetime: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 100_000 })),
    protocol: fc.constantFrom(6, 17, 0, 1),
    internalPort: fc.integer({ min: 1, max: 65535 }),
    externalPort: fc.integer({ min: 0, max: 65535 }),
    nonce: fc.uint8Array({ minLength: 12, maxLength: 12 }),
    opts: fc.subarray([preferFailure(), thirdParty(client), filter(128, 80, "198.51.100.10")]),
  }).map((f): MapFields => ({ ...f, client, options: f.opts }));
  return fc.oneof(
    fc.constant(buildNatPmpAddress()),
    fc.tuple(fc.constantFrom(1 as const, 2 as const), fc.nat(65535), fc.nat(65535), fc.nat())
      .map(([op, a, b, l]) => buildNatPmpMap(op, a, b, l)),
    fc.constant(buildAnnounce({ lifetime: 0, client })),
    map.map(buildMap),
    map.map((m) => buildPeer({ ...m, remotePort: 3478, remoteAddr: "198.51.100.10" })),
  );
}

/** Hostile datagrams: random bytes, valid ones mutated, cut, extended, R bit and version flipped. */
function hostile(client: string): fc.Arbitrary<Uint8Array> {
  const mutated = fc.tuple(
    valid(client),
    fc.array(fc.tuple(fc.nat(1500), fc.nat(255)), { maxLength: 3 }),
    fc.oneof(fc.constant(-1), fc.nat(1500)),
    fc.uint8Array({ maxLength: 1400 }),
  ).map(([req, flips, cut, tail]) => {
    let b = req.slice();
    for (const [i, v] of flips) b[i % b.length] = v;
    if (cut >= 0) b = b.slice(0, cut % (b.length + 1));
    else {
      const n = new Uint8Array(b.length + tail.length);
      n.set(b);
      n.set(tail, b.length);
      b = n;
    }
    return b;
  });
  const flagged = fc.tuple(valid(client), fc.constantFrom(0, 1, 2, 3, 0xff), fc.boolean())
    .map(([req, version, r]) => {
      const b = req.slice();
      b[0] = version;
      if (r) b[1] = b[1]! | 0x80;
      return b;
    });
  return fc.oneof(
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 1400 }) },
    { weight: 4, arbitrary: mutated },
    { weight: 2, arbitrary: flagged },
    { weight: 1, arbitrary: valid(client) },
  );
}

async function run(datapath: DataPathName): Promise<void> {
  await withDpm({ datapath, hosts: 2, driverHosts: [] }, async (t, d) => {
    const h1 = t.hosts[0]!;
    const h2 = t.hosts[1]!;
    const g = t.gateway.lanText;
    const sent = fc.sample(hostile(h1.addrText), { numRuns: 3000, seed: 6887 });
    const t0 = Date.now();
    const out = await udpExchange(t, h1.ns, g, 5351, sent, { timeoutMs: 150, window: 64 });
    const secs = (Date.now() - t0) / 1000;
    const answered = out.filter((o) => o.reply);
    for (const o of answered) {
      assert.equal(o.from, `${g}:5351`);
      assert.deepEqual(replyProblems(o.sent, o.reply!), [], `${hex(o.reply!)} to ${hex(o.sent)}`);
    }
    for (const o of out) {
      if (o.sent.length < 2 || (o.sent[1]! & 0x80)) assert.equal(o.reply, null, hex(o.sent));
    }
    const successes = out.filter((o) => o.reply && o.reply[3] === 0);
    // Refusals of what the source cannot be held to (garbage, a version, a forged client
    // address) are answered within the per-source budget: a burst of 8, then 4 a second.
    // (A verified host's own refusals, e.g. THIRD_PARTY or protocol 1, come under its rate.)
    const BUDGETED = [
      RESULT.UNSUPP_VERSION,
      RESULT.MALFORMED_REQUEST,
      RESULT.MALFORMED_OPTION,
      RESULT.ADDRESS_MISMATCH,
    ] as number[];
    const budgeted = answered.filter((o) =>
      o.reply![0] === 0 ? o.reply!.length === 8 : BUDGETED.includes(o.reply![3]!)
    );
    assert.ok(
      budgeted.length <= 8 + 4 * Math.ceil(secs) + 4,
      `${budgeted.length} unverified refusals answered in ${secs.toFixed(1)} s: the budget holds`,
    );
    assert.ok(budgeted.length >= 8, `the budget was reached (${budgeted.length})`);
    assert.ok(answered.length > 0, "some were answered");

    // The WAN side: an outside peer, to the LAN address (routed in) and the WAN address.
    const p1 = t.peers[0]!;
    const rt = t.router!;
    const ipr = await t.exec(rt.ns, [
      "ip",
      "route",
      "add",
      "10.0.0.0/24",
      "via",
      t.gateway.wanText,
    ]);
    assert.equal(ipr.code, 0, ipr.stderr);
    const outsider = [
      buildNatPmpAddress(),
      buildNatPmpMap(1, 5000, 5000, 60),
      buildAnnounce({ lifetime: 0, client: p1.addrText }),
      buildMap({
        lifetime: 60,
        client: p1.addrText,
        nonce: randomNonce(),
        protocol: 17,
        internalPort: 5000,
      }),
      ...fc.sample(hostile(p1.addrText), { numRuns: 200, seed: 6886 }),
    ];
    for (const target of [g, t.gateway.wanText]) {
      const w = await udpExchange(t, p1.ns, target, 5351, outsider, { timeoutMs: 150, window: 64 });
      const got = w.filter((o) => o.reply);
      assert.equal(got.length, 0, `the WAN side was answered via ${target}: ${got.length}`);
    }
    // A forged LAN source (h2's address) arriving on the WAN link: the guard drops it
    // (the core alone would answer it, toward h2, who listens on the port it came from).
    const listen = t.spawn(h2.ns, udpListenCommand(40_000));
    await listen.waitForOutput(/listening/, 10_000);
    const add = await t.exec(rt.ns, ["ip", "addr", "add", `${h2.addrText}/32`, "dev", "gw0"]);
    assert.equal(add.code, 0, add.stderr);
    const rx = async () =>
      Number(
        (await t.exec(t.gateway.ns, ["cat", "/sys/class/net/wan0/statistics/rx_packets"])).stdout,
      );
    const before = await rx();
    const forged = [buildNatPmpAddress(), buildAnnounce({ lifetime: 0, client: h2.addrText })];
    const spoof = await t.exec(rt.ns, [
      "python3",
      "-c",
      `
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("${h2.addrText}", 40000))
for i in range(20):
    for h in ${JSON.stringify(forged.map(hex))}:
        s.sendto(bytes.fromhex(h), ("${g}", 5351))
    time.sleep(0.01)
`,
    ]);
    assert.equal(spoof.code, 0, spoof.stderr);
    await new Promise((r) => setTimeout(r, 500));
    assert.ok((await rx()) - before >= 40, "the forged datagrams reached the gateway's WAN link");
    assert.equal(
      heard(listen.stdout()).length,
      0,
      `forged from the WAN, answered: ${listen.output()}`,
    );
    await listen.stop();

    // Still up, and correct: ANNOUNCE, NAT-PMP, MAP from the other host (its own budget).
    const nonce = randomNonce();
    const mapReq = buildMap({
      lifetime: 120,
      client: h2.addrText,
      nonce,
      protocol: 17,
      internalPort: 7000,
      externalPort: 7000,
    });
    const ok = await udpExchange(t, h2.ns, g, 5351, [
      buildAnnounce({ lifetime: 0, client: h2.addrText }),
      buildNatPmpAddress(),
      mapReq,
    ], { timeoutMs: 2000, window: 1 });
    const ann = parsePcpResponse(ok[0]!.reply!);
    assert.deepEqual(ann.problems, []);
    assert.deepEqual([ann.opcode, ann.result, ann.lifetime], [0, RESULT.SUCCESS, 0]);
    assert.ok(ann.epoch >= Math.floor(secs) && ann.epoch < 600, `epoch ${ann.epoch}`);
    const nat = parseNatPmpResponse(ok[1]!.reply!);
    assert.deepEqual(nat.problems, []);
    assert.ok(POOL.includes(nat.externalAddr!), nat.externalAddr!);
    const m = parsePcpResponse(ok[2]!.reply!);
    assert.deepEqual(replyProblems(mapReq, ok[2]!.reply!), []);
    // The queue path answers mappings once it can forward them (its steering table), else
    // UNSUPP_OPCODE; the kernel and bpf paths always map.
    if (datapath !== "queue" || m.result === RESULT.SUCCESS) {
      assert.equal(m.result, RESULT.SUCCESS);
      assert.equal(m.externalPort, 7000);
      assert.equal(m.externalAddr, nat.externalAddr, "the address NAT-PMP answered");
      assert.equal(hex(m.nonce!), hex(nonce));
      assert.ok(m.lifetime > 0 && m.lifetime <= 120);
    } else {
      assert.equal(m.result, RESULT.UNSUPP_OPCODE, "a queue path that forwards no mappings");
    }
    const st = await d.status();
    assert.ok(typeof st.sessions === "number", "dpm status answers");

    // The log accounts for the refusals, and no datagram made the handler throw.
    const log = d.server.output();
    assert.match(
      log,
      new RegExp(`refused a (PCP|NAT-PMP) .*from ${h1.addrText.replace(/\./g, "\\.")}`),
    );
    assert.doesNotMatch(log, /handling a PCP request/, "no handler error");
    assert.doesNotMatch(log, /from 198\.51\.100\./, "nothing from the outside reached the service");
    assert.equal(d.server.stdout().includes("panic"), false);
    console.log(
      `pcp fuzz [${datapath}]: ${sent.length} sent in ${secs.toFixed(1)} s, ` +
        `${answered.length} answered (${successes.length} successes, ${budgeted.length} budgeted refusals), ` +
        `${outsider.length * 2 + 40} from the WAN side unanswered`,
    );
  });
}

for (
  const def of perDataPath({
    name:
      "pcp root: fuzz, thousands of hostile PCP / NAT-PMP datagrams from the LAN get only well-formed, budgeted replies; the WAN side none; the server still answers",
    ...SAN,
    fn: run,
  })
) Deno.test(def);
