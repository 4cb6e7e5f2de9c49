/**
 * A start that fails leaves nothing, as root, on both data paths: a `dpm
 * server` whose control port, PCP port, UPnP HTTP port or metrics address another program
 * holds, and a `dpm driver` whose metrics address is taken, exit with the
 * reason and leave the machine as it was (no nft table, no iptables chain,
 * no pool address, no sysctl changed, no sysctl journal). Each role opens
 * what can fail without the kernel before its data path changes anything
 * (docs/datapath.md, "The interface").
 */

import assert from "node:assert/strict";
import { createTopology, type Topology } from "../../testing/topology.ts";
import { DPM_ENV, dpmCommand } from "../../testing/launch.ts";
import { perDataPath } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** What dpm could leave in `ns`: its tables and chains, the WAN's addresses, the sysctls it sets. */
async function snapshot(t: Topology, ns: string, ifs: string[]): Promise<string> {
  const nft = await t.exec(ns, ["nft", "list", "tables"]);
  const ipt = await t.exec(ns, ["iptables-save"]);
  const addrs = await t.exec(ns, ["ip", "-4", "-o", "addr", "show"]);
  const keys = [
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.all.send_redirects",
    "net.netfilter.nf_conntrack_acct",
    ...ifs.flatMap((i) => [
      `net.ipv4.conf.${i}.rp_filter`,
      `net.ipv4.conf.${i}.accept_local`,
      `net.ipv4.conf.${i}.send_redirects`,
    ]),
  ];
  const sys = await t.exec(ns, ["sysctl", ...keys]);
  return [
    ...nft.stdout.split("\n").filter((l) => /dpm/i.test(l)),
    ...ipt.stdout.split("\n").filter((l) => /dpm/i.test(l)),
    ...addrs.stdout.split("\n").map((l) => l.replace(/\s+valid_lft.*$/, "")),
    sys.stdout,
  ].join("\n");
}

/** Holds UDP or TCP `addr:port` in `ns` until the returned function is called. */
async function hold(
  t: Topology,
  ns: string,
  proto: "udp" | "tcp",
  addr: string,
  port: number,
): Promise<() => Promise<void>> {
  const kind = proto === "udp" ? "SOCK_DGRAM" : "SOCK_STREAM";
  const s = t.spawn(ns, [
    "python3",
    "-c",
    `import socket,sys,time
s=socket.socket(socket.AF_INET, socket.${kind})
s.bind(("${addr}", ${port}))
${proto === "tcp" ? "s.listen(1)\n" : ""}print("listening", flush=True)
time.sleep(600)`,
  ]);
  await s.waitForOutput(/listening/, 10_000);
  return async () => void await s.stop("SIGKILL", 0);
}

for (
  const def of perDataPath({
    name:
      "start root: a server whose control, PCP, UPnP HTTP or metrics port is taken exits with the reason and changes nothing in the kernel",
    ...SAN,
    fn: async (datapath) => {
      const t = await createTopology({ hosts: 1, peers: 1 });
      try {
        const gw = t.gateway;
        const socket = `${t.scratch}/server.sock`;
        await Deno.mkdir(t.scratch, { recursive: true, mode: 0o700 });
        const before = await snapshot(t, gw.ns, [gw.lanIf, gw.wanIf]);
        const server = (extra: string[]) =>
          t.exec(gw.ns, [
            ...dpmCommand(),
            "server",
            "--lan-if",
            gw.lanIf,
            "--wan-if",
            gw.wanIf,
            "--lan-addr",
            gw.lanText,
            "--pool",
            t.poolText,
            "--add-pool-addresses",
            "--socket",
            socket,
            "--datapath",
            datapath,
            ...extra,
          ], { timeoutMs: 30_000, env: DPM_ENV });
        const cases: [string, () => Promise<() => Promise<void>>, string[], RegExp][] = [
          [
            "control",
            () => hold(t, gw.ns, "udp", gw.lanText, 4750),
            [],
            /Control port .* is in use/,
          ],
          ["PCP", () => hold(t, gw.ns, "udp", gw.lanText, 5351), [], /PCP port .* is in use/],
          [
            "UPnP HTTP",
            () => hold(t, gw.ns, "tcp", gw.lanText, 5000),
            [],
            /UPnP HTTP port 10\.0\.0\.1:5000 is in use \(--upnp-port picks another/,
          ],
          [
            "metrics",
            () => hold(t, gw.ns, "tcp", "127.0.0.1", 9555),
            ["--metrics-addr", "127.0.0.1:9555"],
            /9555/,
          ],
        ];
        for (const [what, take, extra, reason] of cases) {
          const release = await take();
          try {
            const r = await server(extra);
            assert.notEqual(r.code, 0, `${what}: the start failed`);
            assert.match(r.stderr + r.stdout, reason, `${what}: the reason is given`);
          } finally {
            await release();
          }
          assert.equal(
            await snapshot(t, gw.ns, [gw.lanIf, gw.wanIf]),
            before,
            `${what}: the gateway is as it was`,
          );
          const journal = await Deno.stat(`${socket}.sysctls.json`).then(() => true, () => false);
          assert.equal(journal, false, `${what}: no sysctl journal is left`);
        }
        // And the same server starts once the port is free: the test can fail the other way.
        const ok = t.spawn(gw.ns, [
          ...dpmCommand(),
          "server",
          "--lan-if",
          gw.lanIf,
          "--wan-if",
          gw.wanIf,
          "--lan-addr",
          gw.lanText,
          "--pool",
          t.poolText,
          "--add-pool-addresses",
          "--socket",
          socket,
          "--datapath",
          datapath,
        ], { env: DPM_ENV });
        await ok.waitForOutput(/ready/, 30_000);
        assert.notEqual(
          await snapshot(t, gw.ns, [gw.lanIf, gw.wanIf]),
          before,
          "a server that started did change the gateway",
        );
        await ok.stop("SIGTERM", 5000);
      } finally {
        await t.destroy();
      }
    },
  })
) Deno.test(def);

for (
  const def of perDataPath({
    name:
      "start root: a driver whose metrics address is taken exits with the reason and changes nothing in the kernel",
    ...SAN,
    fn: async (datapath) => {
      const t = await createTopology({ hosts: 1, peers: 1 });
      try {
        const h1 = t.hosts[0]!;
        const dev = (await t.exec(h1.ns, ["ip", "-o", "link", "show"])).stdout
          .split("\n").map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1]).filter((x) => x && x !== "lo");
        await Deno.mkdir(t.scratch, { recursive: true, mode: 0o700 });
        const before = await snapshot(t, h1.ns, dev as string[]);
        const release = await hold(t, h1.ns, "tcp", "127.0.0.1", 9556);
        try {
          const r = await t.exec(h1.ns, [
            ...dpmCommand(),
            "driver",
            "--server",
            t.gateway.lanText,
            "--socket",
            `${t.scratch}/h1.sock`,
            "--datapath",
            datapath,
            "--metrics-addr",
            "127.0.0.1:9556",
          ], { timeoutMs: 30_000, env: DPM_ENV });
          assert.notEqual(r.code, 0, "the start failed");
          assert.match(r.stderr + r.stdout, /9556/, "the reason is given");
        } finally {
          await release();
        }
        assert.equal(await snapshot(t, h1.ns, dev as string[]), before, "the host is as it was");
      } finally {
        await t.destroy();
      }
    },
  })
) Deno.test(def);
