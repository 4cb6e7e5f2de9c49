/**
 * The host's bpf data path: the claim-5 rewrite done by two tc programs on
 * the interface toward the gateway (`bpf/host.bpf.c`), from the session map
 * the driver fills, with no netfilter rule, DNAT or conntrack per packet.
 *
 * Theory of operation (docs/datapath.md, "The bpf path"):
 *
 * - A session (granted, or its gateway port proposed: protocol version 3)
 *   is two entries (`hostRecords`): `sessionUp` queues them and `commit`,
 *   which the driver runs at the end of each turn of its event loop after
 *   the turn's requests left, writes the turn's entries in one batch
 *   (`BPF_MAP_UPDATE_BATCH`) before the turn's held packets are let go
 *   (`can.commitsFirst`); `sessionDown` deletes them.
 * - A new session's packets are held by the egress program (a TCP SYN or a
 *   UDP datagram of a flow with no entry, sent by a local socket toward the
 *   outside): it copies them to the perf event array `dpm_held` and keeps
 *   them from the wire. This path reads them (`held.ts` reassembles
 *   fragments and completes checksums) and hands them to the driver's core
 *   as the queue would; the core's verdict sends them back out through a
 *   raw socket with the pass mark, and the program, now holding the
 *   session's entries, translates them. A flow let go untranslated (the
 *   server did not answer) gets a pass entry, so its next packets stay in
 *   the kernel; pass entries go once quiet.
 * - The driver's heartbeat (`alive_until_ns`, renewed every half second
 *   for two seconds): with no driver running the program holds nothing, and
 *   new sessions go untranslated, as the queue's `--queue-bypass` lets
 *   them (the gateway's ordinary NAT serves them). `stop` ends it at once.
 * - ICMP goes to the driver's translator the same way, both ways (the
 *   programs hold ICMP toward the outside, and echo replies and errors
 *   arriving from G or from outside; what arrived is delivered to the host
 *   through a raw socket once translated). So the host has no netfilter
 *   rule of dpm's at all, and the kernel tracks nothing for dpm there.
 * - Lease activity (`activity`) comes from the map's counters, last-seen
 *   times and TCP FIN/RST bits (`counters.ts`).
 * - The watchdog checks every second that both programs are attached.
 * - Restart without loss: `stop("keep")` leaves the programs attached (the
 *   kernel keeps translating established sessions); the next start loads
 *   its programs on the same map and adopts its sessions (`adopt`).
 *
 * @module
 */

import { IPPROTO_ICMP, Verdict, type VerdictValue } from "../../wire/meta.ts";
import { describeSession } from "../../wire/tuple.ts";
import type { PacketInfo } from "../../wire/packet.ts";
import { rewriteToGateway } from "../../wire/rewrite.ts";
import { logger } from "../../runtime/log.ts";
import { Cleanup } from "../../runtime/cleanup.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import type {
  Activity,
  DriverDataPath,
  DriverPacketHandler,
  HostOptions,
  HostSessionKey,
  PacketIO,
  StopMode,
} from "../datapath.ts";
import { NO_OTHER_PATHS, type OtherPaths } from "../netfilter.ts";
import { ActivityReadings } from "../activity.ts";
import { Watchdog } from "../nft/watchdog.ts";
import { BpfPrograms, mapText } from "./programs.ts";
import { type Flow, HeldPackets } from "./held.ts";
import {
  hostConfigBytes,
  hostRecords,
  NatDir,
  NatFlag,
  type NatRecord,
  readHeld,
} from "./layout.ts";
import { hostActivity } from "./counters.ts";
import { mapUpdate, PerfReader } from "../../../linux/libbpf.ts";
import { CLOCK_MONOTONIC, clockNs } from "../../../linux/libc.ts";
import { serveLoop } from "../../../linux/waiter.ts";
import { RawSocket } from "../../../linux/rawsock.ts";

const log = logger("driver");

