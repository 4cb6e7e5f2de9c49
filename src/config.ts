/**
 * Configuration of both roles: one zod schema per role validates what comes
 * from flags and from a JSON config file alike. A config file uses the flags'
 * long names as keys (`{"lan-addr": "10.0.0.1", "pool": "203.0.113.10-203.0.113.13"}`);
 * flags win over the file. Every error names the offending key and value.
 *
 * @module
 */

import { z } from "zod";
import { type Cidr, parseAddrPort, parseCidr, parseIPv4, parsePool } from "./wire/addr.ts";

/** The gateway role's settings. */
export interface ServerConfig {
  /** The gateway's LAN address G (control listener, LAN side of every session). */
  lanAddr: number;
  /** The public pool, expanded to single addresses. */
  pool: number[];
  controlPort: number;
  /** Range for replacement public ports. */
  portRange: [number, number];
  /** Range for the LAN-side gateway ports Pg (must match the drivers'). */
  gatewayPorts: [number, number];
  /** Longest lifetime granted, seconds. */
  lifetime: number;
  maxSessionsPerHost: number;
  /** Control requests per second allowed per host (burst: twice that). */
  rateLimit: number;
  state: string | null;
  socket: string;
  lanIf: string | null;
  wanIf: string | null;
  /** LAN prefix; defaults to the prefix of lanAddr on lanIf. */
  lan: Cidr | null;
  addPoolAddresses: boolean;
  /** Masquerade hosts without a driver behind the WAN address. */
  masquerade: boolean;
  queue: number;
  /** `kernel` (nftables maps + conntrack translate) or `queue` (dpm translates every packet). */
  datapath: "kernel" | "queue";
  /** Remove everything a previous run left in the kernel (kernel path), then exit. */
  cleanup: boolean;
  logLevel: "error" | "warn" | "info" | "debug";
}

/** The host role's settings. */
export interface DriverConfig {
  server: number;
  serverPort: number;
  fixedPorts: number[];
  gatewayPorts: [number, number];
  lan: Cidr | null;
  socket: string;
  /** When false the driver touches no kernel state: it only answers `dpm query` (and reserves on request). */
  intercept: boolean;
  queue: number;
  /** `kernel` (an nftables map + conntrack translate) or `queue` (dpm translates every packet). */
  datapath: "kernel" | "queue";
  /** Remove everything a previous run left in the kernel (kernel path), then exit. */
  cleanup: boolean;
  logLevel: "error" | "warn" | "info" | "debug";
}

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

