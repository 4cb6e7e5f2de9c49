/**
 * What the control protocol's codecs share, whatever the version
 * (`proto.ts` version 2, `batch.ts` version 3): a view on the bytes, hex
 * in error messages, the range checks of an encoder, and a table of a
 * message's numeric fields (where each lies and how wide it is) that one
 * loop checks and writes.
 *
 * @module
 */

/** A DataView on exactly the bytes of `b`. */
export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** `n` as `0x…` with at least `digits` hex digits (for error messages). */
export function hex(n: number, digits: number): string {
  return "0x" + n.toString(16).padStart(digits, "0");
}

/** Throws RangeError unless `v` is an integer in 0..`max` (an encoder's check of field `name`). */
export function checkField(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new RangeError(`Field "${name}" is ${v}, not an integer in 0..${max}`);
  }
}

/** Throws RangeError unless `c` is absent or `len` bytes long. */
export function checkCookie(c: Uint8Array | null | undefined, len: number): void {
  if (c !== undefined && c !== null && c.length !== len) {
    throw new RangeError(`Cookie is ${c.length} bytes, want ${len}`);
  }
}

/**
 * `len` zero bytes to write a message into: a view of `out` when given
 * (RangeError when it is shorter), else a new array. The reserved fields
 * are written by this fill, and a reused buffer never leaks old bytes.
 */
export function zeroed(len: number, out: Uint8Array | undefined): Uint8Array {
  if (out === undefined) return new Uint8Array(len);
  if (out.length < len) throw new RangeError(`Output buffer is ${out.length} bytes, want ${len}`);
  const m = out.subarray(0, len);
  m.fill(0);
  return m;
}

/**
 * The numeric fields of a message: each one's name in the object that
 * holds it, its offset, and its width in bytes (big-endian unsigned).
 */
export type FieldTable<T> =
  readonly (readonly [name: keyof T & string, at: number, width: 1 | 2 | 4])[];

const MAX = [0, 0xff, 0xffff, 0, 0xffffffff] as const;

/** Checks every field of `table` in `r` against its width, in the table's order. */
export function checkFields<T>(r: T, table: FieldTable<T>): void {
  for (const [name, , width] of table) checkField(name, r[name] as number, MAX[width]);
}

/** Writes every field of `table` from `r` at `base` + its offset. */
export function writeFields<T>(v: DataView, base: number, r: T, table: FieldTable<T>): void {
  for (const [name, at, width] of table) {
    const x = r[name] as number;
    if (width === 1) v.setUint8(base + at, x);
    else if (width === 2) v.setUint16(base + at, x);
    else v.setUint32(base + at, x);
  }
}
