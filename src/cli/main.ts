/**
 * The command line: `dpm server | driver | status | query | drop | map`,
 * `--help`, `--version`. Flags are parsed strictly; values are validated by
 * the zod schemas in config.ts. Any bad flag, value or config file prints a
 * one-line reason naming the offending value, then the usage, and exits with
 * code 2. This file parses and dispatches; what is printed for people is
 * src/cli/format.ts's.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type CommandName,
  COMMANDS,
  ConfigError,
  DRIVER_FLAGS,
  driverConfig,
  DROP_FLAGS,
  type Flag,
  MAP_FLAGS,
  type Origins,
  parseSpec,
  QUERY_FLAGS,
  readConfigFile,
  SERVER_FLAGS,
  serverConfig,
  STATUS_FLAGS,
} from "../config.ts";
import {
  bashCompletion,
  commandHelp,
  jsonSchema,
  mainHelp,
  manPage,
  zshCompletion,
} from "./docs.ts";
import { parseAddrPort, parseIPv4 } from "../wire/addr.ts";
import { groupId, requestLocal, streamLocal } from "../operator/socket.ts";
import { type Format, type Level, setFormat, setLevel } from "../runtime/log.ts";
import { VERSION } from "../version.ts";
import type {
  DriverStatusReply,
  DropReply,
  MapReply,
  QueryReply,
  SessionEvent,
  SessionView,
  StatusReply,
} from "../operator/types.ts";
import {
  formatDriverStatus,
  formatEvent,
  formatMapReply,
  formatQueryReply,
  formatStatus,
} from "./format.ts";
import { protoNumber } from "../wire/meta.ts";

/** Thrown for bad usage; carries the command whose usage is printed. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(message: string, readonly command: CommandName | null) {
    super(message);
  }
}

/**
 * Parses the arguments of `command` against its `flags` (`--config` too for
 * a role). Null, after printing the command's help, for `--help`. `want`:
 * the names of the arguments that are not flags, exactly as many as must
 * be given (none: any is a usage error); without, the caller checks them.
 */
function parse(
  command: CommandName,
  args: string[],
  flags: Record<string, Flag>,
  { role = false, want }: { role?: boolean; want?: string[] } = {},
) {
  let parsed;
  try {
    const options = parseSpec(flags, role);
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true, tokens: true });
  } catch (e) {
    // node's messages are long; keep the part that names the flag.
    const msg = String((e as Error).message).split(". ")[0]!.replace(
      /^Unknown option/,
      "Unknown flag",
    );
    throw new UsageError(msg, command);
  }
  if (parsed.values.help) {
    console.log(commandHelp(command));
    return null;
  }
  const n = parsed.positionals.length;
  if (want?.length === 0 && n > 0) {
    throw new UsageError(`Unexpected argument "${parsed.positionals[0]}"`, command);
  }
  if (want !== undefined && n !== want.length) {
    throw new UsageError(
      `Expected ${want.length} arguments (${want.join(", ")}), got ${n}`,
      command,
    );
  }
  return parsed;
}

/** The flags that join one ordered list of rules (`ServerConfig.mapRules`). */
const RULE_FLAGS = ["map-allow", "map-deny"];

/**
 * Merges a config file (if any) under the flags: flags win. Returns the
 * settings and, for each key that came from the file, the file's name (for
 * error messages). `--no-NAME` flags are passed on as `no-NAME` keys.
 *
 * The rules of `--map-allow` and `--map-deny` are one ordered list: `order`
 * names each rule's flag in turn, as given on the command line (`tokens`
 * of `parseArgs`) or, when the command line has none, in the file (its keys
 * in order, each array in order). Rules on the command line replace the
 * file's.
 */
