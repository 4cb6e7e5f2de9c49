/**
 * dpm's BPF programs attached to a real topology (testing/topology.ts: a
 * host, the gateway, a router, a peer, all namespaces) with their maps
 * filled by hand, no dpm process: real UDP and TCP traffic from the host's
 * applications is translated by the host programs (claim 5) and the
 * gateway's (claim 6). The gateway has the kernel path's own nftables table
 * (`serverTable` of src/datapath/nft/rules.ts) for the slow start: each
 * session's first packets go through the stack, and once the stack
 * forwarded it both ways the programs take it, so the gateway's conntrack
 * stops seeing it. The host and the peer send with their checksum offload
 * off, so every checksum on the way is complete and the receivers verify
 * it in software: a wrong incremental update loses the traffic.
 *
 * The fast path's hand-off (docs/datapath.md, "Hand-off"): to the WAN's
 * egress, or into its peer's ingress (`bpf_redirect_peer`; the WAN's
 * transmit counter tells them apart), and into the host's own ingress when
 * the LAN is a veth whose peer is the host's interface.
 *
 * Then: a restart (the rig exits, a new one adopts the maps through the
 * attached programs, counters kept), a deleted clsact qdisc (the host's) or
 * a detached tcx program (the gateway's) found and repaired, and removal
 * leaving no qdisc, filter or program.
 *
 * @module
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import { createTopology, type Topology } from "../../testing/topology.ts";
import { lastJson, serveApp } from "../../testing/launch.ts";
import { tcpClient, tcpEcho, udpClient, udpEcho } from "../../testing/apps.ts";
import { BpfRig, type JsonRecord } from "../../testing/bpf_rig.ts";
import { hex, verifyIpChecksum, verifyL4Checksum } from "../../testing/packets.ts";
import { pseudoHeaderSum } from "../../src/wire/checksum.ts";
import { waitFor } from "../../testing/wait.ts";
import { serverCfg } from "../../testing/fixtures.ts";
import { parseIPv4 } from "../../src/wire/addr.ts";
import { serverTable, toPublicText, toRemoteText } from "../../src/datapath/nft/rules.ts";
import {
  gatewayRecords,
  hostRecords,
  NatFlag,
  NatHandoff,
  type NatRecord,
} from "../../src/datapath/bpf/layout.ts";
import { gatewayKey, type GatewaySession, hostKey } from "../../src/datapath/datapath.ts";
import { gatewayCounters, hostActivity } from "../../src/datapath/bpf/counters.ts";

const R = parseIPv4("203.0.113.10")!;
const UDP = 17;
const TCP = 6;

const json = (r: NatRecord): JsonRecord => ({
  key: r.key,
  entry: { ...r.entry, lastNs: r.entry.lastNs.toString() },
});

async function ok(t: Topology, ns: string, cmd: string[], stdin?: string): Promise<string> {
  const r = await t.exec(ns, cmd, stdin === undefined ? undefined : { stdin });
  assert.equal(r.code, 0, `${cmd.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** The rig's UDP session a:40000 -> X:5060, seen as R:40001 and reached through G:61001. */
function udpSession(t: Topology): GatewaySession {
  return {
    proto: UDP,
    a: t.hosts[0]!.addr,
    pa: 40000,
    x: t.peers[0]!.addr,
    px: 5060,
    r: R,
    p: 40001,
    pg: 61001,
  };
}

/** The rig's TCP session a:45000 -> X:`px`, seen as R:45001 and reached through G:61002. */
function tcpSession(t: Topology, px: number): GatewaySession {
  return { ...udpSession(t), proto: TCP, pa: 45000, px, p: 45001, pg: 61002 };
}

/**
 * Loads the kernel path's gateway table with `sessions` in its maps (`to_remote`,
 * `to_public`): the stack's path their first packets take (the slow start).
 */
async function loadSlowStart(t: Topology, lanIf: string, sessions: GatewaySession[]) {
  const lan = { addr: parseIPv4("10.0.0.0")!, len: 24 };
  const cfg = {
    ...serverCfg({ lanAddr: t.gateway.lanAddr, pool: [R] }),
    lanIf,
    wanIf: "wan0",
    lan,
  };
  const table = serverTable(cfg, lan, {
    toRemote: sessions.map((s) => toRemoteText(s.proto, s.a, s.pa, s.pg, s.x, s.px)),
    toPublic: sessions.map((s) => toPublicText(s.proto, s.a, s.pa, s.x, s.px, s.r, s.p)),
    queued: [],
  });
  await ok(t, t.gateway.ns, ["nft", "-f", "-"], table);
}

