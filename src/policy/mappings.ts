/**
 * The one place where inbound mappings (and PCP's PEER sessions) are
 * granted, renewed and deleted, whichever protocol asks: dpm's own MAP
 * (`dpm map`), PCP, NAT-PMP and UPnP IGD (`src/upnp/gateway.ts`) call the
 * same methods, each with its own {@linkcode Asker}. Like miniupnpd's
 * `upnp_redirect_internal`: each protocol parses its messages into one
 * request shape; the permission rules, the owner of each row and the
 * budgets are decided here, the refusal is turned back into the protocol's
 * own result code by the caller (dpm {@linkcode Result} codes here).
 *
 * What a request goes through (the source, a unicast LAN host that is not
 * the gateway, is checked by the caller before it decodes anything:
 * `hosts.ts`):
 *
 * 1. **Ownership** (`mayTouch`): a row records who made it (`Owner` in the
 *    table). dpm's protocol proves the host's address with its cookie, so
 *    it may renew or delete any row of that host. PCP and NAT-PMP prove
 *    nothing (a LAN host can forge another's source): each may renew or
 *    delete only the rows it created, PCP only with the same nonce (RFC
 *    6887 section 11.3), and neither ever touches a row of dpm's protocol
 *    (a driver's session, a `dpm map` mapping) or of the other. UPnP's TCP
 *    proves the host's address, but not which of the host's applications
 *    asks: it too touches only what UPnP made (any of the host's UPnP
 *    mappings, as miniupnpd's secure mode). A mapping
 *    restored without an owner (ADOPTED) is claimed by the first protocol
 *    that renews it; an ADOPTED session only dpm's protocol touches.
 *    Otherwise NOT_AUTHORIZED.
 * 2. **Port policy** (`rules.ts`): the public ports the rules allow for
 *    `a:pa`; none: NOT_AUTHORIZED. An exact request (PCP PREFER_FAILURE,
 *    `dpm map --exact`) for a refused port: NOT_AUTHORIZED; otherwise the
 *    allocator picks an allowed one.
 * 3. **The gateway's own ports** (`gateway_ports.ts`): never taken. An
 *    exact request for one: CONFLICT (PCP CANNOT_PROVIDE_EXTERNAL).
 * 4. **Budgets** (the table): dpm's protocol within the host's quota;
 *    PCP and NAT-PMP within their own per-host cap (QUOTA_EXCEEDED) and
 *    per-protocol global cap (NO_RESOURCES); UPnP within the host's quota
 *    and a per-host cap of its own (QUOTA_EXCEEDED).
 *
 * Every refusal is logged with its reason (through the caller's
 * rate-limited log). When the gateway later starts listening on a port a
 * mapping holds, the mapping goes ({@linkcode MappingPolicy.gatewayListening}).
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import { protoName } from "../wire/meta.ts";
import { Result, resultName } from "../control/result.ts";
import {
  type Grant,
  isUnverified,
  Owner,
  OWNER_NAMES,
  type OwnerKind,
  type PortFilter,
  type SessionTable,
} from "../table/table.ts";
import { allowedPorts, decidingRule, type MapRule } from "./rules.ts";
import { type BoundPort, GatewayPorts, type HeldPort } from "./gateway_ports.ts";

/** Who asks: the protocol (the owner of what it creates), the host, PCP's nonce. */
export interface Asker {
  owner: OwnerKind;
  /** The host the request speaks for: the datagram's source, already checked (`hosts.ts`). */
  a: number;
  /** PCP's mapping nonce (12 bytes). */
  nonce?: Uint8Array;
}

/** An inbound mapping asked for, in any protocol's terms. */
export interface MapAsk {
  /** 6 (TCP) or 17 (UDP). */
  proto: number;
  /** The host's port. */
  pa: number;
  /** Suggested public port; 0: the internal one. */
  p: number;
  /** Suggested public address; 0: any. */
  r: number;
  /** Lease asked for, s (0: the default). */
  lifetime: number;
  /** Only the suggested pair will do (PCP PREFER_FAILURE, `dpm map --exact`, UPnP AddPortMapping). */
  exact: boolean;
  /** What it is for (UPnP's description): kept with the row, replaced on renewal. */
  description?: string;
}

/** A PEER session asked for (PCP). */
export interface PeerAsk {
  proto: number;
  pa: number;
  x: number;
  px: number;
  lifetime: number;
}

