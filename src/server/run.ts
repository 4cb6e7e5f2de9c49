/**
 * `dpm server` as a process: the control listener, the operator socket, the
 * timers, the data path chosen by `--datapath`, signals and cleanup. The
 * only file of the role that constructs concrete data paths.
 *
 * @module
 */

import dgram from "node:dgram";
import {
  type Cidr,
  cidrContains,
  formatCidr,
  formatIPv4,
  parseSocketIPv4,
  prefixMask,
} from "../wire/addr.ts";
import { checkPoolOutside, ConfigError, type ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { runRole } from "../runtime/cleanup.ts";
import { ensureSocketDir, serveLocal } from "../operator/socket.ts";
import { serverOperator } from "../operator/server_ops.ts";
import { ServerCore } from "./core.ts";
import { StateStore } from "./state.ts";
import { DropLog, restoreRecord } from "./restore.ts";
import type { GatewaySession, ServerDataPath } from "../datapath/datapath.ts";
import { gatewayOptions, openServerDataPath, removeServerDataPaths } from "../datapath/open.ts";
import { lockRole } from "../runtime/lock.ts";
import { useNotifier } from "../runtime/notify.ts";
import { sdNotify } from "../../linux/sdnotify.ts";
import { serveMetrics } from "../operator/metrics.ts";
import { PCP_PORT } from "../pcp/codec.ts";
import { openControl, serveControl, shardGuard } from "./control_socket.ts";
import { HeldPackets } from "./held.ts";
import { workerOf } from "../table/slice.ts";
import { PacketInfo } from "../wire/packet.ts";
import { Meta, Verdict, type VerdictValue } from "../wire/meta.ts";
import {
  checkWorkerCount,
  mergeHeaders,
  packetOwner,
  ServerWorkers,
  splitByWorker,
  workersOperator,
} from "./workers.ts";
import * as announce from "../pcp/announce.ts";
import { bindUpnp, type Upnp } from "../upnp/listen.ts";
import { bootIdFor } from "../upnp/boot.ts";
import type { LinkState } from "../upnp/mappings.ts";
import { VERSION } from "../version.ts";

const log = logger("server");

export { serveControl } from "./control_socket.ts";

/**
 * Runs `dpm server` until SIGINT/SIGTERM or a fatal error; returns the exit code.
 *
 * A start does everything that can fail without touching the kernel first
 * (the lock, the state file, the control, PCP, UPnP, operator and metrics
 * sockets), then opens the data path, adopts what a previous run left
 * translating, and lets the data path change the kernel (`begin`). A start
 * that fails undoes what it did; only sessions a previous run left
 * translating go on.
 */
export async function runServer(
  cfg: ServerConfig,
  reload?: () => Promise<ServerConfig>,
): Promise<number> {
  useNotifier(sdNotify);
  const failCode = (e: unknown) => e instanceof ConfigError ? 2 : 1;
  // SIGHUP's live settings (log level and format) reach the workers too.
  let pool: ServerWorkers | null = null;
  const reloadAll = reload && (async () => {
    const next = await reload();
    pool?.logSettings(next.logLevel, next.logFormat);
    return next;
  });
  return await runRole({ log, role: "server", cfg, reload: reloadAll, failCode }, async (
    undo,
    stop,
  ) => {
    undo.push(await lockRole("server"));
    await ensureSocketDir(cfg.socket); // the data path keeps its journal beside the socket
    const lan = await lanPrefix(cfg);
    // The pool must lie outside the LAN, also when the prefix was read off the interface.
    if (lan) checkPoolOutside(cfg.pool, lan);
    const dataPlane = cfg.lanIf !== null && cfg.wanIf !== null && lan !== null;
    if (cfg.cleanup) {
      if (!dataPlane) throw new Error("--cleanup needs --lan-if and --wan-if");
      const done = await removeServerDataPaths(gatewayOptions(cfg, lan!));
      log.info(`removed ${done.join("; ")}`);
      return 0;
    }
    if (cfg.lifetime < 7440) {
      log.warn(
        `--lifetime ${cfg.lifetime} is below RFC 5382's 2 h 4 min for established TCP and ` +
          `${
            cfg.lifetime < 120 ? "RFC 4787's 2 min for UDP; " : ""
          }drivers renew busy sessions, idle ones expire sooner`,
      );
    }
    const nw = cfg.workers;
    // The state file opens (or fails, with its reason) before anything changes.
    if (cfg.state) await checkWorkerCount(cfg.state, nw);
    const store = cfg.state ? await StateStore.open(cfg.state) : null;
    if (store) undo.push(() => void store.close());
    const saved = store?.saved ?? null;
    const cookieKey = cfg.cookieSecretFile ? await readCookieKey(cfg.cookieSecretFile) : null;
    const core = new ServerCore(cfg, {
      lan,
      ...(saved ? { epoch: saved.epoch } : {}),
      ...(cfg.wanIf ? { link: await wanLink(cfg.wanIf) } : {}),
      ...(cookieKey ? { cookieKey } : {}),
      // --workers: the main thread is worker 0 (workers.ts), and holds the
      // first packets the other workers decide on.
      ...(nw > 1
        ? {
          slice: { index: 0, count: nw },
          held: new HeldPackets({ rememberGrants: true }),
          // A first packet held here for another worker's session (a hairpin
          // must be translated, not just let go): that worker decides.
          elsewhere: (h) => {
            const k = workerOf(h.a, nw);
            if (k === 0 || workers === null) return false;
            workers.translate(k, h.id, h.bytes, h.skbInfo | Meta.MISSED);
            return true;
          },
        }
        : {}),
    });
    const drops = new DropLog();
    if (saved) {
      let kept = 0;
      const now = core.now();
      for (const rec of saved.sessions) {
        if (restoreRecord(core.table, rec, now, drops, "the state file")) kept++;
      }
      log.info(`restored ${kept} of ${saved.sessions.length} sessions from ${cfg.state}`);
    }

    // HA: the standby binds G before it holds it (ip_nonlocal_bind).
    if (cfg.ha) undo.push(await (await import("../ha/run.ts")).haSysctls(cfg));
    // The sockets are bound before the kernel changes (a port in use fails
    // the start with nothing to undo); they answer once the data path is up,
    // so that every grant is answered only once its session is translated;
    // with --ha, only while this gateway is the active one.
    let started = false;
    let haActive: () => boolean = () => true;
    const serving = () => started && haActive();
    const control = openControl(cfg.lanAddr, cfg.controlPort, nw);
    undo.push(() => control.close());
    const pcp = cfg.pcp
      ? await bindUdp(
        cfg.lanAddr,
        PCP_PORT,
        "PCP port",
        "another PCP or NAT-PMP server? --no-pcp turns dpm's off",
      )
      : null;
    if (pcp) undo.push(() => void pcp.close());
    // The UPnP IGD (src/upnp/): bound now, serving once the data path is up.
    let upnp: Upnp | null = null;
    if (cfg.upnp) {
      upnp = await bindUpnp({
        lanAddr: cfg.lanAddr,
        lan,
        httpPort: cfg.upnpPort,
        mappings: core.upnp,
        maxLease: cfg.lifetime,
        // The device UUIDs stay the same for this gateway across restarts.
        seed: `dpm server ${formatIPv4(cfg.lanAddr)} ${formatIPv4(cfg.pool[0]!)}`,
        version: VERSION,
        isHost: (a) => core.hosts.isHost(a),
        now: core.now,
        // A grant is committed (data path, state file) before its answer is written.
        afterControl: () => core.commit(),
        log: {
          info: (l) => core.logLimited(l),
          warn: (l) => log.warn(l),
          debug: (l) => log.debug(l),
        },
      });
      const u = upnp;
      undo.push(() => u.close());
      core.upnpStatus = () => u.status();
    }
    if (cfg.metricsAddr) {
      const { serverFamilies } = await import("./metrics.ts");
      // With workers, the totals are every worker's (their headers, at most a second old).
      undo.push(
        await serveMetrics(cfg.metricsAddr, () =>
          serverFamilies(
            core,
            workers ? () => mergeHeaders(core.statusHeader(), workers!.latestHeaders()) : undefined,
          )),
      );
    }
    // status (streamed), watch, drop; a drop is committed before it is answered.
    let workers: ServerWorkers | null = null;
    const operator = serverOperator(core, () => core.commit());
    const local = await serveLocal(
      cfg.socket,
      nw > 1 ? (req, peer) => workersOperator(req, core, workers, operator, peer) : operator,
    );
    undo.push(() => local.close());

    // --workers: workers 1..N-1 (workers.ts), each with its hosts' share of
    // what the kernel still translates; their restore's drop lines and
    // epoch renewal join the main thread's.
    let workerSessions: GatewaySession[] = [];
    let workersRenew = false;
    const startWorkers = async (shares: GatewaySession[][]): Promise<ServerWorkers | null> => {
      if (nw === 1) return null;
      if (dp && !dp.workerShare) {
        throw new ConfigError(`--workers ${nw}: the ${dp.kind} data path cannot run workers`);
      }
      const { workers: w, ready } = await ServerWorkers.start(
        {
          cfg,
          count: nw,
          lan,
          epoch: core.epoch,
          cookieKey,
          share: dp?.workerShare?.() ?? null,
          bootId: 0,
        },
        shares,
        (d) => {
          // A worker committed these decisions: the first packets it decided on go on (or not).
          const now = core.now();
          for (let i = 0; i + 4 < d.length; i += 5) {
            core.held.decide(d[i]!, d[i + 1]!, d[i + 2]!, d[i + 3]!, d[i + 4] === 1, now);
          }
          core.releaseHeld();
        },
        (e) => {
          log.error(e.message);
          stop(1);
        },
        (id, v, bytes) => {
          // A worker translated a packet of one of its sessions (packetOwner below).
          const io = dp?.io;
          if (!io) return;
          io.verdict(id, v as VerdictValue, bytes);
          io.flush();
        },
      );
      undo.push(async () => {
        const n = await w.stop();
        log.info(`workers 1-${nw - 1} stopped; ${n} session(s) saved to their state files`);
      });
      for (const l of ready.lines) log.warn(l);
      workersRenew = ready.renewsEpoch;
      log.info(
        `${nw} workers: workers 1-${
          nw - 1
        } restored ${ready.restored} and adopted ${ready.adopted} session(s)`,
      );
      // Said at every start: an operator must not find this out from a CONFLICT.
      log.warn(
        `--workers ${nw} is experimental: a fixed (not replaceable) port is served only to ` +
          `hosts of the worker whose port slice holds it (port mod ${nw}), and a hairpin ` +
          `between two workers' hosts is not translated (README, "Known limits")`,
      );
      workerSessions = ready.sessions;
      pool = w;
      return w;
    };

    // The data path: opened, what a previous run left adopted, then begun.
    let dp: ServerDataPath | null = null;
    if (dataPlane) {
      const path = await openServerDataPath(cfg.datapath, gatewayOptions(cfg, lan!));
      dp = path;
      undo.push(async () => {
        core.detach();
        // The kernel path goes on translating established sessions while no
        // dpm runs; the next start adopts them (`dpm server --cleanup` removes all).
        await path.stop("keep");
      });
      const shares = splitByWorker(await path.adopt(), nw, workerOf);
      const { adopted, stale } = core.adopt(shares[0]!, drops);
      shares[0] = [];
      workers = await startWorkers(shares);
      // The workers' sessions, until begin() returned: its install (and, on the
      // bpf path, its map sync, which removes what belongs to no session) reads them.
      let early: GatewaySession[] | null = workerSessions;
      if (adopted) log.info(`adopted ${adopted} session(s) the kernel was still translating`);
      renewEpochIfDropped(core, drops, saved !== null, workersRenew);
      // Before begin() replaces the maps: the old elements and their conntracks go.
      for (const s of stale) path.sessionDown(s);
      if (stale.length) {
        log.info(`removed ${stale.length} session(s) from the kernel that the table dropped`);
      }
      core.attach(path);
      const info = new PacketInfo();
      const poolSet = new Set(cfg.pool);
      await path.begin(
        // The workers' sessions go into the first install; later reinstalls
        // (the watchdog's) are followed by each worker programming its own.
        () => early?.length ? chain(core.sessions(), early) : core.sessions(),
        (pkt, meta, id) => {
          // With workers, a packet of another worker's session is translated
          // there (its verdict comes back); first packets are held here.
          if (workers && id >= 0 && (meta & Meta.MISSED) === 0) {
            const k = packetOwner(pkt, info, cfg, poolSet, nw);
            if (k > 0) {
              workers.translate(k, id, pkt.slice(), meta);
              return Verdict.HOLD;
            }
          }
          return core.handlePacket(pkt, meta, id);
        },
        (e) => {
          log.error(`data path failed: ${e.message}`);
          stop(1);
        },
      );
      early = null;
    } else {
      workers = await startWorkers([]);
      renewEpochIfDropped(core, drops, saved !== null, workersRenew);
      log.info("data path off (no --lan-if/--wan-if): control plane only");
    }
    // The gateway's own addresses and sockets, now and once a second: no
    // host speaks as the gateway, no mapping takes a port the gateway holds.
    const { boundIPv4, readGatewaySockets } = await import("../../linux/procnet.ts");
    let reading = false;
    let reinstalls = dp?.status().reinstalls ?? 0;
    const gatewayState = async () => {
      if (reading) return;
      reading = true;
      try {
        const g = await readGatewaySockets();
        const tcp = [...boundIPv4(g.tcp)];
        const udp = [...boundIPv4(g.udp)];
        core.gatewayState(g.local, tcp, udp);
        workers?.gatewayState(g.local, tcp, udp);
        // The watchdog reinstalled the table from the main thread's sessions: the workers add theirs.
        const r = dp?.status().reinstalls ?? 0;
        if (r !== reinstalls) {
          reinstalls = r;
          workers?.reprogram();
        }
      } finally {
        reading = false;
      }
    };
    await gatewayState();
    const audited = core.audit();
    if (audited) {
      log.warn(`removed ${audited} restored row(s) the mapping policy refuses now`);
      core.commit(); // out of the kernel's maps before anything is served
    }
    // BOOTID.UPNP.ORG grows only when the mappings were lost (src/upnp/boot.ts).
    const bootId = bootIdFor(saved, core.epoch, Date.now());
    if (store) {
      // The file now holds the table as restored; from here on every change
      // is written in the turn's transaction, committed before the replies.
      store.start(core.table, core.epoch, bootId);
      store.listen(core.table);
      core.addCommitter(store);
      undo.push(() => {
        const n = store.close();
        log.info(`saved ${n} sessions to ${store.path}`);
      });
    }

    undo.push(serveControl(control, nw > 1 ? shardGuard(core, 0, nw) : core, serving));
    const pcpServed = pcp ? servePcp(pcp, cfg, core, serving, !cfg.ha) : null;
    if (pcpServed) undo.push(pcpServed.stop);
    upnp?.start(bootId);
    if (cfg.ha) {
      const { HaNode } = await import("../ha/run.ts");
      const { tableTarget } = await import("../ha/mirror.ts");
      const node = new HaNode(cfg, {
        lanPrefixLen: lan!.len,
        target: tableTarget(core.table, core.now, () => core.commit(), (l) => log.debug(l)),
        serve: () => {
          // Drivers reserve again at the new epoch (their previous pairs are
          // held already when replicated); PCP and NAT-PMP clients map again.
          const was = core.epoch;
          core.renewEpoch();
          log.info(`new epoch ${core.epoch.toString(16)} (was ${was.toString(16)}): serving`);
          pcpServed?.announce();
        },
        unserve: () => {},
        ownConntracks: (own) => dp?.ownConntracks?.(own),
        counters: () => dp?.counters() ?? null,
        now: core.now,
      });
      haActive = () => node.role.role === "active";
      core.haStatus = () => node.status();
      undo.push(() => node.stop());
      await node.start();
    }
    started = true;
    workers?.serve(core.epoch);
    log.info(
      `control listener on ${
        formatIPv4(cfg.lanAddr)
      }:${cfg.controlPort}; pool ${cfg.pool.length} address(es)` +
        `${lan ? `; LAN ${formatCidr(lan)}` : ""}; epoch ${core.epoch.toString(16)}; ` +
        `data path ${dp ? dp.kind : "off"}`,
    );

    const timers: ReturnType<typeof setInterval>[] = [];
    undo.push(() => timers.forEach(clearInterval));
    // 16384 slots every 250 ms: a full pass over a million sessions every ~15 s,
    // each step well under a few milliseconds (bench/table_bench.ts).
    timers.push(setInterval(() => {
      const n = core.expire(16384);
      core.sweepRateLimits();
      if (n) log.debug(`expired ${n} session(s)`);
    }, 250));
    timers.push(setInterval(() => {
      gatewayState().catch((e) =>
        log.warn(`reading the gateway's addresses and sockets: ${(e as Error).message}`)
      );
    }, 1000));
    if (store) timers.push(setInterval(() => store.maintain(), 60_000));
    return { stopping: () => "stopping" };
  });
}

/**
 * The WAN link as the UPnP IGD shows it (WANCommonInterfaceConfig): the WAN
 * interface's state, speed and totals from sysfs, read at each request.
 */
async function wanLink(wanIf: string): Promise<() => LinkState> {
  const { readLinkStats } = await import("../../linux/iface.ts");
  return () => {
    const s = readLinkStats(wanIf);
    return {
      up: s?.up ?? false,
      upstreamBps: s?.bps ?? 0,
      downstreamBps: s?.bps ?? 0,
      bytesSent: s?.txBytes ?? 0,
      bytesReceived: s?.rxBytes ?? 0,
      packetsSent: s?.txPackets ?? 0,
      packetsReceived: s?.rxPackets ?? 0,
    };
  };
}

/**
 * The minimum length of a `--cookie-secret-file`: the HMAC key the cookies
 * derive from must not be guessable.
 */
const COOKIE_KEY_MIN = 16;

/** The shared cookie key (`--cookie-secret-file`): the file's bytes, at least 16 of them. */
async function readCookieKey(path: string): Promise<Uint8Array> {
  let key: Uint8Array;
  try {
    key = await Deno.readFile(path);
  } catch (e) {
    throw new ConfigError(`--cookie-secret-file ${path}: ${(e as Error).message}`);
  }
  if (key.length < COOKIE_KEY_MIN) {
    throw new ConfigError(
      `--cookie-secret-file ${path} holds ${key.length} byte(s): want at least ${COOKIE_KEY_MIN} ` +
        `random bytes (head -c 32 /dev/urandom > ${path})`,
    );
  }
  return key;
}

/**
 * The LAN prefix: given, or read off the LAN interface (null: neither).
 * With --ha, G is on the interface only while active: the prefix is that
 * of the interface's own address that holds G.
 */
async function lanPrefix(cfg: ServerConfig): Promise<Cidr | null> {
  if (cfg.lan || !cfg.lanIf) return cfg.lan;
  const { prefixOf, interfaceAddrs } = await import("../../linux/iface.ts");
  if (cfg.ha) {
    for (const a of await interfaceAddrs(cfg.lanIf)) {
      const lan = { addr: (a.addr & prefixMask(a.prefixLen)) >>> 0, len: a.prefixLen };
      if (a.addr !== cfg.lanAddr && cidrContains(lan, cfg.lanAddr)) return lan;
    }
    throw new Error(
      `--ha: no address of --lan-if ${cfg.lanIf} has --lan-addr ${
        formatIPv4(cfg.lanAddr)
      } in its prefix (or give --lan)`,
    );
  }
  const lan = await prefixOf(cfg.lanIf, cfg.lanAddr);
  if (!lan) {
    throw new Error(
      `--lan-addr ${formatIPv4(cfg.lanAddr)} is not configured on --lan-if ${cfg.lanIf}`,
    );
  }
  return lan;
}

/**
 * Logs each reason the restore dropped sessions for; when it dropped one a
 * driver may still hold (see DropLog.renewsEpoch), starts a new epoch, so
 * that every driver learns at its next exchange that it must reserve again.
 */
function renewEpochIfDropped(
  core: ServerCore,
  drops: DropLog,
  restoredEpoch: boolean,
  workersDropped = false,
): void {
  for (const line of drops.lines()) log.warn(line);
  if (!workersDropped && (!restoredEpoch || !drops.renewsEpoch)) return;
  const was = core.epoch;
  core.renewEpoch();
  log.warn(
    `new epoch ${core.epoch.toString(16)} (was ${was.toString(16)}): ` +
      `${drops.total} session(s) dropped, drivers reserve again`,
  );
}

/** A UDP socket bound to `addr:port`, or an error that says why not (`what`: the port's name). */
async function bindUdp(
  addr: number,
  port: number,
  what: string,
  inUseHint: string,
): Promise<dgram.Socket> {
  const sock = dgram.createSocket("udp4");
  await new Promise<void>((resolve, reject) => {
    const failed = (e: Error & { code?: string }) => {
      sock.close();
      reject(
        new Error(
          e.code === "EADDRNOTAVAIL"
            ? `--lan-addr ${formatIPv4(addr)} is not an address of this host`
            : e.code === "EADDRINUSE"
            ? `${what} ${formatIPv4(addr)}:${port} is in use (${inUseHint})`
            : `Cannot bind the ${what.toLowerCase()}: ${e.message}`,
        ),
      );
    };
    sock.once("error", failed);
    sock.bind(port, formatIPv4(addr), () => {
      sock.off("error", failed);
      resolve();
    });
  });
  sock.on("error", (e) => log.warn(`${what.toLowerCase()}: ${e.message}`));
  return sock;
}

/**
 * PCP and NAT-PMP on UDP 5351 of the LAN address (`src/pcp/`), on the bound
 * socket `sock`. A grant is committed (`core.commit`) before it is
 * answered, as for dpm's own protocol. Returns what stops the announcements.
 */
function servePcp(
  sock: dgram.Socket,
  cfg: ServerConfig,
  core: ServerCore,
  serving: () => boolean,
  announceNow: boolean,
): { stop: () => void; announce: () => void } {
  // Unsolicited announcements of the new epoch (src/pcp/announce.ts): from
  // lanAddr:5351 to 224.0.0.1:5350, TTL 1, out of the LAN interface (the
  // default route would take the group out of the WAN side).
  const ann = announce;
  // With --ha the standby does not hold G yet: the options are set at the takeover.
  const multicast = (): boolean => {
    try {
      sock.setMulticastTTL(1);
      sock.setMulticastInterface(formatIPv4(cfg.lanAddr));
      sock.setMulticastLoopback(false);
      return true;
    } catch (e) {
      log.warn(`PCP announcements off: cannot set the multicast options: ${(e as Error).message}`);
      return false;
    }
  };
  const announcing = announceNow && multicast();
  const announcer = new ann.Announcer({
    build: () => {
      const epoch = core.pcp.epochTime(core.now());
      return [ann.natPmpAnnouncement(epoch, cfg.pool[0]!), ann.pcpAnnouncement(epoch)];
    },
    send: (d) => sock.send(d, ann.ANNOUNCE_PORT, ann.ANNOUNCE_GROUP),
    onError: (e) => log.debug(`PCP announcement: ${(e as Error).message}`),
  });
  sock.on("close", () => announcer.stop());
  sock.on("message", (msg, rinfo) => {
    if (!serving()) return;
    const src = parseSocketIPv4(rinfo.address);
    if (src === null) return;
    let reply: Uint8Array | null = null;
    try {
      reply = core.handlePcp(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), src);
    } catch (e) {
      log.error(`handling a PCP request from ${rinfo.address}: ${(e as Error).stack ?? e}`);
    }
    if (!reply) return;
    core.commit();
    sock.send(reply, rinfo.port, rinfo.address);
  });
  log.info(`PCP and NAT-PMP on ${formatIPv4(cfg.lanAddr)}:${PCP_PORT}`);
  const start = () => {
    announcer.start();
    log.debug(`PCP announcing the epoch to ${ann.ANNOUNCE_GROUP}:${ann.ANNOUNCE_PORT}`);
  };
  if (announcing) start();
  return {
    stop: () => announcer.stop(),
    // A new epoch (an HA takeover): announced again, from the start of the schedule.
    announce: () => {
      if (multicast()) start();
    },
  };
}

/** `a`'s items, then `b`'s. */
function* chain<T>(a: Iterable<T>, b: Iterable<T>): Generator<T> {
  yield* a;
  yield* b;
}
