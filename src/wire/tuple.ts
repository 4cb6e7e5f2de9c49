/**
 * The vocabulary of a session's addresses, shared by the roles, the data
 * paths, the table, the state file and the policy: the identity a request
 * names, the binding the gateway gives it, and the keys they are indexed
 * by. The names (`a`, `pa`, `X`, `px`, `R`, `p`, `G`, `Pg`) are those of the
 * packet walk in README.md ("How it works"). Addresses are host-order
 * unsigned 32-bit numbers, ports integers in 0..65535.
 *
 * @module
 */

import { formatIPv4 } from "./addr.ts";
import { protoIndex, protoName } from "./meta.ts";

/** What a request names: (proto, a, pa, X, px). One session per identity. */
export interface SessionIdentity {
  /** IP protocol: 1 ICMP, 6 TCP, 17 UDP. */
  proto: number;
  /** The host's (private) address and port; ICMP: the echo identifier. */
  a: number;
  pa: number;
  /** The remote peer; ICMP: `px` is 0. A mapping has `x = px = 0`. */
  x: number;
  px: number;
}

/** An identity with what the gateway gave it: the public pair `R:p` and the gateway port `Pg`. */
export interface SessionBinding extends SessionIdentity {
  r: number;
  p: number;
  pg: number;
}

/**
 * A key of an identity for maps and sets (a string: 97 bits do not fit a
 * number). Built to look up, never split back: keep the fields beside it.
 */
export function identityKey(s: SessionIdentity): string {
  return `${s.proto}/${s.a}/${s.pa}/${s.x}/${s.px}`;
}

/**
 * The LAN-side key (proto, a, Pg) as one number (50 bits): `Pg` is unique
 * per host and protocol, so it names one session on the LAN side, at the
 * gateway and on the host alike.
 */
export function lanKey(proto: number, a: number, pg: number): number {
  return protoIndex(proto) * 2 ** 48 + a * 65536 + pg;
}

/** `udp 10.0.0.11:40000 -> 198.51.100.10:7000 as 203.0.113.10:40000 (Pg 61234)`, for logs. */
export function describeSession(
  s: SessionIdentity & { r?: number; p?: number; pg?: number },
): string {
  return `${protoName(s.proto)} ${formatIPv4(s.a)}:${s.pa} -> ${formatIPv4(s.x)}:${s.px}` +
    (s.r !== undefined && s.p !== undefined && s.r !== 0 ? ` as ${formatIPv4(s.r)}:${s.p}` : "") +
    (s.pg ? ` (Pg ${s.pg})` : "");
}
