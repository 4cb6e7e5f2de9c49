/**
 * `dpm server --ha` on one gateway of a keepalived pair (docs/ha.md): the
 * parts that touch the machine, composed around {@linkcode HaRole}:
 *
 * - the sysctls HA needs, journaled like the data path's
 *   ({@linkcode haSysctls}): `ip_nonlocal_bind` (the standby binds its
 *   control listeners to G before it holds G) and
 *   `nf_conntrack_tcp_be_liberal` (replicated TCP entries that both
 *   kernels updated are never judged out of window, so their segments are
 *   translated rather than reset);
 * - the mirror's loop while standby (`mirror.ts`): conntrack events
 *   (linux/ct_events.ts) applied as they come, a full dump at start, after
 *   lost events and every {@link RECONCILE_MS};
 * - the takeover's and the release's steps: the last events applied, G and
 *   the pool added (`ip -batch`, one process) and announced (gratuitous
 *   ARPs, `arping`), conntrackd told to resync;
 * - the standby's guard (`guard.ts`): up while not active, so that strays
 *   for G, the pool and the LAN leave no conntrack of this box's own;
 * - on the active, the refresh of the conntrack timeouts of sessions that
 *   carried traffic, so that their replicas on the standby stay alive;
 * - keepalived's notify FIFO, read line by line;
 * - conntrackd's figures (`conntrackd -s`, `conntrackd.ts`) for `dpm status`;
 * - the VRRP adverts heard (linux/vrrp_socket.ts, `vrrp.ts`): when the peer
 *   last spoke, split brains.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { Conntrack, type CtEntry } from "../../linux/conntrack.ts";
import { CtEvents } from "../../linux/ct_events.ts";
import { readSysctl, recoverSysctls, setSysctls } from "../../linux/sysctl.ts";
import { gatewayKey, type SessionCounters } from "../datapath/datapath.ts";
import { run } from "../../linux/exec.ts";
import { IPPROTO_UDP } from "../wire/meta.ts";
import type { HaStatus } from "../operator/types.ts";
import { Mirror, type MirrorTarget, sessionOfEntry } from "./mirror.ts";
import { type ConntrackdStats, parseConntrackdStats } from "./conntrackd.ts";
import { HaRole, type HaSteps } from "./role.ts";
import { AdvertWatch } from "./vrrp.ts";
import { guardRuleset, type GuardScope } from "./guard.ts";
import { loadRuleset } from "../../linux/nft.ts";
import { VrrpSocket } from "../../linux/vrrp_socket.ts";

const log = logger("ha");

/** A full reconcile of the mirror this often (ms), besides the events. */
export const RECONCILE_MS = 10_000;
/** The mirror is behind when no reconcile succeeded for this long (ms), or conntrackd lost messages as recently. */
export const BEHIND_MS = 3 * RECONCILE_MS;
/** conntrackd's figures are read this often (ms). */
export const SYNC_POLL_MS = 5000;
/** The VRRP socket is read this often (ms): what status shows is at most this old. */
export const ADVERT_POLL_MS = 200;

/** Where the HA sysctls are journaled (beside the operator socket, as the data path's). */
export function haSysctlJournal(socket: string): string {
  return `${socket}.ha-sysctls.json`;
}

/**
 * Sets the sysctls HA needs (see the module's text), after undoing what a
 * run killed with SIGKILL left. Returns what restores them.
 */
export async function haSysctls(cfg: ServerConfig): Promise<() => Promise<void>> {
  const journal = haSysctlJournal(cfg.socket);
  const n = await recoverSysctls(journal);
  if (n) log.info(`restored ${n} HA sysctl(s) left changed by a previous run`);
  return await setSysctls({
    "net.ipv4.ip_nonlocal_bind": "1",
    "net.netfilter.nf_conntrack_tcp_be_liberal": "1",
  }, { journal });
}

/** Puts the standby's guard (`guard.ts`) up (`on`) or takes it down. Throws with nft's message. */
function setGuard(on: boolean, s: GuardScope): Promise<void> {
  return loadRuleset(guardRuleset(on, s));
}

