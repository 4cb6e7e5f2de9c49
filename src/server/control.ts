/**
 * dpm's control protocol at the gateway: every datagram to the control port,
 * version 2 (one request per datagram, `control/proto.ts`) and version 3
 * (batches, `control/batch.ts`), checked and answered here; the decisions
 * themselves are the table's and the mapping policy's.
 *
 * Theory of operation. A datagram is served only from a unicast LAN host
 * (`policy/hosts.ts`); then, per request, in this order: the request decodes
 * (else MALFORMED and the like), its internal address is the datagram's
 * source (claim 2, else NOT_AUTHORIZED), it carries the source's cookie
 * (return routability, else COOKIE_REQUIRED), the host is within its rate
 * (else RATE_LIMITED), then the table or the policy decides
 * ({@linkcode ControlService.serve}). In version 3 the address and the
 * cookie come once per datagram, and each entry is decoded, rate limited and
 * answered on its own, in one answer datagram as long as the request.
 *
 * Refusals that are not a verified host's own business (NOT_AUTHORIZED,
 * COOKIE_REQUIRED, RATE_LIMITED, undecodable datagrams) are answered within
 * a per-source budget; the table's refusals always are. A RESERVE that
 * proposes its gateway port (version 3) tells the held packets
 * (`held.ts`) whether the packets that went ahead to that port may go on.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import {
  COOKIE_LEN,
  decodeRequest,
  encodeResponse,
  errorResponseFor,
  hasCookie,
  MAGIC,
  Op,
  PROTOCOL_VERSION,
  Req,
  REQUEST_LEN,
  RESPONSE_BIT,
  responseFor,
} from "../control/proto.ts";
import {
  BATCH_VERSION,
  decodeEntry,
  decodeRequestHeader,
  type EntryAnswer,
  type EntryRequest,
  newAnswer,
  newEntry,
  writeAnswer,
  writeAnswerHeader,
  writeRefusal,
} from "../control/batch.ts";
import type { RateLimiter } from "../control/ratelimit.ts";
import type { CookieMinter } from "../control/cookie.ts";
import { Result, resultName } from "../control/result.ts";
import { type Grant, Owner, type SessionTable } from "../table/table.ts";
import type { LanHosts } from "../policy/hosts.ts";
import type { MappingPolicy } from "../policy/mappings.ts";
import { IPPROTO_ICMP, protoName } from "../wire/meta.ts";
import type { HeldPackets } from "./held.ts";

const log = logger("server");

/** One request, whatever version carried it. */
export interface Ask {
  op: number;
  proto: number;
  replaceable: boolean;
  a: number;
  pa: number;
  x: number;
  px: number;
  lifetime: number;
  /** The gateway port the driver proposes (version 3 RESERVE), 0 when none. */
  pg: number;
  /** A version-2 request: the server may give a Pg anywhere in the range. */
  v2: boolean;
}

/** What the control service reads and counts into (`ServerCore` owns each). */
export interface ControlDeps {
  cfg: Pick<ServerConfig, "maxSessionsPerHost">;
  table: SessionTable;
  hosts: LanHosts;
  policy: MappingPolicy;
  /** Verified requests per host per second. */
  limiter: RateLimiter;
  /** Answers to what is not a verified host's own business, per source (shared with PCP). */
  refusals: RateLimiter;
  cookies: CookieMinter;
  held: HeldPackets;
  /** Requests by result code, counted here. */
  results: Float64Array;
  epoch(): number;
  /** The data path carries mappings (MAP is refused when it does not). */
  forwardsMappings(): boolean;
  /** `x` is outside (not G, not in the LAN). */
  remoteIsOutside(x: number): boolean;
  /** A refusal, for `dpm status --host` and the operator's events. */
  noteRefusal(src: number, result: number, request: string, now: number): void;
  /** Writes a refusal line within the log budget (a function: called only when the budget takes it). */
  logRefusal(now: number, line: string | (() => string)): void;
}

