/**
 * `--metrics-addr` on both roles, scraped for real over HTTP inside the
 * namespaces and checked by Prometheus's own `promtool check metrics`
 * (Debian package prometheus), as root.
 */

import assert from "node:assert/strict";
import { withDpm } from "../../testing/launch.ts";
import { DATAPATHS, needsRoot } from "../../testing/root.ts";
import type { Topology } from "../../testing/topology.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

async function scrape(t: Topology, ns: string, url: string): Promise<string> {
  const r = await t.exec(ns, ["curl", "-sf", "--max-time", "5", url], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, `curl ${url}: ${r.stderr}`);
  return r.stdout;
}

async function promtool(text: string): Promise<void> {
  const p = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const o = await p.output();
  const dec = new TextDecoder();
  assert.equal(
    o.code,
    0,
    `promtool check metrics: ${dec.decode(o.stdout)}${dec.decode(o.stderr)}`,
  );
}

function value(text: string, re: RegExp): number {
  const m = text.split("\n").find((l) => re.test(l));
  assert.ok(m, `a sample matching ${re}`);
  return Number(m.split(" ").pop());
}

for (const datapath of DATAPATHS) {
  Deno.test(needsRoot({
    name:
      `metrics root [${datapath}]: both roles serve Prometheus metrics that promtool accepts, with the sessions and refusals`,
    ...SAN,
    fn: () =>
      withDpm({
        hosts: 2,
        datapath,
        serverArgs: ["--metrics-addr", "10.0.0.1:9750", "--max-sessions-per-host", "1"],
        driverArgs: ["--metrics-addr", "127.0.0.1:9751"],
      }, async (t, d) => {
        const h1 = t.hosts[0]!;
        const q = await d.query("h1", "udp", `${h1.addrText}:40000`, "198.51.100.10:7000", true);
        assert.equal(q.result, "ok");
        const refused = await d.query(
          "h1",
          "udp",
          `${h1.addrText}:40001`,
          "198.51.100.10:7000",
          true,
        );
        assert.equal(refused.result, "quota-exceeded");
        // A NAT-PMP client without a driver asks for the public address (counted by result).
        const h2 = t.hosts[1]!;
        const pmp = await t.exec(h2.ns, ["natpmpc", "-g", t.gateway.lanText], {
          timeoutMs: 15_000,
        });
        assert.equal(pmp.code, 0, pmp.stdout + pmp.stderr);
        const srv = await scrape(t, t.gateway.ns, "http://10.0.0.1:9750/metrics");
        await promtool(srv);
        assert.equal(value(srv, /^dpm_table_sessions /), 1);
        assert.equal(value(srv, /^dpm_sessions\{proto="udp",kind="plain"\}/), 1);
        assert.equal(value(srv, /^dpm_control_results_total\{result="quota-exceeded"\}/), 1);
        assert.equal(value(srv, new RegExp(`^dpm_datapath_up\\{kind="${datapath}"\\}`)), 1);
        assert.ok(value(srv, /^dpm_request_duration_seconds_count /) >= 2);
        assert.ok(value(srv, /^dpm_pcp_results_total\{protocol="natpmp",result="success"\}/) >= 1);
        assert.equal(value(srv, /^dpm_pcp_results_total\{protocol="pcp",result="success"\}/), 0);
        const drv = await scrape(t, h1.ns, "http://127.0.0.1:9751/metrics");
        await promtool(drv);
        assert.equal(value(drv, /^dpm_driver_sessions\{state="active"\}/), 1);
        assert.equal(value(drv, /^dpm_driver_events_total\{event="refused"\}/), 1);
        // Anything but /metrics is a clear 404.
        const other = await t.exec(t.gateway.ns, [
          "curl",
          "-s",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          "http://10.0.0.1:9750/",
        ]);
        assert.equal(other.stdout, "404");
      }),
  }));
}
