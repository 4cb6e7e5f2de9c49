/**
 * An application that carries its own address in its payload, as SIP does:
 * it sends a REGISTER whose Contact and Via name the address and port the
 * registrar will see. Behind dpm it asks the local driver for its public
 * pair first (`reserve`), so the Contact is right without any ALG on the
 * gateway; a registrar that compares the Contact with the datagram's source
 * accepts it.
 *
 * ```sh
 * deno run -A examples/sip_register.ts <local port> <registrar addr:port> [--socket PATH | --no-dpm]
 * ```
 * With `--no-dpm` it puts its own (private) address in the Contact, as an
 * application behind an ordinary NAT would: the registrar refuses it.
 * Prints one JSON line: the Contact it sent and the registrar's answer.
 *
 * @module
 */

import dgram from "node:dgram";
import { reserve } from "../mod.ts";

const [portText, registrar, flag, socketPath] = Deno.args;
const port = Number(portText);
if (
  !Number.isInteger(port) || !registrar?.includes(":") ||
  (flag && flag !== "--socket" && flag !== "--no-dpm")
) {
  console.error(
    "usage: sip_register.ts <local port> <registrar addr:port> [--socket PATH | --no-dpm]",
  );
  Deno.exit(2);
}
const [raddr, rport] = registrar.split(":") as [string, string];

// The host's own address (the first non-loopback IPv4 one): the private
// side of the session, which dpm is asked about.
const me = Deno.networkInterfaces().find((i) =>
  i.family === "IPv4" && !i.address.startsWith("127.")
);
if (!me) {
  console.error("sip_register: no IPv4 address on this host");
  Deno.exit(1);
}
const sock = dgram.createSocket("udp4");
await new Promise<void>((r) => sock.bind(port, me.address, () => r()));
sock.connect(Number(rport), raddr);
await new Promise<void>((r) => sock.once("connect", () => r()));
const local = `${me.address}:${port}`;
const pub = flag === "--no-dpm"
  ? { address: me.address, port, public: local }
  : await reserve("udp", local, registrar, socketPath ? { socket: socketPath } : {});

const callId = crypto.randomUUID();
const msg = [
  `REGISTER sip:${raddr} SIP/2.0`,
  `Via: SIP/2.0/UDP ${pub.address}:${pub.port};branch=z9hG4bK${callId.slice(0, 8)}`,
  `From: <sip:alice@${raddr}>;tag=1`,
  `To: <sip:alice@${raddr}>`,
  `Call-ID: ${callId}`,
  "CSeq: 1 REGISTER",
  `Contact: <sip:alice@${pub.address}:${pub.port}>`,
  "Expires: 60",
  "Content-Length: 0",
  "",
  "",
].join("\r\n");
const answer = new Promise<string>((resolve, reject) => {
  const t = setTimeout(() => reject(new Error("no answer from the registrar")), 5000);
  sock.once("message", (m) => {
    clearTimeout(t);
    resolve(new TextDecoder().decode(m));
  });
});
sock.send(new TextEncoder().encode(msg));
try {
  const reply = await answer;
  console.log(JSON.stringify({ contact: pub.public, status: reply.split("\r\n")[0] }));
} finally {
  sock.close();
}
