/**
 * Where a host's packet is translated: the packets the data path hands up
 * (`DriverDataPath`: the queue path every packet of a session, the kernel
 * path the first packet of each new conntrack and ICMP), in both directions.
 *
 * Theory of operation. Outbound (`a:pa -> X:px`, raw OUTPUT): a packet of an
 * active session goes on rewritten to `G:Pg` (claim 5; the data path does
 * it, or lets the kernel); the first packet of a new session is held while
 * the lease client (`leases.ts`) asks the server, and let go on the answer
 * ({@linkcode HostTranslator.settleHeld}): rewritten when granted, dropped
 * with an ICMP "administratively prohibited" to the application when
 * refused, untranslated when the server never answered. Inbound (from G,
 * raw PREROUTING): `G:Pg -> a:pa` is restored to `X:px -> a:pa` before the
 * application sees it. ICMP errors are translated with their quoted headers
 * both ways (RFC 5508); an ICMP "port unreachable" from G itself means the
 * server lost the session, which is then reserved again.
 *
 * The short names (`a`, `pa`, `X`, `px`, `G`, `Pg`) are those of the packet
 * walk in docs/datapath.md.
 *
 * @module
 */

import { type Cidr, cidrContains } from "../wire/addr.ts";
import { logger } from "../runtime/log.ts";
import { Drop, IPPROTO_ICMP, IPPROTO_TCP, PacketInfo, parse } from "../wire/packet.ts";
import { rewrite, rewriteIcmpError, rewriteToGateway } from "../wire/rewrite.ts";
import type { DriverDataPath, PacketIO } from "../datapath/datapath.ts";
import { Verdict, type VerdictValue } from "../wire/meta.ts";
import { describeSession } from "../wire/tuple.ts";
import { buildIcmpError } from "../wire/icmp.ts";
import {
  CLOSE_FIN_IN,
  CLOSE_FIN_OUT,
  type HostSession,
  type HostSessions,
  State,
  tcpClose,
} from "./session.ts";

const log = logger("driver");

/** The sequence number of a TCP packet (its first packet's is the connection's ISN). */
function tcpSeq(pkt: Uint8Array, info: PacketInfo): number {
  const o = info.l4 + 4;
  return ((pkt[o]! << 24) | (pkt[o + 1]! << 16) | (pkt[o + 2]! << 8) | pkt[o + 3]!) >>> 0;
}

/** Packets held per session while its reservation is on its way. */
export const MAX_HELD_PER_SESSION = 64;
/** Packets held at most in all. */
export const MAX_HELD_TOTAL = 8192;

/** What the translator needs from the driver's core. */
export interface TranslatorContext {
  /** The gateway's LAN address G. */
  g: number;
  /** The host's LAN prefix: destinations inside it are not translated. */
  lan: Cidr;
  sessions: HostSessions;
  now(): number;
  /** The data path and its packet I/O (null: detached, or tests of the core alone). */
  dp(): DriverDataPath | null;
  io(): PacketIO | null;
  /** Counters shared with the core: translated packets each way, bypassed ones. */
  counters: { out: number; in: number; bypassed: number };
  /** Drops by reason (`Drop`). */
  drops: Float64Array;
  /** A new session of a first packet (PENDING, indexed). */
  newSession(proto: number, a: number, pa: number, x: number, px: number): HostSession;
  /**
   * Asks the server for new session `s`; when it proposes its gateway port,
   * `s.pg` is set and `s` programmed on return (its packets are translated
   * from now on, once committed).
   */
  reserve(s: HostSession): void;
  /**
   * A packet of `s` (queue id `id`) while `s` waits for this turn's commit:
   * its verdict comes at the end of the turn. Returns Verdict.HOLD.
   */
  waitForCommit(s: HostSession, id: number): number;
  /** Whether `s`'s packets may go now (false: programmed in this turn, not committed yet). */
  committed(s: HostSession): boolean;
  /** The server lost `s`: ask again. */
  reserveAgain(s: HostSession): void;
}

/** The host's packet translation (no sockets: tests call `handle` with bytes). */
export class HostTranslator {
  readonly #c: TranslatorContext;
  readonly #info = new PacketInfo();
  /** `NFQA_SKB_INFO` bits of the packet being handled (see handle). */
  #skbInfo = 0;
  /** Packets held now, all sessions. */
  heldTotal = 0;

  constructor(ctx: TranslatorContext) {
    this.#c = ctx;
  }

  /**
   * Handles one packet; `outbound` is true for raw OUTPUT. Returns a Verdict;
   * HOLD means a copy is kept and the verdict comes later (`settleHeld`).
   * `skbInfo`: the queue's `NFQA_SKB_INFO` bits (CHECKSUM_PARTIAL, GSO; see
   * `rewrite`), kept with a held copy.
   */
  handle(pkt: Uint8Array, id: number, outbound: boolean, skbInfo = 0): number {
    this.#skbInfo = skbInfo;
    try {
      const info = this.#info;
      const bad = parse(pkt, pkt.length, info);
      if (bad !== Drop.NONE) {
        // Not something dpm translates; the host's own stack decides.
        this.#c.drops[bad]!++;
        return Verdict.ACCEPT;
      }
      return outbound ? this.#outbound(pkt, id, info) : this.#inbound(pkt, info);
    } catch (e) {
      // A bug must cost one packet, not the host's connectivity: let it pass as it is.
      if (this.#c.drops[Drop.INTERNAL_ERROR]!++ < 10) {
        log.error(`handling a packet: ${(e as Error).stack ?? e}`);
      }
      return Verdict.ACCEPT;
    }
  }

