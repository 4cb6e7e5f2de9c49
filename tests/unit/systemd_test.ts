/**
 * The systemd units in contrib/systemd: valid for systemd-analyze, and
 * hardened to an exposure of 3.0 or less (`systemd-analyze security
 * --offline`). No systemd runs on these machines, so the units are checked
 * offline; `Type=notify` readiness itself is tested in
 * tests/root/signals_root_test.ts against a real notify socket.
 */

import assert from "node:assert/strict";

const UNITS = ["dpm-server.service", "dpm-driver.service"];
const DIR = new URL("../../contrib/systemd/", import.meta.url);

async function analyze(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const o = await new Deno.Command("systemd-analyze", { args, stdout: "piped", stderr: "piped" })
      .output();
    const dec = new TextDecoder();
    return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error("systemd-analyze is not installed (Debian package systemd)");
    }
    throw e;
  }
}

/** The unit with its ExecStart pointed at /bin/true (the binary is not installed here). */
async function staged(name: string): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "dpm-unit-" });
  const text = (await Deno.readTextFile(new URL(name, DIR))).replaceAll(
    "/usr/local/bin/dpm",
    "/bin/true",
  );
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, text);
  return { dir, path };
}

for (const name of UNITS) {
  Deno.test(`systemd: ${name} passes systemd-analyze verify`, async () => {
    const { dir, path } = await staged(name);
    try {
      const r = await analyze(["verify", "--man=no", path]);
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out.trim(), "", `no warnings: ${r.out}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test(`systemd: ${name} has an exposure of 3.0 or less and the settings dpm relies on`, async () => {
    const { dir, path } = await staged(name);
    try {
      const r = await analyze(["security", "--offline=true", "--threshold=30", path]);
      const m = /Overall exposure level for \S+: ([0-9.]+)/.exec(r.out);
      assert.ok(m, r.out);
      assert.ok(Number(m[1]) <= 3.0, `exposure ${m[1]}`);
      assert.equal(r.code, 0);
      const unit = await Deno.readTextFile(path);
      for (
        const line of [
          "Type=notify",
          "RestartPreventExitStatus=2",
          "ExecReload=/bin/kill -HUP $MAINPID",
          "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
          "Documentation=man:dpm(8)",
        ]
      ) assert.ok(unit.includes(line), `${name} has ${line}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
