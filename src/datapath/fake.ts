/**
 * Fakes of the data path seam for unit tests: they record what the roles
 * ask of them and answer as a real path would, without the kernel. With
 * `kernel: true` the driver's fake behaves like the kernel path (it says the
 * kernel translates TCP/UDP and reports the activity a test sets).
 *
 * @module
 */

import type { DataPathStatus } from "../operator/types.ts";
import type {
  Activity,
  DataPathKind,
  DriverDataPath,
  GatewaySession,
  HostSessionKey,
  PacketIO,
  ServerDataPath,
  SessionCounters,
} from "./datapath.ts";

/** Records sessionUp/sessionDown of the server role. */
export class FakeServerDataPath implements ServerDataPath {
  readonly up: GatewaySession[] = [];
  readonly down: GatewaySession[] = [];
  stopped: boolean | null = null;
  /**
   * Queue kind: whether mappings and direct sessions are forwarded (the real
   * queue path's steering table is up). False until a test says so, as for a
   * queue path without nftables; the kernel kind always forwards them.
   */
  forwardsMappings: boolean;
  constructor(readonly kind: DataPathKind = "kernel", opts: { forwardsMappings?: boolean } = {}) {
    this.forwardsMappings = opts.forwardsMappings ?? false;
  }
  sessionUp(s: GatewaySession): void {
    this.up.push(s);
  }
  sessionDown(s: GatewaySession): void {
    this.down.push(s);
  }
  /** How many times commit ran. */
  commits = 0;
  commit(): void {
    this.commits++;
  }
  /** Counters a test sets, by gateway key. */
  counterMap: Map<number, SessionCounters> | null = null;
  counters(): Map<number, SessionCounters> | null {
    return this.counterMap;
  }
  status(): DataPathStatus {
    return { kind: this.kind, state: "on", reinstalls: 0 };
  }
  stop(remove: boolean): Promise<void> {
    this.stopped = remove;
    return Promise.resolve();
  }
}

/** Records the driver role's calls; `kernel` chooses which path it mimics. */
export class FakeDriverDataPath implements DriverDataPath {
  readonly kind: DataPathKind;
  readonly up: HostSessionKey[] = [];
  readonly down: HostSessionKey[] = [];
  /** Activity a test sets (kernel mode), by host key. */
  activityMap = new Map<number, Activity>();
  /** Sessions to report as left by a previous run. */
  leftover: HostSessionKey[] = [];
  constructor(readonly kernel = false) {
    this.kind = kernel ? "kernel" : "queue";
  }
  kernelTranslates(proto: number): boolean {
    return this.kernel && proto !== 1;
  }
  sessionUp(s: HostSessionKey): void {
    this.up.push(s);
  }
  sessionDown(s: HostSessionKey): void {
    this.down.push(s);
  }
  activity(): Map<number, Activity> | null {
    return this.kernel ? this.activityMap : null;
  }
  adopted(): HostSessionKey[] {
    return this.leftover;
  }
  status(): DataPathStatus {
    return { kind: this.kind, state: "on", reinstalls: 0 };
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
}

/** Records verdicts and raw sends (the driver's packet I/O). */
export class FakePacketIO implements PacketIO {
  given: { id: number; verdict: number; payload?: Uint8Array }[] = [];
  flushes = 0;
  sent: { pkt: Uint8Array; dst: number }[] = [];
  verdict(id: number, verdict: number, payload?: Uint8Array): void {
    this.given.push(payload ? { id, verdict, payload: payload.slice() } : { id, verdict });
  }
  flush(): void {
    this.flushes++;
  }
  send(pkt: Uint8Array, len: number, dst: number): void {
    this.sent.push({ pkt: pkt.slice(0, len), dst });
  }
}
