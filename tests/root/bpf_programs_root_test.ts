/**
 * dpm's BPF programs on real packet bytes with BPF_PROG_TEST_RUN, in
 * namespaces with fixed interfaces, routes and neighbours
 * (`testing/bpf_ns.ts`; nothing is sent). Each translated packet is compared
 * byte for byte with the same packet built from scratch with full
 * checksums (`testing/packets.ts`), and its checksums are verified again
 * with the project's own checksum code (`src/wire/checksum.ts`): an
 * incremental update that is off by one anywhere fails.
 *
 * Names: G 10.0.0.1 (gateway LAN), a 10.0.0.11 (host), X 198.51.100.10
 * (remote), R 203.0.113.10 (public), router 203.0.113.254.
 *
 * @module
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import { sh } from "../../testing/netns.ts";
import { type BpfNs, createBpfNs, ethFrame, MAC } from "../../testing/bpf_ns.ts";
import { BpfRig, type JsonRecord } from "../../testing/bpf_rig.ts";
import {
  buildIcmpEcho,
  buildTcp,
  buildUdp,
  hex,
  verifyIpChecksum,
  verifyL4Checksum,
} from "../../testing/packets.ts";
import { ip } from "../../testing/fixtures.ts";
import { pseudoHeaderSum, sum16 } from "../../src/wire/checksum.ts";
import {
  gatewayRecords,
  hostRecords,
  NatDir,
  NatFlag,
  type NatKey,
  type NatRecord,
} from "../../src/datapath/bpf/layout.ts";
import type { GatewaySession } from "../../src/datapath/datapath.ts";

const G = ip("10.0.0.1");
const A = ip("10.0.0.11");
const A2 = ip("10.0.0.12");
const X = ip("198.51.100.10");
const R = ip("203.0.113.10");
const UDP = 17;
const TCP = 6;
/** tc return codes: TC_ACT_UNSPEC (as u32), TC_ACT_OK, TC_ACT_REDIRECT. */
const PASS = 0xffffffff;
const REDIRECT = 7;

const SESSION: GatewaySession = {
  proto: UDP,
  a: A,
  pa: 40000,
  x: X,
  px: 5060,
  r: R,
  p: 40001,
  pg: 61001,
};

const tohex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

const json = (r: NatRecord): JsonRecord => ({
  key: r.key,
  entry: { ...r.entry, lastNs: r.entry.lastNs.toString() },
});

/** Checks an IPv4 packet's header and TCP/UDP checksums with src/wire/checksum.ts. */
function checksumsOk(pkt: Uint8Array): boolean {
  const dv = new DataView(pkt.buffer, pkt.byteOffset, pkt.byteLength);
  if (sum16(pkt, 0, 20) !== 0xffff) return false;
  const proto = pkt[9]!;
  const len = dv.getUint16(2) - 20;
  const l4sum = pkt[9] === UDP ? dv.getUint16(26) : -1;
  if (proto === UDP && l4sum === 0) return true; // no checksum (RFC 768)
  const ph = pseudoHeaderSum(dv.getUint32(12), dv.getUint32(16), proto, len);
  return sum16(pkt, 20, len, ph) === 0xffff;
}

/** The IP packet of a frame, and its MACs. */
function split(frameHex: string): { dst: string; src: string; ip: Uint8Array } {
  const f = hex(frameHex);
  const mac = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":");
  return { dst: mac(f.subarray(0, 6)), src: mac(f.subarray(6, 12)), ip: f.slice(14) };
}

interface Ctx {
  ns: BpfNs;
  gw: BpfRig;
}

async function withGateway(fn: (c: Ctx) => Promise<void>): Promise<void> {
  const ns = await createBpfNs();
  try {
    const gw = await BpfRig.start(ns.gw);
    try {
      await gw.call({ op: "load", role: "gateway", lan: "lan0", wan: "wan0" });
      await fn({ ns, gw });
    } finally {
      await gw.close();
    }
  } finally {
    await ns.destroy();
  }
}

