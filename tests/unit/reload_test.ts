import assert from "node:assert/strict";
import { reloadReport } from "../../src/runtime/cleanup.ts";

Deno.test("reload: live keys are applied, the others named as needing a restart", () => {
  const applied: [string, unknown][] = [];
  const lines = reloadReport(
    { logLevel: "info", lifetime: 100, pool: [1, 2] },
    { logLevel: "debug", lifetime: 200, pool: [1, 2] },
    ["logLevel"],
    (k, v) => applied.push([String(k), v]),
  );
  assert.deepEqual(applied, [["logLevel", "debug"]]);
  assert.deepEqual(lines, [
    'reload: logLevel is now "debug"',
    "reload: lifetime changed but need a restart; keeping the running values",
  ]);
  assert.deepEqual(reloadReport({ a: 1 }, { a: 1 }, [], () => {}), [
    "reload: configuration unchanged",
  ]);
});
