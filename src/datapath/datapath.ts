/**
 * The data path seam: what a role (server, driver) needs from whatever moves
 * its packets, and nothing more. The role decides (which public pair, which
 * session, refused or not); the data path moves and rewrites packets.
 * Implementations:
 *
 * - `queue/`: the netfilter-queue translator. Every packet of a session
 *   crosses user space and is rewritten there (`wire/rewrite.ts`). Sessions
 *   coming and going need almost no kernel work.
 * - `kernel/`: dpm decides, the kernel translates. Each session is
 *   programmed into dpm's own nftables maps when it is granted and removed
 *   when it ends; conntrack then NATs every packet of it. Only the first
 *   packets of a new session (driver) and ICMP (both roles) reach user space.
 *   Its table, rules and watchdog live in `nft/`, which the bpf path shares.
 * - `bpf/`: the kernel path with tc programs in front (`bpf/*.bpf.c`): on
 *   the gateway they translate a session's packets interface to interface
 *   once the stack forwarded it both ways; on the host they do the claim-5
 *   rewrite and hold a new session's packets for the driver, with no
 *   netfilter rule or conntrack per packet.
 *
 * A data path's whole life is in its interface, as wireguard-go's
 * `tun.Device` and `conn.Bind` carry theirs: it is opened by
 * {@linkcode openServerDataPath} / {@linkcode openDriverDataPath}
 * (`open.ts`: nothing in the kernel changes yet), tells what a previous run
 * left translating (`adopt`), installs itself and starts (`begin`), is told
 * every session up and down and applies them (`commit`), and stops, keeping
 * established sessions translating or removing everything (`stop`). What it
 * can do is declared (`can`), so the cores ask an ability, never a kind, and
 * a third data path plugs in without touching them. `fake.ts` holds the
 * fakes for unit tests.
 *
 * The short names (`a`, `pa`, `X`, `px`, `R`, `p`, `G`, `Pg`) are those of
 * the packet walk in docs/datapath.md.
 *
 * @module
 */

import type { DataPathStatus } from "../operator/types.ts";
import type { Cidr } from "../wire/addr.ts";
import type { PacketInfo } from "../wire/packet.ts";
import type { VerdictValue } from "../wire/meta.ts";
import type { SessionBinding, SessionIdentity } from "../wire/tuple.ts";
import type { DriverConfig, ServerConfig } from "../config.ts";

/** The data paths a role can run (`--datapath`), the preferred first. */
export const DATAPATH_KINDS = ["bpf", "kernel", "queue"] as const;

/** One of {@linkcode DATAPATH_KINDS}. */
export type DataPathKind = typeof DATAPATH_KINDS[number];

/**
 * What `--datapath` takes: a kind, or `auto` (the default): bpf where the
 * kernel loads its programs, else kernel, with the reason in the log.
 */
export type DataPathChoice = DataPathKind | "auto";

/**
 * How a data path stops: `keep` leaves what translates established
 * sessions in the kernel, so that a restart loses none (the next start
 * adopts them; a path that cannot keep removes everything anyway);
 * `remove` takes everything away.
 */
export type StopMode = "keep" | "remove";

/** A session as the gateway's data path needs it: identity, `R:p` and `Pg` (`wire/tuple.ts`). */
export interface GatewaySession extends SessionBinding {
  /**
   * A direct session (PCP PEER from a host without a driver, `table/allocate.ts`):
   * the host sends to `X:px` itself and gets the remote's own pair back,
   * not `G:Pg`. Absent: a driver's session.
   */
  direct?: boolean;
}

/**
 * A GatewaySession with `x = px = pg = 0` is an inbound mapping (PCP or
 * NAT-PMP MAP, `docs/pcp.md`): every remote's packets to `R:p` go to
 * `a:pa`, and `a:pa`'s packets to any remote leave as `R:p`. Real sessions
 * never have `x = 0` (the control protocol rejects 0/8).
 */
export function isMapping(s: GatewaySession): boolean {
  return s.x === 0 && s.px === 0 && s.pg === 0;
}

/** Kernel counters of one session (both directions), when a data path keeps them. */
export interface SessionCounters {
  packetsOut: number;
  bytesOut: number;
  packetsIn: number;
  bytesIn: number;
}

/**
 * What the gateway's data paths need to know of the gateway: a narrow view
 * of the server's configuration (`gatewayOptions` in `open.ts` makes it).
 */
