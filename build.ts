/**
 * `deno task build`: the single `dpm` executable, with `deno compile`.
 *
 * ```sh
 * deno task build                                  # dist/dpm-x86_64-unknown-linux-gnu, dist/dpm-aarch64-unknown-linux-gnu
 * deno task build --target aarch64-unknown-linux-gnu --out /tmp/dpm
 * DENORT_BIN=/path/to/denort deno task build       # offline: that runtime instead of a download
 * deno task build --check                          # offline check: type-check and bundle (dist/dpm.bundle.js)
 * ```
 *
 * `deno compile` joins dpm's code to `denort`, Deno's runtime for one
 * target, which it downloads from Deno's release server. Where that server is
 * out of reach, `DENORT_BIN` names a denort of the same Deno version to use
 * instead (it is passed through the environment; `deno compile` reads it).
 * A denort runs on one architecture only: with `DENORT_BIN` set, the default
 * targets shrink to the one matching its architecture, and a `--target` of
 * another architecture is refused before anything is built.
 *
 * Permissions are baked in ({@linkcode PERMISSIONS}: all of them, since Deno
 * lets a program write sysctls under /proc/sys only with --allow-all). A
 * Worker module is not followed by `deno compile` (nor inlined by `deno
 * bundle`): list every one in {@linkcode INCLUDE}.
 *
 * `--check` needs no runtime download: it type-checks mod.ts (and
 * {@linkcode INCLUDE}), bundles it with `deno bundle` into one JavaScript file
 * and runs that file's `--version`.
 *
 * Exit status: 0 built, 1 a build failed (with the reason, never a stack
 * trace), 2 bad flags.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { VERSION } from "./mod.ts";

/** The targets dpm is built for: Linux only (netfilter queue, iptables). */
export const TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] as const;

/**
 * Permissions baked into the executable. dpm uses network, FFI (netfilter
 * queue), run (iptables), read, write, env and sys; but Deno grants writes
 * under /proc/sys (the server's sysctls) only with --allow-all ("Requires all
 * access"), so the precise list is not enough.
 */
export const PERMISSIONS = ["--allow-all"] as const;

/**
 * Modules `deno compile` must embed although no static import reaches them
 * (Worker modules, `new Worker(new URL("./x.ts", import.meta.url))`), relative
 * to the repository root. dpm has none today.
 */
export const INCLUDE: readonly string[] = [];

const ROOT = fileURLToPath(new URL(".", import.meta.url));
const ENTRY = "mod.ts";
const DEFAULT_OUT = `${ROOT}dist`;

/** ELF `e_machine` of each target's architecture. */
const ELF_MACHINE: Record<(typeof TARGETS)[number], number> = {
  "x86_64-unknown-linux-gnu": 0x3e,
  "aarch64-unknown-linux-gnu": 0xb7,
};

const USAGE = `Usage: deno task build [--target <triple>]... [--out <dir>] [--check]

  --target <triple>  build for this target (repeatable); default: ${TARGETS.join(", ")}
  --out <dir>        where the executables go (default dist/)
  --check            offline check only: type-check mod.ts, bundle it into
                     <out>/dpm.bundle.js with deno bundle, run its --version
  --help             this text

Environment:
  DENORT_BIN=/path/to/denort  the Deno runtime (denort, Deno ${Deno.version.deno}) for deno compile
                              to use instead of downloading it; one architecture per run`;

class BuildError extends Error {}
class UsageError extends Error {}

interface Options {
  targets: string[];
  out: string;
  check: boolean;
}

function parse(args: string[]): Options | null {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        target: { type: "string", multiple: true },
        out: { type: "string" },
        check: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) return null;
  const targets = [...new Set(v.target ?? [])];
  for (const t of targets) {
    if (!(TARGETS as readonly string[]).includes(t)) {
      throw new UsageError(`Unknown target "${t}": dpm builds for ${TARGETS.join(", ")}`);
    }
  }
  if (v.out === "") throw new UsageError("Empty --out");
  return { targets, out: v.out ?? DEFAULT_OUT, check: v.check === true };
}

