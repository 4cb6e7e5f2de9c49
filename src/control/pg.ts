/**
 * Who picks which gateway port `Pg` (the gateway's LAN-side port of a
 * session, claim 5), out of `--gateway-ports` (the same range on the server
 * and on every driver).
 *
 * A driver speaking version 3 of the protocol does not wait for the server
 * to name `Pg`: it proposes one for a new session, translates the session's
 * first packet to `G:Pg` at once and lets it go, and the gateway holds that
 * packet until the exchange that names the remote has granted the session
 * (docs/protocol.md, "Version 3"). A proposal must never be a port the
 * server gave to another session of the same host that the driver does not
 * know of (a PCP PEER session, a counter-offer still on its way), or the
 * held packet would meet that session's translation. So the range is cut in
 * two shares: the upper three quarters are the drivers' (their proposals
 * come only from there), the lower quarter the server's own choices (PCP
 * PEER, counter-offers, requests without a proposal). A version-2 driver
 * never proposes; the server may give it a port anywhere in the range.
 *
 * Three quarters, not half: a host opening 3,000 UDP sessions at once
 * (the burst of `docs/performance.md`) needs 3,000 proposals of one
 * protocol, and the default range (61000-65535, 4,536 ports) gives the
 * drivers 3,402 of them and the server 1,134.
 *
 * @module
 */

/** The first port of the drivers' share of `range` (`[lo, hi]`, inclusive). */
export function driverShareStart(range: readonly [number, number]): number {
  const [lo, hi] = range;
  return Math.min(hi, lo + Math.ceil((hi - lo + 1) / 4));
}

/** The drivers' share of `range`: `[first, last]`. */
export function driverShare(range: readonly [number, number]): [number, number] {
  return [driverShareStart(range), range[1]];
}
