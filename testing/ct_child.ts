/**
 * ctnetlink client run by tests/root/conntrack_root_test.ts inside a network
 * namespace (a process cannot move itself into one):
 *
 *   ip netns exec NS deno run -A testing/ct_child.ts <mode> [json]
 *
 * Modes, each printing one JSON line:
 * - `dump`: every IPv4 entry, as an array of `CtEntry`.
 * - `get <tuple>`: the entry of that original tuple, or null.
 * - `delete <tuple[]>`: `{ "deleted": n }`.
 * - `throw`: a dump whose callback throws at the first entry, then a full
 *   dump on the same socket: `{ "thrown": message, "count": n }`.
 * - `bench <lo> <hi>`: dumps the table, deletes every UDP entry whose
 *   destination port is in [lo, hi], dumps again; prints counts and timings.
 *
 * @module
 */

import { Conntrack, type CtEntry, type CtTuple } from "../linux/conntrack.ts";

const mode = Deno.args[0] ?? "dump";
const ct = Conntrack.open();
try {
  if (mode === "dump") {
    const all: CtEntry[] = [];
    ct.dump((e) => all.push(e));
    console.log(JSON.stringify(all));
  } else if (mode === "get") {
    console.log(JSON.stringify(ct.get(JSON.parse(Deno.args[1]!) as CtTuple)));
  } else if (mode === "delete") {
    console.log(JSON.stringify({ deleted: ct.delete(JSON.parse(Deno.args[1]!) as CtTuple[]) }));
  } else if (mode === "throw") {
    let thrown = "";
    try {
      ct.dump(() => {
        throw new Error("stop");
      });
    } catch (e) {
      thrown = (e as Error).message;
    }
    console.log(JSON.stringify({ thrown, count: ct.dump(() => {}) }));
  } else if (mode === "bench") {
    const lo = Number(Deno.args[1]);
    const hi = Number(Deno.args[2]);
    const victims: CtTuple[] = [];
    let t = performance.now();
    const before = ct.dump((e) => {
      if (e.orig.proto === 17 && e.orig.dport >= lo && e.orig.dport <= hi) victims.push(e.orig);
    });
    const dumpMs = performance.now() - t;
    // A second dump without collecting: the decoder and the kernel only.
    t = performance.now();
    ct.dump(() => {});
    const dump2Ms = performance.now() - t;
    t = performance.now();
    const deleted = ct.delete(victims);
    const deleteMs = performance.now() - t;
    const after = ct.dump(() => {});
    console.log(
      JSON.stringify({
        before,
        dumpMs,
        dump2Ms,
        matched: victims.length,
        deleted,
        deleteMs,
        after,
      }),
    );
  } else {
    throw new Error(`Unknown mode "${mode}"`);
  }
} finally {
  ct.close();
}
