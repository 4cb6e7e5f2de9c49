/**
 * The BPF programs' shared layouts, mirrored from bpf/nat.h byte for byte
 * (tests/unit/bpf_objects_test.ts compares them with the BTF of the compiled
 * objects), and the entries dpm writes for a session.
 *
 * One entry of the map `dpm_nat` translates one direction of one flow: a
 * packet arriving from side `dir` whose own addresses, ports and protocol
 * equal the key leaves with the entry's (0 in an entry: keep the packet's).
 * A session is two entries that mirror each other: key K with value V, and
 * key reverse(V) with value reverse(K). Addresses are host-order numbers
 * here, as everywhere in dpm; the bytes are in network order, as in packets.
 *
 * The entries of each kind of session (G: the gateway's LAN address, a:pa
 * the host, X:px the remote, R:p the public pair, Pg the gateway port):
 *
 * ```
 * gateway, a driver's session   OUT a:pa -> G:Pg    => R:p -> X:px
 *                               IN  X:px -> R:p     => G:Pg -> a:pa
 * gateway, direct (PCP PEER)    OUT a:pa -> X:px    => R:p -> X:px
 *                               IN  X:px -> R:p     => X:px -> a:pa
 * gateway, mapping (wildcards)  OUT a:pa -> 0:0     => R:p -> keep     (NAT_F_WILDCARD)
 *                               IN  0:0 -> R:p      => keep -> a:pa    (NAT_F_WILDCARD)
 * host (claim 5)                OUT a:pa -> X:px    => a:pa -> G:Pg    (fast at once)
 *                               IN  G:Pg -> a:pa    => X:px -> a:pa    (fast at once)
 * ```
 *
 * @module
 */

import type { GatewaySession, HostSessionKey } from "../datapath.ts";
import { isMapping } from "../datapath.ts";
import { IPPROTO_ICMP } from "../../wire/meta.ts";

/** `enum nat_dir`: the side a packet comes from. */
export const NatDir = {
  /** From the private side (the LAN at the gateway; the host's own packets). */
  OUT: 1,
  /** From the outside (the WAN at the gateway; the gateway's packets at the host). */
  IN: 2,
} as const;
/** One of {@linkcode NatDir}. */
export type NatDir = (typeof NatDir)[keyof typeof NatDir];

/** `enum nat_flag`: bits of an entry's flags. */
export const NatFlag = {
  /** The stack forwarded the session LAN -> WAN (seen leaving by the WAN). */
  SEEN_OUT: 1 << 0,
  /** The stack forwarded the session WAN -> LAN (seen leaving by the LAN). */
  SEEN_IN: 1 << 1,
  /** Both: the fast path translates the session. */
  FAST: (1 << 0) | (1 << 1),
  /** A mapping's entry for every remote: never translates, flows are learned from it. */
  WILDCARD: 1 << 2,
  /** An exact pair a program learned from a wildcard (one remote of a mapping). */
  LEARNED: 1 << 3,
  /** A TCP FIN was translated in this direction. */
  FIN: 1 << 4,
  /** A TCP RST was translated in this direction. */
  RST: 1 << 5,
  /** Host: a flow the driver let go untranslated; its packets pass without being held. */
  PASS: 1 << 6,
} as const;

/** `struct nat_key` (16 bytes): saddr 0, daddr 4, sport 8, dport 10, proto 12, dir 13, pad 14. */
export const NatKeyLayout = {
  SADDR: 0,
  DADDR: 4,
  SPORT: 8,
  DPORT: 10,
  PROTO: 12,
  DIR: 13,
  PAD: 14,
  SIZE: 16,
} as const;

/**
 * `struct nat_entry` (56 bytes): saddr 0, daddr 4, sport 8, dport 10,
 * flags 12, packets 16, bytes 24, last_ns 32; then the programs' next-hop
 * cache (nh_ifindex 40, nh_at 44, nh_mtu 48, nh_dmac 50), which dpm writes
 * as zeros and never reads. 56, not more: with the kernel's element header
 * and the key, an entry then fits the kernel's 128-byte allocation size
 * (bpf/nat.h).
 */
export const NatEntryLayout = {
  SADDR: 0,
  DADDR: 4,
  SPORT: 8,
  DPORT: 10,
  FLAGS: 12,
  PACKETS: 16,
  BYTES: 24,
  LAST_NS: 32,
  NH_IFINDEX: 40,
  NH_AT: 44,
  NH_MTU: 48,
  NH_DMAC: 50,
  SIZE: 56,
} as const;