/** The gateway conntrack's packet counts (original, reply) of the session from a:pa to G:Pg. */
async function ctPackets(t: Topology, proto: string, pa: number, pg: number): Promise<number[]> {
  const r = await t.exec(t.gateway.ns, [
    "conntrack",
    "-L",
    "-p",
    proto,
    "--orig-src",
    t.hosts[0]!.addrText,
    "--sport",
    String(pa),
    "--dport",
    String(pg),
  ]);
  const m = [...r.stdout.matchAll(/packets=(\d+)/g)].map((x) => Number(x[1]));
  return m.length >= 2 ? m.slice(0, 2) : [0, 0];
}

Deno.test(needsRoot({
  name:
    "bpf root: real UDP and TCP through the attached programs: slow start, then fast past conntrack; restart adopts; repair; removal leaves nothing",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await using t = await createTopology({ hosts: 1, peers: 1 });
    const gw = t.gateway;
    const h = t.hosts[0]!;
    const peer = t.peers[0]!;
    // Complete checksums on the wire, verified by the receivers.
    for (const [ns, dev] of [[h.ns, "eth0"], [peer.ns, "eth0"]] as const) {
      await ok(t, ns, ["ethtool", "-K", dev, "tx", "off"]);
    }
    await ok(t, gw.ns, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"]);
    await ok(t, gw.ns, ["ip", "addr", "add", "203.0.113.10/32", "dev", "wan0"]);

    const udp = udpSession(t);
    const tcp = tcpSession(t, 7000);
    const sessions = [udp, tcp];
    await loadSlowStart(t, "lan0", sessions);

    await serveApp(t, peer.ns, udpEcho(5060));
    await serveApp(t, peer.ns, tcpEcho(7000));

    let g = await BpfRig.start(gw.ns);
    const hr = await BpfRig.start(h.ns);
    try {
      assert.equal(
        (await g.call({ op: "open", role: "gateway", lan: "lan0", wan: "wan0" })).mapOrigin,
        "new",
      );
      await hr.call({ op: "open", role: "host", dev: "eth0" });
      await g.call({
        op: "put",
        records: sessions.flatMap((s) => gatewayRecords(s, gw.lanAddr)).map(json),
      });
      await hr.call({
        op: "put",
        records: sessions.flatMap((s) => hostRecords({ ...s, g: gw.lanAddr })).map(json),
      });
      const gwRec = (s: GatewaySession) => gatewayRecords(s, gw.lanAddr);
      const entry = async (rig: BpfRig, r: NatRecord) =>
        (await rig.call({ op: "get", key: r.key })).entry;

      // UDP: 40 exchanges from a:40000 to X:5060; the peer sees R:40001.
      const N = 40;
      const u = await lastJson(t, h.ns, udpClient(40000, [`${peer.addrText}:5060`], { rounds: N }));
      assert.equal(u.errors.length, 0, JSON.stringify(u.errors));
      assert.equal(u.replies.length, N);
      for (const r of u.replies) {
        assert.equal(r.from, `${peer.addrText}:5060`, "the application sees its remote");
        assert.match(r.data, /^seen 203\.0\.113\.10:40001\|/, "the remote sees the public pair");
      }
      const [uo, ui] = [await entry(g, gwRec(udp)[0]!), await entry(g, gwRec(udp)[1]!)];
      assert.equal(uo.flags & NatFlag.FAST, NatFlag.FAST, "fast after the first exchange");
      assert.equal(uo.packets, N, "every packet out counted (slow at egress, fast at ingress)");
      assert.equal(ui.packets, N);
      const ctU = await ctPackets(t, "udp", 40000, 61001);
      assert.ok(
        ctU[0]! >= 1 && ctU[0]! <= 2 && ctU[1]! <= 2,
        `conntrack saw only the slow start: ${ctU}`,
      );
      const hu = await entry(hr, hostRecords({ ...udp, g: gw.lanAddr })[0]!);
      assert.equal(hu.packets, N, "the host program rewrote every datagram");
      // What the data path will report: status counters at the gateway, lease activity at the host.
      const recs = (j: JsonRecord[]) =>
        j.map((r) => ({ key: r.key, entry: { ...r.entry, lastNs: BigInt(r.entry.lastNs) } }));
      const gc = gatewayCounters(recs((await g.call({ op: "all" })).records), sessions, gw.lanAddr);
      assert.deepEqual(
        [
          gc.get(gatewayKey(UDP, h.addr, 61001))!.packetsOut,
          gc.get(gatewayKey(UDP, h.addr, 61001))!.packetsIn,
        ],
        [N, N],
      );
      const ha = hostActivity(recs((await hr.call({ op: "all" })).records), gw.lanAddr);
      assert.equal(ha.get(hostKey(UDP, h.addr, 61001))!.packets, 2 * N);

      // TCP: a connection from a:45000 to X:7000, a line each way, closed.
      const c = await lastJson(t, h.ns, tcpClient(45000, `${peer.addrText}:7000`, "hello"));
      assert.equal(c.reply, "seen 203.0.113.10:45001|hello", JSON.stringify(c));
      const [to, ti] = [await entry(g, gwRec(tcp)[0]!), await entry(g, gwRec(tcp)[1]!)];
      assert.equal(to.flags & NatFlag.FAST, NatFlag.FAST);
      // (tcpEcho keeps its last connection open: no FIN comes back.)
      assert.equal(to.flags & NatFlag.FIN, NatFlag.FIN, "the host's FIN was seen");
      assert.equal(ti.flags & NatFlag.FAST, NatFlag.FAST);
      const ctT = await ctPackets(t, "tcp", 45000, 61002);
      // The SYN and the SYN-ACK went through the stack; everything after, past it.
      assert.deepEqual(ctT, [1, 1], `conntrack saw ${ctT}`);
      assert.ok(
        to.packets >= 4 && ti.packets >= 3,
        `bpf counted ${to.packets} out, ${ti.packets} in`,
      );

      // Restart: the rig exits (programs stay attached), a new one adopts the maps.
      const filtersBefore = await g.call({ op: "filters", dev: "lan0" });
      const ids = [...filtersBefore.ingress, ...filtersBefore.egress].map((f: { progId: number }) =>
        f.progId
      );
      await g.close();
      g = await BpfRig.start(gw.ns);
      assert.equal(
        (await g.call({ op: "open", role: "gateway", lan: "lan0", wan: "wan0" })).mapOrigin,
        "adopted",
      );
      assert.equal((await entry(g, gwRec(udp)[0]!)).packets, N, "counters survive the restart");
      const u2 = await lastJson(
        t,
        h.ns,
        udpClient(40000, [`${peer.addrText}:5060`], { rounds: 5 }),
      );
      assert.equal(u2.replies.length, 5);
      assert.equal((await entry(g, gwRec(udp)[0]!)).packets, N + 5);
      assert.deepEqual(
        (await ctPackets(t, "udp", 40000, 61001))[0],
        ctU[0],
        "still past conntrack",
      );

      // Someone deletes the host's clsact qdisc: noticed, repaired. The gateway's programs are
      // tcx ones: a deleted qdisc leaves them, and one detached by hand is noticed, repaired.
      await ok(t, h.ns, ["tc", "qdisc", "del", "dev", "eth0", "clsact"]);
      assert.equal((await hr.call({ op: "missing" })).missing.length, 2);
      assert.equal((await hr.call({ op: "attach" })).fixed, 2);
      assert.deepEqual((await hr.call({ op: "missing" })).missing, []);
      await t.exec(gw.ns, ["tc", "qdisc", "del", "dev", "lan0", "clsact"]);
      assert.deepEqual((await g.call({ op: "missing" })).missing, [], "tcx: no qdisc to lose");
      const d = await g.call({
        op: "detachTcx",
        dev: "lan0",
        point: "ingress",
        prog: "dpm_lan_in",
      });
      assert.equal(d.detached, 1);
      assert.equal((await g.call({ op: "missing" })).missing.length, 1);
      assert.equal((await g.call({ op: "attach" })).fixed, 1);
      assert.deepEqual((await g.call({ op: "missing" })).missing, []);
      const u3 = await lastJson(
        t,
        h.ns,
        udpClient(40000, [`${peer.addrText}:5060`], { rounds: 5 }),
      );
      assert.equal(u3.replies.length, 5);
      assert.equal((await entry(g, gwRec(udp)[0]!)).packets, N + 10);

      // Removal: no filter, no clsact qdisc, no program left.
      const live = await g.call({ op: "filters", dev: "lan0" });
      ids.push(...[...live.ingress, ...live.egress].map((f: { progId: number }) => f.progId));
      await g.call({ op: "remove" });
      await hr.call({ op: "remove" });
      for (const [ns, dev] of [[gw.ns, "lan0"], [gw.ns, "wan0"], [h.ns, "eth0"]] as const) {
        const q = await ok(t, ns, ["tc", "qdisc", "show", "dev", dev]);
        assert.ok(!q.includes("clsact"), `${dev}: ${q}`);
      }
      await waitFor(async () => {
        for (const id of ids) {
          if ((await t.exec(gw.ns, ["bpftool", "prog", "show", "id", String(id)])).code === 0) {
            return false;
          }
        }
        return true;
      }, { what: "the programs to be freed", timeoutMs: 5000 });
      // Traffic goes on through the stack alone.
      const u4 = await lastJson(
        t,
        h.ns,
        udpClient(40001, [`${peer.addrText}:5060`], { rounds: 2 }),
      );
      assert.equal(u4.replies.length, 2);
      assert.equal(await t.escaped(), 0, "nothing left the topology");
    } finally {
      await g.close();
      await hr.close();
    }
  },
}));

