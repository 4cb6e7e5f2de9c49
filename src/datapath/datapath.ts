/**
 * The data path seam: what a role (server, driver) needs from whatever moves
 * its packets, and nothing more. Two implementations sit behind it:
 *
 * - `queue/`: the netfilter-queue translator. Every packet of a session
 *   crosses user space; the role's core rewrites it (`wire/rewrite.ts`).
 *   Sessions coming and going need no kernel work.
 * - `kernel/`: dpm decides, the kernel translates. Each session is
 *   programmed into dpm's own nftables maps when it is granted and removed
 *   when it ends; conntrack then NATs every packet of it. Only the first
 *   packets of a new session (driver) and ICMP (both roles) reach user space.
 *
 * A role never constructs an implementation itself except in its `run.ts`;
 * cores see only these interfaces, and tests use `fake.ts`.
 *
 * @module
 */

import type { DataPathStatus } from "../operator/types.ts";
import { protoIndex } from "../wire/meta.ts";

/** The data paths a role can run (`--datapath`). */
export type DataPathKind = "kernel" | "queue";

/** A session as the gateway's data path needs it. Addresses host order. */
export interface GatewaySession {
  proto: number;
  /** Host (private) address and port. */
  a: number;
  pa: number;
  /** Remote peer. */
  x: number;
  px: number;
  /** Public pair. */
  r: number;
  p: number;
  /** Gateway port: the LAN-side destination port of the session. */
  pg: number;
  /**
   * A direct session (PCP PEER from a host without a driver, `table.ts`):
   * the host sends to `X:px` itself and gets the remote's own pair back,
   * not `G:Pg`. Absent: a driver's session.
   */
  direct?: boolean;
}

/**
 * A GatewaySession with `x = px = pg = 0` is an inbound mapping (PCP or
 * NAT-PMP MAP, `docs/pcp.md`): every remote's packets to `R:p` go to
 * `a:pa`, and `a:pa`'s packets to any remote leave as `R:p`. Real sessions
 * never have `x = 0` (the control protocol rejects 0/8).
 */
export function isMapping(s: GatewaySession): boolean {
  return s.x === 0 && s.px === 0 && s.pg === 0;
}

/** Kernel counters of one session (both directions), when a data path keeps them. */
export interface SessionCounters {
  packetsOut: number;
  bytesOut: number;
  packetsIn: number;
  bytesIn: number;
}

/** The gateway's data path, seen from the server role. */
export interface ServerDataPath {
  readonly kind: DataPathKind;
  /**
   * A session was granted: from now on its packets must be translated (once
   * {@linkcode commit} ran, which the server does before it answers the
   * grant, so the driver's first packet already finds it).
   */
  sessionUp(s: GatewaySession): void;
  /** A session ended (release, expiry): stop translating it. */
  sessionDown(s: GatewaySession): void;
  /**
   * Applies what `sessionUp` queued (the kernel path groups the sessions of
   * one burst of requests into one transaction). The server calls it before
   * it answers a grant.
   */
  commit(): void;
  /**
   * Per-session kernel counters keyed by {@linkcode gatewayKey}, or null when
   * the path keeps none (the queue path: the table counts packets itself).
   */
  counters(): Map<number, SessionCounters> | null;
  /** For `dpm status`. */
  status(): DataPathStatus;
  /**
   * Stops. The queue path removes everything it installed. The kernel path,
   * unless `remove` is set, leaves the kernel translating established
   * sessions so that a restart loses none (it adopts them on start).
   */
  stop(remove: boolean): Promise<void>;
}

/** A session as the host's data path needs it. */
export interface HostSessionKey {
  proto: number;
  a: number;
  pa: number;
  x: number;
  px: number;
  /** The gateway's LAN address and the session's gateway port. */
  g: number;
  pg: number;
}

/** What the kernel saw of one host session since the previous poll. */
export interface Activity {
  /** Packets both ways, cumulative (compare with the previous value). */
  packets: number;
  bytes: number;
  /** TCP: the connection is closing or closed (FIN both ways, RST, TIME_WAIT). */
  closed: boolean;
}

/** The host's data path, seen from the driver role. */
export interface DriverDataPath {
  readonly kind: DataPathKind;
  /**
   * True when the kernel translates established packets of `proto`; the
   * driver then lets its held first packets go unchanged (the kernel
   * rewrites them) instead of rewriting them itself.
   */
  kernelTranslates(proto: number): boolean;
  /** A session was granted: translate it from now on. Before held packets are released. */
  sessionUp(s: HostSessionKey): void;
  /** The session ended on the host: stop translating it. */
  sessionDown(s: HostSessionKey): void;
  /**
   * Kernel activity per session keyed by {@linkcode hostKey}, or null when
   * the core sees every packet itself (queue path).
   */
  activity(): Map<number, Activity> | null;
  /** Sessions the kernel still translates from a previous run (adopted on start). */
  adopted(): HostSessionKey[];
  status(): DataPathStatus;
  stop(remove: boolean): Promise<void>;
}

/** How the driver's core gives verdicts and sends ICMP refusals (the queue and a raw socket). */
export interface PacketIO {
  /** The verdict for a held packet; with `payload`, the packet's new bytes. */
  verdict(id: number, verdict: number, payload?: Uint8Array): void;
  /** Sends what `verdict` buffered. */
  flush(): void;
  /** Sends a raw IPv4 packet (an ICMP error to a local application). */
  send(pkt: Uint8Array, len: number, dst: number): void;
}

/** A number identifying a gateway session by (proto, a, Pg): its LAN-side key. */
export function gatewayKey(proto: number, a: number, pg: number): number {
  return protoIndex(proto) * 2 ** 48 + a * 65536 + pg;
}

/** A number identifying a host session by (proto, a, Pg), as the gateway port is unique per host. */
export function hostKey(proto: number, a: number, pg: number): number {
  return gatewayKey(proto, a, pg);
}
