/**
 * The driver's memory per session: creates N UDP sessions in a DriverCore
 * (each from its first packet, as the queue hands it over), answered by a
 * real ServerCore through the in-memory Pipe (testing/fixtures.ts), and
 * reports the driver's heap growth per session after a full GC. The
 * server's share is measured apart and subtracted (its table is
 * preallocated in slabs, see bench/table_bench.ts).
 *
 *   deno run -A --v8-flags=--expose-gc bench/driver_memory.ts [N] [kernel|queue]
 *
 * Not a test: it prints figures and asserts nothing.
 *
 * @module
 */

import { DriverCore } from "../src/driver/core.ts";
import { ServerCore } from "../src/server/core.ts";
import type { DriverDataPath, HostSessionKey, PacketIO } from "../src/datapath/datapath.ts";
import { buildUdp } from "../testing/packets.ts";
import { newNonce } from "../src/control/proto.ts";
import { setLevel } from "../src/runtime/log.ts";
import { driverCfg, H1, LAN, P1, Pipe, R1, R2, serverCfg } from "../testing/fixtures.ts";

setLevel("error");
const N = Number(Deno.args[0] ?? 20_000);
const kernel = (Deno.args[1] ?? "kernel") === "kernel";
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  console.error("run with --v8-flags=--expose-gc");
  Deno.exit(2);
}

/** A data path that keeps nothing (the fakes record every call). */
const dp: DriverDataPath = {
  kind: kernel ? "kernel" : "queue",
  kernelTranslates: (p) => kernel && p !== 1,
  sessionUp: (_: HostSessionKey) => {},
  sessionDown: (_: HostSessionKey) => {},
  activity: () => kernel ? new Map() : null,
  adopted: () => [],
  status: () => ({ kind: kernel ? "kernel" : "queue", state: "on", reinstalls: 0 }),
  stop: () => Promise.resolve(),
};
const io: PacketIO = { verdict: () => {}, flush: () => {}, send: () => {} };

async function heap(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 0));
    gc!();
  }
  return Deno.memoryUsage().heapUsed;
}

const server = new ServerCore(
  serverCfg({
    pool: [R1, R2],
    maxSessionsPerHost: N + 10,
    rateLimit: 1e9,
    gatewayPorts: [1024, 65535],
  }),
  { lan: LAN },
);
const pipe = new Pipe(server, H1);
pipe.sent = { push: () => 0 } as unknown as typeof pipe.sent; // keep no request log
const d = new DriverCore(driverCfg({ gatewayPorts: [1024, 65535] }), pipe, { lan: LAN, ephemeral: [1024, 65535] });
d.attach(dp, io);
const pkts: Uint8Array[] = [];
for (let i = 0; i < N; i++) {
  // N sessions from one host: ports 1024.. toward two peers' ports.
  const sport = 1024 + (i % 60000);
  const dport = 7000 + Math.floor(i / 60000);
  pkts.push(buildUdp({ src: H1, dst: P1, sport, dport, payload: new Uint8Array(32) }));
}

const before = await heap();
// Server share: the same requests straight to a second server, no driver.
const s2 = new ServerCore(
  serverCfg({
    pool: [R1, R2],
    maxSessionsPerHost: N + 10,
    rateLimit: 1e9,
    gatewayPorts: [1024, 65535],
  }),
  { lan: LAN },
);
const s2before = await heap();
{
  const p2 = new Pipe(s2, H1);
  p2.sent = { push: () => 0 } as unknown as typeof p2.sent;
  for (let i = 0; i < N; i++) {
    const sport = 1024 + (i % 60000);
    const dport = 7000 + Math.floor(i / 60000);
    await p2.request({
      op: 1,
      nonce: newNonce(),
      proto: 17,
      replaceable: true,
      internalAddr: H1,
      internalPort: sport,
      remoteAddr: P1,
      remotePort: dport,
      lifetime: 0,
    });
  }
}
const serverShare = (await heap()) - s2before;

const t0 = await heap();
for (let i = 0; i < N; i++) d.handlePacket(pkts[i]!, i + 1, true);
// Every request is in flight now (the Pipe's answers are promise callbacks
// that have not run yet): what a burst costs before it is answered.
gc();
const inFlight = Deno.memoryUsage().heapUsed - t0 - serverShare;
const t1 = await heap();
const active = [...d.sessions()].filter((s) => s.state === 1).length;
const driverBytes = t1 - t0 - serverShare;
console.log(JSON.stringify({
  sessions: N,
  active,
  datapath: dp.kind,
  driverBytesPerSession: Math.round(driverBytes / N),
  inFlightBytesPerSession: Math.round(inFlight / N),
  serverBytesPerSession: Math.round(serverShare / N),
  heapBefore: before,
  rss: Deno.memoryUsage().rss,
}));
// Keep both alive until measured.
if (s2.table.size < 0 || server.table.size < 0) console.log("");
