/**
 * A stack of undo steps: whatever a role sets up (sockets, queue, iptables
 * chains, sysctls, addresses) pushes the step that undoes it, and `run()`
 * undoes everything in reverse order. A failing step is logged and the rest
 * still run, so one stuck resource never leaves the others behind.
 *
 * @module
 */

import type { Logger } from "./log.ts";

/** Reverse-order cleanup that never stops half-way. */
export class Cleanup {
  readonly #steps: (() => Promise<void> | void)[] = [];
  constructor(readonly log: Logger) {}

  /** Registers a step to run at cleanup. */
  push(step: () => Promise<void> | void): void {
    this.#steps.push(step);
  }

  /** Runs and forgets every step, last registered first. Never throws. */
  async run(): Promise<void> {
    while (this.#steps.length) {
      try {
        await this.#steps.pop()!();
      } catch (e) {
        this.log.error(`cleanup: ${(e as Error).message}`);
      }
    }
  }
}

/**
 * Resolves with an exit code when SIGINT or SIGTERM arrives (0) or when
 * `stop(code)` is called (for fatal errors). The signal listeners are removed
 * by `cleanup`.
 */
export function untilStopped(
  cleanup: Cleanup,
): { stopped: Promise<number>; stop: (code: number) => void } {
  let stop!: (code: number) => void;
  const stopped = new Promise<number>((r) => (stop = r));
  const onSignal = () => stop(0);
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  cleanup.push(() => {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  });
  return { stopped, stop };
}