export async function mergeSettings(
  values: Record<string, unknown>,
  tokens: readonly { kind: string; name?: string }[] = [],
): Promise<{ raw: Record<string, unknown>; origins: Origins; order: string[] }> {
  const path = typeof values.config === "string" ? values.config : null;
  const fromFile = path ? await readConfigFile(path) : {};
  const raw: Record<string, unknown> = { ...fromFile };
  const origins: Origins = {};
  for (const k of Object.keys(fromFile)) origins[k] = path!;
  const cliRules = RULE_FLAGS.some((k) => values[k] !== undefined);
  if (cliRules) {
    for (const k of RULE_FLAGS) {
      delete raw[k];
      delete origins[k];
    }
  }
  for (const [k, v] of Object.entries(values)) {
    if (k === "config" || k === "help" || v === undefined) continue;
    raw[k] = v;
    delete origins[k];
    // A flag overrides the file's setting of the same switch in either spelling.
    const other = k.startsWith("no-") ? k.slice(3) : `no-${k}`;
    if (other in raw && origins[other]) delete raw[other];
  }
  const order = cliRules
    ? tokens.filter((t) => t.kind === "option" && RULE_FLAGS.includes(t.name ?? "")).map((t) =>
      t.name!
    )
    : Object.keys(fromFile).filter((k) => RULE_FLAGS.includes(k)).flatMap((k) => {
      const v = fromFile[k];
      return Array(Array.isArray(v) ? v.length : 1).fill(k) as string[];
    });
  return { raw, origins, order };
}

/** The commands that do something, each run to its exit code. */
const RUNS = new Map<string, (args: string[]) => Promise<number>>([
  ["server", runServerCommand],
  ["driver", runDriverCommand],
  ["status", runStatusCommand],
  ["query", runQueryCommand],
  ["drop", runDropCommand],
  ["map", runMapCommand],
]);

/**
 * Runs the CLI and returns the process exit code. Long-running roles return
 * when they stop (signal or fatal error).
 */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case undefined:
        console.error(mainHelp());
        return 2;
      case "help":
      case "-h":
      case "--help":
        return runHelpCommand(rest);
      case "version":
      case "--version":
      case "-V":
        console.log(`dpm ${VERSION}`);
        return 0;
      default: {
        const run = RUNS.get(command);
        if (!run) throw new UsageError(`Unknown command "${command}"`, null);
        return await run(rest);
      }
    }
  } catch (e) {
    if (e instanceof UsageError) {
      // A bad flag or argument: the reason, then the usage of that command.
      console.error(`dpm: ${e.message}\n`);
      console.error(e.command ? commandHelp(e.command) : mainHelp());
      return 2;
    }
    if (e instanceof ConfigError) {
      // A bad value or file: every problem, one per line, and where to read more.
      for (const line of e.message.split("\n")) console.error(`dpm: ${line}`);
      if (command && command in COMMANDS) console.error(`(see 'dpm help ${command}')`);
      return 2;
    }
    console.error(`dpm: ${(e as Error)?.message ?? e}`);
    return 1;
  }
}

/**
 * `dpm help [command]`, and the generated documents: `--man` (dpm.8),
 * `--json-schema <server|driver>`, `--completion <bash|zsh>`.
 */
function runHelpCommand(args: string[]): number {
  const [what, arg] = args;
  if (what === undefined) return console.log(mainHelp()), 0;
  if (what in COMMANDS) return console.log(commandHelp(what as CommandName)), 0;
  if (what === "--man") return console.log(manPage()), 0;
  if (what === "--json-schema" && (arg === "server" || arg === "driver")) {
    return console.log(JSON.stringify(jsonSchema(arg), null, 2)), 0;
  }
  if (what === "--completion" && arg === "bash") return console.log(bashCompletion()), 0;
  if (what === "--completion" && arg === "zsh") return console.log(zshCompletion()), 0;
  throw new UsageError(
    `Unknown help topic "${
      args.join(" ")
    }": want a command, --man, --json-schema <server|driver> or --completion <bash|zsh>`,
    null,
  );
}

