/**
 * Who is at the other end of a Unix stream connection, asked of the kernel
 * over `NETLINK_SOCK_DIAG` (the interface `ss -x` uses), for connections
 * Deno accepted itself.
 *
 * ## Why this way
 *
 * Deno's Unix sockets do not expose the peer's credentials (`SO_PEERCRED`)
 * nor their file descriptor. Rather than a second listener written over FFI
 * (`accept4`, a non-blocking fd polled beside the event loop, then every
 * read and write by hand), the driver keeps `Deno.listen` and learns the
 * peer from the kernel's socket tables:
 *
 * 1. Right before each accept, {@linkcode AcceptedPeers.mark} notes the
 *    socket inodes among the process's descriptors (`/proc/self/fd`, links
 *    `socket:[inode]`). Deno accepts one connection per `accept()`, so the
 *    connection's inode is among those that appear across it.
 * 2. For each new inode, a `SOCK_DIAG_BY_FAMILY` request for that one
 *    socket (`unix_diag_req` with `udiag_ino`, no dump) asks its name and
 *    peer (`UDIAG_SHOW_NAME | UDIAG_SHOW_PEER`): an accepted socket carries
 *    the listening path as its name, which tells it from any other socket
 *    opened meanwhile, and its peer is the client's socket inode.
 * 3. A request for the peer's inode with `UDIAG_SHOW_UID` gives the uid of
 *    the client's socket (`UNIX_DIAG_UID`, Linux 5.3 and later): the
 *    effective (fs) uid of the process that created it, as the kernel set
 *    it then; a client cannot choose it.
 *
 * Inodes, not descriptor numbers, name the sockets throughout, so a
 * descriptor closed and reused meanwhile cannot mislead it.
 *
 * The kernel looks sockets up in the network namespace of the netlink
 * socket, and a connection's two sockets live in the namespace of the
 * process that connected: a client in another network namespace (through a
 * bind-mounted socket file) is not found and stays unknown
 * ({@linkcode PeerCred} `uid: null`, with the reason).
 *
 * Layouts and constants from the kernel's `include/uapi/linux/sock_diag.h`
 * and `unix_diag.h` (host byte order). {@linkcode unixDiagRequest} and
 * {@linkcode parseUnixDiag} are pure; the rest needs `--allow-ffi` and
 * `--allow-read` (no root: sock_diag answers any user about sockets of its
 * namespace).
 *
 * @module
 */

import { AF_UNIX, HOST_LITTLE_ENDIAN as LE } from "./libc.ts";
import {
  attrs,
  getU32,
  messages,
  NetlinkError,
  NetlinkSocket,
  NlBuilder,
  NLMSG_DONE,
  NLMSG_ERROR,
} from "./netlink.ts";

/** `NETLINK_SOCK_DIAG` (linux/netlink.h). */
export const NETLINK_SOCK_DIAG = 4;
/** `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h): the request and reply message type. */
export const SOCK_DIAG_BY_FAMILY = 20;
export { AF_UNIX };

// udiag_show bits (linux/unix_diag.h).
/** `UDIAG_SHOW_NAME`: the bound name (`UNIX_DIAG_NAME`). */
export const UDIAG_SHOW_NAME = 0x01;
/** `UDIAG_SHOW_PEER`: the peer's inode (`UNIX_DIAG_PEER`). */
export const UDIAG_SHOW_PEER = 0x04;
/** `UDIAG_SHOW_UID`: the socket's uid (`UNIX_DIAG_UID`, Linux >= 5.3). */
export const UDIAG_SHOW_UID = 0x40;

// Reply attributes (linux/unix_diag.h, the enum from UNIX_DIAG_NAME = 0).
/** `UNIX_DIAG_NAME`: `sun_path` bytes (a leading NUL: abstract). */
export const UNIX_DIAG_NAME = 0;
/** `UNIX_DIAG_PEER`: u32, the peer socket's inode. */
export const UNIX_DIAG_PEER = 2;
/** `UNIX_DIAG_UID`: u32 uid_t. */
export const UNIX_DIAG_UID = 7;

/**
 * `struct unix_diag_req`: sdiag_family u8, sdiag_protocol u8, pad u16,
 * udiag_states u32, udiag_ino u32, udiag_show u32, udiag_cookie u32[2];
 * size 24.
 */
export const UnixDiagReq = {
  FAMILY: 0,
  PROTOCOL: 1,
  STATES: 4,
  INO: 8,
  SHOW: 12,
  COOKIE: 16,
  SIZE: 24,
} as const;
/**
 * `struct unix_diag_msg`: udiag_family u8, udiag_type u8, udiag_state u8,
 * pad u8, udiag_ino u32, udiag_cookie u32[2]; size 16. Attributes follow.
 */
export const UnixDiagMsg = { FAMILY: 0, TYPE: 1, STATE: 2, INO: 4, COOKIE: 8, SIZE: 16 } as const;

/** Every socket state (`udiag_states` is a mask of `1 << state`). */
const ALL_STATES = 0xffffffff;
/** `INET_DIAG_NOCOOKIE` in both cookie words: no cookie check. */
const NO_COOKIE = 0xffffffff;

