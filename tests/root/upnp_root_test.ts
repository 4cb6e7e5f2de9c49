/**
 * `dpm server`'s UPnP IGD (issue 22, step 2) end to end on both data paths,
 * with the real client Debian ships (miniupnpc 2.2.4's `upnpc`) on LAN
 * hosts, behind a gateway firewall of the usual shape (FORWARD policy DROP,
 * LAN -> WAN and established traffic accepted), so that dpm's own accept
 * rules are what lets a mapping's inbound traffic through:
 *
 * - from a host with a driver and from one without: the external address
 *   is the host's public address (the one its mappings get, as the table
 *   says); a UDP and a TCP mapping made with `upnpc -a` carry an outside
 *   peer's traffic to the host and its answers back from the mapped pair;
 *   `upnpc -l` lists them with their description and lease (lease 0:
 *   `--lifetime`); another host can neither overwrite (718) nor delete (606)
 *   them nor see them; a privileged port and a port a gateway socket holds
 *   are refused (606); deleted, they let nothing in;
 * - from the WAN side nothing is answered: no SSDP answer, and a TCP
 *   connection to the IGD's HTTP port on G never completes (the guard drops
 *   the SYN: without it the listener would accept and close);
 * - a UDP and a TCP mapping of UPnP, PCP and NAT-PMP for one host (with and
 *   without a driver) coexist: every one carries traffic, `dpm status`
 *   lists all six with their owners on the host's one public address,
 *   `upnpc -l` lists them too (the others' with an empty description), and
 *   UPnP cannot delete PCP's or NAT-PMP's;
 * - with `--state`, a restart keeps UPnP's mappings (owner, description)
 *   and the boot id; a start that lost the state announces a greater one.
 *
 * `-i`: upnpc 2.2.4 calls an IGD whose external address is a documentation
 * address "not connected" without it (docs/upnp.md); the Connected status
 * still comes from GetStatusInfo.
 */

import assert from "node:assert/strict";
import { type Dpm, withDpm } from "../../testing/launch.ts";
import {
  ssdpListen,
  ssdpSearch,
  tcpBanner,
  tcpClient,
  tcpEcho,
  udpCollect,
  udpPong,
} from "../../testing/apps.ts";
import { type DataPathName, needsRoot, perDataPath } from "../../testing/root.ts";
import type { Node, Spawned, Topology } from "../../testing/topology.ts";
import {
  buildMap,
  buildNatPmpMap,
  parseNatPmpResponse,
  parsePcpResponse,
  randomNonce,
  udpExchange,
} from "../../testing/pcp_client.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

const hasClients = (() => {
  try {
    return Deno.statSync("/usr/bin/upnpc").isFile && Deno.statSync("/usr/bin/natpmpc").isFile;
  } catch {
    return false;
  }
})();

/** A gateway firewall of the usual shape: forward only LAN -> WAN and established traffic. */
async function firewall(t: Topology): Promise<void> {
  const gw = t.gateway;
  for (
    const rule of [
      ["-P", "FORWARD", "DROP"],
      ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
      ["-A", "FORWARD", "-i", gw.lanIf, "-o", gw.wanIf, "-j", "ACCEPT"],
    ]
  ) {
    const r = await t.exec(gw.ns, ["iptables", "-w", ...rule]);
    assert.equal(r.code, 0, r.stderr);
  }
}

/** `upnpc` with `args` on a host; its output (stdout and stderr). */
async function upnpc(t: Topology, h: Node, args: string[]): Promise<string> {
  const r = await t.exec(h.ns, ["upnpc", "-i", ...args], { timeoutMs: 20_000 });
  return r.stdout + r.stderr;
}

/** The last JSON line of an output. */
function lastLine<T>(out: string): T {
  return JSON.parse(out.trim().split("\n").pop()!) as T;
}

/** A peer sends "hello" to `dest` from `bind`; the answers it got in 2 s. */
async function probeUdp(
  t: Topology,
  peer: Node,
  bind: number,
  dest: string,
): Promise<{ from: string; data: string }[]> {
  const r = await t.exec(peer.ns, udpCollect(bind, dest, 2000), { timeoutMs: 10_000 });
  return lastLine<{ got: { from: string; data: string }[] }>(r.stdout).got;
}

