/**
 * Builds throw-away networks of real hosts in Linux network namespaces for the
 * demo, the end-to-end tests and the benchmarks. Requires root (or
 * CAP_NET_ADMIN + CAP_SYS_ADMIN), `ip` from iproute2 and `sysctl`, and
 * `--allow-run --allow-read --allow-write`.
 *
 * Default layout (`hosts`, `peers` and `router` are options):
 *
 * ```
 *  LAN 10.0.0.0/24 (bridge lan0 in the gateway ns)            outside
 *  h1 10.0.0.11 ─┐                                                                  ┌─ p1 198.51.100.10
 *  h2 10.0.0.12 ─┼─ gw: lan0 10.0.0.1 | wan0 203.0.113.1 ── rt: gw0 203.0.113.254  ─┼─ p2 198.51.100.20
 *  h3 10.0.0.13 ─┘    (dpm server runs here)                    out0 198.51.100.1   └─ p3 198.51.100.30
 * ```
 *
 * - Every host has one interface `eth0` and a default route via 10.0.0.1.
 * - The gateway holds the bridge `lan0` (10.0.0.1/24; ports `lan-h1`...) and
 *   the veth `wan0` (203.0.113.1/24), a default route via 203.0.113.254, and
 *   forwards (`net.ipv4.ip_forward=1`).
 * - The router is "the Internet": it forwards, has 203.0.113.0/24 on `gw0` and
 *   198.51.100.0/24 on the bridge `out0` (ports `out-p1`...), and no route to
 *   any private network.
 * - Every peer has `eth0` and a default route via 198.51.100.1.
 * - The pool ({@linkcode POOL_TEXT}) lies on the gateway-router link; dpm adds
 *   those addresses to `wan0` itself, the builder does not.
 *
 * With `router: false` there is no routing hop: `gw0` is replaced by an L2
 * switch (namespace role `sw`, bridge `out0`, no addresses) joining `wan0` and
 * the peers; the gateway routes 198.51.100.0/24 and its default on-link out of
 * `wan0`, and the peers route everything on-link out of `eth0`.
 *
 * Every namespace has loopback up, IPv6 disabled (no RS/DAD noise) and, where
 * the kernel has it, bridge netfilter off. Every interface is created directly
 * inside its namespace, so nothing is left in the root namespace and deleting
 * the namespaces deletes every link.
 *
 * Namespaces are named `dpmt-<6 hex>-<role>` (roles `h1`..., `gw`, `rt` or
 * `sw`, `p1`...). Before creating any, the builder writes the marker
 * `/run/dpmt/dpmt-<6 hex>-.pid` naming the creating process, so that
 * {@linkcode cleanupStaleTopologies} can tell a crashed run's leftovers from a
 * live run's network.
 *
 * @module
 */

import { parseIPv4 } from "../src/wire/addr.ts";

/** Options of {@linkcode createTopology}. */
export interface TopologyOptions {
  /**
   * Number of private hosts on the LAN (1..200), named h1, h2...
   * @default {3}
   */
  hosts?: number;
  /**
   * Number of outside peers (1..25), named p1, p2...
   * @default {3}
   */
  peers?: number;
  /**
   * Namespace name prefix. Must start with `dpmt-`, end with `-`, and be
   * unique among live runs.
   * @default {"dpmt-<6 random hex digits>-"}
   */
  prefix?: string;
  /**
   * Whether a router (one TTL hop) sits between the gateway and the peers.
   * @default {true}
   */
  router?: boolean;
}

/** One host: a namespace with a single address. */
export interface Node {
  /** Role name: "h1", "p2", "rt". */
  name: string;
  /** The network namespace, for {@linkcode Topology.exec}. */
  ns: string;
  /** The host's address, host order. */
  addr: number;
  /** The host's address, dotted quad. */
  addrText: string;
}

/** What {@linkcode Topology.exec} returns. */
export interface ExecResult {
  /**
   * The exit code; 128 + signal number when killed by a signal;
   * {@linkcode EXEC_TIMEOUT_CODE} (124) when killed for running past its timeout.
   */
  code: number;
  stdout: string;
  stderr: string;
}

