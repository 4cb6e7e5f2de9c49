import assert from "node:assert/strict";
import { reloadReport, runRole } from "../../src/runtime/cleanup.ts";
import type { Logger } from "../../src/runtime/log.ts";
import { useNotifier } from "../../src/runtime/notify.ts";

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

/** A logger that keeps its lines. */
function kept(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    error: (m) => lines.push(`error ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    info: (m) => lines.push(`info ${m}`),
    debug: () => {},
  };
}

const SETTINGS = { logLevel: "info", logFormat: "text" } as const;

Deno.test("role: a run says ready, stops with the code it was given, says why, undoes everything", async () => {
  const log = kept();
  const states: string[] = [];
  useNotifier((s) => states.push(s));
  const undone: string[] = [];
  try {
    const code = await runRole({ log, role: "tester", cfg: SETTINGS }, (undo, stop) => {
      undo.push(() => void undone.push("socket"));
      undo.push(() => void undone.push("rules"));
      setTimeout(() => stop(3), 0);
      return Promise.resolve({ stopping: () => "stopping: 7 sessions" });
    });
    assert.equal(code, 3);
    assert.deepEqual(undone, ["rules", "socket"], "last set up, first undone");
    assert.deepEqual(log.lines, ["info ready", "info stopping: 7 sessions"]);
    assert.deepEqual(states, ["READY=1\nSTATUS=tester ready", "STOPPING=1"]);
  } finally {
    useNotifier(() => {});
  }
});

Deno.test("role: a start that throws is logged and undone, with its exit code; a finished one just undone", async () => {
  const log = kept();
  let undone = 0;
  const failCode = (e: unknown) => (e instanceof RangeError ? 2 : 1);
  const code = await runRole({ log, role: "tester", cfg: SETTINGS, failCode }, (undo) => {
    undo.push(() => void undone++);
    return Promise.reject(new RangeError("port 4750 is taken"));
  });
  assert.equal(code, 2);
  assert.equal(undone, 1);
  assert.deepEqual(log.lines, ["error port 4750 is taken"]);
  const done = await runRole({ log: kept(), role: "tester", cfg: SETTINGS }, (undo) => {
    undo.push(() => void undone++);
    return Promise.resolve(0); // --cleanup: over before it is ready
  });
  assert.equal(done, 0);
  assert.equal(undone, 2);
});
