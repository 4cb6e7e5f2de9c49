/**
 * The control client's parts on their own: the retransmission delay, the
 * timer wheel and the pacer (`control/retransmit.ts`) on a clock the test
 * sets, and the request datagrams (`control/outbox.ts`) decoded back with
 * the server's decoders. The whole client is `control_client_test.ts`'s.
 */

import assert from "node:assert/strict";
import {
  Pacer,
  retryDelay,
  retrySchedule,
  type Scheduled,
  SLOT_MS,
  SLOTS,
  Wheel,
} from "../../src/control/retransmit.ts";
import { type DatagramLink, Outbox, type OutRequest } from "../../src/control/outbox.ts";
import {
  decodeEntry,
  decodeRequestHeader,
  MAX_ENTRIES,
  newEntry,
} from "../../src/control/batch.ts";
import { COOKIE_LEN, decodeRequest, Op } from "../../src/control/proto.ts";

const flight = (seq: number, due: number, o: Partial<Scheduled> = {}): Scheduled => ({
  seq,
  urgent: false,
  sent: 1,
  first: 0,
  due,
  slot: -1,
  ...o,
});

Deno.test("retransmit: the schedule's defaults, and a setting kept", () => {
  const o = retrySchedule({ tries: 3 });
  assert.equal(o.tries, 3);
  assert.equal(o.initialMs, 250);
  assert.equal(o.maxMs, 1000);
  assert.equal(o.rate, 1800);
});

Deno.test("retransmit: the delay doubles to its cap, stays fast while urgent, and waits for the round trip", () => {
  const o = retrySchedule({});
  const within = (ms: number, base: number) => ms >= base * 0.75 && ms <= base * 1.25;
  // Nothing waits on it: 250, 500, 1000, 1000 ms (±25%).
  for (const [sent, base] of [[1, 250], [2, 500], [3, 1000], [6, 1000]] as const) {
    const d = retryDelay(o, flight(1, 0, { sent }), 0, 0, 0);
    assert.ok(within(d, base), `sent ${sent}: ${d} near ${base}`);
  }
  // Urgent and young: every 100 ms, however often sent.
  const young = retryDelay(o, flight(1, 0, { urgent: true, sent: 20 }), 2000, 0, 0);
  assert.ok(within(young, 100), `${young} near 100`);
  // Urgent past the fast part: the doubling schedule from its start.
  const old = retryDelay(o, flight(1, 0, { urgent: true, sent: 31 }), 3000, 0, 0);
  assert.ok(within(old, 250), `${old} near 250`);
  // Not before twice the smoothed round trip, nor before the backlog ahead.
  assert.ok(within(retryDelay(o, flight(1, 0), 0, 400, 0), 800));
  assert.ok(within(retryDelay(o, flight(1, 0), 0, 0, 20_000), 2000));
});

Deno.test("retransmit: the wheel gives back what is due, refiles what is not, and skips the stale", () => {
  const w = new Wheel(0);
  const flights = new Map<number, Scheduled>();
  const put = (f: Scheduled) => {
    flights.set(f.seq, f);
    return w.file(f);
  };
  assert.equal(put(flight(1, 25)), 25);
  put(flight(2, 25));
  put(flight(3, 95));
  // Far beyond the horizon: filed in the last slot, the timer fires then.
  const far = flight(4, (SLOTS + 100) * SLOT_MS);
  assert.equal(put(far), far.due);
  assert.equal(far.slot, SLOTS - 1);
  // 2 was answered: still filed, but no longer in flight.
  flights.delete(2);
  assert.equal(w.next(), 20);
  const due: number[] = [];
  const at = w.turn(30, flights, (f) => due.push(f.seq));
  assert.deepEqual(due, [1]);
  assert.equal(flights.get(1)!.slot, -1);
  assert.equal(at, Infinity);
  assert.equal(w.next(), 90);
  // 3 refiled in its own slot meanwhile (sent again): its old entry is stale.
  flights.get(3)!.due = 200;
  w.file(flights.get(3)!);
  assert.deepEqual(
    (() => {
      const d: number[] = [];
      w.turn(100, flights, (f) => d.push(f.seq));
      return d;
    })(),
    [],
  );
  const d2: number[] = [];
  w.turn(210, flights, (f) => d2.push(f.seq));
  assert.deepEqual(d2, [3]);
  // The far one, reached before it is due: filed again further on.
  const d3: number[] = [];
  const again = w.turn((SLOTS - 1) * SLOT_MS, flights, (f) => d3.push(f.seq));
  assert.deepEqual(d3, []);
  assert.equal(again, far.due);
});

