/**
 * The standby's guard (docs/ha.md, "The standby's guard"): while this box
 * is not active, packets that reach it for G, for the pool or for the
 * LAN's hosts from the WAN and would open a conntrack of their own
 * (`ct state new`) are dropped before the conntrack is confirmed (an
 * nftables table of its own, `dpm_ha_guard`, prerouting at mangle
 * priority, after conntrack's lookup), and each drop is counted by the
 * rule. Packets of a conntrack the kernel holds (a replica, or this box's
 * own from when it was active) go on as before: just after a release, the
 * ones still sent here (ARP caches) are translated by those conntracks and
 * delivered, not lost.
 *
 * Why: such packets are strays (the router's or the hosts' ARP caches still
 * pointing here just after a release, a switch flooding frames while it
 * learns a returning port, replies the bpf programs rewrote toward a LAN
 * whose link is down). Let through, they are forwarded back out (leaks:
 * the analysis's "misrouted") and each leaves a conntrack of this box's
 * own in the kernel (a dropped packet's conntrack is never confirmed, so
 * none is), which holds a tuple the active's replica needs: the
 * replica's insertion fails (conntrackd's "inject failed"), or a new
 * conntrack for the same session gets another port from the kernel's NAT
 * (clash avoidance), and the session leaves from a wrong pair once this
 * box takes over again. The guard is lifted in the takeover's claim (with
 * the addresses, before the gratuitous ARPs bring traffic) and put back at
 * the release (after the addresses are gone); stopping removes it.
 *
 * A second rule drops what would leave by the WAN toward the LAN prefix
 * (a box whose LAN link is down translates late replies through its
 * conntracks and, with no LAN route, routes them out of the WAN: leaked
 * toward private addresses, the rig's "misrouted").
 *
 * Pure: `run.ts` loads the text (`nft -f`).
 *
 * On the bpf path the programs act before netfilter: what they redirect
 * out of an interface never meets the guard (what they pass up does).
 *
 * @module
 */

import { formatCidr, formatIPv4 } from "../wire/addr.ts";

/** The guard's nftables table (`ip` family). */
export const GUARD_TABLE = "dpm_ha_guard";

/** What the guard keeps out. */
export interface GuardScope {
  lanIf: string;
  wanIf: string;
  /** G, host order. */
  g: number;
  /** The LAN prefix (G's), network address and length. */
  lan: { addr: number; len: number };
  /** The pool, host order. */
  pool: readonly number[];
}

/** The guard's ruleset: the table replaced (on) or deleted (off), in one transaction. Pure. */
export function guardRuleset(on: boolean, s: GuardScope): string {
  const reset = `table ip ${GUARD_TABLE}\ndelete table ip ${GUARD_TABLE}\n`;
  if (!on) return reset;
  const pool = s.pool.map(formatIPv4).join(", ");
  const q = (n: string) => JSON.stringify(n);
  return reset + [
    `table ip ${GUARD_TABLE} {`,
    `  chain pre {`,
    `    type filter hook prerouting priority mangle; policy accept;`,
    `    ct state != new accept`,
    `    iifname ${q(s.wanIf)} ip daddr { ${pool} } counter drop comment "pool, standby"`,
    `    iifname ${q(s.wanIf)} ip daddr ${formatCidr(s.lan)} counter drop comment "LAN, standby"`,
    `    iifname ${q(s.lanIf)} ip daddr ${formatIPv4(s.g)} counter drop comment "G, standby"`,
    `  }`,
    `  chain leak {`,
    `    type filter hook forward priority filter; policy accept;`,
    `    oifname ${q(s.wanIf)} ip daddr ${
      formatCidr(s.lan)
    } counter drop comment "LAN via the WAN"`,
    `  }`,
    `}`,
  ].join("\n") + "\n";
}