  #outbound(pkt: Uint8Array, id: number, info: PacketInfo): number {
    const c = this.#c;
    const g = c.g;
    if (info.icmpError) {
      // The host reports an error about a packet X:px -> a:pa it received.
      const s = c.sessions.get(
        info.innerProto,
        info.innerDst,
        info.innerDport,
        info.innerSrc,
        info.innerSport,
      );
      if (!s || s.state !== State.ACTIVE) return Verdict.ACCEPT;
      const icmp = s.proto === IPPROTO_ICMP;
      rewriteIcmpError(pkt, info, {
        outerSrc: info.src,
        outerDst: g,
        innerSrc: g,
        innerSport: icmp ? 0 : s.pg,
        innerDst: s.a,
        innerDport: icmp ? s.pg : s.pa,
      }, this.#skbInfo);
      return Verdict.MODIFIED;
    }
    if (cidrContains(c.lan, info.dst)) return Verdict.ACCEPT;
    const s = c.sessions.get(info.proto, info.src, info.sport, info.dst, info.dport);
    if (s) {
      s.lastUsed = c.now();
      switch (s.state) {
        case State.ACTIVE:
          s.busy = true;
          if (info.proto === IPPROTO_TCP) s.closing = tcpClose(pkt, info, s.closing, CLOSE_FIN_OUT);
          c.counters.out++;
          // Moved to another Pg in this turn: the kernel knows it at the turn's commit.
          if (!c.committed(s)) return c.waitForCommit(s, id);
          // The data path rewrites it here (queue), or lets it go on to the
          // kernel's translation (a new conntrack of a session the kernel
          // already translates: the previous one expired, or a retransmitted SYN).
          return this.#toGateway(pkt, info, s.pg, this.#skbInfo);
        case State.PENDING:
          // Proposed its Pg: translated already (the gateway holds it until the grant).
          if (s.pg !== 0 && s.programmed === s.pg) return this.#proposed(s, pkt, info, id);
          return this.#hold(s, pkt, id);
        case State.REFUSED:
          c.drops[Drop.REFUSED]!++;
          this.#refuse(pkt, info);
          return Verdict.DROP;
        default:
          c.counters.bypassed++;
          return Verdict.ACCEPT;
      }
    }
    const fresh = c.newSession(info.proto, info.src, info.sport, info.dst, info.dport);
    if (info.proto === IPPROTO_TCP) fresh.isn = tcpSeq(pkt, info);
    c.reserve(fresh);
    if (fresh.pg !== 0 && fresh.programmed === fresh.pg) {
      return this.#proposed(fresh, pkt, info, id);
    }
    return this.#hold(fresh, pkt, id);
  }

