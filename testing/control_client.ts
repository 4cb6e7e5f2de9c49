/**
 * A one-shot control-protocol client for tests: sends one request to the
 * server and prints the decoded response as JSON (or {"timeout": true}).
 *
 *   deno run -A tests/_control_client.ts <server:port> <reserve|renew|release> <tcp|udp|icmp> <internal a:p> <remote a:p>
 */

import dgram from "node:dgram";
import { formatIPv4, parseAddrPort } from "../src/wire/addr.ts";
import { decodeResponse, encodeRequest, newNonce, Op } from "../src/control/proto.ts";
import { resultName } from "../src/control/result.ts";

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
const bytes = encodeRequest({
  op: ops[op!]!,
  nonce: newNonce(),
  proto: protos[proto!]!,
  replaceable: true,
  internalAddr: i.addr,
  internalPort: i.port,
  remoteAddr: r.addr,
  remotePort: r.port,
  lifetime: 0,
});
const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true }));
  sock.close();
}, 3000);
sock.on("message", (msg) => {
  clearTimeout(timer);
  const d = decodeResponse(new Uint8Array(msg));
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
sock.send(bytes, s.port, formatIPv4(s.addr));
