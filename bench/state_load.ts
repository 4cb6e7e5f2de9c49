/**
 * Reservation load for the `--state` measurements and tests: like
 * bench/reserve_load.ts (one socket per source address, `--window` requests
 * outstanding, each a RESERVE of a new UDP session toward a random remote in
 * 8.0.0.0/8), and it echoes the server's cookie (COOKIE_REQUIRED is answered
 * by sending the request again with it). With `--out FILE` every granted
 * session is appended to FILE as one line `udp a:pa x:px r:p pg` the moment
 * its answer arrives, so a test that kills the server knows exactly which
 * grants were answered.
 *
 * ```sh
 * deno run -A bench/state_load.ts --server 10.0.0.1 --addrs 10.0.0.101,10.0.0.102 \
 *   --window 8 --seconds 5 [--count N] [--out granted.txt]
 * ```
 *
 * Prints one JSON line: `{ok, sent, timeouts, results, seconds, okPerSec}`.
 *
 * @module
 */

import dgram from "node:dgram";
import { formatIPv4, parseIPv4 } from "../src/wire/addr.ts";
import {
  decodeResponse,
  encodeRequest,
  hasCookie,
  newNonce,
  Op,
  type Request,
} from "../src/control/proto.ts";
import { Result, resultName } from "../src/control/result.ts";

const o = {
  server: "10.0.0.1",
  port: 4750,
  addrs: [] as string[],
  window: 8,
  seconds: 5,
  count: 0,
  out: "",
};
for (let i = 0; i < Deno.args.length; i += 2) {
  const k = Deno.args[i]!;
  const v = Deno.args[i + 1];
  if (v === undefined) throw new Error(`Missing value after ${k}`);
  if (k === "--server") o.server = v;
  else if (k === "--port") o.port = Number(v);
  else if (k === "--addrs") o.addrs = v.split(",").filter(Boolean);
  else if (k === "--window") o.window = Number(v);
  else if (k === "--seconds") o.seconds = Number(v);
  else if (k === "--count") o.count = Number(v);
  else if (k === "--out") o.out = v;
  else throw new Error(`Unknown flag ${k}`);
}
if (!o.addrs.length) throw new Error("--addrs is required");

const out = o.out ? Deno.openSync(o.out, { append: true, create: true }) : null;
const enc = new TextEncoder();
const results: Record<string, number> = {};
let ok = 0;
let sent = 0;
let timeouts = 0;
let done = false;
const t0 = performance.now();
const sockets: dgram.Socket[] = [];

await Promise.all(o.addrs.map((addr) =>
  new Promise<void>((ready) => {
    const a = parseIPv4(addr)!;
    const sock = dgram.createSocket("udp4");
    sockets.push(sock);
    let cookie: Uint8Array | undefined;
    let nextPort = 1024;
    /** Outstanding requests by nonce (hex). */
    const waiting = new Map<string, { req: Request; at: number }>();
    const key = (n: Uint8Array) => Array.from(n, (b) => b.toString(16).padStart(2, "0")).join("");
    const send = (req: Request) => {
      req.nonce = newNonce();
      if (cookie) req.cookie = cookie;
      waiting.set(key(req.nonce), { req, at: performance.now() });
      sent++;
      sock.send(encodeRequest(req), o.port, o.server);
    };
    const fresh = () => {
      if (done) return;
      if (nextPort > 65535) return;
      send({
        op: Op.RESERVE,
        nonce: new Uint8Array(8),
        proto: 17,
        replaceable: true,
        internalAddr: a,
        internalPort: nextPort++,
        remoteAddr: (8 << 24 | Math.floor(Math.random() * 0xffffff)) >>> 0,
        remotePort: 443,
        lifetime: 0,
      });
    };
    sock.on("message", (msg) => {
      const d = decodeResponse(new Uint8Array(msg));
      if (!d.ok) return;
      const w = waiting.get(key(d.res.nonce));
      if (!w) return;
      waiting.delete(key(d.res.nonce));
      if (hasCookie(d.res.cookie)) cookie = d.res.cookie;
      if (d.res.result === Result.COOKIE_REQUIRED && !done) return send(w.req);
      const name = resultName(d.res.result);
      results[name] = (results[name] ?? 0) + 1;
      if (d.res.result === Result.OK) {
        ok++;
        out?.writeSync(enc.encode(
          `udp ${addr}:${w.req.internalPort} ${formatIPv4(w.req.remoteAddr)}:${w.req.remotePort} ` +
            `${formatIPv4(d.res.publicAddr)}:${d.res.publicPort} ${d.res.gatewayPort}\n`,
        ));
        if (o.count && ok >= o.count) done = true;
      }
      fresh();
    });
    const timer = setInterval(() => {
      const now = performance.now();
      for (const [k, w] of waiting) {
        if (now - w.at < 1000) continue;
        waiting.delete(k);
        timeouts++;
        fresh();
      }
    }, 200);
    sock.bind(0, addr, () => {
      for (let i = 0; i < o.window; i++) fresh();
      ready();
    });
    sock.on("close", () => clearInterval(timer));
  })
));

while (!done && performance.now() - t0 < o.seconds * 1000) {
  await new Promise((r) => setTimeout(r, 20));
}
done = true;
const seconds = (performance.now() - t0) / 1000;
await new Promise((r) => setTimeout(r, 50));
for (const s of sockets) s.close();
out?.close();
console.log(JSON.stringify({
  ok,
  sent,
  timeouts,
  results,
  seconds: Number(seconds.toFixed(3)),
  okPerSec: Math.round(ok / seconds),
}));
