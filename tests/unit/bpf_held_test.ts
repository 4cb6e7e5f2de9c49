/**
 * The held packets of the bpf path (src/datapath/bpf/held.ts): what the
 * host's program copied for the driver becomes the packet the core decides
 * on, and the core's verdict sends the right bytes back out. Built with the
 * test packet builders (testing/packets.ts, which compute checksums from
 * scratch) and checked with their verifiers.
 *
 * Also `--datapath auto` (src/datapath/open.ts `chooseDataPath`): bpf where
 * it opens, else kernel with the reason logged.
 */

import assert from "node:assert/strict";
import {
  completeChecksum,
  fragment,
  HELD_ID_BASE,
  HeldPackets,
  reassemble,
  splitUdpGso,
} from "../../src/datapath/bpf/held.ts";
import { chooseDataPath } from "../../src/datapath/open.ts";
import type { DataPathKind } from "../../src/datapath/datapath.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { pseudoHeaderSum } from "../../src/wire/checksum.ts";
import {
  buildIcmpEcho,
  buildTcp,
  buildUdp,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";
import { ip } from "../../testing/fixtures.ts";

const A = ip("10.0.0.11");
const X = ip("198.51.100.10");
const G0 = ip("10.0.0.1");

/** The frame the program copies: an Ethernet header, then the packet. */
function frame(pkt: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + pkt.length);
  f[12] = 0x08;
  f.set(pkt, 14);
  return f;
}

function rig() {
  const sent: { pkt: Uint8Array; dst: number }[] = [];
  const accepted: unknown[] = [];
  let now = 0;
  const held = new HeldPackets({
    send: (pkt, dst) => sent.push({ pkt: pkt.slice(), dst }),
    accepted: (f) => accepted.push(f),
    now: () => now,
    mtu: 1500,
  });
  return { held, sent, accepted, tick: (ms: number) => now += ms };
}

/** Splits `pkt` (checksums complete) into fragments of `size` payload bytes (a multiple of 8). */
function fragments(pkt: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const payload = pkt.subarray(20);
  for (let off = 0; off < payload.length; off += size) {
    const n = Math.min(size, payload.length - off);
    const f = new Uint8Array(20 + n);
    f.set(pkt.subarray(0, 20));
    f.set(payload.subarray(off, off + n), 20);
    const dv = new DataView(f.buffer);
    dv.setUint16(2, f.length);
    dv.setUint16(6, (off + n < payload.length ? 0x2000 : 0) | (off / 8));
    dv.setUint16(10, 0);
    let s = 0;
    for (let i = 0; i < 20; i += 2) s += dv.getUint16(i);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    dv.setUint16(10, ~s & 0xffff);
    out.push(f);
  }
  return out;
}

Deno.test("bpf held: a UDP datagram goes to the core with its id; ACCEPT sends it back and notes its flow", () => {
  const { held, sent, accepted } = rig();
  const pkt = buildUdp({ src: A, sport: 40000, dst: X, dport: 5060 });
  const t = held.take(frame(pkt), 0);
  assert.ok(t);
  assert.ok(t.id >= HELD_ID_BASE, "above every queue id");
  assert.deepEqual(t.pkt, pkt);
  assert.equal(held.size, 1);
  assert.equal(held.verdict(t.id, Verdict.ACCEPT), true);
  assert.deepEqual(sent, [{ pkt, dst: X }]);
  assert.deepEqual(accepted, [{ proto: 17, src: A, sport: 40000, dst: X, dport: 5060 }]);
  assert.equal(held.size, 0);
});

Deno.test("bpf held: DROP sends nothing; a queue id is not a held packet's", () => {
  const { held, sent, accepted } = rig();
  const t = held.take(frame(buildUdp({ src: A, sport: 40000, dst: X, dport: 53 })), 0)!;
  assert.equal(held.verdict(t.id, Verdict.DROP), true);
  assert.deepEqual(sent, []);
  assert.deepEqual(accepted, []);
  assert.equal(held.verdict(17, Verdict.ACCEPT), false, "a netfilter queue id");
});

Deno.test("bpf held: a checksum the device was to complete (pseudo-header only) is completed; a UDP 0 stays 0", () => {
  const tcp = buildTcp({ src: A, sport: 40000, dst: X, dport: 443, flags: 0x02 });
  // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
  const partial = tcp.slice();
  const dv = new DataView(partial.buffer);
  dv.setUint16(36, pseudoHeaderSum(A, X, 6, tcp.length - 20));
  assert.ok(!verifyL4Checksum(partial));
  completeChecksum(partial);
  assert.ok(verifyL4Checksum(partial));
  assert.deepEqual(partial, tcp, "the same bytes as a full computation");
  const complete = tcp.slice();
  completeChecksum(complete);
  assert.deepEqual(complete, tcp, "a complete checksum is left alone");
  const none = buildUdp({ src: A, sport: 1, dst: X, dport: 2, checksum: false });
  completeChecksum(none);
  assert.equal(new DataView(none.buffer).getUint16(26), 0);
});

