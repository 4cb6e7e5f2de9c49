/**
 * Answers per user on the driver's query socket (`--socket-group`): the
 * core's policy with an asker's uid and a stand-in for the host's socket
 * tables (who holds a port), against a real ServerCore through encoded
 * control messages; the socket layer handing the asker to the handler; the
 * client API's `not-yours` refusal. No root, no kernel.
 */

import assert from "node:assert/strict";
import { type Asker, DriverCore } from "../../src/driver/core.ts";
import { USER_LEASE } from "../../src/driver/mappings.ts";
import { ServerCore } from "../../src/server/core.ts";
import { type PeerFinder, serveLocal } from "../../src/operator/socket.ts";
import { IPPROTO_TCP, IPPROTO_UDP } from "../../src/wire/packet.ts";
import { map, queryPublic, reserve, SessionRefused } from "../../mod.ts";
import { driverCfg, H1, LAN, Pipe, R1, serverCfg } from "../../testing/fixtures.ts";
import { Op, type Response } from "../../src/control/proto.ts";

const NOBODY: Asker = { uid: 65534 };
const ROOT: Asker = { uid: 0 };
const LOCAL = "10.0.0.11";
const REMOTE = "198.51.100.7:7000";

/** A driver whose host has: nobody's UDP 40100 and TCP 8080, root's UDP 40200 and TCP 22. */
function rig(withOwners = true) {
  const owners = new Map<string, number>([
    [`${IPPROTO_UDP}/40100`, 65534],
    [`${IPPROTO_TCP}/8080`, 65534],
    [`${IPPROTO_UDP}/40200`, 0],
    [`${IPPROTO_TCP}/22`, 0],
  ]);
  const asked: string[] = [];
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const pipe = new Pipe(server, H1);
  const d = new DriverCore(driverCfg(), pipe, {
    lan: LAN,
    ephemeral: [32768, 60999],
    local: H1,
    ...(withOwners
      ? {
        ownerOf: (proto: number, port: number) => {
          asked.push(`${proto}/${port}`);
          return owners.get(`${proto}/${port}`) ?? null;
        },
      }
      : {}),
  });
  const q = (
    asker: Asker | undefined,
    port: number,
    o: { proto?: string; reserve?: boolean } = {},
  ) =>
    d.query({
      op: "query",
      proto: o.proto ?? "udp",
      local: `${LOCAL}:${port}`,
      remote: o.proto === "icmp" ? "198.51.100.7:0" : REMOTE, // ICMP: no remote port
      reserve: o.reserve ?? true,
    }, asker) as Promise<Record<string, unknown>>;
  return { d, q, pipe, server, owners, asked };
}

