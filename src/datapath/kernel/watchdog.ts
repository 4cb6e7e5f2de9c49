/**
 * The kernel path's watchdog: notices within a second or two when dpm's
 * nftables table or iptables chains disappear or change (`nft flush
 * ruleset`, which Debian's nftables service runs on start and reload; a
 * firewall script; a hand edit), logs it as an error, reinstalls everything
 * from the role's session table, and reports its state for `dpm status`.
 *
 * Cheap when nothing changes: one netlink request a second (the ruleset
 * generation, `linux/nftables.ts`). Only when the generation moved are the
 * chains listed (one `nft -j list chains`).
 *
 * @module
 */

import type { Logger } from "../../runtime/log.ts";
import type { DataPathStatus } from "../../operator/types.ts";
import { listChains } from "../../../linux/nft.ts";

/** Where the watchdog gets the generation from (an `NftMaps`, or a fake). */
export interface GenerationSource {
  generation(): number;
}

/** Watches one role's rules. */
export class Watchdog {
  #state: "on" | "degraded" = "on";
  #reinstalls = 0;
  #lastError: string | undefined;
  #generation = -1;
  #busy = false;
  #errors = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /**
   * @param chains every chain that must exist, as `family table chain`
   * @param reinstall puts everything back; resolves with a summary for the log
   */
  constructor(
    readonly log: Logger,
    readonly gen: GenerationSource,
    readonly chains: string[],
    readonly reinstall: () => Promise<string>,
  ) {}

  /** Starts watching from the current generation. */
  start(periodMs = 1000): void {
    this.#generation = this.gen.generation();
    this.#timer = setInterval(() => void this.check(), periodMs);
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Something failed outside the watchdog (a netlink call): check on the next round. */
  suspect(what: string): void {
    this.#lastError = what;
    if (this.#errors++ < 20) this.log.error(what);
    this.#generation = -1;
  }

  /** One round. Public for tests. */
  async check(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const gen = this.gen.generation();
      if (gen === this.#generation) return;
      const have = await listChains();
      const missing = this.chains.filter((c) => !have.has(c));
      if (missing.length === 0) {
        this.#generation = gen;
        this.#state = "on";
        return;
      }
      this.#state = "degraded";
      this.#lastError = `missing chain(s) ${missing.join(", ")}`;
      this.log.error(
        `dpm's kernel rules were removed or changed (${this.#lastError}); reinstalling`,
      );
      const what = await this.reinstall();
      this.#reinstalls++;
      this.#generation = this.gen.generation();
      this.#state = "on";
      this.log.warn(`reinstalled ${what}`);
    } catch (e) {
      this.#state = "degraded";
      this.#lastError = `watchdog: ${(e as Error).message}`;
      if (this.#errors++ < 20) this.log.error(this.#lastError);
    } finally {
      this.#busy = false;
    }
  }

  status(): DataPathStatus {
    return {
      kind: "kernel",
      state: this.#state,
      reinstalls: this.#reinstalls,
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
    };
  }
}
