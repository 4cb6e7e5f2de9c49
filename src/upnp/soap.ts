/**
 * SOAP for UPnP control (UDA section 3.2): a strict decoder of action
 * requests into one typed request shape, and the writers of action
 * responses and faults.
 *
 * What the decoder accepts (anything else is a fault, never an exception):
 *
 * - a `SOAPACTION` header `"<service type>#<action>"` (quotes optional),
 *   whose service is the one of the control URL it was posted to, in a
 *   version from 1 up to the URL's (UDA: a service accepts its earlier
 *   versions' requests), and whose action that version has;
 * - a body that is well-formed XML within small limits (`xml.ts`: no
 *   DOCTYPE, no processing instruction): an `Envelope` in the SOAP 1.1
 *   namespace holding an optional `Header` (refused when one of its entries
 *   says `mustUnderstand`) and exactly one `Body`, which holds exactly one
 *   element: the action of the header, in the service type's namespace;
 * - the action's in-arguments as child elements, unqualified (or in the
 *   action's namespace, as a default `xmlns` makes them), each exactly once,
 *   none else, each with text only; in any order (UDA asks senders for the
 *   SCPD's order; reading them by name costs nothing);
 * - values of the argument's data type: `ui2`/`ui4` as decimal digits in
 *   range (surrounding white space allowed), `boolean` as 0/1/true/false/
 *   yes/no, strings up to {@linkcode MAX_STRING} characters and, where the
 *   SCPD has an allowed value list, one of its values exactly.
 *
 * Fault codes: 401 Invalid Action when no action can be read (header
 * missing or naming another service or an unknown action, body not an
 * envelope with that action); 402 Invalid Args for missing, repeated,
 * unknown or mistyped arguments; 601 for a value outside the allowed list;
 * 605 for an over-long string. Checks of meaning (wildcards, addresses,
 * ranges that have their own error codes) belong to `service.ts`.
 *
 * @module
 */

import {
  actionsOf,
  type ActionSpec,
  type DataType,
  type ServiceName,
  SERVICES,
  serviceType,
  SOAP_ENCODING,
  SOAP_ENV_NS,
  UPNP_CONTROL_NS,
  UPNP_ERROR_TEXT,
  UpnpError,
  variable,
} from "./igd.ts";
import { escapeXml, parseXml, type XmlElement } from "./xml.ts";

/** Longest string argument read, in characters (605 String Argument Too Long beyond). */
export const MAX_STRING = 256;
/** Longest SOAP body read, in characters. */
export const MAX_SOAP_CHARS = 8192;

/** A mapping's protocol, as UPnP writes it. */
export type PortProtocol = "TCP" | "UDP";

/** The in-arguments of AddPortMapping and AddAnyPortMapping. */
export interface PortMappingArgs {
  remoteHost: string;
  externalPort: number;
  protocol: PortProtocol;
  internalPort: number;
  internalClient: string;
  enabled: boolean;
  description: string;
  leaseDuration: number;
}

/** Actions without in-arguments. */
export type NoArgAction =
  | "GetConnectionTypeInfo"
  | "RequestConnection"
  | "ForceTermination"
  | "GetStatusInfo"
  | "GetNATRSIPStatus"
  | "GetExternalIPAddress"
  | "GetCommonLinkProperties"
  | "GetTotalBytesSent"
  | "GetTotalBytesReceived"
  | "GetTotalPacketsSent"
  | "GetTotalPacketsReceived";

/** One decoded action and its typed arguments. */
export type UpnpCall =
  | { action: NoArgAction }
  | { action: "SetConnectionType"; connectionType: string }
  | ({ action: "AddPortMapping" | "AddAnyPortMapping" } & PortMappingArgs)
  | {
    action: "DeletePortMapping" | "GetSpecificPortMappingEntry";
    remoteHost: string;
    externalPort: number;
    protocol: PortProtocol;
  }
  | { action: "GetGenericPortMappingEntry"; index: number }
  | {
    action: "DeletePortMappingRange";
    startPort: number;
    endPort: number;
    protocol: PortProtocol;
    manage: boolean;
  }
  | {
    action: "GetListOfPortMappings";
    startPort: number;
    endPort: number;
    protocol: PortProtocol;
    manage: boolean;
    numberOfPorts: number;
  };

