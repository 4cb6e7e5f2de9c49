/**
 * Conntrack events: a netlink socket subscribed to the kernel's conntrack
 * multicast groups (`NFNLGRP_CONNTRACK_NEW`, `_UPDATE`, `_DESTROY`), read
 * without blocking the event loop. What `conntrack -E` shows, through FFI.
 *
 * ## Theory of operation
 *
 * A `NETLINK_NETFILTER` socket bound with `nl_groups` bits 0-2 (groups 1, 2
 * and 3) receives one message per conntrack event of its network namespace:
 * `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE` for a new entry (when it is
 * confirmed, or created through ctnetlink: conntrackd's replicas), without
 * it for an update (TCP state, ASSURED, a timeout or mark set through
 * ctnetlink), `IPCTNL_MSG_CT_DELETE` when the entry goes (expired,
 * deleted). Each carries the entry's tuples (linux/conntrack.ts decodes
 * them, {@linkcode decodeCtEvent}).
 *
 * The socket is non-blocking; {@linkcode CtEvents.wait} waits for it with
 * `poll` on a worker thread (linux/libc.ts `poll_async`), so the event loop
 * runs meanwhile, and {@linkcode CtEvents.drain} reads every queued
 * datagram. Events are not acknowledged: when they come faster than they
 * are read, the kernel drops them and the next read fails with `ENOBUFS`;
 * `drain` reports that as `lost`, and the reader must reconcile from a full
 * dump (linux/conntrack.ts `Conntrack.dump`), as conntrackd does.
 *
 * Requires `--allow-ffi` and CAP_NET_ADMIN in the network namespace.
 *
 * @module
 */

import {
  AF_NETLINK,
  errno,
  HOST_LITTLE_ENDIAN as LE,
  libc,
  OsError,
  OwnedFd,
  recvEach,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_RAW,
  SOL_SOCKET,
} from "./libc.ts";
import { FdWaiter } from "./waiter.ts";
import { align4, msgLen, NETLINK_NETFILTER, NetlinkParseError } from "./netlink.ts";
import { type CtEntry, type CtEventKind, decodeCtEvent } from "./conntrack.ts";

export type { CtEventKind };

/** `NFNLGRP_CONNTRACK_NEW`, `_UPDATE`, `_DESTROY` as `nl_groups` bits (groups 1-3). */
export const CT_EVENT_GROUPS = 0b111;

const RX_SIZE = 1 << 17;

/** What one {@linkcode CtEvents.drain} read. */
export interface DrainResult {
  /** Events handed to the callback. */
  events: number;
  /** The kernel dropped events (`ENOBUFS`): reconcile from a dump. */
  lost: boolean;
  /** Messages that did not decode (skipped). */
  malformed: number;
}

/** A socket receiving the conntrack events of the caller's network namespace. */
export class CtEvents extends OwnedFd {
  readonly #rx = new Uint8Array(RX_SIZE);
  readonly #rxDv = new DataView(this.#rx.buffer);
  readonly #waiter: FdWaiter;

  private constructor(fd: number) {
    super(fd);
    this.#waiter = FdWaiter.open(fd, "CtEvents");
  }

  /**
   * Opens the socket and subscribes to new, update and destroy events.
   * `rcvbuf`: the receive buffer, bytes (a burst of events waits there).
   *
   * @throws {OsError} when the socket cannot be opened or bound.
   */
  static open(rcvbuf = 16 << 20): CtEvents {
    const c = libc();
    const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER);
    if (fd < 0) throw new OsError("socket(AF_NETLINK, NETLINK_NETFILTER)", errno());
    try {
      const sa = new Uint8Array(12); // sockaddr_nl: family, pad, pid 0 (the kernel's choice), groups
      const dv = new DataView(sa.buffer);
      dv.setUint16(0, AF_NETLINK, LE);
      dv.setUint32(8, CT_EVENT_GROUPS, LE);
      if (c.bind(fd, sa, sa.length) < 0) {
        throw new OsError("bind(AF_NETLINK, conntrack event groups)", errno());
      }
      const v = new Uint8Array(4);
      new DataView(v.buffer).setInt32(0, rcvbuf, LE);
      if (c.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, v, 4) < 0) {
        c.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, v, 4);
      }
      return new CtEvents(fd);
    } catch (e) {
      c.close(fd);
      throw e;
    }
  }

  /**
   * Waits up to `timeoutMs` for events (poll on a worker thread). True when
   * something is queued (or the socket has an error to report: `drain`
   * reads it); false on timeout or once closed.
   */
  wait(timeoutMs: number): Promise<boolean> {
    return this.#waiter.wait(timeoutMs);
  }

  /**
   * Closes the socket; a pending {@linkcode wait} resolves `false` and the
   * descriptor closes once it returned (linux/waiter.ts). Idempotent.
   */
  override close(): void {
    this.#waiter.close(() => super.close());
  }

  /**
   * Reads every queued datagram and calls `onEvent` for each conntrack
   * event in it; returns at once when nothing is queued.
   *
   * @throws {OsError} when the socket fails otherwise than by lost events.
   */
  drain(onEvent: (kind: CtEventKind, e: CtEntry) => void): DrainResult {
    const r: DrainResult = { events: 0, lost: false, malformed: 0 };
    const dv = this.#rxDv;
    recvEach(this, this.#rx, "conntrack events", (end) => {
      for (let off = 0, len = 0;; off += align4(len)) {
        try {
          len = msgLen(dv, off, end);
        } catch (e) {
          if (!(e instanceof NetlinkParseError)) throw e;
          r.malformed++;
          break;
        }
        if (len === 0) break;
        let ev: ReturnType<typeof decodeCtEvent> = null;
        try {
          ev = decodeCtEvent(dv, off, len);
        } catch {
          r.malformed++;
        }
        if (ev !== null) {
          r.events++;
          onEvent(ev.kind, ev.entry);
        }
      }
    }, () => r.lost = true);
    return r;
  }
}
