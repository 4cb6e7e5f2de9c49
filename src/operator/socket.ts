/**
 * The local operator socket: a Unix stream socket carrying one JSON request
 * line and one JSON response line per connection. `dpm status` talks to the
 * server's, `dpm query` to the driver's. The socket file is created mode 0600
 * (root or the socket's owner only) inside a directory made 0700 when dpm
 * creates it (0711 when the socket is open to a group: `ensureSocketDir`).
 *
 * A handler may answer with a {@linkcode LocalStream} instead (a whole table,
 * an event feed): the response is then newline-delimited JSON, a header
 * object carrying `"stream": true`, one line per item, and, when the items
 * end, a trailer `{"end": <items>}` (a stream without it was cut short).
 * Items are written in chunks of about {@linkcode STREAM_CHUNK} bytes, each
 * write awaited before the next chunk is built, so a million rows are never
 * one string and a slow reader slows the producer, not the memory. The
 * stream stops when the client goes away. {@linkcode streamLocal} reads one.
 *
 * ## Who asks
 *
 * With `peers` (the driver's socket with `--socket-group`, open to a
 * group), every accepted connection is told who connected before its
 * request is read: a {@linkcode PeerFinder} is asked right before and right
 * after each accept, and the handler gets the {@linkcode Peer} (uid, or
 * null and why not) beside the request. Deno's Unix sockets give neither
 * the peer's credentials (`SO_PEERCRED`) nor the descriptor, so the finder
 * asks the kernel's socket tables instead (`linux/sockdiag.ts`). Without
 * `peers` (a 0600 socket: only its owner, root, can connect) the handler
 * gets no peer.
 *
 * @module
 */

import { type ByteSink, closeQuietly, writeAll } from "../runtime/conn.ts";
import { logger } from "../runtime/log.ts";

const log = logger("local");
const MAX_REQUEST = 64 * 1024;
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Handles one decoded request object; returns the response object (or a
 * stream). `peer` is who connected, when the server was given a
 * {@linkcode PeerFinder}.
 */
export type LocalHandler = (req: unknown, peer?: Peer) => Promise<unknown> | unknown;

/** Who is at the other end of a connection: a uid, or null and why it is not known. */
export interface Peer {
  uid: number | null;
  /** Why `uid` is null. */
  why?: string;
}

/**
 * Tells who connected (`linux/sockdiag.ts` `AcceptedPeers`). The server
 * calls {@linkcode mark} synchronously right before each accept and
 * {@linkcode peer} synchronously as soon as it returns a connection.
 */
export interface PeerFinder {
  mark(): void;
  peer(): Peer;
  close(): void;
}

/** Bytes a stream's items are gathered into before one write. */
export const STREAM_CHUNK = 64 * 1024;

/**
 * A streamed answer: the header object, then the items of `items(signal)`,
 * each one JSON line. `signal` aborts when the client has gone; an endless
 * feed (events) must end then. A sync iterable is drained a chunk at a time.
 */
export class LocalStream {
  constructor(
    readonly header: Record<string, unknown>,
    readonly items: (signal: AbortSignal) => Iterable<unknown> | AsyncIterable<unknown>,
  ) {}
}

/** Where a stream is written: a connection, or a recorder in tests. */
export type { ByteSink };

/**
 * Writes `stream` to `sink` as newline-delimited JSON (see the module
 * documentation); returns the number of items written. Stops early, without
 * a trailer, when `signal` aborts.
 */
export async function writeStream(
  sink: ByteSink,
  stream: LocalStream,
  signal: AbortSignal,
  chunk = STREAM_CHUNK,
): Promise<number> {
  const enc = new TextEncoder();
  await writeAll(sink, jsonLine({ ...stream.header, stream: true }));
  let buf: string[] = [];
  let size = 0;
  let n = 0;
  const flush = async () => {
    if (!buf.length) return;
    const text = buf.join("");
    buf = [];
    size = 0;
    await writeAll(sink, enc.encode(text));
  };
  const it = stream.items(signal);
  if (Symbol.iterator in it) {
    for (const item of it) {
      const line = JSON.stringify(item) + "\n";
      buf.push(line);
      size += line.length;
      n++;
      if (size >= chunk) {
        await flush();
        if (signal.aborted) return n;
      }
    }
  } else {
    // An async feed (events) is written item by item: its reader waits for each.
    for await (const item of it) {
      if (signal.aborted) return n;
      buf.push(JSON.stringify(item) + "\n");
      n++;
      await flush();
    }
    if (signal.aborted) return n;
  }
  await flush();
  await writeAll(sink, jsonLine({ end: n }));
  return n;
}

/** Connections served at once on one operator socket; more are closed at accept. */
export const MAX_CONNECTIONS = 64;

