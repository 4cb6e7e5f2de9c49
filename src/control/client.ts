/**
 * The driver's side of the control protocol: sends requests to the server
 * over UDP, retransmits with exponential backoff (250 ms, doubling up to
 * 1 s, each timeout jittered ±25% so a burst does not retransmit in
 * lockstep; 10 transmissions, about 9 s, by default), and matches responses
 * to requests by their nonce. Responses from anywhere but the server's
 * address and port are ignored.
 *
 * Pacing: at most `window` requests are in flight, and transmissions are
 * paced at `rate` per second; the rest wait their turn (a burst of
 * thousands of new sessions must neither overflow the server's receive
 * buffer nor run into its per-host rate limit). A RATE_LIMITED answer is not final: the request is sent
 * again after a jittered backoff and every queued request waits with it.
 * An answer that comes after its request timed out goes to `onLate`, so the
 * caller can give back a grant it never learned of.
 *
 * @module
 */

import dgram from "node:dgram";
import { formatIPv4 } from "../wire/addr.ts";
import { decodeResponse, encodeRequest, type Request, type Response } from "./proto.ts";
import { logger } from "../runtime/log.ts";
import { Result } from "./result.ts";

const log = logger("control");

/** Retransmission settings. */
export interface RetryOptions {
  /** First retransmission timeout, ms. @default 250 */
  initialMs?: number;
  /** Cap of the doubling retransmission timeout, ms. @default 1000 */
  maxMs?: number;
  /** Transmissions in all. @default 10 */
  tries?: number;
  /** Requests in flight at most; later ones wait. @default 256 */
  window?: number;
  /** RATE_LIMITED answers retried per request before that answer is final. @default 8 */
  rateLimitedTries?: number;
  /**
   * Transmissions per second at most, with bursts of twice as many: below the
   * server's default per-host limit (1000/s, bursts of 2000), so a burst of
   * new sessions waits here instead of being refused there. @default 800
   */
  rate?: number;
}

/** How long the nonce of a timed-out request is remembered for a late answer, ms. */
const LATE_MS = 60_000;
const LATE_MAX = 8192;

/** The server did not answer within the retransmission schedule. */
export class ControlTimeout extends Error {
  override name = "ControlTimeout";
}

interface Pending {
  bytes: Uint8Array;
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Transmissions so far (0: waiting for a slot). */
  sent: number;
  delay: number;
  limited: number;
}

/** ±25% */
function jitter(ms: number): number {
  return ms * (0.75 + Math.random() * 0.5);
}

/**
 * How the driver reaches the server: {@linkcode ControlClient} over UDP, or
 * an in-memory pipe in tests (`testing/fixtures.ts` `Pipe`).
 */
export interface ControlTransport {
  /** Resolves with the server's answer; rejects with ControlTimeout when it never comes. */
  request(req: Request): Promise<Response>;
  readonly stats?: Record<string, number>;
  /** Set by the driver: told of answers that came after their request timed out. */
  onLate?: ((res: Response) => void) | null;
}

/** A control-protocol client bound to one server. */
export class ControlClient implements ControlTransport {
  readonly #sock: dgram.Socket;
  readonly #server: string;
  readonly #port: number;
  readonly #pending = new Map<string, Pending>();
  readonly #retry: Required<RetryOptions>;
  /** Nonces waiting for a slot in the window, in order. */
  readonly #queue: string[] = [];
  #queueHead = 0;
  #inFlight = 0;
  /** No new transmission before this (performance.now(), ms): the server said RATE_LIMITED. */
  #pausedUntil = 0;
  /** The pacing bucket (may go negative: transmissions booked ahead). */
  #tokens = 0;
  #tokensAt = performance.now();
  /** Timed-out nonces → when they are forgotten. */
  readonly #late = new Map<string, number>();
  #closed = false;
  /** Called with an answer that arrived after its request timed out. */
  onLate: ((res: Response) => void) | null = null;
  /** Counters for status and tests. */
  readonly stats = {
    sent: 0,
    retransmits: 0,
    received: 0,
    ignored: 0,
    timeouts: 0,
    rateLimited: 0,
    late: 0,
    queued: 0,
  };

  private constructor(sock: dgram.Socket, server: number, port: number, retry: RetryOptions) {
    this.#sock = sock;
    this.#server = formatIPv4(server);
    this.#port = port;
    this.#retry = {
      initialMs: retry.initialMs ?? 250,
      maxMs: retry.maxMs ?? 1000,
      tries: retry.tries ?? 10,
      window: retry.window ?? 256,
      rateLimitedTries: retry.rateLimitedTries ?? 8,
      rate: retry.rate ?? 800,
    };
    this.#tokens = 2 * this.#retry.rate;
    sock.on("message", (msg, rinfo) => this.#onMessage(msg, rinfo));
    sock.on("error", (e) => log.warn(`control socket: ${e.message}`));
  }

