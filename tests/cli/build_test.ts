/**
 * `deno task build` (build.ts), as a subprocess. Offline here: Deno's runtime
 * download (denort) is unreachable, so the compile tests check the message
 * and the DENORT_BIN handling; `--check` is the path that builds for real.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { VERSION } from "../../mod.ts";
import { TARGETS } from "../../build.ts";

const BUILD = fileURLToPath(new URL("../../build.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

const HOST = Deno.build.arch === "aarch64" ? TARGETS[1] : TARGETS[0];
const OTHER = HOST === TARGETS[0] ? TARGETS[1] : TARGETS[0];

/** The environment without DENORT_BIN (whatever the caller has). */
function env(extra: Record<string, string> = {}): Record<string, string> {
  const e = Deno.env.toObject();
  delete e.DENORT_BIN;
  return { ...e, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...extra };
}

async function build(args: string[], extraEnv: Record<string, string> = {}) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", BUILD, ...args],
    cwd: ROOT,
    clearEnv: true,
    env: env(extraEnv),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dpm-build-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function noStackTrace(text: string): void {
  assert.ok(!/^\s+at /m.test(text), `no JavaScript stack trace:\n${text}`);
  assert.ok(!/Stack backtrace|Uncaught/.test(text), `no Rust backtrace:\n${text}`);
}

Deno.test("build: --check type-checks and bundles offline, and the bundle runs", async () => {
  await withTmp(async (dir) => {
    const r = await build(["--check", "--out", dir]);
    assert.equal(r.code, 0, r.out + r.err);
    const bundle = `${dir}/dpm.bundle.js`;
    assert.ok(Deno.statSync(bundle).size > 10_000);
    assert.match(r.out, new RegExp(`${bundle.replaceAll(".", "\\.")}\\s+[\\d.]+ (KiB|MiB)`));
    const v = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", bundle, "--version"],
      env: { DENO_NO_UPDATE_CHECK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(v.stdout).trim(), `dpm ${VERSION}`);
    // It is the whole CLI, not just --version.
    const h = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", bundle, "query", "sctp", "1.2.3.4:5", "6.7.8.9:10"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(h.code, 2);
    assert.match(new TextDecoder().decode(h.stderr), /Unknown protocol "sctp"/);
  });
});

Deno.test("build: without DENORT_BIN and no download, compile fails with a clear message", async () => {
  await withTmp(async (dir) => {
    const r = await build(["--target", HOST, "--out", dir]);
    const exe = `${dir}/dpm-${HOST}`;
    if (r.code === 0) {
      // denort was cached or reachable after all: then the result must be dpm.
      const v = await new Deno.Command(exe, { args: ["--version"], stdout: "piped" }).output();
      assert.equal(new TextDecoder().decode(v.stdout).trim(), `dpm ${VERSION}`);
      return;
    }
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.err, /^build: Cannot build dpm for .*could not download the Deno runtime/);
    assert.match(
      r.err,
      new RegExp(`denort ${Deno.version.deno.replaceAll(".", "\\.")} for ${HOST}`),
    );
    assert.match(r.err, /DENORT_BIN=\/path\/to\/denort deno task build/);
    assert.match(r.err, /deno task build --check/);
    noStackTrace(r.err);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [], "nothing left in --out");
  });
});

Deno.test("build: DENORT_BIN is handed to deno compile, and a wrong runtime is caught", async () => {
  // The deno executable is not a denort: compile takes it (no download), but the
  // result is not dpm. build.ts notices, says so and removes it.
  await withTmp(async (dir) => {
    const r = await build(["--out", dir], { DENORT_BIN: Deno.execPath() });
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.out, new RegExp(`building ${HOST} only`), "one architecture per denort");
    assert.match(r.err, /was built but does not run as dpm/);
    assert.match(r.err, /Is DENORT_BIN=.* a denort of Deno/);
    assert.ok(!/could not download/.test(r.err), "no download was attempted");
    noStackTrace(r.err);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), []);
  });
});

Deno.test("build: a DENORT_BIN for another architecture, or no executable, is refused", async () => {
  await withTmp(async (dir) => {
    const wrong = await build(["--target", OTHER, "--out", dir], { DENORT_BIN: Deno.execPath() });
    assert.equal(wrong.code, 1);
    assert.match(
      wrong.err,
      new RegExp(`Cannot build ${OTHER} with DENORT_BIN=.*runtime for ${HOST}`),
    );
    const missing = await build(["--out", dir], { DENORT_BIN: `${dir}/no-such-denort` });
    assert.equal(missing.code, 1);
    assert.match(missing.err, /Cannot read DENORT_BIN=.*no-such-denort/);
    const notElf = await build(["--out", dir], { DENORT_BIN: BUILD });
    assert.equal(notElf.code, 1);
    assert.match(notElf.err, /is not a Linux x86_64 or aarch64 executable/);
    for (const r of [wrong, missing, notElf]) noStackTrace(r.err);
  });
});

Deno.test("build: bad flags exit 2 with the usage", async () => {
  for (
    const [args, re] of [
      [["--target", "x86_64-pc-windows-msvc"], /Unknown target "x86_64-pc-windows-msvc"/],
      [["--bogus"], /bogus/],
    ] as const
  ) {
    const r = await build([...args]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, re);
    assert.match(r.err, /Usage: deno task build/);
  }
  const h = await build(["--help"]);
  assert.equal(h.code, 0);
  assert.match(h.out, /DENORT_BIN/);
});