/** One Unix socket as sock_diag describes it. */
export interface UnixSockInfo {
  /** The socket's inode (what `/proc/<pid>/fd` links show as `socket:[inode]`). */
  ino: number;
  /** `SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5. */
  type: number;
  /** TCP-like state: 1 established (connected), 10 listening, 7 unconnected. */
  state: number;
  /** The bound path, `@name` for an abstract name; null when unbound or not asked. */
  name: string | null;
  /** The peer socket's inode; null when none (or not asked). */
  peer: number | null;
  /** The socket's uid; null when not asked (or a kernel before 5.3). */
  uid: number | null;
}

/**
 * A `SOCK_DIAG_BY_FAMILY` request for Unix sockets: the socket of inode
 * `ino` (sent as a plain request), or with `ino` 0 every socket in a state
 * of `states` (sent as a dump). `show` says which attributes come back. The
 * flags are left for {@linkcode NetlinkSocket} to set.
 */
export function unixDiagRequest(ino: number, show: number, states = ALL_STATES): Uint8Array {
  const req = new Uint8Array(UnixDiagReq.SIZE);
  const dv = new DataView(req.buffer);
  req[UnixDiagReq.FAMILY] = AF_UNIX;
  dv.setUint32(UnixDiagReq.STATES, states >>> 0, LE);
  dv.setUint32(UnixDiagReq.INO, ino >>> 0, LE);
  dv.setUint32(UnixDiagReq.SHOW, show >>> 0, LE);
  dv.setUint32(UnixDiagReq.COOKIE, NO_COOKIE, LE);
  dv.setUint32(UnixDiagReq.COOKIE + 4, NO_COOKIE, LE);
  return new NlBuilder(64).begin(SOCK_DIAG_BY_FAMILY, 0).raw(req).end().finish();
}

/**
 * Decodes one `SOCK_DIAG_BY_FAMILY` reply payload (`dv[off, off + len)`:
 * a `unix_diag_msg`, then attributes). Null when it is not an `AF_UNIX`
 * answer or is too short.
 *
 * @throws {NetlinkParseError} when an attribute is malformed.
 */
export function parseUnixDiag(dv: DataView, off: number, len: number): UnixSockInfo | null {
  if (len < UnixDiagMsg.SIZE || dv.getUint8(off + UnixDiagMsg.FAMILY) !== AF_UNIX) return null;
  const info: UnixSockInfo = {
    ino: dv.getUint32(off + UnixDiagMsg.INO, LE),
    type: dv.getUint8(off + UnixDiagMsg.TYPE),
    state: dv.getUint8(off + UnixDiagMsg.STATE),
    name: null,
    peer: null,
    uid: null,
  };
  for (const a of attrs(dv, off + UnixDiagMsg.SIZE, off + len)) {
    if (a.type === UNIX_DIAG_NAME) {
      const b = new Uint8Array(dv.buffer, dv.byteOffset + a.off, a.len);
      if (b.length > 0 && b[0] === 0) {
        info.name = "@" + new TextDecoder().decode(b.subarray(1));
      } else {
        const z = b.indexOf(0);
        info.name = new TextDecoder().decode(z < 0 ? b : b.subarray(0, z));
      }
    } else if (a.type === UNIX_DIAG_PEER && a.len >= 4) info.peer = getU32(dv, a);
    else if (a.type === UNIX_DIAG_UID && a.len >= 4) info.uid = getU32(dv, a);
  }
  return info;
}

/**
 * The Unix sockets described in one datagram of replies (`buf`), skipping
 * control messages (`NLMSG_ERROR`, `NLMSG_DONE`) and other types.
 */
export function parseUnixDiagDatagram(buf: Uint8Array): UnixSockInfo[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: UnixSockInfo[] = [];
  for (const m of messages(dv, buf.length)) {
    if (m.type === NLMSG_ERROR || m.type === NLMSG_DONE || m.type !== SOCK_DIAG_BY_FAMILY) {
      continue;
    }
    const s = parseUnixDiag(dv, m.off, m.len);
    if (s) out.push(s);
  }
  return out;
}

/** A sock_diag socket for Unix sockets. Blocking, one request at a time. */
export class UnixDiag {
  readonly #nl: NetlinkSocket;

  private constructor(nl: NetlinkSocket) {
    this.#nl = nl;
  }

  /**
   * Opens the netlink socket (small buffers: the answers are a few bytes).
   *
   * @throws {OsError} when it cannot be opened (no `--allow-ffi`: a `Deno.errors.NotCapable`).
   */
  static open(timeoutMs = 2000): UnixDiag {
    return new UnixDiag(
      NetlinkSocket.open(NETLINK_SOCK_DIAG, { timeoutMs, rcvbuf: 1 << 18, sndbuf: 1 << 16 }),
    );
  }

