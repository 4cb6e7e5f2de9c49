/**
 * linux/waiter.ts on loopback UDP sockets (no root needed): a wait resolves on data and
 * on timeout, a second concurrent wait is refused, and a close during a wait
 * wakes it and releases the descriptor only after the poll returned.
 *
 * @module
 */

import assert from "node:assert/strict";
import { FdWaiter } from "../../linux/waiter.ts";
import { UdpSocket } from "../../linux/udp.ts";

const LO = 0x7f000001;

Deno.test("waiter: resolves true when the descriptor is readable, false on timeout", async () => {
  using a = UdpSocket.open({ addr: LO, port: 0 });
  using b = UdpSocket.open({ addr: LO, port: 0 });
  const w = FdWaiter.open(b.fd, "Test");
  try {
    assert.equal(await w.wait(10), false);
    a.queue(new Uint8Array([1]), 1, LO, b.port);
    a.flush();
    assert.equal(await w.wait(2000), true);
  } finally {
    w.close(() => {});
  }
});

Deno.test("waiter: a second concurrent wait is refused with the owner's name", async () => {
  using b = UdpSocket.open({ addr: LO, port: 0 });
  const w = FdWaiter.open(b.fd, "Test");
  const first = w.wait(5000);
  await assert.rejects(() => w.wait(10), /Test\.wait\(\) is already pending/);
  let released = 0;
  w.close(() => released++);
  assert.equal(await first, false);
  assert.equal(released, 1);
});

Deno.test("waiter: close during a wait wakes it and releases only after the poll returned", async () => {
  using b = UdpSocket.open({ addr: LO, port: 0 });
  const w = FdWaiter.open(b.fd, "Test");
  const events: string[] = [];
  const pending = w.wait(-1).then((r) => {
    events.push(`woke ${r}`);
  });
  await new Promise((r) => setTimeout(r, 20));
  w.close(() => events.push("released"));
  assert.equal(events.length, 0, "nothing released while the poll runs");
  assert.equal(w.closing, true);
  await pending;
  assert.deepEqual(events, ["released", "woke false"]);
  // Idempotent, and waits after closing resolve false at once.
  w.close(() => events.push("again"));
  assert.equal(await w.wait(-1), false);
  assert.deepEqual(events, ["released", "woke false"]);
});

Deno.test("waiter: close without a wait releases at once", () => {
  using b = UdpSocket.open({ addr: LO, port: 0 });
  const w = FdWaiter.open(b.fd, "Test");
  let released = false;
  w.close(() => released = true);
  assert.equal(released, true);
});
