/**
 * A small client API for applications on a host that runs `dpm driver`:
 * ask for the public address and port a session uses (claims 11, 19, 24),
 * before or after its first packet, to put it into a payload (SIP Contact and
 * Via, SDP, a rendezvous message) without an ALG.
 *
 * It speaks to the driver's query socket (`$DPM_DRIVER_SOCKET`, else
 * `/run/dpm/driver.sock`; see `dpm driver --socket` and `--socket-group`);
 * the driver answers only what it knows of this host's sessions. On a
 * socket open to a group, a user other than root is answered only about
 * its own ports (those a socket of that user holds: UDP bound, TCP
 * listening or connected); anything else throws {@linkcode SessionRefused}
 * with reason `"not-yours"`.
 *
 * @example Learn the public pair before sending
 * ```ts ignore
 * import { reserve } from "@dpm/dpm";
 *
 * const pub = await reserve("udp", "10.0.0.11:5060", "198.51.100.7:5060");
 * const contact = `Contact: <sip:alice@${pub.address}:${pub.port}>`;
 * console.log(contact); // Contact: <sip:alice@203.0.113.10:5060>
 * ```
 *
 * @example Ask about a session that already exists
 * ```ts ignore
 * import { queryPublic } from "@dpm/dpm";
 *
 * const pub = await queryPublic("tcp", "10.0.0.11:40000", "198.51.100.7:443");
 * if (pub === null) console.log("no such session (yet)");
 * ```
 *
 * @example Let every outside peer reach a local port
 * ```ts ignore
 * import { map } from "@dpm/dpm";
 *
 * const m = await map("udp", 6000, { lifetime: 600 });
 * console.log(`reach me at ${m.public}`); // every remote, until m.expiresIn runs out
 * await map("udp", 6000, { lifetime: 0 }); // delete it
 * ```
 *
 * The examples run as they are against a real driver in a test
 * (`tests/root/client_api_root_test.ts`).
 *
 * @module
 */

import { requestLocal } from "./operator/socket.ts";

/** A session's public pair as the driver reports it. */
export interface PublicPair {
  /** The public address, dotted quad. */
  address: string;
  /** The public port (ICMP: identifier). */
  port: number;
  /** `address:port`. */
  public: string;
  /** The port was replaced (not the application's own). */
  replaced: boolean;
  /** Shared with another host's session, told apart by the remote (claims 8-10). */
  shared: boolean;
  /** Seconds until the lease ends unless renewed (the driver renews busy sessions). */
  expiresIn: number;
}

/**
 * The driver's socket when no `socket` option is given: `$DPM_DRIVER_SOCKET`
 * if set (and readable), else `/run/dpm/driver.sock`.
 */
export function defaultSocket(): string {
  try {
    return Deno.env.get("DPM_DRIVER_SOCKET") || "/run/dpm/driver.sock";
  } catch {
    return "/run/dpm/driver.sock"; // no --allow-env
  }
}

/** Options of {@linkcode queryPublic} and {@linkcode reserve}. */
export interface QueryOptions {
  /** The driver's query socket. @default {defaultSocket()} ($DPM_DRIVER_SOCKET or "/run/dpm/driver.sock") */
  socket?: string;
  /** How long to wait for the driver's answer, ms. @default {15000} */
  timeoutMs?: number;
}

/** No driver answers on the socket (not running, or no permission). */
export class DriverUnavailable extends Error {
  override name = "DriverUnavailable";
}

/**
 * The server refused the session (conflict, quota, ...), the driver could
 * not ask it, or the driver refused to answer this user (`"not-yours"`).
 */
export class SessionRefused extends Error {
  override name = "SessionRefused";
  /**
   * The reason as dpm names it ("conflict", "quota-exceeded",
   * "server-unreachable", ...; "not-yours": the port is not held by a socket
   * of the asking user, or the driver cannot tell who asks). `detail` is the
   * driver's explanation, when it gave one.
   */
  constructor(readonly reason: string, what: string, readonly detail = "") {
    super(`${what}: ${reason}${detail ? ` (${detail})` : ""}`);
  }
}

/** The driver's refusal of another user's port, as {@linkcode SessionRefused}; null otherwise. */
function notYours(res: Record<string, unknown>, what: string): SessionRefused | null {
  return res.result === "not-yours"
    ? new SessionRefused("not-yours", what, typeof res.error === "string" ? res.error : "")
    : null;
}

type Proto = "udp" | "tcp" | "icmp";

