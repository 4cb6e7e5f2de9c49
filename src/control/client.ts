/**
 * The driver's side of the control protocol: batches requests into
 * datagrams (version 3, `batch.ts`), retransmits, matches answers to
 * requests by their nonce, and carries the server's cookie.
 *
 * Theory of operation. A request is submitted with the function its answer
 * goes to ({@linkcode ControlClient.submit}; {@linkcode ControlClient.request}
 * wraps it in a promise). What is submitted in one turn of the event loop
 * leaves together at {@linkcode ControlClient.flush} (the driver calls it at
 * the end of its turn, before it lets the turn's first packets go; a
 * microtask calls it otherwise): up to {@link MAX_ENTRIES} requests per
 * datagram, every datagram of the turn in one `sendmmsg`. The answers of one
 * datagram come back in one datagram; each entry is matched by its own
 * nonce (a random 32-bit half fixed per client, a counter half that skips
 * the values whose slot in `flights.ts` is taken), so
 * retransmissions may travel in other datagrams.
 *
 * Retransmission: a request a first packet waits on (`urgent`: the gateway
 * holds that packet until the grant) is sent again every {@link
 * RetryOptions.fastMs} (jittered ±25%) for {@link RetryOptions.fastForMs},
 * then on the doubling schedule of the others (250 ms, doubling to 1 s),
 * and given up after {@link RetryOptions.giveUpMs}; a request nothing waits
 * on is given up after {@link RetryOptions.tries} transmissions. So under
 * 30% loss each way an urgent request gets ~30 tries in its first 3 s,
 * while the LAN is spared a doubling schedule's seconds of silence. A busy
 * server is not flooded with copies: the first wait is at least twice the
 * smoothed round trip of recent answers (first transmissions only, as
 * Karn's rule says), and grows with the requests already in flight ahead
 * of it (`retransmit.ts` `BACKLOG_MS` each): a burst of 3,000 waits for the server
 * to work through it. Timers: one 10 ms wheel for every request in flight,
 * no timer per request.
 *
 * Pacing: at most `window` requests in flight, and transmissions paced at
 * `rate` per second in bursts of twice that (the server's per-host rate
 * limit is 2,000/s in bursts of 4,000 by default: a burst of 3,000 new
 * sessions leaves at once). RATE_LIMITED is not final: that request is sent
 * again after a jittered backoff and every new transmission waits with it.
 *
 * Cookies (docs/protocol.md, "Cookies"): every answer carries the host's
 * cookie, and every datagram carries the last one. Without a fresh cookie
 * (none yet, or none heard for {@link COOKIE_FRESH_MS}), only one datagram
 * goes out until its answer brings one (the server answers cookie-less
 * datagrams within a small per-address budget only); COOKIE_REQUIRED sends
 * the request again at once with the cookie it brought.
 *
 * Versions: the client speaks version 3. A server that speaks only version
 * 2 answers a version-3 datagram UNSUPPORTED_VERSION (its reply echoes the
 * datagram's nonce); the client then speaks version 2 for good (one request
 * per datagram, no gateway port proposals: {@linkcode ControlClient.proposes}
 * turns false, and the driver holds first packets until their answers, as
 * it did with such a server) and sends what was in flight again.
 *
 * Answers from anywhere but the server's address and port are ignored; an
 * answer that comes after its request was given up goes to `onLate`, so the
 * caller can give back a grant it never learned of.
 *
 * Where things are. This file: the request API, flushing a turn, answers,
 * cookies and versions. The retransmission delay, the timer wheel and the
 * pacing are `retransmit.ts`; building and sending the request datagrams
 * (both versions) is `outbox.ts`; the table of requests in flight by nonce
 * (the nonce chosen to fit it) is `flights.ts`.
 *
 * @module
 */

