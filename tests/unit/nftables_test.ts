/**
 * Tests of the netlink builder/parser (linux/netlink.ts) and the nf_tables
 * element encoding (linux/nftables.ts) on bytes only: no socket, no root.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  align4,
  attrs,
  attrTable,
  getBe16,
  getBe32,
  getBytes,
  getStr,
  messages,
  NetlinkParseError,
  Nfgen,
  NFNL_MSG_BATCH_BEGIN,
  NFNL_SUBSYS_NFTABLES,
  nfnlMessage,
  nfnlType,
  NLA_F_NESTED,
  NlBuilder,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_CREATE,
  NLM_F_REQUEST,
  Nlmsg,
  NLMSG_ERROR,
  parseError,
} from "../../linux/netlink.ts";
import {
  buildElemMessages,
  concat,
  decodeElemList,
  hex,
  ip4,
  ip4str,
  type MapElem,
  MAX_ELEMENTS_BYTES,
  NFT_MSG_DELSETELEM,
  NFT_MSG_NEWSETELEM,
  NFTA_DATA,
  NFTA_LIST_ELEM,
  NFTA_SET_ELEM,
  NFTA_SET_ELEM_LIST,
  splitConcat,
} from "../../linux/nftables.ts";

const dvOf = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

Deno.test("concat: pads every field to 4 bytes, network order", () => {
  // meta l4proto . ip saddr . th dport = udp . 10.0.0.5 . 40001
  assert.equal(hex(concat([17, 1], [ip4("10.0.0.5"), 4], [40001, 2])), "110000000a0000059c410000");
  // ip daddr . th dport = 198.51.100.7 . 5060
  assert.equal(hex(concat([ip4("198.51.100.7"), 4], [5060, 2])), "c633640713c40000");
  assert.equal(concat().length, 0);
});

Deno.test("concat: splitConcat is its inverse", () => {
  fc.assert(fc.property(
    fc.array(fc.constantFrom<1 | 2 | 4>(1, 2, 4), { minLength: 1, maxLength: 8 }).chain((ws) =>
      fc.tuple(
        fc.constant(ws),
        fc.tuple(...ws.map((w) => fc.integer({ min: 0, max: 2 ** (8 * w) - 1 }))),
      )
    ),
    ([ws, vs]) => {
      const b = concat(...ws.map((w, i) => [vs[i]!, w] as const));
      assert.equal(b.length, 4 * ws.length);
      assert.deepEqual(splitConcat(b, ws), vs);
      // Padding bytes are zero.
      ws.forEach((w, i) => {
        for (let j = w; j < 4; j++) assert.equal(b[4 * i + j], 0);
      });
    },
  ));
});

Deno.test("concat: refuses values that do not fit, and wrong lengths", () => {
  assert.throws(() => concat([256, 1]), RangeError);
  assert.throws(() => concat([65536, 2]), RangeError);
  assert.throws(() => concat([-1, 4]), RangeError);
  assert.throws(() => concat([1.5, 4]), RangeError);
  assert.throws(() => concat([1, 3 as 4]), RangeError);
  assert.throws(() => splitConcat(new Uint8Array(7), [4, 4]), RangeError);
});

Deno.test("ip4: dotted quads both ways", () => {
  assert.equal(ip4("10.0.0.1"), 0x0a000001);
  assert.equal(ip4("255.255.255.255"), 0xffffffff);
  assert.equal(ip4str(0xc6336407), "198.51.100.7");
  for (const bad of ["1.2.3", "1.2.3.256", "a.b.c.d", "1.2.3.4.5", ""]) {
    assert.throws(() => ip4(bad), RangeError, bad);
  }
});

Deno.test("NlBuilder: header, nfgenmsg, attributes aligned, nest lengths", () => {
  const b = new NlBuilder(8); // small: forces growth
  b.begin(nfnlType(NFNL_SUBSYS_NFTABLES, 12), NLM_F_REQUEST | NLM_F_ACK).nfgen(2, 0x1234);
  b.str(1, "dpm").u8(5, 0xab).be16(6, 0x0102).be32(7, 0xdeadbeef);
  b.nest(3).bytes(1, new Uint8Array([1, 2, 3, 4, 5])).endNest();
  const m = b.end().finish();
  const dv = dvOf(m);
  assert.equal(dv.getUint32(Nlmsg.LEN, true), m.length);
  assert.equal(dv.getUint16(Nlmsg.TYPE, true), (10 << 8) | 12);
  assert.equal(dv.getUint16(Nlmsg.FLAGS, true), NLM_F_REQUEST | NLM_F_ACK);
  assert.equal(m[16], 2); // family
  assert.equal(m[17], 0); // version
  assert.equal(dv.getUint16(18, false), 0x1234); // res_id big endian
  // "dpm\0" 8, u8 8, be16 8, be32 8, nest(4 + 12) 16
  assert.equal(m.length, 16 + 4 + 8 + 8 + 8 + 8 + 16);
  const t = attrTable(dv, 20, m.length, 7);
  assert.equal(getStr(dv, t[1]!), "dpm");
  assert.equal(dv.getUint8(t[5]!.off), 0xab);
  assert.equal(t[5]!.len, 1);
  assert.equal(getBe16(dv, t[6]!), 0x0102);
  assert.equal(getBe32(dv, t[7]!), 0xdeadbeef);
  assert.equal(t[3]!.nested, true);
  assert.equal(dv.getUint16(t[3]!.off - 4 + 2, true), 3 | NLA_F_NESTED);
  const inner = [...attrs(dv, t[3]!.off, t[3]!.off + t[3]!.len)];
  assert.equal(inner.length, 1);
  assert.deepEqual([...getBytes(dv, inner[0]!)], [1, 2, 3, 4, 5]);
  assert.equal(inner[0]!.len, 5);
  // Padding is zero.
  assert.deepEqual([...m.subarray(m.length - 3)], [0, 0, 0]);
});

Deno.test("NlBuilder: misuse is refused with a clear error", () => {
  const b = new NlBuilder();
  assert.throws(() => b.u8(1, 1), /no message begun/);
  b.begin(1, 0);
  assert.throws(() => b.begin(1, 0), /not ended/);
  assert.throws(() => b.endNest(), /no nest/);
  b.nest(1);
  assert.throws(() => b.end(), /nest is still open/);
  assert.throws(() => b.bytes(2, new Uint8Array(70000)), RangeError);
  b.endNest().end();
  assert.equal(b.finish().length, 20);
});

Deno.test("nfnlMessage: a batch begin for nf_tables", () => {
  const m = nfnlMessage(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
  assert.equal(hex(m), "14000000" + "1000" + "0100" + "00000000" + "00000000" + "0000000a");
});

function sampleElems(n: number): MapElem[] {
  const out: MapElem[] = [];
  for (let i = 0; i < n; i++) {
    out.push({
      key: concat([17, 1], [0x0a000000 + i, 4], [1024 + (i % 60000), 2], [ip4("198.51.100.1"), 4], [
        5060,
        2,
      ]),
      data: concat([ip4("203.0.113.1"), 4], [2000 + (i % 60000), 2]),
    });
  }
  return out;
}

/** Decodes every element of built NEWSETELEM messages, checking their headers. */
function decodeAll(msgs: Uint8Array[], type: number, table: string, set: string): MapElem[] {
  const out: MapElem[] = [];
  for (const m of msgs) {
    const dv = dvOf(m);
    const all = [...messages(dv, m.length)];
    assert.equal(all.length, 1);
    const h = all[0]!;
    assert.equal(h.type, (NFNL_SUBSYS_NFTABLES << 8) | type);
    assert.equal(m[Nlmsg.SIZE + Nfgen.FAMILY], 2);
    const t = attrTable(dv, h.off + Nfgen.SIZE, h.off + h.len, NFTA_SET_ELEM_LIST.SET_ID);
    assert.equal(getStr(dv, t[NFTA_SET_ELEM_LIST.TABLE]!), table);
    assert.equal(getStr(dv, t[NFTA_SET_ELEM_LIST.SET]!), set);
    assert.ok(t[NFTA_SET_ELEM_LIST.ELEMENTS]!.nested);
    assert.ok(t[NFTA_SET_ELEM_LIST.ELEMENTS]!.len + 4 <= MAX_ELEMENTS_BYTES);
    decodeElemList(dv, h.off + Nfgen.SIZE, h.off + h.len, out);
  }
  return out;
}

