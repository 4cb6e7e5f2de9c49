/**
 * The honest host of the flood bench (bench/flood.ts): opens new sessions at
 * a modest, fixed rate while another host floods the control port, and
 * reports how long each reservation took and how many were answered at all.
 * Run inside the honest host's namespace:
 *
 * ```sh
 * deno run -A bench/flood_probe.ts --server 10.0.0.1 --addr 10.0.0.11 \
 *   --rate 200 --seconds 5 [--start <unix ms>] [--port 4750]
 * ```
 *
 * It first takes the server's cookie (the return-routability handshake of
 * docs/protocol.md, "Cookies"), then from `--start` sends one version-3
 * datagram holding one RESERVE for a new session (a fresh replaceable port,
 * a random remote in 8.0.0.0/8 port 443, the next gateway port of the
 * drivers' share proposed) every 1/rate s, as a driver with one new session
 * at a time would. Nothing is retransmitted, so that every lost request or
 * answer shows as unanswered instead of hiding in a retransmission's
 * latency; answers that come more than 2 s after the last request are not
 * waited for. Every latency is kept (none sampled).
 *
 * Prints one JSON line: `{sent, answered, ok, results, latencyMs: {p50, p99, max}}`.
 *
 * @module
 */

import { parseIPv4 } from "../src/wire/addr.ts";
import { fetchCookie } from "./cookie.ts";
import { Op } from "../src/control/proto.ts";
import {
  decodeAnswer,
  decodeAnswerHeader,
  ENTRY_LEN,
  HEADER_LEN,
  MAX_DATAGRAM,
  newAnswer,
  newEntry,
  writeEntry,
  writeRequestHeader,
} from "../src/control/batch.ts";
import { resultName } from "../src/control/result.ts";
import { driverShare } from "../src/control/pg.ts";
import { UdpSocket } from "../linux/udp.ts";

interface Options {
  server: number;
  port: number;
  addr: number;
  rate: number;
  seconds: number;
  start: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    server: parseIPv4("10.0.0.1")!,
    port: 4750,
    addr: 0,
    rate: 200,
    seconds: 5,
    start: Date.now() + 200,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[++i];
    if (v === undefined) throw new Error(`Missing value after ${k}`);
    const ip = () => {
      const a = parseIPv4(v);
      if (a === null) throw new Error(`Bad address ${v}`);
      return a;
    };
    if (k === "--server") o.server = ip();
    else if (k === "--addr") o.addr = ip();
    else if (k === "--port") o.port = Number(v);
    else if (k === "--rate") o.rate = Number(v);
    else if (k === "--seconds") o.seconds = Number(v);
    else if (k === "--start") o.start = Number(v);
    else throw new Error(`Unknown flag ${k}`);
  }
  if (o.addr === 0) throw new Error("--addr is required");
  if (!(o.rate > 0 && o.rate <= 10_000)) throw new Error(`--rate ${o.rate}: want 1-10000`);
  return o;
}

const opts = parseArgs(Deno.args);
const SHARE = driverShare([61000, 65535]);
/** How long answers are waited for after the last request. */
const DRAIN_MS = 2000;

const sock = UdpSocket.open({ addr: opts.addr, port: 0, maxDatagram: MAX_DATAGRAM + 64 });

const cookie = await fetchCookie(sock, opts.addr, opts.server, opts.port);
const total = Math.max(1, Math.round(opts.rate * opts.seconds));
const sentAt = new Float64Array(total).fill(-1);
const latencies: number[] = [];
const results = new Float64Array(16);
let sent = 0;
let answered = 0;
const entry = newEntry();
const out = new Uint8Array(HEADER_LEN + ENTRY_LEN);
const rnd = new Uint32Array(1);

function sendOne(): void {
  const i = sent++;
  entry.op = Op.RESERVE;
  entry.proto = 17;
  entry.replaceable = true;
  entry.nonceHi = 0x464c4f44; // "FLOD"
  entry.nonceLo = i;
  crypto.getRandomValues(rnd);
  entry.remoteAddr = (0x08000000 + (rnd[0]! & 0xffffff)) >>> 0;
  entry.internalPort = 1024 + (i % 60000);
  entry.remotePort = 443;
  const pg = SHARE[0] + i;
  entry.gatewayPort = pg <= SHARE[1] ? pg : 0;
  entry.lifetime = 0;
  writeEntry(out, 0, entry);
  writeRequestHeader(out, 0, i + 1, 1, opts.addr, cookie);
  sentAt[i] = performance.now();
  sock.queue(out, out.length, opts.server, opts.port);
  sock.flush();
}

const answer = newAnswer();
function receive(b: Uint8Array): void {
  const now = performance.now();
  const h = decodeAnswerHeader(b);
  if (!h.ok) return;
  for (let k = 0; k < h.count; k++) {
    if (decodeAnswer(b, k, answer) !== null || answer.nonceHi !== 0x464c4f44) continue;
    const i = answer.nonceLo;
    if (i >= sent || sentAt[i]! < 0) continue; // unknown or already answered
    latencies.push(now - sentAt[i]!);
    sentAt[i] = -1;
    answered++;
    results[answer.result]!++;
  }
}

let running = true;
const reader = (async () => {
  while (running) if (await sock.wait(50)) sock.receive(receive);
})();

const wait = opts.start - Date.now();
if (wait > 0) await new Promise((r) => setTimeout(r, wait));
// Sends on a schedule from the start (catching up after a late timer), not every timer tick.
const t0 = performance.now();
await new Promise<void>((done) => {
  const tick = setInterval(() => {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * opts.rate) / 1000) + 1);
    while (sent < due) sendOne();
    if (sent >= total) {
      clearInterval(tick);
      done();
    }
  }, Math.max(1, Math.floor(1000 / opts.rate)));
});
const deadline = performance.now() + DRAIN_MS;
while (answered < sent && performance.now() < deadline) {
  await new Promise((r) => setTimeout(r, 20));
}
running = false;
await reader;
sock.close();

latencies.sort((a, b) => a - b);
const pick = (p: number) =>
  latencies.length
    ? +latencies[Math.min(latencies.length - 1, Math.ceil(p * latencies.length) - 1)]!.toFixed(3)
    : null;
const byName: Record<string, number> = {};
results.forEach((n, i) => {
  if (n > 0) byName[resultName(i)] = n;
});
console.log(JSON.stringify({
  sent,
  answered,
  ok: byName["ok"] ?? 0,
  results: byName,
  latencyMs: { p50: pick(0.5), p99: pick(0.99), max: pick(1) },
}));
