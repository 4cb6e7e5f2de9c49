/**
 * A one-shot control-protocol client for tests: sends one request to the
 * server and prints the decoded response as JSON (or {"timeout": true}).
 * When the server asks for its cookie (COOKIE_REQUIRED), the request is sent
 * once more with it, as a driver does.
 *
 *   deno run -A tests/_control_client.ts <server:port> <reserve|renew|release> <tcp|udp|icmp> <internal a:p> <remote a:p>
 */

import dgram from "node:dgram";
import { formatIPv4, parseAddrPort } from "../src/wire/addr.ts";
import {
  decodeResponse,
  encodeRequest,
  hasCookie,
  newNonce,
  Op,
  type Request,
} from "../src/control/proto.ts";
import { Result, resultName } from "../src/control/result.ts";

const [server, op, proto, internal, remote] = Deno.args;
const s = parseAddrPort(server ?? "");
const i = parseAddrPort(internal ?? "");
const r = parseAddrPort(remote ?? "");
const ops: Record<string, number> = { reserve: Op.RESERVE, renew: Op.RENEW, release: Op.RELEASE };
const protos: Record<string, number> = { icmp: 1, tcp: 6, udp: 17 };
if (!s || !i || !r || !ops[op ?? ""] || !protos[proto ?? ""]) {
  console.error("usage: _control_client.ts <server:port> <op> <proto> <internal> <remote>");
  Deno.exit(2);
}
const sock = dgram.createSocket("udp4");
const req: Request = {
  op: ops[op!]!,
  nonce: newNonce(),
  proto: protos[proto!]!,
  replaceable: true,
  internalAddr: i.addr,
  internalPort: i.port,
  remoteAddr: r.addr,
  remotePort: r.port,
  lifetime: 0,
};
const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true }));
  sock.close();
}, 3000);
let retried = false;
sock.on("message", (msg) => {
  const d = decodeResponse(new Uint8Array(msg));
  if (d.ok && d.res.result === Result.COOKIE_REQUIRED && hasCookie(d.res.cookie) && !retried) {
    retried = true;
    req.nonce = newNonce();
    req.cookie = d.res.cookie;
    sock.send(encodeRequest(req), s.port, formatIPv4(s.addr));
    return;
  }
  clearTimeout(timer);
  console.log(
    JSON.stringify(
      d.ok
        ? {
          result: resultName(d.res.result),
          public: `${formatIPv4(d.res.publicAddr)}:${d.res.publicPort}`,
        }
        : { bad: d.reason },
    ),
  );
  sock.close();
});
sock.send(encodeRequest(req), s.port, formatIPv4(s.addr));
