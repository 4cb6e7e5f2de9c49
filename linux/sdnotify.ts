/**
 * systemd's readiness protocol (sd_notify(3)): when `NOTIFY_SOCKET` is set,
 * send `READY=1` (and `STATUS=...`, `RELOADING=1`, `STOPPING=1`) as one
 * datagram to that AF_UNIX socket. The address is a path, or an abstract
 * name when it starts with `@`. Without `NOTIFY_SOCKET` nothing happens, so
 * the role runs the same outside systemd (`Type=notify` units set it).
 *
 * Requires `--allow-env` and `--allow-ffi`.
 *
 * @module
 */

import { AF_UNIX, errno, libc, SOCK_CLOEXEC, SOCK_DGRAM, strerror } from "./libc.ts";

/** `struct sockaddr_un` for `path` (`@name`: abstract). Exported for tests. */
export function sockaddrUn(path: string): Uint8Array {
  const name = new TextEncoder().encode(path.startsWith("@") ? "\0" + path.slice(1) : path);
  if (name.length > 107) throw new RangeError(`NOTIFY_SOCKET "${path}" is longer than 107 bytes`);
  const sa = new Uint8Array(2 + name.length + (path.startsWith("@") ? 0 : 1));
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(name, 2);
  return sa;
}

/**
 * Sends `state` (e.g. `"READY=1\nSTATUS=translating"`) to systemd. Returns
 * false when not under a notifying service manager; throws when sending fails.
 */
export function sdNotify(state: string): boolean {
  let path: string | undefined;
  try {
    path = Deno.env.get("NOTIFY_SOCKET");
  } catch {
    return false;
  }
  if (!path) return false;
  const c = libc();
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`sd_notify: socket: ${strerror(errno())}`);
  try {
    const msg = new TextEncoder().encode(state);
    const sa = sockaddrUn(path);
    const n = c.sendto(fd, msg, BigInt(msg.length), 0, sa, sa.length);
    if (Number(n) < 0) throw new Error(`sd_notify to ${path}: ${strerror(errno())}`);
    return true;
  } finally {
    c.close(fd);
  }
}
