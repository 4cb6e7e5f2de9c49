/**
 * The command line: `dpm server | driver | status | query`, `--help`,
 * `--version`. Flags are parsed strictly; values are validated by the zod
 * schemas in config.ts. Any bad flag, value or config file prints a one-line
 * reason naming the offending value, then the usage, and exits with code 2.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ConfigError, driverConfig, readConfigFile, serverConfig } from "../config.ts";
import { formatIPv4, parseAddrPort } from "../wire/addr.ts";
import { requestLocal } from "../operator/socket.ts";
import { setLevel } from "../runtime/log.ts";
import { VERSION } from "../version.ts";
import type { DriverStatusReply, QueryReply, StatusReply } from "../operator/types.ts";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet.ts";

/** dpm's version, printed by `dpm --version`. */

const USAGE_MAIN = `dpm ${VERSION} — cooperative NAT (dynamic port management) for Linux

Usage:
  dpm server --lan-addr <G> --pool <addr|a-b|cidr>[,...] [options]   run the gateway role
  dpm driver --server <G>[:port] [options]                            run the host role
  dpm status [--json]                                                 show the server's table and counters
  dpm query <tcp|udp|icmp> <local addr:port> <remote addr:port> [--reserve] [--json]
                                                                      ask the driver for a session's public pair
  dpm --version | --help | <command> --help
`;

const USAGE: Record<string, string> = {
  server: `Usage: dpm server --lan-addr <G> --pool <addr|a-b|cidr>[,...] [options]

Control plane:
  --lan-addr <G>               the gateway's LAN address; the control listener binds here
  --pool <spec>[,...]          public addresses: single, range a-b, or CIDR
  --control-port <n>           control UDP port (default 4750)
  --port-range <lo-hi>         replacement public ports (default 1024-65535)
  --gateway-ports <lo-hi>      LAN-side gateway ports Pg (default 61000-65535; same on drivers)
  --lifetime <s>               longest lifetime granted (default 86400)
  --max-sessions-per-host <n>  per-host quota (default 4096)
  --rate-limit <n>             control requests/s per host, burst 2n (default 2000)
  --state <file>               keep the table across restarts in this file
  --socket <path>              operator socket for dpm status (default /run/dpm/server.sock)
Data plane (both interfaces enable it; needs root):
  --lan-if <if> --wan-if <if>  the LAN and WAN interfaces
  --lan <cidr>                 LAN prefix (default: the prefix of --lan-addr on --lan-if)
  --add-pool-addresses         add the pool addresses to --wan-if (removed on exit)
  --no-masquerade              do not masquerade hosts that run no driver
  --queue <n>                  netfilter queue number (default 0)
  --datapath <kernel|queue>    kernel: nftables maps and conntrack translate (default);
                               queue: dpm translates every packet in user space
  --cleanup                    remove what a previous run left translating (kernel path), exit
Other:
  --config <file>              JSON file with any of the above (long names as keys); flags win
  --log-level <level>          error|warn|info|debug (default info)
`,
  driver: `Usage: dpm driver --server <G>[:port] [options]

  --server <G>[:port]          the dpm server (default port 4750)
  --fixed-ports <p,...>        ports that must never be replaced even inside the ephemeral range
  --gateway-ports <lo-hi>      LAN-side gateway ports Pg (default 61000-65535; same as the server)
  --lan <cidr>                 LAN prefix (default: that of the interface that reaches G)
  --socket <path>              socket for dpm query (default /run/dpm/driver.sock)
  --no-intercept               touch no kernel state: only answer dpm query (--reserve reserves)
  --queue <n>                  netfilter queue number (default 1)
  --datapath <kernel|queue>    kernel (default) or queue, as on the server
  --cleanup                    remove what a previous run left translating (kernel path), exit
  --config <file>              JSON file with any of the above; flags win
  --log-level <level>          error|warn|info|debug (default info)
`,
  status: `Usage: dpm status [--json] [--driver] [--socket <path>]

Shows the server's lookup table and counters (default socket /run/dpm/server.sock).
With --driver, shows this host's driver instead: its sessions and counters
(default socket /run/dpm/driver.sock).
`,
  query:
    `Usage: dpm query <tcp|udp|icmp> <local addr:port> <remote addr:port> [--reserve] [--json] [--socket <path>]

Asks the local driver which public address and port the session uses (claims 11, 19, 24).
With --reserve, reserves the session first when there is none, so an application can
learn its public pair before its first packet. For icmp the port is the echo identifier
and the remote port is 0. Exit code 0 when the session exists, 1 when not, 2 on bad usage.
`,
};

