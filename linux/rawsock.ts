/**
 * A raw IPv4 socket for sending complete packets built in user space.
 *
 * `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)` implies `IP_HDRINCL`: the buffer
 * is the whole IPv4 packet, header included. The kernel routes it as local
 * output (through raw/mangle/nat/filter OUTPUT and POSTROUTING) and fills in
 * the header checksum and total length always, the identification when it
 * is 0 and the source address when it is 0.0.0.0. It does not fragment: a
 * packet larger than the route's MTU fails with `EMSGSIZE`.
 *
 * dpm uses it to hand a local application an ICMP error (a clear refusal)
 * and, on the gateway, to send a rewritten packet whose source is one of the
 * gateway's own addresses without it being taken for a martian on input.
 *
 * Requires `--allow-ffi` and root (CAP_NET_RAW).
 *
 * @module
 */

import {
  AF_INET,
  errno,
  HOST_LITTLE_ENDIAN as LE,
  IPPROTO_RAW,
  libc,
  OsError,
  OwnedFd,
  SO_MARK,
  SOCK_CLOEXEC,
  SOCK_RAW,
  SockaddrIn,
  SOL_SOCKET,
  strerror,
} from "./libc.ts";

/** Counters of a raw socket. */
export interface RawSocketStats {
  /** Packets the kernel accepted. */
  sent: number;
  /** Failed sends (the packet is lost; see `lastError`). */
  errors: number;
}

/**
 * Lengths as the `bigint`s `sendto`'s `size_t` parameter takes, made once:
 * no allocation per packet after the first packet of each length.
 */
const lengths: bigint[] = [];

/**
 * A raw IPv4 socket with `IP_HDRINCL`.
 *
 * @example
 * ```ts ignore
 * using raw = RawSocket.open();
 * raw.send(packet, packet.length, parseIPv4("192.0.2.7")!);
 * ```
 */
export class RawSocket extends OwnedFd {
  /** Counters, updated in place. */
  readonly stats: RawSocketStats = { sent: 0, errors: 0 };
  /** The last send error, for diagnostics. */
  lastError = "";
  /** `errno` of the last failed send, 0 if none. */
  lastErrno = 0;
  readonly #sa = new Uint8Array(SockaddrIn.SIZE);
  readonly #saDv = new DataView(this.#sa.buffer);

  private constructor(fd: number) {
    super(fd);
    this.#saDv.setUint16(SockaddrIn.FAMILY, AF_INET, LE);
  }

  /**
   * Opens the socket. Requires `--allow-ffi` and root.
   * @throws {OsError} e.g. `EPERM` without CAP_NET_RAW.
   */
  static open(): RawSocket {
    const fd = libc().socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (fd < 0) throw new OsError("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)", errno());
    return new RawSocket(fd);
  }

  /**
   * Marks every packet this socket sends with `mark` (`SO_MARK`, which needs
   * CAP_NET_ADMIN): a BPF program or rule can then tell them apart.
   * @throws {OsError}
   */
  setMark(mark: number): void {
    const v = new Uint8Array(4);
    new DataView(v.buffer).setUint32(0, mark >>> 0, LE);
    if (libc().setsockopt(this.fd, SOL_SOCKET, SO_MARK, v, 4) < 0) {
      throw new OsError("setsockopt(SO_MARK)", errno());
    }
  }

  /**
   * Sends the first `len` bytes of `pkt`, a complete IPv4 packet, toward
   * `dst` (host order; normally the packet's destination, which the kernel
   * routes). Failures are counted in `stats.errors`, never thrown: one lost
   * packet must not stop the data path.
   */
  send(pkt: Uint8Array, len: number, dst: number): void {
    const fd = this.fd;
    if (fd < 0 || len < 20 || len > pkt.length || len > 65535) {
      this.stats.errors++;
      this.lastError = fd < 0 ? "socket closed" : `bad packet length ${len}`;
      return;
    }
    this.#saDv.setUint32(SockaddrIn.ADDR, dst >>> 0, false);
    const n = (lengths[len] ??= BigInt(len));
    const r = libc().sendto(fd, pkt, n, 0, this.#sa, SockaddrIn.SIZE);
    if (r < 0) {
      const e = errno();
      this.stats.errors++;
      this.lastErrno = e;
      this.lastError = `sendto: ${strerror(e)} (errno ${e})`;
      return;
    }
    this.stats.sent++;
  }
}
