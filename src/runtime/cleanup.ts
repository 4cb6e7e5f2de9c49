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

/** Signals that end a role, with cleanup (their default action would kill it without any). */
export const STOP_SIGNALS: readonly Deno.Signal[] = [
  "SIGINT",
  "SIGTERM",
  "SIGQUIT",
  "SIGUSR1",
  "SIGUSR2",
];

/**
 * Resolves with an exit code when a stop signal arrives (0) or when
 * `stop(code)` is called (for fatal errors). SIGHUP calls `reload` when
 * given (and never kills the process); without one it stops like SIGTERM.
 * The signal listeners are removed by `cleanup`.
 */
export function untilStopped(
  cleanup: Cleanup,
  opts: { reload?: () => void } = {},
): { stopped: Promise<number>; stop: (code: number) => void } {
  let stop!: (code: number) => void;
  const stopped = new Promise<number>((r) => (stop = r));
  const onSignal = () => stop(0);
  const onHup = opts.reload ?? onSignal;
  for (const s of STOP_SIGNALS) Deno.addSignalListener(s, onSignal);
  Deno.addSignalListener("SIGHUP", onHup);
  cleanup.push(() => {
    for (const s of STOP_SIGNALS) Deno.removeSignalListener(s, onSignal);
    Deno.removeSignalListener("SIGHUP", onHup);
  });
  return { stopped, stop };
}

/**
 * Compares a reloaded configuration with the running one: applies what can
 * change at run time (`live` keys, through `apply`) and names the rest,
 * which need a restart. Returns the log lines to print.
 */
export function reloadReport<T extends object>(
  running: T,
  next: T,
  live: readonly (keyof T)[],
  apply: (key: keyof T, value: T[keyof T]) => void,
): string[] {
  const out: string[] = [];
  const restart: string[] = [];
  for (const k of Object.keys(next) as (keyof T)[]) {
    if (JSON.stringify(running[k]) === JSON.stringify(next[k])) continue;
    if (live.includes(k)) {
      apply(k, next[k]);
      out.push(`reload: ${String(k)} is now ${JSON.stringify(next[k])}`);
    } else restart.push(String(k));
  }
  if (restart.length) {
    out.push(
      `reload: ${restart.join(", ")} changed but need a restart; keeping the running values`,
    );
  }
  if (out.length === 0) out.push("reload: configuration unchanged");
  return out;
}
