/**
 * The driver's clock rules in one place: how long leases, refusals and
 * fall-backs last on the host, when a session is renewed, asked again or
 * given back, each with the RFC it follows. The lease client (`leases.ts`)
 * reads only these.
 *
 * @module
 */

import { IPPROTO_ICMP, IPPROTO_UDP } from "../wire/packet.ts";

/** How long a refusal or a bypass is remembered for a session that stays quiet. */
export const NEGATIVE_IDLE_MS = 30_000;

/** RFC 5382 REQ-5: an idle established TCP mapping lives at least 2 h 4 min. */
export const TCP_IDLE_MS = 7440_000;

/** When a refusal that may pass (quota, resources, rate limit) is asked again. */
export const RETRY_SOON_MS = 5_000;

/** Times an unanswered release is asked again. */
export const RELEASE_TRIES = 3;

/**
 * How long a closed TCP session stays after its last packet: RFC 5382 REQ-5
 * (transitory mappings >= 4 min) and RFC 7857 section 2.2 (keep 4 min after an RST).
 */
export const TCP_CLOSE_LINGER_MS = 240_000;

/** How often the mappings of unprivileged users are checked against their ports' owners. */
export const ORPHAN_CHECK_MS = 5_000;

/**
 * The shortest idle time before an idle session is given back, by protocol
 * (RFC 4787 REQ-5: UDP 2 min; RFC 5508 REQ-2: ICMP query 60 s).
 */
export const MIN_IDLE_MS: Readonly<Record<number, number>> = {
  [IPPROTO_UDP]: 120_000,
  [IPPROTO_ICMP]: 60_000,
};

/** When a fallen-back session is reserved again: 1 s, doubling to 30 s, jittered. */
export function bypassRetryMs(retries: number): number {
  return Math.min(30_000, 1000 * 2 ** retries) * (0.75 + Math.random() * 0.5);
}

/**
 * When a session granted `lifetime` seconds at `now` is renewed: at two
 * thirds of the lifetime, but at least once a minute so a server restart is
 * noticed soon, and never later than 1 s before expiry.
 */
export function renewAt(now: number, lifetime: number): number {
  const ms = lifetime * 1000;
  return now + Math.max(500, Math.min((2 * ms) / 3, 60_000, ms - 1000));
}
