/**
 * The gateway role (`dpm server`).
 *
 * Theory of operation. The server owns the public pool and the lookup table
 * (`table.ts`). Its control listener (UDP on the LAN address G, port 4750)
 * answers reserve / renew / release requests from drivers, after checking
 * that each request's internal address is the datagram's source (claim 2)
 * and that the host is within its request rate. Its data path receives, from
 * the kernel's netfilter queue (`ffi/nfqueue.ts`), two kinds of packets,
 * both in raw PREROUTING so that rewritten addresses are routed as rewritten:
 *
 * - from the LAN, `a:pa -> G:Pg` (the driver already replaced X:px by G:Pg,
 *   claim 5): looked up by (proto, a, Pg), rewritten to `R:p -> X:px` (claim 6)
 *   and forwarded out; when X:px is itself a public pair of the pool
 *   (hairpinning), the packet is translated a second time, inbound, on the spot;
 * - from the WAN, `X:px -> R:p`: looked up by (proto, R, p, X, px) — the remote
 *   endpoint is part of the key, which is how sessions sharing R:p are told
 *   apart (claims 8-10) — and rewritten to `G:Pg -> a:pa`.
 *
 * ICMP errors are translated both ways with their quoted headers (RFC 5508).
 * Translated packets are untracked by conntrack (raw `CT --notrack`), so the
 * kernel's own NAT, which serves hosts without a driver, never touches them.
 *
 * Only this file and `driver.ts` read the clock.
 *
 * @module
 */

import dgram from "node:dgram";
import { type Cidr, cidrContains, formatCidr, formatIPv4 } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { Cleanup, untilStopped } from "../runtime/cleanup.ts";
import {
  decodeRequest,
  encodeResponse,
  errorResponseFor,
  Op,
  type Request,
  responseFor,
} from "../control/proto.ts";
import { RateLimiter } from "../control/ratelimit.ts";
import { Result, RESULT_COUNT, resultName } from "../control/result.ts";
import { type Grant, type SessionRecord, SessionTable } from "../table/table.ts";
import { Drop, DROP_COUNT, DROP_NAMES, IPPROTO_ICMP, PacketInfo, parse } from "../wire/packet.ts";
import { rewrite, rewriteIcmpError } from "../wire/rewrite.ts";
import { VERSION } from "../cli/main.ts";
import type { SessionView, StatusReply } from "../cli/main.ts";
import { serveLocal } from "../operator/socket.ts";

const log = logger("server");

/** NfQueue handler results (mirrors ffi/nfqueue.ts Handled, kept here so the translator has no FFI import). */
export const Verdict = { DROP: 0, ACCEPT: 1, MODIFIED: 2 } as const;

const PROTO_NAMES: Record<number, string> = { 1: "icmp", 6: "tcp", 17: "udp" };

/** Options of the translator core that tests set. */
export interface ServerCoreOptions {
  /** LAN prefix; requests' remotes inside it are refused. Null: only G and the pool are refused. */
  lan: Cidr | null;
  /** Epoch to use (a restored state keeps its epoch); random when absent. */
  epoch?: number;
  /** Clock, ms. */
  now?: () => number;
}

/**
 * The server's state and logic without sockets: control-message handling and
 * packet translation are methods tests can call directly with bytes.
 */
export class ServerCore {
  readonly table: SessionTable;
  readonly epoch: number;
  readonly startedAt: number;
  readonly results = new Float64Array(RESULT_COUNT);
  readonly drops = new Float64Array(DROP_COUNT);
  readonly packets = { in: 0, out: 0, hairpin: 0 };
  readonly #cfg: ServerConfig;
  readonly #lan: Cidr | null;
  readonly #limiter: RateLimiter;
  readonly #info = new PacketInfo();
  /** `NFQA_SKB_INFO` bits of the packet being translated (see handlePacket). */
  #skbInfo = 0;
  readonly now: () => number;

