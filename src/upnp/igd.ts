/**
 * The vocabulary of UPnP IGD as dpm serves it, written once: device and
 * service types, the services' state variables and actions (the SCPD
 * documents, the SOAP decoder and the answers are all derived from these
 * tables), and the UPnP error codes.
 *
 * Sources: UPnP Device Architecture 1.0/1.1 (UDA), InternetGatewayDevice:1
 * and :2, WANIPConnection:1 and :2, WANCommonInterfaceConfig:1 (UPnP Forum
 * standardized DCPs). Only the actions dpm implements are listed (an SCPD
 * that lists an action promises it); `docs/upnp.md` has the full table of
 * what is answered and what is refused.
 *
 * @module
 */

/** Namespace of the SOAP 1.1 envelope. */
export const SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/";
/** The SOAP encoding style UPnP uses. */
export const SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/";
/** Namespace of the UPnPError detail of a SOAP fault. */
export const UPNP_CONTROL_NS = "urn:schemas-upnp-org:control-1-0";
/** Namespace of device descriptions. */
export const DEVICE_NS = "urn:schemas-upnp-org:device-1-0";
/** Namespace of service descriptions (SCPD). */
export const SERVICE_NS = "urn:schemas-upnp-org:service-1-0";
/** Namespace of the port listing of GetListOfPortMappings (WANIPConnection:2). */
export const PORT_LISTING_NS = "urn:schemas-upnp-org:gw:WANIPConnection";

/** The URN of a device type, e.g. `urn:schemas-upnp-org:device:InternetGatewayDevice:1`. */
export function deviceType(name: string, version: number): string {
  return `urn:schemas-upnp-org:device:${name}:${version}`;
}

/** The URN of a service type, e.g. `urn:schemas-upnp-org:service:WANIPConnection:2`. */
export function serviceType(name: ServiceName, version: number): string {
  return `urn:schemas-upnp-org:service:${name}:${version}`;
}

/** The services dpm implements. */
export type ServiceName = "WANIPConnection" | "WANCommonInterfaceConfig";

/** UPnP data types used here (UDA 2.5). */
export type DataType = "string" | "ui2" | "ui4" | "boolean";

/** A state variable of a service (an SCPD `<stateVariable>`). */
export interface StateVariable {
  name: string;
  type: DataType;
  /** The allowed value list, when the type is string. */
  allowed?: readonly string[];
  /** The allowed value range, in the service versions from `rangeSince` on. */
  range?: { min: number; max: number };
  /** The first service version with the range (earlier ones have none). */
  rangeSince?: number;
  /** The first service version with this variable. @default 1 */
  since?: number;
  /**
   * The value is an XML document (GetListOfPortMappings' listing): written
   * as a CDATA section, which XML readers take as the same text as the
   * escaped form and which miniupnpc's reader (it decodes no entities)
   * needs, as miniupnpd writes it.
   */
  document?: boolean;
}

/** An argument: its name and the state variable that gives its type. */
export type Argument = readonly [name: string, related: string];

/** An action of a service. */
export interface ActionSpec {
  name: string;
  in: readonly Argument[];
  out: readonly Argument[];
  /** The first service version with this action. @default 1 */
  since?: number;
}

/** A service: its state variables and actions, and the newest version dpm serves. */
export interface ServiceSpec {
  name: ServiceName;
  maxVersion: number;
  variables: readonly StateVariable[];
  actions: readonly ActionSpec[];
}

/** Longest lease WANIPConnection:2 allows (PortMappingLeaseDuration, one week). */
export const MAX_LEASE_V2 = 604800;

const PORT_ENTRY_OUT: readonly Argument[] = [
  ["NewInternalPort", "InternalPort"],
  ["NewInternalClient", "InternalClient"],
  ["NewEnabled", "PortMappingEnabled"],
  ["NewPortMappingDescription", "PortMappingDescription"],
  ["NewLeaseDuration", "PortMappingLeaseDuration"],
];

const MAPPING_KEY: readonly Argument[] = [
  ["NewRemoteHost", "RemoteHost"],
  ["NewExternalPort", "ExternalPort"],
  ["NewProtocol", "PortMappingProtocol"],
];

const ADD_IN: readonly Argument[] = [
  ...MAPPING_KEY,
  ["NewInternalPort", "InternalPort"],
  ["NewInternalClient", "InternalClient"],
  ["NewEnabled", "PortMappingEnabled"],
  ["NewPortMappingDescription", "PortMappingDescription"],
  ["NewLeaseDuration", "PortMappingLeaseDuration"],
];

/** The port range and protocol both range actions of WANIPConnection:2 take. */
const RANGE_IN: readonly Argument[] = [
  ["NewStartPort", "ExternalPort"],
  ["NewEndPort", "ExternalPort"],
  ["NewProtocol", "PortMappingProtocol"],
  ["NewManage", "A_ARG_TYPE_Manage"],
];

