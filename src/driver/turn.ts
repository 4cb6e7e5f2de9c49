/**
 * One turn of the driver's event loop: what its packets asked of the data
 * path, committed together before the turn's first packets go.
 *
 * Theory of operation. A session granted (or proposed) in a turn is
 * programmed at once ({@linkcode Turn.program}: `sessionUp`), but the data
 * path applies it only at {@linkcode Turn.end}, in one transaction with the
 * turn's other sessions. On a path that `commitsFirst` (the kernel
 * translates from what was committed), the packets of those sessions wait
 * for that commit: the ones the queue handed up are given their verdict
 * then ({@linkcode Turn.waitForCommit}), and the held packets of a session
 * granted in the turn go after it ({@linkcode Turn.settleWhenCommitted}).
 * The turn ends by itself, as a microtask of the turn that queued work; the
 * driver core also ends it when a burst filled it ({@linkcode Turn.size}).
 *
 * @module
 */

import type { DriverDataPath, HostSessionKey, PacketIO } from "../datapath/datapath.ts";
import { Verdict, type VerdictValue } from "../wire/meta.ts";
import type { HostSession } from "./session.ts";

/** What a turn needs of the driver core. */
export interface TurnContext {
  /** The gateway `G` (every session key's). */
  g: number;
  dp(): DriverDataPath | null;
  io(): PacketIO | null;
  /** Sends the turn's control requests (they go ahead of the turn's first packets). */
  flush(): void;
  /** Lets `s`'s held packets go with `verdict` (`translate.ts`). */
  settleHeld(s: HostSession, verdict: VerdictValue): void;
}

/** The sessions, packets and held packets of the current turn. */
export class Turn {
  readonly #c: TurnContext;
  /** Sessions programmed in this turn: their packets wait for the turn's commit. */
  readonly #sessions = new Set<HostSession>();
  /** Packets (queue ids) of those sessions, and each one's session, for the turn's end. */
  readonly #ids: number[] = [];
  readonly #of: HostSession[] = [];
  /** Sessions granted in this turn whose held packets go after the turn's commit. */
  readonly #settleAfter: HostSession[] = [];
  #queued = false;

  constructor(ctx: TurnContext) {
    this.#c = ctx;
  }

  /** Sessions programmed in this turn so far. */
  get size(): number {
    return this.#sessions.size;
  }

  /** `s` as the data path keys it, at gateway port `pg`. */
  key(s: HostSession, pg: number): HostSessionKey {
    return { proto: s.proto, a: s.a, pa: s.pa, x: s.x, px: s.px, g: this.#c.g, pg };
  }

  /** Tells the data path about an active session (again, if its gateway port changed). */
  program(s: HostSession): void {
    const dp = this.#c.dp();
    if (!dp || s.programmed === s.pg) return;
    this.unprogram(s);
    dp.sessionUp(this.key(s, s.pg));
    s.programmed = s.pg;
    // Committed at the end of the turn; its packets wait for that (`committed`).
    this.#sessions.add(s);
    this.ends();
  }

  /** Tells the data path that `s` is no longer translated at the port it was programmed with. */
  unprogram(s: HostSession): void {
    const dp = this.#c.dp();
    if (!dp || s.programmed === 0) return;
    dp.sessionDown(this.key(s, s.programmed));
    s.programmed = 0;
  }

  /**
   * A packet (queue id `id`) of `s`, programmed in this turn: it goes at the
   * end of the turn, once the data path committed `s` (kernel path; the
   * queue path rewrites it at once). Returns the verdict for now.
   */
  waitForCommit(s: HostSession, id: number): number {
    this.#ids.push(id);
    this.#of.push(s);
    this.ends();
    return Verdict.HOLD;
  }

  /** Whether `s`'s packets may go now (false: programmed in this turn, not committed yet). */
  committed(s: HostSession): boolean {
    return !this.#c.dp()?.can.commitsFirst || !this.#sessions.has(s);
  }

  /** `s` was granted: its held packets go now if it is committed, else at the turn's end. */
  settleWhenCommitted(s: HostSession): void {
    if (this.committed(s)) this.#c.settleHeld(s, Verdict.MODIFIED);
    else {
      this.#settleAfter.push(s);
      this.ends();
    }
  }

  /** The end of this turn is scheduled (`end` runs once, as a microtask). */
  ends(): void {
    if (this.#queued) return;
    this.#queued = true;
    queueMicrotask(() => this.end());
  }

  /**
   * The end of a turn of the event loop: the turn's requests leave (the
   * request goes ahead of its first packet), the data path commits the
   * turn's sessions in one transaction, then the packets that waited for it
   * go (the map translates them now) and those of sessions granted this
   * turn (held until the grant). Callable any time.
   */
  end(): void {
    this.#queued = false;
    this.#c.flush();
    this.#c.dp()?.commit();
    this.#sessions.clear();
    const io = this.#c.io();
    const ids = this.#ids;
    const of = this.#of;
    if (ids.length > 0 && io) {
      for (let i = 0; i < ids.length; i++) {
        const s = of[i]!;
        // Programmed still (not refused meanwhile): the map translates it; else as refused.
        io.verdict(ids[i]!, s.programmed !== 0 ? Verdict.ACCEPT : Verdict.DROP);
      }
      io.flush();
    }
    ids.length = 0;
    of.length = 0;
    if (this.#settleAfter.length > 0) {
      for (const s of this.#settleAfter) this.#c.settleHeld(s, Verdict.MODIFIED);
      this.#settleAfter.length = 0;
    }
  }
}