  constructor(cfg: ServerConfig, opts: ServerCoreOptions) {
    this.#cfg = cfg;
    this.#lan = opts.lan;
    this.now = opts.now ?? Date.now;
    this.startedAt = this.now();
    this.epoch = (opts.epoch ?? crypto.getRandomValues(new Uint32Array(1))[0]!) >>> 0;
    this.table = new SessionTable({
      pool: cfg.pool,
      portMin: cfg.portRange[0],
      portMax: cfg.portRange[1],
      gatewayPortMin: cfg.gatewayPorts[0],
      gatewayPortMax: cfg.gatewayPorts[1],
      maxSessionsPerHost: cfg.maxSessionsPerHost,
      // --lifetime caps every lifetime; the RFC-respecting defaults apply below it.
      lifetimes: {
        max: cfg.lifetime,
        min: Math.min(30, cfg.lifetime),
        udp: Math.min(300, cfg.lifetime),
        tcp: Math.min(7440, cfg.lifetime),
        icmp: Math.min(60, cfg.lifetime),
      },
    });
    this.#limiter = new RateLimiter(cfg.rateLimit);
  }

  /**
   * Handles one control datagram from `src` (host order). Returns the reply
   * bytes, or null when nothing must be sent (garbage is never answered).
   */
  handleControl(msg: Uint8Array, src: number): Uint8Array | null {
    const now = this.now();
    if (this.#lan && !cidrContains(this.#lan, src)) {
      // Only the LAN side is served. Outsiders get no answer (nothing to
      // reflect or amplify) and no rate-limit bucket (nothing to fill).
      this.results[Result.NOT_AUTHORIZED]!++;
      return null;
    }
    if (!this.#limiter.allow(src, now)) {
      this.results[Result.RATE_LIMITED]!++;
      const d = decodeRequest(msg);
      return d.ok
        ? encodeResponse(responseFor(d.req, { result: Result.RATE_LIMITED }, this.epoch))
        : null;
    }
    const d = decodeRequest(msg);
    if (!d.ok) {
      this.results[d.result]!++;
      log.debug(`bad request from ${formatIPv4(src)}: ${d.reason}`);
      return errorResponseFor(msg, d, this.epoch);
    }
    const req = d.req;
    let result: number;
    let grant: Grant | null = null;
    if (req.internalAddr !== src) {
      result = Result.NOT_AUTHORIZED; // claim 2: a host speaks only for itself
    } else if (!this.#remoteIsOutside(req.remoteAddr)) {
      result = Result.BAD_REMOTE;
    } else if (req.op === Op.RESERVE) {
      grant = this.table.reserve({
        proto: req.proto,
        a: req.internalAddr,
        pa: req.internalPort,
        x: req.remoteAddr,
        px: req.remotePort,
        replaceable: req.replaceable,
        lifetime: req.lifetime,
      }, now);
      result = grant.result;
    } else if (req.op === Op.RENEW) {
      grant = this.table.renew(
        req.proto,
        req.internalAddr,
        req.internalPort,
        req.remoteAddr,
        req.remotePort,
        req.lifetime,
        now,
      );
      result = grant.result;
    } else {
      result = this.table.release(
        req.proto,
        req.internalAddr,
        req.internalPort,
        req.remoteAddr,
        req.remotePort,
      );
    }
    this.results[result]!++;
    if (result !== Result.OK) {
      log.debug(`${opName(req)} from ${formatIPv4(src)} refused: ${resultName(result)}`);
    }
    return encodeResponse(responseFor(req, {
      result,
      ...(grant && result === Result.OK
        ? {
          replaced: grant.replaced,
          shared: grant.shared,
          publicAddr: grant.r,
          publicPort: grant.p,
          gatewayPort: grant.pg,
          lifetime: grant.lifetime,
        }
        : {}),
    }, this.epoch));
  }

