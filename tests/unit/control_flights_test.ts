/**
 * The control client's table of requests in flight (`control/flights.ts`)
 * on its own, against a `Map` doing the same: nonces chosen the way the
 * client chooses them (the next one whose slot is free), growing through a
 * burst, shrinking once it is answered, and refusing a taken slot.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { FlightTable, MIN_SLOTS } from "../../src/control/flights.ts";

interface F {
  seq: number;
  id: number;
}

/** The client's choice: the next `seq` (from `from`) whose slot is free. */
function take(t: FlightTable<F>, from: number): number {
  t.room();
  let seq = from;
  while (!t.free(seq)) seq = seq >= 0x3fffffff ? 1 : seq + 1;
  return seq;
}

Deno.test("flights: a burst grows the table, every request is found by its seq, answers shrink it", () => {
  const t = new FlightTable<F>();
  const all: F[] = [];
  let next = 0x3fffffff - 500; // across the counter's wrap
  for (let i = 0; i < 20_000; i++) {
    const seq = take(t, next);
    const f = { seq, id: i };
    t.add(f);
    all.push(f);
    next = seq >= 0x3fffffff ? 1 : seq + 1;
  }
  assert.equal(t.size, 20_000);
  assert.equal(t.capacity, 32_768); // at most 3/4 full
  assert.equal(new Set(all.map((f) => f.seq)).size, 20_000);
  for (const f of all) assert.equal(t.get(f.seq), f);
  assert.equal(t.get(1_000_000), undefined); // never taken
  assert.equal(t.values().length, 20_000);
  // Answered (seq set to 0 after delete, as the client does): the table shrinks back.
  for (const f of all) {
    assert.equal(t.delete(f), true);
    assert.equal(t.get(f.seq), undefined);
    f.seq = 0;
  }
  assert.equal(t.size, 0);
  assert.equal(t.capacity, MIN_SLOTS);
  assert.equal(t.delete(all[0]!), false);
});

Deno.test("flights: a taken slot is refused, and a stale seq is not mistaken for it", () => {
  const t = new FlightTable<F>();
  const a = { seq: 5, id: 1 };
  t.add(a);
  assert.equal(t.free(5 + MIN_SLOTS), false);
  assert.throws(() => t.add({ seq: 5 + MIN_SLOTS, id: 2 }), /not free/);
  assert.throws(() => t.add({ seq: 0, id: 3 }), /not free/);
  assert.equal(t.get(5 + MIN_SLOTS), undefined); // same slot, other seq
  assert.equal(t.delete({ seq: 5, id: 9 }), false); // not the one filed
  assert.equal(t.get(5), a);
  t.clear();
  assert.equal(t.size, 0);
  assert.equal(t.get(5), undefined);
});

Deno.test("flights: adds and deletes in any order agree with a Map (shrinking kept only when it fits)", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.boolean(), fc.nat(5_000)), { maxLength: 3_000 }),
      fc.integer({ min: 1, max: 0x3fffffff }),
      (ops, start) => {
        const t = new FlightTable<F>();
        const m = new Map<number, F>();
        let next = start;
        let id = 0;
        for (const [add, pick] of ops) {
          if (add || m.size === 0) {
            // A long-lived request stays while later seqs go by: shrinking must keep it.
            const seq = take(t, next);
            assert.equal(m.has(seq), false);
            const f = { seq, id: id++ };
            t.add(f);
            m.set(seq, f);
            next = (seq >= 0x3fffffff ? 1 : seq + 1) + (pick % 7 === 0 ? pick : 0);
            if (next > 0x3fffffff) next = 1;
          } else {
            const keys = [...m.keys()];
            const f = m.get(keys[pick % keys.length]!)!;
            assert.equal(t.delete(f), true);
            m.delete(f.seq);
          }
          assert.equal(t.size, m.size);
          assert.ok(t.size * 4 <= t.capacity * 3);
        }
        for (const [seq, f] of m) assert.equal(t.get(seq), f);
        assert.deepEqual(
          t.values().map((f) => f.id).sort((a, b) => a - b),
          [...m.values()].map((f) => f.id).sort((a, b) => a - b),
        );
      },
    ),
    { numRuns: 100 },
  );
});
