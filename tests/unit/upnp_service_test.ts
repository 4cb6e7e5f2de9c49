/**
 * The UPnP service (src/upnp/service.ts) over the in-memory mappings
 * (src/upnp/fake.ts): documents, HTTP checks, every action and its UPnP
 * error codes, secure mode; the descriptions and SCPDs against the tables
 * they are generated from (src/upnp/description.ts, src/upnp/igd.ts).
 */

import assert from "node:assert/strict";
import { IgdDocuments } from "../../src/upnp/description.ts";
import { actionsOf, SERVICES, UpnpError } from "../../src/upnp/igd.ts";
import { FakeUpnpMappings } from "../../src/upnp/fake.ts";
import { UpnpService } from "../../src/upnp/service.ts";
import { encodeSoapRequest } from "../../src/upnp/soap.ts";
import { add, call, key, req } from "../../testing/upnp_calls.ts";
import { parseXml, type XmlElement } from "../../src/upnp/xml.ts";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import { G, H1, H2, LAN, P1, R1 } from "../../testing/fixtures.ts";

const docs = new IgdDocuments({ seed: "service test", version: "9.9.9" });

function setup(o: { maxLease?: number; rate?: number } = {}) {
  const m = new FakeUpnpMappings({ defaultExternal: R1 });
  const log: string[] = [];
  const svc = new UpnpService({
    mappings: m,
    docs,
    lan: LAN,
    lanAddr: G,
    httpPort: 5000,
    startedAt: 1_000,
    maxLease: o.maxLease ?? 3600,
    limiter: new RateLimiter(o.rate ?? 1e9, o.rate ?? 1e9),
    log: (l) => log.push(l),
  });
  return { m, svc, log };
}

// ---------------------------------------------------------------- documents

/** Limits for reading the gateway's own documents. */
const BIG = { maxChars: 1e6, maxElements: 1e5, maxDepth: 32 };

function child(e: XmlElement, local: string): XmlElement | undefined {
  return e.children.find((c) => c.local === local);
}

Deno.test("upnp service: the descriptions name every service's SCPD, control and event URLs, all served", () => {
  const { svc } = setup();
  for (const root of docs.roots) {
    const res = svc.handleHttp(req("GET", root.descPath), H1, 0);
    assert.equal(res.status, 200);
    assert.deepEqual(res.headers, [["Content-Type", 'text/xml; charset="utf-8"']]);
    const x = parseXml(res.body!, BIG);
    assert.ok(x.ok);
    assert.equal(x.root.uri, "urn:schemas-upnp-org:device-1-0");
    assert.equal(x.root.attrs.find((a) => a.local === "configId")?.value, String(docs.configId));
    const services: XmlElement[] = [];
    const walk = (d: XmlElement) => {
      for (const s of child(d, "serviceList")?.children ?? []) services.push(s);
      for (const c of child(d, "deviceList")?.children ?? []) walk(c);
    };
    walk(child(x.root, "device")!);
    assert.deepEqual(services.map((s) => child(s, "serviceType")!.text).sort(), [
      "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
      `urn:schemas-upnp-org:service:WANIPConnection:${root.igdVersion}`,
    ]);
    for (const s of services) {
      assert.equal(svc.handleHttp(req("GET", child(s, "SCPDURL")!.text), H1, 0).status, 200);
      assert.equal(docs.route(child(s, "controlURL")!.text)?.kind, "control");
      assert.equal(docs.route(child(s, "eventSubURL")!.text)?.kind, "events");
    }
  }
});

