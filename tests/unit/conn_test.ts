/**
 * src/runtime/conn.ts: writing a whole buffer and closing quietly, shared by
 * the operator socket and the UPnP listener.
 *
 * @module
 */

import assert from "node:assert/strict";
import { closeQuietly, writeAll } from "../../src/runtime/conn.ts";

Deno.test("conn: writeAll writes every byte in order when each write takes only part", async () => {
  const got: number[] = [];
  const calls: number[] = [];
  // A sink that takes at most 3 bytes a call, as a busy socket may.
  const sink = {
    write(b: Uint8Array): Promise<number> {
      const n = Math.min(3, b.length);
      calls.push(n);
      got.push(...b.subarray(0, n));
      return Promise.resolve(n);
    },
  };
  const data = Uint8Array.from({ length: 10 }, (_, i) => i + 1);
  await writeAll(sink, data);
  assert.deepEqual(got, [...data]);
  assert.deepEqual(calls, [3, 3, 3, 1]);
  await writeAll(sink, new Uint8Array(0));
  assert.equal(calls.length, 4, "nothing to write: no call");
});

Deno.test("conn: closeQuietly closes, and a second close (already closed) does not throw", () => {
  let closes = 0;
  const c = {
    close(): void {
      closes++;
      if (closes > 1) throw new Deno.errors.BadResource("closed");
    },
  };
  closeQuietly(c);
  closeQuietly(c);
  assert.equal(closes, 2);
  assert.throws(() => c.close(), Deno.errors.BadResource, "the fake does throw when closed again");
});
