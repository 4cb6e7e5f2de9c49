/**
 * A raw IPv4 socket that receives the VRRP packets (IP protocol 112)
 * delivered to this network namespace, for `dpm server --ha` to hear the
 * peer's advertisements (src/ha/vrrp.ts). keepalived keeps its own socket;
 * this one only listens (a raw socket gets a copy of each packet of its
 * protocol, the IPv4 header included), never sends.
 *
 * Non-blocking: {@linkcode VrrpSocket.drain} reads what is queued and
 * returns. Requires `--allow-ffi` and root (CAP_NET_RAW).
 *
 * @module
 */

import {
  AF_INET,
  errno,
  libc,
  OsError,
  OwnedFd,
  recvEach,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_RAW,
} from "./libc.ts";

/** VRRP's IP protocol number. */
const IPPROTO_VRRP = 112;
/** An advert is small (an IPv4 header, 8 bytes, a few addresses); larger reads are cut. */
const RX_SIZE = 1500;

/** A raw socket receiving VRRP packets. */
export class VrrpSocket extends OwnedFd {
  readonly #rx = new Uint8Array(RX_SIZE);

  private constructor(fd: number) {
    super(fd);
  }

  /** @throws {OsError} e.g. `EPERM` without CAP_NET_RAW. */
  static open(): VrrpSocket {
    const fd = libc().socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_VRRP);
    if (fd < 0) throw new OsError("socket(AF_INET, SOCK_RAW, 112)", errno());
    return new VrrpSocket(fd);
  }

  /**
   * Calls `onPacket` with each queued packet (IPv4 header included; the
   * view is reused, copy what must outlive the call); returns how many.
   * @throws {OsError} when the socket fails otherwise than by being empty.
   */
  drain(onPacket: (p: Uint8Array) => void): number {
    return recvEach(this, this.#rx, "VRRP socket", (len) => onPacket(this.#rx.subarray(0, len)));
  }
}
