/**
 * What the operator socket carries: the replies of the roles to `dpm status`
 * and `dpm query`, shared by the roles (which build them) and the CLI (which
 * prints them). Types only.
 *
 * @module
 */

/** The driver's answer to a query (see driver.ts). */
export interface QueryReply {
  result: string;
  public?: string;
  gatewayPort?: number;
  replaced?: boolean;
  shared?: boolean;
  expiresIn?: number;
  error?: string;
}

/** The driver's answer to `dpm map` (and one row of its mappings in `dpm status --driver`). */
export interface MapReply {
  /** `ok` (also a delete of none: deletes are idempotent), a result name (`conflict`, `quota-exceeded`...), `server-unreachable` or `error`. */
  result: string;
  proto?: string;
  /** `a:pa`. */
  local?: string;
  /** `R:p`: where every remote reaches `local`. */
  public?: string;
  /** Granted lease, s. */
  lifetime?: number;
  expiresIn?: number;
  /** A delete (lifetime 0) removed it. */
  deleted?: boolean;
  error?: string;
}

/** The server's answer to a status request (see server.ts). */
export interface StatusReply {
  error?: string;
  version: string;
  epoch: number;
  uptime: number;
  lanAddr: string;
  pool: string[];
  /** The data path and its health ("off" when the server runs control only). */
  dataPath: DataPathStatus;
  sessions: number;
  /** The sessions listed: at most the limit asked (1000), all when streamed. */
  shown: SessionView[];
  /** With `host`: that host's sessions only, its quota use and its refusals. */
  host?: HostView;
  results: Record<string, number>;
  drops: Record<string, number>;
  packets: { in: number; out: number; hairpin: number };
  /**
   * First packets held at the gateway until their request was granted
   * (`server/held.ts`): held, released, dropped (refused or over a limit),
   * expired (no request came), evicted (a host's limit), refused, and `now`
   * (held at this moment).
   */
  held?: Record<string, number>;
  /**
   * Control datagrams from LAN hosts by the protocol version they spoke:
   * v2 (one request each), v3 (batches), other (older or newer).
   */
  datagrams?: Record<string, number>;
  /** The inbound mappings by owner and what each mapping protocol answered. */
  protocols?: MappingProtocols;
  /** High availability (`--ha`, docs/ha.md); absent without it. */
  ha?: HaStatus;
}

/** `dpm status`'s view of the HA role (`src/ha/`). */
export interface HaStatus {
  /** "active" (holds G and the pool, answers), "standby" (mirrors), "fault" (keepalived: unfit). */
  role: string;
  /** Wall clock (ms) of the last role change, or of the start. */
  since: number;
  /** Role changes since start. */
  transitions: number;
  /** The last VRRP state keepalived reported (MASTER, BACKUP, FAULT, STOP), null before one. */
  vrrp: string | null;
  /** The other gateway's sync address (`--ha-peer`), null when not given. */
  peer: string | null;
  /** The last takeover here: keepalived's MASTER line to serving, ms (null before one). */
  lastTakeoverMs: number | null;
  /** Of that takeover: until G and the pool were claimed, ms. */
  lastClaimMs: number | null;
  /** Transitions whose steps failed (logged). */
  failedTransitions: number;
  /** The mirror of replicated conntracks (`src/ha/mirror.ts`). */
  mirror: {
    /** Sessions in the table from replicas. */
    sessions: number;
    /** Conntrack events applied. */
    events: number;
    /** Replicas the table refused (a pair held by another session). */
    refused: number;
    /** Times the kernel dropped events (each followed by a full reconcile). */
    lost: number;
    /** Full reconciles. */
    reconciles: number;
    /** Age of the last full reconcile, seconds (null: active, or none yet). */
    lagSeconds: number | null;
  };
  /**
   * conntrackd's sync figures (`--ha-conntrackd-config`; `src/ha/conntrackd.ts`):
   * the sync link's traffic, lost and malformed messages, what the peer's
   * messages did in this kernel, the resend queue. Null without its
   * configuration or before the first read.
   */
  sync: ConntrackdStats | null;
  /** Why conntrackd's figures could not be read (it does not answer), null when they could. */
  syncError: string | null;
  /**
   * The standby has fallen behind: its mirror has not reconciled for 30 s
   * (or never), conntrackd lost messages within 30 s, or conntrackd does
   * not answer.
   */
  behind: boolean;
  /** Conntrack timeouts refreshed while active (their replicas stay alive). */
  refreshed: number;
  /**
   * The VRRP adverts of dpm's instance heard from the peer (`src/ha/vrrp.ts`):
   * on the standby the active's heartbeat, on the active split brains. Null
   * when the socket could not be opened.
   */
  adverts: AdvertStats | null;
  /** This box's VRRP priority, from keepalived's last FIFO line (null before one). */
  priority: number | null;
}

/** `dpm status`'s view of the mapping protocols (PCP, NAT-PMP, UPnP; dpm's own is `results`). */
export interface MappingProtocols {
  /** Inbound mappings in the table by owner: "dpm", "pcp", "natpmp", "upnp", "adopted". */
  mappings: Record<string, number>;
  /** PCP answers by result (lower-case RFC 6887 names); absent with --no-pcp. */
  pcp?: Record<string, number>;
  /** NAT-PMP answers by result (lower-case RFC 6886 names); absent with --no-pcp. */
  natpmp?: Record<string, number>;
  /** The UPnP IGD; absent with --no-upnp. */
  upnp?: UpnpStatus;
}

