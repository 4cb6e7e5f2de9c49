/**
 * One failover run of `dpm server --ha` on the HA rig (docs/ha.md), shared
 * by tests/root/ha_root_test.ts and bench/ha.ts (mode `dpm-ha`):
 *
 * 1. the topology (testing/ha_topology.ts); on both gateways `dpm server
 *    --ha` (reading keepalived's FIFO, sharing a cookie secret file), then
 *    conntrackd and keepalived (testing/ha_daemons.ts, contrib/ha/), gwa
 *    preferred; drivers on every host;
 * 2. echo servers on the peers, the busy hosts (testing/ha_failover.ts:
 *    TCP connections and UDP flows every 20 ms, fresh sessions throughout),
 *    a `dpm map`, a PCP and a NAT-PMP mapping, whose inbound reachability
 *    is probed from a peer before and after each event;
 * 3. the sync traffic in a steady period; the standby's mirror read from
 *    its `dpm status --json`;
 * 4. the failure (`kill`: dpm and keepalived SIGKILLed; `lan-down`;
 *    `crash`), then failback (the old active as a rebooted box would come
 *    back);
 * 5. the figures (testing/ha_analysis.ts) and each gateway's HA status.
 *
 * @module
 */

import type { Spawned } from "./topology.ts";
import { createHaTopology, type HaGateway, type HaTopology } from "./ha_topology.ts";
import { type GatewayDaemons, KEEPALIVED_TEMPLATE, preparePair, VRID } from "./ha_daemons.ts";
import {
  type Failure,
  inject,
  startBusy,
  startCapture,
  startEchoes,
  syncCounters,
} from "./ha_failover.ts";
import {
  analyzeWan,
  type HaEvent,
  type HostFigures,
  summarizeHosts,
  type WanFigures,
} from "./ha_analysis.ts";
import { wallMs } from "./ha_traffic.ts";
import { denoScript, DPM_ENV, dpmCommand } from "./launch.ts";
import { waitFor } from "./wait.ts";
import type { HaStatus, StatusReply } from "../src/operator/types.ts";

/** A run's settings. */
export interface DpmHaRun {
  failure: Failure;
  /** keepalived's advert_int, seconds. @default {0.05} */
  advertInt?: number;
  /** Busy TCP connections and UDP flows. @default {100, 100} */
  tcp?: number;
  udp?: number;
  /** Fail back at the end. @default {true} */
  failback?: boolean;
  /** The data path of the servers and the drivers (`--datapath`). @default {"kernel"} */
  datapath?: "kernel" | "bpf" | "queue";
  /** Extra `dpm server` arguments on both gateways. */
  serverArgs?: string[];
  /**
   * Extra time the busy traffic runs before the failure, ms: longer than
   * the kernel's UDP conntrack timeouts (120 s), replicas live only if
   * they are refreshed (on the bpf path the packets pass conntrack by).
   * @default {0}
   */
  steadyMs?: number;
  /** Keep the logs of every process here (debugging). */
  debugDir?: string;
}

/** What a run measured. */
export interface DpmHaResult {
  wan: WanFigures;
  hosts: HostFigures;
  /** Sync link: bit/s per busy session in a steady period; bytes per fresh session. */
  sync: { bitsPerSecPerSession: number; bytesPerNewSession: number };
  /** The standby's HA status before the failure (its mirror). */
  standbyBefore: HaStatus;
  /** Each event's new active's HA status after it (its takeover). */
  after: HaStatus[];
  /**
   * The mappings (`dpm map`, PCP, NAT-PMP) probed from a peer every 50 ms:
   * their pairs; per kind, answered before the failure; after each event
   * (the failure, the old active's return) its outage and when it answered
   * again ({@linkcode mappingFigures}); the PCP / NAT-PMP client's log.
   */
  mapping: {
    pairs: Record<MappingKind, string>;
    before: Record<MappingKind, boolean>;
    after: Record<MappingKind, MappingFigures>[];
    clientLog: string;
  };
  /**
   * The standby's guard (src/ha/guard.ts), per gateway: null when its table
   * is absent, else the packets it dropped. Before the failure (the active
   * must have none, the standby one), on each event's new active just
   * after it serves (none), and on both at the end.
   */
  guard: {
    before: { active: number | null; standby: number | null };
    newActive: (number | null)[];
    end: Record<string, number | null>;
  };
  /** Fresh reservations answered after each event (drivers' sessions opened then). */
  events: HaEvent[];
}

const PREEMPT_DELAY_S = 2;

