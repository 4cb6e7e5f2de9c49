/**
 * A BPF test rig for the root tests: a child process inside a network
 * namespace (a process cannot move itself into one, and BPF_PROG_TEST_RUN,
 * the FIB lookups it makes and tc attachment all act in the caller's
 * namespace) that loads dpm's programs and answers JSON commands, one per
 * line on stdin, one JSON line each on stdout. {@linkcode BpfRig} is the
 * parent's side:
 *
 * ```ts
 * await using rig = await BpfRig.start("dpmt-abc123-bpf");
 * await rig.call({ op: "load", role: "gateway", lan: "lan0", wan: "wan0" });
 * const r = await rig.call({ op: "run", prog: "dpm_lan_in", frame: hex, ifindex: "lan0" });
 * ```
 *
 * Commands (addresses and ports are host-order numbers, bytes are hex):
 * - `load {role, lan?, wan?}`: opens and loads the role's object without
 *   attaching it; a gateway's `dpm_cfg` names `lan` and `wan`.
 * - `put {records}` / `del {keys}` / `get {key}` / `all`: the session map
 *   (`NatRecord`s as JSON, `lastNs` as a decimal string); `dropMapping
 *   {mapping}` deletes a mapping's wildcards and learned flows.
 * - `run {prog, frame, ifindex, ingress?}`: one BPF_PROG_TEST_RUN of an
 *   Ethernet frame arriving on (or, for egress programs, leaving by)
 *   interface `ifindex`, forwarded from `ingress`; answers `{retval, frame}`.
 * - `open {role, lan?, wan?, dev?, handoff?}`: `BpfPrograms.open` (loads,
 *   attaches; `handoff` `{lan, wan}`: `NatHandoff` values, default XMIT);
 *   then `missing`, `attach`, `remove`, `close` act on it and the map
 *   commands on its map. `removeFrom {role, ...ifaces}` runs the cleanup.
 * - `filters {dev}`: what is attached to `dev`, ingress and egress: its tc
 *   filters, then its tcx programs (kind "tcx", handle and priority 0);
 *   `attachOther {dev, point, prog, handle, priority}` attaches a program
 *   of the `load`ed object as someone else's filter, `attachOtherTcx {dev,
 *   point, prog}` as someone else's tcx program; `detachTcx {dev, point,
 *   prog}` detaches a tcx program by name (someone undoing dpm's).
 * - `now`: CLOCK_MONOTONIC in ns, as a string.
 *
 * @module
 */

import {
  BpfObject,
  closeFd,
  mapUpdate,
  progFdById,
  progInfo,
  progTestRun,
  tcAttach,
  tcHookCreate,
  TcPoint,
  tcxAttach,
  tcxDetach,
  tcxQuery,
} from "../linux/libbpf.ts";
import { CLOCK_MONOTONIC, clockNs, ifIndex } from "../linux/libc.ts";
import { CLSACT_EGRESS, CLSACT_INGRESS, listTcFilters } from "../linux/tcfilter.ts";
import { bpfObject } from "../bpf/objects.ts";
import {
  configBytes,
  gatewayRecords,
  learnedOf,
  type NatKey,
  type NatRecord,
} from "../src/datapath/bpf/layout.ts";
import type { GatewaySession } from "../src/datapath/datapath.ts";
import { BpfPrograms, type BpfRole, NatMap } from "../src/datapath/bpf/programs.ts";
import { denoScript } from "./launch.ts";
import { NAMESPACE_ENV } from "./topology.ts";

/** The LAN of every rig's gateway: 10.0.0.0/24, G 10.0.0.1 (testing/bpf_ns.ts, the topology). */
const GATEWAY_LAN = {
  lanNet: 0x0a000000,
  lanMask: 0xffffff00,
  gateway: 0x0a000001,
  edges: [0x0a000000, 0x0a0000ff] as const,
};

/** `struct __sk_buff` offsets the rig sets (linux/bpf.h), and the size it passes. */
const SKB_INGRESS_IFINDEX = 36;
const SKB_IFINDEX = 40;
const SKB_SIZE = 192;

