/**
 * A stack of undo steps: whatever a role sets up (sockets, queue, iptables
 * chains, sysctls, addresses) pushes the step that undoes it, and `run()`
 * undoes everything in reverse order. A failing step is logged and the rest
 * still run, so one stuck resource never leaves the others behind.
 *
 * @module
 */

import { type Format, type Level, type Logger, setFormat, setLevel } from "./log.ts";
import { notify } from "./notify.ts";

/** Reverse-order cleanup that never stops half-way. */
export class Cleanup {
  readonly #steps: (() => Promise<void> | void)[] = [];
  constructor(readonly log: Logger) {}

  /** Steps registered and not run yet. */
  get size(): number {
    return this.#steps.length;
  }

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

/** What both roles' settings have that changes live on SIGHUP. */
interface LiveSettings {
  logLevel: Level;
  logFormat: Format;
}

/**
 * The SIGHUP handler of a role: re-reads its configuration with `reload`,
 * applies what can change live (log level and format), names the rest as
 * needing a restart, and tells systemd (RELOADING=1, then READY=1). A failed
 * reload keeps the running configuration. Without `reload`, SIGHUP only warns.
 */
export function liveReload<T extends LiveSettings>(
  log: Logger,
  cfg: T,
  reload: (() => Promise<T>) | undefined,
): () => void {
  let running = cfg;
  return () => {
    if (!reload) return log.warn("SIGHUP: nothing to reload (no configuration source)");
    notify("RELOADING=1");
    reload().then((next) => {
      const lines = reloadReport(running, next, ["logLevel", "logFormat"], (k, v) => {
        if (k === "logLevel") setLevel(v as Level);
        if (k === "logFormat") setFormat(v as Format);
      });
      for (const line of lines) log.info(line);
      running = { ...running, logLevel: next.logLevel, logFormat: next.logFormat };
    }).finally(() => notify("READY=1")).catch((e) =>
      log.error(`reload failed, keeping the running configuration: ${(e as Error).message}`)
    );
  };
}

/**
 * What a role's start gives back: the exit code of a run that is over
 * already (`--cleanup`), or what to log once it is told to stop.
 */
export type Started = number | { stopping(): string };

/**
 * The life of a role's process (`dpm server`, `dpm driver`): `start` sets
 * the role up, pushing each undo step on `undo` (`stop(code)` ends the run
 * from inside, as a fatal error does); then the process says it is ready
 * (log, systemd), runs until SIGINT/SIGTERM or `stop`, says it is stopping
 * and undoes everything. A start that throws is logged and undone; its exit
 * code is `failCode(error)` (1 by default). SIGHUP reloads what can change
 * at run time (`liveReload`). Returns the exit code.
 */
export async function runRole<T extends LiveSettings>(
  o: {
    log: Logger;
    role: string;
    cfg: T;
    reload?: (() => Promise<T>) | undefined;
    failCode?: (e: unknown) => number;
  },
  start: (undo: Cleanup, stop: (code: number) => void) => Promise<Started>,
): Promise<number> {
  const undo = new Cleanup(o.log);
  const { stopped, stop } = untilStopped(undo, { reload: liveReload(o.log, o.cfg, o.reload) });
  try {
    const started = await start(undo, stop);
    if (typeof started === "number") {
      await undo.run();
      return started;
    }
    o.log.info("ready");
    notify(`READY=1\nSTATUS=${o.role} ready`);
    const code = await stopped;
    notify("STOPPING=1");
    o.log.info(started.stopping());
    await undo.run();
    return code;
  } catch (e) {
    o.log.error((e as Error).message);
    await undo.run();
    return o.failCode?.(e) ?? 1;
  }
}