/**
 * Starts `dpm server --ha` on `d`'s gateway (keepalived's FIFO and marker,
 * conntrackd's configuration, the shared cookie secret file `secret`, G and
 * the pool, debug logs) and waits until it is ready.
 */
export async function spawnHaServer(
  t: HaTopology,
  d: GatewayDaemons,
  secret: string,
  datapath: "kernel" | "bpf" | "queue",
  extra: string[] = [],
): Promise<Spawned> {
  const gw = d.gw;
  const other = t.gateways.find((g) => g !== gw)!;
  await Deno.mkdir(d.dir, { recursive: true, mode: 0o700 });
  const p = t.spawn(gw.ns, [
    ...dpmCommand(),
    "server",
    "--ha",
    "--ha-fifo",
    `${d.dir}/notify.fifo`,
    "--ha-peer",
    other.syncText,
    "--ha-marker",
    `169.254.0.${VRID}`,
    "--ha-conntrackd-config",
    d.conntrackdConf,
    "--cookie-secret-file",
    secret,
    "--lan-if",
    gw.lanIf,
    "--wan-if",
    gw.wanIf,
    "--lan-addr",
    t.vipText,
    "--pool",
    t.poolText,
    "--socket",
    `${d.dir}/server.sock`,
    "--no-upnp",
    "--datapath",
    datapath,
    "--log-level",
    "debug",
    ...extra,
  ], { env: DPM_ENV });
  await p.waitForOutput(/\bready\b/, 30_000);
  return p;
}

