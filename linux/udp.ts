/**
 * A UDP socket over FFI for dpm's control protocol: batches in, batches out,
 * one event-loop wake-up per batch.
 *
 * ## Theory of operation
 *
 * Deno's `node:dgram` costs a callback, a `Buffer` and an address string
 * per datagram, and hundreds of microseconds per wake-up on this kind of
 * machine (docs/performance.md, "Where the time goes"). This socket is read
 * the way `linux/nfqueue.ts` reads the queue:
 *
 * 1. {@linkcode UdpSocket.wait} waits with `poll(2)` declared `nonblocking`
 *    (on a worker thread: the event loop keeps running) on the socket and an
 *    `eventfd` that {@linkcode UdpSocket.close} writes to wake it;
 * 2. {@linkcode UdpSocket.receive} reads every waiting datagram with
 *    `recvmmsg(2)` and `MSG_DONTWAIT` into buffers allocated once, and hands
 *    each to a callback as a view with its source address and port;
 * 3. {@linkcode UdpSocket.queue} copies a datagram to send into a slot of
 *    its own, and {@linkcode UdpSocket.flush} sends every queued one with
 *    one `sendmmsg(2)`.
 *
 * {@linkcode serveUdp} is the loop: wait, receive everything (a few more
 * reads without waiting while datagrams keep coming), then the caller's
 * end-of-turn callback (commit what the batch changed, flush the answers).
 *
 * The socket is non-blocking: a send that finds the socket buffer full is
 * counted and dropped (UDP semantics; the peers retransmit), never waited
 * for. With `reusePort`, several sockets (processes) bind the same address
 * and port and the kernel spreads datagrams between them by a hash of the
 * source (`SO_REUSEPORT`).
 *
 * Requires `--allow-ffi`.
 *
 * @module
 */

import {
  AF_INET,
  EADDRINUSE,
  EADDRNOTAVAIL,
  EAGAIN,
  EINTR,
  errno,
  HOST_LITTLE_ENDIAN as LE,
  IOVEC_SIZE,
  libc,
  MMsgHdr,
  type MMsgSlots,
  mmsgSlots,
  MSG_DONTWAIT,
  MSG_TRUNC,
  MsgHdr,
  OsError,
  OwnedFd,
  setU64,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_REUSEPORT,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SockaddrIn,
  SOL_SOCKET,
  strerror,
} from "./libc.ts";
import { FdWaiter, serveLoop } from "./waiter.ts";
import { attachReuseportProgram } from "./reuseport.ts";

/** Options of {@linkcode UdpSocket.open}. */
export interface UdpSocketOptions {
  /** Local address (host order); 0: any. */
  addr: number;
  /** Local port; 0: an ephemeral one ({@linkcode UdpSocket.port} tells which). */
  port: number;
  /** `SO_REUSEPORT`: share the address and port with other sockets that set it. @default false */
  reusePort?: boolean;
  /**
   * A classic BPF program (`reuseport.ts`) that picks this group's socket
   * for each datagram, attached before the socket binds, so that no
   * datagram is spread by the kernel's hash. Needs `reusePort`.
   */
  reuseportProgram?: Uint8Array;
  /** Receive buffer, bytes (`SO_RCVBUFFORCE` as root, else up to `rmem_max`). @default 4 MiB */
  rcvbuf?: number;
  /** Send buffer, bytes. @default 4 MiB */
  sndbuf?: number;
  /** Datagrams read per `recvmmsg` and sent per `sendmmsg`. @default 64 */
  batch?: number;
  /** The longest datagram read or sent; longer ones are cut and counted. @default 2048 */
  maxDatagram?: number;
}

/** Counters of a UDP socket, updated in place. */
export interface UdpSocketStats {
  /** Datagrams read. */
  received: number;
  /** Datagrams the kernel took to send. */
  sent: number;
  /** Datagrams longer than `maxDatagram` (cut; the callback sees the cut flag). */
  truncated: number;
  /** Datagrams not sent: the socket buffer was full, or the send failed. */
  sendDrops: number;
  /** `recvmmsg` calls that returned datagrams. */
  batches: number;
  /** `sendmmsg` calls. */
  sends: number;
}

