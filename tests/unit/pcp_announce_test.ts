/**
 * The unsolicited PCP / NAT-PMP announcements (src/pcp/announce.ts): the
 * datagrams, checked byte by byte and by the independent test client
 * (testing/pcp_client.ts), and the schedule of RFC 6886 section 3.2.1 run
 * on a fake timer.
 */

import assert from "node:assert/strict";
import {
  ANNOUNCE_COUNT,
  ANNOUNCE_GROUP,
  ANNOUNCE_PORT,
  announceOffsets,
  Announcer,
  natPmpAnnouncement,
  pcpAnnouncement,
  type Timers,
} from "../../src/pcp/announce.ts";
import { hex, parseNatPmpResponse, parsePcpResponse } from "../../testing/pcp_client.ts";
import { parseIPv4 } from "../../src/wire/addr.ts";

const ip = (t: string) => parseIPv4(t)!;

/** A fake clock: timers fire only when `advance` passes their time. */
function fakeTimers() {
  let now = 0;
  let next = 1;
  const pending = new Map<number, { at: number; fn: () => void }>();
  const timers: Timers = {
    setTimeout(fn, ms) {
      const h = next++;
      pending.set(h, { at: now + ms, fn });
      return h;
    },
    clearTimeout(h) {
      pending.delete(h as number);
    },
  };
  const advance = (ms: number) => {
    const end = now + ms;
    for (;;) {
      let first: [number, { at: number; fn: () => void }] | null = null;
      for (const e of pending) if (e[1].at <= end && (!first || e[1].at < first[1].at)) first = e;
      if (!first) break;
      pending.delete(first[0]);
      now = first[1].at;
      first[1].fn();
    }
    now = end;
  };
  return { timers, advance, now: () => now, pending: () => pending.size };
}

Deno.test("pcp announce: the NAT-PMP and PCP datagrams are the RFC layouts", () => {
  const n = natPmpAnnouncement(0x01020304, ip("203.0.113.10"));
  assert.equal(hex(n), "00800000" + "01020304" + "cb00710a");
  const pn = parseNatPmpResponse(n);
  assert.deepEqual(pn.problems, []);
  assert.equal(pn.opcode, 0);
  assert.equal(pn.externalAddr, "203.0.113.10");
  const p = pcpAnnouncement(77);
  assert.equal(hex(p), "02800000" + "00000000" + "0000004d" + "00".repeat(12));
  const pp = parsePcpResponse(p);
  assert.deepEqual(pp.problems, []);
  assert.equal(pp.opcode, 0);
  assert.equal(pp.result, 0);
  assert.equal(pp.epoch, 77);
  assert.equal(ANNOUNCE_GROUP, "224.0.0.1");
  assert.equal(ANNOUNCE_PORT, 5350);
});

Deno.test("pcp announce: 10 sends, at once then 250 ms doubling (64 s last interval)", () => {
  const offs = announceOffsets();
  assert.deepEqual(offs, [0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750, 127750]);
  assert.equal(offs.length, ANNOUNCE_COUNT);
  assert.equal(offs[9]! - offs[8]!, 64_000);
});

Deno.test("pcp announce: the announcer follows the schedule on a fake timer, epoch read at each send", () => {
  const f = fakeTimers();
  const sent: { t: number; bytes: Uint8Array }[] = [];
  const a = new Announcer({
    build: () => {
      const epoch = Math.floor(f.now() / 1000);
      return [natPmpAnnouncement(epoch, ip("203.0.113.10")), pcpAnnouncement(epoch)];
    },
    send: (d) => sent.push({ t: f.now(), bytes: d }),
    timers: f.timers,
  });
  assert.equal(sent.length, 0, "idle until started");
  a.start();
  assert.equal(sent.length, 2, "the first round goes at once");
  f.advance(249);
  assert.equal(sent.length, 2);
  f.advance(1);
  assert.equal(sent.length, 4);
  f.advance(200_000);
  assert.equal(sent.length, 20, "10 rounds of 2");
  assert.equal(a.rounds, 10);
  assert.equal(a.running, false);
  assert.equal(f.pending(), 0, "no timer left");
  const times = sent.filter((_, i) => i % 2 === 0).map((s) => s.t);
  assert.deepEqual(times, announceOffsets());
  // NAT-PMP first, then PCP, in each round; the epoch is the send time's.
  for (let i = 0; i < sent.length; i += 2) {
    const n = parseNatPmpResponse(sent[i]!.bytes);
    const p = parsePcpResponse(sent[i + 1]!.bytes);
    assert.deepEqual([n.problems, p.problems], [[], []]);
    assert.equal(n.epoch, Math.floor(sent[i]!.t / 1000));
    assert.equal(p.epoch, n.epoch);
  }
});

Deno.test("pcp announce: stop cancels, start restarts from the first send, a failing send is survived", () => {
  const f = fakeTimers();
  let n = 0;
  const errors: unknown[] = [];
  const a = new Announcer({
    build: () => [new Uint8Array(1)],
    send: () => {
      n++;
      if (n === 2) throw new Error("ENETUNREACH");
    },
    onError: (e) => errors.push(e),
    timers: f.timers,
  });
  a.start();
  f.advance(250);
  assert.equal(n, 2);
  assert.equal(errors.length, 1, "the error is reported");
  assert.ok(a.running, "and the schedule goes on");
  f.advance(500);
  assert.equal(n, 3);
  a.stop();
  assert.equal(a.running, false);
  assert.equal(f.pending(), 0);
  f.advance(600_000);
  assert.equal(n, 3, "nothing after stop");
  a.stop(); // idempotent
  a.start(); // a new epoch: from the first send again
  assert.equal(n, 4);
  f.advance(250);
  assert.equal(n, 5, "the first interval again");
  a.start(); // restart while running: the old timer is cancelled
  assert.equal(f.pending(), 1);
  f.advance(200_000);
  assert.equal(n, 6 + 9, "one full schedule after the restart");
  const custom = new Announcer({
    build: () => [new Uint8Array(1)],
    send: () => n++,
    timers: f.timers,
    count: 3,
    firstIntervalMs: 10,
  });
  n = 0;
  custom.start();
  f.advance(29);
  assert.equal(n, 2);
  f.advance(1);
  assert.equal(n, 3);
  f.advance(1000);
  assert.equal(n, 3);
});
