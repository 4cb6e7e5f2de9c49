/**
 * The UPnP IGD on real sockets over the in-memory mappings, spawned by
 * tests/root/upnp_igd_root_test.ts inside the gateway's namespace (a
 * process cannot move itself into one):
 *
 *   ip netns exec NS deno run -A testing/upnp_child.ts <lan addr> <lan cidr> <boot id>
 *
 * It prints one JSON line `{"ready": true, "port": N, "locations": [...]}`
 * on stdout once listening, then `{"mappings": [...]}` (the fake's live
 * mappings) after every control request. On SIGTERM it sends byebye,
 * closes everything, prints `{"counters": {...}}` and exits 0.
 *
 * The fake's policy: external ports below 1024 refused; `held` 17/<R>/5351
 * (the gateway's PCP port) refused; every host's external address is
 * 203.0.113.10.
 *
 * @module
 */

import { parseCidr, parseIPv4 } from "../src/wire/addr.ts";
import { FakeUpnpMappings } from "../src/upnp/fake.ts";
import { startUpnp } from "../src/upnp/listen.ts";

const [lanText = "", cidrText = "", bootText = "1"] = Deno.args;
const lanAddr = parseIPv4(lanText);
const lan = parseCidr(cidrText);
if (lanAddr === null || lan === null) {
  console.error("usage: upnp_child.ts <lan addr> <lan cidr> <boot id>");
  Deno.exit(2);
}
const R = parseIPv4("203.0.113.10")!;
const mappings = new FakeUpnpMappings({ defaultExternal: R });
mappings.held.add(`17/${R}/5351`);
mappings.linkState = {
  up: true,
  upstreamBps: 1_000_000_000,
  downstreamBps: 1_000_000_000,
  bytesSent: 5_000_000_123,
  bytesReceived: 42,
  packetsSent: 7,
  packetsReceived: 9,
};
const lines: string[] = [];
const upnp = await startUpnp({
  lanAddr,
  lan,
  httpPort: 0,
  mappings,
  maxLease: 3600,
  bootId: Number(bootText),
  seed: `test ${lanText}`,
  version: "0.0.0-test",
  afterControl: () => console.log(JSON.stringify({ mappings: mappings.all(Date.now()) })),
  log: {
    info: (l) => lines.push(l),
    warn: (l) => console.error(l),
    debug: () => {},
  },
});
console.log(JSON.stringify({ ready: true, port: upnp.http.port, locations: upnp.locations }));

const stop = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => stop.resolve());
await stop.promise;
await upnp.close();
console.log(JSON.stringify({
  counters: {
    http: Object.fromEntries(upnp.service.counters.http),
    actions: Object.fromEntries(upnp.service.counters.actions),
    faults: Object.fromEntries(upnp.service.counters.faults),
    ssdp: upnp.responder.counters,
    listener: upnp.http.counters,
    log: lines,
  },
}));
Deno.exit(0);
