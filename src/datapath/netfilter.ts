/**
 * Netfilter plumbing shared by the data paths, so that no path imports
 * another: the queue a role reads packets from, its packet I/O, and the
 * "others" hook through which a starting path removes what a run of
 * another path left behind (chosen in `open.ts`).
 *
 * @module
 */

import { Meta, Verdict, type VerdictValue } from "../wire/meta.ts";
import type { Cleanup } from "../runtime/cleanup.ts";
import type { DriverPacketHandler, PacketIO, ServerPacketHandler } from "./datapath.ts";
import { NfQueue, pump, VERDICT_ACCEPT, VERDICT_DROP } from "../../linux/nfqueue.ts";
import { RawSocket } from "../../linux/rawsock.ts";

/**
 * Where a role keeps its sysctl journal (`linux/sysctl.ts`): beside its
 * operator socket, so that each role in each namespace has its own and a
 * run killed with SIGKILL is undone by the next start or `--cleanup`.
 */
export function sysctlJournal(socket: string): string {
  return `${socket}.sysctls.json`;
}

/** NF_INET_LOCAL_OUT: the hook number of raw OUTPUT (a packet leaving the host). */
const HOOK_LOCAL_OUT = 3;

/**
 * What a run of another data path may have left (a SIGKILLed run, or a
 * switch of `--datapath`): removed by `begin` before it installs its own,
 * so the leftovers never steal packets from it.
 */
export interface OtherPaths {
  removeLeftovers(): Promise<void>;
}

/** No other path to clear (tests, `--cleanup`). */
export const NO_OTHER_PATHS: OtherPaths = { removeLeftovers: () => Promise.resolve() };

/** The queue's verdict number for a handler's verdict (MODIFIED carries its payload). */
export function nfVerdict(v: VerdictValue): number {
  return v === Verdict.DROP ? VERDICT_DROP : VERDICT_ACCEPT;
}

/**
 * Opens a role's queue and the raw socket for ICMP errors to hosts, with
 * the packet I/O over them; `undo` closes both.
 */
export function openQueue(queueNum: number, undo: Cleanup): { queue: NfQueue; io: PacketIO } {
  const queue = NfQueue.open({ queue: queueNum, failOpen: false });
  undo.push(() => queue.close());
  const raw = RawSocket.open();
  undo.push(() => raw.close());
  const io: PacketIO = {
    verdict: (id, v, payload) =>
      queue.verdict(id, nfVerdict(v), v === Verdict.MODIFIED ? payload : undefined),
    flush: () => queue.flush(),
    send: (pkt, len, dst) => raw.send(pkt, len, dst),
  };
  return { queue, io };
}

/** Pumps a host's `queue` into `handle` (outbound: from raw OUTPUT); the returned function stops it. */
export function pumpHost(
  queue: NfQueue,
  handle: DriverPacketHandler,
  onFatal: (e: Error) => void,
): () => void {
  return pump(
    queue,
    (pkt, id, hook, meta) => handle(pkt, id, hook === HOOK_LOCAL_OUT, meta),
    onFatal,
  );
}

/**
 * Pumps the gateway's `queue` into `handle`; the returned function stops it.
 * A packet marked `missMark` (the path's hold rule) carries `Meta.MISSED`.
 */
export function pumpGateway(
  queue: NfQueue,
  handle: ServerPacketHandler,
  onFatal: (e: Error) => void,
  missMark = 0,
): () => void {
  return pump(
    queue,
    (pkt, id, _hook, meta, mark) =>
      handle(pkt, missMark !== 0 && mark === missMark ? meta | Meta.MISSED : meta, id),
    onFatal,
  );
}
