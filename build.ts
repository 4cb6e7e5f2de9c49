/**
 * `deno task build`: the single `dpm` executable, with `deno compile`.
 *
 * ```sh
 * deno task build                                  # dist/dpm-<target>, .sha256, dist/dpm_<version>_<arch>.deb, .sha256
 * deno task build --target aarch64-unknown-linux-gnu --out /tmp/dpm
 * DENORT_BIN=/path/to/denort deno task build       # offline: that runtime instead of a download
 * deno task build --no-deb                         # the executables (and their .sha256) only
 * deno task build --bundle                         # no denort: dist/dpm.bundle.js and dpm_<version>_all.deb
 * deno task build --check                          # offline check: type-check and bundle (dist/dpm.bundle.js)
 * ```
 *
 * Packages: for each executable a Debian package (`dpkg-deb --build
 * --root-owner-group`, architecture amd64 or arm64) with /usr/bin/dpm, the
 * systemd units (lib/systemd/system/, ExecStart=/usr/bin/dpm), the man page,
 * bash and zsh completions and, under /usr/share/doc/dpm/, the README, the
 * example configs and the JSON schemas; Depends: nftables, iptables,
 * conntrack, iproute2. Every artifact gets a `<file>.sha256` beside it, in
 * `sha256sum -c` format. Where `deno compile` cannot run (no denort),
 * `--bundle` packages the `deno bundle` output instead (architecture all:
 * /usr/lib/dpm/dpm.bundle.js and a /usr/bin/dpm launcher that runs it with the
 * `deno` on PATH, which the package cannot depend on: Deno is not a Debian
 * package).
 *
 * No phoning home: DENO_NO_UPDATE_CHECK=1 is in the units, in the bundle
 * launcher, and embedded in the executable (`deno compile --env-file`; denort
 * has no update check of its own, this makes sure).
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
import { gzipSync } from "node:zlib";
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
 * to the repository root: the server's workers (`dpm server --workers N`).
 */
export const INCLUDE: readonly string[] = ["src/server/worker.ts"];

const ROOT = fileURLToPath(new URL(".", import.meta.url));
const ENTRY = "mod.ts";
const DEFAULT_OUT = `${ROOT}dist`;

/** ELF `e_machine` of each target's architecture. */
const ELF_MACHINE: Record<(typeof TARGETS)[number], number> = {
  "x86_64-unknown-linux-gnu": 0x3e,
  "aarch64-unknown-linux-gnu": 0xb7,
};

/** Debian architecture of each target. */
export const DEB_ARCH: Record<(typeof TARGETS)[number], string> = {
  "x86_64-unknown-linux-gnu": "amd64",
  "aarch64-unknown-linux-gnu": "arm64",
};

/** What the packages need at run time (Debian package names). */
export const DEB_DEPENDS = ["nftables", "iptables", "conntrack", "iproute2"] as const;

/** Where the bundle package keeps the bundle; /usr/bin/dpm runs it. */
export const BUNDLE_PATH = "/usr/lib/dpm/dpm.bundle.js";

/**
 * /usr/bin/dpm of the bundle package: runs the bundle with the `deno` on PATH
 * (or $DPM_DENO), without Deno's update check; a clear message and exit 127
 * when there is no deno.
 */
export const LAUNCHER = `#!/bin/sh
# dpm launcher (the "bundle" package): runs dpm's bundle with the system's deno.
# The daemon must not phone home: no Deno update check.
export DENO_NO_UPDATE_CHECK=1
deno="\${DPM_DENO:-\$(command -v deno)}"
if [ -z "\$deno" ] || [ ! -x "\$deno" ]; then
  echo "dpm: cannot find deno on PATH (\${PATH:-unset})." >&2
  echo "This dpm package runs ${BUNDLE_PATH} with Deno ${Deno.version.deno} or later," >&2
  echo "which is not a Debian package: install it (e.g. npm install -g deno), or set DPM_DENO=/path/to/deno." >&2
  exit 127
fi
exec "\$deno" run --allow-all --quiet --no-config ${BUNDLE_PATH} "\$@"
`;

