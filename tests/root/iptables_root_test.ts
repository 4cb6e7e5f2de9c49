/**
 * dpm's iptables rule lifecycle, against real iptables inside a network
 * namespace each test creates (and deletes in `finally`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ChainSpec, installChains, listChain, removeChains } from "../../linux/iptables.ts";
import { inNs, run, sh } from "../../testing/netns.ts";
import { needsRoot } from "../../testing/root.ts";

const SPECS: ChainSpec[] = [
  {
    table: "raw",
    hook: "PREROUTING",
    chain: "DPM-T-PRE",
    rules: [
      ["-i", "lan0", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0"],
      ["-p", "tcp", "-m", "comment", "--comment", "dpm: a comment with spaces", "-j", "ACCEPT"],
    ],
  },
  {
    table: "raw",
    hook: "PREROUTING",
    chain: "DPM-T-PRE2",
    rules: [["-p", "icmp", "-j", "ACCEPT"]],
  },
  {
    table: "filter",
    hook: "INPUT",
    chain: "DPM-T-IN",
    rules: [["-p", "udp", "--dport", "5351", "-j", "ACCEPT"]],
  },
];

/** Runs `fn` with a fresh namespace, deleted afterwards whatever happens. */
async function withNs(t: string, fn: (ns: string) => Promise<void>): Promise<void> {
  const ns = `dpmi${Deno.pid % 100000}${t}`;
  await run(["ip", "netns", "del", ns]);
  await sh(["ip", "netns", "add", ns]);
  try {
    await fn(ns);
  } finally {
    await run(["ip", "netns", "del", ns]);
  }
}

/** The rules of a built-in chain (`-A` lines of `iptables -S`). */
async function hookRules(ns: string, table: string, hook: string): Promise<string[]> {
  const out = await sh(inNs(ns, ["iptables", "-w", "-t", table, "-S", hook]));
  return out.split("\n").filter((l) => l.startsWith("-A "));
}

/** Asserts that nothing of SPECS is left in `ns`. */
async function assertClean(ns: string): Promise<void> {
  for (const s of SPECS) {
    assert.deepEqual(await listChain(s.table, s.chain, { netns: ns }), [], s.chain);
    const jumps = (await hookRules(ns, s.table, s.hook)).filter((l) => l.includes(s.chain));
    assert.deepEqual(jumps, [], `jumps to ${s.chain}`);
  }
}

Deno.test(needsRoot("iptables root: install, list, remove", async () => {
  await withNs("ilr", async (ns) => {
    // A rule dpm did not add must survive install and removal.
    await sh(
      inNs(ns, ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-p", "gre", "-j", "ACCEPT"]),
    );
    await installChains(SPECS, { netns: ns });

    assert.deepEqual(await listChain("raw", "DPM-T-PRE", { netns: ns }), [
      "-N DPM-T-PRE",
      "-A DPM-T-PRE -i lan0 -p udp -j NFQUEUE --queue-num 0",
      '-A DPM-T-PRE -p tcp -m comment --comment "dpm: a comment with spaces" -j ACCEPT',
    ]);
    assert.deepEqual(await listChain("filter", "DPM-T-IN", { netns: ns }), [
      "-N DPM-T-IN",
      "-A DPM-T-IN -p udp -m udp --dport 5351 -j ACCEPT",
    ]);
    // Jumps at the top, in the specs' order, ahead of the foreign rule.
    assert.deepEqual(await hookRules(ns, "raw", "PREROUTING"), [
      "-A PREROUTING -j DPM-T-PRE",
      "-A PREROUTING -j DPM-T-PRE2",
      "-A PREROUTING -p gre -j ACCEPT",
    ]);
    assert.deepEqual(await hookRules(ns, "filter", "INPUT"), ["-A INPUT -j DPM-T-IN"]);

    await removeChains(SPECS, { netns: ns });
    await assertClean(ns);
    assert.deepEqual(await hookRules(ns, "raw", "PREROUTING"), ["-A PREROUTING -p gre -j ACCEPT"]);
    assert.deepEqual(await listChain("raw", "NO-SUCH-CHAIN", { netns: ns }), []);
  });
}));

Deno.test(needsRoot(
  "iptables root: installing again after a crash leaves one jump and no duplicates",
  async () => {
    await withNs("icr", async (ns) => {
      await installChains(SPECS, { netns: ns });
      // A crashed run may also have left an extra jump (e.g. killed mid-install).
      await sh(inNs(ns, ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-j", "DPM-T-PRE"]));
      await sh(inNs(ns, ["iptables", "-w", "-t", "raw", "-A", "DPM-T-PRE", "-j", "DROP"]));
      await installChains(SPECS, { netns: ns });

      const pre = await hookRules(ns, "raw", "PREROUTING");
      assert.deepEqual(pre, ["-A PREROUTING -j DPM-T-PRE", "-A PREROUTING -j DPM-T-PRE2"]);
      assert.equal((await listChain("raw", "DPM-T-PRE", { netns: ns })).length, 3);
      assert.equal((await listChain("filter", "DPM-T-IN", { netns: ns })).length, 2);
      assert.deepEqual(await hookRules(ns, "filter", "INPUT"), ["-A INPUT -j DPM-T-IN"]);

      await removeChains(SPECS, { netns: ns });
      await removeChains(SPECS, { netns: ns }); // removal after removal is fine
      await assertClean(ns);
    });
  },
));

Deno.test(needsRoot("iptables root: removing what was never installed is fine", async () => {
  await withNs("inv", async (ns) => {
    await removeChains(SPECS, { netns: ns });
    await assertClean(ns);
  });
}));

Deno.test(
  needsRoot("iptables root: a bad rule throws iptables' message and leaves nothing", async () => {
    await withNs("bad", async (ns) => {
      const bad: ChainSpec[] = [
        SPECS[0]!,
        SPECS[1]!,
        // The raw table goes in first; the failure in filter must roll it back.
        { ...SPECS[2]!, rules: [["-p", "udp", "--no-such-option", "1", "-j", "ACCEPT"]] },
      ];
      await assert.rejects(
        () => installChains(bad, { netns: ns }),
        (e: Error) => {
          assert.match(e.message, /iptables-restore failed for table filter/);
          assert.match(e.message, /no-such-option/);
          assert.match(e.message, /rule: -A DPM-T-IN/);
          return true;
        },
      );
      await assertClean(ns);
    });
  }),
);