/** A process started with {@linkcode Topology.spawn}. */
export interface Spawned {
  /** The process id (`ip netns exec` execs, so it is the command's own). */
  readonly pid: number;
  /** The namespace it runs in. */
  readonly ns: string;
  /** Standard output and standard error so far, interleaved as they arrived. */
  output(): string;
  /** The child's standard input; usable when spawned with `stdin: "piped"`. */
  readonly stdin: WritableStream<Uint8Array>;
  /** Standard output so far. */
  stdout(): string;
  /** Standard error so far. */
  stderr(): string;
  /**
   * Resolves with the first match of `re` in {@linkcode output} (now or
   * later). Rejects when the process exits without matching or on timeout;
   * the error carries the output.
   */
  waitForOutput(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /**
   * Sends `signal` (default SIGTERM) to the process group, then SIGKILL after
   * `graceMs` (default 2000) if it is still running. Resolves with the exit
   * status once its output is read to the end. Idempotent.
   */
  stop(signal?: Deno.Signal, graceMs?: number): Promise<Deno.CommandStatus>;
  /** Resolves when the process has exited and its output is read to the end. */
  readonly status: Promise<Deno.CommandStatus>;
}

/** The gateway's side of the topology. */
export interface Gateway {
  ns: string;
  /** The LAN bridge, "lan0". */
  lanIf: string;
  /** The link towards the outside, "wan0". */
  wanIf: string;
  lanAddr: number;
  lanText: string;
  wanAddr: number;
  wanText: string;
  /** "10.0.0.0/24". */
  lanCidr: string;
}

/** A built network. Dispose it (`await using`) or call {@linkcode destroy}. */
export interface Topology extends AsyncDisposable {
  /** The namespace name prefix, `dpmt-<6 hex>-`. */
  readonly prefix: string;
  /**
   * A directory for the run's files (operator sockets, state files), created
   * on demand by its users and removed with the topology.
   */
  readonly scratch: string;
  readonly hosts: Node[];
  readonly peers: Node[];
  readonly gateway: Gateway;
  /** The router, or `null` when built with `router: false`. */
  readonly router: Node | null;
  /** The public pool for dpm, "203.0.113.10-203.0.113.13". */
  readonly poolText: string;
  /** Every namespace of the topology. */
  readonly namespaces: readonly string[];
  /**
   * Runs `cmd` in `ns` to completion and collects its output. Never throws
   * on a non-zero exit; kills the command's process group with SIGKILL after
   * `timeoutMs` (default 10000) and reports code 124.
   */
  exec(
    ns: string,
    cmd: string[],
    opts?: { timeoutMs?: number; stdin?: string; env?: Record<string, string> },
  ): Promise<ExecResult>;
  /**
   * Starts `cmd` in `ns` in its own process group and keeps it tracked:
   * {@linkcode destroy} stops it if nobody else did. Output is collected.
   */
  spawn(
    ns: string,
    cmd: string[],
    opts?: { env?: Record<string, string>; stdin?: "piped" | "null" },
  ): Spawned;
  /**
   * Packets sent so far toward an address outside the topology (counted
   * where they would leave it): must stay 0, nothing a test runs may reach
   * beyond the machine's own namespaces.
   */
  escaped(): Promise<number>;
  /**
   * Stops every spawned process (SIGTERM, SIGKILL after a grace period),
   * kills whatever else still runs in the namespaces, deletes every
   * namespace (and so every link) and the marker. Idempotent; never throws
   * (problems are logged to stderr).
   */
  destroy(): Promise<void>;
}

/** The exit code {@linkcode Topology.exec} reports for a command it killed at its timeout. */
export const EXEC_TIMEOUT_CODE = 124;

/**
 * The environment of every process started in a namespace (added to the
 * parent's by `exec` and `spawn`): Deno must not look for a newer release
 * from in there. Nothing a process in the topology does may reach beyond it
 * ({@linkcode Topology.escaped} counts what tries).
 */
export const NAMESPACE_ENV: Readonly<Record<string, string>> = Object.freeze({
  DENO_NO_UPDATE_CHECK: "1",
});

/** Every namespace the builder makes starts with this. */
export const NS_PREFIX = "dpmt-";

/** Where creation markers live. */
export const MARKER_DIR = "/run/dpmt";

/** The pool dpm is given in the default layout. */
export const POOL_TEXT = "203.0.113.10-203.0.113.13";

const LAN_NET = "10.0.0.0/24";
/** The nft table (in the router's namespace, else the gateway's) counting escapes. */
const WATCH_TABLE = "topology_watch";
const LAN_GW = "10.0.0.1";
const WAN_GW = "203.0.113.1";
const WAN_RT = "203.0.113.254";
const OUT_RT = "198.51.100.1";
const NETNS_DIR = "/run/netns";
const STOP_GRACE_MS = 2000;
const DESTROY_GRACE_MS = 1000;

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGUSR2: 12,
  SIGTERM: 15,
};

