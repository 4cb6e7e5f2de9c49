/**
 * Who made a row, and the budgets of rows whose maker cannot prove the
 * host's address.
 *
 * ## Owners
 *
 * Every row records who created it (`owner(s)`, {@link Owner}): dpm's own
 * protocol (a driver's RESERVE or `dpm map`, proven by the cookie), PCP
 * (with its 12-byte mapping nonce, kept in the row: RFC 6887 section 11.3),
 * NAT-PMP, or UPnP IGD (with the mapping's description, `description(s)`);
 * rows restored without one (an older state file, the kernel's maps adopted
 * without a state file) are ADOPTED. The table only stores the owner; who
 * may renew or delete a row is decided by `src/policy/`.
 *
 * UPnP's requests come over TCP, whose handshake proves the host's address
 * as well as a LAN can: its rows count toward the host's quota like dpm's,
 * within a cap of their own per host (`maxUpnpPerHost`, QUOTA_EXCEEDED).
 *
 * Rows of the protocols that cannot prove the host's address (PCP and
 * NAT-PMP: no cookie, so a LAN host can forge another's source) are
 * *unverified* and have budgets of their own, apart from the host's quota
 * (`maxSessionsPerHost` counts only the other rows):
 * `maxUnverifiedPerHost` rows per host (QUOTA_EXCEEDED), and
 * `maxUnverifiedPerProto` rows per protocol over all hosts (NO_RESOURCES),
 * so that forged requests can hold only a bounded share of the pool. A
 * host's unverified rows are also chained (`unverifiedRows(a)`), so that a
 * "delete all" walks only them.
 *
 * @module
 */

import { Result } from "../control/result.ts";
import { grown, U32Map } from "./hashmap.ts";

/**
 * Who created a row (see "Owners" in the module documentation). Numbers are
 * stored in the table and the state file: only ever appended. A new owner
 * also needs its name in {@link OWNER_NAMES} and its line in `VERIFIED`
 * (the compiler checks both).
 */
export const Owner = {
  /** Restored without an owner (an older state file, adopted from the kernel's maps). */
  ADOPTED: 0,
  /** dpm's own protocol: a driver's RESERVE, or `dpm map` (the cookie proves the address). */
  DPM: 1,
  /** PCP MAP or PEER, with its nonce. */
  PCP: 2,
  /** NAT-PMP map. */
  NATPMP: 3,
  /** UPnP IGD AddPortMapping / AddAnyPortMapping (`src/upnp/`), with its description. */
  UPNP: 4,
} as const;
/** One of {@linkcode Owner}. */
export type OwnerKind = (typeof Owner)[keyof typeof Owner];
/** The owners' names, by number (status, state file, logs). */
export const OWNER_NAMES = ["adopted", "dpm", "pcp", "natpmp", "upnp"] as const satisfies Readonly<
  Record<OwnerKind, string>
>;
/** An owner's name. */
export type OwnerName = (typeof OWNER_NAMES)[number];

/** Whether an owner's protocol proves the host's address (a cookie); false: its rows are unverified. */
const VERIFIED = {
  [Owner.ADOPTED]: true,
  [Owner.DPM]: true,
  [Owner.PCP]: false,
  [Owner.NATPMP]: false,
  [Owner.UPNP]: true,
} as const satisfies Readonly<Record<OwnerKind, boolean>>;

/** The owner whose name is `name`, or null. */
export function ownerByName(name: string): OwnerKind | null {
  const i = (OWNER_NAMES as readonly string[]).indexOf(name);
  return i < 0 ? null : i as OwnerKind;
}

/**
 * True for owners whose protocol cannot prove the host's address (no
 * cookie): their rows count against the unverified budgets.
 */
export function isUnverified(owner: number): boolean {
  return VERIFIED[owner as OwnerKind] === false;
}

/** Bytes of a PCP mapping nonce. */
export const NONCE_LEN = 12;
/** Longest description kept with a row (UPnP's NewPortMappingDescription is a string of up to 256). */
export const DESCRIPTION_MAX = 256;
/** 32-bit words of a nonce. */
const NW = NONCE_LEN / 4;
/** Counters per host (HC of them): unverified rows, the first of them + 1, UPnP rows. */
const [UNVERIFIED, FIRST, UPNP_ROWS, HC] = [0, 1, 2, 3] as const;

