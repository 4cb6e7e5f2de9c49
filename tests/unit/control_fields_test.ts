/**
 * The codecs' shared helpers (`control/fields.ts`): a field table checked
 * and written by one loop, the range and cookie checks, the zeroed output
 * buffer. The codecs that use them are `proto_test.ts`'s and
 * `batch_test.ts`'s.
 */

import assert from "node:assert/strict";
import {
  checkCookie,
  checkField,
  checkFields,
  type FieldTable,
  hex,
  view,
  writeFields,
  zeroed,
} from "../../src/control/fields.ts";

interface Msg {
  a: number;
  b: number;
  c: number;
}

const TABLE: FieldTable<Msg> = [["a", 0, 1], ["b", 1, 2], ["c", 3, 4]];

Deno.test("fields: a table is written big-endian at its offsets from a base", () => {
  const buf = new Uint8Array(10).fill(0xee);
  writeFields(view(buf), 2, { a: 0x12, b: 0x3456, c: 0x789abcde }, TABLE);
  assert.deepEqual([...buf], [0xee, 0xee, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xee]);
});

Deno.test("fields: each field is checked against its width, in the table's order", () => {
  checkFields({ a: 0xff, b: 0xffff, c: 0xffffffff }, TABLE);
  assert.throws(
    () => checkFields({ a: 0x100, b: 0, c: 0 }, TABLE),
    /"a" is 256, not an integer in 0\.\.255/,
  );
  assert.throws(() => checkFields({ a: 0, b: 0x10000, c: 0 }, TABLE), /"b" is 65536/);
  assert.throws(() => checkFields({ a: 0, b: 0, c: 2 ** 32 }, TABLE), /"c" is 4294967296/);
  assert.throws(
    () => checkFields({ a: 0, b: 1.5, c: -1 }, TABLE),
    /"b" is 1.5/,
    "the first bad one",
  );
  assert.throws(() => checkField("op", 0x80, 0x7f), /"op" is 128, not an integer in 0\.\.127/);
});

Deno.test("fields: a cookie must be absent or of its length; hex pads", () => {
  checkCookie(undefined, 12);
  checkCookie(null, 12);
  checkCookie(new Uint8Array(12), 12);
  assert.throws(() => checkCookie(new Uint8Array(11), 12), /Cookie is 11 bytes, want 12/);
  assert.equal(hex(0x4450, 4), "0x4450");
  assert.equal(hex(5, 2), "0x05");
});

Deno.test("fields: the output is zeroed, a view of the buffer given, never shorter than asked", () => {
  assert.deepEqual([...zeroed(3, undefined)], [0, 0, 0]);
  const out = new Uint8Array(5).fill(9);
  const m = zeroed(4, out);
  assert.equal(m.buffer, out.buffer);
  assert.deepEqual([...out], [0, 0, 0, 0, 9]);
  assert.throws(() => zeroed(6, out), /Output buffer is 5 bytes, want 6/);
  const sub = new Uint8Array(8).subarray(4);
  view(sub).setUint16(0, 0xabcd);
  assert.equal(sub[0], 0xab, "the view starts where the array does");
});
