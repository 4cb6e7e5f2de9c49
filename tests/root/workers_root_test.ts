/**
 * `dpm server --workers 2` end to end, as root, on the kernel and bpf data paths:
 * three hosts with drivers (10.0.0.11 and 10.0.0.13 are worker 1's, 10.0.0.12
 * is worker 0's: the source address mod 2, what the control socket's
 * reuseport program computes) all get UDP and TCP sessions translated by
 * dpm through real namespaces; every public port comes from the slice of
 * the worker that owns its host (`src/table/slice.ts`); `dpm status`
 * shows every worker's sessions; after `nft flush ruleset` every worker's
 * sessions are back in the kernel's map; SIGTERM and a start with the same flags
 * keeps them all (each worker's state file) and they still translate; a
 * start with another worker count is refused with exit 2 and the reason.
 */

import assert from "node:assert/strict";
import { DPM_ENV, dpmCommand, lastJson, serveApp, startDpm } from "../../testing/launch.ts";
import { httpSeen, udpClient, udpEcho } from "../../testing/apps.ts";
import { createTopology } from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";
import { sliceOf, workerOf } from "../../src/table/slice.ts";
import { parseIPv4 } from "../../src/wire/addr.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const WORKERS = 2;
/** dpm's default --port-range. */
const RANGE = [1024, 65535] as const;

