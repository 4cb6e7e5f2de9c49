/**
 * The documents a UPnP control point reads over HTTP (UDA section 2): the
 * device descriptions and the service descriptions (SCPD), and the URL
 * paths they name.
 *
 * dpm shows two root devices, one per IGD version, both answered from the
 * same mappings (as gateways that offer "IGDv1 compatibility" beside IGDv2
 * do): a control point that knows only InternetGatewayDevice:1 never meets
 * an IGD:2 description (some v1-only clients stop at the unknown version),
 * and one that knows :2 finds it. Each root has the standard tree:
 *
 * ```
 * InternetGatewayDevice:v          /igd<v>/desc.xml
 * └─ WANDevice:v
 *    ├─ WANCommonInterfaceConfig:1  /igd<v>/WANCommonInterfaceConfig.xml, ctl/…, evt/…
 *    └─ WANConnectionDevice:v
 *       └─ WANIPConnection:v        /igd<v>/WANIPConnection.xml, ctl/…, evt/…
 * ```
 *
 * URLs are relative (resolved against the LOCATION the search answer gave,
 * UDA 1.1 section 2.3), so the documents do not depend on the address they
 * are served on. Every device has a stable UDN derived from a seed (a
 * name-based UUID, RFC 9562 version 5 layout), so a gateway keeps its
 * identity across restarts. `configId` (UDA 1.1 CONFIGID.UPNP.ORG) is a hash
 * of the documents themselves: it changes exactly when they change.
 *
 * @module
 */

import { createHash } from "node:crypto";
import {
  actionsOf,
  DEVICE_NS,
  deviceType,
  SERVICE_NS,
  type ServiceName,
  SERVICES,
  serviceType,
  type StateVariable,
  variable,
  variablesOf,
  WAN_COMMON_INTERFACE_CONFIG,
} from "./igd.ts";
import { escapeXml } from "./xml.ts";

/** A service inside a device. */
export interface ServiceEntry {
  service: ServiceName;
  version: number;
  /** `urn:upnp-org:serviceId:...` */
  id: string;
  scpdPath: string;
  controlPath: string;
  eventPath: string;
}

/** A device of the tree. */
export interface DeviceEntry {
  /** The device type's name, e.g. `WANDevice`. */
  name: string;
  version: number;
  /** `uuid:...` */
  udn: string;
  friendlyName: string;
  services: ServiceEntry[];
  devices: DeviceEntry[];
}

/** One root device: its IGD version, its description's path, its tree. */
export interface RootDevice {
  igdVersion: number;
  descPath: string;
  device: DeviceEntry;
}

/** What a path of the HTTP server serves. */
export type Route =
  | { kind: "description"; root: RootDevice }
  | { kind: "scpd"; service: ServiceName; version: number }
  | { kind: "control"; service: ServiceName; version: number }
  | { kind: "events"; service: ServiceName; version: number };

/** Options of {@linkcode IgdDocuments}. */
export interface IgdOptions {
  /** Seed of the devices' UUIDs (stable per gateway: the same seed, the same UDNs). */
  seed: string;
  /** dpm's version, for modelNumber and the SERVER header. */
  version: string;
  /** friendlyName of the root devices. @default "dpm gateway" */
  friendlyName?: string;
}

/**
 * A name-based UUID (SHA-1, RFC 9562 section 5.5 layout: version 5, the
 * RFC variant) of `name`, as `xxxxxxxx-xxxx-5xxx-yxxx-xxxxxxxxxxxx`.
 */
