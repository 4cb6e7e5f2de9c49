/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * Sums are plain non-negative `number`s. A *sum* is the ones'-complement sum
 * of 16-bit big-endian words, not yet complemented; {@link fold} reduces any
 * sum to 16 bits and {@link finish} turns it into the value written in a
 * checksum field. Sums compose: the sum of a TCP segment's pseudo-header and
 * of its bytes is `sum16(buf, l4, n, pseudoHeaderSum(...))`.
 *
 * The translator never recomputes a checksum on the data path: it changes a
 * few words and adjusts the existing checksum with RFC 1624 eqn. 3,
 * `HC' = ~(~HC + ~m + m')`. Several changes chain by adding their *deltas*
 * (`~m + m'`, see {@link csumDelta16}) and applying the total once with
 * {@link csumApply}; this also lets one address change be applied both to the
 * IP header checksum and to the TCP/UDP pseudo-header checksum.
 *
 * UDP rule (RFC 768): a UDP checksum field of 0 means "no checksum" and must
 * stay 0 through translation; a computed checksum of 0 is sent as 0xffff
 * (the other representation of ones'-complement zero), see
 * {@link udpWireChecksum}.
 *
 * These functions are pure and allocate nothing.
 *
 * @module
 */

/**
 * Folds a sum of 16-bit words (any non-negative integer below 2^53) to 16
 * bits with end-around carry. The result is 0 only if the sum was 0.
 */
export function fold(sum: number): number {
  // `& 0xffff` keeps the low 16 bits even above 2^32 (ToInt32 is taken mod
  // 2^32); the division avoids `>>> 16`, which would lose bits above 2^32.
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** Folds `sum` and complements it: the value to write into a checksum field. */
export function finish(sum: number): number {
  return ~fold(sum) & 0xffff;
}

/**
 * Ones'-complement sum of `len` bytes of `buf` from `off`, as big-endian
 * 16-bit words, added to `initial`. An odd trailing byte is padded with a
 * zero low byte (RFC 1071). Returns the sum folded to 16 bits (not
 * complemented). `off` should be even relative to the start of the checksummed
 * region for the words to line up.
 *
 * @param buf bytes to sum
 * @param off first byte
 * @param len number of bytes
 * @param initial a sum to continue (for example a pseudo-header sum)
 * @returns the folded, uncomplemented sum
 */
export function sum16(buf: Uint8Array, off: number, len: number, initial = 0): number {
  if (len >= 256 && HOST_LE && ((buf.byteOffset + off) & 3) === 0) {
    return sum16Wide(buf, off, len, initial);
  }
  let s = initial;
  const end = off + (len & ~1);
  let i = off;
  for (; i < end; i += 2) {
    s += (buf[i]! << 8) | buf[i + 1]!;
    // Keep the accumulator a small integer so V8 stays on its fast path.
    if (s > 0x3fffffff) s = (s & 0xffff) + (s >>> 16);
  }
  if (len & 1) s += buf[i]! << 8;
  return fold(s);
}

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * {@link sum16} for long, 4-byte aligned ranges on a little-endian host:
 * adds 32-bit words read in host order (RFC 1071 §2: the ones'-complement
 * sum is independent of byte order and of the word size, once folded), then
 * swaps the folded result back to network order. About 4 times faster than
 * the byte loop on 64 KB GSO packets.
 */
function sum16Wide(buf: Uint8Array, off: number, len: number, initial: number): number {
  const words = len >>> 2;
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset + off, words);
  // Below 2^53 for up to 2^21 words: exact in a double.
  let acc = 0;
  for (let i = 0; i < words; i++) acc += u32[i]!;
  // Host-order (little-endian) 16-bit words: swap the folded sum to network order.
  const le = fold(acc);
  let s = ((le & 0xff) << 8) | (le >>> 8);
  s += initial;
  const done = words << 2;
  return sum16Tail(buf, off + done, len - done, s);
}

function sum16Tail(buf: Uint8Array, off: number, len: number, s: number): number {
  const end = off + (len & ~1);
  let i = off;
  for (; i < end; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  if (len & 1) s += buf[i]! << 8;
  return fold(s);
}

/**
 * Sum of the TCP/UDP pseudo-header (RFC 793 §3.1, RFC 768): source and
 * destination address, zero, protocol, and the L4 length. Folded, not
 * complemented.
 *
 * @param src source address, host order
 * @param dst destination address, host order
 * @param proto IP protocol number
 * @param l4len length of the TCP segment or UDP datagram (UDP: its length field)
 */
export function pseudoHeaderSum(src: number, dst: number, proto: number, l4len: number): number {
  return fold(
    (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + l4len,
  );
}

/**
 * The delta of replacing the 16-bit word `oldWord` by `newWord`
 * (`~m + m'` in RFC 1624 eqn. 3), added to `acc`. Deltas of several changes
 * add up; apply the total with {@link csumApply}.
 */
export function csumDelta16(acc: number, oldWord: number, newWord: number): number {
  return acc + (~oldWord & 0xffff) + (newWord & 0xffff);
}

/** The delta of replacing a 32-bit value (two words, e.g. an address), added to `acc`. */
export function csumDelta32(acc: number, oldU32: number, newU32: number): number {
  return acc + (~(oldU32 >>> 16) & 0xffff) + (newU32 >>> 16) + (~oldU32 & 0xffff) +
    (newU32 & 0xffff);
}

/**
 * Applies an accumulated delta to checksum field value `csum`:
 * `HC' = ~(~HC + delta)` (RFC 1624 eqn. 3). A delta of 0 leaves `csum` as is.
 * Like a full computation, the result is never 0xffff unless `csum` was
 * 0xffff and `delta` is 0 (a fold is 0 only for a zero sum), so updated
 * IP, TCP and ICMP checksums match recomputed ones exactly; for UDP pass the
 * result through {@link udpWireChecksum}.
 */
export function csumApply(csum: number, delta: number): number {
  return ~fold((~csum & 0xffff) + delta) & 0xffff;
}

/** RFC 1624 eqn. 3 for one 16-bit word: the new checksum after `oldWord` becomes `newWord`. */
export function csumReplace16(csum: number, oldWord: number, newWord: number): number {
  return csumApply(csum, csumDelta16(0, oldWord, newWord));
}

/** RFC 1624 eqn. 3 for a 32-bit value (an IPv4 address): the new checksum. */
export function csumReplace32(csum: number, oldU32: number, newU32: number): number {
  return csumApply(csum, csumDelta32(0, oldU32, newU32));
}

/**
 * The UDP checksum as sent: a computed 0 is sent as 0xffff, because 0 in
 * the field means "no checksum" (RFC 768). Apply it to computed or updated
 * UDP checksums, never to a received 0 (which must stay 0).
 */
export function udpWireChecksum(csum: number): number {
  return csum === 0 ? 0xffff : csum;
}