Deno.test("bpf held: a UDP GSO packet is split into the datagrams the device would send", () => {
  const payload = new Uint8Array(2500).map((_, i) => i & 0xff);
  const big = buildUdp({ src: A, sport: 40000, dst: X, dport: 9, payload, id: 100 });
  const segs = splitUdpGso(big, 1000);
  assert.equal(segs.length, 3);
  segs.forEach((s, i) => {
    const n = i < 2 ? 1000 : 500;
    assert.equal(s.length, 28 + n);
    assert.ok(verifyIpChecksum(s), `segment ${i} IP checksum`);
    assert.ok(verifyL4Checksum(s), `segment ${i} UDP checksum`);
    assert.equal(new DataView(s.buffer).getUint16(4), 100 + i, "ids numbered as the kernel does");
    assert.deepEqual(s.subarray(28), payload.subarray(i * 1000, i * 1000 + n));
  });
  const { held, sent } = rig();
  const t = held.take(frame(big), 1000)!;
  assert.deepEqual(t.pkt, segs[0], "the core decides on the first datagram");
  held.verdict(t.id, Verdict.ACCEPT);
  assert.deepEqual(sent.map((s) => s.pkt), segs, "all of them go back out");
});

Deno.test("bpf held: fragments wait for their datagram; the core decides on it whole; the fragments go back in order", () => {
  const payload = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);
  const whole = buildUdp({ src: A, sport: 40700, dst: X, dport: 7000, payload, frag: 0 });
  const frags = fragments(whole, 1480);
  assert.equal(frags.length, 3);
  assert.ok(reassemble([frags[2]!, frags[0]!]) === null, "a piece missing");
  assert.deepEqual(reassemble([frags[2]!, frags[0]!, frags[1]!]), whole, "any order");

  const { held, sent, accepted } = rig();
  assert.equal(held.take(frame(frags[0]!), 0), null);
  assert.equal(held.take(frame(frags[1]!), 0), null);
  const t = held.take(frame(frags[2]!), 0)!;
  assert.deepEqual(t.pkt, whole);
  assert.ok(verifyL4Checksum(t.pkt));
  held.verdict(t.id, Verdict.MODIFIED);
  assert.deepEqual(sent.map((s) => s.pkt), frags, "the fragments, first first");
  assert.deepEqual(accepted, [{ proto: 17, src: A, sport: 40700, dst: X, dport: 7000 }]);
});

Deno.test("bpf held: fragments of an incomplete datagram are forgotten after the wait", () => {
  const whole = buildUdp({
    src: A,
    sport: 1,
    dst: X,
    dport: 2,
    payload: new Uint8Array(2000),
    frag: 0,
  });
  const frags = fragments(whole, 1480);
  const { held, tick } = rig();
  assert.equal(held.take(frame(frags[0]!), 0), null);
  tick(6000);
  assert.equal(held.take(frame(frags[1]!), 0), null, "its first fragment was forgotten");
  assert.ok(held.dropped >= 1);
});

Deno.test("bpf held: ICMP arriving goes to the core inbound; its rewritten packet is delivered to the host, whole", () => {
  const { held, sent, accepted } = rig();
  const G = ip("10.0.0.1");
  const reply = buildIcmpEcho({ src: G, dst: A, id: 61001, seq: 1, type: 0 });
  const t = held.take(frame(reply), 0, false)!;
  assert.equal(t.outbound, false);
  const rewritten = buildIcmpEcho({ src: X, dst: A, id: 700, seq: 1, type: 0 });
  held.verdict(t.id, Verdict.MODIFIED, rewritten);
  assert.deepEqual(sent, [{ pkt: rewritten, dst: A }], "to the local address: delivered");
  assert.deepEqual(accepted, [], "no pass entry for ICMP");
});

Deno.test("bpf held: a rewritten leaving packet larger than the MTU goes out in fragments", () => {
  const { held, sent } = rig();
  const payload = new Uint8Array(3000).map((_, i) => i & 0xff);
  const ping = buildIcmpEcho({ src: A, dst: X, id: 700, seq: 1, type: 8, payload, frag: 0 });
  const frags = fragments(ping, 1480);
  for (const f of frags.slice(0, -1)) assert.equal(held.take(frame(f), 0, true), null);
  const t = held.take(frame(frags.at(-1)!), 0, true)!;
  assert.deepEqual(t.pkt, ping, "decided whole");
  const out = buildIcmpEcho({ src: A, dst: G0, id: 61001, seq: 1, type: 8, payload, frag: 0 });
  held.verdict(t.id, Verdict.MODIFIED, out);
  assert.deepEqual(sent.map((s) => s.pkt), fragment(out, 1500));
  assert.equal(sent.length, 3);
  assert.ok(sent.every((s) => s.pkt.length <= 1500 && verifyIpChecksum(s.pkt)));
  assert.deepEqual(reassemble(sent.map((s) => s.pkt)), out, "the fragments make it whole again");
  const df = buildIcmpEcho({ src: A, dst: X, id: 1, seq: 1, type: 8, payload, frag: 0x4000 });
  assert.deepEqual(
    fragment(df, 1500),
    [df],
    "DF: left whole (the send fails, as the stack's would)",
  );
});

