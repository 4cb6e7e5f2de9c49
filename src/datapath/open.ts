/**
 * Where a data path is chosen: the one module that names the
 * implementations. A role's process file (`run.ts`) and its `--cleanup`
 * call these with the kind from `--datapath` and a narrow options type; the
 * cores see only the interfaces of `datapath.ts`.
 *
 * Each implementation is imported when asked for, so a gateway running the
 * queue path never loads the kernel path's code, and `--cleanup` removes
 * what any path left.
 *
 * @module
 */

import type {
  DataPathChoice,
  DataPathKind,
  DriverDataPath,
  GatewayOptions,
  GatewaySession,
  HostOptions,
  HostSessionKey,
  ServerDataPath,
  WorkerShare,
} from "./datapath.ts";
import { DATAPATH_KINDS } from "./datapath.ts";
import type { OtherPaths } from "./netfilter.ts";
import { removeGateway } from "./gateway.ts";
import { logger } from "../runtime/log.ts";
import type { Cidr } from "../wire/addr.ts";
import type { DriverConfig, ServerConfig } from "../config.ts";

/** The gateway's data path options from the server's configuration (the interfaces set). */
export function gatewayOptions(cfg: ServerConfig, lan: Cidr): GatewayOptions {
  if (cfg.lanIf === null || cfg.wanIf === null) {
    throw new TypeError("A gateway data path needs --lan-if and --wan-if");
  }
  return {
    lanIf: cfg.lanIf,
    wanIf: cfg.wanIf,
    lan,
    lanAddr: cfg.lanAddr,
    pool: cfg.pool,
    queue: cfg.queue,
    gatewayPorts: cfg.gatewayPorts,
    controlPort: cfg.controlPort,
    pcp: cfg.pcp,
    upnp: cfg.upnp,
    upnpPort: cfg.upnpPort,
    masquerade: cfg.masquerade,
    addPoolAddresses: cfg.addPoolAddresses,
    bpfSessions: cfg.bpfSessions,
    socket: cfg.socket,
    dropMisses: cfg.ha,
  };
}

/** The host's data path options from the driver's configuration and what it found at start. */
export function hostOptions(cfg: DriverConfig, lan: Cidr, dev: string, local: number): HostOptions {
  return {
    queue: cfg.queue,
    server: cfg.server,
    gatewayPorts: cfg.gatewayPorts,
    socket: cfg.socket,
    lan,
    dev,
    local,
  };
}

/** What an implementation module offers for the gateway. */
interface ServerImpl {
  open(opts: GatewayOptions, others: OtherPaths): Promise<ServerDataPath>;
  /** Removes whatever a run of this path left (`--cleanup`); idempotent. Returns a log phrase. */
  remove(opts: GatewayOptions): Promise<string>;
  /**
   * `nft`: the path is built on dpm's nftables table (kernel, bpf). Two
   * paths of one family share the table, so one starting after the other
   * removes only what the other adds to it (`removeExtras`), and adopts
   * the table's sessions instead of tearing them down.
   */
  family?: "nft";
  /** What this path adds to its family's table (bpf: the programs); absent: nothing. */
  removeExtras?(opts: GatewayOptions): Promise<string>;
  /** A worker thread's path on what the main thread's shares (`ServerDataPath.workerShare`). */
  openWorker?(
    opts: GatewayOptions,
    share: WorkerShare,
    sessions: () => Iterable<GatewaySession>,
  ): Promise<ServerDataPath>;
}

/** What an implementation module offers for a host. */
interface DriverImpl {
  open(opts: HostOptions, others: OtherPaths): Promise<DriverDataPath>;
  /** The sessions a run of this path left translating (to give back at `--cleanup`). */
  leftovers(opts: HostOptions): Promise<HostSessionKey[]>;
  /** Removes whatever a run of this path left; idempotent. Returns a log phrase. */
  remove(opts: HostOptions): Promise<string>;
}

/**
 * Each data path's module for each role, imported when first asked for (a
 * path's native parts load only when it is used): a new path is one entry.
 */
const IMPLS: Record<
  DataPathKind,
  { server(): Promise<ServerImpl>; driver(): Promise<DriverImpl> }
