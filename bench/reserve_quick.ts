/**
 * Development harness (not part of `deno task bench`): reservations/s of one
 * server on a data path, bench/reserve_load.ts from every host at once.
 *
 *   deno run -A bench/reserve_quick.ts [--datapath kernel[,queue,bpf]] [--window 90] [--addrs 12]
 *     [--seconds 5] [--version 3] [--rounds 1] [--workers 1[,2]] [--server-args "..."] [--log]
 *
 * With several `--workers` counts (`dpm server --workers`, kernel path),
 * every round runs each count on each data path, alternating.
 *
 * @module
 */

import { createTopology, destroyOnSignal } from "../testing/topology.ts";
import { denoScript, DPM_ENV, startDpm } from "../testing/launch.ts";
import { CLK_TCK, processTicks } from "./measure.ts";

const args = Deno.args;
const opt = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const datapaths = opt("--datapath", "kernel").split(",") as ("kernel" | "queue" | "bpf")[];
const window = opt("--window", "90");
const per = Number(opt("--addrs", "12"));
const seconds = Number(opt("--seconds", "5"));
const version = opt("--version", "3");
const rounds = Number(opt("--rounds", "1"));
const serverArgs = opt("--server-args", "").split(" ").filter(Boolean);
const workerCounts = opt("--workers", "1").split(",").map(Number);
const runs = datapaths.flatMap((dp) => workerCounts.map((w) => ({ datapath: dp, workers: w })));
const HERE = new URL(".", import.meta.url).pathname;

const t = await createTopology({ hosts: 3, peers: 1 });
const undo = destroyOnSignal(t);
try {
  await Promise.all(t.hosts.map(async (h, hi) => {
    const addrs = Array.from({ length: per }, (_, k) => `10.0.0.${101 + hi * 51 + k}`);
    await t.exec(h.ns, ["ip", "-batch", "-"], {
      stdin: addrs.map((a) => `addr replace ${a}/24 dev eth0`).join("\n") + "\n",
    });
  }));
  for (let r = 0; r < rounds * runs.length; r++) {
    const { datapath, workers } = runs[r % runs.length]!;
    const d = await startDpm(t, {
      driverHosts: [],
      datapath,
      serverArgs: [
        "--rate-limit",
        "1000000",
        "--max-sessions-per-host",
        "1048576",
        ...(workers > 1 ? ["--workers", String(workers)] : []),
        ...serverArgs,
      ],
    });
    try {
      const start = Date.now() + 4000;
      const procs = Promise.all(t.hosts.map((h, hi) =>
        t.exec(h.ns, [
          ...denoScript(`${HERE}reserve_load.ts`),
          "--server",
          t.gateway.lanText,
          "--addrs",
          Array.from({ length: per }, (_, k) => `10.0.0.${101 + hi * 51 + k}`).join(","),
          "--window",
          window,
          "--seconds",
          String(seconds),
          "--start",
          String(start),
          "--version",
          version,
        ], { timeoutMs: (seconds + 60) * 1000, env: DPM_ENV })
      ));
      await new Promise((res) => setTimeout(res, Math.max(0, start - Date.now())));
      const c0 = processTicks(d.server.pid);
      const out = await procs;
      const c1 = processTicks(d.server.pid);
      const hosts = out.map((x) => JSON.parse(x.stdout.trim().split("\n").pop()!));
      const ok = hosts.reduce((a, h) => a + h.ok, 0);
      console.log(JSON.stringify({
        datapath,
        workers,
        window,
        version,
        perSec: hosts.reduce((a, h) => a + h.okPerSec, 0),
        timeouts: hosts.reduce((a, h) => a + h.timeouts, 0),
        serverUs: ok ? +(((c1 - c0) * 1e6) / CLK_TCK / ok).toFixed(2) : null,
        p50: hosts.map((h) => h.latency?.p50 ?? h.latencyMs?.p50),
        results: hosts[0].results,
      }));
      if (args.includes("--log")) console.error(d.server.output().slice(-4000));
    } finally {
      await d.stop();
      await d.cleanup();
    }
  }
} finally {
  await t.destroy();
  undo();
}
