/**
 * The gateway's operator side (`dpm status`, `dpm drop`, `dpm watch`, the
 * metrics): what an operator sees of the table and does to it.
 *
 * {@link ServerViews} owns, per table slot, what the table itself does not
 * keep: when a session was added, when its packet total last moved, and the
 * bytes translated here (`translate.ts` reports them through
 * `countBytes`). From those and the table it builds the status header and
 * rows, a host's share (`hostView`, with the refusals `core.ts` notes), and
 * the session events (up, down with its reason, refused) `watch` delivers.
 * It reads the counters `ServerCore` keeps and the data path's status and
 * kernel counters; it is given the clock, never reads it.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { Result, RESULT_COUNT, resultName } from "../control/result.ts";
import { OWNER_NAMES, type SessionRecord, type SessionTable } from "../table/table.ts";
import { DROP_COUNT, DROP_NAMES, IPPROTO_ICMP } from "../wire/packet.ts";
import { protoName } from "../wire/meta.ts";
import { VERSION } from "../version.ts";
import type {
  HaStatus,
  HostView,
  MappingProtocols,
  SessionEvent,
  SessionView,
  StatusReply,
} from "../operator/types.ts";
import { gatewayKey, type ServerDataPath, type SessionCounters } from "../datapath/datapath.ts";

const log = logger("server");

/** Why the sessions being removed go (the reason of a "down" event). */
export type RemovalReason = "released" | "expired" | "dropped";

/** What the views read; `ServerCore` owns each of them. */
export interface ServerViewsDeps {
  table: SessionTable;
  cfg: Pick<ServerConfig, "lanAddr" | "pool" | "maxSessionsPerHost">;
  epoch: () => number;
  /** When the server started, ms (the clock's unit). */
  startedAt: number;
  /** The clock, ms. */
  now: () => number;
  /** Control results by code, drops by reason, packets by direction (`ServerCore`'s counters). */
  results: Float64Array;
  drops: Float64Array;
  packets: { in: number; out: number; hairpin: number };
  /** The attached data path, or null. */
  dataPath: () => ServerDataPath | null;
  /** The mapping protocols' counts (`ServerCore.protocols`). */
  protocols?: () => MappingProtocols;
  /** The HA role's status (`--ha`). */
  ha?: () => HaStatus | null;
  /** The held first packets' counters (`ServerCore.held`). */
  held?: () => Record<string, number>;
  /** Control datagrams by protocol version (`ControlService.datagrams`). */
  datagrams?: () => Record<string, number>;
}

/** The operator's view of the gateway: status, rows, host views, session events, drops. */
export class ServerViews {
  readonly #d: ServerViewsDeps;
  readonly #t: SessionTable;
  /** When slot s was added: tenths of a second since startedAt, plus 1. */
  #born = new Uint32Array(0);
  /** When slot s's packet total was last seen to move (same unit; 0: never). */
  #seen = new Uint32Array(0);
  /** The packet total then (low 32 bits: only a change matters). */
  #seenPkts = new Uint32Array(0);
  /** Bytes translated here (queue path; on the kernel path ICMP and hairpins), grown on use. */
  #bytesOut = new Float64Array(0);
  #bytesIn = new Float64Array(0);
  /** Slots below this may be live. */
  #hw = 0;
  #sampleCursor = 0;
  /** Why the sessions being removed go (for watch). */
  #why: RemovalReason = "released";
  readonly #watchers = new Set<(e: SessionEvent) => void>();
  /** Refusals of verified hosts: counts by result, and the last one. */
  readonly #refusedBy = new Map<
    number,
    { counts: Float64Array; last: { request: string; result: string; at: number } }
  >();

  constructor(deps: ServerViewsDeps) {
    this.#d = deps;
    this.#t = deps.table;
  }

  /** The status reply for `dpm status`. */
  status(limit = 1000): StatusReply {
    const shown = [...this.rows({ limit })];
    return { ...this.statusHeader(), shown };
  }