/** Runs `prog` on `pkt` arriving (ingress) or leaving (egress, forwarded from `ingress`) on `dev`. */
async function run(
  rig: BpfRig,
  prog: string,
  dev: string,
  pkt: Uint8Array,
  opts: { ingress?: string; dstMac?: string; srcMac?: string } = {},
): Promise<{ retval: number; frame: string }> {
  const dst = opts.dstMac ?? (dev === "lan0" ? MAC.lan0 : dev === "wan0" ? MAC.wan0 : MAC.host);
  const src = opts.srcMac ?? "02:00:00:00:99:99";
  return await rig.call({
    op: "run",
    prog,
    frame: tohex(ethFrame(dst, src, pkt)),
    ifindex: dev,
    ingress: opts.ingress,
  });
}

async function put(rig: BpfRig, recs: NatRecord[], flags?: number): Promise<void> {
  const records = recs.map((r) =>
    json(flags === undefined ? r : { ...r, entry: { ...r.entry, flags } })
  );
  await rig.call({ op: "put", records });
}

async function get(rig: BpfRig, key: NatKey) {
  return (await rig.call({ op: "get", key })).entry;
}

const outKey = (s: GatewaySession): NatKey => gatewayRecords(s, G)[0]!.key;
const inKey = (s: GatewaySession): NatKey => gatewayRecords(s, G)[1]!.key;

