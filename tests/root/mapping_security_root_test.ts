/**
 * Issue 17, as root: mappings never let a LAN host act as the gateway or as
 * another host. One test per finding of the review, forging datagrams from
 * h2 through a raw socket (`rawFlood`), against the real `dpm server`:
 *
 * 1. A forged source of G, or of the LAN's network or broadcast address,
 *    maps nothing (the kernel's `antispoof` drops it, the server would
 *    refuse it too); a real host still maps. Both data paths.
 * 2. The gateway's own ports stay the gateway's: a mapping never takes a
 *    public port a gateway socket holds, and goes when the gateway starts
 *    listening on it; an outside connection to such a port never reaches a
 *    LAN host (kernel path: it reaches the gateway). Both data paths.
 *    Public ports below 1024 and the fixed ports are refused by default and
 *    allowed by a rule (`--map-allow`), which then carries traffic.
 * 3. Forged deletes, renewals and PEER releases in other hosts' names
 *    change nothing (PCP and NAT-PMP touch only what they made, PCP only
 *    with its nonce); 5,000 forged maps in a host's name leave its own
 *    RESERVEs working (their own cap and rate, apart from dpm's protocol's).
 * 4. Forged maps from 150 unused addresses leave the pool serving real
 *    hosts (a per-host cap and a share of the pool); forged UDP 500 maps do
 *    not block IKE (the fixed ports are never a mapping's).
 *
 * Findings 3 and 4 are decided by the server alone (the same code on both
 * data paths): they run on the kernel path.
 */

import assert from "node:assert/strict";
import type { Topology } from "../../testing/topology.ts";
import { type Dpm, DPM_ENV, dpmCommand, serveApp, withDpm } from "../../testing/launch.ts";
import { rawFlood, tcpBanner, tcpClient, udpClient, udpEcho } from "../../testing/apps.ts";
import { type DataPathName, needsRoot, perDataPath } from "../../testing/root.ts";
import { buildUdp } from "../../testing/packets.ts";
import {
  buildMap,
  buildNatPmpMap,
  buildPeer,
  parsePcpResponse,
  preferFailure,
  randomNonce,
  RESULT,
  udpExchange,
} from "../../testing/pcp_client.ts";
import { parseIPv4 } from "../../src/wire/addr.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

const hasNatpmpc = (() => {
  try {
    return Deno.statSync("/usr/bin/natpmpc").isFile;
  } catch {
    return false;
  }
})();

const ip = (text: string) => parseIPv4(text)!;
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** A datagram to forge: from `src` (any address) to the gateway's PCP port (or `dport`). */
interface Forged {
  src: string;
  payload: Uint8Array;
  dport?: number;
}