export function nameUuid(name: string): string {
  const h = createHash("sha1").update(`dpm upnp device ${name}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = Array.from(h.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

function serviceEntry(igdVersion: number, service: ServiceName, version: number): ServiceEntry {
  const base = `/igd${igdVersion}`;
  return {
    service,
    version,
    id: service === "WANIPConnection"
      ? "urn:upnp-org:serviceId:WANIPConn1"
      : "urn:upnp-org:serviceId:WANCommonIFC1",
    scpdPath: `${base}/${service}.xml`,
    controlPath: `${base}/ctl/${service}`,
    eventPath: `${base}/evt/${service}`,
  };
}

function rootDevice(igdVersion: number, o: IgdOptions): RootDevice {
  const uuid = (part: string) => `uuid:${nameUuid(`${o.seed}/igd${igdVersion}/${part}`)}`;
  const name = o.friendlyName ?? "dpm gateway";
  return {
    igdVersion,
    descPath: `/igd${igdVersion}/desc.xml`,
    device: {
      name: "InternetGatewayDevice",
      version: igdVersion,
      udn: uuid("root"),
      friendlyName: name,
      services: [],
      devices: [{
        name: "WANDevice",
        version: igdVersion,
        udn: uuid("wan"),
        friendlyName: `${name} WAN`,
        services: [
          serviceEntry(
            igdVersion,
            "WANCommonInterfaceConfig",
            WAN_COMMON_INTERFACE_CONFIG.maxVersion,
          ),
        ],
        devices: [{
          name: "WANConnectionDevice",
          version: igdVersion,
          udn: uuid("wanconn"),
          friendlyName: `${name} WAN connection`,
          services: [serviceEntry(igdVersion, "WANIPConnection", igdVersion)],
          devices: [],
        }],
      }],
    },
  };
}

/** Every device of a tree, depth first, the root first. */
export function devicesOf(d: DeviceEntry): DeviceEntry[] {
  return [d, ...d.devices.flatMap(devicesOf)];
}

/** UDA spec version of a document: 1.0 for IGD:1's, 1.1 for IGD:2's. */
function specVersion(igdVersion: number): string {
  return `<specVersion><major>1</major><minor>${igdVersion >= 2 ? 1 : 0}</minor></specVersion>`;
}

function deviceXml(d: DeviceEntry, version: string): string {
  const e = escapeXml;
  let x = `<device><deviceType>${deviceType(d.name, d.version)}</deviceType>` +
    `<friendlyName>${e(d.friendlyName)}</friendlyName>` +
    `<manufacturer>dpm</manufacturer>` +
    `<modelDescription>dpm cooperative NAT gateway</modelDescription>` +
    `<modelName>dpm</modelName><modelNumber>${e(version)}</modelNumber>` +
    `<UDN>${d.udn}</UDN>`;
  if (d.services.length > 0) {
    x += "<serviceList>";
    for (const s of d.services) {
      x += `<service><serviceType>${serviceType(s.service, s.version)}</serviceType>` +
        `<serviceId>${s.id}</serviceId><SCPDURL>${s.scpdPath}</SCPDURL>` +
        `<controlURL>${s.controlPath}</controlURL><eventSubURL>${s.eventPath}</eventSubURL>` +
        `</service>`;
    }
    x += "</serviceList>";
  }
  if (d.devices.length > 0) {
    x += `<deviceList>${d.devices.map((c) => deviceXml(c, version)).join("")}</deviceList>`;
  }
  return x + "</device>";
}

function variableXml(v: StateVariable, version: number): string {
  // sendEvents is "no" throughout: dpm implements no eventing (GENA), so it
  // promises none (docs/upnp.md).
  let x = `<stateVariable sendEvents="no"><name>${v.name}</name>` +
    `<dataType>${v.type}</dataType>`;
  if (v.allowed) {
    x += `<allowedValueList>${
      v.allowed.map((a) => `<allowedValue>${a}</allowedValue>`).join("")
    }</allowedValueList>`;
  }
  if (v.range && version >= (v.rangeSince ?? 1)) {
    x += `<allowedValueRange><minimum>${v.range.min}</minimum>` +
      `<maximum>${v.range.max}</maximum></allowedValueRange>`;
  }
  return x + "</stateVariable>";
}

/** The SCPD of `service` in `version`: its actions and state variables. */
export function scpdXml(service: ServiceName, version: number, configId: number): string {
  const spec = SERVICES[service];
  const arg = (n: string, rel: string, dir: "in" | "out") =>
    `<argument><name>${n}</name><direction>${dir}</direction>` +
    `<relatedStateVariable>${variable(spec, rel).name}</relatedStateVariable></argument>`;
  let x = `<?xml version="1.0"?>\n<scpd xmlns="${SERVICE_NS}" configId="${configId}">` +
    specVersion(version) + "<actionList>";
  for (const a of actionsOf(spec, version)) {
    const args = [
      ...a.in.map(([n, r]) => arg(n, r, "in")),
      ...a.out.map(([n, r]) => arg(n, r, "out")),
    ];
    x += `<action><name>${a.name}</name>` +
      (args.length ? `<argumentList>${args.join("")}</argumentList>` : "") + "</action>";
  }
  x += "</actionList><serviceStateTable>";
  for (const v of variablesOf(spec, version)) x += variableXml(v, version);
  return x + "</serviceStateTable></scpd>\n";
}

/** The device description of `root`. */
export function descriptionXml(root: RootDevice, version: string, configId: number): string {
  return `<?xml version="1.0"?>\n<root xmlns="${DEVICE_NS}" configId="${configId}">` +
    specVersion(root.igdVersion) + deviceXml(root.device, version) + "</root>\n";
}

/**
 * The two root devices, their documents and the path of everything the
 * HTTP server serves; built once per server (the documents are static).
 */
export class IgdDocuments {
  /** IGD:1's root first, then IGD:2's. */
  readonly roots: readonly RootDevice[];
  /** CONFIGID.UPNP.ORG: 24 bits of a hash of the documents (UDA 1.1: 0..16777215). */
  readonly configId: number;
  readonly #docs = new Map<string, string>();
  readonly #routes = new Map<string, Route>();

  constructor(o: IgdOptions) {
    this.roots = [rootDevice(1, o), rootDevice(2, o)];
    const render = (configId: number) => {
      const docs = new Map<string, string>();
      for (const r of this.roots) {
        docs.set(r.descPath, descriptionXml(r, o.version, configId));
        for (const d of devicesOf(r.device)) {
          for (const s of d.services) docs.set(s.scpdPath, scpdXml(s.service, s.version, configId));
        }
      }
      return docs;
    };
    const h = createHash("sha1");
    for (const [p, d] of render(0)) h.update(p).update(d);
    this.configId = h.digest().readUIntBE(0, 3);
    for (const [p, d] of render(this.configId)) this.#docs.set(p, d);
    for (const r of this.roots) {
      this.#routes.set(r.descPath, { kind: "description", root: r });
      for (const d of devicesOf(r.device)) {
        for (const s of d.services) {
          const sv = { service: s.service, version: s.version };
          this.#routes.set(s.scpdPath, { kind: "scpd", ...sv });
          this.#routes.set(s.controlPath, { kind: "control", ...sv });
          this.#routes.set(s.eventPath, { kind: "events", ...sv });
        }
      }
    }
  }

  /** What `path` serves, or undefined. */
  route(path: string): Route | undefined {
    return this.#routes.get(path);
  }

  /** The document at `path` (a description or an SCPD), or undefined. */
  document(path: string): string | undefined {
    return this.#docs.get(path);
  }

  /** Every path served (for tests and the docs). */
  get paths(): string[] {
    return [...this.#routes.keys()];
  }
}