> = {
  bpf: {
    server: async () => (await import("./bpf/server.ts")).BpfServerDataPath,
    driver: async () => (await import("./bpf/driver.ts")).BpfDriverDataPath,
  },
  kernel: {
    server: async () => (await import("./kernel/server.ts")).KernelServerDataPath,
    driver: async () => (await import("./kernel/driver.ts")).KernelDriverDataPath,
  },
  queue: {
    server: async () => (await import("./queue/server.ts")).QueueServerDataPath,
    driver: async () => (await import("./queue/driver.ts")).QueueDriverDataPath,
  },
};

const serverImpl = (kind: DataPathKind) => IMPLS[kind].server();
const driverImpl = (kind: DataPathKind) => IMPLS[kind].driver();

const log = logger("datapath");

/**
 * Opens the data path `choice` names with `open`; `auto` tries bpf and
 * falls back to kernel, saying why in one log line. Returns the path.
 */
export async function chooseDataPath<P extends { kind: DataPathKind }>(
  choice: DataPathChoice,
  open: (kind: DataPathKind) => Promise<P>,
): Promise<P> {
  if (choice !== "auto") return await open(choice);
  try {
    return await open("bpf");
  } catch (e) {
    const why = (e as Error).message.split("\n")[0];
    log.warn(`bpf data path unavailable (${why}); using the kernel data path`);
    return await open("kernel");
  }
}

/**
 * Opens the gateway's data path `choice` names (`auto`: bpf where it
 * loads, else kernel): its sockets and queues, its programs loaded, nothing
 * changed in the kernel yet (`adopt`, then `begin`).
 */
export function openServerDataPath(
  choice: DataPathChoice,
  opts: GatewayOptions,
): Promise<ServerDataPath> {
  return chooseDataPath(choice, async (kind) => {
    const impl = await serverImpl(kind);
    const others: OtherPaths = {
      removeLeftovers: async () => {
        for (const k of DATAPATH_KINDS) {
          if (k === kind) continue;
          const other = await serverImpl(k);
          if (impl.family !== undefined && other.family === impl.family) {
            await other.removeExtras?.(opts);
          } else await other.remove(opts);
        }
      },
    };
    return await impl.open(opts, others);
  });
}

/**
 * A worker thread's gateway path (`dpm server --workers`, `src/server/worker.ts`):
 * the kind the main thread runs, on what its path shares (`share`); never
 * begun (the main thread installed everything), it programs the worker's
 * sessions (`sessions`) from the worker's own sockets.
 */
export async function openServerWorkerPath(
  opts: GatewayOptions,
  share: WorkerShare,
  sessions: () => Iterable<GatewaySession>,
): Promise<ServerDataPath> {
  const impl = await serverImpl(share.kind);
  if (!impl.openWorker) throw new Error(`the ${share.kind} data path cannot run --workers`);
  return await impl.openWorker(opts, share, sessions);
}

/** Opens the host's data path `choice` names (nothing changed in the kernel yet). */
export function openDriverDataPath(
  choice: DataPathChoice,
  opts: HostOptions,
): Promise<DriverDataPath> {
  return chooseDataPath(choice, async (kind) => {
    const others: OtherPaths = {
      removeLeftovers: async () => {
        for (const k of DATAPATH_KINDS) if (k !== kind) await (await driverImpl(k)).remove(opts);
      },
    };
    return await (await driverImpl(kind)).open(opts, others);
  });
}

/**
 * Removes what any data path's run left on the gateway (`dpm server
 * --cleanup`): tables, chains, and what `datapath/gateway.ts` set up. Every
 * path is asked, whichever ran. Returns one log phrase per path.
 */
export async function removeServerDataPaths(opts: GatewayOptions): Promise<string[]> {
  const out: string[] = [];
  for (const kind of DATAPATH_KINDS) out.push(await (await serverImpl(kind)).remove(opts));
  out.push(await removeGateway(opts));
  return out;
}

/** The sessions any data path's run left translating on this host. */
export async function leftoverHostSessions(opts: HostOptions): Promise<HostSessionKey[]> {
  const out: HostSessionKey[] = [];
  for (const kind of DATAPATH_KINDS) out.push(...await (await driverImpl(kind)).leftovers(opts));
  return out;
}

/** Removes what any data path's run left on this host (`dpm driver --cleanup`). */
export async function removeDriverDataPaths(opts: HostOptions): Promise<string[]> {
  const out: string[] = [];
  for (const kind of DATAPATH_KINDS) out.push(await (await driverImpl(kind)).remove(opts));
  return out;
}
