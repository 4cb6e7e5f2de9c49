/**
 * `dpm server` as a process: the control listener, the operator socket, the
 * timers, the data path chosen by `--datapath`, signals and cleanup. The
 * only file of the role that constructs concrete data paths.
 *
 * @module
 */

import dgram from "node:dgram";
import { setImmediate } from "node:timers";
import { type Cidr, formatCidr, formatIPv4 } from "../wire/addr.ts";
import { checkPoolOutside, ConfigError, type ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { Cleanup, liveReload, untilStopped } from "../runtime/cleanup.ts";
import { ensureSocketDir, serveLocal } from "../operator/socket.ts";
import { serverOperator } from "../operator/server_ops.ts";
import { ServerCore } from "./core.ts";
import { DropLog, restoreRecord, StateStore } from "./state.ts";
import type { GatewaySession, ServerDataPath } from "../datapath/datapath.ts";
import { lockRole } from "../runtime/lock.ts";
import { notify } from "../runtime/notify.ts";
import { serveMetrics } from "../operator/metrics.ts";
import { reserveLatency } from "./metrics.ts";

const log = logger("server");

/** Runs `dpm server` until SIGINT/SIGTERM or a fatal error; returns the exit code. */
export async function runServer(
  cfg: ServerConfig,
  reload?: () => Promise<ServerConfig>,
): Promise<number> {
  const undo = new Cleanup(log);
  const { stopped, stop } = untilStopped(undo, { reload: liveReload(log, cfg, reload) });
  try {
    undo.push(await lockRole("server"));
    await ensureSocketDir(cfg.socket); // the data path keeps its journal beside the socket
    // The LAN prefix: given, or read off the LAN interface.
    let lan = cfg.lan;
    if (!lan && cfg.lanIf) {
      const { prefixOf } = await import("../../linux/iface.ts");
      lan = await prefixOf(cfg.lanIf, cfg.lanAddr);
      if (!lan) {
        throw new Error(
          `--lan-addr ${formatIPv4(cfg.lanAddr)} is not configured on --lan-if ${cfg.lanIf}`,
        );
      }
    }
    // The pool must lie outside the LAN, also when the prefix was read off the interface.
    if (lan) checkPoolOutside(cfg.pool, lan);
    const dataPlane = cfg.lanIf !== null && cfg.wanIf !== null && lan !== null;
    if (cfg.cleanup) {
      if (!dataPlane) throw new Error("--cleanup needs --lan-if and --wan-if");
      const { cleanupServer } = await import("./cleanup.ts");
      await cleanupServer(cfg, lan!);
      await undo.run();
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
    // The state file opens (or fails, with its reason) before anything changes.
    const store = cfg.state ? await StateStore.open(cfg.state) : null;
    if (store) undo.push(() => void store.close());
    const saved = store?.saved ?? null;
    let core = new ServerCore(cfg, { lan, ...(saved ? { epoch: saved.epoch } : {}) });
    const drops = new DropLog();
    if (saved) {
      let kept = 0;
      const now = core.now();
      for (const rec of saved.sessions) {
        if (restoreRecord(core.table, rec, now, drops, "the state file")) kept++;
      }
      log.info(`restored ${kept} of ${saved.sessions.length} sessions from ${cfg.state}`);
    }

    // The data path comes up before the control listener, so that every
    // grant is answered only once its session is translated.
    let dp: ServerDataPath | null = null;
    const onFatal = (e: Error) => {
      log.error(`data path failed: ${e.message}`);
      stop(1);
    };
    const handle = (pkt: Uint8Array, meta: number) => core.handlePacket(pkt, meta);
    if (dataPlane && cfg.datapath === "kernel") {
      const { KernelServerDataPath } = await import("../datapath/kernel/server.ts");
      const kdp = KernelServerDataPath.open(cfg, lan!);
      let adopted = 0;
      // What the kernel translates but the table will not hold: removed below.
      const stale: GatewaySession[] = [];
      for (const s of await kdp.adopted()) {
        const t = core.table;
        const held = t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px);
        if (held >= 0) {
          if (t.r(held) !== s.r || t.p(held) !== s.p || t.pg(held) !== s.pg) stale.push(s);
          continue;
        }
        // A session the state file dropped stays dropped.
        if (drops.dropped(s)) {
          stale.push(s);
          continue;
        }
        const life = t.grantedLifetime(s.proto, 0);
        const ok = restoreRecord(
          t,
          {
            ...s,
            expiresAt: core.now() + life * 1000,
            lifetime: life,
            replaceable: s.p !== s.pa,
            replaced: s.p !== s.pa,
            shared: t.portUsers(s.proto, s.r, s.p) > 0,
            packetsOut: 0,
            packetsIn: 0,
          },
          core.now(),
          drops,
          "the kernel's maps",
        );
        if (ok) adopted++;
        else stale.push(s);
      }
      if (adopted) log.info(`adopted ${adopted} session(s) the kernel was still translating`);
      core = renewEpochIfDropped(core, cfg, lan, drops, saved !== null);
      // Before begin() replaces the maps: the old elements and their conntracks go.
      for (const s of stale) kdp.sessionDown(s);
      if (stale.length) {
        log.info(`removed ${stale.length} session(s) from the kernel that the table dropped`);
      }
      core.attach(kdp);
      undo.push(async () => {
        core.detach();
        // The kernel goes on translating established sessions while no dpm
        // runs; the next start adopts them (`dpm server --cleanup` removes all).
        await kdp.stop(false);
      });
      await kdp.begin(() => core.sessions(), handle, onFatal);
      dp = kdp;
    } else if (dataPlane) {
      core = renewEpochIfDropped(core, cfg, lan, drops, saved !== null);
      const { QueueServerDataPath } = await import("../datapath/queue/server.ts");
      const qdp = await QueueServerDataPath.start(cfg, lan!, handle, onFatal);
      core.attach(qdp);
      undo.push(async () => {
        core.detach();
        await qdp.stop();
      });
      dp = qdp;
    } else {
      core = renewEpochIfDropped(core, cfg, lan, drops, saved !== null);
      log.info("data path off (no --lan-if/--wan-if): control plane only");
    }
    if (store) {
      // The file now holds the table as restored; from here on every change
      // is written in the turn's transaction, committed before the replies.
      store.start(core.table, core.epoch);
      store.listen(core.table);
      core.onLease = (s) => store.noteLease(s);
      undo.push(() => {
        const n = store.close();
        log.info(`saved ${n} sessions to ${store.path}`);
      });
    }

    // Control listener on G only: the LAN side. The socket keeps the
    // kernel's default buffers: with recvBufferSize/sendBufferSize (or their
    // setters) Deno's node:dgram answers about 10x slower (measured here:
    // 1.1k against 11.6k answers/s); bursts are paced by the drivers instead.
    const sock = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      sock.once("error", (e: Error & { code?: string }) =>
        reject(
          new Error(
            e.code === "EADDRNOTAVAIL"
              ? `--lan-addr ${formatIPv4(cfg.lanAddr)} is not an address of this host`
              : e.code === "EADDRINUSE"
              ? `Control port ${
                formatIPv4(cfg.lanAddr)
              }:${cfg.controlPort} is in use (another dpm server?)`
              : `Cannot bind the control port: ${e.message}`,
          ),
        ));
      sock.bind(cfg.controlPort, formatIPv4(cfg.lanAddr), () => resolve());
    });
    sock.on("error", (e) => log.warn(`control socket: ${e.message}`));
    // A grant is answered only after the data path has committed its session
    // (dp.commit). The first request of a burst is committed and answered at
    // once; the requests that arrive behind it in the same turn of the event
    // loop are committed together in one transaction, then answered.
    const outbox: [Uint8Array, number, string][] = [];
    let burst = false;
    const endBurst = () => {
      burst = false;
      dp?.commit();
      store?.commit();
      for (const [r, port, address] of outbox.splice(0)) sock.send(r, port, address);
    };
    sock.on("message", (msg, rinfo) => {
      const src = parseSrc(rinfo.address);
      if (src === null) return;
      let reply: Uint8Array | null = null;
      const t0 = performance.now();
      try {
        reply = core.handleControl(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), src);
      } catch (e) {
        // A bug must cost one request, not the gateway.
        log.error(`handling a control request from ${rinfo.address}: ${(e as Error).stack ?? e}`);
      }
      if (!reply) return;
      if (!burst) {
        burst = true;
        setImmediate(endBurst);
        dp?.commit();
        store?.commit();
        sock.send(reply, rinfo.port, rinfo.address);
        reserveLatency.observe((performance.now() - t0) / 1000);
      } else {
        outbox.push([reply, rinfo.port, rinfo.address]);
        reserveLatency.observe((performance.now() - t0) / 1000);
      }
    });
    undo.push(() => void sock.close());
    if (cfg.pcp) undo.push(await listenPcp(cfg, core, () => dp, () => store));
    log.info(
      `control listener on ${
        formatIPv4(cfg.lanAddr)
      }:${cfg.controlPort}; pool ${cfg.pool.length} address(es)` +
        `${lan ? `; LAN ${formatCidr(lan)}` : ""}; epoch ${core.epoch.toString(16)}; ` +
        `data path ${dp ? dp.kind : "off"}`,
    );

    if (cfg.metricsAddr) {
      const { serverFamilies } = await import("./metrics.ts");
      undo.push(await serveMetrics(cfg.metricsAddr, () => serverFamilies(core)));
    }

    // status (streamed), watch, drop; a drop is in the state file before it is answered.
    const local = await serveLocal(cfg.socket, serverOperator(core, () => store?.commit()));
    undo.push(() => local.close());

    const timers: ReturnType<typeof setInterval>[] = [];
    undo.push(() => timers.forEach(clearInterval));
    // 16384 slots every 250 ms: a full pass over a million sessions every ~15 s,
    // each step well under a few milliseconds (bench/table_bench.ts).
    timers.push(setInterval(() => {
      const n = core.expire(16384);
      core.sweepRateLimits();
      if (n) log.debug(`expired ${n} session(s)`);
    }, 250));
    if (store) timers.push(setInterval(() => store.maintain(), 60_000));
    log.info("ready");
    notify(`READY=1\nSTATUS=server ready`);
    const code = await stopped;
    notify("STOPPING=1");
    log.info("stopping");
    await undo.run();
    return code;
  } catch (e) {
    log.error((e as Error).message);
    await undo.run();
    return e instanceof ConfigError ? 2 : 1;
  }
}

