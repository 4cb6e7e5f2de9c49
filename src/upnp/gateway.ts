/**
 * {@linkcode UpnpMappings} on the gateway's session table: what `dpm
 * server`'s IGD does to mappings goes through the one mapping policy
 * (`src/policy/mappings.ts`) with the UPnP owner kind, so a UPnP mapping is
 * the same row as a PCP or NAT-PMP MAP (`SessionTable.map`: `R:p -> a:pa`
 * from every remote), with the same allocation, port rules, gateway ports
 * and ownership, and its description kept in the row (and the state file).
 *
 * How each call maps onto the policy:
 *
 * - `add` of an endpoint (proto, a, pa) not mapped yet: `policy.map`, exact
 *   (AddPortMapping: exactly the external port, else refused) or not
 *   (AddAnyPortMapping: another allowed, free port when that one is not),
 *   on the host's public address (`externalAddress`);
 * - `add` of an endpoint UPnP mapped already: at the same external port (or
 *   any port will do) it renews it, lease and description; at another port
 *   it **moves** it: `policy.unmap`, then `policy.map` of the new port;
 *   when that is refused, the old mapping is made again (the same pair: the
 *   table holds a freed port for the host that used it) with the lease it
 *   had left and its description, and the refusal is answered;
 * - `add` of an endpoint mapped by another protocol (PCP, NAT-PMP, `dpm
 *   map`), or of a port held by another host's mapping: `conflict` (718),
 *   nothing changed;
 * - `delete`: `policy.unmap` of the mapping's endpoint when UPnP made it
 *   for this host; another host's, or the host's own made by another
 *   protocol: `not-yours` (606);
 * - `lookup` and `list`: the host's own mappings only, whichever protocol
 *   made them (others' have an empty description), kept in an index of
 *   mapping rows by host that follows the table (`subscribe`), so a listing
 *   costs the host's mappings, not the table.
 *
 * The source was checked by the service (a LAN host, never the gateway);
 * it is checked again here (`hosts`), as every protocol's first step.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import { protoName } from "../wire/meta.ts";
import { Result, resultName } from "../control/result.ts";
import { Owner, OWNER_NAMES, type SessionTable } from "../table/table.ts";
import type { Asker, MappingPolicy, Outcome } from "../policy/mappings.ts";
import type { LanHosts } from "../policy/hosts.ts";
import {
  type AddMapping,
  type AddResult,
  type DeleteResult,
  type LinkState,
  type MappingError,
  NO_LINK,
  type PortMapping,
  type UpnpMappings,
} from "./mappings.ts";

/** What {@linkcode TableUpnpMappings} needs from the server core. */
export interface TableUpnpContext {
  table: SessionTable;
  policy: MappingPolicy;
  /** Only unicast LAN hosts, never the gateway, may map. */
  hosts: LanHosts;
  /** False when the data path cannot forward mappings now: adds are `unsupported`. */
  mapSupported: () => boolean;
  /** The WAN link (WANCommonInterfaceConfig). */
  link: () => LinkState;
}

/** The link of a server without a data path (defined beside {@linkcode LinkState}). */
export { NO_LINK };

/** The mappings of `dpm server`'s IGD (see the module documentation). */
export class TableUpnpMappings implements UpnpMappings {
  readonly #c: TableUpnpContext;
  /** Mapping slots by host (every protocol's): what `list` and `lookup` show. */
  readonly #byHost = new Map<number, Set<number>>();

  constructor(ctx: TableUpnpContext) {
    this.#c = ctx;
    const t = ctx.table;
    for (const s of t.slots()) if (t.isMap(s)) this.#index(s);
    t.subscribe({
      added: (s) => {
        if (t.isMap(s)) this.#index(s);
      },
      removed: (s) => {
        const set = this.#byHost.get(t.a(s));
        if (!set?.delete(s)) return;
        if (set.size === 0) this.#byHost.delete(t.a(s));
      },
    });
  }

  /** Inbound mappings in the table by owner name (every protocol's), from the index. */
  countByOwner(): Record<string, number> {
    const t = this.#c.table;
    const out: Record<string, number> = {};
    for (const name of OWNER_NAMES) out[name] = 0;
    for (const set of this.#byHost.values()) {
      for (const s of set) out[OWNER_NAMES[t.owner(s)]]!++;
    }
    return out;
  }

  externalAddress(client: number): number {
    return this.#c.table.externalAddressOf(client);
  }

  link(): LinkState {
    return this.#c.link();
  }