import {
  COOKIE_LEN,
  decodeResponse,
  hasCookie,
  MAGIC,
  NONCE_LEN,
  PROTOCOL_VERSION,
  type Request,
  type Response,
} from "./proto.ts";
import {
  BATCH_VERSION,
  decodeAnswer,
  decodeAnswerHeader,
  type EntryAnswer,
  MAX_ENTRIES,
  newAnswer,
} from "./batch.ts";
import { logger } from "../runtime/log.ts";
import { Result } from "./result.ts";
import {
  jitter,
  Pacer,
  retryDelay,
  type RetryOptions,
  type RetrySchedule,
  retrySchedule,
  type Scheduled,
  Wheel,
} from "./retransmit.ts";

import { type DatagramLink, Outbox } from "./outbox.ts";
import { FlightTable } from "./flights.ts";

export type { RetryOptions } from "./retransmit.ts";
export type { DatagramLink } from "./outbox.ts";

const log = logger("control");

/** How long the nonce of a given-up request is remembered for a late answer, ms. */
const LATE_MS = 60_000;
const LATE_MAX = 8192;
/** A cookie last heard this long ago may be stale (secrets rotate every 2 min, last 2-4). */
export const COOKIE_FRESH_MS = 100_000;
/** COOKIE_REQUIRED answers retried per request (the secret rotated) before that answer is final. */
const COOKIE_TRIES = 2;

/** The server did not answer within the retransmission schedule. */
export class ControlTimeout extends Error {
  override name = "ControlTimeout";
}

/**
 * Whom a request is about (the host's address is the client's, for every
 * request): a driver's session is one as it is, so a request in flight
 * costs no copy of it.
 */
export interface Ask {
  proto: number;
  replaceable: boolean;
  /** The host's port `pa`. */
  pa: number;
  /** The remote `X`, `px` (MAP: 0 and the suggested public port). */
  x: number;
  px: number;
}

/** What else a request carries (all optional). */
export interface AskOptions {
  /** A proposed gateway port (version-3 RESERVE). @default 0: none */
  pg?: number;
  /** Requested lifetime, s. @default 0: the server's default */
  lifetime?: number;
  /** A first packet waits on it: the fast retransmission schedule. @default false */
  urgent?: boolean;
}

/** Called once with the answer, or null when none came; `ask` as submitted. */
export type Answered<T> = (ask: T, res: Response | null) => void;

/** One request in flight: what it asks, and its retransmission state (`retransmit.ts`). */
interface Flight extends Scheduled {
  op: number;
  ask: Ask;
  pg: number;
  lifetime: number;
  done: Answered<Ask>;
  /** RATE_LIMITED answers so far (low 8 bits), COOKIE_REQUIRED answers (<< 8). */
  refused: number;
}

/**
 * An answer as the client matches it: a version-3 entry without its nonce,
 * or a version-2 response as it is (the same fields, the same names).
 */
type Answer = Omit<EntryAnswer, "nonceHi" | "nonceLo">;

/**
 * How the driver reaches the server ({@linkcode ControlClient}); tests may
 * put their own in its place.
 */
export interface ControlTransport {
  /** Sends request `op` about `ask` (this turn); `done(ask, answer | null)` is called once. */
  submit<T extends Ask>(op: number, ask: T, done: Answered<T>, o?: AskOptions): void;
  /** Resolves with the server's answer; rejects with ControlTimeout when it never comes. */
  request(req: Request): Promise<Response>;
  /** Sends what was submitted so far. */
  flush(): void;
  /** False once the server turned out to speak only version 2 (no gateway port proposals). */
  readonly proposes: boolean;
  readonly stats?: Record<string, number>;
  /** Set by the driver: told of answers that came after their request was given up. */
  onLate?: ((res: Response) => void) | null;
}

const NO_NONCE = new Uint8Array(NONCE_LEN);

