/**
 * Reservations/s with and without `--state`, end to end, as root: a kernel-
 * path server (real interfaces: every grant also programs its nft elements)
 * in the test topology, bench/state_load.ts on every host at once (8 source
 * addresses each, window 6, 5 s), alternately without and with `--state`.
 * Run: `sudo deno run -A bench/state_compare.ts [rounds]`. Prints one line per run.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { createTopology } from "../testing/topology.ts";
import { DPM_ENV, startDpm } from "../testing/launch.ts";

const LOAD = fileURLToPath(new URL("./state_load.ts", import.meta.url));
const rounds = Number(Deno.args[0] ?? 2);
const t = await createTopology({ hosts: 3, peers: 1 });
try {
  const addrs = t.hosts.map((_, hi) =>
    Array.from({ length: 8 }, (_, k) => `10.0.0.${101 + hi * 20 + k}`)
  );
  await Promise.all(t.hosts.map((h, hi) =>
    t.exec(h.ns, ["ip", "-batch", "-"], {
      stdin: addrs[hi]!.map((a) => `addr add ${a}/24 dev eth0`).join("\n") + "\n",
    })
  ));
  for (let r = 0; r < rounds; r++) {
    for (const withState of [false, true]) {
      const state = `${t.scratch}/bench-state.db`;
      await Deno.remove(state).catch(() => {});
      const d = await startDpm(t, {
        driverHosts: [],
        serverArgs: [
          "--rate-limit",
          "1000000",
          "--max-sessions-per-host",
          "1048576",
          ...(withState ? ["--state", state] : []),
        ],
      });
      try {
        const res = await Promise.all(t.hosts.map((h, hi) =>
          t.exec(h.ns, [
            Deno.execPath(),
            "run",
            "-A",
            "--quiet",
            LOAD,
            ...["--server", t.gateway.lanText, "--addrs", addrs[hi]!.join(",")],
            ...["--window", "6", "--seconds", "5"],
          ], { timeoutMs: 60_000, env: DPM_ENV })
        ));
        const per = res.map((x) => JSON.parse(x.stdout.trim().split("\n").pop()!).okPerSec);
        console.log(
          `round ${r + 1} ${withState ? "--state" : "no state"}: ${
            per.reduce((a, b) => a + b, 0)
          } reservations/s (${per.join(" + ")})`,
        );
      } finally {
        await d.stop();
        await d.cleanup();
      }
    }
  }
} finally {
  await t.destroy();
}
