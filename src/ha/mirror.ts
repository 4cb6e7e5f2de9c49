/**
 * The standby's mirror (docs/ha.md, "How dpm's table reaches the
 * standby"): the session table rebuilt from the conntrack entries
 * conntrackd replicates into this box's kernel.
 *
 * On the kernel path a dpm session with traffic is one conntrack: original
 * `a:pa -> G:Pg`, reply `X:px -> R:p` (R in the pool). Both tuples together
 * name everything the table and the maps hold of it, so the standby reads
 * each replica back into a session ({@linkcode sessionOfEntry}) and keeps
 * its table, hence its nftables maps (the data path is attached to the
 * table as on the active), current:
 *
 * - `new` and `update` events put the session in the table, or extend its
 *   lease (the active refreshes the timeouts of live sessions, each refresh
 *   arrives here as an update);
 * - a `destroy` event takes it out (the active released it or its
 *   conntrack expired there, and conntrackd replicated the deletion; or the
 *   replica expired here);
 * - a full dump ({@linkcode Mirror.reconcile}: at start, after lost events,
 *   before a takeover, and periodically) makes the table exactly the set of
 *   replicated sessions.
 *
 * On the standby the table holds nothing else: reservations without
 * traffic and mappings come back at the takeover, when drivers and PCP
 * clients see the new epoch. The table's lease clock keeps running: a
 * mirrored session that nothing refreshes for a whole lease expires as any
 * other.
 *
 * The table behind a {@linkcode MirrorTarget} (`tableTarget`) is the seam: a
 * fake records the calls in the unit test.
 *
 * @module
 */

import { IPPROTO_TCP, IPPROTO_UDP } from "../wire/meta.ts";
import { describeSession, identityKey } from "../wire/tuple.ts";
import { formatIPv4 } from "../wire/addr.ts";
import type { GatewaySession } from "../datapath/datapath.ts";
import type { SessionTable } from "../table/table.ts";
import { DropLog, kernelRecord, restoreRecord } from "../server/restore.ts";

/** One direction of a conntrack, as linux/conntrack.ts decodes it (host order). */
export interface CtTupleView {
  proto: number;
  src: number;
  dst: number;
  sport: number;
  dport: number;
}

/** What the mirror reads of a conntrack entry (linux/conntrack.ts `CtEntry` has it). */
export interface CtEntryView {
  orig: CtTupleView;
  reply: CtTupleView;
}

/** What a conntrack event says happened (linux/conntrack.ts `CtEventKind`). */
export type CtEventKind = "new" | "update" | "destroy";

/**
 * The dpm session a conntrack entry holds, or null when it is none of dpm's:
 * TCP or UDP, original destination `g`, reply destination in `pool`, and
 * not a hairpin (X in the pool: those stay on the queue translator, which
 * keeps no conntrack of the first leg's pair).
 */
export function sessionOfEntry(
  e: CtEntryView,
  g: number,
  pool: ReadonlySet<number>,
): GatewaySession | null {
  const o = e.orig;
  const r = e.reply;
  if (o.proto !== IPPROTO_TCP && o.proto !== IPPROTO_UDP) return null;
  if (o.dst !== g || !pool.has(r.dst) || pool.has(r.src)) return null;
  if (o.src === 0 || r.src === 0) return null;
  return {
    proto: o.proto,
    a: o.src,
    pa: o.sport,
    pg: o.dport,
    x: r.src,
    px: r.sport,
    r: r.dst,
    p: r.dport,
  };
}

/** What the mirror changes: the session table (or a fake). */
export interface MirrorTarget {
  /**
   * Puts `s` in the table, or extends its lease when it is there with the
   * same pair and `Pg`; a session of the same identity with another pair is
   * replaced. False when the table refused it (pair taken by another).
   */
  up(s: GatewaySession): boolean;
  /** Takes `s` out, when the table holds it with the same pair; true when it went. */
  down(s: GatewaySession): boolean;
  /** Every session the table holds (reconcile compares them with the dump). */
  sessions(): Iterable<GatewaySession>;
  /** Applies the changes (the data path's maps). */
  commit(): void;
}

/** What the mirror has done: `dpm status` and the metrics show it. */
export interface MirrorStats {
  /** Sessions in the table that came from replicas (the last reconcile's count, then kept by events). */
  sessions: number;
  /** Events applied since start. */
  events: number;
  /** Replicas the table refused (a pair held by another session). */
  refused: number;
  /** Times the kernel dropped events (a reconcile followed). */
  lost: number;
  /** Full reconciles. */
  reconciles: number;
  /** Wall clock (ms) of the last event applied, or 0. */
  lastEventAt: number;
  /** Wall clock (ms) of the last full reconcile, or 0. */
  lastReconcileAt: number;
}