/** A listening operator socket. */
export interface LocalServer extends AsyncDisposable {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Listens on `path`. A stale socket file from a crashed run is removed; a
 * socket that still answers means another instance runs, which is an error.
 */
export async function serveLocal(
  path: string,
  handler: LocalHandler,
  opts: { group?: string | null; peers?: (path: string) => PeerFinder } = {},
): Promise<LocalServer> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  // Resolved first: a bad group fails before anything is created.
  const gid = opts.group ? await groupId(opts.group) : null;
  const dirMode = await ensureSocketDir(path, gid !== null);
  if (gid !== null && (dirMode & 0o011) === 0) {
    throw new Error(
      `The socket's directory "${dir}" (mode ${
        (dirMode & 0o777).toString(8).padStart(4, "0")
      }) cannot be entered by group "${opts.group}": give it mode 0711 or more, or choose --socket elsewhere`,
    );
  }
  try {
    const st = await Deno.lstat(path);
    if (!st.isSocket) throw new Error(`Refusing to replace "${path}": it is not a socket`);
    let alive = false;
    try {
      const c = await Deno.connect({ transport: "unix", path });
      c.close();
      alive = true;
    } catch {
      // Nobody listens: a stale file from a crashed run.
    }
    if (alive) throw new Error(`Another dpm instance is listening on "${path}"`);
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const listener = Deno.listen({ transport: "unix", path });
  try {
    if (gid !== null) {
      await Deno.chown(path, null, gid);
      await Deno.chmod(path, 0o660);
    } else await Deno.chmod(path, 0o600);
  } catch (e) {
    listener.close();
    await Deno.remove(path).catch(() => {});
    throw e;
  }
  let closed = false;
  const conns = new Set<Deno.Conn>();
  const finder = opts.peers ? opts.peers(path) : null;
  const loop = (async () => {
    for (;;) {
      // One accept at a time: the finder sees each connection appear alone.
      finder?.mark();
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        // Closed: as the listener's own iterator ends.
        if (
          closed || e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted
        ) {
          break;
        }
        // Out of descriptors or memory for a moment (EMFILE, ENFILE, ENOMEM): keep
        // serving once it passes, rather than lose the socket for good.
        log.warn(`operator socket ${path}: accept failed: ${(e as Error).message}; retrying`);
        await new Promise((ok) => setTimeout(ok, 250));
        continue;
      }
      const peer = finder?.peer();
      if (peer && peer.uid === null) log.debug(`operator connection: asker unknown: ${peer.why}`);
      if (conns.size >= MAX_CONNECTIONS) {
        // Every connection costs a descriptor and, with per-user answers, reads of /proc.
        log.warn(`operator socket ${path}: ${conns.size} connections open, refusing one`);
        closeQuietly(conn);
        continue;
      }
      conns.add(conn);
      serveConn(conn, handler, peer).finally(() => conns.delete(conn));
    }
  })().catch((e) => {
    if (!closed) log.error(`operator socket ${path} failed: ${e}`);
  });
  const close = async () => {
    if (closed) return;
    closed = true;
    listener.close();
    finder?.close();
    for (const c of conns) {
      closeQuietly(c);
    }
    await loop;
    await Deno.remove(path).catch(() => {});
  };
  return { path, close, [Symbol.asyncDispose]: close };
}

/**
 * Makes the directory of socket `path` (and of the files a role keeps beside
 * it: the sysctl journal) when missing: mode 0700, root's only, or 0711 for
 * a socket open to a group (`group`), whose members must reach the socket
 * by name but need not list the directory (the socket's own 0660 decides
 * who may connect). An existing directory is left as it is. Returns the
 * directory's mode.
 */
export async function ensureSocketDir(path: string, group = false): Promise<number> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  try {
    return (await Deno.stat(dir)).mode ?? 0;
  } catch {
    const mode = group ? 0o711 : 0o700;
    await Deno.mkdir(dir, { recursive: true, mode });
    await Deno.chmod(dir, mode); // the umask may have taken bits away
    return mode;
  }
}

/**
 * The gid of a group, by name (from /etc/group, as getgrnam reads it) or as a
 * number. Throws a readable Error for a group that does not exist.
 */
export async function groupId(group: string): Promise<number> {
  if (/^[0-9]+$/.test(group)) return Number(group);
  let text = "";
  try {
    text = await Deno.readTextFile("/etc/group");
  } catch (e) {
    throw new Error(`Cannot read /etc/group to find group "${group}": ${(e as Error).message}`);
  }
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f[0] === group && f.length >= 3 && /^[0-9]+$/.test(f[2]!)) return Number(f[2]);
  }
  throw new Error(
    `No such group "${group}" (--socket-group): create it (groupadd ${group}) or name another`,
  );
}