/** Sends `forged` from h2's namespace through a raw socket, paced; returns how many left. */
async function forge(t: Topology, forged: Forged[], batch = 50, pauseMs = 10): Promise<number> {
  const lines = forged.map((f) =>
    hex(buildUdp({
      src: ip(f.src),
      sport: 5350,
      dst: t.gateway.lanAddr,
      dport: f.dport ?? 5351,
      payload: f.payload,
    }))
  );
  const r = await t.exec(t.hosts[1]!.ns, rawFlood(batch, pauseMs), {
    stdin: lines.join("\n") + "\n",
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 0, r.stderr);
  const n = Number(/sent (\d+)/.exec(r.stdout)?.[1]);
  assert.equal(n, forged.length, r.stdout);
  // The server has read them all once it answers a status request behind them.
  await new Promise((ok) => setTimeout(ok, 500));
  return n;
}

/** `dpm <args...>` in `ns`. */
function dpm(t: Topology, ns: string, ...args: string[]) {
  return t.exec(ns, [...dpmCommand(), ...args], { timeoutMs: 30_000, env: DPM_ENV });
}

/** `dpm map ... --json` on host `h` through its driver; the parsed answer. */
async function dpmMap(t: Topology, d: Dpm, h: string, ...args: string[]) {
  const host = t.hosts.find((x) => x.name === h)!;
  const r = await dpm(t, host.ns, "map", ...args, "--json", "--socket", d.driverSocket(h));
  assert.ok(r.code === 0 || r.code === 1, r.stdout + r.stderr);
  return JSON.parse(r.stdout) as { result: string; public?: string; error?: string };
}

/** natpmpc in `ns`: the mapped public port, or null when refused. */
async function natpmpcMap(
  t: Topology,
  ns: string,
  args: [pub: number, priv: number, proto: "tcp" | "udp", lifetime: number],
): Promise<{ port: number | null; out: string }> {
  const r = await t.exec(ns, ["natpmpc", "-g", t.gateway.lanText, "-a", ...args.map(String)], {
    timeoutMs: 20_000,
  });
  const m = /Mapped public port (\d+)/.exec(r.stdout);
  return { port: m ? Number(m[1]) : null, out: r.stdout + r.stderr };
}

/** The public address natpmpc reports for the host in `ns`. */
async function natpmpcAddress(t: Topology, ns: string): Promise<string> {
  const r = await t.exec(ns, ["natpmpc", "-g", t.gateway.lanText], { timeoutMs: 20_000 });
  const a = /Public IP address : (\S+)/.exec(r.stdout)?.[1];
  assert.ok(a, r.stdout + r.stderr);
  return a;
}

/** What a TCP connection to `dest` from an outside peer is answered (tcpBanner's name), or the error. */
async function whoAnswers(t: Topology, dest: string): Promise<string> {
  const r = await t.exec(t.peers[0]!.ns, tcpClient(0, dest, "hello"), { timeoutMs: 20_000 });
  const o = JSON.parse(r.stdout.trim().split("\n").pop()!) as { reply?: string; error?: string };
  return o.reply ?? `error: ${o.error}`;
}

type Row = Record<string, unknown> & { internal: string; public: string; owner?: string };

/** Every row of `dpm status --json`. */
async function rows(d: Dpm): Promise<Row[]> {
  return (await d.status()).shown as Row[];
}

/** A PCP request from `ns` (a real socket), its parsed answer. */
async function pcp(t: Topology, ns: string, req: Uint8Array) {
  const [x] = await udpExchange(t, ns, t.gateway.lanText, 5351, [req], { timeoutMs: 3000 });
  assert.ok(x!.reply, "the gateway answered");
  const r = parsePcpResponse(x!.reply!);
  assert.deepEqual(r.problems, []);
  return r;
}

// ------------------------------------------------------------------ finding 1

/** The antispoof drops counted on the LAN side: nft counters (kernel, bpf), iptables (queue). */
async function lanSpoofDrops(t: Topology, datapath: DataPathName): Promise<number> {
  const gw = t.gateway;
  if (datapath !== "queue") {
    const r = await t.exec(gw.ns, ["nft", "list", "chain", "ip", "dpm-server", "antispoof"]);
    assert.equal(r.code, 0, r.stderr);
    return [...r.stdout.matchAll(/iifname "lan0" .*counter packets (\d+)/g)]
      .reduce((n, m) => n + Number(m[1]), 0);
  }
  const r = await t.exec(gw.ns, [
    "iptables",
    "-w",
    "-t",
    "raw",
    "-L",
    "DPM-SRV-PRE",
    "-v",
    "-n",
    "-x",
  ]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split("\n").filter((l) => /DROP/.test(l) && /\blan0\b/.test(l))
    .reduce((n, l) => n + Number(l.trim().split(/\s+/)[0]), 0);
}

for (
  const def of perDataPath({
    name:
      "mapsec root: finding 1: NAT-PMP and PCP maps forged from G, the LAN's network and broadcast addresses map nothing; a real host still maps",
    ignore: !hasNatpmpc,
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, hosts: 2, driverHosts: [] }, async (t, d) => {
        const g = t.gateway.lanText;
        const forged: Forged[] = [];
        for (const src of [g, "10.0.0.0", "10.0.0.255"]) {
          // The gateway's LAN-only sshd and DNS resolver, and a port no rule refuses.
          forged.push({ src, payload: buildNatPmpMap(2, 22, 22, 3600) });
          forged.push({ src, payload: buildNatPmpMap(1, 53, 53, 3600) });
          forged.push({ src, payload: buildNatPmpMap(2, 8022, 8022, 3600) });
          forged.push({
            src,
            payload: buildMap({
              lifetime: 3600,
              client: src,
              nonce: randomNonce(),
              protocol: 6,
              internalPort: 8022,
              externalPort: 8022,
            }),
          });
        }
        // And dpm's own control port, which would need a cookie anyway.
        forged.push({ src: g, payload: new Uint8Array(64), dport: 4750 });
        const before = await lanSpoofDrops(t, datapath);
        await forge(t, forged);
        assert.deepEqual(await rows(d), [], "nothing was mapped for G or the prefix's edges");
        console.log(
          `mapsec [${datapath}]: ${forged.length} forged from G and the edges, 0 accepted`,
        );
        const dropped = (await lanSpoofDrops(t, datapath)) - before;
        assert.ok(
          dropped >= forged.length,
          `the gateway's antispoof dropped them (${dropped} of ${forged.length})`,
        );
        // A real host is served as before.
        const h1 = t.hosts[0]!;
        const m = await natpmpcMap(t, h1.ns, [8022, 8022, "tcp", 60]);
        assert.equal(m.port, 8022, m.out);
        const st = await rows(d);
        assert.equal(st.length, 1);
        assert.equal(st[0]!.internal, `${h1.addrText}:8022`);
        assert.equal(st[0]!.owner, "natpmp");
      }),
  })
) Deno.test(def);