/** python3 on the peer: captures `n` IPv4 UDP packets to `port` arriving on eth0 (AF_PACKET), prints their hex. */
function capture(port: number, n: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
print("listening", flush=True)
out = []
while len(out) < ${n}:
    f, a = s.recvfrom(65535)
    ip = f[14:]
    if a[2] != socket.PACKET_OUTGOING and ip[9] == 17 and int.from_bytes(ip[22:24], "big") == ${port}:
        out.append(ip.hex())
print(json.dumps(out), flush=True)
`,
  ];
}

/** python3: a TCP sink on `port` that answers the SHA-256 of everything it read. */
function tcpHashServer(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, hashlib
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", ${port}))
s.listen(4)
print("listening", flush=True)
while True:
    c, a = s.accept()
    h = hashlib.sha256()
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        h.update(d)
    c.sendall(h.hexdigest().encode())
    c.close()
`,
  ];
}

/** python3: sends `mb` MB of random bytes from local port `bind` to `dest`, prints {sent, got} hashes. */
function tcpHashClient(bind: number, dest: string, mb: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, hashlib, os, json
h, p = "${dest}".rsplit(":", 1)
data = os.urandom(${mb} << 20)
c = socket.create_connection((h, int(p)), timeout=20, source_address=("0.0.0.0", ${bind}))
c.sendall(data)
c.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = c.recv(4096)
    if not d:
        break
    got += d
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "got": got.decode()}))
`,
  ];
}

/** A counter of `dev` in `ns` (`/sys/class/net/<dev>/statistics/<name>`). */
async function linkCounter(t: Topology, ns: string, dev: string, name: string): Promise<number> {
  return Number((await ok(t, ns, ["cat", `/sys/class/net/${dev}/statistics/${name}`])).trim());
}

/**
 * With checksum offload on: UDP and a bulk TCP transfer through the fast
 * path, handed to the WAN veth `wanHandoff`'s way; the WAN's transmit
 * counter tells which way the fast packets went (its peer's ingress skips
 * it).
 */
async function offloadCase(wanHandoff: NatHandoff): Promise<void> {
  await using t = await createTopology({ hosts: 1, peers: 1 });
  const gw = t.gateway;
  const h = t.hosts[0]!;
  const peer = t.peers[0]!;
  await ok(t, gw.ns, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"]);
  await ok(t, gw.ns, ["ip", "addr", "add", "203.0.113.10/32", "dev", "wan0"]);
  const udp = udpSession(t);
  const tcp = tcpSession(t, 7001);
  const sessions = [udp, tcp];
  await loadSlowStart(t, "lan0", sessions);
  await serveApp(t, peer.ns, udpEcho(5060));
  await serveApp(t, peer.ns, tcpHashServer(7001));
  const g = await BpfRig.start(gw.ns);
  const hr = await BpfRig.start(h.ns);
  try {
    await g.call({
      op: "open",
      role: "gateway",
      lan: "lan0",
      wan: "wan0",
      handoff: { lan: NatHandoff.XMIT, wan: wanHandoff },
    });
    await hr.call({ op: "open", role: "host", dev: "eth0" });
    await g.call({
      op: "put",
      records: sessions.flatMap((s) => gatewayRecords(s, gw.lanAddr)).map(json),
    });
    await hr.call({
      op: "put",
      records: sessions.flatMap((s) => hostRecords({ ...s, g: gw.lanAddr })).map(json),
    });

    // UDP: what reaches the peer carries, for the translated addresses, either a
    // complete checksum or the pseudo-header sum a CHECKSUM_PARTIAL packet holds.
    const N = 20;
    const wanTx0 = await linkCounter(t, gw.ns, "wan0", "tx_packets");
    const rtRx0 = await linkCounter(t, t.router!.ns, "gw0", "rx_packets");
    const cap = t.spawn(peer.ns, capture(5060, N));
    await cap.waitForOutput(/listening/, 10_000);
    const u = await lastJson(t, h.ns, udpClient(40000, [`${peer.addrText}:5060`], { rounds: N }));
    assert.equal(u.replies.length, N, JSON.stringify(u.errors));
    const m = await cap.waitForOutput(/^\[.*\]$/m, 10_000);
    const pkts = (JSON.parse(m[0]) as string[]).map((x) => hex(x));
    assert.equal(pkts.length, N);
    let partial = 0;
    for (const p of pkts) {
      const dv = new DataView(p.buffer);
      assert.equal(dv.getUint32(12), R, "source R");
      assert.equal(dv.getUint16(20), 40001, "source port p");
      const ulen = dv.getUint16(24);
      const field = dv.getUint16(26);
      const isPartial = field === pseudoHeaderSum(R, peer.addr, UDP, ulen);
      if (isPartial) partial++;
      assert.ok(isPartial || verifyL4Checksum(p), `checksum field ${field.toString(16)}`);
      assert.ok(verifyIpChecksum(p));
    }
    assert.ok(partial > 0, "the host sent CHECKSUM_PARTIAL packets (offload on)");
    const uo = (await g.call({ op: "get", key: gatewayRecords(udp, gw.lanAddr)[0]!.key })).entry;
    assert.equal(uo.flags & NatFlag.FAST, NatFlag.FAST);
    assert.equal(uo.packets, N);
    // The first datagram went through the stack (slow start), the others fast: into wan0's
    // peer (gw0, in the router's namespace) directly, or out of wan0.
    const wanTx = await linkCounter(t, gw.ns, "wan0", "tx_packets") - wanTx0;
    const rtRx = await linkCounter(t, t.router!.ns, "gw0", "rx_packets") - rtRx0;
    assert.ok(rtRx >= N, `the router received ${rtRx}`);
    if (wanHandoff === NatHandoff.PEER) {
      assert.ok(wanTx <= 4, `${wanTx} left by wan0's egress: only the slow start (and ARP)`);
    } else {
      assert.ok(wanTx >= N, `${wanTx} left by wan0's egress`);
    }

    // TCP: 8 MB in TSO/GSO packets through the host's and the gateway's programs.
    const r = await lastJson(t, h.ns, tcpHashClient(45000, `${peer.addrText}:7001`, 8), 60_000);
    assert.equal(r.got, r.sent, "the peer read exactly what was sent");
    const to = (await g.call({ op: "get", key: gatewayRecords(tcp, gw.lanAddr)[0]!.key })).entry;
    assert.equal(to.flags & NatFlag.FAST, NatFlag.FAST);
    assert.ok(to.bytes > 8 << 20, `fast path carried ${to.bytes} bytes`);
    const ctT = await ctPackets(t, "tcp", 45000, 61002);
    assert.deepEqual(ctT, [1, 1], `conntrack saw ${ctT}`);
    assert.equal(await t.escaped(), 0);
  } finally {
    await g.call({ op: "remove" }).catch(() => {});
    await hr.call({ op: "remove" }).catch(() => {});
    await g.close();
    await hr.close();
  }
}

