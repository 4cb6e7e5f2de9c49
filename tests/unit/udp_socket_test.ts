/**
 * linux/udp.ts on loopback (no root needed): batches both ways, sources and
 * ports reported, datagrams longer than the slots cut and counted, a bind
 * that fails names the address, `SO_REUSEPORT` sharing, close waking a wait.
 *
 * @module
 */

import assert from "node:assert/strict";
import { serveUdp, UdpSocket } from "../../linux/udp.ts";
import { OsError } from "../../linux/libc.ts";

const LO = 0x7f000001;

Deno.test("udp: a batch of datagrams goes out in one sendmmsg and is read in one turn", async () => {
  using a = UdpSocket.open({ addr: LO, port: 0 });
  using b = UdpSocket.open({ addr: LO, port: 0, batch: 16 });
  assert.equal(a.addr, LO);
  assert.ok(a.port > 0 && b.port > 0 && a.port !== b.port);
  for (let i = 0; i < 40; i++) {
    const d = new Uint8Array([i, i + 1, i + 2]);
    a.queue(d, i % 3 + 1, LO, b.port);
  }
  assert.equal(a.queued, 40);
  a.flush();
  assert.equal(a.stats.sent, 40);
  assert.equal(a.queued, 0);
  assert.equal(await b.wait(2000), true);
  const got: [number[], number, number][] = [];
  const n = b.receive((data, src, port) => got.push([[...data], src, port]));
  assert.equal(n, 40);
  assert.ok(b.stats.batches >= 3, "16 at a time");
  for (let i = 0; i < 40; i++) {
    assert.deepEqual(got[i]![0], [i, i + 1, i + 2].slice(0, i % 3 + 1));
    assert.equal(got[i]![1], LO);
    assert.equal(got[i]![2], a.port);
  }
  assert.equal(b.receive(() => assert.fail("nothing left")), 0);
});

Deno.test("udp: a datagram longer than a slot is cut and counted", async () => {
  using a = UdpSocket.open({ addr: LO, port: 0 });
  using b = UdpSocket.open({ addr: LO, port: 0, maxDatagram: 8 });
  a.queue(new Uint8Array(20).fill(7), 20, LO, b.port);
  a.flush();
  await b.wait(2000);
  let seen: [number, boolean] | null = null;
  b.receive((d, _s, _p, cut) => seen = [d.length, cut]);
  assert.deepEqual(seen, [8, true]);
  assert.equal(b.stats.truncated, 1);
  // Sending longer than the slots is refused and counted, not thrown.
  b.queue(new Uint8Array(20), 20, LO, a.port);
  assert.equal(b.stats.sendDrops, 1);
});

Deno.test("udp: bind failures name the address", () => {
  using a = UdpSocket.open({ addr: LO, port: 0 });
  assert.throws(() => UdpSocket.open({ addr: LO, port: a.port }), (e: unknown) => {
    assert.ok(e instanceof OsError);
    assert.match((e as Error).message, /bind 127\.0\.0\.1:\d+: in use/);
    return true;
  });
  assert.throws(
    () => UdpSocket.open({ addr: 0xc0000201, port: 0 }),
    /bind 192\.0\.2\.1:0: not an address of this host/,
  );
});

Deno.test("udp: SO_REUSEPORT sockets share a port", () => {
  using a = UdpSocket.open({ addr: LO, port: 0, reusePort: true });
  using b = UdpSocket.open({ addr: LO, port: a.port, reusePort: true });
  assert.equal(b.port, a.port);
});

Deno.test("udp: close wakes a pending wait; serveUdp ends the turn after each batch", async () => {
  const a = UdpSocket.open({ addr: LO, port: 0 });
  const w = a.wait(-1);
  a.close();
  assert.equal(await w, false);
  assert.equal(a.fd, -1);

  using srv = UdpSocket.open({ addr: LO, port: 0 });
  using cli = UdpSocket.open({ addr: LO, port: 0 });
  const seen: number[] = [];
  let turns = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => done = r);
  const stop = serveUdp(srv, (d, src, port) => {
    seen.push(d[0]!);
    srv.queue(d, d.length, src, port); // echo, sent at the turn's end
  }, () => {
    turns++;
    srv.flush();
    if (seen.length === 5) done();
  }, (e) => assert.fail(e.message));
  for (let i = 0; i < 5; i++) cli.queue(new Uint8Array([i]), 1, LO, srv.port);
  cli.flush();
  await finished;
  stop();
  assert.deepEqual(seen, [0, 1, 2, 3, 4]);
  assert.ok(turns >= 1 && turns <= 5);
  assert.equal(await cli.wait(2000), true);
  const back: number[] = [];
  cli.receive((d) => back.push(d[0]!));
  assert.deepEqual(back, [0, 1, 2, 3, 4]);
  srv.close(); // ends the loop's pending wait
  await new Promise((r) => setTimeout(r, 10));
});
