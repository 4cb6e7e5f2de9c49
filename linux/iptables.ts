/**
 * The lifecycle of dpm's iptables rules.
 *
 * dpm never edits the built-in chains beyond one jump per hook: its rules
 * live in chains of its own (`DPM-...`), so start, stop and crash recovery
 * remove exactly what dpm added and nothing else. Install is
 * remove-then-create, which makes a restart after a crash leave exactly one
 * jump and one copy of each rule.
 *
 * Commands run through the `iptables` / `iptables-restore` the system
 * selected (nft or legacy backend), with `-w` to wait for the xtables lock,
 * in the caller's network namespace, or in `opts.netns` through
 * `ip netns exec` (tests), by linux/exec.ts.
 *
 * Requires `--allow-run` and root.
 *
 * @module
 */

import { ExecError, type Ran, run } from "./exec.ts";

/** One chain of dpm's, jumped to from a built-in chain. */
export interface ChainSpec {
  /** The table of both chains. */
  table: "raw" | "nat" | "filter" | "mangle";
  /** Built-in chain to jump from, e.g. `PREROUTING`. */
  hook: string;
  /** dpm's chain, e.g. `DPM-SRV-PRE` (at most 28 characters). */
  chain: string;
  /**
   * Each rule's arguments after `-A <chain>`, e.g.
   * `["-i", "lan0", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0"]`.
   */
  rules: string[][];
}

/** Where the commands run. */
export interface IptablesOptions {
  /** A named network namespace (`ip netns exec NS ...`); default: the current one. */
  netns?: string;
}

/** The kernel's limit on a chain name (XT_EXTENSION_MAXNAMELEN - 1 minus margin iptables keeps). */
const MAX_CHAIN_LEN = 28;

function iptables(args: string[], opts?: IptablesOptions): Promise<Ran> {
  return run("iptables", ["-w", ...args], opts);
}

/**
 * True when iptables said the chain, table or rule is not there. The nft
 * backend (1.8.9) reports a missing chain listed with `-S` as "incompatible".
 */
function isAbsent(stderr: string): boolean {
  return /No chain\/target\/match by that name|does not exist|Bad rule|is incompatible/i.test(
    stderr,
  );
}

function validate(spec: ChainSpec): void {
  if (!/^[A-Za-z0-9_.][A-Za-z0-9_.-]*$/.test(spec.chain) || spec.chain.length > MAX_CHAIN_LEN) {
    throw new TypeError(
      `Chain name "${spec.chain}" must be 1-${MAX_CHAIN_LEN} letters, digits, "_", "." or "-"`,
    );
  }
  if (!/^[A-Z]+$/.test(spec.hook)) {
    throw new TypeError(`Hook "${spec.hook}" is not a built-in chain name`);
  }
}