  /**
   * The socket of inode `ino` in this network namespace with the attributes
   * of `show`; null when there is none (gone, or in another namespace).
   *
   * @throws {NetlinkError} when the kernel refuses otherwise.
   */
  get(ino: number, show: number): UnixSockInfo | null {
    let found: UnixSockInfo | null = null;
    try {
      this.#nl.query(unixDiagRequest(ino, show), (type, dv, off, len) => {
        if (type === SOCK_DIAG_BY_FAMILY) found ??= parseUnixDiag(dv, off, len);
      }, `sock_diag of unix socket ${ino}`);
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === 2) return null; // ENOENT
      throw e;
    }
    return found;
  }

  /** Every Unix socket of this network namespace in a state of `states`, with `show`'s attributes. */
  dump(show: number, states = ALL_STATES): UnixSockInfo[] {
    const out: UnixSockInfo[] = [];
    this.#nl.dump(unixDiagRequest(0, show, states), (type, dv, off, len) => {
      if (type !== SOCK_DIAG_BY_FAMILY) return;
      const s = parseUnixDiag(dv, off, len);
      if (s) out.push(s);
    }, "sock_diag dump of unix sockets");
    return out;
  }

  /**
   * The uid at the other end of the connection whose own socket is `ino`;
   * `expectName` (a listening path) must be that socket's name. A reason
   * instead when it cannot be told.
   */
  peerUid(ino: number, expectName: string | null = null): PeerCred {
    const own = this.get(ino, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER);
    if (!own) return { uid: null, why: `socket ${ino} is not in this network namespace` };
    if (expectName !== null && own.name !== expectName) {
      return { uid: null, why: `socket ${ino} is not a connection to ${expectName}` };
    }
    if (!own.peer) return { uid: null, why: "the client has gone" };
    const peer = this.get(own.peer, UDIAG_SHOW_UID);
    if (!peer) {
      return { uid: null, why: "the client's socket is not in this network namespace" };
    }
    if (peer.uid === null) {
      return { uid: null, why: "the kernel does not report socket uids (Linux 5.3 or later)" };
    }
    return { uid: peer.uid };
  }

  /** Closes the netlink socket. Idempotent. */
  close(): void {
    this.#nl.close();
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Who connected: a uid, or null with the reason it could not be told. */
export interface PeerCred {
  uid: number | null;
  why?: string;
}

/**
 * The socket inodes among the descriptors of this process (`fdDir`: its
 * `/proc/self/fd`). Descriptors closed while it reads are skipped.
 */
export function socketInodes(fdDir = "/proc/self/fd"): Set<number> {
  const out = new Set<number>();
  for (const e of Deno.readDirSync(fdDir)) {
    let link: string;
    try {
      link = Deno.readLinkSync(`${fdDir}/${e.name}`);
    } catch {
      continue; // closed meanwhile (or the directory's own descriptor)
    }
    const m = /^socket:\[([0-9]+)\]$/.exec(link);
    if (m) out.add(Number(m[1]));
  }
  return out;
}

/**
 * Tells who is at the other end of each connection accepted on the Unix
 * listener at `path` (see the module documentation): call
 * {@linkcode mark} right before `listener.accept()` and {@linkcode peer}
 * as soon as it resolves, both synchronously.
 */
export class AcceptedPeers {
  readonly path: string;
  #diag: UnixDiag | null = null;
  #openError: string | null = null;
  #before: Set<number> | null = new Set<number>();

  /** @param path the listening socket's path, as bound. */
  constructor(path: string) {
    this.path = path;
  }

  /** Notes the sockets open now. */
  mark(): void {
    try {
      this.#before = socketInodes();
    } catch {
      // Fail closed: without the snapshot every open connection would look new.
      this.#before = null;
    }
  }

  /** The uid at the other end of the connection accepted since {@linkcode mark}. */
  peer(): PeerCred {
    try {
      if (!this.#diag && this.#openError === null) {
        try {
          this.#diag = UnixDiag.open();
        } catch (e) {
          this.#openError = `cannot open sock_diag: ${(e as Error).message}`;
        }
      }
      if (!this.#diag) return { uid: null, why: this.#openError ?? "no sock_diag" };
      const before = this.#before;
      if (before === null) return { uid: null, why: "cannot list this process's sockets" };
      const fresh = [...socketInodes()].filter((i) => !before.has(i));
      let why = "no new socket appeared across the accept";
      let found: PeerCred | null = null;
      for (const ino of fresh) {
        const p = this.#diag.peerUid(ino, this.path);
        if (p.uid !== null) {
          // Two new connections on our path (should not happen: one accept per
          // snapshot): which one is this? Fail closed rather than guess.
          if (found) return { uid: null, why: "more than one new connection across the accept" };
          found = p;
          continue;
        }
        // A socket named otherwise is someone else's; a reason about ours wins.
        if (!/is not a connection to/.test(p.why ?? "") || fresh.length === 1) why = p.why ?? why;
      }
      return found ?? { uid: null, why };
    } catch (e) {
      return { uid: null, why: `sock_diag failed: ${(e as Error).message}` };
    }
  }

  /** Closes the netlink socket. */
  close(): void {
    this.#diag?.close();
    this.#diag = null;
  }
}