// ------------------------------------------------------------------ finding 2

for (
  const def of perDataPath({
    name:
      "mapsec root: finding 2: a mapping never takes a port the gateway listens on, and goes when the gateway starts listening; outside connections to it never reach the LAN host",
    ignore: !hasNatpmpc,
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, hosts: 2, driverHosts: [] }, async (t, d) => {
        const h2 = t.hosts[1]!; // no driver: a NAT-PMP host
        const gwListen = await serveApp(t, t.gateway.ns, tcpBanner(8022, "gateway"));
        // The server reads the gateway's sockets once a second.
        await new Promise((ok) => setTimeout(ok, 2500));
        const pub = await natpmpcAddress(t, h2.ns);
        const host = await serveApp(t, h2.ns, tcpBanner(8022, "host"));
        const m = await natpmpcMap(t, h2.ns, [8022, 8022, "tcp", 600]);
        assert.ok(m.port !== null, m.out);
        assert.notEqual(m.port, 8022, `the gateway's port 8022 was not given away: ${m.out}`);
        assert.equal(await whoAnswers(t, `${pub}:${m.port}`), "host", "the mapping works");
        const at8022 = await whoAnswers(t, `${pub}:8022`);
        assert.notEqual(at8022, "host", "public port 8022 is not the host's");
        if (datapath !== "queue") assert.equal(at8022, "gateway");

        // Mapped first, then the gateway starts listening: the mapping goes, with a log line.
        const host2 = await serveApp(t, h2.ns, tcpBanner(8023, "host"));
        const m2 = await natpmpcMap(t, h2.ns, [8023, 8023, "tcp", 600]);
        assert.equal(m2.port, 8023, m2.out);
        assert.equal(await whoAnswers(t, `${pub}:8023`), "host");
        const gwListen2 = await serveApp(t, t.gateway.ns, tcpBanner(8023, "gateway"));
        await d.server.waitForOutput(
          /mapping tcp \S+:8023 -> 10\.0\.0\.12:8023 \(natpmp\) removed: the gateway now holds that public port itself/,
          10_000,
        );
        const later = await whoAnswers(t, `${pub}:8023`);
        assert.notEqual(later, "host", "once the gateway listens, the host no longer gets it");
        if (datapath !== "queue") assert.equal(later, "gateway");
        assert.ok(
          (await rows(d)).every((r) => !String(r.public).endsWith(":8023")),
          "no row holds public port 8023",
        );
        for (const p of [gwListen, gwListen2, host, host2]) await p.stop();
      }),
  })
) Deno.test(def);

/** A PCP MAP from `client` for its port `port` at exactly public port `port` (PREFER_FAILURE). */
function exactMap(client: string, port: number, protocol: number): Uint8Array {
  return buildMap({
    lifetime: 600,
    client,
    nonce: randomNonce(),
    protocol,
    internalPort: port,
    externalPort: port,
    options: [preferFailure()],
  });
}

