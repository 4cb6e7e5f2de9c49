/**
 * The inbound mappings this host holds (`dpm map`, the server's MAP): the
 * exchange that creates, renews or deletes one, asking them again after a
 * server restart for the rest of their lease, their expiry, and how they
 * are shown. A mapping is its own lease, apart from the sessions: every
 * remote's packets to its public pair reach `a:pa`, and the server's data
 * path does that, so nothing here touches packets.
 *
 * Parsing a `map` request from the query socket and whose ports a user may
 * map are in `answers.ts`; the driver (`core.ts`) owns the instance, sends
 * its requests, and tells it of epoch changes.
 *
 * A mapping made for an unprivileged user (`--socket-group`) lasts only
 * while that user's socket holds the port (`revokeOrphans`), which only this
 * driver can tell. So the server is never asked for more than a short
 * lease ({@linkcode USER_LEASE}) for it, and the driver renews it (`tick`)
 * while the user's socket holds the port, up to the lifetime the user asked
 * for: a driver that stops or restarts (and so forgets the mapping) leaves
 * it at the server for at most that short lease, never for the user's whole
 * lifetime.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import { ControlTimeout } from "../control/client.ts";
import { logger } from "../runtime/log.ts";
import { newNonce, Op, type Request, type Response } from "../control/proto.ts";
import { Result, resultName } from "../control/result.ts";
import { protoName } from "../wire/meta.ts";
import type { MapReply } from "../operator/types.ts";

const log = logger("driver");

/** An inbound mapping this host asked for with `dpm map` (the server's MAP). */
export interface HostMapping {
  proto: number;
  /** The host's port. */
  pa: number;
  /** The public pair every remote reaches `a:pa` at. */
  r: number;
  p: number;
  /** Granted lease, s, and when it ends (ms). */
  lifetime: number;
  expiresAt: number;
  /**
   * When the server's lease ends (ms): `expiresAt`, except for a user's
   * mapping, which the server holds for {@linkcode USER_LEASE} at a time.
   */
  leaseEnd: number;
  /** The server's lease, s (the renewal comes at half of it). */
  lease: number;
  /** What was asked: the suggested public port (0: any) and whether only it will do. */
  publicPort: number;
  exact: boolean;
  /** Being asked again after a server restart. */
  renewing: boolean;
  /**
   * The uid of the unprivileged user (`--socket-group`) it was made for,
   * while that user's socket holds the port; null when root made it.
   */
  owner: number | null;
}

/** The default lease of `dpm map`, s (as natpmpc's). */
export const DEFAULT_MAP_LIFETIME = 3600;

/**
 * The longest lease the server is asked for a mapping made for an
 * unprivileged user, s: how long it can outlive a driver that forgot it.
 */
export const USER_LEASE = 120;

/** What the mappings need from the driver. */
export interface HostMappingsOptions {
  /** The host's own address toward the gateway (the `a` of its mappings); 0: unknown. */
  local: number;
  /** Clock, ms. */
  now: () => number;
  /** Sends one control request to the server (with the driver's cookie). */
  ask: (req: Request) => Promise<Response>;
  /** Tells the driver the epoch of an answer (a change re-reserves everything). */
  noteEpoch: (epoch: number) => void;
}

/** The inbound mappings this host holds, by proto * 65536 + pa. */
export class HostMappings {
  readonly #maps = new Map<number, HostMapping>();
  readonly #local: number;
  readonly #now: () => number;
  readonly #ask: (req: Request) => Promise<Response>;
  readonly #noteEpoch: (epoch: number) => void;

  constructor(opts: HostMappingsOptions) {
    this.#local = opts.local;
    this.#now = opts.now;
    this.#ask = opts.ask;
    this.#noteEpoch = opts.noteEpoch;
  }

  /** All mappings held. */
  all(): IterableIterator<HostMapping> {
    return this.#maps.values();
  }

  /**
   * Asks the server to create, renew (asked again) or delete (lifetime 0)
   * the mapping of this host's `proto` port `port`, and keeps what it
   * answers. The arguments are checked already (`answers.ts`).
   */
  async request(
    proto: number,
    port: number,
    publicPort: number,
    exact: boolean,
    lifetime: number,
    owner: number | null = null,
  ): Promise<MapReply> {
    if (!this.#local) {
      return { result: "error", error: "This host's address toward the gateway is not known" };
    }
    const base = { proto: protoName(proto), local: `${formatIPv4(this.#local)}:${port}` };
    // A user's mapping: a short lease at the server, renewed by tick() up to `lifetime`.
    const ask = owner !== null && lifetime > 0 ? Math.min(lifetime, USER_LEASE) : lifetime;
    let res: Response;
    try {
      res = await this.#ask(this.#mapRequest(proto, port, publicPort, exact, ask));
    } catch (e) {
      return {
        result: "server-unreachable",
        ...base,
        error: e instanceof ControlTimeout ? "the server did not answer" : (e as Error).message,
      };
    }
    this.#noteEpoch(res.epoch);
    const k = proto * 65536 + port;
    if (lifetime === 0) {
      this.#maps.delete(k);
      if (res.result === Result.OK) {
        log.info(`mapping ${base.proto} ${base.local} deleted`);
        return { result: "ok", ...base, deleted: true };
      }
      return { result: resultName(res.result), ...base };
    }
    if (res.result !== Result.OK) {
      log.info(`mapping ${base.proto} ${base.local} refused: ${resultName(res.result)}`);
      return { result: resultName(res.result), ...base };
    }
    // The lifetime the user gets: what was asked, unless the server granted less than the short lease.
    const life = ask < lifetime && res.lifetime >= ask ? lifetime : res.lifetime;
    const now = this.#now();
    const m: HostMapping = {
      proto,
      pa: port,
      r: res.publicAddr,
      p: res.publicPort,
      lifetime: life,
      expiresAt: now + life * 1000,
      leaseEnd: now + res.lifetime * 1000,
      lease: res.lifetime,
      publicPort,
      exact,
      renewing: false,
      owner,
    };
    const had = this.#maps.has(k);
    this.#maps.set(k, m);
    log.info(
      `mapping ${base.proto} ${formatIPv4(m.r)}:${m.p} -> ${base.local} ${
        had ? "renewed" : "created"
      } for ${m.lifetime}s`,
    );
    return this.view(m);
  }