/** Who made a new row (with its stored fields, `storage.ts`). */
export interface Owned {
  owner: OwnerKind;
  /** PCP's mapping nonce. */
  nonce: Uint8Array | undefined;
  /** What the row is for (UPnP's description); none when absent or "". */
  description?: string | undefined;
}

/** Budgets of {@link Owners.quota} (`TableOptions`). */
export interface OwnerBudgets {
  readonly maxPerHost: number;
  readonly maxUnverifiedPerHost: number;
  readonly maxUnverifiedPerProto: number;
  readonly maxUpnpPerHost: number;
}

/**
 * The owner columns of the table's rows (indexed by slot, like the
 * columns of storage.ts, and grown on demand to the same size) and the
 * unverified rows' chains and counts.
 */
export class Owners {
  #owner: Uint8Array;
  /** PCP nonce, {@link NW} words per slot. */
  #nonce: Uint32Array;
  /** The host's unverified rows, newest first. */
  #next: Int32Array;
  #prev: Int32Array;
  /** Host `a` -> [unverified rows, first unverified row + 1 (0: none), UPnP rows]. */
  readonly #hosts: U32Map;
  /** Descriptions of the rows that have one (few do: UPnP mappings), by slot. */
  readonly #desc = new Map<number, string>();
  /** Unverified rows per protocol index (icmp, tcp, udp), all hosts. */
  readonly #unverified: [number, number, number] = [0, 0, 0];
  readonly #budgets: OwnerBudgets;

  constructor(budgets: OwnerBudgets, seed: number, capacity: number) {
    this.#budgets = budgets;
    this.#hosts = new U32Map(HC, seed, 16);
    this.#owner = new Uint8Array(capacity);
    this.#nonce = new Uint32Array(capacity * NW);
    this.#next = new Int32Array(capacity);
    this.#prev = new Int32Array(capacity);
  }

  /** Bytes of the columns and the map. */
  get bytes(): number {
    return this.#owner.length * (1 + NONCE_LEN + 4 + 4) + this.#hosts.bytes;
  }

  /** Who created slot `s`. */
  owner(s: number): OwnerKind {
    return this.#owner[s]! as OwnerKind;
  }

  /** Slot `s` was created with PCP nonce `nonce` ({@link NONCE_LEN} bytes). */
  nonceIs(s: number, nonce: Uint8Array): boolean {
    if (nonce.length !== NONCE_LEN) return false;
    const v = new DataView(nonce.buffer, nonce.byteOffset, NONCE_LEN);
    const w = s * NW;
    return this.#nonce[w] === v.getUint32(0) && this.#nonce[w + 1] === v.getUint32(4) &&
      this.#nonce[w + 2] === v.getUint32(8);
  }

