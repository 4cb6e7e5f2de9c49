/**
 * Fixtures shared by the unit tests of the roles: configs, an in-memory
 * control transport that carries real encoded bytes between a DriverCore and
 * a ServerCore, and a recording stand-in for the queue's held verdicts.
 */

import { parseIPv4 } from "../src/wire/addr.ts";
import type { DriverConfig, ServerConfig } from "../src/config.ts";
import { defaultRules } from "../src/policy/rules.ts";
import { ControlClient, type DatagramLink, type RetryOptions } from "../src/control/client.ts";
import { BATCH_VERSION, decodeEntry, decodeRequestHeader, newEntry } from "../src/control/batch.ts";
import { FakePacketIO } from "../src/datapath/fake.ts";
import {
  COOKIE_LEN,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  hasCookie,
  newNonce,
  Op,
  type Request,
} from "../src/control/proto.ts";
import { Result } from "../src/control/result.ts";
import type { ServerCore } from "../src/server/core.ts";

/** Parses an address or throws (tests only). */
export function ip(text: string): number {
  const a = parseIPv4(text);
  if (a === null) throw new Error(`bad test address ${text}`);
  return a;
}

export const G = ip("10.0.0.1");
export const H1 = ip("10.0.0.11");
export const H2 = ip("10.0.0.12");
export const P1 = ip("198.51.100.10");
export const P2 = ip("198.51.100.20");
export const R1 = ip("203.0.113.10");
export const R2 = ip("203.0.113.11");
export const LAN = { addr: ip("10.0.0.0"), len: 24 };

/** A server config as `dpm server --lan-addr 10.0.0.1 --pool ...` would give. */
export function serverCfg(over: Partial<ServerConfig> = {}): ServerConfig {
  return {
    lanAddr: G,
    pool: [R1, R2],
    controlPort: 4750,
    pcp: true,
    upnp: true,
    upnpPort: 5000,
    upnpMaxPerHost: 64,
    portRange: [1024, 65535],
    gatewayPorts: [61000, 65535],
    lifetime: 86400,
    maxSessionsPerHost: 4096,
    rateLimit: 1000,
    workers: 1,
    mapAllow: [],
    mapDeny: [],
    fixedPorts: [500, 4500, 5060],
    pcpRateLimit: 1000,
    pcpMaxPerHost: 64,
    pcpMaxShare: 25,
    mapRules: defaultRules([500, 4500, 5060]),
    state: null,
    socket: "/nonexistent",
    lanIf: null,
    wanIf: null,
    lan: LAN,
    addPoolAddresses: false,
    bpfSessions: 262144,
    masquerade: true,
    queue: 0,
    ha: false,
    haFifo: null,
    haPeer: null,
    haMarker: null,
    haConntrackdConfig: null,
    haRefresh: 20,
    cookieSecretFile: null,
    datapath: "queue",
    cleanup: false,
    metricsAddr: null,
    logLevel: "error",
    logFormat: "text",
    ...over,
  };
}

/** A driver config for host `a`. */
export function driverCfg(over: Partial<DriverConfig> = {}): DriverConfig {
  return {
    server: G,
    serverPort: 4750,
    fixedPorts: [],
    gatewayPorts: [61000, 65535],
    protocol: 3,
    lan: LAN,
    socket: "/nonexistent",
    socketGroup: null,
    intercept: true,
    queue: 1,
    datapath: "queue",
    cleanup: false,
    metricsAddr: null,
    logLevel: "error",
    logFormat: "text",
    ...over,
  };
}

/**
 * Retransmission timings for tests: a request nobody answers is given up
 * within a few tens of milliseconds (the real ones take about 10 s).
 */
export const QUICK_RETRY: RetryOptions = {
  initialMs: 2,
  maxMs: 4,
  tries: 4,
  fastMs: 2,
  fastForMs: 8,
  giveUpMs: 20,
};

/**
 * An in-memory datagram link from a host at `src` to a ServerCore: every
 * datagram the client sends is handed to `server.handleControl` (as the
 * server's socket would), the turn's grants are committed, and the answers
 * come back as microtasks: the same bytes as over UDP, without sockets.
 * `loss` loses datagrams each way (a seeded generator, so runs repeat);
 * with `holdAnswers` answers are kept back until {@linkcode deliverLate}.
 * Every request sent is decoded into `sent` (one per entry).
 */
