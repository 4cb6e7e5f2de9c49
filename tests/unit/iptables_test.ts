/**
 * dpm's iptables helpers that need no root: rule splitting, argument checks
 * made before anything runs, and the message for a missing binary.
 *
 * @module
 */

import assert from "node:assert/strict";
import { installChains, removeChains, splitRule } from "../../linux/iptables.ts";

Deno.test("iptables: splitRule honours iptables' quotes", () => {
  assert.deepEqual(
    splitRule('-A X -p tcp -m comment --comment "dpm: \\"a\\" b" -j ACCEPT'),
    ["-A", "X", "-p", "tcp", "-m", "comment", "--comment", 'dpm: "a" b', "-j", "ACCEPT"],
  );
  assert.deepEqual(splitRule("-A PREROUTING -j DPM-X"), ["-A", "PREROUTING", "-j", "DPM-X"]);
});

Deno.test("iptables: malformed chain names are refused before running anything", async () => {
  await assert.rejects(
    () => installChains([{ table: "raw", hook: "OUTPUT", chain: "X".repeat(29), rules: [] }]),
    TypeError,
  );
  await assert.rejects(
    () => removeChains([{ table: "raw", hook: "OUTPUT", chain: "-j ACCEPT", rules: [] }]),
    TypeError,
  );
});

Deno.test("iptables: a missing iptables binary gives a clear error", async () => {
  // In a child with an empty PATH: changing this process's PATH could
  // disturb tests running beside this one.
  const mod = new URL("../../linux/iptables.ts", import.meta.url).href;
  const code = `import { listChain } from "${mod}";
    try { await listChain("raw", "DPM-T-PRE"); console.log("no error"); }
    catch (e) { console.log(e.message); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { PATH: "/nonexistent" },
    clearEnv: false,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.match(text, /iptables not found: install the iptables package/);
});