  add(req: AddMapping, now: number): AddResult {
    const c = this.#c;
    const t = c.table;
    const who: Asker = { owner: Owner.UPNP, a: req.client };
    const what = `${protoName(req.proto)} ${formatIPv4(req.client)}:${req.internalPort}`;
    if (!c.hosts.isHost(req.client)) {
      return fail("not-authorized", `${c.hosts.describe(req.client)} is not a LAN host`);
    }
    if (!c.mapSupported()) return fail("unsupported", "the data path forwards no mappings");
    const r = this.externalAddress(req.client);
    const ask = {
      proto: req.proto,
      pa: req.internalPort,
      r,
      lifetime: req.lifetime,
      description: req.description,
    };
    const held = t.lookupMapOf(req.proto, req.client, req.internalPort);
    if (held >= 0) {
      if (!c.policy.mayTouch(who, held)) {
        return fail("conflict", `${what} is mapped by ${ownerText(t.owner(held))}`);
      }
      if (req.any || req.externalPort === t.p(held) || req.externalPort === 0) {
        // The same mapping asked again: renewed, lease and description.
        return this.#answer(c.policy.map(who, { ...ask, p: t.p(held), exact: false }, now), now);
      }
      return this.#move(who, held, req, now);
    }
    const other = t.lookupMapping(req.proto, r, req.externalPort);
    if (!req.any && other >= 0) {
      return fail(
        "conflict",
        `public port ${req.externalPort} is mapped to ${formatIPv4(t.a(other))}:${t.pa(other)}`,
      );
    }
    if (!req.any && c.policy.gatewayPorts.holds(req.proto, r, req.externalPort)) {
      return fail(
        "not-authorized",
        `public port ${req.externalPort} is the gateway's own (a socket of the gateway holds it)`,
      );
    }
    return this.#answer(
      c.policy.map(who, { ...ask, p: req.externalPort, exact: !req.any }, now),
      now,
    );
  }

  delete(client: number, proto: number, externalPort: number, now: number): DeleteResult {
    const c = this.#c;
    const t = c.table;
    const s = t.lookupMapping(proto, this.externalAddress(client), externalPort);
    if (s < 0) return "not-found";
    const who: Asker = { owner: Owner.UPNP, a: client };
    if (!c.hosts.isHost(client) || !c.policy.mayTouch(who, s)) return "not-yours";
    return c.policy.unmap(who, proto, t.pa(s), now).result === Result.OK ? "deleted" : "not-yours";
  }

  lookup(client: number, proto: number, externalPort: number, now: number): PortMapping | null {
    const t = this.#c.table;
    const s = t.lookupMapping(proto, this.externalAddress(client), externalPort);
    return s >= 0 && t.a(s) === client ? this.#view(s, now) : null;
  }

  list(client: number, now: number): PortMapping[] {
    const set = this.#byHost.get(client);
    if (!set) return [];
    return [...set].map((s) => this.#view(s, now))
      .sort((x, y) => x.externalPort - y.externalPort || x.proto - y.proto);
  }

  /** Moves `held` (UPnP's, this host's) to `req.externalPort`, or leaves it as it was. */
  #move(who: Asker, held: number, req: AddMapping, now: number): AddResult {
    const c = this.#c;
    const t = c.table;
    const old = {
      proto: t.proto(held),
      pa: t.pa(held),
      r: t.r(held),
      p: t.p(held),
      lifetime: Math.max(1, Math.ceil((t.expiresAt(held) - now) / 1000)),
      description: t.description(held),
    };
    const other = t.lookupMapping(req.proto, old.r, req.externalPort);
    if (other >= 0) {
      return fail(
        "conflict",
        `public port ${req.externalPort} is mapped to ${formatIPv4(t.a(other))}:${t.pa(other)}`,
      );
    }
    if (c.policy.gatewayPorts.holds(req.proto, old.r, req.externalPort)) {
      return fail(
        "not-authorized",
        `public port ${req.externalPort} is the gateway's own (a socket of the gateway holds it)`,
      );
    }
    c.policy.unmap(who, old.proto, old.pa, now);
    const o = c.policy.map(who, {
      proto: req.proto,
      pa: req.internalPort,
      p: req.externalPort,
      r: old.r,
      lifetime: req.lifetime,
      exact: true,
      description: req.description,
    }, now);
    if (o.result === Result.OK) return this.#answer(o, now);
    // Refused: the old mapping comes back as it was (its port is held for this host).
    c.policy.map(who, { ...old, exact: true }, now);
    return this.#answer(o, now);
  }

  #answer(o: Outcome, now: number): AddResult {
    if (o.result === Result.OK) return { ok: true, mapping: this.#view(o.grant!.session, now) };
    return fail(errorOf(o.result), o.why ?? resultName(o.result));
  }

  #index(s: number): void {
    const a = this.#c.table.a(s);
    let set = this.#byHost.get(a);
    if (!set) this.#byHost.set(a, set = new Set());
    set.add(s);
  }

  #view(s: number, now: number): PortMapping {
    const t = this.#c.table;
    return {
      proto: t.proto(s),
      externalAddr: t.r(s),
      externalPort: t.p(s),
      internalClient: t.a(s),
      internalPort: t.pa(s),
      leaseRemaining: Math.max(1, Math.ceil((t.expiresAt(s) - now) / 1000)),
      description: t.description(s),
    };
  }
}

function fail(error: MappingError, reason: string): AddResult {
  return { ok: false, error, reason };
}

/** A refusal of the policy as UPnP's kind of error. */
function errorOf(result: number): MappingError {
  switch (result) {
    case Result.CONFLICT:
      return "conflict";
    case Result.NOT_AUTHORIZED:
    case Result.BAD_REMOTE:
      return "not-authorized";
    case Result.UNSUPPORTED_OPCODE:
    case Result.UNSUPPORTED_PROTOCOL:
      return "unsupported";
    default:
      return "no-resources";
  }
}

function ownerText(o: number): string {
  switch (o) {
    case Owner.PCP:
      return "PCP";
    case Owner.NATPMP:
      return "NAT-PMP";
    case Owner.DPM:
      return "dpm's protocol (dpm map)";
    default:
      return "another protocol";
  }
}
