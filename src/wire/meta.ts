/**
 * The contract between a packet source (the netfilter queue, a test) and a
 * packet handler (the roles' translators), one definition each: what the
 * handler decides ({@linkcode Verdict}), what the kernel tells about a packet
 * besides its bytes ({@linkcode Meta}), and the IP protocols dpm handles
 * with their names.
 *
 * Pure constants: imported by `linux/nfqueue.ts` below and by the roles above.
 *
 * @module
 */

/** What a packet handler decided. */
export const Verdict = {
  /** Discard the packet. */
  DROP: 0,
  /** Let the packet continue unchanged. */
  ACCEPT: 1,
  /** The handler rewrote bytes in place (same length): accept the new bytes. */
  MODIFIED: 2,
  /**
   * No verdict now: the handler copied what it needs and gives the verdict
   * later (the driver holding a new session's first packets until the grant).
   */
  HOLD: 3,
} as const;

/** One of {@linkcode Verdict}'s values. */
export type VerdictValue = typeof Verdict[keyof typeof Verdict];

/**
 * Packet meta bits a handler gets with each packet (the queue's
 * `NFQA_SKB_INFO`, whose bit values these are).
 */
export const Meta = {
  /**
   * The packet is CHECKSUM_PARTIAL: its TCP/UDP checksum field holds only the
   * pseudo-header sum (`NFQA_SKB_CSUMNOTREADY`), so a rewrite recomputes it.
   */
  PARTIAL_CHECKSUM: 1,
  /** The packet is a GSO/GRO super-packet, longer than the MTU (`NFQA_SKB_GSO`). */
  GSO: 2,
  /** The device did not verify the checksum (informational). */
  CHECKSUM_NOT_VERIFIED: 4,
  /**
   * dpm's own bit, above the kernel's: the data path's maps had no session
   * for this first packet of a new flow to a gateway port of the drivers'
   * share (the kernel path's hold rule). It went ahead of its request: the
   * server holds it until the request is granted (`server/held.ts`).
   */
  MISSED: 1 << 16,
} as const;

/** IP protocol numbers dpm translates. */
export const IPPROTO_ICMP = 1;
/** IP protocol number of TCP. */
export const IPPROTO_TCP = 6;
/** IP protocol number of UDP. */
export const IPPROTO_UDP = 17;

/** The name of a protocol dpm handles ("tcp", "udp", "icmp"), or its number as text. */
export function protoName(proto: number): string {
  return proto === IPPROTO_TCP
    ? "tcp"
    : proto === IPPROTO_UDP
    ? "udp"
    : proto === IPPROTO_ICMP
    ? "icmp"
    : String(proto);
}

/** The number of a protocol name dpm handles, or undefined. */
export function protoNumber(name: string): number | undefined {
  return name === "tcp"
    ? IPPROTO_TCP
    : name === "udp"
    ? IPPROTO_UDP
    : name === "icmp"
    ? IPPROTO_ICMP
    : undefined;
}

/**
 * The index of a protocol in per-protocol arrays and keys: ICMP 0, TCP 1,
 * UDP 2; -1 for any other. The one index scheme of the project.
 */
export function protoIndex(proto: number): number {
  return proto === IPPROTO_UDP ? 2 : proto === IPPROTO_TCP ? 1 : proto === IPPROTO_ICMP ? 0 : -1;
}
