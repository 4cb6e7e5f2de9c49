/**
 * Summarises V8 CPU profiles (`deno run --cpu-prof`) into the functions with
 * the most self time, for bench/run.ts --profile. Also usable alone:
 *
 * ```sh
 * deno run -A bench/profile.ts <dir with .cpuprofile files> [top]
 * ```
 *
 * @module
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Self time per function of one profile, in microseconds, largest first. */
export function selfTimes(p: CpuProfile): { name: string; us: number }[] {
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const acc = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]!);
    if (!n) continue;
    const f = n.callFrame;
    const file = f.url
      ? f.url.replace(/^.*\/(src|ffi|bench)\//, "$1/").replace(/^file:\/\//, "")
      : "";
    const name = `${f.functionName || "(anonymous)"}${file ? ` ${file}:${f.lineNumber + 1}` : ""}`;
    // timeDeltas[i] is the time since the previous sample: the cost of sample i.
    acc.set(name, (acc.get(name) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  return [...acc].map(([name, us]) => ({ name, us })).sort((a, b) => b.us - a.us);
}

/** A text summary of every .cpuprofile in `dir`: the top functions by self time. */
export async function summarizeProfiles(dir: string, top = 20): Promise<string> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".cpuprofile")) continue;
    const p = JSON.parse(await Deno.readTextFile(`${dir}/${e.name}`)) as CpuProfile;
    const rows = selfTimes(p);
    const total = rows.reduce((a, r) => a + r.us, 0);
    const idle = rows.filter((r) => r.name.startsWith("(idle)")).reduce((a, r) => a + r.us, 0);
    const role = rows.some((r) => /server(_datapath)?\.ts/.test(r.name))
      ? "server"
      : rows.some((r) => /driver(_datapath)?\.ts/.test(r.name))
      ? "driver"
      : "?";
    out.push(
      `== ${e.name} (${role}): ${(total / 1e6).toFixed(2)} s sampled, ${
        (100 * (1 - idle / Math.max(1, total))).toFixed(1)
      }% busy (on the JS thread)`,
    );
    for (const r of rows.slice(0, top)) {
      out.push(
        `${(r.us / 1000).toFixed(1).padStart(10)} ms ${
          ((100 * r.us) / total).toFixed(1).padStart(5)
        }%  ${r.name}`,
      );
    }
  }
  return out.join("\n");
}

if (import.meta.main) {
  const dir = Deno.args[0];
  if (!dir) {
    console.error("usage: deno run -A bench/profile.ts <dir> [top]");
    Deno.exit(2);
  }
  console.log(await summarizeProfiles(dir, Number(Deno.args[1] ?? 20)));
}
