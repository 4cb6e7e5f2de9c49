/**
 * The client API's JSDoc examples (src/api.ts), run as written against a
 * real driver on h1, as root, on both data paths: the module's `@example`
 * blocks are taken from the source, their `@dpm/dpm` import pointed at
 * mod.ts, and each is run in h1's namespace with DPM_DRIVER_SOCKET naming
 * that driver's socket. What they print is checked against the driver.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { denoScript, DPM_ENV, withDpm } from "../../testing/launch.ts";
import { perDataPath } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const SOURCE = fileURLToPath(new URL("../../src/api.ts", import.meta.url));
const MOD_URL = new URL("../../mod.ts", import.meta.url).href;
/** The project's config: its import map (npm packages) applies to the examples too. */
const CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));

/** The `@example` code blocks of the module documentation, by title. */
function examples(source: string): Map<string, string> {
  const out = new Map<string, string>();
  const re = /@example ([^\n]*)\n \* ```ts[^\n]*\n((?: \*[^\n]*\n)*?) \* ```/g;
  for (const m of source.matchAll(re)) {
    const code = m[2]!.split("\n").map((l) => l.replace(/^ \* ?/, "")).join("\n");
    out.set(m[1]!.trim(), code.replaceAll('"@dpm/dpm"', JSON.stringify(MOD_URL)));
  }
  return out;
}

for (
  const def of perDataPath({
    name:
      "api root: the JSDoc examples of the client API (src/api.ts) run as written against a real driver",
    ...SAN,
    fn: (datapath) =>
      withDpm({ datapath, driverHosts: ["h1"] }, async (t, d) => {
        const h1 = t.hosts[0]!;
        const ex = examples(await Deno.readTextFile(SOURCE));
        assert.equal(ex.size, 3, `three examples: ${[...ex.keys()]}`);
        const dir = await Deno.makeTempDir();
        try {
          const run = async (title: string) => {
            const code = ex.get(title);
            assert.ok(code, `example "${title}" exists`);
            const file = `${dir}/${ex.size}-${crypto.randomUUID()}.ts`;
            await Deno.writeTextFile(file, code);
            const r = await t.exec(
              h1.ns,
              [
                ...denoScript(file, [], ["--config", CONFIG]),
              ],
              {
                timeoutMs: 30_000,
                env: { ...DPM_ENV, DPM_DRIVER_SOCKET: d.driverSocket("h1") },
              },
            );
            assert.equal(r.code, 0, `${title}: ${r.stdout}${r.stderr}`);
            return r.stdout;
          };
          const contact = await run("Learn the public pair before sending");
          const m = /^Contact: <sip:alice@(203\.0\.113\.\d+):(\d+)>$/m.exec(contact);
          assert.ok(m, contact);
          const q = await d.query("h1", "udp", "10.0.0.11:5060", "198.51.100.7:5060");
          assert.equal(q.public, `${m[1]}:${m[2]}`, "the example printed what the driver holds");

          assert.match(
            await run("Ask about a session that already exists"),
            /no such session \(yet\)/,
          );

          const reach = await run("Let every outside peer reach a local port");
          assert.match(reach, /^reach me at 203\.0\.113\.\d+:6000$/m);
          const st = await d.status();
          assert.equal(
            st.shown.filter((v) => String(v.flags).includes("map")).length,
            0,
            "the example deleted its mapping",
          );
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      }),
  })
) Deno.test(def);
