/**
 * Starts dpm's roles inside a topology's namespaces, as a user would: the
 * real CLI (`deno run mod.ts server|driver ...`) in `ip netns exec`. Used by
 * the end-to-end tests, the demo and the benchmarks.
 */

import { fileURLToPath } from "node:url";
import type { Spawned, Topology } from "./topology.ts";

/** Absolute path of mod.ts. */
export const MOD = fileURLToPath(new URL("../mod.ts", import.meta.url));

/** The command that runs dpm: the compiled binary when DPM_BIN is set, else deno run. */
export function dpmCommand(): string[] {
  const bin = Deno.env.get("DPM_BIN");
  return bin ? [bin] : denoScript(MOD);
}

/**
 * The command that runs a Deno script (and its `args`) inside a namespace:
 * `--cached-only`, so that Deno uses what `tools/install-deps` cached and
 * never reaches for a registry from in there (a module missing from the
 * cache fails the command, loudly, instead). `flags`: more `deno run` flags.
 */
export function denoScript(script: string, args: string[] = [], flags: string[] = []): string[] {
  return [
    Deno.execPath(),
    "run",
    "--allow-all",
    "--quiet",
    "--cached-only",
    ...flags,
    script,
    ...args,
  ];
}

/**
 * Environment for dpm processes started from source: no Deno update check
 * (it would look up dl.deno.land from inside the test namespaces).
 */
export const DPM_ENV: Record<string, string> = { DENO_NO_UPDATE_CHECK: "1" };

/** A running dpm setup: one server, drivers on some hosts. */
export interface Dpm {
  /** The running server (replaced by {@linkcode Dpm.restartServer}). */
  server: Spawned;
  drivers: Map<string, Spawned>;
  /** Operator socket paths. */
  serverSocket: string;
  driverSocket(host: string): string;
  /** `dpm query ... --json` on a host. */
  query(
    host: string,
    proto: string,
    local: string,
    remote: string,
    reserve?: boolean,
  ): Promise<Record<string, unknown>>;
  /** `dpm status --json` on the gateway (`timeoutMs`, default 20 s: a million sessions on a busy machine take longer). */
  status(timeoutMs?: number): Promise<
    Record<string, unknown> & { sessions: number; shown: Record<string, unknown>[] }
  >;
  stop(): Promise<void>;
  /**
   * `dpm server --cleanup` and `dpm driver --cleanup` with the same flags:
   * removes what the kernel path leaves translating after a stop.
   */
  cleanup(): Promise<void>;
  /** Stops the server with `signal` (SIGKILL: at once) and starts it again with the same flags. */
  restartServer(signal: Deno.Signal): Promise<void>;
  /** The same for one host's driver. */
  restartDriver(host: string, signal: Deno.Signal): Promise<void>;
}

/** Options for {@link startDpm}. */
export interface StartOptions {
  /** Extra server flags. */
  serverArgs?: string[];
  /** Pool (default the topology's). */
  pool?: string;
  /** Host names (h1, h2...) that run a driver; default all but the last host. */
  driverHosts?: string[];
  /** Extra driver flags. */
  driverArgs?: string[];
  /** Extra driver flags of one host (after `driverArgs`), by host name. */
  driverArgsFor?: Record<string, string[]>;
  /** `--datapath` of both roles (default: dpm's default, auto: bpf where it loads). */
  datapath?: "bpf" | "kernel" | "queue" | "auto";
}

