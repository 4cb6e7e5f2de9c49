/**
 * The UPnP IGD of a gateway, put together on real sockets: the documents,
 * the service, the HTTP listener on the LAN address, and SSDP on UDP 1900
 * of the LAN interface. `dpm server` starts it with its mappings
 * ({@linkcode UpnpMappings} on the session table); the tests start it with
 * the fake (`fake.ts`).
 *
 * SSDP sockets (both `SO_REUSEADDR`, so another SSDP stack on the gateway,
 * such as a media server, can share the port):
 * - one bound to 239.255.255.250:1900 that joins the group on the LAN
 *   address only: it receives multicast searches that came in on the LAN
 *   interface (the kernel delivers a group's datagrams only from interfaces
 *   where it was joined; a search arriving on the WAN is never seen, and the
 *   source check of the responder drops one from outside the LAN prefix in
 *   any case);
 * - one bound to LANaddr:1900 for unicast searches (UDA 1.1), which also
 *   sends the NOTIFYs: from the LAN address, out of the LAN interface
 *   (`IP_MULTICAST_IF`), TTL 2 (UDA's default), not looped back.
 * Answers leave from the socket the search came in on, after the
 * responder's delay; at most {@linkcode MAX_PENDING} answers wait at once.
 *
 * Two steps, so that `dpm server` binds every socket before it changes the
 * kernel and answers only once its data path is up: {@linkcode bindUpnp}
 * binds (until `start`, HTTP requests get 503 with Retry-After and searches
 * are not answered), `Upnp.start(bootId)` serves and announces.
 * {@linkcode startUpnp} does both.
 *
 * @module
 */

import dgram from "node:dgram";
import { type Cidr, cidrContains, formatIPv4, parseSocketIPv4 } from "../wire/addr.ts";
import { RateLimiter } from "../control/ratelimit.ts";
import { IgdDocuments, type RootDevice } from "./description.ts";
import { advertisements, MAX_AGE, SsdpAdvertiser, SsdpResponder } from "./discovery.ts";
import { UpnpHttpServer } from "./http_server.ts";
import type { UpnpMappings } from "./mappings.ts";
import { UpnpService } from "./service.ts";
import { type Advertised, SSDP_GROUP, SSDP_PORT } from "./ssdp.ts";
import type { UpnpStatus } from "../operator/types.ts";

/** Answers waiting for their delay, at most (more are dropped). */
export const MAX_PENDING = 256;
/** Multicast TTL of the NOTIFYs (UDA 1.1 section 1.1.2: "SHOULD default to 2"). */
export const NOTIFY_TTL = 2;

/** Options of {@linkcode startUpnp}. */
export interface UpnpOptions {
  /** The gateway's LAN address: the HTTP listener, the SSDP interface. */
  lanAddr: number;
  /** LAN prefix: only its hosts are served. */
  lan: Cidr | null;
  /** The HTTP port; 0: any free one (the LOCATION says which). */
  httpPort: number;
  mappings: UpnpMappings;
  /** Longest lease granted, seconds (`--lifetime`). */
  maxLease: number;
  /** BOOTID.UPNP.ORG: must grow when mappings were lost (a restart without state). */
  bootId: number;
  /**
   * Which sources of the prefix are hosts (never the gateway itself:
   * `src/policy/hosts.ts`); absent: every address of `lan`.
   */
  isHost?: (a: number) => boolean;
  /** Seed of the device UUIDs (stable per gateway). */
  seed: string;
  /** dpm's version. */
  version: string;
  /** The clock, ms. @default Date.now */
  now?: () => number;
  /** Control actions per host per second. @default 20 */
  actionRate?: number;
  /** Searches per host per second. @default 5 */
  searchRate?: number;
  /** False: no SSDP sockets (the HTTP side only). @default true */
  ssdp?: boolean;
  /** Called after each control request (commit the data path and the state file). */
  afterControl?: () => void;
  log: { info(l: string): void; warn(l: string): void; debug(l: string): void };
}

