/**
 * The `nft` command, for what is done once per start (and per watchdog
 * repair), never per session: loading a role's whole table from text in one
 * transaction, deleting it, and listing which chains exist. Per-session map
 * elements go over netlink instead (`linux/nftables.ts`).
 *
 * Requires `--allow-run` and root; runs in the caller's network namespace.
 *
 * @module
 */

import { check, ExecError, run } from "./exec.ts";

/** Loads `script` (nft syntax) as one transaction: all of it or none. Throws with nft's message. */
export async function loadRuleset(script: string): Promise<void> {
  const r = await run("nft", ["-f", "-"], { stdin: script });
  if (r.code !== 0) {
    // nft names the line; keep the first few lines of its complaint.
    throw new ExecError("Cannot load the nftables ruleset", {
      ...r,
      stderr: r.stderr.split("\n").slice(0, 6).join(" | "),
    });
  }
}

/** Every chain of the ruleset as `family table chain` strings (iptables-nft chains included). */
export async function listChains(): Promise<Set<string>> {
  const text = await check("nft", ["-j", "list", "chains"], {
    what: "Cannot list the nftables chains",
  });
  const out = new Set<string>();
  let doc: { nftables?: { chain?: { family: string; table: string; name: string } }[] };
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error("nft list chains: unreadable JSON");
  }
  for (const item of doc.nftables ?? []) {
    if (item.chain) out.add(`${item.chain.family} ${item.chain.table} ${item.chain.name}`);
  }
  return out;
}

/** True when `table ip NAME` exists. */
export async function tableExists(name: string): Promise<boolean> {
  return (await run("nft", ["list", "table", "ip", name])).code === 0;
}