  /**
   * A packet of a session that proposed its gateway port: on its way to
   * `G:Pg` now, or at the end of the turn once the data path committed the
   * session (the kernel translates it from what was committed).
   */
  #proposed(s: HostSession, pkt: Uint8Array, info: PacketInfo, id: number): number {
    const c = this.#c;
    s.busy = true;
    c.counters.out++;
    if (!c.committed(s)) return c.waitForCommit(s, id);
    return this.#toGateway(pkt, info, s.pg, this.#skbInfo);
  }

  #inbound(pkt: Uint8Array, info: PacketInfo): number {
    const c = this.#c;
    const g = c.g;
    if (info.icmpError) {
      // Quoted: a:pa -> G:Pg as it crossed the LAN (ICMP echo: a, id Pg -> G).
      if (info.innerDst !== g) return Verdict.ACCEPT;
      const icmp = info.innerProto === IPPROTO_ICMP;
      const s = c.sessions.byPg(
        info.innerProto,
        info.innerSrc,
        icmp ? info.innerSport : info.innerDport,
      );
      if (!s || (!icmp && s.pa !== info.innerSport)) return Verdict.ACCEPT;
      if (info.src === g && info.icmpType === 3) {
        // The gateway itself says nothing listens on G:Pg: the server lost the session.
        log.info(`server forgot ${describeSession(s)}; reserving again`);
        c.reserveAgain(s);
        c.drops[Drop.NO_SESSION]!++;
        return Verdict.DROP;
      }
      rewriteIcmpError(pkt, info, {
        outerSrc: info.src,
        outerDst: s.a,
        innerSrc: s.a,
        innerSport: s.pa,
        innerDst: s.x,
        innerDport: s.px,
      }, this.#skbInfo);
      c.counters.in++;
      return Verdict.MODIFIED;
    }
    if (info.src !== g) return Verdict.ACCEPT;
    const icmp = info.proto === IPPROTO_ICMP;
    const s = c.sessions.byPg(info.proto, info.dst, icmp ? info.dport : info.sport);
    // A session whose proposed Pg is programmed is translated inbound before
    // its answer arrives, as the kernel path's maps do: the gateway sends from
    // G:Pg only once it granted that Pg, and its answer may come after the
    // remote's reply (a TCP SYN-ACK).
    const live = s !== undefined &&
      (s.state === State.ACTIVE ||
        (s.state === State.PENDING && s.pg !== 0 && s.programmed === s.pg));
    if (!live || (!icmp && s.pa !== info.dport)) {
      c.drops[Drop.NO_SESSION]!++;
      return Verdict.ACCEPT;
    }
    s.busy = true;
    s.lastUsed = c.now();
    if (info.proto === IPPROTO_TCP) s.closing = tcpClose(pkt, info, s.closing, CLOSE_FIN_IN);
    rewrite(pkt, info, s.x, icmp ? 0 : s.px, s.a, s.pa, this.#skbInfo);
    c.counters.in++;
    return Verdict.MODIFIED;
  }

  #hold(s: HostSession, pkt: Uint8Array, id: number): number {
    const held = s.held ??= [];
    if (held.length >= MAX_HELD_PER_SESSION || this.heldTotal >= MAX_HELD_TOTAL) {
      this.#c.drops[Drop.HELD_OVERFLOW]!++;
      return Verdict.DROP;
    }
    held.push({ id, bytes: pkt.slice(), skbInfo: this.#skbInfo });
    this.heldTotal++;
    return Verdict.HOLD;
  }

  /**
   * Gives the verdicts for the held packets of `s`: MODIFIED (granted: each
   * goes on to `G:Pg`), DROP (refused: the application is told), ACCEPT
   * (no answer: untranslated, ordinary NAT serves it).
   */
  settleHeld(s: HostSession, how: VerdictValue): void {
    const c = this.#c;
    const q = c.io();
    const held = s.held;
    s.held = null;
    if (!held) return;
    this.heldTotal -= held.length;
    if (!q || held.length === 0) return;
    const info = this.#info;
    for (const h of held) {
      if (how === Verdict.MODIFIED) {
        if (parse(h.bytes, h.bytes.length, info) !== Drop.NONE) {
          q.verdict(h.id, Verdict.ACCEPT);
          continue;
        }
        c.counters.out++;
        const v = this.#toGateway(h.bytes, info, s.pg, h.skbInfo);
        q.verdict(h.id, v, v === Verdict.MODIFIED ? h.bytes : undefined);
      } else if (how === Verdict.DROP) {
        if (parse(h.bytes, h.bytes.length, info) === Drop.NONE) this.#refuse(h.bytes, info);
        q.verdict(h.id, Verdict.DROP);
      } else {
        q.verdict(h.id, Verdict.ACCEPT);
      }
    }
    q.flush();
  }

  /**
   * An outbound packet of an active session on its way (claim 5): the data
   * path rewrites it to `G:Pg` or lets the kernel do it; without one (tests
   * of the core alone), rewritten here.
   */
  #toGateway(pkt: Uint8Array, info: PacketInfo, pg: number, skbInfo: number): VerdictValue {
    const dp = this.#c.dp();
    return dp
      ? dp.outbound(pkt, info, this.#c.g, pg, skbInfo)
      : rewriteToGateway(pkt, info, this.#c.g, pg, skbInfo);
  }

  /**
   * Tells the application that session `s` was refused after its first
   * packet left (it had proposed its gateway port, and the gateway dropped
   * that packet): ICMP "administratively prohibited" quoting the headers the
   * application sent (addresses, ports, and for TCP the first packet's
   * sequence number, which the application's stack checks).
   */
  refuseSession(s: HostSession): void {
    const tcp = s.proto === IPPROTO_TCP;
    // The headers of the first packet as the application sent it (IPv4, then
    // UDP, or TCP with its SYN's sequence number), without payload.
    const q = new Uint8Array(tcp ? 40 : 28);
    const v = new DataView(q.buffer);
    v.setUint8(0, 0x45);
    v.setUint16(2, q.length);
    v.setUint8(8, 64);
    v.setUint8(9, s.proto);
    v.setUint32(12, s.a);
    v.setUint32(16, s.x);
    v.setUint16(20, s.pa);
    v.setUint16(22, s.px);
    if (tcp) {
      v.setUint32(24, s.isn >>> 0);
      v.setUint8(32, 5 << 4);
      v.setUint8(33, 0x02); // SYN
    } else v.setUint16(24, 8);
    const info = this.#info;
    if (parse(q, q.length, info) !== Drop.NONE) return;
    this.#refuse(q, info);
  }

  /** Tells the application its session was refused: ICMP type 3 code 13 (communication administratively prohibited). */
  #refuse(pkt: Uint8Array, info: PacketInfo): void {
    const q = this.#c.io();
    if (!q) return;
    const err = buildIcmpError(pkt, info, 3, 13);
    if (err) q.send(err, err.length, info.src);
  }
}