/** A running IGD. */
export interface Upnp {
  docs: IgdDocuments;
  service: UpnpService;
  responder: SsdpResponder;
  advertiser: SsdpAdvertiser;
  http: UpnpHttpServer;
  /** The description URL of each root (IGD:1's first). */
  locations: string[];
  /** Serves and announces, with BOOTID.UPNP.ORG `bootId` (once; `startUpnp` has done it). */
  start(bootId: number): void;
  /** Its counters, for `dpm status` and the metrics. */
  status(): UpnpStatus;
  /** Sends byebye (when started), closes every socket. */
  close(): Promise<void>;
}

function serverHeader(version: string): string {
  let os = "Linux";
  try {
    os = `Linux/${Deno.osRelease()}`;
  } catch { /* no --allow-sys: the name alone */ }
  return `${os} UPnP/1.1 dpm/${version}`;
}

async function bindUdp(sock: dgram.Socket, port: number, address: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    sock.once("error", (e: Error & { code?: string }) =>
      reject(
        new Error(
          e.code === "EADDRINUSE"
            ? `SSDP port ${address}:${port} is in use (--no-upnp turns dpm's UPnP off)`
            : `Cannot bind SSDP ${address}:${port}: ${e.message}`,
        ),
      ));
    sock.bind(port, address, () => resolve());
  });
}

/** The HTTP listener, or an error that says why not (a port in use, an address not ours). */
function listenHttp(o: Parameters<typeof UpnpHttpServer.listen>[0]): UpnpHttpServer {
  try {
    return UpnpHttpServer.listen(o);
  } catch (e) {
    const where = `${o.hostname}:${o.port}`;
    if (e instanceof Deno.errors.AddrInUse) {
      throw new Error(
        `UPnP HTTP port ${where} is in use (--upnp-port picks another, --no-upnp turns dpm's UPnP off)`,
      );
    }
    if (e instanceof Deno.errors.AddrNotAvailable) {
      throw new Error(`Cannot listen on ${where}: not an address of this host`);
    }
    throw new Error(`Cannot listen on UPnP HTTP port ${where}: ${(e as Error).message}`);
  }
}

/** Starts the IGD (see the module documentation); throws when a socket cannot be had. */
export async function startUpnp(o: UpnpOptions): Promise<Upnp> {
  const u = await bindUpnp(o);
  u.start(o.bootId);
  return u;
}

/**
 * Binds the IGD's sockets without serving (see the module documentation);
 * throws, having closed what it bound, when a socket cannot be had.
 */
