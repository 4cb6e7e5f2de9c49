/**
 * A worker's slice of the public ports (`dpm server --workers N`,
 * docs/performance.md "Cores"). Every worker owns a slice of every pool
 * address's ports, not a slice of the addresses: paired pooling (a host's
 * sessions on one `R`) still holds, and a worker allocates, preserves and
 * shares only ports of its own slice, so the table's endpoint-independent
 * mapping and port-sharing checks (claims 8-10, 22) stay local to it, with
 * no lock: no two workers ever hold the same `(proto, R, p)`.
 *
 * The replacement range `[portMin, portMax]` is cut into `count` contiguous
 * slices, the first `(size mod count)` one port longer; worker `index`
 * owns slice `index`. Ports outside the range (a fixed port below
 * `portMin`, e.g. IKE's 500) are owned by worker `p mod count`.
 *
 * @module
 */

/** Which slice a table owns: `index` of `count` (0 of 1: every port). */
export interface PortSlice {
  index: number;
  count: number;
}

/** The whole range: one worker. */
export const WHOLE: PortSlice = { index: 0, count: 1 };

/**
 * Slice `s` of `[min, max]` as `[lo, hi]` (inclusive). Throws RangeError
 * when the slice is malformed or the range holds fewer ports than slices.
 */
export function sliceRange(min: number, max: number, s: PortSlice): [number, number] {
  const { index, count } = s;
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(index) || index < 0) {
    throw new RangeError(`Port slice ${index} of ${count} is malformed`);
  }
  if (index >= count) throw new RangeError(`Port slice ${index} of ${count} does not exist`);
  const size = max - min + 1;
  if (size < count) {
    throw new RangeError(`Ports ${min}-${max} hold ${size} port(s), fewer than ${count} slices`);
  }
  const base = Math.floor(size / count);
  const extra = size % count;
  const lo = min + index * base + Math.min(index, extra);
  const hi = lo + base + (index < extra ? 1 : 0) - 1;
  return [lo, hi];
}

/**
 * The worker (slice index) that owns public port `p`, given the whole
 * replacement range `[min, max]` cut into `count` slices.
 */
export function sliceOf(min: number, max: number, count: number, p: number): number {
  if (count === 1) return 0;
  if (p < min || p > max) return p % count;
  const size = max - min + 1;
  const base = Math.floor(size / count);
  const extra = size % count;
  const k = p - min;
  // The first `extra` slices hold base + 1 ports each.
  const long = extra * (base + 1);
  return k < long ? Math.floor(k / (base + 1)) : extra + Math.floor((k - long) / base);
}

/** The worker that serves host `a` (host order): what the control socket's reuseport program computes. */
export function workerOf(a: number, count: number): number {
  return (a >>> 0) % count;
}
