/**
 * `dpm driver` as a process: the control client, the query socket, the
 * lease timer, the data path chosen by `--datapath`, signals and cleanup.
 * The only file of the role that constructs concrete data paths.
 *
 * On exit the queue path gives every session back to the server and removes
 * its rules. The kernel path keeps its sessions (map, conntracks, leases at
 * the server) so that established sessions survive a restart; the next start
 * adopts them; `dpm driver --cleanup` releases them and removes the rules.
 *
 * @module
 */

import { formatCidr, formatIPv4 } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import { ControlClient } from "../control/client.ts";
import { logger } from "../runtime/log.ts";
import { Cleanup, liveReload, untilStopped } from "../runtime/cleanup.ts";
import { lockRole } from "../runtime/lock.ts";
import { notify } from "../runtime/notify.ts";
import { serveMetrics } from "../operator/metrics.ts";
import { ensureSocketDir, serveLocal } from "../operator/socket.ts";
import { DriverCore } from "./core.ts";

const log = logger("driver");

/** Runs `dpm driver` until SIGINT/SIGTERM or a fatal error; returns the exit code. */
export async function runDriver(
  cfg: DriverConfig,
  reload?: () => Promise<DriverConfig>,
): Promise<number> {
  const undo = new Cleanup(log);
  const { stopped, stop } = untilStopped(undo, { reload: liveReload(log, cfg, reload) });
  try {
    if (cfg.intercept) undo.push(await lockRole("driver"));
    await ensureSocketDir(cfg.socket); // the data path keeps its journal beside the socket
    const { lanPrefixToward, ephemeralRange, routeTo } = await import("../../linux/iface.ts");
    // The interface toward G carries every translated packet; the LAN is its prefix unless given.
    const { dev, src } = await routeTo(cfg.server);
    let lan = cfg.lan;
    let local = src;
    if (!lan) {
      const found = await lanPrefixToward(cfg.server);
      lan = found.lan;
      local = found.local;
    }
    const ephemeral = await ephemeralRange();
    const client = await ControlClient.open(cfg.server, cfg.serverPort, {
      ...(local !== null ? { localAddr: formatIPv4(local) } : {}),
    });
    undo.push(() => client.close());
    const core = new DriverCore(cfg, client, { lan, ephemeral, local: local ?? 0 });
    const onFatal = (e: Error) => {
      log.error(`data path failed: ${e.message}`);
      stop(1);
    };
    const handle = (pkt: Uint8Array, id: number, outbound: boolean, meta: number) =>
      core.handlePacket(pkt, id, outbound, meta);

    if (cfg.cleanup) {
      const { cleanupDriver } = await import("./cleanup.ts");
      await cleanupDriver(cfg, lan, dev, local ?? 0, core);
      await undo.run();
      return 0;
    }
    if (cfg.intercept && cfg.datapath === "kernel") {
      if (local === null) throw new Error(`no local address toward ${formatIPv4(cfg.server)}`);
      const { KernelDriverDataPath } = await import("../datapath/kernel/driver.ts");
      const dp = await KernelDriverDataPath.open(cfg, lan, dev, local);
      core.attach(dp, dp.io);
      undo.push(async () => {
        core.detach();
        await dp.stop(false);
      });
      await dp.begin(handle, onFatal);
    } else {
      undo.push(() => core.releaseAll());
      if (cfg.intercept) {
        const { QueueDriverDataPath } = await import("../datapath/queue/driver.ts");
        const dp = await QueueDriverDataPath.open(cfg, lan, dev);
        core.attach(dp, dp.io);
        undo.push(async () => {
          core.detach();
          await dp.stop();
        });
        await dp.begin(handle, onFatal);
      }
    }

    if (cfg.metricsAddr) {
      const { driverFamilies } = await import("./metrics.ts");
      const startedAt = Date.now();
      undo.push(await serveMetrics(cfg.metricsAddr, () => driverFamilies(core, startedAt)));
    }
    const sock = await serveLocal(cfg.socket, (req) => core.query(req), {
      group: cfg.socketGroup,
    });
    undo.push(() => sock.close());
    const timer = setInterval(() => core.tick(), 500);
    undo.push(() => clearInterval(timer));
    log.info(
      `driver for server ${formatIPv4(cfg.server)}:${cfg.serverPort}; LAN ${formatCidr(lan)}; ` +
        `ephemeral ${ephemeral.join("-")}; fixed ports ${cfg.fixedPorts.join(",") || "none"}; ` +
        `${
          cfg.intercept ? `data path ${cfg.datapath}` : "not intercepting (query only)"
        }; socket ${cfg.socket}${cfg.socketGroup ? ` (group ${cfg.socketGroup}, 0660)` : ""}`,
    );
    log.info("ready");
    notify(`READY=1\nSTATUS=driver ready`);
    const code = await stopped;
    notify("STOPPING=1");
    log.info(`stopping: ${JSON.stringify(core.stats())}`);
    await undo.run();
    return code;
  } catch (e) {
    log.error((e as Error).message);
    await undo.run();
    return 1;
  }
}
