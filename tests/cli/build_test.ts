/**
 * `deno task build` (build.ts), as a subprocess. Offline here: Deno's runtime
 * download (denort) is unreachable, so the compile tests check the message
 * and the DENORT_BIN handling; `--check` is the path that builds for real.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { VERSION } from "../../mod.ts";
import {
  buildDeb,
  compileArgs,
  DEB_ARCH,
  DEB_DEPENDS,
  LAUNCHER,
  TARGETS,
  writeSha256,
} from "../../build.ts";

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

/** Files and fields of a .deb, with dpkg-deb. */
async function debInfo(deb: string) {
  const run = async (args: string[]) => {
    const r = await new Deno.Command("dpkg-deb", { args, stdout: "piped", stderr: "piped" })
      .output();
    assert.ok(r.success, new TextDecoder().decode(r.stderr));
    return new TextDecoder().decode(r.stdout);
  };
  const listing = await run(["-c", deb]);
  const files = new Map<string, string>();
  for (const l of listing.split("\n")) {
    const m = /^(\S+) (\S+)\s+\d+ \S+ \S+ \.(\/\S*)$/.exec(l);
    if (m) files.set(m[3]!.replace(/(.)\/$/, "$1"), `${m[1]} ${m[2]}`);
  }
  const field = async (name: string) => (await run(["-f", deb, name])).trim();
  return { files, field };
}

/** Everything but /usr/bin/dpm's companions: in every package. */
const COMMON = [
  "/usr/bin/dpm",
  "/lib/systemd/system/dpm-server.service",
  "/lib/systemd/system/dpm-driver.service",
  "/usr/share/man/man8/dpm.8.gz",
  "/usr/share/bash-completion/completions/dpm",
  "/usr/share/zsh/vendor-completions/_dpm",
  "/usr/share/doc/dpm/README.md",
  "/usr/share/doc/dpm/examples/server.example.json",
  "/usr/share/doc/dpm/examples/driver.example.json",
  "/usr/share/doc/dpm/schema/server.schema.json",
  "/usr/share/doc/dpm/schema/driver.schema.json",
];