/** The mark of the packets the driver sends back out ("dpmP"): the program never holds them. */
export const PASS_MARK = 0x64706d50;
/** Entries of the host's session map (two per session). */
const HOST_MAP_ENTRIES = 1 << 16;
/** The heartbeat: renewed this often, valid this long. */
const HEARTBEAT_MS = 500;
const ALIVE_FOR_NS = 2_000_000_000n;
/**
 * A pass entry goes after this long quiet (a flow that fell back, or one
 * that came in from outside: conntrack's UDP stream timeout).
 */
const PASS_IDLE_NS = 120_000_000_000n;
/**
 * Pages of each CPU's ring of held packets (4 KiB each: 2 MiB). A burst's
 * first packets arrive on the CPU of the application that sends them, about
 * 100 B a record: 256 KiB lost 224 of a 3,000-session burst's first
 * datagrams (the ring was full before the driver, on a loaded machine, read
 * it); 2 MiB holds ~20,000.
 */
const HELD_PAGES = 512;

/** The host's session map and how the driver reads it: the sessions it holds. */
function sessionsOf(records: Iterable<NatRecord>, g: number): HostSessionKey[] {
  const out: HostSessionKey[] = [];
  for (const { key: k, entry: e } of records) {
    if (k.dir !== NatDir.OUT || e.to.daddr !== g) continue;
    if ((e.flags & (NatFlag.PASS | NatFlag.WILDCARD)) !== 0) continue;
    out.push({
      proto: k.proto,
      a: k.saddr,
      pa: k.sport,
      x: k.daddr,
      px: k.dport,
      g,
      pg: e.to.dport,
    });
  }
  return out;
}

/** The host's bpf data path: open, leftovers, remove. */
export const BpfDriverDataPath = {
  /**
   * Loads the programs (on a previous run's session map when its programs
   * are still attached) and opens the raw socket. Nothing is attached yet:
   * a kernel that cannot load them fails here.
   */
  open(o: HostOptions, others: OtherPaths = NO_OTHER_PATHS): Promise<DriverDataPath> {
    const progs = BpfPrograms.load("host", { dev: o.dev }, { maxEntries: HOST_MAP_ENTRIES });
    try {
      const raw = RawSocket.open();
      try {
        raw.setMark(PASS_MARK);
      } catch (e) {
        raw.close();
        throw e;
      }
      return Promise.resolve(new BpfDriverPath(o, progs, raw, others));
    } catch (e) {
      progs.close();
      throw e;
    }
  },
  /** The sessions a previous run's programs still translate (`--cleanup` gives them back). */
  leftovers(o: HostOptions): Promise<HostSessionKey[]> {
    return Promise.resolve(
      sessionsOf(BpfPrograms.leftoverRecords("host", { dev: o.dev }), o.server),
    );
  },
  /** Removes the programs a run of this path left. */
  remove(o: HostOptions): Promise<string> {
    const n = BpfPrograms.removeFrom("host", { dev: o.dev });
    return Promise.resolve(`${n} BPF filter(s)`);
  },
};

/** The MTU of `dev` (sysfs of this namespace); 1500 when it cannot be read. */
function mtuOf(dev: string): number {
  try {
    const n = Number(Deno.readTextFileSync(`/sys/class/net/${dev}/mtu`).trim());
    return Number.isInteger(n) && n >= 576 ? n : 1500;
  } catch {
    return 1500;
  }
}

/** A session's key among the entries waiting for `commit` (its OUT direction's). */
function pendingKey(k: HostSessionKey): string {
  return `${k.proto}/${k.a}/${k.pa}/${k.x}/${k.px}`;
}

/** No nftables generation to follow: the bpf host has no rules. */
const NO_RULES = { generation: () => 0 };

/** The host's bpf data path. */
class BpfDriverPath implements DriverDataPath {
  readonly kind = "bpf" as const;
  readonly can = { keepsSessions: true, commitsFirst: true } as const;
  readonly io: PacketIO;
  readonly #o: HostOptions;
  readonly #progs: BpfPrograms;
  readonly #raw: RawSocket;
  readonly #undo = new Cleanup(log);
  readonly #others: OtherPaths;
  readonly #watchdog: Watchdog;
  readonly #held: HeldPackets;
  #attached = false;
  #adopted = 0;
  readonly #activity = new ActivityReadings((last) => this.#readActivity(last));
  #stopped = false;

