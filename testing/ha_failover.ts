/**
 * Failure injection and measurement on an HA topology
 * (testing/ha_topology.ts), shared by the HA root tests and the HA
 * benchmark (bench/ha.ts):
 *
 * - {@linkcode startEchoes}: a TCP and a UDP echo server on every peer
 *   (testing/apps.ts: they answer with the source pair they saw);
 * - {@linkcode startBusy}: testing/ha_traffic.ts on every host, the busy
 *   TCP connections and UDP flows spread over hosts and peers, fresh
 *   sessions opened throughout;
 * - {@linkcode startCapture}: tcpdump on the WAN segment (the router's
 *   bridge `gw0`, which sees every frame between the gateways and the
 *   router, with the sender's MAC), read back by testing/pcap.ts;
 * - {@linkcode inject}: a failure of the active gateway, timestamped;
 * - {@linkcode syncCounters}: bytes on the dedicated sync link.
 *
 * The figures come from testing/ha_analysis.ts.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import type { Spawned } from "./topology.ts";
import type { HaGateway, HaTopology } from "./ha_topology.ts";
import { denoScript } from "./launch.ts";
import { tcpEcho, udpEcho } from "./apps.ts";
import { type TrafficPlan, type TrafficReport, wallMs } from "./ha_traffic.ts";
import { readPcap } from "./pcap.ts";
import { type Claim, type WanPacket, wanPackets } from "./ha_analysis.ts";

const TRAFFIC = fileURLToPath(new URL("./ha_traffic.ts", import.meta.url));

/** The port of the peers' echo servers (TCP and UDP). */
export const ECHO_PORT = 7;

/** Starts a TCP and a UDP echo server on every peer; waits until they listen. */
export async function startEchoes(t: HaTopology): Promise<Spawned[]> {
  const procs: Spawned[] = [];
  for (const p of t.peers) {
    procs.push(t.spawn(p.ns, udpEcho(ECHO_PORT)), t.spawn(p.ns, tcpEcho(ECHO_PORT)));
  }
  await Promise.all(procs.map((s) => s.waitForOutput(/listening/, 10_000)));
  return procs;
}

/** Options of {@linkcode startBusy}. */
export interface BusyOptions {
  /** Busy TCP connections in all, spread over the hosts. */
  tcp: number;
  /** Busy UDP flows in all. */
  udp: number;
  /** One message per flow every this many ms. @default {20} */
  intervalMs?: number;
  /** One fresh session per host every this many ms (0: none). @default {100} */
  freshEveryMs?: number;
}

/** The hosts' traffic, running. */
export interface Busy {
  /** Starts (true) or pauses (false) the fresh sessions on every host. */
  fresh(on: boolean): Promise<void>;
  /** Stops sending, waits for the last echoes, returns every host's report. */
  stop(): Promise<TrafficReport[]>;
  /** The flow ids, per protocol. */
  readonly ids: { tcp: string[]; udp: string[] };
}

/**
 * Starts testing/ha_traffic.ts on every host: flow i goes from host
 * `i % hosts` to peer `i % peers`. Resolves once every host says `ready`.
 */
export async function startBusy(t: HaTopology, o: BusyOptions): Promise<Busy> {
  const plans: TrafficPlan[] = t.hosts.map((h) => ({
    tcp: [],
    udp: [],
    intervalMs: o.intervalMs ?? 20,
    fresh: (o.freshEveryMs ?? 100) > 0
      ? {
        everyMs: o.freshEveryMs ?? 100,
        udp: `${t.peers[0]!.addrText}:${ECHO_PORT}`,
        tcp: `${t.peers[0]!.addrText}:${ECHO_PORT}`,
        idPrefix: `${h.name}f`,
      }
      : null,
    drainMs: 500,
  }));
  const ids = { tcp: [] as string[], udp: [] as string[] };
  for (let i = 0; i < o.tcp; i++) {
    const h = i % t.hosts.length;
    const id = `${t.hosts[h]!.name}t${i}`;
    ids.tcp.push(id);
    plans[h]!.tcp.push({ id, dest: `${t.peers[i % t.peers.length]!.addrText}:${ECHO_PORT}` });
  }
  for (let i = 0; i < o.udp; i++) {
    const h = i % t.hosts.length;
    const id = `${t.hosts[h]!.name}u${i}`;
    ids.udp.push(id);
    plans[h]!.udp.push({ id, dest: `${t.peers[i % t.peers.length]!.addrText}:${ECHO_PORT}` });
  }
  const procs = t.hosts.map((h, i) =>
    t.spawn(h.ns, denoScript(TRAFFIC, [JSON.stringify(plans[i])]), { stdin: "piped" })
  );
  try {
    await Promise.all(procs.map((p) => p.waitForOutput(/^ready$/m, 30_000)));
  } catch (e) {
    await Promise.all(procs.map((p) => p.stop("SIGKILL", 0)));
    throw e;
  }
  const writers = procs.map((p) => p.stdin.getWriter());
  const tell = (w: WritableStreamDefaultWriter<Uint8Array>, line: string) =>
    w.write(new TextEncoder().encode(line + "\n")).catch(() => {});
  return {
    ids,
    async fresh(on) {
      await Promise.all(writers.map((w) => tell(w, on ? "fresh on" : "fresh off")));
    },
    async stop() {
      const reports = await Promise.all(procs.map(async (p, i) => {
        const w = writers[i]!;
        await tell(w, "stop");
        await w.close().catch(() => {});
        const st = await Promise.race([
          p.status,
          new Promise<null>((r) => setTimeout(() => r(null), 30_000)),
        ]);
        if (st === null) await p.stop("SIGKILL", 0);
        const line = p.stdout().trim().split("\n").pop() ?? "";
        try {
          return JSON.parse(line) as TrafficReport;
        } catch {
          throw new Error(`ha_traffic in ${p.ns} gave no report:\n${p.output()}`);
        }
      }));
      return reports;
    },
  };
}

