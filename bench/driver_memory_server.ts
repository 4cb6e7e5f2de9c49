/**
 * The server side of bench/driver_memory.ts, in a Worker of its own (so
 * that its heap is not the driver's): a real ServerCore answering the
 * datagrams the driver's client sends, as its control socket would (every
 * datagram of a message handled, the turn committed, the answers sent back).
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { ServerCore } from "../src/server/core.ts";
import { setLevel } from "../src/runtime/log.ts";
import { H1, LAN, R1, R2, serverCfg } from "../testing/fixtures.ts";

setLevel("error");
let server: ServerCore | null = null;

self.onmessage = (e: MessageEvent) => {
  const m = e.data as { init?: number; datagrams?: Uint8Array[]; size?: boolean };
  if (m.init !== undefined) {
    server = new ServerCore(
      serverCfg({
        pool: [R1, R2],
        maxSessionsPerHost: m.init + 10,
        rateLimit: 1e9,
        gatewayPorts: [1024, 65535],
      }),
      { lan: LAN },
    );
    self.postMessage({ ready: true });
    return;
  }
  if (m.size) {
    self.postMessage({ size: server!.table.size });
    return;
  }
  const answers: Uint8Array[] = [];
  for (const d of m.datagrams ?? []) {
    const a = server!.handleControl(d, H1);
    if (a) answers.push(a);
  }
  server!.commit();
  self.postMessage({ answers });
};