Deno.test("upnp service: each SCPD lists exactly its version's actions, and every argument's state variable", () => {
  for (const [name, spec] of Object.entries(SERVICES)) {
    for (let v = 1; v <= spec.maxVersion; v++) {
      const path = docs.paths.find((p) =>
        docs.route(p)?.kind === "scpd" && p.endsWith(`/${name}.xml`) &&
        (docs.route(p) as { version: number }).version === v
      )!;
      const x = parseXml(docs.document(path)!, BIG);
      assert.ok(x.ok);
      const actions = child(x.root, "actionList")!.children;
      assert.deepEqual(
        actions.map((a) => child(a, "name")!.text),
        actionsOf(spec, v).map((a) => a.name),
      );
      const vars = new Set(
        child(x.root, "serviceStateTable")!.children.map((s) => child(s, "name")!.text),
      );
      for (const a of actions) {
        for (const arg of child(a, "argumentList")?.children ?? []) {
          assert.ok(
            vars.has(child(arg, "relatedStateVariable")!.text),
            `${name}:${v} ${child(arg, "name")!.text}`,
          );
        }
      }
    }
  }
  // The v2 SCPD has the ranges of IGD:2, the v1 one not.
  assert.match(docs.document("/igd2/WANIPConnection.xml")!, /<maximum>604800<\/maximum>/);
  assert.doesNotMatch(docs.document("/igd1/WANIPConnection.xml")!, /allowedValueRange/);
});

Deno.test("upnp service: configId follows the documents, UDNs the seed", () => {
  const same = new IgdDocuments({ seed: "service test", version: "9.9.9" });
  assert.equal(same.configId, docs.configId);
  const other = new IgdDocuments({ seed: "service test", version: "9.9.10" });
  assert.notEqual(other.configId, docs.configId);
  assert.ok(docs.configId >= 0 && docs.configId <= 0xffffff);
  const seeded = new IgdDocuments({ seed: "another gateway", version: "9.9.9" });
  assert.notEqual(seeded.roots[0]!.device.udn, docs.roots[0]!.device.udn);
  assert.match(
    docs.roots[0]!.device.udn,
    /^uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
  );
});

// ---------------------------------------------------------------- HTTP checks

Deno.test("upnp service: HTTP checks: LAN source, Host, path, method, rate", () => {
  const { svc } = setup({ rate: 2 });
  assert.equal(svc.handleHttp(req("GET", "/igd1/desc.xml"), P1, 0).status, 403);
  const rebound = req("GET", "/igd1/desc.xml");
  rebound.headers.set("host", "attacker.example:5000");
  assert.equal(svc.handleHttp(rebound, H1, 0).status, 403);
  const bare = req("GET", "/igd1/desc.xml");
  bare.headers.set("host", "10.0.0.1");
  assert.equal(svc.handleHttp(bare, H1, 0).status, 200);
  assert.equal(svc.handleHttp(req("GET", "/etc/passwd"), H1, 0).status, 404);
  assert.equal(svc.handleHttp(req("GET", "/igd1/../igd1/desc.xml"), H1, 0).status, 404);
  assert.equal(svc.handleHttp(req("POST", "/igd1/desc.xml"), H1, 0).status, 405);
  assert.equal(svc.handleHttp(req("GET", "/igd1/ctl/WANIPConnection"), H1, 0).status, 405);
  assert.equal(svc.handleHttp(req("OPTIONS", "/igd1/ctl/WANIPConnection"), H1, 0).status, 405);
  assert.equal(svc.handleHttp(req("SUBSCRIBE", "/igd1/evt/WANIPConnection"), H1, 0).status, 501);
  // The control rate: 2 per second per host, then 503 until tokens come back.
  const e = encodeSoapRequest("WANIPConnection", 1, "GetExternalIPAddress", []);
  const ctl = () =>
    svc.handleHttp(
      req("POST", "/igd1/ctl/WANIPConnection", [["SOAPACTION", e.soapAction]], e.body),
      H1,
      5_000,
    )
      .status;
  assert.deepEqual([ctl(), ctl(), ctl()], [200, 200, 503]);
  assert.equal(svc.counters.http.get(503), 1);
  // Not UTF-8.
  const bad = req("POST", "/igd2/ctl/WANIPConnection", [["SOAPACTION", e.soapAction]]);
  bad.body = Uint8Array.of(0xff, 0xfe, 0x3c);
  assert.equal(svc.handleHttp(bad, H2, 0).status, 500);
});

