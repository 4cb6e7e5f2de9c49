/**
 * Configuration of both roles, from ONE table of flags per command
 * ({@linkcode COMMANDS}). Each row gives a flag's long name (which is also
 * its key in a JSON config file), its argument, help text, group, default
 * and a zod schema that validates the value whether it comes from the
 * command line (a string) or from a file (a string, number, boolean or
 * array). From the table come: the parser's option spec
 * ({@linkcode parseSpec}), the zod schema of a whole configuration
 * ({@linkcode schemaOf}), the typed configuration the roles see
 * ({@linkcode ServerConfig}, {@linkcode DriverConfig}: the rows' names in
 * camelCase, their schemas' output types), and, in `src/cli/docs.ts`, the
 * help text, the man page, a JSON Schema for editors and shell completions.
 *
 * Flags win over the file. Every error names the offending key and value,
 * and the file it came from; all problems are reported, not just the first.
 *
 * @module
 */

import { z } from "zod";
import {
  type Cidr,
  cidrContains,
  parseAddrPort,
  parseCidr,
  parseIPv4,
  parsePool,
} from "./wire/addr.ts";
import { defaultRules, type MapRule, parseMapRule } from "./policy/rules.ts";

// ---------------------------------------------------------------------------
// Value schemas (each message names the flag and the value).

const port = (what: string) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = typeof v === "number" ? v : /^[0-9]+$/.test(v) ? Number(v) : NaN;
    if (!Number.isInteger(n) || n < 1 || n > 65535) {
      ctx.addIssue({
        code: "custom",
        message: `Invalid ${what} ${JSON.stringify(v)}: want 1-65535`,
      });
      return z.NEVER;
    }
    return n;
  });

const int = (what: string, min: number, max: number) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = typeof v === "number" ? v : /^[0-9]+$/.test(v) ? Number(v) : NaN;
    if (!Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({
        code: "custom",
        message: `Invalid ${what} ${JSON.stringify(v)}: want an integer ${min}-${max}`,
      });
      return z.NEVER;
    }
    return n;
  });

const str = (what: string) =>
  z.union([z.string(), z.number(), z.boolean()]).transform((v, ctx) => {
    if (typeof v !== "string" || v === "") {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} ${JSON.stringify(v)}: want text` });
      return z.NEVER;
    }
    return v;
  });

const addr = (what: string) =>
  str(what).transform((v, ctx) => {
    const a = parseIPv4(v);
    if (a === null) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want an IPv4 address` });
      return z.NEVER;
    }
    return a;
  });

const range = (what: string) =>
  str(what).transform((v, ctx): [number, number] => {
    const m = /^([0-9]{1,5})-([0-9]{1,5})$/.exec(v);
    const lo = m ? Number(m[1]) : NaN;
    const hi = m ? Number(m[2]) : NaN;
    if (!m || lo < 1 || hi > 65535 || lo > hi) {
      ctx.addIssue({
        code: "custom",
        message: `Invalid ${what} "${v}": want lo-hi within 1-65535`,
      });
      return z.NEVER;
    }
    return [lo, hi];
  });

const cidr = (what: string) =>
  str(what).transform((v, ctx) => {
    const c = parseCidr(v);
    if (!c) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want a.b.c.d/len` });
      return z.NEVER;
    }
    return c;
  });

const ifname = (what: string) =>
  str(what).transform((v, ctx) => {
    if (!/^[A-Za-z0-9_.:-]{1,15}$/.test(v)) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want an interface name` });
      return z.NEVER;
    }
    return v;
  });

const oneOf = <const T extends readonly [string, ...string[]]>(what: string, values: T) =>
  str(what).transform((v, ctx): T[number] => {
    if (!(values as readonly string[]).includes(v)) {
      ctx.addIssue({
        code: "custom",
        message: `Invalid ${what} "${v}": want ${values.slice(0, -1).join(", ")} or ${
          values.at(-1)
        }`,
      });
      return z.NEVER;
    }
    return v as T[number];
  });

const bool = (what: string) =>
  z.union([z.boolean(), z.string()]).transform((v, ctx) => {
    if (v === true || v === "true") return true;
    if (v === false || v === "false") return false;
    ctx.addIssue({
      code: "custom",
      message: `Invalid ${what} ${JSON.stringify(v)}: want true or false`,
    });
    return z.NEVER;
  });

const pool = str("--pool").transform((v, ctx) => {
  const p = parsePool(v);
  if (typeof p === "string") {
    ctx.addIssue({ code: "custom", message: p });
    return z.NEVER;
  }
  return p;
});

