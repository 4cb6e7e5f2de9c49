/**
 * Condition polling for end-to-end tests: wait on what must become true,
 * never on a sleep.
 *
 * @module
 */

/** Options of {@linkcode waitFor}. */
export interface WaitOptions {
  /**
   * How long to wait before giving up.
   * @default {5000}
   */
  timeoutMs?: number;
  /**
   * Pause between two checks.
   * @default {20}
   */
  intervalMs?: number;
  /** What is awaited, for the error message ("the server to listen"). */
  what: string;
}

/**
 * Polls `cond` until it returns true or the deadline passes. The condition is
 * checked once more at the deadline, so a slow check cannot make it miss.
 * An exception thrown by `cond` is not swallowed: it ends the wait.
 *
 * @throws {Error} `Timed out after <n> ms waiting for <what>` at the deadline.
 * @example
 * ```ts
 * await waitFor(() => server.output().includes("listening"), { what: "the server", timeoutMs: 2000 });
 * ```
 */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  opts: WaitOptions,
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const intervalMs = opts.intervalMs ?? 20;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    const left = deadline - performance.now();
    if (left <= 0) break;
    await new Promise((r) => setTimeout(r, Math.min(intervalMs, left)));
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${opts.what}`);
}
