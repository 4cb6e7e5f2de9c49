/**
 * `deno task bench:ha` (as root): failover of a gateway pair, measured the
 * way issue 21 asks, on the HA topology (testing/ha_topology.ts: 4 hosts, 2
 * gateways, a router, 3 peers, all namespaces).
 *
 * Modes:
 *
 * - `anchor`, the "before": plain iptables SNAT to a VRRP address on both
 *   gateways, keepalived 2.2.7 (VRRPv3, unicast adverts on the LAN) moving G
 *   and the public address itself (`virtual_ipaddress`) and calling the
 *   steps of Debian's primary-backup.sh from `notify`
 *   (bench/ha/anchor-notify.sh: conntrackd -c, -f, -R, -B), conntrackd
 *   1.4.7 FTFW over the dedicated sync link (contrib/ha/conntrackd.conf.in,
 *   with the external cache on or off, `--cache`), SNAT keeping ports or
 *   `--random-fully` (`--snat kept,random`).
 * - `ordered`, the prototype of dpm's takeover (docs/ha.md): the same SNAT
 *   and conntrackd, but keepalived owns only the VRRP state
 *   (contrib/ha/keepalived.conf.in, a marker address only); its notify FIFO
 *   reader (contrib/ha/dpm-ha-notify) makes sure the state is in the
 *   kernel, then adds G and the pool and sends the gratuitous ARPs itself.
 * - `dpm-kernel`: dpm on the kernel path (server on the active, drivers on
 *   every host), the standby running bench/ha/standby_mirror.ts (dpm's
 *   maps rebuilt from the replicated conntracks) and the ordered hook with
 *   bench/ha/mirror-sync as its PREPARE (`--mirror-sync cycle|recent|alive`);
 *   no dpm server starts on the new active within the run: the figures are
 *   the kernel's takeover alone.
 * - `dpm`: the same, and dpm's server started on the new active as soon as
 *   it holds G (it adopts the mirrored maps).
 * - `dpm-ha`: `dpm server --ha` on both gateways (step 2: the standby
 *   mirrors from conntrack events, dpm reads keepalived's FIFO and orders
 *   the takeover itself), with a `dpm map` mapping probed from a peer
 *   (testing/ha_dpm.ts); its own table (`--datapath bpf` runs it on the
 *   bpf path; `--steady-ms` lets the busy traffic run longer before the
 *   failure; `--server-args` adds `dpm server` flags).
 *
 * Each run: 100 TCP connections and 100 UDP flows busy (a message every
 * 20 ms each) from the hosts to the peers' echo servers, fresh sessions
 * opened every 100 ms per host, the WAN captured (testing/ha_failover.ts);
 * after a steady period (sync bytes measured on the sync link) the active
 * gateway fails (`crash`: links down and daemons SIGKILLed at once; `kill`:
 * keepalived and dpm SIGKILLed, the kernel goes on; `lan-down`), then
 * (unless `--no-failback`) it comes back and takes over again. The figures (testing/ha_analysis.ts): takeover time
 * (failure to the first translated UDP packet from the new active), when
 * the new active claimed the addresses (its first gratuitous ARP on the WAN)
 * and when its notify hook had committed conntrackd's state, RSTs, UDP
 * datagrams lost per flow, packets that left from a wrong public pair,
 * sessions whose pair changed, fresh sessions that failed, and sync bytes
 * per busy session.
 *
 * ```sh
 * sudo deno task bench:ha                                   # anchor and ordered, every failure, both intervals
 * deno run -A bench/ha.ts --modes anchor --advert 0.05 --failures crash --rounds 1
 * deno run -A bench/ha.ts --json --out /tmp/ha
 * deno run -A bench/ha.ts --modes dpm-ha --advert 0.05 --failures kill,lan-down,crash
 * ```
 *
 * Prints a Markdown table (or JSON) on stdout, progress on stderr; with
 * `--out DIR` writes ha.json and ha.md there.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { createHaTopology, type HaGateway, type HaTopology } from "../testing/ha_topology.ts";
import {
  type GatewayDaemons,
  holdsVip,
  KEEPALIVED_ANCHOR_TEMPLATE,
  KEEPALIVED_TEMPLATE,
  preparePair,
} from "../testing/ha_daemons.ts";
import {
  type Failure,
  inject,
  startBusy,
  startCapture,
  startEchoes,
  syncCounters,
} from "../testing/ha_failover.ts";
import {
  analyzeWan,
  type HaEvent,
  type HostFigures,
  summarizeHosts,
  type WanFigures,
} from "../testing/ha_analysis.ts";
import { wallMs } from "../testing/ha_traffic.ts";
import { destroyOnSignal, type Spawned } from "../testing/topology.ts";
import { denoScript, DPM_ENV, dpmCommand } from "../testing/launch.ts";
import { type DpmHaResult, MAPPING_KINDS, runDpmHa } from "../testing/ha_dpm.ts";
import { waitFor } from "../testing/wait.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const ANCHOR_NOTIFY = `${ROOT}bench/ha/anchor-notify.sh`;
const DPM_NOTIFY = `${ROOT}contrib/ha/dpm-ha-notify`;
const MIRROR = `${ROOT}bench/ha/standby_mirror.ts`;
const MIRROR_SYNC = `${ROOT}bench/ha/mirror-sync`;
/** The standby mirror's cycle. */
const MIRROR_INTERVAL_MS = 100;
/**
 * The takeover hook's PREPARE accepts a mirror cycle that began this long
 * before the takeover: `--mirror-sync recent` 2.5 cycles (the default),
 * `cycle` 0 (it waits for a new one), `alive` 5 s (the mirror only has to be
 * running: established sessions are translated by their replicated
 * conntracks, which need no mirror; docs/ha.md).
 */
