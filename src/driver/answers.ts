/**
 * The driver's answers on its query socket: `dpm query` (claims 11, 19,
 * 24: a session's public pair, reserving it first with `reserve`), `dpm
 * map`, `dpm status --driver` and `sessions`; how a session is shown; and
 * whose sessions and mappings a user may see.
 *
 * Whose sessions. On a socket open to a group (`--socket-group`) the
 * driver is told who asks ({@linkcode Asker}, from the socket layer) and
 * answers per user: root (and an asker not told, on a root-only socket)
 * gets everything; another user only the sessions and mappings of local
 * ports a socket of theirs holds, as {@linkcode OwnerOf} (the host's socket
 * tables, injected) says at the time of the request; anything else is
 * refused with `not-yours` and the reason. An ICMP session has no socket
 * to tell its owner: root's only. An asker who could not be told is
 * refused everything.
 *
 * Nothing here changes a session: the driver (`core.ts`) hands the answers
 * an {@linkcode AnswerSource}, its sessions and mappings to read and the
 * one thing they may ask of it, a new reservation.
 *
 * @module
 */

import { type Cidr, cidrContains, formatIPv4, parseAddrPort } from "../wire/addr.ts";
import { resultName } from "../control/result.ts";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet.ts";
import { protoName, protoNumber } from "../wire/meta.ts";
import type { DataPathStatus, DriverStatusReply, MapReply, QueryReply } from "../operator/types.ts";
import { type HostSession, State } from "./session.ts";
import { DEFAULT_MAP_LIFETIME, type HostMappings } from "./mappings.ts";

/**
 * Who sent a request on the query socket: the uid of the process that
 * connected, or null (with `why`) when it could not be told. No asker at
 * all means a socket only root can reach: everything is answered.
 */
export interface Asker {
  uid: number | null;
  why?: string;
}

/**
 * The uid of the socket(s) holding local port `port` of `proto`
 * (IPPROTO_UDP or IPPROTO_TCP) on this host; null when none does, or when
 * sockets of several users share it.
 */
export type OwnerOf = (proto: number, port: number) => number | null;

/** What the answers read from the driver, and the one thing they ask of it. */
export interface AnswerSource {
  /** Clock, ms. */
  readonly now: () => number;
  /** The host's LAN prefix: no session is reserved toward it. */
  readonly lan: Cidr;
  /** Who holds a local port (null: only root is answered about ports). */
  readonly ownerOf: OwnerOf | null;
  readonly mappings: HostMappings;
  /** All sessions. */
  sessions(): Iterable<HostSession>;
  /** The session (proto, a:pa -> x:px), if the driver has it. */
  find(proto: number, a: number, pa: number, x: number, px: number): HostSession | undefined;
  /** A new session, asked of the server at once (`dpm query --reserve`); PENDING until answered. */
  reserve(proto: number, a: number, pa: number, x: number, px: number): HostSession;
  // For `dpm status --driver`:
  /** The server, as `addr:port`. */
  server(): string;
  /** The server's epoch last seen (null: none yet). */
  epoch(): number | null;
  dataPath(): DataPathStatus;
  /** The driver's counters (`DriverCore.stats`). */
  stats(): Record<string, unknown>;
  /** Whether the server answers (`DriverCore.controlView`). */
  control(): NonNullable<DriverStatusReply["control"]>;
}

/**
 * Answers one request of the query socket (see `DriverCore.query`):
 * `query`, `map`, `status` or `sessions`, limited to `asker`'s (absent:
 * root's socket).
 */
export async function answer(
  src: AnswerSource,
  req: unknown,
  asker?: Asker,
): Promise<QueryReply | MapReply | { sessions: unknown[] } | DriverStatusReply> {
  const r = req as {
    op?: unknown;
    proto?: unknown;
    local?: unknown;
    remote?: unknown;
    reserve?: unknown;
  };
  const only = scope(asker);
  if (typeof only === "object" && only !== null) return only;
  const mine = (proto: number, port: number) =>
    only === null || notYours(src.ownerOf, only, proto, port) === null;
  const sessions = () =>
    [...src.sessions()].filter((s) => mine(s.proto, s.pa)).map((s) => sessionView(s, src.now));
  if (r?.op === "sessions") return { sessions: sessions() };
  if (r?.op === "map") return await answerMap(src, r as Record<string, unknown>, only);
  if (r?.op === "status") {
    return {
      role: "driver",
      server: src.server(),
      epoch: src.epoch(),
      dataPath: src.dataPath(),
      stats: src.stats(),
      sessions: sessions(),
      mappings: [...src.mappings.all()].filter((m) => mine(m.proto, m.pa)).map((m) =>
        src.mappings.view(m)
      ),
      control: src.control(),
    };
  }
  if (r?.op !== "query") {
    return { result: "error", error: `Unknown request ${JSON.stringify(r?.op)}` };
  }
  const proto = protoNumber(String(r.proto));
  const local = typeof r.local === "string" ? parseAddrPort(r.local) : null;
  const remote = typeof r.remote === "string" ? parseAddrPort(r.remote) : null;
  if (proto === undefined || !local || !remote) {
    return { result: "error", error: "Malformed query" };
  }
  if (only !== null) {
    // Before looking: another user's sessions are not even said to exist.
    const why = notYours(src.ownerOf, only, proto, local.port);
    if (why !== null) return { result: "not-yours", error: why };
  }
  let s = src.find(proto, local.addr, local.port, remote.addr, remote.port);
  if (!s && r.reserve === true) {
    if (cidrContains(src.lan, remote.addr)) {
      return {
        result: "error",
        error: `${formatIPv4(remote.addr)} is inside the LAN: no translation`,
      };
    }
    s = src.reserve(proto, local.addr, local.port, remote.addr, remote.port);
  }
  if (!s) return { result: "no-session" };
  if (s.state === State.PENDING) {
    s = await new Promise<HostSession>((resolve) => (s!.waiters ??= []).push(resolve));
  }
  return sessionView(s, src.now);
}

