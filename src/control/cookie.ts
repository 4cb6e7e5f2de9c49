/**
 * Return-routability cookies (docs/protocol.md, "Cookies"), after
 * WireGuard's cookie reply and DTLS's HelloVerifyRequest.
 *
 * The server answers a request that carries no valid cookie for its source
 * address with COOKIE_REQUIRED and changes nothing. Every answer goes to the
 * datagram's source address and carries the cookie of that address: the first
 * {@link COOKIE_LEN} bytes of HMAC-SHA256(secret, "dpm cookie v2" ‖ address).
 * Only a host that receives datagrams sent to that address learns it, so a
 * LAN host that forges another's source address can neither create, renew
 * nor release state in its name. The secret is random, replaced every
 * {@link COOKIE_ROTATE_MS} ms; a cookie of the current or the previous secret
 * is accepted (valid for 2 to 4 minutes); every answer carries a fresh one.
 *
 * The client's side is `client.ts`: it remembers the last cookie any answer
 * carried, puts it in every datagram, sends one datagram at a time while it
 * has no fresh one, and sends a request again, transparently, when told
 * COOKIE_REQUIRED.
 *
 * @module
 */

import { createHmac } from "node:crypto";
import { COOKIE_LEN, hasCookie } from "./proto.ts";

/** How often the server replaces its cookie secret, ms. */
export const COOKIE_ROTATE_MS = 120_000;
/** Per generation, cookies computed at most before the cache starts over. */
const CACHE_MAX = 65_536;
const LABEL = new TextEncoder().encode("dpm cookie v2");
const SHARED_LABEL = new TextEncoder().encode("dpm cookie secret");

interface Generation {
  secret: Uint8Array;
  cache: Map<number, Uint8Array>;
}

/** The server's side: makes and checks cookies of source addresses. The clock is passed in. */
export class CookieMinter {
  #cur: Generation;
  #prev: Generation | null = null;
  /** Start of the clock's periods, and the period of `#cur`. */
  readonly #t0: number;
  #period = 0;
  readonly #random: () => Uint8Array;

  /**
   * @param now the clock at creation, ms
   * @param random a source of 32-byte secrets (tests may fix it)
   */
  constructor(now: number, random = () => crypto.getRandomValues(new Uint8Array(32))) {
    this.#random = random;
    this.#cur = { secret: random(), cache: new Map() };
    this.#t0 = now;
  }

  /**
   * A minter whose secrets derive from `key` and the wall clock's period
   * (HMAC-SHA256(key, "dpm cookie secret" ‖ period), periods counted from
   * the Unix epoch): two servers given the same key (`--cookie-secret-file`,
   * an HA pair, docs/ha.md) make and accept the same cookies, so a driver's
   * requests to the new active after a takeover carry a valid one.
   */
  static shared(key: Uint8Array, now: number): CookieMinter {
    const derive = (period: number) =>
      new Uint8Array(
        createHmac("sha256", key).update(SHARED_LABEL).update(String(period)).digest(),
      );
    const m = new CookieMinter(0, () => new Uint8Array(32));
    m.#derive = derive;
    const period = Math.floor(now / COOKIE_ROTATE_MS);
    m.#period = period;
    m.#cur = { secret: derive(period), cache: new Map() };
    m.#prev = { secret: derive(period - 1), cache: new Map() };
    return m;
  }

  /** The secret of a period, for a {@linkcode shared} minter; null: random. */
  #derive: ((period: number) => Uint8Array) | null = null;

  /**
   * One secret per period of {@link COOKIE_ROTATE_MS}: a cookie made in
   * period k is accepted in periods k and k + 1 (2 to 4 minutes).
   */
  #rotate(now: number): void {
    const period = Math.floor((now - this.#t0) / COOKIE_ROTATE_MS);
    if (period <= this.#period) return;
    this.#prev = period === this.#period + 1
      ? this.#cur
      : this.#derive
      ? { secret: this.#derive(period - 1), cache: new Map() }
      : null;
    this.#cur = { secret: this.#derive ? this.#derive(period) : this.#random(), cache: new Map() };
    this.#period = period;
  }

  #mac(g: Generation, src: number): Uint8Array {
    let c = g.cache.get(src);
    if (c === undefined) {
      const a = new Uint8Array([src >>> 24, (src >>> 16) & 255, (src >>> 8) & 255, src & 255]);
      const d = createHmac("sha256", g.secret).update(LABEL).update(a).digest();
      c = new Uint8Array(d.buffer, d.byteOffset, COOKIE_LEN).slice();
      if (g.cache.size >= CACHE_MAX) g.cache.clear();
      g.cache.set(src, c);
    }
    return c;
  }

  /** The current cookie of source address `src` (host order). Do not modify it. */
  cookieFor(src: number, now: number): Uint8Array {
    this.#rotate(now);
    return this.#mac(this.#cur, src);
  }

  /** True when `cookie` is `src`'s cookie under the current or the previous secret. */
  valid(src: number, cookie: Uint8Array | undefined, now: number): boolean {
    if (!hasCookie(cookie) || cookie.length !== COOKIE_LEN) return false;
    this.#rotate(now);
    if (same(cookie, this.#mac(this.#cur, src))) return true;
    return this.#prev !== null && same(cookie, this.#mac(this.#prev, src));
  }
}

/** Compares two cookies without an early exit. */
function same(a: Uint8Array, b: Uint8Array): boolean {
  let d = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) d |= (a[i] ?? 0) ^ b[i]!;
  return d === 0;
}