/**
 * `struct nat_config` (44 bytes): lan_ifindex 0, wan_ifindex 4 (host
 * order); lan_net 8, lan_mask 12, gateway 16, edge_lo 20, edge_hi 24
 * (network order); lan_mac 28, wan_mac 34 (the devices' MACs, which the
 * programs learn from the FIB: dpm writes zeros); lan_handoff 40,
 * wan_handoff 41 ({@linkcode NatHandoff}), pad 42 (two zero bytes).
 */
export const NatConfigLayout = {
  LAN_IFINDEX: 0,
  WAN_IFINDEX: 4,
  LAN_NET: 8,
  LAN_MASK: 12,
  GATEWAY: 16,
  EDGE_LO: 20,
  EDGE_HI: 24,
  LAN_MAC: 28,
  WAN_MAC: 34,
  LAN_HANDOFF: 40,
  WAN_HANDOFF: 41,
  PAD: 42,
  SIZE: 44,
} as const;

/**
 * `enum nat_handoff`: how the gateway's ingress programs hand a fast packet
 * to the way out. `XMIT`: `bpf_redirect` to the device's egress (its qdisc,
 * its egress programs, its driver). `PEER`: `bpf_redirect_peer`, straight
 * into the ingress of the device's peer in another network namespace (a
 * veth or netkit device's; docs/datapath.md, "Hand-off").
 */
export const NatHandoff = { XMIT: 0, PEER: 1 } as const;
/** A {@linkcode NatHandoff} value. */
export type NatHandoff = typeof NatHandoff[keyof typeof NatHandoff];

/**
 * `struct host_config` (24 bytes): lan_net 0, lan_mask 4 (network order),
 * pass_mark 8 (host order), gateway 12 (network order), alive_until_ns 16
 * (host order).
 */
export const HostConfigLayout = {
  LAN_NET: 0,
  LAN_MASK: 4,
  PASS_MARK: 8,
  GATEWAY: 12,
  ALIVE_UNTIL_NS: 16,
  SIZE: 24,
} as const;

/**
 * `struct held_hdr` (8 bytes, host order): len 0, gso_size 4, dir 6 (`NatDir`),
 * pad 7; the packet follows.
 */
export const HeldHdrLayout = { LEN: 0, GSO_SIZE: 4, DIR: 6, PAD: 7, SIZE: 8 } as const;

/** Addresses and ports of a packet (host order; 0 in an entry's: keep). */
export interface NatTuple {
  saddr: number;
  daddr: number;
  sport: number;
  dport: number;
}

/** A key: the packet as it arrives, and from which side. */
export interface NatKey extends NatTuple {
  proto: number;
  dir: NatDir;
}

/** An entry: what the packet becomes, and what the programs saw of it. */
export interface NatEntry {
  to: NatTuple;
  flags: number;
  packets: number;
  bytes: number;
  /**
   * `bpf_ktime_get_coarse_ns()` of the last packet counted: CLOCK_MONOTONIC
   * at tick resolution (compare with `clock_gettime(CLOCK_MONOTONIC)`); 0n before any.
   */
  lastNs: bigint;
}

/** A key and its entry. */
export interface NatRecord {
  key: NatKey;
  entry: NatEntry;
}

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Writes `k` at `off` of `dv`. */
export function writeKey(dv: DataView, off: number, k: NatKey): void {
  const L = NatKeyLayout;
  dv.setUint32(off + L.SADDR, k.saddr, false);
  dv.setUint32(off + L.DADDR, k.daddr, false);
  dv.setUint16(off + L.SPORT, k.sport, false);
  dv.setUint16(off + L.DPORT, k.dport, false);
  dv.setUint8(off + L.PROTO, k.proto);
  dv.setUint8(off + L.DIR, k.dir);
  dv.setUint16(off + L.PAD, 0, false);
}

/** Reads the key at `off` of `dv`. */
export function readKey(dv: DataView, off: number): NatKey {
  const L = NatKeyLayout;
  return {
    saddr: dv.getUint32(off + L.SADDR, false),
    daddr: dv.getUint32(off + L.DADDR, false),
    sport: dv.getUint16(off + L.SPORT, false),
    dport: dv.getUint16(off + L.DPORT, false),
    proto: dv.getUint8(off + L.PROTO),
    dir: dv.getUint8(off + L.DIR) as NatDir,
  };
}

