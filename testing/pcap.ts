/**
 * Reads what `tcpdump -w` writes (the classic pcap format, Ethernet frames)
 * and decodes the little the HA measurements need from each frame: the
 * MACs, the IPv4 addresses, the TCP/UDP ports and TCP flags, the ICMP type,
 * and the start of the payload. Captures are cut at the snap length, so
 * nothing here insists that a packet be whole; a frame too short for its
 * own headers is skipped, not an error.
 *
 * Format (https://wiki.wireshark.org/Development/LibpcapFileFormat): a
 * 24-byte file header (magic 0xa1b2c3d4 for microsecond or 0xa1b23c4d for
 * nanosecond timestamps, in the writer's byte order; link type at offset
 * 20), then records of a 16-byte header (seconds, sub-seconds, captured
 * length, original length) and the captured bytes.
 *
 * @module
 */

/** One captured frame. */
export interface PcapRecord {
  /** Capture time, ms since the epoch (sub-ms kept). */
  ts: number;
  /** The captured bytes (at most the snap length). */
  data: Uint8Array;
  /** The frame's length on the wire. */
  origLen: number;
}

/** The link type of Ethernet captures. */
export const LINKTYPE_ETHERNET = 1;

/**
 * The records of a pcap file, in file order.
 *
 * @throws {SyntaxError} when the file header is not pcap's or the link type is not Ethernet.
 */
export function* readPcap(bytes: Uint8Array): Generator<PcapRecord> {
  if (bytes.length < 24) throw new SyntaxError(`Cannot read a pcap of ${bytes.length} bytes`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let little: boolean;
  let nano: boolean;
  const magicLE = dv.getUint32(0, true);
  if (magicLE === 0xa1b2c3d4 || magicLE === 0xa1b23c4d) {
    little = true;
    nano = magicLE === 0xa1b23c4d;
  } else {
    const magicBE = dv.getUint32(0, false);
    if (magicBE !== 0xa1b2c3d4 && magicBE !== 0xa1b23c4d) {
      throw new SyntaxError(`Cannot read pcap magic 0x${magicLE.toString(16)}`);
    }
    little = false;
    nano = magicBE === 0xa1b23c4d;
  }
  const link = dv.getUint32(20, little);
  if (link !== LINKTYPE_ETHERNET) throw new SyntaxError(`Cannot read pcap link type ${link}`);
  let off = 24;
  while (off + 16 <= bytes.length) {
    const sec = dv.getUint32(off, little);
    const sub = dv.getUint32(off + 4, little);
    const incl = dv.getUint32(off + 8, little);
    const orig = dv.getUint32(off + 12, little);
    off += 16;
    if (off + incl > bytes.length) return; // Cut short (the writer was killed mid-record).
    yield {
      ts: sec * 1000 + (nano ? sub / 1e6 : sub / 1e3),
      data: bytes.subarray(off, off + incl),
      origLen: orig,
    };
    off += incl;
  }
}

/** What {@linkcode decodeFrame} finds in an IPv4 TCP, UDP or ICMP frame. */
export interface FrameInfo {
  /** Source MAC, "aa:bb:cc:dd:ee:ff". */
  srcMac: string;
  dstMac: string;
  /** 6, 17 or 1. */
  proto: number;
  /** Dotted quads. */
  src: string;
  dst: string;
  /** 0 for ICMP. */
  sport: number;
  dport: number;
  /** TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10), else 0. */
  tcpFlags: number;
  /** ICMP type and code, else -1. */
  icmpType: number;
  icmpCode: number;
  /** The captured start of the L4 payload (TCP/UDP), empty for ICMP. */
  payload: Uint8Array;
}

/** TCP flag bits. */
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

const mac = (b: Uint8Array, o: number) =>
  [...b.subarray(o, o + 6)].map((x) => x.toString(16).padStart(2, "0")).join(":");
const ip = (b: Uint8Array, o: number) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

/**
 * Decodes an Ethernet frame carrying IPv4 TCP, UDP or ICMP (one VLAN tag
 * allowed); null for anything else or a frame cut before its L4 header.
 */
export function decodeFrame(f: Uint8Array): FrameInfo | null {
  if (f.length < 14) return null;
  let type = (f[12]! << 8) | f[13]!;
  let l3 = 14;
  if (type === 0x8100 && f.length >= 18) {
    type = (f[16]! << 8) | f[17]!;
    l3 = 18;
  }
  if (type !== 0x0800 || f.length < l3 + 20) return null;
  if (f[l3]! >> 4 !== 4) return null;
  const ihl = (f[l3]! & 15) * 4;
  const proto = f[l3 + 9]!;
  const l4 = l3 + ihl;
  const fragOff = ((f[l3 + 6]! & 0x1f) << 8) | f[l3 + 7]!;
  if (ihl < 20 || fragOff !== 0) return null;
  const base = {
    srcMac: mac(f, 6),
    dstMac: mac(f, 0),
    proto,
    src: ip(f, l3 + 12),
    dst: ip(f, l3 + 16),
  };
  if (proto === 6) {
    if (f.length < l4 + 20) return null;
    const doff = (f[l4 + 12]! >> 4) * 4;
    return {
      ...base,
      sport: (f[l4]! << 8) | f[l4 + 1]!,
      dport: (f[l4 + 2]! << 8) | f[l4 + 3]!,
      tcpFlags: f[l4 + 13]!,
      icmpType: -1,
      icmpCode: -1,
      payload: f.subarray(Math.min(f.length, l4 + doff)),
    };
  }
  if (proto === 17) {
    if (f.length < l4 + 8) return null;
    return {
      ...base,
      sport: (f[l4]! << 8) | f[l4 + 1]!,
      dport: (f[l4 + 2]! << 8) | f[l4 + 3]!,
      tcpFlags: 0,
      icmpType: -1,
      icmpCode: -1,
      payload: f.subarray(l4 + 8),
    };
  }
  if (proto === 1) {
    if (f.length < l4 + 2) return null;
    return {
      ...base,
      sport: 0,
      dport: 0,
      tcpFlags: 0,
      icmpType: f[l4]!,
      icmpCode: f[l4 + 1]!,
      payload: new Uint8Array(0),
    };
  }
  return null;
}

/** An ARP packet: who claims which address (a gratuitous ARP has sender = target). */
export interface ArpInfo {
  /** 1 request, 2 reply. */
  op: number;
  senderMac: string;
  senderIp: string;
  targetIp: string;
}

/** Decodes an Ethernet ARP frame for IPv4 over Ethernet; null for anything else. */
export function decodeArp(f: Uint8Array): ArpInfo | null {
  if (f.length < 42 || f[12] !== 0x08 || f[13] !== 0x06) return null;
  if (f[14] !== 0 || f[15] !== 1 || f[16] !== 0x08 || f[17] !== 0 || f[18] !== 6 || f[19] !== 4) {
    return null;
  }
  return {
    op: (f[20]! << 8) | f[21]!,
    senderMac: mac(f, 22),
    senderIp: ip(f, 28),
    targetIp: ip(f, 38),
  };
}
