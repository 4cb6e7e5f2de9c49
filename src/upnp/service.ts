/**
 * The UPnP IGD service of `dpm server`: HTTP requests from LAN hosts in,
 * responses out; the documents of `description.ts`, the SOAP actions of
 * `igd.ts` decoded by `soap.ts`, and every change to mappings made through
 * the narrow {@linkcode UpnpMappings} seam (`mappings.ts`). No sockets
 * (`http_server.ts` has them), no clock (`now` is passed in).
 *
 * HTTP checks, in order: the source is a host of the LAN prefix, not the
 * gateway itself (403: a process on the gateway connecting from G must not
 * map "for G", which would put the gateway's LAN-only services on a public
 * address); the `Host` header names the LAN address (403: a page in a LAN
 * browser that rebinds its own DNS name to the gateway must not reach the
 * actions); the path (404) and method (405; SUBSCRIBE on an event URL: 501,
 * dpm implements no eventing); for control, the host's action rate (503),
 * then the SOAP decoder (a fault with HTTP 500). A browser cannot send the
 * `SOAPACTION` header across origins without a CORS preflight, which gets
 * 405, so a web page cannot invoke actions either.
 *
 * Secure mode, as miniupnpd's default and more:
 * - a host maps only to its own address (`NewInternalClient` must be the
 *   asking host: else 606 Action not authorized) and deletes only its own
 *   mappings (606);
 * - `NewRemoteHost` must be the wildcard "" (726 on add; a lookup or delete
 *   of a specific remote finds nothing, 714);
 * - a lease of 0 (permanent in IGD:1) is granted as `maxLease` seconds
 *   (`dpm server --lifetime`), as is any longer one; the lease the mapping
 *   really has is what GetSpecificPortMappingEntry and the listings answer,
 *   and the log says so once per mapping made;
 * - disabled mappings (`NewEnabled` 0) are not kept: 501 Action Failed;
 * - SetConnectionType, RequestConnection and ForceTermination are refused
 *   (606): the LAN does not manage the gateway's WAN link.
 *
 * @module
 */

import { type Cidr, cidrContains, formatIPv4, parseIPv4 } from "../wire/addr.ts";
import type { RateLimiter } from "../control/ratelimit.ts";
import type { IgdDocuments } from "./description.ts";
import type { HttpRequest, HttpResponse } from "./http.ts";
import { MAX_LEASE_V2, PORT_LISTING_NS, UpnpError } from "./igd.ts";
import type { PortMapping, UpnpMappings } from "./mappings.ts";
import {
  decodeSoap,
  type PortMappingArgs,
  type PortProtocol,
  soapFault,
  soapResponse,
  type UpnpRequest,
} from "./soap.ts";
import { escapeXml } from "./xml.ts";

/** What the service needs from the server. */
export interface UpnpContext {
  mappings: UpnpMappings;
  docs: IgdDocuments;
  /** LAN prefix: only its hosts are served. Null: every source. */
  lan: Cidr | null;
  /**
   * Which sources of the prefix are hosts (`src/policy/hosts.ts` in the
   * server: never the gateway's own addresses, the pool, the prefix's
   * network or broadcast address); absent: all of them.
   */
  isHost?: (a: number) => boolean;
  /** The address the HTTP server listens on (the `Host` check). */
  lanAddr: number;
  /** The port it listens on (the `Host` check accepts the address alone too). */
  httpPort: number;
  /** The server's start (ms): GetStatusInfo's uptime counts from it. */
  startedAt: number;
  /** Longest lease granted, seconds; lease 0 (permanent) gets it. */
  maxLease: number;
  /** Control actions per host. */
  limiter: RateLimiter;
  /** Refusal log (rate-limited by the caller). */
  log: (line: string) => void;
}

/** Counters of the service (status and metrics). */
export interface UpnpCounters {
  /** HTTP requests answered, by status. */
  http: Map<number, number>;
  /** Actions answered without a fault, by action. */
  actions: Map<string, number>;
  /** Faults answered, by UPnP error code. */
  faults: Map<number, number>;
}

/** An action's answer: its out-arguments, or a fault code and why. */
type Outcome =
  | { ok: true; out: Record<string, string | number | boolean> }
  | { ok: false; code: number; reason: string };

const PROTO: Readonly<Record<PortProtocol, number>> = { TCP: 6, UDP: 17 };
const PROTO_NAME: Readonly<Record<number, PortProtocol>> = { 6: "TCP", 17: "UDP" };
const XML_TYPE: [string, string] = ["Content-Type", 'text/xml; charset="utf-8"'];

