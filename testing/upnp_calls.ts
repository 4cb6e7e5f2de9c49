/**
 * Calls of the UPnP service (`src/upnp/service.ts`) without sockets, for
 * the unit tests: an HTTP request as the listener hands it over (`req`), a
 * SOAP action posted to a control URL and its answer decoded (`call`), and
 * the arguments of AddPortMapping (`add`) and of the entry lookups and
 * deletes (`key`).
 *
 * @module
 */

import assert from "node:assert/strict";
import type { HttpRequest } from "../src/upnp/http.ts";
import type { UpnpService } from "../src/upnp/service.ts";
import { encodeSoapRequest } from "../src/upnp/soap.ts";
import { serviceType } from "../src/upnp/igd.ts";
import { parseXml } from "../src/upnp/xml.ts";

/** An HTTP request to the gateway's listener (Host 10.0.0.1:5000). */
export function req(
  method: string,
  path: string,
  headers: [string, string][] = [],
  body = "",
): HttpRequest {
  return {
    method,
    target: path,
    path,
    minor: 1,
    headers: new Map([
      ["host", "10.0.0.1:5000"],
      ...headers.map(([k, v]) => [k.toLowerCase(), v] as [string, string]),
    ]),
    body: new TextEncoder().encode(body),
  };
}

/** Calls `action` at the control URL of IGD `igd` (its WANIPConnection's version) as `src`. */
export function call(
  svc: UpnpService,
  src: number,
  action: string,
  args: [string, string][] = [],
  o: {
    igd?: number;
    ns?: number;
    now?: number;
    service?: "WANIPConnection" | "WANCommonInterfaceConfig";
  } = {},
): { status: number; out: Record<string, string>; code: number | null } {
  const service = o.service ?? "WANIPConnection";
  const igd = o.igd ?? 1;
  const ns = o.ns ?? (service === "WANIPConnection" ? igd : 1);
  const e = encodeSoapRequest(service, ns, action, args);
  const res = svc.handleHttp(
    req("POST", `/igd${igd}/ctl/${service}`, [["SOAPACTION", e.soapAction]], e.body),
    src,
    o.now ?? 2_000,
  );
  const x = parseXml(res.body ?? "");
  assert.ok(x.ok, `response is XML: ${res.body}`);
  const inner = x.root.children[0]!.children[0]!;
  if (res.status === 500) {
    const code = Number(inner.children[2]!.children[0]!.children[0]!.text);
    return { status: 500, out: {}, code };
  }
  assert.equal(inner.local, `${action}Response`);
  assert.equal(inner.uri, serviceType(service, ns));
  return {
    status: res.status,
    out: Object.fromEntries(inner.children.map((c) => [c.local, c.text])),
    code: null,
  };
}

/** AddPortMapping's arguments (and AddAnyPortMapping's): external port, internal port, the rest. */
export function add(
  ext: number,
  intPort: number,
  o: {
    proto?: string;
    client?: string;
    lease?: number;
    desc?: string;
    remote?: string;
    enabled?: string;
  } = {},
): [string, string][] {
  return [
    ["NewRemoteHost", o.remote ?? ""],
    ["NewExternalPort", String(ext)],
    ["NewProtocol", o.proto ?? "UDP"],
    ["NewInternalPort", String(intPort)],
    ["NewInternalClient", o.client ?? "10.0.0.11"],
    ["NewEnabled", o.enabled ?? "1"],
    ["NewPortMappingDescription", o.desc ?? "test"],
    ["NewLeaseDuration", String(o.lease ?? 600)],
  ];
}

/** The arguments that name one mapping: remote host, external port, protocol. */
export const key = (ext: number, proto = "UDP", remote = ""): [string, string][] => [
  ["NewRemoteHost", remote],
  ["NewExternalPort", String(ext)],
  ["NewProtocol", proto],
];
