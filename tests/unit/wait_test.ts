/**
 * testing/wait.ts: the condition poller of the end-to-end tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import { waitFor } from "../../testing/wait.ts";

Deno.test("wait: waitFor polls until true and times out with a clear message", async () => {
  let n = 0;
  await waitFor(() => ++n >= 3, { what: "three calls", intervalMs: 1 });
  assert.equal(n, 3);
  await waitFor(async () => await Promise.resolve(true), { what: "an async condition" });
  const t0 = performance.now();
  await assert.rejects(
    waitFor(() => false, { what: "the impossible", timeoutMs: 50, intervalMs: 10 }),
    { message: "Timed out after 50 ms waiting for the impossible" },
  );
  assert.ok(performance.now() - t0 >= 45);
});
