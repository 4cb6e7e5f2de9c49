/**
 * What becomes of the packets the gateway's data path hands up, and of the
 * first packets that came ahead of their request (`held.ts`).
 *
 * Theory of operation. A packet the path hands up is the translator's
 * (`translate.ts`), unless it is a first packet: a new flow to `G:Pg` that
 * the kernel's maps missed (`Meta.MISSED`, the kernel paths' hold rule) or a
 * queue-path packet the translator found no session for (HOLD). Such a
 * packet is held ({@linkcode FirstPackets.handle}) until the control
 * protocol decided its key; after the turn's commit
 * ({@linkcode FirstPackets.release}) the packets of a grant go on (on a path
 * that `kernelTranslates`, unchanged: the kernel's maps translate them now;
 * a hairpin and every packet of the queue path through the translator), the
 * others are dropped. Packets whose request never came are dropped and
 * their host told port unreachable ({@linkcode FirstPackets.expire}).
 *
 * @module
 */

import type { SessionTable } from "../table/table.ts";
import { Drop, IPPROTO_ICMP, PacketInfo, parse } from "../wire/packet.ts";
import { Meta, Verdict } from "../wire/meta.ts";
import { buildIcmpError } from "../wire/icmp.ts";
import type { ServerDataPath } from "../datapath/datapath.ts";
import type { Translator } from "./translate.ts";
import type { HeldPacket, HeldPackets } from "./held.ts";

/** What the first packets need of the server core. */
export interface FirstPacketsContext {
  table: SessionTable;
  held: HeldPackets;
  translator: Translator;
  /** The core's drop counters, by reason. */
  drops: Float64Array;
  /** The data path (null: detached, or none in tests): its `io` gives the later verdicts. */
  dp(): ServerDataPath | null;
  now(): number;
  /**
   * `--workers`: a held packet whose session another worker's table holds
   * (the main thread holds every first packet) is handed to that worker,
   * which translates it (a hairpin) or lets it go, and answers its verdict;
   * true when handed. Absent: every session is this core's.
   */
  elsewhere?(h: Pick<HeldPacket, "id" | "bytes" | "skbInfo" | "a">): boolean;
}

/** The server's handling of handed-up packets and of held first packets. */
export class FirstPackets {
  readonly #c: FirstPacketsContext;
  readonly #info = new PacketInfo();

  constructor(ctx: FirstPacketsContext) {
    this.#c = ctx;
  }

  /**
   * One packet the data path handed up (see `ServerCore.handlePacket`):
   * translated, or held for its request (HOLD; `id` is its queue id).
   */
  handle(pkt: Uint8Array, skbInfo: number, id: number): number {
    if ((skbInfo & Meta.MISSED) !== 0) return this.#missed(pkt, skbInfo & ~Meta.MISSED, id);
    const v = this.#c.translator.handle(pkt, skbInfo);
    return v === Verdict.HOLD ? this.#hold(pkt, skbInfo, id) : v;
  }

  /**
   * A new flow to `G:Pg` that the kernel's maps did not know (the kernel
   * path's hold rule): granted and committed since, it goes on (the kernel
   * translates it now; a hairpin is the translator's); else it waits for
   * its request.
   */
  #missed(pkt: Uint8Array, skbInfo: number, id: number): number {
    const info = this.#info;
    if (
      parse(pkt, pkt.length, info) !== Drop.NONE || info.icmpError || info.proto === IPPROTO_ICMP
    ) {
      return Verdict.ACCEPT;
    }
    const t = this.#c.table;
    const s = t.lookupLan(info.proto, info.src, info.dport);
    if (s >= 0 && t.pa(s) === info.sport) {
      return t.isPoolAddress(t.x(s)) ? this.#c.translator.handle(pkt, skbInfo) : Verdict.ACCEPT;
    }
    return this.#hold(pkt, skbInfo, id);
  }

  /** Holds a first packet for its request (`held.ts`); DROP when it cannot be held. */
  #hold(pkt: Uint8Array, skbInfo: number, id: number): number {
    const io = this.#c.dp()?.io ?? null;
    const info = this.#info;
    if (id < 0 || io === null || parse(pkt, pkt.length, info) !== Drop.NONE) {
      this.#c.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    const p = {
      id,
      bytes: pkt.slice(),
      skbInfo,
      proto: info.proto,
      a: info.src,
      pa: info.sport,
      pg: info.dport,
    };
    const r = this.#c.held.hold(
      p,
      this.#c.now(),
      (old) => {
        this.#c.drops[Drop.HELD_OVERFLOW]!++;
        io.verdict(old.id, Verdict.DROP);
      },
    );
    if (r === "hold") return Verdict.HOLD;
    // Granted and committed already, but not in this table: another worker's session.
    if (r === "go") return this.#c.elsewhere?.(p) ? Verdict.HOLD : Verdict.ACCEPT;
    this.#c.drops[r === "refused" ? Drop.REFUSED : Drop.HELD_OVERFLOW]!++;
    return Verdict.DROP;
  }

  /**
   * The held packets whose request was answered (and committed): those of a
   * grant go on, the others are dropped. The server runs it after the
   * turn's commit.
   */
  release(): void {
    const dp = this.#c.dp();
    const io = dp?.io ?? null;
    if (io === null || this.#c.held.size === 0) return;
    const kernel = dp!.can.kernelTranslates;
    const t = this.#c.table;
    let any = false;
    this.#c.held.take((h) => {
      any = true;
      const s = t.lookupLan(h.proto, h.a, h.pg);
      if (s < 0 && this.#c.elsewhere?.(h)) return;
      if (kernel && !(s >= 0 && t.isPoolAddress(t.x(s)))) {
        io.verdict(h.id, Verdict.ACCEPT);
        return;
      }
      const v = this.#c.translator.handle(h.bytes, h.skbInfo);
      if (v === Verdict.MODIFIED) io.verdict(h.id, Verdict.MODIFIED, h.bytes);
      else io.verdict(h.id, v === Verdict.ACCEPT ? Verdict.ACCEPT : Verdict.DROP);
    }, (h) => {
      any = true;
      this.#c.drops[Drop.REFUSED]!++;
      io.verdict(h.id, Verdict.DROP);
    });
    if (any) io.flush();
  }

  /**
   * Held packets whose request never came: dropped, and the host told port
   * unreachable from `G:Pg`, as the gateway's own stack would have answered
   * (a driver that lost the session reserves it again).
   */
  expire(now: number): void {
    const io = this.#c.dp()?.io ?? null;
    // With nothing held the sweep still forgets old decisions (`rememberGrants`).
    if (io === null) return;
    let any = false;
    const info = this.#info;
    this.#c.held.sweep(now, (h: HeldPacket) => {
      any = true;
      this.#c.drops[Drop.NO_SESSION]!++;
      io.verdict(h.id, Verdict.DROP);
      if (parse(h.bytes, h.bytes.length, info) !== Drop.NONE) return;
      const err = buildIcmpError(h.bytes, info, 3, 3);
      if (err) io.send(err, err.length, h.a);
    });
    if (any) io.flush();
  }
}