/** A decoded request: the call, and the service and version it was made in. */
export type UpnpRequest = UpnpCall & { service: ServiceName; version: number };

/** A SOAP fault to answer: the UPnP error code and why (for the log). */
export interface UpnpFault {
  code: number;
  reason: string;
}

/** The result of {@linkcode decodeSoap}. */
export type SoapResult = { ok: true; req: UpnpRequest } | { ok: false; fault: UpnpFault };

/** What arrived at a control URL. */
export interface SoapInput {
  /** The `SOAPACTION` header, or null when absent. */
  soapAction: string | null;
  /** The body, decoded as UTF-8. */
  body: string;
  /** The service of the control URL. */
  service: ServiceName;
  /** The service version of the control URL (the newest accepted). */
  version: number;
}

type Value = string | number | boolean;

const fault = (code: number, reason: string): SoapResult => ({
  ok: false,
  fault: { code, reason },
});

/** Splits a SOAPACTION value into service type and action, or null. */
function splitSoapAction(h: string): { ns: string; action: string } | null {
  let v = h.trim();
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
  const i = v.lastIndexOf("#");
  if (i <= 0 || i === v.length - 1) return null;
  return { ns: v.slice(0, i), action: v.slice(i + 1) };
}

/** The version of `ns` if it is `service`'s type in 1..max, else 0. */
function versionOf(ns: string, service: ServiceName, max: number): number {
  for (let v = 1; v <= max; v++) if (ns === serviceType(service, v)) return v;
  return 0;
}

const isBlank = (s: string) => s.trim() === "";

/** Reads one argument value of `type` (with its allowed list), or a fault. */
function readValue(
  name: string,
  text: string,
  type: DataType,
  allowed: readonly string[] | undefined,
): Value | UpnpFault {
  switch (type) {
    case "ui2":
    case "ui4": {
      const t = text.trim();
      const max = type === "ui2" ? 0xffff : 0xffffffff;
      if (!/^[0-9]{1,10}$/.test(t) || Number(t) > max) {
        return { code: UpnpError.INVALID_ARGS, reason: `${name} is not a ${type}` };
      }
      return Number(t);
    }
    case "boolean": {
      const t = text.trim().toLowerCase();
      if (t === "1" || t === "true" || t === "yes") return true;
      if (t === "0" || t === "false" || t === "no") return false;
      return { code: UpnpError.INVALID_ARGS, reason: `${name} is not a boolean` };
    }
    case "string":
      if (text.length > MAX_STRING) {
        return {
          code: UpnpError.STRING_ARGUMENT_TOO_LONG,
          reason: `${name} is longer than ${MAX_STRING} characters`,
        };
      }
      if (allowed && !allowed.includes(text)) {
        return {
          code: UpnpError.ARGUMENT_VALUE_OUT_OF_RANGE,
          reason: `${name} is not one of ${allowed.join(", ")}`,
        };
      }
      return text;
  }
}