const endpoint = (what: string) =>
  str(what).transform((v, ctx) => {
    const ap = parseAddrPort(v);
    if (!ap) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want addr:port` });
      return z.NEVER;
    }
    return ap;
  });

const serverEndpoint = str("--server").transform((v, ctx) => {
  const ap = v.includes(":") ? parseAddrPort(v) : (() => {
    const a = parseIPv4(v);
    return a === null ? null : { addr: a, port: 4750 };
  })();
  if (!ap || ap.port === 0) {
    ctx.addIssue({ code: "custom", message: `Invalid --server "${v}": want G or G:port` });
    return z.NEVER;
  }
  return ap;
});

const portList = z.union([z.string(), z.array(z.union([z.number(), z.string()]))]).transform(
  (v, ctx) => {
    const items = typeof v === "string" ? (v === "" ? [] : v.split(",")) : v.map(String);
    const out: number[] = [];
    for (const it of items) {
      const n = /^[0-9]{1,5}$/.test(it.trim()) ? Number(it.trim()) : NaN;
      if (!(n >= 1 && n <= 65535)) {
        ctx.addIssue({ code: "custom", message: `Invalid port "${it}" in --fixed-ports` });
        return z.NEVER;
      }
      out.push(n);
    }
    return out;
  },
);

/** A repeatable `--map-allow` / `--map-deny` (a file: one rule or an array of them). */
const mapRules = (allow: boolean) =>
  z.union([z.string(), z.array(z.string())]).transform((v, ctx): MapRule[] => {
    const out: MapRule[] = [];
    for (const text of typeof v === "string" ? [v] : v) {
      const r = parseMapRule(text, allow);
      if (typeof r === "string") {
        ctx.addIssue({ code: "custom", message: r });
        return z.NEVER;
      }
      out.push(r);
    }
    return out;
  });

const LEVELS = ["error", "warn", "info", "debug"] as const;
/** The help group of the flags that decide inbound mappings, whichever protocol asks. */
const MAPPINGS = "Mappings (dpm map, PCP, NAT-PMP, UPnP)";
const HIGH_AVAILABILITY = "High availability";
const FORMATS = ["text", "json"] as const;
/** `--datapath` values (`DataPathChoice` of datapath/datapath.ts). */
const DATAPATHS = ["auto", "bpf", "kernel", "queue"] as const;

// ---------------------------------------------------------------------------
// The table.

/** One flag of a command. */
export interface Flag {
  /** Argument name for help (`<G>`); absent for a switch. */
  arg?: string;
  /** One line of help. */
  help: string;
  /** Heading the flag is listed under. */
  group: string;
  /** Validates the value (flag text or config file value) and gives its typed form. */
  schema: z.ZodType;
  /** The default shown in help; absent for none. */
  dflt?: string;
  /** Required (no default). */
  required?: boolean;
  /** A switch that is on by default: the command line has `--no-NAME` (the file: NAME or no-NAME). */
  negated?: boolean;
  /** May be given more than once (a file: an array); the values keep their order. */
  multiple?: boolean;
  /** Completion hint: a file, an interface, or fixed words. */
  complete?: "file" | "interface" | readonly string[];
}

const common = {
  datapath: {
    arg: "<auto|bpf|kernel|queue>",
    help: "bpf: tc programs translate established sessions; kernel: nftables maps and " +
      "conntrack; queue: dpm translates every packet; auto: bpf where it loads, else kernel",
    group: "Data plane",
    schema: oneOf("--datapath", DATAPATHS).default("auto"),
    dflt: "auto",
    complete: DATAPATHS,
  },
  cleanup: {
    help: "remove what a previous run left translating (kernel and bpf paths), then exit",
    group: "Data plane",
    schema: bool("--cleanup").default(false),
  },
  "metrics-addr": {
    arg: "<addr:port>",
    help: "serve Prometheus metrics over HTTP on addr:port (/metrics)",
    group: "Operations",
    schema: endpoint("--metrics-addr").nullable().default(null),
  },
  "log-level": {
    arg: "<level>",
    help: "error, warn, info or debug (changes live on SIGHUP)",
    group: "Operations",
    schema: oneOf("--log-level", LEVELS).default("info"),
    dflt: "info",
    complete: LEVELS,
  },
  "log-format": {
    arg: "<text|json>",
    help: "text (journald priorities under systemd) or one JSON object per line",
    group: "Operations",
    schema: oneOf("--log-format", FORMATS).default("text"),
    dflt: "text",
    complete: FORMATS,
  },
} as const satisfies Record<string, Flag>;

/** `dpm server`: the gateway role. */
export const SERVER_FLAGS = {
  "lan-addr": {
    arg: "<G>",
    help: "the gateway's LAN address; the control listener binds here",
    group: "Control plane",
    schema: addr("--lan-addr"),
    required: true,
  },
  pool: {
    arg: "<spec>[,...]",
    help: "public addresses: single, range a-b, or CIDR",
    group: "Control plane",
    schema: pool,
    required: true,
  },
  "control-port": {
    arg: "<n>",
    help: "control UDP port",
    group: "Control plane",
    schema: port("--control-port").default(4750),
    dflt: "4750",
  },
  pcp: {
    help: "do not serve PCP and NAT-PMP on UDP 5351 (config key: pcp false)",
    group: "Control plane",
    schema: bool("--pcp").default(true),
    negated: true,
  },
  upnp: {
    help:
      "do not serve the UPnP IGD (SSDP on UDP 1900, HTTP on --upnp-port of the LAN address) (config key: upnp false)",
    group: "Control plane",
    schema: bool("--upnp").default(true),
    negated: true,
  },
  "upnp-port": {
    arg: "<n>",
    help: "TCP port of the UPnP IGD's descriptions and control URLs on the LAN address",
    group: "Control plane",
    schema: port("--upnp-port").default(5000),
    dflt: "5000",
  },
  "port-range": {
    arg: "<lo-hi>",
    help: "replacement public ports",
    group: "Control plane",
    schema: range("--port-range").default([1024, 65535]),
    dflt: "1024-65535",
  },
  "gateway-ports": {
    arg: "<lo-hi>",
    help: "LAN-side gateway ports Pg (the same on every driver)",
    group: "Control plane",
    schema: range("--gateway-ports").default([61000, 65535]),
    dflt: "61000-65535",
  },
  lifetime: {
    arg: "<s>",
    help: "longest lifetime granted",
    group: "Control plane",
    schema: int("--lifetime", 2, 7 * 86400).default(86400),
    dflt: "86400",
  },
  "max-sessions-per-host": {
    arg: "<n>",
    help: "per-host quota",
    group: "Control plane",
    schema: int("--max-sessions-per-host", 1, 1 << 20).default(4096),
    dflt: "4096",
  },
  "rate-limit": {
    arg: "<n>",
    help: "control requests/s per host, burst 2n",
    group: "Control plane",
    schema: int("--rate-limit", 1, 1_000_000).default(2000),
    dflt: "2000",
  },
  workers: {
    arg: "<n>",
    help:
      'experimental: server workers (threads), hosts sharded between them by source address, each with a slice of every pool address\'s ports (docs/performance.md, "Cores"); more than 1 on the bpf and kernel paths, not with --ha',
    group: "Control plane",
    schema: int("--workers", 1, 64).default(1),
    dflt: "1",
  },
  "map-allow": {
    arg: "<rule>",
    help:
      'allow inbound mappings: "HOSTS [INTERNAL-PORTS [PUBLIC-PORTS]]" (a.b.c.d[/len], p, lo-hi or *); repeatable, the first rule that matches decides, yours before the defaults (fixed ports and public ports below 1024 refused)',
    group: MAPPINGS,
    schema: mapRules(true).default([]),
    multiple: true,
  },
  "map-deny": {
    arg: "<rule>",
    help: "refuse inbound mappings: a rule as for --map-allow; repeatable, in order with them",
    group: MAPPINGS,
    schema: mapRules(false).default([]),
    multiple: true,
  },
  "fixed-ports": {
    arg: "<p,...>",
    help:
      "ports hosts share by remote (IKE, SIP): never a mapping's public port, unless a --map-allow rule says so",
    group: MAPPINGS,
    schema: portList.default([500, 4500, 5060]),
    dflt: "500,4500,5060",
  },
  "pcp-rate-limit": {
    arg: "<n>",
    help: "PCP and NAT-PMP requests/s per host, burst 2n (apart from --rate-limit)",
    group: MAPPINGS,
    schema: int("--pcp-rate-limit", 1, 1_000_000).default(20),
    dflt: "20",
  },
  "pcp-max-per-host": {
    arg: "<n>",
    help: "PCP and NAT-PMP mappings and peers one host may hold (apart from its quota)",
    group: MAPPINGS,
    schema: int("--pcp-max-per-host", 0, 1 << 20).default(64),
    dflt: "64",
  },
  "upnp-max-per-host": {
    arg: "<n>",
    help: "UPnP mappings one host may hold (within its quota)",
    group: MAPPINGS,
    schema: int("--upnp-max-per-host", 0, 1 << 20).default(64),
    dflt: "64",
  },
  "pcp-max-share": {
    arg: "<percent>",
    help: "PCP and NAT-PMP rows of all hosts together, in percent of the pool's public pairs",
    group: MAPPINGS,
    schema: int("--pcp-max-share", 0, 100).default(25),
    dflt: "25",
  },
  state: {
    arg: "<file>",
    help: "keep the table across restarts in this file",
    group: "Control plane",
    schema: str("--state").nullable().default(null),
    complete: "file",
  },
  socket: {
    arg: "<path>",
    help: "operator socket for dpm status",
    group: "Control plane",
    schema: str("--socket").default("/run/dpm/server.sock"),
    dflt: "/run/dpm/server.sock",
    complete: "file",
  },
  "lan-if": {
    arg: "<if>",
    help: "the LAN interface (with --wan-if: the data plane is on)",
    group: "Data plane",
    schema: ifname("--lan-if").nullable().default(null),
    complete: "interface",
  },
  "wan-if": {
    arg: "<if>",
    help: "the WAN interface",
    group: "Data plane",
    schema: ifname("--wan-if").nullable().default(null),
    complete: "interface",
  },
  lan: {
    arg: "<cidr>",
    help: "LAN prefix (default: the prefix of --lan-addr on --lan-if)",
    group: "Data plane",
    schema: cidr("--lan").nullable().default(null),
  },
  "add-pool-addresses": {
    help: "add the pool addresses to --wan-if",
    group: "Data plane",
    schema: bool("--add-pool-addresses").default(false),
  },
  "bpf-sessions": {
    arg: "<n>",
    help: "sessions the bpf path's map holds (more are translated by the kernel path only); " +
      "its hash buckets take 32 B per session from the start",
    group: "Data plane",
    schema: int("--bpf-sessions", 1024, 1 << 24).default(262144),
    dflt: "262144",
  },
  masquerade: {
    help: "do not masquerade hosts that run no driver (config key: masquerade false)",
    group: "Data plane",
    schema: bool("--masquerade").default(true),
    negated: true,
  },
  queue: {
    arg: "<n>",
    help: "netfilter queue number",
    group: "Data plane",
    schema: int("--queue", 0, 65535).default(0),
    dflt: "0",
  },
  ha: {
    help:
      "high availability (docs/ha.md): one of a keepalived pair; start as standby (mirror the replicated conntracks, answer nothing, hold neither --lan-addr nor the pool) until keepalived says MASTER",
    group: HIGH_AVAILABILITY,
    schema: bool("--ha").default(false),
  },
  "ha-fifo": {
    arg: "<path>",
    help:
      "keepalived's vrrp_notify_fifo: the VRRP state changes, read in order (created when missing)",
    group: HIGH_AVAILABILITY,
    schema: str("--ha-fifo").nullable().default(null),
    complete: "file",
  },
  "ha-marker": {
    arg: "<addr>",
    help:
      "keepalived's marker address (its virtual_ipaddress on lo): present at start means keepalived is MASTER already, so a restarted dpm takes the active role at once",
    group: HIGH_AVAILABILITY,
    schema: addr("--ha-marker").nullable().default(null),
  },
  "ha-peer": {
    arg: "<addr>",
    help: "the other gateway's sync address (shown by dpm status)",
    group: HIGH_AVAILABILITY,
    schema: addr("--ha-peer").nullable().default(null),
  },
  "ha-conntrackd-config": {
    arg: "<file>",
    help:
      "conntrackd's configuration (its socket): resync requests on role changes, its counters in dpm status",
    group: HIGH_AVAILABILITY,
    schema: str("--ha-conntrackd-config").nullable().default(null),
    complete: "file",
  },
  "ha-refresh": {
    arg: "<s>",
    help:
      "active: refresh the conntrack timeouts of sessions with traffic this often, so their replicas on the standby never expire (below the 30 s an unassured UDP conntrack lives: the bpf path carries packets past conntrack; 0: never)",
    group: HIGH_AVAILABILITY,
    schema: int("--ha-refresh", 0, 3600).default(20),
    dflt: "20",
  },
  "cookie-secret-file": {
    arg: "<file>",
    help:
      "derive the control cookies from the secret in this file (both gateways of a pair read the same), not from a random one",
    group: "Control plane",
    schema: str("--cookie-secret-file").nullable().default(null),
    complete: "file",
  },
  ...common,
} as const satisfies Record<string, Flag>;

/** `dpm driver`: the host role. */
export const DRIVER_FLAGS = {
  server: {
    arg: "<G>[:port]",
    help: "the dpm server (default port 4750)",
    group: "Control plane",
    schema: serverEndpoint,
    required: true,
  },
  "fixed-ports": {
    arg: "<p,...>",
    help: "ports never replaced, even inside the ephemeral range",
    group: "Control plane",
    schema: portList.default([]),
  },
  "gateway-ports": {
    arg: "<lo-hi>",
    help: "LAN-side gateway ports Pg (the same as the server)",
    group: "Control plane",
    schema: range("--gateway-ports").default([61000, 65535]),
    dflt: "61000-65535",
  },
  protocol: {
    arg: "<2|3>",
    help:
      "control protocol version: 3 (batched requests, proposed gateway ports; falls back to 2 by itself against an older server) or 2 only, as drivers before version 3 (docs/protocol.md)",
    group: "Control plane",
    schema: int("--protocol", 2, 3).default(3),
    dflt: "3",
  },
  lan: {
    arg: "<cidr>",
    help: "LAN prefix (default: that of the interface that reaches G)",
    group: "Control plane",
    schema: cidr("--lan").nullable().default(null),
  },
  socket: {
    arg: "<path>",
    help: "socket for dpm query",
    group: "Control plane",
    schema: str("--socket").default("/run/dpm/driver.sock"),
    dflt: "/run/dpm/driver.sock",
    complete: "file",
  },
  "socket-group": {
    arg: "<group>",
    help:
      "let this group's members use the query socket (mode 0660): dpm query, dpm map, the client API; each user is answered about its own ports only, root about all (default: root only, 0600)",
    group: "Control plane",
    schema: str("--socket-group").nullable().default(null),
  },
  intercept: {
    help: "touch no kernel state: only answer dpm query (config key: intercept false)",
    group: "Data plane",
    schema: bool("--intercept").default(true),
    negated: true,
  },
  queue: {
    arg: "<n>",
    help: "netfilter queue number",
    group: "Data plane",
    schema: int("--queue", 0, 65535).default(1),
    dflt: "1",
  },
  ...common,
} as const satisfies Record<string, Flag>;

/** `dpm status`. */
export const STATUS_FLAGS = {
  json: {
    help: "print JSON: the whole table, streamed (with --watch one event per line)",
    group: "Options",
    schema: bool("--json").default(false),
  },
  driver: {
    help: "this host's driver instead of the gateway's server",
    group: "Options",
    schema: bool("--driver").default(false),
  },
  host: {
    arg: "<addr>",
    help: "only this host's sessions, with its quota use and refusals",
    group: "Options",
    schema: addr("--host").nullable().default(null),
  },
  watch: {
    help: "follow session events (up, down, refused) as they happen, until interrupted",
    group: "Options",
    schema: bool("--watch").default(false),
  },
  socket: {
    arg: "<path>",
    help: "operator socket (default /run/dpm/server.sock, with --driver /run/dpm/driver.sock)",
    group: "Options",
    schema: str("--socket").nullable().default(null),
    complete: "file",
  },
} as const satisfies Record<string, Flag>;

/**
 * What the one-shot client commands share: JSON output, and the socket of
 * the role they ask (`dpm query` and `dpm map` the driver's, `dpm drop` the
 * server's).
 */
const clientFlags = (role: "driver" | "server", path: string) =>
  ({
    json: { help: "print JSON", group: "Options", schema: bool("--json").default(false) },
    socket: {
      arg: "<path>",
      help: `the ${role}'s socket`,
      group: "Options",
      schema: str("--socket").default(path),
      dflt: path,
      complete: "file",
    },
  }) as const satisfies Record<string, Flag>;