/** What a request came to: a {@link Result} code, the grant when OK, and why when not. */
export interface Outcome {
  result: number;
  grant: Grant | null;
  /** Why it was refused, for the log line. */
  why?: string;
}

/** Options of {@linkcode MappingPolicy}. */
export interface MappingPolicyOptions {
  table: SessionTable;
  /** The port policy: the operator's rules, then `defaultRules`. */
  rules: readonly MapRule[];
  /** The pool (the addresses mappings translate). */
  pool: readonly number[];
  /** Refusal lines (the caller rate-limits them). */
  log: (line: string) => void;
  /** Removals the policy decided on its own (rare: not rate-limited); `log` when absent. */
  notice?: (line: string) => void;
}

const PROTOCOL_NAME: Record<number, string> = {
  [Owner.ADOPTED]: "adopted",
  [Owner.DPM]: "dpm",
  [Owner.PCP]: "PCP",
  [Owner.NATPMP]: "NAT-PMP",
  [Owner.UPNP]: "UPnP",
};

/** The mapping decisions of every protocol (see the module documentation). */
export class MappingPolicy {
  readonly #t: SessionTable;
  readonly #rules: readonly MapRule[];
  readonly #log: (line: string) => void;
  readonly #notice: (line: string) => void;
  /** The public ports the gateway's own sockets hold. */
  readonly gatewayPorts: GatewayPorts;

  constructor(o: MappingPolicyOptions) {
    this.#t = o.table;
    this.#rules = o.rules;
    this.#log = o.log;
    this.#notice = o.notice ?? o.log;
    this.gatewayPorts = new GatewayPorts(o.pool);
  }

  /** The rules in force, in order (the operator's, then the defaults). */
  get rules(): readonly MapRule[] {
    return this.#rules;
  }

  /**
   * May `who` renew or delete live row `s` of its host? (Ownership, step 1
   * of the module documentation.)
   */
  mayTouch(who: Asker, s: number): boolean {
    const t = this.#t;
    if (t.a(s) !== who.a) return false;
    const o = t.owner(s);
    if (who.owner === Owner.DPM) return true;
    // Restored without an owner: a mapping may be PCP's or NAT-PMP's (claimed by the first to
    // renew it); a session is a driver's as far as anyone can tell (a PEER's looks the same).
    if (o === Owner.ADOPTED) return t.isMap(s);
    if (o !== who.owner) return false;
    return o !== Owner.PCP || (who.nonce !== undefined && t.nonceIs(s, who.nonce));
  }

