/**
 * linux/exec.ts, the one program runner: arguments reach the program as
 * given (no shell), stdin is written, and a failure names the program, its
 * arguments, its exit code and its stderr. No root needed: the program run
 * is Deno itself.
 *
 * @module
 */

import assert from "node:assert/strict";
import { check, ExecError, run } from "../../linux/exec.ts";

const DENO = Deno.execPath();
/** A child that prints its arguments and stdin as JSON, complains on stderr and exits with code 3 when told to. */
const CHILD = `const input = await new Response(Deno.stdin.readable).text();
console.log(JSON.stringify({ args: Deno.args, input }));
if (Deno.args[0] === "fail") { console.error("  no such chain  "); Deno.exit(3); }`;

Deno.test("exec: arguments are passed as they are, never through a shell; stdin is written", async () => {
  const args = ["eval", CHILD, "--", "a b", "$(id)", "'; rm -rf /"];
  const r = await run(DENO, args, { stdin: "line 1\n" });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.program, DENO);
  assert.deepEqual(r.args, args);
  assert.deepEqual(JSON.parse(r.stdout), {
    args: ["a b", "$(id)", "'; rm -rf /"],
    input: "line 1\n",
  });
  // Without stdin the program reads an empty /dev/null.
  assert.deepEqual(JSON.parse(await check(DENO, ["eval", CHILD])), { args: [], input: "" });
});

Deno.test("exec: a failure names the program, its arguments, its exit code and its stderr", async () => {
  const r = await run(DENO, ["eval", CHILD, "--", "fail"]);
  assert.equal(r.code, 3);
  assert.equal(r.stderr, "no such chain");
  const e = await check(DENO, ["eval", CHILD, "--", "fail", "x y"], { what: "Cannot list" }).then(
    () => null,
    (e) => e,
  );
  assert.ok(e instanceof ExecError, String(e));
  assert.equal(e.code, 3);
  assert.equal(e.stderr, "no such chain");
  assert.deepEqual(e.args.slice(-2), ["fail", "x y"]);
  assert.ok(e.message.startsWith(`Cannot list: ${DENO} eval `), e.message);
  assert.ok(e.message.endsWith(`-- fail "x y" exited with code 3: no such chain`), e.message);
});

Deno.test("exec: a program that is not installed is named (with its package: iptables_test.ts)", async () => {
  await assert.rejects(
    () => run("dpm-no-such-program", ["x"]),
    (e: unknown) =>
      e instanceof ExecError && e.code === null &&
      e.message === "dpm-no-such-program not found: is it installed?",
  );
});
