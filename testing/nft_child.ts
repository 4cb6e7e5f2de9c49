/**
 * nf_tables element client spawned by tests/root/nftables_root_test.ts
 * inside a namespace (a process cannot move itself into one):
 *
 *   ip netns exec NS deno run -A testing/nft_child.ts <command> <args...>
 *
 * Commands (table and map names come first; elements are JSON on argv):
 * - `gen`: prints `{"gen": N}`.
 * - `add TABLE MAP JSON`: JSON is `[{ "key": hex, "data": hex }, ...]`.
 * - `del TABLE MAP JSON`: JSON is `[hex key, ...]`.
 * - `list TABLE MAP`: prints `[{ "key": hex, "data": hex }, ...]`.
 * - `bench TABLE N`: adds N elements to TABLE's `to_public` in one call,
 *   lists them, deletes them; prints timings and rates.
 *
 * Output is one JSON line on stdout; a failure prints
 * `{"error": message, "errno": n, "element": i}` and exits 1.
 *
 * @module
 */

import { concat, hex, type MapElem, NftError, NftMaps } from "../linux/nftables.ts";

function unhex(s: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/i.test(s)) throw new Error(`"${s}" is not hex`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const [cmd, table = "", map = "", arg = ""] = Deno.args;
const m = NftMaps.open();
try {
  let result: unknown;
  switch (cmd) {
    case "gen":
      result = { gen: m.generation() };
      break;
    case "add": {
      const els = (JSON.parse(arg) as { key: string; data: string }[]).map((e) => ({
        key: unhex(e.key),
        data: unhex(e.data),
      }));
      m.add(table, map, els);
      result = { ok: true };
      break;
    }
    case "del":
      m.delete(table, map, (JSON.parse(arg) as string[]).map(unhex));
      result = { ok: true };
      break;
    case "list":
      result = m.list(table, map).map((e) => ({ key: hex(e.key), data: hex(e.data) }));
      break;
    case "bench": {
      const n = Number(map);
      const els: MapElem[] = [];
      for (let i = 0; i < n; i++) {
        // proto udp . 10.A.B.C . sport . 198.51.100.1 . 5060 -> 203.0.113.1 . port
        els.push({
          key: concat([17, 1], [0x0a000000 + i, 4], [1024 + (i % 60000), 2], [0xc6336401, 4], [
            5060,
            2,
          ]),
          data: concat([0xcb007101, 4], [1024 + (i % 60000), 2]),
        });
      }
      const g0 = m.generation();
      let t = performance.now();
      m.add(table, "to_public", els);
      const addMs = performance.now() - t;
      t = performance.now();
      const listed = m.list(table, "to_public").length;
      const listMs = performance.now() - t;
      t = performance.now();
      m.delete(table, "to_public", els.map((e) => e.key));
      const delMs = performance.now() - t;
      const left = m.list(table, "to_public").length;
      result = {
        n,
        addMs,
        listMs,
        delMs,
        listed,
        left,
        addRate: Math.round(n / (addMs / 1000)),
        delRate: Math.round(n / (delMs / 1000)),
        genDelta: m.generation() - g0,
      };
      break;
    }
    default:
      throw new Error(`Unknown command "${cmd}"`);
  }
  console.log(JSON.stringify(result));
} catch (e) {
  const out = {
    error: e instanceof Error ? e.message : String(e),
    errno: e instanceof NftError ? e.errno : -1,
    element: e instanceof NftError ? e.element : -1,
  };
  console.log(JSON.stringify(out));
  Deno.exitCode = 1;
} finally {
  m.close();
}
