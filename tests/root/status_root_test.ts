/**
 * What an operator sees and does, as root, on both data paths: `dpm status`
 * shows bytes, age and idle per session; `--host` one host's sessions, its
 * quota use and its refusals; `--json` the whole table past 1000 sessions
 * (1,500 reserved in bulk over the control protocol, with its cookie
 * handshake); `--watch` sessions coming up, going down and refused as it
 * happens; `dpm drop` one session or a host's, out of the table and (kernel
 * path) out of the kernel's maps; `dpm status --driver` says whether the
 * server answers.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { Topology } from "../../testing/topology.ts";
import { denoScript, DPM_ENV, dpmCommand, withDpm } from "../../testing/launch.ts";
import { udpClient, udpEcho } from "../../testing/apps.ts";
import { waitFor } from "../../testing/wait.ts";
import { DATAPATHS, needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const BULK = fileURLToPath(new URL("../../testing/control_bulk.ts", import.meta.url));
const CLIENT = fileURLToPath(new URL("../../testing/control_client.ts", import.meta.url));

/** `dpm <args...> --socket <socket>` in the gateway's namespace. */
async function dpm(t: Topology, socket: string, ...args: string[]) {
  return await t.exec(t.gateway.ns, [...dpmCommand(), ...args, "--socket", socket], {
    timeoutMs: 30_000,
    env: DPM_ENV,
  });
}

