/**
 * The module graph keeps its shape: no import cycle among the project's own
 * modules, and the layers import only what they may. The graph is
 * `deno info --json` of the entry points (mod.ts, demo.ts, bench/run.ts)
 * and of every module under src/ and linux/ that they do not reach, so a
 * module no entry point imports yet is checked too. Static, dynamic and type
 * imports all count.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ROOT_URL = new URL("../../", import.meta.url).href;
const ENTRY_POINTS = ["mod.ts", "demo.ts", "bench/run.ts"];

/** Project-relative path → project-relative paths it imports. */
type Graph = Map<string, Set<string>>;

interface InfoDependency {
  code?: { specifier: string };
  type?: { specifier: string };
}

interface InfoModule {
  specifier: string;
  dependencies?: InfoDependency[];
}

/** The project's own module of a specifier, project-relative, or null. */
function own(specifier: string): string | null {
  return specifier.startsWith(ROOT_URL) ? specifier.slice(ROOT_URL.length) : null;
}

/** Adds the project's modules of `deno info --json <root>` to `g`. */
async function addInfo(g: Graph, root: string): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", root],
    cwd: ROOT,
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `deno info --json ${root} failed:\n${err}`);
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
  for (const m of info.modules) {
    const from = own(m.specifier);
    if (from === null) continue;
    const deps = g.get(from) ?? new Set<string>();
    g.set(from, deps);
    for (const d of m.dependencies ?? []) {
      for (const r of [d.code, d.type]) {
        const to = r ? own(r.specifier) : null;
        if (to !== null) deps.add(to);
      }
    }
  }
}