// ---------------------------------------------------------------- actions

Deno.test("upnp service: status actions and the link's properties and totals", () => {
  const { m, svc } = setup();
  assert.deepEqual(call(svc, H1, "GetExternalIPAddress").out, {
    NewExternalIPAddress: "203.0.113.10",
  });
  assert.deepEqual(call(svc, H1, "GetStatusInfo", [], { now: 61_500 }).out, {
    NewConnectionStatus: "Connected",
    NewLastConnectionError: "ERROR_NONE",
    NewUptime: "60",
  });
  assert.deepEqual(call(svc, H1, "GetConnectionTypeInfo").out, {
    NewConnectionType: "IP_Routed",
    NewPossibleConnectionTypes: "IP_Routed",
  });
  assert.deepEqual(call(svc, H1, "GetNATRSIPStatus").out, {
    NewRSIPAvailable: "0",
    NewNATEnabled: "1",
  });
  m.linkState = {
    up: false,
    upstreamBps: 100e6,
    downstreamBps: 2 ** 33,
    bytesSent: 2 ** 32 + 5,
    bytesReceived: 7,
    packetsSent: 3,
    packetsReceived: 4,
  };
  const wc = { service: "WANCommonInterfaceConfig" as const };
  assert.deepEqual(call(svc, H1, "GetCommonLinkProperties", [], wc).out, {
    NewWANAccessType: "Ethernet",
    NewLayer1UpstreamMaxBitRate: "100000000",
    NewLayer1DownstreamMaxBitRate: "0",
    NewPhysicalLinkStatus: "Down",
  });
  assert.equal(call(svc, H1, "GetTotalBytesSent", [], wc).out.NewTotalBytesSent, "5");
  assert.equal(call(svc, H1, "GetTotalBytesReceived", [], wc).out.NewTotalBytesReceived, "7");
  assert.equal(call(svc, H1, "GetTotalPacketsSent", [], wc).out.NewTotalPacketsSent, "3");
  assert.equal(call(svc, H1, "GetTotalPacketsReceived", [], wc).out.NewTotalPacketsReceived, "4");
  assert.equal(call(svc, H1, "GetStatusInfo").out.NewConnectionStatus, "Disconnected");
  for (const a of ["RequestConnection", "ForceTermination"]) {
    assert.equal(call(svc, H1, a).code, UpnpError.ACTION_NOT_AUTHORIZED);
  }
  assert.equal(
    call(svc, H1, "SetConnectionType", [["NewConnectionType", "IP_Bridged"]]).code,
    UpnpError.ACTION_NOT_AUTHORIZED,
  );
});