export class MemoryLink implements DatagramLink {
  onReceive: ((data: Uint8Array) => void) | null = null;
  readonly sent: Request[] = [];
  /** Keep no log of requests (a burst of thousands). */
  quiet = false;
  loss = 0;
  holdAnswers = false;
  readonly heldAnswers: Uint8Array[] = [];
  lostDatagrams = 0;
  #queue: Uint8Array[] = [];
  #seed: number;
  #closed = false;
  constructor(public server: ServerCore, readonly src: number, seed = 1) {
    this.#seed = seed >>> 0;
  }
  /** mulberry32 */
  #rand(): number {
    let t = (this.#seed = (this.#seed + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  send(data: Uint8Array, len: number): void {
    this.#queue.push(data.slice(0, len));
  }
  flush(): void {
    const q = this.#queue;
    this.#queue = [];
    const answers: Uint8Array[] = [];
    for (const d of q) {
      if (!this.quiet) this.sent.push(...requestsOf(d, this.src));
      if (this.loss > 0 && this.#rand() < this.loss) {
        this.lostDatagrams++;
        continue;
      }
      const reply = this.server.handleControl(d, this.src);
      if (reply) answers.push(reply.slice());
    }
    if (q.length) this.server.commit();
    for (const a of answers) {
      if (this.loss > 0 && this.#rand() < this.loss) {
        this.lostDatagrams++;
        continue;
      }
      if (this.holdAnswers) this.heldAnswers.push(a);
      else queueMicrotask(() => this.#closed || this.onReceive?.(a));
    }
    if (q.length) this.server.releaseHeld();
  }
  /** Hands the held-back answers to the client. */
  deliverLate(): void {
    for (const a of this.heldAnswers.splice(0)) this.onReceive?.(a);
  }
  close(): void {
    this.#closed = true;
  }
}

/** The requests of one datagram (either version), as version-2 Requests for assertions. */
function requestsOf(d: Uint8Array, src: number): Request[] {
  if (d[2] !== BATCH_VERSION) {
    const r = decodeRequest(d);
    return r.ok ? [r.req] : [];
  }
  const h = decodeRequestHeader(d);
  if (!h.ok) return [];
  const out: Request[] = [];
  const e = newEntry();
  for (let i = 0; i < h.count; i++) {
    decodeEntry(d, i, h.internalAddr, e);
    const nonce = new Uint8Array(8);
    new DataView(nonce.buffer).setUint32(0, e.nonceHi);
    new DataView(nonce.buffer).setUint32(4, e.nonceLo);
    out.push({
      op: e.op,
      nonce,
      proto: e.proto,
      replaceable: e.replaceable,
      internalAddr: h.internalAddr || src,
      internalPort: e.internalPort,
      remoteAddr: e.remoteAddr,
      remotePort: e.remotePort,
      lifetime: e.lifetime,
      cookie: h.cookie.slice(),
      ...(e.gatewayPort ? { gatewayPort: e.gatewayPort } : {}),
    } as Request);
  }
  return out;
}

/**
 * The real control client over a {@linkcode MemoryLink} to `server`, as a
 * host at `src` (retransmitting on {@linkcode QUICK_RETRY} by default):
 * what a driver core talks to in the unit tests.
 */
export class Pipe extends ControlClient {
  readonly link: MemoryLink;
  constructor(server: ServerCore, src: number, retry: RetryOptions = QUICK_RETRY, seed = 1) {
    const link = new MemoryLink(server, src, seed);
    super(link, src, retry);
    this.link = link;
  }
  /** Every request sent (one per entry, retransmissions included). */
  get sent(): Request[] {
    return this.link.sent;
  }
  /** The server the link reaches (a test may swap it: a server restart). */
  get server(): ServerCore {
    return this.link.server;
  }
  set server(s: ServerCore) {
    this.link.server = s;
  }
  /** Loses every datagram while set. */
  set drop(v: boolean) {
    this.link.loss = v ? 1 : 0;
  }
}

/** Offset of the cookie in a request (docs/protocol.md). */
const REQ_COOKIE = 32;
const cookies = new WeakMap<ServerCore, Map<number, Uint8Array>>();

function jarOf(server: ServerCore): Map<number, Uint8Array> {
  let m = cookies.get(server);
  if (!m) cookies.set(server, m = new Map());
  return m;
}

/**
 * The cookie a host at `src` holds for `server`: learned once through a real
 * COOKIE_REQUIRED exchange (a cookie-less RENEW, which changes nothing), then
 * from every answer {@link handleVerified} gets. Null when the server does
 * not answer `src` at all.
 */
export function cookieOf(server: ServerCore, src: number): Uint8Array | null {
  const jar = jarOf(server);
  const known = jar.get(src);
  if (known) return known;
  const probe = encodeRequest({
    op: Op.RENEW,
    nonce: newNonce(),
    proto: 17,
    replaceable: false,
    internalAddr: src,
    internalPort: 9,
    remoteAddr: ip("198.51.100.1"),
    remotePort: 9,
    lifetime: 0,
  });
  const reply = server.handleControl(probe, src);
  const d = reply ? decodeResponse(reply) : null;
  if (!d?.ok || !hasCookie(d.res.cookie)) return null;
  if (d.res.result !== Result.COOKIE_REQUIRED) throw new Error("a cookie-less request was served");
  jar.set(src, d.res.cookie);
  return d.res.cookie;
}

/**
 * Hands request `bytes` to `server` as if from `src` with the cookie a host
 * at `src` holds, as a driver sends them; learns the cookie of the answer and,
 * when told COOKIE_REQUIRED (the secret rotated), sends once more with it.
 * Returns the reply bytes, or null when there is none.
 */
export function handleVerified(
  server: ServerCore,
  bytes: Uint8Array,
  src: number,
): Uint8Array | null {
  const send = (cookie: Uint8Array | null) => {
    const b = bytes.slice();
    if (cookie && b.length >= REQ_COOKIE + COOKIE_LEN) b.set(cookie, REQ_COOKIE);
    const reply = server.handleControl(b, src);
    const d = reply ? decodeResponse(reply) : null;
    if (d?.ok && hasCookie(d.res.cookie)) jarOf(server).set(src, d.res.cookie);
    return { reply, cookieRequired: d?.ok === true && d.res.result === Result.COOKIE_REQUIRED };
  };
  const first = send(cookieOf(server, src));
  return first.cookieRequired ? send(jarOf(server).get(src) ?? null).reply : first.reply;
}

/**
 * A Pipe over a lossy network: each datagram, request or answer, is lost
 * with probability `loss` (seeded, so runs repeat); the client retransmits
 * on its own schedule (`tries` transmissions of a request nothing waits on).
 * A request whose answer alone was lost was still handled: the server may
 * hold a grant the driver never learned of. With `holdAnswers`, answers are
 * kept back (the request times out) until {@linkcode LossyPipe.deliverLate}
 * hands them to the client, which gives them to `onLate`.
 */
export class LossyPipe extends Pipe {
  constructor(server: ServerCore, src: number, loss: number, tries = 10, seed = 1) {
    super(server, src, { ...QUICK_RETRY, tries, giveUpMs: 4 * tries }, seed);
    this.link.loss = loss;
  }
  get loss(): number {
    return this.link.loss;
  }
  set loss(v: number) {
    this.link.loss = v;
  }
  get holdAnswers(): boolean {
    return this.link.holdAnswers;
  }
  set holdAnswers(v: boolean) {
    this.link.holdAnswers = v;
  }
  get lostDatagrams(): number {
    return this.link.lostDatagrams;
  }
  /** Hands the held-back answers to the client (late ones go to `onLate`). */
  deliverLate(): void {
    this.link.deliverLate();
  }
}

/** The driver's packet I/O, recorded (verdicts in `given`, raw packets in `sent`). */
export { FakePacketIO };

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}

/**
 * Lets the clients' retransmission timers run out on {@linkcode QUICK_RETRY}
 * (a request nobody answers is given up by then).
 */
export function settleTimeouts(ms = 60): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
