/**
 * The driver's memory per session: creates N UDP sessions in a DriverCore
 * (each from its first packet, as the queue hands it over), its real control
 * client answered by a real ServerCore in a Worker (its heap apart:
 * bench/driver_memory_server.ts), and reports the driver's heap growth per
 * session after a full GC, and while every request is still in flight (the
 * cost of a burst).
 *
 *   deno run -A --v8-flags=--expose-gc bench/driver_memory.ts [N] [kernel|queue]
 *
 * Not a test: it prints figures (one JSON line) and asserts nothing.
 * bench/run.ts runs it once per data path, each in a fresh process
 * ({@linkcode driverMemoryChild}): the figures are heap growth, so the heap
 * must hold nothing else, and `gc()` needs `--v8-flags=--expose-gc`.
 *
 * @module
 */

import { DriverCore } from "../src/driver/core.ts";
import { ControlClient, type DatagramLink } from "../src/control/client.ts";
import type {
  DataPathKind,
  DriverDataPath,
  HostSessionKey,
  PacketIO,
} from "../src/datapath/datapath.ts";
import { Verdict } from "../src/wire/meta.ts";
import { rewriteToGateway } from "../src/wire/rewrite.ts";
import { buildUdp } from "../testing/packets.ts";
import { setLevel } from "../src/runtime/log.ts";
import { driverCfg, H1, LAN, P1 } from "../testing/fixtures.ts";

/** What {@linkcode driverMemory} measured (the JSON line the CLI prints). */
export interface DriverMemory {
  /** Sessions created (N). */
  sessions: number;
  /** Of them, reserved (state active) once every answer arrived. */
  active: number;
  datapath: DataPathKind;
  /** Heap growth per session once every session is settled (after a full GC). */
  driverBytesPerSession: number;
  /** Heap growth per session while every request is still in flight (a burst). */
  inFlightBytesPerSession: number;
  heapBefore: number;
  rss: number;
  /** Sessions in the server's table afterwards (N + 1: the cookie session). */
  serverSessions: number;
}

const gcOf = () => (globalThis as { gc?: () => void }).gc;

/**
 * Creates `n` UDP sessions in a DriverCore of data path `datapath`, answered
 * by a ServerCore through the in-memory Pipe, and measures the driver's heap.
 * Needs `gc` (`--v8-flags=--expose-gc`) and a heap that holds nothing else:
 * run it in its own process (the CLI, {@linkcode driverMemoryChild}).
 */