/** A peer connects to `dest`, sends a line and reads one back: the reply or the error. */
async function probeTcp(t: Topology, peer: Node, dest: string): Promise<Record<string, string>> {
  const r = await t.exec(peer.ns, tcpClient(0, dest, "hello"), { timeoutMs: 15_000 });
  return lastLine<Record<string, string>>(r.stdout);
}

interface Row {
  proto: string;
  internal: string;
  public: string;
  remote: string;
  flags: string;
  owner?: string;
  description?: string;
  expiresIn: number;
}

/** The mapping rows of `dpm status --json` of host `h`. */
async function mappingRows(d: Dpm, h: Node): Promise<Row[]> {
  const st = await d.status();
  return (st.shown as unknown as Row[]).filter((r) =>
    r.remote === "*" && r.internal.startsWith(`${h.addrText}:`)
  );
}

/**
 * The boot ids of the `ssdp:alive` NOTIFYs an `ssdpListen` printed after
 * offset `from` of its output (waiting up to 10 s for the first), distinct.
 */
async function aliveBootIds(listener: Spawned, from: number): Promise<number[]> {
  const ids = () => {
    const out = new Set<number>();
    for (const line of listener.output().slice(from).split("\n")) {
      if (!line.startsWith("{")) continue;
      const data = (JSON.parse(line) as { data: string }).data;
      const id = /\r\nBOOTID\.UPNP\.ORG: (\d+)\r\n/i.exec(data)?.[1];
      if (/\r\nNTS: ssdp:alive\r\n/i.test(data) && id) out.add(Number(id));
    }
    return [...out];
  };
  for (let k = 0; k < 40 && ids().length === 0; k++) await new Promise((r) => setTimeout(r, 250));
  return ids();
}

/** The IGD's description URLs and boot id, from `dpm status --json`. */
async function igd(d: Dpm): Promise<{ locations: string[]; bootId: number }> {
  const st = await d.status() as unknown as {
    protocols?: { upnp?: { locations: string[]; bootId: number } };
  };
  assert.ok(st.protocols?.upnp, "dpm status shows the UPnP IGD");
  return st.protocols.upnp;
}

for (
  const def of perDataPath({
    name:
      "upnp root: upnpc on a host with a driver and on one without: external address, UDP and TCP mappings an outside peer reaches, listed with description and lease; another host can neither overwrite, delete nor see them; privileged and gateway-held ports refused; deleted, they let nothing in; nothing answered from the WAN",
    ignore: !hasClients,
    ...SAN,
    fn: (datapath) =>
      // One pool address: both hosts map on it, so the other host's requests meet the mappings.
      withDpm(
        { datapath, hosts: 2, driverHosts: ["h1"], pool: "203.0.113.10" },
        (t, d) => mapsAndRefusals(t, d, datapath),
      ),
  })
) Deno.test(def);

