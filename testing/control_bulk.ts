/**
 * A bulk control-protocol client for tests: reserves `count` UDP sessions
 * from this host's address (internal ports `first`, `first`+1, ...) toward
 * one remote, as fast as a window of in-flight requests allows. One cookie
 * handshake first (a cookie-less request is answered COOKIE_REQUIRED with
 * the cookie, as testing/control_client.ts does), then every request
 * carries it; unanswered requests are sent again (new nonce), at most
 * `tries` times. Prints {"ok": n, "results": {name: n}}.
 *
 *   deno run -A testing/control_bulk.ts <server:port> <internal addr> <first port> <count> <remote a:p>
 *
 * @module
 */

import dgram from "node:dgram";
import { formatIPv4, parseAddrPort, parseIPv4 } from "../src/wire/addr.ts";
import {
  decodeResponse,
  encodeRequest,
  hasCookie,
  newNonce,
  Op,
  type Request,
} from "../src/control/proto.ts";
import { Result, resultName } from "../src/control/result.ts";

const [server, internal, firstText, countText, remote] = Deno.args;
const s = parseAddrPort(server ?? "");
const a = parseIPv4(internal ?? "");
const r = parseAddrPort(remote ?? "");
const first = Number(firstText);
const count = Number(countText);
if (!s || a === null || !r || !(first > 0) || !(count > 0) || first + count > 65536) {
  console.error(
    "usage: control_bulk.ts <server:port> <internal addr> <first port> <count> <remote a:p>",
  );
  Deno.exit(2);
}
const WINDOW = 200;
const TRIES = 8;
const sock = dgram.createSocket({ type: "udp4", recvBufferSize: 4 << 20 });
await new Promise<void>((ok) => sock.bind(0, formatIPv4(a), ok));
const dest = formatIPv4(s.addr);

const request = (port: number, cookie?: Uint8Array): Request => ({
  op: Op.RESERVE,
  nonce: newNonce(),
  proto: 17,
  replaceable: true,
  internalAddr: a,
  internalPort: port,
  remoteAddr: r.addr,
  remotePort: r.port,
  lifetime: 0,
  ...(cookie ? { cookie } : {}),
});

/** Nonce (hex) → the port it asks for. */
const pending = new Map<string, number>();
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const results: Record<string, number> = {};
let cookie: Uint8Array | undefined;
let answered: ((port: number | null) => void) | null = null;
sock.on("message", (msg) => {
  const d = decodeResponse(new Uint8Array(msg));
  if (!d.ok) return;
  const port = pending.get(hex(d.res.nonce));
  if (port === undefined) return;
  pending.delete(hex(d.res.nonce));
  if (d.res.result === Result.COOKIE_REQUIRED && hasCookie(d.res.cookie)) {
    cookie = d.res.cookie;
    return answered?.(null);
  }
  const name = resultName(d.res.result);
  results[name] = (results[name] ?? 0) + 1;
  answered?.(port);
});

function send(port: number): void {
  const req = request(port, cookie);
  pending.set(hex(req.nonce), port);
  sock.send(encodeRequest(req), s!.port, dest);
}

// The handshake: one cookie-less request, answered with the cookie.
for (let i = 0; i < TRIES && !cookie; i++) {
  send(first);
  await new Promise<void>((ok) => {
    const t = setTimeout(ok, 500);
    answered = () => (clearTimeout(t), ok());
  });
}
if (!cookie) {
  console.log(JSON.stringify({ ok: 0, results, error: "no cookie" }));
  Deno.exit(1);
}

const todo = Array.from({ length: count }, (_, i) => first + i);
const done = new Set<number>();
for (let round = 0; round < TRIES && done.size < count; round++) {
  pending.clear();
  const left = todo.filter((p) => !done.has(p));
  let next = 0;
  let inFlight = 0;
  await new Promise<void>((finish) => {
    let idle: ReturnType<typeof setTimeout> | undefined;
    const pump = () => {
      while (inFlight < WINDOW && next < left.length) {
        send(left[next++]!);
        inFlight++;
      }
      clearTimeout(idle);
      // Nothing answered for a while: this round is over, the rest go again.
      idle = setTimeout(finish, 1000);
      if (next >= left.length && inFlight === 0) {
        clearTimeout(idle);
        finish();
      }
    };
    answered = (port) => {
      if (port !== null) done.add(port);
      inFlight--;
      pump();
    };
    pump();
  });
}
sock.close();
console.log(JSON.stringify({ ok: results[resultName(Result.OK)] ?? 0, results }));