/** A running capture of the WAN segment. */
export interface Capture {
  /** Stops tcpdump and reads the capture back. */
  stop(): Promise<{ packets: WanPacket[]; undecoded: number; dropped: number; claims: Claim[] }>;
}

/**
 * The MACs on the WAN segment, named: each gateway's `wan0` and the router's
 * `gw0`.
 */
export async function wanMacs(t: HaTopology): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const mac = async (ns: string, dev: string) => {
    const r = await t.exec(ns, ["cat", `/sys/class/net/${dev}/address`]);
    if (r.code !== 0) throw new Error(`Cannot read the MAC of ${dev}: ${r.stderr}`);
    return r.stdout.trim();
  };
  for (const g of t.gateways) out.set(await mac(g.ns, g.wanIf), g.name);
  out.set(await mac(t.router.ns, "gw0"), "router");
  return out;
}

/**
 * Starts tcpdump on the router's WAN bridge (`gw0`), nanosecond
 * timestamps, 128-byte snap length, a 64 MiB buffer, into the scratch
 * directory. Resolves once tcpdump listens.
 */
export async function startCapture(t: HaTopology, name = "wan"): Promise<Capture> {
  await Deno.mkdir(t.scratch, { recursive: true, mode: 0o700 });
  const file = `${t.scratch}/${name}-${Date.now()}.pcap`;
  const macs = await wanMacs(t);
  const p = t.spawn(t.router.ns, [
    "tcpdump",
    "-i",
    "gw0",
    "-n",
    "-s",
    "128",
    "-B",
    "65536",
    "--time-stamp-precision=nano",
    "-w",
    file,
  ]);
  await p.waitForOutput(/listening on/, 10_000);
  return {
    async stop() {
      await p.stop("SIGINT", 5000);
      const dropped = Number(/(\d+) packets? dropped by kernel/.exec(p.output())?.[1] ?? 0);
      const bytes = await Deno.readFile(file);
      const keep = Deno.env.get("DPM_HA_PCAP_DIR");
      if (keep) await Deno.copyFile(file, `${keep}/${name}-${Date.now()}.pcap`).catch(() => {});
      await Deno.remove(file).catch(() => {});
      const records = [...readPcap(bytes)];
      const { packets, undecoded, claims } = wanPackets(records, macs);
      return { packets, undecoded, dropped, claims };
    },
  };
}

/** The failures {@linkcode inject} knows. */
export type Failure =
  /** The box dies: every link down and every daemon SIGKILLed at once. */
  | "crash"
  /** keepalived (and dpm, when given) SIGKILLed; the kernel goes on with whatever it holds. */
  | "kill"
  /** The LAN link goes down; everything else stays. */
  | "lan-down";

/**
 * Injects `failure` into gateway `gw` and returns when it was injected (wall
 * clock ms, taken just before the first action). `kill` SIGKILLs the given
 * processes (the daemons' process groups).
 */
export async function inject(
  t: HaTopology,
  gw: HaGateway,
  failure: Failure,
  kill: () => Promise<void>,
): Promise<number> {
  const at = wallMs();
  switch (failure) {
    case "crash":
      await Promise.all([t.setLinks(gw, ["lan", "wan", "sync"], "down"), kill()]);
      break;
    case "kill":
      await kill();
      break;
    case "lan-down":
      await t.setLinks(gw, ["lan"], "down");
      break;
  }
  return at;
}

/** Bytes and packets both ways on a gateway's sync link (its `sync0` counters). */
export interface SyncCounters {
  txBytes: number;
  rxBytes: number;
  txPackets: number;
  rxPackets: number;
}

/** Reads `gw`'s sync link counters. */
export async function syncCounters(t: HaTopology, gw: HaGateway): Promise<SyncCounters> {
  const read = async (what: string) => {
    const r = await t.exec(gw.ns, ["cat", `/sys/class/net/${gw.syncIf}/statistics/${what}`]);
    if (r.code !== 0) throw new Error(`Cannot read ${gw.syncIf} ${what}: ${r.stderr}`);
    return Number(r.stdout.trim());
  };
  const [txBytes, rxBytes, txPackets, rxPackets] = await Promise.all(
    ["tx_bytes", "rx_bytes", "tx_packets", "rx_packets"].map(read),
  );
  return { txBytes: txBytes!, rxBytes: rxBytes!, txPackets: txPackets!, rxPackets: rxPackets! };
}