/** A control-protocol client bound to one server. */
export class ControlClient implements ControlTransport {
  readonly #link: DatagramLink;
  /** The host's address: every request's internal address. */
  readonly #local: number;
  readonly #o: RetrySchedule;
  readonly #now: () => number;
  readonly #salt: number;
  #seq: number;
  /** Requests in flight (sent or waiting to be), by nonce (`flights.ts`: no `Map` entry each). */
  readonly #flights = new FlightTable<Flight>();
  /** New requests to transmit, in order (within the window). */
  #ready: Flight[] = [];
  #readyHead = 0;
  /** Requests to transmit again (due, or told to), ahead of new ones and outside the window. */
  #again: Flight[] = [];
  /** Requests that went out at least once and are not answered. */
  #inFlight = 0;
  /** When each request in flight is due again (`retransmit.ts`). */
  readonly #wheel: Wheel;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  #flushQueued = false;
  /** No new transmission before this: the server said RATE_LIMITED. */
  #pausedUntil = 0;
  readonly #pacer: Pacer;
  #cookie: Uint8Array | null = null;
  #cookieAt = -Infinity;
  /** A datagram without a fresh cookie is out: the others wait for its answer. */
  #probeUntil = 0;
  /** A flush is running; another asked for meanwhile waits for it (see flush()). */
  #flushing = false;
  #flushAgain = false;
  #version = BATCH_VERSION;
  /** Smoothed round trip of answers to first transmissions, ms (0: none yet). */
  #srtt = 0;
  /** Given-up nonces → when they are forgotten. */
  readonly #late = new Map<number, number>();
  #closed = false;
  /** The request datagrams being built and sent (`outbox.ts`). */
  readonly #outbox: Outbox;
  readonly #answer: EntryAnswer = newAnswer();
  /** Called with an answer that arrived after its request was given up. */
  onLate: ((res: Response) => void) | null = null;
  /** Counters for status and tests. */
  readonly stats = {
    sent: 0,
    retransmits: 0,
    datagrams: 0,
    received: 0,
    ignored: 0,
    timeouts: 0,
    rateLimited: 0,
    cookieRetries: 0,
    late: 0,
    queued: 0,
  };

  /**
   * A client over `link` for requests of host address `local`. `now`: a
   * millisecond clock (whole milliseconds of performance.now by default:
   * small integers, so that a request in flight stores its times unboxed).
   */
  constructor(
    link: DatagramLink,
    local: number,
    retry: RetryOptions = {},
    now: () => number = () => Math.floor(performance.now()),
  ) {
    this.#link = link;
    this.#local = local >>> 0;
    this.#now = now;
    this.#o = retrySchedule(retry);
    const r = crypto.getRandomValues(new Uint32Array(2));
    this.#salt = r[0]!;
    this.#seq = 1 + (r[1]! % 0x3fffffff);
    this.#pacer = new Pacer(this.#o.rate, now());
    this.#wheel = new Wheel(now());
    this.#outbox = new Outbox(link, this.#salt, this.#local, () => this.stats.datagrams++);
    if (retry.version === PROTOCOL_VERSION) this.#version = PROTOCOL_VERSION;
    link.onReceive = (d) => this.#receive(d);
  }

  /** False once the server turned out to speak only version 2 (see the module notes). */
  get proposes(): boolean {
    return this.#version === BATCH_VERSION;
  }

  /** Requests in flight or waiting to be sent. */
  get pending(): number {
    return this.#flights.size;
  }

