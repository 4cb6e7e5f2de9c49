/**
 * The messages between the main thread and the workers of `dpm server
 * --workers N` (`workers.ts` the main thread's side, `worker.ts` a
 * worker's), and where a worker keeps its state file. Every message is
 * structured-cloned (`postMessage`): plain data only.
 *
 * @module
 */

import type { ServerConfig } from "../config.ts";
import type { Format, Level } from "../runtime/log.ts";
import type { Cidr } from "../wire/addr.ts";
import type { GatewaySession, WorkerShare } from "../datapath/datapath.ts";
import type { BoundPort } from "../policy/gateway_ports.ts";
import type { SessionView, StatusReply } from "../operator/types.ts";

/** What the main thread tells a worker first. */
export interface WorkerInit {
  cfg: ServerConfig;
  index: number;
  count: number;
  lan: Cidr | null;
  epoch: number;
  cookieKey: Uint8Array | null;
  /**
   * What the main thread's data path shares with its workers (the worker
   * programs its sessions into the kernel through it); null: no data path.
   */
  share: WorkerShare | null;
  /** The sessions of this worker's hosts the kernel still translated from a previous run. */
  adopted: GatewaySession[];
  bootId: number;
}

/** A drop as the operator names it (`ServerCore.drop`). */
export type DropSelector =
  | { host: number }
  | { proto: number; a: number; pa: number; x: number; px: number };

/** What the main thread posts to a worker. */
export type WorkerRequest =
  | { t: "init"; init: WorkerInit }
  | { t: "serve"; epoch: number }
  | { t: "gateway"; local: number[]; tcp: BoundPort[]; udp: BoundPort[] }
  | { t: "reprogram" }
  /** SIGHUP's live settings. */
  | { t: "log"; level: Level; format: Format }
  /** A packet the data path handed up that one of this worker's sessions translates. */
  | { t: "packet"; id: number; bytes: Uint8Array; meta: number }
  | { t: "status"; id: number; host?: number; limit?: number }
  | { t: "drop"; id: number; sel: DropSelector }
  | { t: "stop" };

/** A worker's status header and rows. */
export type WorkerStatus = { header: Omit<StatusReply, "shown">; rows: SessionView[] };

/** What a worker posts back. */
export type WorkerReply =
  | {
    t: "ready";
    restored: number;
    adopted: number;
    lines: string[];
    renewsEpoch: boolean;
    sessions: GatewaySession[];
  }
  | { t: "held"; d: number[] }
  /** The worker's status header, once a second (metrics). */
  | { t: "stats"; header: Omit<StatusReply, "shown"> }
  /** The verdict for a `packet` (with its new bytes when MODIFIED). */
  | { t: "verdict"; id: number; v: number; bytes?: Uint8Array }
  | ({ t: "status"; id: number } & WorkerStatus)
  | { t: "dropped"; id: number; n: number }
  | { t: "stopped"; saved: number }
  | { t: "error"; message: string };

/** Worker k's state file, beside the main thread's. */
export function workerStatePath(state: string, k: number): string {
  return `${state}.worker${k}`;
}
