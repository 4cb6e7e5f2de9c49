/**
 * The UPnP IGD (src/upnp/listen.ts) on real sockets in network namespaces,
 * over the in-memory mappings (`testing/upnp_child.ts`), with the real
 * client Debian ships (miniupnpc 2.2.4's `upnpc`) on the LAN hosts:
 *
 * - discovery by SSDP multicast, status, external address and link totals
 *   (`upnpc -s`; `-i` because 203.0.113.10 is a documentation address,
 *   which upnpc 2.2.4 calls "not connected" — the Connected status still
 *   comes from GetStatusInfo);
 * - add with a description and lease 0 (capped and listed so), list,
 *   refusals for another host (overwrite, delete, map to another address)
 *   and for privileged or gateway-held ports, delete;
 * - IGD:2 at its own description: AddAnyPortMapping, GetListOfPortMappings,
 *   DeletePortMappingRange;
 * - NOTIFY alive at start and byebye at stop seen by a LAN listener, with
 *   the boot id; answers to a real multicast ssdp:all search within 4x its
 *   size;
 * - nothing from the WAN side: no SSDP answer to a search from the router
 *   (multicast or unicast), no HTTP on the WAN address.
 *
 * The same client against `dpm server`'s table is in the root tests of
 * step 2 (`upnp_root_test.ts`).
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import { createTopology, type Spawned, type Topology } from "../../testing/topology.ts";
import { ssdpListen, ssdpSearch } from "../../testing/apps.ts";

const CHILD = new URL("../../testing/upnp_child.ts", import.meta.url).pathname;
const ENV = { DENO_NO_UPDATE_CHECK: "1" };
const SAN = { sanitizeOps: false, sanitizeResources: false };

const hasUpnpc = (() => {
  try {
    return Deno.statSync("/usr/bin/upnpc").isFile;
  } catch {
    return false;
  }
})();

interface Mapping {
  proto: number;
  externalPort: number;
  internalClient: number;
  internalPort: number;
  leaseRemaining: number;
  description: string;
}

/** Starts the IGD in the gateway's namespace; resolves with its process and description URLs. */
async function startIgd(t: Topology, bootId: number): Promise<{ p: Spawned; locations: string[] }> {
  const g = t.gateway;
  const p = t.spawn(g.ns, [
    Deno.execPath(),
    "run",
    "-A",
    CHILD,
    g.lanText,
    g.lanCidr,
    String(bootId),
  ], {
    env: ENV,
  });
  const m = await p.waitForOutput(/\{"ready":true[^\n]*\}/, 30_000);
  return { p, locations: (JSON.parse(m[0]) as { locations: string[] }).locations };
}

/** The fake's mappings after the last control request. */
function mappings(p: Spawned): Mapping[] {
  const lines = p.stdout().split("\n").filter((l) => l.startsWith('{"mappings"'));
  return lines.length
    ? (JSON.parse(lines[lines.length - 1]!) as { mappings: Mapping[] }).mappings
    : [];
}

async function upnpc(t: Topology, ns: string, args: string[]): Promise<string> {
  const r = await t.exec(ns, ["upnpc", ...args], { timeoutMs: 20_000 });
  return r.stdout + r.stderr;
}

