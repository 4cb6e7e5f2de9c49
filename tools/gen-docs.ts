/**
 * `deno task docs`: writes what `src/cli/docs.ts` generates from the flag
 * table into contrib/ (the man page, config JSON Schemas, shell
 * completions). tests/unit/docs_test.ts fails when they are out of date.
 */

import { bashCompletion, jsonSchema, manPage, zshCompletion } from "../src/cli/docs.ts";

export const GENERATED: Record<string, () => string> = {
  "contrib/dpm.8": () => manPage(),
  "contrib/schema/server.schema.json": () => JSON.stringify(jsonSchema("server"), null, 2) + "\n",
  "contrib/schema/driver.schema.json": () => JSON.stringify(jsonSchema("driver"), null, 2) + "\n",
  "contrib/completion/dpm.bash": () => bashCompletion(),
  "contrib/completion/_dpm": () => zshCompletion(),
};

if (import.meta.main) {
  const root = new URL("..", import.meta.url);
  for (const [path, make] of Object.entries(GENERATED)) {
    const url = new URL(path, root);
    await Deno.mkdir(new URL(".", url), { recursive: true });
    await Deno.writeTextFile(url, make());
    console.log(`wrote ${path}`);
  }
}
