/**
 * The driver's lease client: it reserves a session's public pair at the
 * server, keeps the lease while the session carries traffic, and gives it
 * back.
 *
 * Theory of operation (the driver's whole story is in `core.ts`). A new
 * session is reserved from its first packet ({@linkcode Leases.reserve}):
 * a TCP or UDP session proposes a gateway port from the drivers' share
 * (`control/pg.ts`) that no session here uses and that is not quarantined,
 * is programmed at once and committed with the turn (`turn.ts`). The answer
 * (`#apply`) activates the session (perhaps at another
 * gateway port: the proposal was taken), refuses it (its held packets are
 * dropped, the application gets an ICMP refusal), or, when none comes, lets
 * it fall back to ordinary NAT and (UDP, ICMP) reserves it again in the
 * background. {@linkcode Leases.tick} renews busy sessions before they
 * expire, keeps idle ones as long as RFC 4787/5382/5508 ask, releases the
 * rest (`releases.ts`); a new server epoch re-reserves everything, proposing
 * the gateway ports the sessions have. A gateway port the server may still
 * hold for a session this driver let go is not proposed again until the
 * server confirmed the release or the lease ran out (`#quarantine`).
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import { ControlTimeout, type ControlTransport } from "../control/client.ts";
import { logger } from "../runtime/log.ts";
import { newNonce, Op, type Request, type Response } from "../control/proto.ts";
import { Result, resultName } from "../control/result.ts";
import { driverShare } from "../control/pg.ts";
import { IPPROTO_ICMP, IPPROTO_TCP } from "../wire/packet.ts";
import { type DriverDataPath, hostKey } from "../datapath/datapath.ts";
import { Verdict, type VerdictValue } from "../wire/meta.ts";
import { describeSession, lanKey } from "../wire/tuple.ts";
import { CLOSE_RST, type HostSession, type HostSessions, isClosed, State } from "./session.ts";
import { Releases } from "./releases.ts";
import * as timers from "./timers.ts";
import type { HostMappings } from "./mappings.ts";
import { ServerHealth } from "./answers.ts";
import type { Turn } from "./turn.ts";

const log = logger("driver");

/** The counters the lease client keeps (the driver core's, shared with its other parts). */
export interface LeaseCounters {
  reserved: number;
  refused: number;
  renewed: number;
  released: number;
  epochChanges: number;
  /** Sessions that fell back to ordinary NAT (no answer), and of them those reserved since. */
  fellBack: number;
  recovered: number;
  /** Grants given back because the driver learned of them too late or no longer wanted them. */
  lateReleased: number;
  /** Sessions that proposed their gateway port, and of them those the server moved to another. */
  proposed: number;
  moved: number;
}

/** What the lease client needs of the driver core. */
export interface LeaseContext {
  cfg: Pick<DriverConfig, "server" | "gatewayPorts">;
  client: ControlTransport;
  sessions: HostSessions;
  counters: LeaseCounters;
  now(): number;
  turn: Turn;
  dp(): DriverDataPath | null;
  /** The host's inbound mappings: told of a new epoch and of late MAP answers. */
  mappings: HostMappings;
  /** Lets `s`'s held packets go with `verdict` (`translate.ts`). */
  settleHeld(s: HostSession, verdict: VerdictValue): void;
  /** Tells the application that proposed session `s` was refused (`translate.ts`). */
  refuseSession(s: HostSession): void;
}

