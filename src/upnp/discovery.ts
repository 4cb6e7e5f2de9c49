/**
 * SSDP discovery of the gateway's two root devices (`description.ts`):
 * which (NT, USN) pairs they advertise, who answers a search and with
 * what, and the NOTIFY schedule. Pure: datagrams come and go through the
 * caller (`listen.ts` in the server, arrays in the unit tests), time through
 * an injected clock and timers.
 *
 * Searches (UDA 1.1 section 1.3):
 * - only from the LAN prefix (else silence, counted);
 * - at most `limiter`'s rate per source (else silence, counted): SSDP is
 *   UDP, so a forged source must not turn the gateway into a reflector;
 * - the answers to one search are, all together, never larger than
 *   {@linkcode AMPLIFICATION} times the search itself: `ssdp:all` is
 *   answered with as many pairs as fit, the closest matches first;
 * - a device or service type matches its own version and the earlier ones
 *   (UDA: a device answers searches for any version it supports, with the
 *   version asked in ST and USN), the exact version first;
 * - a multicast search (with MX) is answered after a random delay in the
 *   first half of MX (UDA: within MX); a unicast one (no MX) at once.
 *
 * Announcements (UDA 1.1 section 1.2): every pair `ssdp:alive` at start and
 * then at random intervals between a quarter and a half of max-age (UDA:
 * below half), each datagram sent {@linkcode NOTIFY_COPIES} times (UDP may
 * lose one); every pair `ssdp:byebye` at stop. BOOTID.UPNP.ORG is the
 * caller's: it must grow when the gateway's mappings were lost (a restart
 * without a state file), so control points know to map again.
 *
 * @module
 */

import { type Cidr, cidrContains } from "../wire/addr.ts";
import type { RateLimiter } from "../control/ratelimit.ts";
import type { Timers } from "../pcp/announce.ts";
import { deviceType, serviceType } from "./igd.ts";
import { devicesOf, type IgdDocuments, type RootDevice } from "./description.ts";
import {
  type Advertised,
  aliveNotify,
  byebyeNotify,
  parseSearch,
  searchResponse,
  type SearchTarget,
} from "./ssdp.ts";

/** Answers to one search are at most this many times its size, all together. */
export const AMPLIFICATION = 4;
/** Each NOTIFY datagram is sent this many times per round. */
export const NOTIFY_COPIES = 2;
/** CACHE-CONTROL max-age of the advertisements, seconds (UDA: at least 1800). */
export const MAX_AGE = 1800;

/** One advertised pair of a root device. */
export interface Advertisement {
  root: RootDevice;
  /** NT in announcements, ST in `ssdp:all` answers. */
  nt: string;
  usn: string;
  /** For device and service types: the type without its version, and the version. */
  type?: { domainType: string; version: number; udn: string };
}

/**
 * Every (NT, USN) pair of the roots (UDA 1.1 section 1.2.2): per root
 * `upnp:rootdevice`; per device its UUID and its type; per service its
 * type. IGD:1's root first.
 */
export function advertisements(docs: IgdDocuments): Advertisement[] {
  const out: Advertisement[] = [];
  for (const root of docs.roots) {
    out.push({ root, nt: "upnp:rootdevice", usn: `${root.device.udn}::upnp:rootdevice` });
    for (const d of devicesOf(root.device)) {
      out.push({ root, nt: d.udn, usn: d.udn });
      const types = [
        { name: deviceType(d.name, d.version), version: d.version },
        ...d.services.map((s) => ({ name: serviceType(s.service, s.version), version: s.version })),
      ];
      for (const t of types) {
        out.push({
          root,
          nt: t.name,
          usn: `${d.udn}::${t.name}`,
          type: {
            domainType: t.name.slice(0, t.name.lastIndexOf(":")),
            version: t.version,
            udn: d.udn,
          },
        });
      }
    }
  }
  return out;
}

/** The (ST, USN) answers to `target`, best first (before the size budget). */
export function matches(
  ads: readonly Advertisement[],
  target: SearchTarget,
  st: string,
): { ad: Advertisement; st: string; usn: string }[] {
  switch (target.kind) {
    case "all":
      return ads.map((ad) => ({ ad, st: ad.nt, usn: ad.usn }));
    case "rootdevice":
      return ads.filter((a) => a.nt === "upnp:rootdevice").map((ad) => ({ ad, st, usn: ad.usn }));
    case "uuid":
      return ads.filter((a) => a.nt === `uuid:${target.uuid}`).map((ad) => ({
        ad,
        st,
        usn: ad.usn,
      }));
    case "type": {
      const found = ads.filter((a) =>
        a.type && a.type.domainType === target.domainType && a.type.version >= target.version
      );
      found.sort((x, y) => x.type!.version - y.type!.version);
      return found.map((ad) => ({ ad, st, usn: `${ad.type!.udn}::${st}` }));
    }
  }
}

/** Counters of the responder (status and metrics). */
export interface SsdpCounters {
  /** Searches answered (at least one datagram). */
  answered: number;
  /** Answer datagrams built. */
  answers: number;
  /** Searches that matched nothing of ours. */
  unmatched: number;
  /** Malformed searches dropped. */
  malformed: number;
  /** Searches dropped: source outside the LAN prefix. */
  notLan: number;
  /** Searches dropped: over the source's rate. */
  rateLimited: number;
  /** Matching answers left out to stay within the amplification budget. */
  overBudget: number;
}