Deno.test("buildElemMessages: one element, exact bytes", () => {
  const key = concat([17, 1], [ip4("10.0.0.5"), 4], [40001, 2]);
  const data = concat([ip4("198.51.100.7"), 4], [5060, 2]);
  const { msgs, elems } = buildElemMessages(
    NFT_MSG_NEWSETELEM,
    NLM_F_CREATE | NLM_F_ACK,
    2,
    "t",
    "m",
    1,
    () => ({ key, data }),
  );
  assert.equal(msgs.length, 1);
  // nlmsghdr: NLM_F_REQUEST and the seq are added by the socket when sending.
  const expected = "50000000" + "0c0a" + "0404" + "00000000" + "00000000" +
    "02000000" + // nfgenmsg: ip, v0, res_id 0
    "0600" + "0100" + "74000000" + // TABLE "t"
    "0600" + "0200" + "6d000000" + // SET "m"
    "2c00" + "0380" + // ELEMENTS, nested
    "2800" + "0180" + // LIST_ELEM, nested
    "1400" + "0180" + "1000" + "0100" + hex(key) + // KEY { VALUE }
    "1000" + "0280" + "0c00" + "0100" + hex(data); // DATA { VALUE }
  assert.equal(hex(msgs[0]!), expected);
  // The element's attribute starts right after the ELEMENTS header.
  assert.deepEqual(elems, [{ first: 0, offsets: [16 + 4 + 8 + 8 + 4] }]);
});

