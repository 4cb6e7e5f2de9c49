/**
 * The main thread's side of `dpm server --workers N` (docs/performance.md,
 * "Cores"): it starts workers 1..N-1 (`worker.ts`, Deno module workers:
 * threads of the same process), hands each the sessions of its hosts that
 * the kernel still translates, tells them when to serve and what the
 * gateway's own addresses and sockets are, lets go the first packets they
 * decided on, merges their views for the operator, and stops them.
 *
 * The main thread is worker 0 rather than a coordinator with no hosts: with
 * N = 1 nothing changes (no thread, no message), and what must stay in one
 * place (the data path's rules and its queue of held first packets, PCP and
 * NAT-PMP, UPnP, the operator socket, metrics) is where it always was.
 *
 * State: each worker k keeps its own state file beside the main one,
 * `<--state>.worker<k>`, and a marker `<--state>.workers` names N. A start
 * with another N refuses, naming both (`checkWorkerCount`): the sessions
 * of a host would be in another worker's file and on ports of another
 * worker's slice.
 *
 * @module
 */

import { ConfigError } from "../config.ts";
import type { GatewaySession } from "../datapath/datapath.ts";
import type { BoundPort } from "../policy/gateway_ports.ts";
import type { StatusReply } from "../operator/types.ts";
import { type Format, type Level, logger } from "../runtime/log.ts";
import { parseIPv4 } from "../wire/addr.ts";
import { type LocalHandler, LocalStream, type Peer } from "../operator/socket.ts";
import type { ServerCore } from "./core.ts";
import { sliceOf, workerOf } from "../table/slice.ts";
import { Drop, type PacketInfo, parse } from "../wire/packet.ts";
import {
  type DropSelector,
  type WorkerInit,
  type WorkerReply,
  type WorkerRequest,
  workerStatePath,
  type WorkerStatus,
} from "./worker_messages.ts";

export { workerStatePath };

const log = logger("server");

/**
 * The worker module: `worker.ts` beside this one (from source, and in a
 * `deno compile`d executable, which embeds it: build.ts `INCLUDE`), or
 * `dpm.worker.js` beside the bundle when dpm runs from `deno bundle`'s
 * single file (build.ts bundles the worker on its own).
 */
function workerModule(): string {
  const here = import.meta.url;
  return new URL(here.endsWith(".ts") ? "./worker.ts" : "./dpm.worker.js", here).href;
}

/** The marker that names how many workers wrote the state files. */
function markerPath(state: string): string {
  return `${state}.workers`;
}

/**
 * Refuses a start whose worker count differs from the one that wrote the
 * state files (ConfigError, naming both), then records `n`. A state file
 * without a marker was written by one worker.
 */
export async function checkWorkerCount(state: string, n: number): Promise<void> {
  let was: number | null = null;
  try {
    was = Number((await Deno.readTextFile(markerPath(state))).trim());
  } catch {
    // No marker: one worker wrote it, if anything did.
    try {
      await Deno.stat(state);
      was = 1;
    } catch {
      was = null;
    }
  }
  if (was !== null && was !== n) {
    throw new ConfigError(
      `--state ${state} was written by --workers ${was}, not ${n}: a host's sessions are in its ` +
        `worker's file, on ports of its worker's slice. Start with --workers ${was}, or remove ` +
        `${state}* to start afresh (sessions the kernel still translates are adopted again)`,
    );
  }
  if (n > 1) await Deno.writeTextFile(markerPath(state), `${n}\n`, { mode: 0o600 });
  else await Deno.remove(markerPath(state)).catch(() => {});
}

/** What every worker said once it was ready. */
export interface WorkersReady {
  lines: string[];
  renewsEpoch: boolean;
  restored: number;
  adopted: number;
  /** Their sessions, for the data path's first install (`begin`). */
  sessions: GatewaySession[];
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** One running worker thread. */
class WorkerThread {
  readonly #w: Worker;
  readonly #pending = new Map<number, Pending>();
  #ready: Pending | null = null;
  #stopped: Pending | null = null;
  #next = 1;
  #exited = false;
  /** The worker's last status header (`stats`, once a second). */
  latest: Omit<StatusReply, "shown"> | null = null;

