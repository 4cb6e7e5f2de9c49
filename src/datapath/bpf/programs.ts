/**
 * One role's loaded BPF program set (gateway: four programs on the LAN and
 * WAN interfaces; host: two on the interface toward the gateway) and its
 * session map: load and attach, find what a previous run left, update the
 * map in batches, read it, check and repair the attachment, detach and
 * remove. It knows nothing of the server or driver cores; a data path
 * builds on it.
 *
 * ## Attachment
 *
 * Two ways, by role ({@linkcode hookOf}):
 *
 * - **tcx** (Linux 6.6+; the gateway's programs): attached to the device's
 *   ingress or egress itself with `BPF_PROG_ATTACH`, no qdisc, run before
 *   any tc filter, and cheaper per packet than a classifier (no qdisc and
 *   filter walk); dpm recognises its own by program name (`dpm_*`). A
 *   deleted clsact qdisc does not touch them.
 * - **cls**: a direct-action `bpf` filter in the interface's clsact qdisc
 *   (created when missing), always with handle {@linkcode TC_HANDLE} and
 *   priority {@linkcode TC_PRIORITY}: that pair is how dpm recognises its
 *   own filters. The host's programs are attached this way everywhere:
 *   holding a packet for the driver needs `TC_ACT_STOLEN` (consumed, the
 *   sender sees it sent), which tcx does not have; and so are the gateway's
 *   on a kernel without tcx.
 *
 * Either way dpm never touches anyone else's programs, and the programs
 * return TC_ACT_UNSPEC for what is not theirs, so whatever comes after them
 * still runs.
 *
 * ## Restart without pins
 *
 * The kernel keeps an attached program (tcx, or a filter), and the maps it
 * uses, for as long as it is attached, whether or not any process holds
 * them. A new run finds them again with no BPF filesystem (`ip netns exec`
 * remounts /sys, so a pin under /sys/fs/bpf would not survive):
 * `BPF_PROG_QUERY` (tcx) or the rtnetlink filter dump (`linux/tcfilter.ts`)
 * gives each of our programs' id, `BPF_PROG_GET_FD_BY_ID`
 * and `BPF_OBJ_GET_INFO_BY_FD` give the program's map ids, and
 * `BPF_MAP_GET_FD_BY_ID` the map. {@linkcode BpfPrograms.open} then loads the
 * embedded programs again *reusing those maps* (libbpf's `bpf_map__reuse_fd`)
 * and replaces the programs atomically: the sessions, their counters and
 * their fast/slow state survive the restart (and an upgrade of the
 * programs, as long as the map layout is the same; otherwise it starts with
 * an empty map and dpm programs it again from its table).
 *
 * Requires `--allow-ffi` and root.
 *
 * @module
 */

import {
  BpfObject,
  closeFd,
  mapDeleteBatch,
  mapDump,
  mapFdById,
  mapInfo,
  mapLookup,
  mapUpdate,
  mapUpdateBatch,
  progFdIfLoaded,
  progInfo,
  tcAttach,
  tcDetach,
  tcHookCreate,
  tcHookDestroy,
  TcPoint,
  tcxAttach,
  tcxDetach,
  tcxQuery,
} from "../../../linux/libbpf.ts";
import { ifIndex } from "../../../linux/libc.ts";
import { CLSACT_EGRESS, CLSACT_INGRESS, listTcFilters } from "../../../linux/tcfilter.ts";
import { bpfObject } from "../../../bpf/objects.ts";
import { lanEdges } from "../gateway.ts";
import { type Cidr, prefixMask } from "../../wire/addr.ts";
import {
  configBytes,
  keyBytes,
  NatConfigLayout,
  type NatEntry,
  NatEntryLayout,
  NatHandoff,
  type NatKey,
  NatKeyLayout,
  type NatRecord,
  readEntry,
  readKey,
  writeEntry,
  writeKey,
} from "./layout.ts";

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The tc filter handle of every dpm program ("dpm"). */
export const TC_HANDLE = 0x64706d;
/** The tc filter priority of every dpm program. */
export const TC_PRIORITY = 0xd0;
/** The session map's name, in every role's object. */
export const NAT_MAP = "dpm_nat";
/** The gateway's configuration map. */
export const CONFIG_MAP = "dpm_cfg";