/** Project-relative paths of the .ts files under `dir`. */
async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${ROOT}${dir}`)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await tsFiles(p));
    else if (e.isFile && e.name.endsWith(".ts")) out.push(p);
  }
  return out.sort();
}

let graphOnce: Promise<Graph> | null = null;

/** The graph of the entry points and of every module under src/ and linux/ (built once). */
function projectGraph(): Promise<Graph> {
  graphOnce ??= (async () => {
    const g: Graph = new Map();
    for (const e of ENTRY_POINTS) await addInfo(g, e);
    for (const f of [...await tsFiles("src"), ...await tsFiles("linux")]) {
      if (!g.has(f)) await addInfo(g, f);
    }
    return g;
  })();
  return graphOnce;
}

/**
 * The import cycles of `g`: one cycle per strongly connected component of
 * more than one module (or a module importing itself), as the path
 * `a -> b -> ... -> a`.
 */
function cycles(g: Graph): string[][] {
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const comps: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of g.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      for (;;) {
        const w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
        if (w === v) break;
      }
      if (comp.length > 1 || g.get(v)?.has(v)) comps.push(comp);
    }
  };
  for (const v of [...g.keys()].sort()) if (!index.has(v)) visit(v);

  // In each component, a shortest path from its first module back to itself.
  return comps.map((comp) => {
    const inComp = new Set(comp);
    const start = comp.slice().sort()[0]!;
    const prev = new Map<string, string>();
    const queue = [start];
    while (queue.length > 0) {
      const v = queue.shift()!;
      for (const w of [...(g.get(v) ?? [])].sort()) {
        if (!inComp.has(w)) continue;
        if (w === start) {
          const path: string[] = [];
          for (let u = v; u !== start; u = prev.get(u)!) path.unshift(u);
          return [start, ...path, start];
        }
        if (!prev.has(w)) {
          prev.set(w, v);
          queue.push(w);
        }
      }
    }
    return [...comp, comp[0]!];
  });
}

/** The imports of `g` breaking a rule: `from` may not import `to`. */
function violations(g: Graph, forbidden: (from: string, to: string) => boolean): string[] {
  const out: string[] = [];
  for (const [from, deps] of [...g].sort(([a], [b]) => a.localeCompare(b))) {
    for (const to of [...deps].sort()) if (forbidden(from, to)) out.push(`${from} imports ${to}`);
  }
  return out;
}

const under = (p: string, dir: string) => p.startsWith(`${dir}/`);

Deno.test("architecture: the cycle finder names a planted cycle", () => {
  const g: Graph = new Map([
    ["a.ts", new Set(["b.ts"])],
    ["b.ts", new Set(["c.ts", "d.ts"])],
    ["c.ts", new Set(["a.ts"])],
    ["d.ts", new Set(["d.ts"])],
    ["e.ts", new Set(["a.ts"])],
  ]);
  assert.deepEqual(cycles(g).sort(), [["a.ts", "b.ts", "c.ts", "a.ts"], ["d.ts", "d.ts"]]);
  assert.deepEqual(cycles(new Map([["a.ts", new Set(["b.ts"])]])), []);
});

Deno.test("architecture: no import cycle among the project's modules", async () => {
  const g = await projectGraph();
  for (const e of ENTRY_POINTS) assert.ok(g.has(e), `${e} is in the graph`);
  const found = cycles(g).map((c) => c.join(" -> "));
  assert.deepEqual(found, [], `import cycles:\n  ${found.join("\n  ")}`);
});

Deno.test("architecture: no file under src/ but the flag table (config.ts) is over 700 lines", async () => {
  const long: string[] = [];
  for (const f of await tsFiles("src")) {
    if (f === "src/config.ts") continue;
    const lines = (await Deno.readTextFile(`${ROOT}${f}`)).split("\n").length - 1;
    if (lines > 700) long.push(`${f}: ${lines} lines (split it by job)`);
  }
  assert.deepEqual(long, [], long.join("\n"));
});

Deno.test("architecture: nothing under src/ imports testing/", async () => {
  const bad = violations(await projectGraph(), (f, t) => under(f, "src") && under(t, "testing"));
  assert.deepEqual(bad, [], bad.join("\n"));
});

Deno.test("architecture: src/wire imports nothing outside src/wire", async () => {
  const bad = violations(
    await projectGraph(),
    (f, t) => under(f, "src/wire") && !under(t, "src/wire"),
  );
  assert.deepEqual(bad, [], bad.join("\n"));
});

Deno.test("architecture: linux/ imports nothing from src/ but src/wire", async () => {
  const bad = violations(
    await projectGraph(),
    (f, t) => under(f, "linux") && under(t, "src") && !under(t, "src/wire"),
  );
  assert.deepEqual(bad, [], bad.join("\n"));
});

/** The data path implementations: a folder under src/datapath/ each. */
const IMPLS = ["src/datapath/queue", "src/datapath/kernel", "src/datapath/bpf"];
const implOf = (p: string) => IMPLS.find((d) => under(p, d)) ?? null;

Deno.test("architecture: only src/datapath/open.ts imports the data path implementations", async () => {
  const bad = violations(
    await projectGraph(),
    (f, t) => implOf(t) !== null && implOf(f) === null && f !== "src/datapath/open.ts",
  );
  assert.deepEqual(bad, [], bad.join("\n"));
});

Deno.test("architecture: a data path implementation imports no other implementation", async () => {
  const bad = violations(
    await projectGraph(),
    (f, t) => implOf(f) !== null && implOf(t) !== null && implOf(f) !== implOf(t),
  );
  assert.deepEqual(bad, [], bad.join("\n"));
});

Deno.test("architecture: only the process files (run, cleanup, a worker thread's entry, the control socket they serve) and src/datapath/ import linux/", async () => {
  const allowed = (f: string) =>
    under(f, "src/datapath") || /^src\/[a-z]+\/(run|cleanup|worker)\.ts$/.test(f) ||
    f === "src/server/control_socket.ts";
  const bad = violations(
    await projectGraph(),
    (f, t) => under(f, "src") && under(t, "linux") && !allowed(f),
  );
  assert.deepEqual(bad, [], bad.join("\n"));
});

Deno.test("architecture: only the bpf path's programs.ts imports the compiled BPF objects", async () => {
  const bad = violations(
    await projectGraph(),
    (f, t) =>
      t === "bpf/objects.ts" && f !== "src/datapath/bpf/programs.ts" && !under(f, "testing"),
  );
  assert.deepEqual(bad, [], bad.join("\n"));
  assert.ok(
    (await projectGraph()).get("src/datapath/bpf/programs.ts")?.has("bpf/objects.ts"),
    "programs.ts imports bpf/objects.ts",
  );
});

Deno.test("architecture: the rule checks name a planted violation", () => {
  const g: Graph = new Map([
    ["src/datapath/kernel/server.ts", new Set(["src/datapath/queue/server.ts"])],
    ["src/server/core.ts", new Set(["src/datapath/kernel/server.ts", "linux/nft.ts"])],
    ["src/server/run.ts", new Set(["linux/iface.ts"])],
  ]);
  assert.deepEqual(
    violations(g, (f, t) => implOf(f) !== null && implOf(t) !== null && implOf(f) !== implOf(t)),
    ["src/datapath/kernel/server.ts imports src/datapath/queue/server.ts"],
  );
  assert.deepEqual(
    violations(g, (f, t) => under(f, "src") && under(t, "linux") && !/\/run\.ts$/.test(f)),
    ["src/server/core.ts imports linux/nft.ts"],
  );
});