  constructor(o: HostOptions, progs: BpfPrograms, raw: RawSocket, others: OtherPaths) {
    this.#o = o;
    this.#progs = progs;
    this.#raw = raw;
    this.#others = others;
    this.#held = new HeldPackets({
      send: (pkt, dst) => raw.send(pkt, pkt.length, dst),
      accepted: (f) => this.#accepted(f),
      now: () => performance.now(),
      mtu: mtuOf(o.dev),
    });
    const held = this.#held;
    this.io = {
      verdict: (id, v, payload) => void held.verdict(id, v, payload),
      flush: () => {},
      send: (pkt, len, dst) => raw.send(pkt, len, dst),
    };
    this.#watchdog = new Watchdog(log, "bpf", NO_RULES, [], () => Promise.resolve(""), [{
      missing: () => this.#attached ? progs.missing() : [],
      repair: () => `${progs.attach()} BPF program(s) on ${o.dev}`,
    }]);
  }

  adopt(): Promise<HostSessionKey[]> {
    if (this.#progs.mapOrigin !== "adopted") return Promise.resolve([]);
    const out = sessionsOf(this.#progs.nat.all(), this.#o.server);
    this.#adopted = out.length;
    return Promise.resolve(out);
  }

  async begin(packets: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void> {
    try {
      await this.#others.removeLeftovers();
      this.#heartbeat();
      const beat = setInterval(() => this.#heartbeat(), HEARTBEAT_MS);
      this.#undo.push(() => clearInterval(beat));
      this.#progs.attach();
      this.#attached = true;
      this.#undo.push(this.#pumpHeld(packets, onFatal));
      const sweep = setInterval(() => this.#sweepPass(), 10_000);
      this.#undo.push(() => clearInterval(sweep));
      this.#watchdog.start();
      this.#undo.push(() => this.#watchdog.stop());
      log.info(
        `data path on (bpf): programs on ${this.#o.dev} (${mapText(this.#progs.mapOrigin)}, ` +
          `${this.#adopted} session(s)); new sessions and ICMP held for the driver`,
      );
    } catch (e) {
      await this.stop(this.#adopted > 0 ? "keep" : "remove");
      throw e;
    }
  }

  /** Writes the host's configuration with the heartbeat renewed (0: hold nothing). */
  #heartbeat(aliveNs = clockNs(CLOCK_MONOTONIC) + ALIVE_FOR_NS): void {
    const lan = this.#o.lan;
    const mask = lan.len === 0 ? 0 : (0xffffffff << (32 - lan.len)) >>> 0;
    mapUpdate(
      this.#progs.mapFd("dpm_hcfg"),
      new Uint8Array(4),
      hostConfigBytes({
        lanNet: (lan.addr & mask) >>> 0,
        lanMask: mask,
        passMark: PASS_MARK,
        gateway: this.#o.server,
        aliveUntilNs: aliveNs,
      }),
    );
  }

  /** Reads held packets and hands them to `packets`; the returned function stops it. */
  #pumpHeld(packets: DriverPacketHandler, onFatal: (e: Error) => void): () => void {
    const held = this.#held;
    const io = this.io;
    const perf = PerfReader.open(this.#progs.mapFd("dpm_held"), HELD_PAGES, (data) => {
      const rec = readHeld(data);
      if (!rec) return;
      const t = held.take(rec.frame, rec.gsoSize, rec.outbound);
      if (!t) return;
      const v = packets(t.pkt, t.id, t.outbound, 0);
      if (v !== Verdict.HOLD) io.verdict(t.id, v as VerdictValue, t.pkt);
    });
    const stop = serveLoop({
      wait: (ms) => perf.wait(ms),
      // A consume reads every record there is: nothing is left for a redrain.
      drain: () => {
        perf.consume();
        return 0;
      },
      redrain: 0,
      onFatal,
    });
    return () => {
      stop();
      perf.close();
      held.clear();
    };
  }

  /** The core let a held flow go: untranslated (no entry for it) means a pass entry. */
  #accepted(f: Flow): void {
    const key = {
      proto: f.proto,
      dir: NatDir.OUT,
      saddr: f.src,
      sport: f.sport,
      daddr: f.dst,
      dport: f.dport,
    };
    try {
      if (this.#progs.nat.get(key)) return;
      this.#progs.nat.put([{
        key,
        entry: {
          to: { saddr: 0, daddr: 0, sport: 0, dport: 0 },
          flags: NatFlag.PASS,
          packets: 0,
          bytes: 0,
          lastNs: clockNs(CLOCK_MONOTONIC),
        },
      }]);
    } catch (e) {
      log.warn(`noting an untranslated flow: ${(e as Error).message}`);
    }
  }

  /** Pass entries of flows that went quiet go: their next packet asks the driver again. */
  #sweepPass(): void {
    try {
      const now = clockNs(CLOCK_MONOTONIC);
      this.#progs.nat.deleteWhere((r) =>
        (r.entry.flags & NatFlag.PASS) !== 0 && now - r.entry.lastNs > PASS_IDLE_NS
      );
    } catch (e) {
      log.warn(`sweeping the BPF map: ${(e as Error).message}`);
    }
  }

  /**
   * TCP and UDP: the session is in the map; the program translates the
   * packet when it is sent back out. ICMP is the driver's translator's:
   * rewritten here.
   */
  outbound(pkt: Uint8Array, info: PacketInfo, g: number, pg: number, skb: number): VerdictValue {
    return info.proto === IPPROTO_ICMP ? rewriteToGateway(pkt, info, g, pg, skb) : Verdict.ACCEPT;
  }

  /** Entries of the sessions up since the last commit, by OUT key (a later sessionDown takes them back). */
  readonly #pending = new Map<string, { k: HostSessionKey; recs: NatRecord[] }>();

  sessionUp(k: HostSessionKey): void {
    const recs = hostRecords(k);
    if (recs.length === 0) return;
    this.#pending.set(pendingKey(k), { k, recs });
  }

  commit(): void {
    if (this.#pending.size === 0) return;
    const all = [...this.#pending.values()];
    this.#pending.clear();
    try {
      this.#progs.nat.put(all.flatMap((p) => p.recs));
    } catch (e) {
      this.#watchdog.suspect(
        `programming ${all.length} session(s), ${describeSession(all[0]!.k)} first: ${
          (e as Error).message
        }`,
      );
    }
  }

  sessionDown(k: HostSessionKey): void {
    if (k.proto === IPPROTO_ICMP) return;
    this.#pending.delete(pendingKey(k));
    try {
      // Its pass entry too, if it fell back before: the OUT key is the same.
      this.#progs.nat.delete(hostRecords(k).map((r) => r.key));
    } catch (e) {
      this.#watchdog.suspect(`removing ${describeSession(k)}: ${(e as Error).message}`);
    }
  }

  activity(): Map<number, Activity> {
    return this.#activity.get();
  }

  /** The session map's counters; on an error, the last reading (or none). */
  #readActivity(last: Map<number, Activity> | null): Map<number, Activity> {
    try {
      return hostActivity(this.#progs.nat.all(), this.#o.server);
    } catch (e) {
      log.warn(`reading the BPF map for lease activity: ${(e as Error).message}`);
      return last ?? new Map();
    }
  }

  status(): DataPathStatus {
    return this.#watchdog.status();
  }

  async stop(mode: StopMode): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#attached = false;
    await this.#undo.run();
    try {
      if (mode === "remove") {
        BpfPrograms.removeFrom("host", { dev: this.#o.dev });
      } else {
        // No driver from now on: new sessions pass untranslated until the next start.
        this.#heartbeat(0n);
        log.info(
          `left the BPF programs on ${this.#o.dev} translating established sessions ` +
            "(dpm driver --cleanup removes them)",
        );
      }
    } catch (e) {
      log.warn(`stopping the BPF programs: ${(e as Error).message}`);
    }
    this.#progs.close();
    this.#raw.close();
  }
}