/** The reservations, renewals and releases of one driver's sessions. */
export class Leases {
  readonly #c: LeaseContext;
  readonly #cfg: Pick<DriverConfig, "server" | "gatewayPorts">;
  readonly #client: ControlTransport;
  readonly #sessions: HostSessions;
  readonly #counters: LeaseCounters;
  readonly #turn: Turn;
  readonly now: () => number;
  /** The drivers' share of the gateway ports: what this driver proposes from. */
  readonly #share: [number, number];
  /**
   * Gateway ports not to propose (lanKey → until, ms): the server may still
   * hold them for a session this driver let go, or drop what goes to them.
   */
  readonly #quarantined = new Map<number, number>();
  /** Releases, and those asked again from `poll` (`releases.ts`). */
  readonly #releases: Releases;
  #epoch: number | null = null;
  /** When the server last answered and a request last timed out. */
  readonly health = new ServerHealth();
  /** The answer to a reservation (one function for every session: no closure per request). */
  readonly #reserved = (s: HostSession, res: Response | null): void => {
    if (res) this.health.answered(this.now());
    else this.health.timedOut(this.now());
    this.#apply(s, res);
  };

  constructor(ctx: LeaseContext) {
    this.#c = ctx;
    this.#cfg = ctx.cfg;
    this.#client = ctx.client;
    this.#sessions = ctx.sessions;
    this.#counters = ctx.counters;
    this.#turn = ctx.turn;
    this.now = () => ctx.now();
    this.#share = driverShare(ctx.cfg.gatewayPorts);
    this.#releases = new Releases({
      send: (s, op) => this.#send(s, op),
      sessions: ctx.sessions,
      now: () => this.now(),
      released: (s) => {
        this.#counters.released++;
        // The server let it go: its gateway port may be proposed again.
        if (s.pg) this.#quarantined.delete(lanKey(s.proto, s.a, s.pg));
      },
    });
  }

  /** The server's epoch as last answered (null: no answer yet). */
  get epoch(): number | null {
    return this.#epoch;
  }

  #delete(s: HostSession): void {
    s.deleted = true;
    this.#turn.unprogram(s);
    this.#sessions.remove(s);
    // The server may still hold it (a release on its way, a lease it ends later).
    if (s.pg) this.#quarantine(s.proto, s.a, s.pg, Math.max(s.expiresAt, this.now()) + 60_000);
  }

  /** Keeps gateway port `pg` of (proto, a) from being proposed until `until` (ms). */
  #quarantine(proto: number, a: number, pg: number, until: number): void {
    const k = lanKey(proto, a, pg);
    if ((this.#quarantined.get(k) ?? 0) < until) this.#quarantined.set(k, until);
  }

  /**
   * A gateway port from the drivers' share that no session of (proto, a)
   * here uses and that is not quarantined, or 0 when there is none.
   */
  #proposal(proto: number, a: number, now: number): number {
    const [lo, hi] = this.#share;
    const range = hi - lo + 1;
    const free = (pg: number) => {
      if (this.#sessions.byPg(proto, a, pg)) return false;
      const k = lanKey(proto, a, pg);
      const until = this.#quarantined.get(k);
      if (until === undefined) return true;
      if (until > now) return false;
      this.#quarantined.delete(k);
      return true;
    };
    for (let t = 0; t < 32; t++) {
      const pg = lo + Math.floor(Math.random() * range);
      if (free(pg)) return pg;
    }
    const start = Math.floor(Math.random() * range);
    for (let k = 0; k < range; k++) {
      const pg = lo + ((start + k) % range);
      if (free(pg)) return pg;
    }
    return 0;
  }

  /** Sends one control request about `s` (a fresh nonce; the server default lifetime). */
  #send(s: HostSession, op: number): Promise<Response> {
    return this.ask({
      op,
      nonce: newNonce(),
      proto: s.proto,
      replaceable: s.replaceable,
      internalAddr: s.a,
      internalPort: s.pa,
      remoteAddr: s.x,
      remotePort: s.px,
      lifetime: 0,
    });
  }

  /** Sends one control request (the client carries the server's cookie). */
  ask(req: Request): Promise<Response> {
    // Answers and timeouts are timed for `dpm status --driver`.
    return this.#client.request(req).then((res) => {
      this.health.answered(this.now());
      return res;
    }, (e) => {
      if (e instanceof ControlTimeout) this.health.timedOut(this.now());
      throw e;
    });
  }

  /**
   * Asks the server for new session `s` (from its first packet, or a query
   * that reserves). A TCP or UDP session proposes its gateway port when it
   * can: programmed now, committed at the end of the turn, when its first
   * packets go too (the gateway holds them until the grant). The answer
   * applies in `#apply`.
   */
  reserve(s: HostSession): void {
    if (s.proto !== IPPROTO_ICMP && this.#client.proposes) {
      const pg = this.#proposal(s.proto, s.a, this.now());
      if (pg !== 0) {
        s.pg = pg;
        this.#sessions.setPg(s);
        this.#turn.program(s);
        this.#counters.proposed++;
      }
    }
    this.#client.submit(Op.RESERVE, s, this.#reserved, { pg: s.pg, urgent: true });
    this.#turn.ends();
  }

  #apply(s: HostSession, res: Response | null): void {
    const now = this.now();
    if (s.deleted) {
      // Answered after the session was dropped here: hand a grant straight back.
      if (res?.result === Result.OK) this.#releases.send(s);
      this.#wake(s);
      return;
    }
    if (res === null) {
      // No answer: pass the session untranslated (ordinary NAT still serves it).
      const retry = s.proto !== IPPROTO_TCP;
      log.warn(
        `no answer from the server for ${
          describeSession(s)
        }: fell back to ordinary NAT, untranslated` +
          (retry ? "; reserving it again in the background" : ""),
      );
      this.#unpropose(s, now + timers.TCP_IDLE_MS);
      s.state = State.BYPASS;
      s.result = -1;
      s.expiresAt = now + timers.NEGATIVE_IDLE_MS;
      s.retries = 0;
      s.renewAt = now + timers.bypassRetryMs(0);
      this.#counters.fellBack++;
      // The server may have granted it and lost only the answer: give that back
      // (TCP stays untranslated while it lasts; UDP and ICMP pick it up again).
      if (!retry) this.#releases.send(s);
      this.#c.settleHeld(s, Verdict.ACCEPT);
    } else {
      this.noteEpoch(res.epoch);
      s.result = res.result;
      if (res.result === Result.OK) {
        const was = s.pg;
        s.state = State.ACTIVE;
        s.r = res.publicAddr;
        s.p = res.publicPort;
        s.pg = res.gatewayPort;
        s.replaced = res.replaced;
        s.shared = res.shared;
        this.#setLifetime(s, res.lifetime, now);
        this.#sessions.setPg(s, was);
        if (was !== 0 && was !== s.pg) {
          // The proposal was taken: the session moves to the server's Pg (what
          // went ahead to the proposed one was dropped at the gateway).
          this.#counters.moved++;
          this.#quarantine(s.proto, s.a, was, now + 10_000);
          log.debug(`${describeSession(s)} moved from Pg ${was} (taken) to ${s.pg}`);
        }
        this.#turn.program(s);
        this.#counters.reserved++;
        if (
          res.gatewayPort < this.#cfg.gatewayPorts[0] || res.gatewayPort > this.#cfg.gatewayPorts[1]
        ) {
          log.error(
            `server gave gateway port ${res.gatewayPort} outside --gateway-ports ` +
              `${this.#cfg.gatewayPorts.join("-")}: replies will not be restored; align both sides`,
          );
        }
        log.debug(`reserved ${describeSession(s)}`);
        // Held here (no proposal): they go once the grant is committed.
        if (s.held) this.#turn.settleWhenCommitted(s);
      } else {
        const proposed = s.programmed !== 0 && !s.held;
        // The gateway dropped what went ahead; this port stays out of proposals a little.
        this.#unpropose(s, now + 10_000);
        s.state = State.REFUSED;
        // Try again later: soon when the cause may pass (quota, resources, rate),
        // later for a conflict, which lasts as long as the other session.
        s.expiresAt = now +
          (res.result === Result.CONFLICT ? timers.NEGATIVE_IDLE_MS : timers.RETRY_SOON_MS);
        this.#counters.refused++;
        log.info(`server refused ${describeSession(s)}: ${resultName(res.result)}`);
        if (proposed) this.#c.refuseSession(s);
        this.#c.settleHeld(s, Verdict.DROP);
      }
    }
    this.#wake(s);
  }

  /**
   * `s` did not get the gateway port it proposed (refused, or no answer):
   * its translation goes (the kernel path forgets its conntrack, so its next
   * packet meets what it is now), and the port is not proposed again before
   * `until`.
   */
  #unpropose(s: HostSession, until: number): void {
    this.#turn.unprogram(s);
    if (s.pg) {
      this.#quarantine(s.proto, s.a, s.pg, until);
      this.#sessions.unsetPg(s);
      s.pg = 0;
    }
  }

  #wake(s: HostSession): void {
    const w = s.waiters;
    s.waiters = null;
    if (w) { for (const f of w) f(s); }
  }

  /**
   * A fallen-back UDP or ICMP session is reserved again; once granted it is
   * translated from its next packet on (on the kernel path the untranslated
   * conntrack is deleted, so that the next packet meets the map).
   */
  #retryBypass(s: HostSession): void {
    s.renewing = true;
    s.retries++;
    this.#send(s, Op.RESERVE).then((res) => {
      s.renewing = false;
      if (s.deleted || s.state !== State.BYPASS) {
        if (res.result === Result.OK && s.deleted) this.#releases.send(s);
        return;
      }
      if (res.result !== Result.OK) {
        // Keep the flow untranslated (dropping it now would break it); ask again later.
        s.renewAt = this.now() + timers.bypassRetryMs(s.retries);
        return;
      }
      this.#recover(s, res);
    }).catch(() => {
      s.renewing = false;
      s.renewAt = this.now() + timers.bypassRetryMs(s.retries);
    });
  }

  #recover(s: HostSession, res: Response): void {
    // Its packets so far made an untranslated conntrack: remove it, so the
    // next packet is translated (sessionDown of a key never programmed only
    // deletes that conntrack).
    this.#c.dp()?.sessionDown(this.#turn.key(s, res.gatewayPort));
    this.#counters.recovered++;
    log.info(
      `${describeSession(s)} reserved after falling back: ${
        formatIPv4(res.publicAddr)
      }:${res.publicPort}` +
        " from now on",
    );
    this.#apply(s, res);
  }

  /** An answer that came after its request timed out. */
  onLate(res: Response): void {
    if (res.op === Op.MAP) return this.#c.mappings.late(res);
    if (res.op !== Op.RESERVE || res.result !== Result.OK) return;
    const s = this.#sessions.get(
      res.proto,
      res.internalAddr,
      res.internalPort,
      res.remoteAddr,
      res.remotePort,
    );
    // Active here: the server's reserve is idempotent, so this is the grant it holds.
    if (s?.state === State.ACTIVE) return;
    if (s?.state === State.BYPASS && s.proto !== IPPROTO_TCP && !s.renewing) {
      return this.#recover(s, res);
    }
    if (s?.state === State.PENDING || s?.renewing) return; // a request about it is on its way
    // Granted, but nobody here uses it: give it back.
    this.#counters.lateReleased++;
    this.#releases.send(
      s ?? {
        proto: res.proto,
        replaceable: false,
        a: res.internalAddr,
        pa: res.internalPort,
        x: res.remoteAddr,
        px: res.remotePort,
      } as HostSession,
    );
  }

  #setLifetime(s: HostSession, lifetime: number, now: number): void {
    s.lifetime = lifetime;
    s.expiresAt = now + lifetime * 1000;
    s.renewAt = timers.renewAt(now, lifetime);
    s.busy = false;
  }

  /**
   * Asks again the releases that are due, and reads the kernel's activity
   * (kernel path) into the sessions' lease state.
   */
  poll(now: number): void {
    this.#pollActivity(now);
    this.#releases.retry(now);
  }

  #pollActivity(now: number): void {
    const act = this.#c.dp()?.activity();
    if (!act) return;
    for (const s of this.#sessions.all()) {
      // Only sessions the kernel translates have activity (not ICMP, on the kernel path).
      if (s.state !== State.ACTIVE) continue;
      const a = act.get(hostKey(s.proto, s.a, s.pg));
      if (!a) continue;
      if (a.packets !== s.kernelPackets) {
        s.kernelPackets = a.packets;
        s.busy = true;
        s.lastUsed = now;
      }
      if (a.closed && s.proto === IPPROTO_TCP) s.closing |= CLOSE_RST;
      else if (s.proto === IPPROTO_TCP && (s.closing & CLOSE_RST) && !a.closed) s.closing = 0;
    }
  }

  noteEpoch(epoch: number): void {
    if (this.#epoch !== null && this.#epoch !== epoch) {
      this.#counters.epochChanges++;
      log.warn(
        `server epoch changed (${this.#epoch.toString(16)} → ${
          epoch.toString(16)
        }): re-reserving sessions`,
      );
      this.#epoch = epoch;
      for (const s of this.#sessions.all()) if (s.state === State.ACTIVE) this.reserveAgain(s);
      this.#c.mappings.again();
      return;
    }
    this.#epoch = epoch;
  }

  /**
   * The server lost `s` (a new epoch, NO_SUCH_SESSION to a renewal, or port
   * unreachable from G:Pg): reserve it again, proposing the gateway port it
   * has, so that nothing changes on the host when the server grants it.
   */
  reserveAgain(s: HostSession): void {
    if (s.renewing || s.state === State.PENDING) return;
    s.renewing = true;
    this.#client.submit(Op.RESERVE, s, this.#reservedAgain, {
      pg: s.state === State.ACTIVE ? s.pg : 0,
    });
  }

  readonly #reservedAgain = (s: HostSession, res: Response | null): void => {
    s.renewing = false;
    if (res === null) {
      this.health.timedOut(this.now());
      return;
    }
    this.health.answered(this.now());
    if (res.result === Result.OK && (res.publicAddr !== s.r || res.publicPort !== s.p)) {
      log.warn(
        `${describeSession(s)} moved to ${
          formatIPv4(res.publicAddr)
        }:${res.publicPort} after a server restart`,
      );
    }
    this.#apply(s, res);
  };

  /**
   * The sessions' periodic work: renew busy sessions, forget idle and
   * expired ones (releasing them on the server), reserve fallen-back ones
   * again. The driver core calls it about once a second, after `poll`.
   */
  tick(now: number): void {
    for (const s of [...this.#sessions.all()]) {
      if (s.state === State.PENDING) continue;
      if (s.state === State.REFUSED) {
        // Forget the refusal when it is due, even if the application keeps sending:
        // its next packet asks the server again.
        if (now >= s.expiresAt) this.#delete(s);
        continue;
      }
      if (s.state !== State.ACTIVE) {
        // Fallen back: keep the flow untranslated while it lasts; forget it once
        // quiet. A UDP or ICMP flow is reserved again meanwhile (TCP would break).
        if (now - s.lastUsed > timers.NEGATIVE_IDLE_MS) {
          this.#delete(s);
          if (s.retries > 0) this.#releases.send(s); // a lost answer may have granted it
        } else if (s.proto !== IPPROTO_TCP && !s.renewing && now >= s.renewAt) {
          this.#retryBypass(s);
        }
        continue;
      }
      if (now >= s.expiresAt) {
        this.#delete(s);
        continue;
      }
      if (isClosed(s.closing) && now - s.lastUsed >= timers.TCP_CLOSE_LINGER_MS) {
        // The connection ended (FIN both ways, or RST) and stayed quiet: give the pair back.
        this.#delete(s);
        this.#releases.send(s);
        continue;
      }
      if (now < s.renewAt || s.renewing) continue;
      if (s.busy) this.#renew(s);
      else if (s.proto === IPPROTO_TCP && !s.closing && now - s.lastUsed < timers.TCP_IDLE_MS) {
        // An idle established TCP connection keeps its mapping for at least
        // 2 h 4 min (RFC 5382 REQ-5), as a NAT's conntrack would.
        this.#renew(s);
      } else if (now - s.lastUsed < Math.min(timers.MIN_IDLE_MS[s.proto] ?? 0, s.lifetime * 1000)) {
        // RFC 4787 REQ-5 / RFC 5508 REQ-2: an idle UDP mapping lives at least
        // 2 min and an ICMP query one 60 s (unless the server grants less).
        this.#renew(s);
      } else if (now - s.lastUsed >= s.lifetime * 1000 * 2 / 3) {
        // Idle for most of its lifetime: give it back now rather than let it linger.
        this.#delete(s);
        this.#releases.send(s);
      } else s.renewAt = Math.min(s.expiresAt - 1000, now + 1000);
    }
  }

  #renew(s: HostSession): void {
    s.renewing = true;
    this.#send(s, Op.RENEW).then((res) => {
      s.renewing = false;
      if (s.deleted) return;
      this.noteEpoch(res.epoch);
      if (res.result === Result.OK) {
        this.#setLifetime(s, res.lifetime, this.now());
        // An adopted session learns its public pair from its first renewal.
        s.r = res.publicAddr || s.r;
        s.p = res.publicPort || s.p;
        s.replaced = res.replaced;
        s.shared = res.shared;
        this.#counters.renewed++;
      } else if (res.result === Result.NO_SUCH_SESSION) {
        this.reserveAgain(s);
      } else log.warn(`renew ${describeSession(s)}: ${resultName(res.result)}`);
    }).catch(() => {
      s.renewing = false;
      s.renewAt = this.now() + 1000; // try again; the session lives until expiresAt
    });
  }

  /** Releases every active session (on exit). */
  async releaseAll(): Promise<void> {
    const all = [...this.#sessions.all()].filter((s) => s.state === State.ACTIVE);
    for (const s of all) this.#delete(s);
    await Promise.all(all.map((s) => this.#releases.send(s)));
  }
}
