/**
 * src/datapath/activity.ts with a fake clock: the kernel is read at most
 * every ACTIVITY_EVERY_MS, the reading in between is the last one, and a
 * read gets the previous reading (what the bpf path falls back on).
 *
 * @module
 */

import assert from "node:assert/strict";
import { ACTIVITY_EVERY_MS, ActivityReadings } from "../../src/datapath/activity.ts";
import type { Activity } from "../../src/datapath/datapath.ts";

Deno.test("activity readings: one read per ACTIVITY_EVERY_MS; the last reading in between", () => {
  let now = 1000;
  const lasts: (Map<number, Activity> | null)[] = [];
  let reads = 0;
  const r = new ActivityReadings((last) => {
    lasts.push(last);
    reads++;
    return new Map([[reads, { packets: reads, bytes: 0, closed: false }]]);
  }, () => now);
  const first = r.get();
  assert.equal(reads, 1);
  assert.deepEqual([...first.keys()], [1]);
  now += ACTIVITY_EVERY_MS - 1;
  assert.equal(r.get(), first);
  assert.equal(reads, 1);
  now += 1;
  const second = r.get();
  assert.equal(reads, 2);
  assert.deepEqual([...second.keys()], [2]);
  assert.deepEqual(lasts, [null, first]);
});