/** The UPnP IGD as `dpm status` shows it (`src/upnp/`). */
export interface UpnpStatus {
  /** The description URLs (IGD:1's, IGD:2's). */
  locations: string[];
  /** BOOTID.UPNP.ORG announced. */
  bootId: number;
  /** HTTP answers by status code. */
  http: Record<string, number>;
  /** Actions answered without a fault, by name. */
  actions: Record<string, number>;
  /** SOAP faults by UPnP error code. */
  faults: Record<string, number>;
  /**
   * SSDP searches: answered, answers (datagrams sent), unmatched, malformed,
   * notLan (from outside the LAN), rateLimited, overBudget (answers left out
   * by the 4x bound).
   */
  ssdp: Record<string, number>;
  /** The HTTP listener: served, busy (over the connection caps), refused, timedOut, malformed. */
  listener: Record<string, number>;
}

/** One table row as the status shows it. */
export interface SessionView {
  proto: string;
  internal: string;
  gatewayPort: number;
  public: string;
  remote: string;
  expiresIn: number;
  flags: string;
  packetsOut: number;
  packetsIn: number;
  /**
   * Who created the row: "dpm" (a driver, `dpm map`), "pcp", "natpmp",
   * "upnp", or "adopted" (restored without an owner: an older state file,
   * the kernel's maps).
   */
  owner?: string;
  /** What a mapping is for (UPnP's description); absent when none was given. */
  description?: string;
  /** Bytes host -> remote and back (the kernel path adds conntrack's). */
  bytesOut?: number;
  bytesIn?: number;
  /** Seconds since the session was granted (or restored, or adopted). */
  age?: number;
  /**
   * Seconds since its counters were last seen moving; absent before any
   * packet. Sampled: on the queue path at least every full expiry sweep
   * (250 ms up to ~16k sessions), on the kernel path at each status read.
   */
  idle?: number;
}

/** `dpm status --host A`: one host's share of the table. */
export interface HostView {
  host: string;
  sessions: number;
  /** The per-host quota (--max-sessions-per-host). */
  quota: number;
  byProto: Record<string, number>;
  /** The public address the host is paired with, if any. */
  paired?: string;
  /** The host's refused requests by reason, since the server started. */
  refusals: Record<string, number>;
  /** The last refusal: what, why, seconds ago. */
  lastRefusal?: { request: string; result: string; ago: number };
}

/** A line of `dpm status --watch`: a session came or went, or a request was refused. */
export type SessionEvent =
  | ({ event: "up" } & SessionView)
  | ({ event: "down"; reason: "released" | "expired" | "dropped" } & SessionView)
  | { event: "refused"; host: string; request: string; result: string };

/** The server's answer to `dpm drop`. */
export interface DropReply {
  error?: string;
  dropped: number;
}

/** The driver's status reply . */
export interface DriverStatusReply {
  role: "driver";
  server: string;
  epoch: number | null;
  dataPath: DataPathStatus;
  stats: Record<string, unknown>;
  sessions: Record<string, unknown>[];
  /** The inbound mappings this host made with `dpm map`. */
  mappings?: MapReply[];
  /** Whether the server answers: seconds since its last answer and its last timeout (absent: never). */
  control?: { lastAnswer?: number; lastTimeout?: number; answering: boolean };
}

/** The state of a role's data path as `dpm status` shows it. */
export interface DataPathStatus {
  /** `bpf` (the kernel path with tc programs translating established sessions), `kernel`
   * (nftables + conntrack), `queue` (netfilter queue translator) or `off`. */
  kind: "bpf" | "kernel" | "queue" | "off";
  /** `on`, or `degraded` while rules that dpm installed are missing and being reinstalled. */
  state: "on" | "degraded" | "off";
  /** Times the watchdog found dpm's rules or maps gone or changed and reinstalled them. */
  reinstalls: number;
  /** The last problem the watchdog saw, if any. */
  lastError?: string;
}

/** What `dpm status` shows of the VRRP adverts heard (`HaStatus.adverts`, src/ha/vrrp.ts). */
export interface AdvertStats {
  /** Adverts of dpm's instance heard (from another router) since start. */
  heard: number;
  /** When the last was heard (wall clock ms), null before one. */
  lastAt: number | null;
  /** Its sender, dotted quad. */
  lastFrom: string | null;
  lastPriority: number | null;
  /** Adverts heard while this box was active, of a priority not above its own (the peer claimed master too). */
  whileActive: number;
  /** Runs of adverts heard while active: times both boxes claimed (split brain). */
  splitBrains: number;
  /** Packets on the socket that were not adverts of dpm's instance. */
  ignored: number;
}

/** conntrackd's sync figures (totals since it started). */
export interface ConntrackdStats {
  /** Bytes and packets on the sync link, both ways (its "UDP traffic" lines). */
  bytesSent: number;
  bytesReceived: number;
  packetsSent: number;
  packetsReceived: number;
  /** Send and receive errors on the sync link. */
  errors: number;
  /** Messages from the peer lost or malformed ("message tracking"): a replica may be missing. */
  lostMessages: number;
  malformedMessages: number;
  /** Entries the peer's messages created, updated, destroyed in this kernel, and those that failed ("external inject"). */
  injected: { created: number; updated: number; destroyed: number; failed: number };
  /** Messages waiting to be resent to the peer (`-s queue`: rsqueue's current elements), null when not read. */
  resendQueue: number | null;
}