const USAGE =
  `Usage: deno task build [--target <triple>]... [--out <dir>] [--no-deb] [--bundle | --check]

  --target <triple>  build for this target (repeatable); default: ${TARGETS.join(", ")}
  --out <dir>        where the artifacts go (default dist/)
  --no-deb           the executables (and their .sha256) only, no .deb
  --bundle           without deno compile (no denort): bundle mod.ts with deno
                     bundle into <out>/dpm.bundle.js and package it as
                     <out>/dpm_${VERSION}_all.deb (its /usr/bin/dpm runs the
                     bundle with the deno on PATH)
  --check            offline check only: type-check mod.ts, bundle it into
                     <out>/dpm.bundle.js with deno bundle, run its --version
  --help             this text

Every artifact gets a <file>.sha256 beside it (sha256sum -c format).

Environment:
  DENORT_BIN=/path/to/denort  the Deno runtime (denort, Deno ${Deno.version.deno}) for deno compile
                              to use instead of downloading it; one architecture per run`;

class BuildError extends Error {}
class UsageError extends Error {}

interface Options {
  targets: string[];
  out: string;
  check: boolean;
  bundle: boolean;
  deb: boolean;
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
        bundle: { type: "boolean" },
        "no-deb": { type: "boolean" },
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
  if (v.check && v.bundle) throw new UsageError("--check and --bundle exclude each other");
  if (v.bundle && targets.length > 0) {
    throw new UsageError("--bundle makes one package for every architecture: no --target");
  }
  return {
    targets,
    out: (v.out ?? DEFAULT_OUT).replace(/(.)\/+$/, "$1"),
    check: v.check === true,
    bundle: v.bundle === true,
    deb: v["no-deb"] !== true,
  };
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

/** Type-checks and bundles mod.ts into <out>/dpm.bundle.js, runs its --version; returns its path. */
async function check(o: Options): Promise<string> {
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
  // A Worker module is not inlined: it is bundled on its own, beside the bundle
  // (src/server/workers.ts starts dpm.worker.js when it runs from a bundle).
  for (const inc of INCLUDE) {
    const w = `${o.out.replace(/\/+$/, "")}/${bundledName(inc)}`;
    const wb = await run(Deno.execPath(), [
      "bundle",
      "--quiet",
      "--platform",
      "deno",
      "--output",
      w,
      inc,
    ]);
    if (!wb.ok) throw new BuildError(`deno bundle ${inc} failed:\n${reason(wb.err, 40)}`);
    console.log(`  ${w}  ${size(w)}  (the Worker module ${inc})`);
  }

  const v = await run(Deno.execPath(), ["run", ...PERMISSIONS, bundle, "--version"]);
  if (!v.ok || v.out.trim() !== `dpm ${VERSION}`) {
    throw new BuildError(
      `The bundle does not run: "deno run ${bundle} --version" printed "${v.out.trim()}"\n` +
        reason(v.err),
    );
  }
  console.log(`  ${bundle}  ${size(bundle)}  (runs: ${v.out.trim()})`);
  return bundle;
}

/** The file a Worker module of {@linkcode INCLUDE} is bundled into: `src/server/worker.ts` → `dpm.worker.js`. */
export function bundledName(inc: string): string {
  return `dpm.${inc.slice(inc.lastIndexOf("/") + 1).replace(/\.ts$/, "")}.js`;
}

/** `--bundle`: the bundle, its .sha256, and the architecture-independent .deb. */
async function bundlePackage(o: Options): Promise<void> {
  const bundle = await check(o);
  await writeSha256(bundle);
  for (const inc of INCLUDE) {
    await writeSha256(`${bundle.slice(0, bundle.lastIndexOf("/"))}/${bundledName(inc)}`);
  }
  if (!o.deb) return;
  const deb = await buildDeb({
    arch: "all",
    out: o.out,
    files: [
      { path: BUNDLE_PATH, from: bundle, mode: 0o644 },
      ...INCLUDE.map((inc) => ({
        path: `${BUNDLE_PATH.slice(0, BUNDLE_PATH.lastIndexOf("/"))}/${bundledName(inc)}`,
        from: `${bundle.slice(0, bundle.lastIndexOf("/"))}/${bundledName(inc)}`,
        mode: 0o644,
      })),
      { path: "/usr/bin/dpm", text: LAUNCHER, mode: 0o755 },
    ],
    note: `This package runs dpm from its JavaScript bundle with the system's deno\n` +
      `(Deno ${Deno.version.deno} or later, on PATH; not a Debian package).`,
  });
  console.log(`  ${deb}  ${size(deb)}`);
}

/** Writes `<file>.sha256` ("<hex>  <name>", as sha256sum prints it); returns the hex digest. */
export async function writeSha256(file: string): Promise<string> {
  const bytes = await Deno.readFile(file);
  const hex = [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  const name = file.slice(file.lastIndexOf("/") + 1);
  await Deno.writeTextFile(`${file}.sha256`, `${hex}  ${name}\n`);
  return hex;
}

/** One file of a package: copied `from` a file, or `text`. */
export interface DebFile {
  /** Absolute path on the installed system. */
  path: string;
  from?: string;
  text?: string;
  mode: number;
}

/** What {@linkcode buildDeb} packages besides the common files. */
export interface DebSpec {
  /** Debian architecture: amd64, arm64, or all (the bundle). */
  arch: string;
  /** Directory of the .deb (and its .sha256). */
  out: string;
  /** /usr/bin/dpm and whatever it needs. */
  files: DebFile[];
  /** Extra lines of the package description. */
  note?: string;
}

/**
 * Lays out the package tree (the given files, the units, the man page, the
 * completions, the docs) in a temporary directory, writes DEBIAN/control and
 * runs `dpkg-deb --build --root-owner-group`. Returns the .deb's path
 * (`<out>/dpm_<version>_<arch>.deb`), with its .sha256 beside it.
 */
export async function buildDeb(spec: DebSpec): Promise<string> {
  const c = (rel: string) => `${ROOT}contrib/${rel}`;
  const unit = async (name: string) =>
    (await Deno.readTextFile(c(`systemd/${name}`))).replaceAll(
      "/usr/local/bin/dpm",
      "/usr/bin/dpm",
    );
  const files: DebFile[] = [...spec.files];
  for (const name of ["dpm-server.service", "dpm-driver.service"]) {
    files.push({ path: `/lib/systemd/system/${name}`, text: await unit(name), mode: 0o644 });
  }
  files.push(
    {
      path: "/usr/share/bash-completion/completions/dpm",
      from: c("completion/dpm.bash"),
      mode: 0o644,
    },
    { path: "/usr/share/zsh/vendor-completions/_dpm", from: c("completion/_dpm"), mode: 0o644 },
    { path: "/usr/share/doc/dpm/README.md", from: `${ROOT}README.md`, mode: 0o644 },
  );
  for (
    const e of [...Deno.readDirSync(`${ROOT}contrib`)].sort((a, b) => a.name < b.name ? -1 : 1)
  ) {
    if (e.isFile && e.name.endsWith(".example.json")) {
      files.push({ path: `/usr/share/doc/dpm/examples/${e.name}`, from: c(e.name), mode: 0o644 });
    }
  }
  for (const e of [...Deno.readDirSync(c("schema"))].sort((a, b) => a.name < b.name ? -1 : 1)) {
    if (e.isFile && e.name.endsWith(".json")) {
      files.push({
        path: `/usr/share/doc/dpm/schema/${e.name}`,
        from: c(`schema/${e.name}`),
        mode: 0o644,
      });
    }
  }

  const tree = await Deno.makeTempDir({ prefix: "dpm-deb-" });
  try {
    let bytes = 0;
    const put = async (path: string, data: Uint8Array, mode: number) => {
      const dest = `${tree}${path}`;
      await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true, mode: 0o755 });
      await Deno.writeFile(dest, data, { mode });
      await Deno.chmod(dest, mode);
      bytes += data.length;
    };
    for (const f of files) {
      const data = f.text !== undefined
        ? new TextEncoder().encode(f.text)
        : await Deno.readFile(f.from!);
      await put(f.path, data, f.mode);
    }
    // The man page, compressed as Debian ships it (no name or time in the header).
    await put(
      "/usr/share/man/man8/dpm.8.gz",
      gzipSync(await Deno.readFile(c("dpm.8")), { level: 9 }),
      0o644,
    );

    const description = [
      "cooperative NAT for Linux",
      " dpm server runs on a gateway that owns a pool of public addresses; dpm",
      " driver runs on each host behind it and tells applications their real",
      " public address and port (dpm query), so protocols that carry addresses",
      " in their payload work without ALGs. Hosts without a driver keep working",
      " through ordinary NAT.",
      ...(spec.note ? [" .", ...spec.note.split("\n").map((l) => ` ${l}`)] : []),
    ];
    const control = [
      "Package: dpm",
      `Version: ${VERSION}`,
      `Architecture: ${spec.arch}`,
      "Maintainer: dpm developers <dpm@localhost>",
      `Installed-Size: ${Math.ceil(bytes / 1024)}`,
      `Depends: ${DEB_DEPENDS.join(", ")}`,
      "Section: net",
      "Priority: optional",
      `Description: ${description.join("\n")}`,
      "",
    ].join("\n");
    await put("/DEBIAN/control", new TextEncoder().encode(control), 0o644);
    for (const d of walkDirs(tree)) await Deno.chmod(d, 0o755);

    await Deno.mkdir(spec.out, { recursive: true });
    const deb = `${spec.out}/dpm_${VERSION}_${spec.arch}.deb`;
    const r = await run("dpkg-deb", ["--build", "--root-owner-group", tree, deb], {
      SOURCE_DATE_EPOCH: "0",
    }).catch((e) => {
      throw new BuildError(
        `${(e as Error).message}\nThe .deb needs dpkg-deb (Debian package dpkg); ` +
          `without it: deno task build --no-deb`,
      );
    });
    if (!r.ok) throw new BuildError(`dpkg-deb failed for ${deb}:\n${reason(r.err + r.out, 20)}`);
    await writeSha256(deb);
    return deb;
  } finally {
    await Deno.remove(tree, { recursive: true }).catch(() => {});
  }
}