/** The standby's mirror of replicated conntracks into the session table. */
export class Mirror {
  readonly #g: number;
  readonly #pool: ReadonlySet<number>;
  readonly #target: MirrorTarget;
  readonly #now: () => number;
  readonly stats: MirrorStats = {
    sessions: 0,
    events: 0,
    refused: 0,
    lost: 0,
    reconciles: 0,
    lastEventAt: 0,
    lastReconcileAt: 0,
  };

  constructor(o: { g: number; pool: readonly number[]; target: MirrorTarget; now?: () => number }) {
    this.#g = o.g;
    this.#pool = new Set(o.pool);
    this.#target = o.target;
    this.#now = o.now ?? Date.now;
  }

  /** Applies one conntrack event; returns true when it was one of dpm's sessions. */
  event(kind: CtEventKind, e: CtEntryView): boolean {
    const s = sessionOfEntry(e, this.#g, this.#pool);
    if (s === null) return false;
    this.stats.events++;
    this.stats.lastEventAt = this.#now();
    if (kind === "destroy") {
      if (this.#target.down(s)) this.stats.sessions = Math.max(0, this.stats.sessions - 1);
    } else if (this.#target.up(s)) {
      if (kind === "new") this.stats.sessions++;
    } else this.stats.refused++;
    return true;
  }

  /** Applies what events changed (call after a batch of {@linkcode event}). */
  commit(): void {
    this.#target.commit();
  }

  /**
   * Makes the table exactly the dpm sessions among `entries` (a full dump):
   * adds or refreshes each, removes every session of the table that has no
   * replica. Returns what changed.
   */
  reconcile(entries: Iterable<CtEntryView>): { kept: number; removed: number } {
    const seen = new Map<string, GatewaySession>();
    for (const e of entries) {
      const s = sessionOfEntry(e, this.#g, this.#pool);
      if (s !== null) seen.set(identityKey(s), s);
    }
    let removed = 0;
    const gone: GatewaySession[] = [];
    for (const s of this.#target.sessions()) {
      const r = seen.get(identityKey(s));
      if (!r || r.r !== s.r || r.p !== s.p || r.pg !== s.pg) gone.push(s);
    }
    for (const s of gone) if (this.#target.down(s)) removed++;
    let kept = 0;
    for (const s of seen.values()) {
      if (this.#target.up(s)) kept++;
      else this.stats.refused++;
    }
    this.#target.commit();
    this.stats.sessions = kept;
    this.stats.reconciles++;
    this.stats.lastReconcileAt = this.#now();
    return { kept, removed };
  }
}

/**
 * The session table as a {@linkcode MirrorTarget}: mirrored sessions are
 * restored as the kernel's adopted ones are (`restore.ts`), with the
 * protocol's default lease; `commit` is the server's (data path first).
 */
export function tableTarget(
  t: SessionTable,
  now: () => number,
  commit: () => void,
  debug: (line: string) => void = () => {},
): MirrorTarget {
  const drops = new DropLog();
  return {
    up(s) {
      const at = now();
      const held = t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px);
      if (held >= 0) {
        if (t.r(held) === s.r && t.p(held) === s.p && t.pg(held) === s.pg) {
          t.renew(s.proto, s.a, s.pa, s.x, s.px, 0, at);
          return true;
        }
        debug(
          `mirror: ${describeSession(s)} replaces the pair ${formatIPv4(t.r(held))}:${t.p(held)}`,
        );
        t.release(s.proto, s.a, s.pa, s.x, s.px, at);
      }
      const rec = kernelRecord(t, s, at);
      const ok = restoreRecord(t, rec, at, drops, "a replica");
      if (!ok) debug(`mirror: ${describeSession(s)} refused (${drops.lines().join("; ")})`);
      return ok;
    },
    down(s) {
      const held = t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px);
      if (held < 0 || t.r(held) !== s.r || t.p(held) !== s.p) return false;
      debug(`mirror: ${describeSession(s)} down`);
      t.release(s.proto, s.a, s.pa, s.x, s.px, now());
      return true;
    },
    *sessions() {
      for (const s of t.slots()) yield t.binding(s);
    },
    commit,
  };
}
