/**
 * The session map's layout in TypeScript (src/datapath/bpf/layout.ts):
 * bytes as the programs read them, the two mirrored entries of every kind
 * of session, what belongs to a mapping, the gateway's configuration record
 * and how dpm reads a device's kind for it. No root, no kernel.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  configBytes,
  gatewayRecords,
  hostRecords,
  keyBytes,
  learnedOf,
  mirrorKey,
  NatConfigLayout,
  NatDir,
  NatEntryLayout,
  NatFlag,
  NatHandoff,
  type NatKey,
  NatKeyLayout,
  type NatRecord,
  readEntry,
  readKey,
  writeEntry,
  writeKey,
} from "../../src/datapath/bpf/layout.ts";
import type { GatewaySession } from "../../src/datapath/datapath.ts";
import { G, H1, P1, R1 } from "../../testing/fixtures.ts";
import { parsePeerInOtherNamespace } from "../../linux/iface.ts";

const S: GatewaySession = {
  proto: 17,
  a: H1,
  pa: 40000,
  x: P1,
  px: 5060,
  r: R1,
  p: 40001,
  pg: 61001,
};

Deno.test("bpf layout: a key is the packet's own bytes in network order, then proto and side", () => {
  const b = keyBytes({
    proto: 17,
    dir: NatDir.OUT,
    saddr: H1,
    sport: 40000,
    daddr: G,
    dport: 61001,
  });
  assert.equal(b.length, NatKeyLayout.SIZE);
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  // 10.0.0.11, 10.0.0.1, 40000 (0x9c40), 61001 (0xee49), 17, OUT, pad
  assert.equal(hex, "0a00000b" + "0a000001" + "9c40" + "ee49" + "11" + "01" + "0000");
});

Deno.test("bpf layout: keys and entries read back what was written (any values)", () => {
  const u32 = fc.integer({ min: 0, max: 0xffffffff });
  const u16 = fc.integer({ min: 0, max: 0xffff });
  fc.assert(fc.property(
    u32,
    u32,
    u16,
    u16,
    fc.constantFrom(6, 17),
    fc.constantFrom(NatDir.OUT, NatDir.IN),
    fc.integer({ min: 0, max: 63 }),
    fc.integer({ min: 0, max: 2 ** 52 }),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    (saddr, daddr, sport, dport, proto, dir, flags, n, ns) => {
      const k: NatKey = { saddr, daddr, sport, dport, proto, dir };
      const e = {
        to: { saddr: daddr, daddr: saddr, sport: dport, dport: sport },
        flags,
        packets: n,
        bytes: n * 3,
        lastNs: ns,
      };
      const buf = new DataView(new ArrayBuffer(NatKeyLayout.SIZE + NatEntryLayout.SIZE + 8));
      writeKey(buf, 4, k);
      writeEntry(buf, 4 + NatKeyLayout.SIZE, e);
      assert.deepEqual(readKey(buf, 4), k);
      assert.deepEqual(readEntry(buf, 4 + NatKeyLayout.SIZE), e);
    },
  ));
});

/** Applies an entry to its key's tuple (0: keep). */
function apply(r: NatRecord) {
  const { key: k, entry: { to } } = r;
  return {
    saddr: to.saddr || k.saddr,
    sport: to.sport || k.sport,
    daddr: to.daddr || k.daddr,
    dport: to.dport || k.dport,
  };
}

Deno.test("bpf layout: a session's two entries mirror each other (driver, direct, host)", () => {
  const cases: [string, NatRecord[]][] = [
    ["driver", gatewayRecords(S, G)],
    ["direct", gatewayRecords({ ...S, direct: true }, G)],
    ["host", hostRecords({ proto: 6, a: H1, pa: 41000, x: P1, px: 443, g: G, pg: 61002 })],
  ];
  for (const [what, [out, inn]] of cases) {
    assert.equal(out!.key.dir, NatDir.OUT, what);
    assert.equal(inn!.key.dir, NatDir.IN, what);
    assert.deepEqual(mirrorKey(out!.key, out!.entry), inn!.key, what);
    assert.deepEqual(mirrorKey(inn!.key, inn!.entry), out!.key, what);
    // Translating one way and back gives the packet's own pair.
    assert.deepEqual(apply(inn!), {
      saddr: out!.key.daddr,
      sport: out!.key.dport,
      daddr: out!.key.saddr,
      dport: out!.key.sport,
    }, what);
  }
  const [o, i] = gatewayRecords(S, G);
  assert.deepEqual(apply(o!), { saddr: R1, sport: 40001, daddr: P1, dport: 5060 });
  assert.deepEqual(o!.key, {
    proto: 17,
    dir: NatDir.OUT,
    saddr: H1,
    sport: 40000,
    daddr: G,
    dport: 61001,
  });
  assert.deepEqual(apply(i!), { saddr: G, sport: 61001, daddr: H1, dport: 40000 });
  assert.equal(o!.entry.flags, 0, "a gateway session starts slow");
  assert.equal(
    hostRecords({ ...S, g: G })[0]!.entry.flags,
    NatFlag.FAST,
    "the host's is fast at once",
  );
});

