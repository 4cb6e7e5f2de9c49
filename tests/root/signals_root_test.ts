/**
 * Signals, end to end on a namespace topology, as root: SIGHUP reloads the
 * configuration (what can change live, does; the rest is named) and never
 * kills; every other catchable terminating signal stops dpm with cleanup.
 */

import assert from "node:assert/strict";
import { withDpm } from "../../testing/launch.ts";
import { needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

Deno.test(needsRoot({
  name:
    "signals root: SIGHUP reloads the log level from the config file, names what needs a restart, and keeps serving",
  ...SAN,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpm-hup-" });
    try {
      const file = `${dir}/server.json`;
      await Deno.writeTextFile(file, JSON.stringify({ "log-level": "info", lifetime: 86400 }));
      await withDpm({ hosts: 1, serverArgs: ["--config", file] }, async (_t, d) => {
        await Deno.writeTextFile(file, JSON.stringify({ "log-level": "debug", lifetime: 600 }));
        Deno.kill(d.server.pid, "SIGHUP");
        await d.server.waitForOutput(/reload: logLevel is now "debug"/, 5000);
        await d.server.waitForOutput(/reload: lifetime changed but need a restart/, 5000);
        const st = await d.status();
        assert.equal(typeof st.sessions, "number", "still serving after SIGHUP");
        // A broken file is refused and the running configuration kept.
        await Deno.writeTextFile(file, "{ not json");
        Deno.kill(d.server.pid, "SIGHUP");
        await d.server.waitForOutput(/reload failed, keeping the running configuration/, 5000);
        assert.equal(typeof (await d.status()).sessions, "number");
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
}));

for (const sig of ["SIGQUIT", "SIGUSR1", "SIGUSR2"] as const) {
  Deno.test(needsRoot({
    name:
      `signals root: ${sig} stops the queue-path server with cleanup (exit 0, no dpm chain left)`,
    ...SAN,
    fn: () =>
      withDpm({ hosts: 1, datapath: "queue", driverHosts: [] }, async (t, d) => {
        const before = await t.exec(t.gateway.ns, ["iptables-save"]);
        assert.match(before.stdout, /DPM-SRV-PRE/);
        Deno.kill(d.server.pid, sig);
        const status = await d.server.status;
        assert.equal(status.code, 0, `exit code after ${sig}`);
        assert.match(d.server.output(), /stopping/);
        const after = await t.exec(t.gateway.ns, ["iptables-save"]);
        assert.doesNotMatch(after.stdout, /DPM-/);
      }),
  }));
}