/** Starts the server on the gateway and drivers on hosts; waits until each says "ready". */
export async function startDpm(t: Topology, o: StartOptions = {}): Promise<Dpm> {
  const dir = t.scratch;
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const serverSocket = `${dir}/server.sock`;
  const driverSocket = (h: string) => `${dir}/${h}.sock`;
  const serverArgs = [
    "server",
    "--lan-if",
    t.gateway.lanIf,
    "--wan-if",
    t.gateway.wanIf,
    "--lan-addr",
    t.gateway.lanText,
    "--pool",
    o.pool ?? t.poolText,
    "--add-pool-addresses",
    "--socket",
    serverSocket,
    ...(o.datapath ? ["--datapath", o.datapath] : []),
    ...(o.serverArgs ?? []),
  ];
  const server = t.spawn(t.gateway.ns, [...dpmCommand(), ...serverArgs], { env: DPM_ENV });
  const driverArgs = (name: string) => [
    "driver",
    "--server",
    t.gateway.lanText,
    "--socket",
    driverSocket(name),
    ...(o.datapath ? ["--datapath", o.datapath] : []),
    ...(o.driverArgs ?? []),
    ...(o.driverArgsFor?.[name] ?? []),
  ];
  const drivers = new Map<string, Spawned>();
  const dpm: Dpm = {
    server,
    drivers,
    serverSocket,
    driverSocket,
    async query(host, proto, local, remote, reserve = false) {
      const h = t.hosts.find((x) => x.name === host)!;
      const r = await t.exec(h.ns, [
        ...dpmCommand(),
        "query",
        proto,
        local,
        remote,
        "--json",
        "--socket",
        driverSocket(host),
        ...(reserve ? ["--reserve"] : []),
      ], { timeoutMs: 20_000, env: DPM_ENV });
      if (r.code !== 0 && r.code !== 1) {
        throw new Error(`dpm query failed (${r.code}): ${r.stderr}`);
      }
      return JSON.parse(r.stdout);
    },
    async status(timeoutMs = 20_000) {
      const r = await t.exec(t.gateway.ns, [
        ...dpmCommand(),
        "status",
        "--json",
        "--socket",
        serverSocket,
      ], {
        timeoutMs,
        env: DPM_ENV,
      });
      if (r.code !== 0) throw new Error(`dpm status failed (${r.code}): ${r.stderr}`);
      return JSON.parse(r.stdout);
    },
    async stop() {
      await Promise.all([...drivers.values()].map((d) => d.stop("SIGTERM", 5000)));
      await dpm.server.stop("SIGTERM", 5000);
    },
    async restartServer(signal) {
      await dpm.server.stop(signal, signal === "SIGKILL" ? 0 : 5000);
      dpm.server = t.spawn(t.gateway.ns, [...dpmCommand(), ...serverArgs], { env: DPM_ENV });
      await dpm.server.waitForOutput(/ready/, 30_000);
    },
    async restartDriver(host, signal) {
      const h = t.hosts.find((x) => x.name === host)!;
      await drivers.get(host)!.stop(signal, signal === "SIGKILL" ? 0 : 5000);
      const d = t.spawn(h.ns, [...dpmCommand(), ...driverArgs(host)], { env: DPM_ENV });
      drivers.set(host, d);
      await d.waitForOutput(/ready/, 30_000);
    },
    async cleanup() {
      for (const name of drivers.keys()) {
        const h = t.hosts.find((x) => x.name === name)!;
        const r = await t.exec(h.ns, [...dpmCommand(), ...driverArgs(name), "--cleanup"], {
          timeoutMs: 20_000,
          env: DPM_ENV,
        });
        if (r.code !== 0) throw new Error(`dpm driver --cleanup failed (${r.code}): ${r.stderr}`);
      }
      const r = await t.exec(t.gateway.ns, [...dpmCommand(), ...serverArgs, "--cleanup"], {
        timeoutMs: 20_000,
        env: DPM_ENV,
      });
      if (r.code !== 0) throw new Error(`dpm server --cleanup failed (${r.code}): ${r.stderr}`);
    },
  };
  try {
    await server.waitForOutput(/ready/, 30_000);
    const hosts = o.driverHosts ?? t.hosts.slice(0, -1).map((h) => h.name);
    for (const name of hosts) {
      const h = t.hosts.find((x) => x.name === name);
      if (!h) throw new Error(`no host ${name}`);
      drivers.set(
        name,
        t.spawn(h.ns, [...dpmCommand(), ...driverArgs(name)], { env: DPM_ENV }),
      );
    }
    await Promise.all([...drivers.values()].map((d) => d.waitForOutput(/ready/, 30_000)));
  } catch (e) {
    await dpm.stop();
    throw new Error(`${(e as Error).message}\n--- server output:\n${server.output()}`);
  }
  return dpm;
}

/**
 * Builds a topology (`hosts` hosts, 3 peers), starts dpm on it, runs `fn`,
 * and always stops dpm and destroys the topology; on failure prints every
 * dpm process's output.
 */
export async function withDpm(
  opts: StartOptions & { hosts?: number },
  fn: (t: Topology, d: Dpm) => Promise<void>,
): Promise<void> {
  const { createTopology } = await import("./topology.ts");
  const t = await createTopology({ hosts: opts.hosts ?? 3, peers: 3 });
  try {
    const d = await startDpm(t, opts);
    try {
      await fn(t, d);
    } catch (e) {
      console.error(`--- server output:\n${d.server.output()}`);
      for (const [h, s] of d.drivers) console.error(`--- ${h} driver output:\n${s.output()}`);
      throw e;
    } finally {
      await d.stop();
    }
    // Nothing the test ran may have reached beyond its namespaces.
    const out = await t.escaped();
    if (out !== 0) {
      throw new Error(`${out} packet(s) left the topology toward addresses outside it`);
    }
  } finally {
    await t.destroy();
  }
}

/** Starts an app in `ns` and waits until it prints "listening". */
export async function serveApp(t: Topology, ns: string, cmd: string[]): Promise<Spawned> {
  const s = t.spawn(ns, cmd);
  await s.waitForOutput(/listening/, 10_000);
  return s;
}

/** Runs `cmd` in `ns`, requires exit 0, and parses the last line of its output as JSON. */
export async function lastJson(
  t: Topology,
  ns: string,
  cmd: string[],
  timeoutMs = 15_000,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  const r = await t.exec(ns, cmd, { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd.slice(0, 3).join(" ")} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}
