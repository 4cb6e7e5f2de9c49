/**
 * Where a packet is translated at the gateway (the queue data path, and on
 * the kernel path the packets it queues: ICMP errors and hairpins).
 *
 * {@link Translator} owns the rewriting: it reads the session table, writes
 * the verdict, and counts packets and drops by reason; it decides nothing
 * about sessions (that is `core.ts`) and never reads the clock. The data
 * path hands it, through `ServerCore.handlePacket`, packets from the
 * kernel's netfilter queue (`linux/nfqueue.ts`), all in raw PREROUTING so
 * that rewritten addresses are routed as rewritten:
 *
 * - from the LAN, `a:pa -> G:Pg` (the driver already replaced X:px by G:Pg,
 *   claim 5): looked up by (proto, a, Pg), rewritten to `R:p -> X:px` (claim 6)
 *   and forwarded out (`#fromLan`); when X:px is itself a public pair of the
 *   pool (hairpinning), the packet is translated a second time, inbound, on
 *   the spot (`#hairpin`), to the session owning X:px toward R:p, else to the
 *   mapping owning X:px (delivered as `R:p -> a2:pa2`, as `#fromWan` delivers
 *   a remote's packet to a mapping);
 * - from the WAN, `X:px -> R:p`: looked up by (proto, R, p, X, px) — the remote
 *   endpoint is part of the key, which is how sessions sharing R:p are told
 *   apart (claims 8-10) — and rewritten to `G:Pg -> a:pa` (`#fromWan`);
 * - mappings (PCP/NAT-PMP MAP) and direct sessions (PCP PEER, flagged in the
 *   table): hosts without a driver. From the WAN, `X:px -> R:p` with no
 *   session of its own goes to the mapping owning `R:p`; a mapping's or a
 *   direct session's packet becomes `X:px -> a:pa` (the remote's pair kept,
 *   there is no driver to undo `G:Pg`). From the LAN, the queue data path
 *   steers exactly those packets here (`datapath/queue/server.ts`: a
 *   mapping's endpoint toward any remote, a direct session's 5-tuple only):
 *   `a:pa -> X:px` becomes `R:p -> X:px`, from the endpoint's session toward
 *   X:px, else its mapping (`#fromDirect`). A driver host's mapped endpoint
 *   works too: its first inbound packet comes through the mapping, its answer
 *   through its driver as an ordinary session on the mapping's `R:p`.
 *
 * ICMP errors are translated both ways with their quoted headers (RFC 5508).
 * Translated packets are untracked by conntrack (raw `CT --notrack`), so the
 * kernel's own NAT, which serves hosts without a driver, never touches them.
 *
 * @module
 */

import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import type { SessionTable } from "../table/table.ts";
import { Drop, IPPROTO_ICMP, PacketInfo, parse } from "../wire/packet.ts";
import { rewrite, rewriteIcmpError } from "../wire/rewrite.ts";
import { Verdict } from "../wire/meta.ts";
import { driverShareStart } from "../control/pg.ts";

const log = logger("server");

/** What the translator reads and counts into; `ServerCore` owns each of them. */
export interface TranslatorDeps {
  /** The session table (looked up, and its per-session packet counts moved). */
  table: SessionTable;
  /** The server's configuration: G (`lanAddr`) and the gateway ports are read. */
  cfg: Pick<ServerConfig, "lanAddr" | "gatewayPorts">;
  /** Drops by reason (`Drop`), counted here. */
  drops: Float64Array;
  /** Packets translated, by direction, counted here. */
  packets: { in: number; out: number; hairpin: number };
  /** Told the bytes of each translated packet, per slot and direction (the operator's view). */
  countBytes: (s: number, outbound: boolean, n: number) => void;
}

/** The gateway's packet translation, on real packet bytes, in place. */
export class Translator {
  readonly #t: SessionTable;
  readonly #cfg: Pick<ServerConfig, "lanAddr" | "gatewayPorts">;
  /** The first Pg of the drivers' share (`control/pg.ts`). */
  readonly #driverPg: number;
  readonly #drops: Float64Array;
  readonly #packets: { in: number; out: number; hairpin: number };
  readonly #countBytes: (s: number, outbound: boolean, n: number) => void;
  readonly #info = new PacketInfo();
  /** `NFQA_SKB_INFO` bits of the packet being translated (see handle). */
  #skbInfo = 0;