/** The roles, each with its own object. */
export type BpfRole = "gateway" | "host";

/** The interfaces of a role: the gateway's `lan` and `wan`, the host's `dev`. */
export type BpfInterfaces = { lan: string; wan: string } | { dev: string };

/** One program and where it goes. */
export interface Attachment {
  prog: string;
  /** The key of the interface in {@linkcode BpfInterfaces}. */
  iface: "lan" | "wan" | "dev";
  point: TcPoint;
}

/** Every role's programs and where each is attached. */
export const ATTACHMENTS: Record<BpfRole, readonly Attachment[]> = {
  gateway: [
    // The egress programs first: an ingress program only acts on what they marked.
    { prog: "dpm_wan_out", iface: "wan", point: TcPoint.EGRESS },
    { prog: "dpm_lan_out", iface: "lan", point: TcPoint.EGRESS },
    { prog: "dpm_lan_in", iface: "lan", point: TcPoint.INGRESS },
    { prog: "dpm_wan_in", iface: "wan", point: TcPoint.INGRESS },
  ],
  host: [
    { prog: "dpm_host_out", iface: "dev", point: TcPoint.EGRESS },
    { prog: "dpm_host_in", iface: "dev", point: TcPoint.INGRESS },
  ],
};

/** Options of {@linkcode BpfPrograms.open}. */
export interface BpfOpenOptions {
  /**
   * The gateway's LAN prefix and address G (the gateway role needs them:
   * the sources each side may speak as, `nat_config`).
   */
  lan?: Cidr;
  gateway?: number;
  /**
   * The gateway's hand-off of fast packets to each device (`nat_config`):
   * {@linkcode NatHandoff.PEER} for a device whose peer is in another
   * namespace (linux/iface.ts `peerInOtherNamespace`), else `XMIT`.
   * @default {XMIT for both}
   */
  handoff?: { lan: NatHandoff; wan: NatHandoff };
  /**
   * Size of the session map in entries (two per session), for a new map; an
   * adopted map keeps its size. Not preallocated: memory follows use.
   * @default {262144}
   */
  maxEntries?: number;
}

/** How {@linkcode BpfPrograms.open} found the session map. */
export type MapOrigin = "new" | "adopted";

/** The session map's origin as a log phrase. */
export function mapText(origin: MapOrigin): string {
  return origin === "adopted" ? "session map kept from the previous run" : "new session map";
}

const parentOf = (p: TcPoint) => p === TcPoint.INGRESS ? CLSACT_INGRESS : CLSACT_EGRESS;

/** Resolves a role's interface names to indexes; throws naming a missing one. */
function ifindexes(role: BpfRole, ifaces: BpfInterfaces): Map<string, number> {
  const out = new Map<string, number>();
  for (const a of ATTACHMENTS[role]) {
    const name = (ifaces as Record<string, string | undefined>)[a.iface];
    if (name === undefined) throw new TypeError(`The ${role} programs need interface "${a.iface}"`);
    const i = ifIndex(name);
    if (i === 0) throw new Error(`Cannot attach BPF programs: no interface "${name}"`);
    out.set(a.iface, i);
  }
  return out;
}

/** The program id of our filter at (ifindex, point), or 0. */
function ourFilter(ifindex: number, point: TcPoint): number {
  const f = listTcFilters(ifindex, parentOf(point)).find((f) =>
    f.handle === TC_HANDLE && f.priority === TC_PRIORITY && f.kind === "bpf"
  );
  return f?.progId ?? 0;
}

/** How a role's programs are attached (module doc). */
export type HookKind = "tcx" | "cls";

let tcxKernel: boolean | null = null;

/** Whether this kernel has tcx (asked once: a tcx query on the loopback device). */
function haveTcx(): boolean {
  tcxKernel ??= tcxQuery(1, TcPoint.INGRESS) !== null;
  return tcxKernel;
}

