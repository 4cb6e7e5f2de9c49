/**
 * PCP / NAT-PMP end to end with a real client (libnatpmp's `natpmpc`,
 * Debian package natpmpc) on the kernel data path, as root: a host without
 * a driver asks the gateway for its public address and an inbound mapping,
 * an outside peer that never heard from the host reaches it through the
 * mapping, the host's answer leaves from the mapped public pair, and a
 * delete (lifetime 0) closes it.
 */

import assert from "node:assert/strict";
import { withDpm } from "../../testing/launch.ts";
import { udpCollect } from "../../testing/apps.ts";
import { needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** A UDP listener on `port` that answers every datagram with "pong <source>" and prints it. */
function udpPong(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${port}))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    print(json.dumps({"from": "%s:%d" % a, "data": d.decode()}), flush=True)
    s.sendto(("pong %s:%d" % a).encode(), a)
`,
  ];
}

const hasNatpmpc = (() => {
  try {
    return Deno.statSync("/usr/bin/natpmpc").isFile;
  } catch {
    return false;
  }
})();

Deno.test(needsRoot({
  name:
    "pcp root [kernel]: natpmpc learns the public address, maps a UDP port, an outside peer reaches the host through it; delete closes it",
  ignore: !hasNatpmpc,
  ...SAN,
  fn: () =>
    withDpm({ datapath: "kernel", hosts: 2, driverHosts: ["h1"] }, async (t, d) => {
      const h2 = t.hosts[1]!; // no driver: an ordinary host with a NAT-PMP client
      const p1 = t.peers[0]!;
      const g = t.gateway.lanText;
      const addr = await t.exec(h2.ns, ["natpmpc", "-g", g], { timeoutMs: 15_000 });
      assert.equal(addr.code, 0, addr.stdout + addr.stderr);
      const pub = /Public IP address : (203\.0\.113\.1[0-3])/.exec(addr.stdout)?.[1];
      assert.ok(pub, `natpmpc printed a pool address: ${addr.stdout}`);

      const map = await t.exec(h2.ns, ["natpmpc", "-g", g, "-a", "6000", "5000", "udp", "60"], {
        timeoutMs: 15_000,
      });
      assert.equal(map.code, 0, map.stdout + map.stderr);
      assert.match(map.stdout, /Mapped public port 6000 protocol UDP to local port 5000/);

      const listener = t.spawn(h2.ns, udpPong(5000));
      await listener.waitForOutput(/listening/, 10_000);
      const r = await t.exec(p1.ns, udpCollect(7777, `${pub}:6000`, 2000), { timeoutMs: 10_000 });
      const got = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
        got: { from: string; data: string }[];
      };
      const heard = JSON.parse(listener.stdout().trim().split("\n").pop()!) as {
        from: string;
        data: string;
      };
      assert.equal(heard.data, "hello");
      assert.equal(heard.from, `${p1.addrText}:7777`, "the host sees the peer's real pair");
      assert.equal(got.got.length, 1, `the peer got the answer: ${r.stdout}`);
      assert.equal(got.got[0]!.from, `${pub}:6000`, "the answer leaves from the mapped pair");

      const st = await d.status();
      assert.ok(st.sessions >= 1);

      const del = await t.exec(h2.ns, ["natpmpc", "-g", g, "-a", "6000", "5000", "udp", "0"], {
        timeoutMs: 15_000,
      });
      assert.equal(del.code, 0, del.stdout + del.stderr);
      const after = await t.exec(p1.ns, udpCollect(7778, `${pub}:6000`, 1500), {
        timeoutMs: 10_000,
      });
      const none = JSON.parse(after.stdout.trim().split("\n").pop()!) as { got: unknown[] };
      assert.equal(none.got.length, 0, "a deleted mapping lets nothing in");
      await listener.stop();
    }),
}));
