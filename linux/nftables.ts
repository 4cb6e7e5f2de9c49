/**
 * An nf_tables client for set and map ELEMENTS, over netlink (no `nft`
 * process per element). Tables, chains, rules and the map declarations are
 * loaded once by the caller with `nft -f -`; this module adds, deletes and
 * lists the per-session elements of those maps, many per transaction.
 *
 * ## Theory of operation
 *
 * nf_tables changes are transactions: an nfnetlink batch
 * (`NFNL_MSG_BATCH_BEGIN` with `res_id` `NFNL_SUBSYS_NFTABLES`, the change
 * messages, `NFNL_MSG_BATCH_END`) sent as one datagram is applied as a whole
 * or not at all. {@linkcode NftMaps.add} puts all of its elements into one
 * batch: `NFT_MSG_NEWSETELEM` messages, each carrying as many elements as
 * fit in one `NFTA_SET_ELEM_LIST_ELEMENTS` attribute (a u16 length, so
 * messages are cut at {@linkcode MAX_ELEMENTS_BYTES}). Every message asks
 * for an acknowledgement; when the kernel refuses one, the whole batch is
 * aborted and the error names the element (from the kernel's extended ack
 * when it gives the attribute offset).
 *
 * Deleting: {@linkcode NftMaps.delete} uses `NFT_MSG_DESTROYSETELEM` (Linux
 * 6.3 and later), which deletes the elements present and ignores absent
 * ones, in one transaction. On an older kernel (the message type is refused
 * with EOPNOTSUPP or EINVAL) it falls back to `NFT_MSG_DELSETELEM`, which
 * aborts the whole transaction on the first absent key with ENOENT; then the
 * set is listed and the delete retried with the keys actually present. The
 * result is the same: after `delete`, none of the keys is in the set.
 *
 * Elements of concatenated keys ({@linkcode concat}): every field is padded
 * to 4 bytes ("registers"); `meta l4proto` is 1 byte then 3 zero bytes,
 * `ip saddr` 4 bytes in network order, `th dport` 2 bytes in network order
 * then 2 zero bytes. Checked against nft 1.0.6 on kernel 6.18 by the root
 * tests.
 *
 * {@linkcode NftMaps.generation} reads the ruleset generation
 * (`NFT_MSG_GETGEN`): every committed transaction, by anyone, increments it,
 * so a watchdog can notice a ruleset change with one cheap request.
 *
 * Requires `--allow-ffi` and root (CAP_NET_ADMIN) in the network namespace.
 *
 * @module
 */

import { formatIPv4, parseIPv4 } from "../src/wire/addr.ts";
import { EINTR, EINVAL, ENOENT, EOPNOTSUPP } from "./libc.ts";
import {
  align4,
  attrs,
  attrTable,
  getBe32,
  getBytes,
  NetlinkError,
  NetlinkParseError,
  NetlinkSocket,
  type NetlinkSocketOptions,
  Nfgen,
  NFNL_MSG_BATCH_BEGIN,
  NFNL_MSG_BATCH_END,
  NFNL_SUBSYS_NFTABLES,
  nfnlMessage,
  nfnlType,
  NFPROTO_IPV4,
  NFPROTO_UNSPEC,
  Nla,
  NlBuilder,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REQUEST,
} from "./netlink.ts";

// nf_tables message types (linux/netfilter/nf_tables.h, enum nf_tables_msg_types).
/** `NFT_MSG_NEWSETELEM` */
export const NFT_MSG_NEWSETELEM = 12;
/** `NFT_MSG_GETSETELEM` */
export const NFT_MSG_GETSETELEM = 13;
/** `NFT_MSG_DELSETELEM` */
export const NFT_MSG_DELSETELEM = 14;
/** `NFT_MSG_NEWGEN` (the answer to GETGEN, and the event after each commit) */
export const NFT_MSG_NEWGEN = 15;
/** `NFT_MSG_GETGEN` */
export const NFT_MSG_GETGEN = 16;
/** `NFT_MSG_DESTROYSETELEM` (Linux 6.3+): delete, absent elements ignored. */
export const NFT_MSG_DESTROYSETELEM = 30;

