/**
 * The operator's status (`dpm status`, `--host`, `--json`, `--watch`) and
 * `dpm drop`: the streaming protocol of the operator socket (a header, one
 * line per item, a trailer; chunked writes with backpressure; a feed that
 * ends when its reader goes), the server core's rows (bytes, age, idle),
 * host views, drops and events, and the text the CLI prints.
 */

import assert from "node:assert/strict";
import {
  LocalStream,
  serveLocal,
  STREAM_CHUNK,
  streamLocal,
  writeStream,
} from "../../src/operator/socket.ts";
import { feed } from "../../src/operator/feed.ts";
import { serverOperator } from "../../src/operator/server_ops.ts";
import { ServerCore } from "../../src/server/core.ts";
import { DriverCore } from "../../src/driver/core.ts";
import { encodeRequest, newNonce, Op, type Request } from "../../src/control/proto.ts";
import { Verdict } from "../../src/wire/meta.ts";
import { IPPROTO_UDP } from "../../src/wire/packet.ts";
import {
  bytes,
  duration,
  formatDriverStatus,
  formatEvent,
  formatStatus,
} from "../../src/cli/format.ts";
import type {
  DriverStatusReply,
  SessionEvent,
  SessionView,
  StatusReply,
} from "../../src/operator/types.ts";
import { buildUdp } from "../../testing/packets.ts";
import {
  driverCfg,
  G,
  H1,
  H2,
  handleVerified,
  ip,
  LAN,
  P1,
  Pipe,
  serverCfg,
} from "../../testing/fixtures.ts";
import { Owner } from "../../src/table/table.ts";

/** A session row as a fake handler streams it. */
function fakeRow(i: number): SessionView {
  return {
    proto: "udp",
    internal: `10.0.${(i >> 8) & 255}.${i & 255}:${40000 + (i % 20000)}`,
    gatewayPort: 61000 + (i % 4000),
    public: `203.0.113.10:${1024 + i % 60000}`,
    remote: "198.51.100.10:7000",
    expiresIn: 300,
    flags: "",
    packetsOut: i,
    packetsIn: i,
    bytesOut: i * 100,
    bytesIn: i * 90,
    age: 5,
  };
}

Deno.test("stream: 100k rows go out in bounded chunks, each written before the next is built", async () => {
  const N = 100_000;
  let produced = 0;
  const writes: { size: number; produced: number }[] = [];
  const chunks: Uint8Array[] = [];
  const sink = {
    async write(b: Uint8Array) {
      writes.push({ size: b.length, produced });
      chunks.push(b.slice());
      // A slow reader: every write takes a turn of the event loop.
      await new Promise((ok) => setTimeout(ok, 0));
      return b.length;
    },
  };
  const stream = new LocalStream({ sessions: N }, function* () {
    for (let i = 0; i < N; i++) {
      produced++;
      yield fakeRow(i);
    }
  });
  const n = await writeStream(sink, stream, new AbortController().signal);
  assert.equal(n, N);
  // Never one giant string: many writes, none much over the chunk size.
  assert.ok(writes.length > 50, `${writes.length} writes`);
  const maxLine = 400;
  for (const w of writes) assert.ok(w.size <= STREAM_CHUNK + maxLine, `a write of ${w.size} bytes`);
  // Backpressure: when a chunk is written, the producer is at most one chunk ahead.
  const perChunk = Math.ceil(STREAM_CHUNK / 150);
  for (const [k, w] of writes.entries()) {
    assert.ok(w.produced <= (k + 1) * perChunk, `write ${k}: ${w.produced} rows produced`);
  }
  const dec = new TextDecoder();
  const text = chunks.map((c) => dec.decode(c)).join("");
  const lines = text.trimEnd().split("\n");
  assert.equal(lines.length, N + 2);
  assert.deepEqual(JSON.parse(lines[0]!), { sessions: N, stream: true });
  assert.deepEqual(JSON.parse(lines[1]!), fakeRow(0));
  assert.deepEqual(JSON.parse(lines[N]!), fakeRow(N - 1));
  assert.deepEqual(JSON.parse(lines[N + 1]!), { end: N });
});