  /** Opens a UDP socket (ephemeral port, optionally bound to `localAddr`) talking to `server:port`. */
  static async open(
    server: number,
    port: number,
    opts: RetryOptions & { localAddr?: string } = {},
  ): Promise<ControlClient> {
    // Default buffers: setting recvBufferSize/sendBufferSize makes Deno's
    // node:dgram about 10x slower (see src/server/run.ts); pacing keeps a
    // burst within them.
    const sock = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      sock.once("error", reject);
      sock.bind({ port: 0, ...(opts.localAddr ? { address: opts.localAddr } : {}) }, () => {
        sock.off("error", reject);
        resolve();
      });
    });
    return new ControlClient(sock, server, port, opts);
  }

  /** The local address:port the socket is bound to (the server sees this source). */
  address(): { address: string; port: number } {
    const a = this.#sock.address();
    return { address: a.address, port: a.port };
  }

  /**
   * Sends `req` and resolves with the server's response (whatever its result
   * code). Rejects with ControlTimeout after the last retransmission.
   */
  request(req: Request): Promise<Response> {
    if (this.#closed) return Promise.reject(new Error("Control client is closed"));
    const key = nonceKey(req.nonce);
    const bytes = encodeRequest(req);
    return new Promise<Response>((resolve, reject) => {
      const p: Pending = {
        bytes,
        resolve,
        reject,
        timer: undefined,
        sent: 0,
        delay: this.#retry.initialMs,
        limited: 0,
      };
      this.#pending.set(key, p);
      if (this.#inFlight < this.#retry.window && this.#queueHead === this.#queue.length) {
        this.#start(key, p);
      } else {
        this.stats.queued++;
        this.#queue.push(key);
        this.#drain();
      }
    });
  }

  /** Takes a slot of the window and sends (now, or when a RATE_LIMITED pause ends). */
  #start(key: string, p: Pending): void {
    this.#inFlight++;
    const wait = this.#pausedUntil - performance.now();
    if (wait > 0) p.timer = setTimeout(() => this.#transmit(key, p), jitter(wait));
    else this.#transmit(key, p);
  }

  #transmit(key: string, p: Pending, paced = false): void {
    if (!paced) {
      const wait = this.#pace();
      if (wait > 0) {
        p.timer = setTimeout(() => this.#transmit(key, p, true), wait);
        return;
      }
    }
    if (p.sent > 0) this.stats.retransmits++;
    p.sent++;
    this.stats.sent++;
    this.#sock.send(p.bytes, this.#port, this.#server, (err) => {
      if (err) log.debug(`send: ${err.message}`);
    });
    p.timer = setTimeout(() => this.#expired(key, p), jitter(p.delay));
    p.delay = Math.min(p.delay * 2, this.#retry.maxMs);
  }

  /** Books a transmission; returns how long to wait for it, ms. */
  #pace(): number {
    const now = performance.now();
    const rate = this.#retry.rate;
    this.#tokens = Math.min(2 * rate, this.#tokens + ((now - this.#tokensAt) * rate) / 1000);
    this.#tokensAt = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : (-this.#tokens / rate) * 1000;
  }

  #expired(key: string, p: Pending): void {
    if (p.sent < this.#retry.tries) return this.#transmit(key, p);
    this.#finish(key, p);
    this.stats.timeouts++;
    if (this.#late.size >= LATE_MAX) this.#forgetLate(true);
    this.#late.set(key, performance.now() + LATE_MS);
    p.reject(new ControlTimeout(`No answer from dpm server ${this.#server}:${this.#port}`));
  }

  /** Frees the request's slot and lets a waiting one in. */
  #finish(key: string, p: Pending): void {
    this.#pending.delete(key);
    clearTimeout(p.timer);
    this.#inFlight--; // only a started request is answered or expires
    this.#drain();
  }

  #drain(): void {
    const q = this.#queue;
    while (this.#inFlight < this.#retry.window && this.#queueHead < q.length) {
      const key = q[this.#queueHead++]!;
      const p = this.#pending.get(key);
      if (p) this.#start(key, p);
    }
    if (this.#queueHead === q.length) {
      q.length = 0;
      this.#queueHead = 0;
    } else if (this.#queueHead > 1024 && this.#queueHead * 2 > q.length) {
      q.splice(0, this.#queueHead);
      this.#queueHead = 0;
    }
  }

  #forgetLate(all: boolean): void {
    const now = performance.now();
    for (const [k, t] of this.#late) {
      if (all || t <= now) this.#late.delete(k);
      else break; // in insertion order, so in expiry order
    }
  }

  /** A RATE_LIMITED answer: send `p` again after a backoff, and hold back the queue as long. */
  #limited(key: string, p: Pending): void {
    this.stats.rateLimited++;
    p.limited++;
    clearTimeout(p.timer);
    const backoff = jitter(Math.min(2000, 100 * 2 ** p.limited));
    this.#pausedUntil = Math.max(this.#pausedUntil, performance.now() + backoff);
    // The answer proves the server is alive: a fresh retransmission schedule.
    p.sent = 0;
    p.delay = this.#retry.initialMs;
    p.timer = setTimeout(() => this.#transmit(key, p), backoff);
  }

  #onMessage(msg: Uint8Array, rinfo: { address: string; port: number }): void {
    if (rinfo.address !== this.#server || rinfo.port !== this.#port) {
      this.stats.ignored++;
      return;
    }
    const d = decodeResponse(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    if (!d.ok) {
      this.stats.ignored++;
      log.debug(`ignored bad response: ${d.reason}`);
      return;
    }
    const key = nonceKey(d.res.nonce);
    const p = this.#pending.get(key);
    if (!p) {
      if (this.#late.delete(key)) {
        // The answer to a request that timed out: the caller may hold a grant it never learned of.
        this.stats.late++;
        this.onLate?.(d.res);
      } else this.stats.ignored++; // a late duplicate of an answered request
      if (this.#late.size) this.#forgetLate(false);
      return;
    }
    this.stats.received++;
    if (d.res.result === Result.RATE_LIMITED && p.limited < this.#retry.rateLimitedTries) {
      return this.#limited(key, p);
    }
    this.#finish(key, p);
    p.resolve(d.res);
  }

  /** Closes the socket; pending requests reject. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error("Control client closed"));
    }
    this.#pending.clear();
    this.#queue.length = 0;
    this.#late.clear();
    try {
      this.#sock.close();
    } catch { /* already closed */ }
  }
}

function nonceKey(n: Uint8Array): string {
  let s = "";
  for (let i = 0; i < n.length; i++) s += (n[i]! | 0x100).toString(16).slice(1);
  return s;
}