  /** The PCP nonce of slot `s` (zeros when it has none). */
  nonceOf(s: number): Uint8Array {
    const out = new Uint8Array(NONCE_LEN);
    const v = new DataView(out.buffer);
    for (let k = 0; k < NW; k++) v.setUint32(k * 4, this.#nonce[s * NW + k]!);
    return out;
  }

  /**
   * Slot `s` (of host `a`, protocol index `pi`) now belongs to `who.owner`:
   * a new row, or one claimed after {@link clear}. A description in `who`
   * replaces the row's.
   */
  set(s: number, a: number, pi: number, who: Owned): void {
    if (s >= this.#owner.length) this.#grow(Math.max(this.#owner.length * 2, s + 1));
    const { owner, nonce } = who;
    this.#owner[s] = owner;
    const w = s * NW;
    if (!nonce || nonce.length !== NONCE_LEN) this.#nonce.fill(0, w, w + NW);
    else {
      const v = new DataView(nonce.buffer, nonce.byteOffset, NONCE_LEN);
      for (let k = 0; k < NW; k++) this.#nonce[w + k] = v.getUint32(k * 4);
    }
    if (isUnverified(owner)) this.#link(s, a, pi);
    if (owner === Owner.UPNP) this.#count(a, UPNP_ROWS, 1);
    if (who.description !== undefined) this.setDescription(s, who.description);
  }

  /** Slot `s` (of host `a`, protocol index `pi`) changes owner: it is ADOPTED until {@link set}. */
  clear(s: number, a: number, pi: number): void {
    const owner = this.#owner[s]!;
    if (isUnverified(owner)) this.#unlink(s, a, pi);
    if (owner === Owner.UPNP) this.#count(a, UPNP_ROWS, -1);
    this.#owner[s] = Owner.ADOPTED;
  }

  /** Slot `s` (of host `a`, protocol index `pi`) leaves the table. */
  remove(s: number, a: number, pi: number): void {
    this.clear(s, a, pi);
    this.#desc.delete(s);
  }

  /** What slot `s` is for (a UPnP mapping's description); "" when none was given. */
  description(s: number): string {
    return this.#desc.get(s) ?? "";
  }

  /** Sets what slot `s` is for ("" removes it; longer than {@link DESCRIPTION_MAX} is cut). */
  setDescription(s: number, text: string): void {
    if (text === "") this.#desc.delete(s);
    else this.#desc.set(s, text.slice(0, DESCRIPTION_MAX));
  }

  /**
   * The budgets a new row of `owner` for host `a` (which holds `total`
   * rows) must fit in: OK, QUOTA_EXCEEDED or NO_RESOURCES.
   */
  quota(a: number, pi: number, owner: number, total: number): number {
    const unverified = this.unverifiedOf(a);
    const b = this.#budgets;
    if (!isUnverified(owner)) {
      // UPnP has a cap of its own per host, like PCP's, within the host's quota.
      if (owner === Owner.UPNP && this.upnpOf(a) >= b.maxUpnpPerHost) return Result.QUOTA_EXCEEDED;
      return total - unverified >= b.maxPerHost ? Result.QUOTA_EXCEEDED : Result.OK;
    }
    if (unverified >= b.maxUnverifiedPerHost) return Result.QUOTA_EXCEEDED;
    return this.#unverified[pi]! >= b.maxUnverifiedPerProto ? Result.NO_RESOURCES : Result.OK;
  }

  /** Unverified rows of host `a`. */
  unverifiedOf(a: number): number {
    return this.#hosts.get(a, UNVERIFIED);
  }

  /** UPnP rows of host `a`. */
  upnpOf(a: number): number {
    return this.#hosts.get(a, UPNP_ROWS);
  }

  /** Unverified rows of protocol index `pi`, all hosts. */
  unverifiedCount(pi: number): number {
    return this.#unverified[pi]!;
  }

  /** The slots of host `a`'s unverified rows, newest first. */
  unverifiedRows(a: number): number[] {
    const out: number[] = [];
    for (let s = this.#hosts.get(a, FIRST) - 1; s >= 0; s = this.#next[s]!) out.push(s);
    return out;
  }

  /** Puts slot `s` at the head of host `a`'s unverified rows. */
  #link(s: number, a: number, pi: number): void {
    const hb = this.#hosts.upsert(a) * HC;
    const hv = this.#hosts.vals;
    const head = hv[hb + FIRST]! - 1;
    this.#prev[s] = -1;
    this.#next[s] = head;
    if (head >= 0) this.#prev[head] = s;
    hv[hb + FIRST] = s + 1;
    hv[hb + UNVERIFIED]!++;
    this.#unverified[pi]!++;
  }

  #unlink(s: number, a: number, pi: number): void {
    const hb = this.#hosts.find(a) * HC;
    const hv = this.#hosts.vals;
    const prev = this.#prev[s]!;
    const next = this.#next[s]!;
    if (prev < 0) hv[hb + FIRST] = next + 1;
    else this.#next[prev] = next;
    if (next >= 0) this.#prev[next] = prev;
    this.#unverified[pi]!--;
    this.#count(a, UNVERIFIED, -1);
  }

  /** Adds `d` to counter `col` of host `a`; a host with no counted row leaves the map. */
  #count(a: number, col: number, d: number): void {
    const b = this.#hosts.upsert(a);
    const hv = this.#hosts.vals;
    hv[b * HC + col]! += d;
    if (hv[b * HC + UNVERIFIED] === 0 && hv[b * HC + UPNP_ROWS] === 0) this.#hosts.deleteAt(b);
  }

  #grow(cap: number): void {
    this.#owner = grown(this.#owner, new Uint8Array(cap));
    this.#nonce = grown(this.#nonce, new Uint32Array(cap * NW));
    this.#next = grown(this.#next, new Int32Array(cap));
    this.#prev = grown(this.#prev, new Int32Array(cap));
  }
}
