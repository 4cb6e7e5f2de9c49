/**
 * The control client against a scripted UDP server on 127.0.0.1 (no root):
 * it retransmits long enough to get through heavy loss, backs off and tries
 * again when told RATE_LIMITED, keeps at most `window` requests in flight,
 * and hands an answer that comes after its request timed out to `onLate`.
 * No test depends on how long anything takes.
 */

import assert from "node:assert/strict";
import dgram from "node:dgram";
import { ControlClient, ControlTimeout } from "../../src/control/client.ts";
import {
  decodeRequest,
  encodeResponse,
  newNonce,
  Op,
  type Request,
  type Response,
  responseFor,
} from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { ip } from "../../testing/fixtures.ts";
import { waitFor } from "../../testing/wait.ts";

const LOCAL = ip("127.0.0.1");

/** A UDP server whose `answer` decides, per datagram, what (if anything) to send back. */
async function scripted(
  answer: (req: Request, n: number) => number | null,
): Promise<{
  port: number;
  seen: Request[];
  reply(req: Request, result: number, to: { address: string; port: number }): void;
  from: { address: string; port: number } | null;
  close(): void;
}> {
  const sock = dgram.createSocket("udp4");
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
  const srv = {
    port: sock.address().port,
    seen: [] as Request[],
    from: null as { address: string; port: number } | null,
    reply(req: Request, result: number, to: { address: string; port: number }) {
      const res = responseFor(req, { result }, 1);
      sock.send(encodeResponse(res), to.port, to.address);
    },
    close: () => sock.close(),
  };
  sock.on("message", (msg, rinfo) => {
    const d = decodeRequest(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    if (!d.ok) return;
    srv.from = { address: rinfo.address, port: rinfo.port };
    srv.seen.push(d.req);
    const result = answer(d.req, srv.seen.length);
    if (result !== null) srv.reply(d.req, result, rinfo);
  });
  return srv;
}

function req(port = 40000): Request {
  return {
    op: Op.RESERVE,
    nonce: newNonce(),
    proto: 17,
    replaceable: true,
    internalAddr: ip("10.0.0.11"), // the scripted server does not check it
    internalPort: port,
    remoteAddr: ip("198.51.100.10"),
    remotePort: 7000,
    lifetime: 0,
  };
}

Deno.test("control client: more than four transmissions before giving up (heavy loss gets through)", async () => {
  const srv = await scripted((_r, n) => n <= 6 ? null : Result.OK); // the first 6 are "lost"
  const c = await ControlClient.open(LOCAL, srv.port, { initialMs: 5, maxMs: 10 });
  try {
    const res = await c.request(req());
    assert.equal(res.result, Result.OK);
    assert.equal(srv.seen.length, 7);
  } finally {
    c.close();
    srv.close();
  }
});

Deno.test("control client: RATE_LIMITED is not final: it backs off and sends again", async () => {
  const srv = await scripted((_r, n) => n <= 2 ? Result.RATE_LIMITED : Result.OK);
  const c = await ControlClient.open(LOCAL, srv.port, { initialMs: 5, maxMs: 10 });
  try {
    const res = await c.request(req());
    assert.equal(res.result, Result.OK);
    assert.equal(c.stats.rateLimited, 2);
  } finally {
    c.close();
    srv.close();
  }
});

Deno.test("control client: at most `window` requests in flight; the others wait their turn", async () => {
  const srv = await scripted(() => null); // never answers
  const c = await ControlClient.open(LOCAL, srv.port, {
    initialMs: 5,
    maxMs: 5,
    tries: 1000,
    window: 3,
  });
  const all = Array.from({ length: 8 }, (_, i) => c.request(req(40000 + i)).catch((e) => e));
  try {
    // Several retransmission rounds later, still only the first three were ever sent.
    await waitFor(() => srv.seen.length >= 15, { timeoutMs: 10_000, what: "retransmissions" });
    const distinct = new Set(srv.seen.map((r) => r.internalPort));
    assert.deepEqual([...distinct].sort(), [40000, 40001, 40002]);
    assert.equal(c.stats.queued, 5);
  } finally {
    c.close();
    srv.close();
    await Promise.all(all);
  }
});

Deno.test("control client: an answer after the request timed out goes to onLate", async () => {
  const srv = await scripted(() => null);
  const c = await ControlClient.open(LOCAL, srv.port, { initialMs: 5, maxMs: 5, tries: 2 });
  const late: Response[] = [];
  c.onLate = (r) => late.push(r);
  try {
    const q = req();
    await assert.rejects(c.request(q), ControlTimeout);
    srv.reply(q, Result.OK, srv.from!); // the grant arrives now
    await waitFor(() => late.length === 1, { timeoutMs: 5000, what: "the late answer" });
    assert.equal(late[0]!.internalPort, q.internalPort);
    assert.equal(c.stats.late, 1);
  } finally {
    c.close();
    srv.close();
  }
});
