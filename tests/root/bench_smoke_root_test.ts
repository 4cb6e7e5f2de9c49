/**
 * The benchmark runs end to end in its smoke size (about a minute): every
 * section is present with sane figures for MASQUERADE and each dpm data
 * path (queue, kernel, bpf), the reservation load ran against a server of
 * each data path, the memory section filled each and measured conntrack,
 * the bursts of new sessions (UDP, TCP connects) and the driver's bytes per
 * session are reported for each data path (in the JSON and as rows of
 * latest.md), the outputs are written, and no namespace is left behind. No
 * timing threshold is asserted: this machine's numbers are not CI's; the
 * bursts' untranslated and unanswered counts must be 0 (that is
 * correctness, not timing).
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { NS_PREFIX } from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";

const RUN = fileURLToPath(new URL("../../bench/run.ts", import.meta.url));

function positive(v: unknown, what: string): void {
  assert.ok(typeof v === "number" && Number.isFinite(v) && v > 0, `${what} = ${v}, want > 0`);
}

function finite(v: unknown, what: string): void {
  assert.ok(typeof v === "number" && Number.isFinite(v), `${what} = ${v}, want a number`);
}

/** The cells of the latest.md row whose first cell starts with `start`, or a failed assertion. */
function mdRow(md: string, start: string): string[] {
  const line = md.split("\n").find((l) => l.startsWith(`| ${start}`));
  assert.ok(line, `latest.md has no row "${start}..."`);
  return line.split("|").slice(1, -1).map((c) => c.trim());
}

/** "12.3 / 4 / 5,678" -> [12.3, 4, 5678]; fails unless every part is a number. */
function numbers(cell: string | undefined, n: number, what: string): number[] {
  const v = (cell ?? "").split(" / ").map((x) => x.replaceAll(",", "").trim());
  assert.equal(v.length, n, `${what}: "${cell}" should hold ${n} figure(s)`);
  for (const x of v) assert.match(x, /^-?\d+(\.\d+)?$/, `${what}: "${cell}" is not numbers`);
  return v.map(Number);
}

/** The namespaces whose names start with `prefix` (the bench's topology's). */
function namespacesOf(prefix: string): string[] {
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync("/run/netns")].map((e) => e.name);
  } catch {
    return [];
  }
  return names.filter((n) => n.startsWith(prefix));
}