/** What `dpm query` and `dpm map` share: JSON output, the driver's socket. */
const DRIVER_CLIENT_FLAGS = clientFlags("driver", "/run/dpm/driver.sock");

/** `dpm query`. */
export const QUERY_FLAGS = {
  reserve: {
    help: "reserve the session first when there is none",
    group: "Options",
    schema: bool("--reserve").default(false),
  },
  ...DRIVER_CLIENT_FLAGS,
} as const satisfies Record<string, Flag>;

/** `dpm map`. */
export const MAP_FLAGS = {
  lifetime: {
    arg: "<s>",
    help: "lease in seconds; 0 deletes the mapping",
    group: "Options",
    schema: int("--lifetime", 0, 0xffffffff).default(3600),
    dflt: "3600",
  },
  "public-port": {
    arg: "<p>",
    help: "suggest this public port (default: the local port)",
    group: "Options",
    schema: int("--public-port", 1, 65535).nullable().default(null),
  },
  exact: {
    help: "only the suggested public port will do (else refused with conflict)",
    group: "Options",
    schema: bool("--exact").default(false),
  },
  ...DRIVER_CLIENT_FLAGS,
} as const satisfies Record<string, Flag>;

/** `dpm drop`. */
export const DROP_FLAGS = {
  host: {
    arg: "<addr>",
    help: "drop every session of this host",
    group: "Options",
    schema: addr("--host").nullable().default(null),
  },
  ...clientFlags("server", "/run/dpm/server.sock"),
} as const satisfies Record<string, Flag>;