/** WANIPConnection:1 and :2 (the actions dpm implements). */
export const WAN_IP_CONNECTION: ServiceSpec = {
  name: "WANIPConnection",
  maxVersion: 2,
  variables: [
    { name: "ConnectionType", type: "string" },
    {
      name: "PossibleConnectionTypes",
      type: "string",
      allowed: ["Unconfigured", "IP_Routed", "IP_Bridged"],
    },
    {
      name: "ConnectionStatus",
      type: "string",
      allowed: [
        "Unconfigured",
        "Connecting",
        "Connected",
        "PendingDisconnect",
        "Disconnecting",
        "Disconnected",
      ],
    },
    { name: "Uptime", type: "ui4" },
    {
      name: "LastConnectionError",
      type: "string",
      allowed: ["ERROR_NONE", "ERROR_UNKNOWN"],
    },
    { name: "RSIPAvailable", type: "boolean" },
    { name: "NATEnabled", type: "boolean" },
    { name: "ExternalIPAddress", type: "string" },
    { name: "PortMappingNumberOfEntries", type: "ui2" },
    { name: "PortMappingEnabled", type: "boolean" },
    {
      name: "PortMappingLeaseDuration",
      type: "ui4",
      range: { min: 0, max: MAX_LEASE_V2 },
      rangeSince: 2,
    },
    { name: "RemoteHost", type: "string" },
    { name: "ExternalPort", type: "ui2" },
    {
      name: "InternalPort",
      type: "ui2",
      range: { min: 1, max: 65535 },
      rangeSince: 2,
    },
    { name: "PortMappingProtocol", type: "string", allowed: ["TCP", "UDP"] },
    { name: "InternalClient", type: "string" },
    { name: "PortMappingDescription", type: "string" },
    { name: "SystemUpdateID", type: "ui4", since: 2 },
    { name: "A_ARG_TYPE_Manage", type: "boolean", since: 2 },
    { name: "A_ARG_TYPE_PortListing", type: "string", since: 2, document: true },
  ],
  actions: [
    { name: "SetConnectionType", in: [["NewConnectionType", "ConnectionType"]], out: [] },
    {
      name: "GetConnectionTypeInfo",
      in: [],
      out: [
        ["NewConnectionType", "ConnectionType"],
        ["NewPossibleConnectionTypes", "PossibleConnectionTypes"],
      ],
    },
    { name: "RequestConnection", in: [], out: [] },
    { name: "ForceTermination", in: [], out: [] },
    {
      name: "GetStatusInfo",
      in: [],
      out: [
        ["NewConnectionStatus", "ConnectionStatus"],
        ["NewLastConnectionError", "LastConnectionError"],
        ["NewUptime", "Uptime"],
      ],
    },
    {
      name: "GetNATRSIPStatus",
      in: [],
      out: [["NewRSIPAvailable", "RSIPAvailable"], ["NewNATEnabled", "NATEnabled"]],
    },
    {
      name: "GetGenericPortMappingEntry",
      in: [["NewPortMappingIndex", "PortMappingNumberOfEntries"]],
      out: [...MAPPING_KEY, ...PORT_ENTRY_OUT],
    },
    { name: "GetSpecificPortMappingEntry", in: MAPPING_KEY, out: PORT_ENTRY_OUT },
    { name: "AddPortMapping", in: ADD_IN, out: [] },
    { name: "DeletePortMapping", in: MAPPING_KEY, out: [] },
    {
      name: "GetExternalIPAddress",
      in: [],
      out: [["NewExternalIPAddress", "ExternalIPAddress"]],
    },
    {
      name: "DeletePortMappingRange",
      since: 2,
      in: RANGE_IN,
      out: [],
    },
    {
      name: "GetListOfPortMappings",
      since: 2,
      in: [...RANGE_IN, ["NewNumberOfPorts", "PortMappingNumberOfEntries"]],
      out: [["NewPortListing", "A_ARG_TYPE_PortListing"]],
    },
    {
      name: "AddAnyPortMapping",
      since: 2,
      in: ADD_IN,
      out: [["NewReservedPort", "ExternalPort"]],
    },
  ],
};

