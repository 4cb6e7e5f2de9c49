/**
 * Fixtures shared by the unit tests of the roles: configs, an in-memory
 * control transport that carries real encoded bytes between a DriverCore and
 * a ServerCore, and a recording stand-in for the queue's held verdicts.
 */

import { parseIPv4 } from "../src/wire/addr.ts";
import type { DriverConfig, ServerConfig } from "../src/config.ts";
import type { ControlTransport } from "../src/driver/core.ts";
import { FakePacketIO } from "../src/datapath/fake.ts";
import {
  decodeRequest,
  decodeResponse,
  encodeRequest,
  type Request,
  type Response,
} from "../src/control/proto.ts";
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
    portRange: [1024, 65535],
    gatewayPorts: [61000, 65535],
    lifetime: 86400,
    maxSessionsPerHost: 4096,
    rateLimit: 1000,
    state: null,
    socket: "/nonexistent",
    lanIf: null,
    wanIf: null,
    lan: LAN,
    addPoolAddresses: false,
    masquerade: true,
    queue: 0,
    datapath: "queue",
    cleanup: false,
    logLevel: "error",
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
    intercept: true,
    queue: 1,
    datapath: "queue",
    cleanup: false,
    logLevel: "error",
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

/** The driver's packet I/O, recorded (verdicts in `given`, raw packets in `sent`). */
export { FakePacketIO };

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}