/** The typed call of `action` from its checked arguments. */
function toCall(action: string, a: ReadonlyMap<string, Value>): UpnpCall {
  const s = (n: string) => a.get(n) as string;
  const n = (k: string) => a.get(k) as number;
  const b = (k: string) => a.get(k) as boolean;
  const proto = () => s("NewProtocol") as PortProtocol;
  // The arguments that name a mapping, and a range of them (igd.ts MAPPING_KEY, RANGE_IN).
  const key = () => ({
    remoteHost: s("NewRemoteHost"),
    externalPort: n("NewExternalPort"),
    protocol: proto(),
  });
  const range = () => ({
    startPort: n("NewStartPort"),
    endPort: n("NewEndPort"),
    protocol: proto(),
    manage: b("NewManage"),
  });
  switch (action) {
    case "SetConnectionType":
      return { action, connectionType: s("NewConnectionType") };
    case "AddPortMapping":
    case "AddAnyPortMapping":
      return {
        action,
        ...key(),
        internalPort: n("NewInternalPort"),
        internalClient: s("NewInternalClient"),
        enabled: b("NewEnabled"),
        description: s("NewPortMappingDescription"),
        leaseDuration: n("NewLeaseDuration"),
      };
    case "DeletePortMapping":
    case "GetSpecificPortMappingEntry":
      return { action, ...key() };
    case "GetGenericPortMappingEntry":
      return { action, index: n("NewPortMappingIndex") };
    case "DeletePortMappingRange":
      return { action, ...range() };
    case "GetListOfPortMappings":
      return { action, ...range(), numberOfPorts: n("NewNumberOfPorts") };
    default:
      return { action: action as NoArgAction };
  }
}

/**
 * Decodes one control request (the module documentation lists what is
 * accepted). Never throws.
 */
export function decodeSoap(input: SoapInput): SoapResult {
  const spec = SERVICES[input.service];
  if (input.soapAction === null) return fault(UpnpError.INVALID_ACTION, "no SOAPACTION header");
  const sa = splitSoapAction(input.soapAction);
  if (!sa) return fault(UpnpError.INVALID_ACTION, "SOAPACTION is not <service type>#<action>");
  const version = versionOf(sa.ns, input.service, Math.min(input.version, spec.maxVersion));
  if (version === 0) {
    return fault(UpnpError.INVALID_ACTION, `SOAPACTION names another service: ${sa.ns}`);
  }
  const act: ActionSpec | undefined = actionsOf(spec, version).find((a) => a.name === sa.action);
  if (!act) {
    return fault(UpnpError.INVALID_ACTION, `${sa.ns} has no action ${sa.action}`);
  }

  const x = parseXml(input.body, {
    maxChars: MAX_SOAP_CHARS,
    maxDepth: 5,
    maxElements: 48,
    maxAttributes: 8,
    maxText: MAX_STRING * 6, // an argument may escape each character; checked again below
  });
  if (!x.ok) return fault(UpnpError.INVALID_ACTION, `body: ${x.reason}`);
  const env = x.root;
  if (env.uri !== SOAP_ENV_NS || env.local !== "Envelope") {
    return fault(UpnpError.INVALID_ACTION, "the root element is not a SOAP 1.1 Envelope");
  }
  if (!isBlank(env.text)) return fault(UpnpError.INVALID_ACTION, "text inside the Envelope");
  const parts = env.children;
  let body: XmlElement | undefined;
  if (parts.length === 2 && parts[0]!.uri === SOAP_ENV_NS && parts[0]!.local === "Header") {
    const mu = parts[0]!.children.find((c) =>
      c.attrs.some((a) =>
        a.uri === SOAP_ENV_NS && a.local === "mustUnderstand" &&
        (a.value.trim() === "1" || a.value.trim() === "true")
      )
    );
    if (mu) {
      return fault(UpnpError.INVALID_ACTION, `Header entry ${mu.local} must be understood`);
    }
    body = parts[1];
  } else if (parts.length === 1) body = parts[0];
  if (!body || body.uri !== SOAP_ENV_NS || body.local !== "Body") {
    return fault(UpnpError.INVALID_ACTION, "the Envelope holds no single Body (after a Header)");
  }
  if (!isBlank(body.text) || body.children.length !== 1) {
    return fault(UpnpError.INVALID_ACTION, "the Body does not hold exactly one action");
  }
  const call = body.children[0]!;
  if (call.uri !== sa.ns || call.local !== act.name) {
    return fault(
      UpnpError.INVALID_ACTION,
      `the Body's action {${call.uri}}${call.local} is not the SOAPACTION's`,
    );
  }
  if (!isBlank(call.text)) return fault(UpnpError.INVALID_ARGS, "text between the arguments");

  const values = new Map<string, Value>();
  for (const arg of call.children) {
    if (arg.uri !== "" && arg.uri !== sa.ns) {
      return fault(UpnpError.INVALID_ARGS, `argument ${arg.local} in namespace ${arg.uri}`);
    }
    const def = act.in.find(([n]) => n === arg.local);
    if (!def) return fault(UpnpError.INVALID_ARGS, `${act.name} has no argument ${arg.local}`);
    if (values.has(arg.local)) return fault(UpnpError.INVALID_ARGS, `${arg.local} given twice`);
    if (arg.children.length > 0) {
      return fault(UpnpError.INVALID_ARGS, `${arg.local} holds elements`);
    }
    const sv = variable(spec, def[1]);
    const v = readValue(arg.local, arg.text, sv.type, sv.allowed);
    if (typeof v === "object") return { ok: false, fault: v };
    values.set(arg.local, v);
  }
  for (const [n] of act.in) {
    if (!values.has(n)) return fault(UpnpError.INVALID_ARGS, `${act.name} needs ${n}`);
  }
  return {
    ok: true,
    req: { ...toCall(act.name, values), service: input.service, version } as UpnpRequest,
  };
}