async function sha256sumOk(dir: string): Promise<void> {
  const r = await new Deno.Command("sh", {
    args: ["-c", "sha256sum -c ./*.sha256"],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(r.success, new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr));
}

Deno.test("build: --bundle makes the bundle, the all .deb and their .sha256", async () => {
  await withTmp(async (dir) => {
    const r = await build(["--bundle", "--out", dir]);
    assert.equal(r.code, 0, r.out + r.err);
    const deb = `${dir}/dpm_${VERSION}_all.deb`;
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      [
        "dpm.bundle.js",
        "dpm.bundle.js.sha256",
        "dpm.worker.js",
        "dpm.worker.js.sha256",
        `dpm_${VERSION}_all.deb`,
        `dpm_${VERSION}_all.deb.sha256`,
      ],
    );
    assert.match(r.out, /dpm_[\d.]+_all\.deb\s+[\d.]+ KiB/);
    await sha256sumOk(dir);
    const { files, field } = await debInfo(deb);
    for (const f of [...COMMON, "/usr/lib/dpm/dpm.bundle.js"]) assert.ok(files.has(f), f);
    assert.equal(files.get("/usr/bin/dpm"), "-rwxr-xr-x root/root");
    assert.equal(files.get("/usr/lib/dpm/dpm.bundle.js"), "-rw-r--r-- root/root");
    assert.equal(await field("Package"), "dpm");
    assert.equal(await field("Version"), VERSION);
    assert.equal(await field("Architecture"), "all");
    assert.equal(await field("Depends"), DEB_DEPENDS.join(", "));
    assert.equal(DEB_DEPENDS.join(", "), "nftables, iptables, conntrack, iproute2");
    assert.match(await field("Description"), /system's deno/);

    // The packaged units start /usr/bin/dpm and never phone home.
    const x = `${dir}/x`;
    const ex = await new Deno.Command("dpkg-deb", { args: ["-x", deb, x] }).output();
    assert.ok(ex.success);
    for (const role of ["server", "driver"]) {
      const unit = await Deno.readTextFile(`${x}/lib/systemd/system/dpm-${role}.service`);
      assert.match(unit, new RegExp(`^ExecStart=/usr/bin/dpm ${role} --config /etc/dpm/`, "m"));
      assert.ok(!unit.includes("/usr/local/bin/dpm"));
      assert.match(unit, /^Environment=DENO_NO_UPDATE_CHECK=1$/m);
    }
    const launcher = await Deno.readTextFile(`${x}/usr/bin/dpm`);
    assert.equal(launcher, LAUNCHER);
    assert.match(launcher, /^export DENO_NO_UPDATE_CHECK=1$/m);
    // The launcher works from the extracted tree too (with its bundle path swapped in).
    const local = launcher.replaceAll(
      "/usr/lib/dpm/dpm.bundle.js",
      `${x}/usr/lib/dpm/dpm.bundle.js`,
    );
    await Deno.writeTextFile(`${x}/dpm`, local, { mode: 0o755 });
    const denoDir = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));
    const ok = await new Deno.Command(`${x}/dpm`, {
      args: ["--version"],
      clearEnv: true,
      env: { PATH: `${denoDir}:/usr/bin:/bin`, HOME: Deno.env.get("HOME") ?? "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(ok.stdout).trim(), `dpm ${VERSION}`);
    const none = await new Deno.Command(`${x}/dpm`, {
      args: ["--version"],
      clearEnv: true,
      env: { PATH: "/nonexistent" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(none.code, 127);
    assert.match(new TextDecoder().decode(none.stderr), /dpm: cannot find deno on PATH/);
  });
});

Deno.test("build: --no-deb with --bundle makes no package; bad combinations exit 2", async () => {
  await withTmp(async (dir) => {
    const r = await build(["--bundle", "--no-deb", "--out", dir]);
    assert.equal(r.code, 0, r.out + r.err);
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      ["dpm.bundle.js", "dpm.bundle.js.sha256", "dpm.worker.js", "dpm.worker.js.sha256"],
    );
  });
  const both = await build(["--bundle", "--check"]);
  assert.equal(both.code, 2);
  assert.match(both.err, /--check and --bundle exclude each other/);
  const target = await build(["--bundle", "--target", HOST]);
  assert.equal(target.code, 2);
  assert.match(target.err, /--bundle makes one package for every architecture/);
});

Deno.test("build: each target's .deb holds its executable as /usr/bin/dpm (amd64, arm64)", async () => {
  // deno compile cannot run here (no denort): a stand-in executable per target.
  await withTmp(async (dir) => {
    assert.deepEqual(TARGETS.map((t) => DEB_ARCH[t]), ["amd64", "arm64"]);
    for (const target of TARGETS) {
      const exe = `${dir}/dpm-${target}`;
      await Deno.writeTextFile(exe, `#!/bin/sh\necho ${target}\n`, { mode: 0o755 });
      const hex = await writeSha256(exe);
      assert.equal(await Deno.readTextFile(`${exe}.sha256`), `${hex}  dpm-${target}\n`);
      const deb = await buildDeb({
        arch: DEB_ARCH[target],
        out: dir,
        files: [{ path: "/usr/bin/dpm", from: exe, mode: 0o755 }],
      });
      assert.equal(deb, `${dir}/dpm_${VERSION}_${DEB_ARCH[target]}.deb`);
      const { files, field } = await debInfo(deb);
      for (const f of COMMON) assert.ok(files.has(f), f);
      assert.ok(!files.has("/usr/lib/dpm/dpm.bundle.js"));
      assert.equal(files.get("/usr/bin/dpm"), "-rwxr-xr-x root/root");
      assert.equal(await field("Architecture"), DEB_ARCH[target]);
      assert.equal(await field("Depends"), "nftables, iptables, conntrack, iproute2");
      const bin = await new Deno.Command("dpkg-deb", {
        args: ["--fsys-tarfile", deb],
        stdout: "piped",
      }).output();
      assert.ok(new TextDecoder().decode(bin.stdout).includes(`echo ${target}`), "its executable");
    }
    await sha256sumOk(dir);
  });
});

Deno.test("build: the compiled executable carries DENO_NO_UPDATE_CHECK (deno compile --env-file)", async () => {
  const args = compileArgs(TARGETS[1], "/tmp/x", "/tmp/dpm.env");
  assert.ok(args.includes("--env-file=/tmp/dpm.env"), args.join(" "));
  assert.deepEqual(args.slice(0, 5), ["compile", "--target", TARGETS[1], "--output", "/tmp/x"]);
  assert.equal(args.at(-1), "mod.ts");
  // And build.ts writes that file with the variable (read from its source: the file is temporary).
  assert.match(
    await Deno.readTextFile(BUILD),
    /writeTextFile\(envFile, "DENO_NO_UPDATE_CHECK=1\\n"\)/,
  );
});
