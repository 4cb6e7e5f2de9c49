/**
 * The gateway role (`dpm server`).
 *
 * Theory of operation. The server owns the public pool and the lookup table
 * (`table.ts`). Its control listener (UDP on the LAN address G, port 4750)
 * answers reserve / renew / release requests from drivers, after checking
 * that each request's internal address is the datagram's source (claim 2)
 * and that the host is within its request rate. Its data path receives, from
 * the kernel's netfilter queue (`ffi/nfqueue.ts`), two kinds of packets,
 * both in raw PREROUTING so that rewritten addresses are routed as rewritten:
 *
 * - from the LAN, `a:pa -> G:Pg` (the driver already replaced X:px by G:Pg,
 *   claim 5): looked up by (proto, a, Pg), rewritten to `R:p -> X:px` (claim 6)
 *   and forwarded out; when X:px is itself a public pair of the pool
 *   (hairpinning), the packet is translated a second time, inbound, on the spot;
 * - from the WAN, `X:px -> R:p`: looked up by (proto, R, p, X, px) — the remote
 *   endpoint is part of the key, which is how sessions sharing R:p are told
 *   apart (claims 8-10) — and rewritten to `G:Pg -> a:pa`;
 * - mappings (PCP/NAT-PMP MAP) and direct sessions (PCP PEER, flagged in the
 *   table): hosts without a driver. From the WAN, `X:px -> R:p` with no
 *   session of its own goes to the mapping owning `R:p`; a mapping's or a
 *   direct session's packet becomes `X:px -> a:pa` (the remote's pair kept,
 *   there is no driver to undo `G:Pg`). From the LAN, the queue data path
 *   steers exactly those endpoints here (`datapath/queue/server.ts`):
 *   `a:pa -> X:px` becomes `R:p -> X:px`, from the endpoint's session toward
 *   X:px, else its mapping. A driver host's mapped endpoint works too: its
 *   first inbound packet comes through the mapping, its answer through its
 *   driver as an ordinary session on the mapping's `R:p`.
 *
 * ICMP errors are translated both ways with their quoted headers (RFC 5508).
 * Translated packets are untracked by conntrack (raw `CT --notrack`), so the
 * kernel's own NAT, which serves hosts without a driver, never touches them.
 *
 * Only this file and `driver.ts` read the clock.
 *
 * @module
 */

import { type Cidr, cidrContains, formatIPv4 } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import {
  decodeRequest,
  encodeResponse,
  errorResponseFor,
  hasCookie,
  MAGIC,
  Op,
  type Request,
  RESPONSE_BIT,
  responseFor,
} from "../control/proto.ts";
import { LineBudget, RateLimiter } from "../control/ratelimit.ts";
import { CookieMinter } from "../control/cookie.ts";
import { Result, RESULT_COUNT, resultName } from "../control/result.ts";
import { PcpService } from "../pcp/server.ts";
import {
  type Grant,
  type SessionRecord,
  SessionTable,
  type TableListener,
} from "../table/table.ts";
import { Drop, DROP_COUNT, DROP_NAMES, IPPROTO_ICMP, PacketInfo, parse } from "../wire/packet.ts";
import { rewrite, rewriteIcmpError } from "../wire/rewrite.ts";
import { protoName, Verdict } from "../wire/meta.ts";
import { VERSION } from "../version.ts";
import type { HostView, SessionEvent, SessionView, StatusReply } from "../operator/types.ts";
import {
  gatewayKey,
  type GatewaySession,
  type ServerDataPath,
  type SessionCounters,
} from "../datapath/datapath.ts";

const log = logger("server");

/** Options of the translator core that tests set. */
export interface ServerCoreOptions {
  /** LAN prefix; requests' remotes inside it are refused. Null: only G and the pool are refused. */
  lan: Cidr | null;
  /** Epoch to use (a restored state keeps its epoch); random when absent. */
  epoch?: number;
  /** Clock, ms. */
  now?: () => number;
  /** Where refusal lines go (rate-limited); the server's info log when absent. */
  refusalLog?: (line: string) => void;
}

/**
 * Refusals answered per source address per second (and the burst), for the
 * answers that are not a verified host's own business: COOKIE_REQUIRED,
 * NOT_AUTHORIZED, RATE_LIMITED and undecodable requests. Beyond it the
 * server is silent, so forged requests cannot be reflected at a host.
 */
export const REFUSAL_RATE = 4;
export const REFUSAL_BURST = 8;
/** Refusal log lines per second, overall; the rest are counted in a "suppressed" line. */
export const REFUSAL_LOG_LINES = 10;

/**
 * The server's state and logic without sockets: control-message handling and
 * packet translation are methods tests can call directly with bytes.
 */