const done = (out: Record<string, string | number | boolean> = {}): Outcome => ({ ok: true, out });
const refuse = (code: number, reason: string): Outcome => ({ ok: false, code, reason });

/** The UPnP IGD request handler (see the module documentation). */
export class UpnpService {
  readonly #c: UpnpContext;
  readonly counters: UpnpCounters = { http: new Map(), actions: new Map(), faults: new Map() };

  constructor(ctx: UpnpContext) {
    this.#c = ctx;
  }

  /** Answers one HTTP request from `src` (host order) at `now` (ms). */
  handleHttp(req: HttpRequest, src: number, now: number): HttpResponse {
    const res = this.#http(req, src, now);
    this.counters.http.set(res.status, (this.counters.http.get(res.status) ?? 0) + 1);
    return res;
  }

  #http(req: HttpRequest, src: number, now: number): HttpResponse {
    const c = this.#c;
    if ((c.lan && !cidrContains(c.lan, src)) || (c.isHost && !c.isHost(src))) {
      return { status: 403 };
    }
    const host = req.headers.get("host");
    const g = formatIPv4(c.lanAddr);
    if (host !== undefined && host !== g && host !== `${g}:${c.httpPort}`) {
      return { status: 403, body: "Host is not the gateway's LAN address\n" };
    }
    const route = c.docs.route(req.path);
    if (!route) return { status: 404 };
    const allow = (methods: string): HttpResponse => ({
      status: 405,
      headers: [["Allow", methods]],
    });
    switch (route.kind) {
      case "description":
      case "scpd":
        if (req.method !== "GET") return allow("GET");
        return { status: 200, headers: [XML_TYPE], body: c.docs.document(req.path)! };
      case "events":
        if (req.method === "SUBSCRIBE" || req.method === "UNSUBSCRIBE") return { status: 501 };
        return allow("SUBSCRIBE, UNSUBSCRIBE");
      case "control": {
        if (req.method !== "POST") return allow("POST");
        if (!c.limiter.allow(src, now)) return { status: 503, headers: [["Retry-After", "1"]] };
        let body: string;
        try {
          body = new TextDecoder("utf-8", { fatal: true }).decode(req.body);
        } catch {
          return this.#fault(src, UpnpError.INVALID_ACTION, "the body is not UTF-8");
        }
        const d = decodeSoap({
          soapAction: req.headers.get("soapaction") ?? null,
          body,
          service: route.service,
          version: route.version,
        });
        if (!d.ok) return this.#fault(src, d.fault.code, d.fault.reason);
        const r = this.control(d.req, src, now);
        if (!r.ok) return this.#fault(src, r.code, `${d.req.action}: ${r.reason}`);
        this.counters.actions.set(d.req.action, (this.counters.actions.get(d.req.action) ?? 0) + 1);
        return {
          status: 200,
          headers: [XML_TYPE, ["EXT", ""]],
          body: soapResponse(d.req, r.out),
        };
      }
    }
  }

  #fault(src: number, code: number, reason: string): HttpResponse {
    this.counters.faults.set(code, (this.counters.faults.get(code) ?? 0) + 1);
    this.#c.log(`UPnP fault ${code} to ${formatIPv4(src)}: ${reason}`);
    return { status: 500, headers: [XML_TYPE, ["EXT", ""]], body: soapFault(code) };
  }

  /** Carries out one decoded action for host `src`: its out-arguments or a fault. */
  control(req: UpnpRequest, src: number, now: number): Outcome {
    const c = this.#c;
    const m = c.mappings;
    switch (req.action) {
      case "GetExternalIPAddress":
        return done({ NewExternalIPAddress: formatIPv4(m.externalAddress(src)) });
      case "GetStatusInfo":
        return done({
          NewConnectionStatus: m.link().up ? "Connected" : "Disconnected",
          NewLastConnectionError: "ERROR_NONE",
          NewUptime: Math.max(0, Math.floor((now - c.startedAt) / 1000)) >>> 0,
        });
      case "GetConnectionTypeInfo":
        return done({ NewConnectionType: "IP_Routed", NewPossibleConnectionTypes: "IP_Routed" });
      case "GetNATRSIPStatus":
        return done({ NewRSIPAvailable: false, NewNATEnabled: true });
      case "SetConnectionType":
      case "RequestConnection":
      case "ForceTermination":
        return refuse(UpnpError.ACTION_NOT_AUTHORIZED, "the WAN link is not the LAN's to manage");
      case "AddPortMapping":
      case "AddAnyPortMapping":
        return this.#add(req, req.action === "AddAnyPortMapping", req.version, src, now);
      case "DeletePortMapping": {
        if (req.remoteHost !== "") {
          return refuse(UpnpError.NO_SUCH_ENTRY_IN_ARRAY, "only wildcard remote hosts exist");
        }
        const r = m.delete(src, PROTO[req.protocol], req.externalPort, now);
        if (r === "not-found") return refuse(UpnpError.NO_SUCH_ENTRY_IN_ARRAY, "no such mapping");
        if (r === "not-yours") {
          return refuse(UpnpError.ACTION_NOT_AUTHORIZED, "the mapping is another host's");
        }
        c.log(`UPnP ${formatIPv4(src)} deleted ${req.protocol} ${req.externalPort}`);
        return done();
      }
      case "DeletePortMappingRange": {
        if (req.startPort > req.endPort) {
          return refuse(UpnpError.INCONSISTENT_PARAMETERS, "start port after end port");
        }
        const mine = this.#own(src, req.protocol, req.startPort, req.endPort, now);
        if (mine.length === 0) return refuse(UpnpError.PORT_MAPPING_NOT_FOUND, "none in range");
        // The host's mappings of other protocols (PCP, NAT-PMP) in the range stay.
        let n = 0;
        for (const x of mine) if (m.delete(src, x.proto, x.externalPort, now) === "deleted") n++;
        if (n === 0) {
          return refuse(UpnpError.ACTION_NOT_AUTHORIZED, "none in range is UPnP's to delete");
        }
        c.log(`UPnP ${formatIPv4(src)} deleted ${n} ${req.protocol} mapping(s)`);
        return done();
      }
      case "GetSpecificPortMappingEntry": {
        const x = req.remoteHost === ""
          ? m.lookup(src, PROTO[req.protocol], req.externalPort, now)
          : null;
        if (!x) return refuse(UpnpError.NO_SUCH_ENTRY_IN_ARRAY, "no such mapping");
        return done(entryOut(x));
      }
      case "GetGenericPortMappingEntry": {
        const x = m.list(src, now)[req.index];
        if (!x) return refuse(UpnpError.SPECIFIED_ARRAY_INDEX_INVALID, `no entry ${req.index}`);
        return done({
          NewRemoteHost: "",
          NewExternalPort: x.externalPort,
          NewProtocol: PROTO_NAME[x.proto] ?? "UDP",
          ...entryOut(x),
        });
      }
      case "GetListOfPortMappings": {
        if (req.startPort > req.endPort) {
          return refuse(UpnpError.INCONSISTENT_PARAMETERS, "start port after end port");
        }
        let mine = this.#own(src, req.protocol, req.startPort, req.endPort, now);
        if (mine.length === 0) return refuse(UpnpError.PORT_MAPPING_NOT_FOUND, "none in range");
        if (req.numberOfPorts > 0) mine = mine.slice(0, req.numberOfPorts);
        return done({ NewPortListing: portListing(mine) });
      }
      case "GetCommonLinkProperties": {
        const l = m.link();
        return done({
          NewWANAccessType: "Ethernet",
          NewLayer1UpstreamMaxBitRate: ui4(l.upstreamBps),
          NewLayer1DownstreamMaxBitRate: ui4(l.downstreamBps),
          NewPhysicalLinkStatus: l.up ? "Up" : "Down",
        });
      }
      case "GetTotalBytesSent":
        return done({ NewTotalBytesSent: ui4(m.link().bytesSent) });
      case "GetTotalBytesReceived":
        return done({ NewTotalBytesReceived: ui4(m.link().bytesReceived) });
      case "GetTotalPacketsSent":
        return done({ NewTotalPacketsSent: ui4(m.link().packetsSent) });
      case "GetTotalPacketsReceived":
        return done({ NewTotalPacketsReceived: ui4(m.link().packetsReceived) });
    }
  }

  /**
   * The mappings host `src` may manage (its own: secure mode) of `protocol`
   * with external ports in [start, end] (GetListOfPortMappings and
   * DeletePortMappingRange, whose NewManage therefore changes nothing).
   */
  #own(src: number, protocol: PortProtocol, start: number, end: number, now: number) {
    return this.#c.mappings.list(src, now).filter((x) =>
      x.internalClient === src && x.proto === PROTO[protocol] && x.externalPort >= start &&
      x.externalPort <= end
    );
  }

  #add(a: PortMappingArgs, any: boolean, version: number, src: number, now: number): Outcome {
    const c = this.#c;
    if (a.remoteHost !== "") {
      return refuse(UpnpError.REMOTE_HOST_ONLY_SUPPORTS_WILDCARD, "a specific remote host");
    }
    const client = parseIPv4(a.internalClient.trim());
    if (client === null) {
      return refuse(UpnpError.INVALID_ARGS, `NewInternalClient "${a.internalClient}"`);
    }
    if (client !== src) {
      return refuse(UpnpError.ACTION_NOT_AUTHORIZED, `a mapping to ${formatIPv4(client)}`);
    }
    if (a.internalPort === 0) {
      return refuse(
        version >= 2 ? UpnpError.WILDCARD_NOT_PERMITTED_IN_INT_PORT : UpnpError.INVALID_ARGS,
        "internal port 0",
      );
    }
    if (a.externalPort === 0 && !any) {
      return refuse(UpnpError.WILDCARD_NOT_PERMITTED_IN_EXT_PORT, "external port 0");
    }
    if (!a.enabled) return refuse(UpnpError.ACTION_FAILED, "disabled mappings are not kept");
    // Lease 0 is "permanent" in IGD:1 and "the longest" in IGD:2 (604800 s); dpm grants
    // at most maxLease either way, and lists the lease granted.
    const asked = a.leaseDuration;
    const lifetime = Math.max(
      1,
      Math.min(asked === 0 ? c.maxLease : asked, c.maxLease, MAX_LEASE_V2),
    );
    const proto = PROTO[a.protocol];
    const r = c.mappings.add({
      client: src,
      proto,
      internalPort: a.internalPort,
      externalPort: a.externalPort,
      any,
      lifetime,
      description: a.description,
    }, now);
    if (!r.ok) {
      switch (r.error) {
        case "conflict":
          return refuse(
            any ? UpnpError.NO_PORT_MAPS_AVAILABLE : UpnpError.CONFLICT_IN_MAPPING_ENTRY,
            r.reason,
          );
        case "not-authorized":
          return refuse(UpnpError.ACTION_NOT_AUTHORIZED, r.reason);
        case "no-resources":
          return refuse(
            version >= 2 ? UpnpError.NO_PORT_MAPS_AVAILABLE : UpnpError.ACTION_FAILED,
            r.reason,
          );
        case "unsupported":
          return refuse(UpnpError.ACTION_FAILED, r.reason);
      }
    }
    const x = r.mapping;
    c.log(
      `UPnP ${formatIPv4(src)} mapped ${a.protocol} ${
        formatIPv4(x.externalAddr)
      }:${x.externalPort}` +
        ` -> ${a.internalPort} for ${x.leaseRemaining} s` +
        (asked !== x.leaseRemaining ? ` (asked ${asked === 0 ? "permanent" : `${asked} s`})` : "") +
        (a.description ? ` "${a.description}"` : ""),
    );
    return any ? done({ NewReservedPort: x.externalPort }) : done();
  }
}