/** Called for each datagram read: a view valid during the call, its source, and whether it was cut. */
export type DatagramHandler = (
  data: Uint8Array,
  src: number,
  srcPort: number,
  cut: boolean,
) => void;

/**
 * A non-blocking IPv4 UDP socket read with `recvmmsg` and written with
 * `sendmmsg`. Single-threaded: one {@linkcode wait} at a time, and
 * {@linkcode receive}, {@linkcode queue}, {@linkcode flush} from the same
 * event loop.
 *
 * @example
 * ```ts ignore
 * using s = UdpSocket.open({ addr: 0x7f000001, port: 0 });
 * s.queue(new TextEncoder().encode("hi"), 2, 0x7f000001, 4750);
 * s.flush();
 * ```
 */
export class UdpSocket extends OwnedFd {
  /** Counters, updated in place. */
  readonly stats: UdpSocketStats = {
    received: 0,
    sent: 0,
    truncated: 0,
    sendDrops: 0,
    batches: 0,
    sends: 0,
  };
  /** The last error seen (a failed send or receive), for diagnostics. */
  lastError = "";
  /** The bound local address and port (host order). */
  readonly addr: number;
  readonly port: number;

  readonly #waiter: FdWaiter;
  readonly #batch: number;
  readonly #max: number;
  /** Receive side: slots of `#max` bytes, a sockaddr_in per slot. */
  readonly #rx: MMsgSlots;
  /** Send side: the same layout, filled by queue(). */
  readonly #tx: MMsgSlots;
  #txCount = 0;

  private constructor(
    fd: number,
    waiter: FdWaiter,
    addr: number,
    port: number,
    batch: number,
    max: number,
  ) {
    super(fd);
    this.#waiter = waiter;
    this.addr = addr;
    this.port = port;
    this.#batch = batch;
    this.#max = max;
    this.#rx = mmsgSlots(batch, max, SockaddrIn.SIZE);
    this.#tx = mmsgSlots(batch, max, SockaddrIn.SIZE);
    for (let i = 0; i < batch; i++) {
      this.#tx.namesDv.setUint16(i * SockaddrIn.SIZE + SockaddrIn.FAMILY, AF_INET, LE);
    }
  }

