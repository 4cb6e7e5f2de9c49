/**
 * `dpm server` as a process: the control listener, the operator socket, the
 * timers, the data path chosen by `--datapath`, signals and cleanup. The
 * only file of the role that constructs concrete data paths.
 *
 * @module
 */

import dgram from "node:dgram";
import { formatCidr, formatIPv4 } from "../wire/addr.ts";
import { checkPoolOutside, ConfigError, type ServerConfig } from "../config.ts";
import { logger, setLevel } from "../runtime/log.ts";
import { Cleanup, reloadReport, untilStopped } from "../runtime/cleanup.ts";
import { Result } from "../control/result.ts";
import { serveLocal } from "../operator/socket.ts";
import { ServerCore } from "./core.ts";
import { isSessionRecord, readState, writeState } from "./state.ts";
import type { ServerDataPath } from "../datapath/datapath.ts";
import { lockRole } from "../runtime/lock.ts";
import { serveMetrics } from "../operator/metrics.ts";
import { reserveLatency } from "./metrics.ts";

const log = logger("server");

/** Runs `dpm server` until SIGINT/SIGTERM or a fatal error; returns the exit code. */
export async function runServer(
  cfg: ServerConfig,
  reload?: () => Promise<ServerConfig>,
): Promise<number> {
  const undo = new Cleanup(log);
  let running = cfg;
  const { stopped, stop } = untilStopped(undo, {
    reload: () => {
      if (!reload) return log.warn("SIGHUP: nothing to reload (no configuration source)");
      reload().then((next) => {
        for (
          const line of reloadReport(running, next, ["logLevel"], (k, v) => {
            if (k === "logLevel") setLevel(v as ServerConfig["logLevel"]);
          })
        ) log.info(line);
        running = { ...running, logLevel: next.logLevel };
      }).catch((e) =>
        log.error(`reload failed, keeping the running configuration: ${(e as Error).message}`)
      );
    },
  });
  try {
    undo.push(await lockRole("server"));
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
    const restored = cfg.state ? await readState(cfg.state) : null;
    const core = new ServerCore(cfg, { lan, ...(restored ? { epoch: restored.epoch } : {}) });
    if (restored) {
      let kept = 0;
      const now = core.now();
      let bad = 0;
      for (const rec of restored.sessions) {
        if (!isSessionRecord(rec)) {
          bad++;
          continue;
        }
        if (rec.expiresAt > now && core.table.restore(rec) === Result.OK) kept++;
      }
      log.info(`restored ${kept} of ${restored.sessions.length} sessions from ${cfg.state}`);
      if (bad) log.warn(`skipped ${bad} malformed session record(s) in ${cfg.state}`);
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
      for (const s of await kdp.adopted()) {
        const t = core.table;
        if (t.lookupIdentity(s.proto, s.a, s.pa, s.x, s.px) >= 0) continue;
        const life = t.grantedLifetime(s.proto, 0);
        const ok = t.restore({
          ...s,
          expiresAt: core.now() + life * 1000,
          lifetime: life,
          replaceable: s.p !== s.pa,
          replaced: s.p !== s.pa,
          shared: t.portUsers(s.proto, s.r, s.p) > 0,
          packetsOut: 0,
          packetsIn: 0,
        });
        if (ok === Result.OK) adopted++;
      }
      if (adopted) log.info(`adopted ${adopted} session(s) the kernel was still translating`);
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
      const { QueueServerDataPath } = await import("../datapath/queue/server.ts");
      const qdp = await QueueServerDataPath.start(cfg, lan!, handle, onFatal);
      core.attach(qdp);
      undo.push(async () => {
        core.detach();
        await qdp.stop();
      });
      dp = qdp;
    } else {
      log.info("data path off (no --lan-if/--wan-if): control plane only");
    }
    if (cfg.state) {
      const path = cfg.state;
      undo.push(async () => {
        await writeState(path, core);
        log.info(`saved ${core.table.size} sessions to ${path}`);
      });
    }

    // Control listener on G only: the LAN side.
    // Buffers for bursts: thousands of new sessions from a host at once (the
    // kernel caps them at net.core.rmem_max / wmem_max).
    const sock = dgram.createSocket({
      type: "udp4",
      recvBufferSize: 4 << 20,
      sendBufferSize: 4 << 20,
    });
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
        setTimeout(endBurst, 0);
        dp?.commit();
        sock.send(reply, rinfo.port, rinfo.address);
        reserveLatency.observe((performance.now() - t0) / 1000);
      } else {
        outbox.push([reply, rinfo.port, rinfo.address]);
        reserveLatency.observe((performance.now() - t0) / 1000);
      }
    });
    undo.push(() => void sock.close());
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

    const local = await serveLocal(cfg.socket, (req) => {
      const op = (req as { op?: unknown })?.op;
      if (op === "status") return core.status();
      return { error: `Unknown operator request ${JSON.stringify(op)}` };
    });
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
    if (cfg.state) {
      const path = cfg.state;
      timers.push(setInterval(() => {
        writeState(path, core).catch((e) => log.warn(`saving state: ${e.message}`));
      }, 60_000));
    }
    log.info("ready");
    const code = await stopped;
    log.info("stopping");
    await undo.run();
    return code;
  } catch (e) {
    log.error((e as Error).message);
    await undo.run();
    return e instanceof ConfigError ? 2 : 1;
  }
}

function parseSrc(text: string): number | null {
  const m = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (!m) return null;
  return ((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0;
}