const addr = (what: string) =>
  z.string().transform((v, ctx) => {
    const a = parseIPv4(v);
    if (a === null) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want an IPv4 address` });
      return z.NEVER;
    }
    return a;
  });

const range = (what: string) =>
  z.string().transform((v, ctx): [number, number] => {
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
  z.string().transform((v, ctx) => {
    const c = parseCidr(v);
    if (!c) {
      ctx.addIssue({ code: "custom", message: `Invalid ${what} "${v}": want a.b.c.d/len` });
      return z.NEVER;
    }
    return c;
  });

const ifname = (what: string) =>
  z.string().regex(/^[A-Za-z0-9_.:-]{1,15}$/, `Invalid ${what}: want an interface name`);

const bool = z.union([z.boolean(), z.enum(["true", "false"])]).transform((v) =>
  v === true || v === "true"
);
const level = z.enum(["error", "warn", "info", "debug"]);

/** Keys accepted by `dpm server` (flags and config file). */
export const serverSchema = z.strictObject({
  "lan-addr": addr("--lan-addr"),
  pool: z.string().transform((v, ctx) => {
    const p = parsePool(v);
    if (typeof p === "string") {
      ctx.addIssue({ code: "custom", message: p });
      return z.NEVER;
    }
    return p;
  }),
  "control-port": port("--control-port").default(4750),
  "port-range": range("--port-range").default([1024, 65535]),
  "gateway-ports": range("--gateway-ports").default([61000, 65535]),
  lifetime: int("--lifetime", 2, 7 * 86400).default(86400),
  "max-sessions-per-host": int("--max-sessions-per-host", 1, 1 << 20).default(4096),
  "rate-limit": int("--rate-limit", 1, 1_000_000).default(2000),
  state: z.string().min(1).nullable().default(null),
  socket: z.string().min(1).default("/run/dpm/server.sock"),
  "lan-if": ifname("--lan-if").nullable().default(null),
  "wan-if": ifname("--wan-if").nullable().default(null),
  lan: cidr("--lan").nullable().default(null),
  "add-pool-addresses": bool.default(false),
  masquerade: bool.default(true),
  queue: int("--queue", 0, 65535).default(0),
  datapath: z.enum(["kernel", "queue"], {
    error: (i) => `Invalid --datapath "${String(i.input)}": want kernel or queue`,
  }).default("kernel"),
  cleanup: bool.default(false),
  "log-level": level.default("info"),
});

/** Keys accepted by `dpm driver`. */
export const driverSchema = z.strictObject({
  server: z.string().transform((v, ctx) => {
    const ap = v.includes(":") ? parseAddrPort(v) : (() => {
      const a = parseIPv4(v);
      return a === null ? null : { addr: a, port: 4750 };
    })();
    if (!ap || ap.port === 0) {
      ctx.addIssue({ code: "custom", message: `Invalid --server "${v}": want G or G:port` });
      return z.NEVER;
    }
    return ap;
  }),
  "fixed-ports": z.union([z.string(), z.array(z.number())]).transform((v, ctx) => {
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
  }).default([]),
  "gateway-ports": range("--gateway-ports").default([61000, 65535]),
  lan: cidr("--lan").nullable().default(null),
  socket: z.string().min(1).default("/run/dpm/driver.sock"),
  intercept: bool.default(true),
  queue: int("--queue", 0, 65535).default(1),
  datapath: z.enum(["kernel", "queue"], {
    error: (i) => `Invalid --datapath "${String(i.input)}": want kernel or queue`,
  }).default("kernel"),
  cleanup: bool.default(false),
  "log-level": level.default("info"),
});

/** A configuration problem, reported as one line and exit code 2. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

function firstIssue(e: z.ZodError): string {
  const i = e.issues[0];
  if (!i) return "Invalid configuration";
  const key = i.path.join(".");
  if (i.code === "unrecognized_keys") {
    return `Unknown setting ${i.keys.map((k) => `"${k}"`).join(", ")}`;
  }
  if (i.code === "invalid_type" && i.input === undefined) return `Missing required --${key}`;
  if (i.code === "custom") return i.message;
  return `Invalid --${key}: ${i.message}`;
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

/** Validates merged settings (file, then flags) into a ServerConfig. */
export function serverConfig(raw: Record<string, unknown>): ServerConfig {
  const r = serverSchema.safeParse(raw);
  if (!r.success) throw new ConfigError(firstIssue(r.error));
  const v = r.data;
  if ((v["lan-if"] === null) !== (v["wan-if"] === null)) {
    throw new ConfigError("--lan-if and --wan-if go together (both enable the data path)");
  }
  if (v.pool.includes(v["lan-addr"])) {
    throw new ConfigError("--pool must not contain --lan-addr");
  }
  const [glo, ghi] = v["gateway-ports"];
  if (v["control-port"] >= glo && v["control-port"] <= ghi) {
    throw new ConfigError(
      `--control-port ${v["control-port"]} lies inside --gateway-ports ${glo}-${ghi}`,
    );
  }
  return {
    lanAddr: v["lan-addr"],
    pool: v.pool,
    controlPort: v["control-port"],
    portRange: v["port-range"],
    gatewayPorts: v["gateway-ports"],
    lifetime: v.lifetime,
    maxSessionsPerHost: v["max-sessions-per-host"],
    rateLimit: v["rate-limit"],
    state: v.state,
    socket: v.socket,
    lanIf: v["lan-if"],
    wanIf: v["wan-if"],
    lan: v.lan,
    addPoolAddresses: v["add-pool-addresses"],
    masquerade: v.masquerade,
    queue: v.queue,
    datapath: v.datapath,
    cleanup: v.cleanup,
    logLevel: v["log-level"],
  };
}

/** Validates merged settings into a DriverConfig. */
export function driverConfig(raw: Record<string, unknown>): DriverConfig {
  const r = driverSchema.safeParse(raw);
  if (!r.success) throw new ConfigError(firstIssue(r.error));
  const v = r.data;
  return {
    server: v.server.addr,
    serverPort: v.server.port,
    fixedPorts: v["fixed-ports"],
    gatewayPorts: v["gateway-ports"],
    lan: v.lan,
    socket: v.socket,
    intercept: v.intercept,
    queue: v.queue,
    datapath: v.datapath,
    cleanup: v.cleanup,
    logLevel: v["log-level"],
  };
}