/** WANCommonInterfaceConfig:1 (the link's properties and byte/packet totals). */
export const WAN_COMMON_INTERFACE_CONFIG: ServiceSpec = {
  name: "WANCommonInterfaceConfig",
  maxVersion: 1,
  variables: [
    {
      name: "WANAccessType",
      type: "string",
      allowed: ["DSL", "POTS", "Cable", "Ethernet"],
    },
    { name: "Layer1UpstreamMaxBitRate", type: "ui4" },
    { name: "Layer1DownstreamMaxBitRate", type: "ui4" },
    {
      name: "PhysicalLinkStatus",
      type: "string",
      allowed: ["Up", "Down", "Initializing", "Unavailable"],
    },
    { name: "TotalBytesSent", type: "ui4" },
    { name: "TotalBytesReceived", type: "ui4" },
    { name: "TotalPacketsSent", type: "ui4" },
    { name: "TotalPacketsReceived", type: "ui4" },
  ],
  actions: [
    {
      name: "GetCommonLinkProperties",
      in: [],
      out: [
        ["NewWANAccessType", "WANAccessType"],
        ["NewLayer1UpstreamMaxBitRate", "Layer1UpstreamMaxBitRate"],
        ["NewLayer1DownstreamMaxBitRate", "Layer1DownstreamMaxBitRate"],
        ["NewPhysicalLinkStatus", "PhysicalLinkStatus"],
      ],
    },
    { name: "GetTotalBytesSent", in: [], out: [["NewTotalBytesSent", "TotalBytesSent"]] },
    {
      name: "GetTotalBytesReceived",
      in: [],
      out: [["NewTotalBytesReceived", "TotalBytesReceived"]],
    },
    { name: "GetTotalPacketsSent", in: [], out: [["NewTotalPacketsSent", "TotalPacketsSent"]] },
    {
      name: "GetTotalPacketsReceived",
      in: [],
      out: [["NewTotalPacketsReceived", "TotalPacketsReceived"]],
    },
  ],
};

/** Both services, by name. */
export const SERVICES: Readonly<Record<ServiceName, ServiceSpec>> = {
  WANIPConnection: WAN_IP_CONNECTION,
  WANCommonInterfaceConfig: WAN_COMMON_INTERFACE_CONFIG,
};

/** The actions of `spec` in service version `version`. */
export function actionsOf(spec: ServiceSpec, version: number): ActionSpec[] {
  return spec.actions.filter((a) => (a.since ?? 1) <= version);
}

/** The state variables of `spec` in service version `version`. */
export function variablesOf(spec: ServiceSpec, version: number): StateVariable[] {
  return spec.variables.filter((v) => (v.since ?? 1) <= version);
}

/** The state variable `name` of `spec`; throws when the tables are inconsistent (a bug). */
export function variable(spec: ServiceSpec, name: string): StateVariable {
  const v = spec.variables.find((x) => x.name === name);
  if (!v) throw new Error(`${spec.name} has no state variable ${name}`);
  return v;
}

/**
 * UPnP error codes (UDA section 3.2.2 and the WANIPConnection specs), with
 * the description each is answered with.
 */
export const UpnpError = {
  INVALID_ACTION: 401,
  INVALID_ARGS: 402,
  ACTION_FAILED: 501,
  ARGUMENT_VALUE_INVALID: 600,
  ARGUMENT_VALUE_OUT_OF_RANGE: 601,
  OPTIONAL_ACTION_NOT_IMPLEMENTED: 602,
  STRING_ARGUMENT_TOO_LONG: 605,
  ACTION_NOT_AUTHORIZED: 606,
  SPECIFIED_ARRAY_INDEX_INVALID: 713,
  NO_SUCH_ENTRY_IN_ARRAY: 714,
  WILDCARD_NOT_PERMITTED_IN_SRC_IP: 715,
  WILDCARD_NOT_PERMITTED_IN_EXT_PORT: 716,
  CONFLICT_IN_MAPPING_ENTRY: 718,
  SAME_PORT_VALUES_REQUIRED: 724,
  ONLY_PERMANENT_LEASES_SUPPORTED: 725,
  REMOTE_HOST_ONLY_SUPPORTS_WILDCARD: 726,
  EXTERNAL_PORT_ONLY_SUPPORTS_WILDCARD: 727,
  NO_PORT_MAPS_AVAILABLE: 728,
  CONFLICT_WITH_OTHER_MECHANISMS: 729,
  PORT_MAPPING_NOT_FOUND: 730,
  READ_ONLY: 731,
  WILDCARD_NOT_PERMITTED_IN_INT_PORT: 732,
  INCONSISTENT_PARAMETERS: 733,
} as const;

/** The descriptions of the error codes, as the specifications name them. */
export const UPNP_ERROR_TEXT: Readonly<Record<number, string>> = {
  401: "Invalid Action",
  402: "Invalid Args",
  501: "Action Failed",
  600: "Argument Value Invalid",
  601: "Argument Value Out of Range",
  602: "Optional Action Not Implemented",
  605: "String Argument Too Long",
  606: "Action not authorized",
  713: "SpecifiedArrayIndexInvalid",
  714: "NoSuchEntryInArray",
  715: "WildCardNotPermittedInSrcIP",
  716: "WildCardNotPermittedInExtPort",
  718: "ConflictInMappingEntry",
  724: "SamePortValuesRequired",
  725: "OnlyPermanentLeasesSupported",
  726: "RemoteHostOnlySupportsWildcard",
  727: "ExternalPortOnlySupportsWildcard",
  728: "NoPortMapsAvailable",
  729: "ConflictWithOtherMechanisms",
  730: "PortMappingNotFound",
  731: "ReadOnly",
  732: "WildCardNotPermittedInIntPort",
  733: "InconsistentParameters",
};
