/**
 * One server worker (`dpm server --workers N`, worker 1..N-1), run as a
 * Deno module `Worker` (a thread) that `workers.ts` starts. The main thread
 * is worker 0 and keeps everything else (the data path's set-up, its queue
 * of held first packets, PCP and NAT-PMP, UPnP, the operator socket,
 * metrics); see docs/performance.md, "Cores".
 *
 * A worker owns the hosts whose source address is its index mod N (the
 * control socket's reuseport program, `linux/reuseport.ts`, steers their
 * datagrams to its own `SO_REUSEPORT` socket) and its slice of every pool
 * address's ports (`table/slice.ts`). It has its own `ServerCore` (table,
 * rate limiter, cookies, quota), its own netlink sockets (it programs its
 * sessions into dpm's nftables maps in its own transaction, committed
 * before it answers, as the main thread does) and its own state file
 * (`<--state>.worker<k>`). It never holds first packets: the kernel's hold
 * queue reaches the main thread, so the worker posts its decisions on them
 * after each commit (`held` messages), and the main thread lets them go.
 *
 * Messages are `WorkerRequest` in and `WorkerReply` out (`workers.ts`).
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { type Level, logger, setFormat, setLevel } from "../runtime/log.ts";
import { ServerCore } from "./core.ts";
import { HeldPackets } from "./held.ts";
import { StateStore } from "./state.ts";
import { DropLog, restoreRecord } from "./restore.ts";
import type { ServerDataPath } from "../datapath/datapath.ts";
import { gatewayOptions, openServerWorkerPath } from "../datapath/open.ts";
import { UdpSocket } from "../../linux/udp.ts";
import { MAX_DATAGRAM } from "../control/batch.ts";
import { Verdict } from "../wire/meta.ts";
import { CONTROL_BATCH, serveControl, shardGuard } from "./control_socket.ts";
import {
  type WorkerInit,
  type WorkerReply,
  type WorkerRequest,
  workerStatePath,
} from "./worker_messages.ts";

const log = logger("server");

/**
 * The control protocol's decisions on held first packets, kept for the
 * main thread (which holds the packets) instead of applied here: five
 * numbers each (proto, a, pa, Pg, granted).
 */
class RelayedDecisions extends HeldPackets {
  out: number[] = [];
  override decide(
    proto: number,
    a: number,
    pa: number,
    proposal: number,
    granted: boolean,
    _now: number,
  ): void {
    if (proposal === 0) return;
    this.out.push(proto, a, pa, proposal, granted ? 1 : 0);
  }
}

const post = (m: WorkerReply) => self.postMessage(m);

let running: Running | null = null;

/** A started worker: what its messages act on. */
interface Running {
  core: ServerCore;
  stop: () => Promise<number>;
  serve: (epoch: number) => void;
  reprogram: () => void;
}

self.onmessage = async (ev: MessageEvent<WorkerRequest>) => {
  const m = ev.data;
  try {
    switch (m.t) {
      case "init":
        running = await start(m.init);
        break;
      case "serve":
        running?.serve(m.epoch);
        break;
      case "gateway":
        running?.core.gatewayState(new Set(m.local), m.tcp, m.udp);
        break;
      case "reprogram":
        running?.reprogram();
        break;
      case "log":
        setLevel(m.level);
        setFormat(m.format);
        break;
      case "packet": {
        // Translated here (ICMP, hairpin: the queue translator's), answered with its verdict.
        const v = running ? running.core.handlePacket(m.bytes, m.meta, -1) : Verdict.DROP;
        post(
          v === Verdict.MODIFIED
            ? { t: "verdict", id: m.id, v, bytes: m.bytes }
            : { t: "verdict", id: m.id, v: v === Verdict.ACCEPT ? v : Verdict.DROP },
        );
        break;
      }
      case "status": {
        const core = running!.core;
        const header = core.statusHeader(m.host);
        const rows = [...core.rows({
          ...(m.host !== undefined ? { host: m.host } : {}),
          ...(m.limit !== undefined ? { limit: m.limit } : {}),
        })];
        post({ t: "status", id: m.id, header, rows });
        break;
      }
      case "drop": {
        const core = running!.core;
        const n = core.drop(m.sel);
        if (n) core.commit();
        post({ t: "dropped", id: m.id, n });
        break;
      }
      case "stop": {
        const saved = running ? await running.stop() : 0;
        running = null;
        post({ t: "stopped", saved });
        self.close();
        break;
      }
    }
  } catch (e) {
    post({ t: "error", message: (e as Error).stack ?? String(e) });
  }
};