for (const datapath of DATAPATHS) {
  Deno.test(needsRoot({
    name:
      `status root [${datapath}]: bytes per session, --host, --json past 1000 sessions, --watch, drop of one session and of a host's, the driver's view of the server`,
    ...SAN,
    fn: () =>
      withDpm({ datapath, driverHosts: ["h1", "h2"] }, async (t, d) => {
        const [h1, h2, h3] = t.hosts as [typeof t.hosts[0], typeof t.hosts[0], typeof t.hosts[0]];
        const p1 = t.peers[0]!;
        const echo = t.spawn(p1.ns, udpEcho(7000));
        await echo.waitForOutput(/listening/, 10_000);
        const dest = `${p1.addrText}:7000`;

        // A watcher on h1's events, from before anything happens.
        const watch = t.spawn(t.gateway.ns, [
          ...dpmCommand(),
          "status",
          "--watch",
          "--host",
          h1.addrText,
          "--socket",
          d.serverSocket,
        ], { env: DPM_ENV });
        await watch.waitForOutput(/watching host/, 20_000);

        // Traffic through dpm from h1 (fixed port 40100): bytes both ways.
        const r = await t.exec(h1.ns, udpClient(40100, [dest], { rounds: 5, intervalMs: 50 }));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(JSON.parse(r.stdout).replies.length, 5, r.stdout);
        const internal = `${h1.addrText}:40100`;
        await watch.waitForOutput(
          new RegExp(`\\[UP\\]\\s+udp ${internal.replaceAll(".", "\\.")} -> `),
          10_000,
        );
        // h2 holds a session too, which --host h1 must not show.
        assert.equal((await d.query("h2", "udp", `${h2.addrText}:40200`, dest, true)).result, "ok");

        const st = await d.status();
        const mine = st.shown.find((v) => v.internal === internal)!;
        assert.ok(mine, JSON.stringify(st.shown));
        assert.ok(Number(mine.bytesOut) >= 5 * 20, `bytes out ${mine.bytesOut}`);
        assert.ok(Number(mine.bytesIn) >= 5 * 20, `bytes in ${mine.bytesIn}`);
        assert.ok(Number(mine.packetsOut) >= 5 && Number(mine.packetsIn) >= 5);
        assert.equal(typeof mine.age, "number");
        assert.equal(typeof mine.idle, "number", "its counters were seen moving");

        // The text: bytes per session, one host's view.
        const text = await dpm(t, d.serverSocket, "status");
        assert.equal(text.code, 0, text.stderr);
        assert.match(
          text.stdout,
          /AGE\s+IDLE\s+EXPIRES\s+FLAGS\s+PKTS OUT\/IN\s+BYTES OUT\/IN\s+OWNER/,
        );
        const line = text.stdout.split("\n").find((l) => l.includes(internal))!;
        assert.match(line, /\d+\/\d+\s+\d+ B\/\d+ B\s+dpm$/, line);
        // A refusal of h1's: a remote inside the LAN (the server's BAD_REMOTE).
        const bad = await t.exec(h1.ns, [
          ...denoScript(CLIENT, ["10.0.0.1:4750", "reserve", "udp"]),
          `${h1.addrText}:40101`,
          "10.0.0.1:9",
        ]);
        assert.equal(JSON.parse(bad.stdout).result, "bad-remote", bad.stdout + bad.stderr);
        await watch.waitForOutput(/\[REFUSED\] 10\.0\.0\.11: reserve udp .*: bad-remote/, 10_000);
        const host = await dpm(t, d.serverSocket, "status", "--host", h1.addrText);
        assert.equal(host.code, 0, host.stderr);
        assert.match(
          host.stdout,
          /host 10\.0\.0\.11: \d+\/4096 sessions \(tcp 0, udp \d+, icmp 0\), paired with 203\.0\.113\.\d+/,
        );
        assert.match(
          host.stdout,
          /refused: bad-remote 1; last \d+s ago: reserve udp 10\.0\.0\.11:40101/,
        );
        assert.ok(host.stdout.includes(internal));
        assert.ok(!host.stdout.includes(`${h2.addrText}:40200`), "only h1's sessions");

        // 1,500 sessions of h3 (which runs no driver) over the control protocol.
        const bulk = await t.exec(h3.ns, [
          ...denoScript(BULK, ["10.0.0.1:4750", h3.addrText, "20000", "1500"]),
          `${t.peers[1]!.addrText}:9`,
        ], { timeoutMs: 60_000 });
        assert.equal(bulk.code, 0, bulk.stdout + bulk.stderr);
        assert.equal(JSON.parse(bulk.stdout).ok, 1500, bulk.stdout);
        const all = await d.status();
        assert.ok(all.sessions >= 1502, `${all.sessions} sessions`);
        assert.equal(all.shown.length, all.sessions, "--json lists the whole table");
        assert.equal(
          all.shown.filter((v) => String(v.internal).startsWith(`${h3.addrText}:`)).length,
          1500,
        );
        const capped = await dpm(t, d.serverSocket, "status");
        assert.match(capped.stdout, /\.\.\. \d+ more \(use --json\)/);

        // Drop one session: gone from the table (and the kernel's maps), seen by the watcher.
        const nftHas = async (what: string) =>
          (await t.exec(t.gateway.ns, ["nft", "list", "map", "ip", "dpm-server", "to_remote"]))
            .stdout.includes(what);
        if (datapath !== "queue") assert.ok(await nftHas(h1.addrText), "h1's session in the map");
        const drop1 = await dpm(t, d.serverSocket, "drop", "udp", internal, dest);
        assert.equal(drop1.code, 0, drop1.stderr);
        assert.match(drop1.stdout, /dropped 1 session\(s\)/);
        await watch.waitForOutput(/\[DOWN\]\s+udp 10\.0\.0\.11:40100 .* dropped after/, 10_000);
        assert.ok(!(await d.status()).shown.some((v) => v.internal === internal));
        if (datapath !== "queue") {
          assert.ok(!(await nftHas(`${h1.addrText} `)), "and from the map");
        }
        const again = await dpm(t, d.serverSocket, "drop", "udp", internal, dest);
        assert.equal(again.code, 1, "nothing left to drop");
        assert.match(again.stdout, /dropped 0 session/);

        // Drop a host's: all 1,500 of h3's.
        const dropH = await dpm(t, d.serverSocket, "drop", "--host", h3.addrText);
        assert.equal(dropH.code, 0, dropH.stderr);
        assert.match(dropH.stdout, /dropped 1500 session\(s\) \(host 10\.0\.0\.13\)/);
        const after = await d.status();
        assert.ok(!after.shown.some((v) => String(v.internal).startsWith(`${h3.addrText}:`)));
        if (datapath !== "queue") assert.ok(!(await nftHas(h3.addrText)), "h3 gone from the map");

        // The driver's view: the server answers.
        const drv = await t.exec(h1.ns, [
          ...dpmCommand(),
          "status",
          "--driver",
          "--socket",
          d.driverSocket("h1"),
        ], { env: DPM_ENV });
        assert.equal(drv.code, 0, drv.stderr);
        assert.match(drv.stdout, /server answering: last answer \d+s ago, last timeout never/);
        assert.match(drv.stdout, /control: sent \d+\s+retransmits \d+\s+timeouts 0/);

        // The watcher saw h1's session come and go, and nothing of h2's or h3's.
        await watch.stop("SIGINT", 2000);
        assert.doesNotMatch(watch.stdout(), /10\.0\.0\.1[23]:/);
        await echo.stop();
        await waitFor(async () => (await d.status()).sessions >= 1, {
          what: "status still answers",
        });
      }),
  }));
}
