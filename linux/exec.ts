/**
 * The one way dpm runs another program (`ip`, `iptables`,
 * `iptables-restore`, `nft`): an argument vector, never a shell, so no
 * value (an interface name, a rule's comment) is ever parsed as shell
 * syntax; optional text on standard input; standard output and error
 * collected. A failure names the program, its arguments, its exit code and
 * what it wrote on standard error ({@linkcode ExecError}); a program that is
 * not installed names the Debian package that provides it.
 *
 * Requires `--allow-run`.
 *
 * @module
 */

/** The Debian package of each program dpm runs (for the "not found" message). */
const PACKAGES: Readonly<Record<string, string>> = {
  ip: "iproute2",
  iptables: "iptables",
  "iptables-restore": "iptables",
  nft: "nftables",
};

/** Options of {@linkcode run}. */
export interface RunOptions {
  /** Text written to the program's standard input; without it, stdin is `/dev/null`. */
  stdin?: string;
  /**
   * A named network namespace to run in (`ip netns exec NAME program ...`,
   * for tests); default: the caller's.
   */
  netns?: string;
}

/** A program that ran (or could not be started): what it was given and what it said. */
export interface Ran {
  /** The program, as started (`ip` when `netns` was given). */
  program: string;
  /** Its arguments. */
  args: readonly string[];
  /** The exit code (a signal counts as 128 + its number). */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error, trimmed. */
  stderr: string;
}

/** A program failed, or could not be started. */
export class ExecError extends Error {
  /** The program. */
  readonly program: string;
  /** Its arguments. */
  readonly args: readonly string[];
  /** Its exit code; null when it could not be started. */
  readonly code: number | null;
  /** What it wrote on standard error, trimmed ("" when it did not run). */
  readonly stderr: string;

  /**
   * @param what what was attempted, first in the message; @param ran the
   * program's run (`code` null: it could not be started, `why` says why);
   * @param why the reason when it did not run, or text added after stderr.
   */
  constructor(
    what: string,
    ran: Pick<Ran, "program" | "args" | "stderr"> & { code: number | null },
    why = "",
  ) {
    const cmd = [ran.program, ...ran.args].map(quoted).join(" ");
    super(
      ran.code === null
        ? `${what}: ${why}`
        : `${what}: ${cmd} exited with code ${ran.code}${
          ran.stderr ? `: ${ran.stderr}` : ""
        }${why}`,
    );
    this.name = "ExecError";
    this.program = ran.program;
    this.args = ran.args;
    this.code = ran.code;
    this.stderr = ran.stderr;
  }
}

/** An argument as a reader would type it: quoted when it has spaces or quotes. */
function quoted(arg: string): string {
  return /^[^\s"'\\]+$/.test(arg) ? arg : JSON.stringify(arg);
}

/** The "not installed" error of `program`. */
function notFound(program: string): ExecError {
  const pkg = PACKAGES[program];
  return new ExecError(
    `${program} not found`,
    { program, args: [], code: null, stderr: "" },
    pkg ? `install the ${pkg} package` : "is it installed?",
  );
}

/**
 * Runs `program` with `args` to completion and returns what it did; a
 * non-zero exit is for the caller to judge (see {@linkcode check}).
 *
 * @throws {ExecError} when the program is not installed.
 */
export async function run(
  program: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<Ran> {
  const argv = opts.netns === undefined
    ? [program, ...args]
    : ["ip", "netns", "exec", opts.netns, program, ...args];
  const [bin, ...rest] = argv as [string, ...string[]];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(bin, {
      args: rest,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw notFound(bin);
    throw e;
  }
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  const ran: Ran = {
    program: bin,
    args: rest,
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr).trim(),
  };
  // `ip netns exec` reports a missing program itself.
  if (ran.code !== 0 && opts.netns !== undefined) {
    const m = /exec of "([^"]+)" failed: No such file/.exec(ran.stderr);
    if (m) throw notFound(m[1]!);
  }
  return ran;
}

/**
 * Runs `program` with `args` and returns its standard output.
 *
 * @throws {ExecError} when it is not installed or exits with a non-zero
 * code; `what` (default: the program's name) starts the message.
 */
export async function check(
  program: string,
  args: readonly string[],
  opts: RunOptions & { what?: string } = {},
): Promise<string> {
  const r = await run(program, args, opts);
  if (r.code !== 0) throw new ExecError(opts.what ?? `${program} failed`, r);
  return r.stdout;
}