  constructor(
    readonly index: number,
    onHeld: (d: number[]) => void,
    onFatal: (e: Error) => void,
    onVerdict: (id: number, v: number, bytes?: Uint8Array) => void,
  ) {
    this.#w = new Worker(workerModule(), {
      type: "module",
      name: `dpm-server-worker-${index}`,
    });
    this.#w.onmessage = (ev: MessageEvent<WorkerReply>) => {
      const m = ev.data;
      switch (m.t) {
        case "ready":
          this.#ready?.resolve(m);
          this.#ready = null;
          break;
        case "held":
          onHeld(m.d);
          break;
        case "stats":
          this.latest = m.header;
          break;
        case "verdict":
          onVerdict(m.id, m.v, m.bytes);
          break;
        case "status":
        case "dropped": {
          const p = this.#pending.get(m.id);
          this.#pending.delete(m.id);
          p?.resolve(m);
          break;
        }
        case "stopped":
          this.#exited = true;
          this.#stopped?.resolve(m.saved);
          break;
        case "error": {
          const e = new Error(`worker ${index}: ${m.message}`);
          if (this.#ready) {
            this.#ready.reject(e);
            this.#ready = null;
          } else onFatal(e);
        }
      }
    };
    this.#w.onerror = (ev) => {
      ev.preventDefault();
      const e = new Error(`worker ${index}: ${ev.message}`);
      if (this.#ready) this.#ready.reject(e);
      else onFatal(e);
    };
  }

  post(m: WorkerRequest): void {
    if (!this.#exited) this.#w.postMessage(m);
  }

  init(init: WorkerInit): Promise<Extract<WorkerReply, { t: "ready" }>> {
    return new Promise((resolve, reject) => {
      this.#ready = { resolve: resolve as (v: unknown) => void, reject };
      this.post({ t: "init", init });
    });
  }

  ask<T>(m: { t: "status"; host?: number; limit?: number } | { t: "drop"; sel: DropSelector }) {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.post({ ...m, id } as WorkerRequest);
    });
  }

  /** Stops the worker (its state committed and closed); terminates it if it does not answer. */
  async stop(): Promise<number> {
    if (this.#exited) {
      this.#w.terminate();
      return 0;
    }
    const saved = new Promise<number>((resolve, reject) => {
      this.#stopped = { resolve: resolve as (v: unknown) => void, reject };
    });
    this.post({ t: "stop" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<number>((resolve) => {
      timer = setTimeout(() => {
        log.warn(`worker ${this.index} did not stop within 10 s: terminated`);
        resolve(0);
      }, 10_000);
    });
    try {
      return await Promise.race([saved, timeout]);
    } finally {
      clearTimeout(timer);
      this.#exited = true;
      this.#w.terminate();
      for (const p of this.#pending.values()) p.reject(new Error("worker stopped"));
      this.#pending.clear();
    }
  }
}

/** Workers 1..N-1 of `dpm server --workers N`, seen from the main thread (worker 0). */
export class ServerWorkers {
  readonly #threads: WorkerThread[] = [];
  readonly count: number;

  private constructor(count: number) {
    this.count = count;
  }

  /**
   * Starts workers 1..N-1, one after the other (each binds its control
   * socket in index order: the reuseport program's index is the order the
   * sockets joined), each with `adopted[k]`; resolves once all are ready,
   * with what they restored. `onHeld` gets their decisions on held first
   * packets (five numbers each: proto, a, pa, Pg, granted); `onFatal` a
   * worker that failed while running. A start that fails stops the ones
   * started.
   */
  static async start(
    base: Omit<WorkerInit, "index" | "adopted">,
    adopted: GatewaySession[][],
    onHeld: (d: number[]) => void,
    onFatal: (e: Error) => void,
    onVerdict: (id: number, v: number, bytes?: Uint8Array) => void,
  ): Promise<{ workers: ServerWorkers; ready: WorkersReady }> {
    const w = new ServerWorkers(base.count);
    const ready: WorkersReady = {
      lines: [],
      renewsEpoch: false,
      restored: 0,
      adopted: 0,
      sessions: [],
    };
    try {
      for (let k = 1; k < base.count; k++) {
        const t = new WorkerThread(k, onHeld, onFatal, onVerdict);
        w.#threads.push(t);
        const r = await t.init({ ...base, index: k, adopted: adopted[k] ?? [] });
        ready.lines.push(...r.lines.map((l) => `worker ${k}: ${l}`));
        ready.renewsEpoch ||= r.renewsEpoch;
        ready.restored += r.restored;
        ready.adopted += r.adopted;
        for (const s of r.sessions) ready.sessions.push(s);
      }
    } catch (e) {
      await w.stop();
      throw e;
    }
    return { workers: w, ready };
  }

  /** Every worker answers from now on, at `epoch`. */
  serve(epoch: number): void {
    for (const t of this.#threads) t.post({ t: "serve", epoch });
  }

  /** The gateway's own addresses and sockets (`ServerCore.gatewayState`), for every worker. */
  gatewayState(local: ReadonlySet<number>, tcp: BoundPort[], udp: BoundPort[]): void {
    const m: WorkerRequest = { t: "gateway", local: [...local], tcp, udp };
    for (const t of this.#threads) t.post(m);
  }

  /**
   * Hands worker `k` a packet the data path handed up (queue id `id`) for
   * its translator; its verdict comes back through `onVerdict`.
   */
  translate(k: number, id: number, bytes: Uint8Array, meta: number): void {
    this.#threads[k - 1]?.post({ t: "packet", id, bytes, meta });
  }

  /** SIGHUP's live settings, for every worker's log. */
  logSettings(level: Level, format: Format): void {
    for (const t of this.#threads) t.post({ t: "log", level, format });
  }

  /** Every worker's last status header (at most a second old), for the metrics. */
  latestHeaders(): Omit<StatusReply, "shown">[] {
    return this.#threads.flatMap((t) => t.latest ? [t.latest] : []);
  }

  /** Every worker programs all its sessions again (the data path's table was reinstalled). */
  reprogram(): void {
    for (const t of this.#threads) t.post({ t: "reprogram" });
  }

  /** Each worker's status header and rows (of `host` only, at most `limit` each). */
  status(o: { host?: number; limit?: number }): Promise<WorkerStatus[]> {
    return Promise.all(this.#threads.map((t) => t.ask<WorkerStatus>({ t: "status", ...o })));
  }

  /** Drops in the worker that owns the host (`sel`'s `a` or `host`); how many went. */
  async drop(sel: DropSelector, owner: number): Promise<number> {
    const t = this.#threads[owner - 1];
    if (!t) return 0;
    return (await t.ask<{ n: number }>({ t: "drop", sel })).n;
  }

  /** Stops every worker; returns the sessions they saved. */
  async stop(): Promise<number> {
    const saved = await Promise.all(this.#threads.map((t) => t.stop()));
    this.#threads.length = 0;
    return saved.reduce((a, b) => a + b, 0);
  }
}

/** The adopted sessions split by the worker that owns each host. */
export function splitByWorker(
  sessions: GatewaySession[],
  count: number,
  workerOf: (a: number, n: number) => number,
): GatewaySession[][] {
  const out: GatewaySession[][] = Array.from({ length: count }, () => []);
  for (const s of sessions) out[workerOf(s.a, count)]!.push(s);
  return out;
}

/** Sums worker status headers into the main thread's (the operator sees one server). */
export function mergeHeaders(
  main: Omit<StatusReply, "shown">,
  others: Omit<StatusReply, "shown">[],
): Omit<StatusReply, "shown"> {
  const out = structuredClone(main);
  const add = (
    into: Record<string, number> | undefined,
    from: Record<string, number> | undefined,
  ) => {
    if (!into || !from) return;
    for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
  };
  for (const h of others) {
    out.sessions += h.sessions;
    add(out.results, h.results);
    add(out.drops, h.drops);
    add(
      out.packets as unknown as Record<string, number>,
      h.packets as unknown as Record<string, number>,
    );
    add(out.held, h.held);
    add(out.datagrams, h.datagrams);
  }
  return out;
}

/**
 * The operator socket of a server with workers: `status` merges every
 * worker's header and rows into the main thread's (the operator sees one
 * server; a host's view comes from the worker that owns it), `drop` drops
 * in the main thread (PCP, NAT-PMP and UPnP rows are its) and in the
 * host's worker; anything else (`watch`: the main thread's events only)
 * goes to `single`, the one-worker handler.
 */
export async function workersOperator(
  req: unknown,
  core: Pick<ServerCore, "statusHeader" | "rows" | "drop" | "commit">,
  workers: ServerWorkers | null,
  single: LocalHandler,
  peer?: Peer,
): Promise<unknown> {
  const r = (req ?? {}) as Record<string, unknown>;
  if (workers === null || (r.op !== "status" && r.op !== "drop")) return await single(req, peer);
  const host = typeof r.host === "string" ? parseIPv4(r.host) ?? undefined : undefined;
  if (r.host !== undefined && r.host !== null && host === undefined) return await single(req, peer);
  if (r.op === "drop") {
    const reply = await single(req, peer) as { dropped?: number; error?: string };
    if (reply.error) return reply;
    let sel: DropSelector | null = null;
    if (host !== undefined) sel = { host };
    else {
      // The single handler parsed and checked the selector; parse it again for the worker.
      const { parseAddrPort } = await import("../wire/addr.ts");
      const { protoNumber } = await import("../wire/meta.ts");
      const proto = protoNumber(String(r.proto))!;
      const i = parseAddrPort(String(r.internal))!;
      const x = parseAddrPort(String(r.remote)) ??
        { addr: parseIPv4(String(r.remote)) ?? 0, port: 0 };
      sel = { proto, a: i.addr, pa: i.port, x: x.addr, px: proto === 1 ? 0 : x.port };
    }
    const a = "host" in sel ? sel.host : sel.a;
    const owner = workerOf(a, workers.count);
    const n = owner === 0 ? 0 : await workers.drop(sel, owner);
    return { dropped: (reply.dropped ?? 0) + n };
  }
  const limit = typeof r.limit === "number" && r.limit >= 0
    ? r.limit
    : r.stream === true
    ? undefined
    : 1000;
  const o = { ...(host !== undefined ? { host } : {}), ...(limit !== undefined ? { limit } : {}) };
  const theirs = await workers.status(o);
  const header = mergeHeaders(core.statusHeader(host), theirs.map((w) => w.header));
  if (host !== undefined) {
    const owner = workerOf(host, workers.count);
    const view = owner > 0 ? theirs[owner - 1]?.header.host : undefined;
    if (view) header.host = view;
  }
  const rows = function* () {
    let n = 0;
    for (const v of core.rows(o)) {
      if (limit !== undefined && n >= limit) return;
      n++;
      yield v;
    }
    for (const w of theirs) {
      for (const v of w.rows) {
        if (limit !== undefined && n >= limit) return;
        n++;
        yield v;
      }
    }
  };
  if (r.stream === true) {
    return new LocalStream(header as unknown as Record<string, unknown>, () => rows());
  }
  return { ...header, shown: [...rows()] };
}

/**
 * The worker whose sessions translate a packet the data path handed up
 * (ICMP, hairpins: the queue translator's, `translate.ts`): from the LAN
 * (to G, or straight at a remote), the sender's worker; from the WAN (to a
 * pool address), the worker whose port slice holds the public port (an
 * ICMP echo's identifier; an ICMP error's quoted `R:p`). 0 (the main
 * thread) for what does not parse.
 */
export function packetOwner(
  pkt: Uint8Array,
  info: PacketInfo,
  cfg: { lanAddr: number; portRange: readonly [number, number] },
  pool: ReadonlySet<number>,
  count: number,
): number {
  if (count === 1 || parse(pkt, pkt.length, info) !== Drop.NONE) return 0;
  if (info.dst !== cfg.lanAddr && pool.has(info.dst)) {
    const p = info.icmpError ? info.innerSport : info.dport;
    return sliceOf(cfg.portRange[0], cfg.portRange[1], count, p);
  }
  return workerOf(info.src, count);
}