Deno.test("bpf layout: a mapping is two wildcards; its learned flows are recognised, others are not", () => {
  const m: GatewaySession = { proto: 17, a: H1, pa: 7000, x: 0, px: 0, r: R1, p: 7000, pg: 0 };
  const [o, i] = gatewayRecords(m, G);
  assert.deepEqual(o!.key, {
    proto: 17,
    dir: NatDir.OUT,
    saddr: H1,
    sport: 7000,
    daddr: 0,
    dport: 0,
  });
  assert.deepEqual(i!.key, {
    proto: 17,
    dir: NatDir.IN,
    saddr: 0,
    sport: 0,
    daddr: R1,
    dport: 7000,
  });
  assert.equal(o!.entry.flags, NatFlag.WILDCARD);
  assert.equal(i!.entry.flags, NatFlag.WILDCARD);
  const fresh = { packets: 0, bytes: 0, lastNs: 0n };
  const learnedIn: NatRecord = {
    key: { proto: 17, dir: NatDir.IN, saddr: P1, sport: 9, daddr: R1, dport: 7000 },
    entry: {
      to: { saddr: P1, sport: 9, daddr: H1, dport: 7000 },
      flags: NatFlag.LEARNED,
      ...fresh,
    },
  };
  const learnedOut: NatRecord = {
    key: { proto: 17, dir: NatDir.OUT, saddr: H1, sport: 7000, daddr: P1, dport: 9 },
    entry: {
      to: { saddr: R1, sport: 7000, daddr: P1, dport: 9 },
      flags: NatFlag.LEARNED | NatFlag.FAST,
      ...fresh,
    },
  };
  assert.ok(learnedOf(m, learnedIn));
  assert.ok(learnedOf(m, learnedOut));
  assert.ok(
    !learnedOf(m, { ...learnedOut, entry: { ...learnedOut.entry, flags: NatFlag.FAST } }),
    "not learned",
  );
  assert.ok(!learnedOf({ ...m, p: 7001 }, learnedIn), "another mapping");
  assert.ok(!learnedOf({ ...m, proto: 6 }, learnedOut), "another protocol");
  for (const r of gatewayRecords(S, G)) assert.ok(!learnedOf(m, r), "a session is no learned flow");
});

Deno.test("bpf layout: ICMP sessions get no entries (the stack and the queue translator keep them)", () => {
  assert.deepEqual(gatewayRecords({ ...S, proto: 1 }, G), []);
  assert.deepEqual(hostRecords({ proto: 1, a: H1, pa: 0, x: P1, px: 0, g: G, pg: 61001 }), []);
});

Deno.test("bpf layout: the gateway's configuration record carries each side's hand-off, XMIT by default", () => {
  const base = {
    lanIfindex: 3,
    wanIfindex: 4,
    lanNet: 0x0a000000,
    lanMask: 0xffffff00,
    gateway: 0x0a000001,
    edges: [0x0a000000, 0x0a0000ff] as [number, number],
  };
  const plain = configBytes(base);
  assert.equal(plain.length, NatConfigLayout.SIZE);
  assert.equal(plain[NatConfigLayout.LAN_HANDOFF], NatHandoff.XMIT);
  assert.equal(plain[NatConfigLayout.WAN_HANDOFF], NatHandoff.XMIT);
  const peer = configBytes({ ...base, wanHandoff: NatHandoff.PEER });
  assert.equal(peer[NatConfigLayout.LAN_HANDOFF], NatHandoff.XMIT);
  assert.equal(peer[NatConfigLayout.WAN_HANDOFF], NatHandoff.PEER);
  assert.deepEqual([...peer.subarray(NatConfigLayout.PAD)], [0, 0]);
  // Only the hand-off bytes differ.
  assert.deepEqual(
    [...peer].map((b, i) => b === plain[i] ? -1 : i).filter((i) => i >= 0),
    [NatConfigLayout.WAN_HANDOFF],
  );
});

Deno.test("bpf layout: a device's peer is in another namespace only for a veth or netkit with a link_netnsid", () => {
  const link = (extra: Record<string, unknown>) =>
    JSON.stringify([{ ifindex: 4, ifname: "wan0", link_type: "ether", ...extra }]);
  // As `ip -j -d link show dev wan0` prints them (iproute2 6.x).
  assert.equal(
    parsePeerInOtherNamespace(
      link({ link_index: 3, link_netnsid: 1, linkinfo: { info_kind: "veth" } }),
    ),
    true,
  );
  assert.equal(
    parsePeerInOtherNamespace(link({ link_netnsid: 0, linkinfo: { info_kind: "netkit" } })),
    true,
  );
  // A veth whose peer is in this namespace (`link`, no netnsid): no peer hand-off.
  assert.equal(
    parsePeerInOtherNamespace(link({ link: "wan1", linkinfo: { info_kind: "veth" } })),
    false,
  );
  // Other kinds, even with a netnsid (a macvlan on a link elsewhere), and no kind at all.
  assert.equal(
    parsePeerInOtherNamespace(link({ link_netnsid: 1, linkinfo: { info_kind: "macvlan" } })),
    false,
  );
  assert.equal(parsePeerInOtherNamespace(link({ linkinfo: { info_kind: "bridge" } })), false);
  assert.equal(parsePeerInOtherNamespace(link({})), false);
  // What `ip` prints on failure, or nothing: no.
  assert.equal(parsePeerInOtherNamespace(""), false);
  assert.equal(parsePeerInOtherNamespace("not json"), false);
  assert.equal(parsePeerInOtherNamespace("[]"), false);
  assert.equal(parsePeerInOtherNamespace("{}"), false);
});