/** Which process wrote a marker; `pidns` guards against reading another pid namespace's pid. */
interface Marker {
  pid: number;
  start: string;
  pidns: string;
}

/**
 * Builds the network described in the module doc. On failure it tears down
 * whatever it made, then throws.
 *
 * @example
 * ```ts
 * await using topo = await createTopology({ hosts: 2 });
 * const r = await topo.exec(topo.hosts[0]!.ns, ["ping", "-c1", "-W1", topo.gateway.lanText]);
 * ```
 */
export async function createTopology(opts: TopologyOptions = {}): Promise<Topology> {
  const hostCount = opts.hosts ?? 3;
  const peerCount = opts.peers ?? 3;
  const withRouter = opts.router ?? true;
  if (!Number.isInteger(hostCount) || hostCount < 1 || hostCount > 200) {
    throw new RangeError(`Cannot build "${hostCount}" hosts: expected 1..200`);
  }
  if (!Number.isInteger(peerCount) || peerCount < 1 || peerCount > 25) {
    throw new RangeError(`Cannot build "${peerCount}" peers: expected 1..25`);
  }
  const prefix = checkPrefix(opts.prefix);

  const ip4 = (t: string) => parseIPv4(t)!;
  const hosts: Node[] = [];
  for (let i = 1; i <= hostCount; i++) {
    const addrText = `10.0.0.${10 + i}`;
    hosts.push({ name: `h${i}`, ns: `${prefix}h${i}`, addr: ip4(addrText), addrText });
  }
  const peers: Node[] = [];
  for (let i = 1; i <= peerCount; i++) {
    const addrText = `198.51.100.${10 * i}`;
    peers.push({ name: `p${i}`, ns: `${prefix}p${i}`, addr: ip4(addrText), addrText });
  }
  const gateway: Gateway = {
    ns: `${prefix}gw`,
    lanIf: "lan0",
    wanIf: "wan0",
    lanAddr: ip4(LAN_GW),
    lanText: LAN_GW,
    wanAddr: ip4(WAN_GW),
    wanText: WAN_GW,
    lanCidr: LAN_NET,
  };
  const router: Node | null = withRouter
    ? { name: "rt", ns: `${prefix}rt`, addr: ip4(WAN_RT), addrText: WAN_RT }
    : null;
  const outNs = router ? router.ns : `${prefix}sw`;
  const namespaces = [...hosts.map((h) => h.ns), gateway.ns, outNs, ...peers.map((p) => p.ns)];

  await reservePrefix(prefix, namespaces);
  const topo = new NetnsTopology(prefix, hosts, peers, gateway, router, namespaces);
  try {
    await topo.build(outNs);
  } catch (e) {
    await topo.destroy();
    throw e;
  }
  return topo;
}

/**
 * Checks a namespace prefix given by a caller, or makes a random one:
 * `dpmt-<6 hex>-`.
 */
export function checkPrefix(prefix: string | undefined): string {
  const p = prefix ?? `${NS_PREFIX}${randomHex(3)}-`;
  if (!/^dpmt-[A-Za-z0-9_.-]*-$/.test(p) || p.length > 40) {
    throw new TypeError(`Cannot use namespace prefix "${p}": expected "dpmt-<word>-"`);
  }
  return p;
}

/**
 * Reserves `prefix` before any of `namespaces` is created: writes its marker
 * exclusively (so {@linkcode cleanupStaleTopologies} can tell a crashed run's
 * leftovers from a live run's network) and refuses when one of them exists
 * already (someone's leftovers, not ours to delete here).
 */