/**
 * `dpm server` and `dpm driver`: the role's settings (flags over the config
 * file, validated by `configure`, which gets the order of the mapping rules
 * too: see {@linkcode mergeSettings}), then the role until it stops. SIGHUP
 * re-reads the flags and the config file (what can change live, does).
 */
async function runRole<C extends { logLevel: Level; logFormat: Format }>(
  command: "server" | "driver",
  args: string[],
  flags: Record<string, Flag>,
  configure: (raw: Record<string, unknown>, origins: Origins, order: string[]) => C | Promise<C>,
  role: () => Promise<(cfg: C, load: () => Promise<C>) => Promise<number>>,
): Promise<number> {
  const parsed = parse(command, args, flags, { role: true, want: [] });
  if (!parsed) return 0;
  const load = async () => {
    const { raw, origins, order } = await mergeSettings(parsed.values, parsed.tokens);
    return await configure(raw, origins, order);
  };
  const cfg = await load();
  setLevel(cfg.logLevel);
  setFormat(cfg.logFormat);
  return await (await role())(cfg, load);
}

function runServerCommand(args: string[]): Promise<number> {
  return runRole(
    "server",
    args,
    SERVER_FLAGS,
    serverConfig,
    async () => (await import("../server/run.ts")).runServer,
  );
}

function runDriverCommand(args: string[]): Promise<number> {
  return runRole("driver", args, DRIVER_FLAGS, async (raw, origins) => {
    const cfg = driverConfig(raw, origins);
    if (cfg.socketGroup) {
      // Checked before anything starts, like every other setting.
      try {
        await groupId(cfg.socketGroup);
      } catch (e) {
        throw new ConfigError((e as Error).message);
      }
    }
    return cfg;
  }, async () => (await import("../driver/run.ts")).runDriver);
}

async function runStatusCommand(args: string[]): Promise<number> {
  const parsed = parse("status", args, STATUS_FLAGS, { want: [] });
  if (!parsed) return 0;
  const { values } = parsed;
  const host = values.host === undefined ? undefined : String(values.host);
  if (host !== undefined && parseIPv4(host) === null) {
    throw new UsageError(`Invalid --host "${host}": want an IPv4 address`, "status");
  }
  const dflt = values.driver ? "/run/dpm/driver.sock" : "/run/dpm/server.sock";
  const path = String(values.socket ?? dflt);
  if (values.driver) {
    if (host !== undefined || values.watch) {
      throw new UsageError(
        "--host and --watch are about the gateway's table: not with --driver",
        "status",
      );
    }
    const res = await requestLocal(path, { op: "status" }) as Record<string, unknown>;
    if (values.json) console.log(JSON.stringify(res, null, 2));
    else if (typeof res.result === "string") return failed(res); // refused (not-yours)
    else console.log(formatDriverStatus(res as unknown as DriverStatusReply));
    return typeof res.result === "string" ? 1 : 0;
  }
  const out = new Output();
  if (values.watch) {
    // Like `conntrack -E`: one line per event as it happens, until interrupted.
    let first = true;
    for await (const m of streamLocal(path, { op: "watch", ...(host ? { host } : {}) })) {
      if (first) {
        first = false;
        if (m.stream !== true) return failed(m);
        console.error(
          `watching${host ? ` host ${host}` : ""}: sessions up, down, refused (Ctrl-C to stop)`,
        );
        continue;
      }
      if (isTrailer(m)) break;
      await out.line(values.json ? JSON.stringify(m) : formatEvent(m as unknown as SessionEvent));
      await out.flush();
    }
    await out.flush();
    return 0;
  }
  // The header, then the rows as they come: with --json all of them, as one
  // JSON document written as it is read; as text the first 1000 (a host's: all).
  const req = {
    op: "status",
    stream: true,
    ...(host ? { host } : {}),
    ...(values.json || host ? {} : { limit: 1000 }),
  };
  let header: Record<string, unknown> | null = null;
  const shown: SessionView[] = [];
  let rows = 0;
  for await (const m of streamLocal(path, req)) {
    if (!header) {
      if (m.stream !== true) {
        // An older server: one answer, the status itself.
        if (values.json) console.log(JSON.stringify(m, null, 2));
        else console.log(formatStatus(m as unknown as StatusReply));
        return m.error ? 1 : 0;
      }
      const { stream: _, ...h } = m;
      header = h;
      if (values.json) await out.write(JSON.stringify(h).slice(0, -1) + `,"shown":[`);
      continue;
    }
    if (isTrailer(m)) break;
    if (values.json) await out.write(`${rows ? "," : ""}\n${JSON.stringify(m)}`);
    else shown.push(m as unknown as SessionView);
    rows++;
  }
  if (values.json) await out.line("\n]}");
  else await out.line(formatStatus({ ...(header as unknown as StatusReply), shown }));
  await out.flush();
  return 0;
}