Deno.test(needsRoot({
  name:
    "upnp igd root: upnpc discovers, maps, lists and deletes; other hosts and refused ports get errors",
  ignore: !hasUpnpc,
  ...SAN,
  fn: async () => {
    await using t = await createTopology({ hosts: 2, peers: 1 });
    const [h1, h2] = t.hosts as [typeof t.hosts[0], typeof t.hosts[0]];
    const { p, locations } = await startIgd(t, 7);
    const v1 = ["-i", "-u", locations[0]!];

    // Discovery by multicast, then status: without -i upnpc 2.2.4 stops at the reserved address.
    const plain = await upnpc(t, h1.ns, ["-s"]);
    assert.match(plain, /desc: http:\/\/10\.0\.0\.1:\d+\/igd1\/desc\.xml/);
    assert.match(plain, /Found a \(not connected\?\) IGD/);
    const s = await upnpc(t, h1.ns, ["-i", "-s"]);
    assert.match(s, /Connection Type : IP_Routed/);
    assert.match(s, /Status : Connected, uptime=\d+s, LastConnectionError : ERROR_NONE/);
    assert.match(s, /ExternalIPAddress = 203\.0\.113\.10/);
    assert.match(s, /MaxBitRateDown : 1000000000 bps/);
    assert.match(s, /Bytes:\s+Sent:\s+705032827\s+Recv:\s+42/, "5000000123 wrapped to 32 bits");

    // Add with a description and lease 0: granted 3600 s (maxLease) and listed so.
    const a = await upnpc(t, h1.ns, [
      ...v1,
      "-e",
      "my game",
      "-a",
      h1.addrText,
      "5000",
      "6000",
      "UDP",
      "0",
    ]);
    assert.match(
      a,
      /external 203\.0\.113\.10:6000 UDP is redirected to internal 10\.0\.0\.11:5000 \(duration=3600\)/,
    );
    const l = await upnpc(t, h1.ns, ["-i", "-l"]);
    assert.match(l, /0 UDP\s+6000->10\.0\.0\.11:5000\s+'my game' '' 3[56]\d\d/);
    assert.deepEqual(
      mappings(p).map((
        m,
      ) => [m.proto, m.externalPort, m.internalClient, m.internalPort, m.description]),
      [[17, 6000, h1.addr, 5000, "my game"]],
    );

    // Another host can neither overwrite nor delete it; nobody maps to another address.
    const o = await upnpc(t, h2.ns, [...v1, "-a", h2.addrText, "5000", "6000", "UDP", "60"]);
    assert.match(o, /failed with code 718 \(ConflictInMappingEntry\)/);
    const d2 = await upnpc(t, h2.ns, [...v1, "-d", "6000", "UDP"]);
    assert.match(d2, /UPNP_DeletePortMapping\(\) failed with code : 606/);
    const other = await upnpc(t, h1.ns, [...v1, "-a", h2.addrText, "5000", "6001", "UDP", "60"]);
    assert.match(other, /failed with code 606 \(Action not authorized\)/);
    // Privileged and gateway-held ports are refused.
    for (const port of ["80", "5351"]) {
      const r = await upnpc(t, h1.ns, [...v1, "-a", h1.addrText, port, port, "UDP", "60"]);
      assert.match(r, /failed with code 606 \(Action not authorized\)/, `port ${port}`);
    }
    assert.equal(mappings(p).length, 1);

    // The owner deletes it; the listing is then empty.
    const d1 = await upnpc(t, h1.ns, [...v1, "-d", "6000", "UDP"]);
    assert.match(d1, /UPNP_DeletePortMapping\(\) returned : 0/);
    assert.deepEqual(mappings(p), []);
    assert.match(
      await upnpc(t, h1.ns, [...v1, "-l"]),
      /GetGenericPortMappingEntry\(\) returned 713/,
    );

    // IGD:2 at its own description.
    const v2 = ["-i", "-u", locations[1]!];
    const n = await upnpc(t, h1.ns, [
      ...v2,
      "-e",
      "any",
      "-n",
      h1.addrText,
      "5001",
      "80",
      "TCP",
      "120",
    ]);
    assert.match(
      n,
      /external 203\.0\.113\.10:(\d+) TCP is redirected to internal 10\.0\.0\.11:5001/,
    );
    assert.doesNotMatch(n, /203\.0\.113\.10:80 /, "80 is refused, another port given");
    await upnpc(t, h1.ns, [...v2, "-a", h1.addrText, "5002", "7000", "TCP", "120"]);
    const L = await upnpc(t, h1.ns, [...v2, "-L"]);
    assert.match(L, /TCP\s+7000->10\.0\.0\.11:5002/);
    assert.match(L, /'any'/);
    const N = await upnpc(t, h1.ns, [...v2, "-N", "1024", "65535", "TCP"]);
    assert.match(N, /UPNP_DeletePortMappingRange\(\) returned : 0/);
    assert.deepEqual(mappings(p), []);

    await p.stop("SIGTERM", 5000);
    const counters = p.stdout().split("\n").find((l) => l.startsWith('{"counters"'));
    assert.ok(counters, `the child printed its counters:\n${p.output()}`);
    const c = JSON.parse(counters).counters as {
      ssdp: { answered: number };
      faults: Record<string, number>;
    };
    assert.ok(c.ssdp.answered >= 2, "the searches were answered over SSDP");
    assert.equal(c.faults["606"], 4);
  },
}));