export type GatewayOptions =
  & Pick<
    ServerConfig,
    | "lanAddr"
    | "pool"
    | "queue"
    | "gatewayPorts"
    | "controlPort"
    | "pcp"
    | "upnp"
    | "upnpPort"
    | "masquerade"
    | "addPoolAddresses"
    | "bpfSessions"
    | "socket"
  >
  & {
    /** The LAN and WAN interfaces (a data path needs both). */
    lanIf: string;
    wanIf: string;
    /** The LAN prefix. */
    lan: Cidr;
    /**
     * Drop, rather than answer from the gateway's own stack, LAN packets to
     * G's gateway ports and WAN packets to the pool (TCP, UDP) that no
     * session translated (`--ha`: during a takeover the sender retransmits
     * until the state is there, instead of meeting a TCP reset or an ICMP
     * port unreachable; docs/ha.md).
     */
    dropMisses?: boolean;
  };

/**
 * A packet the gateway's path hands up (ICMP, hairpin, a first packet ahead
 * of its request, or every packet): returns a Verdict. `meta`: the
 * `Meta` bits; `id`: the queue's id, for a verdict given later (HOLD).
 */
export type ServerPacketHandler = (pkt: Uint8Array, meta: number, id: number) => number;

/** What a gateway data path can do; the server core asks these, never the kind. */
export interface ServerAbilities {
  /**
   * Inbound mappings and direct sessions (PCP MAP and PEER, `dpm map`) reach
   * their hosts. May change while running (the queue path needs its
   * nftables steering table); false once the path stopped.
   */
  forwardsMappings(): boolean;
  /**
   * The kernel translates established packets and counts them per session
   * (`counters`); the core sees only the packets the path hands up. False:
   * the core sees (and counts) every packet itself.
   */
  readonly countsPerSession: boolean;
  /** `stop("keep")` leaves established sessions translating; the next start adopts them. */
  readonly keepsSessions: boolean;
  /**
   * A first packet held for its request (`Meta.MISSED`, `server/held.ts`)
   * goes on unchanged once its session is committed: the kernel translates
   * it (true). False: the core translates it, as every packet it sees.
   */
  readonly kernelTranslates: boolean;
}

/**
 * What a worker thread of the same process (`dpm server --workers`,
 * `src/server/worker.ts`) needs to program the sessions of its hosts into
 * the gateway's path, once the main thread opened it: plain data, posted
 * to the thread.
 */
export interface WorkerShare {
  /** The path the main thread runs. */
  kind: DataPathKind;
  /**
   * bpf: the session map's fd. Every thread of a process shares its fds;
   * the main thread's path owns and closes it (after its workers stopped).
   */
  natMapFd?: number;
}

/** The gateway's data path, seen from the server role. */
export interface ServerDataPath {
  /** Which path this is: for status and logs only. */
  readonly kind: DataPathKind;
  readonly can: ServerAbilities;
  /**
   * Verdicts for packets the core held (HOLD) and raw sends (an ICMP error
   * to a host); null until {@linkcode begin} opened the queue.
   */
  readonly io: PacketIO | null;
  /**
   * The sessions a previous run left translating in the kernel (the server
   * reconciles them with its table before `begin`). Changes nothing.
   */
  adopt(): Promise<GatewaySession[]>;
  /**
   * Installs everything (sysctls, addresses, rules, maps with every session
   * of `sessions()`) and starts handing packets to `packets`. `onFatal` is
   * called if the path fails while running. A `begin` that throws has undone
   * what it did, except what a previous run left (adopted sessions go on).
   */
  begin(
    sessions: () => Iterable<GatewaySession>,
    packets: ServerPacketHandler,
    onFatal: (e: Error) => void,
  ): Promise<void>;
  /**
   * A session was granted: from now on its packets must be translated (once
   * {@linkcode commit} ran, which the server does before it answers the
   * grant, so the driver's first packet already finds it).
   */
  sessionUp(s: GatewaySession): void;
  /** A session ended (release, expiry): stop translating it. */
  sessionDown(s: GatewaySession): void;
  /**
   * Applies what `sessionUp` queued (the kernel path groups the sessions of
   * one burst of requests into one transaction). The server calls it before
   * it answers a grant.
   */
  commit(): void;
  /**
   * Per-session kernel counters keyed by {@linkcode gatewayKey}, or null when
   * the path keeps none (`can.countsPerSession` false).
   */
  counters(): Map<number, SessionCounters> | null;
  /** For `dpm status`. */
  status(): DataPathStatus;
  /** Stops (see {@linkcode StopMode}); closes what it opened either way. */
  stop(mode: StopMode): Promise<void>;
  /**
   * Whether `sessionDown` also deletes the session's conntracks (the
   * default, true). An HA standby (docs/ha.md) sets false: there conntrackd
   * owns the conntracks (they are the active's replicas), and a delete
   * would be replicated back and cut the active's live session. Paths that
   * keep no conntracks of their own need not implement it.
   */
  ownConntracks?(own: boolean): void;
  /**
   * What a worker thread needs to program this path from its own sockets
   * (`openServerWorkerPath` in `open.ts`); absent: workers cannot (queue).
   */
  workerShare?(): WorkerShare;
  /**
   * A worker thread's path: the main thread's path reinstalled its table
   * (the watchdog); `sessions` (the worker's) go into it again, and only
   * into what the reinstall replaced (the bpf session map kept its entries
   * and their counters).
   */
  reinstalled?(sessions: Iterable<GatewaySession>): void;
}

