/**
 * Session table benchmark: bytes per session, reserve/s, lookups/s from both
 * sides, and the cost of the expiry sweep, at 1k, 100k and 1M sessions.
 *
 * ```sh
 * deno run -A --v8-flags=--expose-gc bench/table_bench.ts [--json] [--quick]
 * ```
 *
 * `--quick` runs 1k and 10k only (CI smoke). `--json` prints one JSON object
 * on stdout instead of the table. Without `--expose-gc` the memory figures
 * include garbage and are marked unreliable.
 *
 * The workload: a /16 pool (100.64.0.0/16), one host per 500 sessions
 * (10.0.0.0/8), UDP and TCP, every fourth request for a fixed port (so some
 * share), the rest replaceable, remotes spread over 8.0.0.0/8 port 443, and
 * one session in ten with a 40 s lease (expired by the sweep measurement).
 *
 * @module
 */

import { SessionTable } from "../src/table/table.ts";

const args = new Set(Deno.args);
const json = args.has("--json");
const quick = args.has("--quick");
const sizes = quick ? [1_000, 10_000] : [1_000, 100_000, 1_000_000];
const gc = (globalThis as { gc?: () => void }).gc;

/** heapUsed + external (ArrayBuffers live in external) after a full GC. */
function memory(): number {
  if (gc) {
    gc();
    gc();
  }
  const m = Deno.memoryUsage();
  return m.heapUsed + m.external;
}

/** xorshift32, so that runs are repeatable and the RNG costs little. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** One row of the --json output (also read by bench/report.ts). */
export interface Row {
  sessions: number;
  bytesPerSession: number;
  marginalBytesPerSession: number;
  typedArrayBytesPerSession: number;
  reservePerSec: number;
  lookupPublicPerSec: number;
  lookupLanPerSec: number;
  sweepNoneExpiredMs: number;
  sweepTenthExpiredMs: number;
  sweepStep65536Ms: number;
  sweepStep4096AllExpiredMs: number;
  sweepStep4096Removed: number;
  releasePerSec: number | null;
}

