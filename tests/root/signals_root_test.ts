/**
 * Signals, end to end on a namespace topology, as root: SIGHUP reloads the
 * configuration (what can change live, does; the rest is named) and never
 * kills; every other catchable terminating signal stops dpm with cleanup.
 */

import assert from "node:assert/strict";
import { DPM_ENV, dpmCommand, withDpm } from "../../testing/launch.ts";
import { createTopology } from "../../testing/topology.ts";
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

/** python3: receives sd_notify datagrams on a Unix socket and prints each. */
const NOTIFY_RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", " "), flush=True)
`;

Deno.test(needsRoot({
  name:
    "signals root: under Type=notify the server says READY=1 once it serves, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM",
  ...SAN,
  fn: async () => {
    const t = await createTopology({ hosts: 1, peers: 1 });
    try {
      await Deno.mkdir(t.scratch, { recursive: true });
      const sock = `${t.scratch}/notify.sock`;
      const rx = t.spawn(t.gateway.ns, ["python3", "-c", NOTIFY_RECEIVER, sock]);
      await rx.waitForOutput(/listening/, 5000);
      const server = t.spawn(t.gateway.ns, [
        ...dpmCommand(),
        "server",
        ...["--lan-if", "lan0", "--wan-if", "wan0", "--lan-addr", "10.0.0.1"],
        ...["--pool", t.poolText, "--socket", `${t.scratch}/server.sock`],
      ], { env: { ...DPM_ENV, NOTIFY_SOCKET: sock } });
      try {
        await server.waitForOutput(/ready/, 30_000);
        await rx.waitForOutput(/READY=1 STATUS=server ready/, 5000);
        Deno.kill(server.pid, "SIGHUP");
        await rx.waitForOutput(/RELOADING=1/, 5000);
        await server.stop("SIGTERM", 5000);
        await rx.waitForOutput(/STOPPING=1/, 5000);
      } finally {
        await server.stop("SIGKILL", 0);
        await rx.stop("SIGKILL", 0);
        await t.exec(t.gateway.ns, [
          ...dpmCommand(),
          "server",
          "--lan-if",
          "lan0",
          "--wan-if",
          "wan0",
          "--lan-addr",
          "10.0.0.1",
          "--pool",
          t.poolText,
          "--socket",
          `${t.scratch}/server.sock`,
          "--cleanup",
        ], { env: DPM_ENV });
      }
    } finally {
      await t.destroy();
    }
  },
}));