  /** Creates or renews `who`'s inbound mapping (steps 1-4 of the module documentation). */
  map(who: Asker, ask: MapAsk, now: number): Outcome {
    const t = this.#t;
    const { proto, pa } = ask;
    const what = `${this.#name(who)} map ${protoName(proto)} ${formatIPv4(who.a)}:${pa}`;
    const held = t.lookupMapOf(proto, who.a, pa);
    if (held >= 0) {
      if (!this.mayTouch(who, held)) {
        return this.#refuse(what, Result.NOT_AUTHORIZED, `the mapping is ${this.#whose(held)}`);
      }
      this.#claim(who, held);
      // The same endpoint asked again: its lease is refreshed, its pair kept (the suggestion is ignored).
      return { result: Result.OK, grant: t.map({ ...this.#mapRequest(who, ask) }, now) };
    }
    const ranges = allowedPorts(this.#rules, who.a, pa);
    if (ranges.length === 0) {
      const r = decidingRule(this.#rules, who.a, pa, ask.p || pa);
      return this.#refuse(
        what,
        Result.NOT_AUTHORIZED,
        `no public port allowed for it (${r ? `rule "${r.text}"` : "no rule matches"})`,
      );
    }
    const want = ask.p || pa;
    if (ask.exact) {
      const r = decidingRule(this.#rules, who.a, pa, want);
      if (!r?.allow) {
        return this.#refuse(
          what,
          Result.NOT_AUTHORIZED,
          `public port ${want} refused (${r ? `rule "${r.text}"` : "no rule matches"})`,
        );
      }
    }
    const gp = this.gatewayPorts;
    const ports: PortFilter = { ranges, usable: (r, p) => !gp.holds(proto, r, p) };
    const g = t.map({ ...this.#mapRequest(who, ask), ports }, now);
    if (g.result === Result.OK) return { result: Result.OK, grant: g };
    let why = `table: ${resultName(g.result)}`;
    if (g.result === Result.CONFLICT && ask.exact) {
      why = t.pool.some((r) => gp.holds(proto, r, want))
        ? `public port ${want} is the gateway's own (a socket of the gateway holds it)`
        : `public port ${want} is taken`;
    } else if (g.result === Result.QUOTA_EXCEEDED && isUnverified(who.owner)) {
      why = `the host holds ${t.unverifiedOf(who.a)} PCP/NAT-PMP mappings, its cap`;
    } else if (g.result === Result.QUOTA_EXCEEDED && who.owner === Owner.UPNP) {
      why = `the host holds ${t.upnpOf(who.a)} UPnP mappings and ${
        t.sessionsOf(who.a)
      } rows in all: its UPnP cap or its quota`;
    } else if (g.result === Result.NO_RESOURCES && isUnverified(who.owner)) {
      why = `no allowed public port free, or the PCP/NAT-PMP share of the pool is used up (${
        t.unverifiedCount(proto)
      } ${protoName(proto)} rows)`;
    }
    return this.#refuse(what, g.result, why);
  }

  /**
   * Deletes `who`'s mapping of (proto, pa). Idempotent: OK when there is
   * none (a retransmitted delete); NOT_AUTHORIZED when it is not `who`'s.
   */
  unmap(who: Asker, proto: number, pa: number, now: number): Outcome {
    const t = this.#t;
    const s = t.lookupMapOf(proto, who.a, pa);
    if (s < 0) return { result: Result.OK, grant: null };
    if (!this.mayTouch(who, s)) {
      return this.#refuse(
        `${this.#name(who)} delete ${protoName(proto)} ${formatIPv4(who.a)}:${pa}`,
        Result.NOT_AUTHORIZED,
        `the mapping is ${this.#whose(s)}`,
      );
    }
    t.releaseSlot(s, now);
    return { result: Result.OK, grant: null };
  }

  /**
   * Deletes every mapping `who` created, of IP protocol `proto` (0: both):
   * NAT-PMP's and PCP's "delete all" (PCP: those made with its nonce).
   * Returns how many went. Only the protocols with unverified rows use it.
   */
  unmapAll(who: Asker, proto: number, now: number): number {
    const t = this.#t;
    let n = 0;
    for (const s of t.unverifiedRows(who.a)) {
      if (!t.isMap(s) || (proto !== 0 && t.proto(s) !== proto)) continue;
      if (t.owner(s) !== who.owner || !this.mayTouch(who, s)) continue;
      t.releaseSlot(s, now);
      n++;
    }
    return n;
  }

  /**
   * Creates or renews `who`'s PEER session toward `X:px` (a direct session:
   * `ReserveRequest.direct`). The remote is checked by the caller.
   */
  peer(who: Asker, ask: PeerAsk, now: number): Outcome {
    const t = this.#t;
    const what = `${this.#name(who)} PEER ${protoName(ask.proto)} ${
      formatIPv4(who.a)
    }:${ask.pa} -> ${formatIPv4(ask.x)}:${ask.px}`;
    const s = t.lookupIdentity(ask.proto, who.a, ask.pa, ask.x, ask.px);
    if (s >= 0) {
      if (!this.mayTouch(who, s)) {
        return this.#refuse(what, Result.NOT_AUTHORIZED, `the session is ${this.#whose(s)}`);
      }
      this.#claim(who, s);
    }
    const g = t.reserve({
      proto: ask.proto,
      a: who.a,
      pa: ask.pa,
      x: ask.x,
      px: ask.px,
      replaceable: true,
      lifetime: ask.lifetime,
      direct: true,
      owner: who.owner,
      ...(who.nonce ? { nonce: who.nonce } : {}),
    }, now);
    if (g.result === Result.OK) return { result: Result.OK, grant: g };
    return this.#refuse(what, g.result, `table: ${resultName(g.result)}`);
  }

  /** Releases `who`'s PEER session; OK when there is none, NOT_AUTHORIZED when it is not `who`'s. */
  unpeer(who: Asker, ask: Omit<PeerAsk, "lifetime">, now: number): Outcome {
    const t = this.#t;
    const s = t.lookupIdentity(ask.proto, who.a, ask.pa, ask.x, ask.px);
    if (s < 0) return { result: Result.OK, grant: null };
    if (!this.mayTouch(who, s)) {
      return this.#refuse(
        `${this.#name(who)} PEER release ${protoName(ask.proto)} ${formatIPv4(who.a)}:${ask.pa}`,
        Result.NOT_AUTHORIZED,
        `the session is ${this.#whose(s)}`,
      );
    }
    t.releaseSlot(s, now);
    return { result: Result.OK, grant: null };
  }

  /**
   * What the gateway's sockets are bound to now (`/proc/net`, read in its namespace): what
   * they hold becomes untouchable, and a mapping on a port the gateway has
   * started to hold since the last call goes, with a log line. Returns how
   * many mappings went.
   */
  gatewayListening(
    tcp: Iterable<BoundPort>,
    udp: Iterable<BoundPort>,
    now: number,
  ): number {
    const fresh = this.gatewayPorts.update(tcp, udp);
    let n = 0;
    for (const h of fresh) n += this.#revoke(h, now);
    return n;
  }

  /**
   * At start, after a restore (a state file written before these checks, or
   * under other rules): removes every row whose host is not a LAN host
   * (`isHost`), and every mapping whose public port the rules refuse or the
   * gateway holds, each with a log line. Returns how many went.
   */
  audit(isHost: (a: number) => boolean, now: number): number {
    const t = this.#t;
    const bad: [slot: number, why: string][] = [];
    for (const s of t.slots()) {
      let why: string | null = null;
      if (!isHost(t.a(s))) why = `${formatIPv4(t.a(s))} is not a LAN host`;
      else if (t.isMap(s)) {
        const rule = decidingRule(this.#rules, t.a(s), t.pa(s), t.p(s));
        if (!rule?.allow) {
          why = `public port ${t.p(s)} refused (${
            rule ? `rule "${rule.text}"` : "no rule matches"
          })`;
        } else if (this.gatewayPorts.holds(t.proto(s), t.r(s), t.p(s))) {
          why = `the gateway holds public port ${t.p(s)} itself`;
        }
      }
      if (why) bad.push([s, why]);
    }
    // Released after the walk: the table is not changed while it is walked.
    for (const [s, why] of bad) {
      this.#notice(
        `restored ${t.isMap(s) ? "mapping" : "session"} ${protoName(t.proto(s))} ${
          formatIPv4(t.a(s))
        }:${t.pa(s)} (${formatIPv4(t.r(s))}:${t.p(s)}) removed: ${why}`,
      );
      t.releaseSlot(s, now);
    }
    return bad.length;
  }

  #revoke(h: HeldPort, now: number): number {
    const t = this.#t;
    let n = 0;
    for (const r of h.r === 0 ? t.pool : [h.r]) {
      const s = t.lookupMapping(h.proto, r, h.p);
      if (s < 0) continue;
      this.#notice(
        `mapping ${protoName(h.proto)} ${formatIPv4(r)}:${h.p} -> ${formatIPv4(t.a(s))}:${
          t.pa(s)
        } (${OWNER_NAMES[t.owner(s)]}) removed: the gateway now holds that public port itself ` +
          `(a socket on ${h.r === 0 ? "0.0.0.0" : formatIPv4(r)}:${h.p})`,
      );
      t.releaseSlot(s, now);
      n++;
    }
    return n;
  }

  #mapRequest(who: Asker, ask: MapAsk) {
    return {
      proto: ask.proto,
      a: who.a,
      pa: ask.pa,
      p: ask.p,
      r: ask.r,
      lifetime: ask.lifetime,
      preferFailure: ask.exact,
      owner: who.owner,
      ...(who.nonce ? { nonce: who.nonce } : {}),
      ...(ask.description !== undefined ? { description: ask.description } : {}),
    };
  }

  /** An ADOPTED row renewed by a protocol becomes that protocol's. */
  #claim(who: Asker, s: number): void {
    if (this.#t.owner(s) === Owner.ADOPTED) this.#t.claim(s, who.owner, who.nonce);
  }

  #whose(s: number): string {
    const o = this.#t.owner(s);
    return o === Owner.PCP ? "PCP's, made with another nonce" : `${PROTOCOL_NAME[o]}'s`;
  }

  #name(who: Asker): string {
    return PROTOCOL_NAME[who.owner] ?? "?";
  }

  #refuse(what: string, result: number, why: string): Outcome {
    this.#log(`refused ${what}: ${resultName(result)}: ${why}`);
    return { result, grant: null, why };
  }
}
