/**
 * The seam between the UPnP service and the gateway: everything UPnP needs
 * from dpm's mappings and counters, as one narrow interface. The server core
 * implements it on the session table (the same table, allocation, port
 * policy and ownership as PCP and NAT-PMP); `fake.ts` implements it in
 * memory for the unit tests.
 *
 * Contract (what every implementation keeps):
 *
 * - A host sees the IGD of its own public address: `externalAddress(a)` is
 *   the address its mappings get (its paired pool address). `lookup` and
 *   `list` show only the host's own mappings, whichever protocol made them
 *   (those of PCP, NAT-PMP and `dpm map` with an empty description): on a
 *   pooled gateway the other hosts' internal addresses and ports are theirs
 *   to know. Only the protocol that made a mapping may change it: `delete`
 *   of another host's mapping, or of the host's own made by another
 *   protocol, says `not-yours`; `add` over either says `conflict`.
 * - One mapping per internal endpoint (protocol, host, internal port): an
 *   `add` for an endpoint already mapped from another external port moves
 *   the mapping there when the new port can be had (the old port is freed),
 *   and leaves it as it was when not. An `add` for the mapping that exists
 *   renews it (lifetime and description).
 * - `add` with `any: false` gives exactly `externalPort` or fails
 *   (`conflict` when another endpoint holds it, `not-authorized` when the
 *   port policy refuses it: privileged ports, ports the gateway holds);
 *   with `any: true` a refused or taken port is replaced by another.
 * - Lifetimes are seconds, at least 1 (the service caps them first);
 *   `leaseRemaining` of a live mapping is at least 1.
 *
 * @module
 */

/** An inbound mapping, as UPnP lists it. */
export interface PortMapping {
  /** 6 (TCP) or 17 (UDP). */
  proto: number;
  /** The public address (host order). */
  externalAddr: number;
  externalPort: number;
  /** The host the mapping forwards to (host order). */
  internalClient: number;
  internalPort: number;
  /** Seconds until it expires, at least 1. */
  leaseRemaining: number;
  /** The description given when it was made ("" for mappings made by PCP, NAT-PMP or dpm map). */
  description: string;
}

/** A request to map (AddPortMapping, AddAnyPortMapping). */
export interface AddMapping {
  /** The asking host, which is also the internal client (secure mode). */
  client: number;
  /** 6 or 17. */
  proto: number;
  /** 1..65535. */
  internalPort: number;
  /** The wanted external port (1..65535), or 0 with `any`. */
  externalPort: number;
  /** Another external port will do (AddAnyPortMapping). */
  any: boolean;
  /** Seconds, at least 1. */
  lifetime: number;
  description: string;
}

/** Why an add failed. */
export type MappingError =
  /** The external port is another endpoint's (718 ConflictInMappingEntry). */
  | "conflict"
  /** The port policy refuses the port or the host (606). */
  | "not-authorized"
  /** No port left, or the host's budget is used up (728 / 501). */
  | "no-resources"
  /** The data path forwards no mappings now (501). */
  | "unsupported";

/** The result of {@linkcode UpnpMappings.add}. */
export type AddResult =
  | { ok: true; mapping: PortMapping }
  | { ok: false; error: MappingError; reason: string };

/** The result of {@linkcode UpnpMappings.delete}. */
export type DeleteResult = "deleted" | "not-found" | "not-yours";

/** The WAN link as WANCommonInterfaceConfig shows it. */
export interface LinkState {
  up: boolean;
  /** Bits per second, 0 when unknown. */
  upstreamBps: number;
  downstreamBps: number;
  /** Totals since the gateway started (the service wraps them to 32 bits). */
  bytesSent: number;
  bytesReceived: number;
  packetsSent: number;
  packetsReceived: number;
}

/** A link seen from nowhere: up, nothing counted (a server without a data path; the fake's start). */
export const NO_LINK: Readonly<LinkState> = {
  up: true,
  upstreamBps: 0,
  downstreamBps: 0,
  bytesSent: 0,
  bytesReceived: 0,
  packetsSent: 0,
  packetsReceived: 0,
};

/** What the UPnP service asks of the gateway (see the module documentation). */
export interface UpnpMappings {
  /** Adds, renews or moves a mapping of `req.client`. */
  add(req: AddMapping, now: number): AddResult;
  /** Deletes the mapping of (proto, externalAddress(client), externalPort) if `client` owns it. */
  delete(client: number, proto: number, externalPort: number, now: number): DeleteResult;
  /** The mapping of (proto, externalAddress(client), externalPort) if it is `client`'s, or null. */
  lookup(client: number, proto: number, externalPort: number, now: number): PortMapping | null;
  /** `client`'s mappings, ordered by external port, then protocol. */
  list(client: number, now: number): PortMapping[];
  /** The public address `client`'s mappings get. */
  externalAddress(client: number): number;
  /** The WAN link. */
  link(): LinkState;
}
