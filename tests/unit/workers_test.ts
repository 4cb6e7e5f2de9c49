/**
 * `dpm server --workers N` without root: the slice arithmetic
 * (`src/table/slice.ts`), a table that owns one slice, the reuseport
 * program's bytes (`linux/reuseport.ts`), the held packets' memory of
 * grants a worker relays (`src/server/held.ts`), the flag's checks, and
 * the state files' worker count (`src/server/workers.ts`).
 */

import assert from "node:assert/strict";
import { sliceOf, sliceRange, workerOf } from "../../src/table/slice.ts";
import { SessionTable } from "../../src/table/table.ts";
import { shardBySourceProgram } from "../../linux/reuseport.ts";
import { UdpSocket } from "../../linux/udp.ts";
import { HeldPackets } from "../../src/server/held.ts";
import { ConfigError, serverConfig } from "../../src/config.ts";
import { checkWorkerCount, mergeHeaders, splitByWorker } from "../../src/server/workers.ts";
import { Result } from "../../src/control/result.ts";
import { IPPROTO_UDP } from "../../src/wire/meta.ts";

Deno.test("workers: slices cover the range once, contiguous, sizes differing by at most one", () => {
  for (const [min, max, n] of [[1024, 65535, 2], [1024, 65535, 3], [1, 10, 10], [100, 200, 7]]) {
    let next = min!;
    const sizes: number[] = [];
    for (let k = 0; k < n!; k++) {
      const [lo, hi] = sliceRange(min!, max!, { index: k, count: n! });
      assert.equal(lo, next, `slice ${k} of ${n} starts where ${k - 1} ended`);
      sizes.push(hi - lo + 1);
      for (const p of [lo, hi, Math.floor((lo + hi) / 2)]) {
        assert.equal(sliceOf(min!, max!, n!, p), k, `port ${p} is slice ${k}'s`);
      }
      next = hi + 1;
    }
    assert.equal(next, max! + 1);
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1);
  }
  assert.deepEqual(sliceRange(1024, 65535, { index: 0, count: 2 }), [1024, 33279]);
  assert.deepEqual(sliceRange(1024, 65535, { index: 1, count: 2 }), [33280, 65535]);
  // Outside the range (a fixed port below it): p mod N.
  assert.equal(sliceOf(1024, 65535, 2, 500), 0);
  assert.equal(sliceOf(1024, 65535, 3, 500), 2);
  assert.throws(() => sliceRange(1, 2, { index: 0, count: 3 }), /fewer than 3 slices/);
  assert.throws(() => sliceRange(1, 100, { index: 3, count: 3 }), /does not exist/);
  assert.equal(workerOf(0x0a00000b, 2), 1);
  assert.equal(workerOf(0x0a00000c, 2), 0);
  assert.equal(workerOf(0xc0000201, 3), 0xc0000201 % 3, "unsigned");
});

Deno.test("workers: a table with a slice allocates, preserves and shares only its own ports", () => {
  const t = new SessionTable({ pool: [0xcb00710a], slice: { index: 1, count: 2 } });
  const req = (a: number, pa: number, replaceable: boolean, x = 0xc6336401) => ({
    proto: IPPROTO_UDP,
    a,
    pa,
    x,
    px: 7000,
    replaceable,
    lifetime: 0,
  });
  const now = 1000;
  // 40000 is in slice 1: preserved.
  const s1 = t.reserve(req(0x0a00000b, 40000, true), now);
  assert.equal(s1.result, Result.OK);
  assert.equal(s1.p, 40000);
  // 5000 is in slice 0: a replaceable port moves into slice 1.
  for (let i = 0; i < 50; i++) {
    const s = t.reserve(req(0x0a00000b, 5000 + i, true), now);
    assert.equal(s.result, Result.OK);
    assert.ok(s.p >= 33280 && s.p <= 65535, `port ${s.p} is in slice 1`);
  }
  // A fixed port of slice 0 cannot be had here (it is worker 0's to give).
  const fixed = t.reserve(req(0x0a00000d, 5060, false), now);
  assert.equal(fixed.result, Result.CONFLICT);
  // A fixed port of slice 1 is shared between hosts, told apart by the remote.
  const f1 = t.reserve(req(0x0a00000d, 40500, false), now);
  const f2 = t.reserve(req(0x0a00000f, 40500, false, 0xc6336402), now);
  assert.equal(f1.result, Result.OK);
  assert.equal(f2.result, Result.OK);
  assert.equal(f1.p, 40500);
  assert.equal(f2.p, 40500);
});

Deno.test("workers: the reuseport program is A = saddr; A %= N; return A, as sock_filter bytes", () => {
  const b = shardBySourceProgram(3);
  assert.equal(b.length, 24);
  const dv = new DataView(b.buffer);
  const insn = (
    i: number,
  ) => [
    dv.getUint16(i * 8, true),
    dv.getUint8(i * 8 + 2),
    dv.getUint8(i * 8 + 3),
    dv.getUint32(i * 8 + 4, true),
  ];
  assert.deepEqual(insn(0), [0x20, 0, 0, 0xfff0000c], "BPF_LD|BPF_W|BPF_ABS at SKF_NET_OFF + 12");
  assert.deepEqual(insn(1), [0x94, 0, 0, 3], "BPF_ALU|BPF_MOD|BPF_K 3");
  assert.deepEqual(insn(2), [0x16, 0, 0, 0], "BPF_RET|BPF_A");
  assert.throws(() => shardBySourceProgram(0), RangeError);
});

