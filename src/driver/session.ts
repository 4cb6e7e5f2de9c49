/**
 * A session as the host knows it: its fields, its states, and the TCP
 * teardown bits its packets set. The driver's indexes of sessions, and what
 * moves a session from state to state, are in `core.ts`; how a session is
 * shown to `dpm query`, in `answers.ts`.
 *
 * @module
 */

import type { PacketInfo } from "../wire/packet.ts";

/** Session states on the host. */
export const State = { PENDING: 0, ACTIVE: 1, REFUSED: 2, BYPASS: 3 } as const;

/** One session as the host knows it. */
export interface HostSession {
  state: number;
  proto: number;
  a: number;
  pa: number;
  x: number;
  px: number;
  r: number;
  p: number;
  pg: number;
  replaceable: boolean;
  replaced: boolean;
  shared: boolean;
  /** ms */
  expiresAt: number;
  /** ms; when to send the next renew */
  renewAt: number;
  /** lifetime granted, s */
  lifetime: number;
  /** traffic since the last renew */
  busy: boolean;
  lastUsed: number;
  /** TCP teardown seen: bit 0 FIN out, bit 1 FIN in, bit 2 RST; 7 or 4 means closed. */
  closing: number;
  result: number;
  /** Held packets: queue id, a copy of the bytes, their `NFQA_SKB_INFO` bits (null: none). */
  held: { id: number; bytes: Uint8Array; skbInfo: number }[] | null;
  /** Queries waiting for the answer (null: none). */
  waiters: ((s: HostSession) => void)[] | null;
  renewing: boolean;
  /** Removed from the driver's indexes: late answers about it are not applied. */
  deleted: boolean;
  /** The gateway port the data path was told about (sessionUp), 0 when none. */
  programmed: number;
  /** Kernel packet count at the last activity poll (kernel path). */
  kernelPackets: number;
  /** Fallen back (BYPASS): reservations tried again since; renewAt is the next try. */
  retries: number;
}

/** A new session, PENDING, not yet asked of the server and in no index. */
export function newHostSession(
  proto: number,
  a: number,
  pa: number,
  x: number,
  px: number,
  replaceable: boolean,
  now: number,
): HostSession {
  return {
    state: State.PENDING,
    proto,
    a,
    pa,
    x,
    px,
    r: 0,
    p: 0,
    pg: 0,
    replaceable,
    replaced: false,
    shared: false,
    expiresAt: 0,
    renewAt: 0,
    lifetime: 0,
    busy: true,
    lastUsed: now,
    closing: 0,
    result: -1,
    held: null,
    waiters: null,
    renewing: false,
    deleted: false,
    programmed: 0,
    kernelPackets: 0,
    retries: 0,
  };
}

/** `HostSession.closing` bits. */
export const CLOSE_FIN_OUT = 1;
export const CLOSE_FIN_IN = 2;
export const CLOSE_RST = 4;

/** Updates a session's TCP teardown bits from a packet's flags; a SYN starts over. */
export function tcpClose(
  pkt: Uint8Array,
  info: PacketInfo,
  closing: number,
  finBit: number,
): number {
  const flags = pkt[info.l4 + 13]!;
  if (flags & 0x04) return closing | CLOSE_RST;
  if (flags & 0x02) return 0;
  if (flags & 0x01) return closing | finBit;
  return closing;
}

/** Whether teardown bits say the connection ended: FIN both ways, or an RST. */
export function isClosed(closing: number): boolean {
  return (closing & CLOSE_RST) !== 0 || (closing & 3) === 3;
}
