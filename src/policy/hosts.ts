/**
 * Who may ask the gateway for anything: a unicast host of the LAN, never
 * the gateway itself. dpm's protocol, PCP and NAT-PMP all start with this
 * check (`isHost`), before they decode a request.
 *
 * Why it matters: the gateway accepts packets that carry its own addresses
 * as source (`accept_local`, needed by the translator: docs/datapath.md),
 * so a LAN host can forge a datagram from G. A mapping "for G" would point
 * the public side at the gateway's own LAN-only services (its sshd, its DNS
 * resolver); one for the prefix's broadcast address at every host. The
 * kernel drops such sources first (the `antispoof` chain, `iptables
 * DPM-SRV-PRE`); this is the same rule where the requests are decided.
 *
 * @module
 */

import { type Cidr, cidrContains, formatIPv4, prefixMask } from "../wire/addr.ts";

/** Options of {@linkcode LanHosts}. */
export interface LanHostsOptions {
  /** The LAN prefix; null: any unicast address (the control plane alone, in tests). */
  lan: Cidr | null;
  /** The gateway's LAN address G. */
  gateway: number;
  /** The public pool (the gateway's too, on the WAN side or not). */
  pool: readonly number[];
}

/** Decides whether a source address is a unicast LAN host (see the module documentation). */
export class LanHosts {
  readonly #lan: Cidr | null;
  readonly #gateway: number;
  readonly #pool: ReadonlySet<number>;
  #local: ReadonlySet<number> = new Set();

  constructor(o: LanHostsOptions) {
    this.#lan = o.lan;
    this.#gateway = o.gateway;
    this.#pool = new Set(o.pool);
  }

  /** The gateway's own addresses as the kernel knows them now (`readLocalAddresses`). */
  setLocal(addrs: ReadonlySet<number>): void {
    this.#local = addrs;
  }

  /** True when `a` is a unicast LAN host and not the gateway. */
  isHost(a: number): boolean {
    return this.why(a) === null;
  }

  /** Why `a` is not a LAN host ("the gateway's own address", ...), or null when it is one. */
  why(a: number): string | null {
    a = a >>> 0;
    if (a === 0 || a >>> 24 === 127 || a >>> 28 >= 14) return "not a unicast address";
    const lan = this.#lan;
    if (lan) {
      if (!cidrContains(lan, a)) return "outside the LAN";
      // /31 and /32 have no network or broadcast address (RFC 3021).
      if (lan.len <= 30) {
        if (a === lan.addr) return "the LAN's network address";
        if (a === ((lan.addr | ~prefixMask(lan.len)) >>> 0)) return "the LAN's broadcast address";
      }
    }
    if (a === this.#gateway || this.#local.has(a)) return "the gateway's own address";
    if (this.#pool.has(a)) return "a pool address";
    return null;
  }

  /** `10.0.0.1 (the gateway's own address)`: for refusal lines. */
  describe(a: number): string {
    const w = this.why(a);
    return w ? `${formatIPv4(a)} (${w})` : formatIPv4(a);
  }
}
