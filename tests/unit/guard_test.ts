/**
 * The guard of dpm's control ports on the gateway (src/datapath/gateway.ts,
 * and the kernel path's `chain guard` in src/datapath/nft/rules.ts): UDP
 * (dpm's protocol, PCP and NAT-PMP, SSDP) and TCP (the UPnP IGD's HTTP port)
 * to G only from the LAN interface and prefix, on both data paths; what
 * `--no-pcp` and `--no-upnp` leave out. The rules at work on real packets:
 * tests/root/upnp_root_test.ts (a WAN SYN to G's HTTP port never answered),
 * tests/root/forgery_root_test.ts.
 *
 * @module
 */

import assert from "node:assert/strict";
import { controlGuardRules, controlPorts, controlTcpPorts } from "../../src/datapath/gateway.ts";
import { serverTable } from "../../src/datapath/nft/rules.ts";
import { gatewayOptions } from "../../src/datapath/open.ts";
import { LAN, serverCfg } from "../../testing/fixtures.ts";

const opts = (over: Parameters<typeof serverCfg>[0] = {}) =>
  gatewayOptions(serverCfg({ lanIf: "lan0", wanIf: "wan0", ...over }), LAN);

Deno.test("guard: UDP 4750, 5351 and 1900 and TCP 5000 on G, only from the LAN; --no-pcp and --no-upnp leave theirs out", () => {
  assert.deepEqual(controlPorts(opts()), [4750, 5351, 1900]);
  assert.deepEqual(controlTcpPorts(opts()), [5000]);
  assert.deepEqual(controlPorts(opts({ pcp: false, upnp: false })), [4750]);
  assert.deepEqual(controlTcpPorts(opts({ upnp: false })), []);
  assert.deepEqual(controlTcpPorts(opts({ upnpPort: 49000 })), [49000]);

  // Queue path: iptables filter INPUT -> DPM-SRV-IN.
  assert.deepEqual(controlGuardRules(opts(), LAN).map((r) => r.join(" ")), [
    "-p udp -d 10.0.0.1 -m multiport --dports 4750,5351,1900 ! -i lan0 -j DROP",
    "-p udp -d 10.0.0.1 -m multiport --dports 4750,5351,1900 ! -s 10.0.0.0/24 -j DROP",
    "-p tcp -d 10.0.0.1 -m multiport --dports 5000 ! -i lan0 -j DROP",
    "-p tcp -d 10.0.0.1 -m multiport --dports 5000 ! -s 10.0.0.0/24 -j DROP",
  ]);
  assert.equal(controlGuardRules(opts({ upnp: false }), LAN).length, 2);

  // Kernel path: the nft table's guard chain.
  const guard = (o: ReturnType<typeof opts>) =>
    /chain guard \{\n([\s\S]*?)\n {2}\}\n/.exec(serverTable(o, LAN))![1]!.trim().split("\n").map((
      l,
    ) => l.trim());
  assert.deepEqual(guard(opts()), [
    "type filter hook input priority -150; policy accept;",
    'ip daddr 10.0.0.1 udp dport { 4750, 5351, 1900 } iifname != "lan0" drop',
    "ip daddr 10.0.0.1 udp dport { 4750, 5351, 1900 } ip saddr != 10.0.0.0/24 drop",
    'ip daddr 10.0.0.1 tcp dport { 5000 } iifname != "lan0" drop',
    "ip daddr 10.0.0.1 tcp dport { 5000 } ip saddr != 10.0.0.0/24 drop",
  ]);
  assert.deepEqual(guard(opts({ upnp: false, pcp: false })), [
    "type filter hook input priority -150; policy accept;",
    'ip daddr 10.0.0.1 udp dport { 4750 } iifname != "lan0" drop',
    "ip daddr 10.0.0.1 udp dport { 4750 } ip saddr != 10.0.0.0/24 drop",
  ]);
});