async function mapsAndRefusals(t: Topology, d: Dpm, datapath: DataPathName): Promise<void> {
  await firewall(t);
  const [h1, h2] = [t.hosts[0]!, t.hosts[1]!];
  const peer = t.peers[0]!;
  const { locations } = await igd(d);
  const u = ["-u", locations[0]!];
  for (const [i, h] of [h1, h2].entries()) {
    const what = `${h.name} (${i === 0 ? "driver" : "no driver"}, ${datapath})`;
    // Discovery (SSDP multicast) and status.
    const s = await upnpc(t, h, ["-s"]);
    assert.match(s, /desc: http:\/\/10\.0\.0\.1:5000\/igd1\/desc\.xml/, s);
    assert.match(s, /Status : Connected/, s);
    const ext = /ExternalIPAddress = (\S+)/.exec(s)?.[1];
    assert.equal(ext, "203.0.113.10", `${what}: the external address is the pool's`);

    const udp = 6000 + i;
    const tcp = 7000 + i;
    const a1 = await upnpc(t, h, [
      ...u,
      "-e",
      `game ${h.name}`,
      "-a",
      h.addrText,
      "5000",
      `${udp}`,
      "UDP",
      "600",
    ]);
    assert.match(
      a1,
      new RegExp(
        `external ${ext}:${udp} UDP is redirected to internal ${h.addrText}:5000 \\(duration=600\\)`,
      ),
      a1,
    );
    // Lease 0 (permanent in IGD:1) is granted as --lifetime (86400 s) and listed so.
    const a2 = await upnpc(t, h, [
      ...u,
      "-e",
      `web ${h.name}`,
      "-a",
      h.addrText,
      "5001",
      `${tcp}`,
      "TCP",
      "0",
    ]);
    assert.match(
      a2,
      new RegExp(`external ${ext}:${tcp} TCP is redirected to internal ${h.addrText}:5001`),
      a2,
    );

    const l = await upnpc(t, h, ["-l"]);
    assert.match(
      l,
      new RegExp(`UDP\\s+${udp}->${h.addrText}:5000\\s+'game ${h.name}' '' (59\\d|600)\\b`),
      l,
    );
    assert.match(
      l,
      new RegExp(`TCP\\s+${tcp}->${h.addrText}:5001\\s+'web ${h.name}' '' 86[34]\\d\\d\\b`),
      l,
    );
    const rows = await mappingRows(d, h);
    assert.deepEqual(
      rows.map((r) => [r.proto, r.internal, r.public, r.owner, r.description]).sort(),
      [
        ["tcp", `${h.addrText}:5001`, `${ext}:${tcp}`, "upnp", `web ${h.name}`],
        ["udp", `${h.addrText}:5000`, `${ext}:${udp}`, "upnp", `game ${h.name}`],
      ],
      `${what}: the table holds both, UPnP's, on the external address`,
    );

    // An outside peer reaches the host through both mappings; answers leave from them.
    const pong = t.spawn(h.ns, udpPong(5000));
    const echo = t.spawn(h.ns, tcpEcho(5001));
    await pong.waitForOutput(/listening/, 10_000);
    await echo.waitForOutput(/listening/, 10_000);
    const got = await probeUdp(t, peer, 7700 + i, `${ext}:${udp}`);
    assert.equal(got.length, 1, `${what}: the peer got the answer over UDP`);
    assert.equal(got[0]!.from, `${ext}:${udp}`, "the answer leaves from the mapped pair");
    assert.equal(
      got[0]!.data,
      `pong ${peer.addrText}:${7700 + i}`,
      "the host sees the peer's pair",
    );
    const reply = await probeTcp(t, peer, `${ext}:${tcp}`);
    assert.match(
      reply.reply ?? reply.error!,
      new RegExp(`^seen ${peer.addrText}:\\d+\\|hello$`),
      `${what}: TCP`,
    );
    await pong.stop();
    await echo.stop();
  }

  // h2 can neither overwrite h1's mapping nor delete it, nor map for h1, nor see it.
  const o = await upnpc(t, h2, [...u, "-a", h2.addrText, "5000", "6000", "UDP", "60"]);
  assert.match(o, /failed with code 718 \(ConflictInMappingEntry\)/, o);
  const del2 = await upnpc(t, h2, [...u, "-d", "6000", "UDP"]);
  assert.match(del2, /UPNP_DeletePortMapping\(\) failed with code : 606/, del2);
  const forH1 = await upnpc(t, h2, [...u, "-a", h1.addrText, "5002", "6002", "UDP", "60"]);
  assert.match(forH1, /failed with code 606 \(Action not authorized\)/, forH1);
  const l2 = await upnpc(t, h2, [...u, "-l"]);
  assert.doesNotMatch(l2, /10\.0\.0\.11/, "h2 lists none of h1's mappings");
  assert.equal((await mappingRows(d, h1)).length, 2, "h1's mappings are untouched");

  // A privileged port, and a port a socket of the gateway holds (on 0.0.0.0), are refused.
  const priv = await upnpc(t, h1, [...u, "-a", h1.addrText, "80", "80", "TCP", "60"]);
  assert.match(priv, /failed with code 606 \(Action not authorized\)/, priv);
  const held = t.spawn(t.gateway.ns, tcpBanner(7100, "gateway"));
  await held.waitForOutput(/listening/, 10_000);
  // dpm reads the gateway's sockets once a second: ask until it knows this one.
  let refused = "";
  for (let k = 0; k < 20 && !/code 606/.test(refused); k++) {
    refused = await upnpc(t, h1, [...u, "-a", h1.addrText, "7100", "7100", "TCP", "60"]);
    if (!/code 606/.test(refused)) await new Promise((r) => setTimeout(r, 500));
  }
  assert.match(refused, /failed with code 606 \(Action not authorized\)/, refused);
  await held.stop();
  assert.ok(
    !(await mappingRows(d, h1)).some((r) => r.public.endsWith(":7100") || r.public.endsWith(":80")),
    "no mapping of a refused port is left",
  );

  // Deleted by their owner, they let nothing in.
  for (const [port, proto] of [["6000", "UDP"], ["7000", "TCP"]] as const) {
    const r = await upnpc(t, h1, [...u, "-d", port, proto]);
    assert.match(r, /UPNP_DeletePortMapping\(\) returned : 0/, r);
  }
  assert.equal((await mappingRows(d, h1)).length, 0);
  const pong = t.spawn(h1.ns, udpPong(5000));
  const echo = t.spawn(h1.ns, tcpEcho(5001));
  await pong.waitForOutput(/listening/, 10_000);
  await echo.waitForOutput(/listening/, 10_000);
  assert.deepEqual(await probeUdp(t, peer, 7710, "203.0.113.10:6000"), [], "UDP: nothing comes in");
  const after = await probeTcp(t, peer, "203.0.113.10:7000");
  assert.ok(after.error, `TCP: no connection: ${JSON.stringify(after)}`);
  await pong.stop();
  await echo.stop();

  // From the WAN side: nothing answered on G (with a route to it) nor on the pool address.
  const rt = t.router!;
  const route = await t.exec(rt.ns, [
    "ip",
    "route",
    "add",
    "10.0.0.1/32",
    "via",
    t.gateway.wanText,
  ]);
  assert.equal(route.code, 0, route.stderr);
  for (const dest of ["10.0.0.1", "203.0.113.10", "239.255.255.250"]) {
    const w = await t.exec(rt.ns, ssdpSearch(rt.addrText, dest, "ssdp:all", 1500));
    assert.deepEqual(JSON.parse(w.stdout).answers, [], `no SSDP answer from ${dest} to the WAN`);
  }
  const curl = await t.exec(rt.ns, ["curl", "-s", "-m", "3", "http://10.0.0.1:5000/igd1/desc.xml"]);
  assert.equal(curl.code, 28, `the SYN to G:5000 from the WAN is dropped (curl ${curl.code})`);
  const onPool = await t.exec(peer.ns, [
    "curl",
    "-s",
    "-m",
    "3",
    "http://203.0.113.10:5000/igd1/desc.xml",
  ]);
  assert.notEqual(onPool.code, 0, "nothing answers HTTP on the pool address");
  // While a LAN host gets the description.
  const lan = await t.exec(h2.ns, ["curl", "-s", "-m", "5", "http://10.0.0.1:5000/igd1/desc.xml"]);
  assert.equal(lan.code, 0, lan.stderr);
  assert.match(lan.stdout, /urn:schemas-upnp-org:device:InternetGatewayDevice:1/);
}