function unhex(s: string): Uint8Array {
  const b = new Uint8Array(s.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return b;
}

function tohex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The name of program `id` ("" when it is gone). */
function progNameOf(id: number): string {
  try {
    const fd = progFdById(id);
    try {
      return progInfo(fd).name;
    } finally {
      closeFd(fd);
    }
  } catch {
    return "";
  }
}

/** A record as JSON carries it (`lastNs` a decimal string). */
export type JsonRecord = Omit<NatRecord, "entry"> & {
  entry: Omit<NatRecord["entry"], "lastNs"> & { lastNs: string };
};

const toJson = (r: NatRecord): JsonRecord => ({
  key: r.key,
  entry: { ...r.entry, lastNs: r.entry.lastNs.toString() },
});
const fromJson = (r: JsonRecord): NatRecord => ({
  key: r.key,
  entry: { ...r.entry, lastNs: BigInt(r.entry.lastNs) },
});

/** True when `r` is one of mapping `m`'s two wildcard entries. */
function isMappingWildcard(m: GatewaySession, r: NatRecord): boolean {
  const k = JSON.stringify(r.key, Object.keys(r.key).sort());
  return gatewayRecords(m, 0).some((w) => JSON.stringify(w.key, Object.keys(w.key).sort()) === k);
}

function ifx(name: string): number {
  const i = ifIndex(name);
  if (i === 0) throw new Error(`no interface "${name}"`);
  return i;
}

/** The child: answers commands until stdin ends. */
async function serve(): Promise<void> {
  let obj: BpfObject | null = null;
  let set: BpfPrograms | null = null;
  let nat: NatMap | null = null;
  const map = () => {
    if (!nat) throw new Error("nothing loaded");
    return nat;
  };
  // deno-lint-ignore no-explicit-any
  const handle = (c: any): unknown => {
    switch (c.op) {
      case "load": {
        obj?.close();
        obj = BpfObject.open(bpfObject(c.role as BpfRole));
        obj.load();
        if (c.role === "gateway") {
          mapUpdate(
            obj.mapFd("dpm_cfg"),
            new Uint8Array(4),
            configBytes({
              lanIfindex: ifx(c.lan),
              wanIfindex: ifx(c.wan),
              ...GATEWAY_LAN,
              edges: [...GATEWAY_LAN.edges],
            }),
          );
        }
        nat = new NatMap(obj.mapFd("dpm_nat"));
        return { ok: true };
      }
      case "open": {
        set?.close();
        const ifaces = c.role === "gateway" ? { lan: c.lan, wan: c.wan } : { dev: c.dev };
        set = BpfPrograms.open(c.role, ifaces, {
          ...(c.maxEntries ? { maxEntries: c.maxEntries } : {}),
          ...(c.handoff ? { handoff: c.handoff } : {}),
          lan: { addr: GATEWAY_LAN.lanNet, len: 24 },
          gateway: GATEWAY_LAN.gateway,
        });
        nat = set.nat;
        return { ok: true, mapOrigin: set.mapOrigin };
      }
      case "missing":
        return { missing: set!.missing() };
      case "attach":
        return { fixed: set!.attach() };
      case "remove":
        set!.remove();
        set = null;
        nat = null;
        return { ok: true };
      case "close":
        set?.close();
        set = null;
        nat = null;
        return { ok: true };
      case "removeFrom": {
        const ifaces = c.role === "gateway" ? { lan: c.lan, wan: c.wan } : { dev: c.dev };
        return { removed: BpfPrograms.removeFrom(c.role, ifaces) };
      }
      case "put":
        map().put((c.records as JsonRecord[]).map(fromJson));
        return { ok: true };
      case "del":
        return { deleted: map().delete(c.keys as NatKey[]) };
      case "dropMapping":
        return {
          deleted: map().deleteWhere((r) =>
            learnedOf(c.mapping, r) || isMappingWildcard(c.mapping, r)
          ),
        };
      case "get": {
        const e = map().get(c.key as NatKey);
        return { entry: e ? { ...e, lastNs: e.lastNs.toString() } : null };
      }
      case "all":
        return { records: map().all().map(toJson) };
      case "run": {
        if (!obj) throw new Error("nothing loaded");
        const ctx = new Uint8Array(SKB_SIZE);
        const dv = new DataView(ctx.buffer);
        dv.setUint32(SKB_IFINDEX, ifx(c.ifindex), true);
        if (c.ingress) dv.setUint32(SKB_INGRESS_IFINDEX, ifx(c.ingress), true);
        const r = progTestRun(obj.progFd(c.prog), unhex(c.frame), ctx);
        return { retval: r.retval, frame: tohex(r.data) };
      }
      case "attachOther": {
        // Someone else's filter: a loaded program at another handle and priority.
        if (!obj) throw new Error("nothing loaded");
        const point = c.point === "egress" ? TcPoint.EGRESS : TcPoint.INGRESS;
        tcHookCreate(ifx(c.dev));
        return { progId: tcAttach(ifx(c.dev), point, obj.progFd(c.prog), c.handle, c.priority) };
      }
      case "filters": {
        const i = ifIndex(c.dev);
        if (i === 0) return { ingress: [], egress: [], gone: true };
        const tcx = (point: TcPoint) =>
          (tcxQuery(i, point) ?? []).map((progId) => ({
            handle: 0,
            priority: 0,
            kind: "tcx",
            progId,
            name: progNameOf(progId),
          }));
        return {
          ingress: [...listTcFilters(i, CLSACT_INGRESS), ...tcx(TcPoint.INGRESS)],
          egress: [...listTcFilters(i, CLSACT_EGRESS), ...tcx(TcPoint.EGRESS)],
        };
      }
      case "attachOtherTcx": {
        if (!obj) throw new Error("nothing loaded");
        const point = c.point === "egress" ? TcPoint.EGRESS : TcPoint.INGRESS;
        tcxAttach(ifx(c.dev), point, obj.progFd(c.prog));
        return { ok: true };
      }
      case "detachTcx": {
        const point = c.point === "egress" ? TcPoint.EGRESS : TcPoint.INGRESS;
        let n = 0;
        for (const id of tcxQuery(ifx(c.dev), point) ?? []) {
          if (progNameOf(id) !== c.prog) continue;
          const fd = progFdById(id);
          try {
            if (tcxDetach(ifx(c.dev), point, fd)) n++;
          } finally {
            closeFd(fd);
          }
        }
        return { detached: n };
      }
      case "ifindex":
        return { ifindex: ifIndex(c.dev) };
      case "now":
        return { now: clockNs(CLOCK_MONOTONIC).toString() };
      default:
        throw new Error(`unknown op "${c.op}"`);
    }
  };
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of Deno.stdin.readable) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let out: unknown;
      try {
        out = handle(JSON.parse(line));
      } catch (e) {
        out = { error: (e as Error).message };
      }
      console.log(JSON.stringify(out));
    }
  }
  (set as BpfPrograms | null)?.close();
  (obj as BpfObject | null)?.close();
}