export class ServerCore {
  readonly table: SessionTable;
  readonly epoch: number;
  readonly startedAt: number;
  readonly results = new Float64Array(RESULT_COUNT);
  readonly drops = new Float64Array(DROP_COUNT);
  readonly packets = { in: 0, out: 0, hairpin: 0 };
  readonly #cfg: ServerConfig;
  readonly #lan: Cidr | null;
  readonly #limiter: RateLimiter;
  readonly #refusals = new RateLimiter(REFUSAL_RATE, REFUSAL_BURST);
  readonly #cookies: CookieMinter;
  readonly #lines = new LineBudget(REFUSAL_LOG_LINES);
  readonly #refusalLog: (line: string) => void;
  /** Refusals not answered (over a source's refusal budget, or shorter than an answer). */
  unanswered = 0;
  readonly #info = new PacketInfo();
  /** `NFQA_SKB_INFO` bits of the packet being translated (see handlePacket). */
  #skbInfo = 0;
  readonly now: () => number;

  // ---- the operator's view (dpm status, drop, watch), per slot, next to the table ----
  /** When slot s was added: tenths of a second since startedAt, plus 1. */
  #born = new Uint32Array(0);
  /** When slot s's packet total was last seen to move (same unit; 0: never). */
  #seen = new Uint32Array(0);
  /** The packet total then (low 32 bits: only a change matters). */
  #seenPkts = new Uint32Array(0);
  /** Bytes translated here (queue path; on the kernel path ICMP and hairpins), grown on use. */
  #bytesOut = new Float64Array(0);
  #bytesIn = new Float64Array(0);
  /** Slots below this may be live. */
  #hw = 0;
  #sampleCursor = 0;
  /** Why the sessions being removed go (for watch). */
  #why: "released" | "expired" | "dropped" = "released";
  /** The data path's share of the table listener (attach). */
  #dpListener: TableListener | null = null;
  readonly #watchers = new Set<(e: SessionEvent) => void>();
  /** Refusals of verified hosts: counts by result, and the last one. */
  readonly #refusedBy = new Map<
    number,
    { counts: Float64Array; last: { request: string; result: string; at: number } }
  >();

  constructor(cfg: ServerConfig, opts: ServerCoreOptions) {
    this.#cfg = cfg;
    this.#lan = opts.lan;
    this.now = opts.now ?? Date.now;
    this.startedAt = this.now();
    this.epoch = (opts.epoch ?? crypto.getRandomValues(new Uint32Array(1))[0]!) >>> 0;
    this.table = new SessionTable({
      pool: cfg.pool,
      portMin: cfg.portRange[0],
      portMax: cfg.portRange[1],
      gatewayPortMin: cfg.gatewayPorts[0],
      gatewayPortMax: cfg.gatewayPorts[1],
      maxSessionsPerHost: cfg.maxSessionsPerHost,
      // --lifetime caps every lifetime; the RFC-respecting defaults apply below it.
      lifetimes: {
        max: cfg.lifetime,
        min: Math.min(30, cfg.lifetime),
        udp: Math.min(300, cfg.lifetime),
        tcp: Math.min(7440, cfg.lifetime),
        icmp: Math.min(60, cfg.lifetime),
      },
    });
    this.#limiter = new RateLimiter(cfg.rateLimit);
    this.#cookies = new CookieMinter(this.startedAt);
    this.#refusalLog = opts.refusalLog ?? ((line) => log.info(line));
    // PCP and NAT-PMP (UDP 5351): the same table, source checks and rate limits.
    this.pcp = new PcpService({
      table: this.table,
      lan: this.#lan,
      startedAt: this.startedAt,
      limiter: this.#limiter,
      refusals: this.#refusals,
      mapSupported: () => this.#forwardsMappings(),
      remoteIsOutside: (x) => this.#remoteIsOutside(x),
      log: (line) => this.#logRefusal(this.now(), line),
      leased: (s) => this.onLease?.(s),
    });
    this.table.listener = {
      added: (s) => {
        this.#added(s);
        this.#dpListener?.added(s);
      },
      removed: (s) => {
        this.#dpListener?.removed(s);
        this.#removed(s);
      },
    };
  }

  /** Told the row of a mapping or peer PCP / NAT-PMP granted or renewed (run.ts: the state file). */
  onLease: ((row: number) => void) | null = null;

  /** The PCP / NAT-PMP service (`src/pcp/server.ts`). */
  readonly pcp: PcpService;

  /** Handles one PCP or NAT-PMP datagram (UDP 5351) from `src`; the reply or null. */
  handlePcp(msg: Uint8Array, src: number): Uint8Array | null {
    return this.pcp.handle(msg, src, this.now());
  }