/** Options of {@linkcode SsdpResponder}. */
export interface ResponderOptions {
  ads: readonly Advertisement[];
  /** What the answers say about a root (its LOCATION among others). */
  advertised: (root: RootDevice) => Advertised;
  /** LAN prefix: only its hosts are answered. Null: every source. */
  lan: Cidr | null;
  /** Searches per source. */
  limiter: RateLimiter;
  /** Uniform in [0, 1). @default Math.random */
  random?: () => number;
}

/** Answers to one search: send `datagrams` to the searcher after `delayMs`. */
export interface SearchAnswer {
  delayMs: number;
  datagrams: Uint8Array[];
}

/** Decides the answers to searches (no sockets: `listen.ts` sends them). */
export class SsdpResponder {
  readonly #o: ResponderOptions;
  readonly counters: SsdpCounters = {
    answered: 0,
    answers: 0,
    unmatched: 0,
    malformed: 0,
    notLan: 0,
    rateLimited: 0,
    overBudget: 0,
  };

  constructor(o: ResponderOptions) {
    this.#o = o;
  }

  /** Handles one datagram from `src` (host order) at `now` (ms); the answer or null. */
  handle(msg: Uint8Array, src: number, now: number): SearchAnswer | null {
    const o = this.#o;
    const c = this.counters;
    if (o.lan && !cidrContains(o.lan, src)) {
      c.notLan++;
      return null;
    }
    const p = parseSearch(msg);
    if (!p.ok) {
      if (p.malformed) c.malformed++;
      return null;
    }
    if (!o.limiter.allow(src, now)) {
      c.rateLimited++;
      return null;
    }
    const found = matches(o.ads, p.search.target, p.search.st);
    if (found.length === 0) {
      c.unmatched++;
      return null;
    }
    const budget = AMPLIFICATION * msg.length;
    let used = 0;
    const datagrams: Uint8Array[] = [];
    for (const f of found) {
      const d = searchResponse(o.advertised(f.ad.root), f.st, f.usn);
      if (used + d.length > budget) {
        c.overBudget++;
        continue;
      }
      used += d.length;
      datagrams.push(d);
    }
    if (datagrams.length === 0) return null;
    c.answered++;
    c.answers += datagrams.length;
    const mx = p.search.mx;
    const delayMs = mx === null ? 0 : Math.floor((o.random ?? Math.random)() * mx * 500);
    return { delayMs, datagrams };
  }
}

/** Options of {@linkcode SsdpAdvertiser}. */
export interface AdvertiserOptions {
  ads: readonly Advertisement[];
  advertised: (root: RootDevice) => Advertised;
  /** Sends one datagram to 239.255.255.250:1900; may throw (reported to `onError`). */
  send: (datagram: Uint8Array) => void;
  onError?: (e: unknown) => void;
  timers?: Timers;
  /** Uniform in [0, 1). @default Math.random */
  random?: () => number;
  /** max-age of the announcements, seconds (the interval follows it). @default MAX_AGE */
  maxAge?: number;
}

const globalTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as number),
};

/** Sends the NOTIFY rounds: alive at `start` and periodically, byebye at `stop`. */
export class SsdpAdvertiser {
  readonly #o: AdvertiserOptions;
  readonly #t: Timers;
  #handle: unknown = null;
  #rounds = 0;
  #started = false;

  constructor(o: AdvertiserOptions) {
    this.#o = o;
    this.#t = o.timers ?? globalTimers;
  }

  /** Alive rounds sent since `start`. */
  get rounds(): number {
    return this.#rounds;
  }

  /** Sends the alive round now and schedules the next ones. */
  start(): void {
    this.#cancel();
    this.#started = true;
    this.#alive();
  }

  /** Cancels the schedule and sends the byebye round (once; idempotent). */
  stop(): void {
    this.#cancel();
    if (!this.#started) return;
    this.#started = false;
    this.#sendAll((ad) => byebyeNotify(this.#o.advertised(ad.root), ad.nt, ad.usn));
  }

  /** The delay before the next alive round, ms: between max-age/4 and max-age/2. */
  nextDelayMs(): number {
    const half = ((this.#o.maxAge ?? MAX_AGE) * 1000) / 2;
    return Math.floor(half / 2 + (this.#o.random ?? Math.random)() * (half / 2));
  }

  #cancel(): void {
    if (this.#handle !== null) this.#t.clearTimeout(this.#handle);
    this.#handle = null;
  }

  #alive(): void {
    this.#handle = null;
    this.#sendAll((ad) => aliveNotify(this.#o.advertised(ad.root), ad.nt, ad.usn));
    this.#rounds++;
    this.#handle = this.#t.setTimeout(() => this.#alive(), this.nextDelayMs());
  }

  #sendAll(build: (ad: Advertisement) => Uint8Array): void {
    for (const ad of this.#o.ads) {
      const d = build(ad);
      for (let i = 0; i < NOTIFY_COPIES; i++) {
        try {
          this.#o.send(d);
        } catch (e) {
          this.#o.onError?.(e);
        }
      }
    }
  }
}
