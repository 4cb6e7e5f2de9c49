/**
 * Development harness (not part of `deno task bench`): bench/flood.ts's row
 * on the given data paths, printed as JSON lines.
 *
 *   deno run -A bench/flood_quick.ts [--datapath kernel[,bpf,queue]] [--source forged|own]
 *     [--seconds 5] [--rate 200] [--server-args "..."]
 *
 * @module
 */

import { createTopology, destroyOnSignal } from "../testing/topology.ts";
import { startDpm } from "../testing/launch.ts";
import { floodRow, type FloodSource } from "./flood.ts";

const args = Deno.args;
const opt = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const datapaths = opt("--datapath", "kernel").split(",") as ("kernel" | "queue" | "bpf")[];
const sources = opt("--source", "forged").split(",") as FloodSource[];
const seconds = Number(opt("--seconds", "5"));
const rate = Number(opt("--rate", "200"));
const serverArgs = opt("--server-args", "").split(" ").filter(Boolean);

const t = await createTopology({ hosts: 3, peers: 1 });
const undo = destroyOnSignal(t);
try {
  for (const datapath of datapaths) {
    for (const source of sources) {
      const d = await startDpm(t, { driverHosts: [], datapath, serverArgs });
      try {
        console.log(JSON.stringify(await floodRow(t, d, datapath, { seconds, rate, source })));
      } finally {
        await d.stop();
        await d.cleanup();
      }
    }
  }
} finally {
  await t.destroy();
  undo();
}