/** What the HA node needs from the server process (`run.ts`). */
export interface HaHost {
  /** The LAN prefix length of G (claimed as G/len on --lan-if). */
  lanPrefixLen: number;
  /** The mirror's target: the server's table, committed through the data path. */
  target: MirrorTarget;
  /** A new epoch, the listeners answer, ANNOUNCE (PCP, SSDP). */
  serve(): void;
  /** The listeners stop answering. */
  unserve(): void;
  /**
   * Whether removing a session deletes its conntracks (the data path's
   * `ownConntracks`): only while active; on the standby they are
   * conntrackd's replicas.
   */
  ownConntracks(own: boolean): void;
  /** The sessions' lease clock (the core's `now`). */
  now(): number;
  /** The data path's per-session counters (keyed by `gatewayKey`), or null when it keeps none. */
  counters(): Map<number, SessionCounters> | null;
}

/** `dpm server --ha`'s moving parts (see the module's text). */
export class HaNode {
  readonly role: HaRole;
  readonly mirror: Mirror;
  readonly #cfg: ServerConfig;
  readonly #host: HaHost;
  readonly #ct: Conntrack;
  #events: CtEvents | null = null;
  #stopped = false;
  #loop: Promise<void> = Promise.resolve();
  #refreshTimer: ReturnType<typeof setInterval> | null = null;
  /** Packets counted per session (`gatewayKey`) at the last refresh (refresh only what moved). */
  #seen = new Map<number, number>();
  /** Timeouts refreshed on the active since start. */
  refreshed = 0;
  #fifo: Deno.FsFile | null = null;
  /** conntrackd's figures, read every {@link SYNC_POLL_MS} (null before the first, or without its configuration). */
  #sync: ConntrackdStats | null = null;
  /** Why the last read of conntrackd's figures failed ("" when it did not). */
  #syncError = "";
  /** When conntrackd's lost messages last grew (ms), 0: never seen. */
  #lostGrewAt = 0;
  #syncTimer: ReturnType<typeof setInterval> | null = null;
  /** Lines read from keepalived's FIFO since start. */
  fifoLines = 0;
  /** This box's VRRP priority, from keepalived's last FIFO line (null before one). */
  #priority: number | null = null;
  /** The adverts heard (src/ha/vrrp.ts); null when the socket could not be opened. */
  #adverts: AdvertWatch | null = null;
  #vrrp: VrrpSocket | null = null;
  #advertTimer: ReturnType<typeof setInterval> | null = null;

