/**
 * The client's cookie jar against a real ServerCore (real encoded bytes):
 * a burst of requests from a host that has no cookie yet costs one
 * handshake, not one refused request per session.
 */

import assert from "node:assert/strict";
import { CookieJar } from "../../src/control/cookie.ts";
import { newNonce, Op, type Request, type Response } from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { ServerCore } from "../../src/server/core.ts";
import { H1, LAN, P1, R1, serverCfg } from "../../testing/fixtures.ts";
import { decodeResponse, encodeRequest } from "../../src/control/proto.ts";
import { ControlTimeout } from "../../src/control/client.ts";

function reserve(pa: number): Request {
  return {
    op: Op.RESERVE,
    nonce: newNonce(),
    proto: 17,
    replaceable: true,
    internalAddr: H1,
    internalPort: pa,
    remoteAddr: P1,
    remotePort: 7000,
    lifetime: 0,
  };
}

Deno.test("cookie jar: a burst of 500 requests before the first cookie costs one handshake, and all are served", async () => {
  const server = new ServerCore(serverCfg({ pool: [R1], rateLimit: 100000 }), { lan: LAN });
  let sent = 0;
  let unanswered = 0;
  const send = async (req: Request): Promise<Response> => {
    sent++;
    await Promise.resolve(); // the network
    const reply = server.handleControl(encodeRequest(req), H1);
    if (!reply) {
      unanswered++;
      throw new ControlTimeout("no answer");
    }
    const d = decodeResponse(reply);
    if (!d.ok) throw new Error(d.reason);
    return d.res;
  };
  const jar = new CookieJar();
  const all = await Promise.allSettled(
    Array.from({ length: 500 }, (_, i) => jar.request(send, reserve(40000 + i))),
  );
  const ok = all.filter((r) => r.status === "fulfilled" && r.value.result === Result.OK).length;
  assert.equal(ok, 500, "every session reserved");
  assert.equal(unanswered, 0, "no request went unanswered");
  assert.equal(jar.retries, 1, "one COOKIE_REQUIRED exchange for the whole burst");
  assert.equal(sent, 501);
});

Deno.test("cookie jar: when the first request gets no answer, the next waiting one tries", async () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  let drop = 1;
  const send = async (req: Request): Promise<Response> => {
    await Promise.resolve();
    if (drop-- > 0) throw new ControlTimeout("lost");
    return (decodeResponse(server.handleControl(encodeRequest(req), H1)!) as { res: Response })
      .res;
  };
  const jar = new CookieJar();
  const r = await Promise.allSettled([
    jar.request(send, reserve(1)),
    jar.request(send, reserve(2)),
  ]);
  assert.equal(r[0]!.status, "rejected", "the lost one fails (the caller retransmits)");
  assert.equal(r[1]!.status, "fulfilled");
  assert.equal((r[1] as PromiseFulfilledResult<Response>).value.result, Result.OK);
});
