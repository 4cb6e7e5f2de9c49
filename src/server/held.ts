/**
 * First packets the gateway holds for a session it does not know yet.
 *
 * Theory of operation. A driver speaking version 3 proposes the gateway
 * port `Pg` of a new session itself, translates the session's first packet
 * to `a:pa -> G:Pg` and lets it go at once, with the request on its way
 * (docs/protocol.md, "Version 3"). When that packet reaches the gateway
 * before the grant is committed, nothing translates it yet: the data path
 * hands it up (kernel path: an nft rule marks a new conntrack to G in the
 * drivers' share that misses the session map, iptables queues it; queue
 * path: the translator finds no session) and the server holds it here,
 * keyed by (proto, a, Pg), with the host's port `pa`:
 *
 * - the request is granted with that `Pg` and committed: the packets go on
 *   ({@linkcode HeldPackets.decide}, then {@linkcode HeldPackets.take} after
 *   the commit): the data path translates them as every later packet;
 * - the request is refused, or granted with another `Pg` (the proposal was
 *   taken): they are dropped, and later packets to that key for
 *   {@link SETTLED_MS} too (the driver tells the application, or moves the
 *   session to the new `Pg`);
 * - no request comes within {@link HOLD_MS}: they are dropped and the host
 *   is told port unreachable from `G:Pg`, what the gateway's own stack would
 *   have answered (a driver that sees it reserves the session again).
 *
 * So the claim holds: a session's first packet leaves the gateway only once
 * the exchange that names its remote has reserved its public pair.
 *
 * Limits: {@link MAX_PER_KEY} packets per session, {@link MAX_PER_HOST}
 * per host (a host over it loses its oldest held packet, not its newest:
 * a forger flooding in another host's name evicts only what is older than
 * that host's own request round trip), {@link MAX_TOTAL} in all.
 *
 * @module
 */

import { lanKey } from "../wire/tuple.ts";

/** How long a packet waits for its request, ms: longer than the drivers' fast retransmissions. */
export const HOLD_MS = 4000;
/** How long a key stays decided after its request was answered, ms. */
export const SETTLED_MS = 3000;
/** Packets held per (proto, a, Pg). */
export const MAX_PER_KEY = 16;
/** Packets held per host: a burst of 3,000 first packets fits. */
export const MAX_PER_HOST = 4096;
/** Packets held in all (below the queue's own limit of 16,384). */
export const MAX_TOTAL = 12288;

/** One held packet: its queue id, a copy of its bytes, and its `NFQA_SKB_INFO` bits. */
export interface HeldPacket {
  id: number;
  bytes: Uint8Array;
  skbInfo: number;
  proto: number;
  a: number;
  pa: number;
  pg: number;
  at: number;
  /** Already decided (released, dropped, evicted): skipped by the queues. */
  done: boolean;
}

interface HostQueue {
  items: HeldPacket[];
  head: number;
  live: number;
}

/** What happens to a key's packets once its answer is committed. */
interface Decision {
  go: boolean;
  pa: number;
  at: number;
}

/** The server's held first packets. */
export class HeldPackets {
  readonly #byKey = new Map<number, HeldPacket[]>();
  readonly #byHost = new Map<number, HostQueue>();
  /**
   * Keys whose proposal was refused (or taken): what comes to them is
   * dropped, until they expire. With `rememberGrants`, granted keys too:
   * what comes to them goes on.
   */
  readonly #refused = new Map<number, Decision>();
  /**
   * Grants are kept for {@link SETTLED_MS} too: the thread that holds the
   * packets is not the one whose table has the session (`dpm server
   * --workers`: a worker decides, the main thread holds), so a first packet
   * the queue hands up after its grant arrived cannot meet the session in
   * the table; it meets the grant here instead.
   */
  readonly #rememberGrants: boolean;

  constructor(opts: { rememberGrants?: boolean } = {}) {
    this.#rememberGrants = opts.rememberGrants ?? false;
  }
  /** Decisions since the last take() about keys that hold packets. */
  #due: { key: number; d: Decision }[] = [];
  #total = 0;
  /** Counters for status and tests. */
  readonly stats = { held: 0, released: 0, dropped: 0, expired: 0, evicted: 0, refused: 0 };

  /** Packets held now. */
  get size(): number {
    return this.#total;
  }

