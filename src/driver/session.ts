/**
 * A session as the host knows it: its fields, its states, the TCP teardown
 * bits its packets set, and the driver's two indexes of sessions
 * ({@linkcode HostSessions}). What moves a session from state to state is in
 * `leases.ts` (the lease client); how its packets are translated, in
 * `translate.ts`; how it is shown to `dpm query`, in `answers.ts`.
 *
 * @module
 */

import type { PacketInfo } from "../wire/packet.ts";
import { lanKey as hostKey, type SessionBinding } from "../wire/tuple.ts";

/**
 * Session states on the host. A PENDING session with a gateway port (`pg`
 * not 0) was proposed that port (protocol version 3): it is translated to
 * `G:Pg` at once, and the gateway holds its first packets until the
 * request is granted.
 */
export const State = { PENDING: 0, ACTIVE: 1, REFUSED: 2, BYPASS: 3 } as const;

/** One session as the host knows it (its addresses: `wire/tuple.ts`). */
export interface HostSession extends SessionBinding {
  state: number;
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
  /**
   * TCP: the sequence number of the session's first packet (its SYN), so
   * that a refusal can quote it in the ICMP error the application is told
   * (a TCP stack checks it) after that packet already left.
   */
  isn: number;
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
    isn: 0,
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

/**
 * The host's sessions, indexed two ways: by what an outbound packet names
 * (proto, a, pa, X, px) and by what a reply from the gateway names
 * (proto, a, Pg). The outbound index has two levels, the remote (x, px: 48
 * bits) then the endpoint (proto, a, pa: 50 bits), as numbers.
 */
export class HostSessions {
  readonly #out = new Map<number, Map<number, HostSession>>();
  readonly #byPg = new Map<number, HostSession>();

  /** The session of (proto, a, pa, X, px), if any. */
  get(proto: number, a: number, pa: number, x: number, px: number): HostSession | undefined {
    return this.#out.get(x * 65536 + px)?.get(hostKey(proto, a, pa));
  }

  /** The session a reply from `G:Pg` to `a` belongs to, if any. */
  byPg(proto: number, a: number, pg: number): HostSession | undefined {
    return this.#byPg.get(hostKey(proto, a, pg));
  }

  /** Adds `s` to the outbound index (a new session). */
  put(s: HostSession): void {
    const k1 = s.x * 65536 + s.px;
    let m = this.#out.get(k1);
    if (!m) this.#out.set(k1, m = new Map());
    m.set(hostKey(s.proto, s.a, s.pa), s);
  }

  /** Indexes `s` by its gateway port `s.pg` (granted), dropping its previous one `was`. */
  setPg(s: HostSession, was = 0): void {
    if (was && was !== s.pg && this.#byPg.get(hostKey(s.proto, s.a, was)) === s) {
      this.#byPg.delete(hostKey(s.proto, s.a, was));
    }
    this.#byPg.set(hostKey(s.proto, s.a, s.pg), s);
  }

  /** Takes `s` out of the gateway-port index (its `pg` is no longer its own). */
  unsetPg(s: HostSession): void {
    if (s.pg && this.#byPg.get(hostKey(s.proto, s.a, s.pg)) === s) {
      this.#byPg.delete(hostKey(s.proto, s.a, s.pg));
    }
  }

  /** Removes `s` from both indexes. */
  remove(s: HostSession): void {
    const k1 = s.x * 65536 + s.px;
    const m = this.#out.get(k1);
    if (m) {
      m.delete(hostKey(s.proto, s.a, s.pa));
      if (m.size === 0) this.#out.delete(k1);
    }
    if (s.pg && this.#byPg.get(hostKey(s.proto, s.a, s.pg)) === s) {
      this.#byPg.delete(hostKey(s.proto, s.a, s.pg));
    }
  }

  /** Every session. Do not add or remove while iterating (copy first). */
  *all(): IterableIterator<HostSession> {
    for (const m of this.#out.values()) yield* m.values();
  }
}
