/**
 * An event feed for the operator socket (`dpm status --watch`): turns a
 * synchronous subscription (the server core's `watch`) into the async items
 * of a {@linkcode LocalStream}. Events are queued per reader, at most `max`;
 * beyond that they are counted, and the reader gets one
 * `{"event": "lost", "count": n}` line in their place when it catches up,
 * so a slow or stopped reader costs bounded memory and never slows the
 * gateway.
 *
 * @module
 */

/** Default queue bound per reader. */
export const FEED_MAX = 10_000;

/**
 * Yields what `subscribe`'s callback receives, that `keep` accepts, until
 * `signal` aborts (the reader went away); then unsubscribes.
 */
export async function* feed<E>(
  subscribe: (fn: (e: E) => void) => () => void,
  signal: AbortSignal,
  keep: (e: E) => boolean = () => true,
  max = FEED_MAX,
): AsyncGenerator<E | { event: "lost"; count: number }> {
  let queue: E[] = [];
  let lost = 0;
  let wake: (() => void) | null = null;
  const unsubscribe = subscribe((e) => {
    if (!keep(e)) return;
    if (queue.length >= max) lost++;
    else queue.push(e);
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  try {
    while (!signal.aborted) {
      if (!queue.length && !lost) {
        await new Promise<void>((ok) => (wake = ok));
        wake = null;
        continue;
      }
      const batch = queue;
      queue = [];
      for (const e of batch) yield e;
      if (lost) {
        const count = lost;
        lost = 0;
        yield { event: "lost", count };
      }
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    unsubscribe();
  }
}
