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
  shown: SessionView[];
  results: Record<string, number>;
  drops: Record<string, number>;
  packets: { in: number; out: number; hairpin: number };
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
  /** Bytes, where the data path counts them (the kernel path, from conntrack). */
  bytesOut?: number;
  bytesIn?: number;
}

/** The driver's status reply . */
export interface DriverStatusReply {
  role: "driver";
  server: string;
  epoch: number | null;
  dataPath: DataPathStatus;
  stats: Record<string, unknown>;
  sessions: Record<string, unknown>[];
}

/** The state of a role's data path as `dpm status` shows it. */
export interface DataPathStatus {
  /** `kernel` (nftables + conntrack), `queue` (netfilter queue translator) or `off`. */
  kind: "kernel" | "queue" | "off";
  /** `on`, or `degraded` while rules that dpm installed are missing and being reinstalled. */
  state: "on" | "degraded" | "off";
  /** Times the watchdog found dpm's rules or maps gone or changed and reinstalled them. */
  reinstalls: number;
  /** The last problem the watchdog saw, if any. */
  lastError?: string;
}
