/**
 * The flood of bench/flood.ts by a host in its own name, holding its
 * cookie: the requests pass the cookie check and meet the host's rate limit
 * (`--rate-limit`), which a raw-socket forger's never reach. Run inside the
 * flooding host's namespace:
 *
 * ```sh
 * deno run -A bench/flood_sender.ts --server 10.0.0.1 --addr 10.0.0.12 --seconds 5 [--start <unix ms>]
 * ```
 *
 * Takes the server's cookie (docs/protocol.md, "Cookies"), then from
 * `--start` sends version-2 RESERVEs carrying it, 64 per `sendmmsg`, as fast
 * as it can for `--seconds`, never reading an answer. Prints "sent N SECONDS".
 *
 * @module
 */

import { parseIPv4 } from "../src/wire/addr.ts";
import { encodeRequest, Op, REQUEST_LEN } from "../src/control/proto.ts";
import { UdpSocket } from "../linux/udp.ts";
import { fetchCookie } from "./cookie.ts";

const o = { server: parseIPv4("10.0.0.1")!, addr: 0, seconds: 5, start: Date.now() + 200 };
for (let i = 0; i < Deno.args.length; i += 2) {
  const [k, v] = [Deno.args[i]!, Deno.args[i + 1]];
  if (v === undefined) throw new Error(`Missing value after ${k}`);
  if (k === "--server" || k === "--addr") {
    const a = parseIPv4(v);
    if (a === null) throw new Error(`Bad address ${v}`);
    o[k === "--server" ? "server" : "addr"] = a;
  } else if (k === "--seconds") o.seconds = Number(v);
  else if (k === "--start") o.start = Number(v);
  else throw new Error(`Unknown flag ${k}`);
}
if (o.addr === 0) throw new Error("--addr is required");

const sock = UdpSocket.open({ addr: o.addr, port: 0 });
const request = (port: number, cookie?: Uint8Array) =>
  encodeRequest({
    op: Op.RESERVE,
    nonce: crypto.getRandomValues(new Uint8Array(8)),
    proto: 17,
    replaceable: true,
    internalAddr: o.addr,
    internalPort: port,
    remoteAddr: 0x08080808,
    remotePort: 443,
    lifetime: 60,
    ...(cookie ? { cookie } : {}),
  });

const cookie = await fetchCookie(sock, o.addr, o.server, 4750);
const packets = Array.from({ length: 64 }, (_, i) => request(20000 + i, cookie));

const wait = o.start - Date.now();
if (wait > 0) await new Promise((r) => setTimeout(r, wait));
const t0 = performance.now();
const end = t0 + o.seconds * 1000;
let sent = 0;
while (performance.now() < end) {
  for (const p of packets) sock.queue(p, REQUEST_LEN, o.server, 4750);
  const before = sock.stats.sent;
  sock.flush();
  sent += sock.stats.sent - before;
  // Nothing is read: the answers the server sends (within budgets) pile up and are dropped.
  sock.receive(() => {});
}
console.log("sent", sent, ((performance.now() - t0) / 1000).toFixed(3));
sock.close();
