/**
 * The command line: `dpm server | driver | status | query`, `--help`,
 * `--version`. Flags are parsed strictly; values are validated by the zod
 * schemas in config.ts. Any bad flag, value or config file prints a one-line
 * reason naming the offending value, then the usage, and exits with code 2.
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
import { formatIPv4, parseAddrPort } from "../wire/addr.ts";
import { requestLocal } from "../operator/socket.ts";
import { setFormat, setLevel } from "../runtime/log.ts";
import { VERSION } from "../version.ts";
import type { DriverStatusReply, QueryReply, StatusReply } from "../operator/types.ts";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet.ts";

/** Thrown for bad usage; carries the command whose usage is printed. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(message: string, readonly command: CommandName | null) {
    super(message);
  }
}

type FlagSpec = ReturnType<typeof parseSpec>;

function parse(command: CommandName, args: string[], options: FlagSpec) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    // node's messages are long; keep the part that names the flag.
    const msg = String((e as Error).message).split(". ")[0]!.replace(
      /^Unknown option/,
      "Unknown flag",
    );
    throw new UsageError(msg, command);
  }
}

/**
 * Merges a config file (if any) under the flags: flags win. Returns the
 * settings and, for each key that came from the file, the file's name (for
 * error messages). `--no-NAME` flags are passed on as `no-NAME` keys.
 */
export async function mergeSettings(
  values: Record<string, unknown>,
): Promise<{ raw: Record<string, unknown>; origins: Origins }> {
  const path = typeof values.config === "string" ? values.config : null;
  const fromFile = path ? await readConfigFile(path) : {};
  const raw: Record<string, unknown> = { ...fromFile };
  const origins: Origins = {};
  for (const k of Object.keys(fromFile)) origins[k] = path!;
  for (const [k, v] of Object.entries(values)) {
    if (k === "config" || k === "help" || v === undefined) continue;
    raw[k] = v;
    delete origins[k];
    // A flag overrides the file's setting of the same switch in either spelling.
    const other = k.startsWith("no-") ? k.slice(3) : `no-${k}`;
    if (other in raw && origins[other]) delete raw[other];
  }
  return { raw, origins };
}

const PROTOS: Record<string, number> = { tcp: IPPROTO_TCP, udp: IPPROTO_UDP, icmp: IPPROTO_ICMP };

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
      case "server":
        return await runServerCommand(rest);
      case "driver":
        return await runDriverCommand(rest);
      case "status":
        return await runStatusCommand(rest);
      case "query":
        return await runQueryCommand(rest);
      default:
        throw new UsageError(`Unknown command "${command}"`, null);
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

async function runServerCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("server", args, parseSpec(SERVER_FLAGS, true));
  if (values.help) return console.log(commandHelp("server")), 0;
  if (positionals.length) throw new UsageError(`Unexpected argument "${positionals[0]}"`, "server");
  const load = async () => {
    const { raw, origins } = await mergeSettings(values);
    return serverConfig(raw, origins);
  };
  const cfg = await load();
  setLevel(cfg.logLevel);
  setFormat(cfg.logFormat);
  const { runServer } = await import("../server/run.ts");
  // SIGHUP re-reads the flags and the config file (what can change live, does).
  return await runServer(cfg, load);
}

async function runDriverCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("driver", args, parseSpec(DRIVER_FLAGS, true));
  if (values.help) return console.log(commandHelp("driver")), 0;
  if (positionals.length) throw new UsageError(`Unexpected argument "${positionals[0]}"`, "driver");
  const load = async () => {
    const { raw, origins } = await mergeSettings(values);
    return driverConfig(raw, origins);
  };
  const cfg = await load();
  setLevel(cfg.logLevel);
  setFormat(cfg.logFormat);
  const { runDriver } = await import("../driver/run.ts");
  return await runDriver(cfg, load);
}

async function runStatusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("status", args, parseSpec(STATUS_FLAGS, false));
  if (values.help) return console.log(commandHelp("status")), 0;
  if (positionals.length) throw new UsageError(`Unexpected argument "${positionals[0]}"`, "status");
  const dflt = values.driver ? "/run/dpm/driver.sock" : "/run/dpm/server.sock";
  const res = await requestLocal(String(values.socket ?? dflt), { op: "status" });
  if (values.json) console.log(JSON.stringify(res, null, 2));
  else if ((res as { role?: string }).role === "driver") {
    console.log(formatDriverStatus(res as DriverStatusReply));
  } else console.log(formatStatus(res as StatusReply));
  return 0;
}