/** The gateway's control protocol service. */
export class ControlService {
  readonly #d: ControlDeps;
  readonly #entry: EntryRequest = newEntry();
  readonly #answer: EntryAnswer = newAnswer();
  readonly #ask: Ask = {
    op: 0,
    proto: 0,
    replaceable: false,
    a: 0,
    pa: 0,
    x: 0,
    px: 0,
    lifetime: 0,
    pg: 0,
    v2: false,
  };
  /** Refusals not answered (over a source's refusal budget, or shorter than an answer). */
  unanswered = 0;
  /** Datagrams dropped unanswered because their source is not a LAN host. */
  notHost = 0;
  /**
   * Unverified request datagrams shed (counted, not decoded, logged or
   * answered) while their source's refusal budget was spent; also counted
   * in {@linkcode unanswered}.
   */
  shed = 0;
  /** LAN hosts' datagrams by the protocol version they spoke (2 or 3; "other": older or newer). */
  readonly datagrams = { v2: 0, v3: 0, other: 0 };

  constructor(deps: ControlDeps) {
    this.#d = deps;
  }

  /**
   * Handles one datagram to the control port from `src` (host order).
   * Returns the answer, or null when nothing must be sent (garbage is never
   * answered). Versions 2 and 3 are served; a later version is answered
   * UNSUPPORTED_VERSION in version 3's header; anything older or shorter
   * as version 2 says (never, for version 1).
   */
  handle(msg: Uint8Array, src: number, now: number): Uint8Array | null {
    const d = this.#d;
    if (!d.hosts.isHost(src)) {
      // Only the LAN's hosts are served: not outsiders (nothing to reflect or
      // amplify, no rate-limit bucket to fill), not the gateway's own
      // addresses or the prefix's network and broadcast (forged sources).
      d.results[Result.NOT_AUTHORIZED]!++;
      this.notHost++;
      return null;
    }
    const version = msg.length >= 3 ? msg[2]! : 0;
    if (version === BATCH_VERSION) {
      this.datagrams.v3++;
      if (this.#shed(msg, src, now, true)) return null;
      return this.#batch(msg, src, now);
    }
    if (version === PROTOCOL_VERSION) {
      this.datagrams.v2++;
      if (this.#shed(msg, src, now, false)) return null;
    } else this.datagrams.other++;
    if (version > BATCH_VERSION && isOurs(msg)) return this.#newer(msg, src, now);
    return this.#single(msg, src, now);
  }

  /**
   * Sheds a request datagram that claims another address than its source
   * (NOT_AUTHORIZED), carries no valid cookie for it (COOKIE_REQUIRED) or
   * comes from a host over its rate (RATE_LIMITED) while the source's
   * refusal budget is spent: such a datagram changes nothing and would not
   * be answered, so it is counted by its header's claim and dropped before
   * its entries are decoded, checked or described. A flood's datagrams then
   * cost the server a read of the header each, and the honest hosts'
   * requests that share its turns wait less (docs/performance.md, "Under a
   * flood"). Its entries are counted with that result even if one of them
   * would have been malformed; its refusal line, within the line budget, is
   * the full path's (decoded only then). Returns whether it shed it.
   */
  #shed(msg: Uint8Array, src: number, now: number, batch: boolean): boolean {
    const d = this.#d;
    if (!d.refusals.spent(src, now)) return false;
    let claim: { internalAddr: number; cookie: Uint8Array } | null = null;
    let entries = 1;
    if (batch) {
      const h = decodeRequestHeader(msg);
      if (h.ok) {
        claim = h;
        entries = h.count;
      }
    } else claim = requestClaim(msg);
    if (claim === null) return false;
    const result = claim.internalAddr !== src
      ? Result.NOT_AUTHORIZED
      : !d.cookies.valid(src, claim.cookie, now)
      ? Result.COOKIE_REQUIRED
      : d.limiter.spent(src, now)
      ? Result.RATE_LIMITED // every entry would be: no token comes back within a datagram
      : Result.OK;
    if (result === Result.OK) return false;
    d.results[result]! += entries;
    this.shed++;
    this.unanswered++;
    d.logRefusal(now, () => this.#shedLine(msg, src, result, batch));
    return true;
  }

  /** The line the full path would have logged for a shed datagram (decoded only when logged). */
  #shedLine(msg: Uint8Array, src: number, result: number, batch: boolean): string {
    const q = this.#ask;
    let cookie: Uint8Array | undefined;
    let entries = 1;
    if (batch) {
      const h = decodeRequestHeader(msg);
      const e = this.#entry;
      if (!h.ok || decodeEntry(msg, 0, h.internalAddr, e) !== null) {
        return this.#plainLine(src, result);
      }
      cookie = h.cookie;
      entries = h.count;
      q.op = e.op;
      q.proto = e.proto;
      q.a = h.internalAddr;
      q.pa = e.internalPort;
      q.x = e.remoteAddr;
      q.px = e.remotePort;
      q.lifetime = e.lifetime;
    } else {
      const dec = decodeRequest(msg);
      if (!dec.ok) return this.#plainLine(src, result);
      cookie = dec.req.cookie;
      q.op = dec.req.op;
      q.proto = dec.req.proto;
      q.a = dec.req.internalAddr;
      q.pa = dec.req.internalPort;
      q.x = dec.req.remoteAddr;
      q.px = dec.req.remotePort;
      q.lifetime = dec.req.lifetime;
    }
    return this.#refusalLine(q, src, result, cookie, false, entries);
  }

  #plainLine(src: number, result: number): string {
    return `refused a request from ${formatIPv4(src)}: ${
      resultName(result)
    }; not answered (refusal budget)`;
  }

  /** A version this server does not speak yet: UNSUPPORTED_VERSION, within the refusal budget. */
  #newer(msg: Uint8Array, src: number, now: number): Uint8Array | null {
    const d = this.#d;
    d.results[Result.UNSUPPORTED_VERSION]!++;
    const reply = writeRefusal(msg, Result.UNSUPPORTED_VERSION, d.epoch(), null);
    const answer = reply !== null && d.refusals.allow(src, now);
    d.logRefusal(
      now,
      `refused a request from ${formatIPv4(src)}: unsupported-version (version ${msg[2]})` +
        (answer ? "" : reply ? "; not answered (refusal budget)" : "; not answered"),
    );
    if (!answer) {
      this.unanswered++;
      return null;
    }
    return writeRefusal(msg, Result.UNSUPPORTED_VERSION, d.epoch(), d.cookies.cookieFor(src, now));
  }

  /** Version 2: one request, one answer. */
  #single(msg: Uint8Array, src: number, now: number): Uint8Array | null {
    const d = this.#d;
    const dec = decodeRequest(msg);
    if (!dec.ok) {
      d.results[dec.result]!++;
      const reply = errorResponseFor(msg, dec, d.epoch());
      const answer = reply !== null && d.refusals.allow(src, now);
      if (isOurs(msg)) {
        d.logRefusal(
          now,
          `refused a request from ${formatIPv4(src)}: ${resultName(dec.result)} (${dec.reason})` +
            (answer ? "" : reply ? "; not answered (refusal budget)" : "; not answered"),
        );
      } else log.debug(`bad request from ${formatIPv4(src)}: ${dec.reason}`);
      if (!answer) {
        this.unanswered++;
        return null;
      }
      return errorResponseFor(msg, dec, d.epoch(), d.cookies.cookieFor(src, now));
    }
    const req = dec.req;
    const q = this.#ask;
    q.op = req.op;
    q.proto = req.proto;
    q.replaceable = req.replaceable;
    q.a = req.internalAddr;
    q.pa = req.internalPort;
    q.x = req.remoteAddr;
    q.px = req.remotePort;
    q.lifetime = req.lifetime;
    q.pg = 0;
    q.v2 = true;
    let result: number;
    let grant: Grant | null = null;
    // A refusal that is not a verified host's own business (answered within the refusal budget).
    let unverified = false;
    if (req.internalAddr !== src) {
      result = Result.NOT_AUTHORIZED; // claim 2: a host speaks only for itself
      unverified = true;
    } else if (!d.cookies.valid(src, req.cookie, now)) {
      // Return routability: only the host at `src` gets the cookie this reply
      // carries, so a forged source changes nothing (docs/protocol.md, Cookies).
      result = Result.COOKIE_REQUIRED;
    } else if (!d.limiter.allow(src, now)) {
      // Only verified requests spend a host's tokens: forged ones cannot starve it.
      result = Result.RATE_LIMITED;
    } else {
      grant = this.serve(q, now);
      result = grant.result;
    }
    d.results[result]!++;
    if (result !== Result.OK) {
      const budgeted = unverified || result === Result.COOKIE_REQUIRED ||
        result === Result.RATE_LIMITED;
      const answer = !budgeted || d.refusals.allow(src, now);
      this.#refused(q, src, result, req.cookie, answer, now);
      if (!answer) {
        this.unanswered++;
        return null;
      }
    }
    return encodeResponse(responseFor(
      req,
      {
        result,
        ...(grant && result === Result.OK
          ? {
            replaced: grant.replaced,
            shared: grant.shared,
            publicAddr: grant.r,
            publicPort: grant.p,
            gatewayPort: grant.pg,
            lifetime: grant.lifetime,
          }
          : {}),
      },
      d.epoch(),
      d.cookies.cookieFor(src, now),
    ));
  }

  /** Version 3: every entry of the datagram answered in one datagram as long. */
  #batch(msg: Uint8Array, src: number, now: number): Uint8Array | null {
    const d = this.#d;
    const h = decodeRequestHeader(msg);
    if (!h.ok) {
      d.results[h.result]!++;
      const reply = h.silent ? null : writeRefusal(msg, h.result, d.epoch(), null);
      const answer = reply !== null && d.refusals.allow(src, now);
      if (!h.silent) {
        d.logRefusal(
          now,
          `refused a request datagram from ${formatIPv4(src)}: ${
            resultName(h.result)
          } (${h.reason})` + (answer ? "" : "; not answered (refusal budget)"),
        );
      } else log.debug(`bad request datagram from ${formatIPv4(src)}: ${h.reason}`);
      if (!answer) {
        this.unanswered++;
        return null;
      }
      return writeRefusal(msg, h.result, d.epoch(), d.cookies.cookieFor(src, now));
    }
    // Claim 2 and the cookie, once for the datagram.
    const unverified = h.internalAddr !== src
      ? Result.NOT_AUTHORIZED
      : !d.cookies.valid(src, h.cookie, now)
      ? Result.COOKIE_REQUIRED
      : Result.OK;
    const out = new Uint8Array(msg.length);
    writeAnswerHeader(out, msg, h.count, Result.OK, d.epoch(), d.cookies.cookieFor(src, now));
    const e = this.#entry;
    const a = this.#answer;
    const q = this.#ask;
    let budgeted = 0;
    for (let i = 0; i < h.count; i++) {
      const bad = decodeEntry(msg, i, h.internalAddr, e);
      q.op = e.op;
      q.proto = e.proto;
      q.replaceable = e.replaceable;
      q.a = h.internalAddr;
      q.pa = e.internalPort;
      q.x = e.remoteAddr;
      q.px = e.remotePort;
      q.lifetime = e.lifetime;
      q.pg = e.gatewayPort;
      q.v2 = false;
      let result: number;
      let grant: Grant | null = null;
      if (unverified !== Result.OK) result = unverified;
      else if (bad !== null) result = bad.result;
      else if (!d.limiter.allow(src, now)) result = Result.RATE_LIMITED;
      else {
        grant = this.serve(q, now);
        result = grant.result;
      }
      d.results[result]!++;
      if (result === Result.RATE_LIMITED || unverified !== Result.OK) budgeted++;
      if (result !== Result.OK && unverified === Result.OK) {
        if (bad !== null) {
          d.logRefusal(
            now,
            `refused a request from ${formatIPv4(src)}: ${resultName(result)} (${bad.reason})`,
          );
        } else this.#refused(q, src, result, h.cookie, true, now);
      }
      a.op = e.op;
      a.result = result;
      a.proto = e.proto;
      a.nonceHi = e.nonceHi;
      a.nonceLo = e.nonceLo;
      a.remoteAddr = e.remoteAddr;
      a.internalPort = e.internalPort;
      a.remotePort = e.remotePort;
      const ok = grant !== null && result === Result.OK;
      a.replaced = ok && grant!.replaced;
      a.shared = ok && grant!.shared;
      a.publicAddr = ok ? grant!.r : 0;
      a.publicPort = ok ? grant!.p : 0;
      a.gatewayPort = ok ? grant!.pg : 0;
      a.lifetime = ok ? grant!.lifetime : 0;
      writeAnswer(out, i, a);
    }
    if (unverified !== Result.OK) {
      // One line for the datagram: its entries share the reason.
      const answer = d.refusals.allow(src, now);
      this.#refused(q, src, unverified, h.cookie, answer, now, h.count);
      if (!answer) {
        this.unanswered++;
        return null;
      }
      return out;
    }
    if (budgeted === h.count && !d.refusals.allow(src, now)) {
      this.unanswered++;
      return null;
    }
    return out;
  }

  /**
   * Serves one verified request (claim 2 and the cookie checked, within the
   * host's rate): the table or the mapping policy decides. A RESERVE that
   * proposed its Pg tells the held packets whether it was granted as asked.
   */
  serve(q: Ask, now: number): Grant {
    const d = this.#d;
    let g: Grant;
    if (q.op === Op.MAP && q.lifetime !== 0 && !d.forwardsMappings()) {
      // As PCP and NAT-PMP answer on a data path that cannot carry mappings.
      g = fail(Result.UNSUPPORTED_OPCODE);
    } else if (q.op === Op.MAP) {
      // An inbound mapping for the host's own endpoint (`dpm map`), decided
      // by the same policy as PCP MAP. The cookie proved the address: dpm's
      // protocol may renew or delete any of the host's own mappings.
      const who = { owner: Owner.DPM, a: q.a };
      if (q.lifetime === 0) {
        // Delete; idempotent (as PCP), so a retransmitted delete whose answer was lost is OK too.
        g = fail(d.policy.unmap(who, q.proto, q.pa, now).result);
      } else {
        const o = d.policy.map(who, {
          proto: q.proto,
          pa: q.pa,
          p: q.px,
          r: 0,
          lifetime: q.lifetime,
          exact: !q.replaceable,
        }, now);
        g = o.result === Result.OK && o.grant ? { ...o.grant, result: o.result } : fail(o.result);
      }
    } else if (!d.remoteIsOutside(q.x)) {
      g = fail(Result.BAD_REMOTE);
    } else if (q.op === Op.RESERVE) {
      g = d.table.reserve({
        proto: q.proto,
        a: q.a,
        pa: q.pa,
        x: q.x,
        px: q.px,
        replaceable: q.replaceable,
        lifetime: q.lifetime,
        ...(q.pg ? { pg: q.pg } : {}),
        ...(q.v2 ? { pgAnywhere: true } : {}),
      }, now);
    } else if (q.op === Op.RENEW) {
      g = d.table.renew(q.proto, q.a, q.pa, q.x, q.px, q.lifetime, now);
    } else {
      g = fail(d.table.release(q.proto, q.a, q.pa, q.x, q.px));
    }
    if (q.op === Op.RESERVE && q.pg !== 0) {
      d.held.decide(q.proto, q.a, q.pa, q.pg, g.result === Result.OK && g.pg === q.pg, now);
    }
    return g;
  }

  /** Notes and logs a refusal (within the line budget; the normal cookie handshake at debug level). */
  #refused(
    q: Ask,
    src: number,
    result: number,
    cookie: Uint8Array | undefined,
    answered: boolean,
    now: number,
    entries = 1,
  ): void {
    const d = this.#d;
    d.noteRefusal(src, result, describeEntries(q, entries), now);
    // A cookie-less first request answered with the cookie is the normal handshake.
    const handshake = result === Result.COOKIE_REQUIRED && answered && !hasCookie(cookie);
    const line = this.#refusalLine(q, src, result, cookie, answered, entries);
    if (handshake) log.debug(line);
    else d.logRefusal(now, line);
  }

  /** A refusal's log line: the request, the host, the reason, the host's quota use. */
  #refusalLine(
    q: Ask,
    src: number,
    result: number,
    cookie: Uint8Array | undefined,
    answered: boolean,
    entries: number,
  ): string {
    const d = this.#d;
    return `refused ${describeEntries(q, entries)} from ${formatIPv4(src)}: ${resultName(result)}${
      result === Result.COOKIE_REQUIRED
        ? hasCookie(cookie) ? " (wrong or expired cookie)" : " (no cookie)"
        : ""
    } (host holds ${d.table.sessionsOf(q.a)}/${d.cfg.maxSessionsPerHost} sessions)${
      answered ? "" : "; not answered (refusal budget)"
    }`;
  }
}