/** One command: its synopsis, what it does, its flags; `config` when it reads --config. */
export interface Command {
  synopsis: string;
  about: string;
  flags: Record<string, Flag>;
  config: boolean;
  /** Positional arguments, for help and completion. */
  args?: string;
}

/** Every command, in help order. */
export const COMMANDS = {
  server: {
    synopsis: "dpm server --lan-addr <G> --pool <addr|a-b|cidr>[,...] [options]",
    about: "Run the gateway role: own the pool, answer reservations, translate.",
    flags: SERVER_FLAGS,
    config: true,
  },
  driver: {
    synopsis: "dpm driver --server <G>[:port] [options]",
    about: "Run the host role: reserve sessions, tell applications their public pair.",
    flags: DRIVER_FLAGS,
    config: true,
  },
  status: {
    synopsis: "dpm status [--json] [--host <addr>] [--watch] [--driver] [--socket <path>]",
    about:
      "Show the server's table and counters, or with --driver this host's sessions. Each session shows its bytes and packets both ways, age, idle time and expiry; --host shows one host's sessions, quota use and refusals; --json gives the whole table, streamed; --watch prints sessions coming up, going down and refused requests as they happen.",
    flags: STATUS_FLAGS,
    config: false,
  },
  query: {
    synopsis:
      "dpm query <tcp|udp|icmp> <local addr:port> <remote addr:port> [--reserve] [--json] [--socket <path>]",
    about:
      "Ask the local driver which public address and port a session uses (claims 11, 19, 24). For icmp the port is the echo identifier and the remote port 0. Exit 0 when the session exists, 1 when not (or refused), 2 on bad usage, 3 when no driver answers.",
    flags: QUERY_FLAGS,
    config: false,
    args: "<tcp|udp|icmp> <local addr:port> <remote addr:port>",
  },
  map: {
    synopsis:
      "dpm map <tcp|udp> <local port> [--lifetime <s>] [--public-port <p>] [--exact] [--json] [--socket <path>]",
    about:
      "Ask the gateway, through the local driver, for an inbound mapping: every outside peer's packets to the public pair it prints reach this host's local port, and the host's own packets from that port leave from it (as PCP MAP). Asked again, it renews; --lifetime 0 deletes it (also when there is none). Exit 0 on success, 1 when refused (conflict, quota, not-yours on a --socket-group socket), 2 on bad usage, 3 when no driver answers.",
    flags: MAP_FLAGS,
    config: false,
    args: "<tcp|udp> <local port>",
  },
  drop: {
    synopsis:
      "dpm drop <tcp|udp|icmp> <internal addr:port> <remote addr:port> | dpm drop --host <addr> [--json] [--socket <path>]",
    about:
      "Drop sessions from the gateway's table, like conntrack -D: one by its internal and remote endpoints, or every session of a host. The data path stops translating them at once; their hosts learn it at their next renewal. Exit 0 when something was dropped, 1 when nothing matched, 2 on bad usage.",
    flags: DROP_FLAGS,
    config: false,
    args: "<tcp|udp|icmp> <internal addr:port> <remote addr:port>",
  },
} as const satisfies Record<string, Command>;