Deno.test("stream: over the socket a client reads 100k rows as they come; plain answers still work", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const N = 100_000;
  const srv = await serveLocal(path, (req) => {
    if ((req as { op?: string }).op !== "big") return { plain: true };
    return new LocalStream({ kind: "big" }, function* () {
      for (let i = 0; i < N; i++) yield fakeRow(i);
    });
  });
  try {
    let header: Record<string, unknown> | null = null;
    let rows = 0;
    let trailer: Record<string, unknown> | null = null;
    for await (const m of streamLocal(path, { op: "big" })) {
      if (!header) header = m;
      else if (typeof m.end === "number") trailer = m;
      else {
        assert.equal(m.packetsOut, rows);
        rows++;
      }
    }
    assert.deepEqual(header, { kind: "big", stream: true });
    assert.equal(rows, N);
    assert.deepEqual(trailer, { end: N });
    const plain = [];
    for await (const m of streamLocal(path, { op: "small" })) plain.push(m);
    assert.deepEqual(plain, [{ plain: true }]);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stream: an event feed ends (and unsubscribes) when its reader goes", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const listeners = new Set<(e: number) => void>();
  const subscribe = (fn: (e: number) => void) => {
    listeners.add(fn);
    return () => void listeners.delete(fn);
  };
  const srv = await serveLocal(
    path,
    () => new LocalStream({ op: "watch" }, (signal) => feed<number>(subscribe, signal)),
  );
  try {
    const got: unknown[] = [];
    const reader = (async () => {
      for await (const m of streamLocal(path, {})) {
        got.push(m);
        if (got.length === 4) break; // header + 3 events
      }
    })();
    while (listeners.size === 0) await new Promise((ok) => setTimeout(ok, 5));
    for (let i = 1; i <= 3; i++) {
      for (const l of listeners) l(i);
      await new Promise((ok) => setTimeout(ok, 5));
    }
    await reader;
    assert.deepEqual(got, [{ op: "watch", stream: true }, 1, 2, 3]);
    for (let k = 0; k < 100 && listeners.size; k++) await new Promise((ok) => setTimeout(ok, 10));
    assert.equal(listeners.size, 0, "the feed unsubscribed");
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("feed: a slow reader costs at most `max` queued events, then one 'lost' line", async () => {
  let fire: (e: number) => void = () => {};
  const ac = new AbortController();
  const it = feed<number>((fn) => (fire = fn, () => {}), ac.signal, (e) => e % 2 === 0, 3);
  const first = it.next();
  for (let i = 0; i < 20; i++) fire(i); // evens kept: 0 2 4 queued, 6..18 lost
  const got = [(await first).value];
  for (let k = 0; k < 3; k++) got.push((await it.next()).value);
  assert.deepEqual(got, [0, 2, 4, { event: "lost", count: 7 }]);
  ac.abort();
  assert.equal((await it.next()).done, true);
});

// ---------------------------------------------------------------- the server core

function reserve(core: ServerCore, a: number, pa: number, x = P1, px = 7000): void {
  const r: Request = {
    op: Op.RESERVE,
    nonce: newNonce(),
    proto: IPPROTO_UDP,
    replaceable: true,
    internalAddr: a,
    internalPort: pa,
    remoteAddr: x,
    remotePort: px,
    lifetime: 0,
  };
  assert.ok(handleVerified(core, encodeRequest(r), a));
}

Deno.test("server status: rows carry bytes, packets, age and idle; a host's view has its quota use and refusals", () => {
  let now = 1_000_000;
  const core = new ServerCore(serverCfg({ maxSessionsPerHost: 2 }), { lan: LAN, now: () => now });
  reserve(core, H1, 40000);
  now += 10_000;
  reserve(core, H1, 40001);
  reserve(core, H2, 40000);
  reserve(core, H1, 40002); // over the quota
  const [row0] = core.rows({ host: H1 });
  assert.ok(row0);
  const pg = row0.gatewayPort;
  // One packet out through the queue path: 32 bytes (20 IP + 8 UDP + 4).
  now += 2_000;
  const pkt = buildUdp({ src: H1, sport: 40000, dst: G, dport: pg });
  assert.equal(core.handlePacket(pkt), Verdict.MODIFIED);
  now += 3_000;
  core.expire(); // samples last-seen on the queue path
  now += 4_000;
  const rows = [...core.rows({ host: H1 })];
  assert.equal(rows.length, 2);
  const r0 = rows.find((r) => r.internal === "10.0.0.11:40000")!;
  assert.deepEqual([r0.packetsOut, r0.bytesOut, r0.packetsIn, r0.bytesIn], [1, 32, 0, 0]);
  assert.equal(r0.age, 19);
  assert.equal(r0.idle, 4, "seen moving at the sweep 4 s ago");
  const r1 = rows.find((r) => r.internal === "10.0.0.11:40001")!;
  assert.equal(r1.age, 9);
  assert.equal(r1.idle, undefined, "no packet yet");
  const h = core.statusHeader(H1).host!;
  assert.equal(h.host, "10.0.0.11");
  assert.deepEqual([h.sessions, h.quota, h.byProto.udp], [2, 2, 2]);
  assert.equal(h.refusals["quota-exceeded"], 1);
  assert.match(h.lastRefusal!.request, /reserve udp 10\.0\.0\.11:40002 -> 198\.51\.100\.10:7000/);
  assert.ok(h.paired);
  // The text an operator reads.
  const text = formatStatus({ ...core.statusHeader(H1), shown: rows });
  assert.match(text, /host 10\.0\.0\.11: 2\/2 sessions \(tcp 0, udp 2, icmp 0\)/);
  assert.match(text, /refused: quota-exceeded 1; last \d+s ago: reserve udp 10\.0\.0\.11:40002/);
  assert.match(text, /AGE\s+IDLE\s+EXPIRES\s+FLAGS\s+PKTS OUT\/IN\s+BYTES OUT\/IN/);
  assert.match(text, /10\.0\.0\.11:40000 .* 19s\s+4s\s+\d+s .* 1\/0\s+32 B\/0 B/);
  assert.doesNotMatch(text, /10\.0\.0\.12/);
});

Deno.test("server drop: one session by identity, or all of a host's; events tell up, down (why) and refused", () => {
  let now = 5_000;
  const core = new ServerCore(serverCfg({ maxSessionsPerHost: 3 }), { lan: LAN, now: () => now });
  const events: SessionEvent[] = [];
  const stop = core.watch((e) => events.push(e));
  for (const pa of [40000, 40001, 40002]) reserve(core, H1, pa);
  reserve(core, H1, 40003); // refused: quota
  reserve(core, H2, 40000);
  assert.deepEqual(events.map((e) => e.event), ["up", "up", "up", "refused", "up"]);
  const op = serverOperator(core);
  assert.deepEqual(
    op({ op: "drop", proto: "udp", internal: "10.0.0.11:40001", remote: "198.51.100.10:7000" }),
    { dropped: 1 },
  );
  assert.deepEqual(
    op({ op: "drop", proto: "udp", internal: "10.0.0.11:40001", remote: "198.51.100.10:7000" }),
    { dropped: 0 },
  );
  assert.deepEqual(op({ op: "drop", host: "10.0.0.11" }), { dropped: 2 });
  assert.equal(core.table.sessionsOf(H1), 0);
  assert.equal(core.table.sessionsOf(H2), 1);
  now += 86_400_000 * 2;
  core.expire();
  const downs = events.filter((e) => e.event === "down") as Extract<
    SessionEvent,
    { event: "down" }
  >[];
  assert.deepEqual(downs.map((e) => e.reason), ["dropped", "dropped", "dropped", "expired"]);
  const refused = events.find((e) => e.event === "refused")!;
  assert.deepEqual(refused, {
    event: "refused",
    host: "10.0.0.11",
    request: "reserve udp 10.0.0.11:40003 -> 198.51.100.10:7000",
    result: "quota-exceeded",
  });
  stop();
  reserve(core, H1, 40009);
  assert.equal(events.filter((e) => e.event === "up").length, 4, "unsubscribed");
  assert.ok((op({ op: "drop", host: "nope" }) as { error: string }).error);
  assert.ok((op({ op: "drop", proto: "udp" }) as { error: string }).error);
});

Deno.test("server status: streamed, the whole table (past 1000 rows) and a host's part", () => {
  const core = new ServerCore(serverCfg(), { lan: LAN });
  for (let i = 0; i < 1500; i++) reserve(core, ip(`10.0.0.${20 + (i % 100)}`), 40000 + i);
  const op = serverOperator(core);
  assert.equal((op({ op: "status" }) as StatusReply).shown.length, 1000, "the old single answer");
  const s = op({ op: "status", stream: true }) as LocalStream;
  assert.ok(s instanceof LocalStream);
  assert.equal(s.header.sessions, 1500);
  assert.equal([...(s.items(new AbortController().signal) as Iterable<unknown>)].length, 1500);
  const h = op({ op: "status", stream: true, host: "10.0.0.20" }) as LocalStream;
  const rows = [...(h.items(new AbortController().signal) as Iterable<SessionView>)];
  assert.equal(rows.length, 15);
  assert.ok(rows.every((r) => r.internal.startsWith("10.0.0.20:")));
  assert.equal((h.header.host as { sessions: number }).sessions, 15);
  const lim = op({ op: "status", stream: true, limit: 10 }) as LocalStream;
  assert.equal([...(lim.items(new AbortController().signal) as Iterable<unknown>)].length, 10);
  assert.ok((op({ op: "status", stream: true, host: "x" }) as { error: string }).error);
});

Deno.test("watch: the operator feed filters by host", async () => {
  const core = new ServerCore(serverCfg(), { lan: LAN });
  const op = serverOperator(core);
  const ac = new AbortController();
  const s = op({ op: "watch", host: "10.0.0.12" }) as LocalStream;
  assert.deepEqual(s.header, { op: "watch", host: "10.0.0.12" });
  const it = (s.items(ac.signal) as AsyncIterable<SessionEvent>)[Symbol.asyncIterator]();
  const next = it.next();
  reserve(core, H1, 40000);
  reserve(core, H2, 40000);
  const e = (await next).value as SessionEvent;
  assert.equal(e.event, "up");
  assert.equal((e as SessionView).internal, "10.0.0.12:40000");
  ac.abort();
  await it.return?.();
});

// ---------------------------------------------------------------- the text

Deno.test("format: bytes and durations as an operator reads them", () => {
  assert.equal(bytes(0), "0 B");
  assert.equal(bytes(1023), "1023 B");
  assert.equal(bytes(1536), "1.50 KiB");
  assert.equal(bytes(50 * 1024 * 1024), "50.0 MiB");
  assert.equal(bytes(3 * 1024 ** 3), "3.00 GiB");
  assert.equal(duration(0), "0s");
  assert.equal(duration(59), "59s");
  assert.equal(duration(192), "3m12s");
  assert.equal(duration(7440), "2h04m");
  assert.equal(duration(3 * 86400 + 7200), "3d02h");
});

Deno.test("format: watch lines, like conntrack -E", () => {
  const at = new Date(2024, 0, 1, 12, 34, 56);
  const row = fakeRow(3);
  assert.equal(
    formatEvent({ event: "up", ...row }, at),
    "12:34:56 [UP]      udp 10.0.0.3:40003 -> 198.51.100.10:7000  public 203.0.113.10:1027  pg 61003  expires 300s",
  );
  assert.match(
    formatEvent({ event: "down", reason: "dropped", ...row }, at),
    /^12:34:56 \[DOWN\] {4}udp 10\.0\.0\.3:40003 -> 198\.51\.100\.10:7000 .* dropped after 5s {2}packets 3\/3 {2}bytes 300 B\/270 B$/,
  );
  assert.equal(
    formatEvent({
      event: "refused",
      host: "10.0.0.11",
      request: "reserve udp x",
      result: "quota-exceeded",
    }, at),
    "12:34:56 [REFUSED] 10.0.0.11: reserve udp x: quota-exceeded",
  );
  assert.match(formatEvent({ event: "lost", count: 4 }, at), /\[LOST\]\s+4 event/);
});

Deno.test("format: the server status says how many rows are not shown and the data path's state", () => {
  const base: StatusReply = {
    version: "0.1.0",
    epoch: 0xabc,
    uptime: 3725,
    lanAddr: "10.0.0.1",
    pool: ["203.0.113.10"],
    dataPath: { kind: "kernel", state: "degraded", reinstalls: 1, lastError: "table gone" },
    sessions: 1500,
    shown: [fakeRow(1), fakeRow(2)],
    results: { ok: 3, "quota-exceeded": 0 },
    drops: {},
    packets: { in: 1, out: 2, hairpin: 0 },
  };
  const t = formatStatus(base);
  assert.match(t, /up 1h02m .* data path kernel degraded \(table gone\)/);
  assert.match(t, /\.\.\. 1498 more \(use --json\)/);
  assert.match(t, /control results: ok 3$/m);
  assert.match(t, /100 B\/90 B/);
  assert.doesNotMatch(t, /HA:/, "no HA lines without --ha");
  // --ha: the role, the peer, the mirror; a standby that fell behind says so.
  const ha = formatStatus({
    ...base,
    ha: {
      role: "standby",
      since: Date.UTC(2026, 0, 2, 3, 4, 5),
      transitions: 2,
      vrrp: "BACKUP",
      peer: "10.255.0.2",
      lastTakeoverMs: 87,
      lastClaimMs: 52,
      failedTransitions: 0,
      mirror: { sessions: 200, events: 634, refused: 0, lost: 1, reconciles: 7, lagSeconds: 45 },
      sync: {
        bytesSent: 1000,
        bytesReceived: 2000,
        packetsSent: 10,
        packetsReceived: 20,
        errors: 0,
        lostMessages: 3,
        malformedMessages: 0,
        injected: { created: 200, updated: 400, destroyed: 5, failed: 1 },
        resendQueue: 0,
      },
      syncError: null,
      behind: true,
      refreshed: 0,
      adverts: {
        heard: 1200,
        lastAt: Date.now() - 100,
        lastFrom: "10.0.0.2",
        lastPriority: 150,
        whileActive: 0,
        splitBrains: 0,
        ignored: 0,
      },
      priority: 100,
    },
  });
  assert.match(
    ha,
    /^HA: standby since 2026-01-02T03:04:05.000Z \(keepalived: BACKUP\), 2 transition\(s\), peer 10\.255\.0\.2, last takeover 87 ms$/m,
  );
  assert.match(
    ha,
    /mirror: 200 session\(s\) from replicas, 634 event\(s\), 7 reconcile\(s\), last 45\.0 s ago, events lost 1 time\(s\); BEHIND/,
  );
  assert.match(
    ha,
    /VRRP adverts from the peer: 1200, last 0\.\d s ago from 10\.0\.0\.2 \(priority 150\); own priority 100; split brains 0$/m,
  );
});

Deno.test("format: a mapping's owner and description, the mappings by owner, PCP's and NAT-PMP's answers and the UPnP IGD", () => {
  const row: SessionView = {
    ...fakeRow(1),
    remote: "*",
    flags: "map",
    owner: "upnp",
    description: "my game",
  };
  const t = formatStatus({
    version: "0.1.0",
    epoch: 1,
    uptime: 1,
    lanAddr: "10.0.0.1",
    pool: ["203.0.113.10"],
    dataPath: { kind: "off", state: "off", reinstalls: 0 },
    sessions: 2,
    shown: [row, { ...fakeRow(2), owner: "natpmp" }],
    results: {},
    drops: {},
    packets: { in: 0, out: 0, hairpin: 0 },
    protocols: {
      mappings: { adopted: 0, dpm: 0, pcp: 0, natpmp: 1, upnp: 1 },
      pcp: { success: 0 },
      natpmp: { success: 1 },
      upnp: {
        locations: ["http://10.0.0.1:5000/igd1/desc.xml"],
        bootId: 7,
        http: { "200": 3 },
        actions: { AddPortMapping: 1 },
        faults: { "718": 2 },
        ssdp: { answered: 1, answers: 3, notLan: 0 },
        listener: { served: 3 },
      },
    },
  });
  assert.match(t, /BYTES OUT\/IN\s+OWNER$/m);
  assert.match(t, /map .* upnp "my game"$/m);
  assert.match(t, /natpmp$/m);
  assert.match(t, /^mappings: natpmp 1, upnp 1$/m);
  assert.match(t, /^PCP: none; NAT-PMP: success 1$/m);
  assert.match(
    t,
    /^UPnP: http:\/\/10\.0\.0\.1:5000\/igd1\/desc\.xml \(boot id 7\); actions: AddPortMapping 1; faults: 718 2; SSDP: answered 1, answers 3$/m,
  );
});

Deno.test("server status: the mappings by owner, and PCP's and NAT-PMP's answers by result, in the status and the metrics", async () => {
  const core = new ServerCore(serverCfg(), { lan: LAN });
  core.policy.map({ owner: Owner.NATPMP, a: H1 }, {
    proto: 17,
    pa: 6000,
    p: 0,
    r: 0,
    lifetime: 600,
    exact: false,
  }, core.now());
  core.upnp.add({
    client: H1,
    proto: 6,
    internalPort: 7000,
    externalPort: 7000,
    any: false,
    lifetime: 600,
    description: "web",
  }, core.now());
  const st = core.status();
  assert.deepEqual(st.protocols?.mappings, { adopted: 0, dpm: 0, pcp: 0, natpmp: 1, upnp: 1 });
  assert.equal(st.protocols?.upnp, undefined, "no IGD serving here");
  assert.equal(st.protocols?.pcp?.success, 0);
  const web = st.shown.find((r) => r.internal.endsWith(":7000"))!;
  assert.deepEqual([web.owner, web.description, web.remote], ["upnp", "web", "*"]);
  core.upnpStatus = () => ({
    locations: ["http://10.0.0.1:5000/igd1/desc.xml"],
    bootId: 9,
    http: { "200": 1 },
    actions: { AddPortMapping: 1 },
    faults: { "606": 1 },
    ssdp: { answered: 0, notLan: 2 },
    listener: { served: 1, timedOut: 1 },
  });
  const { serverFamilies } = await import("../../src/server/metrics.ts");
  const fams = serverFamilies(core);
  const sample = (name: string, labels: Record<string, string>) =>
    fams.find((f) => f.name === name)?.samples.find((x) =>
      Object.entries(labels).every(([k, v]) => x.labels?.[k] === v)
    )?.value;
  assert.equal(sample("dpm_mappings", { owner: "upnp" }), 1);
  assert.equal(sample("dpm_mappings", { owner: "natpmp" }), 1);
  assert.equal(sample("dpm_upnp_faults_total", { code: "606" }), 1);
  assert.equal(sample("dpm_upnp_actions_total", { action: "AddPortMapping" }), 1);
  assert.equal(sample("dpm_upnp_ssdp_total", { event: "not_lan" }), 2);
  assert.equal(sample("dpm_upnp_connections_total", { outcome: "timed_out" }), 1);
});

Deno.test("format: the driver status says whether the server answers", async () => {
  const server = new ServerCore(serverCfg(), { lan: LAN });
  const d = new DriverCore(driverCfg(), new Pipe(server, H1), {
    lan: LAN,
    ephemeral: [32768, 60999],
  });
  const before = await d.query({ op: "status" }) as DriverStatusReply;
  assert.deepEqual(before.control, { answering: true });
  assert.match(
    formatDriverStatus(before),
    /server answering: last answer never, last timeout never/,
  );
  const q = await d.query({
    op: "query",
    proto: "udp",
    local: "10.0.0.11:40000",
    remote: "198.51.100.10:7000",
    reserve: true,
  });
  assert.equal((q as { result: string }).result, "ok");
  const after = await d.query({ op: "status" }) as DriverStatusReply;
  assert.equal(after.control!.lastAnswer, 0);
  const text = formatDriverStatus(after);
  assert.match(text, /server answering: last answer 0s ago, last timeout never/);
  assert.match(text, /control: sent \d+\s+retransmits \d+\s+timeouts 0/);
  assert.match(text, /IDLE\s+EXPIRES/);
  const down: DriverStatusReply = {
    ...after,
    control: { lastAnswer: 40, lastTimeout: 2, answering: false },
  };
  assert.match(
    formatDriverStatus(down),
    /server NOT ANSWERING: last answer 40s ago, last timeout 2s ago/,
  );
});

Deno.test("metrics: the HA role, the mirror and whether it has fallen behind (--ha only)", async () => {
  const { serverFamilies } = await import("../../src/server/metrics.ts");
  const core = new ServerCore(serverCfg(), { lan: serverCfg().lan });
  assert.ok(!serverFamilies(core).some((f) => f.name.startsWith("dpm_ha_")), "none without --ha");
  core.haStatus = () => ({
    role: "active",
    since: 0,
    transitions: 3,
    vrrp: "MASTER",
    peer: null,
    lastTakeoverMs: 87,
    lastClaimMs: 52,
    failedTransitions: 0,
    mirror: { sessions: 200, events: 634, refused: 0, lost: 0, reconciles: 7, lagSeconds: null },
    sync: {
      bytesSent: 1000,
      bytesReceived: 2000,
      packetsSent: 10,
      packetsReceived: 20,
      errors: 0,
      lostMessages: 3,
      malformedMessages: 0,
      injected: { created: 200, updated: 400, destroyed: 5, failed: 1 },
      resendQueue: 7,
    },
    syncError: null,
    behind: false,
    refreshed: 12,
    adverts: {
      heard: 40,
      lastAt: Date.now() - 2000,
      lastFrom: "10.0.0.3",
      lastPriority: 100,
      whileActive: 40,
      splitBrains: 2,
      ignored: 1,
    },
    priority: 150,
  });
  const fams = serverFamilies(core);
  const value = (name: string, labels: Record<string, string> = {}) =>
    fams.find((f) => f.name === name)?.samples.find((x) =>
      Object.entries(labels).every(([k, v]) => x.labels?.[k] === v)
    )?.value;
  assert.equal(value("dpm_ha_role", { role: "active" }), 1);
  assert.equal(value("dpm_ha_role", { role: "standby" }), 0);
  assert.equal(value("dpm_ha_transitions_total"), 3);
  assert.equal(value("dpm_ha_last_takeover_seconds"), 0.087);
  assert.equal(value("dpm_ha_mirror_sessions"), 200);
  assert.equal(value("dpm_ha_behind"), 0);
  assert.equal(value("dpm_ha_refreshed_total"), 12);
  assert.equal(value("dpm_ha_mirror_lag_seconds"), undefined, "no lag while active");
  assert.equal(value("dpm_ha_sync_lost_messages_total"), 3);
  assert.equal(value("dpm_ha_split_brain_total"), 2);
  assert.equal(value("dpm_ha_adverts_heard_total"), 40);
  const age = value("dpm_ha_last_advert_age_seconds")!;
  assert.ok(age >= 2 && age < 60, `advert age ${age}`);
  assert.equal(value("dpm_ha_sync_bytes_total", { direction: "received" }), 2000);
  assert.equal(value("dpm_ha_sync_resend_queue"), 7);
});
