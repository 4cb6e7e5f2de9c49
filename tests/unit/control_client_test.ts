/**
 * The control client against a real ServerCore over an in-memory link
 * (real encoded datagrams, no sockets), and against scripted servers: a
 * turn's requests leave batched, a request is sent again until answered
 * (the fast schedule gets 30% loss each way through), RATE_LIMITED backs
 * off, the window holds the rest back, a late answer reaches `onLate`, one
 * datagram goes out before the first cookie, and a version-2 server makes
 * the client speak version 2. Assertions count datagrams and answers, never
 * time.
 */

import assert from "node:assert/strict";
import {
  type Ask,
  ControlClient,
  type DatagramLink,
  type RetryOptions,
} from "../../src/control/client.ts";
import {
  decodeEntry,
  decodeRequestHeader,
  HEADER_LEN,
  newEntry,
  writeAnswer,
  writeAnswerHeader,
} from "../../src/control/batch.ts";
import {
  decodeRequest,
  encodeResponse,
  errorResponseFor,
  Op,
  type Response,
  responseFor,
} from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { ServerCore } from "../../src/server/core.ts";
import {
  H1,
  LAN,
  MemoryLink,
  P1,
  QUICK_RETRY,
  R1,
  serverCfg,
  settle,
  settleTimeouts,
} from "../../testing/fixtures.ts";

const ask = (pa: number): Ask => ({ proto: 17, replaceable: true, pa, x: P1, px: 7000 });

/** Submits `n` reserves and resolves with their answers (null: given up). */
function reserveAll(c: ControlClient, n: number, urgent = false): Promise<(Response | null)[]> {
  return Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<Response | null>((resolve) =>
          c.submit(Op.RESERVE, ask(40000 + i), (_a, res) => resolve(res), { urgent })
        ),
    ),
  );
}

function real(retry: RetryOptions = QUICK_RETRY, seed = 1) {
  const server = new ServerCore(serverCfg({ pool: [R1], rateLimit: 100_000 }), { lan: LAN });
  const link = new MemoryLink(server, H1, seed);
  const sizes: number[] = [];
  const send = link.send.bind(link);
  link.send = (d, len) => {
    sizes.push(len);
    send(d, len);
  };
  return { server, link, sizes, c: new ControlClient(link, H1, retry) };
}

Deno.test("control client: a turn's requests leave batched, 45 to a datagram, after one cookie handshake", async () => {
  const { c, sizes, server } = real();
  const answers = await reserveAll(c, 100);
  assert.ok(answers.every((a) => a?.result === Result.OK));
  assert.equal(server.table.size, 100);
  // The first datagram learns the cookie (its 45 entries are answered COOKIE_REQUIRED and
  // sent again with it); the others wait for it: 45 + 45 + 45 + 10 entries.
  assert.deepEqual(sizes, [45, 45, 45, 10].map((n) => HEADER_LEN + 32 * n));
  assert.equal(c.stats.cookieRetries, 45);
  assert.equal(c.stats.retransmits, 0);
  c.close();
});

Deno.test("control client: urgent requests get through 30% loss each way on the fast schedule", async () => {
  const { c, link, server } = real({
    ...QUICK_RETRY,
    fastMs: 2,
    fastForMs: 200,
    giveUpMs: 400,
  }, 4242);
  link.loss = 0.3;
  const answers = await reserveAll(c, 200, true);
  assert.equal(answers.filter((a) => a === null).length, 0, "none given up");
  assert.ok(answers.every((a) => a?.result === Result.OK));
  assert.ok(link.lostDatagrams > 0 && c.stats.retransmits > 0);
  assert.equal(server.table.size, 200, "retransmissions never made a second session");
  c.close();
});

Deno.test("control client: a request nothing waits on is given up after `tries` transmissions; its late answer goes to onLate", async () => {
  const { c, link } = real({ ...QUICK_RETRY, tries: 3 });
  await reserveAll(c, 1); // the cookie
  link.holdAnswers = true;
  const late: Response[] = [];
  c.onLate = (r) => late.push(r);
  const [res] = await reserveAll(c, 1);
  assert.equal(res, null);
  assert.equal(c.stats.timeouts, 1);
  link.holdAnswers = false;
  link.deliverLate();
  assert.equal(late.length, 1, "the first of the three answers; the others are duplicates");
  assert.equal(late[0]!.result, Result.OK);
  assert.equal(late[0]!.internalPort, 40000);
  c.close();
});

/** A link to a scripted server: `answer` gets each request datagram and returns the reply, or null. */
function scripted(
  answer: (d: Uint8Array) => Uint8Array | null,
): DatagramLink & { seen: Uint8Array[] } {
  const link = {
    seen: [] as Uint8Array[],
    queue: [] as Uint8Array[],
    onReceive: null as ((d: Uint8Array) => void) | null,
    send(d: Uint8Array, len: number) {
      this.queue.push(d.slice(0, len));
    },
    flush() {
      for (const d of this.queue.splice(0)) {
        this.seen.push(d);
        const r = answer(d);
        if (r) queueMicrotask(() => this.onReceive?.(r));
      }
    },
    close() {},
  };
  return link;
}