Deno.test(needsRoot({
  name:
    "mapsec root [kernel]: finding 2: public ports below 1024 and the fixed ports are refused by default: PCP NOT_AUTHORIZED, dpm map not-authorized, NAT-PMP and PCP without PREFER_FAILURE another port",
  ignore: !hasNatpmpc,
  ...SAN,
  fn: () =>
    withDpm({ hosts: 2, driverHosts: ["h1"] }, async (t, d) => {
      const h2 = t.hosts[1]!;
      const c = h2.addrText;
      assert.equal((await pcp(t, h2.ns, exactMap(c, 80, 6))).result, RESULT.NOT_AUTHORIZED);
      assert.equal((await pcp(t, h2.ns, exactMap(c, 500, 17))).result, RESULT.NOT_AUTHORIZED);
      assert.equal((await pcp(t, h2.ns, exactMap(c, 5060, 17))).result, RESULT.NOT_AUTHORIZED);
      const any = await pcp(
        t,
        h2.ns,
        buildMap({
          lifetime: 600,
          client: c,
          nonce: randomNonce(),
          protocol: 6,
          internalPort: 22,
          externalPort: 22,
        }),
      );
      assert.equal(any.result, RESULT.SUCCESS);
      assert.ok(any.externalPort! >= 1024, `PCP got public port ${any.externalPort}`);
      const n = await natpmpcMap(t, h2.ns, [25, 25, "tcp", 600]);
      assert.ok(n.port !== null && n.port >= 1024, n.out);
      // dpm's protocol, through h1's driver: the same policy.
      const no = await dpmMap(t, d, "h1", "tcp", "443", "--exact");
      assert.equal(no.result, "not-authorized", JSON.stringify(no));
      assert.ok(
        (await rows(d)).every((r) => Number(String(r.public).split(":")[1]) >= 1024),
        "no public port below 1024",
      );
      assert.match(d.server.output(), /refused PCP map tcp 10\.0\.0\.12:80: not-authorized/);
    }),
}));

for (
  const def of perDataPath({
    name:
      "mapsec root: finding 2: a --map-allow rule allows one host public port 80, and an outside peer reaches it there; the rule is that host's only",
    ...SAN,
    fn: (datapath) =>
      withDpm({
        datapath,
        hosts: 2,
        driverHosts: ["h1"],
        serverArgs: ["--map-allow", "10.0.0.11 80 80"],
      }, async (t, d) => {
        const [h1, h2] = [t.hosts[0]!, t.hosts[1]!];
        const web = await serveApp(t, h1.ns, tcpBanner(80, "h1 web"));
        const yes = await dpmMap(t, d, "h1", "tcp", "80", "--exact");
        assert.equal(yes.result, "ok", JSON.stringify(yes));
        assert.match(String(yes.public), /^203\.0\.113\.1[0-3]:80$/);
        assert.equal(await whoAnswers(t, yes.public!), "h1 web");
        assert.equal(
          (await pcp(t, h2.ns, exactMap(h2.addrText, 80, 6))).result,
          RESULT.NOT_AUTHORIZED,
          "the rule is for h1 only",
        );
        await web.stop();
      }),
  })
) Deno.test(def);

// ------------------------------------------------------------------ finding 3