/** The last line of a stream: `{"end": n}`. */
function isTrailer(m: Record<string, unknown>): boolean {
  return typeof m.end === "number" && Object.keys(m).length === 1;
}

function failed(m: Record<string, unknown>): number {
  console.error(`dpm: ${m.error ?? JSON.stringify(m)}`);
  return 1;
}

/** Buffered stdout: writes in chunks of about 64 KB, each awaited (a slow pipe slows the reading). */
class Output {
  #parts: string[] = [];
  #size = 0;
  readonly #enc = new TextEncoder();
  async write(text: string): Promise<void> {
    this.#parts.push(text);
    this.#size += text.length;
    if (this.#size >= 64 * 1024) await this.flush();
  }
  line(text: string): Promise<void> {
    return this.write(text + "\n");
  }
  async flush(): Promise<void> {
    if (!this.#parts.length) return;
    const b = this.#enc.encode(this.#parts.join(""));
    this.#parts = [];
    this.#size = 0;
    for (let o = 0; o < b.length;) o += await Deno.stdout.write(b.subarray(o));
  }
}

async function runDropCommand(args: string[]): Promise<number> {
  const parsed = parse("drop", args, DROP_FLAGS);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  let req: Record<string, unknown>;
  let what: string;
  if (values.host !== undefined) {
    if (positionals.length) {
      throw new UsageError(`Unexpected argument "${positionals[0]}" with --host`, "drop");
    }
    const host = String(values.host);
    if (parseIPv4(host) === null) {
      throw new UsageError(`Invalid --host "${host}": want an IPv4 address`, "drop");
    }
    req = { op: "drop", host };
    what = `host ${host}`;
  } else {
    if (positionals.length !== 3) {
      throw new UsageError(
        `Expected 3 arguments (proto, internal, remote) or --host, got ${positionals.length}`,
        "drop",
      );
    }
    const [p, i, r] = positionals as [string, string, string];
    const proto = p.toLowerCase();
    if (protoNumber(proto) === undefined) {
      throw new UsageError(`Unknown protocol "${p}": want tcp, udp or icmp`, "drop");
    }
    if (!parseAddrPort(i)) {
      throw new UsageError(`Cannot parse internal endpoint "${i}": want addr:port`, "drop");
    }
    if (!parseAddrPort(r) && !(proto === "icmp" && parseIPv4(r) !== null)) {
      throw new UsageError(`Cannot parse remote endpoint "${r}": want addr:port`, "drop");
    }
    req = { op: "drop", proto, internal: i, remote: r };
    what = `${proto} ${i} -> ${r}`;
  }
  const res = await requestLocal(String(values.socket ?? "/run/dpm/server.sock"), req) as DropReply;
  if (values.json) console.log(JSON.stringify(res));
  else if (res.error) console.error(`dpm: ${res.error}`);
  else console.log(`dropped ${res.dropped} session(s) (${what})`);
  return res.error ? 1 : res.dropped > 0 ? 0 : 1;
}

/** A flag's value through its schema (the one table's validation), or a UsageError. */
function flagValue<T>(
  command: CommandName,
  flag: {
    schema: { safeParse(v: unknown): { success: boolean; data?: unknown; error?: unknown } };
  },
  raw: unknown,
): T {
  const r = flag.schema.safeParse(raw);
  if (!r.success) {
    const issues = (r.error as { issues?: { message: string }[] }).issues ?? [];
    throw new UsageError(issues.map((i) => i.message).join("; ") || "invalid value", command);
  }
  return r.data as T;
}

async function runMapCommand(args: string[]): Promise<number> {
  const parsed = parse("map", args, MAP_FLAGS, { want: ["proto", "local port"] });
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const [p, port] = positionals as [string, string];
  const proto = p.toLowerCase();
  if (proto !== "tcp" && proto !== "udp") {
    throw new UsageError(`Cannot map protocol "${p}": want tcp or udp`, "map");
  }
  if (!/^[0-9]{1,5}$/.test(port) || +port < 1 || +port > 65535) {
    throw new UsageError(`Invalid local port "${port}": want 1-65535`, "map");
  }
  const lifetime = flagValue<number>("map", MAP_FLAGS.lifetime, values.lifetime ?? 3600);
  const publicPort = flagValue<number | null>(
    "map",
    MAP_FLAGS["public-port"],
    values["public-port"] ?? null,
  );
  const socket = String(values.socket ?? "/run/dpm/driver.sock");
  const res = await askDriver<MapReply>(socket, {
    op: "map",
    proto,
    port: +port,
    lifetime,
    ...(publicPort !== null ? { publicPort } : {}),
    exact: values.exact === true,
  }, values.json === true);
  if (!res) return 3;
  if (values.json) console.log(JSON.stringify(res));
  else if (res.result === "ok") console.log(formatMapReply(proto, port, res));
  else console.error(formatMapReply(proto, port, res));
  return res.result === "ok" ? 0 : 1;
}

/**
 * One request to the driver's socket. Null when no driver answers (not
 * running, or no permission on its socket; the socket layer names what to
 * do), after saying so: the caller exits 3, unlike "no such session" (1), so
 * scripts can tell the two apart.
 */
async function askDriver<T>(
  socket: string,
  req: Record<string, unknown>,
  json: boolean,
): Promise<T | null> {
  try {
    return await requestLocal(socket, req, 15_000) as T;
  } catch (e) {
    const error = `no dpm driver answers on ${socket}: ${(e as Error).message}`;
    if (json) console.log(JSON.stringify({ result: "no-driver", error }));
    else console.error(`dpm: ${error}`);
    return null;
  }
}

async function runQueryCommand(args: string[]): Promise<number> {
  const parsed = parse("query", args, QUERY_FLAGS, { want: ["proto", "local", "remote"] });
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const [p, l, r] = positionals as [string, string, string];
  const proto = protoNumber(p.toLowerCase());
  if (proto === undefined) {
    throw new UsageError(`Unknown protocol "${p}": want tcp, udp or icmp`, "query");
  }
  const local = parseAddrPort(l);
  if (!local) throw new UsageError(`Cannot parse local endpoint "${l}": want addr:port`, "query");
  const remote = parseAddrPort(r);
  if (!remote) throw new UsageError(`Cannot parse remote endpoint "${r}": want addr:port`, "query");
  const socket = String(values.socket ?? "/run/dpm/driver.sock");
  const res = await askDriver<QueryReply>(socket, {
    op: "query",
    proto: p.toLowerCase(),
    local: l,
    remote: r,
    reserve: values.reserve === true,
  }, values.json === true);
  if (!res) return 3;
  if (values.json) console.log(JSON.stringify(res));
  else if (res.result === "not-yours") console.error(formatQueryReply(p.toLowerCase(), l, r, res));
  else console.log(formatQueryReply(p.toLowerCase(), l, r, res));
  return res.result === "ok" ? 0 : 1;
}