/** The out-arguments shared by both entry lookups. */
function entryOut(x: PortMapping): Record<string, string | number | boolean> {
  return {
    NewInternalPort: x.internalPort,
    NewInternalClient: formatIPv4(x.internalClient),
    NewEnabled: true,
    NewPortMappingDescription: x.description,
    NewLeaseDuration: Math.max(1, x.leaseRemaining),
  };
}

/** A counter as a UPnP ui4 (the totals wrap at 2^32, as the specification's counters do). */
function ui4(n: number): number {
  return Number.isFinite(n) && n > 0 ? Math.floor(n) % 0x100000000 : 0;
}

/** The PortMappingList document of GetListOfPortMappings (WANIPConnection:2, 2.3.17). */
export function portListing(list: readonly PortMapping[]): string {
  let x =
    `<?xml version="1.0" encoding="UTF-8"?>\n<p:PortMappingList xmlns:p="${PORT_LISTING_NS}"` +
    ` xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"` +
    ` xsi:schemaLocation="${PORT_LISTING_NS} http://www.upnp.org/schemas/gw/WANIPConnection-v2.xsd">\n`;
  for (const m of list) {
    x += "<p:PortMappingEntry>\n" +
      "<p:NewRemoteHost></p:NewRemoteHost>\n" +
      `<p:NewExternalPort>${m.externalPort}</p:NewExternalPort>\n` +
      `<p:NewProtocol>${PROTO_NAME[m.proto] ?? "UDP"}</p:NewProtocol>\n` +
      `<p:NewInternalPort>${m.internalPort}</p:NewInternalPort>\n` +
      `<p:NewInternalClient>${formatIPv4(m.internalClient)}</p:NewInternalClient>\n` +
      "<p:NewEnabled>1</p:NewEnabled>\n" +
      `<p:NewDescription>${escapeXml(m.description)}</p:NewDescription>\n` +
      `<p:NewLeaseTime>${Math.max(1, m.leaseRemaining)}</p:NewLeaseTime>\n` +
      "</p:PortMappingEntry>\n";
  }
  return x + "</p:PortMappingList>";
}