let mirrorMaxAgeMs = 250;
const MIRROR_SYNC_AGES: Record<string, number> = { cycle: 0, recent: 250, alive: 5000 };
/** The ordered mode's preempt_delay: a returning gateway's time to resync before it takes over. */
const PREEMPT_DELAY_S = 2;

/** How a run's pair is set up. */
export type Mode = "anchor" | "ordered" | "dpm" | "dpm-kernel" | "dpm-ha";

/** Whether a mode runs dpm (server and drivers) instead of SNAT. */
const runsDpm = (m: Mode) => m === "dpm" || m === "dpm-kernel";

/** One run's settings. */
export interface RunConfig {
  mode: Mode;
  advertInt: number;
  failure: Failure;
  /** conntrackd DisableExternalCache. */
  disableExternalCache: boolean;
  failback: boolean;
  tcp: number;
  udp: number;
  /** SNAT with --random-fully (modes anchor and ordered): no port preservation, so a packet that beats the state gets a new pair. */
  snatRandom: boolean;
}

/** One run's figures. */
export interface RunResult {
  config: RunConfig;
  wan: WanFigures;
  hosts: HostFigures;
  /** Per event: ms from the event to the new active's notify hook starting and its state being committed. */
  hooks: { notifyMs: number | null; committedMs: number | null }[];
  /**
   * Sync link, both ways: in the steady period (busy sessions only, after
   * their state settled), bytes per second and bit/s per busy session; and
   * while fresh sessions are opened, bytes per fresh session.
   */
  sync: {
    bytesPerSec: number;
    bitsPerSecPerSession: number;
    seconds: number;
    bytesPerNewSession: number;
  };
  /** tcpdump's own drops (the figures undercount when > 0). */
  captureDropped: number;
  /** Mode dpm, per event: ms from the event until the new active's dpm server said ready. */
  dpmReadyMs: (number | null)[];
}

