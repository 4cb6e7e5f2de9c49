/**
 * Every C function dpm calls, in one place.
 *
 * The library is opened lazily on the first call of {@linkcode libc}, so this
 * module can be imported (and type-checked, and its constants used) without
 * `--allow-ffi`. Every parameter is annotated with its C declaration. The
 * layouts assume an LP64 Linux ABI (x86_64, aarch64): pointers and `size_t`
 * are 8 bytes.
 *
 * Requires `--allow-ffi` once a symbol is used.
 *
 * @module
 */

/** The symbol table handed to `Deno.dlopen`. */
const SYMBOLS = {
  /** `int socket(int domain, int type, int protocol);` */
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  /** `int bind(int sockfd, const struct sockaddr *addr, socklen_t addrlen);` */
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /** `int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen);` */
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  /** `int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen);` */
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  /** `ssize_t send(int sockfd, const void *buf, size_t len, int flags);` */
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  /**
   * `ssize_t sendto(int sockfd, const void *buf, size_t len, int flags,
   *                 const struct sockaddr *dest_addr, socklen_t addrlen);`
   */
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  /** `ssize_t sendmsg(int sockfd, const struct msghdr *msg, int flags);` */
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  /**
   * `int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);`
   */
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  /** `int getsockname(int sockfd, struct sockaddr *addr, socklen_t *addrlen);` */
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** `ssize_t recv(int sockfd, void *buf, size_t len, int flags);` */
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  /**
   * `int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags,
   *               struct timespec *timeout);`
   */
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  /**
   * `int poll(struct pollfd *fds, nfds_t nfds, int timeout);` on a worker
   * thread: the event loop keeps running while it blocks. `errno` of that
   * thread cannot be read afterwards.
   */
  poll_async: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  /** `int poll(struct pollfd *fds, nfds_t nfds, int timeout);` on the calling thread. */
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  /** `int eventfd(unsigned int initval, int flags);` */
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  /** `ssize_t write(int fd, const void *buf, size_t count);` */
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  /** `int close(int fd);` */
  close: { parameters: ["i32"], result: "i32" },
  /** `int *__errno_location(void);` (glibc: the calling thread's `errno`) */
  __errno_location: { parameters: [], result: "pointer" },
  /** `char *strerror(int errnum);` */
  strerror: { parameters: ["i32"], result: "pointer" },
  /** `unsigned int if_nametoindex(const char *ifname);` 0 when there is no such interface. */
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  /** `int clock_gettime(clockid_t clockid, struct timespec *tp);` */
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  /** `pid_t getpid(void);` */
  getpid: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library's callable symbols. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

/**
 * The libc symbols, opening `libc.so.6` on first use.
 *
 * Requires `--allow-ffi`.
 */
export function libc(): Libc {
  lib ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return lib.symbols;
}

/**
 * The calling thread's `errno`. Call it right after the failed call, before
 * any other FFI call that might overwrite it. Only meaningful for symbols
 * called synchronously (not for `nonblocking` ones, which run on another
 * thread).
 */
export function errno(): number {
  const p = libc().__errno_location();
  if (p === null) return 0;
  return new Deno.UnsafePointerView(p).getInt32();
}

/** The index of network interface `name` in this namespace, or 0 when there is none. */
export function ifIndex(name: string): number {
  return libc().if_nametoindex(new TextEncoder().encode(`${name}\0`));
}

/** `CLOCK_MONOTONIC`: the clock of BPF's `bpf_ktime_get_ns` and `bpf_ktime_get_coarse_ns`. */
export const CLOCK_MONOTONIC = 1;

/** Nanoseconds on `clock` (e.g. {@linkcode CLOCK_MONOTONIC}), as a bigint. */
export function clockNs(clock: number): bigint {
  const ts = new Uint8Array(16); // struct timespec { time_t tv_sec; long tv_nsec; }
  if (libc().clock_gettime(clock, ts) < 0) throw new OsError("clock_gettime", errno());
  const dv = new DataView(ts.buffer);
  return dv.getBigInt64(0, HOST_LITTLE_ENDIAN) * 1_000_000_000n +
    dv.getBigInt64(8, HOST_LITTLE_ENDIAN);
}

/** The text of an error number, as `strerror(3)` gives it. */
export function strerror(err: number): string {
  const p = libc().strerror(err);
  return p === null ? `errno ${err}` : Deno.UnsafePointerView.getCString(p);
}

/** Error thrown by {@linkcode check}, carrying the C error number. */
export class OsError extends Error {
  /** The `errno` value of the failed call. */
  readonly errno: number;
  /** @param what what was attempted; @param err the `errno` value. */
  constructor(what: string, err: number) {
    super(`${what}: ${strerror(err)} (errno ${err})`);
    this.name = "OsError";
    this.errno = err;
  }
}

/**
 * Throws an {@linkcode OsError} naming `what` when `ret` is negative (the C
 * convention for failure), reading `errno` at once; returns `ret` otherwise.
 *
 * @example
 * ```ts ignore
 * const fd = check(libc().socket(AF_INET, SOCK_RAW, IPPROTO_RAW), "socket(AF_INET, SOCK_RAW)");
 * ```
 */
export function check(ret: number | bigint, what: string): number {
  const n = Number(ret);
  if (n < 0) throw new OsError(what, errno());
  return n;
}

/**
 * A file descriptor an object owns: closed exactly once, by
 * {@linkcode close} or at the end of a `using` block. dpm's sockets
 * (netlink, raw) extend it.
 */
export class OwnedFd {
  #fd: number;

  /** @param fd an open descriptor, owned from now on. */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** The descriptor; -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** Closes the descriptor. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** True on little-endian hosts (x86_64, aarch64 as Linux runs it). */
export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The address of a buffer's first byte as a plain number (user-space addresses fit in 53 bits). */
export function addressOf(buf: Uint8Array): number {
  const p = Deno.UnsafePointer.of(buf as Uint8Array<ArrayBuffer>);
  return p === null ? 0 : Number(Deno.UnsafePointer.value(p));
}

/**
 * Writes a 64-bit pointer or `size_t` (given as a number below 2^53) into `dv`
 * at `off`, in host byte order.
 */
export function setU64(dv: DataView, off: number, addr: number): void {
  // Two 32-bit halves: no BigInt allocation on the hot path.
  const lo = addr % 0x1_0000_0000;
  const hi = (addr - lo) / 0x1_0000_0000;
  if (HOST_LITTLE_ENDIAN) {
    dv.setUint32(off, lo, true);
    dv.setUint32(off + 4, hi, true);
  } else {
    dv.setUint32(off, hi, false);
    dv.setUint32(off + 4, lo, false);
  }
}

// errno values dpm reacts to (asm-generic/errno-base.h, errno.h).
/** Interrupted system call. */
export const EINTR = 4;
/** Resource temporarily unavailable (nothing to read with MSG_DONTWAIT). */
export const EAGAIN = 11;
/** Operation not permitted. */
export const EPERM = 1;
/** No such file or directory (netlink: no such queue / packet id). */
export const ENOENT = 2;
/** Device or resource busy (netlink queue bound by another socket). */
export const EBUSY = 16;
/** No buffer space available (netlink receive queue overflowed). */
export const ENOBUFS = 105;
/** File exists (netlink: the object or element is already there). */
export const EEXIST = 17;
/** Invalid argument. */
export const EINVAL = 22;
/** Message too long (netlink: the datagram exceeds the send buffer). */
export const EMSGSIZE = 90;
/** Address already in use (bind). */
export const EADDRINUSE = 98;
/** Cannot assign requested address (bind to an address this host does not have). */
export const EADDRNOTAVAIL = 99;
/** Operation not supported (netlink: message type unknown to this kernel). */
export const EOPNOTSUPP = 95;
/** Connection timed out (dpm: the kernel did not answer in time). */
export const ETIMEDOUT = 110;

// Socket constants (linux/socket.h, linux/in.h, asm-generic/socket.h).
/** `AF_UNIX` */
export const AF_UNIX = 1;
/** `AF_INET` */
export const AF_INET = 2;
/** `AF_NETLINK` */
export const AF_NETLINK = 16;
/** `SOCK_DGRAM` */
export const SOCK_DGRAM = 2;
/** `SOCK_RAW` */
export const SOCK_RAW = 3;
/** `SOCK_CLOEXEC`: not inherited by spawned processes. */
export const SOCK_CLOEXEC = 0o2000000;
/** `SOCK_NONBLOCK` */
export const SOCK_NONBLOCK = 0o4000;
/** `IPPROTO_RAW`: sending implies `IP_HDRINCL`. */
export const IPPROTO_RAW = 255;
/** `SOL_SOCKET` */
export const SOL_SOCKET = 1;
/** `SO_REUSEADDR` */
export const SO_REUSEADDR = 2;
/** `SO_REUSEPORT`: several sockets bind the same address and port; the kernel spreads datagrams by source. */
export const SO_REUSEPORT = 15;
/** `SO_SNDBUF` */
export const SO_SNDBUF = 7;
/** `SO_RCVBUF` */
export const SO_RCVBUF = 8;
/** `SO_RCVTIMEO` (`SO_RCVTIMEO_OLD`: a `struct timeval` of two 64-bit longs on LP64). */
export const SO_RCVTIMEO = 20;
/** `SO_SNDTIMEO` (`SO_SNDTIMEO_OLD`, same layout as {@linkcode SO_RCVTIMEO}). */
export const SO_SNDTIMEO = 21;
/** `SO_SNDBUFFORCE`: like SO_SNDBUF, past `wmem_max` (CAP_NET_ADMIN). */
export const SO_SNDBUFFORCE = 32;
/** `SO_RCVBUFFORCE`: like SO_RCVBUF, past `rmem_max` (CAP_NET_ADMIN). */
export const SO_RCVBUFFORCE = 33;
/** `SO_MARK`: the mark of every packet a socket sends (CAP_NET_ADMIN). */
export const SO_MARK = 36;
/** `MSG_DONTWAIT` */
export const MSG_DONTWAIT = 0x40;
/** `MSG_TRUNC` (in msg_flags: the datagram was longer than the buffer). */
export const MSG_TRUNC = 0x20;
/** `POLLIN` */
export const POLLIN = 0x1;
/** `POLLERR` */
export const POLLERR = 0x8;
/** `POLLHUP` */
export const POLLHUP = 0x10;
/** `POLLNVAL` */
export const POLLNVAL = 0x20;
/** `EFD_NONBLOCK` */
export const EFD_NONBLOCK = 0o4000;
/** `EFD_CLOEXEC` */
export const EFD_CLOEXEC = 0o2000000;

// Struct layouts (LP64).
/** `sizeof(struct iovec)`: void *iov_base; size_t iov_len. */
export const IOVEC_SIZE = 16;
/**
 * `struct msghdr` offsets: name 0, namelen 8, iov 16, iovlen 24, control 32,
 * controllen 40, flags 48; size 56.
 */
export const MsgHdr = {
  NAME: 0,
  NAMELEN: 8,
  IOV: 16,
  IOVLEN: 24,
  CONTROL: 32,
  CONTROLLEN: 40,
  FLAGS: 48,
  SIZE: 56,
} as const;
/** `struct mmsghdr`: a msghdr then `unsigned int msg_len`; size 64 with padding. */
export const MMsgHdr = { HDR: 0, LEN: 56, SIZE: 64 } as const;
/** `struct sockaddr_in`: family u16 (host order), port be16, address be32, 8 zero bytes. */
export const SockaddrIn = { FAMILY: 0, PORT: 2, ADDR: 4, SIZE: 16 } as const;
/** `struct pollfd`: int fd; short events; short revents. */
export const PollFd = { FD: 0, EVENTS: 4, REVENTS: 6, SIZE: 8 } as const;

/** The buffers of {@linkcode mmsgSlots}; the arrays the headers point at stay referenced here. */
export interface MMsgSlots {
  /** `n` slots of `size` bytes, slot `i` at `i * size`. */
  data: Uint8Array;
  /** `n` address buffers of `nameSize` bytes (empty when 0). */
  names: Uint8Array;
  /** `n` iovecs, one per slot. */
  iov: Uint8Array;
  /** `n` mmsghdrs, header `i` naming slot `i` (and address buffer `i`). */
  mmsg: Uint8Array;
  /** Views of `names`, `iov` and `mmsg`, to read and fill them. */
  namesDv: DataView;
  iovDv: DataView;
  mmsgDv: DataView;
}

/**
 * Buffers for `recvmmsg(2)`/`sendmmsg(2)` of `n` messages of at most `size`
 * bytes, allocated once: each mmsghdr points at its iovec (one per slot),
 * each iovec at its slot, and with `nameSize` > 0 each header at an address
 * buffer of that size. Keep the returned object (or its arrays) alive while
 * the kernel may read the headers: they hold raw addresses of the others.
 */
export function mmsgSlots(n: number, size: number, nameSize = 0): MMsgSlots {
  const data = new Uint8Array(n * size);
  const names = new Uint8Array(n * nameSize);
  const iov = new Uint8Array(n * IOVEC_SIZE);
  const mmsg = new Uint8Array(n * MMsgHdr.SIZE);
  const iovDv = new DataView(iov.buffer);
  const mDv = new DataView(mmsg.buffer);
  const dataAddr = addressOf(data);
  const namesAddr = addressOf(names);
  const iovAddr = addressOf(iov);
  for (let i = 0; i < n; i++) {
    setU64(iovDv, i * IOVEC_SIZE, dataAddr + i * size);
    setU64(iovDv, i * IOVEC_SIZE + 8, size);
    const m = i * MMsgHdr.SIZE + MMsgHdr.HDR;
    if (nameSize > 0) {
      setU64(mDv, m + MsgHdr.NAME, namesAddr + i * nameSize);
      mDv.setUint32(m + MsgHdr.NAMELEN, nameSize, HOST_LITTLE_ENDIAN);
    }
    setU64(mDv, m + MsgHdr.IOV, iovAddr + i * IOVEC_SIZE);
    setU64(mDv, m + MsgHdr.IOVLEN, 1);
  }
  return { data, names, iov, mmsg, namesDv: new DataView(names.buffer), iovDv, mmsgDv: mDv };
}

/**
 * Reads every datagram queued on the non-blocking socket `owner.fd` into
 * `buf`, one `recv(2)` each, and calls `onDatagram` with its length (cut to
 * `buf`); returns how many were read once the socket is empty (EAGAIN),
 * closed (`owner.fd` < 0, checked before each read: a callback may close
 * it) or at end of stream. EINTR is retried; ENOBUFS (the kernel dropped
 * messages: netlink) calls `onNoBufs` and goes on, or throws without it.
 *
 * @param what names the socket in the error.
 * @throws {OsError} when `recv` fails otherwise.
 */
export function recvEach(
  owner: { readonly fd: number },
  buf: Uint8Array,
  what: string,
  onDatagram: (len: number) => void,
  onNoBufs?: () => void,
): number {
  const c = libc();
  let count = 0;
  for (;;) {
    const fd = owner.fd;
    if (fd < 0) return count;
    const n = Number(c.recv(fd, buf, BigInt(buf.length), 0));
    if (n < 0) {
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return count;
      if (e === ENOBUFS && onNoBufs) {
        onNoBufs();
        continue;
      }
      throw new OsError(`${what}: recv`, e);
    }
    if (n === 0) return count;
    count++;
    onDatagram(Math.min(n, buf.length));
  }
}
