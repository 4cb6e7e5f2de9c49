/**
 * The documents generated from the flag table (src/config.ts →
 * src/cli/docs.ts): every flag appears in the help, the man page, the JSON
 * Schema and the completions; the files in contrib/ are up to date; the
 * completions are valid shell.
 */

import assert from "node:assert/strict";
import { type Command, COMMANDS } from "../../src/config.ts";
import {
  bashCompletion,
  commandHelp,
  jsonSchema,
  mainHelp,
  manPage,
  zshCompletion,
} from "../../src/cli/docs.ts";
import { main } from "../../src/cli/main.ts";
import { GENERATED } from "../../tools/gen-docs.ts";

const ROOT = new URL("../../", import.meta.url);

const flagNames = (c: Command) =>
  Object.entries(c.flags).map(([n, f]) => (f.negated ? `no-${n}` : n));

Deno.test("docs: every flag of the table is in its command's help, the man page and the completions", () => {
  const man = manPage();
  const bash = bashCompletion();
  const zsh = zshCompletion();
  for (const [name, c] of Object.entries(COMMANDS) as [string, Command][]) {
    const help = commandHelp(name as keyof typeof COMMANDS);
    for (const f of flagNames(c)) {
      assert.ok(help.includes(`--${f}`), `${name} help lists --${f}`);
      assert.ok(man.includes(`\\-\\-${f.replaceAll("-", "\\-")}`), `man page lists --${f}`);
      assert.ok(bash.includes(`--${f}`), `bash completion offers --${f}`);
      assert.ok(zsh.includes(`'--${f}`), `zsh completion offers --${f}`);
    }
    assert.ok(mainHelp().includes(c.synopsis), `main help shows ${name}`);
  }
});

Deno.test("docs: the JSON Schemas list every config key, require the required ones, and refuse others", () => {
  for (const role of ["server", "driver"] as const) {
    const s = jsonSchema(role) as {
      properties: Record<string, unknown>;
      required: string[];
      additionalProperties: boolean;
    };
    for (const [n, f] of Object.entries(COMMANDS[role].flags)) {
      assert.ok(n in s.properties, `${role} schema has ${n}`);
      if (f.negated) assert.ok(`no-${n}` in s.properties);
    }
    assert.deepEqual(s.required, role === "server" ? ["lan-addr", "pool"] : ["server"]);
    assert.equal(s.additionalProperties, false);
  }
  // The example configs in contrib/ use only keys the schema knows.
  for (const role of ["server", "driver"] as const) {
    const ex = JSON.parse(
      Deno.readTextFileSync(new URL(`contrib/${role}.example.json`, ROOT)),
    ) as Record<string, unknown>;
    const props = (jsonSchema(role) as { properties: Record<string, unknown> }).properties;
    for (const k of Object.keys(ex)) assert.ok(k in props, `${role}.example.json key ${k}`);
  }
});

Deno.test("docs: contrib/ holds the generated files as the table makes them (run deno task docs)", () => {
  for (const [path, make] of Object.entries(GENERATED)) {
    const have = Deno.readTextFileSync(new URL(path, ROOT));
    assert.equal(have, make(), `${path} is out of date: run 'deno task docs'`);
  }
});

Deno.test("docs: the completions are valid bash and zsh", async () => {
  for (
    const [shell, file] of [["bash", "contrib/completion/dpm.bash"], [
      "zsh",
      "contrib/completion/_dpm",
    ]]
  ) {
    let r: Deno.CommandOutput;
    try {
      r = await new Deno.Command(shell!, {
        args: ["-n", new URL(file!, ROOT).pathname],
        stderr: "piped",
      })
        .output();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(`${shell} is not installed (tools/install-deps installs it)`);
      }
      throw e;
    }
    assert.equal(r.code, 0, `${shell} -n: ${new TextDecoder().decode(r.stderr)}`);
  }
});

Deno.test("cli: -h and help work for every command and print the same as --help", async () => {
  const out: string[] = [];
  const orig = console.log;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  try {
    for (const name of Object.keys(COMMANDS)) {
      out.length = 0;
      assert.equal(await main([name, "-h"]), 0);
      const h = out.join("\n");
      out.length = 0;
      assert.equal(await main(["help", name]), 0);
      assert.equal(out.join("\n"), h, `dpm help ${name} = dpm ${name} -h`);
      assert.match(h, new RegExp(`^Usage: dpm ${name}`));
    }
    out.length = 0;
    assert.equal(await main(["help"]), 0);
    assert.match(out.join("\n"), /dpm help \[command\]/);
  } finally {
    console.log = orig;
  }
});
