/**
 * The HTTP listener of the UPnP service, on the gateway's LAN address only.
 * A small server of its own on `Deno.listen` rather than `node:http` or
 * `Deno.serve`: in Deno 2.9 `node:http` ignores `headersTimeout` and
 * `requestTimeout` (a client sending one header line every 300 ms kept its
 * connection for as long as it liked, measured here), and `Deno.serve`
 * exposes neither a connection cap nor a header deadline. The service needs
 * four things of its listener, and this one has them:
 *
 * - a deadline per connection (`deadlineMs`) for the whole exchange: the
 *   request must have arrived and the answer been written within it, or the
 *   connection is closed. A slow sender (slowloris) holds a slot for at most
 *   that long, however it paces its bytes;
 * - at most `maxConnections` open connections, and at most `perSource` from
 *   one address (so one host cannot take every slot); a connection over
 *   either is closed at once, unread;
 * - size limits (`http.ts`: header block and body), checked as bytes arrive;
 * - sources outside the LAN prefix closed at once (`accept`).
 *
 * One request per connection; every answer closes it.
 *
 * @module
 */

import { closeQuietly, writeAll } from "../runtime/conn.ts";
import { parseIPv4 } from "../wire/addr.ts";
import {
  type HttpLimits,
  type HttpRequest,
  type HttpResponse,
  readRequest,
  writeResponse,
} from "./http.ts";

/** Options of {@linkcode UpnpHttpServer.listen}. */
export interface HttpServerOptions {
  /** The address to listen on (the gateway's LAN address). */
  hostname: string;
  /** 0: any free port (see {@linkcode UpnpHttpServer.port}). */
  port: number;
  /** Answers one request from `src` (host order). May throw: answered 500. */
  handler: (req: HttpRequest, src: number) => HttpResponse;
  /** The Server header. */
  server: string;
  /** Sources served; others are closed at once. @default every source */
  accept?: (src: number) => boolean;
  /** @default 32 */
  maxConnections?: number;
  /** @default 4 */
  perSource?: number;
  /** The whole exchange of one connection, ms. @default 5000 */
  deadlineMs?: number;
  limits?: HttpLimits;
  /** A handler that threw, or an unexpected socket error. */
  onError?: (e: unknown) => void;
}

/** Counters of the listener. */
export interface HttpServerCounters {
  /** Connections served (a request read, or refused with a status). */
  served: number;
  /** Closed at once: over `maxConnections` or `perSource`. */
  busy: number;
  /** Closed at once: source not accepted. */
  refused: number;
  /** Closed at the deadline. */
  timedOut: number;
  /** Answered with a 4xx/5xx from the reader (size, syntax). */
  malformed: number;
}

/** The listener (see the module documentation). */
export class UpnpHttpServer {
  readonly #o: HttpServerOptions;
  readonly #l: Deno.TcpListener;
  readonly #open = new Set<Deno.TcpConn>();
  readonly #perSource = new Map<number, number>();
  readonly #loop: Promise<void>;
  #closed = false;
  readonly counters: HttpServerCounters = {
    served: 0,
    busy: 0,
    refused: 0,
    timedOut: 0,
    malformed: 0,
  };

  private constructor(o: HttpServerOptions, l: Deno.TcpListener) {
    this.#o = o;
    this.#l = l;
    this.#loop = this.#accept();
  }

  /** Listens (throws as `Deno.listen` does: address in use, not an address of this host). */
  static listen(o: HttpServerOptions): UpnpHttpServer {
    return new UpnpHttpServer(o, Deno.listen({ hostname: o.hostname, port: o.port }));
  }

  /** The port listened on. */
  get port(): number {
    return this.#l.addr.port;
  }

  /** Connections open now. */
  get open(): number {
    return this.#open.size;
  }

  /** Stops listening and closes every open connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#l.close();
    } catch { /* already closed */ }
    for (const c of this.#open) closeQuietly(c);
    await this.#loop;
  }

  async #accept(): Promise<void> {
    const o = this.#o;
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#l.accept();
      } catch (e) {
        if (this.#closed) return;
        o.onError?.(e);
        continue;
      }
      const src = parseIPv4(conn.remoteAddr.hostname) ?? 0;
      if (o.accept && !o.accept(src)) {
        this.counters.refused++;
        closeQuietly(conn);
        continue;
      }
      const n = this.#perSource.get(src) ?? 0;
      if (this.#open.size >= (o.maxConnections ?? 32) || n >= (o.perSource ?? 4)) {
        this.counters.busy++;
        closeQuietly(conn);
        continue;
      }
      this.#open.add(conn);
      this.#perSource.set(src, n + 1);
      this.#serve(conn, src).finally(() => {
        this.#open.delete(conn);
        const k = (this.#perSource.get(src) ?? 1) - 1;
        if (k > 0) this.#perSource.set(src, k);
        else this.#perSource.delete(src);
        closeQuietly(conn);
      });
    }
  }

  async #serve(conn: Deno.TcpConn, src: number): Promise<void> {
    const o = this.#o;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, o.deadlineMs ?? 5000);
    try {
      const max = (o.limits?.maxHeaderBytes ?? 8192) + (o.limits?.maxBodyBytes ?? 16384);
      let buf = new Uint8Array(0);
      const chunk = new Uint8Array(4096);
      for (;;) {
        const n = await conn.read(chunk);
        if (n === null) return; // the peer closed before a whole request
        const next = new Uint8Array(buf.length + n);
        next.set(buf);
        next.set(chunk.subarray(0, n), buf.length);
        buf = next;
        const r = readRequest(buf, o.limits);
        if (r.state === "more" && buf.length <= max) continue;
        this.counters.served++;
        let res: HttpResponse;
        if (r.state === "done") {
          try {
            res = o.handler(r.req, src);
          } catch (e) {
            o.onError?.(e);
            res = { status: 500 };
          }
        } else {
          this.counters.malformed++;
          res = { status: r.state === "error" ? r.status : 413 };
        }
        await writeAll(conn, writeResponse(res, o.server));
        return;
      }
    } catch (e) {
      // The deadline or close() closing the socket under a read or write, or
      // the peer resetting it, is ordinary; anything else is worth a line.
      const ordinary = timedOut || this.#closed || e instanceof Deno.errors.BadResource ||
        e instanceof Deno.errors.Interrupted || e instanceof Deno.errors.ConnectionReset ||
        e instanceof Deno.errors.BrokenPipe;
      if (!ordinary) o.onError?.(e);
    } finally {
      clearTimeout(timer);
      if (timedOut) this.counters.timedOut++;
    }
  }
}
