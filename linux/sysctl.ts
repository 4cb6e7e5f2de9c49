/**
 * Kernel parameters under `/proc/sys`, set for the lifetime of a dpm process
 * and put back afterwards.
 *
 * Names are in `sysctl(8)`'s dotted form: `net.ipv4.conf.lan0.accept_local`
 * is `/proc/sys/net/ipv4/conf/lan0/accept_local`. An interface name holding
 * a dot (`eth0.100`) is written with a slash, as `sysctl(8)` does:
 * `net.ipv4.conf.eth0/100.rp_filter`.
 *
 * The files belong to the network namespace the process runs in.
 *
 * Requires `--allow-read` and `--allow-write` on `/proc/sys`, and root to write.
 *
 * @module
 */

/** The `/proc/sys` path of a dotted sysctl name. Throws a TypeError for a malformed name. */
export function sysctlPath(name: string): string {
  if (!/^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-/]+)+$/.test(name) || name.includes("..")) {
    throw new TypeError(`Malformed sysctl name "${name}"`);
  }
  // Dots separate levels; a slash stands for a dot inside one level.
  return "/proc/sys/" + name.split(".").map((p) => p.replaceAll("/", ".")).join("/");
}

/** The current value of a sysctl, without the trailing newline. */
export async function readSysctl(name: string): Promise<string> {
  return (await Deno.readTextFile(sysctlPath(name))).trim();
}

/**
 * Writes each value, remembering the previous ones, and returns a function
 * that writes the previous values back (in reverse order; it never throws,
 * and calling it twice is harmless). If one write fails, the values already
 * written are restored before the error is thrown.
 *
 * @example
 * ```ts ignore
 * const restore = await setSysctls({ "net.ipv4.conf.lan0.accept_local": "1" });
 * try { await serve(); } finally { await restore(); }
 * ```
 */
export async function setSysctls(
  values: Record<string, string>,
  opts: { journal?: string } = {},
): Promise<() => Promise<void>> {
  const done: [path: string, old: string][] = [];
  const restore = async (): Promise<void> => {
    while (done.length > 0) {
      const [path, old] = done.pop()!;
      try {
        await Deno.writeTextFile(path, old + "\n");
      } catch {
        // Best effort: the interface may be gone, which took the value with it.
      }
    }
    if (opts.journal) await Deno.remove(opts.journal).catch(() => {});
  };
  try {
    for (const [name, value] of Object.entries(values)) {
      const path = sysctlPath(name);
      let old: string;
      try {
        old = (await Deno.readTextFile(path)).trim();
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) {
          throw new Error(`Unknown sysctl "${name}" (no ${path})`);
        }
        throw e;
      }
      if (old === value) continue;
      // The journal holds the original values before any is changed, so a run
      // killed with SIGKILL can be undone by the next one (recoverSysctls).
      if (opts.journal) await writeJournal(opts.journal, [...done, [path, old]]);
      try {
        await Deno.writeTextFile(path, value + "\n");
      } catch (e) {
        throw new Error(`Cannot set sysctl "${name}" to "${value}": ${(e as Error).message}`);
      }
      done.push([path, old]);
    }
  } catch (e) {
    await restore();
    throw e;
  }
  return restore;
}

/**
 * Writes the journal: a fresh `.tmp` file beside it (`createNew`: O_CREAT |
 * O_EXCL, which never follows a symbolic link; a stale one, link or not, is
 * removed first, and removing a link removes the link, not its target),
 * then renamed over the journal.
 */
export async function writeJournal(path: string, entries: [string, string][]): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.remove(tmp).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
  try {
    const b = new TextEncoder().encode(JSON.stringify(entries) + "\n");
    for (let o = 0; o < b.length;) o += await f.write(b.subarray(o));
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
}

/**
 * True when `path` is one that {@linkcode sysctlPath} makes for a network
 * sysctl (`/proc/sys/net/...`): no `.` or `..` level, no empty level, only
 * the characters of a sysctl name. A journal is only trusted that far.
 */
export function isNetSysctlPath(path: string): boolean {
  if (!path.startsWith("/proc/sys/net/")) return false;
  const levels = path.slice("/proc/sys/".length).split("/");
  return levels.length >= 2 &&
    levels.every((l) => /^[A-Za-z0-9_\-.]+$/.test(l) && l !== "." && l !== "..");
}

/**
 * Puts back the original values recorded in `journal` by a run that did not
 * get to restore them (it was killed), then deletes the journal. Returns how
 * many values were written back; 0 when there is no journal.
 */
export async function recoverSysctls(journal: string): Promise<number> {
  let entries: unknown;
  try {
    // dpm writes the journal as a regular file (writeJournal): a link is not one of its.
    if ((await Deno.lstat(journal)).isSymlink) {
      await Deno.remove(journal);
      return 0;
    }
    entries = JSON.parse(await Deno.readTextFile(journal));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    await Deno.remove(journal).catch(() => {});
    return 0; // A torn journal: nothing trustworthy to restore.
  }
  let n = 0;
  if (Array.isArray(entries)) {
    for (const it of entries.reverse()) {
      if (!Array.isArray(it) || typeof it[0] !== "string" || typeof it[1] !== "string") continue;
      if (!isNetSysctlPath(it[0])) continue; // only what dpm writes: network sysctls
      try {
        await Deno.writeTextFile(it[0], it[1] + "\n");
        n++;
      } catch {
        // The interface is gone.
      }
    }
  }
  await Deno.remove(journal).catch(() => {});
  return n;
}

/**
 * The kernel applies max(all, interface) for rp_filter, so turning it off
 * for dpm's two interfaces means setting `all` to 0. To leave every other
 * interface (and ones created later, via `default`) filtering exactly as
 * before, each gets max(old all, its own) explicitly. Restored on exit.
 */
export async function keepReversePathFilter(except: string[]): Promise<Record<string, string>> {
  const all = Number(await readSysctl("net.ipv4.conf.all.rp_filter"));
  const out: Record<string, string> = {};
  if (!(all > 0)) return out;
  for await (const e of Deno.readDir("/proc/sys/net/ipv4/conf")) {
    if (e.name === "all" || e.name === "lo" || except.includes(e.name)) continue;
    if (!/^[A-Za-z0-9_.-]+$/.test(e.name)) continue; // not expressible as a sysctl name
    const name = `net.ipv4.conf.${e.name.replaceAll(".", "/")}.rp_filter`;
    const own = Number(await readSysctl(name));
    if (own < all) out[name] = String(all);
  }
  return out;
}
