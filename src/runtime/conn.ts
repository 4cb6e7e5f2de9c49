/**
 * Two chores of every byte-stream connection dpm serves (the operator
 * socket, the UPnP IGD's HTTP listener): writing a whole buffer when a
 * `write` may take only part of it, and closing a connection that may be
 * closed already (by a timer, the peer, or a shutdown) without caring which.
 *
 * @module
 */

/** Anything with a `write` that may write fewer bytes than asked (`Deno.Conn`). */
export interface ByteSink {
  write(b: Uint8Array): Promise<number>;
}

/** Writes all of `data`, calling `sink.write` again for what a call left. */
export async function writeAll(sink: ByteSink, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await sink.write(data.subarray(off));
}

/** Closes `c`, ignoring that it is closed already. */
export function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}