/** Writes `e` at `off` of `dv` (counters included: dpm writes zeros). */
export function writeEntry(dv: DataView, off: number, e: NatEntry): void {
  const L = NatEntryLayout;
  dv.setUint32(off + L.SADDR, e.to.saddr, false);
  dv.setUint32(off + L.DADDR, e.to.daddr, false);
  dv.setUint16(off + L.SPORT, e.to.sport, false);
  dv.setUint16(off + L.DPORT, e.to.dport, false);
  dv.setUint32(off + L.FLAGS, e.flags, LE);
  dv.setBigUint64(off + L.PACKETS, BigInt(e.packets), LE);
  dv.setBigUint64(off + L.BYTES, BigInt(e.bytes), LE);
  dv.setBigUint64(off + L.LAST_NS, e.lastNs, LE);
  for (let i = L.NH_IFINDEX; i < L.SIZE; i++) dv.setUint8(off + i, 0); // no next hop cached
}

/** Reads the entry at `off` of `dv`. */
export function readEntry(dv: DataView, off: number): NatEntry {
  const L = NatEntryLayout;
  return {
    to: {
      saddr: dv.getUint32(off + L.SADDR, false),
      daddr: dv.getUint32(off + L.DADDR, false),
      sport: dv.getUint16(off + L.SPORT, false),
      dport: dv.getUint16(off + L.DPORT, false),
    },
    flags: dv.getUint32(off + L.FLAGS, LE),
    packets: Number(dv.getBigUint64(off + L.PACKETS, LE)),
    bytes: Number(dv.getBigUint64(off + L.BYTES, LE)),
    lastNs: dv.getBigUint64(off + L.LAST_NS, LE),
  };
}

/** The key's bytes. */
export function keyBytes(k: NatKey): Uint8Array {
  const b = new Uint8Array(NatKeyLayout.SIZE);
  writeKey(new DataView(b.buffer), 0, k);
  return b;
}

/** What the gateway's programs know of it (`dpm_cfg`); addresses host order. */
export interface GatewayConfig {
  lanIfindex: number;
  wanIfindex: number;
  /** The LAN prefix: the LAN's sources, never the WAN's. */
  lanNet: number;
  lanMask: number;
  /** G: never a LAN packet's source. */
  gateway: number;
  /** The prefix's network and broadcast addresses (0 when it has none). */
  edges: [number, number];
  /**
   * How fast packets are handed to the LAN and the WAN device
   * ({@linkcode NatHandoff}).
   * @default {NatHandoff.XMIT} for both
   */
  lanHandoff?: NatHandoff;
  wanHandoff?: NatHandoff;
}

