/**
 * Load generator for the control plane: many requesters reserving sessions
 * from one `dpm server` at once, speaking the real protocol over UDP.
 * Run inside a host's namespace, one process per host:
 *
 * ```sh
 * deno run -A bench/reserve_load.ts --server 10.0.0.1 --addrs 10.0.0.101,10.0.0.102 \
 *   --window 90 --seconds 5 [--start <unix ms>] [--port 4750] [--count N] [--version 3|2]
 * ```
 *
 * One socket per source address (each address must be configured on the
 * host: the server only accepts a request whose internal address is its
 * source), each with `--window` requests outstanding: every answer sends
 * the next request at once, so the server is never idle waiting for a
 * requester. Version 3 (the default): requests travel up to 45 to a
 * datagram (`src/control/batch.ts`), what one wake-up's answers free goes
 * out together, read and written with `recvmmsg`/`sendmmsg`
 * (`linux/udp.ts`), as a driver does; version 2: one request per datagram,
 * the protocol's version-2 drivers speak. A request unanswered for 1 s is
 * counted as a timeout and replaced.
 *
 * Every request is a RESERVE for a new session (UDP and TCP alternately,
 * a replaceable port counting up from 1024 per address and protocol, a random
 * remote in 8.0.0.0/8 port 443): the table grows for the whole run. In
 * version 3 each request proposes its gateway port, counting up through the
 * drivers' share of the default `--gateway-ports` (`src/control/pg.ts`), as
 * a driver would. The server hands out at most ~4,500 gateway ports per host
 * and protocol, so a run of N reservations needs about N / 9,000 source
 * addresses.
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

import { parseIPv4 } from "../src/wire/addr.ts";
import { fetchCookie } from "./cookie.ts";
import { decodeResponse, encodeRequest, Op, REQUEST_LEN } from "../src/control/proto.ts";
import {
  decodeAnswer,
  decodeAnswerHeader,
  ENTRY_LEN,
  HEADER_LEN,
  MAX_DATAGRAM,
  MAX_ENTRIES,
  newAnswer,
  newEntry,
  writeEntry,
  writeRequestHeader,
} from "../src/control/batch.ts";
import { Result, resultName } from "../src/control/result.ts";
import { driverShare } from "../src/control/pg.ts";
import { UdpSocket } from "../linux/udp.ts";

interface Options {
  server: number;
  port: number;
  addrs: string[];
  window: number;
  seconds: number;
  start: number;
  /** Stop after this many OK answers (0: run for `seconds`). */
  count: number;
  version: 2 | 3;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    server: parseIPv4("10.0.0.1")!,
    port: 4750,
    addrs: [],
    window: 90,
    seconds: 5,
    start: Date.now() + 200,
    count: 0,
    version: 3,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[++i];
    if (v === undefined) throw new Error(`Missing value after ${k}`);
    if (k === "--server") {
      const a = parseIPv4(v);
      if (a === null) throw new Error(`Bad address ${v}`);
      o.server = a;
    } else if (k === "--port") o.port = Number(v);
    else if (k === "--addrs") o.addrs = v.split(",").filter(Boolean);
    else if (k === "--window") o.window = Number(v);
    else if (k === "--seconds") o.seconds = Number(v);
    else if (k === "--start") o.start = Number(v);
    else if (k === "--count") o.count = Number(v);
    else if (k === "--version") o.version = v === "2" ? 2 : 3;
    else throw new Error(`Unknown flag ${k}`);
  }
  if (o.addrs.length === 0) throw new Error("--addrs is required");
  for (const a of o.addrs) if (parseIPv4(a) === null) throw new Error(`Bad address ${a}`);
  return o;
}

const opts = parseArgs(Deno.args);
/** The drivers' share of the default --gateway-ports (61000-65535). */
const SHARE = driverShare([61000, 65535]);
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
  sock: UdpSocket;
  addr: number;
  nextPort: [number, number];
  /** The next gateway port to propose, per protocol (version 3). */
  nextPg: [number, number];
  sentAt: Float64Array;
  /** Per slot: its current request's sequence number (the nonce's low half). */
  seq: Uint32Array;
  /** Slots to send in this turn. */
  due: number[];
  /** The server's return-routability cookie for this address (learned by a handshake). */
  cookie: Uint8Array;
}

const rnd = new Uint32Array(1);
function randomRemote(): number {
  crypto.getRandomValues(rnd);
  return (0x08000000 + (rnd[0]! & 0xffffff)) >>> 0;
}

const entry = newEntry();
const out = new Uint8Array(MAX_DATAGRAM);
let dgramSeq = 1;