/** `dpm status --json` of a gateway's server. */
export async function status(t: HaTopology, gw: HaGateway, dir: string): Promise<StatusReply> {
  const r = await t.exec(gw.ns, [
    ...dpmCommand(),
    "status",
    "--json",
    "--socket",
    `${dir}/server.sock`,
  ], {
    env: DPM_ENV,
    timeoutMs: 30_000,
  });
  if (r.code !== 0) throw new Error(`dpm status in ${gw.name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusReply;
}

/**
 * The standby's guard on `gw` (src/ha/guard.ts): null when its table is
 * absent, else the packets its rules dropped.
 */
async function guardDrops(t: HaTopology, gw: HaGateway): Promise<number | null> {
  const r = await t.exec(gw.ns, ["nft", "list", "table", "ip", "dpm_ha_guard"]);
  if (r.code !== 0) return null;
  return [...r.stdout.matchAll(/counter packets (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
}

/** Runs one failover (see the module's text). */
export async function runDpmHa(o: DpmHaRun): Promise<DpmHaResult> {
  const t = await createHaTopology({ hosts: 4, peers: 3 });
  const servers = new Map<string, Spawned>();
  const logs: [string, Spawned][] = [];
  try {
    const [ga, gb] = t.gateways;
    const secret = `${t.scratch}/cookie.secret`;
    await Deno.mkdir(t.scratch, { recursive: true, mode: 0o700 });
    await Deno.writeFile(secret, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const pair = await preparePair(t, {
      keepalivedTemplate: KEEPALIVED_TEMPLATE,
      advertInt: o.advertInt ?? 0.05,
      notify: null,
      keepalivedVars: (_gw, dir) => ({ RUN_DIR: dir, PREEMPT_DELAY: String(PREEMPT_DELAY_S) }),
    });
    const [da, db] = pair as [GatewayDaemons, GatewayDaemons];
    const startServer = async (d: GatewayDaemons) => {
      const p = await spawnHaServer(t, d, secret, o.datapath ?? "kernel", o.serverArgs ?? []);
      servers.set(d.gw.name, p);
      logs.push([`server-${d.gw.name}-${logs.length}`, p]);
    };
    const active = (gw: HaGateway, d: GatewayDaemons) =>
      waitFor(async () => (await status(t, gw, d.dir)).ha?.role === "active", {
        what: `${gw.name}'s dpm to become active`,
        timeoutMs: 20_000,
      });
    await startServer(da);
    await startServer(db);
    await da.start();
    await active(ga, da);
    await db.start();
    await new Promise((r) => setTimeout(r, 1000));

    const drivers = t.hosts.map((h) =>
      t.spawn(h.ns, [
        ...dpmCommand(),
        "driver",
        "--datapath",
        o.datapath ?? "kernel",
        "--server",
        t.vipText,
        "--socket",
        `${t.scratch}/${h.name}.sock`,
      ], { env: DPM_ENV })
    );
    drivers.forEach((d, i) => logs.push([`driver-${t.hosts[i]!.name}`, d]));
    await Promise.all(drivers.map((d) => d.waitForOutput(/ready/, 30_000)));
    await startEchoes(t);
    const mapping = await startMappings(t);
    const busy = await startBusy(t, { tcp: o.tcp ?? 100, udp: o.udp ?? 100 });
    // The UDP flows' conntracks turn ASSURED 2 s after their start; the steady period follows.
    await new Promise((r) => setTimeout(r, 3000 + (o.steadyMs ?? 0)));
    const s0 = await syncCounters(t, ga);
    const w0 = wallMs();
    await new Promise((r) => setTimeout(r, 3000));
    const s1 = await syncCounters(t, ga);
    const seconds = (wallMs() - w0) / 1000;
    const steady = s1.txBytes - s0.txBytes + s1.rxBytes - s0.rxBytes;
    const standbyBefore = (await status(t, gb, db.dir)).ha!;
    const guardBefore = { active: await guardDrops(t, ga), standby: await guardDrops(t, gb) };

    await busy.fresh(true);
    const f0 = await syncCounters(t, ga);
    const cap = await startCapture(t);
    await new Promise((r) => setTimeout(r, 1500));
    const f1 = await syncCounters(t, ga);
    // The mappings' probes, after the sync figures (their conntracks are replicated too).
    const probingSince = wallMs();
    await mapping.probe();
    const events: HaEvent[] = [];
    const after: HaStatus[] = [];
    const servingAt: number[] = [];
    const at = await inject(t, ga, o.failure, async () => {
      await Promise.all([
        da.kill(o.failure === "kill" ? ["keepalived"] : ["keepalived", "conntrackd"]),
        o.failure === "lan-down" ? Promise.resolve() : servers.get(ga.name)!.stop("SIGKILL", 0),
      ]);
    });
    events.push({ name: o.failure, at, to: gb.name });
    await active(gb, db);
    after.push((await status(t, gb, db.dir)).ha!);
    servingAt.push(wallMs());
    const guardAfter = [await guardDrops(t, gb)];
    await new Promise((r) => setTimeout(r, 4000));
    if (o.failback ?? true) {
      const back = wallMs();
      await revive(t, da, o.failure, () => startServer(da));
      events.push({ name: "failback", at: back, to: ga.name });
      await active(ga, da);
      after.push((await status(t, ga, da.dir)).ha!);
      servingAt.push(wallMs());
      guardAfter.push(await guardDrops(t, ga));
      await new Promise((r) => setTimeout(r, 4000));
    }
    const captured = await cap.stop();
    const reports = await busy.stop();
    const guardEnd = { [ga.name]: await guardDrops(t, ga), [gb.name]: await guardDrops(t, gb) };
    const ended = wallMs();
    const answered = mapping.answered();
    const clientLog = mapping.clientLog();
    await mapping.stop();
    const mapBefore = Object.fromEntries(
      MAPPING_KINDS.map((k) => [k, answered[k].some((x) => x >= probingSince && x < at)]),
    ) as Record<MappingKind, boolean>;
    const mapAfter = events.map((e, i) =>
      Object.fromEntries(MAPPING_KINDS.map((k) => [
        k,
        mappingFigures(answered[k], e.at, servingAt[i]!, events[i + 1]?.at ?? ended),
      ])) as Record<MappingKind, MappingFigures>
    );
    const wan = analyzeWan(captured.packets, events, [ga.name, gb.name], captured.claims, ga.name);
    wan.undecoded = captured.undecoded;
    const hosts = summarizeHosts(reports, events);
    const escaped = await t.escaped();
    if (escaped !== 0) throw new Error(`${escaped} packet(s) left the topology`);
    return {
      wan,
      hosts,
      sync: {
        bitsPerSecPerSession: (steady * 8) / seconds / ((o.tcp ?? 100) + (o.udp ?? 100)),
        bytesPerNewSession: (f1.txBytes - f0.txBytes + f1.rxBytes - f0.rxBytes) /
          Math.max(1, hosts.fresh[0]?.started ?? 1),
      },
      standbyBefore,
      after,
      mapping: { pairs: mapping.pairs, before: mapBefore, after: mapAfter, clientLog },
      guard: { before: guardBefore, newActive: guardAfter, end: guardEnd },
      events,
    };
  } finally {
    if (o.debugDir) {
      await Deno.mkdir(o.debugDir, { recursive: true });
      for (const [name, p] of logs) {
        await Deno.writeTextFile(`${o.debugDir}/${name}.log`, p.output()).catch(() => {});
      }
    }
    await t.destroy();
  }
}

