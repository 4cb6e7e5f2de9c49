/**
 * Builds ICMP errors that dpm itself sends: the driver tells a local
 * application that its session was refused (destination unreachable, code 13
 * "communication administratively prohibited", RFC 1812 §5.2.7.1) instead of
 * letting it time out.
 *
 * @module
 */

import { finish, sum16 } from "./checksum.ts";
import { type PacketInfo, write16, write32 } from "./packet.ts";

/** Bytes of the offending datagram quoted after its IP header (RFC 792: at least 8). */
const QUOTE_L4 = 8;

/**
 * Returns an IPv4 ICMP error about `pkt` (parsed into `info`), addressed
 * from the packet's destination to its source, so that the sender's kernel
 * matches it to the sending socket. Null when `pkt` is itself an ICMP error.
 */
export function buildIcmpError(
  pkt: Uint8Array,
  info: PacketInfo,
  type: number,
  code: number,
): Uint8Array | null {
  if (info.icmpError) return null; // never an error about an error (RFC 1122 §3.2.2)
  const quoted = Math.min(info.len, info.ihl + QUOTE_L4);
  const out = new Uint8Array(20 + 8 + quoted);
  out[0] = 0x45;
  write16(out, 2, out.length);
  out[8] = 64; // TTL
  out[9] = 1; // ICMP
  write32(out, 12, info.dst);
  write32(out, 16, info.src);
  write16(out, 10, finish(sum16(out, 0, 20)));
  out[20] = type;
  out[21] = code;
  out.set(pkt.subarray(0, quoted), 28);
  write16(out, 22, finish(sum16(out, 20, out.length - 20)));
  return out;
}