/** A version-3 answer to `d` with `result` for every entry (a cookie in the header). */
function answerAll(d: Uint8Array, result: number): Uint8Array {
  const h = decodeRequestHeader(d);
  if (!h.ok) throw new Error(h.reason);
  const out = new Uint8Array(d.length);
  writeAnswerHeader(out, d, h.count, Result.OK, 1, new Uint8Array(12).fill(7));
  const e = newEntry();
  for (let i = 0; i < h.count; i++) {
    decodeEntry(d, i, h.internalAddr, e);
    writeAnswer(out, i, {
      op: e.op,
      result,
      proto: e.proto,
      replaced: false,
      shared: false,
      nonceHi: e.nonceHi,
      nonceLo: e.nonceLo,
      remoteAddr: e.remoteAddr,
      internalPort: e.internalPort,
      remotePort: e.remotePort,
      publicAddr: result === Result.OK ? R1 : 0,
      publicPort: result === Result.OK ? e.internalPort : 0,
      gatewayPort: result === Result.OK ? 62000 : 0,
      lifetime: result === Result.OK ? 300 : 0,
    });
  }
  return out;
}

Deno.test("control client: RATE_LIMITED is not final: it backs off and sends again", async () => {
  let n = 0;
  const link = scripted((d) => answerAll(d, ++n <= 2 ? Result.RATE_LIMITED : Result.OK));
  const c = new ControlClient(link, H1, QUICK_RETRY);
  const [res] = await reserveAll(c, 1);
  assert.equal(res?.result, Result.OK);
  assert.equal(c.stats.rateLimited, 2);
  c.close();
});

Deno.test("control client: at most `window` requests in flight; the others wait their turn", async () => {
  const link = scripted(() => null); // never answers
  const c = new ControlClient(link, H1, { ...QUICK_RETRY, tries: 1000, window: 3 });
  const all = reserveAll(c, 8);
  await settleTimeouts(30);
  const ports = new Set<number>();
  const e = newEntry();
  for (const d of link.seen) {
    const h = decodeRequestHeader(d);
    if (!h.ok) continue;
    for (let i = 0; i < h.count; i++) {
      decodeEntry(d, i, h.internalAddr, e);
      ports.add(e.internalPort);
    }
  }
  assert.deepEqual([...ports].sort(), [40000, 40001, 40002]);
  assert.ok(link.seen.length >= 3, "sent again, the same three");
  c.close();
  assert.ok((await all).every((r) => r === null), "closing answers the rest null");
});

Deno.test("control client: without a fresh cookie one datagram goes out; its answer opens the rest", async () => {
  // Answers are held until released, and the probe window is far longer
  // than the test's own turns (QUICK_RETRY's 2 ms expired during a cold
  // first flush when this test ran alone, letting the next batch go).
  const held: Uint8Array[] = [];
  const link = scripted((d) => {
    held.push(answerAll(d, Result.OK));
    return null;
  });
  const slow = { ...QUICK_RETRY, initialMs: 1000, maxMs: 2000, fastMs: 1000, giveUpMs: 10_000 };
  const c = new ControlClient(link, H1, slow);
  const first = reserveAll(c, 90);
  c.flush();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(link.seen.length, 1, "one datagram before any cookie");
  assert.equal(decodeRequestHeader(link.seen[0]!).ok, true);
  for (let i = 0; i < 2; i++) {
    // The first answer brings the cookie and opens the rest; then theirs.
    for (const a of held.splice(0)) link.onReceive?.(a);
    await new Promise((r) => setTimeout(r, 0));
  }
  await first;
  assert.equal(link.seen.length, 2, "the other 45 once the cookie came");
  const h = decodeRequestHeader(link.seen[1]!);
  assert.ok(h.ok && h.cookie.every((b) => b === 7), "carrying the cookie");
  c.close();
});

Deno.test("control client: a server that speaks only version 2 makes it speak version 2", async () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const link = scripted((d) => {
    if (d[2] === 3) return errorResponseFor(d, { result: Result.UNSUPPORTED_VERSION }, 1);
    const r = decodeRequest(d);
    if (!r.ok) return null;
    return server.handleControl(d, H1);
  });
  const c = new ControlClient(link, H1, QUICK_RETRY);
  assert.equal(c.proposes, true);
  const answers = await reserveAll(c, 3);
  assert.equal(c.proposes, false);
  assert.ok(answers.every((a) => a?.result === Result.OK), "served in version 2");
  assert.ok(link.seen.slice(1).every((d) => d[2] === 2 && d.length === 64));
  // Answers to version-2 requests with another nonce are ignored.
  const stray = encodeResponse(
    responseFor(
      {
        op: Op.RESERVE,
        nonce: new Uint8Array(8),
        proto: 17,
        replaceable: true,
        internalAddr: H1,
        internalPort: 40000,
        remoteAddr: P1,
        remotePort: 7000,
        lifetime: 0,
      },
      { result: Result.OK },
      1,
    ),
  );
  const before = c.stats.ignored;
  link.onReceive?.(stray);
  assert.equal(c.stats.ignored, before + 1);
  c.close();
  await settle();
});
