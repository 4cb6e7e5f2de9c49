/**
 * The local operator socket: a Unix stream socket carrying one JSON request
 * line and one JSON response line per connection. `dpm status` talks to the
 * server's, `dpm query` to the driver's. The socket file is created mode 0600
 * (root or the socket's owner only) inside a directory made 0700 when dpm
 * creates it.
 *
 * @module
 */

import { logger } from "../runtime/log.ts";

const log = logger("local");
const MAX_REQUEST = 64 * 1024;
const REQUEST_TIMEOUT_MS = 30_000;

/** Handles one decoded request object; returns the response object. */
export type LocalHandler = (req: unknown) => Promise<unknown> | unknown;

/** A listening operator socket. */
export interface LocalServer extends AsyncDisposable {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Listens on `path`. A stale socket file from a crashed run is removed; a
 * socket that still answers means another instance runs, which is an error.
 */
export async function serveLocal(path: string, handler: LocalHandler): Promise<LocalServer> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  try {
    await Deno.stat(dir);
  } catch {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
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
  await Deno.chmod(path, 0o600);
  let closed = false;
  const conns = new Set<Deno.Conn>();
  const loop = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serveConn(conn, handler).finally(() => conns.delete(conn));
    }
  })().catch((e) => {
    if (!closed) log.error(`operator socket ${path} failed: ${e}`);
  });
  const close = async () => {
    if (closed) return;
    closed = true;
    listener.close();
    for (const c of conns) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    await loop;
    await Deno.remove(path).catch(() => {});
  };
  return { path, close, [Symbol.asyncDispose]: close };
}

async function serveConn(conn: Deno.Conn, handler: LocalHandler): Promise<void> {
  // A client that connects and says nothing is cut off.
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, REQUEST_TIMEOUT_MS);
  try {
    const line = await readLine(conn, MAX_REQUEST);
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
        : await Promise.resolve(handler(req)).catch((e) => ({ error: String(e?.message ?? e) }));
    }
    await writeAll(conn, new TextEncoder().encode(JSON.stringify(res) + "\n"));
  } catch (e) {
    log.debug(`operator connection: ${e}`);
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* already closed */ }
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

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await conn.write(data.subarray(o));
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
  let conn: Deno.Conn;
  try {
    conn = await Deno.connect({ transport: "unix", path });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.ConnectionRefused) {
      throw new Error(`Nothing listens on "${path}": is dpm running (and is --socket right)?`);
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new Error(`Permission denied on "${path}": run as root or as the socket's owner`);
    }
    throw e;
  }
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  try {
    await writeAll(conn, new TextEncoder().encode(JSON.stringify(req) + "\n"));
    const line = await readLine(conn, 256 * 1024 * 1024);
    if (line === null) throw new Error(`No answer from "${path}"`);
    return JSON.parse(line);
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}
