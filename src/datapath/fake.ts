/**
 * Fakes of the data path seam for unit tests: they record what the roles
 * ask of them and answer as a real path would, without the kernel. Each
 * mimics the abilities of one real path: the server's fake those of the
 * kernel or the queue path; with `kernel: true` the driver's fake behaves
 * like the kernel path (the kernel translates TCP/UDP, and reports the
 * activity a test sets).
 *
 * @module
 */

import type { DataPathStatus } from "../operator/types.ts";
import { IPPROTO_ICMP, Verdict, type VerdictValue } from "../wire/meta.ts";
import type { PacketInfo } from "../wire/packet.ts";
import { rewriteToGateway } from "../wire/rewrite.ts";
import type {
  Activity,
  DataPathKind,
  DriverDataPath,
  DriverPacketHandler,
  GatewaySession,
  HostSessionKey,
  PacketIO,
  ServerDataPath,
  ServerPacketHandler,
  SessionCounters,
  StopMode,
} from "./datapath.ts";

/** Records sessionUp/sessionDown of the server role. */
export class FakeServerDataPath implements ServerDataPath {
  readonly up: GatewaySession[] = [];
  readonly down: GatewaySession[] = [];
  /** How the path was stopped (null: not yet). */
  stopped: StopMode | null = null;
  /**
   * Queue kind: whether mappings and direct sessions are forwarded (the real
   * queue path's steering table is up). False until a test says so, as for a
   * queue path without nftables; the kernel kind always forwards them.
   */
  forwardsMappings: boolean;
  readonly can: ServerDataPath["can"];
  /** Sessions to report as left by a previous run (`adopt`). */
  leftover: GatewaySession[] = [];
  /** What `begin` was given: every session then. */
  begun: GatewaySession[] | null = null;
  /** The verdicts of held packets and the raw sends, recorded. */
  readonly io: FakePacketIO = new FakePacketIO();
  constructor(readonly kind: DataPathKind = "kernel", opts: { forwardsMappings?: boolean } = {}) {
    this.forwardsMappings = opts.forwardsMappings ?? false;
    const kernel = kind !== "queue";
    this.can = {
      forwardsMappings: () => kernel || this.forwardsMappings,
      countsPerSession: kernel,
      keepsSessions: kernel,
      kernelTranslates: kernel,
    };
  }
  adopt(): Promise<GatewaySession[]> {
    return Promise.resolve(this.leftover);
  }
  begin(
    sessions: () => Iterable<GatewaySession>,
    _packets: ServerPacketHandler,
    _onFatal: (e: Error) => void,
  ): Promise<void> {
    this.begun = [...sessions()];
    return Promise.resolve();
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
  stop(mode: StopMode): Promise<void> {
    this.stopped = mode;
    return Promise.resolve();
  }
}

/** Records the driver role's calls; `kernel` chooses which path it mimics. */
export class FakeDriverDataPath implements DriverDataPath {
  readonly kind: DataPathKind;
  readonly can: DriverDataPath["can"];
  readonly io: PacketIO;
  readonly up: HostSessionKey[] = [];
  readonly down: HostSessionKey[] = [];
  /** Activity a test sets (kernel mode), by host key. */
  activityMap = new Map<number, Activity>();
  /** Sessions to report as left by a previous run. */
  leftover: HostSessionKey[] = [];
  constructor(readonly kernel = false, io: PacketIO = new FakePacketIO()) {
    this.kind = kernel ? "kernel" : "queue";
    this.can = { keepsSessions: kernel, commitsFirst: kernel };
    this.io = io;
  }
  /** How many times commit ran. */
  commits = 0;
  commit(): void {
    this.commits++;
  }
  adopt(): Promise<HostSessionKey[]> {
    return Promise.resolve(this.leftover);
  }
  begin(_packets: DriverPacketHandler, _onFatal: (e: Error) => void): Promise<void> {
    return Promise.resolve();
  }
  /** As the real paths: the kernel path lets TCP/UDP go on to its nat chain. */
  outbound(pkt: Uint8Array, info: PacketInfo, g: number, pg: number, skb: number): VerdictValue {
    return this.kernel && info.proto !== IPPROTO_ICMP
      ? Verdict.ACCEPT
      : rewriteToGateway(pkt, info, g, pg, skb);
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
  status(): DataPathStatus {
    return { kind: this.kind, state: "on", reinstalls: 0 };
  }
  stop(_mode: StopMode): Promise<void> {
    return Promise.resolve();
  }
}

/** Records verdicts and raw sends (the driver's packet I/O). */
export class FakePacketIO implements PacketIO {
  given: { id: number; verdict: number; payload?: Uint8Array }[] = [];
  flushes = 0;
  sent: { pkt: Uint8Array; dst: number }[] = [];
  verdict(id: number, verdict: VerdictValue, payload?: Uint8Array): void {
    this.given.push(payload ? { id, verdict, payload: payload.slice() } : { id, verdict });
  }
  flush(): void {
    this.flushes++;
  }
  send(pkt: Uint8Array, len: number, dst: number): void {
    this.sent.push({ pkt: pkt.slice(0, len), dst });
  }
}
