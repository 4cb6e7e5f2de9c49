/**
 * Giving sessions back to the server (RELEASE), and asking again when the
 * server did not answer or was rate limiting: a release that gets no answer
 * is retried `RELEASE_TRIES` times, `RETRY_SOON_MS` apart, unless the host
 * reserved the same session again meanwhile (then it is the server's again).
 * Without any answer the server holds the session until its lease ends.
 *
 * @module
 */

import { ControlTimeout } from "../control/client.ts";
import { Op, type Response } from "../control/proto.ts";
import { Result } from "../control/result.ts";
import { type HostSession, type HostSessions, State } from "./session.ts";
import { RELEASE_TRIES, RETRY_SOON_MS } from "./timers.ts";

/** What the releases need from the lease client. */
export interface ReleasesContext {
  /** Sends one request about `s`. */
  send(s: HostSession, op: number): Promise<Response>;
  sessions: HostSessions;
  now(): number;
  /** Told of each release the server confirmed (or had nothing to release). */
  released(s: HostSession): void;
}

/** The releases of one driver, and those to ask again. */
export class Releases {
  readonly #c: ReleasesContext;
  #later: { s: HostSession; at: number; tries: number }[] = [];

  constructor(ctx: ReleasesContext) {
    this.#c = ctx;
  }

  /** Releases `s` at the server; resolves when answered or given up (never rejects). */
  send(s: HostSession, tries = 0): Promise<void> {
    const c = this.#c;
    const again = () => this.#later.push({ s, at: c.now() + RETRY_SOON_MS, tries: tries + 1 });
    return c.send(s, Op.RELEASE).then((res) => {
      if (res.result === Result.OK || res.result === Result.NO_SUCH_SESSION) c.released(s);
      else if (res.result === Result.RATE_LIMITED && tries < RELEASE_TRIES) again();
    }).catch((e) => {
      // Unanswered: ask again later, or the server holds it until its lease ends.
      if (e instanceof ControlTimeout && tries < RELEASE_TRIES) again();
    });
  }

  /** Asks again the releases that are due (call from the periodic tick). */
  retry(now: number): void {
    if (this.#later.length === 0) return;
    const due = this.#later.filter((r) => r.at <= now);
    if (due.length === 0) return;
    this.#later = this.#later.filter((r) => r.at > now);
    for (const r of due) {
      // Reserved again here meanwhile: that session is the server's again.
      const cur = this.#c.sessions.get(r.s.proto, r.s.a, r.s.pa, r.s.x, r.s.px);
      if (cur && cur.state !== State.BYPASS) continue;
      this.send(r.s, r.tries);
    }
  }
}