export async function driverMemory(
  n: number,
  datapath: DataPathKind,
): Promise<DriverMemory> {
  const maybeGc = gcOf();
  if (!maybeGc) throw new Error("driverMemory needs gc: run with --v8-flags=--expose-gc");
  const gc: () => void = maybeGc;
  setLevel("error");
  const N = n;
  /** The kernel and bpf paths translate established packets in the kernel. */
  const kernel = datapath !== "queue";
  /** A data path that keeps nothing (the fakes record every call). */
  const io: PacketIO = { verdict: () => {}, flush: () => {}, send: () => {} };
  const dp: DriverDataPath = {
    kind: datapath,
    can: { keepsSessions: kernel, commitsFirst: kernel },
    io,
    adopt: () => Promise.resolve([]),
    begin: () => Promise.resolve(),
    outbound: (pkt, info, g, pg, skb) =>
      kernel && info.proto !== 1 ? Verdict.ACCEPT : rewriteToGateway(pkt, info, g, pg, skb),
    sessionUp: (_: HostSessionKey) => {},
    commit: () => {},
    sessionDown: (_: HostSessionKey) => {},
    activity: () => kernel ? new Map() : null,
    status: () => ({ kind: datapath, state: "on", reinstalls: 0 }),
    stop: () => Promise.resolve(),
  };

  async function heap(): Promise<number> {
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 0));
      gc();
    }
    return Deno.memoryUsage().heapUsed;
  }

  // The server in a Worker: its heap is not the driver's. The real client
  // talks to it over an in-memory datagram link (postMessage).
  const worker = new Worker(new URL("./driver_memory_server.ts", import.meta.url), {
    type: "module",
  });
  const reply = (f: (m: any) => boolean) =>
    new Promise<any>((resolve) => {
      const on = (e: MessageEvent) => {
        if (f(e.data)) {
          worker.removeEventListener("message", on);
          resolve(e.data);
        }
      };
      worker.addEventListener("message", on);
    });
  worker.postMessage({ init: N });
  await reply((m) => m.ready);
  const queue: Uint8Array[] = [];
  const link: DatagramLink = {
    onReceive: null,
    send: (data, len) => void queue.push(data.slice(0, len)),
    flush: () => {
      if (queue.length) worker.postMessage({ datagrams: queue.splice(0) });
    },
    close: () => {},
  };
  worker.addEventListener("message", (e: MessageEvent) => {
    for (const a of (e.data.answers ?? []) as Uint8Array[]) link.onReceive?.(a);
  });
  const client = new ControlClient(link, H1, { rate: 1e9, window: N + 10 });
  const d = new DriverCore(driverCfg({ gatewayPorts: [1024, 65535] }), client, {
    lan: LAN,
    ephemeral: [1024, 65535],
  });
  d.attach(dp, io);
  // N sessions from one host: ports 1024.. toward two peers' ports. Each
  // packet is built as it is handed over, never kept here: packets built
  // ahead (before the baseline) were counted in the baseline, then freed
  // once V8's on-stack replacement of the loop ended their liveness:
  // always by the settled measurement (~210 B per session off it), by the
  // in-flight one in some runs only (the 2.39x / 1.55x of earlier runs).
  const packet = (i: number) =>
    buildUdp({
      src: H1,
      dst: P1,
      sport: 1024 + (i % 60000),
      dport: 7000 + Math.floor(i / 60000),
      payload: new Uint8Array(32),
    });

  // The driver learns the server's cookie with a session of its own first.
  d.handlePacket(buildUdp({ src: H1, dst: P1, sport: 9, dport: 9 }), 0, true);
  await new Promise((r) => setTimeout(r, 0));
  const t0 = await heap();
  for (let i = 0; i < N; i++) d.handlePacket(packet(i), i + 1, true);
  // Every request is in flight now (the server's answers are messages the
  // driver's event loop has not taken yet): what a burst costs before it is answered.
  gc();
  const inFlight = Deno.memoryUsage().heapUsed - t0;
  // Then every answer, and the client's timers run out.
  while (client.pending > 0) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  const t1 = await heap();
  const active = [...d.sessions()].filter((s) => s.state === 1).length - 1;
  const driverBytes = t1 - t0;
  return {
    sessions: N,
    active,
    datapath: dp.kind,
    driverBytesPerSession: Math.round(driverBytes / N),
    inFlightBytesPerSession: Math.round(inFlight / N),
    heapBefore: t0,
    rss: Deno.memoryUsage().rss,
    serverSessions: await (async () => {
      worker.postMessage({ size: true });
      const size = (await reply((m) => m.size !== undefined)).size as number;
      worker.terminate();
      client.close();
      return size;
    })(),
  };
}

/**
 * Runs {@linkcode driverMemory} in a fresh `deno run --v8-flags=--expose-gc`
 * process (this file's CLI) and returns its figures.
 */
export async function driverMemoryChild(
  n: number,
  datapath: DataPathKind,
  timeoutMs = 300_000,
): Promise<DriverMemory> {
  const c = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      "--v8-flags=--expose-gc",
      import.meta.filename!,
      String(n),
      datapath,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  const timer = setTimeout(() => {
    try {
      c.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, timeoutMs);
  try {
    const o = await c.output();
    const out = new TextDecoder().decode(o.stdout).trim();
    if (o.code !== 0) {
      throw new Error(
        `driver_memory.ts ${n} ${datapath} failed (${o.code}): ${
          new TextDecoder().decode(o.stderr)
        }`,
      );
    }
    return JSON.parse(out.split("\n").pop()!) as DriverMemory;
  } finally {
    clearTimeout(timer);
  }
}

if (import.meta.main) {
  const n = Number(Deno.args[0] ?? 20_000);
  const arg = Deno.args[1] ?? "kernel";
  const datapath: DataPathKind = arg === "bpf" || arg === "queue" ? arg : "kernel";
  if (!gcOf()) {
    console.error("run with --v8-flags=--expose-gc");
    Deno.exit(2);
  }
  const r = await driverMemory(n, datapath);
  console.log(JSON.stringify(r));
  if (r.serverSessions !== n + 1) console.error(`server holds ${r.serverSessions} sessions`);
}
