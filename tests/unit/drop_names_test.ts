/**
 * Every drop reason dpm counts is explained in docs/datapath.md ("Drop
 * reasons"), and that table names nothing dpm does not count.
 *
 * @module
 */

import assert from "node:assert/strict";
import { DROP_NAMES } from "../../src/wire/packet.ts";

Deno.test("docs: the drop reasons table lists every drop name and no other", async () => {
  const doc = await Deno.readTextFile(new URL("../../docs/datapath.md", import.meta.url));
  const section = doc.split("## Drop reasons")[1]?.split("\n## ")[0] ?? "";
  const documented = [...section.matchAll(/^\| `([a-z0-9-]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(documented, DROP_NAMES.slice(1), "the table, in code order (none excluded)");
});