/** The `dpm_cfg` record of a gateway. */
export function configBytes(c: GatewayConfig): Uint8Array {
  const L = NatConfigLayout;
  const b = new Uint8Array(L.SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(L.LAN_IFINDEX, c.lanIfindex, LE);
  dv.setUint32(L.WAN_IFINDEX, c.wanIfindex, LE);
  dv.setUint32(L.LAN_NET, c.lanNet, false);
  dv.setUint32(L.LAN_MASK, c.lanMask, false);
  dv.setUint32(L.GATEWAY, c.gateway, false);
  dv.setUint32(L.EDGE_LO, c.edges[0], false);
  dv.setUint32(L.EDGE_HI, c.edges[1], false);
  dv.setUint8(L.LAN_HANDOFF, c.lanHandoff ?? NatHandoff.XMIT);
  dv.setUint8(L.WAN_HANDOFF, c.wanHandoff ?? NatHandoff.XMIT);
  return b;
}

/** The host's configuration record (`dpm_hcfg`). */
export interface HostConfig {
  /** The LAN prefix (host order): destinations inside it are never held. */
  lanNet: number;
  lanMask: number;
  /** The mark of the packets the driver sends back out. */
  passMark: number;
  /** G: ICMP echo replies and errors from it go to the driver. */
  gateway: number;
  /** The driver's heartbeat: CLOCK_MONOTONIC ns until which packets are held; 0n: never. */
  aliveUntilNs: bigint;
}

/** The `dpm_hcfg` record's bytes. */
export function hostConfigBytes(c: HostConfig): Uint8Array {
  const L = HostConfigLayout;
  const b = new Uint8Array(L.SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(L.LAN_NET, c.lanNet, false);
  dv.setUint32(L.LAN_MASK, c.lanMask, false);
  dv.setUint32(L.PASS_MARK, c.passMark, LE);
  dv.setUint32(L.GATEWAY, c.gateway, false);
  dv.setBigUint64(L.ALIVE_UNTIL_NS, c.aliveUntilNs, LE);
  return b;
}

/** A held packet's record: its link-layer frame, GSO segment size, and way. */
export interface HeldRecord {
  frame: Uint8Array;
  gsoSize: number;
  /** True when it was leaving the host, false when arriving. */
  outbound: boolean;
}

/** Reads a `dpm_held` record (header and packet); null when it is short. */
export function readHeld(data: Uint8Array): HeldRecord | null {
  const L = HeldHdrLayout;
  if (data.length < L.SIZE) return null;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const len = dv.getUint32(L.LEN, LE);
  if (L.SIZE + len > data.length) return null;
  return {
    frame: data.subarray(L.SIZE, L.SIZE + len),
    gsoSize: dv.getUint16(L.GSO_SIZE, LE),
    outbound: dv.getUint8(L.DIR) !== NatDir.IN,
  };
}

/** A fresh entry: rewrite to `to`, with `flags`, nothing counted. */
function fresh(to: NatTuple, flags: number): NatEntry {
  return { to, flags, packets: 0, bytes: 0, lastNs: 0n };
}

const tuple = (saddr: number, sport: number, daddr: number, dport: number): NatTuple => ({
  saddr,
  sport,
  daddr,
  dport,
});

/**
 * The gateway's two entries of a session (see the module doc), none for an
 * ICMP session (the programs pass ICMP to the stack). Hairpinned sessions
 * (X a pool address) must stay off the map: the caller leaves them to the
 * queue translator, as on the kernel path. `g`: the gateway's LAN address.
 */
export function gatewayRecords(s: GatewaySession, g: number): NatRecord[] {
  if (s.proto === IPPROTO_ICMP) return [];
  const { proto, a, pa, x, px, r, p } = s;
  if (isMapping(s)) {
    return [
      {
        key: { proto, dir: NatDir.OUT, ...tuple(a, pa, 0, 0) },
        entry: fresh(tuple(r, p, 0, 0), NatFlag.WILDCARD),
      },
      {
        key: { proto, dir: NatDir.IN, ...tuple(0, 0, r, p) },
        entry: fresh(tuple(0, 0, a, pa), NatFlag.WILDCARD),
      },
    ];
  }
  if (s.direct === true) {
    return [
      {
        key: { proto, dir: NatDir.OUT, ...tuple(a, pa, x, px) },
        entry: fresh(tuple(r, p, x, px), 0),
      },
      {
        key: { proto, dir: NatDir.IN, ...tuple(x, px, r, p) },
        entry: fresh(tuple(x, px, a, pa), 0),
      },
    ];
  }
  return [
    {
      key: { proto, dir: NatDir.OUT, ...tuple(a, pa, g, s.pg) },
      entry: fresh(tuple(r, p, x, px), 0),
    },
    {
      key: { proto, dir: NatDir.IN, ...tuple(x, px, r, p) },
      entry: fresh(tuple(g, s.pg, a, pa), 0),
    },
  ];
}

/**
 * The host's two entries of a session (claim 5), fast at once: the host's
 * own firewall saw the application's packets, and nothing on the host
 * forwards. None for ICMP.
 */
export function hostRecords(k: HostSessionKey): NatRecord[] {
  if (k.proto === IPPROTO_ICMP) return [];
  const { proto, a, pa, x, px, g, pg } = k;
  return [
    {
      key: { proto, dir: NatDir.OUT, ...tuple(a, pa, x, px) },
      entry: fresh(tuple(a, pa, g, pg), NatFlag.FAST),
    },
    {
      key: { proto, dir: NatDir.IN, ...tuple(g, pg, a, pa) },
      entry: fresh(tuple(x, px, a, pa), NatFlag.FAST),
    },
  ];
}

/**
 * The key of the other direction of the flow that `k` and `e` describe:
 * reverse(e's translation of k), from the other side.
 */
export function mirrorKey(k: NatKey, e: NatEntry): NatKey {
  const t = e.to;
  return {
    proto: k.proto,
    dir: k.dir === NatDir.OUT ? NatDir.IN : NatDir.OUT,
    saddr: t.daddr || k.daddr,
    daddr: t.saddr || k.saddr,
    sport: t.dport || k.dport,
    dport: t.sport || k.sport,
  };
}

/**
 * True when `r` is an entry the programs learned for mapping `m` (one
 * remote's flow, either direction): what goes with the mapping.
 */
export function learnedOf(m: GatewaySession, r: NatRecord): boolean {
  const { key: k, entry: e } = r;
  if ((e.flags & NatFlag.LEARNED) === 0 || k.proto !== m.proto) return false;
  if (k.dir === NatDir.OUT) {
    return k.saddr === m.a && k.sport === m.pa && e.to.saddr === m.r && e.to.sport === m.p;
  }
  return k.daddr === m.r && k.dport === m.p && e.to.daddr === m.a && e.to.dport === m.pa;
}
