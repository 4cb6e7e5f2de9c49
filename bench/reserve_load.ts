/**
 * Load generator for the control plane: many requesters reserving sessions
 * from one `dpm server` at once, speaking the real protocol (src/proto.ts)
 * over UDP (node:dgram). Run inside a host's namespace, one process per host:
 *
 * ```sh
 * deno run -A bench/reserve_load.ts --server 10.0.0.1 --addrs 10.0.0.101,10.0.0.102 \
 *   --window 64 --seconds 5 [--start <unix ms>] [--port 4750] [--count N]
 * ```
 *
 * One socket per source address (each address must be configured on the
 * host: the server only accepts a request whose internal address is its
 * source), each with `--window` requests outstanding: every answer sends the
 * next request at once, so the server is never idle waiting for a requester.
 * A request unanswered for 1 s is counted as a timeout and replaced.
 *
 * Every request is a RESERVE for a new session (UDP and TCP alternately,
 * a replaceable port counting up from 1024 per address and protocol, a random
 * remote in 8.0.0.0/8 port 443): the table grows for the whole run. The server
 * hands out at most ~4,500 gateway ports per host and protocol, so a run of N
 * reservations needs about N / 9,000 source addresses.
 *
 * `--count N` stops as soon as N reservations were granted (or `--seconds`
 * ran out): bench/run.ts fills a server's table to a size this way.
 *
 * `--start` lets several processes begin at the same instant. Only answers
 * that arrive within [start, start + seconds) count. Prints one JSON line:
 * `{ok, answers, sent, timeouts, results, seconds, okPerSec, answersPerSec, latency}`.
 *
 * @module
 */

import dgram from "node:dgram";
import { formatIPv4, parseIPv4 } from "../src/wire/addr.ts";
import { decodeResponse, encodeRequest, hasCookie, Op, REQUEST_LEN } from "../src/control/proto.ts";
import { Result, resultName } from "../src/control/result.ts";

interface Options {
  server: string;
  port: number;
  addrs: string[];
  window: number;
  seconds: number;
  start: number;
  /** Stop after this many OK answers (0: run for `seconds`). */
  count: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    server: "10.0.0.1",
    port: 4750,
    addrs: [],
    window: 64,
    seconds: 5,
    start: Date.now() + 200,
    count: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[++i];
    if (v === undefined) throw new Error(`Missing value after ${k}`);
    if (k === "--server") o.server = v;
    else if (k === "--port") o.port = Number(v);
    else if (k === "--addrs") o.addrs = v.split(",").filter(Boolean);
    else if (k === "--window") o.window = Number(v);
    else if (k === "--seconds") o.seconds = Number(v);
    else if (k === "--start") o.start = Number(v);
    else if (k === "--count") o.count = Number(v);
    else throw new Error(`Unknown flag ${k}`);
  }
  if (o.addrs.length === 0) throw new Error("--addrs is required");
  for (const a of o.addrs) if (parseIPv4(a) === null) throw new Error(`Bad address ${a}`);
  return o;
}

const opts = parseArgs(Deno.args);
const TIMEOUT_MS = 1000;
const LATENCY_SAMPLE = 8; // keep one latency in 8

let sent = 0;
let answers = 0;
let ok = 0;
let timeouts = 0;
let bad = 0;
const results = new Float64Array(16);
const latencies: number[] = [];
let running = false;
let measuring = false;
let finish: () => void = () => {};
const finished = new Promise<void>((r) => finish = r);

interface Requester {
  sock: dgram.Socket;
  addr: number;
  nextPort: [number, number];
  sentAt: Float64Array;
  seq: Uint32Array;
  nonce: Uint8Array;
  /** The server's return-routability cookie for this address (learned by a handshake). */
  cookie: Uint8Array | undefined;
}

const rnd = new Uint32Array(1);
function randomRemote(): number {
  crypto.getRandomValues(rnd);
  return (0x08000000 + (rnd[0]! & 0xffffff)) >>> 0;
}

function send(r: Requester, slot: number): void {
  if (!running) return;
  const seq = (r.seq[slot]! + 1) >>> 0;
  r.seq[slot] = seq;
  const nv = new DataView(r.nonce.buffer);
  nv.setUint32(0, slot);
  nv.setUint32(4, seq);
  const which = seq & 1;
  const proto = which ? 6 : 17;
  const port = r.nextPort[which]!;
  r.nextPort[which] = port >= 65535 ? 1024 : port + 1;
  const msg = encodeRequest({
    op: Op.RESERVE,
    nonce: r.nonce,
    proto,
    replaceable: true,
    internalAddr: r.addr,
    internalPort: port,
    remoteAddr: randomRemote(),
    remotePort: 443,
    lifetime: 0,
    ...(r.cookie ? { cookie: r.cookie } : {}),
  }, new Uint8Array(REQUEST_LEN));
  r.sentAt[slot] = performance.now();
  sent++;
  r.sock.send(msg, opts.port, opts.server);
}