Deno.test("retransmit: the pacer lets a burst of twice the rate go, then one per 1/rate", () => {
  const p = new Pacer(100, 0);
  let went = 0;
  while (p.take(0) === 0) went++;
  assert.equal(went, 200);
  const wait = p.take(0);
  assert.ok(wait > 0 && wait <= 10, `wait ${wait}`);
  assert.equal(p.take(10), 0);
  assert.ok(p.take(10) > 0);
});

/** A link that keeps copies of what is sent. */
function recorder(): DatagramLink & { sent: Uint8Array[] } {
  const sent: Uint8Array[] = [];
  return {
    sent,
    send: (d, len) => sent.push(d.slice(0, len)),
    flush: () => {},
    onReceive: null,
    close: () => {},
  };
}

const req = (seq: number, pg = 0): OutRequest => ({
  op: Op.RESERVE,
  seq,
  pg,
  lifetime: 60,
  ask: { proto: 17, replaceable: true, pa: 40000 + seq, x: 0xc6336401, px: 53 },
});

Deno.test("outbox: version-3 requests go in batches the server decodes, full ones at once", () => {
  const link = recorder();
  let datagrams = 0;
  const out = new Outbox(link, 0xabcdef01, 0x0a00000b, () => datagrams++);
  const cookie = new Uint8Array(COOKIE_LEN).fill(7);
  for (let i = 1; i <= MAX_ENTRIES + 2; i++) out.add(req(i, i === 1 ? 61234 : 0), cookie);
  assert.equal(link.sent.length, 1, "a full datagram leaves at once");
  out.seal(cookie);
  out.seal(cookie); // nothing left: no empty datagram
  assert.equal(link.sent.length, 2);
  assert.equal(datagrams, 2);
  const h = decodeRequestHeader(link.sent[1]!);
  assert.ok(h.ok);
  assert.equal(h.count, 2);
  assert.equal(h.internalAddr, 0x0a00000b);
  assert.deepEqual([...h.cookie], [...cookie]);
  const first = decodeRequestHeader(link.sent[0]!);
  assert.ok(first.ok);
  assert.equal(first.count, MAX_ENTRIES);
  const e = newEntry();
  assert.equal(decodeEntry(link.sent[0]!, 0, first.internalAddr, e), null);
  assert.equal(e.nonceHi, 0xabcdef01);
  assert.equal(e.nonceLo, 1);
  assert.equal(e.gatewayPort, 61234);
  assert.equal(e.internalPort, 40001);
  assert.equal(e.remoteAddr, 0xc6336401);
  assert.equal(e.lifetime, 60);
});

Deno.test("outbox: a version-2 request goes alone with the salt, the host and the cookie", () => {
  const link = recorder();
  let datagrams = 0;
  const out = new Outbox(link, 0x01020304, 0x0a00000c, () => datagrams++);
  out.single(req(9), null);
  assert.equal(datagrams, 1);
  const d = decodeRequest(link.sent[0]!);
  assert.ok(d.ok);
  assert.equal(d.req.internalAddr, 0x0a00000c);
  assert.equal(d.req.internalPort, 40009);
  assert.equal(new DataView(d.req.nonce.buffer, d.req.nonce.byteOffset).getUint32(0), 0x01020304);
  assert.equal(new DataView(d.req.nonce.buffer, d.req.nonce.byteOffset).getUint32(4), 9);
});
