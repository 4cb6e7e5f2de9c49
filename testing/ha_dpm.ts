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
 *    a PCP mapping from one host, whose inbound reachability is probed
 *    from a peer before and after each event;
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
import { DPM_ENV, dpmCommand } from "./launch.ts";
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
  /** The PCP mapping's probe: answered before the failure, and after each event within 2 s. */
  mapping: { before: boolean; after: boolean[] };
  /** Fresh reservations answered after each event (drivers' sessions opened then). */
  events: HaEvent[];
}

const PREEMPT_DELAY_S = 2;

/** `dpm status --json` of a gateway's server. */
async function status(t: HaTopology, gw: HaGateway, dir: string): Promise<StatusReply> {
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
        o.datapath ?? "kernel",
        "--log-level",
        "debug",
        ...(o.serverArgs ?? []),
      ], { env: DPM_ENV });
      servers.set(gw.name, p);
      logs.push([`server-${gw.name}-${logs.length}`, p]);
      await p.waitForOutput(/\bready\b/, 30_000);
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
    const mapping = await startMapping(t);
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
    const mapBefore = await mapping.probe();

    await busy.fresh(true);
    const f0 = await syncCounters(t, ga);
    const cap = await startCapture(t);
    await new Promise((r) => setTimeout(r, 1500));
    const f1 = await syncCounters(t, ga);
    const events: HaEvent[] = [];
    const after: HaStatus[] = [];
    const mapAfter: boolean[] = [];
    const at = await inject(t, ga, o.failure, async () => {
      await Promise.all([
        da.kill(o.failure === "kill" ? ["keepalived"] : ["keepalived", "conntrackd"]),
        o.failure === "lan-down" ? Promise.resolve() : servers.get(ga.name)!.stop("SIGKILL", 0),
      ]);
    });
    events.push({ name: o.failure, at, to: gb.name });
    await active(gb, db);
    after.push((await status(t, gb, db.dir)).ha!);
    mapAfter.push(await mapping.probe());
    await new Promise((r) => setTimeout(r, 4000));
    if (o.failback ?? true) {
      const back = wallMs();
      await revive(t, da, o.failure, () => startServer(da));
      events.push({ name: "failback", at: back, to: ga.name });
      await active(ga, da);
      after.push((await status(t, ga, da.dir)).ha!);
      mapAfter.push(await mapping.probe());
      await new Promise((r) => setTimeout(r, 4000));
    }
    const captured = await cap.stop();
    const reports = await busy.stop();
    await mapping.stop();
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
      mapping: { before: mapBefore, after: mapAfter },
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

/** A PCP mapping from the first host, and a probe of it from the first peer. */
interface Mapping {
  /** True when a datagram from the peer to the mapping's public pair reached the host within 2 s. */
  probe(): Promise<boolean>;
  stop(): Promise<void>;
}

/**
 * A UDP echo on the first host behind a mapping that host's driver holds
 * (`dpm map`), probed from the first peer: the mapping works when the
 * peer's datagram to R:p comes back. The driver re-maps it at an epoch
 * change (the takeover's new epoch).
 */
async function startMapping(t: HaTopology): Promise<Mapping> {
  const h = t.hosts[0]!;
  const peer = t.peers[0]!;
  const port = 9999;
  const { udpEcho } = await import("./apps.ts");
  const echo = t.spawn(h.ns, udpEcho(port));
  await echo.waitForOutput(/listening/, 10_000);
  const r = await t.exec(h.ns, [
    ...dpmCommand(),
    "map",
    "udp",
    String(port),
    "--socket",
    `${t.scratch}/${h.name}.sock`,
  ], { env: DPM_ENV, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`dpm map in ${h.name}: ${r.stdout}${r.stderr}`);
  const m = /(\d+\.\d+\.\d+\.\d+):(\d+)/.exec(r.stdout);
  if (!m) throw new Error(`dpm map printed no public pair: ${r.stdout}`);
  const [pub, pport] = [m[1]!, m[2]!];
  return {
    async probe() {
      const started = wallMs();
      while (wallMs() - started < 2000) {
        const q = await t.exec(peer.ns, [
          "python3",
          "-c",
          `import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"probe",("${pub}",${pport}))
try:
  s.recvfrom(100); print("ok")
except Exception: print("no")`,
        ], { timeoutMs: 5000 });
        if (q.stdout.includes("ok")) return true;
      }
      return false;
    },
    async stop() {
      await echo.stop("SIGTERM", 1000);
    },
  };
}