  submit<T extends Ask>(op: number, ask: T, done: Answered<T>, o?: AskOptions): void {
    if (this.#closed) {
      queueMicrotask(() => done(ask, null));
      return;
    }
    // The next nonce whose slot of the table is free (and not a given-up one's).
    const flights = this.#flights;
    flights.room();
    let seq = this.#seq;
    while (!flights.free(seq) || this.#late.has(seq)) seq = seq >= 0x3fffffff ? 1 : seq + 1;
    this.#seq = seq >= 0x3fffffff ? 1 : seq + 1;
    const f: Flight = {
      op,
      ask,
      pg: o?.pg ?? 0,
      lifetime: o?.lifetime ?? 0,
      done: done as Answered<Ask>,
      urgent: o?.urgent ?? false,
      seq,
      sent: 0,
      first: 0,
      due: 0,
      slot: -1,
      refused: 0,
    };
    flights.add(f);
    this.#ready.push(f);
    if (this.#inFlight >= this.#o.window) this.stats.queued++;
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Sends `req` and resolves with the server's answer (whatever its result
   * code). Rejects with ControlTimeout after the last retransmission. The
   * request's nonce and cookie are the client's own.
   */
  request(req: Request): Promise<Response> {
    return new Promise<Response>((resolve, reject) => {
      const ask = {
        proto: req.proto,
        replaceable: req.replaceable,
        pa: req.internalPort,
        x: req.remoteAddr,
        px: req.remotePort,
        resolve,
        reject,
      };
      this.submit(req.op, ask, this.#settled, { lifetime: req.lifetime });
    });
  }

  /** The answer of a `request`: its promise settles. */
  readonly #settled = (
    a: Ask & { resolve(r: Response): void; reject(e: Error): void },
    res: Response | null,
  ) => {
    if (res) a.resolve(res);
    else {
      a.reject(
        new ControlTimeout(
          this.#closed ? "Control client closed" : "No answer from the dpm server",
        ),
      );
    }
  };

  /**
   * Sends what is ready: retransmissions, then new requests (within the
   * window), paced. Not re-entered: a flush asked for while one runs (a
   * microtask checkpoint inside it, e.g. when Deno lazily loads its timers
   * module at the first `setTimeout`, ran the queued flush in the middle of
   * this one, which sent a flight twice and skipped another) runs after it.
   */
  flush(): void {
    this.#flushQueued = false;
    if (this.#flushing) {
      this.#flushAgain = true;
      return;
    }
    this.#flushing = true;
    try {
      do {
        this.#flushAgain = false;
        this.#flushOnce();
      } while (this.#flushAgain && !this.#closed);
    } finally {
      this.#flushing = false;
    }
  }

  #flushOnce(): void {
    if (this.#closed) return;
    const now = this.#now();
    // Without a fresh cookie, one datagram at a time: its answer brings one.
    const fresh = this.#cookieFresh(now);
    let budget = fresh
      ? Infinity
      : now < this.#probeUntil
      ? 0
      : this.#version === BATCH_VERSION
      ? MAX_ENTRIES
      : 1;
    let sent = 0;
    let wait = 0;
    const go = (f: Flight): boolean => {
      if (now < this.#pausedUntil) {
        wait = this.#pausedUntil - now;
        return false;
      }
      if (budget === 0) {
        wait = Math.max(1, this.#probeUntil - now);
        return false;
      }
      const w = this.#pacer.take(now);
      if (w > 0) {
        wait = w;
        return false;
      }
      this.#transmit(f, now);
      budget--;
      sent++;
      return true;
    };
    const again = this.#again;
    let i = 0;
    for (; i < again.length; i++) {
      const f = again[i]!;
      if (f.seq === 0 || (f.sent > 0 && f.due > now)) continue; // answered, or sent again already
      if (!go(f)) break;
    }
    again.splice(0, i);
    const ready = this.#ready;
    while (wait === 0 && this.#readyHead < ready.length) {
      const f = ready[this.#readyHead]!;
      if (f.seq === 0) {
        this.#readyHead++;
        continue;
      }
      if (this.#inFlight >= this.#o.window) break; // answers make room
      if (!go(f)) break;
      this.#readyHead++;
    }
    this.#outbox.seal(this.#cookie);
    if (!fresh && sent > 0) this.#probeUntil = now + this.#o.initialMs;
    if (this.#readyHead === ready.length) {
      ready.length = 0;
      this.#readyHead = 0;
    } else if (this.#readyHead > 1024 && this.#readyHead * 2 > ready.length) {
      this.#ready = ready.slice(this.#readyHead);
      this.#readyHead = 0;
    }
    this.#link.flush();
    if (wait > 0) this.#arm(now + wait);
  }

  #cookieFresh(now: number): boolean {
    return this.#cookie !== null && now - this.#cookieAt < COOKIE_FRESH_MS;
  }

  /** Puts `f` in the datagram being built (version 3) or sends it alone (version 2): `outbox.ts`. */
  #transmit(f: Flight, now: number): void {
    if (f.sent === 0) {
      this.#inFlight++;
      f.first = now;
    } else this.stats.retransmits++;
    f.sent++;
    this.stats.sent++;
    f.due = now + Math.ceil(retryDelay(this.#o, f, now, this.#srtt, this.#inFlight));
    this.#arm(this.#wheel.file(f));
    if (this.#version === BATCH_VERSION) this.#outbox.add(f, this.#cookie);
    else this.#outbox.single(f, this.#cookie);
  }

  /** Makes sure the timer fires by `at`. */
  #arm(at: number): void {
    if (this.#closed || at >= this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, at - this.#now()));
  }

  /** The wheel: due retransmissions go out, exhausted requests are given up. */
  #tick(): void {
    this.#timerAt = Infinity;
    this.#timer = undefined;
    if (this.#closed) return;
    const now = this.#now();
    const o = this.#o;
    const at = this.#wheel.turn(now, this.#flights, (f) => {
      const over = f.urgent ? now - f.first >= o.giveUpMs : f.sent >= o.tries;
      if (over) this.#giveUp(f, now);
      else this.#again.push(f);
    });
    this.#arm(at);
    if (this.#again.length > 0 || this.#readyHead < this.#ready.length) this.flush();
    else if (this.#pausedUntil > now) this.#arm(this.#pausedUntil);
    // The next slot with something in it (filed before this tick, due later).
    this.#arm(this.#wheel.next());
  }

  #giveUp(f: Flight, now: number): void {
    const seq = f.seq;
    this.#settle(f);
    this.stats.timeouts++;
    if (this.#late.size >= LATE_MAX) this.#forgetLate(now, true);
    this.#late.set(seq, now + LATE_MS);
    f.done(f.ask, null);
  }

  /** Takes `f` out of flight (answered or given up). */
  #settle(f: Flight): void {
    this.#flights.delete(f);
    if (f.sent > 0) this.#inFlight--;
    f.seq = 0;
  }

  #forgetLate(now: number, all: boolean): void {
    for (const [k, t] of this.#late) {
      if (all || t <= now) this.#late.delete(k);
      else break; // in insertion order, so in expiry order
    }
  }

  /** A datagram from the server. */
  #receive(b: Uint8Array): void {
    if (b.length < 4 || ((b[0]! << 8) | b[1]!) !== MAGIC) {
      this.stats.ignored++;
      return;
    }
    const now = this.#now();
    if (b[2] === BATCH_VERSION) this.#batch(b, now);
    else if (b[2] === PROTOCOL_VERSION) this.#single(b, now);
    else this.stats.ignored++;
    if (this.#again.length > 0 || this.#readyHead < this.#ready.length) this.flush();
  }

  #learnCookie(c: Uint8Array, now: number): void {
    if (!hasCookie(c) || c.length !== COOKIE_LEN) return;
    if (this.#cookie === null) this.#cookie = new Uint8Array(COOKIE_LEN);
    this.#cookie.set(c);
    this.#cookieAt = now;
    this.#probeUntil = 0;
  }

  #batch(b: Uint8Array, now: number): void {
    const h = decodeAnswerHeader(b);
    if (!h.ok || h.nonceHi !== this.#salt) {
      this.stats.ignored++;
      if (!h.ok) log.debug(`ignored a bad answer: ${h.reason}`);
      return;
    }
    this.#learnCookie(h.cookie, now);
    if (h.count === 0) {
      // A refusal of the whole datagram (MALFORMED, UNSUPPORTED_VERSION): its
      // requests are sent again by their schedule (a bug, or a newer server).
      log.warn(`the server refused a request datagram: result ${h.result}`);
      return;
    }
    const a = this.#answer;
    for (let i = 0; i < h.count; i++) {
      const bad = decodeAnswer(b, i, a);
      if (bad !== null || a.nonceHi !== this.#salt) {
        this.stats.ignored++;
        continue;
      }
      this.#answered(a.nonceLo, a, h.epoch, now);
    }
  }

  #single(b: Uint8Array, now: number): void {
    const d = decodeResponse(b);
    if (!d.ok) {
      this.stats.ignored++;
      log.debug(`ignored a bad answer: ${d.reason}`);
      return;
    }
    const r = d.res;
    const dv = new DataView(r.nonce.buffer, r.nonce.byteOffset, NONCE_LEN);
    if (dv.getUint32(0) !== this.#salt) {
      this.stats.ignored++;
      return;
    }
    if (r.cookie) this.#learnCookie(r.cookie, now);
    if (r.result === Result.UNSUPPORTED_VERSION && this.#version === BATCH_VERSION) {
      // A version-2 server answered a version-3 datagram: speak version 2 from now on.
      this.#downgrade(now);
      return;
    }
    this.#answered(dv.getUint32(4), r, r.epoch, now);
  }

  #downgrade(now: number): void {
    this.#version = PROTOCOL_VERSION;
    log.warn(
      `the dpm server speaks protocol version 2 only: one request per datagram, and new ` +
        `sessions wait for their answer before their first packet leaves; upgrade dpm server`,
    );
    // What went out as version 3 goes again as version 2.
    this.#probeUntil = 0;
    for (const f of this.#flights.values()) {
      if (f.sent > 0) {
        f.due = now;
        f.slot = -1;
        this.#again.push(f);
      }
    }
  }

  /** Matches answer `a` (nonce low half `seq`) to its request and delivers it. */
  #answered(seq: number, a: Answer, epoch: number, now: number): void {
    const f = this.#flights.get(seq);
    if (!f || f.sent === 0) {
      if (this.#late.delete(seq)) {
        // The answer to a request given up: the caller may hold a grant it never learned of.
        this.stats.late++;
        this.onLate?.(this.#response(a, epoch));
      } else this.stats.ignored++; // a late duplicate of an answered request
      if (this.#late.size) this.#forgetLate(now, false);
      return;
    }
    const q = f.ask;
    if (a.op !== f.op || a.proto !== q.proto || a.internalPort !== q.pa || a.remoteAddr !== q.x) {
      this.stats.ignored++;
      return;
    }
    this.stats.received++;
    if (f.sent === 1) {
      // Karn: only an answer to the one transmission times the round trip.
      const rtt = now - f.first;
      this.#srtt = this.#srtt === 0 ? rtt : this.#srtt + (rtt - this.#srtt) / 8;
    }
    if (a.result === Result.RATE_LIMITED && (f.refused & 0xff) < this.#o.rateLimitedTries) {
      this.stats.rateLimited++;
      f.refused++;
      const backoff = jitter(Math.min(2000, 100 * 2 ** (f.refused & 0xff)));
      this.#pausedUntil = Math.max(this.#pausedUntil, now + backoff);
      this.#resend(f, now);
      return;
    }
    if (a.result === Result.COOKIE_REQUIRED && (f.refused >> 8) < COOKIE_TRIES) {
      // The answer brought the cookie (learned above): the same request again with it.
      this.stats.cookieRetries++;
      f.refused += 0x100;
      this.#resend(f, now);
      return;
    }
    this.#settle(f);
    f.done(f.ask, this.#response(a, epoch));
  }

  /** Sends `f` again at once, on a fresh schedule (the server is alive). */
  #resend(f: Flight, now: number): void {
    f.sent = 0;
    f.slot = -1;
    this.#inFlight--;
    f.due = now;
    this.#again.push(f);
  }

  #response(a: Answer, epoch: number): Response {
    return {
      op: a.op,
      nonce: NO_NONCE,
      result: a.result,
      proto: a.proto,
      replaced: a.replaced,
      shared: a.shared,
      internalAddr: this.#local,
      internalPort: a.internalPort,
      remoteAddr: a.remoteAddr,
      remotePort: a.remotePort,
      publicAddr: a.publicAddr,
      publicPort: a.publicPort,
      gatewayPort: a.gatewayPort,
      lifetime: a.lifetime,
      epoch,
    };
  }

  /** Closes the link; every request in flight is answered null (requests reject). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    const all = this.#flights.values();
    this.#flights.clear();
    this.#ready.length = 0;
    this.#again.length = 0;
    this.#late.clear();
    for (const f of all) {
      f.seq = 0;
      f.done(f.ask, null);
    }
    this.#link.close();
  }
}
