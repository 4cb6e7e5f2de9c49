/**
 * Every libbpf function dpm calls, in one place, with thin wrappers that
 * turn libbpf's return codes into exceptions.
 *
 * libbpf 1.1 (`libbpf.so.1`, Debian's `libbpf1`, which iproute2 depends on,
 * so it is on every machine that has `ip`) does the hard parts of loading:
 * it parses the ELF object, loads its BTF, creates the maps, relocates the
 * programs' map references and loads them (the verifier's log goes to
 * stderr on failure). The rest is the plain bpf() syscall commands it wraps
 * (map updates in batches, `BPF_PROG_TEST_RUN`, `BPF_*_GET_FD_BY_ID`,
 * `BPF_OBJ_GET_INFO_BY_FD`) and tc attachment over netlink
 * (`bpf_tc_hook_create`: the clsact qdisc; `bpf_tc_attach`: a direct-action
 * `bpf` filter).
 *
 * libbpf 1.x conventions: functions returning `int` give a negative errno on
 * failure; functions returning a pointer give NULL and set `errno`.
 *
 * The library is opened lazily on first use, so this module imports without
 * `--allow-ffi`. Layouts assume LP64 (x86_64, aarch64); offsets are those of
 * libbpf 1.1's headers (checked with `offsetof`).
 *
 * Requires `--allow-ffi` once a symbol is used, and root (CAP_BPF,
 * CAP_NET_ADMIN) for nearly everything.
 *
 * @module
 */

import { addressOf, errno, HOST_LITTLE_ENDIAN as LE, libc, OsError, setU64 } from "./libc.ts";
import { FdWaiter } from "./waiter.ts";