Deno.test("bpf held: a SYN's copies (the host's retransmissions while it was held) are dropped; the one SYN goes once", () => {
  const { held, sent, tick } = rig();
  const syn = (seq: number, ttl?: number) =>
    buildTcp({
      src: A,
      sport: 40000,
      dst: G0,
      dport: 61000,
      seq,
      flags: 0x02,
      ...(ttl ? { ttl } : {}),
    });
  const t = held.take(frame(syn(7)), 0)!;
  assert.ok(t);
  // The host's retransmission (the same sequence number) while the core decides.
  tick(1000);
  assert.equal(held.take(frame(syn(7, 63)), 0), null);
  // Another SYN of the flow (a new connection, another ISN) and another flow are decided on their own.
  assert.ok(held.take(frame(syn(9000)), 0));
  const flow2 = held.take(
    frame(buildTcp({ src: A, sport: 40001, dst: G0, dport: 61000, seq: 7, flags: 0x02 })),
    0,
  );
  assert.ok(flow2);
  // Not a SYN (a SYN-ACK, data): never merged.
  const synAck = buildTcp({
    src: A,
    sport: 40000,
    dst: G0,
    dport: 61000,
    seq: 7,
    ack: 1,
    flags: 0x12,
  });
  assert.ok(held.take(frame(synAck), 0));
  assert.equal(held.verdict(t.id, Verdict.ACCEPT), true);
  assert.deepEqual(sent.map((s) => s.pkt), [syn(7)]);
  // A copy read just after the verdict (held before the grant) is dropped too.
  tick(10);
  assert.equal(held.take(frame(syn(7)), 0), null);
  assert.equal(held.duplicateSyns, 2);
  // Seconds later the same SYN is decided again.
  tick(5000);
  assert.ok(held.take(frame(syn(7)), 0));
  assert.equal(held.duplicateSyns, 2);
});

Deno.test("bpf held: what is not IPv4 is dropped and counted", () => {
  const { held } = rig();
  assert.equal(held.take(new Uint8Array(10), 0), null);
  assert.equal(held.dropped, 1);
});

Deno.test("datapath auto: bpf where it opens, else kernel, with the reason logged", async () => {
  const tried: DataPathKind[] = [];
  const open = (fail: boolean) => (kind: DataPathKind) => {
    tried.push(kind);
    if (kind === "bpf" && fail) return Promise.reject(new Error("libbpf.so.1: not found\nmore"));
    return Promise.resolve({ kind });
  };
  assert.equal((await chooseDataPath("auto", open(false))).kind, "bpf");
  assert.deepEqual(tried.splice(0), ["bpf"]);
  // The log line, as the logger writes it to stderr.
  const logged: string[] = [];
  const stderr = Deno.stderr as { writeSync(b: Uint8Array): number };
  const orig = stderr.writeSync;
  stderr.writeSync = (b: Uint8Array) => {
    logged.push(new TextDecoder().decode(b));
    return b.length;
  };
  try {
    assert.equal((await chooseDataPath("auto", open(true))).kind, "kernel");
  } finally {
    stderr.writeSync = orig;
  }
  assert.deepEqual(tried.splice(0), ["bpf", "kernel"]);
  assert.ok(
    logged.some((l) =>
      /bpf data path unavailable \(libbpf\.so\.1: not found\); using the kernel/.test(l)
    ),
    logged.join("\n"),
  );
  assert.equal((await chooseDataPath("queue", open(true))).kind, "queue", "a kind is opened as is");
  await assert.rejects(() => chooseDataPath("bpf", open(true)), /libbpf/, "bpf asked: no fallback");
});

Deno.test("datapath: the kernel and bpf paths share dpm's nftables table (one never removes it for the other)", async () => {
  const { KernelServerDataPath } = await import("../../src/datapath/kernel/server.ts");
  const { BpfServerDataPath } = await import("../../src/datapath/bpf/server.ts");
  assert.equal(KernelServerDataPath.family, "nft");
  assert.equal(BpfServerDataPath.family, "nft");
  assert.equal(typeof BpfServerDataPath.removeExtras, "function", "bpf removes only its programs");
});