/** `describeAsk`, and how many more entries of the datagram share its refusal. */
function describeEntries(q: Ask, entries: number): string {
  return describeAsk(q) + (entries > 1 ? ` and ${entries - 1} more` : "");
}

function fail(result: number): Grant {
  return { result, session: -1, r: 0, p: 0, pg: 0, lifetime: 0, replaced: false, shared: false };
}

function opName(op: number): string {
  return op === Op.RESERVE
    ? "reserve"
    : op === Op.RENEW
    ? "renew"
    : op === Op.MAP
    ? "map"
    : "release";
}

/** `reserve udp 10.0.0.11:40000 -> 198.51.100.10:7000` (lifetime when one was asked for). */
export function describeAsk(q: Ask): string {
  const icmp = q.proto === IPPROTO_ICMP;
  if (q.op === Op.MAP) {
    return `map ${protoName(q.proto)} ${formatIPv4(q.a)}:${q.pa}` +
      (q.px ? ` public port ${q.px}` : "") + ` lifetime ${q.lifetime}`;
  }
  return `${opName(q.op)} ${protoName(q.proto)} ${formatIPv4(q.a)}:${q.pa}` +
    ` -> ${formatIPv4(q.x)}${icmp ? "" : `:${q.px}`}` +
    (q.lifetime ? ` lifetime ${q.lifetime}` : "");
}

/** A datagram that looks like a control request (magic, not a response): refusals of it are logged. */
export function isOurs(b: Uint8Array): boolean {
  return b.length >= 4 && ((b[0]! << 8) | b[1]!) === MAGIC && (b[3]! & RESPONSE_BIT) === 0;
}

/**
 * The internal address and cookie (a view into `b`) a version-2 request
 * claims, read in place without checking the rest: null unless `b` is
 * {@link REQUEST_LEN} bytes with the magic, version 2 and the response bit
 * clear. For the server's shedding of datagrams it would refuse unanswered
 * anyway (`#shed` above); `decodeRequest` is the check.
 */
function requestClaim(b: Uint8Array): { internalAddr: number; cookie: Uint8Array } | null {
  if (
    b.length !== REQUEST_LEN || ((b[Req.MAGIC]! << 8) | b[Req.MAGIC + 1]!) !== MAGIC ||
    b[Req.VERSION] !== PROTOCOL_VERSION || (b[Req.OPCODE]! & RESPONSE_BIT) !== 0
  ) return null;
  return {
    internalAddr: new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(Req.INTERNAL_ADDR),
    cookie: b.subarray(Req.COOKIE, Req.COOKIE + COOKIE_LEN),
  };
}
