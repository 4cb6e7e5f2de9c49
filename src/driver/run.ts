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
 * With `--socket-group` the query socket is open to a group, and the driver
 * answers per user: the socket layer learns each asker's uid from the
 * kernel (`linux/sockdiag.ts`), and the core is told who holds a local port
 * from the host's socket tables (`linux/procnet.ts`, read at most once per
 * answer). The driver's own uid (root, as a rule) is answered everything.
 *
 * @module
 */

import { formatCidr, formatIPv4 } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import { ControlClient, type DatagramLink } from "../control/client.ts";
import { MAX_DATAGRAM } from "../control/batch.ts";
import { serveUdp, UdpSocket } from "../../linux/udp.ts";
import { logger } from "../runtime/log.ts";
import { runRole } from "../runtime/cleanup.ts";
import { lockRole } from "../runtime/lock.ts";
import { useNotifier } from "../runtime/notify.ts";
import { sdNotify } from "../../linux/sdnotify.ts";
import { serveMetrics } from "../operator/metrics.ts";
import { ensureSocketDir, serveLocal } from "../operator/socket.ts";
import { type Asker, DriverCore, type OwnerOf } from "./core.ts";
import { IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet.ts";
import { hostOptions, openDriverDataPath } from "../datapath/open.ts";

const log = logger("driver");

/** Runs `dpm driver` until SIGINT/SIGTERM or a fatal error; returns the exit code. */
export async function runDriver(
  cfg: DriverConfig,
  reload?: () => Promise<DriverConfig>,
): Promise<number> {
  useNotifier(sdNotify);
  return await runRole({ log, role: "driver", cfg, reload }, async (undo, stop) => {
    if (cfg.intercept) undo.push(await lockRole("driver"));
    // The data path keeps its journal beside the socket.
    await ensureSocketDir(cfg.socket, cfg.socketGroup !== null);
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
    const client = new ControlClient(udpLink(cfg.server, cfg.serverPort, local ?? 0), local ?? 0, {
      version: cfg.protocol === 2 ? 2 : 3,
    });
    undo.push(() => client.close());
    const ownerOf = cfg.socketGroup ? await portOwnerReader() : undefined;
    const core = new DriverCore(cfg, client, {
      lan,
      ephemeral,
      local: local ?? 0,
      ...(ownerOf ? { ownerOf } : {}),
    });
    const hostOpts = hostOptions(cfg, lan, dev, local ?? 0);
    if (cfg.cleanup) {
      const { cleanupDriver } = await import("./cleanup.ts");
      await cleanupDriver(hostOpts, core);
      return 0;
    }
    // The sockets open before the kernel changes: a start that fails there leaves nothing.
    if (cfg.metricsAddr) {
      const { driverFamilies } = await import("./metrics.ts");
      const startedAt = Date.now();
      undo.push(await serveMetrics(cfg.metricsAddr, () => driverFamilies(core, startedAt)));
    }
    // On a group's socket every request says who asks; the driver's own uid is trusted.
    const self = Deno.uid();
    const asker = (peer: Asker | undefined) =>
      peer === undefined || (peer.uid !== null && peer.uid === self) ? undefined : peer;
    const peers = cfg.socketGroup ? (await import("../../linux/sockdiag.ts")).AcceptedPeers : null;
    const sock = await serveLocal(cfg.socket, (req, peer) => core.query(req, asker(peer)), {
      group: cfg.socketGroup,
      ...(peers ? { peers: (path: string) => new peers(path) } : {}),
    });
    undo.push(() => sock.close());
    let running = "not intercepting (query only)";
    if (cfg.intercept) {
      if (local === null) throw new Error(`no local address toward ${formatIPv4(cfg.server)}`);
      const dp = await openDriverDataPath(cfg.datapath, hostOpts);
      running = `data path ${dp.kind}`;
      // A path that keeps nothing gives every session back on exit; one that
      // keeps them leaves them translating for the next start to adopt.
      if (!dp.can.keepsSessions) undo.push(() => core.releaseAll());
      undo.push(async () => {
        core.detach();
        await dp.stop("keep");
      });
      core.adopt(await dp.adopt());
      core.attach(dp);
      await dp.begin(
        (pkt, id, outbound, meta) => core.handlePacket(pkt, id, outbound, meta),
        (e) => {
          log.error(`data path failed: ${e.message}`);
          stop(1);
        },
      );
    } else {
      undo.push(() => core.releaseAll());
    }

    const timer = setInterval(() => core.tick(), 500);
    undo.push(() => clearInterval(timer));
    log.info(
      `driver for server ${formatIPv4(cfg.server)}:${cfg.serverPort}; LAN ${formatCidr(lan)}; ` +
        `ephemeral ${ephemeral.join("-")}; fixed ports ${cfg.fixedPorts.join(",") || "none"}; ` +
        `${running}; socket ${cfg.socket}${
          cfg.socketGroup ? ` (group ${cfg.socketGroup}, 0660)` : ""
        }`,
    );
    return { stopping: () => `stopping: ${JSON.stringify(core.stats())}` };
  });
}

/**
 * The owner of a local port from `/proc/net/{udp,tcp}[6]`: one uid, or null
 * when no socket (or sockets of several users) hold it. Each table is read
 * once per answer (the snapshot is dropped when the answer's synchronous
 * work is done), so a status of many sessions reads it once.
 */
async function portOwnerReader(): Promise<OwnerOf> {
  const { ownersByPort, readProcNet } = await import("../../linux/procnet.ts");
  const snap = new Map<string, Map<number, number[]>>();
  return (proto, port) => {
    const name = proto === IPPROTO_TCP ? "tcp" : proto === IPPROTO_UDP ? "udp" : null;
    if (name === null) return null;
    let t = snap.get(name);
    if (!t) {
      try {
        t = ownersByPort(readProcNet(name));
      } catch (e) {
        log.warn(`cannot read /proc/net/${name}: ${(e as Error).message}`);
        return null;
      }
      snap.set(name, t);
      queueMicrotask(() => snap.delete(name));
    }
    const uids = t.get(port) ?? [];
    return uids.length === 1 ? uids[0]! : null;
  };
}

/**
 * The UDP link of a client: a socket on `local` (an ephemeral port) that
 * sends to `server:port` and hands up only what comes from there
 * (`linux/udp.ts`, one wake-up per batch of answers).
 */
export function udpLink(server: number, port: number, local: number): DatagramLink {
  const sock = UdpSocket.open({ addr: local, port: 0, maxDatagram: MAX_DATAGRAM + 64 });
  const link: DatagramLink = {
    send: (data, len) => sock.queue(data, len, server, port),
    flush: () => sock.flush(),
    onReceive: null,
    close: () => {
      stop();
      sock.close();
    },
  };
  const stop = serveUdp(
    sock,
    (data, src, srcPort) => {
      if (src !== server || srcPort !== port) return;
      link.onReceive?.(data);
    },
    () => sock.flush(),
    (e) => log.warn(`control socket: ${e.message}`),
  );
  log.debug(
    `control socket ${formatIPv4(sock.addr)}:${sock.port} to ${formatIPv4(server)}:${port}`,
  );
  return link;
}