Deno.test("buildElemMessages: many elements are cut below the u16 limit, decode back", () => {
  const els = sampleElems(5000);
  const { msgs, elems } = buildElemMessages(
    NFT_MSG_NEWSETELEM,
    NLM_F_ACK,
    2,
    "dpmtest",
    "to_public",
    els.length,
    (i) => els[i]!,
  );
  assert.ok(msgs.length > 1, `${msgs.length} message(s)`);
  assert.equal(elems.length, msgs.length);
  assert.equal(elems.reduce((n, e) => n + e.offsets.length, 0), els.length);
  elems.forEach((e, i) => {
    if (i > 0) assert.equal(e.first, elems[i - 1]!.first + elems[i - 1]!.offsets.length);
  });
  const back = decodeAll(msgs, NFT_MSG_NEWSETELEM, "dpmtest", "to_public");
  assert.equal(back.length, els.length);
  for (let i = 0; i < els.length; i += 97) {
    assert.equal(hex(back[i]!.key), hex(els[i]!.key));
    assert.equal(hex(back[i]!.data), hex(els[i]!.data));
  }
  // The offsets point at each element's LIST_ELEM header.
  const m1 = dvOf(msgs[1]!);
  for (const off of elems[1]!.offsets) {
    assert.equal(m1.getUint16(off + 2, true), NFTA_LIST_ELEM | NLA_F_NESTED);
  }
});

Deno.test("buildElemMessages: keys only for deletes; bad lengths refused", () => {
  const keys = sampleElems(3).map((e) => e.key);
  const { msgs } = buildElemMessages(
    NFT_MSG_DELSETELEM,
    NLM_F_ACK,
    2,
    "t",
    "m",
    3,
    (i) => ({ key: keys[i]! }),
  );
  const back = decodeAll(msgs, NFT_MSG_DELSETELEM, "t", "m");
  assert.deepEqual(back.map((e) => hex(e.key)), keys.map(hex));
  assert.ok(back.every((e) => e.data.length === 0));
  const mk = (key: Uint8Array) => () =>
    buildElemMessages(NFT_MSG_DELSETELEM, 0, 2, "t", "m", 1, () => ({ key }));
  assert.throws(mk(new Uint8Array(0)), /Element 0: key of 0 bytes/);
  assert.throws(mk(new Uint8Array(65)), /Element 0: key of 65 bytes/);
});

