/**
 * The guard of the root tests (tests/root/): wrap a test's definition in
 * {@linkcode needsRoot}. When the process is not root the test is ignored,
 * its name says why, and the module prints a one-line notice, so a non-root
 * `deno task test` reports skipped root tests instead of failures.
 *
 * ```ts
 * import { needsRoot } from "../../testing/root.ts";
 *
 * Deno.test(needsRoot("nfqueue root: every packet comes through", async () => {}));
 * Deno.test(needsRoot({ name: "control root: ...", sanitizeOps: false, fn: async () => {} }));
 * ```
 *
 * @module
 */

/** Why root tests are skipped; appended to the name of each skipped test. */
export const NOT_ROOT_REASON = "needs root";

/**
 * True when the process runs as root (uid 0). False when it does not, when
 * the uid is unknown (not Linux), or when `--allow-sys` does not allow
 * reading it.
 */
export function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

let noticed = false;

/** The file that called {@linkcode needsRoot}, for the notice ("" when unknown). */
function callerFile(): string {
  const lines = (new Error().stack ?? "").split("\n");
  for (const l of lines) {
    const m = /(file:\/\/[^\s)]+?):\d+:\d+/.exec(l);
    if (m && !m[1]!.endsWith("/testing/root.ts")) {
      const path = decodeURIComponent(new URL(m[1]!).pathname);
      const i = path.lastIndexOf("/tests/");
      return i >= 0 ? path.slice(i + 1) : path;
    }
  }
  return "";
}

/**
 * The definition of a test that needs root, for `Deno.test`: as given when
 * the process is root; otherwise ignored, with the reason in its name (and a
 * one-line notice, once per module). `Deno.test` is called by the test file
 * itself, so failures point at the test, not at this module.
 */
export function needsRoot(def: Deno.TestDefinition): Deno.TestDefinition;
/** The same, for `Deno.test(name, fn)`. */
export function needsRoot(
  name: string,
  fn: (t: Deno.TestContext) => void | Promise<void>,
): Deno.TestDefinition;
export function needsRoot(
  a: Deno.TestDefinition | string,
  b?: (t: Deno.TestContext) => void | Promise<void>,
): Deno.TestDefinition {
  const def: Deno.TestDefinition = typeof a === "string" ? { name: a, fn: b! } : a;
  if (isRoot()) return def;
  if (!noticed) {
    noticed = true;
    const file = callerFile();
    console.log(
      `Skipping the root tests${file ? ` of ${file}` : ""} (${NOT_ROOT_REASON}): ` +
        "run `sudo deno task test` to include them.",
    );
  }
  return { ...def, name: `${def.name} [skipped: ${NOT_ROOT_REASON}]`, ignore: true };
}

/** The data paths every end-to-end behaviour is tested on. */
export const DATAPATHS = ["bpf", "kernel", "queue"] as const;
/** One of {@linkcode DATAPATHS}. */
export type DataPathName = (typeof DATAPATHS)[number];

/**
 * One root test definition per data path, for `Deno.test`: the name's
 * leading "<kind> root" gets " [bpf]", " [kernel]" or " [queue]", and `fn` is given
 * the data path. `Deno.test` is called by the test file, so failures point
 * at it.
 *
 * ```ts
 * for (const t of perDataPath({ name: "e2e root: ...", fn: (dp) => run(dp) })) Deno.test(t);
 * ```
 */
export function perDataPath(
  def: Omit<Deno.TestDefinition, "fn"> & { fn: (datapath: DataPathName) => Promise<void> },
): Deno.TestDefinition[] {
  return DATAPATHS.map((dp) =>
    needsRoot({
      ...def,
      name: def.name.replace(/^(\w+ root)/, `$1 [${dp}]`),
      fn: () => def.fn(dp),
    })
  );
}
