/**
 * A two-namespace fixture for the ffi/ root tests: namespaces A and B joined
 * by one veth pair, created directly inside the namespaces so that nothing is
 * left in the test's own namespace.
 *
 * ```
 *   netns A                      netns B
 *   veth "a0" 10.9.0.1/24  <-->  veth "b0" 10.9.0.2/24
 * ```
 *
 * The full topology builder for end-to-end tests lives elsewhere.
 *
 * @module
 */

/** Output of {@linkcode run}. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion and collects its output; never throws for a non-zero exit. */
export async function run(cmd: string[], stdin?: string): Promise<RunResult> {
  const [bin, ...args] = cmd;
  if (bin === undefined) throw new TypeError("Empty command");
  const child = new Deno.Command(bin, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs a command and throws with its stderr when it fails. */
export async function sh(cmd: string[]): Promise<string> {
  const r = await run(cmd);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Prefixes a command so it runs inside namespace `ns`. */
export function inNs(ns: string, cmd: string[]): string[] {
  return ["ip", "netns", "exec", ns, ...cmd];
}

/** Two namespaces joined by a veth pair. */
export interface NsPair {
  /** Namespace A's name. */
  a: string;
  /** Namespace B's name. */
  b: string;
  /** A's address (dotted quad). */
  addrA: string;
  /** B's address (dotted quad). */
  addrB: string;
}

/**
 * Creates namespaces `<tag>a` and `<tag>b` (a stale pair of the same names is
 * deleted first), a veth pair between them and addresses 10.9.0.1 and
 * 10.9.0.2. Loopback is up in both. On failure, removes what it created.
 */
export async function createNsPair(tag: string): Promise<NsPair> {
  const pair: NsPair = { a: `${tag}a`, b: `${tag}b`, addrA: "10.9.0.1", addrB: "10.9.0.2" };
  await deleteNsPair(pair);
  try {
    await sh(["ip", "netns", "add", pair.a]);
    await sh(["ip", "netns", "add", pair.b]);
    await sh([
      "ip",
      "link",
      "add",
      "a0",
      "netns",
      pair.a,
      "type",
      "veth",
      "peer",
      "name",
      "b0",
      "netns",
      pair.b,
    ]);
    for (const [ns, dev, addr] of [[pair.a, "a0", pair.addrA], [pair.b, "b0", pair.addrB]]) {
      await sh(inNs(ns!, ["ip", "addr", "add", `${addr}/24`, "dev", dev!]));
      await sh(inNs(ns!, ["ip", "link", "set", dev!, "up"]));
      await sh(inNs(ns!, ["ip", "link", "set", "lo", "up"]));
    }
  } catch (e) {
    await deleteNsPair(pair);
    throw e;
  }
  return pair;
}

/** Deletes both namespaces (the veth pair goes with them). Never throws. */
export async function deleteNsPair(pair: NsPair): Promise<void> {
  for (const ns of [pair.a, pair.b]) {
    // Kill anything still running inside before deleting the name.
    const pids = await run(["ip", "netns", "pids", ns]);
    if (pids.code !== 0) continue;
    for (const p of pids.stdout.split(/\s+/).filter((s) => s !== "")) {
      try {
        Deno.kill(Number(p), "SIGKILL");
      } catch { /* already gone */ }
    }
    await run(["ip", "netns", "del", ns]);
  }
}

/**
 * A long-running child process whose stdout and stderr are collected as they
 * arrive, so a test can wait for a line and read the rest at the end.
 */
export class Proc {
  /** Everything printed on stdout so far. */
  out = "";
  /** Everything printed on stderr so far. */
  err = "";
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<Deno.CommandStatus>;
  readonly #pumps: Promise<void>[];

  /** Starts `cmd` with piped output. */
  constructor(cmd: string[]) {
    const [bin, ...args] = cmd;
    if (bin === undefined) throw new TypeError("Empty command");
    this.#child = new Deno.Command(bin, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#pumps = [
      this.#pump(this.#child.stdout, (s) => this.out += s),
      this.#pump(this.#child.stderr, (s) => this.err += s),
    ];
    this.#done = this.#child.status;
  }

  async #pump(stream: ReadableStream<Uint8Array>, add: (s: string) => void): Promise<void> {
    const dec = new TextDecoder();
    for await (const chunk of stream) add(dec.decode(chunk, { stream: true }));
  }

  /** The process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Sends a signal; ignores a process already gone. */
  kill(sig: Deno.Signal = "SIGTERM"): void {
    try {
      this.#child.kill(sig);
    } catch { /* exited */ }
  }

  /** Waits for exit and for all output; SIGKILL after `timeoutMs`. */
  async finish(timeoutMs = 10000): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const t = new Promise<void>((r) => {
      timer = setTimeout(() => {
        this.kill("SIGKILL");
        r();
      }, timeoutMs);
    });
    await Promise.race([this.#done, t]);
    const st = await this.#done;
    clearTimeout(timer);
    await Promise.all(this.#pumps);
    return st;
  }
}