  /**
   * Opens and binds the socket. Requires `--allow-ffi`.
   *
   * @throws {OsError} when the socket cannot be made or bound: `EADDRINUSE`
   *   (another socket holds the port without `SO_REUSEPORT`), `EADDRNOTAVAIL`
   *   (the address is not this host's); the message names the address.
   */
  static open(o: UdpSocketOptions): UdpSocket {
    const batch = o.batch ?? 64;
    const max = o.maxDatagram ?? 2048;
    if (!Number.isInteger(batch) || batch < 1 || batch > 1024) {
      throw new RangeError(`Batch "${batch}" is not in 1-1024`);
    }
    if (!Number.isInteger(max) || max < 1 || max > 65535) {
      throw new RangeError(`Datagram size "${max}" is not in 1-65535`);
    }
    const c = libc();
    const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new OsError("socket(AF_INET, SOCK_DGRAM)", errno());
    let waiter: FdWaiter | null = null;
    try {
      if (o.reusePort) setInt(fd, SO_REUSEPORT, 1, "SO_REUSEPORT");
      if (o.reuseportProgram) {
        if (!o.reusePort) throw new RangeError("A reuseport program needs reusePort");
        attachReuseportProgram(fd, o.reuseportProgram);
      }
      setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, o.rcvbuf ?? 4 << 20);
      setBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, o.sndbuf ?? 4 << 20);
      const sa = sockaddr(o.addr, o.port);
      if (c.bind(fd, sa, SockaddrIn.SIZE) < 0) {
        const e = errno();
        const where = `${ipText(o.addr)}:${o.port}`;
        throw new OsError(
          e === EADDRINUSE
            ? `bind ${where}: in use`
            : e === EADDRNOTAVAIL
            ? `bind ${where}: not an address of this host`
            : `bind ${where}`,
          e,
        );
      }
      const len = new Uint32Array([SockaddrIn.SIZE]);
      if (c.getsockname(fd, sa, new Uint8Array(len.buffer)) < 0) {
        throw new OsError("getsockname", errno());
      }
      const dv = new DataView(sa.buffer);
      waiter = FdWaiter.open(fd, "UdpSocket");
      return new UdpSocket(
        fd,
        waiter,
        dv.getUint32(SockaddrIn.ADDR, false),
        dv.getUint16(SockaddrIn.PORT, false),
        batch,
        max,
      );
    } catch (e) {
      if (waiter) waiter.close(() => c.close(fd));
      else c.close(fd);
      throw e;
    }
  }

  /**
   * Resolves `true` when datagrams (or an error) are waiting, `false` on
   * timeout or once the socket is closing. `poll` runs on a worker thread.
   *
   * @param timeoutMs milliseconds; negative or `Infinity`: no timeout.
   */
  wait(timeoutMs: number): Promise<boolean> {
    return this.#waiter.wait(timeoutMs);
  }

  /**
   * Reads every waiting datagram (at most `max`) without blocking and calls
   * `fn` for each. Returns how many were read.
   */
  receive(fn: DatagramHandler, max = 1024): number {
    const fd = this.fd;
    if (fd < 0 || this.#waiter.closing) return 0;
    const c = libc();
    const dv = this.#rx.mmsgDv;
    const names = this.#rx.namesDv;
    let total = 0;
    while (total < max) {
      const want = Math.min(this.#batch, max - total);
      // msg_namelen is in/out: reset it before every read.
      for (let i = 0; i < want; i++) {
        dv.setUint32(i * MMsgHdr.SIZE + MsgHdr.NAMELEN, SockaddrIn.SIZE, LE);
      }
      const n = c.recvmmsg(fd, this.#rx.mmsg, want, MSG_DONTWAIT, null);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e !== EAGAIN) this.lastError = `recvmmsg: ${strerror(e)} (errno ${e})`;
        break;
      }
      if (n === 0) break;
      this.stats.batches++;
      for (let i = 0; i < n; i++) {
        const m = i * MMsgHdr.SIZE;
        const len = dv.getUint32(m + MMsgHdr.LEN, LE);
        const cut = (dv.getInt32(m + MsgHdr.FLAGS, LE) & MSG_TRUNC) !== 0;
        if (cut) this.stats.truncated++;
        const o = i * SockaddrIn.SIZE;
        const src = names.getUint32(o + SockaddrIn.ADDR, false);
        const port = names.getUint16(o + SockaddrIn.PORT, false);
        const base = i * this.#max;
        this.stats.received++;
        fn(this.#rx.data.subarray(base, base + Math.min(len, this.#max)), src, port, cut);
      }
      total += n;
      if (n < want) break;
    }
    return total;
  }

  /**
   * Queues `data[0, len)` to `dst:dstPort` (host order); sent by
   * {@linkcode flush}, or at once when the batch is full. The bytes are
   * copied: the caller may reuse `data` at once.
   */
  queue(data: Uint8Array, len: number, dst: number, dstPort: number): void {
    if (this.fd < 0) return;
    if (len > this.#max || len > data.length) {
      this.stats.sendDrops++;
      this.lastError = `datagram of ${len} bytes is longer than ${this.#max}`;
      return;
    }
    if (this.#txCount === this.#batch) this.flush();
    const i = this.#txCount++;
    this.#tx.data.set(len === data.length ? data : data.subarray(0, len), i * this.#max);
    const o = i * SockaddrIn.SIZE;
    this.#tx.namesDv.setUint16(o + SockaddrIn.PORT, dstPort, false);
    this.#tx.namesDv.setUint32(o + SockaddrIn.ADDR, dst >>> 0, false);
    setU64(this.#tx.iovDv, i * IOVEC_SIZE + 8, len);
  }

  /** Drops what is queued, unsent. */
  discard(): void {
    this.#txCount = 0;
  }

  /** Datagrams queued and not yet sent. */
  get queued(): number {
    return this.#txCount;
  }

  /**
   * True when the send batch is full: the next {@linkcode queue} sends the
   * queued datagrams first. A caller that must not send before some work
   * is done (the server commits a turn's grants before answering) does it
   * when this says so.
   */
  get full(): boolean {
    return this.#txCount === this.#batch;
  }

  /** Sends every queued datagram (one `sendmmsg`, again for what it did not take). */
  flush(): void {
    const count = this.#txCount;
    if (count === 0) return;
    this.#txCount = 0;
    const fd = this.fd;
    if (fd < 0) {
      this.stats.sendDrops += count;
      return;
    }
    const c = libc();
    let done = 0;
    while (done < count) {
      const vec = done === 0 ? this.#tx.mmsg : this.#tx.mmsg.subarray(done * MMsgHdr.SIZE);
      const n = c.sendmmsg(fd, vec, count - done, 0);
      this.stats.sends++;
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        // EAGAIN: the socket buffer is full; the peers retransmit. Anything
        // else (an ICMP error reported on the socket, a route gone) costs
        // this one datagram: go on with the next.
        this.lastError = `sendmmsg: ${strerror(e)} (errno ${e})`;
        this.stats.sendDrops++;
        if (e === EAGAIN) {
          this.stats.sendDrops += count - done - 1;
          return;
        }
        done++;
        continue;
      }
      this.stats.sent += n;
      done += n;
    }
  }

  /**
   * Closes the socket (what is queued is dropped). A pending
   * {@linkcode wait} resolves `false`; the descriptors close once it
   * returned. Idempotent.
   */
  override close(): void {
    this.#waiter.close(() => super.close());
  }
}

function sockaddr(addr: number, port: number): Uint8Array {
  const sa = new Uint8Array(SockaddrIn.SIZE);
  const dv = new DataView(sa.buffer);
  dv.setUint16(SockaddrIn.FAMILY, AF_INET, LE);
  dv.setUint16(SockaddrIn.PORT, port, false);
  dv.setUint32(SockaddrIn.ADDR, addr >>> 0, false);
  return sa;
}

function setInt(fd: number, opt: number, v: number, what: string): void {
  const b = new Int32Array([v]);
  if (libc().setsockopt(fd, SOL_SOCKET, opt, new Uint8Array(b.buffer), 4) < 0) {
    throw new OsError(`setsockopt ${what}`, errno());
  }
}

/** Sets a buffer size: the FORCE option first (root: past the sysctl cap), the plain one else. */
function setBuffer(fd: number, force: number, plain: number, bytes: number): void {
  const b = new Uint8Array(new Int32Array([bytes]).buffer);
  if (libc().setsockopt(fd, SOL_SOCKET, force, b, 4) === 0) return;
  libc().setsockopt(fd, SOL_SOCKET, plain, b, 4); // best effort: the kernel caps it
}

function ipText(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

/** Extra reads without waiting that {@linkcode serveUdp} tries after one that returned datagrams. */
export const SERVE_REDRAIN = 4;

/**
 * Serves `sock` until the returned function is called: wait (off the event
 * loop), read every waiting datagram into `onDatagram` (and again, without
 * waiting, while more keep coming, up to {@linkcode SERVE_REDRAIN} times),
 * then call `onTurnEnd` once (commit what the batch changed, flush the
 * answers). `onFatal` gets an exception of the callbacks or of the socket,
 * which ends the loop.
 */
export function serveUdp(
  sock: UdpSocket,
  onDatagram: DatagramHandler,
  onTurnEnd: () => void,
  onFatal: (e: Error) => void,
  redrain = SERVE_REDRAIN,
): () => void {
  return serveLoop({
    wait: (ms) => sock.wait(ms),
    drain: () => sock.receive(onDatagram),
    redrain,
    onTurnEnd,
    onFatal,
  });
}