  /**
   * What to do with a packet of a session the gateway does not know yet:
   * "hold" (kept; its verdict comes later), "go" (its key was granted and
   * committed, with `rememberGrants`: to let on), "refused" (its key's request was
   * refused or its proposal taken: to drop as refused) or "full" (the
   * session's or the gateway's limit is reached: to drop as an overflow).
   * `evicted` receives a packet the host's limit pushed out (to be dropped
   * by the caller).
   */
  hold(
    p: Omit<HeldPacket, "done" | "at">,
    now: number,
    evicted: (h: HeldPacket) => void,
  ): "hold" | "refused" | "full" | "go" {
    const key = lanKey(p.proto, p.a, p.pg);
    const d = this.#refused.get(key);
    if (d !== undefined && now - d.at < SETTLED_MS && d.pa === p.pa) {
      if (d.go) {
        this.stats.released++;
        return "go";
      }
      this.stats.refused++;
      return "refused";
    }
    let list = this.#byKey.get(key);
    if (list && list.length >= MAX_PER_KEY) return "full";
    if (this.#total >= MAX_TOTAL) return "full";
    let q = this.#byHost.get(p.a);
    if (!q) this.#byHost.set(p.a, q = { items: [], head: 0, live: 0 });
    if (q.live >= MAX_PER_HOST) {
      const old = this.#oldest(q);
      if (old) {
        this.#remove(old);
        this.stats.evicted++;
        evicted(old);
      }
    }
    const h: HeldPacket = { ...p, at: now, done: false };
    if (!list) this.#byKey.set(key, list = []);
    list.push(h);
    q.items.push(h);
    q.live++;
    this.#total++;
    this.stats.held++;
    return "hold";
  }

  /**
   * The request for (proto, a, pa) proposing `proposal` was answered:
   * `granted` with that same Pg (the packets go on once committed), or not
   * (they are dropped). Applied by {@linkcode take}.
   */
  decide(proto: number, a: number, pa: number, proposal: number, granted: boolean, now: number) {
    if (proposal === 0) return;
    const key = lanKey(proto, a, proposal);
    const d = { go: granted, pa, at: now };
    // A grant needs no memory: later packets meet the session itself.
    if (!granted || this.#rememberGrants) this.#refused.set(key, d);
    if (this.#byKey.has(key)) this.#due.push({ key, d });
  }

  /**
   * The packets whose fate was decided since the last call (call after the
   * commit): `go` to let on, `drop` to drop. A packet whose `pa` is not the
   * request's stays held (another session's first packet, or a forgery).
   */
  take(go: (h: HeldPacket) => void, drop: (h: HeldPacket) => void): void {
    if (this.#due.length === 0) return;
    const due = this.#due;
    this.#due = [];
    for (const { key, d } of due) {
      const list = this.#byKey.get(key);
      if (!list) continue;
      const keep: HeldPacket[] = [];
      for (const h of list) {
        if (h.done) continue;
        if (h.pa !== d.pa) {
          keep.push(h);
          continue;
        }
        this.#settle(h);
        if (d.go) {
          this.stats.released++;
          go(h);
        } else {
          this.stats.dropped++;
          drop(h);
        }
      }
      if (keep.length) this.#byKey.set(key, keep);
      else this.#byKey.delete(key);
    }
  }

  /** Packets held longer than {@link HOLD_MS}, handed to `expire`; old decisions forgotten. */
  sweep(now: number, expire: (h: HeldPacket) => void): void {
    for (const [a, q] of this.#byHost) {
      while (q.head < q.items.length) {
        const h = q.items[q.head]!;
        if (!h.done && now - h.at < HOLD_MS) break;
        q.head++;
        if (h.done) continue;
        this.#remove(h);
        this.stats.expired++;
        expire(h);
      }
      if (q.head > 64 && q.head * 2 > q.items.length) {
        q.items = q.items.slice(q.head);
        q.head = 0;
      }
      if (q.live === 0 && q.head === q.items.length) this.#byHost.delete(a);
    }
    for (const [k, d] of this.#refused) {
      if (now - d.at >= SETTLED_MS) this.#refused.delete(k);
    }
  }

  #oldest(q: HostQueue): HeldPacket | null {
    while (q.head < q.items.length) {
      const h = q.items[q.head]!;
      if (!h.done) return h;
      q.head++;
    }
    return null;
  }

  /** Takes `h` out of its key's list and its host's count. */
  #remove(h: HeldPacket): void {
    this.#settle(h);
    const key = lanKey(h.proto, h.a, h.pg);
    const list = this.#byKey.get(key);
    if (!list) return;
    const i = list.indexOf(h);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#byKey.delete(key);
  }

  #settle(h: HeldPacket): void {
    if (h.done) return;
    h.done = true;
    this.#total--;
    const q = this.#byHost.get(h.a);
    if (q) q.live--;
  }
}