/** How `role`'s programs are attached here. */
export function hookOf(role: BpfRole): HookKind {
  return role === "gateway" && haveTcx() ? "tcx" : "cls";
}

/** The name of program `id`, or null when it is gone. */
function progName(id: number): string | null {
  const fd = progFdIfLoaded(id);
  if (fd === null) return null;
  try {
    return progInfo(fd).name;
  } finally {
    closeFd(fd);
  }
}

/** The ids of our program `a.prog` attached with tcx at (ifindex, point). */
function ourTcx(ifindex: number, a: Attachment): number[] {
  if (!haveTcx()) return [];
  return (tcxQuery(ifindex, a.point) ?? []).filter((id) => progName(id) === a.prog);
}

/** The id of our program at (ifindex, a) attached the `hook` way, or 0. */
function ourProg(hook: HookKind, ifindex: number, a: Attachment): number {
  return hook === "cls" ? ourFilter(ifindex, a.point) : (ourTcx(ifindex, a)[0] ?? 0);
}

/**
 * The map ids by name (`dpm_nat`, `dpm_cfg`) of the programs a previous run
 * attached for `role`, when they are ours and agree on one session map of
 * today's layout; null when there are none (or they cannot be used).
 */
function previousMaps(role: BpfRole, idx: Map<string, number>): Map<string, number> | null {
  let found: Map<string, number> | null = null;
  const ids = ATTACHMENTS[role].flatMap((a) => {
    const ifindex = idx.get(a.iface)!;
    return [ourFilter(ifindex, a.point), ...ourTcx(ifindex, a)].filter((id) => id !== 0)
      .map((id) => ({ a, id }));
  });
  for (const { a, id } of ids) {
    const fd = progFdIfLoaded(id);
    if (fd === null) continue; // gone meanwhile
    try {
      const info = progInfo(fd);
      if (info.name !== a.prog) continue;
      const maps = new Map<string, number>();
      for (const mid of info.mapIds) {
        const mfd = mapFdById(mid);
        try {
          const mi = mapInfo(mfd);
          if (mi.name === NAT_MAP) {
            if (mi.keySize !== NatKeyLayout.SIZE || mi.valueSize !== NatEntryLayout.SIZE) {
              return null; // another layout: start afresh
            }
          }
          if (mi.name === CONFIG_MAP && mi.valueSize !== NatConfigLayout.SIZE) {
            return null; // another version's configuration record: start afresh
          }
          // Only the maps dpm shares across runs (an object's internal maps stay its own).
          if (mi.name === NAT_MAP || mi.name === CONFIG_MAP) maps.set(mi.name, mid);
        } finally {
          closeFd(mfd);
        }
      }
      if (!maps.has(NAT_MAP)) continue;
      if (found && found.get(NAT_MAP) !== maps.get(NAT_MAP)) return null; // two runs' leftovers
      found = maps;
    } finally {
      closeFd(fd);
    }
  }
  return found;
}

/** One role's programs, attached, and their session map. */
export class BpfPrograms {
  readonly role: BpfRole;
  /** The session map. */
  readonly nat: NatMap;
  /** Whether the session map was created by this run or found from a previous one. */
  readonly mapOrigin: MapOrigin;
  /** How the programs are attached (module doc). */
  readonly hook: HookKind;
  #obj: BpfObject | null;
  readonly #idx: Map<string, number>;

  private constructor(role: BpfRole, obj: BpfObject, idx: Map<string, number>, origin: MapOrigin) {
    this.role = role;
    this.#obj = obj;
    this.#idx = idx;
    this.mapOrigin = origin;
    this.hook = hookOf(role);
    this.nat = new NatMap(obj.mapFd(NAT_MAP));
  }

  /**
   * Loads the role's programs and attaches them to `ifaces` (creating the
   * clsact qdiscs where missing), replacing ours of a previous run; reuses
   * that run's maps when its programs are still attached (module doc).
   */
  static open(role: BpfRole, ifaces: BpfInterfaces, opts: BpfOpenOptions = {}): BpfPrograms {
    const set = BpfPrograms.load(role, ifaces, opts);
    try {
      set.attach();
    } catch (e) {
      set.close();
      throw e;
    }
    return set;
  }