// Attributes.
/** `enum nft_set_elem_list_attributes` */
export const NFTA_SET_ELEM_LIST = { TABLE: 1, SET: 2, ELEMENTS: 3, SET_ID: 4 } as const;
/** `enum nft_list_attributes`: each element of a list. */
export const NFTA_LIST_ELEM = 1;
/** `enum nft_set_elem_attributes` (the ones used here). */
export const NFTA_SET_ELEM = { KEY: 1, DATA: 2, FLAGS: 3, TIMEOUT: 4, EXPIRATION: 5 } as const;
/** `enum nft_data_attributes` */
export const NFTA_DATA = { VALUE: 1, VERDICT: 2 } as const;
/** `enum nft_gen_attributes` */
export const NFTA_GEN = { ID: 1, PROC_PID: 2, PROC_NAME: 3 } as const;
/** `NFT_SET_ELEM_INTERVAL_END` in NFTA_SET_ELEM_FLAGS. */
export const NFT_SET_ELEM_INTERVAL_END = 1;

/**
 * Bytes of elements per message: the ELEMENTS attribute's length is a u16;
 * kept well below 64 KB.
 */
export const MAX_ELEMENTS_BYTES = 60 * 1024;
/** `NFT_DATA_VALUE_MAXLEN`: the longest key or data value (64 bytes). */
export const MAX_VALUE_LEN = 64;

/** One map element: concatenated key and data (see {@linkcode concat}). */
export interface MapElem {
  key: Uint8Array;
  data: Uint8Array;
}

/** A field of a concatenation: its value and width in bytes. */
export type ConcatField = readonly [value: number, width: 1 | 2 | 4];

/**
 * Encodes a concatenated key or data value as nf_tables stores it: each
 * field big endian in `width` bytes, padded with zeros to 4 bytes.
 *
 * @example
 * ```ts
 * // meta l4proto . ip saddr . th dport = udp . 10.0.0.1 . 5060
 * const key = concat([17, 1], [0x0a000001, 4], [5060, 2]);
 * // 11 00 00 00 | 0a 00 00 01 | 13 c4 00 00
 * ```
 * @throws {RangeError} for a value that does not fit its width.
 */
export function concat(...fields: ConcatField[]): Uint8Array {
  // Bytes written one by one (no DataView, no closure): programming a burst
  // of sessions builds four of these per session.
  const out = new Uint8Array(4 * fields.length);
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]!;
    const v = f[0];
    const w = f[1];
    const max = w === 4 ? 0xffff_ffff : w === 2 ? 0xffff : 0xff;
    if (!Number.isInteger(v) || v < 0 || v > max || (w !== 1 && w !== 2 && w !== 4)) {
      throw new RangeError(`Concatenation field ${i}: value ${v} does not fit ${w} byte(s)`);
    }
    const o = 4 * i;
    if (w === 1) out[o] = v;
    else if (w === 2) {
      out[o] = v >>> 8;
      out[o + 1] = v & 0xff;
    } else {
      out[o] = v >>> 24;
      out[o + 1] = (v >>> 16) & 0xff;
      out[o + 2] = (v >>> 8) & 0xff;
      out[o + 3] = v & 0xff;
    }
  }
  return out;
}

/**
 * Decodes a value made by {@linkcode concat} given the fields' widths.
 *
 * @throws {RangeError} when the length is not 4 bytes per field.
 */