/**
 * Brings the failed gateway back as a rebooted box would come (empty
 * conntrack and nftables, none of the shared addresses, links up), with
 * its daemons: dpm first (standby), then conntrackd and keepalived.
 */
async function revive(
  t: HaTopology,
  d: GatewayDaemons,
  failure: Failure,
  startServer: () => Promise<void>,
): Promise<void> {
  const gw = d.gw;
  if (failure === "lan-down") {
    await t.setLinks(gw, ["lan"], "up");
    return;
  }
  await d.kill(["conntrackd"]);
  await t.exec(gw.ns, ["conntrack", "-F"]);
  await t.exec(gw.ns, ["nft", "flush", "ruleset"]);
  await t.exec(gw.ns, ["ip", "addr", "del", `${t.vipText}/${t.lanPrefixLen}`, "dev", gw.lanIf]);
  for (const a of t.pool) await t.exec(gw.ns, ["ip", "addr", "del", `${a}/32`, "dev", gw.wanIf]);
  // keepalived's marker, which a killed keepalived leaves too.
  await t.exec(gw.ns, ["ip", "addr", "del", `169.254.0.${VRID}/32`, "dev", "lo"]);
  if (failure === "crash") await t.setLinks(gw, ["lan", "wan", "sync"], "up");
  await startServer();
  await d.start();
}

/** The kinds of mapping probed: `dpm map` (a driver's), PCP MAP, NAT-PMP (natpmpc). */
export const MAPPING_KINDS = ["dpm", "pcp", "natpmp"] as const;
export type MappingKind = typeof MAPPING_KINDS[number];

/** The mappings of the run, and their probes from a peer. */
interface Mappings {
  /** Their public pairs, as first granted. */
  pairs: Record<MappingKind, string>;
  /**
   * Starts the probes (not at once: each probe's fresh conntrack is
   * replicated, which the sync figures must not count) and waits until
   * each mapping answered one.
   */
  probe(): Promise<void>;
  /** Per kind, when each answered probe was sent (wall clock ms, ascending). */
  answered(): Record<MappingKind, number[]>;
  /** The PCP / NAT-PMP client's lines (testing/remap_child.ts). */
  clientLog(): string;
  stop(): Promise<void>;
}

/** Probes sent to each mapping, ms apart. */
export const PROBE_INTERVAL_MS = 50;

/**
 * The peer's prober: every {@linkcode PROBE_INTERVAL_MS} one datagram to
 * each pair, each from a fresh socket (a fixed source would leave a
 * conntrack that conntrackd replicates, and the new active would answer
 * through it without the mapping); a socket listens 1 s for its echo.
 * Prints `{"k": kind, "sent": wall ms}` per answered probe.
 */
function prober(pairs: Record<MappingKind, string>): string[] {
  const targets = MAPPING_KINDS.map((k) => {
    const [addr, port] = pairs[k].split(":");
    return `("${k}", "${addr}", ${port})`;
  }).join(", ");
  return [
    "python3",
    "-u",
    "-c",
    `
import json, select, socket, time
targets = [${targets}]
live = {}
print("probing", flush=True)
nxt = time.time()
while True:
    now = time.time()
    if now >= nxt:
        nxt += ${PROBE_INTERVAL_MS / 1000}
        for k, a, p in targets:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            sent = now * 1000
            s.sendto(("%s %.1f" % (k, sent)).encode(), (a, p))
            live[s] = (k, sent, now + 1.0)
    r, _, _ = select.select(list(live), [], [], max(0.0, nxt - time.time()))
    for s in r:
        k, sent, _ = live.pop(s)
        try:
            s.recv(200)
            print(json.dumps({"k": k, "sent": sent}), flush=True)
        except OSError:
            pass
        s.close()
    now = time.time()
    for s in [s for s, v in live.items() if v[2] < now]:
        live.pop(s)
        s.close()
`,
  ];
}

/** What {@linkcode mappingFigures} finds. */
export interface MappingFigures {
  outageMs: number;
  backAfterMs: number | null;
  withinWindow: boolean;
}

/**
 * Figures of one mapping's probes after an event at `at` (wall ms), up to
 * `end`: the longest run without an answered probe (the outage: from the
 * last answered probe before it to the first after it, ms; about the probe
 * interval when it never stopped), when the mapping answered again (the
 * end of that run, ms after the event),
 * and whether it answered within `windowMs` after `servingAt` (the new
 * active serving) and at least once more before `end`.
 */