function* walkDirs(dir: string): Generator<string> {
  yield dir;
  for (const e of Deno.readDirSync(dir)) if (e.isDirectory) yield* walkDirs(`${dir}/${e.name}`);
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
  // Embedded in the executable (deno compile --env-file): no Deno update check, ever.
  const envDir = await Deno.makeTempDir({ prefix: "dpm-build-env-" });
  const envFile = `${envDir}/dpm.env`;
  await Deno.writeTextFile(envFile, "DENO_NO_UPDATE_CHECK=1\n");
  try {
    await compileTargets(o, targets, denort, envFile);
  } finally {
    await Deno.remove(envDir, { recursive: true }).catch(() => {});
  }
}

/** The `deno compile` arguments for one target. */
export function compileArgs(target: string, exe: string, envFile: string): string[] {
  return [
    "compile",
    "--target",
    target,
    "--output",
    exe,
    `--env-file=${envFile}`,
    ...PERMISSIONS,
    "--no-prompt",
    ...INCLUDE.flatMap((m) => ["--include", m]),
    ENTRY,
  ];
}

async function compileTargets(
  o: Options,
  targets: string[],
  denort: string | undefined,
  envFile: string,
): Promise<void> {
  for (const target of targets) {
    const exe = `${o.out.replace(/\/+$/, "")}/dpm-${target}`;
    console.log(`Compiling dpm ${VERSION} for ${target}${denort ? ` (DENORT_BIN=${denort})` : ""}`);
    const r = await run(
      Deno.execPath(),
      compileArgs(target, exe, envFile),
      denort ? { DENORT_BIN: denort } : {},
    );
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
    await writeSha256(exe);
    console.log(`  ${exe}  ${size(exe)}`);
    if (o.deb) {
      const deb = await buildDeb({
        arch: DEB_ARCH[target as (typeof TARGETS)[number]],
        out: o.out,
        files: [{ path: "/usr/bin/dpm", from: exe, mode: 0o755 }],
      });
      console.log(`  ${deb}  ${size(deb)}`);
    }
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
    else if (o.bundle) await bundlePackage(o);
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
