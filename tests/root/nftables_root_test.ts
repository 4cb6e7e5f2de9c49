/**
 * The nf_tables element client against the real kernel, in a namespace of
 * its own (`dpmt-nft-<random>`), deleted in `finally`. A process cannot move
 * itself into a namespace, so the client runs as a child
 * (`ip netns exec NS deno run -A testing/nft_child.ts ...`) printing one JSON
 * line; `nft` inside the namespace cross-checks what it did.
 *
 * @module
 */

import assert from "node:assert/strict";
import { concat, hex, ip4 } from "../../linux/nftables.ts";
import { inNs, run, sh } from "../../testing/netns.ts";
import { needsRoot } from "../../testing/root.ts";

const CHILD = new URL("../../testing/nft_child.ts", import.meta.url).pathname;

const RULESET = `
table ip dpmtest {
  map to_remote { typeof meta l4proto . ip saddr . th dport : ip daddr . th dport; }
  map to_public { typeof meta l4proto . ip saddr . th sport . ip daddr . th dport : ip saddr . th sport; }
}
`;

/** Runs the child in `ns`; returns its JSON line and exit code. */
async function child(ns: string, args: string[]): Promise<{ code: number; out: any }> {
  const r = await run(inNs(ns, [Deno.execPath(), "run", "-A", CHILD, ...args]));
  const line = r.stdout.trim().split("\n").at(-1) ?? "";
  let out: any;
  try {
    out = JSON.parse(line);
  } catch {
    throw new Error(`Child ${args[0]} printed no JSON (exit ${r.code}): ${r.stdout}${r.stderr}`);
  }
  return { code: r.code, out };
}

/** `nft -j list map` inside `ns`: elements as [key fields, data fields]. */
async function nftElems(ns: string, map: string): Promise<unknown[]> {
  const j = JSON.parse(await sh(inNs(ns, ["nft", "-j", "list", "map", "ip", "dpmtest", map])));
  const m = j.nftables.find((x: any) => x.map !== undefined).map;
  return (m.elem ?? []).map((e: any) => [e[0].concat, e[1].concat]);
}

async function withNs(fn: (ns: string) => Promise<void>): Promise<void> {
  const ns = `dpmt-nft-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await sh(["ip", "netns", "add", ns]);
    const r = await run(inNs(ns, ["nft", "-f", "-"]), RULESET);
    assert.equal(r.code, 0, `nft -f: ${r.stderr}`);
    await fn(ns);
  } finally {
    const pids = await run(["ip", "netns", "pids", ns]);
    for (const p of pids.stdout.split(/\s+/).filter((s) => s !== "")) {
      try {
        Deno.kill(Number(p), "SIGKILL");
      } catch { /* gone */ }
    }
    await run(["ip", "netns", "del", ns]);
  }
}

const UDP = 17;
const TCP = 6;

Deno.test(needsRoot("nftables root: add, list, delete elements; nft agrees both ways", async () => {
  await withNs(async (ns) => {
    const gen0 = (await child(ns, ["gen"])).out.gen;
    assert.equal(typeof gen0, "number");

    // Our bytes -> nft's reading.
    const k1 = concat([UDP, 1], [ip4("10.0.0.5"), 4], [40001, 2]);
    const d1 = concat([ip4("198.51.100.7"), 4], [5060, 2]);
    const add = await child(ns, [
      "add",
      "dpmtest",
      "to_remote",
      JSON.stringify([{ key: hex(k1), data: hex(d1) }]),
    ]);
    assert.deepEqual(add, { code: 0, out: { ok: true } });
    assert.deepEqual(await nftElems(ns, "to_remote"), [[["udp", "10.0.0.5", 40001], [
      "198.51.100.7",
      5060,
    ]]]);
    const gen1 = (await child(ns, ["gen"])).out.gen;
    assert.ok(gen1 > gen0, `generation ${gen0} -> ${gen1}`);

    // nft's bytes -> our reading.
    await sh(inNs(ns, [
      "nft",
      "add",
      "element",
      "ip",
      "dpmtest",
      "to_public",
      "{ tcp . 10.0.0.6 . 33000 . 192.0.2.9 . 443 : 203.0.113.1 . 61000 }",
    ]));
    const gen2 = (await child(ns, ["gen"])).out.gen;
    assert.ok(gen2 > gen1, `generation ${gen1} -> ${gen2} after nft add element`);
    const listed = await child(ns, ["list", "dpmtest", "to_public"]);
    assert.equal(listed.code, 0);
    assert.deepEqual(listed.out, [{
      key: hex(concat([TCP, 1], [ip4("10.0.0.6"), 4], [33000, 2], [ip4("192.0.2.9"), 4], [443, 2])),
      data: hex(concat([ip4("203.0.113.1"), 4], [61000, 2])),
    }]);

    // A present key with other data: refused, whole transaction aborted.
    const k2 = concat([UDP, 1], [ip4("10.0.0.8"), 4], [40002, 2]);
    const clash = await child(ns, [
      "add",
      "dpmtest",
      "to_remote",
      JSON.stringify([
        { key: hex(k2), data: hex(d1) },
        { key: hex(k1), data: hex(concat([ip4("198.51.100.8"), 4], [5060, 2])) },
      ]),
    ]);
    assert.equal(clash.code, 1);
    assert.equal(clash.out.errno, 17, clash.out.error);
    assert.equal(clash.out.element, 1, clash.out.error);
    assert.equal((await nftElems(ns, "to_remote")).length, 1, "k2 must not be added");

    // A key of the wrong length: refused.
    const short = await child(ns, [
      "add",
      "dpmtest",
      "to_remote",
      JSON.stringify([{ key: "11000000", data: hex(d1) }]),
    ]);
    assert.equal(short.code, 1);
    assert.notEqual(short.out.errno, 0, short.out.error);

    // Delete with one key absent: the present one goes, no error.
    const gen3 = (await child(ns, ["gen"])).out.gen;
    const del = await child(ns, [
      "del",
      "dpmtest",
      "to_remote",
      JSON.stringify([hex(k1), hex(k2)]),
    ]);
    assert.deepEqual(del, { code: 0, out: { ok: true } });
    assert.deepEqual(await nftElems(ns, "to_remote"), []);
    assert.ok((await child(ns, ["gen"])).out.gen > gen3);

    // No such map.
    const none = await child(ns, ["list", "dpmtest", "nosuch"]);
    assert.equal(none.code, 1);
    assert.equal(none.out.errno, 2, none.out.error);
  });
}));

Deno.test(
  needsRoot("nftables root: 20000 elements in one transaction, several messages", async () => {
    await withNs(async (ns) => {
      const r = await child(ns, ["bench", "dpmtest", "20000"]);
      assert.equal(r.code, 0, JSON.stringify(r.out));
      assert.equal(r.out.listed, 20000);
      assert.equal(r.out.left, 0);
      // One commit for the add, one for the delete.
      assert.equal(r.out.genDelta, 2);
      console.log(
        `add ${r.out.addRate}/s (${r.out.addMs.toFixed(0)} ms), delete ${r.out.delRate}/s, ` +
          `list ${r.out.listMs.toFixed(0)} ms`,
      );
    });
  }),
);