  constructor(deps: TranslatorDeps) {
    this.#t = deps.table;
    this.#cfg = deps.cfg;
    this.#driverPg = driverShareStart(deps.cfg.gatewayPorts);
    this.#drops = deps.drops;
    this.#packets = deps.packets;
    this.#countBytes = deps.countBytes;
  }

  /**
   * Translates one queued packet in place. Returns Verdict.MODIFIED when the
   * bytes were rewritten, ACCEPT to let it pass unchanged, DROP otherwise
   * (each drop counted by reason), HOLD for a TCP/UDP packet to a gateway
   * port of the drivers' share that no session holds yet (a first packet
   * that went ahead of its request: the caller holds it, `held.ts`). `skbInfo`: the queue's `NFQA_SKB_INFO`
   * bits for this packet (CHECKSUM_PARTIAL, GSO; see `rewrite`).
   */
  handle(pkt: Uint8Array, skbInfo = 0): number {
    this.#skbInfo = skbInfo;
    try {
      return this.#translate(pkt);
    } catch (e) {
      // A bug must cost one packet, not the gateway.
      if (this.#drops[Drop.INTERNAL_ERROR]!++ < 10) {
        log.error(`translating a packet: ${(e as Error).stack ?? e}`);
      }
      return Verdict.DROP;
    }
  }