  /**
   * Loads the role's programs without attaching them ({@linkcode attach}
   * does): what `open` does first. The session map is a previous run's when
   * its programs are still attached (`mapOrigin` "adopted"), so a data path
   * can read what it left before it takes over. Nothing attached changes;
   * closing frees what was loaded.
   */
  static load(role: BpfRole, ifaces: BpfInterfaces, opts: BpfOpenOptions = {}): BpfPrograms {
    const idx = ifindexes(role, ifaces);
    const prev = previousMaps(role, idx);
    const obj = BpfObject.open(bpfObject(role));
    try {
      if (prev) {
        for (const [name, id] of prev) {
          const fd = mapFdById(id);
          try {
            obj.reuseMap(name, fd);
          } finally {
            closeFd(fd); // libbpf keeps its own dup
          }
        }
      } else {
        obj.setMaxEntries(NAT_MAP, opts.maxEntries ?? 262144);
      }
      obj.load();
      if (role === "gateway") {
        if (!opts.lan || opts.gateway === undefined) {
          throw new TypeError("The gateway's programs need its LAN prefix and address");
        }
        const edges = lanEdges(opts.lan);
        const mask = prefixMask(opts.lan.len);
        mapUpdate(
          obj.mapFd(CONFIG_MAP),
          new Uint8Array(4),
          configBytes({
            lanIfindex: idx.get("lan")!,
            wanIfindex: idx.get("wan")!,
            lanNet: (opts.lan.addr & mask) >>> 0,
            lanMask: mask,
            gateway: opts.gateway,
            edges: [edges[0] ?? 0, edges[1] ?? 0],
            lanHandoff: opts.handoff?.lan ?? NatHandoff.XMIT,
            wanHandoff: opts.handoff?.wan ?? NatHandoff.XMIT,
          }),
        );
      }
      return new BpfPrograms(role, obj, idx, prev ? "adopted" : "new");
    } catch (e) {
      obj.close();
      throw e;
    }
  }

  /**
   * The session map of a previous run's programs still attached for `role`
   * (what `--cleanup` gives back), read without loading anything; empty
   * when there are none.
   */
  static leftoverRecords(role: BpfRole, ifaces: BpfInterfaces): NatRecord[] {
    let idx: Map<string, number>;
    try {
      idx = ifindexes(role, ifaces);
    } catch {
      return []; // an interface is gone: nothing attached to it
    }
    const id = previousMaps(role, idx)?.get(NAT_MAP);
    if (id === undefined) return [];
    const fd = mapFdById(id);
    try {
      return new NatMap(fd).all();
    } finally {
      closeFd(fd);
    }
  }

  /** The fd of one of the object's maps by name (owned by this set). */
  mapFd(name: string): number {
    return this.#live().mapFd(name);
  }

  /**
   * Attaches every program of the role (tcx, or filters in a clsact qdisc
   * created when missing), in place of one of ours that is there; returns
   * how many were missing or held another program (0 when everything was
   * in place).
   */
  attach(): number {
    const obj = this.#live();
    let fixed = 0;
    const hooked = new Set<number>();
    // Where nothing of ours was: undone if a later step fails, so a failed
    // attach leaves the interfaces as it found them (a program of a previous
    // run that was replaced stays replaced: it uses the same maps).
    const added: Attachment[] = [];
    try {
      for (const a of ATTACHMENTS[this.role]) {
        const ifindex = this.#idx.get(a.iface)!;
        const fd = obj.progFd(a.prog);
        const want = progInfo(fd).id;
        const there = ourProg(this.hook, ifindex, a);
        if (there === want) continue;
        if (this.hook === "tcx") {
          BpfPrograms.#attachTcx(ifindex, a, fd, there);
          // A previous run's filter (a kernel without tcx then): ours now run first; it goes.
          if (ourFilter(ifindex, a.point) !== 0) {
            tcDetach(ifindex, a.point, TC_HANDLE, TC_PRIORITY);
            BpfPrograms.#dropEmptyHooks(new Set([ifindex]));
          }
        } else {
          if (!hooked.has(ifindex)) {
            tcHookCreate(ifindex);
            hooked.add(ifindex);
          }
          tcAttach(ifindex, a.point, fd, TC_HANDLE, TC_PRIORITY);
        }
        if (there === 0) added.push(a);
        fixed++;
      }
    } catch (e) {
      try {
        for (const a of added) {
          const ifindex = this.#idx.get(a.iface)!;
          if (this.hook === "tcx") tcxDetach(ifindex, a.point, obj.progFd(a.prog));
          else tcDetach(ifindex, a.point, TC_HANDLE, TC_PRIORITY);
        }
        if (this.hook === "cls") BpfPrograms.#dropEmptyHooks(new Set(this.#idx.values()));
      } catch { /* the first error is the one to report */ }
      throw e;
    }
    return fixed;
  }