Deno.test(
  needsRoot(
    "bpf root: a fast UDP session is translated both ways, checksums exact, redirected with the FIB's MACs",
    async () => {
      await withGateway(async ({ gw }) => {
        await put(gw, gatewayRecords(SESSION, G), NatFlag.FAST);
        // Out: a:pa -> G:Pg becomes R:p -> X:px, TTL 63, to the router's MAC out of wan0.
        const out = await run(
          gw,
          "dpm_lan_in",
          "lan0",
          buildUdp({ src: A, sport: 40000, dst: G, dport: 61001 }),
        );
        assert.equal(out.retval, REDIRECT);
        const o = split(out.frame);
        assert.equal(o.dst, MAC.router);
        assert.equal(o.src, MAC.wan0);
        assert.deepEqual(o.ip, buildUdp({ src: R, sport: 40001, dst: X, dport: 5060, ttl: 63 }));
        assert.ok(checksumsOk(o.ip) && verifyIpChecksum(o.ip) && verifyL4Checksum(o.ip));

        // In: X:px -> R:p becomes G:Pg -> a:pa, to the host's MAC out of lan0.
        const payload = new TextEncoder().encode("a reply with some bytes in it");
        const back = await run(
          gw,
          "dpm_wan_in",
          "wan0",
          buildUdp({ src: X, sport: 5060, dst: R, dport: 40001, payload }),
        );
        assert.equal(back.retval, REDIRECT);
        const b = split(back.frame);
        assert.equal(b.dst, MAC.host);
        assert.equal(b.src, MAC.lan0);
        assert.deepEqual(
          b.ip,
          buildUdp({ src: G, sport: 61001, dst: A, dport: 40000, ttl: 63, payload }),
        );
        assert.ok(checksumsOk(b.ip));

        // Counted where they came in, with the time.
        const eo = await get(gw, outKey(SESSION));
        const ei = await get(gw, inKey(SESSION));
        assert.equal(eo.packets, 1);
        assert.equal(eo.bytes, 32);
        assert.equal(ei.packets, 1);
        assert.equal(ei.bytes, 20 + 8 + payload.length);
        const now = BigInt((await gw.call({ op: "now" })).now);
        assert.ok(BigInt(eo.lastNs) > 0n && BigInt(eo.lastNs) <= now);
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: UDP without a checksum stays without one; a TCP segment is exact and its FIN is noted",
    async () => {
      await withGateway(async ({ gw }) => {
        await put(gw, gatewayRecords(SESSION, G), NatFlag.FAST);
        const out = await run(
          gw,
          "dpm_lan_in",
          "lan0",
          buildUdp({ src: A, sport: 40000, dst: G, dport: 61001, checksum: false }),
        );
        assert.equal(out.retval, REDIRECT);
        const o = split(out.frame);
        assert.deepEqual(
          o.ip,
          buildUdp({ src: R, sport: 40001, dst: X, dport: 5060, ttl: 63, checksum: false }),
        );
        assert.equal(o.ip[26]! * 256 + o.ip[27]!, 0);

        const tcp: GatewaySession = {
          ...SESSION,
          proto: TCP,
          pa: 45000,
          p: 45000,
          px: 443,
          pg: 61002,
        };
        await put(gw, gatewayRecords(tcp, G), NatFlag.FAST);
        const opts = new Uint8Array([2, 4, 5, 0xb4, 1, 1, 4, 2]);
        const data = new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n");
        const seg = buildTcp({
          src: A,
          sport: 45000,
          dst: G,
          dport: 61002,
          flags: 0x19,
          seq: 7,
          ack: 9,
          tcpOptions: opts,
          payload: data,
        });
        const t = await run(gw, "dpm_lan_in", "lan0", seg);
        assert.equal(t.retval, REDIRECT);
        const ti = split(t.frame).ip;
        assert.deepEqual(
          ti,
          buildTcp({
            src: R,
            sport: 45000,
            dst: X,
            dport: 443,
            flags: 0x19,
            seq: 7,
            ack: 9,
            tcpOptions: opts,
            payload: data,
            ttl: 63,
          }),
        );
        assert.ok(checksumsOk(ti));
        const e = await get(gw, outKey(tcp));
        assert.equal(e.flags & NatFlag.FIN, NatFlag.FIN);
        assert.equal(e.flags & NatFlag.RST, 0);
        // An RST the other way.
        const rst = await run(
          gw,
          "dpm_wan_in",
          "wan0",
          buildTcp({ src: X, sport: 443, dst: R, dport: 45000, flags: 0x04 }),
        );
        assert.equal(rst.retval, REDIRECT);
        assert.equal((await get(gw, inKey(tcp))).flags & NatFlag.RST, NatFlag.RST);
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: what is not a fast session passes untouched (unknown, slow, ICMP, fragments, options, TTL 1, not for us, a forged source)",
    async () => {
      await withGateway(async ({ gw }) => {
        const pkt = buildUdp({ src: A, sport: 40000, dst: G, dport: 61001 });
        const same = async (p: Uint8Array, what: string, opts: { dstMac?: string } = {}) => {
          const r = await run(gw, "dpm_lan_in", "lan0", p, opts);
          assert.equal(r.retval, PASS, what);
          assert.deepEqual(split(r.frame).ip, p, what);
        };
        await same(pkt, "unknown session");
        await put(gw, gatewayRecords(SESSION, G), 0);
        await same(pkt, "slow session");
        await put(gw, gatewayRecords(SESSION, G), NatFlag.SEEN_OUT);
        await same(pkt, "seen one way only");
        await put(gw, gatewayRecords(SESSION, G), NatFlag.FAST);
        await same(buildIcmpEcho({ src: A, dst: G, id: 61001, seq: 1, type: 8 }), "ICMP");
        await same(
          buildUdp({ src: A, sport: 40000, dst: G, dport: 61001, frag: 0x2000 }),
          "first fragment (MF)",
        );
        await same(
          buildUdp({ src: A, sport: 40000, dst: G, dport: 61001, frag: 0x0010 }),
          "later fragment",
        );
        await same(
          buildUdp({
            src: A,
            sport: 40000,
            dst: G,
            dport: 61001,
            options: new Uint8Array([1, 1, 1, 0]),
          }),
          "IP options",
        );
        await same(
          buildUdp({ src: A, sport: 40000, dst: G, dport: 61001, ttl: 1 }),
          "TTL 1: the stack answers",
        );
        await same(pkt, "another host's MAC", { dstMac: "02:00:00:00:77:77" });
        await same(
          buildUdp({
            src: A,
            sport: 40000,
            dst: G,
            dport: 61001,
            payload: new Uint8Array(1600),
            frag: 0,
          }),
          "bigger than the WAN's MTU: the stack fragments it",
        );
        await same(buildUdp({ src: A, sport: 40002, dst: G, dport: 61001 }), "wrong private port");
        // Forged sources never take the fast path, whatever entry they would match: the
        // stack's antispoof rules get them (the LAN never speaks as G, its network or
        // broadcast address, or from outside the prefix; the WAN never as the LAN).
        for (
          const [src, what] of [[G, "G"], [ip("10.0.0.0"), "network"], [
            ip("10.0.0.255"),
            "broadcast",
          ], [ip("192.0.2.9"), "outside the LAN"]] as const
        ) {
          const forged = { ...SESSION, a: src };
          await put(gw, gatewayRecords(forged, G), NatFlag.FAST);
          await same(buildUdp({ src, sport: 40000, dst: G, dport: 61001 }), `LAN source ${what}`);
        }
        const fromLan = { ...SESSION, x: A2, px: 7000, pg: 61002 };
        await put(gw, gatewayRecords(fromLan, G), NatFlag.FAST);
        const wanForged = buildUdp({ src: A2, sport: 7000, dst: R, dport: 40001 });
        const w = await run(gw, "dpm_wan_in", "wan0", wanForged);
        assert.equal(w.retval, PASS, "a WAN packet from a LAN source");
        assert.deepEqual(split(w.frame).ip, wanForged);
        // Nothing was counted.
        assert.equal((await get(gw, outKey(SESSION))).packets, 0);
        // And the fast one still goes.
        assert.equal((await run(gw, "dpm_lan_in", "lan0", pkt)).retval, REDIRECT);
        // With its next hop cached in the entry now, a packet too big for the way out
        // still goes to the stack.
        await same(
          buildUdp({
            src: A,
            sport: 40000,
            dst: G,
            dport: 61001,
            payload: new Uint8Array(1600),
            frag: 0,
          }),
          "bigger than the WAN's MTU, next hop cached",
        );
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: a session turns fast only after the stack forwarded it both ways, and slow packets are counted as they leave",
    async () => {
      await withGateway(async ({ gw }) => {
        await put(gw, gatewayRecords(SESSION, G));
        const lanPkt = buildUdp({ src: A, sport: 40000, dst: G, dport: 61001 });
        const fwdOut = buildUdp({ src: R, sport: 40001, dst: X, dport: 5060, ttl: 63 });
        const fwdIn = buildUdp({ src: G, sport: 61001, dst: A, dport: 40000, ttl: 63 });

        // Sent by the gateway itself (no ingress interface), or from the wrong side: not seen.
        await run(gw, "dpm_wan_out", "wan0", fwdOut);
        await run(gw, "dpm_wan_out", "wan0", fwdOut, { ingress: "wan0" });
        assert.equal((await get(gw, outKey(SESSION))).flags, 0);

        // The stack forwarded it out: seen out, counted; not fast yet.
        const r1 = await run(gw, "dpm_wan_out", "wan0", fwdOut, { ingress: "lan0" });
        assert.equal(r1.retval, PASS);
        assert.deepEqual(split(r1.frame).ip, fwdOut, "egress never changes a packet");
        let eo = await get(gw, outKey(SESSION));
        assert.equal(eo.flags, NatFlag.SEEN_OUT);
        assert.equal(eo.packets, 1);
        assert.equal((await get(gw, inKey(SESSION))).flags, NatFlag.SEEN_OUT);
        assert.equal((await run(gw, "dpm_lan_in", "lan0", lanPkt)).retval, PASS);

        // The reply forwarded in: both bits, fast.
        await run(gw, "dpm_lan_out", "lan0", fwdIn, { ingress: "wan0" });
        const ei = await get(gw, inKey(SESSION));
        assert.equal(ei.flags, NatFlag.FAST);
        assert.equal(ei.packets, 1);
        assert.equal((await get(gw, outKey(SESSION))).flags, NatFlag.FAST);
        assert.equal((await run(gw, "dpm_lan_in", "lan0", lanPkt)).retval, REDIRECT);
        eo = await get(gw, outKey(SESSION));
        assert.equal(eo.packets, 2);

        // A fast packet seen again at egress (the redirect's way out) is not counted twice.
        await run(gw, "dpm_wan_out", "wan0", fwdOut, { ingress: "lan0" });
        assert.equal((await get(gw, outKey(SESSION))).packets, 2);
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: direct (PCP PEER) sessions keep the remote's pair; a host with no neighbour entry is redirected through the neighbour code",
    async () => {
      await withGateway(async ({ gw }) => {
        const direct: GatewaySession = { ...SESSION, a: A2, pa: 5000, p: 5000, direct: true };
        await put(gw, gatewayRecords(direct, G), NatFlag.FAST);
        const out = await run(
          gw,
          "dpm_lan_in",
          "lan0",
          buildUdp({ src: A2, sport: 5000, dst: X, dport: 5060 }),
        );
        assert.equal(out.retval, REDIRECT);
        assert.deepEqual(
          split(out.frame).ip,
          buildUdp({ src: R, sport: 5000, dst: X, dport: 5060, ttl: 63 }),
        );
        const back = await run(
          gw,
          "dpm_wan_in",
          "wan0",
          buildUdp({ src: X, sport: 5060, dst: R, dport: 5000 }),
        );
        // 10.0.0.12 has no neighbour entry: bpf_redirect_neigh resolves it, the MACs stay as they came.
        assert.equal(back.retval, REDIRECT);
        const b = split(back.frame);
        assert.equal(b.dst, MAC.wan0);
        assert.deepEqual(b.ip, buildUdp({ src: X, sport: 5060, dst: A2, dport: 5000, ttl: 63 }));
        assert.ok(checksumsOk(b.ip));
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: a mapping learns each remote's flow from what the stack forwarded, then translates it fast",
    async () => {
      await withGateway(async ({ gw }) => {
        const m: GatewaySession = { proto: UDP, a: A, pa: 7000, x: 0, px: 0, r: R, p: 7000, pg: 0 };
        await put(gw, gatewayRecords(m, G));
        // The wildcards never translate.
        const first = buildUdp({ src: X, sport: 9999, dst: R, dport: 7000 });
        assert.equal((await run(gw, "dpm_wan_in", "wan0", first)).retval, PASS);
        // The stack let the remote's packet in (map_in DNAT): X:px -> a:pa leaves by the LAN.
        await run(
          gw,
          "dpm_lan_out",
          "lan0",
          buildUdp({ src: X, sport: 9999, dst: A, dport: 7000, ttl: 63 }),
          { ingress: "wan0" },
        );
        const inK: NatKey = {
          proto: UDP,
          dir: NatDir.IN,
          saddr: X,
          sport: 9999,
          daddr: R,
          dport: 7000,
        };
        const outK: NatKey = {
          proto: UDP,
          dir: NatDir.OUT,
          saddr: A,
          sport: 7000,
          daddr: X,
          dport: 9999,
        };
        const li = await get(gw, inK);
        assert.deepEqual(li.to, { saddr: X, sport: 9999, daddr: A, dport: 7000 });
        assert.equal(li.flags, NatFlag.LEARNED | NatFlag.SEEN_IN);
        assert.equal(li.packets, 1);
        const lo = await get(gw, outK);
        assert.deepEqual(lo.to, { saddr: R, sport: 7000, daddr: X, dport: 9999 });
        // Not fast until the answer passed the stack too.
        assert.equal((await run(gw, "dpm_wan_in", "wan0", first)).retval, PASS);
        await run(
          gw,
          "dpm_wan_out",
          "wan0",
          buildUdp({ src: R, sport: 7000, dst: X, dport: 9999, ttl: 63 }),
          { ingress: "lan0" },
        );
        assert.equal((await get(gw, inK)).flags, NatFlag.LEARNED | NatFlag.FAST);
        const r = await run(gw, "dpm_wan_in", "wan0", first);
        assert.equal(r.retval, REDIRECT);
        assert.deepEqual(
          split(r.frame).ip,
          buildUdp({ src: X, sport: 9999, dst: A, dport: 7000, ttl: 63 }),
        );
        // Another remote is a flow of its own, still slow.
        assert.equal(
          (await run(
            gw,
            "dpm_wan_in",
            "wan0",
            buildUdp({ src: X + 1, sport: 9999, dst: R, dport: 7000 }),
          )).retval,
          PASS,
        );
        const all = (await gw.call({ op: "all" })).records as JsonRecord[];
        assert.equal(all.filter((x) => (x.entry.flags & NatFlag.LEARNED) !== 0).length, 2);
        // The mapping goes: its wildcards and learned flows with it, nothing else.
        await put(gw, gatewayRecords(SESSION, G));
        assert.equal((await gw.call({ op: "dropMapping", mapping: m })).deleted, 4);
        assert.equal(((await gw.call({ op: "all" })).records as JsonRecord[]).length, 2);
        assert.equal((await run(gw, "dpm_wan_in", "wan0", first)).retval, PASS);
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: the host rewrites X:px to G:Pg on the way out and G:Pg back to X:px on the way in",
    async () => {
      const ns = await createBpfNs();
      try {
        const h = await BpfRig.start(ns.host);
        try {
          await h.call({ op: "load", role: "host" });
          const k = { proto: UDP, a: A, pa: 40000, x: X, px: 5060, g: G, pg: 61001 };
          await put(h, hostRecords(k));
          const app = buildUdp({ src: A, sport: 40000, dst: X, dport: 5060 });
          // Leaving by eth0 toward the route's next hop; rewritten to G, to G's MAC.
          const out = await h.call({
            op: "run",
            prog: "dpm_host_out",
            frame: tohex(ethFrame(MAC.lan0, MAC.host, app)),
            ifindex: "eth0",
          });
          assert.equal(out.retval, PASS);
          const o = split(out.frame);
          assert.equal(o.dst, MAC.lan0);
          assert.deepEqual(
            o.ip,
            buildUdp({ src: A, sport: 40000, dst: G, dport: 61001 }),
            "no TTL change on the host",
          );
          const back = await h.call({
            op: "run",
            prog: "dpm_host_in",
            frame: tohex(
              ethFrame(
                MAC.host,
                MAC.lan0,
                buildUdp({ src: G, sport: 61001, dst: A, dport: 40000, checksum: false }),
              ),
            ),
            ifindex: "eth0",
          });
          assert.equal(back.retval, PASS);
          assert.deepEqual(
            split(back.frame).ip,
            buildUdp({ src: X, sport: 5060, dst: A, dport: 40000, checksum: false }),
          );
          // TCP with a checksum, and counters.
          const tk = { ...k, proto: TCP, pa: 41000, px: 443, pg: 61003 };
          await put(h, hostRecords(tk));
          const syn = buildTcp({ src: A, sport: 41000, dst: X, dport: 443 });
          const t = await h.call({
            op: "run",
            prog: "dpm_host_out",
            frame: tohex(ethFrame(MAC.lan0, MAC.host, syn)),
            ifindex: "eth0",
          });
          const ti = split(t.frame).ip;
          assert.deepEqual(ti, buildTcp({ src: A, sport: 41000, dst: G, dport: 61003 }));
          assert.ok(checksumsOk(ti));
          const e = await h.call({ op: "get", key: hostRecords(tk)[0]!.key });
          assert.equal(e.entry.packets, 1);
          // Another destination is not ours.
          const other = buildUdp({ src: A, sport: 40000, dst: X, dport: 5061 });
          const n = await h.call({
            op: "run",
            prog: "dpm_host_out",
            frame: tohex(ethFrame(MAC.lan0, MAC.host, other)),
            ifindex: "eth0",
          });
          assert.equal(n.retval, PASS);
          assert.deepEqual(split(n.frame).ip, other);
        } finally {
          await h.close();
        }
      } finally {
        await ns.destroy();
      }
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: the session map takes batches and reads back what was written; deletes skip absent keys",
    async () => {
      await withGateway(async ({ gw }) => {
        const recs: NatRecord[] = [];
        for (let i = 0; i < 500; i++) {
          recs.push(
            ...gatewayRecords({ ...SESSION, pa: 20000 + i, p: 20000 + i, pg: 30000 + i }, G),
          );
        }
        await put(gw, recs);
        const all = (await gw.call({ op: "all" })).records as JsonRecord[];
        assert.equal(all.length, 1000);
        const canon = (r: JsonRecord) => {
          const { key: k, entry: e } = r;
          const t = e.to;
          return [k.proto, k.dir, k.saddr, k.sport, k.daddr, k.dport, t.saddr, t.sport, t.daddr]
            .concat([t.dport, e.flags, e.packets, e.bytes]).join("/") + `/${e.lastNs}`;
        };
        const want = new Set(recs.map((r) => canon(json(r))));
        for (const r of all) assert.ok(want.has(canon(r)), canon(r));
        const keys = recs.slice(0, 10).map((r) => r.key);
        keys.splice(5, 0, { ...keys[0]!, sport: 1 }); // absent
        assert.equal((await gw.call({ op: "del", keys })).deleted, 10);
        assert.equal(((await gw.call({ op: "all" })).records as JsonRecord[]).length, 990);
      });
    },
  ),
);

Deno.test(
  needsRoot(
    "bpf root: attach (tcx), find again from another process, and remove only dpm's programs (someone else's filter, tcx program and clsact stay)",
    async () => {
      const ns = await createBpfNs();
      try {
        const a = await BpfRig.start(ns.gw);
        let ids: number[];
        try {
          assert.equal(
            (await a.call({ op: "open", role: "gateway", lan: "lan0", wan: "wan0" })).mapOrigin,
            "new",
          );
          await a.call({ op: "put", records: gatewayRecords(SESSION, G).map(json) });
          const lan = await a.call({ op: "filters", dev: "lan0" });
          const wan = await a.call({ op: "filters", dev: "wan0" });
          const ours = [...lan.ingress, ...lan.egress, ...wan.ingress, ...wan.egress];
          assert.deepEqual(
            ours.map((f: { name: string }) => f.name.replace(/:\[\d+\]$/, "")).sort(),
            [
              "dpm_lan_in",
              "dpm_lan_out",
              "dpm_wan_in",
              "dpm_wan_out",
            ],
          );
          ids = ours.map((f: { progId: number }) => f.progId);
          assert.deepEqual((await a.call({ op: "missing" })).missing, []);
          // Someone else's filter and tcx program on the LAN's ingress.
          await a.call({ op: "load", role: "host" });
          await a.call({
            op: "attachOther",
            dev: "lan0",
            point: "ingress",
            prog: "dpm_host_in",
            handle: 7,
            priority: 7,
          });
          await a.call({
            op: "attachOtherTcx",
            dev: "lan0",
            point: "ingress",
            prog: "dpm_host_in",
          });
        } finally {
          await a.close(); // the process exits: the kernel keeps the filters, programs and maps
        }
        const b = await BpfRig.start(ns.gw);
        try {
          assert.equal(
            (await b.call({ op: "open", role: "gateway", lan: "lan0", wan: "wan0" })).mapOrigin,
            "adopted",
          );
          assert.equal(
            (await b.call({ op: "all" })).records.length,
            2,
            "the map came back with its entries",
          );
          const now = await b.call({ op: "filters", dev: "lan0" });
          assert.ok(
            !now.ingress.some((f: { progId: number }) => ids.includes(f.progId)),
            "replaced by this run's programs",
          );
          await b.call({ op: "close" });
          assert.equal(
            (await b.call({ op: "removeFrom", role: "gateway", lan: "lan0", wan: "wan0" })).removed,
            4,
          );
          const lan = await b.call({ op: "filters", dev: "lan0" });
          assert.deepEqual(
            lan.ingress.map((f: { kind: string; handle: number; priority: number }) => [
              f.kind,
              f.handle,
              f.priority,
            ]),
            [["bpf", 7, 7], ["tcx", 0, 0]],
            "someone else's filter and tcx program stay",
          );
          assert.deepEqual(lan.egress, []);
          const q = await sh(["ip", "netns", "exec", ns.gw, "tc", "qdisc", "show", "dev", "wan0"]);
          assert.ok(!q.includes("clsact"), `wan0 keeps no clsact: ${q}`);
          assert.ok(
            (await sh(["ip", "netns", "exec", ns.gw, "tc", "qdisc", "show", "dev", "lan0"]))
              .includes("clsact"),
          );
          // Nothing of ours twice.
          assert.equal(
            (await b.call({ op: "removeFrom", role: "gateway", lan: "lan0", wan: "wan0" })).removed,
            0,
          );
        } finally {
          await b.close();
        }
      } finally {
        await ns.destroy();
      }
    },
  ),
);
