/**
 * A small client API for applications on a host that runs `dpm driver`:
 * ask for the public address and port a session uses (claims 11, 19, 24),
 * before or after its first packet, to put it into a payload (SIP Contact and
 * Via, SDP, a rendezvous message) without an ALG.
 *
 * It speaks to the driver's query socket (`/run/dpm/driver.sock` by default,
 * see `dpm driver --socket`); the driver answers only what it knows of this
 * host's sessions.
 *
 * @example Learn the public pair before sending
 * ```ts ignore
 * import { reserve } from "@dpm/dpm";
 *
 * const pub = await reserve("udp", "10.0.0.11:5060", "198.51.100.7:5060");
 * const contact = `Contact: <sip:alice@${pub.address}:${pub.port}>`;
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

/** Options of {@linkcode queryPublic} and {@linkcode reserve}. */
export interface QueryOptions {
  /** The driver's query socket. @default {"/run/dpm/driver.sock"} */
  socket?: string;
  /** How long to wait for the driver's answer, ms. @default {15000} */
  timeoutMs?: number;
}

/** No driver answers on the socket (not running, or no permission). */
export class DriverUnavailable extends Error {
  override name = "DriverUnavailable";
}

/** The server refused the session (conflict, quota, ...), or the driver could not ask it. */
export class SessionRefused extends Error {
  override name = "SessionRefused";
  /** The reason as dpm names it ("conflict", "quota-exceeded", "server-unreachable", ...). */
  constructor(readonly reason: string, what: string) {
    super(`${what}: ${reason}`);
  }
}

type Proto = "udp" | "tcp" | "icmp";

async function ask(
  proto: Proto,
  local: string,
  remote: string,
  reserveFirst: boolean,
  opts: QueryOptions,
): Promise<PublicPair | null> {
  const socket = opts.socket ?? "/run/dpm/driver.sock";
  let res: Record<string, unknown>;
  try {
    res = await requestLocal(socket, {
      op: "query",
      proto,
      local,
      remote,
      reserve: reserveFirst,
    }, opts.timeoutMs ?? 15_000) as Record<string, unknown>;
  } catch (e) {
    throw new DriverUnavailable(`no dpm driver answers on ${socket}: ${(e as Error).message}`);
  }
  const what = `${proto} ${local} -> ${remote}`;
  if (res.result === "no-session") return null;
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
 * @throws {SessionRefused} when the session exists but was refused
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
 * @throws {SessionRefused} when the server refuses it
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
