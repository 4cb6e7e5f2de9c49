/**
 * src/server/held.ts: the gateway's held first packets. A packet to a key
 * whose request was refused is told apart from one over the limits (the
 * server counts the first as `refused`, the second as `held-overflow`).
 * No root needed.
 *
 * @module
 */

import assert from "node:assert/strict";
import { HeldPackets, MAX_PER_KEY, SETTLED_MS } from "../../src/server/held.ts";

const A = 0x0a00000b; // 10.0.0.11
const pkt = (id: number, pa = 40000, pg = 61000) => ({
  id,
  bytes: new Uint8Array(28),
  skbInfo: 0,
  proto: 17,
  a: A,
  pa,
  pg,
});

Deno.test("server held: a refused key's packets are refused, not an overflow; until it settles", () => {
  const held = new HeldPackets();
  const none = () => assert.fail("nothing evicted");
  assert.equal(held.hold(pkt(1), 0, none), "hold");
  held.decide(17, A, 40000, 61000, false, 10);
  const dropped: number[] = [];
  held.take(() => assert.fail("refused: nothing goes on"), (h) => dropped.push(h.id));
  assert.deepEqual(dropped, [1]);
  assert.equal(held.hold(pkt(2), 20, none), "refused");
  assert.equal(held.stats.refused, 1);
  // Another host port on the same Pg is another session: held.
  assert.equal(held.hold(pkt(3, 40001), 20, none), "hold");
  // Once settled, the key holds again.
  assert.equal(held.hold(pkt(4), 10 + SETTLED_MS, none), "hold");
});

Deno.test("server held: a session over its limit is full", () => {
  const held = new HeldPackets();
  const none = () => assert.fail("nothing evicted");
  for (let i = 0; i < MAX_PER_KEY; i++) assert.equal(held.hold(pkt(i), 0, none), "hold");
  assert.equal(held.hold(pkt(99), 0, none), "full");
  assert.equal(held.size, MAX_PER_KEY);
  held.decide(17, A, 40000, 61000, true, 1);
  const went: number[] = [];
  held.take((h) => went.push(h.id), () => assert.fail("granted: nothing dropped"));
  assert.equal(went.length, MAX_PER_KEY);
  assert.equal(held.size, 0);
});