const log = (s: string) => console.error(`bench:ha: ${s}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Commands run in a gateway so that its SNAT and addresses are as the mode wants. */
async function setupGateway(t: HaTopology, gw: HaGateway, random: boolean): Promise<void> {
  const r = await t.exec(gw.ns, [
    "iptables",
    "-t",
    "nat",
    "-A",
    "POSTROUTING",
    "-o",
    gw.wanIf,
    "-s",
    t.lanCidr,
    "-j",
    "SNAT",
    "--to-source",
    t.pool[0]!,
    ...(random ? ["--random-fully"] : []),
  ]);
  if (r.code !== 0) throw new Error(`SNAT in ${gw.name}: ${r.stderr}`);
}

/** The notify hook's log lines: "<epoch s> notify MASTER", "<epoch s> done conntrackd ... -c rc=0". */
async function hookTimes(
  d: GatewayDaemons,
  e: HaEvent,
  until: number,
): Promise<{ notifyMs: number | null; committedMs: number | null }> {
  let text = "";
  try {
    text = await Deno.readTextFile(`${d.dir}/notify.log`);
  } catch {
    return { notifyMs: null, committedMs: null };
  }
  let notifyMs: number | null = null;
  let committedMs: number | null = null;
  for (const line of text.split("\n")) {
    const m = /^(\d+\.\d+) (.*)$/.exec(line);
    if (!m) continue;
    const ms = Number(m[1]) * 1000;
    if (ms < e.at || ms >= until) continue;
    if (notifyMs === null && / ?notify MASTER/.test(m[2]!)) notifyMs = ms - e.at;
    if (committedMs === null && /committed|done conntrackd .* -c /.test(m[2]!)) {
      committedMs = ms - e.at;
    }
  }
  return { notifyMs, committedMs };
}

/** Brings a failed gateway back as a rebooted box would come: empty conntrack, no addresses it held. */
async function revive(
  t: HaTopology,
  d: GatewayDaemons,
  failure: Failure,
  mode: Mode,
  snatRandom: boolean,
): Promise<void> {
  const gw = d.gw;
  if (failure === "crash") {
    await t.exec(gw.ns, ["conntrack", "-F"]);
    // A rebooted box has no nftables state either; the anchor's SNAT rule comes back with its configuration.
    await t.exec(gw.ns, ["nft", "flush", "ruleset"]);
    for (const a of [`${t.vipText}/${t.lanPrefixLen}`]) {
      await t.exec(gw.ns, ["ip", "addr", "del", a, "dev", gw.lanIf]);
    }
    for (const a of t.pool) await t.exec(gw.ns, ["ip", "addr", "del", `${a}/32`, "dev", gw.wanIf]);
    await t.setLinks(gw, ["lan", "wan", "sync"], "up");
    if (!runsDpm(mode)) await setupGateway(t, gw, snatRandom);
    await d.start();
  } else if (failure === "kill") {
    await d.kill(["conntrackd"]);
    await d.start();
  } else {
    await t.setLinks(gw, ["lan"], "up");
  }
}

/**
 * Mode dpm: what runs on each gateway. The active runs `dpm server` (kernel
 * path); the standby runs the mirror (bench/ha/standby_mirror.ts). The
 * bench switches them when the VRRP role moves, as `dpm server --ha` will
 * itself in step 2 (docs/ha.md).
 */
class DpmRoles {
  readonly server = new Map<string, Spawned>();
  readonly mirror = new Map<string, Spawned>();
  constructor(readonly t: HaTopology) {}

  serverArgs(gw: HaGateway, dir: string): string[] {
    return [
      "server",
      "--lan-if",
      gw.lanIf,
      "--wan-if",
      gw.wanIf,
      "--lan-addr",
      this.t.vipText,
      "--pool",
      this.t.poolText,
      "--socket",
      `${dir}/server.sock`,
    ];
  }

  /** Starts dpm's server on `gw` (after the mirror there stopped); resolves when it is ready. */
  async active(gw: HaGateway, dir: string): Promise<void> {
    await this.mirror.get(gw.name)?.stop("SIGTERM", 2000);
    this.mirror.delete(gw.name);
    const p = this.t.spawn(gw.ns, [...dpmCommand(), ...this.serverArgs(gw, dir)], { env: DPM_ENV });
    this.server.set(gw.name, p);
    await p.waitForOutput(/ready/, 30_000);
  }

  /** Stops dpm's server on `gw`, if it runs (SIGTERM: the kernel path keeps its state), starts the mirror. */
  async standby(gw: HaGateway, dir: string): Promise<void> {
    await this.server.get(gw.name)?.stop("SIGTERM", 5000);
    this.server.delete(gw.name);
    if (this.mirror.has(gw.name)) return;
    await Deno.remove(`${dir}/mirror.done`).catch(() => {});
    const p = this.t.spawn(
      gw.ns,
      denoScript(MIRROR, [
        "--lan-if",
        gw.lanIf,
        "--wan-if",
        gw.wanIf,
        "--lan-addr",
        this.t.vipText,
        "--lan-cidr",
        this.t.lanCidr,
        "--pool",
        this.t.poolText,
        "--interval-ms",
        String(MIRROR_INTERVAL_MS),
        "--pid-file",
        `${dir}/mirror.pid`,
        "--done-file",
        `${dir}/mirror.done`,
      ]),
    );
    this.mirror.set(gw.name, p);
    await waitFor(async () => {
      try {
        await Deno.stat(`${dir}/mirror.done`);
        return true;
      } catch {
        return false;
      }
    }, { what: `the mirror on ${gw.name}`, timeoutMs: 30_000 });
  }

  /** SIGKILLs dpm's server on `gw` (a crash). */
  async kill(gw: HaGateway): Promise<void> {
    await this.server.get(gw.name)?.stop("SIGKILL", 0);
    this.server.delete(gw.name);
    await this.mirror.get(gw.name)?.stop("SIGKILL", 0);
    this.mirror.delete(gw.name);
  }
}

/** Starts a driver on every host; resolves when all are ready. */
async function startDrivers(t: HaTopology): Promise<Spawned[]> {
  const ds = t.hosts.map((h) =>
    t.spawn(h.ns, [
      ...dpmCommand(),
      "driver",
      "--server",
      t.vipText,
      "--socket",
      `${t.scratch}/${h.name}.sock`,
    ], { env: DPM_ENV })
  );
  await Promise.all(ds.map((d) => d.waitForOutput(/ready/, 30_000)));
  return ds;
}

/**
 * With `--debug DIR`: the gateways' conntrack tables, nftables rulesets and
 * addresses, written to DIR/<label>-<gw>.txt at a few moments of a run.
 */
let debugDir = "";

/**
 * With `--tcp-liberal`: `net.netfilter.nf_conntrack_tcp_be_liberal=1` on both
 * gateways, so that no TCP segment of a known conntrack is judged out of its
 * window (INVALID, hence not translated) after two conntrackds updated each
 * other's entries (docs/ha.md, "kill").
 */
let tcpLiberal = false;

async function dumpState(t: HaTopology, label: string): Promise<void> {
  if (!debugDir) return;
  await Deno.mkdir(debugDir, { recursive: true });
  for (const g of t.gateways) {
    const parts: string[] = [];
    for (
      const cmd of [
        ["ip", "-br", "addr"],
        ["conntrack", "-L", "-f", "ipv4"],
        ["nft", "list", "ruleset"],
      ]
    ) {
      const r = await t.exec(g.ns, cmd);
      parts.push(`# ${cmd.join(" ")}\n${r.stdout}${r.stderr}`);
    }
    await Deno.writeTextFile(`${debugDir}/${label}-${g.name}.txt`, parts.join("\n"));
  }
}