Deno.test(needsRoot({
  name:
    "mapsec root [kernel]: finding 3: forged PCP and NAT-PMP deletes, renewals and PEER releases in other hosts' names change nothing; the owners still can",
  ignore: !hasNatpmpc,
  ...SAN,
  fn: () =>
    withDpm({ hosts: 3, driverHosts: ["h1"] }, async (t, d) => {
      const [h1, , h3] = [t.hosts[0]!, t.hosts[1]!, t.hosts[2]!];
      const p1 = t.peers[0]!;
      // h1 (driver): a dpm map mapping and a RESERVEd session.
      const dm = await dpmMap(t, d, "h1", "udp", "6000", "--lifetime", "600");
      assert.equal(dm.result, "ok", JSON.stringify(dm));
      const q = await d.query("h1", "udp", `${h1.addrText}:40000`, `${p1.addrText}:7000`, true);
      assert.equal(q.result, "ok");
      // h3 (no driver): a PCP MAP and a PEER with their nonces, a NAT-PMP mapping.
      const n3 = randomNonce();
      const pcpMap = (lifetime: number, nonce: Uint8Array, client = h3.addrText) =>
        buildMap({ lifetime, client, nonce, protocol: 17, internalPort: 7000, externalPort: 7000 });
      const pcpPeer = (lifetime: number, nonce: Uint8Array) =>
        buildPeer({
          lifetime,
          client: h3.addrText,
          nonce,
          protocol: 17,
          internalPort: 4000,
          externalPort: 0,
          remotePort: 3478,
          remoteAddr: p1.addrText,
        });
      assert.equal((await pcp(t, h3.ns, pcpMap(600, n3))).result, RESULT.SUCCESS);
      assert.equal((await pcp(t, h3.ns, pcpPeer(600, n3))).result, RESULT.SUCCESS);
      const nm = await natpmpcMap(t, h3.ns, [7001, 7001, "udp", 600]);
      assert.equal(nm.port, 7001, nm.out);
      const before = await rows(d);
      assert.equal(before.length, 5, JSON.stringify(before));

      const other = randomNonce();
      const forged: Forged[] = [
        // In h1's name: PCP deletes and a day-long renewal of its dpm map, PCP delete-all,
        // PCP PEER releasing its RESERVEd session, NAT-PMP delete and delete-all.
        { src: h1.addrText, payload: buildMap({ ...mapOf(h1.addrText, 6000), lifetime: 0 }) },
        { src: h1.addrText, payload: buildMap({ ...mapOf(h1.addrText, 6000), lifetime: 86400 }) },
        {
          src: h1.addrText,
          payload: buildMap({ ...mapOf(h1.addrText, 0), lifetime: 0, protocol: 0 }),
        },
        {
          src: h1.addrText,
          payload: buildPeer({
            ...mapOf(h1.addrText, 40000),
            lifetime: 0,
            remotePort: 7000,
            remoteAddr: p1.addrText,
          }),
        },
        { src: h1.addrText, payload: buildNatPmpMap(1, 6000, 0, 0) },
        { src: h1.addrText, payload: buildNatPmpMap(1, 0, 0, 0) },
        // In h3's name: NAT-PMP delete and renewal of its PCP mapping, PCP deletes and
        // releases with another nonce.
        { src: h3.addrText, payload: buildNatPmpMap(1, 7000, 0, 0) },
        { src: h3.addrText, payload: buildNatPmpMap(1, 7000, 7000, 86400) },
        { src: h3.addrText, payload: pcpMap(0, other) },
        { src: h3.addrText, payload: pcpMap(86400, other) },
        { src: h3.addrText, payload: pcpPeer(0, other) },
        { src: h3.addrText, payload: buildNatPmpMap(2, 0, 0, 0) },
      ];
      await forge(t, forged);
      const after = await rows(d);
      const key = (r: Row) => `${r.proto} ${r.internal} ${r.remote} ${r.public} ${r.owner}`;
      assert.deepEqual(after.map(key).sort(), before.map(key).sort(), "every row is still there");
      console.log(`mapsec: ${forged.length} deletes / renewals / releases forged, 0 accepted`);
      for (const r of after) {
        const was = before.find((b) => key(b) === key(r))!;
        assert.ok(
          Number(r.expiresIn) <= Number(was.expiresIn),
          `not renewed for a day: ${key(r)} expires in ${r.expiresIn} s`,
        );
      }
      assert.match(d.server.output(), /refused PCP delete udp 10\.0\.0\.11:6000: not-authorized/);

      // The owners can: h3 with its nonce, h1 through its driver.
      assert.equal((await pcp(t, h3.ns, pcpMap(0, n3))).result, RESULT.SUCCESS);
      assert.equal((await pcp(t, h3.ns, pcpPeer(0, n3))).result, RESULT.SUCCESS);
      assert.equal((await dpmMap(t, d, "h1", "udp", "6000", "--lifetime", "0")).result, "ok");
      const left = (await rows(d)).map((r) => `${r.internal} ${r.owner}`).sort();
      assert.deepEqual(left, [`${h1.addrText}:40000 dpm`, `${h3.addrText}:7001 natpmp`]);
    }),
}));

/** MAP fields for `client`'s UDP `port`, with a nonce the client never used. */
function mapOf(client: string, port: number) {
  return {
    lifetime: 600,
    client,
    nonce: randomNonce(),
    protocol: 17,
    internalPort: port,
    externalPort: port,
  };
}

Deno.test(needsRoot({
  name:
    "mapsec root [kernel]: finding 3: 5,000 NAT-PMP maps forged in a host's name leave its own RESERVEs working (PCP/NAT-PMP have their own cap and rate)",
  ...SAN,
  fn: () =>
    withDpm({ hosts: 2, driverHosts: ["h1"] }, async (t, d) => {
      const h1 = t.hosts[0]!;
      const p1 = t.peers[0]!;
      const forged = Array.from({ length: 5000 }, (_, i) => ({
        src: h1.addrText,
        payload: buildNatPmpMap(1, 10000 + i, 0, 3600),
      }));
      await forge(t, forged, 50, 20);
      const mine = (await rows(d)).filter((r) => r.internal.startsWith(`${h1.addrText}:`));
      assert.ok(
        mine.length > 0 && mine.length <= 64,
        `the forged maps hold at most the cap of 64 (${mine.length})`,
      );
      console.log(`mapsec: 5000 NAT-PMP maps forged in h1's name: ${mine.length} held`);
      // h1's own reservations, through its driver, right after the flood.
      for (const port of [40001, 40002, 40003]) {
        const q = await d.query("h1", "udp", `${h1.addrText}:${port}`, `${p1.addrText}:7000`, true);
        assert.equal(q.result, "ok", JSON.stringify(q));
      }
    }),
}));