/** Runs a command in the repository root; never throws for a non-zero exit. */
async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ ok: boolean; out: string; err: string }> {
  let r;
  try {
    r = await new Deno.Command(cmd, {
      args,
      cwd: ROOT,
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new BuildError(`Cannot run ${cmd}: ${(e as Error).message}`);
  }
  const dec = new TextDecoder();
  return { ok: r.success, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

/** Deno's error text without progress lines and without the backtrace, indented. */
function reason(stderr: string, maxLines = 12): string {
  const lines: string[] = [];
  for (const l of stderr.split("\n")) {
    if (/^\s*Stack backtrace:/.test(l)) break;
    if (/^(Check|Compile|Download|Bundled|Warning) /.test(l.trim()) || !l.trim()) continue;
    lines.push(`  ${l.trimEnd()}`);
  }
  if (lines.length > maxLines) lines.splice(maxLines, lines.length - maxLines, "  ...");
  return lines.join("\n") || "  (no message)";
}

function size(path: string): string {
  const n = Deno.statSync(path).size;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** The target a denort file runs on, from its ELF header. */
function denortTarget(path: string): (typeof TARGETS)[number] {
  let head: Uint8Array;
  try {
    const f = Deno.openSync(path, { read: true });
    try {
      head = new Uint8Array(20);
      const n = f.readSync(head) ?? 0;
      head = head.subarray(0, n);
    } finally {
      f.close();
    }
  } catch (e) {
    throw new BuildError(
      `Cannot read DENORT_BIN=${path}: ${(e as Error).message}\n` +
        `Set DENORT_BIN to the path of a denort ${Deno.version.deno} binary, or unset it.`,
    );
  }
  const elf = head.length === 20 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c &&
    head[3] === 0x46;
  const machine = elf ? head[18]! | (head[19]! << 8) : -1;
  const t = TARGETS.find((t) => ELF_MACHINE[t] === machine);
  if (!t) {
    throw new BuildError(
      `DENORT_BIN=${path} is not a Linux x86_64 or aarch64 executable` +
        ` (denort for ${TARGETS.join(" or ")} expected)`,
    );
  }
  return t;
}

async function check(o: Options): Promise<void> {
  const entries = [ENTRY, ...INCLUDE];
  console.log(`Type-checking ${entries.join(", ")}`);
  const c = await run(Deno.execPath(), ["check", "--quiet", ...entries]);
  if (!c.ok) throw new BuildError(`Type check failed:\n${reason(c.err, 40)}`);

  await Deno.mkdir(o.out, { recursive: true });
  const bundle = `${o.out.replace(/\/+$/, "")}/dpm.bundle.js`;
  console.log(`Bundling ${ENTRY} with deno bundle`);
  const b = await run(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform",
    "deno",
    "--output",
    bundle,
    ENTRY,
  ]);
  if (!b.ok) throw new BuildError(`deno bundle failed:\n${reason(b.err, 40)}`);
  for (const inc of INCLUDE) {
    console.log(`  note: ${inc} is a separate module (a Worker): deno bundle does not inline it`);
  }

  const v = await run(Deno.execPath(), ["run", ...PERMISSIONS, bundle, "--version"]);
  if (!v.ok || v.out.trim() !== `dpm ${VERSION}`) {
    throw new BuildError(
      `The bundle does not run: "deno run ${bundle} --version" printed "${v.out.trim()}"\n` +
        reason(v.err),
    );
  }
  console.log(`  ${bundle}  ${size(bundle)}  (runs: ${v.out.trim()})`);
}

async function compile(o: Options): Promise<void> {
  const denort = Deno.env.get("DENORT_BIN") || undefined;
  let targets = o.targets;
  if (denort) {
    const arch = denortTarget(denort);
    if (targets.length === 0) {
      targets = [arch];
      const others = TARGETS.filter((t) => t !== arch);
      console.log(
        `DENORT_BIN is the runtime for ${arch}: building ${arch} only ` +
          `(${others.join(", ")} needs its own denort, in another run)`,
      );
    }
    const wrong = targets.filter((t) => t !== arch);
    if (wrong.length > 0) {
      throw new BuildError(
        `Cannot build ${
          wrong.join(", ")
        } with DENORT_BIN=${denort}: it is the runtime for ${arch}.\n` +
          `A denort runs on one architecture: build each target in its own run with its own DENORT_BIN.`,
      );
    }
  }
  if (targets.length === 0) targets = [...TARGETS];

  await Deno.mkdir(o.out, { recursive: true });
  const built: string[] = [];
  for (const target of targets) {
    const exe = `${o.out.replace(/\/+$/, "")}/dpm-${target}`;
    console.log(`Compiling dpm ${VERSION} for ${target}${denort ? ` (DENORT_BIN=${denort})` : ""}`);
    const r = await run(Deno.execPath(), [
      "compile",
      "--target",
      target,
      "--output",
      exe,
      ...PERMISSIONS,
      "--no-prompt",
      ...INCLUDE.flatMap((m) => ["--include", m]),
      ENTRY,
    ], denort ? { DENORT_BIN: denort } : {});
    if (!r.ok) {
      const runtime = /denort|dl\.deno\.land|base binary/i.test(r.err);
      if (runtime && !denort) {
        throw new BuildError(
          `Cannot build dpm for ${target}: deno compile could not download the Deno runtime ` +
            `(denort ${Deno.version.deno} for ${target}):\n${reason(r.err)}\n\n` +
            `To build offline, get that denort (the release archive denort-${target}.zip of ` +
            `Deno ${Deno.version.deno}, unzipped) and point DENORT_BIN at it:\n` +
            `  DENORT_BIN=/path/to/denort deno task build --target ${target}\n` +
            `To check the sources without it: deno task build --check`,
        );
      }
      if (runtime) {
        throw new BuildError(
          `Cannot build dpm for ${target} with DENORT_BIN=${denort}:\n${reason(r.err)}`,
        );
      }
      throw new BuildError(`deno compile failed for ${target}:\n${reason(r.err, 40)}`);
    }
    built.push(exe);
    // Where the executable can run here, make sure it is dpm.
    if (target === hostTarget()) {
      const v = await run(exe, ["--version"]);
      if (!v.ok || v.out.trim() !== `dpm ${VERSION}`) {
        await Deno.remove(exe).catch(() => {});
        throw new BuildError(
          `${exe} was built but does not run as dpm (removed it): "--version" printed ` +
            `"${v.out.trim().split("\n")[0]}"` +
            (denort ? `\nIs DENORT_BIN=${denort} a denort of Deno ${Deno.version.deno}?` : ""),
        );
      }
    }
    console.log(`  ${exe}  ${size(exe)}`);
  }
}

function hostTarget(): string | null {
  if (Deno.build.os !== "linux") return null;
  return Deno.build.arch === "x86_64"
    ? "x86_64-unknown-linux-gnu"
    : Deno.build.arch === "aarch64"
    ? "aarch64-unknown-linux-gnu"
    : null;
}

/** Runs the build; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  try {
    const o = parse(args);
    if (!o) return console.log(USAGE), 0;
    if (o.check) await check(o);
    else await compile(o);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`build: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof BuildError) {
      console.error(`build: ${e.message}`);
      return 1;
    }
    console.error(`build: unexpected error: ${(e as Error)?.message ?? e}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
