/**
 * The control socket of `dpm server` (dpm's protocol, `linux/udp.ts`):
 * opening it (alone, or as one of the workers' `SO_REUSEPORT` group with
 * the reuseport program that shards hosts by source address,
 * `linux/reuseport.ts`) and serving it, one commit per turn before the
 * answers. The main thread (`run.ts`) and each worker (`worker.ts`) serve
 * their own.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import { logger } from "../runtime/log.ts";
import type { ServerCore } from "./core.ts";
import { serveUdp, UdpSocket } from "../../linux/udp.ts";
import { EADDRINUSE, EADDRNOTAVAIL, OsError } from "../../linux/libc.ts";
import { shardBySourceProgram } from "../../linux/reuseport.ts";
import { MAX_DATAGRAM } from "../control/batch.ts";
import { workerOf } from "../table/slice.ts";
import { reserveLatency } from "./metrics.ts";

const log = logger("server");

/**
 * Datagrams read and answered per system call on the control socket: a
 * turn commits at least once per this many answers (see serveControl).
 */
export const CONTROL_BATCH = 256;

/**
 * The control socket on `addr:port` (G, the LAN side), or an error that says
 * why not: a port in use fails the start before anything changed. With
 * `workers` > 1 it is the first of the workers' `SO_REUSEPORT` group, and
 * carries the group's reuseport program (source address mod `workers`),
 * attached before it binds.
 */
export function openControl(addr: number, port: number, workers = 1): UdpSocket {
  try {
    return UdpSocket.open({
      addr,
      port,
      maxDatagram: MAX_DATAGRAM + 64,
      batch: CONTROL_BATCH,
      ...(workers > 1 ? { reusePort: true, reuseportProgram: shardBySourceProgram(workers) } : {}),
    });
  } catch (e) {
    const err = e instanceof OsError ? e.errno : 0;
    throw new Error(
      err === EADDRNOTAVAIL
        ? `--lan-addr ${formatIPv4(addr)} is not an address of this host`
        : err === EADDRINUSE
        ? `Control port ${formatIPv4(addr)}:${port} is in use (another dpm server?)`
        : `Cannot bind the control port: ${(e as Error).message}`,
    );
  }
}

/**
 * Answers dpm's protocol on the control socket (`linux/udp.ts`: one wake-up
 * reads every waiting datagram with `recvmmsg`). A grant is answered only
 * after its changes are committed: every datagram of the wake-up is
 * handled, then the turn's changes are committed once (`core.commit`: the
 * data path in one transaction, the state file), then the first packets
 * held for these grants go on, then every answer goes out in one `sendmmsg`.
 * A turn with more answers than the socket's send batch commits and sends
 * when the batch is full, then goes on: the socket would otherwise send the
 * full batch itself, before the commit. Returns what stops it. Exported for
 * tests.
 */
export function serveControl(
  sock: UdpSocket,
  core: Pick<ServerCore, "handleControl" | "commit" | "releaseHeld">,
  serving: () => boolean,
): () => void {
  const endTurn = () => {
    try {
      core.commit();
    } catch (e) {
      // Nothing uncommitted is granted: the answers go, the drivers ask again.
      sock.discard();
      log.error(`committing the control turn: ${(e as Error).stack ?? e}`);
      return;
    }
    // The first packets that waited for these grants go on first (a driver
    // that proposed its Pg translates already: the packet is what waits),
    // then the answers.
    core.releaseHeld();
    sock.flush();
  };
  return serveUdp(
    sock,
    (msg, src, port) => {
      // Before the data path is up, requests go unanswered: drivers retransmit.
      if (!serving()) return;
      let reply: Uint8Array | null = null;
      const t0 = performance.now();
      try {
        reply = core.handleControl(msg, src);
      } catch (e) {
        // A bug must cost one datagram, not the gateway.
        log.error(`handling a control request from ${formatIPv4(src)}: ${(e as Error).stack ?? e}`);
      }
      if (!reply) return;
      if (sock.full) endTurn();
      sock.queue(reply, reply.length, src, port);
      reserveLatency.observe((performance.now() - t0) / 1000);
    },
    endTurn,
    (e) => log.error(`control socket: ${e.message}`),
  );
}

/**
 * The part of a core that a worker's control socket uses, answering only
 * the hosts of worker `index` of `count`: a datagram from another worker's
 * host (the kernel's hash while the reuseport group was still being
 * built) is dropped and counted in `misrouted`; its driver retransmits.
 */
export function shardGuard(
  core: Pick<ServerCore, "handleControl" | "commit" | "releaseHeld">,
  index: number,
  count: number,
): Pick<ServerCore, "handleControl" | "commit" | "releaseHeld"> & { misrouted: number } {
  const g = {
    misrouted: 0,
    handleControl: (msg: Uint8Array, src: number) => {
      if (count > 1 && workerOf(src, count) !== index) {
        g.misrouted++;
        return null;
      }
      return core.handleControl(msg, src);
    },
    commit: () => core.commit(),
    releaseHeld: () => core.releaseHeld(),
  };
  return g;
}