async function run(c: RunConfig): Promise<RunResult> {
  const t = await createHaTopology({ hosts: 4, peers: 3 });
  const undo = destroyOnSignal(t);
  try {
    const [ga, gb] = t.gateways;
    if (tcpLiberal) {
      for (const g of t.gateways) {
        await t.exec(g.ns, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"]);
      }
    }
    if (!runsDpm(c.mode)) { for (const g of t.gateways) await setupGateway(t, g, c.snatRandom); }
    const pair = await preparePair(t, {
      keepalivedTemplate: c.mode === "anchor" ? KEEPALIVED_ANCHOR_TEMPLATE : KEEPALIVED_TEMPLATE,
      advertInt: c.advertInt,
      disableExternalCache: c.disableExternalCache,
      notify: (_gw, dir) =>
        c.mode === "anchor"
          ? `${ANCHOR_NOTIFY} ${dir}/conntrackd.conf ${dir}/notify.log`
          : `${DPM_NOTIFY} ${dir}/hook.env`,
      keepalivedVars: (gw, dir) =>
        c.mode === "anchor"
          ? {
            VIRTUAL_ADDRESSES: [
              `${t.vipText}/${t.lanPrefixLen} dev ${gw.lanIf}`,
              ...t.pool.map((a) => `${a}/32 dev ${gw.wanIf}`),
            ].join("\n"),
          }
          : { RUN_DIR: dir, PREEMPT_DELAY: String(PREEMPT_DELAY_S) },
    });
    if (c.mode !== "anchor") {
      for (const d of pair) await writeHookEnv(t, d, runsDpm(c.mode));
    }
    const [da, db] = pair as [GatewayDaemons, GatewayDaemons];
    const roles = new DpmRoles(t);
    await da.start();
    await waitFor(() => holdsVip(t, ga), {
      what: `${ga.name} to become active`,
      timeoutMs: 10_000,
    });
    if (runsDpm(c.mode)) {
      await roles.active(ga, da.dir);
      await roles.standby(gb, db.dir);
    }
    await db.start();
    await sleep(500);
    const drivers = runsDpm(c.mode) ? await startDrivers(t) : [];
    await startEchoes(t);
    const busy = await startBusy(t, { tcp: c.tcp, udp: c.udp });
    // The busy UDP flows' conntracks turn ASSURED 2 s after their start (one
    // update each on the sync link); the steady period starts after that.
    await sleep(3000);
    const s0 = await syncCounters(t, ga);
    const w0 = wallMs();
    await sleep(3000);
    const s1 = await syncCounters(t, ga);
    const seconds = (wallMs() - w0) / 1000;
    const bytes = s1.txBytes - s0.txBytes + s1.rxBytes - s0.rxBytes;

    await busy.fresh(true);
    const f0 = await syncCounters(t, ga);
    const cap = await startCapture(t);
    await sleep(1500);
    const f1 = await syncCounters(t, ga);
    await dumpState(t, "before");
    const events: HaEvent[] = [];
    const dpmReady: (number | null)[] = [];
    const at = await inject(t, ga, c.failure, async () => {
      await Promise.all([
        da.kill(c.failure === "kill" ? ["keepalived"] : ["keepalived", "conntrackd"]),
        runsDpm(c.mode) && c.failure !== "lan-down" ? roles.kill(ga) : Promise.resolve(),
      ]);
    });
    events.push({ name: c.failure, at, to: gb.name });
    await waitFor(() => holdsVip(t, gb), { what: `${gb.name} to take over`, timeoutMs: 10_000 });
    await dumpState(t, "takeover");
    // dpm-kernel: no dpm server starts on the new active within the run, so
    // the figures are those of the kernel's takeover alone (replicated
    // conntracks, mirrored maps, the ordered hook).
    if (c.mode === "dpm") {
      await roles.active(gb, db.dir);
      dpmReady.push(wallMs() - at);
    }
    if (runsDpm(c.mode) && c.failure === "lan-down") await roles.standby(ga, da.dir);
    await sleep(4000);
    await dumpState(t, "after");
    if (c.failback) {
      const back = wallMs();
      await revive(t, da, c.failure, c.mode, c.snatRandom);
      if (runsDpm(c.mode)) await roles.standby(ga, da.dir);
      events.push({ name: "failback", at: back, to: ga.name });
      await waitFor(() => holdsVip(t, ga), {
        what: `${ga.name} to take over again`,
        timeoutMs: 20_000,
      });
      if (c.mode === "dpm") {
        await roles.standby(gb, db.dir);
        await roles.active(ga, da.dir);
        dpmReady.push(wallMs() - back);
      } else if (c.mode === "dpm-kernel") {
        await roles.standby(gb, db.dir);
      }
      await sleep(4000);
    }
    const captured = await cap.stop();
    const reports = await busy.stop();
    if (debugDir) {
      await Deno.writeTextFile(
        `${debugDir}/capture.json`,
        JSON.stringify({ events, packets: captured.packets, claims: captured.claims, reports }),
      );
      const logs = [
        ...drivers.map((d, i) => [`driver-${t.hosts[i]!.name}`, d] as const),
        ...[...roles.server].map(([g, p]) => [`server-${g}`, p] as const),
      ];
      for (const [name, p] of logs) await Deno.writeTextFile(`${debugDir}/${name}.log`, p.output());
    }
    const wan = analyzeWan(captured.packets, events, [ga.name, gb.name], captured.claims, ga.name);
    wan.undecoded = captured.undecoded;
    const hooks = await Promise.all(
      events.map((e, i) => hookTimes(e.to === ga.name ? da : db, e, events[i + 1]?.at ?? Infinity)),
    );
    const escaped = await t.escaped();
    if (escaped !== 0) throw new Error(`${escaped} packet(s) left the topology`);
    const hosts = summarizeHosts(reports, events);
    const sync = {
      bytesPerSec: bytes / seconds,
      bitsPerSecPerSession: (bytes * 8) / seconds / (c.tcp + c.udp),
      seconds,
      bytesPerNewSession: (f1.txBytes - f0.txBytes + f1.rxBytes - f0.rxBytes) /
        Math.max(1, hosts.fresh[0]!.started),
    };
    return {
      config: c,
      wan,
      hosts,
      hooks,
      sync,
      captureDropped: captured.dropped,
      dpmReadyMs: dpmReady,
    };
  } finally {
    undo();
    await t.destroy();
  }
}

/**
 * The ordered hook's environment file (contrib/ha/dpm-ha-notify reads it):
 * which addresses to claim on which link, conntrackd's configuration, the
 * log.
 */
async function writeHookEnv(t: HaTopology, d: GatewayDaemons, mirror: boolean): Promise<void> {
  await Deno.mkdir(d.dir, { recursive: true, mode: 0o700 });
  const env = [
    `LAN_IF=${d.gw.lanIf}`,
    `WAN_IF=${d.gw.wanIf}`,
    `LAN_ADDRESSES="${t.vipText}/${t.lanPrefixLen}"`,
    `WAN_ADDRESSES="${t.pool.map((a) => `${a}/32`).join(" ")}"`,
    `CONNTRACKD_CONF=${d.dir}/conntrackd.conf`,
    `LOG=${d.dir}/notify.log`,
    ...(mirror
      ? [`PREPARE="${MIRROR_SYNC} ${d.dir}/mirror.pid ${d.dir}/mirror.done ${mirrorMaxAgeMs}"`]
      : []),
  ];
  await Deno.writeTextFile(`${d.dir}/hook.env`, env.join("\n") + "\n", { mode: 0o600 });
}

const fmt = (x: number | null, digits = 0) => x === null ? "-" : x.toFixed(digits);

/** The Markdown table of the runs. */
export function markdown(results: readonly RunResult[]): string {
  const head = [
    "mode",
    "SNAT ports",
    "advert_int",
    "failure",
    "ext. cache",
    "event",
    "takeover ms",
    "claim ms",
    "hook start ms",
    "hook committed ms",
    "TCP broken",
    "RST in/out",
    "UDP lost (sum / max per flow / flows)",
    "wrong-pair pkts (flows)",
    "stray TCP",
    "misrouted",
    "pairs changed",
    "fresh ok/failed",
    "spurious claims before",
    "sync bit/s per busy session",
    "sync B per new session",
    "dpm ready ms",
  ];
  const rows = [head.join(" | "), head.map(() => "---").join(" | ")];
  for (const r of results) {
    r.wan.windows.forEach((w, i) => {
      const f = r.hosts.fresh[i + 1]!;
      rows.push([
        r.config.mode,
        runsDpm(r.config.mode) ? "dpm" : r.config.snatRandom ? "random" : "kept",
        String(r.config.advertInt),
        r.config.failure,
        r.config.disableExternalCache ? "off" : "on",
        w.event,
        fmt(w.takeoverMs),
        fmt(w.claimMs),
        fmt(r.hooks[i]?.notifyMs ?? null),
        fmt(r.hooks[i]?.committedMs ?? null),
        i === 0 ? String(r.hosts.tcpBroken) : "",
        `${w.rstIn}/${w.rstOut}`,
        i === 0 ? `${r.hosts.udpLost} / ${r.hosts.udpLostMax} / ${r.hosts.udpFlowsWithLoss}` : "",
        `${w.wrongPair} (${w.wrongPairFlows.length})`,
        String(w.strayTcp),
        String(w.misrouted),
        i === 0 ? String(r.wan.pairChanged.length) : "",
        `${f.ok}/${f.failed}`,
        i === 0 ? String(r.wan.spuriousClaims) : "",
        i === 0 ? r.sync.bitsPerSecPerSession.toFixed(1) : "",
        i === 0 ? r.sync.bytesPerNewSession.toFixed(0) : "",
        fmt(r.dpmReadyMs[i] ?? null),
      ].join(" | "));
    });
  }
  return rows.map((r) => `| ${r} |`).join("\n") + "\n";
}

function parseArgs(argv: string[]) {
  const o = {
    modes: ["anchor", "ordered"] as Mode[],
    adverts: [0.1, 0.05],
    failures: ["crash", "kill", "lan-down"] as Failure[],
    caches: [true, false],
    rounds: 1,
    tcp: 100,
    udp: 100,
    failback: true,
    snatRandom: [false],
    json: false,
    out: "",
    serverArgs: [] as string[],
    datapath: "kernel" as "kernel" | "bpf",
    steadyMs: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new TypeError(`Flag ${a} needs a value`);
      return x;
    };
    if (a === "--modes") o.modes = v().split(",") as Mode[];
    else if (a === "--advert") o.adverts = v().split(",").map(Number);
    else if (a === "--failures") o.failures = v().split(",") as Failure[];
    else if (a === "--cache") o.caches = v().split(",").map((x) => x === "off");
    else if (a === "--rounds") o.rounds = Number(v());
    else if (a === "--tcp") o.tcp = Number(v());
    else if (a === "--udp") o.udp = Number(v());
    else if (a === "--no-failback") o.failback = false;
    else if (a === "--snat") o.snatRandom = v().split(",").map((x) => x === "random");
    else if (a === "--json") o.json = true;
    else if (a === "--out") o.out = v();
    else if (a === "--debug") debugDir = v();
    else if (a === "--server-args") o.serverArgs = v().split(" ").filter(Boolean);
    else if (a === "--datapath") o.datapath = v() as "kernel" | "bpf";
    else if (a === "--steady-ms") o.steadyMs = Number(v());
    else if (a === "--tcp-liberal") tcpLiberal = true;
    else if (a === "--mirror-sync") {
      const age = MIRROR_SYNC_AGES[v()];
      if (age === undefined) throw new TypeError(`--mirror-sync takes cycle, recent or alive`);
      mirrorMaxAgeMs = age;
    } else throw new TypeError(`Unknown flag "${a}"`);
  }
  for (const m of o.modes) {
    if (!["anchor", "ordered", "dpm", "dpm-kernel", "dpm-ha"].includes(m)) {
      throw new TypeError(`Unknown mode "${m}"`);
    }
  }
  for (const f of o.failures) {
    if (!["crash", "kill", "lan-down"].includes(f)) throw new TypeError(`Unknown failure "${f}"`);
  }
  return o;
}

