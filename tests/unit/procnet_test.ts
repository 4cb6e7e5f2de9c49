/**
 * Tests of linux/procnet.ts: the `/proc/net/{udp,tcp}[6]` parser on sample
 * text as kernel 6.x prints it, who holds a port, and the reader on this
 * host's own tables (a socket this process binds is found with our uid).
 */

import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { ownersByPort, parseProcNet, portOwners, readProcNet } from "../../linux/procnet.ts";

const UDP =
  `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:9CA4 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 31337 2 0000000000000000 0
  456: 0B00000A:13C4 07000000:13C4 01 00000000:00000000 00:00000000 00000000     0        0 40001 2 0000000000000000 0
`;

const TCP =
  `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 39 1 000000000ff5a88d 100 0 0 10 0
   1: 0B00000A:9C40 0771A8C6:01BB 01 00000000:00000000 02:000A7D4D 00000000  1000        0 52410 2 0000000000000000 20 4 29 10 -1
   2: 0B00000A:9C41 0771A8C6:01BB 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
`;

const TCP6 =
  `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 777 1 0000000000000000 100 0 0 10 0
`;

Deno.test("procnet: the udp table parses into ports, states, uids and inodes", () => {
  assert.deepEqual(parseProcNet(UDP), [
    {
      localAddr: "00000000",
      localPort: 40100,
      remoteAddr: "00000000",
      remotePort: 0,
      state: 7,
      uid: 65534,
      inode: 31337,
    },
    {
      localAddr: "0B00000A",
      localPort: 5060,
      remoteAddr: "07000000",
      remotePort: 5060,
      state: 1,
      uid: 0,
      inode: 40001,
    },
  ]);
});

Deno.test("procnet: tcp listening and connected sockets own their port; TIME_WAIT (inode 0) does not", () => {
  const t = parseProcNet(TCP);
  assert.equal(t.length, 3);
  assert.deepEqual(t.map((s) => [s.localPort, s.state, s.uid, s.inode]), [
    [80, 0x0a, 0, 39],
    [40000, 0x01, 1000, 52410],
    [40001, 0x06, 0, 0],
  ]);
  assert.deepEqual(portOwners(t, 80), [0]);
  assert.deepEqual(portOwners(t, 40000), [1000]);
  assert.deepEqual(portOwners(t, 40001), [], "a TIME_WAIT entry's uid 0 is not an owner");
  assert.deepEqual(portOwners(t, 443), [], "the remote port is not the local one");
  // IPv6 lines (dual-stack sockets) parse the same.
  const six = parseProcNet(TCP6);
  assert.deepEqual(six.map((s) => [s.localAddr.length, s.localPort, s.uid]), [[32, 8080, 101]]);
  const all = ownersByPort([...t, ...six, ...parseProcNet(UDP)]);
  assert.deepEqual(all.get(8080), [101]);
  assert.deepEqual(all.get(40001), undefined);
  // Several users on one port: every uid, sorted, once.
  const shared = [...t, { ...t[1]!, uid: 7, inode: 9 }, { ...t[1]!, inode: 10 }];
  assert.deepEqual(portOwners(shared, 40000), [7, 1000]);
  assert.deepEqual(ownersByPort(shared).get(40000), [7, 1000]);
});

Deno.test("procnet: headers, blank and malformed lines are skipped", () => {
  assert.deepEqual(parseProcNet(""), []);
  assert.deepEqual(parseProcNet(UDP.split("\n")[0]!), []);
  assert.deepEqual(
    parseProcNet("   1: 00000000:ZZZZ 00000000:0000 07 0:0 0:0 0 0 0 5 2\n   2: nonsense\n"),
    [],
  );
});

Deno.test("procnet: the reader finds a UDP and a TCP socket this process holds, with our uid", async () => {
  const udp = createSocket("udp4");
  await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", resolve));
  const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const up = udp.address().port;
    const tp = (tcp.addr as Deno.NetAddr).port;
    assert.deepEqual(portOwners(readProcNet("udp"), up), [Deno.uid()]);
    assert.deepEqual(ownersByPort(readProcNet("tcp")).get(tp), [Deno.uid()]);
  } finally {
    await new Promise<void>((resolve) => udp.close(() => resolve()));
    tcp.close();
  }
  assert.throws(() => readProcNet("udp", "/nonexistent-dpm"), Deno.errors.NotFound);
});