// ------------------------------------------------------------------ finding 4

Deno.test(needsRoot({
  name:
    "mapsec root [kernel]: finding 4: NAT-PMP maps forged from 150 unused addresses hold at most the PCP share of the pool; a real host's sessions are still served",
  ...SAN,
  fn: () =>
    withDpm({
      hosts: 2,
      driverHosts: ["h1"],
      // 4 pool addresses x 1000 ports = 4000 pairs a protocol; the PCP share (25%) is 1000.
      serverArgs: ["--port-range", "40000-40999"],
    }, async (t, d) => {
      const h1 = t.hosts[0]!;
      const p1 = t.peers[0]!;
      const forged: Forged[] = [];
      for (let k = 0; k < 150; k++) {
        for (let i = 0; i < 40; i++) {
          forged.push({ src: `10.0.0.${100 + k}`, payload: buildNatPmpMap(1, 40000 + i, 0, 3600) });
        }
      }
      await forge(t, forged, 50, 20);
      const held = (await rows(d)).filter((r) => /^10\.0\.0\.(1\d\d|2\d\d):/.test(r.internal));
      assert.ok(held.every((r) => r.owner === "natpmp"));
      assert.ok(held.length > 0, "the forger got some");
      assert.ok(held.length <= 1000, `at most the PCP share: ${held.length} rows`);
      console.log(
        `mapsec: ${forged.length} NAT-PMP maps forged from 150 addresses: ${held.length} held ` +
          `(share 1000 of 4000 UDP pairs)`,
      );
      // h1's sessions on the same ports: preserved where free, else another port of the range.
      const echo = await serveApp(t, p1.ns, udpEcho(7000));
      for (const port of [40000, 40005, 40010, 40020]) {
        const q = await d.query("h1", "udp", `${h1.addrText}:${port}`, `${p1.addrText}:7000`, true);
        assert.equal(q.result, "ok", JSON.stringify(q));
      }
      const out = JSON.parse(
        (await t.exec(h1.ns, udpClient(40010, [`${p1.addrText}:7000`], { rounds: 2 }))).stdout
          .trim().split("\n").pop()!,
      );
      assert.deepEqual(out.errors, []);
      assert.equal(out.replies.length, 2, "traffic flows");
      await echo.stop();
    }),
}));

Deno.test(needsRoot({
  name:
    "mapsec root [kernel]: finding 4: UDP 500 maps forged on every pool address do not take IKE's port: a host's IKE session still gets public port 500",
  ...SAN,
  fn: () =>
    withDpm(
      { hosts: 2, driverHosts: ["h1"], driverArgs: ["--fixed-ports", "500"] },
      async (t, d) => {
        const h1 = t.hosts[0]!;
        const p1 = t.peers[0]!;
        // Enough forged hosts that, unrefused, they would hold R:500 on all four pool addresses.
        const forged: Forged[] = [];
        for (let k = 0; k < 8; k++) {
          const src = `10.0.0.${100 + k}`;
          forged.push({ src, payload: buildNatPmpMap(1, 500, 500, 3600) });
          forged.push({
            src,
            payload: buildMap({ ...mapOf(src, 500), lifetime: 3600 }),
          });
        }
        await forge(t, forged);
        const taken = (await rows(d)).filter((r) => String(r.public).endsWith(":500"));
        assert.deepEqual(taken, [], "no mapping holds public port 500");
        const echo = await serveApp(t, p1.ns, udpEcho(500));
        const q = await d.query("h1", "udp", `${h1.addrText}:500`, `${p1.addrText}:500`, true);
        assert.equal(q.result, "ok", JSON.stringify(q));
        assert.match(String(q.public), /^203\.0\.113\.1[0-3]:500$/);
        const out = JSON.parse(
          (await t.exec(h1.ns, udpClient(500, [`${p1.addrText}:500`], { rounds: 2 }))).stdout
            .trim().split("\n").pop()!,
        );
        assert.deepEqual(out.errors, []);
        assert.equal(out.replies[0].data.split("|")[0].replace("seen ", ""), q.public);
        await echo.stop();
      },
    ),
}));
