/**
 * The cost of `--state` per grant, in process: SessionTable.reserve alone,
 * and with a StateStore following the table, committing after every grant
 * (an isolated request) or once per burst of 16 or 64 (the group commit of
 * one event-loop turn under load). Run: `deno run -A bench/state_bench.ts [dir]`.
 *
 * @module
 */

import { SessionTable } from "../src/table/table.ts";
import { StateStore } from "../src/server/state.ts";

const dir = Deno.args[0] ?? await Deno.makeTempDir();
const N = 50_000;

async function run(burst: number | null): Promise<number> {
  const path = `${dir}/bench-${burst}.db`;
  for (const f of [path, `${path}-wal`]) await Deno.remove(f).catch(() => {});
  const t = new SessionTable({ pool: [0xcb00710a, 0xcb00710b, 0xcb00710c, 0xcb00710d] });
  // Never scheduled: the bench commits itself, as the server does before it replies.
  const store = burst === null ? null : await StateStore.open(path, { schedule: () => {} });
  store?.start(t, 1);
  store?.listen(t);
  const now = Date.now();
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    t.reserve({
      proto: 17,
      a: 0x0a000000 + 100 + (i % 24),
      pa: 1024 + Math.floor(i / 24),
      x: 0x08000000 + i,
      px: 443,
      replaceable: true,
      lifetime: 0,
    }, now);
    if (store && (i + 1) % burst! === 0) store.commit();
  }
  store?.commit();
  const us = (performance.now() - t0) * 1000 / N;
  store?.close();
  return us;
}

for (const b of [null, 1, 16, 64]) {
  const us = await run(b);
  console.log(`${b === null ? "no --state" : `commit every ${b}`}: ${us.toFixed(2)} us/grant`);
}