Deno.test(needsRoot({
  name:
    "bench smoke root: run.ts --smoke --json measures every data path beside MASQUERADE in every section and leaves nothing behind",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
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

      for (const mode of ["masquerade", "queue", "kernel", "bpf"]) {
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
        // iperf3 3.x reports its CPU use in every JSON run.
        positive(m.cpu.senderUsPerPacket, `${mode} sender's CPU per packet`);
        positive(m.sessions.firstP50Us, `${mode} first-packet RTT p50`);
        positive(m.sessions.firstP99Us, `${mode} first-packet RTT p99`);
        positive(m.sessions.secondP50Us, `${mode} second-packet RTT p50`);
        finite(m.sessions.setupP50Us, `${mode} setup p50`);

        const bursts = [...m.bursts, m.tcpBurst];
        const sizes = [...r.config.bursts, r.config.tcpBurst];
        assert.equal(bursts.length, sizes.length, `dataPlane.${mode} bursts`);
        for (const [i, b] of bursts.entries()) {
          assert.ok(b, `dataPlane.${mode} burst ${i} missing`);
          assert.equal(b.sessions, sizes[i], `${mode} burst sessions`);
          assert.equal(b.rounds, r.config.rounds, `${mode} burst rounds`);
          positive(b.firstP50Us, `${mode} burst first reply p50`);
          positive(b.firstP99Us, `${mode} burst first reply p99`);
          positive(b.firstMaxUs, `${mode} burst first reply max`);
          assert.ok(
            b.firstP50Us <= b.firstP99Us && b.firstP99Us <= b.firstMaxUs,
            `${mode} burst order`,
          );
          finite(b.unanswered, `${mode} burst unanswered`);
          finite(b.resent, `${mode} burst first packets lost`);
          assert.equal(b.runs.length, r.config.rounds, `${mode} burst runs`);
          for (const run of b.runs) assert.equal(run.sessions, sizes[i]);
          if (mode === "masquerade") {
            assert.equal(b.untranslated, null, "MASQUERADE untranslated is n/a");
          } else {
            assert.equal(
              b.untranslated,
              0,
              `${mode} path: ${b.untranslated} burst sessions untranslated: ${
                JSON.stringify(b.runs.map((x: { examples: string[] }) => x.examples))
              }`,
            );
            assert.equal(b.unanswered, 0, `${mode} burst unanswered`);
          }
        }
      }
      for (const dp of ["queue", "kernel", "bpf"]) {
        const dm = r.driverMemory?.[dp];
        assert.ok(dm, `driverMemory.${dp} missing`);
        assert.equal(dm.datapath, dp);
        assert.equal(dm.sessions, r.config.driverMemorySessions, `${dp} driver memory sessions`);
        assert.equal(dm.active, dm.sessions, `${dp} driver memory: every session reserved`);
        positive(dm.driverBytesPerSession, `${dp} driver bytes/session settled`);
        positive(dm.inFlightBytesPerSession, `${dp} driver bytes/session in flight`);
      }
      assert.equal(r.dataPlane.masquerade.cpu.dpmUsPerPacket, null);
      // The queue path's processes handle every packet; the kernel path's
      // may not be scheduled at all during a flood (0 is sane there).
      positive(r.dataPlane.queue.cpu.dpmUsPerPacket, "queue path dpm CPU per packet");
      positive(r.dataPlane.queue.cpu.serverUsPerPacket, "queue path server CPU per packet");
      positive(r.dataPlane.queue.cpu.driverUsPerPacket, "queue path driver CPU per packet");
      for (const dp of ["kernel", "bpf"]) {
        for (const f of ["dpmUsPerPacket", "serverUsPerPacket", "driverUsPerPacket"]) {
          const v = r.dataPlane[dp].cpu[f];
          assert.ok(Number.isFinite(v) && v >= 0, `${dp} path ${f} = ${v}`);
        }
      }

      for (const dp of ["queue", "kernel", "bpf"]) {
        const rv = r.reservations[dp];
        assert.equal(rv.datapath, dp);
        positive(rv.perSec, `${dp} reservations/s`);
        positive(rv.ok, `${dp} reservations OK`);
        assert.deepEqual(rv.serverFlags, [
          "--rate-limit",
          "1000000",
          "--max-sessions-per-host",
          "1048576",
        ]);
        // The flood row: the honest host alone is answered in full, and beside the flood
        // every answer it got was a grant (the forged flood refused nothing of its own).
        const fl = r.flood[dp];
        assert.equal(fl.datapath, dp);
        assert.equal(fl.source, "forged");
        positive(fl.quiet.sent, `${dp} flood row: honest requests sent alone`);
        assert.equal(fl.quiet.answered, fl.quiet.sent, `${dp} alone: every request answered`);
        assert.equal(fl.quiet.ok, fl.quiet.sent, `${dp} alone: every request granted`);
        positive(fl.flooded.answered, `${dp} flooded: honest answers`);
        assert.equal(fl.flooded.ok, fl.flooded.answered, `${dp} flooded: every answer a grant`);
        positive(fl.floodPerSec, `${dp} flood datagrams/s`);
        positive(fl.server?.results?.["cookie-required"], `${dp} flood refused for its cookie`);
        finite(fl.flooded.latencyMs.p99, `${dp} flooded p99`);
        const points = r.memory[dp];
        assert.equal(points.length, r.config.memorySessions.length, `${dp} memory points`);
        for (const p of points) {
          assert.equal(p.datapath, dp);
          assert.ok(p.sessions >= 0.9 * r.config.memorySessions[points.indexOf(p)], `${dp} filled`);
          finite(p.dpmBytesPerSession, `${dp} dpm bytes/session`);
          finite(p.kernelBytesPerSession, `${dp} kernel bytes/session`);
          finite(p.totalBytesPerSession, `${dp} total bytes/session`);
          positive(p.fillPerSec, `${dp} fill rate`);
        }
      }
      // Two map elements per session: the kernel grows on the kernel path, and more on the
      // bpf path (two BPF map entries too, and its hash buckets allocated at start).
      positive(r.memory.kernel.at(-1).kernel.slabBytes, "kernel path slab growth");
      positive(r.memory.bpf.at(-1).kernel.slabBytes, "bpf path slab growth");
      positive(r.memory.bpf.at(-1).preallocBytes, "bpf path map buckets");
      assert.equal(r.memory.kernel.at(-1).preallocBytes, 0);
      assert.ok(r.memory.conntrack.length >= 1, "conntrack memory points");
      for (const c of r.memory.conntrack) {
        positive(c.entries, "conntracks made");
        positive(c.bytesPerEntry, "bytes per conntrack");
      }

      assert.ok(r.table.rows.length >= 2, "table bench rows");
      for (const row of r.table.rows) {
        positive(row.bytesPerSession, `table bytes/session at ${row.sessions}`);
        positive(row.lookupPublicPerSec, `table lookupPublic/s at ${row.sessions}`);
        positive(row.lookupLanPerSec, `table lookupLan/s at ${row.sessions}`);
        assert.ok(row.sweepNoneExpiredMs >= 0, `table sweep at ${row.sessions}`);
      }

      // Reservations/s with 1 and 2 workers (--workers), bpf and kernel paths, in the same run.
      assert.deepEqual(
        r.reservationsByWorkers.map((w: { workers: number; result: { datapath: string } }) =>
          `${w.result.datapath} ${w.workers}`
        ).sort(),
        ["bpf 1", "bpf 2", "kernel 1", "kernel 2"],
      );
      for (const w of r.reservationsByWorkers) {
        positive(w.result.perSec, `${w.result.datapath} ${w.workers} worker(s) reservations/s`);
      }
      assert.equal(r.targets.length, 20 + r.config.bursts.length, "targets");
      for (
        const name of [
          "bpf path UDP 64 B",
          "bpf path TCP",
          "Kernel path UDP 64 B",
          "bpf path: an honest host's reservations beside a flood",
          "kernel path: an honest host's reservations beside a flood",
          "bpf path reservations per second grow with workers",
          "kernel path reservations per second grow with workers",
        ]
      ) {
        assert.ok(r.targets.some((t: { name: string }) => t.name.startsWith(name)), name);
      }
      const burstTargets = r.targets.filter((t: { name: string }) => t.name.startsWith("Burst of"));
      assert.equal(burstTargets.length, r.config.bursts.length + 1, "a target per burst");
      for (const t of burstTargets) assert.equal(t.target, "<= 3x; 0; 0");
      for (const t of r.targets) assert.ok(t.met === true || t.met === false || t.met === null);

      for (const f of ["latest.json", "latest.md", "pps_by_size.svg", "latency.svg"]) {
        const text = await Deno.readTextFile(`${out}/${f}`);
        assert.ok(text.length > 100, `${f} is empty`);
      }
      assert.match(await Deno.readTextFile(`${out}/pps_by_size.svg`), /^<svg [^>]*xmlns=/);
      const md = await Deno.readTextFile(`${out}/latest.md`);
      assert.match(md, /\| measure \| dpm bpf \| dpm kernel \| dpm queue \| MASQUERADE \|/);
      // Columns: measure, dpm bpf, dpm kernel, dpm queue, MASQUERADE, ...
      const cols = [[1, "bpf"], [2, "kernel"], [3, "queue"]] as const;
      const bursts = [
        ...r.config.bursts.map((n: number) => `${n.toLocaleString("en-US")} new UDP`),
        `${r.config.tcpBurst.toLocaleString("en-US")} new TCP`,
      ];
      for (const what of bursts) {
        const burstRow = mdRow(md, `Burst of ${what} sessions at once from one host`);
        for (const [i, mode] of [...cols, [4, "MASQUERADE"]] as const) {
          numbers(burstRow[i], 3, `burst row ${what}, ${mode}`);
        }
        const lost = mdRow(md, `Burst of ${what} sessions at once: first packets lost`);
        for (const [i, dp] of cols) {
          const [, unanswered, untranslated] = numbers(lost[i], 3, `${what} lost, ${dp}`);
          assert.deepEqual([unanswered, untranslated], [0, 0], `${what}, ${dp}`);
        }
        assert.match(lost[4]!, / \/ n\/a$/, `${what} untranslated, MASQUERADE`);
      }
      const drv = mdRow(md, "Driver bytes/session (settled / in flight)");
      for (const [i, dp] of cols) {
        assert.deepEqual(numbers(drv[i], 2, `driver bytes row, ${dp}`), [
          r.driverMemory[dp].driverBytesPerSession,
          r.driverMemory[dp].inFlightBytesPerSession,
        ]);
      }

      for (const start of ["Honest host's reservations alone", "... beside a flood from h2"]) {
        const fr = mdRow(md, start);
        for (const [i, dp] of cols) {
          assert.match(
            fr[i]!,
            /^[\d.]+ \/ [\d.]+ \/ [\d.]+ \([\d,]+ of [\d,]+\)$/,
            `${start}, ${dp}`,
          );
        }
      }

      // Its own namespaces only: other runs may build theirs meanwhile.
      const prefix = String(r.config.namespacePrefix);
      assert.match(prefix, new RegExp(`^${NS_PREFIX}`), "the bench names its namespaces' prefix");
      assert.deepEqual(namespacesOf(prefix), [], "the bench left namespaces behind");
    } finally {
      await Deno.remove(out, { recursive: true }).catch(() => {});
    }
  },
}));