export async function reservePrefix(prefix: string, namespaces: readonly string[]): Promise<void> {
  await writeMarker(prefix);
  const clash = namespaces.filter(nsExists);
  if (clash.length > 0) {
    await Deno.remove(markerPath(prefix)).catch(() => {});
    throw new Error(`Cannot build with prefix "${prefix}": namespace "${clash[0]}" exists`);
  }
}

/**
 * The life of a set of namespaces under one prefix, whatever their layout:
 * commands run in them ({@linkcode exec}, {@linkcode spawn}), the count of
 * packets trying to leave them ({@linkcode escaped}), and their teardown,
 * also when the process exits without it. {@linkcode createTopology}'s
 * network and the HA pair's (testing/ha_topology.ts) are both one.
 */
export class NamespaceGroup implements AsyncDisposable {
  #spawned = new Set<SpawnedProcess>();
  #destroyed: Promise<void> | null = null;
  #unloadHandler = () => this.#destroySync();
  #watchNs = "";

  constructor(readonly prefix: string, readonly namespaces: readonly string[]) {
    globalThis.addEventListener("unload", this.#unloadHandler);
  }

  /** See {@linkcode Topology.scratch}. */
  get scratch(): string {
    return scratchPath(this.prefix);
  }

  /**
   * Installs the escape counter in `ns`: packets toward any address outside
   * the topology's prefixes (`inside`), counted in a filter chain of `hook`
   * (an nft chain header) where they would leave, optionally only those
   * matching `match` (an nft expression followed by a space, or "").
   */
  protected async watchEscapes(
    ns: string,
    hook: string,
    match: string,
    inside: string[],
  ): Promise<void> {
    const r = await this.exec(ns, ["nft", "-f", "-"], {
      stdin: `table ip ${WATCH_TABLE} {
  counter escaped {}
  chain out {
    ${hook}
    ${match}ip daddr != { ${inside.join(", ")} } counter name escaped
  }
}
`,
    });
    if (r.code !== 0) throw new Error(`Cannot install the escape counter: ${r.stderr.trim()}`);
    this.#watchNs = ns;
  }

  async escaped(): Promise<number> {
    const r = await this.exec(this.#watchNs, [
      "nft",
      "-j",
      "list",
      "counter",
      "ip",
      WATCH_TABLE,
      "escaped",
    ]);
    if (r.code !== 0) throw new Error(`Cannot read the escape counter: ${r.stderr.trim()}`);
    const j = JSON.parse(r.stdout) as { nftables: { counter?: { packets: number } }[] };
    const c = j.nftables.find((x) => x.counter)?.counter;
    if (!c) throw new Error(`No escape counter in: ${r.stdout}`);
    return c.packets;
  }