  #translate(pkt: Uint8Array): number {
    const info = this.#info;
    const bad = parse(pkt, pkt.length, info);
    if (bad !== Drop.NONE) return this.#drop(bad);
    if (info.dst === this.#cfg.lanAddr) return this.#fromLan(pkt, info);
    if (this.#t.isPoolAddress(info.dst)) return this.#fromWan(pkt, info);
    return this.#fromDirect(pkt, info);
  }

  /**
   * A steered packet sent straight at its remote, `a:pa -> X:px` (a host
   * without a driver: its mapping's traffic, or its PCP PEER session; only
   * the queue path steers these here) → `R:p -> X:px`: the session toward
   * X:px if the endpoint has one, else its mapping. A PEER session steers
   * only its own 5-tuple, so the endpoint's packets to other remotes are
   * not queued at all (MASQUERADE takes them).
   */
  #fromDirect(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.#t;
    if (info.icmpError || info.proto === IPPROTO_ICMP) return this.#pass(Drop.NOT_OURS);
    let s = t.lookupIdentity(info.proto, info.src, info.sport, info.dst, info.dport);
    if (s < 0) s = t.lookupMapOf(info.proto, info.src, info.sport);
    if (s < 0) {
      // Steered while it had a row (the set lags by one packet at most), or
      // never steered (a PEER endpoint toward another remote is not): it is
      // untracked here, so letting it pass would leak the private pair.
      return this.#drop(Drop.NO_SESSION);
    }
    if (info.ttl <= 1) return this.#drop(Drop.TTL_EXCEEDED);
    rewrite(pkt, info, t.r(s), t.p(s), info.dst, info.dport, this.#skbInfo);
    return this.#out(s, pkt.length);
  }

  /** a:pa -> G:Pg (or an ICMP error from a about G:Pg -> a:pa) → R:p -> X:px. */
  #fromLan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.#t;
    const g = this.#cfg.lanAddr;
    if (info.icmpError) {
      if (info.innerSrc !== g || info.innerDst !== info.src) return this.#pass(Drop.NOT_OURS);
      const pg = info.innerProto === IPPROTO_ICMP ? info.innerDport : info.innerSport;
      const s = t.lookupLan(info.innerProto, info.src, pg);
      if (s < 0) return this.#drop(Drop.NO_SESSION);
      if (t.isPoolAddress(t.x(s))) {
        // Hairpinned (RFC 5508 REQ-7): the error is about a packet another
        // host's session sent to this one's public pair. Deliver it to that
        // host as if from outside: from this host's public address (an error
        // from G itself would tell the driver the server lost its session),
        // quoting its own a:pa -> G:Pg. No session there: the mapping that
        // owns X:px, whose host sent a2:pa2 -> R:p itself (as from outside).
        const s2 = t.lookupInbound(info.innerProto, t.x(s), t.px(s), t.r(s), t.p(s));
        if (s2 < 0) return this.#drop(Drop.NO_SESSION);
        const icmp = info.innerProto === IPPROTO_ICMP;
        if (t.fromRemote(s2)) this.#error(pkt, info, t.r(s), t.a(s2), t.pa(s2), t.r(s), t.p(s));
        else this.#errorToHost(pkt, info, t.r(s), s2, icmp);
        this.#packets.hairpin++;
        return Verdict.MODIFIED;
      }
      // The quoted packet was G:Pg -> a:pa; outside it was X:px -> R:p.
      this.#error(pkt, info, t.r(s), t.x(s), t.px(s), t.r(s), t.p(s));
      this.#packets.out++;
      return Verdict.MODIFIED;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    const pg = icmp ? info.sport : info.dport;
    const s = t.lookupLan(info.proto, info.src, pg);
    // A session's first packet may come ahead of its request (version 3: the
    // driver proposed Pg from its share and let the packet go): held for it.
    const ahead = !icmp && pg >= this.#driverPg && pg <= this.#cfg.gatewayPorts[1];
    if (s < 0) {
      if (ahead) return Verdict.HOLD;
      // Not a session: the gateway's own business. TCP/UDP to a gateway port get the
      // kernel's RST or port unreachable, which tells a driver whose session the
      // server lost. An echo request is a plain ping of the gateway: the kernel
      // answers it (so the gateway stays pingable from the LAN).
      return this.#pass(Drop.NOT_OURS);
    }
    if (!icmp && t.pa(s) !== info.sport) {
      // Another session of the host holds this Pg: a proposal of it would be
      // answered with another Pg, and its packet dropped anyway.
      return this.#drop(Drop.INTERNAL_PORT_MISMATCH);
    }
    if (info.ttl <= 1) return this.#drop(Drop.TTL_EXCEEDED);
    const x = t.x(s);
    const px = t.px(s);
    if (t.isPoolAddress(x)) return this.#hairpin(pkt, info, s);
    rewrite(pkt, info, t.r(s), t.p(s), x, px, this.#skbInfo);
    return this.#out(s, pkt.length);
  }

  /**
   * The remote is another session's public pair: deliver it inside,
   * translated twice. As in `#fromWan`, the session owning X:px toward R:p
   * first, else the mapping owning X:px for every remote (RFC 4787 REQ-9).
   */
  #hairpin(pkt: Uint8Array, info: PacketInfo, s: number): number {
    const t = this.#t;
    const icmp = info.proto === IPPROTO_ICMP;
    const s2 = t.lookupInbound(info.proto, t.x(s), t.px(s), t.r(s), t.p(s));
    if (s2 < 0) return this.#drop(Drop.NO_SESSION);
    if (t.fromRemote(s2)) {
      // A mapping or a direct session (no driver to undo G:Pg): from s's public pair R:p
      // itself, as a packet from outside would come.
      rewrite(pkt, info, t.r(s), t.p(s), t.a(s2), t.pa(s2), this.#skbInfo);
    } else {
      // Seen from s2's host, the packet comes from s's public pair R:p to its own G:Pg.
      this.#toHost(pkt, info, s2, icmp);
    }
    t.count(s, true);
    t.count(s2, false);
    this.#countBytes(s, true, pkt.length);
    this.#countBytes(s2, false, pkt.length);
    this.#packets.hairpin++;
    return Verdict.MODIFIED;
  }

  /** X:px -> R:p (or an ICMP error about R:p -> X:px) → G:Pg -> a:pa. */
  #fromWan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.#t;
    if (info.icmpError) {
      const s = t.lookupInbound(
        info.innerProto,
        info.innerSrc,
        info.innerSport,
        info.innerDst,
        info.innerDport,
      );
      if (s < 0) return this.#drop(Drop.NO_SESSION);
      if (t.fromRemote(s)) {
        // A mapping's or a direct session's host sent a:pa -> X:px itself.
        this.#error(pkt, info, info.src, t.a(s), t.pa(s), info.innerDst, info.innerDport);
      } else {
        // Outside, the quoted packet was R:p -> X:px; on the LAN it was a:pa -> G:Pg
        // (ICMP echo: a with identifier Pg -> G). The reporting router keeps its address.
        this.#errorToHost(pkt, info, info.src, s, info.innerProto === IPPROTO_ICMP);
      }
      return this.#in(s, pkt.length);
    }
    // The remote's own session first; else the mapping that owns R:p for every remote.
    const s = t.lookupInbound(info.proto, info.dst, info.dport, info.src, info.sport);
    if (s < 0) return this.#drop(Drop.NO_SESSION);
    if (info.ttl <= 1) return this.#drop(Drop.TTL_EXCEEDED);
    const icmp = info.proto === IPPROTO_ICMP;
    // A mapping or a direct session (no driver to undo G:Pg): X:px -> a:pa, the remote's own pair.
    if (t.fromRemote(s)) rewrite(pkt, info, info.src, info.sport, t.a(s), t.pa(s), this.#skbInfo);
    else this.#toHost(pkt, info, s, icmp);
    return this.#in(s, pkt.length);
  }

  /** Counts a packet dropped for `reason`: DROP. */
  #drop(reason: number): number {
    this.#drops[reason]!++;
    return Verdict.DROP;
  }

  /** Counts a packet that is not dpm's (`reason`) and lets it pass untouched: ACCEPT. */
  #pass(reason: number): number {
    this.#drops[reason]!++;
    return Verdict.ACCEPT;
  }