  constructor(cfg: ServerConfig, host: HaHost) {
    this.#cfg = cfg;
    this.#host = host;
    this.#ct = Conntrack.open();
    this.mirror = new Mirror({ g: cfg.lanAddr, pool: cfg.pool, target: host.target });
    const steps: HaSteps = {
      prepare: () => Promise.resolve(this.#prepare()),
      claim: () => this.#claim(),
      serve: () => {
        host.ownConntracks(true);
        host.serve();
        this.#startRefresh();
        this.#conntrackd(["-f"], ["-R"], ["-B"]);
      },
      unserve: () => {
        this.#stopRefresh();
        host.unserve();
        host.ownConntracks(false);
      },
      release: () => {
        this.#adverts?.released();
        return this.#release();
      },
      mirror: () => {
        this.#startMirror();
        this.#conntrackd(["-n"]);
        return Promise.resolve();
      },
    };
    this.role = new HaRole(steps, {
      log: (l) => log.info(l),
      describe: () => {
        const m = this.mirror.stats;
        return `; ${m.sessions} mirrored session(s), ${m.events} event(s), ${m.reconciles} reconcile(s)`;
      },
    });
  }

  /** Starts as standby: mirroring, reading keepalived's FIFO. */
  async start(): Promise<void> {
    const t = Number(
      await readSysctl("net.netfilter.nf_conntrack_udp_timeout_stream").catch(() => "120"),
    );
    if (Number.isInteger(t) && t > 0) this.#udpStream = t;
    this.#host.ownConntracks(false);
    await setGuard(true, this.#guardScope());
    this.#startMirror();
    await this.#openFifo();
    this.#listenAdverts();
    if (this.#cfg.haConntrackdConfig) {
      void this.#pollSync();
      this.#syncTimer = setInterval(() => void this.#pollSync(), SYNC_POLL_MS);
    }
    // keepalived reports changes only: a dpm (re)started while keepalived is
    // MASTER learns it from the marker address keepalived holds on lo.
    const marker = this.#cfg.haMarker;
    if (marker !== null && this.fifoLines === 0) {
      const { interfaceAddrs } = await import("../../linux/iface.ts");
      if ((await interfaceAddrs("lo")).some((a) => a.addr === marker)) {
        log.info(`keepalived's marker ${formatIPv4(marker)} is on lo: keepalived is MASTER`);
        void this.role.vrrp("MASTER");
      }
    }
  }

  /** Stops reading and mirroring; an active box releases G and the pool. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stopRefresh();
    if (this.#syncTimer) clearInterval(this.#syncTimer);
    if (this.#advertTimer) clearInterval(this.#advertTimer);
    this.#vrrp?.close();
    try {
      this.#fifo?.close();
    } catch {
      // Closed already.
    }
    this.#events?.close();
    this.#events = null;
    await this.#loop;
    if (this.role.role === "active") {
      this.#host.unserve();
      await this.#release().catch((e) => log.warn(`releasing: ${(e as Error).message}`));
    }
    await setGuard(false, this.#guardScope()).catch((e) =>
      log.warn(`removing the standby's guard: ${(e as Error).message}`)
    );
    this.#ct.close();
  }

  // ---- the FIFO ----

  async #openFifo(): Promise<void> {
    const path = this.#cfg.haFifo!;
    let st: Deno.FileInfo | null = null;
    try {
      st = await Deno.stat(path);
    } catch {
      const r = await run("mkfifo", ["-m", "600", path]);
      if (r.code !== 0) throw new Error(`Cannot create the FIFO ${path}: ${r.stderr.trim()}`);
    }
    if (st && !st.isFifo) throw new Error(`--ha-fifo ${path} is not a FIFO`);
    // Read and write: the FIFO never reports end of file when keepalived
    // restarts, and keepalived's writes never find it without a reader.
    const f = await Deno.open(path, { read: true, write: true });
    this.#fifo = f;
    log.info(`reading keepalived's state changes from ${path}; standby`);
    (async () => {
      const dec = new TextDecoder();
      let rest = "";
      const buf = new Uint8Array(4096);
      for (;;) {
        let n: number | null;
        try {
          n = await f.read(buf);
        } catch (e) {
          if (!this.#stopped) log.error(`reading ${path}: ${(e as Error).message}`);
          return;
        }
        if (n === null || this.#stopped) return;
        rest += dec.decode(buf.subarray(0, n), { stream: true });
        let i;
        while ((i = rest.indexOf("\n")) >= 0) {
          const line = rest.slice(0, i);
          rest = rest.slice(i + 1);
          this.fifoLines++;
          log.debug(`keepalived: ${line}`);
          const prio = /\s(\d{1,3})\s*$/.exec(line);
          if (prio) this.#priority = Number(prio[1]);
          void this.role.line(line);
        }
      }
    })();
  }

  // ---- the adverts heard ----

  /** Opens the VRRP socket and reads it every {@link ADVERT_POLL_MS}; a failure is logged, not fatal. */
  #listenAdverts(): void {
    try {
      this.#vrrp = VrrpSocket.open();
    } catch (e) {
      log.warn(
        `not listening to VRRP adverts (status will not show them): ${(e as Error).message}`,
      );
      return;
    }
    const watch = new AdvertWatch(this.#cfg.haMarker);
    this.#adverts = watch;
    this.#advertTimer = setInterval(() => {
      try {
        const now = Date.now();
        const since = this.role.role === "active" ? this.role.status.since : null;
        this.#vrrp?.drain((p) => watch.packet(p, now, since, this.#priority, formatIPv4));
      } catch (e) {
        log.warn(`reading VRRP adverts: ${(e as Error).message}`);
      }
    }, ADVERT_POLL_MS);
  }

  // ---- the mirror (standby) ----

  #startMirror(): void {
    if (this.#events || this.#stopped) return;
    const ev = CtEvents.open();
    this.#events = ev;
    this.#reconcile();
    this.#loop = this.#mirrorLoop(ev);
  }

  async #mirrorLoop(ev: CtEvents): Promise<void> {
    let lastReconcile = Date.now();
    while (this.#events === ev && !this.#stopped) {
      await ev.wait(200);
      if (this.#events !== ev) break;
      try {
        this.#drain(ev);
        if (Date.now() - lastReconcile >= RECONCILE_MS) {
          this.#reconcile();
          lastReconcile = Date.now();
        }
      } catch (e) {
        log.warn(`mirroring: ${(e as Error).message}`);
      }
    }
  }