Deno.test("upnp service: AddPortMapping maps for the asking host; lease 0 is capped at maxLease and listed so", () => {
  const { m, svc, log } = setup({ maxLease: 3600 });
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 5000, { lease: 0, desc: "my game" })).status,
    200,
  );
  assert.deepEqual(
    m.all(2_000).map((x) => [x.externalPort, x.internalClient, x.internalPort, x.description]),
    [
      [6000, H1, 5000, "my game"],
    ],
  );
  assert.deepEqual(call(svc, H1, "GetSpecificPortMappingEntry", key(6000)).out, {
    NewInternalPort: "5000",
    NewInternalClient: "10.0.0.11",
    NewEnabled: "1",
    NewPortMappingDescription: "my game",
    NewLeaseDuration: "3600",
  });
  assert.ok(
    log.some((l) =>
      /mapped UDP 203\.0\.113\.10:6000 -> 5000 for 3600 s \(asked permanent\)/.test(l)
    ),
  );
  // Longer leases too; the listed lease counts down.
  call(svc, H1, "AddPortMapping", add(6001, 5001, { lease: 999_999, proto: "TCP" }));
  assert.equal(
    call(svc, H1, "GetSpecificPortMappingEntry", key(6001, "TCP"), { now: 602_000 }).out
      .NewLeaseDuration,
    "3000",
  );
  // The generic listing, in order, then 713.
  const e0 = call(svc, H1, "GetGenericPortMappingEntry", [["NewPortMappingIndex", "0"]]).out;
  assert.equal(e0.NewExternalPort, "6000");
  assert.equal(e0.NewProtocol, "UDP");
  assert.equal(e0.NewRemoteHost, "");
  assert.equal(
    call(svc, H1, "GetGenericPortMappingEntry", [["NewPortMappingIndex", "1"]]).out.NewExternalPort,
    "6001",
  );
  assert.equal(
    call(svc, H1, "GetGenericPortMappingEntry", [["NewPortMappingIndex", "2"]]).code,
    UpnpError.SPECIFIED_ARRAY_INDEX_INVALID,
  );
  // The same request again renews; another description replaces the old one.
  call(svc, H1, "AddPortMapping", add(6000, 5000, { lease: 60, desc: "renamed" }));
  const r = call(svc, H1, "GetSpecificPortMappingEntry", key(6000)).out;
  assert.equal(r.NewLeaseDuration, "60");
  assert.equal(r.NewPortMappingDescription, "renamed");
  assert.equal(m.all(2_000).length, 2);
});

Deno.test("upnp service: secure mode: only to itself, only its own, wildcard remote only", () => {
  const { m, svc } = setup();
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 5000, { client: "10.0.0.12" })).code,
    UpnpError.ACTION_NOT_AUTHORIZED,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 5000, { client: "host.lan" })).code,
    UpnpError.INVALID_ARGS,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 5000, { remote: "198.51.100.10" })).code,
    UpnpError.REMOTE_HOST_ONLY_SUPPORTS_WILDCARD,
  );
  assert.equal(m.changes, 0);
  call(svc, H1, "AddPortMapping", add(6000, 5000));
  // H2 cannot overwrite it, nor delete it (one by one or by range), nor see it.
  assert.equal(
    call(svc, H2, "AddPortMapping", add(6000, 5000, { client: "10.0.0.12" })).code,
    UpnpError.CONFLICT_IN_MAPPING_ENTRY,
  );
  assert.equal(call(svc, H2, "DeletePortMapping", key(6000)).code, UpnpError.ACTION_NOT_AUTHORIZED);
  const range: [string, string][] = [["NewStartPort", "1"], ["NewEndPort", "65535"], [
    "NewProtocol",
    "UDP",
  ], [
    "NewManage",
    "1",
  ]];
  assert.equal(
    call(svc, H2, "DeletePortMappingRange", range, { igd: 2 }).code,
    UpnpError.PORT_MAPPING_NOT_FOUND,
  );
  assert.equal(
    call(svc, H2, "GetSpecificPortMappingEntry", key(6000)).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
  assert.equal(
    call(svc, H2, "GetGenericPortMappingEntry", [["NewPortMappingIndex", "0"]]).code,
    UpnpError.SPECIFIED_ARRAY_INDEX_INVALID,
  );
  assert.equal(
    call(svc, H1, "GetSpecificPortMappingEntry", key(6000)).out.NewInternalClient,
    "10.0.0.11",
  );
  assert.equal(m.all(2_000).length, 1);
  // A specific remote host names no entry.
  assert.equal(
    call(svc, H1, "GetSpecificPortMappingEntry", key(6000, "UDP", "198.51.100.10")).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
  assert.equal(
    call(svc, H1, "DeletePortMapping", key(6000, "UDP", "198.51.100.10")).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
  // The owner deletes it; deleting again is 714.
  assert.equal(call(svc, H1, "DeletePortMapping", key(6000)).status, 200);
  assert.equal(
    call(svc, H1, "DeletePortMapping", key(6000)).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
  assert.equal(
    call(svc, H1, "GetSpecificPortMappingEntry", key(6000)).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
});

Deno.test("upnp service: ports the policy refuses, wildcards, disabled mappings, and no data path", () => {
  const { m, svc } = setup();
  m.held.add(`17/${R1}/5351`);
  assert.equal(
    call(svc, H1, "AddPortMapping", add(80, 8080)).code,
    UpnpError.ACTION_NOT_AUTHORIZED,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(5351, 5351)).code,
    UpnpError.ACTION_NOT_AUTHORIZED,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(0, 5000)).code,
    UpnpError.WILDCARD_NOT_PERMITTED_IN_EXT_PORT,
  );
  assert.equal(call(svc, H1, "AddPortMapping", add(6000, 0)).code, UpnpError.INVALID_ARGS);
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 0), { igd: 2 }).code,
    UpnpError.WILDCARD_NOT_PERMITTED_IN_INT_PORT,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6000, 5000, { enabled: "0" })).code,
    UpnpError.ACTION_FAILED,
  );
  assert.equal(m.changes, 0);
  m.supported = false;
  assert.equal(call(svc, H1, "AddPortMapping", add(6000, 5000)).code, UpnpError.ACTION_FAILED);
});