/** One request to the driver's socket; DriverUnavailable when nothing answers there. */
async function callDriver(
  req: Record<string, unknown>,
  opts: QueryOptions,
): Promise<Record<string, unknown>> {
  const socket = opts.socket ?? defaultSocket();
  try {
    return await requestLocal(socket, req, opts.timeoutMs ?? 15_000) as Record<string, unknown>;
  } catch (e) {
    throw new DriverUnavailable(`no dpm driver answers on ${socket}: ${(e as Error).message}`);
  }
}

async function ask(
  proto: Proto,
  local: string,
  remote: string,
  reserveFirst: boolean,
  opts: QueryOptions,
): Promise<PublicPair | null> {
  const res = await callDriver(
    { op: "query", proto, local, remote, reserve: reserveFirst },
    opts,
  );
  const what = `${proto} ${local} -> ${remote}`;
  if (res.result === "no-session") return null;
  const refused = notYours(res, what);
  if (refused) throw refused;
  if (res.result !== "ok") {
    throw new SessionRefused(String(res.error ?? res.result ?? "unknown answer"), what);
  }
  const pub = String(res.public);
  const i = pub.lastIndexOf(":");
  return {
    address: pub.slice(0, i),
    port: Number(pub.slice(i + 1)),
    public: pub,
    replaced: res.replaced === true,
    shared: res.shared === true,
    expiresIn: Number(res.expiresIn ?? 0),
  };
}

/**
 * The public pair of the session (proto, local, remote), or null when the
 * driver knows no such session.
 *
 * @throws {DriverUnavailable} when no driver answers
 * @throws {SessionRefused} when the session exists but was refused, or
 *   ("not-yours") the local port is not the calling user's
 */
export function queryPublic(
  proto: Proto,
  local: string,
  remote: string,
  opts: QueryOptions = {},
): Promise<PublicPair | null> {
  return ask(proto, local, remote, false, opts);
}

/**
 * Reserves the session (proto, local, remote) if the driver has none yet,
 * and returns its public pair: what the remote will see as the source.
 *
 * @throws {DriverUnavailable} when no driver answers
 * @throws {SessionRefused} when the server refuses it, or ("not-yours")
 *   the local port is not the calling user's
 */
export async function reserve(
  proto: Proto,
  local: string,
  remote: string,
  opts: QueryOptions = {},
): Promise<PublicPair> {
  const p = await ask(proto, local, remote, true, opts);
  if (!p) throw new SessionRefused("no-session", `${proto} ${local} -> ${remote}`);
  return p;
}

/** Options of {@linkcode map}. */
export interface MapOptions extends QueryOptions {
  /** Lease in seconds; 0 deletes the mapping. @default {3600} */
  lifetime?: number;
  /** Suggested public port. @default the local port */
  publicPort?: number;
  /** Only the suggested public port will do (else {@linkcode SessionRefused} "conflict"). */
  exact?: boolean;
}

/** An inbound mapping as the driver reports it. */
export interface Mapping {
  /** `addr:port` every outside peer reaches the local port at (empty after a delete). */
  public: string;
  address: string;
  port: number;
  /** `a:pa`: this host's address and the local port. */
  local: string;
  /** Seconds until the mapping ends unless asked again (0 after a delete). */
  expiresIn: number;
  /** The call deleted the mapping (lifetime 0). */
  deleted: boolean;
}

/**
 * Creates (or renews, asked again) an inbound mapping of this host's
 * `proto` port `port` at the gateway, like PCP MAP: every outside peer's
 * packets to the returned public pair reach the port. `lifetime: 0` deletes
 * it.
 *
 * @throws {DriverUnavailable} when no driver answers
 * @throws {SessionRefused} when the server refuses it ("conflict",
 *   "quota-exceeded", ...; "not-yours": no socket of the calling user holds
 *   the port); a delete of a mapping that does not exist succeeds
 */
export async function map(
  proto: "udp" | "tcp",
  port: number,
  opts: MapOptions = {},
): Promise<Mapping> {
  const res = await callDriver({
    op: "map",
    proto,
    port,
    lifetime: opts.lifetime ?? 3600,
    ...(opts.publicPort !== undefined ? { publicPort: opts.publicPort } : {}),
    exact: opts.exact === true,
  }, opts);
  if (res.result !== "ok") {
    throw notYours(res, `map ${proto} ${port}`) ?? new SessionRefused(
      String(res.error ?? res.result ?? "unknown answer"),
      `map ${proto} ${port}`,
    );
  }
  const pub = typeof res.public === "string" ? res.public : "";
  const i = pub.lastIndexOf(":");
  return {
    public: pub,
    address: i > 0 ? pub.slice(0, i) : "",
    port: i > 0 ? Number(pub.slice(i + 1)) : 0,
    local: String(res.local ?? ""),
    expiresIn: Number(res.expiresIn ?? 0),
    deleted: res.deleted === true,
  };
}
