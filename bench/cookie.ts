/**
 * The return-routability handshake of the bench's load generators
 * (docs/protocol.md, "Cookies"): a RENEW of a session nobody has, sent from
 * `addr` until the server's answer brings a cookie (every answer carries
 * one). Used by bench/reserve_load.ts, bench/flood_probe.ts and
 * bench/flood_sender.ts.
 *
 * @module
 */

import { decodeResponse, encodeRequest, hasCookie, Op, REQUEST_LEN } from "../src/control/proto.ts";
import type { UdpSocket } from "../linux/udp.ts";

/**
 * The cookie the server at `server:port` gives host `addr` (the socket's own
 * address); tries `attempts` times, 250 ms each.
 *
 * @throws {Error} when no answer brought one.
 */
export async function fetchCookie(
  sock: UdpSocket,
  addr: number,
  server: number,
  port: number,
  attempts = 40,
): Promise<Uint8Array> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    sock.queue(
      encodeRequest({
        op: Op.RENEW,
        nonce: crypto.getRandomValues(new Uint8Array(8)),
        proto: 17,
        replaceable: true,
        internalAddr: addr,
        internalPort: 1,
        // Only a field of the request: nothing is sent to it.
        remoteAddr: 0x08080808,
        remotePort: 1,
        lifetime: 0,
      }),
      REQUEST_LEN,
      server,
      port,
    );
    sock.flush();
    if (await sock.wait(250)) {
      let cookie: Uint8Array | null = null;
      sock.receive((b) => {
        const d = decodeResponse(b);
        if (d.ok && hasCookie(d.res.cookie)) cookie = d.res.cookie.slice();
      });
      if (cookie) return cookie;
    }
  }
  throw new Error("no cookie from the server");
}
