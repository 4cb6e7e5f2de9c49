/**
 * The watchdog of the paths built on dpm's nftables table (kernel, bpf):
 * notices within a second or two when dpm's nftables table or iptables
 * chains disappear or change (`nft flush ruleset`, which Debian's nftables
 * service runs on start and reload; a firewall script; a hand edit), or
 * when something else it is given to check is gone (the bpf path's tc
 * programs: a deleted clsact qdisc or filter), logs it as an error,
 * reinstalls, and reports its state for `dpm status`.
 *
 * Cheap when nothing changes: one netlink request a round for the ruleset
 * generation (`linux/nftables.ts`); only when it moved are the chains
 * listed (one `nft -j list chains`). The other checks run every round.
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

/** Something else the watchdog checks every round, and puts back when it is gone. */
export interface WatchdogCheck {
  /** What is missing now, one text each (empty: everything is in place). */
  missing(): string[];
  /** Puts it back; resolves with a summary for the log. */
  repair(): Promise<string> | string;
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
   * @param kind the data path, for its status
   * @param chains every chain that must exist, as `family table chain`
   * @param reinstall puts the table and chains back; resolves with a summary for the log
   * @param checks other things to check every round
   */
  constructor(
    readonly log: Logger,
    readonly kind: DataPathStatus["kind"],
    readonly gen: GenerationSource,
    readonly chains: string[],
    readonly reinstall: () => Promise<string>,
    readonly checks: WatchdogCheck[] = [],
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
      let fine = await this.#checkRules();
      for (const c of this.checks) {
        const missing = c.missing();
        if (missing.length === 0) continue;
        fine = false;
        await this.#repair(`missing ${missing.join(", ")}`, () => c.repair());
      }
      if (fine) this.#state = "on";
    } catch (e) {
      this.#state = "degraded";
      this.#lastError = `watchdog: ${(e as Error).message}`;
      if (this.#errors++ < 20) this.log.error(this.#lastError);
    } finally {
      this.#busy = false;
    }
  }

  /** The table and chains; true when they were in place. */
  async #checkRules(): Promise<boolean> {
    const gen = this.gen.generation();
    if (gen === this.#generation) return true;
    const have = await listChains();
    const missing = this.chains.filter((c) => !have.has(c));
    if (missing.length === 0) {
      this.#generation = gen;
      return true;
    }
    await this.#repair(`missing chain(s) ${missing.join(", ")}`, this.reinstall);
    this.#generation = this.gen.generation();
    return false;
  }

  async #repair(what: string, put: () => Promise<string> | string): Promise<void> {
    this.#state = "degraded";
    this.#lastError = what;
    this.log.error(`dpm's kernel rules were removed or changed (${what}); reinstalling`);
    const done = await put();
    this.#reinstalls++;
    this.#state = "on";
    this.log.warn(`reinstalled ${done}`);
  }

  status(): DataPathStatus {
    return {
      kind: this.kind,
      state: this.#state,
      reinstalls: this.#reinstalls,
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
    };
  }
}