export function splitConcat(bytes: Uint8Array, widths: readonly (1 | 2 | 4)[]): number[] {
  if (bytes.length !== 4 * widths.length) {
    throw new RangeError(
      `Concatenation of ${widths.length} field(s) needs ${
        4 * widths.length
      } bytes, got ${bytes.length}`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return widths.map((w, i) =>
    w === 1 ? dv.getUint8(4 * i) : w === 2 ? dv.getUint16(4 * i, false) : dv.getUint32(4 * i, false)
  );
}

/**
 * A dotted quad as a number (`"10.0.0.1"` -> 0x0a000001), for keys written
 * by hand: src/wire/addr.ts's parser, throwing instead of returning null.
 *
 * @throws {RangeError} for anything but an IPv4 address.
 */
export function ip4(s: string): number {
  const n = parseIPv4(s);
  if (n === null) throw new RangeError(`"${s}" is not an IPv4 address`);
  return n;
}

/** A number as a dotted quad (0x0a000001 -> `"10.0.0.1"`): src/wire/addr.ts's. */
export const ip4str: (n: number) => string = formatIPv4;

/** Options of {@linkcode NftMaps.open}. */
export interface NftMapsOptions extends NetlinkSocketOptions {
  /**
   * The tables' family (`NFPROTO_IPV4` for `table ip`).
   * @default {NFPROTO_IPV4}
   */
  family?: number;
}

/** Options of {@linkcode NftMaps.add}. */
export interface AddOptions {
  /**
   * `NLM_F_EXCL`: refuse (EEXIST) an element whose key is present even with
   * the same data. Without it, re-adding an identical element is a no-op;
   * a present key with different data is refused (EEXIST) either way.
   * @default {false}
   */
  exclusive?: boolean;
}

/** Where each message's elements start, to name the element the kernel refused. */
interface MsgElems {
  /** Index (in the caller's array) of the message's first element. */
  first: number;
  /** Offset, in the message, of each element's attribute. */
  offsets: number[];
}

/**
 * Set-element operations on nf_tables maps over one netlink socket. Calls
 * are synchronous and short; not thread safe.
 *
 * @example
 * ```ts ignore
 * using m = NftMaps.open();
 * m.add("dpm", "to_remote", [{ key: concat([17, 1], [ip4("10.0.0.5"), 4], [40001, 2]),
 *                              data: concat([ip4("198.51.100.7"), 4], [5060, 2]) }]);
 * ```
 */
export class NftMaps {
  readonly #nl: NetlinkSocket;
  readonly #family: number;
  /** Kernel lacks DESTROYSETELEM: null until known. */
  #hasDestroy: boolean | null = null;

  private constructor(nl: NetlinkSocket, family: number) {
    this.#nl = nl;
    this.#family = family;
  }

  /**
   * Opens the netlink socket. Requires `--allow-ffi`; changes need root.
   *
   * @throws {OsError} when the socket cannot be opened.
   */
  static open(opts: NftMapsOptions = {}): NftMaps {
    const { family, ...nlOpts } = opts;
    return new NftMaps(NetlinkSocket.open(undefined, nlOpts), family ?? NFPROTO_IPV4);
  }

  /**
   * Adds `elems` to map `set` of `table` in ONE transaction: all or none.
   *
   * @throws {NftError} when the kernel refuses (EEXIST: a key present with
   * other data; ENOENT: no such table or map; EINVAL: a key or data of the
   * wrong length...), naming the element when the kernel says which.
   */
  add(
    table: string,
    set: string,
    elems: readonly { key: Uint8Array; data?: Uint8Array }[],
    opts: AddOptions = {},
  ): void {
    if (elems.length === 0) return;
    const flags = NLM_F_CREATE | NLM_F_ACK | (opts.exclusive ? NLM_F_EXCL : 0);
    const built = buildElemMessages(
      NFT_MSG_NEWSETELEM,
      flags,
      this.#family,
      table,
      set,
      elems.length,
      (i) => elems[i]!,
    );
    this.#transact(
      built,
      `add ${elems.length} element(s) to ${table}/${set}`,
      (i) => elems[i]!.key,
    );
  }

  /**
   * Adds elements to several maps or sets of `table` in ONE transaction: all
   * or none (a session's two NAT elements go in together).
   *
   * @throws {NftError} as {@linkcode add}; the element index counts across
   * the parts in order.
   */
  addAll(
    table: string,
    parts: readonly { set: string; elems: readonly { key: Uint8Array; data?: Uint8Array }[] }[],
    opts: AddOptions = {},
  ): void {
    const flags = NLM_F_CREATE | NLM_F_ACK | (opts.exclusive ? NLM_F_EXCL : 0);
    const msgs: Uint8Array[] = [];
    const elems: MsgElems[] = [];
    const keys: Uint8Array[] = [];
    for (const part of parts) {
      if (part.elems.length === 0) continue;
      const base = keys.length;
      const built = buildElemMessages(
        NFT_MSG_NEWSETELEM,
        flags,
        this.#family,
        table,
        part.set,
        part.elems.length,
        (i) => part.elems[i]!,
      );
      msgs.push(...built.msgs);
      for (const m of built.elems) elems.push({ first: m.first + base, offsets: m.offsets });
      for (const e of part.elems) keys.push(e.key);
    }
    if (msgs.length === 0) return;
    this.#transact(
      { msgs, elems },
      `add ${keys.length} element(s) to ${table}/${parts.map((p) => p.set).join("+")}`,
      (i) => keys[i]!,
    );
  }

  /**
   * Deletes the elements of `keys` from map `set` of `table` in one
   * transaction. Absent keys are ignored (see the module notes): afterwards
   * none of the keys is in the map.
   *
   * @throws {NftError} when the kernel refuses (ENOENT: no such table or
   * map; EINVAL: a key of the wrong length).
   */
  delete(table: string, set: string, keys: readonly Uint8Array[]): void {
    if (keys.length === 0) return;
    const what = `delete ${keys.length} element(s) from ${table}/${set}`;
    if (this.#hasDestroy !== false) {
      try {
        this.#destroyOrDel(NFT_MSG_DESTROYSETELEM, table, set, keys, what);
        this.#hasDestroy = true;
        return;
      } catch (e) {
        if (
          this.#hasDestroy === true || !(e instanceof NftError) ||
          (e.errno !== EOPNOTSUPP && e.errno !== EINVAL)
        ) throw e;
        // EINVAL may also be a bad key: the DELSETELEM attempt tells.
        this.#hasDestroy = null;
      }
    }
    try {
      this.#destroyOrDel(NFT_MSG_DELSETELEM, table, set, keys, what);
      if (this.#hasDestroy === null) this.#hasDestroy = false;
      return;
    } catch (e) {
      if (!(e instanceof NftError) || e.errno !== ENOENT) throw e;
    }
    // Some key was absent (or the map itself: then list() throws ENOENT).
    const present = new Set(this.list(table, set).map((el) => hex(el.key)));
    const left = keys.filter((k) => present.has(hex(k)));
    if (left.length > 0) this.#destroyOrDel(NFT_MSG_DELSETELEM, table, set, left, what);
  }

  #destroyOrDel(
    type: number,
    table: string,
    set: string,
    keys: readonly Uint8Array[],
    what: string,
  ): void {
    const built = buildElemMessages(
      type,
      NLM_F_ACK,
      this.#family,
      table,
      set,
      keys.length,
      (i) => ({ key: keys[i]! }),
    );
    this.#transact(built, what, (i) => keys[i]!);
  }

  /** Sends `built` as one batch; maps a refusal to the element it names. */
  #transact(
    built: { msgs: Uint8Array[]; elems: MsgElems[] },
    what: string,
    keyOf: (i: number) => Uint8Array,
  ): void {
    const begin = nfnlMessage(
      NFNL_MSG_BATCH_BEGIN,
      NLM_F_REQUEST,
      NFPROTO_UNSPEC,
      NFNL_SUBSYS_NFTABLES,
    );
    const end = nfnlMessage(
      NFNL_MSG_BATCH_END,
      NLM_F_REQUEST,
      NFPROTO_UNSPEC,
      NFNL_SUBSYS_NFTABLES,
    );
    const answers = this.#nl.requestAll([begin, ...built.msgs, end], what);
    // Report the first refusal; the others are usually consequences.
    for (let i = 0; i < answers.length; i++) {
      const a = answers[i]!;
      if (a.errno <= 0) continue;
      const m = built.elems[i - 1]; // message 0 is the batch begin
      let elem = -1;
      if (m !== undefined && a.attrOffset >= 0) {
        for (let j = m.offsets.length - 1; j >= 0; j--) {
          if (m.offsets[j]! <= a.attrOffset) {
            elem = m.first + j;
            break;
          }
        }
      }
      throw new NftError(what, a.errno, a.detail, elem, elem >= 0 ? keyOf(elem) : null);
    }
  }

  /**
   * Every element of map `set` of `table` (a `NFT_MSG_GETSETELEM` dump;
   * restarted, up to 5 times, when the map changes during the dump).
   *
   * @throws {NftError} ENOENT when the table or map does not exist.
   */
  list(table: string, set: string): MapElem[] {
    const b = new NlBuilder(256);
    b.begin(nfnlType(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM), 0).nfgen(this.#family, 0);
    b.str(NFTA_SET_ELEM_LIST.TABLE, table).str(NFTA_SET_ELEM_LIST.SET, set).end();
    const msg = b.finish();
    const what = `list ${table}/${set}`;
    for (let attempt = 0;; attempt++) {
      const out: MapElem[] = [];
      try {
        this.#nl.dump(msg, (_type, dv, off, len) => {
          if (len < Nfgen.SIZE) throw new NetlinkParseError(`${what}: short reply`);
          decodeElemList(dv, off + Nfgen.SIZE, off + len, out);
        }, what);
        return out;
      } catch (e) {
        if (e instanceof NetlinkError) {
          if (e.errno === EINTR && attempt < 5) continue;
          throw new NftError(what, e.errno, e.detail, -1, null);
        }
        throw e;
      }
    }
  }

  /**
   * The ruleset generation (`NFTA_GEN_ID`): incremented by every committed
   * nf_tables transaction in this network namespace.
   */
  generation(): number {
    const msg = nfnlMessage(nfnlType(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN), 0, NFPROTO_UNSPEC, 0);
    let gen = -1;
    this.#nl.query(msg, (type, dv, off, len) => {
      if ((type & 0xff) !== NFT_MSG_NEWGEN || len < Nfgen.SIZE) return;
      const id = attrTable(dv, off + Nfgen.SIZE, off + len, NFTA_GEN.ID)[NFTA_GEN.ID];
      if (id !== undefined) gen = getBe32(dv, id);
    }, "read the nf_tables generation");
    if (gen < 0) throw new NetlinkParseError("The nf_tables generation answer had no NFTA_GEN_ID");
    return gen;
  }

  /** Closes the socket. Idempotent. */
  close(): void {
    this.#nl.close();
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The kernel refused an element operation. */
export class NftError extends NetlinkError {
  /** Index of the refused element in the caller's array, -1 when not known. */
  readonly element: number;
  /** The refused element's key, null when not known. */
  readonly key: Uint8Array | null;

  /**
   * @param what the operation; @param err positive errno; @param detail the
   * kernel's text; @param element the element's index; @param key its key.
   */
  constructor(what: string, err: number, detail: string, element: number, key: Uint8Array | null) {
    const which = element >= 0 && key !== null ? `element ${element} (key ${hex(key)})` : "";
    super(
      which === "" ? `Cannot ${what}` : `Cannot ${what}: ${which}`,
      err,
      -1,
      0,
      detail,
    );
    this.name = "NftError";
    this.element = element;
    this.key = key;
  }
}

/** Lower-case hex of `b`. */
export function hex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/**
 * Builds the element messages of one operation: as many `type` messages as
 * needed, each with at most {@linkcode MAX_ELEMENTS_BYTES} of elements.
 * Elements with a `data` carry it (NEW); without, keys only (DEL, DESTROY).
 * Exported for tests.
 *
 * @throws {RangeError} for an empty or over-long key or data.
 */
export function buildElemMessages(
  type: number,
  flags: number,
  family: number,
  table: string,
  set: string,
  count: number,
  elem: (i: number) => { key: Uint8Array; data?: Uint8Array },
): { msgs: Uint8Array[]; elems: MsgElems[] } {
  const msgs: Uint8Array[] = [];
  const elems: MsgElems[] = [];
  const b = new NlBuilder(Math.min(MAX_ELEMENTS_BYTES + 1024, 64 + count * 64));
  const head = (first: number) => {
    b.begin(nfnlType(NFNL_SUBSYS_NFTABLES, type), flags).nfgen(family, 0);
    b.str(NFTA_SET_ELEM_LIST.TABLE, table).str(NFTA_SET_ELEM_LIST.SET, set);
    b.nest(NFTA_SET_ELEM_LIST.ELEMENTS);
    elems.push({ first, offsets: [] });
  };
  const close = () => {
    b.endNest().end();
    msgs.push(b.finish());
  };
  head(0);
  for (let i = 0; i < count; i++) {
    const { key, data } = elem(i);
    checkValue(key, "key", i);
    if (data !== undefined) checkValue(data, "data", i);
    // LIST_ELEM + KEY nest + VALUE, and the same for data.
    const size = 3 * Nla.SIZE + align4(key.length) +
      (data === undefined ? 0 : 2 * Nla.SIZE + align4(data.length));
    if (b.nestLength + size > MAX_ELEMENTS_BYTES && elems.at(-1)!.offsets.length > 0) {
      close();
      head(i);
    }
    elems.at(-1)!.offsets.push(b.messageLength);
    b.nest(NFTA_LIST_ELEM);
    b.nest(NFTA_SET_ELEM.KEY).bytes(NFTA_DATA.VALUE, key).endNest();
    if (data !== undefined) b.nest(NFTA_SET_ELEM.DATA).bytes(NFTA_DATA.VALUE, data).endNest();
    b.endNest();
  }
  close();
  return { msgs, elems };
}

function checkValue(v: Uint8Array, what: string, i: number): void {
  if (v.length === 0 || v.length > MAX_VALUE_LEN) {
    throw new RangeError(`Element ${i}: ${what} of ${v.length} bytes (1-${MAX_VALUE_LEN} allowed)`);
  }
}

/**
 * Decodes the attributes of one `NFT_MSG_NEWSETELEM` message (after its
 * nfgenmsg) into `out`: each element's key and data (data empty for a set
 * without data; interval-end markers skipped). Exported for tests.
 *
 * @throws {NetlinkParseError} on malformed attributes.
 */
export function decodeElemList(dv: DataView, off: number, end: number, out: MapElem[]): void {
  const t = attrTable(dv, off, end, NFTA_SET_ELEM_LIST.SET_ID);
  const list = t[NFTA_SET_ELEM_LIST.ELEMENTS];
  if (list === undefined) return;
  for (const el of attrs(dv, list.off, list.off + list.len)) {
    if (el.type !== NFTA_LIST_ELEM) continue;
    const e = attrTable(dv, el.off, el.off + el.len, NFTA_SET_ELEM.EXPIRATION);
    const flags = e[NFTA_SET_ELEM.FLAGS];
    if (flags !== undefined && (getBe32(dv, flags) & NFT_SET_ELEM_INTERVAL_END) !== 0) continue;
    const key = dataValue(dv, e[NFTA_SET_ELEM.KEY]);
    if (key === null) throw new NetlinkParseError("Set element without NFTA_SET_ELEM_KEY value");
    out.push({ key, data: dataValue(dv, e[NFTA_SET_ELEM.DATA]) ?? new Uint8Array(0) });
  }
}

/** The NFTA_DATA_VALUE inside a nested nft_data attribute, or null. */
function dataValue(dv: DataView, a: { off: number; len: number } | undefined): Uint8Array | null {
  if (a === undefined) return null;
  const v = attrTable(dv, a.off, a.off + a.len, NFTA_DATA.VALUE)[NFTA_DATA.VALUE];
  return v === undefined ? null : getBytes(dv, v);
}