/** A session as the host's data path needs it: its identity, the gateway `G` and its `Pg`. */
export interface HostSessionKey extends SessionIdentity {
  g: number;
  pg: number;
}

/** What the kernel saw of one host session since the previous poll. */
export interface Activity {
  /** Packets both ways, cumulative (compare with the previous value). */
  packets: number;
  bytes: number;
  /** TCP: the connection is closing or closed (FIN both ways, RST, TIME_WAIT). */
  closed: boolean;
}

/**
 * What the host's data paths need to know of the host: a narrow view of the
 * driver's configuration and what the driver found out at start.
 */
export type HostOptions = Pick<DriverConfig, "queue" | "server" | "gatewayPorts" | "socket"> & {
  /** The LAN prefix: destinations inside it are not translated. */
  lan: Cidr;
  /** The interface toward the gateway. */
  dev: string;
  /** The host's address on it (the `a` of its sessions); 0: unknown. */
  local: number;
};

/** A packet the host's path hands up: returns a Verdict (`outbound`: leaving the host). */
export type DriverPacketHandler = (
  pkt: Uint8Array,
  id: number,
  outbound: boolean,
  meta: number,
) => number;

/** What a host data path can do; the driver core asks these, never the kind. */
export interface DriverAbilities {
  /** `stop("keep")` leaves established sessions translating; the next start adopts them. */
  readonly keepsSessions: boolean;
  /**
   * A session's packets may go only once `commit()` applied its
   * `sessionUp` (the kernel translates them from what was committed): the
   * first packets of a session programmed in this turn wait for the turn's
   * commit. False: `outbound` rewrites them itself, at once.
   */
  readonly commitsFirst: boolean;
}

/** The host's data path, seen from the driver role. */
export interface DriverDataPath {
  /** Which path this is: for status and logs only. */
  readonly kind: DataPathKind;
  readonly can: DriverAbilities;
  /** Verdicts and raw sends for the packets this path hands up. */
  readonly io: PacketIO;
  /** Sessions the kernel still translates from a previous run (adopted on start). */
  adopt(): Promise<HostSessionKey[]>;
  /** Installs the rules (with the adopted sessions) and starts handing packets to `packets`. */
  begin(packets: DriverPacketHandler, onFatal: (e: Error) => void): Promise<void>;
  /**
   * The way on for an outbound packet `a:pa -> X:px` of an active session
   * that reached user space (a held first packet once granted, or a packet
   * the path hands up): Verdict.MODIFIED when the path rewrote it in place
   * to `a:pa -> G:Pg` (claim 5), ACCEPT when the kernel rewrites it further
   * on (the session is programmed). `skbInfo`: the queue's checksum bits.
   */
  outbound(pkt: Uint8Array, info: PacketInfo, g: number, pg: number, skbInfo: number): VerdictValue;
  /**
   * A session was granted (or its gateway port proposed): translate it from
   * the next {@linkcode commit} on. Several in one turn go in one
   * transaction.
   */
  sessionUp(s: HostSessionKey): void;
  /** Applies what `sessionUp` queued (one transaction); before the turn's held packets go. */
  commit(): void;
  /**
   * The session ended on the host (or its packets so far went out
   * untranslated): stop translating it, and forget what the kernel tracked
   * of it, so that its next packet meets the translation afresh.
   */
  sessionDown(s: HostSessionKey): void;
  /**
   * Kernel activity per session keyed by {@linkcode hostKey}, or null when
   * the core sees every packet itself (queue path).
   */
  activity(): Map<number, Activity> | null;
  status(): DataPathStatus;
  /** Stops (see {@linkcode StopMode}); closes what it opened either way. */
  stop(mode: StopMode): Promise<void>;
}

/** How the driver's core gives verdicts and sends ICMP refusals (the queue and a raw socket). */
export interface PacketIO {
  /**
   * The verdict for a held or handed-up packet: DROP, ACCEPT, or MODIFIED
   * with `payload` (the packet's new bytes).
   */
  verdict(id: number, verdict: VerdictValue, payload?: Uint8Array): void;
  /** Sends what `verdict` buffered. */
  flush(): void;
  /** Sends a raw IPv4 packet (an ICMP error to a local application). */
  send(pkt: Uint8Array, len: number, dst: number): void;
}

/**
 * The numbers a data path keys its sessions by, (proto, a, Pg): one
 * definition (`lanKey` in `wire/tuple.ts`), named for each side.
 */
export { lanKey as gatewayKey, lanKey as hostKey } from "../wire/tuple.ts";