/** One row of mode `dpm-ha` (`dpm server --ha`, testing/ha_dpm.ts). */
interface DpmHaRow {
  advertInt: number;
  failure: Failure;
  datapath: string;
  r: DpmHaResult;
}

/** Mode `dpm-ha`'s table: dpm itself on both gateways, the figures issue 21 asks for. */
function dpmHaMarkdown(rows: DpmHaRow[]): string {
  const head = [
    "advert_int",
    "failure",
    "path",
    "takeover ms",
    "claim ms",
    "dpm claim/serve ms",
    "TCP broken",
    "RST in/out",
    "UDP lost max/flow",
    "wrong-pair pkts",
    "pairs changed",
    "mappings back ms after the event (dpm/pcp/natpmp)",
    "fresh ok/failed after",
    "failback takeover ms",
    "failback RST, wrong-pair",
    "mirrored",
    "sync bit/s/session",
    "sync B/new session",
  ];
  const out = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  const ms = (v: number | null | undefined) =>
    v === null || v === undefined ? "-" : String(Math.round(v));
  for (const { advertInt, failure, datapath, r } of rows) {
    const [w0, w1] = r.wan.windows;
    const f1 = r.hosts.fresh[1];
    const a0 = r.after[0];
    out.push(`| ${
      [
        advertInt,
        failure,
        datapath,
        ms(w0?.takeoverMs),
        ms(w0?.claimMs),
        a0 ? `${a0.lastClaimMs}/${a0.lastTakeoverMs}` : "-",
        r.hosts.tcpBroken,
        w0 ? `${w0.rstIn}/${w0.rstOut}` : "-",
        r.hosts.udpLostMax,
        w0?.wrongPair ?? "-",
        r.wan.pairChanged.length,
        r.mapping.after.map((x) =>
          MAPPING_KINDS.map((k) => x[k].backAfterMs === null ? "broken" : String(x[k].backAfterMs))
            .join("/")
        ).join(", "),
        f1 ? `${f1.ok}/${f1.failed}` : "-",
        ms(w1?.takeoverMs),
        w1 ? `${w1.rstIn + w1.rstOut}, ${w1.wrongPair}` : "-",
        r.standbyBefore.mirror.sessions,
        r.sync.bitsPerSecPerSession.toFixed(1),
        r.sync.bytesPerNewSession.toFixed(0),
      ].join(" | ")
    } |`);
  }
  return out.join("\n") + "\n";
}

