/**
 * The README's first command, `deno task demo`, run as a newcomer would (as
 * root): a subprocess `deno run -A demo.ts` that builds its own namespaces
 * (src/topology.ts), runs real traffic through dpm, and tears down.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { needsRoot } from "../../testing/root.ts";

const DEMO = fileURLToPath(new URL("../../demo.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ENV = { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" };

function namespaces(prefix: string): string[] {
  try {
    return [...Deno.readDirSync("/run/netns")].map((e) => e.name).filter((n) =>
      n.startsWith(prefix)
    );
  } catch {
    return [];
  }
}

/** The demo prints "namespaces dpmt-xxxxxx-*": its run's prefix. */
function prefixOf(out: string): string {
  const m = /namespaces (dpmt-[0-9a-f]{6}-)\*/.exec(out);
  assert.ok(m, `the demo names its namespaces; output:\n${out}`);
  return m[1]!;
}

Deno.test(
  needsRoot(
    "demo root: every exchange checks out, the table is shown, nothing is left",
    async () => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", DEMO],
        cwd: ROOT,
        env: ENV,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(r.stdout);
      const err = new TextDecoder().decode(r.stderr);
      const all = `${out}\n--- stderr:\n${err}`;
      assert.equal(r.code, 0, all);

      // Every exchange: a ✓ line, and not one ✗.
      const ticks = out.split("\n").filter((l) => l.trimStart().startsWith("✓  "));
      assert.equal(ticks.length, 7, all);
      assert.ok(!out.includes("✗"), all);
      for (
        const what of [
          /h1 curl http:\/\/198\.51\.100\.10:8080\//,
          /h2 udp :5060 → p2/,
          /h2 udp :5060 → p3/,
          /h1 ping 198\.51\.100\.30/,
          /h1 udp :5060 → p1 .*\(shared\)/,
          /h1 udp :5060 → p2 .*conflict/,
          /h3 curl .*203\.0\.113\.1:\d+ .*\(no driver\)/,
        ]
      ) {
        assert.ok(ticks.some((l) => what.test(l)), `a ✓ line matching ${what}:\n${out}`);
      }
      // The peer saw exactly what dpm query answered, on each dpm line.
      for (const l of ticks.filter((l) => !l.includes("(no driver)") && !l.includes("refused"))) {
        const m = /(203\.0\.113\.10:\d+)\s+(203\.0\.113\.10:\d+)/.exec(l);
        assert.ok(m && m[1] === m[2], `seen = queried on: ${l}`);
      }

      // The status table, from the real CLI.
      assert.match(out, /dpm server \d+\.\d+\.\d+ +epoch [0-9a-f]{8}/);
      assert.match(out, /PROTO +INTERNAL +PG +PUBLIC +REMOTE +AGE +IDLE +EXPIRES +FLAGS/);
      assert.match(
        out,
        /udp +10\.0\.0\.11:5060 +\d+ +203\.0\.113\.10:5060 +198\.51\.100\.10:5060 .*shared/,
      );
      assert.match(out, /All 7 checks passed/);
      // Nothing reached beyond the namespaces: no DNS to the machine's resolver in the
      // table, no packet toward an address outside the topology.
      assert.ok(!/ \d+\.\d+\.\d+\.\d+:53 /.test(out), `a session to port 53 in the table:\n${out}`);
      assert.match(out, /✓ packets sent beyond the topology: 0\n/);

      // Torn down, and said so; the log path is printed and exists.
      assert.match(out, /Tearing down.*done, nothing left/);
      assert.deepEqual(namespaces(prefixOf(out)), []);
      const log = /log to (\/tmp\/dpm-demo-[0-9a-f]+\.log)/.exec(out)?.[1];
      assert.ok(log, "the log path is printed");
      assert.match(await Deno.readTextFile(log), /\[server\] .*ready/);
      await Deno.remove(log);
      // No log spam: the dpm processes write to the log, not to the terminal.
      assert.ok(!/ info {2}(server|driver):/.test(out + err), all);
    },
  ),
);

Deno.test(
  needsRoot("demo root: Ctrl-C in the middle tears everything down and exits 130", async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", DEMO],
      cwd: ROOT,
      env: ENV,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const dec = new TextDecoder();
    let out = "";
    const reader = child.stdout.getReader();
    // Interrupt once dpm is up and traffic is about to start.
    const deadline = Date.now() + 20_000;
    while (!/ready in/.test(out) && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      out += dec.decode(value, { stream: true });
    }
    assert.match(out, /ready in/, out);
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += dec.decode(value, { stream: true });
    }
    const [status, errBytes] = await Promise.all([child.status, new Response(child.stderr).text()]);
    assert.equal(status.code, 130, `${out}\n--- stderr:\n${errBytes}`);
    assert.match(out, /Interrupted: tearing down/);
    assert.match(out, /Torn down: no namespace left/);
    assert.deepEqual(namespaces(prefixOf(out)), []);
    const log = /log to (\/tmp\/dpm-demo-[0-9a-f]+\.log)/.exec(out)?.[1];
    if (log) await Deno.remove(log).catch(() => {});
  }),
);

Deno.test(
  needsRoot(
    "demo root: missing programs are named with their Debian packages, exit 1",
    async () => {
      const empty = await Deno.makeTempDir({ prefix: "dpm-demo-path-" });
      try {
        const r = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", DEMO],
          cwd: ROOT,
          env: { ...ENV, PATH: empty },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const err = new TextDecoder().decode(r.stderr);
        assert.equal(r.code, 1, err);
        assert.match(err, /missing program\(s\): ip, iptables, sysctl, python3, curl, ping/);
        assert.match(err, /apt-get install iproute2 iptables procps python3 curl iputils-ping/);
        assert.ok(!err.includes("    at "), "no stack trace");
        assert.equal(new TextDecoder().decode(r.stdout), "", "nothing built, nothing printed");
      } finally {
        await Deno.remove(empty, { recursive: true });
      }
    },
  ),
);
