/**
 * Lists the tc filters of an interface's clsact hook over rtnetlink
 * (`RTM_GETTFILTER` dump), with the program id of each `bpf` filter: what
 * `tc filter show dev X ingress` prints. dpm uses it to find its own
 * programs after a restart (the filter's program id leads to the program,
 * and from there to its maps, with no pin in a BPF filesystem), to check
 * they are still attached, and to tell whether anything else uses the
 * clsact qdisc before it removes it.
 *
 * Requires `--allow-ffi`; no root needed to read.
 *
 * @module
 */

import { HOST_LITTLE_ENDIAN as LE } from "./libc.ts";
import { attrTable, getStr, getU32, nested, NetlinkSocket, NlBuilder } from "./netlink.ts";

/** `NETLINK_ROUTE` */
const NETLINK_ROUTE = 0;
/** `RTM_NEWTFILTER` (a dump answer), `RTM_GETTFILTER` (the request). */
const RTM_NEWTFILTER = 44;
const RTM_GETTFILTER = 46;
/** `struct tcmsg`: family, pad, pad, ifindex, handle, parent, info (20 bytes). */
const TCMSG_SIZE = 20;
/** `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)` and `..._EGRESS`: the clsact hooks' parents. */
export const CLSACT_INGRESS = 0xfffffff2;
export const CLSACT_EGRESS = 0xfffffff3;
// Attributes (linux/rtnetlink.h, linux/pkt_cls.h).
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TCA_BPF_NAME = 7;
const TCA_BPF_ID = 11;

/** One filter of a hook. */
export interface TcFilter {
  handle: number;
  /** The priority (`pref` in `tc filter show`). */
  priority: number;
  /** `bpf`, `u32`, `flower`... */
  kind: string;
  /** A `bpf` filter's program id; 0 otherwise. */
  progId: number;
  /** A `bpf` filter's name, as its attacher gave it (libbpf: `prog_name:[id]`); "" otherwise. */
  name: string;
}

/**
 * The filters at clsact `parent` ({@linkcode CLSACT_INGRESS} or
 * {@linkcode CLSACT_EGRESS}) of interface `ifindex`, in the current network
 * namespace; empty when there is no clsact qdisc.
 */
export function listTcFilters(ifindex: number, parent: number): TcFilter[] {
  const hdr = new Uint8Array(TCMSG_SIZE);
  const dv = new DataView(hdr.buffer);
  dv.setInt32(4, ifindex, LE);
  dv.setUint32(12, parent, LE);
  const msg = new NlBuilder(64).begin(RTM_GETTFILTER, 0).raw(hdr).end().finish();
  const out: TcFilter[] = [];
  const nl = NetlinkSocket.open(NETLINK_ROUTE, { rcvbuf: 1 << 20, sndbuf: 1 << 16 });
  try {
    nl.dump(msg, (type, m, off, len) => {
      if (type !== RTM_NEWTFILTER || len < TCMSG_SIZE) return;
      const handle = m.getUint32(off + 8, LE);
      const info = m.getUint32(off + 16, LE);
      const t = attrTable(m, off + TCMSG_SIZE, off + len, TCA_OPTIONS);
      // The dump names each (priority, protocol) chain head once without a handle.
      if (handle === 0 || !t[TCA_KIND]) return;
      let progId = 0;
      let name = "";
      const kind = getStr(m, t[TCA_KIND]);
      if (kind === "bpf" && t[TCA_OPTIONS]) {
        for (const a of nested(m, t[TCA_OPTIONS])) {
          if (a.type === TCA_BPF_ID) progId = getU32(m, a);
          else if (a.type === TCA_BPF_NAME) name = getStr(m, a);
        }
      }
      out.push({ handle, priority: info >>> 16, kind, progId, name });
    }, `listing the tc filters of interface ${ifindex}`);
  } finally {
    nl.close();
  }
  return out;
}