async function main(): Promise<number> {
  const o = parseArgs(Deno.args);
  const results: RunResult[] = [];
  const haRows: DpmHaRow[] = [];
  for (const advertInt of o.modes.includes("dpm-ha") ? o.adverts : []) {
    for (const failure of o.failures) {
      for (let round = 0; round < o.rounds; round++) {
        log(`dpm-ha advert ${advertInt} ${failure} round ${round + 1}/${o.rounds}`);
        try {
          const r = await runDpmHa({
            failure,
            advertInt,
            tcp: o.tcp,
            udp: o.udp,
            failback: o.failback,
            serverArgs: o.serverArgs,
            datapath: o.datapath,
            steadyMs: o.steadyMs,
            ...(debugDir ? { debugDir: `${debugDir}/${failure}-${advertInt}-${round}` } : {}),
          });
          haRows.push({ advertInt, failure, datapath: o.datapath, r });
          log(dpmHaMarkdown([haRows.at(-1)!]).split("\n").slice(2).join("\n"));
        } catch (e) {
          log(`run failed: ${(e as Error).stack ?? e}`);
        }
      }
    }
  }
  o.modes = o.modes.filter((m) => m !== "dpm-ha");
  for (const mode of o.modes) {
    for (const advertInt of o.adverts) {
      for (const failure of o.failures) {
        for (const disableExternalCache of o.caches) {
          for (const snatRandom of runsDpm(mode) ? [false] : o.snatRandom) {
            for (let round = 0; round < o.rounds; round++) {
              const c: RunConfig = {
                mode,
                advertInt,
                failure,
                disableExternalCache,
                failback: o.failback,
                tcp: o.tcp,
                udp: o.udp,
                snatRandom,
              };
              log(`${JSON.stringify(c)} round ${round + 1}/${o.rounds}`);
              try {
                const r = await run(c);
                results.push(r);
                log(markdown([r]).split("\n").slice(2).join("\n"));
              } catch (e) {
                log(`run failed: ${(e as Error).stack ?? e}`);
              }
            }
          }
        }
      }
    }
  }
  const md = (results.length ? markdown(results) : "") +
    (haRows.length ? `\n${dpmHaMarkdown(haRows)}` : "");
  if (o.out) {
    await Deno.mkdir(o.out, { recursive: true });
    await Deno.writeTextFile(
      `${o.out}/ha.json`,
      JSON.stringify({ results, dpmHa: haRows }, null, 2) + "\n",
    );
    await Deno.writeTextFile(`${o.out}/ha.md`, md);
  }
  console.log(o.json ? JSON.stringify({ results, dpmHa: haRows }, null, 2) : md);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