/** Opens the worker's state, socket and netlink sockets; adopts its share; serves once told. */
async function start(init: WorkerInit): Promise<Running> {
  const { cfg, index, count } = init;
  setLevel(cfg.logLevel as Level);
  setFormat(cfg.logFormat);
  const undo: (() => void | Promise<void>)[] = [];
  try {
    const statePath = cfg.state ? workerStatePath(cfg.state, index) : null;
    const store = statePath ? await StateStore.open(statePath) : null;
    let saved = 0;
    if (store) undo.push(() => void (saved = store.close()));
    const relay = new RelayedDecisions();
    const core = new ServerCore(cfg, {
      lan: init.lan,
      epoch: init.epoch,
      slice: { index, count },
      held: relay,
      ...(init.cookieKey ? { cookieKey: init.cookieKey } : {}),
    });
    const drops = new DropLog();
    let restored = 0;
    const prior = store?.saved ?? null;
    if (prior) {
      const now = core.now();
      for (const rec of prior.sessions) {
        if (restoreRecord(core.table, rec, now, drops, statePath!)) restored++;
      }
    }
    // The control socket joins the group the main thread's socket made (and
    // its reuseport program): bound in index order, before any datagram is read.
    const sock = UdpSocket.open({
      addr: cfg.lanAddr,
      port: cfg.controlPort,
      reusePort: true,
      maxDatagram: MAX_DATAGRAM + 64,
      batch: CONTROL_BATCH,
    });
    undo.push(() => sock.close());
    let dp: ServerDataPath | null = null;
    let adopted = 0;
    if (init.share) {
      // The path the main thread runs, from this thread's own sockets (and, on the bpf path,
      // the main thread's session map); the main thread installed the rest and watches it.
      const path = await openServerWorkerPath(
        gatewayOptions(cfg, init.lan!),
        init.share,
        () => core.sessions(),
      );
      dp = path;
      undo.push(async () => {
        core.detach();
        await path.stop("keep");
      });
      const r = core.adopt(init.adopted, drops);
      adopted = r.adopted;
      for (const s of r.stale) path.sessionDown(s);
      core.attach(path);
    }
    if (store) {
      store.start(core.table, core.epoch, init.bootId);
      store.listen(core.table);
      core.addCommitter(store);
    }
    let serving = false;
    const stopServing = serveControl(
      sock,
      {
        ...shardGuard(core, index, count),
        // After the turn's commit: the main thread lets the held packets go.
        releaseHeld: () => {
          if (relay.out.length === 0) return;
          post({ t: "held", d: relay.out });
          relay.out = [];
        },
      },
      () => serving,
    );
    undo.push(stopServing);
    // Leases expire only once it serves: until then the main thread's begin()
    // installs the sessions `ready` listed below, and a session expired here
    // before that install would stay in the kernel with no thread owning it.
    const timers = [
      setInterval(() => {
        if (!serving) return;
        core.expire(16384);
        core.sweepRateLimits();
      }, 250),
    ];
    if (store) timers.push(setInterval(() => store.maintain(), 60_000));
    // Its totals for the main thread's metrics.
    timers.push(setInterval(() => post({ t: "stats", header: core.statusHeader() }), 1000));
    undo.push(() => timers.forEach(clearInterval));
    post({
      t: "ready",
      restored,
      adopted,
      lines: drops.lines(),
      renewsEpoch: prior !== null && drops.renewsEpoch,
      sessions: [...core.sessions()],
    });
    return {
      core,
      serve: (epoch) => {
        if (epoch !== core.epoch) core.renewEpoch(epoch);
        // As the main thread does after its restore: rows the policy refuses now go
        // (the gateway's own ports arrived before this message).
        const audited = core.audit();
        if (audited) {
          log.warn(
            `worker ${index}: removed ${audited} restored row(s) the mapping policy refuses now`,
          );
          core.commit();
        }
        serving = true;
      },
      reprogram: () => {
        dp?.reinstalled?.(core.sessions());
      },
      stop: async () => {
        serving = false;
        // Every change is committed; the state file closes last, with the table as it is.
        core.commit();
        while (undo.length) await undo.pop()!();
        log.debug(`worker ${index}: stopped, ${saved} session(s) saved`);
        return saved;
      },
    };
  } catch (e) {
    while (undo.length) await undo.pop()!();
    throw e;
  }
}
