/**
 * Unsolicited announcements of the PCP / NAT-PMP server: when it starts (a
 * new epoch: every mapping of a previous run is gone), it multicasts to
 * the LAN's all-hosts group 224.0.0.1, port 5350 (the clients' port):
 *
 * - a NAT-PMP external address response (RFC 6886 section 3.2.1: op 128,
 *   result 0, the epoch, the public address; 12 bytes), and
 * - a PCP ANNOUNCE response (RFC 6887 section 14.1.3: R bit, opcode 0,
 *   SUCCESS, lifetime 0, the epoch; 24 bytes); IPv4 only, no ff02::1.
 *
 * Both are sent 10 times: at once, then after 250 ms, the interval doubling
 * each time (RFC 6886 section 3.2.1; the last interval is 64 s, the last
 * datagram 127.75 s after the first). RFC 6887 section 14.1.3 leaves the
 * repetition to the server; the same schedule is used for both, in the
 * same turn (NAT-PMP first). The epoch is read at each send, so a client
 * sees it count.
 *
 * A pooled NAT has no single public address: the NAT-PMP datagram carries
 * the one the caller gives (`dpm server`: the first pool address); a client
 * that cares asks (opcode 0) and is answered its own (`docs/pcp.md`).
 *
 * Pure: the datagrams are built here, sent by the caller's `send`, timed by
 * the caller's timers (a fake in the unit tests).
 *
 * @module
 */

import {
  encodePcpResponse,
  natPmpAddressResponse,
  NatPmpResult,
  PcpOp,
  PcpResult,
} from "./codec.ts";

/** Where unsolicited announcements go: the all-hosts group (RFC 6886, RFC 6887). */
export const ANNOUNCE_GROUP = "224.0.0.1";
/** The clients' port for unsolicited responses. */
export const ANNOUNCE_PORT = 5350;
/** How many times each announcement is sent (RFC 6886 section 3.2.1). */
export const ANNOUNCE_COUNT = 10;
/** The first interval, ms; each next one doubles. */
export const ANNOUNCE_FIRST_INTERVAL_MS = 250;

/** The NAT-PMP address-change notification: an op-0 response (12 bytes). */
export function natPmpAnnouncement(epoch: number, publicAddr: number): Uint8Array {
  return natPmpAddressResponse(NatPmpResult.SUCCESS, epoch, publicAddr);
}

/** The unsolicited PCP ANNOUNCE response (24 bytes). */
export function pcpAnnouncement(epoch: number): Uint8Array {
  return encodePcpResponse({ op: PcpOp.ANNOUNCE, result: PcpResult.SUCCESS, lifetime: 0, epoch });
}

/**
 * When each of the `count` sends happens, ms after the first:
 * 0, 250, 750, 1750, ... (the intervals 250, 500, 1000, ...).
 */
export function announceOffsets(
  count = ANNOUNCE_COUNT,
  firstIntervalMs = ANNOUNCE_FIRST_INTERVAL_MS,
): number[] {
  const out: number[] = [];
  let t = 0;
  let step = firstIntervalMs;
  for (let i = 0; i < count; i++) {
    out.push(t);
    t += step;
    step *= 2;
  }
  return out;
}

/** The timer seam of {@linkcode Announcer} (the global timers by default). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const globalTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as number),
};

/** Options of {@linkcode Announcer}. */
export interface AnnouncerOptions {
  /** The datagrams of one round, built at each send (the epoch moves). */
  build: () => Uint8Array[];
  /** Sends one datagram to 224.0.0.1:5350; may throw (logged by `onError`, the round goes on). */
  send: (datagram: Uint8Array) => void;
  /** A send that threw. */
  onError?: (e: unknown) => void;
  timers?: Timers;
  count?: number;
  firstIntervalMs?: number;
}

/**
 * Sends the announcement rounds on the schedule of {@linkcode announceOffsets}.
 * `start` begins (again: a new epoch restarts the schedule from its first
 * send), `stop` cancels what is pending. Idle until `start`.
 */
export class Announcer {
  readonly #o: AnnouncerOptions;
  readonly #t: Timers;
  #handle: unknown = null;
  #round = 0;
  /** Rounds sent since the last `start`. */
  get rounds(): number {
    return this.#round;
  }

  constructor(o: AnnouncerOptions) {
    this.#o = o;
    this.#t = o.timers ?? globalTimers;
  }

  /** Sends the first round now and schedules the others; restarts a running schedule. */
  start(): void {
    this.stop();
    this.#round = 0;
    this.#fire();
  }

  /** Cancels the pending round; idempotent. */
  stop(): void {
    if (this.#handle !== null) this.#t.clearTimeout(this.#handle);
    this.#handle = null;
  }

  /** True while rounds are still pending. */
  get running(): boolean {
    return this.#handle !== null;
  }

  #fire(): void {
    this.#handle = null;
    const count = this.#o.count ?? ANNOUNCE_COUNT;
    const first = this.#o.firstIntervalMs ?? ANNOUNCE_FIRST_INTERVAL_MS;
    for (const d of this.#o.build()) {
      try {
        this.#o.send(d);
      } catch (e) {
        this.#o.onError?.(e);
      }
    }
    this.#round++;
    if (this.#round >= count) return;
    this.#handle = this.#t.setTimeout(() => this.#fire(), first * 2 ** (this.#round - 1));
  }
}