function bench(n: number): Row {
  const rand = rng(0x9e3779b9 ^ n);
  const pool: number[] = [];
  for (let i = 0; i < 65536; i++) pool.push((0x64400000 + i) >>> 0);
  const hosts = Math.max(1, Math.ceil(n / 500));

  const before = memory();
  const t = new SessionTable({ pool, random: rand, maxSessionsPerHost: 4096 });
  const empty = memory(); // the fixed cost (pool, pool map, initial arrays) is before..empty
  const req = { proto: 17, a: 0, pa: 0, x: 0, px: 443, replaceable: true, lifetime: 0 };
  const t0 = performance.now();
  let refused = 0;
  let short = 0;
  for (let i = 0; i < n; i++) {
    req.proto = i & 1 ? 6 : 17;
    req.a = (0x0a000000 + (i % hosts)) >>> 0;
    const k = Math.floor(i / hosts);
    req.replaceable = (i & 3) !== 0;
    // Fixed ports come from a small set (5060, 500, 4500, 1194) so that they collide.
    req.pa = req.replaceable ? 32768 + (k % 28000) : [5060, 500, 4500, 1194][k & 3]!;
    req.x = (0x08000000 + Math.floor(rand() * 0xffffff)) >>> 0;
    req.lifetime = i % 10 === 0 ? 40 : 0;
    const g = t.reserve(req, 0);
    if (g.result !== 0) refused++;
  }
  const reserveMs = performance.now() - t0;
  const after = memory();
  const live = t.size;
  const typedBytes = t.bytes;
  for (let s = 0; s < live; s++) if (t.lifetime(s) === 40) short++; // slots are dense
  if (refused > 0 && !json) console.error(`  (${refused} of ${n} requests refused)`);

  // Lookup keys, sampled from live slots (slots are dense: nothing was released).
  const M = Math.min(2_000_000, Math.max(200_000, live * 4));
  const S = Math.min(live, 1 << 16);
  const kr = new Uint32Array(S);
  const kp = new Uint16Array(S);
  const kx = new Uint32Array(S);
  const kpx = new Uint16Array(S);
  const ka = new Uint32Array(S);
  const kpg = new Uint16Array(S);
  const kproto = new Uint8Array(S);
  for (let j = 0; j < S; j++) {
    const s = Math.floor(rand() * live);
    kr[j] = t.r(s);
    kp[j] = t.p(s);
    kx[j] = t.x(s);
    kpx[j] = t.px(s);
    ka[j] = t.a(s);
    kpg[j] = t.pg(s);
    kproto[j] = t.proto(s);
  }
  const mask = S - 1; // S is a power of two or equal to live (< 2^16)
  const pick = (j: number) => (S === 1 << 16 ? j & mask : j % S);

  let found = 0;
  let t1 = performance.now();
  for (let j = 0; j < M; j++) {
    const q = pick(j);
    if (t.lookupPublic(kproto[q]!, kr[q]!, kp[q]!, kx[q]!, kpx[q]!) >= 0) found++;
  }
  const pubMs = performance.now() - t1;
  t1 = performance.now();
  for (let j = 0; j < M; j++) {
    const q = pick(j);
    if (t.lookupLan(kproto[q]!, ka[q]!, kpg[q]!) >= 0) found++;
  }
  const lanMs = performance.now() - t1;
  if (found !== 2 * M) throw new Error(`lookups missed: ${2 * M - found}`);

  // Sweeps: nothing expired (the usual case), one budgeted step, then a tenth expired.
  t1 = performance.now();
  const none = t.expire(1_000);
  const sweepNone = performance.now() - t1;
  t1 = performance.now();
  t.expire(1_000, 65536);
  const step = performance.now() - t1;
  t1 = performance.now();
  const tenth = t.expire(50_000);
  const sweepTenth = performance.now() - t1;
  if (none !== 0 || tenth !== short) {
    throw new Error(`unexpected sweep counts ${none} ${tenth}`);
  }

  // Worst budgeted step: every scanned slot holds an expired session, so a
  // 4096-slot step removes up to 4096 (fewer where the 10% sweep emptied slots).
  t1 = performance.now();
  const worstRemoved = t.expire(Number.MAX_SAFE_INTEGER, 4096);
  const worstStep = performance.now() - t1;
  // Release half of what is left, through the identity index.
  const recs = [...t.entries()].map((r) => [r.proto, r.a, r.pa, r.x, r.px] as const);
  const half = recs.slice(Math.floor(recs.length / 2));
  t1 = performance.now();
  for (const [proto, a, pa, x, px] of half) t.release(proto, a, pa, x, px);
  const releaseMs = performance.now() - t1;
  if (t.size !== recs.length - half.length) throw new Error("release miscounted");

  t.expire(Number.MAX_SAFE_INTEGER);
  if (t.size !== 0) throw new Error("expiry left sessions behind");

  return {
    sessions: live,
    bytesPerSession: Math.round((after - before) / live),
    marginalBytesPerSession: Math.round((after - empty) / live),
    typedArrayBytesPerSession: Math.round(typedBytes / live),
    reservePerSec: Math.round(n / (reserveMs / 1000)),
    lookupPublicPerSec: Math.round(M / (pubMs / 1000)),
    lookupLanPerSec: Math.round(M / (lanMs / 1000)),
    sweepNoneExpiredMs: +sweepNone.toFixed(2),
    sweepTenthExpiredMs: +sweepTenth.toFixed(2),
    sweepStep65536Ms: +step.toFixed(3),
    sweepStep4096AllExpiredMs: +worstStep.toFixed(3),
    sweepStep4096Removed: worstRemoved,
    // null when the worst-step measurement already emptied a small table.
    releasePerSec: half.length > 0 ? Math.round(half.length / (releaseMs / 1000)) : null,
  };
}

const rows: Row[] = [];
for (const n of sizes) rows.push(bench(n));

if (json) {
  console.log(JSON.stringify({
    bench: "table",
    gc: gc !== undefined,
    deno: Deno.version.deno,
    rows,
  }));
} else {
  if (!gc) console.log("note: run with --v8-flags=--expose-gc for reliable memory figures");
  const cols: [keyof Row, string][] = [
    ["sessions", "sessions"],
    ["bytesPerSession", "B/session"],
    ["marginalBytesPerSession", "marginal B/s"],
    ["typedArrayBytesPerSession", "arrays B/s"],
    ["reservePerSec", "reserve/s"],
    ["lookupPublicPerSec", "lookupPublic/s"],
    ["lookupLanPerSec", "lookupLan/s"],
    ["sweepNoneExpiredMs", "sweep 0% ms"],
    ["sweepTenthExpiredMs", "sweep 10% ms"],
    ["sweepStep65536Ms", "step 64k ms"],
    ["sweepStep4096AllExpiredMs", "4k dead ms"],
    ["releasePerSec", "release/s"],
  ];
  console.log(cols.map(([, h]) => h.padStart(15)).join(""));
  for (const r of rows) console.log(cols.map(([k]) => String(r[k] ?? "-").padStart(15)).join(""));
}