const SYMBOLS = {
  /**
   * `struct bpf_object *bpf_object__open_mem(const void *obj_buf, size_t obj_buf_sz,
   *                                          const struct bpf_object_open_opts *opts);`
   * libbpf keeps pointing into `obj_buf` until the object is closed.
   */
  bpf_object__open_mem: { parameters: ["buffer", "usize", "buffer"], result: "pointer" },
  /** `int bpf_object__load(struct bpf_object *obj);` */
  bpf_object__load: { parameters: ["pointer"], result: "i32" },
  /** `void bpf_object__close(struct bpf_object *obj);` closes its program and map fds. */
  bpf_object__close: { parameters: ["pointer"], result: "void" },
  /** `struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);` */
  bpf_object__find_program_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  /** `struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);` */
  bpf_object__find_map_by_name: { parameters: ["pointer", "buffer"], result: "pointer" },
  /** `int bpf_program__fd(const struct bpf_program *prog);` */
  bpf_program__fd: { parameters: ["pointer"], result: "i32" },
  /** `int bpf_map__fd(const struct bpf_map *map);` */
  bpf_map__fd: { parameters: ["pointer"], result: "i32" },
  /** `int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);` before load. */
  bpf_map__set_max_entries: { parameters: ["pointer", "u32"], result: "i32" },
  /** `int bpf_map__reuse_fd(struct bpf_map *map, int fd);` before load: use an existing map. */
  bpf_map__reuse_fd: { parameters: ["pointer", "i32"], result: "i32" },
  /** `int bpf_tc_hook_create(struct bpf_tc_hook *hook);` -EEXIST when the clsact qdisc is there. */
  bpf_tc_hook_create: { parameters: ["buffer"], result: "i32" },
  /** `int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);` with INGRESS|EGRESS: deletes the qdisc. */
  bpf_tc_hook_destroy: { parameters: ["buffer"], result: "i32" },
  /** `int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);` */
  bpf_tc_attach: { parameters: ["buffer", "buffer"], result: "i32" },
  /** `int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);` */
  bpf_tc_detach: { parameters: ["buffer", "buffer"], result: "i32" },
  /** `int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);` */
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  /** `int bpf_map_lookup_elem(int fd, const void *key, void *value);` */
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** `int bpf_map_delete_elem(int fd, const void *key);` */
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  /**
   * `int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
   *                           const struct bpf_map_batch_opts *opts);`
   */
  bpf_map_update_batch: {
    parameters: ["i32", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  /**
   * `int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
   *                           const struct bpf_map_batch_opts *opts);`
   */
  bpf_map_delete_batch: { parameters: ["i32", "buffer", "buffer", "buffer"], result: "i32" },
  /**
   * `int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
   *                           void *values, __u32 *count, const struct bpf_map_batch_opts *opts);`
   */
  bpf_map_lookup_batch: {
    parameters: ["i32", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  /**
   * `int bpf_prog_attach_opts(int prog_fd, int target, enum bpf_attach_type type,
   *                           const struct bpf_prog_attach_opts *opts);` (tcx: target is an ifindex)
   */
  bpf_prog_attach_opts: { parameters: ["i32", "i32", "u32", "buffer"], result: "i32" },
  /** `int bpf_prog_detach2(int prog_fd, int target, enum bpf_attach_type type);` */
  bpf_prog_detach2: { parameters: ["i32", "i32", "u32"], result: "i32" },
  /**
   * `int bpf_prog_query(int target, enum bpf_attach_type type, __u32 query_flags,
   *                     __u32 *attach_flags, __u32 *prog_ids, __u32 *prog_cnt);`
   */
  bpf_prog_query: {
    parameters: ["i32", "u32", "u32", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  /** `int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);` */
  bpf_prog_test_run_opts: { parameters: ["i32", "buffer"], result: "i32" },
  /** `int bpf_prog_get_fd_by_id(__u32 id);` */
  bpf_prog_get_fd_by_id: { parameters: ["u32"], result: "i32" },
  /** `int bpf_map_get_fd_by_id(__u32 id);` */
  bpf_map_get_fd_by_id: { parameters: ["u32"], result: "i32" },
  /** `int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);` */
  bpf_obj_get_info_by_fd: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /**
   * `struct perf_buffer *perf_buffer__new(int map_fd, size_t page_cnt,
   *     perf_buffer_sample_fn sample_cb, perf_buffer_lost_fn lost_cb, void *ctx,
   *     const struct perf_buffer_opts *opts);` (NULL and errno on failure)
   */
  perf_buffer__new: {
    parameters: ["i32", "usize", "function", "function", "pointer", "pointer"],
    result: "pointer",
  },
  /** `int perf_buffer__epoll_fd(const struct perf_buffer *pb);` */
  perf_buffer__epoll_fd: { parameters: ["pointer"], result: "i32" },
  /** `int perf_buffer__consume(struct perf_buffer *pb);` calls the callbacks for what waits. */
  perf_buffer__consume: { parameters: ["pointer"], result: "i32" },
  /** `void perf_buffer__free(struct perf_buffer *pb);` */
  perf_buffer__free: { parameters: ["pointer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

/** The libbpf symbols, opening `libbpf.so.1` on first use. Requires `--allow-ffi`. */
function bpf(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  lib ??= Deno.dlopen("libbpf.so.1", SYMBOLS);
  return lib.symbols;
}

/** Throws an {@linkcode OsError} naming `what` when a libbpf `int` result is negative. */
function ok(ret: number, what: string): number {
  if (ret < 0) throw new OsError(what, -ret);
  return ret;
}

const cstr = (s: string) => new TextEncoder().encode(`${s}\0`);

/** An ELF object opened and loaded by libbpf: its programs and maps by name. */
export class BpfObject {
  #obj: Deno.PointerValue;
  /** libbpf points into it until close. */
  readonly #bytes: Uint8Array;

  private constructor(obj: Deno.PointerValue, bytes: Uint8Array) {
    this.#obj = obj;
    this.#bytes = bytes;
  }

  /** Opens an object from its bytes (nothing is created in the kernel until {@linkcode load}). */
  static open(bytes: Uint8Array): BpfObject {
    const copy = bytes.slice();
    const obj = bpf().bpf_object__open_mem(copy, BigInt(copy.length), null);
    if (obj === null) throw new OsError("Cannot open the BPF object", errno());
    return new BpfObject(obj, copy);
  }

  #ptr(): Deno.PointerObject {
    if (this.#obj === null || this.#bytes.length === 0) throw new Error("BPF object is closed");
    return this.#obj;
  }

  #map(name: string): Deno.PointerObject {
    const m = bpf().bpf_object__find_map_by_name(this.#ptr(), cstr(name));
    if (m === null) throw new Error(`BPF object has no map "${name}"`);
    return m;
  }

  /** Sets a map's size (before {@linkcode load}). */
  setMaxEntries(map: string, n: number): void {
    ok(bpf().bpf_map__set_max_entries(this.#map(map), n), `Cannot size BPF map "${map}"`);
  }

  /**
   * Makes the object use the existing map `fd` (same type and sizes) instead
   * of creating map `map` (before {@linkcode load}); libbpf dups the fd.
   */
  reuseMap(map: string, fd: number): void {
    ok(bpf().bpf_map__reuse_fd(this.#map(map), fd), `Cannot reuse BPF map "${map}"`);
  }

  /** Creates the maps and loads every program (the verifier runs here). */
  load(): void {
    ok(bpf().bpf_object__load(this.#ptr()), "Cannot load the BPF object");
  }

  /** A loaded program's fd (owned by the object: closed with it). */
  progFd(name: string): number {
    const p = bpf().bpf_object__find_program_by_name(this.#ptr(), cstr(name));
    if (p === null) throw new Error(`BPF object has no program "${name}"`);
    return ok(bpf().bpf_program__fd(p), `BPF program "${name}" has no fd`);
  }

  /** A created map's fd (owned by the object: closed with it). */
  mapFd(name: string): number {
    return ok(bpf().bpf_map__fd(this.#map(name)), `BPF map "${name}" has no fd`);
  }

  /** Closes every fd of the object; attached programs stay (the kernel holds them). Idempotent. */
  close(): void {
    if (this.#obj === null) return;
    bpf().bpf_object__close(this.#obj);
    this.#obj = null;
  }
}

/** Where a tc program runs (`enum bpf_tc_attach_point`). */
export const TcPoint = { INGRESS: 1, EGRESS: 2 } as const;
/** One of {@linkcode TcPoint}. */
export type TcPoint = (typeof TcPoint)[keyof typeof TcPoint];

/** `struct bpf_tc_hook { size_t sz; int ifindex; enum attach_point; __u32 parent; }` (24 bytes). */
function tcHook(ifindex: number, point: number): Uint8Array {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  setU64(dv, 0, b.length);
  dv.setInt32(8, ifindex, LE);
  dv.setUint32(12, point, LE);
  return b;
}

/**
 * `struct bpf_tc_opts { size_t sz; int prog_fd; __u32 flags; __u32 prog_id; __u32 handle;
 * __u32 priority; }` (32 bytes).
 */
function tcOpts(progFd: number, flags: number, handle: number, priority: number): Uint8Array {
  const b = new Uint8Array(32);
  const dv = new DataView(b.buffer);
  setU64(dv, 0, b.length);
  dv.setInt32(8, progFd, LE);
  dv.setUint32(12, flags, LE);
  dv.setUint32(20, handle, LE);
  dv.setUint32(24, priority, LE);
  return b;
}

/** `BPF_TC_F_REPLACE`: attach over an existing filter of the same handle and priority. */
const BPF_TC_F_REPLACE = 1;
const ENOENT = 2;
const EEXIST = 17;
const EINVAL = 22;
const ENOSPC = 28;

/** Adds a clsact qdisc to `ifindex`. True when it was created, false when one was there already. */
export function tcHookCreate(ifindex: number): boolean {
  const r = bpf().bpf_tc_hook_create(tcHook(ifindex, TcPoint.INGRESS | TcPoint.EGRESS));
  if (r === -EEXIST) return false;
  ok(r, `Cannot add a clsact qdisc to interface ${ifindex}`);
  return true;
}

/** Deletes the clsact qdisc of `ifindex` with every filter in it. False when there was none. */
export function tcHookDestroy(ifindex: number): boolean {
  const r = bpf().bpf_tc_hook_destroy(tcHook(ifindex, TcPoint.INGRESS | TcPoint.EGRESS));
  if (r === -ENOENT || r === -EINVAL) return false;
  ok(r, `Cannot delete the clsact qdisc of interface ${ifindex}`);
  return true;
}

/**
 * Attaches program `progFd` to `ifindex`'s clsact `point` as a direct-action
 * bpf filter with `handle` and `priority`, replacing one of ours there.
 * Returns the attached program's id.
 */
export function tcAttach(
  ifindex: number,
  point: TcPoint,
  progFd: number,
  handle: number,
  priority: number,
): number {
  const opts = tcOpts(progFd, BPF_TC_F_REPLACE, handle, priority);
  ok(
    bpf().bpf_tc_attach(tcHook(ifindex, point), opts),
    `Cannot attach a BPF program to interface ${ifindex}`,
  );
  return new DataView(opts.buffer).getUint32(16, LE);
}

/** Removes the filter `handle`/`priority` at `point` of `ifindex`. False when it was not there. */
export function tcDetach(
  ifindex: number,
  point: TcPoint,
  handle: number,
  priority: number,
): boolean {
  const r = bpf().bpf_tc_detach(tcHook(ifindex, point), tcOpts(0, 0, handle, priority));
  if (r === -ENOENT) return false;
  ok(r, `Cannot detach the BPF filter from interface ${ifindex}`);
  return true;
}

// tcx (Linux 6.6+): programs attached to a device's ingress or egress without a qdisc.

/** `enum bpf_attach_type`: BPF_TCX_INGRESS, BPF_TCX_EGRESS (not in older uapi headers). */
const BPF_TCX = { [TcPoint.INGRESS]: 46, [TcPoint.EGRESS]: 47 } as Record<TcPoint, number>;
/** `BPF_F_REPLACE`: put the program in place of `replace_prog_fd`'s. */
const BPF_F_REPLACE = 1 << 2;

/**
 * The ids of the programs attached with tcx to `ifindex`'s `point`, in run
 * order; null when the kernel has no tcx (before Linux 6.6).
 */
export function tcxQuery(ifindex: number, point: TcPoint): number[] | null {
  for (let cap = 16;; cap *= 4) {
    const ids = new Uint8Array(4 * cap);
    const cnt = new Uint8Array(4);
    new DataView(cnt.buffer).setUint32(0, cap, LE);
    const r = bpf().bpf_prog_query(ifindex, BPF_TCX[point], 0, new Uint8Array(4), ids, cnt);
    const n = new DataView(cnt.buffer).getUint32(0, LE);
    if (r === -EINVAL) return null;
    if (r === -ENOSPC && cap < 1024) continue;
    ok(r, `Cannot list the tcx programs of interface ${ifindex}`);
    const dv = new DataView(ids.buffer);
    return Array.from({ length: Math.min(n, cap) }, (_, i) => dv.getUint32(4 * i, LE));
  }
}

/**
 * Attaches program `progFd` to `ifindex`'s `point` with tcx (it stays
 * attached with no process holding it, until detached or the device goes),
 * in place of `replaceFd`'s program when one is given, else after the others.
 */
export function tcxAttach(ifindex: number, point: TcPoint, progFd: number, replaceFd = -1): void {
  const o = new Uint8Array(16); // struct bpf_prog_attach_opts { size_t sz; __u32 flags; int replace_prog_fd; }
  const dv = new DataView(o.buffer);
  setU64(dv, 0, o.length);
  if (replaceFd >= 0) {
    dv.setUint32(8, BPF_F_REPLACE, LE);
    dv.setInt32(12, replaceFd, LE);
  }
  ok(
    bpf().bpf_prog_attach_opts(progFd, ifindex, BPF_TCX[point], o),
    `Cannot attach a BPF program to interface ${ifindex} (tcx)`,
  );
}

/** Detaches program `progFd` from `ifindex`'s tcx `point`. False when it was not attached there. */
export function tcxDetach(ifindex: number, point: TcPoint, progFd: number): boolean {
  const r = bpf().bpf_prog_detach2(progFd, ifindex, BPF_TCX[point]);
  if (r === -ENOENT) return false;
  ok(r, `Cannot detach a BPF program from interface ${ifindex} (tcx)`);
  return true;
}

// Map operations (any map type; keys and values are raw bytes of the map's sizes).

/** `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`: update flags. */
export const MapUpdate = { ANY: 0, NOEXIST: 1, EXIST: 2 } as const;

/** Writes one element. */
export function mapUpdate(fd: number, key: Uint8Array, value: Uint8Array, flags = 0): void {
  ok(bpf().bpf_map_update_elem(fd, key, value, BigInt(flags)), "Cannot update a BPF map element");
}

/** Reads one element into `value`; false when the key is absent. */
export function mapLookup(fd: number, key: Uint8Array, value: Uint8Array): boolean {
  const r = bpf().bpf_map_lookup_elem(fd, key, value);
  if (r === -ENOENT) return false;
  ok(r, "Cannot read a BPF map element");
  return true;
}

/** Deletes one element; false when it was absent. */
export function mapDelete(fd: number, key: Uint8Array): boolean {
  const r = bpf().bpf_map_delete_elem(fd, key);
  if (r === -ENOENT) return false;
  ok(r, "Cannot delete a BPF map element");
  return true;
}

/** `struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; }` (24 bytes). */
function batchOpts(elemFlags: number): Uint8Array {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  setU64(dv, 0, b.length);
  setU64(dv, 8, elemFlags);
  return b;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, LE);
  return b;
}

/**
 * Writes `count` elements (keys and values packed back to back) in one
 * syscall (`BPF_MAP_UPDATE_BATCH`). Throws naming how many were written
 * before the kernel refused one.
 */
export function mapUpdateBatch(
  fd: number,
  keys: Uint8Array,
  values: Uint8Array,
  count: number,
  flags = 0,
): void {
  if (count === 0) return;
  const n = u32(count);
  const r = bpf().bpf_map_update_batch(fd, keys, values, n, batchOpts(flags));
  if (r < 0) {
    const done = new DataView(n.buffer).getUint32(0, LE);
    throw new OsError(`Cannot write BPF map elements (${done} of ${count} written)`, -r);
  }
}

/**
 * Deletes `count` keys in one syscall (`BPF_MAP_DELETE_BATCH`). A hash map
 * stops at the first absent key: then the rest are deleted one by one, so
 * absent keys are skipped. Returns how many were deleted.
 */
export function mapDeleteBatch(
  fd: number,
  keys: Uint8Array,
  count: number,
  keySize: number,
): number {
  if (count === 0) return 0;
  const n = u32(count);
  const r = bpf().bpf_map_delete_batch(fd, keys, n, batchOpts(0));
  if (r >= 0) return count;
  if (r !== -ENOENT) throw new OsError("Cannot delete BPF map elements", -r);
  const done = new DataView(n.buffer).getUint32(0, LE);
  let deleted = done;
  // The element at `done` was absent; go on one by one after it.
  for (let i = done + 1; i < count; i++) {
    if (mapDelete(fd, keys.subarray(i * keySize, (i + 1) * keySize))) deleted++;
  }
  return deleted;
}

/**
 * Reads a whole hash map in batches of up to `batch` elements
 * (`BPF_MAP_LOOKUP_BATCH`) and hands each batch's packed keys and values
 * with its count to `onBatch`. The map may change meanwhile: an element
 * added or deleted during the walk may or may not be seen.
 */
export function mapDump(
  fd: number,
  keySize: number,
  valueSize: number,
  batch: number,
  onBatch: (keys: Uint8Array, values: Uint8Array, count: number) => void,
): void {
  const keys = new Uint8Array(keySize * batch);
  const values = new Uint8Array(valueSize * batch);
  const inB = new Uint8Array(8);
  const outB = new Uint8Array(8);
  const n = new Uint8Array(4);
  const ndv = new DataView(n.buffer);
  const opts = batchOpts(0);
  let first = true;
  for (;;) {
    ndv.setUint32(0, batch, LE);
    const r = bpf().bpf_map_lookup_batch(fd, first ? null : inB, outB, keys, values, n, opts);
    const got = ndv.getUint32(0, LE);
    if (r < 0 && r !== -ENOENT) throw new OsError("Cannot read the BPF map", -r);
    if (got > 0) onBatch(keys, values, got);
    if (r === -ENOENT) return;
    inB.set(outB);
    first = false;
  }
}

/** What {@linkcode progTestRun} returns. */
export interface TestRunResult {
  /** The program's return value (as unsigned 32 bits: TC_ACT_UNSPEC is 0xffffffff). */
  retval: number;
  /** The packet after the program ran. */
  data: Uint8Array;
  /** The context after the program ran (`struct __sk_buff` for tc), when one was given. */
  ctx: Uint8Array | null;
}

/**
 * Runs a loaded program once on `data` (`BPF_PROG_TEST_RUN`): no packet is
 * sent; a redirect is only its return code. For a tc program `data` is an
 * Ethernet frame and `ctx` an optional `struct __sk_buff` (ifindex,
 * ingress_ifindex, mark... are taken from it). The kernel builds the skb in
 * the calling thread's network namespace.
 */
export function progTestRun(fd: number, data: Uint8Array, ctx?: Uint8Array): TestRunResult {
  const out = new Uint8Array(data.length + 256);
  const ctxOut = ctx ? new Uint8Array(ctx.length) : null;
  const o = new Uint8Array(80);
  const dv = new DataView(o.buffer);
  setU64(dv, 0, o.length);
  setU64(dv, 8, addressOf(data));
  setU64(dv, 16, addressOf(out));
  dv.setUint32(24, data.length, LE);
  dv.setUint32(28, out.length, LE);
  if (ctx && ctxOut) {
    setU64(dv, 32, addressOf(ctx));
    setU64(dv, 40, addressOf(ctxOut));
    dv.setUint32(48, ctx.length, LE);
    dv.setUint32(52, ctxOut.length, LE);
  }
  dv.setInt32(60, 1, LE); // repeat
  ok(bpf().bpf_prog_test_run_opts(fd, o), "BPF_PROG_TEST_RUN failed");
  return {
    retval: dv.getUint32(56, LE),
    data: out.slice(0, dv.getUint32(28, LE)),
    ctx: ctxOut ? ctxOut.slice(0, dv.getUint32(52, LE)) : null,
  };
}

/** A new fd for the loaded program `id` (close it with {@linkcode closeFd}). */
export function progFdById(id: number): number {
  return ok(bpf().bpf_prog_get_fd_by_id(id), `Cannot open BPF program ${id}`);
}

/**
 * A new fd for the loaded program `id`, or null when it cannot be opened:
 * ids come from a listing (tcx, tc filters, a map's users) and the program
 * may be gone by the time it is opened, which callers treat as "not there".
 */
export function progFdIfLoaded(id: number): number | null {
  try {
    return progFdById(id);
  } catch {
    return null;
  }
}

/** A new fd for the map `id` (close it with {@linkcode closeFd}). */
export function mapFdById(id: number): number {
  return ok(bpf().bpf_map_get_fd_by_id(id), `Cannot open BPF map ${id}`);
}

/** What the kernel says of a loaded program (`struct bpf_prog_info`). */
export interface ProgInfo {
  id: number;
  type: number;
  name: string;
  mapIds: number[];
}

/** What the kernel says of a map (`struct bpf_map_info`). */
export interface MapInfo {
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  name: string;
}

function cname(b: Uint8Array, off: number): string {
  const s = b.subarray(off, off + 16);
  const end = s.indexOf(0);
  return new TextDecoder().decode(end < 0 ? s : s.subarray(0, end));
}

/** `BPF_OBJ_GET_INFO_BY_FD` on a program fd, with its map ids. */
export function progInfo(fd: number): ProgInfo {
  const ids = new Uint8Array(4 * 64);
  const info = new Uint8Array(232); // sizeof(struct bpf_prog_info), libbpf 1.1
  const dv = new DataView(info.buffer);
  dv.setUint32(52, 64, LE); // nr_map_ids: room for 64
  setU64(dv, 56, addressOf(ids)); // map_ids
  const len = u32(info.length);
  ok(bpf().bpf_obj_get_info_by_fd(fd, info, len), "Cannot read BPF program info");
  const n = Math.min(dv.getUint32(52, LE), 64);
  const idv = new DataView(ids.buffer);
  return {
    type: dv.getUint32(0, LE),
    id: dv.getUint32(4, LE),
    name: cname(info, 64),
    mapIds: Array.from({ length: n }, (_, i) => idv.getUint32(4 * i, LE)),
  };
}

/** `BPF_OBJ_GET_INFO_BY_FD` on a map fd. */
export function mapInfo(fd: number): MapInfo {
  const info = new Uint8Array(88); // sizeof(struct bpf_map_info), libbpf 1.1
  const dv = new DataView(info.buffer);
  ok(bpf().bpf_obj_get_info_by_fd(fd, info, u32(info.length)), "Cannot read BPF map info");
  return {
    type: dv.getUint32(0, LE),
    id: dv.getUint32(4, LE),
    keySize: dv.getUint32(8, LE),
    valueSize: dv.getUint32(12, LE),
    maxEntries: dv.getUint32(16, LE),
    name: cname(info, 24),
  };
}

/** Closes an fd from {@linkcode progFdById} or {@linkcode mapFdById}. */
export function closeFd(fd: number): void {
  if (fd >= 0) libc().close(fd);
}

/** `perf_buffer_sample_fn`: `void (*)(void *ctx, int cpu, void *data, __u32 size)`. */
const SAMPLE_FN = { parameters: ["pointer", "i32", "pointer", "u32"], result: "void" } as const;
/** `perf_buffer_lost_fn`: `void (*)(void *ctx, int cpu, __u64 cnt)`. */
const LOST_FN = { parameters: ["pointer", "i32", "u64"], result: "void" } as const;

/**
 * The reader of a `BPF_MAP_TYPE_PERF_EVENT_ARRAY` (one ring per CPU, made
 * by libbpf's `perf_buffer`): {@linkcode PerfReader.wait} resolves when
 * records wait (the poll runs on another thread, the event loop goes on),
 * and {@linkcode PerfReader.consume} hands each to the callback,
 * synchronously, on the calling thread (the bytes are a copy). Records the
 * kernel could not store are counted in `lost`.
 */
export class PerfReader {
  #pb: Deno.PointerValue;
  readonly #sample: Deno.UnsafeCallback<typeof SAMPLE_FN>;
  readonly #lost: Deno.UnsafeCallback<typeof LOST_FN>;
  readonly #waiter: FdWaiter;
  /** Records the kernel dropped (a ring was full). */
  lost = 0;

  private constructor(
    pb: Deno.PointerObject,
    sample: Deno.UnsafeCallback<typeof SAMPLE_FN>,
    lost: Deno.UnsafeCallback<typeof LOST_FN>,
    waiter: FdWaiter,
  ) {
    this.#pb = pb;
    this.#sample = sample;
    this.#lost = lost;
    this.#waiter = waiter;
  }

  /** Opens the rings of map `mapFd`, `pages` pages each (a power of two). */
  static open(mapFd: number, pages: number, onRecord: (data: Uint8Array) => void): PerfReader {
    let reader: PerfReader | null = null;
    const sample = new Deno.UnsafeCallback(SAMPLE_FN, (_ctx, _cpu, data, size) => {
      if (data === null) return;
      onRecord(new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(data, size)).slice());
    });
    const lost = new Deno.UnsafeCallback(LOST_FN, (_ctx, _cpu, cnt) => {
      if (reader) reader.lost += Number(cnt);
    });
    const pb = bpf().perf_buffer__new(
      mapFd,
      BigInt(pages),
      sample.pointer,
      lost.pointer,
      null,
      null,
    );
    if (pb === null) {
      const e = errno();
      sample.close();
      lost.close();
      throw new OsError("Cannot open the perf buffer", e);
    }
    let waiter: FdWaiter;
    try {
      waiter = FdWaiter.open(bpf().perf_buffer__epoll_fd(pb), "PerfReader");
    } catch (e) {
      bpf().perf_buffer__free(pb);
      sample.close();
      lost.close();
      throw e;
    }
    reader = new PerfReader(pb, sample, lost, waiter);
    return reader;
  }

  /** Resolves true when records wait, false on timeout or once closed. */
  wait(timeoutMs: number): Promise<boolean> {
    return this.#waiter.wait(timeoutMs);
  }

  /** Hands every waiting record to the callback. */
  consume(): void {
    if (this.#waiter.closing || this.#pb === null) return;
    ok(bpf().perf_buffer__consume(this.#pb), "Cannot read the perf buffer");
  }

  /** Frees the rings and callbacks (once a pending wait returned). Idempotent. */
  close(): void {
    this.#waiter.close(() => {
      if (this.#pb === null) return;
      bpf().perf_buffer__free(this.#pb);
      this.#pb = null;
      this.#sample.close();
      this.#lost.close();
    });
  }
}