Deno.test("upnp service: budgets: 501 in IGD:1, 728 NoPortMapsAvailable in IGD:2", () => {
  const m = new FakeUpnpMappings({ defaultExternal: R1, perHost: 1 });
  const svc = new UpnpService({
    mappings: m,
    docs,
    lan: LAN,
    lanAddr: G,
    httpPort: 5000,
    startedAt: 0,
    maxLease: 3600,
    limiter: new RateLimiter(1e9),
    log: () => {},
  });
  assert.equal(call(svc, H1, "AddPortMapping", add(6000, 5000)).status, 200);
  assert.equal(call(svc, H1, "AddPortMapping", add(6001, 5001)).code, UpnpError.ACTION_FAILED);
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6001, 5001), { igd: 2 }).code,
    UpnpError.NO_PORT_MAPS_AVAILABLE,
  );
});

Deno.test("upnp service: a new external port for a mapped endpoint moves the mapping", () => {
  const { m, svc } = setup();
  call(svc, H1, "AddPortMapping", add(6000, 5000));
  call(svc, H1, "AddPortMapping", add(7000, 5000));
  assert.deepEqual(m.all(2_000).map((x) => x.externalPort), [7000]);
  // Not when the new port is another host's.
  call(svc, H2, "AddPortMapping", add(8000, 5000, { client: "10.0.0.12" }));
  assert.equal(
    call(svc, H1, "AddPortMapping", add(8000, 5000)).code,
    UpnpError.CONFLICT_IN_MAPPING_ENTRY,
  );
  assert.deepEqual(m.all(2_000).map((x) => [x.externalPort, x.internalClient]).sort(), [
    [7000, H1],
    [8000, H2],
  ]);
});