export function mappingFigures(
  sent: number[],
  at: number,
  servingAt: number,
  end: number,
  windowMs = 2000,
): MappingFigures {
  const inWin = sent.filter((x) => x >= at && x < end);
  const before = sent.filter((x) => x < at).at(-1) ?? at;
  let outage = 0;
  let back: number | null = null;
  let prev = before;
  for (const x of inWin) {
    if (x - prev > outage) {
      outage = x - prev;
      back = x;
    }
    prev = x;
  }
  if (inWin.length === 0) back = null;
  // A probe waits 1 s for its echo: a shorter silence at the end is not an outage.
  if (inWin.length > 0 && end - prev > Math.max(outage, 1000)) {
    outage = end - prev;
    back = null; // stopped answering before the window ended
  }
  const withinWindow = sent.some((x) => x >= servingAt && x <= servingAt + windowMs);
  return {
    outageMs: Math.round(outage),
    backAfterMs: back === null ? null : Math.round(back - at),
    withinWindow,
  };
}

async function startMappings(t: HaTopology): Promise<Mappings> {
  const h = t.hosts[0]!;
  const h2 = t.hosts[1]!;
  const peer = t.peers[0]!;
  const ports: Record<MappingKind, number> = { dpm: 9999, pcp: 9998, natpmp: 9997 };
  const { udpEcho } = await import("./apps.ts");
  const echoes = [
    t.spawn(h.ns, udpEcho(ports.dpm)),
    t.spawn(h2.ns, udpEcho(ports.pcp)),
    t.spawn(h2.ns, udpEcho(ports.natpmp)),
  ];
  const stop = () => Promise.all(echoes.map((e) => e.stop("SIGTERM", 1000)));
  let client: Spawned | null = null;
  try {
    await Promise.all(echoes.map((e) => e.waitForOutput(/listening/, 10_000)));
    const r = await t.exec(h.ns, [
      ...dpmCommand(),
      "map",
      "udp",
      String(ports.dpm),
      "--socket",
      `${t.scratch}/${h.name}.sock`,
    ], { env: DPM_ENV, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`dpm map in ${h.name}: ${r.stdout}${r.stderr}`);
    const m = /(\d+\.\d+\.\d+\.\d+):(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`dpm map printed no public pair: ${r.stdout}`);
    client = t.spawn(
      h2.ns,
      denoScript(new URL("./remap_child.ts", import.meta.url).pathname, [JSON.stringify({
        gateway: t.vipText,
        client: h2.addrText,
        pcpPort: ports.pcp,
        natpmpPort: ports.natpmp,
        lifetime: 3600,
      })]),
      { env: DPM_ENV },
    );
    await client.waitForOutput(/^ready$/m, 30_000);
    const first = (kind: string) => {
      const line = client!.stdout().split("\n").find((l) =>
        l.includes('"ev":"mapped"') && l.includes(`"kind":"${kind}"`)
      );
      if (!line) throw new Error(`no ${kind} mapping: ${client!.output()}`);
      return (JSON.parse(line) as { ext: string }).ext;
    };
    const pairs: Record<MappingKind, string> = {
      dpm: `${m[1]}:${m[2]}`,
      pcp: first("pcp"),
      natpmp: first("natpmp"),
    };
    let probes: Spawned | null = null;
    const spawned = client;
    const self: Mappings = {
      pairs,
      async probe() {
        if (probes) return;
        probes = t.spawn(peer.ns, prober(pairs));
        await probes.waitForOutput(/probing/, 10_000);
        // Until each mapping answered once (or 5 s).
        const until = wallMs() + 5000;
        while (wallMs() < until && MAPPING_KINDS.some((k) => self.answered()[k].length === 0)) {
          await new Promise((r) => setTimeout(r, 100));
        }
      },
      answered() {
        const out = Object.fromEntries(MAPPING_KINDS.map((k) => [k, [] as number[]])) as Record<
          MappingKind,
          number[]
        >;
        for (const line of probes?.stdout().split("\n") ?? []) {
          if (!line.startsWith("{")) continue;
          const o = JSON.parse(line) as { k: MappingKind; sent: number };
          out[o.k]?.push(o.sent);
        }
        for (const k of MAPPING_KINDS) out[k].sort((x, y) => x - y);
        return out;
      },
      clientLog: () => spawned.output(),
      async stop() {
        await probes?.stop("SIGTERM", 1000);
        await spawned.stop("SIGTERM", 1000);
        await stop();
      },
    };
    return self;
  } catch (e) {
    await client?.stop("SIGTERM", 1000);
    await stop();
    throw e;
  }
}