Deno.test("driver owner: nobody reserves and queries its own port; another user's port is not-yours, not even said to exist", async () => {
  const r = rig();
  const mine = await r.q(NOBODY, 40100);
  assert.equal(mine.result, "ok", JSON.stringify(mine));
  assert.match(String(mine.public), /^203\.0\.113\.10:\d+$/);
  assert.equal((await r.q(NOBODY, 40100, { reserve: false })).result, "ok");
  // Root's session exists; nobody asking about it learns nothing but the refusal.
  assert.equal((await r.q(ROOT, 40200)).result, "ok");
  const sent = r.pipe.sent.length;
  for (const reserve of [true, false]) {
    const no = await r.q(NOBODY, 40200, { reserve });
    assert.equal(no.result, "not-yours");
    assert.match(String(no.error), /udp port 40200 is held by another user's socket/);
    assert.equal(no.public, undefined);
  }
  // A port no socket holds: nothing is reserved in its name.
  const free = await r.q(NOBODY, 40300);
  assert.equal(free.result, "not-yours");
  assert.match(String(free.error), /No socket of yours \(uid 65534\) holds udp port 40300/);
  assert.equal(r.pipe.sent.length, sent, "no request reached the server for a refusal");
  assert.equal([...r.d.sessions()].length, 2);
  // TCP the same way; the protocol is part of the owner's key.
  assert.equal((await r.q(NOBODY, 8080, { proto: "tcp" })).result, "ok");
  assert.equal(
    (await r.q(NOBODY, 8080)).result,
    "not-yours",
    "nobody holds tcp 8080, not udp 8080",
  );
  assert.equal((await r.q(NOBODY, 22, { proto: "tcp" })).result, "not-yours");
});

Deno.test("driver owner: root and an asker not told (a root-only socket) get everything, as before", async () => {
  const r = rig();
  for (const [asker, port] of [[ROOT, 40300], [undefined, 40301], [ROOT, 40100]] as const) {
    assert.equal((await r.q(asker, port)).result, "ok", `${asker?.uid} ${port}`);
  }
  assert.equal((await r.q(undefined, 1, { proto: "icmp" })).result, "ok", "ICMP too");
  assert.deepEqual(r.asked, [], "no owner looked up for root");
  const st = await r.d.query({ op: "status" }, ROOT) as { sessions: unknown[] };
  assert.equal(st.sessions.length, 4);
});

Deno.test("driver owner: ICMP is root's only; no owner table means other users are refused", async () => {
  const r = rig();
  const icmp = await r.q(NOBODY, 4242, { proto: "icmp" });
  assert.equal(icmp.result, "not-yours");
  assert.match(String(icmp.error), /ICMP session has no socket .*only root/);
  const bare = rig(false);
  const no = await bare.q(NOBODY, 40100);
  assert.equal(no.result, "not-yours");
  assert.equal(bare.pipe.sent.length, 0);
  assert.equal((await bare.q(ROOT, 40100)).result, "ok");
});

Deno.test("driver owner: dpm map of a port nobody holds works; of root's port, of a free one and its delete: not-yours", async () => {
  const r = rig();
  const m = await r.d.query({ op: "map", proto: "udp", port: 40100, lifetime: 600 }, NOBODY);
  assert.equal((m as { result: string }).result, "ok", JSON.stringify(m));
  assert.ok(r.server.table.lookupMapOf(IPPROTO_UDP, H1, 40100) >= 0);
  assert.equal(
    (await r.d.query({ op: "map", proto: "tcp", port: 8080 }, NOBODY) as { result: string })
      .result,
    "ok",
  );
  const sent = r.pipe.sent.length;
  const root = await r.d.query({ op: "map", proto: "tcp", port: 22 }, NOBODY) as Record<
    string,
    unknown
  >;
  assert.deepEqual([root.result, root.proto], ["not-yours", "tcp"]);
  assert.match(String(root.error), /tcp port 22 is held by another user's socket/);
  const free = await r.d.query({ op: "map", proto: "udp", port: 6000 }, NOBODY) as Record<
    string,
    unknown
  >;
  assert.equal(free.result, "not-yours");
  assert.match(String(free.error), /No socket of yours .* udp port 6000/);
  // Root maps its port; nobody cannot delete it.
  assert.equal((await r.d.map({ proto: "udp", port: 40200 })).result, "ok");
  const del = await r.d.query({ op: "map", proto: "udp", port: 40200, lifetime: 0 }, NOBODY) as {
    result: string;
  };
  assert.equal(del.result, "not-yours");
  assert.ok(r.server.table.lookupMapOf(IPPROTO_UDP, H1, 40200) >= 0, "still there");
  assert.equal(r.pipe.sent.length, sent + 1, "only root's map reached the server");
  // Bad requests are still named as such first.
  const bad = await r.d.query({ op: "map", proto: "udp", port: 0 }, NOBODY) as { error: string };
  assert.match(bad.error, /1-65535/);
});

Deno.test("driver owner: status and sessions list only the asker's sessions and mappings; root's list all", async () => {
  const r = rig();
  await r.q(NOBODY, 40100);
  await r.q(NOBODY, 8080, { proto: "tcp" });
  await r.q(ROOT, 40200);
  await r.q(ROOT, 4242, { proto: "icmp" });
  await r.d.query({ op: "map", proto: "udp", port: 40100 }, NOBODY);
  await r.d.map({ proto: "tcp", port: 22 });
  type St = { role: string; stats: unknown; sessions: { local: string }[]; mappings: unknown[] };
  const mine = await r.d.query({ op: "status" }, NOBODY) as St;
  assert.equal(mine.role, "driver");
  assert.ok(mine.stats);
  assert.deepEqual(mine.sessions.map((s) => s.local).sort(), [
    `${LOCAL}:40100`,
    `${LOCAL}:8080`,
  ]);
  assert.deepEqual(
    (mine.mappings as { local: string }[]).map((m) => m.local),
    [`${LOCAL}:40100`],
  );
  const all = await r.d.query({ op: "status" }) as St;
  assert.equal(all.sessions.length, 4);
  assert.equal(all.mappings.length, 2);
  const list = await r.d.query({ op: "sessions" }, NOBODY) as { sessions: unknown[] };
  assert.equal(list.sessions.length, 2);
  // The port changed hands: its session is no longer nobody's to see.
  r.owners.set(`${IPPROTO_UDP}/40100`, 1000);
  const after = await r.d.query({ op: "status" }, NOBODY) as St;
  assert.deepEqual(after.sessions.map((s) => s.local), [`${LOCAL}:8080`]);
  assert.equal(after.mappings.length, 0);
  assert.equal(r.d.mappings().length, 2, "nothing was removed, only hidden");
});

Deno.test("driver owner: an asker the kernel could not tell is refused everything, with the reason", async () => {
  const r = rig();
  const who: Asker = { uid: null, why: "the client's socket is not in this network namespace" };
  for (
    const req of [
      { op: "status" },
      { op: "sessions" },
      { op: "map", proto: "udp", port: 40100 },
      { op: "query", proto: "udp", local: `${LOCAL}:40100`, remote: REMOTE, reserve: true },
    ]
  ) {
    const res = await r.d.query(req, who) as Record<string, unknown>;
    assert.equal(res.result, "not-yours", req.op);
    assert.match(String(res.error), /cannot tell which user asks \(the client's socket is not/);
    assert.match(String(res.error), /answers root only/);
  }
  assert.equal(r.pipe.sent.length, 0);
});

Deno.test("driver owner: the socket layer gives the handler the finder's peer; the client API throws SessionRefused not-yours", async () => {
  const dir = await Deno.makeTempDir();
  const socket = `${dir}/driver.sock`;
  const calls: string[] = [];
  let n = 0;
  const finder = (path: string): PeerFinder => {
    calls.push(`new ${path === socket}`);
    return {
      mark: () => void calls.push("mark"),
      peer: () => (calls.push("peer"), n++ % 2 ? { uid: null, why: "test" } : { uid: 65534 }),
      close: () => void calls.push("close"),
    };
  };
  const seen: unknown[] = [];
  const srv = await serveLocal(socket, (req, peer) => {
    seen.push(peer);
    const r = req as { op: string };
    if (peer?.uid === 65534 && r.op === "query") return { result: "ok", public: "203.0.113.10:1" };
    return { result: "not-yours", error: `udp port 1 is not yours (${peer?.why})` };
  }, { peers: finder });
  try {
    assert.equal((await queryPublic("udp", `${LOCAL}:1`, REMOTE, { socket }))?.port, 1);
    await assert.rejects(
      () => reserve("udp", `${LOCAL}:1`, REMOTE, { socket }),
      (e: Error) =>
        e instanceof SessionRefused && e.reason === "not-yours" &&
        /udp port 1 is not yours \(test\)/.test(e.detail) &&
        /not-yours \(udp port 1/.test(e.message),
    );
    n = 0;
    await assert.rejects(
      () => map("udp", 1, { socket }),
      (e: Error) => e instanceof SessionRefused && e.reason === "not-yours",
    );
    assert.deepEqual(seen, [{ uid: 65534 }, { uid: null, why: "test" }, { uid: 65534 }]);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
  // Created once; marked before every accept, asked after each; closed with the server.
  assert.deepEqual(calls.slice(0, 4), ["new true", "mark", "peer", "mark"]);
  assert.equal(calls.filter((c) => c === "peer").length, 3);
  assert.equal(calls.at(-1), "close");
  // Without a finder (a root-only socket) the handler gets no peer.
  const dir2 = await Deno.makeTempDir();
  const got: unknown[] = [];
  const plain = await serveLocal(`${dir2}/d.sock`, (_req, peer) => (got.push(peer), {
    result: "no-session",
  }));
  try {
    await queryPublic("udp", `${LOCAL}:1`, REMOTE, { socket: `${dir2}/d.sock` });
    assert.deepEqual(got, [undefined]);
  } finally {
    await plain.close();
    await Deno.remove(dir2, { recursive: true });
  }
});

Deno.test("driver owner: a mapping made for nobody is deleted at the server once nobody's socket no longer holds the port; root's stay", async () => {
  let now = 1_000_000;
  const owners = new Map<string, number>([[`${IPPROTO_UDP}/6000`, 65534], [
    `${IPPROTO_UDP}/6001`,
    0,
  ]]);
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: () => now });
  const d = new DriverCore(driverCfg(), new Pipe(server, H1), {
    lan: LAN,
    ephemeral: [32768, 60999],
    local: H1,
    now: () => now,
    ownerOf: (proto, port) => owners.get(`${proto}/${port}`) ?? null,
  });
  const made = await d.query({ op: "map", proto: "udp", port: 6000 }, NOBODY) as Record<
    string,
    unknown
  >;
  assert.equal(made.result, "ok", JSON.stringify(made));
  assert.equal(
    (await d.query({ op: "map", proto: "udp", port: 6001 }, ROOT) as { result: string }).result,
    "ok",
  );
  now += 6_000;
  d.tick();
  assert.ok(
    server.table.lookupMapOf(IPPROTO_UDP, H1, 6000) >= 0,
    "kept while nobody holds the port",
  );
  // nobody's socket closes; later somebody else (root) binds the port.
  owners.set(`${IPPROTO_UDP}/6000`, 0);
  owners.delete(`${IPPROTO_UDP}/6001`); // root's mapping does not depend on a socket
  now += 6_000;
  d.tick();
  await new Promise((ok) => setTimeout(ok, 10));
  assert.equal(server.table.lookupMapOf(IPPROTO_UDP, H1, 6000), -1, "deleted at the server");
  assert.deepEqual(d.mappings().map((m) => m.local), ["10.0.0.11:6001"]);
  assert.ok(server.table.lookupMapOf(IPPROTO_UDP, H1, 6001) >= 0);
});

Deno.test("driver: a MAP answer that comes after its request timed out deletes the mapping nobody waits for", async () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const pipe = new Pipe(server, H1) as Pipe & { onLate?: ((res: Response) => void) | null };
  pipe.onLate = null;
  const d = new DriverCore(driverCfg(), pipe, { lan: LAN, ephemeral: [32768, 60999], local: H1 });
  // The server granted a mapping whose answer the driver never got in time.
  const g = server.table.map(
    { proto: IPPROTO_UDP, a: H1, pa: 7000, p: 0, r: 0, lifetime: 600 },
    Date.now(),
  );
  assert.equal(g.result, 0);
  pipe.onLate!({
    op: Op.MAP,
    nonce: new Uint8Array(8),
    result: 0,
    proto: IPPROTO_UDP,
    replaced: false,
    shared: false,
    internalAddr: H1,
    internalPort: 7000,
    remoteAddr: 0,
    remotePort: 0,
    publicAddr: g.r,
    publicPort: g.p,
    gatewayPort: 0,
    lifetime: 600,
    epoch: server.epoch,
  });
  await new Promise((ok) => setTimeout(ok, 10));
  assert.equal(server.table.lookupMapOf(IPPROTO_UDP, H1, 7000), -1);
  assert.equal(d.mappings().length, 0);
});

Deno.test("driver owner: a mapping made for nobody holds a short server lease, renewed while nobody's socket holds the port; a restarted driver's forgotten one ends within that lease", async () => {
  let now = 1_000_000;
  const owners = new Map<string, number>([[`${IPPROTO_UDP}/6000`, 65534]]);
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: () => now });
  const driver = () =>
    new DriverCore(driverCfg(), new Pipe(server, H1), {
      lan: LAN,
      ephemeral: [32768, 60999],
      local: H1,
      now: () => now,
      ownerOf: (proto, port) => owners.get(`${proto}/${port}`) ?? null,
    });
  const d = driver();
  const made = await d.query(
    { op: "map", proto: "udp", port: 6000, lifetime: 3600 },
    NOBODY,
  ) as Record<string, unknown>;
  assert.equal(made.result, "ok", JSON.stringify(made));
  assert.equal(made.lifetime, 3600, "nobody is told the lifetime asked for");
  const s = server.table.lookupMapOf(IPPROTO_UDP, H1, 6000);
  assert.equal(server.table.lifetime(s), USER_LEASE, "the server holds it for the short lease");
  // Ten minutes of ticks: the driver renews it at half its lease each time.
  for (let i = 0; i < 600; i++) {
    now += 1000;
    d.tick();
    await new Promise((ok) => setTimeout(ok, 0));
  }
  const again = server.table.lookupMapOf(IPPROTO_UDP, H1, 6000);
  assert.ok(again >= 0, "still there after ten minutes");
  assert.ok(server.table.expiresAt(again) - now <= USER_LEASE * 1000);
  assert.equal(d.mappings().length, 1);
  // The driver restarts (a new one knows nothing of it): the server's lease runs out.
  const fresh = driver();
  now += USER_LEASE * 1000;
  fresh.tick();
  server.expire();
  assert.equal(server.table.lookupMapOf(IPPROTO_UDP, H1, 6000), -1, "gone within the short lease");
  // Root's mappings are unchanged: the lease asked for.
  assert.equal((await fresh.map({ proto: "udp", port: 6001, lifetime: 3600 })).result, "ok");
  assert.equal(server.table.lifetime(server.table.lookupMapOf(IPPROTO_UDP, H1, 6001)), 3600);
});