Deno.test("decodeElemList: interval-end markers are skipped, sets without data decode", () => {
  const b = new NlBuilder();
  b.begin(0, 0);
  b.str(NFTA_SET_ELEM_LIST.TABLE, "t").nest(NFTA_SET_ELEM_LIST.ELEMENTS);
  b.nest(NFTA_LIST_ELEM).nest(NFTA_SET_ELEM.KEY).bytes(
    NFTA_DATA.VALUE,
    new Uint8Array([1, 2, 3, 4]),
  )
    .endNest().endNest();
  b.nest(NFTA_LIST_ELEM).be32(NFTA_SET_ELEM.FLAGS, 1).nest(NFTA_SET_ELEM.KEY)
    .bytes(NFTA_DATA.VALUE, new Uint8Array([9, 9, 9, 9])).endNest().endNest();
  b.endNest().end();
  const m = b.finish();
  const out: MapElem[] = [];
  decodeElemList(dvOf(m), Nlmsg.SIZE, m.length, out);
  assert.equal(out.length, 1);
  assert.equal(hex(out[0]!.key), "01020304");
  assert.equal(out[0]!.data.length, 0);
});

Deno.test("attrs/messages: malformed input raises NetlinkParseError only", () => {
  // Length below the header, length past the end.
  const bad = new Uint8Array([2, 0, 1, 0, 0, 0, 0, 0]);
  assert.throws(() => [...attrs(dvOf(bad), 0, bad.length)], NetlinkParseError);
  const past = new Uint8Array([40, 0, 1, 0, 0, 0, 0, 0]);
  assert.throws(() => [...attrs(dvOf(past), 0, past.length)], NetlinkParseError);
  assert.throws(() => [...attrs(dvOf(past), 4, 100)], NetlinkParseError);
  // Trailing padding shorter than a header is fine.
  assert.deepEqual([...attrs(dvOf(new Uint8Array(3)), 0, 3)], []);
  const msg = new Uint8Array(16);
  dvOf(msg).setUint32(0, 8, true);
  assert.throws(() => [...messages(dvOf(msg), 16)], NetlinkParseError);
  // A too-short value for its getter.
  const one = new NlBuilder().begin(0, 0).u8(1, 7).end().finish();
  const a = [...attrs(dvOf(one), 16, one.length)][0]!;
  assert.throws(() => getBe32(dvOf(one), a), NetlinkParseError);
});

Deno.test("decodeElemList: random bytes never throw anything but NetlinkParseError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      try {
        decodeElemList(dvOf(bytes), 0, bytes.length, []);
      } catch (e) {
        if (!(e instanceof NetlinkParseError)) throw e;
      }
      try {
        for (const m of messages(dvOf(bytes), bytes.length)) {
          if (m.type === NLMSG_ERROR) parseError(dvOf(bytes), m);
        }
      } catch (e) {
        if (!(e instanceof NetlinkParseError)) throw e;
      }
    }),
    { numRuns: 2000 },
  );
  // Mutations of a valid message: flip bytes anywhere.
  const valid = buildElemMessages(NFT_MSG_NEWSETELEM, 0, 2, "t", "m", 4, (i) => sampleElems(4)[i]!)
    .msgs[0]!;
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 6,
      }),
      (flips) => {
        const m = valid.slice();
        for (const [i, v] of flips) m[i] = v;
        try {
          decodeElemList(dvOf(m), Nlmsg.SIZE + Nfgen.SIZE, m.length, []);
        } catch (e) {
          if (!(e instanceof NetlinkParseError)) throw e;
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("parseError: errno, seq and extended-ack text and offset", () => {
  // nlmsgerr: error -17, capped request header (seq 77), then MSG and OFFS.
  const b = new NlBuilder();
  b.begin(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS);
  const body = new Uint8Array(4 + 16);
  const bdv = dvOf(body);
  bdv.setInt32(0, -17, true);
  bdv.setUint32(4, 100, true); // request length (capped: not echoed)
  bdv.setUint32(4 + Nlmsg.SEQ, 77, true);
  b.raw(body).str(1, "element exists").u32(2, 52).end();
  const m = b.finish();
  const msg = [...messages(dvOf(m), m.length)][0]!;
  assert.deepEqual(parseError(dvOf(m), msg), {
    errno: 17,
    seq: 77,
    detail: "element exists",
    attrOffset: 52,
  });
  // Too short: null, not a throw.
  const short = new NlBuilder().begin(NLMSG_ERROR, 0).raw(new Uint8Array(4)).end().finish();
  assert.equal(parseError(dvOf(short), [...messages(dvOf(short), short.length)][0]!), null);
  assert.equal(align4(5), 8);
});