/** A command's name. */
export type CommandName = keyof typeof COMMANDS;

// ---------------------------------------------------------------------------
// What the table gives.

/** The `node:util` parseArgs options of a command's flags (plus --config and --help). */
export function parseSpec(
  flags: Record<string, Flag>,
  withConfig: boolean,
): Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> {
  const out: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {
    help: { type: "boolean", short: "h" },
  };
  if (withConfig) out.config = { type: "string" };
  for (const [name, f] of Object.entries(flags)) {
    out[f.negated ? `no-${name}` : name] = {
      type: f.arg ? "string" : "boolean",
      ...(f.multiple ? { multiple: true } : {}),
    };
  }
  return out;
}

/** The zod schema of a whole configuration of a command (keys: the flags' names; `no-NAME` for negated switches). */
export function schemaOf<F extends Record<string, Flag>>(flags: F) {
  const shape: Record<string, z.ZodType> = {};
  for (const [name, f] of Object.entries(flags)) {
    shape[name] = f.schema;
    if (f.negated) shape[`no-${name}`] = bool(`--no-${name}`).optional();
  }
  return z.strictObject(shape);
}

type Camel<S extends string> = S extends `${infer H}-${infer T}` ? `${H}${Capitalize<Camel<T>>}`
  : S;
/** A command's settings as the roles see them: the flags' names in camelCase, their schemas' output types. */
export type Settings<F extends Record<string, Flag>> = {
  -readonly [K in keyof F as Camel<K & string>]-?: z.output<F[K]["schema"]>;
};

