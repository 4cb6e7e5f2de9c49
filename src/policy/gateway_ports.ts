/**
 * The public ports the gateway's own sockets hold: a mapping must never
 * take one. With the pool on the gateway (`--add-pool-addresses`, or a
 * pool holding the WAN's primary address), the gateway's sshd on
 * `0.0.0.0:22` answers on every pool address; a mapping of `R:22` would
 * send an administrator's SSH to a LAN host instead (miniupnpd's
 * `port_in_use()` refuses the same).
 *
 * Held: a TCP or UDP socket (listening, bound or connected; from
 * `/proc/net/{tcp,udp}[6]`, read in the gateway's network namespace by
 * `run.ts` through `linux/procnet.ts`) whose local address is unspecified (`0.0.0.0`, or
 * `::` which receives IPv4 too) or a pool address. Sockets on other
 * addresses (G, the WAN's own address outside the pool) do not matter:
 * mappings only ever translate pool addresses.
 *
 * {@linkcode GatewayPorts.update} is given the sockets now and returns the
 * ports that became held since the last update, so the caller can remove
 * mappings the gateway started listening under (`mappings.ts`).
 *
 * @module
 */

import { IPPROTO_TCP, IPPROTO_UDP } from "../wire/meta.ts";

/** A local IPv4 endpoint a socket of the gateway is bound to (`boundIPv4` of `linux/procnet.ts`). */
export interface BoundPort {
  /** The local address, host order; 0 for the unspecified address. */
  addr: number;
  port: number;
}

/** A public port a gateway socket holds: on every pool address (`r` 0) or on one. */
export interface HeldPort {
  proto: number;
  /** The pool address, or 0 for all of them (a socket on the unspecified address). */
  r: number;
  p: number;
}

/** The gateway's held public ports (see the module documentation). */
export class GatewayPorts {
  readonly #pool: ReadonlySet<number>;
  /** Keys `proto:r:p` (r 0: every pool address). */
  #held = new Set<string>();

  constructor(pool: readonly number[]) {
    this.#pool = new Set(pool);
  }

  /** True when a gateway socket holds public port `p` of protocol `proto` on pool address `r`. */
  holds(proto: number, r: number, p: number): boolean {
    return this.#held.has(`${proto}:0:${p}`) || this.#held.has(`${proto}:${r}:${p}`);
  }

  /** Number of (protocol, address, port) held. */
  get size(): number {
    return this.#held.size;
  }

  /**
   * Replaces what is held by what the `tcp` and `udp` sockets are bound to
   * now; returns the ports held now that were not held before.
   */
  update(tcp: Iterable<BoundPort>, udp: Iterable<BoundPort>): HeldPort[] {
    const next = new Set<string>();
    const fresh: HeldPort[] = [];
    for (const [proto, bound] of [[IPPROTO_TCP, tcp], [IPPROTO_UDP, udp]] as const) {
      for (const { addr: r, port } of bound) {
        if (port === 0 || (r !== 0 && !this.#pool.has(r))) continue;
        const k = `${proto}:${r}:${port}`;
        if (next.has(k)) continue;
        next.add(k);
        if (!this.#held.has(k)) fresh.push({ proto, r, p: port });
      }
    }
    this.#held = next;
    return fresh;
  }
}