/** Quotes one argument for iptables-restore's line parser. */
function quote(arg: string): string {
  if (/^[^\s"'\\]+$/.test(arg)) return arg;
  return `"${arg.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

/**
 * Splits an `iptables -S` line into arguments, honouring the double quotes
 * iptables puts around arguments with spaces (comments).
 */
export function splitRule(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (const m of line.matchAll(re)) {
    out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2]!);
  }
  return out;
}

/**
 * Removes anything stale from a previous run (every jump to these chains
 * from their hooks, duplicates too; then flush and delete each chain), then
 * creates the chains, appends the rules and inserts one jump at the top of
 * each hook (several specs on one hook keep their order). One
 * `iptables-restore --noflush` per table, so each table changes atomically.
 * On failure removes whatever it added and throws an Error carrying
 * iptables' message and the offending rule.
 */
export async function installChains(specs: ChainSpec[], opts?: IptablesOptions): Promise<void> {
  for (const s of specs) validate(s);
  await removeChains(specs, opts);
  const tables = [...new Set(specs.map((s) => s.table))];
  try {
    for (const table of tables) {
      const mine = specs.filter((s) => s.table === table);
      const lines = [`*${table}`];
      for (const s of mine) lines.push(`:${s.chain} - [0:0]`);
      for (const s of mine) {
        for (const r of s.rules) lines.push(["-A", s.chain, ...r].map(quote).join(" "));
      }
      // Inserting at position 1 in reverse keeps the specs' order at the top.
      for (const s of [...mine].reverse()) lines.push(`-I ${s.hook} 1 -j ${s.chain}`);
      lines.push("COMMIT", "");
      const r = await run("iptables-restore", ["-w", "--noflush"], {
        ...opts,
        stdin: lines.join("\n"),
      });
      if (r.code !== 0) {
        const m = /line:? (\d+)/i.exec(r.stderr);
        const bad = m ? lines[Number(m[1]) - 1] : undefined;
        throw new ExecError(
          `iptables-restore failed for table ${table}`,
          r,
          bad !== undefined ? ` (rule: ${bad})` : "",
        );
      }
    }
  } catch (e) {
    try {
      await removeChains(specs, opts);
    } catch {
      // The first error is the one worth reporting.
    }
    throw e;
  }
}

/**
 * Idempotent removal: every jump to these chains from their hooks, then
 * flush and delete each chain. Never throws for a chain, hook or table that
 * does not exist; throws for other failures (e.g. a chain still referenced
 * by a rule dpm did not add).
 */
export async function removeChains(specs: ChainSpec[], opts?: IptablesOptions): Promise<void> {
  for (const s of specs) validate(s);
  for (const s of specs) {
    const listed = await iptables(["-t", s.table, "-S", s.hook], opts);
    if (listed.code !== 0) {
      if (isAbsent(listed.stderr)) continue;
      throw new ExecError(`Cannot list chain ${s.hook}`, listed);
    }
    // Rule numbers of every jump to our chain; deleting from the last keeps
    // the earlier numbers valid.
    const rules = listed.stdout.split("\n").filter((l) => l.startsWith(`-A ${s.hook} `));
    const jumps: number[] = [];
    rules.forEach((l, i) => {
      const a = splitRule(l);
      for (let k = 0; k + 1 < a.length; k++) {
        if ((a[k] === "-j" || a[k] === "-g") && a[k + 1] === s.chain) jumps.push(i + 1);
      }
    });
    for (const n of jumps.reverse()) {
      const r = await iptables(["-t", s.table, "-D", s.hook, String(n)], opts);
      if (r.code !== 0 && !isAbsent(r.stderr)) {
        throw new ExecError(`Cannot remove jump ${s.hook} -> ${s.chain}`, r);
      }
    }
  }
  // Flush all before deleting any: dpm's chains may jump to each other.
  for (const s of specs) {
    const r = await iptables(["-t", s.table, "-F", s.chain], opts);
    if (r.code !== 0 && !isAbsent(r.stderr)) {
      throw new ExecError(`Cannot flush chain ${s.chain}`, r);
    }
  }
  for (const s of specs) {
    const r = await iptables(["-t", s.table, "-X", s.chain], opts);
    if (r.code !== 0 && !isAbsent(r.stderr)) {
      throw new ExecError(`Cannot delete chain ${s.chain}`, r);
    }
  }
}

/**
 * The rules of one chain as `iptables -S` prints them (the `-N` line first),
 * or `[]` when the chain does not exist.
 */
export async function listChain(
  table: string,
  chain: string,
  opts?: IptablesOptions,
): Promise<string[]> {
  const r = await iptables(["-t", table, "-S", chain], opts);
  if (r.code !== 0) {
    if (isAbsent(r.stderr)) return [];
    throw new ExecError(`Cannot list chain ${chain}`, r);
  }
  return r.stdout.split("\n").filter((l) => l !== "");
}

/**
 * A rule that matches nothing but makes the kernel reassemble fragments in
 * this namespace before the raw table. dpm translates whole datagrams; the
 * kernel only defragments in front of raw when conntrack is in use in the
 * namespace, and `CT --notrack` alone does not count. A conntrack match
 * does: in raw, before conntrack ran, no packet is UNTRACKED yet, so the
 * rule never matches.
 */
export const DEFRAG_ON: readonly string[] = Object.freeze([
  "-m",
  "conntrack",
  "--ctstate",
  "UNTRACKED",
  "-j",
  "RETURN",
]);