function camel(s: string): string {
  return s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/**
 * The gateway role's settings, and `mapRules`: the port policy in force,
 * `--map-allow` and `--map-deny` in the order given, then the defaults
 * (`src/policy/rules.ts`).
 */
export type ServerConfig = Settings<typeof SERVER_FLAGS> & { mapRules: MapRule[] };

/** The host role's settings (`--server` split into the address and the port). */
export type DriverConfig = Omit<Settings<typeof DRIVER_FLAGS>, "server"> & {
  server: number;
  serverPort: number;
};

/** A configuration problem, reported as one line per problem and exit code 2. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Where each merged setting came from, to name it in errors: a key present
 * here came from that config file, any other from the command line.
 */
export type Origins = Record<string, string>;

function describeIssues(e: z.ZodError, raw: Record<string, unknown>, origins: Origins): string {
  const lines: string[] = [];
  for (const i of e.issues) {
    const key = String(i.path[0] ?? "");
    const where = origins[key] ? ` (in config file "${origins[key]}")` : "";
    let msg: string;
    if (i.code === "unrecognized_keys") {
      const file = i.keys.map((k) => origins[k]).find((f) => f);
      msg = `Unknown setting ${i.keys.map((k) => `"${k}"`).join(", ")}` +
        (file ? ` (in config file "${file}")` : "");
      lines.push(msg);
      continue;
    }
    if (raw[key] === undefined && i.path.length === 1) msg = `Missing required --${key}`;
    else if (i.code === "custom") msg = i.message;
    else msg = `Invalid --${key} ${JSON.stringify(raw[key])}: ${i.message}`;
    lines.push(msg + where);
  }
  return lines.length ? lines.join("\n") : "Invalid configuration";
}

/** Validates merged settings against a command's table; every problem is reported. */
function validate<F extends Record<string, Flag>>(
  flags: F,
  raw: Record<string, unknown>,
  origins: Origins,
): Settings<F> {
  const r = schemaOf(flags).safeParse(raw);
  if (!r.success) throw new ConfigError(describeIssues(r.error, raw, origins));
  const v = r.data as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(flags)) {
    let value = v[name];
    const neg = v[`no-${name}`];
    if (f.negated && neg !== undefined) {
      if (raw[name] !== undefined && raw[name] !== !neg && String(raw[name]) !== String(!neg)) {
        throw new ConfigError(`--${name} and --no-${name} disagree`);
      }
      value = !neg;
    }
    out[camel(name)] = value;
  }
  return out as Settings<F>;
}