Deno.test("workers: a grant relayed before its first packet reached the queue lets the packet go", () => {
  const pkt = {
    id: 1,
    bytes: new Uint8Array(1),
    skbInfo: 0,
    proto: 17,
    a: 11,
    pa: 40000,
    pg: 64000,
  };
  const plain = new HeldPackets();
  plain.decide(17, 11, 40000, 64000, true, 0);
  assert.equal(
    plain.hold(pkt, 1, () => {}),
    "hold",
    "one thread: the table has the session instead",
  );
  const main = new HeldPackets({ rememberGrants: true });
  main.decide(17, 11, 40000, 64000, true, 0);
  assert.equal(main.hold(pkt, 1, () => {}), "go");
  assert.equal(main.hold({ ...pkt, pa: 40001 }, 1, () => {}), "hold", "another pa: not this grant");
  main.decide(17, 11, 40002, 64001, false, 0);
  assert.equal(main.hold({ ...pkt, pa: 40002, pg: 64001 }, 1, () => {}), "refused");
  main.sweep(10_000, () => {});
  assert.equal(main.hold({ ...pkt, id: 2 }, 10_001, () => {}), "hold", "grants are forgotten");
});

Deno.test("workers: --workers > 1 is refused on the queue path and with --ha", () => {
  const base = { "lan-addr": "10.0.0.1", pool: "203.0.113.10-203.0.113.13" };
  assert.equal(serverConfig(base).workers, 1);
  for (const dp of ["kernel", "bpf", "auto"]) {
    assert.equal(serverConfig({ ...base, workers: 4, datapath: dp }).workers, 4);
  }
  assert.throws(
    () => serverConfig({ ...base, workers: 2, datapath: "queue" }),
    (e: Error) => e instanceof ConfigError && /not on --datapath queue/.test(e.message),
  );
  assert.throws(
    () =>
      serverConfig({
        ...base,
        workers: 2,
        ha: true,
        "lan-if": "lan0",
        "wan-if": "wan0",
        "ha-fifo": "/run/x",
        upnp: false,
      }),
    (e: Error) =>
      e instanceof ConfigError && /--workers 2 with --ha is not supported/.test(e.message),
  );
  assert.throws(() => serverConfig({ ...base, workers: 0 }), /--workers/);
});

Deno.test("workers: state files refuse another worker count, naming both", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const state = `${dir}/state.db`;
    await checkWorkerCount(state, 2); // fresh: recorded
    await checkWorkerCount(state, 2);
    await assert.rejects(
      () => checkWorkerCount(state, 3),
      (e: Error) => e instanceof ConfigError && /written by --workers 2, not 3/.test(e.message),
    );
    await Deno.remove(`${state}.workers`);
    await Deno.writeTextFile(state, "");
    await assert.rejects(() => checkWorkerCount(state, 2), /written by --workers 1, not 2/);
    await checkWorkerCount(state, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("workers: adopted sessions split by host, headers summed", () => {
  const s = (a: number) => ({ proto: 17, a, pa: 1, x: 2, px: 3, r: 4, p: 5, pg: 6 });
  const parts = splitByWorker([s(10), s(11), s(12), s(13)], 2, workerOf);
  assert.deepEqual(parts.map((p) => p.map((x) => x.a)), [[10, 12], [11, 13]]);
  const h = (n: number) => ({
    version: "v",
    epoch: 1,
    uptime: 1,
    lanAddr: "10.0.0.1",
    pool: [],
    dataPath: { kind: "kernel" as const, state: "on" as const, reinstalls: 0 },
    sessions: n,
    results: { ok: n },
    drops: { x: 1 },
    packets: { in: 1, out: 2, hairpin: 0 },
  });
  const m = mergeHeaders(h(3), [h(4), h(5)]);
  assert.equal(m.sessions, 12);
  assert.deepEqual(m.results, { ok: 12 });
  assert.deepEqual(m.packets, { in: 3, out: 6, hairpin: 0 });
});

Deno.test("workers: the kernel steers each source address to socket (address mod N) of a reuseport group", async () => {
  const LO = 0x7f000001;
  const { openControl } = await import("../../src/server/control_socket.ts");
  using s0 = openControl(LO, 0, 2);
  using s1 = UdpSocket.open({ addr: LO, port: s0.port, reusePort: true });
  const got: number[][] = [[], []];
  // Senders on 127.0.0.2..127.0.0.9 (loopback answers the whole 127/8).
  const senders: UdpSocket[] = [];
  try {
    for (let k = 2; k < 10; k++) {
      const c = UdpSocket.open({ addr: 0x7f000000 + k, port: 0 });
      senders.push(c);
      for (let i = 0; i < 4; i++) c.queue(new Uint8Array([k]), 1, LO, s0.port);
      c.flush();
    }
    const deadline = Date.now() + 5000;
    while (got[0]!.length + got[1]!.length < 32 && Date.now() < deadline) {
      for (const [i, s] of [s0, s1].entries()) {
        if (await s.wait(20)) s.receive((_d, src) => got[i]!.push(src));
      }
    }
    assert.equal(got[0]!.length + got[1]!.length, 32, "every datagram arrived");
    for (const [i, srcs] of got.entries()) {
      for (const src of srcs) assert.equal(workerOf(src, 2), i, `${src.toString(16)} reached ${i}`);
    }
    assert.equal(got[0]!.length, 16);
  } finally {
    for (const c of senders) c.close();
  }
});