export async function bindUpnp(o: Omit<UpnpOptions, "bootId">): Promise<Upnp> {
  const now = o.now ?? Date.now;
  let started = false;
  let bootId = 0;
  const g = formatIPv4(o.lanAddr);
  const docs = new IgdDocuments({ seed: o.seed, version: o.version });
  const server = serverHeader(o.version);
  let service: UpnpService | null = null;
  const http = listenHttp({
    hostname: g,
    port: o.httpPort,
    server,
    accept: (src) => (!o.lan || cidrContains(o.lan, src)) && (!o.isHost || o.isHost(src)),
    handler: (req, src) => {
      // Bound, not serving yet (the gateway's data path is not up): come back in a second.
      if (!started) return { status: 503, headers: [["Retry-After", "1"]] };
      const res = service!.handleHttp(req, src, now());
      if (req.method === "POST") o.afterControl?.();
      return res;
    },
    onError: (e) => o.log.warn(`UPnP HTTP: ${(e as Error)?.stack ?? e}`),
  });
  const startedAt = now();
  service = new UpnpService({
    mappings: o.mappings,
    docs,
    lan: o.lan,
    ...(o.isHost ? { isHost: o.isHost } : {}),
    lanAddr: o.lanAddr,
    httpPort: http.port,
    startedAt,
    maxLease: o.maxLease,
    limiter: new RateLimiter(o.actionRate ?? 20),
    log: (l) => o.log.info(l),
  });
  const locations = docs.roots.map((r) => `http://${g}:${http.port}${r.descPath}`);
  const advertised = (root: RootDevice): Advertised => ({
    location: `http://${g}:${http.port}${root.descPath}`,
    server,
    maxAge: MAX_AGE,
    bootId,
    configId: docs.configId,
  });
  const ads = advertisements(docs);
  const responder = new SsdpResponder({
    ads,
    advertised,
    lan: o.lan,
    limiter: new RateLimiter(o.searchRate ?? 5, 4 * (o.searchRate ?? 5)),
  });
  const sockets: dgram.Socket[] = [];
  const pending = new Set<ReturnType<typeof setTimeout>>();
  let uni: dgram.Socket | null = null;
  // NOTIFYs handed to the socket and not yet sent (close waits for the byebyes).
  let inFlight = 0;
  const advertiser = new SsdpAdvertiser({
    ads,
    advertised,
    send: (d) => {
      if (!uni) return;
      inFlight++;
      uni.send(d, SSDP_PORT, SSDP_GROUP, () => inFlight--);
    },
    onError: (e) => o.log.debug(`SSDP NOTIFY: ${(e as Error).message}`),
  });
  const close = async () => {
    // stop() sends the byebyes of a started advertiser only.
    advertiser.stop();
    for (const t of pending) clearTimeout(t);
    pending.clear();
    // Let the byebye datagrams leave before their socket closes (bounded wait).
    for (let i = 0; i < 50 && inFlight > 0; i++) await new Promise((r) => setTimeout(r, 10));
    for (const s of sockets) {
      try {
        s.close();
      } catch { /* closed */ }
    }
    await http.close();
  };
  const start = (id: number) => {
    if (started) return;
    bootId = id;
    started = true;
    if (o.ssdp === false) return;
    advertiser.start();
    o.log.info(
      `UPnP IGD on ${locations.join(" and ")}, SSDP on ${g}:${SSDP_PORT}, boot id ${bootId}`,
    );
  };
  const status = (): UpnpStatus => ({
    locations,
    bootId,
    http: Object.fromEntries(service!.counters.http),
    actions: Object.fromEntries(service!.counters.actions),
    faults: Object.fromEntries(service!.counters.faults),
    ssdp: { ...responder.counters },
    listener: { ...http.counters },
  });
  if (o.ssdp === false) {
    return { docs, service, responder, advertiser, http, locations, start, status, close };
  }
  try {
    const onMessage = (sock: dgram.Socket) => (msg: Uint8Array, rinfo: dgram.RemoteInfo) => {
      if (!started) return;
      const src = parseSocketIPv4(rinfo.address);
      if (src === null) return;
      const a = responder.handle(
        new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength),
        src,
        now(),
      );
      if (!a) return;
      const send = () => {
        for (const d of a.datagrams) sock.send(d, rinfo.port, rinfo.address);
      };
      if (a.delayMs === 0) return send();
      if (pending.size >= MAX_PENDING) return;
      const t = setTimeout(() => {
        pending.delete(t);
        try {
          send();
        } catch { /* closed meanwhile */ }
      }, a.delayMs);
      pending.add(t);
    };
    const group = dgram.createSocket({ type: "udp4", reuseAddr: true });
    sockets.push(group);
    await bindUdp(group, SSDP_PORT, SSDP_GROUP);
    group.addMembership(SSDP_GROUP, g);
    group.on("message", onMessage(group));
    group.on("error", (e) => o.log.warn(`SSDP socket: ${e.message}`));
    uni = dgram.createSocket({ type: "udp4", reuseAddr: true });
    sockets.push(uni);
    await bindUdp(uni, SSDP_PORT, g);
    uni.setMulticastInterface(g);
    uni.setMulticastTTL(NOTIFY_TTL);
    uni.setMulticastLoopback(false);
    uni.on("message", onMessage(uni));
    uni.on("error", (e) => o.log.warn(`SSDP socket: ${e.message}`));
  } catch (e) {
    await close();
    throw e;
  }
  return { docs, service, responder, advertiser, http, locations, start, status, close };
}