  /** Applies every queued event; a reconcile when the kernel dropped some. */
  #drain(ev: CtEvents): void {
    const m = this.mirror;
    const r = ev.drain((kind, e) => m.event(kind, e));
    if (r.events) m.commit();
    if (r.lost) {
      m.stats.lost++;
      log.warn("conntrack events were lost: reconciling from a full dump");
      this.#reconcile();
    }
  }

  #reconcile(): void {
    const all: CtEntry[] = [];
    this.#ct.dump((e) => {
      if (e.orig.dst === this.#cfg.lanAddr) all.push(e);
    });
    const { kept, removed } = this.mirror.reconcile(all);
    log.debug(`mirror reconciled: ${kept} session(s), ${removed} removed`);
  }

  /** Takeover, step 1: the last replicas in the table and the maps; mirroring stops. */
  #prepare(): void {
    const ev = this.#events;
    this.#events = null;
    if (ev) {
      try {
        this.#drain(ev);
      } finally {
        ev.close();
      }
    }
  }

  // ---- the addresses ----

  #addresses(op: "replace" | "del"): string {
    const c = this.#cfg;
    return [
      `address ${op} ${formatIPv4(c.lanAddr)}/${this.#host.lanPrefixLen} dev ${c.lanIf}`,
      ...c.pool.map((a) => `address ${op} ${formatIPv4(a)}/32 dev ${c.wanIf}`),
    ].join("\n") + "\n";
  }
  /** `ip -force -batch -` with these lines (linux/exec.ts, the one runner). */
  #ipBatch(text: string): Promise<{ code: number; stderr: string }> {
    return run("ip", ["-force", "-batch", "-"], { stdin: text });
  }

  /** What the standby's guard (`guard.ts`) keeps out. */
  #guardScope(): GuardScope {
    const c = this.#cfg;
    const len = this.#host.lanPrefixLen;
    const mask = len === 0 ? 0 : (~0 << (32 - len)) >>> 0;
    return {
      lanIf: c.lanIf!,
      wanIf: c.wanIf!,
      g: c.lanAddr,
      lan: { addr: (c.lanAddr & mask) >>> 0, len },
      pool: c.pool,
    };
  }

  async #claim(): Promise<void> {
    // The addresses and the guard's removal at once (two processes): traffic
    // comes with the gratuitous ARPs, after both.
    const [r, unguarded] = await Promise.all([
      this.#ipBatch(this.#addresses("replace")),
      setGuard(false, this.#guardScope()).then(() => null, (e: Error) => e),
    ]);
    if (r.code !== 0 || unguarded) {
      // Standby still: nothing claimed, the guard up.
      await this.#release().catch(() => {});
      throw new Error(
        r.code !== 0
          ? `claiming the addresses: ${r.stderr.trim()}`
          : `lifting the standby's guard: ${unguarded!.message}`,
      );
    }
    const c = this.#cfg;
    this.#garp(c.lanIf!, c.lanAddr);
    for (const a of c.pool) this.#garp(c.wanIf!, a);
  }

  /** Gratuitous ARPs for `addr` on `dev` (two, a second apart; not waited for). */
  #garp(dev: string, addr: number): void {
    const a = formatIPv4(addr);
    try {
      const p = new Deno.Command("arping", {
        args: ["-q", "-U", "-c", "2", "-I", dev, "-s", a, a],
        stdout: "null",
        stderr: "null",
      }).spawn();
      p.status.catch(() => {});
    } catch (e) {
      log.warn(`gratuitous ARP for ${a} on ${dev}: ${(e as Error).message}`);
    }
  }

  async #release(): Promise<void> {
    // Some may be gone already (a link down): -force goes on.
    await this.#ipBatch(this.#addresses("del"));
    await setGuard(true, this.#guardScope());
  }

  /** conntrackd commands, one after the other, not waited for (its socket from --ha-conntrackd-config). */
  #conntrackd(...cmds: string[][]): void {
    const conf = this.#cfg.haConntrackdConfig;
    if (!conf) return;
    // Spawned on a later turn: a takeover serves first.
    setTimeout(async () => {
      for (const c of cmds) {
        const r = await run("conntrackd", ["-C", conf, ...c]).catch((e) => ({
          code: -1,
          stderr: (e as Error).message,
        }));
        if (r.code !== 0) log.warn(`conntrackd ${c.join(" ")}: ${r.stderr.trim()}`);
      }
    }, 0);
  }

  // ---- the active's refresh ----

  #startRefresh(): void {
    const s = this.#cfg.haRefresh;
    if (s === 0 || this.#refreshTimer) return;
    this.#seen.clear();
    this.#refreshTimer = setInterval(() => {
      try {
        this.#refresh();
      } catch (e) {
        log.warn(`refreshing conntrack timeouts: ${(e as Error).message}`);
      }
    }, s * 1000);
  }

  #stopRefresh(): void {
    if (this.#refreshTimer) clearInterval(this.#refreshTimer);
    this.#refreshTimer = null;
  }

  /**
   * Sets the conntrack timeout of each dpm UDP session that carried packets
   * since the last round (and of each such TCP session whose entry would
   * expire within that time) to the kernel's UDP stream timeout (120 s): the
   * kernel reports the change as an update, conntrackd replicates it, and
   * the replica on the standby counts down from a fresh value instead of
   * expiring 120 s after the flow's last state change. Activity is read
   * from the data path's per-session counters (`ServerDataPath.counters`):
   * on the bpf path most packets never touch conntrack, whose own counters
   * and timeout stand still, so without this the active's conntrack would
   * expire too (and its replica with it) while the session lives in the
   * BPF map (UDP entries there stay unassured, 30 s; TCP ones may stay in
   * SYN_RECV, 60 s). Idle sessions are left to expire.
   */
  #refresh(): void {
    const pool = new Set(this.#cfg.pool);
    const g = this.#cfg.lanAddr;
    const counters = this.#host.counters();
    const seen = new Map<number, number>();
    const moved = (key: number, packets: number) => {
      seen.set(key, packets);
      return this.#seen.get(key) !== packets;
    };
    const todo: { orig: CtEntry["orig"]; timeout: number }[] = [];
    this.#ct.dump((e) => {
      if (sessionOfEntry(e, g, pool) === null) return;
      const key = gatewayKey(e.orig.proto, e.orig.src, e.orig.dport);
      const c = counters?.get(key);
      const packets = c ? c.packetsOut + c.packetsIn : e.packetsOrig + e.packetsReply;
      if (!moved(key, packets)) return;
      // TCP: only an entry that would expire soon (one the bpf path took over
      // before conntrack saw the handshake end lives 60 s in SYN_RECV); an
      // established one lasts days and is replicated on its state changes.
      if (e.orig.proto === IPPROTO_UDP || e.timeout < this.#udpStream) {
        todo.push({ orig: e.orig, timeout: this.#udpStream });
      }
    });
    this.#seen = seen;
    if (todo.length) this.refreshed += this.#ct.setTimeouts(todo);
  }

  /** The kernel's UDP stream timeout, seconds (read at start). */
  #udpStream = 120;

  // ---- conntrackd's figures ----

  async #pollSync(): Promise<void> {
    const conf = this.#cfg.haConntrackdConfig!;
    try {
      const [g, q] = await Promise.all([
        run("conntrackd", ["-C", conf, "-s"]),
        run("conntrackd", ["-C", conf, "-s", "queue"]),
      ]);
      if (this.#stopped) return;
      const st = g.code === 0
        ? parseConntrackdStats(g.stdout, q.code === 0 ? q.stdout : undefined)
        : null;
      if (st === null) {
        this.#syncError = `conntrackd -s: ${(g.stderr || g.stdout).trim().split("\n")[0] ?? ""}`;
        return;
      }
      if (this.#sync && st.lostMessages > this.#sync.lostMessages) this.#lostGrewAt = Date.now();
      this.#sync = st;
      this.#syncError = "";
    } catch (e) {
      this.#syncError = `conntrackd -s: ${(e as Error).message}`;
    }
  }

  // ---- status ----

  /** The `ha` part of `dpm status` and of the metrics. */
  status(): HaStatus {
    const r = this.role.status;
    const m = this.mirror.stats;
    const now = Date.now();
    const lag = m.lastReconcileAt ? (now - m.lastReconcileAt) / 1000 : null;
    return {
      role: r.role,
      since: r.since,
      transitions: r.transitions,
      vrrp: r.vrrp,
      peer: this.#cfg.haPeer === null ? null : formatIPv4(this.#cfg.haPeer),
      lastTakeoverMs: r.lastTakeoverMs,
      lastClaimMs: r.lastClaimMs,
      failedTransitions: r.failed,
      mirror: {
        sessions: m.sessions,
        events: m.events,
        refused: m.refused,
        lost: m.lost,
        reconciles: m.reconciles,
        lagSeconds: r.role === "active" ? null : lag,
      },
      sync: this.#sync,
      syncError: this.#syncError || null,
      behind: r.role !== "active" &&
        (lag === null || lag * 1000 > BEHIND_MS || this.#syncError !== "" ||
          (this.#lostGrewAt > 0 && now - this.#lostGrewAt < BEHIND_MS)),
      refreshed: this.refreshed,
      adverts: this.#adverts ? { ...this.#adverts.stats } : null,
      priority: this.#priority,
    };
  }
}