/**
 * The core to run with after a restore: the same, or, when the restore
 * dropped a session a driver may still hold (see DropLog.renewsEpoch), a new
 * one with a new epoch and the same sessions, so that every driver learns at
 * its next exchange that it must reserve again. Logs each reason of a drop.
 */
function renewEpochIfDropped(
  core: ServerCore,
  cfg: ServerConfig,
  lan: Cidr | null,
  drops: DropLog,
  restoredEpoch: boolean,
): ServerCore {
  for (const line of drops.lines()) log.warn(line);
  if (!restoredEpoch || !drops.renewsEpoch) return core;
  const next = new ServerCore(cfg, { lan });
  for (const rec of core.table.entries()) next.table.restore(rec);
  log.warn(
    `new epoch ${next.epoch.toString(16)} (was ${core.epoch.toString(16)}): ` +
      `${drops.total} session(s) dropped, drivers reserve again`,
  );
  return next;
}

function parseSrc(text: string): number | null {
  const m = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (!m) return null;
  return ((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0;
}

/**
 * PCP and NAT-PMP on UDP 5351 of the LAN address (`src/pcp/`). A grant is
 * committed to the data path (and the state file) before it is answered, as
 * for dpm's own protocol. Returns the closer.
 */
async function listenPcp(
  cfg: ServerConfig,
  core: ServerCore,
  dp: () => ServerDataPath | null,
  store: () => { commit(): void } | null,
): Promise<() => void> {
  const { PCP_PORT } = await import("../pcp/codec.ts");
  const sock = dgram.createSocket({ type: "udp4" });
  await new Promise<void>((resolve, reject) => {
    sock.once("error", (e: Error & { code?: string }) =>
      reject(
        new Error(
          e.code === "EADDRINUSE"
            ? `PCP port ${formatIPv4(cfg.lanAddr)}:${PCP_PORT} is in use (another PCP or ` +
              `NAT-PMP server? --no-pcp turns dpm's off)`
            : `Cannot bind the PCP port: ${e.message}`,
        ),
      ));
    sock.bind(PCP_PORT, formatIPv4(cfg.lanAddr), () => resolve());
  });
  sock.on("error", (e) => log.warn(`PCP socket: ${e.message}`));
  // Unsolicited announcements of the new epoch (src/pcp/announce.ts): from
  // lanAddr:5351 to 224.0.0.1:5350, TTL 1, out of the LAN interface (the
  // default route would take the group out of the WAN side).
  const ann = await import("../pcp/announce.ts");
  let announcing = true;
  try {
    sock.setMulticastTTL(1);
    sock.setMulticastInterface(formatIPv4(cfg.lanAddr));
    sock.setMulticastLoopback(false);
  } catch (e) {
    announcing = false;
    log.warn(`PCP announcements off: cannot set the multicast options: ${(e as Error).message}`);
  }
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
    const src = parseSrc(rinfo.address);
    if (src === null) return;
    let reply: Uint8Array | null = null;
    try {
      reply = core.handlePcp(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), src);
    } catch (e) {
      log.error(`handling a PCP request from ${rinfo.address}: ${(e as Error).stack ?? e}`);
    }
    if (!reply) return;
    dp()?.commit();
    store()?.commit();
    sock.send(reply, rinfo.port, rinfo.address);
  });
  log.info(`PCP and NAT-PMP on ${formatIPv4(cfg.lanAddr)}:${PCP_PORT}`);
  if (announcing) {
    announcer.start();
    log.debug(`PCP announcing the epoch to ${ann.ANNOUNCE_GROUP}:${ann.ANNOUNCE_PORT}`);
  }
  return () => {
    announcer.stop();
    sock.close();
  };
}
