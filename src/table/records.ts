/**
 * A row as a plain object ({@link SessionRecord}), for status output and
 * the state file, and back: a saved record checked against the live table
 * before it is stored again.
 *
 * A restored row keeps what was granted: its public pair, `Pg`, lease,
 * counters and owner. The quota is not applied (the row was granted
 * before), but a record that would break a promise of the table is refused:
 * one that clashes with a live row's identity, LAN key or public key, one on
 * a pair another endpoint's mapping owns, a mapping on a pair it could not
 * own (`ownable`, `allocate.ts`), or one whose `R` is no longer in the pool.
 *
 * @module
 */

import { IPPROTO_ICMP, protoIndex } from "../wire/meta.ts";
import type { SessionBinding } from "../wire/tuple.ts";
import { Result } from "../control/result.ts";
import type { Allocator, NewRow } from "./allocate.ts";
import { grantedLifetime, type TableConfig } from "./options.ts";
import { NONCE_LEN, Owner, OWNER_NAMES, ownerByName, type OwnerKind } from "./owners.ts";
import type { OwnerName } from "./owners.ts";
import { rowFlags, type SessionStore } from "./storage.ts";

/**
 * One session as a plain object, for status output and the state file: its
 * addresses (`wire/tuple.ts`) and the rest of its row.
 */
export interface SessionRecord extends SessionBinding {
  /** Expiry time, milliseconds on the caller's clock. */
  expiresAt: number;
  /** The lease granted, seconds (restore uses the protocol default when absent). */
  lifetime?: number;
  /** The host said the internal port may be replaced. */
  replaceable: boolean;
  /** The public port differs from the internal one. */
  replaced: boolean;
  /** The public pair was granted shared with another host (claims 8-10). */
  shared: boolean;
  /** Packets counted host -> remote. */
  packetsOut: number;
  /** Packets counted remote -> host. */
  packetsIn: number;
  /**
   * An inbound mapping (PCP/NAT-PMP MAP, see "Mappings" in `allocate.ts`):
   * `x`, `px` and `pg` are 0. A record with `x = px = 0` is restored as one
   * even without this field.
   */
  map?: boolean;
  /** A direct session (`ReserveRequest.direct`: PCP PEER from a host without a driver). */
  direct?: boolean;
  /** Who created it; "adopted" when absent. */
  owner?: OwnerName;
  /** PCP's mapping nonce, 24 hex digits (PCP rows only). */
  nonce?: string;
  /** What a mapping is for (UPnP's description); absent when none was given. */
  description?: string;
}

/** What a record is read from: the rows and their owners. */
export type RecordSource =
  & Pick<
    SessionStore,
    | "binding"
    | "expiresAt"
    | "lifetime"
    | "replaceable"
    | "replaced"
    | "shared"
    | "packetsOut"
    | "packetsIn"
    | "isMap"
    | "direct"
  >
  & {
    owner(s: number): OwnerKind;
    nonceOf(s: number): Uint8Array;
    description(s: number): string;
  };

/** What a record is checked against: the live rows. */
export type RestoreTarget = Pick<SessionStore, "lookupIdentity" | "lookupLan" | "lookupPublic">;

/** The record of live slot `s` of `t`. */
export function recordOf(t: RecordSource, s: number): SessionRecord {
  const owner = t.owner(s);
  const description = t.description(s);
  return {
    ...t.binding(s),
    expiresAt: t.expiresAt(s),
    lifetime: t.lifetime(s),
    replaceable: t.replaceable(s),
    replaced: t.replaced(s),
    shared: t.shared(s),
    packetsOut: t.packetsOut(s),
    packetsIn: t.packetsIn(s),
    ...(t.isMap(s) ? { map: true } : {}),
    ...(t.direct(s) ? { direct: true } : {}),
    ...(owner !== Owner.ADOPTED ? { owner: OWNER_NAMES[owner] } : {}),
    ...(owner === Owner.PCP ? { nonce: hexOf(t.nonceOf(s)) } : {}),
    ...(description !== "" ? { description } : {}),
  };
}