async function runQueryCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("query", args, parseSpec(QUERY_FLAGS, false));
  if (values.help) return console.log(commandHelp("query")), 0;
  if (positionals.length !== 3) {
    throw new UsageError(
      `Expected 3 arguments (proto, local, remote), got ${positionals.length}`,
      "query",
    );
  }
  const [p, l, r] = positionals as [string, string, string];
  const proto = PROTOS[p.toLowerCase()];
  if (proto === undefined) {
    throw new UsageError(`Unknown protocol "${p}": want tcp, udp or icmp`, "query");
  }
  const local = parseAddrPort(l);
  if (!local) throw new UsageError(`Cannot parse local endpoint "${l}": want addr:port`, "query");
  const remote = parseAddrPort(r);
  if (!remote) throw new UsageError(`Cannot parse remote endpoint "${r}": want addr:port`, "query");
  const res = await requestLocal(String(values.socket ?? "/run/dpm/driver.sock"), {
    op: "query",
    proto: p.toLowerCase(),
    local: l,
    remote: r,
    reserve: values.reserve === true,
  }, 15_000) as QueryReply;
  if (values.json) console.log(JSON.stringify(res));
  else if (res.result === "ok") {
    console.log(
      `${p.toLowerCase()} ${l} -> ${r}: public ${res.public} (gateway port ${res.gatewayPort}, ` +
        `${res.replaced ? "port replaced" : "port preserved"}${
          res.shared ? ", shared by remote" : ""
        }, ` +
        `expires in ${res.expiresIn}s)`,
    );
  } else {console.log(
      `${p.toLowerCase()} ${l} -> ${r}: ${res.result}${res.error ? ` (${res.error})` : ""}`,
    );}
  return res.result === "ok" ? 0 : 1;
}

/** Renders the status for a terminal. */
export function formatStatus(s: StatusReply): string {
  if (s.error) return `error: ${s.error}`;
  const lines = [
    `dpm server ${s.version}  epoch ${s.epoch.toString(16).padStart(8, "0")}  up ${s.uptime}s  ` +
    `LAN ${s.lanAddr}  pool ${s.pool.length} address(es)  data path ${s.dataPath ? "on" : "off"}`,
    `sessions: ${s.sessions}   packets out ${s.packets.out}  in ${s.packets.in}  hairpin ${s.packets.hairpin}`,
    "",
  ];
  const head = ["PROTO", "INTERNAL", "PG", "PUBLIC", "REMOTE", "EXPIRES", "FLAGS", "PKTS OUT/IN"];
  const rows = s.shown.map((v) => [
    v.proto,
    v.internal,
    String(v.gatewayPort),
    v.public,
    v.remote,
    `${v.expiresIn}s`,
    v.flags || "-",
    `${v.packetsOut}/${v.packetsIn}`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join("  ").trimEnd();
  lines.push(fmt(head), ...rows.map(fmt));
  if (s.shown.length < s.sessions) {
    lines.push(`... ${s.sessions - s.shown.length} more (use --json)`);
  }
  const nz = (o: Record<string, number>) =>
    Object.entries(o).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "none";
  lines.push("", `control results: ${nz(s.results)}`, `drops: ${nz(s.drops)}`);
  return lines.join("\n");
}

/** Renders a driver's status for a terminal. */
export function formatDriverStatus(s: DriverStatusReply): string {
  const head = ["PROTO", "LOCAL", "REMOTE", "PUBLIC", "PG", "STATE", "EXPIRES"];
  const rows = s.sessions.map((v) => [
    String(v.proto),
    String(v.local),
    String(v.remote),
    String(v.public ?? "-"),
    String(v.gatewayPort ?? "-"),
    v.fellBack
      ? `fell-back${v.retryIn === undefined ? "" : ` (retry in ${v.retryIn}s)`}`
      : String(v.result),
    v.expiresIn === undefined ? "-" : `${v.expiresIn}s`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join("  ").trimEnd();
  const st = s.stats as Record<string, number | Record<string, number>>;
  const num = (k: string) => Number(st[k] ?? 0);
  const drops = Object.entries((st.drops ?? {}) as Record<string, number>).map(([k, n]) =>
    `${k} ${n}`
  ).join(", ");
  return [
    `dpm driver  server ${s.server}  epoch ${
      s.epoch === null ? "unknown" : s.epoch.toString(16).padStart(8, "0")
    }`,
    `packets out ${num("out")}  in ${num("in")}  reserved ${num("reserved")}  refused ${
      num("refused")
    }  ` +
    `renewed ${num("renewed")}  released ${num("released")}  held ${num("held")}`,
    `fell back to ordinary NAT ${num("fellBack")}  untranslated now ${num("untranslated")}  ` +
    `reserved since ${num("recovered")}  late grants given back ${num("lateReleased")}`,
    "",
    fmt(head),
    ...rows.map(fmt),
    "",
    `drops: ${drops || "none"}`,
  ].join("\n");
}

/** Formats `addr:port` from numbers (used by status and query). */
export function endpoint(a: number, p: number): string {
  return `${formatIPv4(a)}:${p}`;
}