const isMulticastOrReserved = (a: number) => a >>> 28 >= 14; // 224/4 multicast, 240/4 reserved

/**
 * The rules of `--map-allow` and `--map-deny` as one list, in the order they
 * were given: `order` names each rule's flag in turn (`mergeSettings`);
 * without it, the flag first found in `raw` comes first.
 */
function orderedRules(
  allow: MapRule[],
  deny: MapRule[],
  raw: Record<string, unknown>,
  order?: readonly string[],
): MapRule[] {
  const keys = order ??
    Object.keys(raw).filter((k) => k === "map-allow" || k === "map-deny").flatMap((k) =>
      Array((k === "map-allow" ? allow : deny).length).fill(k)
    );
  const a = [...allow];
  const d = [...deny];
  const out: MapRule[] = [];
  for (const k of keys) {
    const r = k === "map-allow" ? a.shift() : k === "map-deny" ? d.shift() : undefined;
    if (r) out.push(r);
  }
  return [...out, ...a, ...d];
}

/**
 * Validates merged settings (file, then flags) into a ServerConfig. `order`:
 * the flag of each `--map-allow`/`--map-deny` value in turn (`mergeSettings`).
 */
export function serverConfig(
  raw: Record<string, unknown>,
  origins: Origins = {},
  order?: readonly string[],
): ServerConfig {
  const settings = validate(SERVER_FLAGS, raw, origins);
  const v: ServerConfig = {
    ...settings,
    mapRules: [
      ...orderedRules(settings.mapAllow, settings.mapDeny, raw, order),
      ...defaultRules(settings.fixedPorts),
    ],
  };
  const problems: string[] = [];
  if ((v.lanIf === null) !== (v.wanIf === null)) {
    problems.push("--lan-if and --wan-if go together (both enable the data path)");
  }
  if (v.lanIf !== null && v.lanIf === v.wanIf) {
    problems.push(`--lan-if and --wan-if are both "${v.lanIf}": the LAN and the WAN must differ`);
  }
  if (v.pool.includes(v.lanAddr)) problems.push("--pool must not contain --lan-addr");
  const bad = v.pool.filter((a) => a === 0 || isMulticastOrReserved(a) || a >>> 24 === 127);
  if (bad.length) {
    const ip = (a: number) => `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
    problems.push(
      `--pool holds ${bad.length} address(es) that cannot be a host's public address ` +
        `(0.0.0.0, loopback, multicast or reserved), e.g. ${ip(bad[0]!)}`,
    );
  }
  if (v.lan && v.pool.some((a) => cidrContains(v.lan!, a))) {
    problems.push("--pool overlaps the LAN prefix --lan: public addresses must be outside the LAN");
  }
  if (v.lan && !cidrContains(v.lan, v.lanAddr)) {
    problems.push("--lan-addr is not inside --lan");
  }
  const [glo, ghi] = v.gatewayPorts;
  if (v.controlPort >= glo && v.controlPort <= ghi) {
    problems.push(`--control-port ${v.controlPort} lies inside --gateway-ports ${glo}-${ghi}`);
  }
  if (v.pcp && v.controlPort === 5351) {
    problems.push("--control-port 5351 is PCP's port: choose another, or --no-pcp");
  }
  if (v.pcp && 5351 >= glo && 5351 <= ghi) {
    problems.push(`PCP's port 5351 lies inside --gateway-ports ${glo}-${ghi} (or use --no-pcp)`);
  }
  if (v.upnp && v.upnpPort >= glo && v.upnpPort <= ghi) {
    problems.push(
      `--upnp-port ${v.upnpPort} lies inside --gateway-ports ${glo}-${ghi} (or use --no-upnp)`,
    );
  }
  if (v.upnp && v.metricsAddr?.addr === v.lanAddr && v.metricsAddr.port === v.upnpPort) {
    problems.push(`--metrics-addr and --upnp-port both want TCP ${v.upnpPort} on --lan-addr`);
  }
  if (v.ha && (v.lanIf === null || v.haFifo === null)) {
    problems.push("--ha needs --lan-if, --wan-if and --ha-fifo (keepalived's vrrp_notify_fifo)");
  }
  if (v.ha && v.upnp) {
    problems.push(
      "--ha does not serve UPnP yet (its SSDP sockets need G on the interface): add --no-upnp",
    );
  }
  if (v.ha && v.addPoolAddresses) {
    problems.push("--ha claims the pool on takeover: drop --add-pool-addresses");
  }
  if (
    !v.ha &&
    (v.haFifo !== null || v.haPeer !== null || v.haConntrackdConfig !== null || v.haMarker !== null)
  ) {
    problems.push("--ha-fifo, --ha-marker, --ha-peer and --ha-conntrackd-config need --ha");
  }
  if (v.workers > 1 && v.datapath === "queue") {
    problems.push(
      `--workers ${v.workers} runs on the bpf and kernel data paths, not on --datapath queue ` +
        `(every packet crosses one thread there)`,
    );
  }
  if (v.workers > 1 && v.ha) {
    problems.push(
      `--workers ${v.workers} with --ha is not supported yet: one worker on an HA pair`,
    );
  }
  if (problems.length) throw new ConfigError(problems.join("\n"));
  return v;
}

/** Validates merged settings into a DriverConfig. */
export function driverConfig(raw: Record<string, unknown>, origins: Origins = {}): DriverConfig {
  const v = validate(DRIVER_FLAGS, raw, origins);
  const { server, ...rest } = v;
  return { ...rest, server: server.addr, serverPort: server.port };
}

/** Checks the pool against the LAN prefix once it is known (read off the interface at start). */
export function checkPoolOutside(pool: number[], lan: Cidr): void {
  if (pool.some((a) => cidrContains(lan, a))) {
    throw new ConfigError(
      "--pool overlaps the LAN prefix: public addresses must be outside the LAN",
    );
  }
}

/** Reads a JSON config file; throws ConfigError naming the file on any problem. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`Cannot read config file "${path}": ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`Config file "${path}" is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ConfigError(`Config file "${path}" must hold a JSON object`);
  }
  return v as Record<string, unknown>;
}