  /** Attaches `fd` with tcx at (ifindex, a), in place of program `there` (0: none). */
  static #attachTcx(ifindex: number, a: Attachment, fd: number, there: number): void {
    const old = there === 0 ? null : progFdIfLoaded(there);
    if (old === null) return tcxAttach(ifindex, a.point, fd); // none, or gone meanwhile
    try {
      tcxAttach(ifindex, a.point, fd, old);
    } finally {
      closeFd(old);
    }
  }

  /** Deletes the clsact qdisc of each interface in `ifindexes` that has no filter left. */
  static #dropEmptyHooks(ifindexes: Set<number>): void {
    for (const ifindex of ifindexes) {
      const left = listTcFilters(ifindex, CLSACT_INGRESS).length +
        listTcFilters(ifindex, CLSACT_EGRESS).length;
      if (left === 0) tcHookDestroy(ifindex);
    }
  }

  /**
   * The attachments that are not in place (filter gone, qdisc deleted, or
   * another program at our handle), as "prog on ifindex" texts; empty when
   * all are. For a watchdog: {@linkcode attach} repairs them.
   */
  missing(): string[] {
    const obj = this.#live();
    const out: string[] = [];
    for (const a of ATTACHMENTS[this.role]) {
      const ifindex = this.#idx.get(a.iface)!;
      if (ourProg(this.hook, ifindex, a) !== progInfo(obj.progFd(a.prog)).id) {
        out.push(`${a.prog} on interface ${ifindex}`);
      }
    }
    return out;
  }

  /**
   * Detaches the role's programs (ours only) and deletes a clsact qdisc that
   * is left empty; then closes. The maps go with the last reference.
   */
  remove(): void {
    BpfPrograms.removeFrom(this.role, this.#idx);
    this.close();
  }

  /**
   * Removes what a run of `role` attached to `ifaces` without a loaded set
   * (`--cleanup`): our programs (tcx and filters), and each clsact qdisc
   * our filters left empty. Interfaces that are gone are skipped. Returns
   * how many programs were detached.
   */
  static removeFrom(role: BpfRole, ifaces: BpfInterfaces | Map<string, number>): number {
    let idx: Map<string, number>;
    if (ifaces instanceof Map) idx = ifaces;
    else {
      idx = new Map();
      for (const a of ATTACHMENTS[role]) {
        const name = (ifaces as Record<string, string | undefined>)[a.iface];
        const i = name === undefined ? 0 : ifIndex(name);
        if (i !== 0) idx.set(a.iface, i);
      }
    }
    let n = 0;
    const touched = new Set<number>();
    for (const a of ATTACHMENTS[role]) {
      const ifindex = idx.get(a.iface);
      if (ifindex === undefined) continue;
      for (const id of ourTcx(ifindex, a)) {
        const fd = progFdIfLoaded(id);
        if (fd === null) continue; // gone meanwhile
        try {
          if (tcxDetach(ifindex, a.point, fd)) n++;
        } finally {
          closeFd(fd);
        }
      }
      // Only what is there: with no clsact at all the kernel answers EINVAL, not ENOENT.
      if (ourFilter(ifindex, a.point) === 0) continue;
      touched.add(ifindex);
      if (tcDetach(ifindex, a.point, TC_HANDLE, TC_PRIORITY)) n++;
    }
    BpfPrograms.#dropEmptyHooks(touched);
    return n;
  }

  #live(): BpfObject {
    if (this.#obj === null) throw new Error("BPF program set is closed");
    return this.#obj;
  }

  /** Closes this process's handles; the attached programs and maps stay in the kernel. Idempotent. */
  close(): void {
    this.#obj?.close();
    this.#obj = null;
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The session map `dpm_nat`, through an fd that its {@linkcode BpfPrograms} owns. */
export class NatMap {
  readonly #fd: number;

  /** @param fd the map's fd (not closed by this object). */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** The map's fd (a worker thread of the same process opens a `NatMap` on it). */
  get fd(): number {
    return this.#fd;
  }

  /** Writes `records` (new or replaced, counters and flags as given) in one batch. */
  put(records: readonly NatRecord[]): void {
    const n = records.length;
    if (n === 0) return;
    const keys = new Uint8Array(n * NatKeyLayout.SIZE);
    const vals = new Uint8Array(n * NatEntryLayout.SIZE);
    const kdv = new DataView(keys.buffer);
    const vdv = new DataView(vals.buffer);
    records.forEach((r, i) => {
      writeKey(kdv, i * NatKeyLayout.SIZE, r.key);
      writeEntry(vdv, i * NatEntryLayout.SIZE, r.entry);
    });
    mapUpdateBatch(this.#fd, keys, vals, n);
  }

  /** Deletes `keys` in one batch (absent ones are skipped); returns how many went. */
  delete(keys: readonly NatKey[]): number {
    const n = keys.length;
    if (n === 0) return 0;
    const buf = new Uint8Array(n * NatKeyLayout.SIZE);
    const dv = new DataView(buf.buffer);
    keys.forEach((k, i) => writeKey(dv, i * NatKeyLayout.SIZE, k));
    return mapDeleteBatch(this.#fd, buf, n, NatKeyLayout.SIZE);
  }

  /** The entry of `key`, or null. */
  get(key: NatKey): NatEntry | null {
    const v = new Uint8Array(NatEntryLayout.SIZE);
    if (!mapLookup(this.#fd, keyBytes(key), v)) return null;
    return readEntry(new DataView(v.buffer), 0);
  }

  /**
   * Hands every record to `onRecord` (with `want`, only those whose flags
   * and packet count it accepts), reading the map in batches. Returns how
   * many entries the map holds.
   */
  forEach(
    onRecord: (r: NatRecord) => void,
    batch = 4096,
    want?: (flags: number, packets: number) => boolean,
  ): number {
    let count = 0;
    const E = NatEntryLayout;
    mapDump(this.#fd, NatKeyLayout.SIZE, E.SIZE, batch, (keys, vals, n) => {
      const kdv = new DataView(keys.buffer);
      const vdv = new DataView(vals.buffer);
      for (let i = 0; i < n; i++) {
        const off = i * E.SIZE;
        // A filter reads the two fields in place: a million entries are not a million objects.
        if (want) {
          const packets = vdv.getUint32(off + E.PACKETS, LE) +
            vdv.getUint32(off + E.PACKETS + 4, LE) * 2 ** 32;
          if (!want(vdv.getUint32(off + E.FLAGS, LE), packets)) continue;
        }
        onRecord({ key: readKey(kdv, i * NatKeyLayout.SIZE), entry: readEntry(vdv, off) });
      }
      count += n;
    });
    return count;
  }

  /** Deletes every record `pred` picks (one dump, one batch); returns how many went. */
  deleteWhere(pred: (r: NatRecord) => boolean): number {
    const keys: NatKey[] = [];
    this.forEach((r) => {
      if (pred(r)) keys.push(r.key);
    });
    return this.delete(keys);
  }

  /** Every record (with `want`: those it accepts), in one array. */
  all(want?: (flags: number, packets: number) => boolean): NatRecord[] {
    const out: NatRecord[] = [];
    this.forEach((r) => out.push(r), 4096, want);
    return out;
  }
}
