/**
 * Waiting for a descriptor beside the event loop, and closing it safely.
 *
 * ## Theory of operation
 *
 * Deno cannot add a raw descriptor to its event loop, so dpm's FFI sockets
 * (the netfilter queue, the control socket, conntrack events, BPF perf
 * rings) wait with `poll(2)` declared `nonblocking` in linux/libc.ts: it
 * runs on a worker thread and the event loop goes on. That poll watches two
 * descriptors: the socket, and an `eventfd` that {@linkcode FdWaiter.close}
 * writes to wake it.
 *
 * The eventfd is what makes closing safe. Closing a descriptor while another
 * thread polls it would let the kernel hand the same number to the next
 * `open`, and the poll (or the next read) would then watch a stranger. So
 * a close during a wait only marks the waiter closing and wakes the poll;
 * the owner's release (which closes the socket) runs once the poll has
 * returned, on the event loop. Without a pending wait it runs at once.
 *
 * Used by linux/udp.ts, linux/nfqueue.ts, linux/ct_events.ts and
 * linux/libbpf.ts (`PerfReader`). {@linkcode serveLoop} is the one receive
 * loop built on such a wait: the queue's `pump`, the control socket's
 * `serveUdp` and the bpf host's held-packet reader run it.
 *
 * @module
 */

import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  errno,
  HOST_LITTLE_ENDIAN as LE,
  libc,
  OsError,
  POLLERR,
  PollFd,
  POLLIN,
} from "./libc.ts";

/** Waits for one descriptor to be readable, and defers its closing past a pending wait. */
export class FdWaiter {
  readonly #buf = new Uint8Array(2 * PollFd.SIZE);
  readonly #dv = new DataView(this.#buf.buffer);
  readonly #one = new Uint8Array(8);
  readonly #efd: number;
  /** The owner's name, for the error of a second concurrent wait. */
  readonly #owner: string;
  #waiting = false;
  #closing = false;
  #release: (() => void) | null = null;

  private constructor(fd: number, efd: number, owner: string) {
    this.#efd = efd;
    this.#owner = owner;
    this.#dv.setInt32(PollFd.FD, fd, LE);
    this.#dv.setInt16(PollFd.EVENTS, POLLIN, LE);
    this.#dv.setInt32(PollFd.SIZE + PollFd.FD, efd, LE);
    this.#dv.setInt16(PollFd.SIZE + PollFd.EVENTS, POLLIN, LE);
    this.#one[LE ? 0 : 7] = 1;
  }

  /**
   * A waiter for `fd` (which the caller keeps owning).
   *
   * @param owner names the owner in errors, e.g. "UdpSocket".
   * @throws {OsError} when no eventfd can be made.
   */
  static open(fd: number, owner: string): FdWaiter {
    const efd = libc().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) throw new OsError("eventfd", errno());
    return new FdWaiter(fd, efd, owner);
  }

  /** True once {@linkcode close} was called. */
  get closing(): boolean {
    return this.#closing;
  }

  /**
   * Resolves `true` when the descriptor is readable or has an error to
   * report, `false` on timeout or once closing. One wait at a time.
   *
   * @param timeoutMs milliseconds; negative or `Infinity`: no timeout.
   * @throws {Error} when another wait is pending.
   */
  async wait(timeoutMs: number): Promise<boolean> {
    if (this.#closing) return false;
    if (this.#waiting) throw new Error(`${this.#owner}.wait() is already pending`);
    const t = Number.isFinite(timeoutMs) && timeoutMs >= 0 ? Math.ceil(timeoutMs) : -1;
    this.#dv.setInt16(PollFd.REVENTS, 0, LE);
    this.#dv.setInt16(PollFd.SIZE + PollFd.REVENTS, 0, LE);
    this.#waiting = true;
    let r: number;
    try {
      r = await libc().poll_async(this.#buf, 2n, t);
    } finally {
      this.#waiting = false;
      if (this.#closing) this.#finish();
    }
    if (this.#closing || r <= 0) return false;
    return (this.#dv.getInt16(PollFd.REVENTS, LE) & (POLLIN | POLLERR)) !== 0;
  }

  /**
   * Marks the waiter closing and runs `release` (the owner's own closing)
   * once no poll uses the descriptor: at once, or when the pending wait
   * returns (it is woken). Closes the eventfd after `release`. Idempotent:
   * a second call is ignored.
   */
  close(release: () => void): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#release = release;
    if (this.#waiting) libc().write(this.#efd, this.#one, 8n);
    else this.#finish();
  }

  #finish(): void {
    const release = this.#release;
    if (release === null) return;
    this.#release = null;
    try {
      release();
    } finally {
      libc().close(this.#efd);
    }
  }
}

/** How long one wait of {@linkcode serveLoop} lasts before it checks whether it was stopped (ms). */
export const SERVE_WAIT_MS = 250;

/** What {@linkcode serveLoop} runs: a wait for readiness, a drain, and what ends a turn. */
export interface ServeLoopParts {
  /** Resolves true when there is something to read (`FdWaiter.wait` of the owner). */
  wait(timeoutMs: number): Promise<boolean>;
  /** Reads what is waiting without blocking; returns how much it read (0: empty). */
  drain(): number;
  /** Extra drains, without waiting, after one that read something. */
  redrain: number;
  /** Called once after the drains of each wake-up (e.g. commit, flush answers). */
  onTurnEnd?: () => void;
  /** Gets the exception of a wait, drain or turn end, which ends the loop. */
  onFatal(e: Error): void;
}

/**
 * The receive loop of every FFI socket: wait (off the event loop), drain,
 * drain again while more keeps coming, end the turn, repeat, until the
 * returned function is called.
 *
 * Why the redrain: under load more arrived while the last batch was
 * handled, and reading it now (a non-blocking read, ~1 µs when empty) is
 * cheaper than another hand-off to the poll thread (15-17 µs). It is
 * bounded, so timers and the other sockets still get their turn.
 */
export function serveLoop(p: ServeLoopParts): () => void {
  let running = true;
  (async () => {
    while (running) {
      if (!(await p.wait(SERVE_WAIT_MS))) continue;
      if (!running) break;
      for (let i = 0; i <= p.redrain && running; i++) {
        if (p.drain() === 0) break;
      }
      p.onTurnEnd?.();
    }
  })().catch((e) => {
    if (running) p.onFatal(e as Error);
  });
  return () => {
    running = false;
  };
}
