/**
 * The Debian package, installed for real: `deno task build --bundle` (the
 * package `deno task build` makes where `deno compile` cannot run here, for
 * want of denort), `dpkg -i`, the files where they belong, `dpm` on PATH,
 * then the demo run with the installed command (DPM_BIN=/usr/bin/dpm), and
 * always `dpkg -r dpm` at the end.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { VERSION } from "../../mod.ts";
import { needsRoot } from "../../testing/root.ts";

const BUILD = fileURLToPath(new URL("../../build.ts", import.meta.url));
const DEMO = fileURLToPath(new URL("../../demo.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ENV = { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" };
const dec = new TextDecoder();

async function sh(cmd: string, args: string[], env: Record<string, string> = {}) {
  const r = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env: { ...ENV, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The directory of the deno executable, for a PATH that finds it. */
const DENO_DIR = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));
const SYSTEM_PATH = `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${DENO_DIR}`;

Deno.test(
  needsRoot(
    "package root: the bundle .deb installs, dpm runs from PATH, the demo passes with it, it is removed",
    async () => {
      // Never clobber a dpm that is there already.
      const pre = await sh("dpkg-query", ["-W", "-f", "${Status}", "dpm"]);
      assert.ok(
        !/installed/.test(pre.out) || /not-installed/.test(pre.out),
        `a dpm package is installed already (${pre.out}): not touching it`,
      );
      assert.ok(!exists("/usr/bin/dpm"), "/usr/bin/dpm exists already: not touching it");

      const out = await Deno.makeTempDir({ prefix: "dpm-package-test-" });
      let installed = false;
      try {
        const b = await sh(Deno.execPath(), ["run", "-A", BUILD, "--bundle", "--out", out]);
        assert.equal(b.code, 0, b.out + b.err);
        const deb = `${out}/dpm_${VERSION}_all.deb`;
        assert.ok(exists(deb) && exists(`${deb}.sha256`), b.out);
        const sum = await sh("sh", ["-c", `cd '${out}' && sha256sum -c ./*.sha256`]);
        assert.equal(sum.code, 0, sum.out + sum.err);

        installed = true;
        const i = await sh("dpkg", ["-i", deb], { PATH: SYSTEM_PATH });
        assert.equal(i.code, 0, i.out + i.err);

        // The files, where Debian puts them.
        for (
          const f of [
            "/usr/bin/dpm",
            "/usr/lib/dpm/dpm.bundle.js",
            "/usr/lib/dpm/dpm.worker.js", // the server's Worker module (--workers)
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
          ]
        ) assert.ok(exists(f), `${f} installed`);
        const listed = (await sh("dpkg", ["-L", "dpm"])).out;
        assert.match(listed, /^\/usr\/bin\/dpm$/m);
        for (const role of ["server", "driver"]) {
          const unit = await Deno.readTextFile(`/lib/systemd/system/dpm-${role}.service`);
          assert.match(unit, new RegExp(`^ExecStart=/usr/bin/dpm ${role} `, "m"));
          assert.match(unit, /^Environment=DENO_NO_UPDATE_CHECK=1$/m);
        }
        assert.match(await Deno.readTextFile("/usr/bin/dpm"), /^export DENO_NO_UPDATE_CHECK=1$/m);
        assert.equal(Deno.statSync("/usr/bin/dpm").mode! & 0o777, 0o755);
        const man = await sh("sh", ["-c", "gzip -dc /usr/share/man/man8/dpm.8.gz | head -c 4000"]);
        assert.match(man.out, /^\.TH DPM 8/m);

        // `dpm` from PATH, as an operator types it.
        const v = await sh("dpm", ["--version"], { PATH: SYSTEM_PATH });
        assert.equal(v.code, 0, v.err);
        assert.equal(v.out.trim(), `dpm ${VERSION}`);
        // Without deno on PATH: a clear message, not a shell error.
        const none = await sh("/usr/bin/dpm", ["--version"], { PATH: "/nonexistent" });
        assert.equal(none.code, 127, none.out + none.err);
        assert.match(none.err, /dpm: cannot find deno on PATH/);
        assert.match(none.err, /DPM_DENO=/);

        // The demo, with the installed command. The launcher's deno is a wrapper
        // that notes each run, to show that the demo's dpm was /usr/bin/dpm.
        const runs = `${out}/runs.log`;
        const wrapper = `${out}/deno`;
        await Deno.writeTextFile(
          wrapper,
          `#!/bin/sh\necho "$*" >> '${runs}'\nexec '${Deno.execPath()}' "$@"\n`,
          { mode: 0o755 },
        );
        const t0 = performance.now();
        const d = await sh(Deno.execPath(), ["run", "-A", DEMO], {
          DPM_BIN: "/usr/bin/dpm",
          DPM_DENO: wrapper,
          PATH: SYSTEM_PATH,
        });
        const secs = (performance.now() - t0) / 1000;
        const all = `${d.out}\n--- stderr:\n${d.err}`;
        assert.equal(d.code, 0, all);
        assert.match(d.out, /All 7 checks passed/, all);
        assert.ok(!d.out.includes("✗"), all);
        assert.match(d.out, /Tearing down.*done, nothing left/, all);
        assert.ok(secs < 60, `demo took ${secs.toFixed(1)} s`);
        const ran = await Deno.readTextFile(runs);
        for (const role of ["server", "driver", "query", "status"]) {
          assert.match(
            ran,
            new RegExp(`^run .*/usr/lib/dpm/dpm\\.bundle\\.js ${role} `, "m"),
            `the demo ran the installed dpm ${role}:\n${ran}`,
          );
        }
        const log = /log to (\/tmp\/dpm-demo-[0-9a-f]+\.log)/.exec(d.out)?.[1];
        if (log) await Deno.remove(log).catch(() => {});
      } finally {
        if (installed) {
          const r = await sh("dpkg", ["-r", "dpm"], { PATH: SYSTEM_PATH });
          assert.equal(r.code, 0, `dpkg -r dpm: ${r.out}${r.err}`);
        }
        await Deno.remove(out, { recursive: true });
      }
      assert.ok(!exists("/usr/bin/dpm"), "removed");
      assert.ok(!exists("/lib/systemd/system/dpm-server.service"), "units removed");
    },
  ),
);