/** Thrown for bad usage; carries the command whose usage is printed. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(message: string, readonly command: string | null) {
    super(message);
  }
}

type FlagSpec = Record<string, { type: "string" | "boolean" }>;

const SERVER_FLAGS: FlagSpec = {
  "lan-addr": { type: "string" },
  pool: { type: "string" },
  "control-port": { type: "string" },
  "port-range": { type: "string" },
  "gateway-ports": { type: "string" },
  lifetime: { type: "string" },
  "max-sessions-per-host": { type: "string" },
  "rate-limit": { type: "string" },
  state: { type: "string" },
  socket: { type: "string" },
  "lan-if": { type: "string" },
  "wan-if": { type: "string" },
  lan: { type: "string" },
  "add-pool-addresses": { type: "boolean" },
  "no-masquerade": { type: "boolean" },
  queue: { type: "string" },
  datapath: { type: "string" },
  cleanup: { type: "boolean" },
  config: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean" },
};

const DRIVER_FLAGS: FlagSpec = {
  server: { type: "string" },
  "fixed-ports": { type: "string" },
  "gateway-ports": { type: "string" },
  lan: { type: "string" },
  socket: { type: "string" },
  "no-intercept": { type: "boolean" },
  queue: { type: "string" },
  datapath: { type: "string" },
  cleanup: { type: "boolean" },
  config: { type: "string" },
  "log-level": { type: "string" },
  help: { type: "boolean" },
};

function parse(command: string, args: string[], options: FlagSpec) {
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

/** Merges a config file (if any) under the flags: flags win. */
export async function mergeSettings(
  values: Record<string, unknown>,
  negations: Record<string, string>,
): Promise<Record<string, unknown>> {
  const fromFile = typeof values.config === "string" ? await readConfigFile(values.config) : {};
  const out: Record<string, unknown> = { ...fromFile };
  for (const [k, v] of Object.entries(values)) {
    if (k === "config" || k === "help" || v === undefined) continue;
    if (k in negations) out[negations[k]!] = !v;
    else out[k] = v;
  }
  return out;
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
      case "help":
      case "-h":
      case "--help":
        console.log(USAGE_MAIN);
        return command === undefined ? 2 : 0;
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
    if (e instanceof UsageError || e instanceof ConfigError) {
      const cmd = e instanceof UsageError ? e.command : command ?? null;
      console.error(`dpm: ${e.message}\n`);
      console.error(cmd && USAGE[cmd] ? USAGE[cmd] : USAGE_MAIN);
      return 2;
    }
    console.error(`dpm: ${(e as Error)?.message ?? e}`);
    return 1;
  }
}

async function runServerCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("server", args, SERVER_FLAGS);
  if (values.help) return console.log(USAGE.server), 0;
  if (positionals.length) throw new UsageError(`Unexpected argument "${positionals[0]}"`, "server");
  const settings = () => mergeSettings(values, { "no-masquerade": "masquerade" });
  const cfg = serverConfig(await settings());
  setLevel(cfg.logLevel);
  const { runServer } = await import("../server/run.ts");
  // SIGHUP re-reads the flags and the config file (what can change live, does).
  return await runServer(cfg, async () => serverConfig(await settings()));
}

async function runDriverCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("driver", args, DRIVER_FLAGS);
  if (values.help) return console.log(USAGE.driver), 0;
  if (positionals.length) throw new UsageError(`Unexpected argument "${positionals[0]}"`, "driver");
  const settings = () => mergeSettings(values, { "no-intercept": "intercept" });
  const cfg = driverConfig(await settings());
  setLevel(cfg.logLevel);
  const { runDriver } = await import("../driver/run.ts");
  return await runDriver(cfg, async () => driverConfig(await settings()));
}

async function runStatusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse("status", args, {
    json: { type: "boolean" },
    driver: { type: "boolean" },
    socket: { type: "string" },
    help: { type: "boolean" },
  });
  if (values.help) return console.log(USAGE.status), 0;
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
  const { values, positionals } = parse("query", args, {
    reserve: { type: "boolean" },
    json: { type: "boolean" },
    socket: { type: "string" },
    help: { type: "boolean" },
  });
  if (values.help) return console.log(USAGE.query), 0;
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
    String(v.result),
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