async function serveConn(conn: Deno.Conn, handler: LocalHandler, peer?: Peer): Promise<void> {
  // A client that connects and says nothing is cut off.
  const timer = setTimeout(() => closeQuietly(conn), REQUEST_TIMEOUT_MS);
  try {
    const line = await readLine(conn, MAX_REQUEST);
    clearTimeout(timer);
    let res: unknown;
    if (line === null) res = { error: "Request too long or connection closed early" };
    else {
      let req: unknown;
      try {
        req = JSON.parse(line);
      } catch {
        req = undefined;
      }
      res = req === undefined
        ? { error: "Request is not JSON" }
        : await Promise.resolve(peer ? handler(req, peer) : handler(req)).catch((e) => ({
          error: String(e?.message ?? e),
        }));
    }
    if (res instanceof LocalStream) {
      // The client says nothing more; its EOF (or a reset) means it has gone.
      const gone = new AbortController();
      const buf = new Uint8Array(256);
      (async () => {
        try {
          while ((await conn.read(buf)) !== null) { /* ignored */ }
        } catch { /* reset */ }
        gone.abort();
      })();
      await writeStream(conn, res, gone.signal).catch((e) => {
        gone.abort();
        throw e;
      });
    } else await writeAll(conn, jsonLine(res));
  } catch (e) {
    log.debug(`operator connection: ${e}`);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

async function readLine(conn: Deno.Conn, max: number): Promise<string | null> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const buf = new Uint8Array(16 * 1024);
  while (total <= max) {
    const n = await conn.read(buf);
    if (n === null) break;
    const part = buf.subarray(0, n);
    const nl = part.indexOf(10);
    if (nl >= 0) {
      chunks.push(part.slice(0, nl));
      total += nl;
      return total > max ? null : new TextDecoder().decode(concat(chunks, total));
    }
    chunks.push(part.slice());
    total += n;
  }
  if (total === 0 || total > max) return null;
  return new TextDecoder().decode(concat(chunks, total));
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c.subarray(0, total - o), o);
    o += c.length;
  }
  return out;
}

/** One line of newline-delimited JSON. */
function jsonLine(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value) + "\n");
}

/**
 * Sends one request to the operator socket at `path` and returns the parsed
 * response. Throws a readable Error when nothing listens there.
 */
export async function requestLocal(
  path: string,
  req: unknown,
  timeoutMs = 10_000,
): Promise<unknown> {
  const conn = await connectLocal(path);
  const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
  try {
    await writeAll(conn, jsonLine(req));
    const line = await readLine(conn, 256 * 1024 * 1024);
    if (line === null) throw new Error(`No answer from "${path}"`);
    return JSON.parse(line);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

/**
 * Sends one request to the operator socket at `path` and yields what comes
 * back, line by line as it arrives: a plain answer is one object; a stream
 * its header (with `stream: true`), its items, then its trailer
 * (`{"end": n}`). Throws when the stream breaks off before its trailer.
 * `timeoutMs` bounds the wait for the first line only; a feed may then stay
 * open as long as the caller keeps reading.
 */
export async function* streamLocal(
  path: string,
  req: unknown,
  timeoutMs = 10_000,
): AsyncGenerator<Record<string, unknown>> {
  const conn = await connectLocal(path);
  let first = true;
  const timer = setTimeout(() => {
    if (first) closeQuietly(conn);
  }, timeoutMs);
  try {
    await writeAll(conn, jsonLine(req));
    const dec = new TextDecoder();
    const buf = new Uint8Array(64 * 1024);
    let rest = "";
    let streaming = false;
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      rest += dec.decode(buf.subarray(0, n), { stream: true });
      let nl: number;
      let from = 0;
      while ((nl = rest.indexOf("\n", from)) >= 0) {
        const obj = JSON.parse(rest.slice(from, nl)) as Record<string, unknown>;
        from = nl + 1;
        if (first) {
          first = false;
          clearTimeout(timer);
          streaming = obj?.stream === true;
          yield obj;
          if (!streaming) return;
          continue;
        }
        yield obj;
        if (typeof obj?.end === "number" && Object.keys(obj).length === 1) return;
      }
      rest = rest.slice(from);
    }
    throw new Error(first ? `No answer from "${path}"` : `The answer from "${path}" broke off`);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

async function connectLocal(path: string): Promise<Deno.Conn> {
  try {
    return await Deno.connect({ transport: "unix", path });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.ConnectionRefused) {
      throw new Error(`Nothing listens on "${path}": is dpm running (and is --socket right)?`);
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      let who = "run as root";
      try {
        const st = Deno.statSync(path);
        const mode = (st.mode ?? 0) & 0o777;
        if (mode & 0o060) {
          who += ` or as a member of the socket's group (gid ${st.gid}, mode ${
            mode.toString(8).padStart(4, "0")
          })`;
        } else who += " (the socket is root's only: the driver can open it with --socket-group)";
      } catch { /* cannot even stat it */ }
      throw new Error(`Permission denied on "${path}": ${who}`);
    }
    throw e;
  }
}