  /**
   * The status without its rows (`dpm status` streams the rows after it);
   * with `host`, that host's quota use and refusals too.
   */
  statusHeader(host?: number): Omit<StatusReply, "shown"> {
    const d = this.#d;
    const now = d.now();
    const results: Record<string, number> = {};
    for (let i = 0; i < RESULT_COUNT; i++) results[resultName(i)] = d.results[i]!;
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_COUNT; i++) drops[DROP_NAMES[i]!] = d.drops[i]!;
    return {
      version: VERSION,
      epoch: d.epoch(),
      uptime: Math.round((now - d.startedAt) / 1000),
      lanAddr: formatIPv4(d.cfg.lanAddr),
      pool: d.cfg.pool.map(formatIPv4),
      dataPath: d.dataPath()?.status() ?? { kind: "off", state: "off", reinstalls: 0 },
      sessions: this.#t.size,
      ...(host === undefined ? {} : { host: this.hostView(host) }),
      results,
      drops,
      packets: { ...d.packets },
      ...(d.held ? { held: d.held() } : {}),
      ...(d.datagrams ? { datagrams: d.datagrams() } : {}),
      ...(d.protocols ? { protocols: d.protocols() } : {}),
      ...(d.ha?.() ? { ha: d.ha()! } : {}),
    };
  }

  /**
   * The table's rows for status, in slot order, one at a time (a million
   * are never one array): all of them, or one host's, at most `limit`.
   * Kernel counters are read once, when the first row is asked for. Rows
   * may be taken across event-loop turns: a session added or removed
   * meanwhile may or may not be listed (as with `conntrack -L`).
   */
  *rows(o: { host?: number; limit?: number } = {}): Generator<SessionView> {
    const t = this.#t;
    const limit = o.limit ?? Infinity;
    // No rows wanted (the metrics scrape): no kernel dump either.
    if (limit <= 0) return;
    const counters = this.#d.dataPath()?.counters() ?? null;
    let n = 0;
    for (let s = 0; s < this.#hw && n < limit; s++) {
      if (!t.isLive(s) || (o.host !== undefined && t.a(s) !== o.host)) continue;
      n++;
      yield this.#row(s, this.#d.now(), counters);
    }
  }

  /** One host's share: its sessions by protocol against the quota, its pairing, its refusals. */
  hostView(a: number): HostView {
    const t = this.#t;
    const byProto: Record<string, number> = { tcp: 0, udp: 0, icmp: 0 };
    for (let s = 0; s < this.#hw; s++) {
      if (t.isLive(s) && t.a(s) === a) byProto[protoName(t.proto(s))]! += 1;
    }
    const refusals: Record<string, number> = {};
    const r = this.#refusedBy.get(a);
    if (r) {
      for (let i = 0; i < RESULT_COUNT; i++) {
        if (r.counts[i]) refusals[resultName(i)] = r.counts[i]!;
      }
    }
    const paired = t.pairedAddress(a);
    return {
      host: formatIPv4(a),
      sessions: t.sessionsOf(a),
      quota: this.#d.cfg.maxSessionsPerHost,
      byProto,
      ...(paired >= 0 ? { paired: formatIPv4(paired) } : {}),
      refusals,
      ...(r
        ? {
          lastRefusal: {
            request: r.last.request,
            result: r.last.result,
            ago: Math.max(0, Math.round((this.#d.now() - r.last.at) / 1000)),
          },
        }
        : {}),
    };
  }

  /** The data path's per-session kernel counters summed, or null when it keeps none. */
  kernelTotals(): SessionCounters | null {
    const c = this.#d.dataPath()?.counters();
    if (!c) return null;
    const sum = { packetsOut: 0, bytesOut: 0, packetsIn: 0, bytesIn: 0 };
    for (const v of c.values()) {
      sum.packetsOut += v.packetsOut;
      sum.bytesOut += v.bytesOut;
      sum.packetsIn += v.packetsIn;
      sum.bytesIn += v.bytesIn;
    }
    return sum;
  }

  /**
   * Drops sessions as an operator asks (`dpm drop`, like `conntrack -D`):
   * one by its identity, or every session of a host. They leave the table,
   * and so the data path (the kernel's maps and conntracks); their hosts
   * learn it at their next renewal. Returns how many went.
   */
  drop(
    sel: { host: number } | { proto: number; a: number; pa: number; x: number; px: number },
  ): number {
    const t = this.#t;
    const now = this.#d.now();
    return this.removing("dropped", () => {
      if ("host" in sel) {
        const slots: number[] = [];
        for (let s = 0; s < this.#hw; s++) if (t.isLive(s) && t.a(s) === sel.host) slots.push(s);
        for (const s of slots) t.releaseSlot(s, now);
        return slots.length;
      }
      return t.release(sel.proto, sel.a, sel.pa, sel.x, sel.px, now) === Result.OK ? 1 : 0;
    });
  }

  /** Calls `fn` with every session event (up, down, refused) until the returned function is called. */
  watch(fn: (e: SessionEvent) => void): () => void {
    this.#watchers.add(fn);
    return () => void this.#watchers.delete(fn);
  }

  /** Bytes kept per session for the operator's view (not counted in table.bytes). */
  get viewBytes(): number {
    return this.#born.byteLength * 3 + this.#bytesOut.byteLength * 2;
  }

  /** Runs `fn`, the sessions it removes going for `why` (their "down" events say so). */
  removing<T>(why: RemovalReason, fn: () => T): T {
    this.#why = why;
    try {
      return fn();
    } finally {
      this.#why = "released";
    }
  }

  /** The table added slot s (its listener). */
  added(s: number): void {
    if (s >= this.#born.length) {
      const cap = Math.max(1024, this.#born.length * 2, s + 1);
      const grow = (a: Uint32Array) => {
        const n = new Uint32Array(cap);
        n.set(a);
        return n;
      };
      this.#born = grow(this.#born);
      this.#seen = grow(this.#seen);
      this.#seenPkts = grow(this.#seenPkts);
    }
    if (s >= this.#hw) this.#hw = s + 1;
    this.#born[s] = this.#tenths(this.#d.now());
    this.#seen[s] = 0;
    this.#seenPkts[s] = this.#t.packetsOut(s) + this.#t.packetsIn(s);
    if (s < this.#bytesOut.length) this.#bytesOut[s] = this.#bytesIn[s] = 0;
    if (this.#watchers.size) this.#emit({ event: "up", ...this.#row(s, this.#d.now(), null) });
  }

  /** The table is removing slot s (its listener). */
  removed(s: number): void {
    if (this.#watchers.size) {
      this.#emit({ event: "down", reason: this.#why, ...this.#row(s, this.#d.now(), null) });
    }
  }

  /** Counts `n` bytes translated for slot s, outbound or inbound (the translator's hook). */
  countBytes(s: number, outbound: boolean, n: number): void {
    if (s >= this.#bytesOut.length) {
      const cap = Math.max(1024, this.#bytesOut.length * 2, s + 1);
      const o = new Float64Array(cap);
      o.set(this.#bytesOut);
      const i = new Float64Array(cap);
      i.set(this.#bytesIn);
      this.#bytesOut = o;
      this.#bytesIn = i;
    }
    if (outbound) this.#bytesOut[s]! += n;
    else this.#bytesIn[s]! += n;
  }

  /** Looks at `budget` slots' packet counts (all of them when absent), resuming where it stopped. */
  sample(budget = this.#hw): void {
    const t = this.#t;
    const now = this.#d.now();
    let s = this.#sampleCursor;
    for (let n = Math.min(budget, this.#hw); n > 0; n--) {
      if (s >= this.#hw) s = 0;
      if (t.isLive(s)) this.#observe(s, t.packetsOut(s) + t.packetsIn(s), now);
      s++;
    }
    this.#sampleCursor = s;
  }

  /**
   * Notes a verified host's refusal (`request` as `describeRequest` words
   * it) for its host view, and tells the watchers.
   */
  noteRefusal(src: number, result: number, request: string, now: number): void {
    // The cookie handshake is no refusal; forged or unverified sources are not a host's record.
    if (result === Result.COOKIE_REQUIRED || result === Result.NOT_AUTHORIZED) return;
    const name = resultName(result);
    let r = this.#refusedBy.get(src);
    if (!r) {
      if (this.#refusedBy.size >= 65536) return;
      r = { counts: new Float64Array(RESULT_COUNT), last: { request, result: name, at: now } };
      this.#refusedBy.set(src, r);
    }
    r.counts[result]!++;
    r.last = { request, result: name, at: now };
    if (this.#watchers.size) {
      this.#emit({ event: "refused", host: formatIPv4(src), request, result: name });
    }
  }

  #tenths(now: number): number {
    return Math.max(0, Math.floor((now - this.#d.startedAt) / 100)) + 1;
  }

  #emit(e: SessionEvent): void {
    for (const w of this.#watchers) {
      try {
        w(e);
      } catch (err) {
        log.debug(`session event watcher: ${err}`);
      }
    }
  }

  /** Notes when slot s's packet total moved since it was last looked at. */
  #observe(s: number, packets: number, now: number): void {
    const low = packets >>> 0;
    if (this.#seenPkts[s] !== low) {
      this.#seenPkts[s] = low;
      this.#seen[s] = this.#tenths(now);
    }
  }

  #row(s: number, now: number, counters: Map<number, SessionCounters> | null): SessionView {
    const t = this.#t;
    const icmp = t.proto(s) === IPPROTO_ICMP;
    const v: SessionView = {
      proto: protoName(t.proto(s)),
      internal: `${formatIPv4(t.a(s))}:${t.pa(s)}`,
      gatewayPort: t.pg(s),
      public: `${formatIPv4(t.r(s))}:${t.p(s)}`,
      // An inbound mapping (PCP, NAT-PMP, `dpm map`) has no remote: every remote reaches it.
      remote: t.isMap(s) ? "*" : `${formatIPv4(t.x(s))}${icmp ? "" : `:${t.px(s)}`}`,
      expiresIn: Math.max(0, Math.round((t.expiresAt(s) - now) / 1000)),
      flags: [t.isMap(s) ? "map" : "", t.replaced(s) ? "replaced" : "", t.shared(s) ? "shared" : ""]
        .filter(Boolean).join(","),
      packetsOut: t.packetsOut(s),
      packetsIn: t.packetsIn(s),
      bytesOut: this.#bytesOut[s] ?? 0,
      bytesIn: this.#bytesIn[s] ?? 0,
      owner: OWNER_NAMES[t.owner(s)],
    };
    const description = t.description(s);
    if (description) v.description = description;
    const c = counters?.get(gatewayKey(t.proto(s), t.a(s), t.pg(s)));
    if (c) {
      v.packetsOut += c.packetsOut;
      v.packetsIn += c.packetsIn;
      v.bytesOut! += c.bytesOut;
      v.bytesIn! += c.bytesIn;
    }
    // The kernel's share of the counts is known only when read (counters).
    if (counters || !this.#d.dataPath()?.can.countsPerSession) {
      this.#observe(s, v.packetsOut + v.packetsIn, now);
    }
    const born = this.#born[s] ?? 0;
    if (born) v.age = Math.max(0, Math.round((this.#tenths(now) - born) / 10));
    const seen = this.#seen[s] ?? 0;
    if (seen) v.idle = Math.max(0, Math.round((this.#tenths(now) - seen) / 10));
    return v;
  }
}

/** One table row for status output. */
export function sessionView(r: SessionRecord, now: number): SessionView {
  const icmp = r.proto === IPPROTO_ICMP;
  return {
    proto: protoName(r.proto),
    internal: `${formatIPv4(r.a)}:${r.pa}`,
    gatewayPort: r.pg,
    public: `${formatIPv4(r.r)}:${r.p}`,
    remote: `${formatIPv4(r.x)}${icmp ? "" : `:${r.px}`}`,
    expiresIn: Math.max(0, Math.round((r.expiresAt - now) / 1000)),
    flags: [r.replaced ? "replaced" : "", r.shared ? "shared" : ""].filter(Boolean).join(","),
    packetsOut: r.packetsOut,
    packetsIn: r.packetsIn,
    owner: r.owner ?? "adopted",
  };
}