const cookies = new Map<string, Uint8Array>();

async function handshake(sock: dgram.Socket, addr: number): Promise<Uint8Array> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const got = new Promise<Uint8Array | null>((resolve) => {
      const t = setTimeout(() => resolve(null), 250);
      sock.once("message", (msg: Uint8Array) => {
        clearTimeout(t);
        const d = decodeResponse(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
        resolve(d.ok && hasCookie(d.res.cookie) ? d.res.cookie : null);
      });
    });
    sock.send(
      encodeRequest({
        op: Op.RENEW,
        nonce: crypto.getRandomValues(new Uint8Array(8)),
        proto: 17,
        replaceable: true,
        internalAddr: addr,
        internalPort: 1,
        remoteAddr: 0x08080808,
        remotePort: 1,
        lifetime: 0,
      }),
      opts.port,
      opts.server,
    );
    const c = await got;
    if (c) return c;
  }
  throw new Error(`no cookie from ${opts.server}:${opts.port} for ${formatIPv4(addr)}`);
}

async function open(addr: string): Promise<Requester> {
  const sock = dgram.createSocket("udp4");
  await new Promise<void>((resolve, reject) => {
    sock.once("error", reject);
    sock.bind(0, addr, () => resolve());
  });
  const r: Requester = {
    sock,
    addr: parseIPv4(addr)!,
    nextPort: [1024, 1024],
    sentAt: new Float64Array(opts.window),
    seq: new Uint32Array(opts.window),
    nonce: new Uint8Array(8),
    cookie: cookies.get(addr),
  };
  if (!r.cookie) {
    // The return-routability handshake (docs/protocol.md, "Cookies"): one
    // request without a cookie is answered COOKIE_REQUIRED with the cookie
    // that every later request of this address echoes.
    r.cookie = await handshake(sock, parseIPv4(addr)!);
    cookies.set(addr, r.cookie);
  }
  sock.on("error", () => {
    // A lost send shows up as a timeout of its slot.
  });
  sock.on("message", (msg: Uint8Array) => {
    const d = decodeResponse(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    if (!d.ok) {
      bad++;
      return;
    }
    const nv = new DataView(d.res.nonce.buffer, d.res.nonce.byteOffset, 8);
    const slot = nv.getUint32(0);
    if (slot >= opts.window || nv.getUint32(4) !== r.seq[slot]) return; // a late answer
    if (measuring) {
      answers++;
      results[d.res.result] = (results[d.res.result] ?? 0) + 1;
      if (d.res.result === Result.OK && ++ok >= opts.count && opts.count > 0) {
        measuring = false;
        running = false;
        finish();
        return;
      }
      if ((answers & (LATENCY_SAMPLE - 1)) === 0) {
        latencies.push(performance.now() - r.sentAt[slot]!);
      }
    }
    send(r, slot);
  });
  return r;
}

const reqs = await Promise.all(opts.addrs.map(open));
const wait = opts.start - Date.now();
if (wait > 0) await new Promise((r) => setTimeout(r, wait));
running = true;
measuring = true;
const t0 = performance.now();
for (const r of reqs) for (let s = 0; s < opts.window; s++) send(r, s);
const sweep = setInterval(() => {
  const now = performance.now();
  for (const r of reqs) {
    for (let s = 0; s < opts.window; s++) {
      if (now - r.sentAt[s]! > TIMEOUT_MS) {
        if (measuring) timeouts++;
        send(r, s);
      }
    }
  }
}, 100);
let timer: ReturnType<typeof setTimeout> | undefined;
await Promise.race([
  finished,
  new Promise((r) => timer = setTimeout(r, opts.seconds * 1000)),
]);
clearTimeout(timer);
measuring = false;
running = false;
const elapsed = (performance.now() - t0) / 1000;
clearInterval(sweep);
await new Promise((r) => setTimeout(r, 100));
for (const r of reqs) r.sock.close();

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
  addrs: opts.addrs.length,
  window: opts.window,
  seconds: +elapsed.toFixed(3),
  sent,
  answers,
  ok,
  timeouts,
  badAnswers: bad,
  results: byName,
  okPerSec: Math.round(ok / elapsed),
  answersPerSec: Math.round(answers / elapsed),
  latencyMs: { p50: pick(0.5), p99: pick(0.99) },
}));