Deno.test(needsRoot({
  name:
    "bpf root: with checksum offload on (CHECKSUM_PARTIAL, TSO/GSO) the fast path keeps partial checksums right and carries a bulk TCP transfer (hand-off to the WAN's egress)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: () => offloadCase(NatHandoff.XMIT),
}));

Deno.test(needsRoot({
  name:
    "bpf root: the same with the hand-off into the WAN veth's peer (bpf_redirect_peer): partial checksums right, bulk TCP carried, wan0's egress skipped",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: () => offloadCase(NatHandoff.PEER),
}));

Deno.test(needsRoot({
  name:
    "bpf root: a LAN that is a veth into the host's namespace: replies go straight into the host's ingress (bpf_redirect_peer) and the host's program still translates them",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await using t = await createTopology({ hosts: 1, peers: 1 });
    const gw = t.gateway;
    const h = t.hosts[0]!;
    const peer = t.peers[0]!;
    // The LAN becomes h1's own veth: lan-h1 leaves the bridge and takes G (its peer, h1's
    // eth0, is in h1's namespace), as a container's link would be.
    await ok(t, gw.ns, ["ip", "link", "set", "lan-h1", "nomaster"]);
    await ok(t, gw.ns, ["ip", "addr", "del", `${gw.lanText}/24`, "dev", "lan0"]);
    await ok(t, gw.ns, ["ip", "addr", "add", `${gw.lanText}/24`, "dev", "lan-h1"]);
    await ok(t, h.ns, ["ip", "neigh", "flush", "dev", "eth0"]);
    await ok(t, gw.ns, ["ip", "addr", "add", "203.0.113.10/32", "dev", "wan0"]);
    const udp = udpSession(t);
    await loadSlowStart(t, "lan-h1", [udp]);
    await serveApp(t, peer.ns, udpEcho(5060));
    const g = await BpfRig.start(gw.ns);
    const hr = await BpfRig.start(h.ns);
    try {
      await g.call({
        op: "open",
        role: "gateway",
        lan: "lan-h1",
        wan: "wan0",
        handoff: { lan: NatHandoff.PEER, wan: NatHandoff.PEER },
      });
      await hr.call({ op: "open", role: "host", dev: "eth0" });
      await g.call({ op: "put", records: gatewayRecords(udp, gw.lanAddr).map(json) });
      await hr.call({ op: "put", records: hostRecords({ ...udp, g: gw.lanAddr }).map(json) });

      const N = 20;
      const lanTx0 = await linkCounter(t, gw.ns, "lan-h1", "tx_packets");
      const u = await lastJson(t, h.ns, udpClient(40000, [`${peer.addrText}:5060`], { rounds: N }));
      assert.equal(u.errors.length, 0, JSON.stringify(u.errors));
      assert.equal(u.replies.length, N);
      for (const r of u.replies) {
        // From X:px, not G:Pg: the host's ingress program ran on the handed-in replies.
        assert.equal(r.from, `${peer.addrText}:5060`, "the application sees its remote");
        assert.match(r.data, /^seen 203\.0\.113\.10:40001\|/, "the remote sees the public pair");
      }
      const [uo, ui] = gatewayRecords(udp, gw.lanAddr);
      const ei = (await g.call({ op: "get", key: ui!.key })).entry;
      const eo = (await g.call({ op: "get", key: uo!.key })).entry;
      assert.equal(ei.flags & NatFlag.FAST, NatFlag.FAST);
      assert.equal(ei.packets, N, "every reply counted");
      assert.equal(eo.packets, N);
      // The first reply left by lan-h1's egress (slow start); the fast ones skipped it.
      const lanTx = await linkCounter(t, gw.ns, "lan-h1", "tx_packets") - lanTx0;
      assert.ok(lanTx <= 4, `${lanTx} left by lan-h1's egress: only the slow start (and ARP)`);
      const hi = (await hr.call({ op: "get", key: hostRecords({ ...udp, g: gw.lanAddr })[1]!.key }))
        .entry;
      assert.equal(hi.packets, N, "the host's program translated every reply");
      assert.equal(await t.escaped(), 0);
    } finally {
      await g.call({ op: "remove" }).catch(() => {});
      await hr.call({ op: "remove" }).catch(() => {});
      await g.close();
      await hr.close();
    }
  },
}));