/** The parent's side: one rig child in namespace `ns`. */
export class BpfRig implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  #stderr = "";
  readonly #errDone: Promise<void>;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = lines(child.stdout)[Symbol.asyncIterator]();
    this.#errDone = (async () => {
      const dec = new TextDecoder();
      for await (const c of child.stderr) this.#stderr += dec.decode(c, { stream: true });
    })();
  }

  /** Starts the rig in `ns` (`ip netns exec`). */
  static start(ns: string): Promise<BpfRig> {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...denoScript(new URL(import.meta.url).pathname)],
      env: { ...NAMESPACE_ENV },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    return Promise.resolve(new BpfRig(child));
  }

  /** Sends one command and returns its answer; throws with the child's error text. */
  // deno-lint-ignore no-explicit-any
  async call(cmd: Record<string, unknown>): Promise<any> {
    await this.#writer.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
    const r = await this.#lines.next();
    if (r.done) throw new Error(`bpf rig exited during ${cmd.op}: ${this.#stderr}`);
    const out = JSON.parse(r.value);
    if (out.error !== undefined) {
      throw new Error(`bpf rig ${cmd.op}: ${out.error}\n${this.#stderr}`);
    }
    return out;
  }

  /** What the child printed on stderr so far (libbpf's messages). */
  get stderr(): string {
    return this.#stderr;
  }

  /** Ends the child (closing its stdin) and waits for it. */
  async close(): Promise<void> {
    try {
      await this.#writer.close();
    } catch { /* closed */ }
    const t = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 10_000);
    await this.#child.status;
    clearTimeout(t);
    await this.#errDone.catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncIterable<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
}

if (import.meta.main) await serve();