/** An out-argument value as UPnP writes it (booleans as 0/1). */
function formatValue(v: Value): string {
  if (typeof v === "boolean") return v ? "1" : "0";
  return String(v);
}

const XML_DECL = '<?xml version="1.0" encoding="utf-8"?>\n';

function envelope(inner: string): string {
  return XML_DECL +
    `<s:Envelope xmlns:s="${SOAP_ENV_NS}" s:encodingStyle="${SOAP_ENCODING}">` +
    `<s:Body>${inner}</s:Body></s:Envelope>\n`;
}

/**
 * The response to `req`: its out-arguments in the SCPD's order, taken from
 * `out` by name, in the namespace (service version) the request used.
 * Throws when `out` lacks one (a bug of the caller, not of the request).
 */
export function soapResponse(req: UpnpRequest, out: Readonly<Record<string, Value>> = {}): string {
  const spec = SERVICES[req.service];
  const act = spec.actions.find((a) => a.name === req.action)!;
  const ns = serviceType(req.service, req.version);
  let args = "";
  for (const [n, rel] of act.out) {
    const v = out[n];
    if (v === undefined) throw new Error(`${act.name} response lacks ${n}`);
    const text = formatValue(v);
    const cdata = variable(spec, rel).document && !text.includes("]]>");
    args += `<${n}>${cdata ? `<![CDATA[${text}]]>` : escapeXml(text)}</${n}>`;
  }
  return envelope(
    `<u:${act.name}Response xmlns:u="${escapeXml(ns)}">${args}</u:${act.name}Response>`,
  );
}

/** A SOAP fault carrying a UPnPError (UDA section 3.2.2); answered with HTTP 500. */
export function soapFault(code: number): string {
  const text = UPNP_ERROR_TEXT[code] ?? "Action Failed";
  return envelope(
    `<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>` +
      `<detail><UPnPError xmlns="${UPNP_CONTROL_NS}"><errorCode>${code}</errorCode>` +
      `<errorDescription>${escapeXml(text)}</errorDescription></UPnPError></detail></s:Fault>`,
  );
}

/**
 * Builds a request as a client would send it (tests, and the fuzz test's
 * well-formed seeds): the SOAPACTION value and the body.
 */
export function encodeSoapRequest(
  service: ServiceName,
  version: number,
  action: string,
  args: ReadonlyArray<readonly [string, string]>,
): { soapAction: string; body: string } {
  const ns = serviceType(service, version);
  const inner = args.map(([n, v]) => `<${n}>${escapeXml(v)}</${n}>`).join("");
  return {
    soapAction: `"${ns}#${action}"`,
    body: envelope(`<u:${action} xmlns:u="${escapeXml(ns)}">${inner}</u:${action}>`),
  };
}