/**
 * The row `rec` is stored as, or UNSUPPORTED_PROTOCOL, MALFORMED, or
 * CONFLICT when `r` is not in the pool, `p` is not in the table's port slice, or the record clashes with the live
 * rows of `t` (see the module documentation). Expired records are
 * accepted; the next `expire(now)` removes them.
 */
export function restoredRow(
  rec: SessionRecord,
  cfg: TableConfig,
  t: RestoreTarget,
  policy: Pick<Allocator, "ownable" | "mappedByOther">,
): NewRow | number {
  const pi = protoIndex(rec.proto);
  if (pi < 0) return Result.UNSUPPORTED_PROTOCOL;
  for (const v of [rec.pa, rec.px, rec.p, rec.pg]) {
    if (!Number.isInteger(v) || v < 0 || v > 65535) return Result.MALFORMED;
  }
  if (!Number.isFinite(rec.expiresAt)) return Result.MALFORMED;
  const owner = rec.owner === undefined ? Owner.ADOPTED : ownerByName(rec.owner);
  if (owner === null) return Result.MALFORMED;
  const nonce = rec.nonce === undefined ? undefined : bytesOfHex(rec.nonce);
  if (nonce === null || (nonce && owner !== Owner.PCP)) return Result.MALFORMED;
  const ri = cfg.poolIndex.get(rec.r);
  if (ri === undefined) return Result.CONFLICT;
  // A port of another worker's slice (`slice.ts`) is never this table's.
  if (!cfg.owns(rec.p)) return Result.CONFLICT;
  const isMap = rec.map === true || (rec.x === 0 && rec.px === 0);
  if (isMap) {
    if (rec.proto === IPPROTO_ICMP || rec.pa === 0 || rec.p === 0 || rec.pg !== 0) {
      return Result.MALFORMED;
    }
    if (t.lookupIdentity(rec.proto, rec.a, rec.pa, 0, 0) >= 0) return Result.CONFLICT;
    if (!policy.ownable(pi, ri, rec.p, rec.a, rec.pa)) return Result.CONFLICT;
  } else if (
    t.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px) >= 0 ||
    t.lookupLan(rec.proto, rec.a, rec.pg) >= 0 ||
    t.lookupPublic(rec.proto, rec.r, rec.p, rec.x, rec.px) >= 0 ||
    policy.mappedByOther(rec.proto, rec.r, rec.p, rec.a, rec.pa)
  ) return Result.CONFLICT;
  const flags = rowFlags({
    replaceable: !!rec.replaceable,
    replaced: rec.p !== rec.pa,
    shared: !!rec.shared,
    map: isMap,
    direct: !!rec.direct && !isMap,
  });
  const lifetime = rec.lifetime !== undefined && rec.lifetime > 0
    ? grantedLifetime(cfg, rec.proto, rec.lifetime)
    : cfg.defaults[pi]!;
  return {
    proto: rec.proto,
    a: rec.a,
    pa: rec.pa,
    x: isMap ? 0 : rec.x,
    px: isMap ? 0 : rec.px,
    ri,
    p: rec.p,
    pg: rec.pg,
    flags,
    expiresAt: rec.expiresAt,
    lifetime,
    packetsOut: rec.packetsOut,
    packetsIn: rec.packetsIn,
    owner,
    nonce,
    description: typeof rec.description === "string" ? rec.description : "",
  };
}

/** A nonce as 24 hex digits. */
export function hexOf(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** 24 hex digits as a nonce's bytes, or null. */
function bytesOfHex(h: string): Uint8Array | null {
  if (typeof h !== "string" || !/^[0-9a-fA-F]{24}$/.test(h)) return null;
  return Uint8Array.from({ length: NONCE_LEN }, (_, i) => parseInt(h.slice(i * 2, i * 2 + 2), 16));
}
