/**
 * Fixtures shared by the unit tests of the roles: configs, an in-memory
 * control transport that carries real encoded bytes between a DriverCore and
 * a ServerCore, and a recording stand-in for the queue's held verdicts.
 */

import { parseIPv4 } from "../src/wire/addr.ts";
import type { DriverConfig, ServerConfig } from "../src/config.ts";
import { defaultRules } from "../src/policy/rules.ts";
import type { ControlTransport } from "../src/control/client.ts";
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
  type Response,
} from "../src/control/proto.ts";
import { Result } from "../src/control/result.ts";
import { ControlTimeout } from "../src/control/client.ts";
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
 * A control transport that encodes each request to bytes, hands them to
 * `server.handleControl` as if they came from `src`, and decodes the reply:
 * the same bytes as over UDP, without sockets. `drop` loses requests.
 */
export class Pipe implements ControlTransport {
  sent: Request[] = [];
  drop = false;
  constructor(readonly server: ServerCore, readonly src: number) {}
  request(req: Request): Promise<Response> {
    this.sent.push(req);
    if (this.drop) return Promise.reject(new ControlTimeout("dropped by the test"));
    const bytes = encodeRequest(req);
    if (!decodeRequest(bytes).ok) throw new Error("test sent a malformed request");
    const reply = this.server.handleControl(bytes, this.src);
    if (!reply) return Promise.reject(new ControlTimeout("no reply"));
    const d = decodeResponse(reply);
    if (!d.ok) throw new Error(`server sent a bad response: ${d.reason}`);
    return Promise.resolve(d.res);
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
 * with probability `loss` (a seeded generator, so runs repeat), and each
 * request is transmitted up to `tries` times as the client would. A request
 * whose answer alone was lost was still handled: the server may hold a grant
 * the driver never learned of. With `holdAnswers`, answers are kept back
 * (the request times out) until {@linkcode LossyPipe.deliverLate} hands them
 * to `onLate`, as the client does with an answer after its timeout.
 */
export class LossyPipe extends Pipe {
  onLate: ((res: Response) => void) | null = null;
  holdAnswers = false;
  readonly heldAnswers: Response[] = [];
  lostDatagrams = 0;
  #seed: number;
  constructor(
    server: ServerCore,
    src: number,
    public loss: number,
    readonly tries = 10,
    seed = 1,
  ) {
    super(server, src);
    this.#seed = seed >>> 0;
  }
  /** mulberry32 */
  #rand(): number {
    let t = (this.#seed = (this.#seed + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  override request(req: Request): Promise<Response> {
    this.sent.push(req);
    const bytes = encodeRequest(req);
    for (let i = 0; i < this.tries; i++) {
      if (this.#rand() < this.loss) {
        this.lostDatagrams++;
        continue;
      }
      const reply = handleVerified(this.server, bytes, this.src);
      if (!reply) continue;
      const d = decodeResponse(reply);
      if (!d.ok) throw new Error(`server sent a bad response: ${d.reason}`);
      if (this.holdAnswers) {
        this.heldAnswers.push(d.res);
        break;
      }
      if (this.#rand() < this.loss) {
        this.lostDatagrams++;
        continue;
      }
      return Promise.resolve(d.res);
    }
    return Promise.reject(new ControlTimeout("lost by the test's network"));
  }
  /** Hands the held-back answers to `onLate`. */
  deliverLate(): void {
    for (const r of this.heldAnswers.splice(0)) this.onLate?.(r);
  }
}

/** The driver's packet I/O, recorded (verdicts in `given`, raw packets in `sent`). */
export { FakePacketIO };

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}