/** A `dpm map` request as it comes off the socket: every field unchecked. */
export interface MapAsk {
  proto?: unknown;
  port?: unknown;
  lifetime?: unknown;
  publicPort?: unknown;
  exact?: unknown;
}

/**
 * Answers `dpm map` (see `DriverCore.map`): checks the request, and with
 * `only` (a uid) that a socket of that user holds the port now, then asks
 * the server ({@linkcode HostMappings.request}).
 */
export async function answerMap(
  src: AnswerSource,
  r: MapAsk,
  only: number | null,
): Promise<MapReply> {
  const proto = protoNumber(String(r.proto));
  const port = Number(r.port);
  const lifetime = r.lifetime === undefined ? DEFAULT_MAP_LIFETIME : Number(r.lifetime);
  const publicPort = r.publicPort === undefined ? 0 : Number(r.publicPort);
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) {
    return {
      result: "error",
      error: `Cannot map protocol ${JSON.stringify(r.proto)}: want tcp or udp`,
    };
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    return { result: "error", error: `Bad port ${JSON.stringify(r.port)}: want 1-65535` };
  }
  if (only !== null) {
    const why = notYours(src.ownerOf, only, proto, port);
    if (why !== null) return { result: "not-yours", proto: protoName(proto), error: why };
  }
  if (!Number.isInteger(lifetime) || lifetime < 0 || lifetime > 0xffffffff) {
    return {
      result: "error",
      error: `Bad lifetime ${JSON.stringify(r.lifetime)}: want seconds >= 0`,
    };
  }
  if (!Number.isInteger(publicPort) || publicPort < 0 || publicPort > 65535) {
    return {
      result: "error",
      error: `Bad public port ${JSON.stringify(r.publicPort)}: want 1-65535`,
    };
  }
  return await src.mappings.request(proto, port, publicPort, r.exact === true, lifetime, only);
}

/**
 * Whose requests these are: null answers everything (no asker: root's
 * socket; or root); a uid limits the answers to that user's ports; a
 * refusal when the asker could not be told.
 */
function scope(asker: Asker | undefined): number | null | QueryReply {
  if (asker === undefined || asker.uid === 0) return null;
  if (asker.uid === null) {
    return {
      result: "not-yours",
      error: `The driver cannot tell which user asks (${
        asker.why ?? "no reason given"
      }), so it answers root only on this socket`,
    };
  }
  return asker.uid;
}

/** Why user `uid` may not ask about `proto` port `port`; null when it may. */
function notYours(
  ownerOf: OwnerOf | null,
  uid: number,
  proto: number,
  port: number,
): string | null {
  if (proto === IPPROTO_ICMP) {
    return "An ICMP session has no socket that tells its owner: only root may ask about it";
  }
  const owner = ownerOf ? ownerOf(proto, port) : null;
  if (owner === uid) return null;
  const what = `${protoName(proto)} port ${port}`;
  return owner === null
    ? `No socket of yours (uid ${uid}) holds ${what} (alone): bind it first (TCP: listen or connect)`
    : `${what} is held by another user's socket, not by yours (uid ${uid})`;
}

/** How `dpm query` and `dpm status --driver` show a session; `now` is the clock. */
function sessionView(
  s: HostSession,
  now: () => number,
): QueryReply & Record<string, unknown> {
  const base = {
    proto: protoName(s.proto),
    local: `${formatIPv4(s.a)}:${s.pa}`,
    remote: `${formatIPv4(s.x)}:${s.px}`,
  };
  if (s.state === State.ACTIVE) {
    return {
      result: "ok",
      ...base,
      public: `${formatIPv4(s.r)}:${s.p}`,
      gatewayPort: s.pg,
      replaced: s.replaced,
      shared: s.shared,
      expiresIn: Math.max(0, Math.round((s.expiresAt - now()) / 1000)),
      idle: Math.max(0, Math.round((now() - s.lastUsed) / 1000)),
    };
  }
  if (s.state === State.REFUSED) return { result: resultName(s.result), ...base };
  if (s.state === State.BYPASS) {
    return {
      result: "server-unreachable",
      ...base,
      fellBack: true,
      retries: s.retries,
      ...(s.proto !== IPPROTO_TCP
        ? { retryIn: Math.max(0, Math.round((s.renewAt - now()) / 1000)) }
        : {}),
    };
  }
  return { result: "pending", ...base };
}

/** When the server last answered and a request last timed out: `dpm status --driver`'s view. */
export class ServerHealth {
  /** ms; -1: never. */
  #lastAnswerAt = -1;
  #lastTimeoutAt = -1;

  answered(now: number): void {
    this.#lastAnswerAt = now;
  }

  timedOut(now: number): void {
    this.#lastTimeoutAt = now;
  }

  /** Seconds since each, and whether the server answers (unless its latest word is a timeout). */
  view(now: number): NonNullable<DriverStatusReply["control"]> {
    const ago = (t: number) => Math.max(0, Math.round((now - t) / 1000));
    return {
      ...(this.#lastAnswerAt >= 0 ? { lastAnswer: ago(this.#lastAnswerAt) } : {}),
      ...(this.#lastTimeoutAt >= 0 ? { lastTimeout: ago(this.#lastTimeoutAt) } : {}),
      answering: this.#lastTimeoutAt < 0 || this.#lastAnswerAt > this.#lastTimeoutAt,
    };
  }
}
