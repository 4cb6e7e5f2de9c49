/**
 * src/server/run.ts serveControl on loopback sockets (no root needed): no
 * answer leaves before the commit of the turn that made it, also when a turn
 * holds more answers than the socket's send batch (the socket would send a
 * full batch on its own). The core is a stub that answers every datagram and
 * records its commits.
 *
 * @module
 */

import assert from "node:assert/strict";
import { UdpSocket } from "../../linux/udp.ts";
import { serveControl } from "../../src/server/run.ts";

const LO = 0x7f000001;

Deno.test("server control: a turn larger than the send batch commits before each batch of answers goes", async () => {
  using srv = UdpSocket.open({ addr: LO, port: 0, batch: 4 });
  using cli = UdpSocket.open({ addr: LO, port: 0, batch: 64 });
  let handled = 0;
  let committed = 0;
  let commits = 0;
  const core = {
    handleControl: (msg: Uint8Array) => {
      handled++;
      return msg.slice();
    },
    commit: () => {
      commits++;
      committed = handled;
    },
    releaseHeld: () => {},
  };
  // Every send of the server's socket: what it sends must be committed.
  const violations: string[] = [];
  const flush = srv.flush.bind(srv);
  srv.flush = () => {
    const sentBefore = srv.stats.sent;
    if (sentBefore + srv.queued > committed) {
      violations.push(`${sentBefore + srv.queued} answers out, ${committed} committed`);
    }
    flush();
  };
  const stop = serveControl(srv, core, () => true);
  try {
    const n = 30; // one wake-up reads them all (recvmmsg 4 at a time, redrained)
    for (let i = 0; i < n; i++) cli.queue(new Uint8Array([i]), 1, LO, srv.port);
    cli.flush();
    const got = new Set<number>();
    const deadline = Date.now() + 5000;
    while (got.size < n && Date.now() < deadline) {
      if (await cli.wait(200)) cli.receive((d) => got.add(d[0]!));
    }
    assert.equal(got.size, n, "every datagram answered");
    assert.deepEqual(violations, [], "no answer before its commit");
    assert.ok(commits >= Math.ceil(n / 4) - 1, `a commit per full batch (${commits})`);
  } finally {
    stop();
  }
});
