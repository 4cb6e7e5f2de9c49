/**
 * A child process for tests/unit/state_test.ts: a session table followed by
 * a StateStore at `Deno.args[0]`, reserving UDP sessions in bursts of
 * `Deno.args[1]` as a server turn would, committing, and only then printing
 * each grant (`a pa x px r p pg`, one line each), as the server answers only
 * after the commit. It never stops by itself: the test SIGKILLs it.
 */

import { SessionTable } from "../src/table/table.ts";
import { StateStore } from "../src/server/state.ts";

const [path, burstText] = Deno.args;
const burst = Number(burstText ?? 16);
const table = new SessionTable({ pool: [0xcb00710a, 0xcb00710b] });
const store = await StateStore.open(path!);
store.start(table, 0x1234);
store.listen(table);
const enc = new TextEncoder();
let n = 0;
for (;;) {
  const lines: string[] = [];
  for (let i = 0; i < burst; i++, n++) {
    const a = (0x0a000000 + 11 + (n % 40)) >>> 0;
    const pa = 1024 + Math.floor(n / 40);
    const x = (0x08000000 + n) >>> 0;
    const g = table.reserve(
      { proto: 17, a, pa, x, px: 443, replaceable: true, lifetime: 0 },
      Date.now(),
    );
    if (g.result === 0) lines.push(`${a} ${pa} ${x} 443 ${g.r} ${g.p} ${g.pg}`);
  }
  store.commit();
  Deno.stdout.writeSync(enc.encode(lines.join("\n") + "\n"));
  await new Promise((r) => setTimeout(r, 0));
}