for (
  const def of perDataPath({
    name:
      "upnp root: a UDP and a TCP mapping each of UPnP, PCP and NAT-PMP for one host (with and without a driver) coexist, carry traffic, and list consistently in dpm status and upnpc -l; UPnP cannot delete the others'",
    ignore: !hasClients,
    ...SAN,
    fn: (datapath) => withDpm({ datapath, hosts: 2, driverHosts: ["h1"] }, (t, d) => coexist(t, d)),
  })
) Deno.test(def);

async function coexist(t: Topology, d: Dpm): Promise<void> {
  await firewall(t);
  const g = t.gateway.lanText;
  const peer = t.peers[1]!;
  const { locations } = await igd(d);
  const u = ["-u", locations[1]!]; // IGD:2 this time
  for (const [i, h] of t.hosts.entries()) {
    const base = 6100 + 100 * i; // UPnP base, PCP base + 10, NAT-PMP base + 20
    for (const proto of ["UDP", "TCP"]) {
      const r = await upnpc(t, h, [
        ...u,
        "-e",
        `upnp ${proto}`,
        "-a",
        h.addrText,
        `${base}`,
        `${base}`,
        proto,
        "300",
      ]);
      assert.match(r, /is redirected to internal/, r);
    }
    const nonce = randomNonce();
    const pcp = await udpExchange(
      t,
      h.ns,
      g,
      5351,
      [17, 6].map((protocol) =>
        buildMap({
          lifetime: 300,
          client: h.addrText,
          nonce,
          protocol,
          internalPort: base + 10,
          externalPort: base + 10,
        })
      ),
      { timeoutMs: 3000 },
    );
    for (const x of pcp) assert.equal(parsePcpResponse(x.reply!).result, 0, "PCP MAP granted");
    const nat = await udpExchange(t, h.ns, g, 5351, [
      buildNatPmpMap(1, base + 20, base + 20, 300),
      buildNatPmpMap(2, base + 20, base + 20, 300),
    ], { timeoutMs: 3000 });
    for (const x of nat) {
      assert.equal(parseNatPmpResponse(x.reply!).result, 0, "NAT-PMP map granted");
    }
    // The same public address whoever asks: upnpc's, natpmpc's, every row's.
    const ext = /ExternalIPAddress = (\S+)/.exec(await upnpc(t, h, [...u, "-s"]))?.[1];
    const np = await t.exec(h.ns, ["natpmpc", "-g", g], { timeoutMs: 15_000 });
    assert.equal(/Public IP address : (\S+)/.exec(np.stdout)?.[1], ext, np.stdout);
    const rows = await mappingRows(d, h);
    assert.deepEqual(
      rows.map((r) => [r.owner, r.proto, r.internal, r.public, r.description ?? ""]).sort(),
      [
        ["natpmp", "tcp", `${h.addrText}:${base + 20}`, `${ext}:${base + 20}`, ""],
        ["natpmp", "udp", `${h.addrText}:${base + 20}`, `${ext}:${base + 20}`, ""],
        ["pcp", "tcp", `${h.addrText}:${base + 10}`, `${ext}:${base + 10}`, ""],
        ["pcp", "udp", `${h.addrText}:${base + 10}`, `${ext}:${base + 10}`, ""],
        ["upnp", "tcp", `${h.addrText}:${base}`, `${ext}:${base}`, "upnp TCP"],
        ["upnp", "udp", `${h.addrText}:${base}`, `${ext}:${base}`, "upnp UDP"],
      ],
      `${h.name}: six mappings, one public address, each with its owner`,
    );
    // upnpc lists the host's own, whoever made them (others' without a description).
    const l = await upnpc(t, h, [...u, "-l"]);
    for (
      const [port, proto, desc] of [
        [base, "UDP", "upnp UDP"],
        [base, "TCP", "upnp TCP"],
        [base + 10, "UDP", ""],
        [base + 10, "TCP", ""],
        [base + 20, "UDP", ""],
        [base + 20, "TCP", ""],
      ]
    ) {
      assert.match(l, new RegExp(`${proto}\\s+${port}->${h.addrText}:${port}\\s+'${desc}'`), l);
    }
    // UPnP deletes neither PCP's nor NAT-PMP's.
    for (const port of [base + 10, base + 20]) {
      const r = await upnpc(t, h, [...u, "-d", `${port}`, "UDP"]);
      assert.match(r, /failed with code : 606/, r);
    }
    // Every UDP and TCP mapping carries an outside peer's traffic.
    for (const port of [base, base + 10, base + 20]) {
      const pong = t.spawn(h.ns, udpPong(port));
      const echo = t.spawn(h.ns, tcpEcho(port));
      await pong.waitForOutput(/listening/, 10_000);
      await echo.waitForOutput(/listening/, 10_000);
      const got = await probeUdp(t, peer, 7800 + port % 100, `${ext}:${port}`);
      assert.equal(got.length, 1, `${h.name} UDP ${port}: answered`);
      assert.equal(got[0]!.from, `${ext}:${port}`);
      const reply = await probeTcp(t, peer, `${ext}:${port}`);
      assert.match(
        reply.reply ?? reply.error!,
        /^seen 198\.51\.100\.20:\d+\|hello$/,
        `${h.name} TCP ${port}`,
      );
      await pong.stop();
      await echo.stop();
    }
  }
  const st = await d.status() as unknown as { protocols: { mappings: Record<string, number> } };
  assert.deepEqual(
    {
      upnp: st.protocols.mappings.upnp,
      pcp: st.protocols.mappings.pcp,
      natpmp: st.protocols.mappings.natpmp,
    },
    { upnp: 4, pcp: 4, natpmp: 4 },
  );
  // The text status shows the owners and UPnP's descriptions.
  const text = await t.exec(t.gateway.ns, [
    ...(await import("../../testing/launch.ts")).dpmCommand(),
    "status",
    "--socket",
    d.serverSocket,
  ], { timeoutMs: 20_000, env: { DENO_NO_UPDATE_CHECK: "1" } });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /OWNER/);
  assert.match(text.stdout, /10\.0\.0\.11:6100 .* upnp "upnp UDP"/);
  assert.match(text.stdout, /10\.0\.0\.12:6210 .* pcp\n/);
  assert.match(text.stdout, /mappings: pcp 4, natpmp 4, upnp 4/);
  assert.match(text.stdout, /UPnP: http:\/\/10\.0\.0\.1:5000\/igd1\/desc\.xml/);
}

