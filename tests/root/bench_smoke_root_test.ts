/**
 * The benchmark runs end to end in its smoke size (about 15-60 s): every
 * section is present with positive figures for dpm and for the kernel's NAT,
 * the outputs are written, and no namespace is left behind. No timing
 * threshold is asserted: this machine's numbers are not CI's.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { NS_PREFIX } from "../../testing/topology.ts";

const RUN = fileURLToPath(new URL("../../bench/run.ts", import.meta.url));

function positive(v: unknown, what: string): void {
  assert.ok(typeof v === "number" && Number.isFinite(v) && v > 0, `${what} = ${v}, want > 0`);
}

function ourNamespaces(prefixes: Set<string>): string[] {
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync("/run/netns")].map((e) => e.name);
  } catch {
    return [];
  }
  return names.filter((n) => n.startsWith(NS_PREFIX) && !prefixes.has(n));
}

Deno.test({
  name:
    "bench smoke root: run.ts --smoke --json measures dpm beside MASQUERADE in every section and leaves nothing behind",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    // Namespaces of other live runs (parallel tests) are not ours to judge.
    const before = new Set(ourNamespaces(new Set()));
    const out = await Deno.makeTempDir({ prefix: "dpm-bench-smoke-" });
    try {
      const p = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", RUN, "--smoke", "--json", "--out", out],
        stdout: "piped",
        stderr: "piped",
        env: { DENO_NO_UPDATE_CHECK: "1" },
      }).output();
      const stderr = new TextDecoder().decode(p.stderr);
      assert.equal(p.code, 0, `bench/run.ts failed:\n${stderr}`);
      const r = JSON.parse(new TextDecoder().decode(p.stdout).trim().split("\n").pop()!);

      assert.equal(r.bench, "dpm");
      assert.equal(r.smoke, true);
      for (const k of ["date", "kernel", "cpu", "deno"]) assert.ok(r.env[k], `env.${k} missing`);

      for (const mode of ["dpm", "kernel"]) {
        const m = r.dataPlane[mode];
        assert.ok(m, `dataPlane.${mode} missing`);
        assert.deepEqual(m.udp.map((u: { size: number }) => u.size), [64, 512, 1400]);
        for (const u of m.udp) {
          positive(u.pps, `${mode} UDP ${u.size} B pps`);
          positive(u.sentPps, `${mode} UDP ${u.size} B sent pps`);
        }
        positive(m.tcp.mbps, `${mode} TCP Mbit/s`);
        positive(m.rtt.p50Us, `${mode} RTT p50`);
        positive(m.rtt.p99Us, `${mode} RTT p99`);
        positive(m.cpu.machineUsPerPacket, `${mode} machine CPU per packet`);
        positive(m.sessions.firstP50Us, `${mode} first-packet RTT p50`);
        positive(m.sessions.firstP99Us, `${mode} first-packet RTT p99`);
        positive(m.sessions.secondP50Us, `${mode} second-packet RTT p50`);
      }
      positive(r.dataPlane.dpm.cpu.dpmUsPerPacket, "dpm CPU per packet");
      positive(r.dataPlane.dpm.cpu.serverUsPerPacket, "dpm server CPU per packet");
      positive(r.dataPlane.dpm.cpu.driverUsPerPacket, "dpm driver CPU per packet");

      positive(r.reservations.perSec, "reservations/s");
      positive(r.reservations.ok, "reservations OK");
      assert.deepEqual(r.reservations.serverFlags, [
        "--rate-limit",
        "1000000",
        "--max-sessions-per-host",
        "1048576",
      ]);

      assert.ok(r.table.rows.length >= 2, "table bench rows");
      for (const row of r.table.rows) {
        positive(row.bytesPerSession, `table bytes/session at ${row.sessions}`);
        positive(row.lookupPublicPerSec, `table lookupPublic/s at ${row.sessions}`);
        positive(row.lookupLanPerSec, `table lookupLan/s at ${row.sessions}`);
        assert.ok(row.sweepNoneExpiredMs >= 0, `table sweep at ${row.sessions}`);
      }

      assert.equal(r.targets.length, 5);
      for (const t of r.targets) assert.ok(t.met === true || t.met === false || t.met === null);

      for (const f of ["latest.json", "latest.md", "pps_by_size.svg", "latency.svg"]) {
        const text = await Deno.readTextFile(`${out}/${f}`);
        assert.ok(text.length > 100, `${f} is empty`);
      }
      assert.match(await Deno.readTextFile(`${out}/pps_by_size.svg`), /^<svg [^>]*xmlns=/);
      assert.match(await Deno.readTextFile(`${out}/latest.md`), /\| measure \| dpm \| kernel/);

      assert.deepEqual(ourNamespaces(before), [], "the bench left namespaces behind");
    } finally {
      await Deno.remove(out, { recursive: true }).catch(() => {});
    }
  },
});