  /** Counts a packet of session `s` translated toward the WAN (`n` bytes): MODIFIED. */
  #out(s: number, n: number): number {
    this.#t.count(s, true);
    this.#countBytes(s, true, n);
    this.#packets.out++;
    return Verdict.MODIFIED;
  }

  /** Counts a packet of session `s` translated toward its host (`n` bytes): MODIFIED. */
  #in(s: number, n: number): number {
    this.#t.count(s, false);
    this.#countBytes(s, false, n);
    this.#packets.in++;
    return Verdict.MODIFIED;
  }

  /**
   * Rewrites a packet to session `s`'s host as its driver expects it:
   * `G:Pg -> a:pa` (an echo: identifier Pg, from G).
   */
  #toHost(pkt: Uint8Array, info: PacketInfo, s: number, icmp: boolean): void {
    const t = this.#t;
    const pg = t.pg(s);
    rewrite(
      pkt,
      info,
      this.#cfg.lanAddr,
      icmp ? 0 : pg,
      t.a(s),
      icmp ? pg : t.pa(s),
      this.#skbInfo,
    );
  }

  /**
   * Rewrites an ICMP error to come from `from` to `to`, quoting the packet
   * `to` sent: `to:toPort -> dst:dport`.
   */
  #error(
    pkt: Uint8Array,
    info: PacketInfo,
    from: number,
    to: number,
    toPort: number,
    dst: number,
    dport: number,
  ): void {
    rewriteIcmpError(pkt, info, {
      outerSrc: from,
      outerDst: to,
      innerSrc: to,
      innerSport: toPort,
      innerDst: dst,
      innerDport: dport,
    }, this.#skbInfo);
  }

  /**
   * Rewrites an ICMP error to come from `from` to session `s`'s host,
   * quoting what the host sent as it left it: `a:pa -> G:Pg` (an echo:
   * identifier Pg, to G).
   */
  #errorToHost(pkt: Uint8Array, info: PacketInfo, from: number, s: number, icmp: boolean): void {
    const t = this.#t;
    const pg = t.pg(s);
    this.#error(pkt, info, from, t.a(s), icmp ? pg : t.pa(s), this.#cfg.lanAddr, icmp ? 0 : pg);
  }
}
