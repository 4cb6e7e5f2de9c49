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

const NOT_FOUND_HINT = "nft not found: install the nftables package";

async function nft(
  args: string[],
  input?: string,
): Promise<{ code: number; out: string; err: string }> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("nft", {
      args,
      stdin: input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(NOT_FOUND_HINT);
    throw e;
  }
  if (input !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(input));
    await w.close();
  }
  const o = await child.output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr).trim() };
}

/** Loads `script` (nft syntax) as one transaction: all of it or none. Throws with nft's message. */
export async function loadRuleset(script: string): Promise<void> {
  const r = await nft(["-f", "-"], script);
  if (r.code !== 0) {
    // nft names the line; keep the first few lines of its complaint.
    throw new Error(`nft -f failed: ${r.err.split("\n").slice(0, 6).join(" | ")}`);
  }
}

/** Every chain of the ruleset as `family table chain` strings (iptables-nft chains included). */
export async function listChains(): Promise<Set<string>> {
  const r = await nft(["-j", "list", "chains"]);
  if (r.code !== 0) throw new Error(`nft list chains failed: ${r.err}`);
  const out = new Set<string>();
  let doc: { nftables?: { chain?: { family: string; table: string; name: string } }[] };
  try {
    doc = JSON.parse(r.out);
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
  const r = await nft(["list", "table", "ip", name]);
  return r.code === 0;
}
