/**
 * The driver's side of the control protocol: sends requests to the server
 * over UDP, retransmits with exponential backoff (250 ms, doubling, 4 tries
 * by default), and matches responses to requests by their nonce. Responses
 * from anywhere but the server's address and port are ignored.
 *
 * @module
 */

import dgram from "node:dgram";
import { formatIPv4 } from "../wire/addr.ts";
import { decodeResponse, encodeRequest, type Request, type Response } from "./proto.ts";
import { logger } from "../runtime/log.ts";

const log = logger("control");

/** Retransmission settings. */
export interface RetryOptions {
  /** First retransmission timeout, ms. @default 250 */
  initialMs?: number;
  /** Transmissions in all. @default 4 */
  tries?: number;
}

/** The server did not answer within the retransmission schedule. */
export class ControlTimeout extends Error {
  override name = "ControlTimeout";
}

interface Pending {
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** A control-protocol client bound to one server. */
export class ControlClient {
  readonly #sock: dgram.Socket;
  readonly #server: string;
  readonly #port: number;
  readonly #pending = new Map<string, Pending>();
  readonly #retry: Required<RetryOptions>;
  #closed = false;
  /** Counters for status and tests. */
  readonly stats = { sent: 0, retransmits: 0, received: 0, ignored: 0, timeouts: 0 };

  private constructor(sock: dgram.Socket, server: number, port: number, retry: RetryOptions) {
    this.#sock = sock;
    this.#server = formatIPv4(server);
    this.#port = port;
    this.#retry = { initialMs: retry.initialMs ?? 250, tries: retry.tries ?? 4 };
    sock.on("message", (msg, rinfo) => this.#onMessage(msg, rinfo));
    sock.on("error", (e) => log.warn(`control socket: ${e.message}`));
  }

  /** Opens a UDP socket (ephemeral port, optionally bound to `localAddr`) talking to `server:port`. */
  static async open(
    server: number,
    port: number,
    opts: RetryOptions & { localAddr?: string } = {},
  ): Promise<ControlClient> {
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
      let sent = 0;
      const send = () => {
        if (sent > 0) this.stats.retransmits++;
        sent++;
        this.stats.sent++;
        this.#sock.send(bytes, this.#port, this.#server, (err) => {
          if (err) log.debug(`send: ${err.message}`);
        });
      };
      const arm = (delay: number): ReturnType<typeof setTimeout> =>
        setTimeout(() => {
          if (sent >= this.#retry.tries) {
            this.#pending.delete(key);
            this.stats.timeouts++;
            reject(new ControlTimeout(`No answer from dpm server ${this.#server}:${this.#port}`));
            return;
          }
          send();
          const p = this.#pending.get(key);
          if (p) p.timer = arm(delay * 2);
        }, delay);
      send();
      this.#pending.set(key, { resolve, reject, timer: arm(this.#retry.initialMs) });
    });
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
      this.stats.ignored++; // a late duplicate of an answered request
      return;
    }
    this.stats.received++;
    this.#pending.delete(key);
    clearTimeout(p.timer);
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