  async exec(
    ns: string,
    cmd: string[],
    opts: { timeoutMs?: number; stdin?: string; env?: Record<string, string> } = {},
  ): Promise<ExecResult> {
    this.#checkNs(ns);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...cmd],
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      detached: true,
      env: { ...NAMESPACE_ENV, ...opts.env },
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, "SIGKILL");
    }, timeoutMs);
    try {
      if (opts.stdin !== undefined) {
        const w = child.stdin.getWriter();
        try {
          await w.write(new TextEncoder().encode(opts.stdin));
          await w.close();
        } catch {
          // The command exited without reading its input; its status tells.
        }
      }
      const out = await child.output();
      return {
        code: timedOut ? EXEC_TIMEOUT_CODE : out.code,
        stdout: new TextDecoder().decode(out.stdout),
        stderr: new TextDecoder().decode(out.stderr),
      };
    } finally {
      clearTimeout(timer);
    }
  }

  spawn(
    ns: string,
    cmd: string[],
    opts: { env?: Record<string, string>; stdin?: "piped" | "null" } = {},
  ): Spawned {
    this.#checkNs(ns);
    if (this.#destroyed) throw new Error(`Cannot spawn in "${ns}": the topology is destroyed`);
    const p = new SpawnedProcess(ns, cmd, opts);
    this.#spawned.add(p);
    p.status.finally(() => this.#spawned.delete(p));
    return p;
  }

  destroy(): Promise<void> {
    this.#destroyed ??= this.#destroy();
    return this.#destroyed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.destroy();
  }

  async #destroy(): Promise<void> {
    globalThis.removeEventListener("unload", this.#unloadHandler);
    try {
      await Promise.all([...this.#spawned].map((p) => p.stop("SIGTERM", DESTROY_GRACE_MS)));
    } catch (e) {
      logProblem("stopping spawned processes", e);
    }
    await deleteNamespaces(this.prefix, this.namespaces);
  }

  /** Last resort when the process exits without destroy(): synchronous, SIGKILL only. */
  #destroySync(): void {
    for (const p of this.#spawned) killGroup(p.pid, "SIGKILL");
    try {
      const existing = this.namespaces.filter(nsExists);
      for (const ns of existing) killNsPidsSync(ns);
      for (const ns of existing) {
        new Deno.Command("ip", { args: ["netns", "del", ns], stdout: "null", stderr: "null" })
          .outputSync();
      }
      Deno.removeSync(markerPath(this.prefix));
      Deno.removeSync(scratchPath(this.prefix), { recursive: true });
    } catch {
      // Best effort at exit.
    }
  }

  #checkNs(ns: string): void {
    if (!this.namespaces.includes(ns)) {
      throw new TypeError(`Cannot run in "${ns}": not a namespace of this topology`);
    }
  }
}

class NetnsTopology extends NamespaceGroup implements Topology {
  readonly poolText = POOL_TEXT;

  constructor(
    prefix: string,
    readonly hosts: Node[],
    readonly peers: Node[],
    readonly gateway: Gateway,
    readonly router: Node | null,
    namespaces: readonly string[],
  ) {
    super(prefix, namespaces);
  }

  /** Creates namespaces and links in one root batch, then configures each namespace in parallel. */
  async build(outNs: string): Promise<void> {
    const gw = this.gateway.ns;
    const sysctls = (forward: boolean) =>
      [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        `net.ipv4.ip_forward=${forward ? 1 : 0}`,
        "net.bridge.bridge-nf-call-iptables=0",
        "net.bridge.bridge-nf-call-arptables=0",
      ].join(" ");

    // Root batch: namespaces first, then their sysctls (so no link ever gets
    // IPv6), then every link created directly inside its namespaces.
    const root: string[] = [];
    for (const ns of this.namespaces) root.push(`netns add ${ns}`);
    for (const ns of this.namespaces) {
      const fwd = ns === gw || (this.router !== null && ns === outNs);
      root.push(`netns exec ${ns} sysctl -q -e -w ${sysctls(fwd)}`);
    }
    root.push(`link add name lan0 netns ${gw} type bridge forward_delay 0`);
    root.push(`link add name out0 netns ${outNs} type bridge forward_delay 0`);
    for (const h of this.hosts) {
      root.push(`link add name lan-${h.name} netns ${gw} type veth peer name eth0 netns ${h.ns}`);
    }
    const outPort = this.router ? "gw0" : "out-gw";
    root.push(`link add name wan0 netns ${gw} type veth peer name ${outPort} netns ${outNs}`);
    for (const p of this.peers) {
      root.push(
        `link add name out-${p.name} netns ${outNs} type veth peer name eth0 netns ${p.ns}`,
      );
    }
    await ipBatch([], root);

    // Per namespace: addresses, bridge ports, routes.
    const jobs: Promise<void>[] = [];
    for (const h of this.hosts) {
      jobs.push(ipBatch(["-n", h.ns], [
        "link set lo up",
        `addr add ${h.addrText}/24 dev eth0`,
        "link set eth0 up",
        `route add default via ${LAN_GW}`,
      ]));
    }
    const g = ["link set lo up", `addr add ${LAN_GW}/24 dev lan0`, "link set lan0 up"];
    for (const h of this.hosts) g.push(`link set lan-${h.name} master lan0 up`);
    g.push(`addr add ${WAN_GW}/24 dev wan0`, "link set wan0 up");
    if (this.router) {
      g.push(`route add default via ${WAN_RT}`);
    } else {
      g.push("route add 198.51.100.0/24 dev wan0", "route add default dev wan0");
    }
    jobs.push(ipBatch(["-n", gw], g));
    const o = ["link set lo up", "link set out0 up"];
    if (this.router) {
      o.push(`addr add ${WAN_RT}/24 dev gw0`, "link set gw0 up", `addr add ${OUT_RT}/24 dev out0`);
    } else {
      o.push("link set out-gw master out0 up");
    }
    for (const p of this.peers) o.push(`link set out-${p.name} master out0 up`);
    jobs.push(ipBatch(["-n", outNs], o));
    for (const p of this.peers) {
      const lines = ["link set lo up", `addr add ${p.addrText}/24 dev eth0`, "link set eth0 up"];
      if (this.router) {
        lines.push(`route add default via ${OUT_RT}`);
      } else {
        lines.push("route add 203.0.113.0/24 dev eth0", "route add default dev eth0");
      }
      jobs.push(ipBatch(["-n", p.ns], lines));
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    await this.#watch(outNs);
  }

  /**
   * The watch on the topology's way out: a counter of packets toward any
   * address outside the topology's prefixes, where they would leave it (the
   * router's prerouting, which sees them before it drops them for want of a
   * route; without a router, the gateway's postrouting out of `wan0`).
   */
  async #watch(outNs: string): Promise<void> {
    const inside = [LAN_NET, "203.0.113.0/24", "198.51.100.0/24"];
    const [ns, hook] = this.router
      ? [outNs, "type filter hook prerouting priority -500; policy accept;"]
      : [this.gateway.ns, "type filter hook postrouting priority 500; policy accept;"];
    const match = this.router ? "" : `oifname "wan0" `;
    await this.watchEscapes(ns, hook, match, inside);
  }
}

class SpawnedProcess implements Spawned {
  readonly pid: number;
  readonly status: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #out = "";
  #err = "";
  #all = "";
  #exited = false;
  #listeners = new Set<() => void>();

  constructor(
    readonly ns: string,
    cmd: string[],
    opts: { env?: Record<string, string>; stdin?: "piped" | "null" },
  ) {
    this.#child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...cmd],
      stdin: opts.stdin ?? "null",
      stdout: "piped",
      stderr: "piped",
      detached: true,
      env: { ...NAMESPACE_ENV, ...opts.env },
    }).spawn();
    this.pid = this.#child.pid;
    const reads = [
      this.#pump(this.#child.stdout, (s) => this.#out += s),
      this.#pump(this.#child.stderr, (s) => this.#err += s),
    ];
    this.status = Promise.all([this.#child.status, ...reads]).then(([st]) => {
      this.#exited = true;
      this.#notify();
      return st;
    });
  }

  /** The child's stdin when spawned with `stdin: "piped"`. */
  get stdin(): WritableStream<Uint8Array> {
    return this.#child.stdin;
  }

  output(): string {
    return this.#all;
  }

  stdout(): string {
    return this.#out;
  }

  stderr(): string {
    return this.#err;
  }

  waitForOutput(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = this.#all.match(re);
        if (m) {
          done();
          resolve(m);
        } else if (this.#exited) {
          done();
          reject(
            new Error(`Process ${this.pid} exited before printing ${re}; output:\n${this.#all}`),
          );
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `Timed out after ${timeoutMs} ms waiting for ${re} from process ${this.pid}; output:\n${this.#all}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#listeners.delete(check);
      };
      this.#listeners.add(check);
      check();
    });
  }

  async stop(
    signal: Deno.Signal = "SIGTERM",
    graceMs = STOP_GRACE_MS,
  ): Promise<Deno.CommandStatus> {
    if (this.#exited) return this.status;
    killGroup(this.pid, signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), graceMs));
    try {
      if (await Promise.race([this.status, late]) === "late") killGroup(this.pid, "SIGKILL");
    } finally {
      clearTimeout(timer);
    }
    return this.status;
  }

  async #pump(stream: ReadableStream<Uint8Array>, add: (s: string) => void): Promise<void> {
    const dec = new TextDecoder();
    try {
      for await (const chunk of stream) {
        const s = dec.decode(chunk, { stream: true });
        add(s);
        this.#all += s;
        this.#notify();
      }
    } catch {
      // The stream ends with the process.
    }
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }
}

/**
 * Deletes leftovers of runs whose creator is dead: every `dpmt-` namespace
 * whose marker names a process that no longer exists (same pid namespace,
 * same start time), or that has no marker and is older than 10 s. Processes
 * still running inside them are killed first, so the namespaces really go.
 * Live runs and markers written from another pid namespace are left alone.
 *
 * @returns the number of namespaces deleted.
 */
export async function cleanupStaleTopologies(): Promise<number> {
  const byPrefix = new Map<string, string[]>();
  for (const ns of listNamespaces()) {
    const m = /^(dpmt-[A-Za-z0-9_.]*-)/.exec(ns);
    if (!m) continue;
    // The prefix is the longest "dpmt-...-" that has a marker, else up to the second dash.
    const prefix = markerPrefixFor(ns) ?? m[1]!;
    const list = byPrefix.get(prefix) ?? [];
    list.push(ns);
    byPrefix.set(prefix, list);
  }
  // Markers without namespaces (a crash between marker and creation) go too.
  for (const prefix of listMarkers()) if (!byPrefix.has(prefix)) byPrefix.set(prefix, []);

  const myPidns = readLink("/proc/self/ns/pid");
  let deleted = 0;
  for (const [prefix, nss] of byPrefix) {
    const marker = readMarker(prefix);
    if (marker) {
      if (marker.pidns !== myPidns) continue;
      if (processAlive(marker.pid, marker.start)) continue;
    } else {
      const young = nss.some((ns) => {
        try {
          const mtime = Deno.statSync(`${NETNS_DIR}/${ns}`).mtime;
          return mtime !== null && Date.now() - mtime.getTime() < 10_000;
        } catch {
          return false;
        }
      });
      if (young) continue;
    }
    deleted += await deleteNamespaces(prefix, nss);
  }
  return deleted;
}

/**
 * Installs SIGINT and SIGTERM handlers that destroy the given topologies and
 * then exit with 130 (SIGINT) or 143 (SIGTERM).
 *
 * @returns a function that removes the handlers.
 */
export function destroyOnSignal(...topologies: { destroy(): Promise<void> }[]): () => void {
  const handlers: [Deno.Signal, () => void][] = (["SIGINT", "SIGTERM"] as const).map((sig) => [
    sig,
    () => {
      console.error(`dpm topology: ${sig}, tearing down`);
      Promise.all(topologies.map((t) => t.destroy())).finally(() => Deno.exit(128 + SIGNALS[sig]!));
    },
  ]);
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  return () => {
    for (const [sig, h] of handlers) {
      try {
        Deno.removeSignalListener(sig, h);
      } catch {
        // Already removed.
      }
    }
  };
}

// --- helpers -----------------------------------------------------------------

/** Runs `ip [...global] -batch -` with `lines`; throws with ip's message on failure. */
export async function ipBatch(global: string[], lines: string[]): Promise<void> {
  const child = new Deno.Command("ip", {
    args: [...global, "-batch", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(lines.join("\n") + "\n"));
  await w.close();
  const out = await child.output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`Command "ip ${[...global, "-batch", "-"].join(" ")}" failed: ${err}`);
  }
}

/** Kills what runs in the namespaces, deletes them and the marker. Never throws. */
async function deleteNamespaces(prefix: string, namespaces: readonly string[]): Promise<number> {
  const existing = namespaces.filter(nsExists);
  try {
    await Promise.all(existing.map(killNsPids));
  } catch (e) {
    logProblem("killing processes in namespaces", e);
  }
  if (existing.length > 0) {
    try {
      await ipBatch(["-force"], existing.map((ns) => `netns del ${ns}`));
    } catch (e) {
      logProblem(`deleting namespaces of "${prefix}"`, e);
    }
  }
  const left = existing.filter(nsExists);
  if (left.length > 0) logProblem(`deleting namespaces of "${prefix}"`, `still there: ${left}`);
  await Deno.remove(scratchPath(prefix), { recursive: true }).catch(() => {});
  try {
    if (left.length === 0) await Deno.remove(markerPath(prefix));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) logProblem(`removing marker of "${prefix}"`, e);
  }
  return existing.length - left.length;
}

/** SIGKILLs every process left in `ns` (they would keep the namespace alive). */
async function killNsPids(ns: string): Promise<void> {
  const out = await new Deno.Command("ip", { args: ["netns", "pids", ns], stderr: "null" })
    .output();
  for (const pid of new TextDecoder().decode(out.stdout).split(/\s+/).filter(Boolean)) {
    killPid(Number(pid));
  }
}

function killNsPidsSync(ns: string): void {
  const out = new Deno.Command("ip", { args: ["netns", "pids", ns], stderr: "null" })
    .outputSync();
  for (const pid of new TextDecoder().decode(out.stdout).split(/\s+/).filter(Boolean)) {
    killPid(Number(pid));
  }
}

function killPid(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 1 || pid === Deno.pid) return;
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // Gone already.
  }
}

/** Signals the process group led by `pid` (spawned detached), falling back to the process. */
function killGroup(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(-pid, signal);
  } catch {
    try {
      Deno.kill(pid, signal);
    } catch {
      // Gone already.
    }
  }
}

function nsExists(ns: string): boolean {
  try {
    Deno.statSync(`${NETNS_DIR}/${ns}`);
    return true;
  } catch {
    return false;
  }
}

function listNamespaces(): string[] {
  try {
    return [...Deno.readDirSync(NETNS_DIR)].map((e) => e.name).filter((n) =>
      n.startsWith(NS_PREFIX)
    );
  } catch {
    return [];
  }
}

function listMarkers(): string[] {
  try {
    return [...Deno.readDirSync(MARKER_DIR)]
      .map((e) => e.name)
      .filter((n) => n.startsWith(NS_PREFIX) && n.endsWith("-.pid"))
      .map((n) => n.slice(0, -".pid".length));
  } catch {
    return [];
  }
}

function markerPrefixFor(ns: string): string | null {
  for (let i = ns.length - 1; i > NS_PREFIX.length; i--) {
    if (ns[i] !== "-") continue;
    const p = ns.slice(0, i + 1);
    try {
      Deno.statSync(markerPath(p));
      return p;
    } catch {
      // Try a shorter prefix.
    }
  }
  return null;
}

function markerPath(prefix: string): string {
  return `${MARKER_DIR}/${prefix}.pid`;
}

/** The scratch directory of a topology (see {@linkcode Topology.scratch}). */
export function scratchPath(prefix: string): string {
  return `${MARKER_DIR}/${prefix}scratch`;
}

async function writeMarker(prefix: string): Promise<void> {
  await Deno.mkdir(MARKER_DIR, { recursive: true });
  const m: Marker = {
    pid: Deno.pid,
    start: processStart(Deno.pid) ?? "",
    pidns: readLink("/proc/self/ns/pid"),
  };
  try {
    await Deno.writeTextFile(markerPath(prefix), JSON.stringify(m) + "\n", { createNew: true });
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) {
      throw new Error(`Cannot use namespace prefix "${prefix}": it is in use`);
    }
    throw e;
  }
}

/** Writes a marker for an arbitrary process; for tests of {@linkcode cleanupStaleTopologies}. */
export async function _writeMarkerFor(prefix: string, pid: number): Promise<void> {
  await Deno.mkdir(MARKER_DIR, { recursive: true });
  const m: Marker = {
    pid,
    start: processStart(pid) ?? "",
    pidns: readLink("/proc/self/ns/pid"),
  };
  await Deno.writeTextFile(markerPath(prefix), JSON.stringify(m) + "\n");
}

function readMarker(prefix: string): Marker | null {
  try {
    const m = JSON.parse(Deno.readTextFileSync(markerPath(prefix)));
    if (typeof m?.pid !== "number" || typeof m.start !== "string" || typeof m.pidns !== "string") {
      return null;
    }
    return m as Marker;
  } catch {
    return null;
  }
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks), or null if no such process. */
function processStart(pid: number): string | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name (field 2) may hold spaces and parentheses: split after the last ")".
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

function processAlive(pid: number, start: string): boolean {
  const now = processStart(pid);
  return now !== null && (start === "" || now === start);
}

function readLink(path: string): string {
  try {
    return Deno.readLinkSync(path);
  } catch {
    return "";
  }
}

function randomHex(bytes: number): string {
  return [...crypto.getRandomValues(new Uint8Array(bytes))]
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

function logProblem(what: string, e: unknown): void {
  console.error(`dpm topology: problem ${what}: ${e instanceof Error ? e.message : String(e)}`);
}