Deno.test(needsRoot({
  name:
    "upnp igd root: NOTIFY alive and byebye on the LAN, search answers within 4x, nothing on the WAN side",
  ...SAN,
  fn: async () => {
    await using t = await createTopology({ hosts: 1, peers: 1 });
    const h1 = t.hosts[0]!;
    const g = t.gateway;
    const rt = t.router!;
    const listener = t.spawn(h1.ns, ssdpListen(h1.addrText));
    await listener.waitForOutput(/listening/, 10_000);
    const { p, locations } = await startIgd(t, 1234);
    // Alive arrives from the LAN address, port 1900, with the boot id.
    const alive = await listener.waitForOutput(
      /"from": "10\.0\.0\.1:1900", "data": "NOTIFY[^\n]*ssdp:alive[^\n]*\n/,
      10_000,
    );
    assert.match(alive[0], /BOOTID\.UPNP\.ORG: 1234/);
    assert.ok(alive[0].includes(locations[0]!) || alive[0].includes(locations[1]!));

    // A real multicast ssdp:all search: answered, within 4x its size, from the LAN address.
    const q = await t.exec(h1.ns, ssdpSearch(h1.addrText, "239.255.255.250", "ssdp:all", 2000));
    const r = JSON.parse(q.stdout) as { sent: number; answers: string[] };
    assert.ok(r.answers.length >= 1, q.stdout + q.stderr);
    assert.ok(
      r.answers.join("").length <= 4 * r.sent,
      `${r.answers.join("").length} > 4 x ${r.sent}`,
    );
    assert.match(r.answers[0]!, /^HTTP\/1\.1 200 OK\r\n/);
    // A unicast search to the LAN address is answered too.
    const u = await t.exec(h1.ns, ssdpSearch(h1.addrText, g.lanText, "upnp:rootdevice", 1500));
    assert.ok((JSON.parse(u.stdout) as { answers: string[] }).answers.length >= 1, u.stdout);

    // From the WAN side (the router): no answer to multicast or unicast searches, no HTTP.
    for (const dest of ["239.255.255.250", g.wanText]) {
      const w = await t.exec(rt.ns, ssdpSearch(rt.addrText, dest, "ssdp:all", 1500));
      assert.deepEqual(
        (JSON.parse(w.stdout) as { answers: string[] }).answers,
        [],
        `search to ${dest}`,
      );
    }
    const port = new URL(locations[0]!).port;
    const http = await t.exec(rt.ns, [
      "curl",
      "-s",
      "-m",
      "3",
      `http://${g.wanText}:${port}/igd1/desc.xml`,
    ]);
    assert.notEqual(http.code, 0, "nothing listens on the WAN address");

    // Byebye at stop.
    await p.stop("SIGTERM", 5000);
    const bye = await listener.waitForOutput(/"data": "NOTIFY[^\n]*ssdp:byebye[^\n]*\n/, 10_000);
    assert.match(bye[0], /BOOTID\.UPNP\.ORG: 1234/);
    await listener.stop();
  },
}));