Deno.test("upnp service: IGD:2: AddAnyPortMapping, GetListOfPortMappings, DeletePortMappingRange", () => {
  const { m, svc } = setup();
  m.held.add(`6/${R1}/6000`);
  const any = call(svc, H1, "AddAnyPortMapping", add(6000, 5000, { proto: "TCP", desc: "a<b" }), {
    igd: 2,
  });
  assert.equal(any.status, 200);
  assert.equal(any.out.NewReservedPort, "1024", "the held port is replaced");
  assert.equal(
    call(svc, H1, "AddAnyPortMapping", add(0, 5001, { proto: "TCP" }), { igd: 2 }).out
      .NewReservedPort,
    "1025",
  );
  call(svc, H1, "AddPortMapping", add(9000, 5002, { proto: "TCP" }), { igd: 2 });
  call(svc, H2, "AddPortMapping", add(7000, 5000, { proto: "TCP", client: "10.0.0.12" }), {
    igd: 2,
  });
  const list = (start: number, end: number, n = 0, src = H1) =>
    call(svc, src, "GetListOfPortMappings", [
      ["NewStartPort", String(start)],
      ["NewEndPort", String(end)],
      ["NewProtocol", "TCP"],
      ["NewManage", "1"],
      ["NewNumberOfPorts", String(n)],
    ], { igd: 2 });
  const l = list(1, 65535);
  assert.equal(l.status, 200);
  const doc = parseXml(l.out.NewPortListing!);
  assert.ok(doc.ok, l.out.NewPortListing);
  assert.equal(doc.root.uri, "urn:schemas-upnp-org:gw:WANIPConnection");
  const entries = doc.root.children.map((e) =>
    Object.fromEntries(e.children.map((c) => [c.local, c.text]))
  );
  assert.deepEqual(entries.map((e) => [e.NewExternalPort, e.NewInternalClient, e.NewDescription]), [
    ["1024", "10.0.0.11", "a<b"],
    ["1025", "10.0.0.11", "test"],
    ["9000", "10.0.0.11", "test"],
  ], "only the asking host's own, in port order");
  assert.equal(list(1, 65535, 1).out.NewPortListing!.split("<p:PortMappingEntry>").length - 1, 1);
  assert.equal(list(2000, 3000).code, UpnpError.PORT_MAPPING_NOT_FOUND);
  assert.equal(list(3000, 2000).code, UpnpError.INCONSISTENT_PARAMETERS);
  // The raw response carries the listing as CDATA (miniupnpc reads no entities).
  const e = encodeSoapRequest("WANIPConnection", 2, "GetListOfPortMappings", [
    ["NewStartPort", "1"],
    ["NewEndPort", "65535"],
    ["NewProtocol", "TCP"],
    ["NewManage", "0"],
    ["NewNumberOfPorts", "0"],
  ]);
  const raw = svc.handleHttp(
    req("POST", "/igd2/ctl/WANIPConnection", [["SOAPACTION", e.soapAction]], e.body),
    H1,
    0,
  );
  assert.match(raw.body!, /<NewPortListing><!\[CDATA\[<\?xml/);
  // Range delete: only the host's own in range.
  const del = (start: number, end: number) =>
    call(svc, H1, "DeletePortMappingRange", [
      ["NewStartPort", String(start)],
      ["NewEndPort", String(end)],
      ["NewProtocol", "TCP"],
      ["NewManage", "0"],
    ], { igd: 2 });
  assert.equal(del(2, 1).code, UpnpError.INCONSISTENT_PARAMETERS);
  assert.equal(del(1000, 8000).status, 200);
  assert.deepEqual(m.all(0).map((x) => x.externalPort).sort(), [7000, 9000]);
  assert.equal(del(1000, 8000).code, UpnpError.PORT_MAPPING_NOT_FOUND);
});

Deno.test("upnp service: IGD:1 requests are answered at IGD:2's control URL, in IGD:1's namespace", () => {
  const { svc } = setup();
  const r = call(svc, H1, "GetExternalIPAddress", [], { igd: 2, ns: 1 });
  assert.equal(r.status, 200);
  assert.equal(r.out.NewExternalIPAddress, "203.0.113.10");
  assert.equal(
    call(svc, H1, "AddAnyPortMapping", add(0, 1), { igd: 2, ns: 1 }).code,
    UpnpError.INVALID_ACTION,
  );
});

Deno.test("upnp service: counters count answers by status, action and fault", () => {
  const { svc } = setup();
  call(svc, H1, "GetExternalIPAddress");
  call(svc, H1, "AddPortMapping", add(80, 8080));
  assert.equal(svc.counters.actions.get("GetExternalIPAddress"), 1);
  assert.equal(svc.counters.faults.get(UpnpError.ACTION_NOT_AUTHORIZED), 1);
  assert.equal(svc.counters.http.get(200), 1);
  assert.equal(svc.counters.http.get(500), 1);
});
