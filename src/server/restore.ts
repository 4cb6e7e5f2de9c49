/**
 * Restoring the session table at start, from the state file or from what
 * the data path still translates (`ServerDataPath.adopt`): each record is
 * checked, restored into the table or dropped for a reason, and the drops
 * are counted per reason with an example ({@linkcode DropLog}). A drop for
 * any reason but expiry makes the server take a new epoch
 * ({@linkcode DropLog.renewsEpoch}), so that every driver re-reserves.
 *
 * @module
 */

import { describeSession as describeTuple, identityKey } from "../wire/tuple.ts";
import { Result } from "../control/result.ts";
import type { SessionRecord, SessionTable } from "../table/table.ts";
import type { GatewaySession } from "../datapath/datapath.ts";

const u32 = (v: unknown) =>
  Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
const u16 = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;

/** True when `v` has the shape of a SessionRecord a state file may hold. */
export function isSessionRecord(v: unknown): v is SessionRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  return [1, 6, 17].includes(r.proto as number) && u32(r.a) && u32(r.x) && u32(r.r) &&
    u16(r.pa) && u16(r.px) && u16(r.p) && u16(r.pg) && Number.isFinite(r.expiresAt) &&
    typeof r.replaceable === "boolean" && typeof r.replaced === "boolean" &&
    typeof r.shared === "boolean" && Number.isFinite(r.packetsOut) && Number.isFinite(r.packetsIn);
}

/** Why a restore left a session out. */
export type DropReason = "expired" | "not-in-pool" | "conflict" | "malformed";

const REASON_TEXT: Record<DropReason, string> = {
  expired: "expired",
  "not-in-pool": "public address no longer in the pool",
  conflict: "conflict with a session restored before it",
  malformed: "malformed",
};

/** A record read back in words, for the log (what it is when it is not a session). */
export function describeRecord(r: SessionRecord | Record<string, unknown>): string {
  if (!isSessionRecord(r)) {
    const j = JSON.stringify(r) ?? String(r);
    return j.length > 120 ? `${j.slice(0, 117)}...` : j;
  }
  return describeTuple(r);
}

/** The sessions a restore dropped, per reason, with the first one of each as an example. */
export class DropLog {
  readonly counts = new Map<DropReason, { count: number; example: string; from: string }>();
  readonly #ids = new Set<string>();

  /** Records one drop. */
  add(reason: DropReason, rec: unknown, from: string): void {
    const c = this.counts.get(reason);
    if (c) c.count++;
    else {
      this.counts.set(reason, {
        count: 1,
        example: describeRecord(rec as Record<string, unknown>),
        from,
      });
    }
    if (isSessionRecord(rec)) this.#ids.add(identityKey(rec));
  }

  /** Sessions dropped, all reasons. */
  get total(): number {
    let n = 0;
    for (const c of this.counts.values()) n += c.count;
    return n;
  }

  /** True when (proto, a, pa, X, px) was dropped (the kernel must not bring it back). */
  dropped(r: { proto: number; a: number; pa: number; x: number; px: number }): boolean {
    return this.#ids.has(identityKey(r));
  }

  /**
   * True when a driver may still hold a dropped session as live: any drop
   * but an expiry (a driver forgets a lease that ran out, and renews the
   * others before they do).
   */
  get renewsEpoch(): boolean {
    for (const r of this.counts.keys()) if (r !== "expired") return true;
    return false;
  }

  /** One log line per reason: `N <reason> (from <source>), e.g. <session>`. */
  lines(): string[] {
    return [...this.counts].map(([r, c]) =>
      `dropped ${c.count} session(s) from ${c.from}: ${REASON_TEXT[r]}, e.g. ${c.example}`
    );
  }
}

/**
 * A record for a session found in the kernel (adopted at start, or a
 * replica the HA standby mirrors), which carries no lease: it gets the
 * table's default lifetime from `now`, is replaceable when its public port
 * is not its own, and shared when another session already uses `R:p`.
 */
export function kernelRecord(
  table: SessionTable,
  s: GatewaySession,
  now: number,
): SessionRecord {
  const life = table.grantedLifetime(s.proto, 0);
  return {
    ...s,
    expiresAt: now + life * 1000,
    lifetime: life,
    replaceable: s.p !== s.pa,
    replaced: s.p !== s.pa,
    shared: table.portUsers(s.proto, s.r, s.p) > 0,
    packetsOut: 0,
    packetsIn: 0,
  };
}

/**
 * Restores one record into `table`; returns true when it is in, false when
 * dropped (counted in `drops` with its reason). `from` names the source in
 * the log (the state file, the kernel's maps).
 */
export function restoreRecord(
  table: SessionTable,
  rec: unknown,
  now: number,
  drops: DropLog,
  from: string,
): boolean {
  if (!isSessionRecord(rec)) {
    drops.add("malformed", rec, from);
    return false;
  }
  if (rec.expiresAt <= now) {
    drops.add("expired", rec, from);
    return false;
  }
  if (!table.isPoolAddress(rec.r)) {
    drops.add("not-in-pool", rec, from);
    return false;
  }
  const r = table.restore(rec);
  if (r === Result.OK) return true;
  drops.add(r === Result.CONFLICT ? "conflict" : "malformed", rec, from);
  return false;
}