  /**
   * Handles one control datagram from `src` (host order). Returns the reply
   * bytes, or null when nothing must be sent (garbage is never answered).
   */
  handleControl(msg: Uint8Array, src: number): Uint8Array | null {
    const now = this.now();
    if (this.#lan && !cidrContains(this.#lan, src)) {
      // Only the LAN side is served. Outsiders get no answer (nothing to
      // reflect or amplify) and no rate-limit bucket (nothing to fill).
      this.results[Result.NOT_AUTHORIZED]!++;
      return null;
    }
    const d = decodeRequest(msg);
    if (!d.ok) {
      this.results[d.result]!++;
      const reply = errorResponseFor(msg, d, this.epoch);
      const answer = reply !== null && this.#refusals.allow(src, now);
      if (isOurs(msg)) {
        this.#logRefusal(
          now,
          `refused a request from ${formatIPv4(src)}: ${resultName(d.result)} (${d.reason})` +
            (answer ? "" : reply ? "; not answered (refusal budget)" : "; not answered"),
        );
      } else log.debug(`bad request from ${formatIPv4(src)}: ${d.reason}`);
      if (!answer) {
        this.unanswered++;
        return null;
      }
      return errorResponseFor(msg, d, this.epoch, this.#cookies.cookieFor(src, now));
    }
    const req = d.req;
    let result: number;
    let grant: Grant | null = null;
    if (req.internalAddr !== src) {
      result = Result.NOT_AUTHORIZED; // claim 2: a host speaks only for itself
    } else if (!this.#cookies.valid(src, req.cookie, now)) {
      // Return routability: only the host at `src` gets the cookie this reply
      // carries, so a forged source changes nothing (docs/protocol.md, Cookies).
      result = Result.COOKIE_REQUIRED;
    } else if (!this.#limiter.allow(src, now)) {
      // Only verified requests spend a host's tokens: forged ones cannot starve it.
      result = Result.RATE_LIMITED;
    } else if (req.op === Op.MAP) {
      // An inbound mapping for the host's own endpoint (`dpm map`), as PCP MAP.
      if (req.lifetime === 0) {
        // Delete; idempotent (as PCP), so a retransmitted delete whose answer was lost is OK too.
        if (this.table.lookupMapOf(req.proto, req.internalAddr, req.internalPort) >= 0) {
          this.table.release(req.proto, req.internalAddr, req.internalPort, 0, 0, now);
        }
        result = Result.OK;
      } else {
        grant = this.table.map({
          proto: req.proto,
          a: req.internalAddr,
          pa: req.internalPort,
          p: req.remotePort,
          r: 0,
          lifetime: req.lifetime,
          preferFailure: !req.replaceable,
        }, now);
        result = grant.result;
      }
    } else if (!this.#remoteIsOutside(req.remoteAddr)) {
      result = Result.BAD_REMOTE;
    } else if (req.op === Op.RESERVE) {
      grant = this.table.reserve({
        proto: req.proto,
        a: req.internalAddr,
        pa: req.internalPort,
        x: req.remoteAddr,
        px: req.remotePort,
        replaceable: req.replaceable,
        lifetime: req.lifetime,
      }, now);
      result = grant.result;
    } else if (req.op === Op.RENEW) {
      grant = this.table.renew(
        req.proto,
        req.internalAddr,
        req.internalPort,
        req.remoteAddr,
        req.remotePort,
        req.lifetime,
        now,
      );
      result = grant.result;
    } else {
      result = this.table.release(
        req.proto,
        req.internalAddr,
        req.internalPort,
        req.remoteAddr,
        req.remotePort,
      );
    }
    this.results[result]!++;
    if (result !== Result.OK) this.#noteRefusal(req, src, result, now);
    if (result !== Result.OK) {
      // Refusals that are not a verified host's own business are answered
      // within a small per-source budget; the table's refusals always are.
      const budgeted = result === Result.NOT_AUTHORIZED || result === Result.COOKIE_REQUIRED ||
        result === Result.RATE_LIMITED;
      const answer = !budgeted || this.#refusals.allow(src, now);
      // A cookie-less first request answered with the cookie is the normal handshake.
      const handshake = result === Result.COOKIE_REQUIRED && answer && !hasCookie(req.cookie);
      const line = `refused ${describeRequest(req)} from ${formatIPv4(src)}: ${resultName(result)}${
        result === Result.COOKIE_REQUIRED
          ? hasCookie(req.cookie) ? " (wrong or expired cookie)" : " (no cookie)"
          : ""
      } (host holds ${
        this.table.sessionsOf(req.internalAddr)
      }/${this.#cfg.maxSessionsPerHost} sessions)${
        answer ? "" : "; not answered (refusal budget)"
      }`;
      if (handshake) log.debug(line);
      else this.#logRefusal(now, line);
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
      this.epoch,
      this.#cookies.cookieFor(src, now),
    ));
  }

  /** Writes a refusal line within the log budget, after a summary of what it held back. */
  #logRefusal(now: number, line: string): void {
    this.#flushRefusalLog(now);
    if (this.#lines.take(now)) this.#refusalLog(line);
  }

  #flushRefusalLog(now: number): void {
    const k = this.#lines.flush(now);
    if (k) {
      this.#refusalLog(
        `suppressed ${k} refusal line(s) (more than ${REFUSAL_LOG_LINES} a second)`,
      );
    }
  }

  #remoteIsOutside(x: number): boolean {
    if (x === this.#cfg.lanAddr) return false;
    if (this.#lan && cidrContains(this.#lan, x)) return false;
    // A pool address is a valid remote: that is hairpinning to another host's public pair.
    return true;
  }

  /**
   * Translates one queued packet in place. Returns Verdict.MODIFIED when the
   * bytes were rewritten, ACCEPT to let it pass unchanged, DROP otherwise
   * (each drop counted by reason). `skbInfo`: the queue's `NFQA_SKB_INFO`
   * bits for this packet (CHECKSUM_PARTIAL, GSO; see `rewrite`).
   */
  handlePacket(pkt: Uint8Array, skbInfo = 0): number {
    this.#skbInfo = skbInfo;
    try {
      return this.#translate(pkt);
    } catch (e) {
      // A bug must cost one packet, not the gateway.
      if (this.drops[Drop.INTERNAL_ERROR]!++ < 10) {
        log.error(`translating a packet: ${(e as Error).stack ?? e}`);
      }
      return Verdict.DROP;
    }
  }

  #translate(pkt: Uint8Array): number {
    const info = this.#info;
    const bad = parse(pkt, pkt.length, info);
    if (bad !== Drop.NONE) {
      this.drops[bad]!++;
      return Verdict.DROP;
    }
    if (info.dst === this.#cfg.lanAddr) return this.#fromLan(pkt, info);
    if (this.table.isPoolAddress(info.dst)) return this.#fromWan(pkt, info);
    return this.#fromDirect(pkt, info);
  }

  /**
   * A steered endpoint's packet sent straight at its remote, `a:pa -> X:px`
   * (a host without a driver: its mapping's traffic, or its PCP PEER
   * session; only the queue path steers these here) → `R:p -> X:px`: the
   * session toward X:px if the endpoint has one, else its mapping.
   */
  #fromDirect(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.table;
    if (info.icmpError || info.proto === IPPROTO_ICMP) {
      this.drops[Drop.NOT_OURS]!++;
      return Verdict.ACCEPT;
    }
    let s = t.lookupIdentity(info.proto, info.src, info.sport, info.dst, info.dport);
    if (s < 0) s = t.lookupMapOf(info.proto, info.src, info.sport);
    if (s < 0) {
      // Steered while it had a row (the set lags by one packet at most): it
      // is untracked now, so letting it pass would leak the private pair.
      this.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    if (info.ttl <= 1) {
      this.drops[Drop.TTL_EXCEEDED]!++;
      return Verdict.DROP;
    }
    rewrite(pkt, info, t.r(s), t.p(s), info.dst, info.dport, this.#skbInfo);
    t.count(s, true);
    this.#countBytes(s, true, pkt.length);
    this.packets.out++;
    return Verdict.MODIFIED;
  }

  /**
   * The data path forwards mappings and direct sessions: the kernel path
   * always, the queue path once its steering table is up (`forwardsMappings`
   * of `datapath/queue/server.ts`); without a data path, the table alone.
   */
  #forwardsMappings(): boolean {
    const dp = this.#dp as (ServerDataPath & { forwardsMappings?: boolean }) | null;
    return dp === null || dp.kind === "kernel" || dp.forwardsMappings === true;
  }

  /** a:pa -> G:Pg (or an ICMP error from a about G:Pg -> a:pa) → R:p -> X:px. */
  #fromLan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.table;
    const g = this.#cfg.lanAddr;
    if (info.icmpError) {
      if (info.innerSrc !== g || info.innerDst !== info.src) {
        this.drops[Drop.NOT_OURS]!++;
        return Verdict.ACCEPT;
      }
      const pg = info.innerProto === IPPROTO_ICMP ? info.innerDport : info.innerSport;
      const s = t.lookupLan(info.innerProto, info.src, pg);
      if (s < 0) {
        this.drops[Drop.NO_SESSION]!++;
        return Verdict.DROP;
      }
      if (t.isPoolAddress(t.x(s))) {
        // Hairpinned (RFC 5508 REQ-7): the error is about a packet another
        // host's session sent to this one's public pair. Deliver it to that
        // host as if from outside: from this host's public address (an error
        // from G itself would tell the driver the server lost its session),
        // quoting its own a:pa -> G:Pg.
        const s2 = t.lookupPublic(info.innerProto, t.x(s), t.px(s), t.r(s), t.p(s));
        if (s2 < 0) {
          this.drops[Drop.NO_SESSION]!++;
          return Verdict.DROP;
        }
        const icmp = info.innerProto === IPPROTO_ICMP;
        rewriteIcmpError(pkt, info, {
          outerSrc: t.r(s),
          outerDst: t.a(s2),
          innerSrc: t.a(s2),
          innerSport: icmp ? t.pg(s2) : t.pa(s2),
          innerDst: g,
          innerDport: icmp ? 0 : t.pg(s2),
        }, this.#skbInfo);
        this.packets.hairpin++;
        return Verdict.MODIFIED;
      }
      // The quoted packet was G:Pg -> a:pa; outside it was X:px -> R:p.
      rewriteIcmpError(pkt, info, {
        outerSrc: t.r(s),
        outerDst: t.x(s),
        innerSrc: t.x(s),
        innerSport: t.px(s),
        innerDst: t.r(s),
        innerDport: t.p(s),
      }, this.#skbInfo);
      this.packets.out++;
      return Verdict.MODIFIED;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    const pg = icmp ? info.sport : info.dport;
    const s = t.lookupLan(info.proto, info.src, pg);
    if (s < 0) {
      // Not a session: the gateway's own business. TCP/UDP to a gateway port get the
      // kernel's RST or port unreachable, which tells a driver whose session the
      // server lost. An echo request is a plain ping of the gateway: the kernel
      // answers it (so the gateway stays pingable from the LAN).
      this.drops[Drop.NOT_OURS]!++;
      return Verdict.ACCEPT;
    }
    if (!icmp && t.pa(s) !== info.sport) {
      this.drops[Drop.INTERNAL_PORT_MISMATCH]!++;
      return Verdict.DROP;
    }
    if (info.ttl <= 1) {
      this.drops[Drop.TTL_EXCEEDED]!++;
      return Verdict.DROP;
    }
    const x = t.x(s);
    const px = t.px(s);
    if (t.isPoolAddress(x)) return this.#hairpin(pkt, info, s);
    rewrite(pkt, info, t.r(s), t.p(s), x, px, this.#skbInfo);
    t.count(s, true);
    this.#countBytes(s, true, pkt.length);
    this.packets.out++;
    return Verdict.MODIFIED;
  }

  /** The remote is another session's public pair: deliver it inside, translated twice. */
  #hairpin(pkt: Uint8Array, info: PacketInfo, s: number): number {
    const t = this.table;
    const s2 = t.lookupPublic(info.proto, t.x(s), t.px(s), t.r(s), t.p(s));
    if (s2 < 0) {
      this.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    // Seen from s2's host, the packet comes from s's public pair R:p to its own G:Pg.
    rewrite(
      pkt,
      info,
      this.#cfg.lanAddr,
      icmp ? 0 : t.pg(s2),
      t.a(s2),
      icmp ? t.pg(s2) : t.pa(s2),
      this.#skbInfo,
    );
    t.count(s, true);
    t.count(s2, false);
    this.#countBytes(s, true, pkt.length);
    this.#countBytes(s2, false, pkt.length);
    this.packets.hairpin++;
    return Verdict.MODIFIED;
  }

  /** X:px -> R:p (or an ICMP error about R:p -> X:px) → G:Pg -> a:pa. */
  #fromWan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.table;
    const g = this.#cfg.lanAddr;
    if (info.icmpError) {
      let s = t.lookupPublic(
        info.innerProto,
        info.innerSrc,
        info.innerSport,
        info.innerDst,
        info.innerDport,
      );
      let direct = s >= 0 && t.direct(s);
      if (s < 0 && info.innerProto !== IPPROTO_ICMP) {
        s = t.lookupMapping(info.innerProto, info.innerSrc, info.innerSport);
        direct = true;
      }
      if (s < 0) {
        this.drops[Drop.NO_SESSION]!++;
        return Verdict.DROP;
      }
      if (direct) {
        // A mapping's or a direct session's host sent a:pa -> X:px itself.
        rewriteIcmpError(pkt, info, {
          outerSrc: info.src,
          outerDst: t.a(s),
          innerSrc: t.a(s),
          innerSport: t.pa(s),
          innerDst: info.innerDst,
          innerDport: info.innerDport,
        }, this.#skbInfo);
        t.count(s, false);
        this.#countBytes(s, false, pkt.length);
        this.packets.in++;
        return Verdict.MODIFIED;
      }
      // Outside, the quoted packet was R:p -> X:px; on the LAN it was a:pa -> G:Pg
      // (ICMP echo: a with identifier Pg -> G). The reporting router keeps its address.
      const icmp = info.innerProto === IPPROTO_ICMP;
      rewriteIcmpError(pkt, info, {
        outerSrc: info.src,
        outerDst: t.a(s),
        innerSrc: t.a(s),
        innerSport: icmp ? t.pg(s) : t.pa(s),
        innerDst: g,
        innerDport: icmp ? 0 : t.pg(s),
      }, this.#skbInfo);
      t.count(s, false);
      this.#countBytes(s, false, pkt.length);
      this.packets.in++;
      return Verdict.MODIFIED;
    }
    // The remote's own session first; else the mapping that owns R:p for every remote.
    let s = t.lookupPublic(info.proto, info.dst, info.dport, info.src, info.sport);
    let direct = s >= 0 && t.direct(s);
    if (s < 0 && info.proto !== IPPROTO_ICMP) {
      s = t.lookupMapping(info.proto, info.dst, info.dport);
      direct = true;
    }
    if (s < 0) {
      this.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    if (info.ttl <= 1) {
      this.drops[Drop.TTL_EXCEEDED]!++;
      return Verdict.DROP;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    // A mapping or a direct session (no driver to undo G:Pg): X:px -> a:pa, the remote's own pair.
    if (direct) rewrite(pkt, info, info.src, info.sport, t.a(s), t.pa(s), this.#skbInfo);
    else rewrite(pkt, info, g, icmp ? 0 : t.pg(s), t.a(s), icmp ? t.pg(s) : t.pa(s), this.#skbInfo);
    t.count(s, false);
    this.#countBytes(s, false, pkt.length);
    this.packets.in++;
    return Verdict.MODIFIED;
  }

  #dp: ServerDataPath | null = null;

  /**
   * Connects the data path: every session in the table now, and every one
   * added or removed from now on, is handed to it (so a restored state file
   * is programmed into the kernel for free).
   */
  attach(dp: ServerDataPath): void {
    this.#dp = dp;
    const t = this.table;
    // `direct` (PCP PEER, table.ts) matters to the queue path, which steers those endpoints.
    const view = (s: number): GatewaySession => ({
      proto: t.proto(s),
      a: t.a(s),
      pa: t.pa(s),
      x: t.x(s),
      px: t.px(s),
      r: t.r(s),
      p: t.p(s),
      pg: t.pg(s),
      ...(t.direct(s) ? { direct: true } : {}),
    });
    this.#dpListener = {
      added: (s) => dp.sessionUp(view(s)),
      removed: (s) => dp.sessionDown(view(s)),
    };
    // The kernel path loads what the table holds itself (begin); the queue
    // path is told here, so that restored mappings' endpoints are steered.
    if (dp.kind === "queue") {
      for (const s of this.sessions()) dp.sessionUp(s);
      dp.commit();
    }
  }

  /** Every session as the data path sees it (to program them all at once). */
  *sessions(): IterableIterator<GatewaySession> {
    for (const r of this.table.entries()) {
      yield {
        proto: r.proto,
        a: r.a,
        pa: r.pa,
        x: r.x,
        px: r.px,
        r: r.r,
        p: r.p,
        pg: r.pg,
        ...(r.direct ? { direct: true } : {}),
      };
    }
  }

  /** Disconnects the data path (on stop): the table no longer reports to it. */
  detach(): void {
    this.#dp = null;
    this.#dpListener = null;
  }

  /**
   * Forgets idle rate-limit buckets, and logs how many refusal lines were
   * suppressed (call periodically).
   */
  sweepRateLimits(): void {
    const now = this.now();
    this.#limiter.sweep(now);
    this.#refusals.sweep(now);
    this.#flushRefusalLog(now);
    this.pcp.sweep();
  }

  /**
   * Expires sessions past their lifetime; returns how many left. With a
   * `budget` (slots scanned), the sweep is incremental and resumes where it
   * stopped, so a million-session table never blocks the event loop for long.
   */
  expire(budget?: number): number {
    this.#why = "expired";
    try {
      return budget === undefined
        ? this.table.expire(this.now())
        : this.table.expire(this.now(), budget);
    } finally {
      this.#why = "released";
      // Where the core sees every packet, last-seen is sampled along the sweep.
      if (this.#dp?.kind !== "kernel") this.#sample(budget ?? this.#hw);
    }
  }

  /** The data path's per-session kernel counters summed, or null when it keeps none. */
  kernelTotals(): SessionCounters | null {
    const c = this.#dp?.counters();
    if (!c) return null;
    const sum = { packetsOut: 0, bytesOut: 0, packetsIn: 0, bytesIn: 0 };
    for (const v of c.values()) {
      sum.packetsOut += v.packetsOut;
      sum.bytesOut += v.bytesOut;
      sum.packetsIn += v.packetsIn;
      sum.bytesIn += v.bytesIn;
    }
    return sum;
  }

  /** The status reply for `dpm status`. */
  status(limit = 1000): StatusReply {
    const shown = [...this.rows({ limit })];
    return { ...this.statusHeader(), shown };
  }

  /**
   * The status without its rows (`dpm status` streams the rows after it);
   * with `host`, that host's quota use and refusals too.
   */
  statusHeader(host?: number): Omit<StatusReply, "shown"> {
    const now = this.now();
    const results: Record<string, number> = {};
    for (let i = 0; i < RESULT_COUNT; i++) results[resultName(i)] = this.results[i]!;
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_COUNT; i++) drops[DROP_NAMES[i]!] = this.drops[i]!;
    return {
      version: VERSION,
      epoch: this.epoch,
      uptime: Math.round((now - this.startedAt) / 1000),
      lanAddr: formatIPv4(this.#cfg.lanAddr),
      pool: this.#cfg.pool.map(formatIPv4),
      dataPath: this.#dp?.status() ?? { kind: "off", state: "off", reinstalls: 0 },
      sessions: this.table.size,
      ...(host === undefined ? {} : { host: this.hostView(host) }),
      results,
      drops,
      packets: { ...this.packets },
    };
  }

  /**
   * The table's rows for status, in slot order, one at a time (a million
   * are never one array): all of them, or one host's, at most `limit`.
   * Kernel counters are read once, when the first row is asked for. Rows
   * may be taken across event-loop turns: a session added or removed
   * meanwhile may or may not be listed (as with `conntrack -L`).
   */
  *rows(o: { host?: number; limit?: number } = {}): Generator<SessionView> {
    const t = this.table;
    const limit = o.limit ?? Infinity;
    // No rows wanted (the metrics scrape): no kernel dump either.
    if (limit <= 0) return;
    const counters = this.#dp?.counters() ?? null;
    let n = 0;
    for (let s = 0; s < this.#hw && n < limit; s++) {
      if (!t.isLive(s) || (o.host !== undefined && t.a(s) !== o.host)) continue;
      n++;
      yield this.#row(s, this.now(), counters);
    }
  }

  /** One host's share: its sessions by protocol against the quota, its pairing, its refusals. */
  hostView(a: number): HostView {
    const t = this.table;
    const byProto: Record<string, number> = { tcp: 0, udp: 0, icmp: 0 };
    for (let s = 0; s < this.#hw; s++) {
      if (t.isLive(s) && t.a(s) === a) byProto[protoName(t.proto(s))]! += 1;
    }
    const refusals: Record<string, number> = {};
    const r = this.#refusedBy.get(a);
    if (r) {
      for (let i = 0; i < RESULT_COUNT; i++) {
        if (r.counts[i]) refusals[resultName(i)] = r.counts[i]!;
      }
    }
    const paired = t.pairedAddress(a);
    return {
      host: formatIPv4(a),
      sessions: t.sessionsOf(a),
      quota: this.#cfg.maxSessionsPerHost,
      byProto,
      ...(paired >= 0 ? { paired: formatIPv4(paired) } : {}),
      refusals,
      ...(r
        ? {
          lastRefusal: {
            request: r.last.request,
            result: r.last.result,
            ago: Math.max(0, Math.round((this.now() - r.last.at) / 1000)),
          },
        }
        : {}),
    };
  }

  /**
   * Drops sessions as an operator asks (`dpm drop`, like `conntrack -D`):
   * one by its identity, or every session of a host. They leave the table,
   * and so the data path (the kernel's maps and conntracks); their hosts
   * learn it at their next renewal. Returns how many went.
   */
  drop(
    sel: { host: number } | { proto: number; a: number; pa: number; x: number; px: number },
  ): number {
    const t = this.table;
    const now = this.now();
    this.#why = "dropped";
    try {
      if ("host" in sel) {
        const slots: number[] = [];
        for (let s = 0; s < this.#hw; s++) if (t.isLive(s) && t.a(s) === sel.host) slots.push(s);
        for (const s of slots) t.releaseSlot(s, now);
        return slots.length;
      }
      return t.release(sel.proto, sel.a, sel.pa, sel.x, sel.px, now) === Result.OK ? 1 : 0;
    } finally {
      this.#why = "released";
    }
  }

  /** Calls `fn` with every session event (up, down, refused) until the returned function is called. */
  watch(fn: (e: SessionEvent) => void): () => void {
    this.#watchers.add(fn);
    return () => void this.#watchers.delete(fn);
  }

  /** Bytes this core keeps per session for the operator's view (not counted in table.bytes). */
  get viewBytes(): number {
    return this.#born.byteLength * 3 + this.#bytesOut.byteLength * 2;
  }

  #tenths(now: number): number {
    return Math.max(0, Math.floor((now - this.startedAt) / 100)) + 1;
  }

  #added(s: number): void {
    if (s >= this.#born.length) {
      const cap = Math.max(1024, this.#born.length * 2, s + 1);
      const grow = (a: Uint32Array) => {
        const n = new Uint32Array(cap);
        n.set(a);
        return n;
      };
      this.#born = grow(this.#born);
      this.#seen = grow(this.#seen);
      this.#seenPkts = grow(this.#seenPkts);
    }
    if (s >= this.#hw) this.#hw = s + 1;
    this.#born[s] = this.#tenths(this.now());
    this.#seen[s] = 0;
    this.#seenPkts[s] = this.table.packetsOut(s) + this.table.packetsIn(s);
    if (s < this.#bytesOut.length) this.#bytesOut[s] = this.#bytesIn[s] = 0;
    if (this.#watchers.size) this.#emit({ event: "up", ...this.#row(s, this.now(), null) });
  }

  #removed(s: number): void {
    if (this.#watchers.size) {
      this.#emit({ event: "down", reason: this.#why, ...this.#row(s, this.now(), null) });
    }
  }

  #emit(e: SessionEvent): void {
    for (const w of this.#watchers) {
      try {
        w(e);
      } catch (err) {
        log.debug(`session event watcher: ${err}`);
      }
    }
  }

  #countBytes(s: number, outbound: boolean, n: number): void {
    if (s >= this.#bytesOut.length) {
      const cap = Math.max(1024, this.#bytesOut.length * 2, s + 1);
      const o = new Float64Array(cap);
      o.set(this.#bytesOut);
      const i = new Float64Array(cap);
      i.set(this.#bytesIn);
      this.#bytesOut = o;
      this.#bytesIn = i;
    }
    if (outbound) this.#bytesOut[s]! += n;
    else this.#bytesIn[s]! += n;
  }

  /** Notes when slot s's packet total moved since it was last looked at. */
  #observe(s: number, packets: number, now: number): void {
    const low = packets >>> 0;
    if (this.#seenPkts[s] !== low) {
      this.#seenPkts[s] = low;
      this.#seen[s] = this.#tenths(now);
    }
  }

  /** Looks at `budget` slots' packet counts, resuming where it stopped. */
  #sample(budget: number): void {
    const t = this.table;
    const now = this.now();
    let s = this.#sampleCursor;
    for (let n = Math.min(budget, this.#hw); n > 0; n--) {
      if (s >= this.#hw) s = 0;
      if (t.isLive(s)) this.#observe(s, t.packetsOut(s) + t.packetsIn(s), now);
      s++;
    }
    this.#sampleCursor = s;
  }

  #row(s: number, now: number, counters: Map<number, SessionCounters> | null): SessionView {
    const t = this.table;
    const icmp = t.proto(s) === IPPROTO_ICMP;
    const v: SessionView = {
      proto: protoName(t.proto(s)),
      internal: `${formatIPv4(t.a(s))}:${t.pa(s)}`,
      gatewayPort: t.pg(s),
      public: `${formatIPv4(t.r(s))}:${t.p(s)}`,
      // An inbound mapping (PCP, NAT-PMP, `dpm map`) has no remote: every remote reaches it.
      remote: t.isMap(s) ? "*" : `${formatIPv4(t.x(s))}${icmp ? "" : `:${t.px(s)}`}`,
      expiresIn: Math.max(0, Math.round((t.expiresAt(s) - now) / 1000)),
      flags: [t.isMap(s) ? "map" : "", t.replaced(s) ? "replaced" : "", t.shared(s) ? "shared" : ""]
        .filter(Boolean).join(","),
      packetsOut: t.packetsOut(s),
      packetsIn: t.packetsIn(s),
      bytesOut: this.#bytesOut[s] ?? 0,
      bytesIn: this.#bytesIn[s] ?? 0,
    };
    const c = counters?.get(gatewayKey(t.proto(s), t.a(s), t.pg(s)));
    if (c) {
      v.packetsOut += c.packetsOut;
      v.packetsIn += c.packetsIn;
      v.bytesOut! += c.bytesOut;
      v.bytesIn! += c.bytesIn;
    }
    // The kernel's share of the counts is known only when read (counters).
    if (counters || this.#dp?.kind !== "kernel") this.#observe(s, v.packetsOut + v.packetsIn, now);
    const born = this.#born[s] ?? 0;
    if (born) v.age = Math.max(0, Math.round((this.#tenths(now) - born) / 10));
    const seen = this.#seen[s] ?? 0;
    if (seen) v.idle = Math.max(0, Math.round((this.#tenths(now) - seen) / 10));
    return v;
  }

  #noteRefusal(req: Request, src: number, result: number, now: number): void {
    // The cookie handshake is no refusal; forged or unverified sources are not a host's record.
    if (result === Result.COOKIE_REQUIRED || result === Result.NOT_AUTHORIZED) return;
    const request = describeRequest(req);
    const name = resultName(result);
    let r = this.#refusedBy.get(src);
    if (!r) {
      if (this.#refusedBy.size >= 65536) return;
      r = { counts: new Float64Array(RESULT_COUNT), last: { request, result: name, at: now } };
      this.#refusedBy.set(src, r);
    }
    r.counts[result]!++;
    r.last = { request, result: name, at: now };
    if (this.#watchers.size) {
      this.#emit({ event: "refused", host: formatIPv4(src), request, result: name });
    }
  }
}

function opName(req: Request): string {
  return req.op === Op.RESERVE
    ? "reserve"
    : req.op === Op.RENEW
    ? "renew"
    : req.op === Op.MAP
    ? "map"
    : "release";
}

/** `reserve udp 10.0.0.11:40000 -> 198.51.100.10:7000` (lifetime when one was asked for). */
function describeRequest(req: Request): string {
  const icmp = req.proto === IPPROTO_ICMP;
  if (req.op === Op.MAP) {
    return `map ${protoName(req.proto)} ${formatIPv4(req.internalAddr)}:${req.internalPort}` +
      (req.remotePort ? ` public port ${req.remotePort}` : "") + ` lifetime ${req.lifetime}`;
  }
  return `${opName(req)} ${protoName(req.proto)} ${
    formatIPv4(req.internalAddr)
  }:${req.internalPort}` +
    ` -> ${formatIPv4(req.remoteAddr)}${icmp ? "" : `:${req.remotePort}`}` +
    (req.lifetime ? ` lifetime ${req.lifetime}` : "");
}

/** A datagram that looks like a control request (magic, not a response): refusals of it are logged. */
function isOurs(b: Uint8Array): boolean {
  return b.length >= 4 && ((b[0]! << 8) | b[1]!) === MAGIC && (b[3]! & RESPONSE_BIT) === 0;
}

/** One table row for status output. */
export function sessionView(r: SessionRecord, now: number): SessionView {
  const icmp = r.proto === IPPROTO_ICMP;
  return {
    proto: protoName(r.proto),
    internal: `${formatIPv4(r.a)}:${r.pa}`,
    gatewayPort: r.pg,
    public: `${formatIPv4(r.r)}:${r.p}`,
    remote: `${formatIPv4(r.x)}${icmp ? "" : `:${r.px}`}`,
    expiresIn: Math.max(0, Math.round((r.expiresAt - now) / 1000)),
    flags: [r.replaced ? "replaced" : "", r.shared ? "shared" : ""].filter(Boolean).join(","),
    packetsOut: r.packetsOut,
    packetsIn: r.packetsIn,
  };
}