  #mapRequest(
    proto: number,
    pa: number,
    publicPort: number,
    exact: boolean,
    lifetime: number,
  ): Request {
    return {
      op: Op.MAP,
      nonce: newNonce(),
      proto,
      replaceable: !exact,
      internalAddr: this.#local,
      internalPort: pa,
      remoteAddr: 0,
      remotePort: publicPort,
      lifetime,
    };
  }

  /** After a server restart (its epoch changed): every mapping asked again. */
  again(): void {
    for (const m of this.#maps.values()) this.#again(m);
  }

  /** The mapping asked again for the rest of its lease (a user's: of its short lease at most). */
  #again(m: HostMapping): void {
    if (m.renewing) return;
    const end = m.owner === null
      ? m.expiresAt
      : Math.min(m.expiresAt, this.#now() + USER_LEASE * 1000);
    const left = Math.ceil((end - this.#now()) / 1000);
    if (left <= 0) return;
    m.renewing = true;
    // Ask for the public pair it had, so that whoever learned it can keep using it.
    this.#ask(this.#mapRequest(m.proto, m.pa, m.p, false, left)).then((res) => {
      m.renewing = false;
      const k = m.proto * 65536 + m.pa;
      if (this.#maps.get(k) !== m) return;
      if (res.result !== Result.OK) {
        log.warn(
          `mapping ${protoName(m.proto)} ${formatIPv4(m.r)}:${m.p} lost after a server restart: ${
            resultName(res.result)
          }`,
        );
        this.#maps.delete(k);
        return;
      }
      if (res.publicAddr !== m.r || res.publicPort !== m.p) {
        log.warn(
          `mapping ${protoName(m.proto)} :${m.pa} moved to ${
            formatIPv4(res.publicAddr)
          }:${res.publicPort} after a server restart`,
        );
      }
      m.r = res.publicAddr;
      m.p = res.publicPort;
      m.lease = res.lifetime;
      m.leaseEnd = this.#now() + res.lifetime * 1000;
      if (m.owner === null) {
        m.lifetime = res.lifetime;
        m.expiresAt = m.leaseEnd;
      }
    }).catch(() => {
      m.renewing = false;
    });
  }

  /**
   * The periodic work (from the driver's tick): forgets mappings whose
   * lease ended, and renews the short server lease of each user's mapping
   * at half of it, while the user's lifetime lasts.
   */
  tick(now: number): void {
    this.expire(now);
    for (const m of this.#maps.values()) {
      if (m.owner === null || m.renewing || now >= m.expiresAt) continue;
      if (now < m.leaseEnd - m.lease * 500) continue;
      this.#again(m);
    }
  }

  /**
   * Deletes the mappings made for an unprivileged user whose socket no
   * longer holds the port (`ownerOf`: the port's owner now): a mapping must
   * not outlive the socket that justified it, or whatever binds the port
   * next would be reachable from outside on that user's word.
   */
  revokeOrphans(ownerOf: (proto: number, port: number) => number | null): void {
    for (const [k, m] of this.#maps) {
      if (m.owner === null || m.renewing || ownerOf(m.proto, m.pa) === m.owner) continue;
      this.#maps.delete(k);
      log.info(
        `mapping ${protoName(m.proto)} ${formatIPv4(m.r)}:${m.p} -> :${m.pa} deleted: ` +
          `uid ${m.owner} no longer holds the port`,
      );
      this.#deleteAtServer(m.proto, m.pa);
    }
  }

  /**
   * A MAP answer that came after its request timed out: the user was told
   * the server did not answer, so a mapping it granted is not wanted (or,
   * when the driver keeps one, already known): delete what is not known.
   */
  late(res: Response): void {
    if (res.op !== Op.MAP || res.result !== Result.OK || res.lifetime === 0) return;
    if (this.#maps.has(res.proto * 65536 + res.internalPort)) return;
    log.info(`late MAP answer for :${res.internalPort}: deleting the mapping nobody waits for`);
    this.#deleteAtServer(res.proto, res.internalPort);
  }

  #deleteAtServer(proto: number, pa: number): void {
    this.#ask(this.#mapRequest(proto, pa, 0, false, 0)).catch((e) => {
      log.warn(`deleting mapping :${pa} at the server: ${(e as Error).message}`);
    });
  }

  /** Forgets the mappings whose lease (the user's, or the server's) ended. */
  expire(now: number): void {
    for (const [k, m] of this.#maps) {
      if (now >= m.expiresAt || now >= m.leaseEnd) this.#maps.delete(k);
    }
  }

  /** How `dpm map` and `dpm status --driver` show a mapping. */
  view(m: HostMapping): MapReply {
    return {
      result: "ok",
      proto: protoName(m.proto),
      local: `${formatIPv4(this.#local)}:${m.pa}`,
      public: `${formatIPv4(m.r)}:${m.p}`,
      lifetime: m.lifetime,
      expiresIn: Math.max(0, Math.round((m.expiresAt - this.#now()) / 1000)),
    };
  }
}