/** Sends the due slots of `r`: up to 45 to a datagram (version 3), or one each (version 2). */
function sendDue(r: Requester): void {
  if (!running || r.due.length === 0) return;
  const now = performance.now();
  let n = 0;
  const seal = () => {
    if (n === 0) return;
    writeRequestHeader(out, 0, dgramSeq++, n, r.addr, r.cookie);
    r.sock.queue(out, HEADER_LEN + n * ENTRY_LEN, opts.server, opts.port);
    n = 0;
  };
  for (const slot of r.due) {
    const seq = (r.seq[slot]! + 1) >>> 0;
    r.seq[slot] = seq;
    const which = seq & 1;
    const proto = which ? 6 : 17;
    const port = r.nextPort[which]!;
    r.nextPort[which] = port >= 65535 ? 1024 : port + 1;
    r.sentAt[slot] = now;
    sent++;
    if (opts.version === 2) {
      const nonce = new Uint8Array(8);
      const nv = new DataView(nonce.buffer);
      nv.setUint32(0, slot);
      nv.setUint32(4, seq);
      r.sock.queue(
        encodeRequest({
          op: Op.RESERVE,
          nonce,
          proto,
          replaceable: true,
          internalAddr: r.addr,
          internalPort: port,
          remoteAddr: randomRemote(),
          remotePort: 443,
          lifetime: 0,
          cookie: r.cookie,
        }),
        REQUEST_LEN,
        opts.server,
        opts.port,
      );
      continue;
    }
    entry.op = Op.RESERVE;
    entry.proto = proto;
    entry.replaceable = true;
    entry.nonceHi = slot;
    entry.nonceLo = seq;
    entry.remoteAddr = randomRemote();
    entry.internalPort = port;
    entry.remotePort = 443;
    const pg = r.nextPg[which]!;
    entry.gatewayPort = pg <= SHARE[1] ? pg : 0; // then the server's own share
    r.nextPg[which] = pg + 1;
    entry.lifetime = 0;
    writeEntry(out, n++, entry);
    if (n === MAX_ENTRIES) seal();
  }
  seal();
  r.due.length = 0;
  r.sock.flush();
}

const answer = newAnswer();

/** One answer: its slot is free again (a stale answer to a replaced request is ignored). */
function answered(r: Requester, slot: number, seq: number, result: number): void {
  if (slot >= opts.window || seq !== r.seq[slot]) return; // a late answer
  if (measuring) {
    answers++;
    results[result] = (results[result] ?? 0) + 1;
    if (result === Result.OK && ++ok >= opts.count && opts.count > 0) {
      measuring = false;
      running = false;
      finish();
      return;
    }
    if ((answers & (LATENCY_SAMPLE - 1)) === 0) {
      latencies.push(performance.now() - r.sentAt[slot]!);
    }
  }
  r.due.push(slot);
}

function receive(r: Requester, b: Uint8Array): void {
  if (b[2] === 2) {
    const d = decodeResponse(b);
    if (!d.ok) {
      bad++;
      return;
    }
    const nv = new DataView(d.res.nonce.buffer, d.res.nonce.byteOffset, 8);
    answered(r, nv.getUint32(0), nv.getUint32(4), d.res.result);
    return;
  }
  const h = decodeAnswerHeader(b);
  if (!h.ok) {
    bad++;
    return;
  }
  for (let i = 0; i < h.count; i++) {
    if (decodeAnswer(b, i, answer) !== null) {
      bad++;
      continue;
    }
    answered(r, answer.nonceHi, answer.nonceLo, answer.result);
  }
}

async function open(addr: string): Promise<Requester> {
  const a = parseIPv4(addr)!;
  const sock = UdpSocket.open({ addr: a, port: 0, maxDatagram: MAX_DATAGRAM + 64 });
  return {
    sock,
    addr: a,
    nextPort: [1024, 1024],
    nextPg: [SHARE[0], SHARE[0]],
    sentAt: new Float64Array(opts.window),
    seq: new Uint32Array(opts.window),
    due: [],
    cookie: await fetchCookie(sock, a, opts.server, opts.port, 20),
  };
}

/** Each requester's loop: wait, read every answer, send what they freed. */
async function loop(r: Requester): Promise<void> {
  while (running) {
    if (!(await r.sock.wait(100))) continue;
    r.sock.receive((b) => receive(r, b));
    sendDue(r);
  }
}

const reqs = await Promise.all(opts.addrs.map(open));
const wait = opts.start - Date.now();
if (wait > 0) await new Promise((r) => setTimeout(r, wait));
running = true;
measuring = true;
const t0 = performance.now();
for (const r of reqs) {
  for (let s = 0; s < opts.window; s++) r.due.push(s);
  sendDue(r);
}
const loops = reqs.map(loop);
const sweep = setInterval(() => {
  const now = performance.now();
  for (const r of reqs) {
    for (let s = 0; s < opts.window; s++) {
      if (now - r.sentAt[s]! > TIMEOUT_MS) {
        if (measuring) timeouts++;
        r.due.push(s);
      }
    }
    sendDue(r);
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
for (const r of reqs) r.sock.close();
await Promise.all(loops);

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
  version: opts.version,
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