Deno.test(needsRoot({
  name:
    "upnp root: with --state a restart keeps UPnP's mappings (owner, description) and the boot id; a start that lost the state announces a greater boot id",
  ignore: !hasClients,
  ...SAN,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpmt-upnp-state-" });
    const state = `${dir}/state.db`;
    try {
      await withDpm({ hosts: 1, driverHosts: [], serverArgs: ["--state", state] }, async (t, d) => {
        const h = t.hosts[0]!;
        const notify = t.spawn(h.ns, ssdpListen(h.addrText));
        await notify.waitForOutput(/listening/, 10_000);
        const b1 = (await igd(d)).bootId;
        let seen = notify.output().length;
        assert.ok(b1 > 0);
        const u = ["-u", (await igd(d)).locations[0]!];
        const a = await upnpc(t, h, [
          ...u,
          "-e",
          "kept",
          "-a",
          h.addrText,
          "5000",
          "6000",
          "UDP",
          "600",
        ]);
        assert.match(a, /is redirected to internal/, a);

        seen = notify.output().length;
        await d.restartServer("SIGTERM");
        assert.equal((await igd(d)).bootId, b1, "the state was kept: the same boot id");
        const rows = await mappingRows(d, h);
        assert.equal(rows.length, 1);
        assert.match(rows[0]!.public, /^203\.0\.113\.1[0-3]:6000$/);
        assert.equal(rows[0]!.owner, "upnp", "restored UPnP's");
        assert.equal(rows[0]!.description, "kept", "with its description");
        assert.match(await upnpc(t, h, [...u, "-l"]), /UDP\s+6000->10\.0\.0\.11:5000\s+'kept'/);
        // The restarted server announced itself with the kept boot id.
        assert.deepEqual(await aliveBootIds(notify, seen), [b1]);
        seen = notify.output().length;
        // Renewed by UPnP after the restart: still UPnP's.
        const again = await upnpc(t, h, [
          ...u,
          "-e",
          "kept 2",
          "-a",
          h.addrText,
          "5000",
          "6000",
          "UDP",
          "600",
        ]);
        assert.match(again, /is redirected to internal/, again);
        assert.equal((await mappingRows(d, h))[0]?.description, "kept 2");

        // The state is lost: the next start announces a greater boot id.
        await d.server.stop("SIGTERM", 5000);
        for (const f of [state, `${state}-wal`, `${state}-shm`]) {
          await Deno.remove(f).catch(() => {});
        }
        await d.restartServer("SIGTERM");
        const b2 = (await igd(d)).bootId;
        assert.ok(b2 > b1, `boot id ${b2} > ${b1}`);
        assert.deepEqual(await aliveBootIds(notify, seen), [b2]);
        await notify.stop();
      });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
}));