for (const datapath of ["kernel", "bpf"] as const) {
  Deno.test(needsRoot({
    name:
      `workers root [${datapath}]: --workers 2 shards three hosts, ports from each worker's slice, status merged, SIGTERM+start keeps every session`,
    ...SAN,
    fn: async () => {
      const t = await createTopology({ hosts: 3, peers: 2 });
      const state = `${t.scratch}/state.db`;
      try {
        const d = await startDpm(t, {
          datapath,
          driverHosts: ["h1", "h2", "h3"],
          serverArgs: [
            "--workers",
            String(WORKERS),
            "--state",
            state,
            "--metrics-addr",
            "10.0.0.1:9750",
          ],
        });
        try {
          const owners = t.hosts.map((h) => workerOf(h.addr, WORKERS));
          assert.deepEqual(owners, [1, 0, 1], "the hosts steer to both workers");
          const peer = t.peers[0]!;
          await serveApp(t, peer.ns, udpEcho(7000));
          await serveApp(t, t.peers[1]!.ns, httpSeen(8080));
          /** The public pair each host's UDP session has, as the peer saw it. */
          const seen = new Map<string, string>();
          const udpRound = async (label: string) => {
            for (const h of t.hosts) {
              const out = await lastJson(
                t,
                h.ns,
                udpClient(40000, [`${peer.addrText}:7000`], { rounds: 2 }),
              );
              assert.deepEqual(out.errors, [], `${label}: ${h.name} gets its replies`);
              assert.equal(out.replies.length, 2);
              const pub = out.replies[0].data.split("|")[0].replace("seen ", "");
              assert.match(pub, /^203\.0\.113\.1[0-3]:\d+$/, `${h.name}: translated by dpm`);
              const q = await d.query(
                h.name,
                "udp",
                `${h.addrText}:40000`,
                `${peer.addrText}:7000`,
              );
              assert.equal(q.public, pub, `${h.name}: dpm query names what the peer saw`);
              if (seen.has(h.name)) assert.equal(pub, seen.get(h.name), `${label}: same pair kept`);
              seen.set(h.name, pub);
            }
          };
          await udpRound("first");
          // Each session's packets, as its worker's path counts them (kernel: conntrack; bpf:
          // the session map's entries, which the worker wrote into the main thread's map).
          await waitFor(async () => {
            const rows = (await d.status()).shown.filter((r) => r.proto === "udp");
            return t.hosts.every((h) =>
              rows.some((r) =>
                r.internal === `${h.addrText}:40000` && Number(r.packetsOut) >= 2 &&
                Number(r.packetsIn) >= 2
              )
            );
          }, {
            what: "every host's UDP session counted both ways",
            timeoutMs: 10_000,
            intervalMs: 300,
          });
          for (const [i, h] of t.hosts.entries()) {
            const port = Number(seen.get(h.name)!.split(":")[1]);
            assert.equal(
              sliceOf(RANGE[0], RANGE[1], WORKERS, port),
              owners[i],
              `${h.name}'s public port ${port} lies in worker ${owners[i]}'s slice`,
            );
          }
          // 40000 is in worker 1's slice: its hosts keep it, worker 0's host gets a replacement.
          assert.ok(seen.get("h1")!.endsWith(":40000"));
          assert.ok(!seen.get("h2")!.endsWith(":40000"));
          // TCP through dpm from every host.
          for (const h of t.hosts) {
            const r = await t.exec(h.ns, [
              "curl",
              "-sS",
              "--max-time",
              "10",
              "--local-port",
              "45000",
              `http://${t.peers[1]!.addrText}:8080/`,
            ], { timeoutMs: 15_000 });
            assert.equal(r.code, 0, `${h.name}: ${r.stderr}`);
            const pub = r.stdout.replace("seen ", "");
            assert.match(pub, /^203\.0\.113\.1[0-3]:\d+$/);
            const owner = workerOf(h.addr, WORKERS);
            assert.equal(sliceOf(RANGE[0], RANGE[1], WORKERS, Number(pub.split(":")[1])), owner);
          }
          const st = await d.status();
          const internals = new Set(st.shown.map((s) => String(s.internal).split(":")[0]));
          for (const h of t.hosts) assert.ok(internals.has(h.addrText), `status lists ${h.name}`);
          assert.equal(st.sessions, 6, "status counts every worker's sessions (3 UDP, 3 TCP)");
          for (const s of st.shown) {
            const a = parseIPv4(String(s.internal).split(":")[0]!)!;
            const p = Number(String(s.public).split(":")[1]);
            assert.equal(sliceOf(RANGE[0], RANGE[1], WORKERS, p), workerOf(a, WORKERS));
          }
          // The metrics count every worker's sessions and answers (their totals, a second old at most).
          const metric = async (name: string) => {
            const r = await t.exec(t.gateway.ns, [
              "curl",
              "-sf",
              "--max-time",
              "5",
              "http://10.0.0.1:9750/metrics",
            ], { timeoutMs: 10_000 });
            const line = r.stdout.split("\n").find((l) => l.startsWith(`${name} `));
            return line ? Number(line.split(" ").pop()) : NaN;
          };
          await waitFor(async () => (await metric("dpm_table_sessions")) === 6, {
            what: "dpm_table_sessions 6, every worker's",
            timeoutMs: 10_000,
            intervalMs: 300,
          });
          // One host's view comes from its worker.
          const one = await t.exec(t.gateway.ns, [
            ...dpmCommand(),
            "status",
            "--json",
            "--host",
            t.hosts[0]!.addrText,
            "--socket",
            d.serverSocket,
          ], { env: DPM_ENV, timeoutMs: 20_000 });
          assert.equal(one.code, 0, one.stderr);
          const hv = JSON.parse(one.stdout);
          assert.equal(hv.shown.length, 2, "h1's two sessions");

          // ICMP echo through dpm from every host: the main thread's queue hands
          // a worker's session's packets to that worker's translator, both ways.
          for (const h of t.hosts) {
            const ping = await t.exec(h.ns, [
              "ping",
              "-n",
              "-c",
              "2",
              "-i",
              "0.2",
              "-W",
              "2",
              t.peers[1]!.addrText,
            ]);
            assert.equal(ping.code, 0, `${h.name}: ${ping.stdout}${ping.stderr}`);
            assert.match(ping.stdout, /2 received/);
          }
          // An ICMP error about a worker's session (TTL 2: the router reports it) reaches its host.
          for (const h of [t.hosts[0]!, t.hosts[1]!]) {
            const r = await t.exec(h.ns, [
              "ping",
              "-n",
              "-c",
              "1",
              "-t",
              "2",
              "-W",
              "3",
              t.peers[1]!.addrText,
            ]);
            assert.match(r.stdout, /Time to live exceeded/i, `${h.name}: ${r.stdout}`);
          }
          const icmp = (await d.status()).shown.filter((s) => s.proto === "icmp");
          assert.ok(icmp.length >= 3, `ICMP sessions of every host: ${JSON.stringify(icmp)}`);

          // A hairpin between two hosts of worker 1 whose first datagram goes
          // ahead of its grant: the main thread holds it, and must hand it to
          // worker 1 to be translated, not let it go to G untranslated.
          const [h1, h3] = [t.hosts[0]!, t.hosts[2]!];
          const p1 = `${peer.addrText}:7000`;
          const a0 = await d.query("h1", "udp", `${h1.addrText}:40100`, p1, true);
          const b0 = await d.query("h3", "udp", `${h3.addrText}:41100`, p1, true);
          assert.equal(a0.result, "ok");
          assert.equal(b0.result, "ok");
          // h3's pair accepts h1's public pair (as ICE would); h1 asks nothing before it sends.
          const back = await d.query("h3", "udp", `${h3.addrText}:41100`, String(a0.public), true);
          assert.equal(back.public, b0.public, "endpoint-independent mapping");
          await serveApp(t, h3.ns, udpEcho(41100));
          const hp = await lastJson(t, h1.ns, udpClient(40100, [String(b0.public)], { rounds: 2 }));
          assert.deepEqual(hp.errors, [], "the hairpin's first datagram was translated");
          assert.equal(hp.replies.length, 2);
          assert.equal(hp.replies[0].from, String(b0.public), "the reply comes from h3's pair");
          assert.equal(hp.replies[0].data.split("|")[0], `seen ${a0.public}`, "h3 saw h1's pair");
          const before = (await d.status()).sessions;

          // `nft flush ruleset`: the main thread's watchdog reinstalls the table
          // with its own sessions, and every worker programs its own again.
          const mapHosts = async () => {
            const r = await t.exec(t.gateway.ns, [
              "nft",
              "list",
              "map",
              "ip",
              "dpm-server",
              "to_public",
            ]);
            return t.hosts.filter((h) => r.stdout.includes(h.addrText)).map((h) => h.name);
          };
          assert.deepEqual(await mapHosts(), ["h1", "h2", "h3"]);
          const flush = await t.exec(t.gateway.ns, ["nft", "flush", "ruleset"]);
          assert.equal(flush.code, 0, flush.stderr);
          await waitFor(async () => (await mapHosts()).length === 3, {
            what: "every worker's sessions back in the reinstalled map",
            timeoutMs: 15_000,
            intervalMs: 200,
          });

          await d.restartServer("SIGTERM");
          assert.match(d.server.output(), /workers 1-1 restored [1-9]\d* and adopted/);
          const st2 = await d.status();
          assert.equal(
            st2.sessions,
            before,
            "every worker's sessions are back after SIGTERM and start",
          );
          await udpRound("after restart");
          // The counters went on across the restart: the kernel kept every worker's session
          // (on the bpf path, the entries the workers wrote stayed in the session map).
          await waitFor(async () => {
            const rows = (await d.status()).shown.filter((r) => r.proto === "udp");
            return t.hosts.every((h) =>
              rows.some((r) => r.internal === `${h.addrText}:40000` && Number(r.packetsOut) >= 4)
            );
          }, {
            what: "every host's UDP session counted before and after",
            timeoutMs: 10_000,
            intervalMs: 300,
          });

          // Another worker count: refused, with the reason, before anything changed.
          await d.server.stop("SIGTERM", 5000);
          // The gateway's server as the test started it, but for the socket and the count.
          const serverArgv = (socket: string, workers: number, addPool: boolean) => [
            ...dpmCommand(),
            "server",
            "--lan-if",
            t.gateway.lanIf,
            "--wan-if",
            t.gateway.wanIf,
            "--lan-addr",
            t.gateway.lanText,
            "--pool",
            t.poolText,
            ...(addPool ? ["--add-pool-addresses"] : []),
            "--datapath",
            datapath,
            "--socket",
            socket,
            "--state",
            state,
            "--workers",
            String(workers),
          ];
          const other = await t.exec(
            t.gateway.ns,
            serverArgv(`${t.scratch}/other.sock`, 3, false),
            { env: DPM_ENV, timeoutMs: 30_000 },
          );
          assert.equal(other.code, 2, other.stderr);
          assert.match(other.stderr, /was written by --workers 2, not 3/);
          d.server = t.spawn(t.gateway.ns, serverArgv(d.serverSocket, WORKERS, true), {
            env: DPM_ENV,
          });
          await d.server.waitForOutput(/ready/, 30_000);
          assert.equal((await d.status()).sessions, before, "the refused start changed nothing");
        } catch (e) {
          console.error(`--- server output:\n${d.server.output()}`);
          throw e;
        } finally {
          await d.stop();
          await d.cleanup();
        }
        assert.equal(await t.escaped(), 0);
      } finally {
        await t.destroy();
      }
    },
  }));
}