  #remoteIsOutside(x: number): boolean {
    if (x === this.#cfg.lanAddr) return false;
    if (this.#lan && cidrContains(this.#lan, x)) return false;
    // A pool address is a valid remote: that is hairpinning to another host's public pair.
    return true;
  }

  /**
   * Translates one queued packet in place. Returns Verdict.MODIFIED when the
   * bytes were rewritten, ACCEPT to let it pass unchanged, DROP otherwise
   * (each drop counted by reason). `skbInfo`: the queue's `NFQA_SKB_INFO`
   * bits for this packet (CHECKSUM_PARTIAL, GSO; see `rewrite`).
   */
  handlePacket(pkt: Uint8Array, skbInfo = 0): number {
    this.#skbInfo = skbInfo;
    try {
      return this.#translate(pkt);
    } catch (e) {
      // A bug must cost one packet, not the gateway.
      if (this.drops[Drop.INTERNAL_ERROR]!++ < 10) {
        log.error(`translating a packet: ${(e as Error).stack ?? e}`);
      }
      return Verdict.DROP;
    }
  }

  #translate(pkt: Uint8Array): number {
    const info = this.#info;
    const bad = parse(pkt, pkt.length, info);
    if (bad !== Drop.NONE) {
      this.drops[bad]!++;
      return Verdict.DROP;
    }
    if (info.dst === this.#cfg.lanAddr) return this.#fromLan(pkt, info);
    if (this.table.isPoolAddress(info.dst)) return this.#fromWan(pkt, info);
    this.drops[Drop.NOT_OURS]!++;
    return Verdict.ACCEPT;
  }

  /** a:pa -> G:Pg (or an ICMP error from a about G:Pg -> a:pa) → R:p -> X:px. */
  #fromLan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.table;
    const g = this.#cfg.lanAddr;
    if (info.icmpError) {
      if (info.innerSrc !== g || info.innerDst !== info.src) {
        this.drops[Drop.NOT_OURS]!++;
        return Verdict.ACCEPT;
      }
      const pg = info.innerProto === IPPROTO_ICMP ? info.innerDport : info.innerSport;
      const s = t.lookupLan(info.innerProto, info.src, pg);
      if (s < 0) {
        this.drops[Drop.NO_SESSION]!++;
        return Verdict.DROP;
      }
      // The quoted packet was G:Pg -> a:pa; outside it was X:px -> R:p.
      rewriteIcmpError(
        pkt,
        info,
        t.r(s),
        t.x(s),
        t.x(s),
        t.px(s),
        t.r(s),
        t.p(s),
        this.#skbInfo,
      );
      this.packets.out++;
      return Verdict.MODIFIED;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    const pg = icmp ? info.sport : info.dport;
    const s = t.lookupLan(info.proto, info.src, pg);
    if (s < 0) {
      // Not a session: the gateway's own business. TCP/UDP to a gateway port get the
      // kernel's RST or port unreachable, which tells a driver whose session the
      // server lost. An echo request is a plain ping of the gateway: the kernel
      // answers it (so the gateway stays pingable from the LAN).
      this.drops[Drop.NOT_OURS]!++;
      return Verdict.ACCEPT;
    }
    if (!icmp && t.pa(s) !== info.sport) {
      this.drops[Drop.PEER_MISMATCH]!++;
      return Verdict.DROP;
    }
    if (info.ttl <= 1) {
      this.drops[Drop.TTL_EXCEEDED]!++;
      return Verdict.DROP;
    }
    const x = t.x(s);
    const px = t.px(s);
    if (t.isPoolAddress(x)) return this.#hairpin(pkt, info, s);
    rewrite(pkt, info, t.r(s), t.p(s), x, px, this.#skbInfo);
    t.count(s, true);
    this.packets.out++;
    return Verdict.MODIFIED;
  }

  /** The remote is another session's public pair: deliver it inside, translated twice. */
  #hairpin(pkt: Uint8Array, info: PacketInfo, s: number): number {
    const t = this.table;
    const s2 = t.lookupPublic(info.proto, t.x(s), t.px(s), t.r(s), t.p(s));
    if (s2 < 0) {
      this.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    // Seen from s2's host, the packet comes from s's public pair R:p to its own G:Pg.
    rewrite(
      pkt,
      info,
      this.#cfg.lanAddr,
      icmp ? 0 : t.pg(s2),
      t.a(s2),
      icmp ? t.pg(s2) : t.pa(s2),
      this.#skbInfo,
    );
    t.count(s, true);
    t.count(s2, false);
    this.packets.hairpin++;
    return Verdict.MODIFIED;
  }

  /** X:px -> R:p (or an ICMP error about R:p -> X:px) → G:Pg -> a:pa. */
  #fromWan(pkt: Uint8Array, info: PacketInfo): number {
    const t = this.table;
    const g = this.#cfg.lanAddr;
    if (info.icmpError) {
      const s = t.lookupPublic(
        info.innerProto,
        info.innerSrc,
        info.innerSport,
        info.innerDst,
        info.innerDport,
      );
      if (s < 0) {
        this.drops[Drop.NO_SESSION]!++;
        return Verdict.DROP;
      }
      // Outside, the quoted packet was R:p -> X:px; on the LAN it was a:pa -> G:Pg
      // (ICMP echo: a with identifier Pg -> G). The reporting router keeps its address.
      const icmp = info.innerProto === IPPROTO_ICMP;
      rewriteIcmpError(
        pkt,
        info,
        info.src,
        t.a(s),
        t.a(s),
        icmp ? t.pg(s) : t.pa(s),
        g,
        icmp ? 0 : t.pg(s),
        this.#skbInfo,
      );
      t.count(s, false);
      this.packets.in++;
      return Verdict.MODIFIED;
    }
    const s = t.lookupPublic(info.proto, info.dst, info.dport, info.src, info.sport);
    if (s < 0) {
      this.drops[Drop.NO_SESSION]!++;
      return Verdict.DROP;
    }
    if (info.ttl <= 1) {
      this.drops[Drop.TTL_EXCEEDED]!++;
      return Verdict.DROP;
    }
    const icmp = info.proto === IPPROTO_ICMP;
    rewrite(pkt, info, g, icmp ? 0 : t.pg(s), t.a(s), icmp ? t.pg(s) : t.pa(s), this.#skbInfo);
    t.count(s, false);
    this.packets.in++;
    return Verdict.MODIFIED;
  }

  /** Forgets idle rate-limit buckets (call periodically). */
  sweepRateLimits(): void {
    this.#limiter.sweep(this.now());
  }

  /**
   * Expires sessions past their lifetime; returns how many left. With a
   * `budget` (slots scanned), the sweep is incremental and resumes where it
   * stopped, so a million-session table never blocks the event loop for long.
   */
  expire(budget?: number): number {
    return budget === undefined
      ? this.table.expire(this.now())
      : this.table.expire(this.now(), budget);
  }

  /** The status reply for `dpm status`. */
  status(limit = 1000): StatusReply {
    const now = this.now();
    const shown: SessionView[] = [];
    for (const r of this.table.entries()) {
      if (shown.length >= limit) break;
      shown.push(sessionView(r, now));
    }
    const results: Record<string, number> = {};
    for (let i = 0; i < RESULT_COUNT; i++) results[resultName(i)] = this.results[i]!;
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_COUNT; i++) drops[DROP_NAMES[i]!] = this.drops[i]!;
    return {
      version: VERSION,
      epoch: this.epoch,
      uptime: Math.round((now - this.startedAt) / 1000),
      lanAddr: formatIPv4(this.#cfg.lanAddr),
      pool: this.#cfg.pool.map(formatIPv4),
      dataPath: this.#cfg.lanIf !== null,
      sessions: this.table.size,
      shown,
      results,
      drops,
      packets: { ...this.packets },
    };
  }
}

function opName(req: Request): string {
  return req.op === Op.RESERVE ? "reserve" : req.op === Op.RENEW ? "renew" : "release";
}

/** One table row for status output. */
export function sessionView(r: SessionRecord, now: number): SessionView {
  const icmp = r.proto === IPPROTO_ICMP;
  return {
    proto: PROTO_NAMES[r.proto] ?? String(r.proto),
    internal: `${formatIPv4(r.a)}:${r.pa}`,
    gatewayPort: r.pg,
    public: `${formatIPv4(r.r)}:${r.p}`,
    remote: `${formatIPv4(r.x)}${icmp ? "" : `:${r.px}`}`,
    expiresIn: Math.max(0, Math.round((r.expiresAt - now) / 1000)),
    flags: [r.replaced ? "replaced" : "", r.shared ? "shared" : ""].filter(Boolean).join(","),
    packetsOut: r.packetsOut,
    packetsIn: r.packetsIn,
  };
}

// ---------------------------------------------------------------------------
// State file: the table survives restarts (DESIGN.md packet walk, step 5).

interface StateFile {
  format: "dpm-state";
  version: 1;
  epoch: number;
  savedAt: number;
  sessions: SessionRecord[];
}

/** Reads a state file; returns null when absent. Throws on a corrupt file (named). */
export async function readState(path: string): Promise<StateFile | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`Cannot read state file "${path}": ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text) as StateFile;
    if (v.format !== "dpm-state" || v.version !== 1 || !Array.isArray(v.sessions)) {
      throw new Error("not a dpm state file of version 1");
    }
    return v;
  } catch (e) {
    throw new Error(
      `State file "${path}" is corrupt (${(e as Error).message}); move it away to start fresh`,
    );
  }
}

const u32 = (v: unknown) =>
  Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
const u16 = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;

/** True when `v` has the shape of a SessionRecord a state file may hold. */
export function isSessionRecord(v: unknown): v is SessionRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  return [1, 6, 17].includes(r.proto as number) && u32(r.a) && u32(r.x) && u32(r.r) &&
    u16(r.pa) && u16(r.px) && u16(r.p) && u16(r.pg) && Number.isFinite(r.expiresAt) &&
    typeof r.replaceable === "boolean" && typeof r.replaced === "boolean" &&
    typeof r.shared === "boolean" && Number.isFinite(r.packetsOut) && Number.isFinite(r.packetsIn);
}

/** Writes the table atomically (temporary file, fsync, rename). */
export async function writeState(path: string, core: ServerCore): Promise<void> {
  const state: StateFile = {
    format: "dpm-state",
    version: 1,
    epoch: core.epoch,
    savedAt: core.now(),
    sessions: [...core.table.entries()],
  };
  const tmp = `${path}.tmp-${Deno.pid}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await f.write(new TextEncoder().encode(JSON.stringify(state)));
    await f.sync();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
}

// ---------------------------------------------------------------------------
// The running server: sockets, queue, rules, signals.

/** Runs `dpm server` until SIGINT/SIGTERM or a fatal error; returns the exit code. */
export async function runServer(cfg: ServerConfig): Promise<number> {
  const undo = new Cleanup(log);
  const { stopped, stop } = untilStopped(undo);
  try {
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
    if (cfg.state) {
      const path = cfg.state;
      undo.push(async () => {
        await writeState(path, core);
        log.info(`saved ${core.table.size} sessions to ${path}`);
      });
    }

    // Control listener on G only: the LAN side.
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
    sock.on("message", (msg, rinfo) => {
      const src = parseSrc(rinfo.address);
      if (src === null) return;
      let reply: Uint8Array | null = null;
      try {
        reply = core.handleControl(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), src);
      } catch (e) {
        // A bug must cost one request, not the gateway.
        log.error(`handling a control request from ${rinfo.address}: ${(e as Error).stack ?? e}`);
      }
      if (reply) sock.send(reply, rinfo.port, rinfo.address);
    });
    undo.push(() => void sock.close());
    log.info(
      `control listener on ${
        formatIPv4(cfg.lanAddr)
      }:${cfg.controlPort}; pool ${cfg.pool.length} address(es)` +
        `${lan ? `; LAN ${formatCidr(lan)}` : ""}; epoch ${core.epoch.toString(16)}`,
    );

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

    if (cfg.lanIf && cfg.wanIf && lan) {
      const { startServerDataPath } = await import("../datapath/queue/server.ts");
      undo.push(
        await startServerDataPath(cfg, lan, core, (e) => {
          log.error(`data path failed: ${e.message}`);
          stop(1);
        }),
      );
    } else {
      log.info("data path off (no --lan-if/--wan-if): control plane only");
    }
    log.info("ready");
    const code = await stopped;
    log.info("stopping");
    await undo.run();
    return code;
  } catch (e) {
    log.error((e as Error).message);
    await undo.run();
    return 1;
  }
}

function parseSrc(text: string): number | null {
  const m = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (!m) return null;
  return ((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0;
}
