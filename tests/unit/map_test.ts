/**
 * `dpm map`: the control protocol's MAP opcode (codec and server), the
 * driver's mappings (create, renew, delete, after a server restart, in its
 * status) and the client API's `map`, without the kernel.
 */

import assert from "node:assert/strict";
import {
  decodeRequest,
  decodeResponse,
  encodeRequest,
  newNonce,
  Op,
} from "../../src/control/proto.ts";
import { Result } from "../../src/control/result.ts";
import { DriverCore } from "../../src/driver/core.ts";
import { ServerCore } from "../../src/server/core.ts";
import { serveLocal } from "../../src/operator/socket.ts";
import { FakeServerDataPath } from "../../src/datapath/fake.ts";
import { DriverUnavailable, map, SessionRefused } from "../../mod.ts";
import {
  driverCfg,
  H1,
  H2,
  handleVerified,
  ip,
  LAN,
  P1,
  Pipe,
  R1,
  serverCfg,
} from "../../testing/fixtures.ts";

function mapReq(
  o: {
    proto?: number;
    a?: number;
    pa?: number;
    p?: number;
    lifetime?: number;
    exact?: boolean;
    x?: number;
  } = {},
) {
  return encodeRequest({
    op: Op.MAP,
    nonce: new Uint8Array(8).fill(7),
    proto: o.proto ?? 17,
    replaceable: !(o.exact ?? false),
    internalAddr: o.a ?? H1,
    internalPort: o.pa ?? 6000,
    remoteAddr: o.x ?? 0,
    remotePort: o.p ?? 0,
    lifetime: o.lifetime ?? 600,
  });
}

function answer(server: ServerCore, bytes: Uint8Array, src = H1) {
  const reply = handleVerified(server, bytes, src);
  assert.ok(reply, "the server answered");
  const d = decodeResponse(reply);
  assert.ok(d.ok, d.ok ? "" : d.reason);
  return d.res;
}

Deno.test("map codec: MAP has no remote address, its remote port is the suggested public port; ICMP and a remote are refused", () => {
  const d = decodeRequest(mapReq({ p: 7000 }));
  assert.ok(d.ok);
  assert.equal(d.req.op, Op.MAP);
  assert.equal(d.req.remoteAddr, 0);
  assert.equal(d.req.remotePort, 7000);
  const icmp = decodeRequest(mapReq({ proto: 1 }));
  assert.ok(!icmp.ok && icmp.result === Result.UNSUPPORTED_PROTOCOL);
  const remote = decodeRequest(mapReq({ x: P1 }));
  assert.ok(!remote.ok && remote.result === Result.MALFORMED);
  const port0 = decodeRequest(mapReq({ pa: 0 }));
  assert.ok(!port0.ok && port0.result === Result.MALFORMED);
});

Deno.test("map server: creates R:p for every remote, renews it, refuses an exact port it cannot give, deletes it", () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const t = server.table;
  const a = answer(server, mapReq({ pa: 6000, lifetime: 600 }));
  assert.equal(a.result, Result.OK);
  assert.equal(a.publicAddr, R1);
  assert.equal(a.publicPort, 6000, "the local port is the default suggestion");
  assert.equal(a.gatewayPort, 0);
  assert.equal(a.lifetime, 600);
  assert.equal(t.lookupMapping(17, R1, 6000) >= 0, true, "every remote's packets to R:p find it");
  // Asked again: the same pair, the lease renewed.
  const again = answer(server, mapReq({ pa: 6000, lifetime: 900 }));
  assert.deepEqual([again.result, again.publicAddr, again.publicPort, again.lifetime], [
    Result.OK,
    R1,
    6000,
    900,
  ]);
  // Another host wants the same public port, exactly: a mapping owns R:p for every remote.
  const taken = answer(server, mapReq({ a: H2, pa: 6000, p: 6000, exact: true }), H2);
  assert.equal(taken.result, Result.CONFLICT);
  const moved = answer(server, mapReq({ a: H2, pa: 6000, p: 6000 }), H2);
  assert.equal(moved.result, Result.OK);
  assert.notEqual(moved.publicPort, 6000, "without --exact the port is replaced");
  // Delete, then delete again.
  const del = answer(server, mapReq({ pa: 6000, lifetime: 0 }));
  assert.deepEqual([del.result, del.lifetime, del.publicPort], [Result.OK, 0, 0]);
  assert.equal(t.lookupMapping(17, R1, 6000), -1);
  // Idempotent, as in PCP: a retransmitted delete whose answer was lost is not an error.
  assert.equal(answer(server, mapReq({ pa: 6000, lifetime: 0 })).result, Result.OK);
});

Deno.test("map server: a host maps only its own endpoint, and only with its cookie", () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  // H2 asks in H1's name (claim 2).
  assert.equal(answer(server, mapReq({ a: H1 }), H2).result, Result.NOT_AUTHORIZED);
  // No cookie: nothing is created.
  const bare = server.handleControl(mapReq(), H1);
  const d = bare ? decodeResponse(bare) : null;
  assert.ok(d?.ok);
  assert.equal(d.res.result, Result.COOKIE_REQUIRED);
  assert.equal(server.table.lookupMapOf(17, H1, 6000), -1);
  // From outside the LAN: no answer at all.
  assert.equal(server.handleControl(mapReq({ a: ip("192.0.2.9") }), ip("192.0.2.9")), null);
});

function driverRig() {
  let now = 1_000_000;
  const clock = () => now;
  let server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: clock });
  const pipe = new Pipe(server, H1);
  const d = new DriverCore(driverCfg(), pipe, {
    lan: LAN,
    ephemeral: [32768, 60999],
    now: clock,
    local: H1,
  });
  return {
    d,
    get server() {
      return server;
    },
    restart() {
      server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN, now: clock });
      pipe.server = server;
    },
    advance(ms: number) {
      now += ms;
    },
  };
}

Deno.test("map driver: dpm map creates the mapping, status lists it, it expires, and lifetime 0 deletes it", async () => {
  const r = driverRig();
  const m = await r.d.map({ proto: "udp", port: 6000, lifetime: 120 });
  assert.equal(m.result, "ok");
  assert.equal(m.public, "203.0.113.10:6000");
  assert.equal(m.local, "10.0.0.11:6000");
  assert.equal(m.expiresIn, 120);
  const st = await r.d.query({ op: "status" }) as { mappings: unknown[] };
  assert.equal(st.mappings.length, 1);
  assert.ok(r.server.table.lookupMapOf(17, H1, 6000) >= 0);
  // Deleted at the server and forgotten by the driver.
  const del = await r.d.map({ proto: "udp", port: 6000, lifetime: 0 });
  assert.deepEqual([del.result, del.deleted], ["ok", true]);
  assert.equal(r.server.table.lookupMapOf(17, H1, 6000), -1);
  assert.equal(r.d.mappings().length, 0);
  assert.equal((await r.d.map({ proto: "udp", port: 6000, lifetime: 0 })).result, "ok");
  // Expiry: the driver forgets a mapping whose lease ran out.
  await r.d.map({ proto: "tcp", port: 8080, lifetime: 30 });
  assert.equal(r.d.mappings().length, 1);
  r.advance(31_000);
  r.d.tick();
  assert.equal(r.d.mappings().length, 0);
});

Deno.test("map driver: bad requests are named, an exact port that is taken is refused with conflict", async () => {
  const r = driverRig();
  assert.match(String((await r.d.map({ proto: "icmp", port: 1 })).error), /tcp or udp/);
  assert.match(String((await r.d.map({ proto: "udp", port: 0 })).error), /1-65535/);
  assert.match(String((await r.d.map({ proto: "udp", port: 5, lifetime: -1 })).error), /lifetime/);
  // Another host holds public port 7000 of the only pool address.
  const other = r.server.table.map(
    { proto: 17, a: H2, pa: 7000, p: 7000, r: 0, lifetime: 600 },
    1_000_000,
  );
  assert.equal(other.result, Result.OK);
  const c = await r.d.map({ proto: "udp", port: 7000, publicPort: 7000, exact: true });
  assert.equal(c.result, "conflict");
  assert.equal(r.d.mappings().length, 0);
});

Deno.test("map driver: after a server restart (new epoch) the driver asks for its mappings again", async () => {
  const r = driverRig();
  assert.equal((await r.d.map({ proto: "udp", port: 6000, lifetime: 600 })).result, "ok");
  r.restart();
  assert.equal(r.server.table.lookupMapOf(17, H1, 6000), -1, "the new server knows nothing");
  // Any answer from the new server shows its epoch: here a query that reserves a session.
  await r.d.query({
    op: "query",
    proto: "udp",
    local: "10.0.0.11:40000",
    remote: "198.51.100.10:7000",
    reserve: true,
  });
  for (let i = 0; i < 5 && r.server.table.lookupMapOf(17, H1, 6000) < 0; i++) {
    await new Promise((ok) => setTimeout(ok, 1));
  }
  const s = r.server.table.lookupMapOf(17, H1, 6000);
  assert.ok(s >= 0, "mapped again");
  assert.equal(r.server.table.p(s), 6000, "with the public port it had");
});

Deno.test("map client API: map returns the public pair, names refusals, and says when no driver answers", async () => {
  const dir = await Deno.makeTempDir();
  const socket = `${dir}/driver.sock`;
  const seen: Record<string, unknown>[] = [];
  const srv = await serveLocal(socket, (req) => {
    const r = req as Record<string, unknown>;
    seen.push(r);
    if (r.port === 2) return { result: "conflict", proto: "udp", local: "10.0.0.11:2" };
    if (r.lifetime === 0) return { result: "ok", deleted: true, local: "10.0.0.11:6000" };
    return {
      result: "ok",
      proto: "udp",
      local: "10.0.0.11:6000",
      public: "203.0.113.10:6000",
      lifetime: 600,
      expiresIn: 600,
    };
  });
  try {
    const m = await map("udp", 6000, { socket, lifetime: 600, publicPort: 6000 });
    assert.deepEqual(m, {
      public: "203.0.113.10:6000",
      address: "203.0.113.10",
      port: 6000,
      local: "10.0.0.11:6000",
      expiresIn: 600,
      deleted: false,
    });
    assert.deepEqual(seen[0], {
      op: "map",
      proto: "udp",
      port: 6000,
      lifetime: 600,
      publicPort: 6000,
      exact: false,
    });
    assert.equal((await map("udp", 6000, { socket, lifetime: 0 })).deleted, true);
    await assert.rejects(
      () => map("udp", 2, { socket }),
      (e: Error) => e instanceof SessionRefused && e.reason === "conflict",
    );
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
  await assert.rejects(() => map("udp", 6000, { socket }), DriverUnavailable);
});

Deno.test("map server: a data path that cannot carry mappings refuses MAP (as PCP does); a delete still succeeds", () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  server.attach(new FakeServerDataPath("queue")); // a queue path without its steering table
  assert.equal(answer(server, mapReq()).result, Result.UNSUPPORTED_OPCODE);
  assert.equal(server.table.lookupMapOf(17, H1, 6000), -1, "nothing was made");
  assert.equal(answer(server, mapReq({ lifetime: 0 })).result, Result.OK);
  const ok = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  ok.attach(new FakeServerDataPath("queue", { forwardsMappings: true }));
  assert.equal(answer(ok, mapReq()).result, Result.OK);
  ok.detach();
  assert.equal(answer(ok, mapReq({ pa: 6001 })).result, Result.UNSUPPORTED_OPCODE, "stopping");
});

Deno.test("server core: every grant and renewal of dpm's protocol, MAP included, reaches the table's subscribers (the state file keeps the lease)", () => {
  const server = new ServerCore(serverCfg({ pool: [R1] }), { lan: LAN });
  const told: string[] = [];
  server.table.subscribe({
    added: (s) => told.push(`added ${s}`),
    renewed: (s) => told.push(`renewed ${s}`),
    removed: (s) => told.push(`removed ${s}`),
  });
  const req = (op: number) =>
    encodeRequest({
      op,
      nonce: newNonce(),
      proto: 17,
      replaceable: true,
      internalAddr: H1,
      internalPort: 40000,
      remoteAddr: P1,
      remotePort: 7000,
      lifetime: 600,
    });
  assert.equal(answer(server, req(Op.RESERVE)).result, Result.OK);
  assert.equal(answer(server, req(Op.RENEW)).result, Result.OK);
  assert.equal(answer(server, req(Op.RESERVE)).result, Result.OK, "a retransmitted reserve");
  const s = server.table.lookupIdentity(17, H1, 40000, P1, 7000);
  assert.deepEqual(told, [`added ${s}`, `renewed ${s}`, `renewed ${s}`]);
  assert.equal(answer(server, mapReq({ lifetime: 900 })).result, Result.OK);
  assert.equal(answer(server, mapReq({ lifetime: 900 })).result, Result.OK);
  const m = server.table.lookupMapOf(17, H1, 6000);
  assert.deepEqual(told.slice(3), [`added ${m}`, `renewed ${m}`]);
  assert.equal(
    answer(server, req(Op.RELEASE).map((b, i) => (i >= 28 && i < 32 ? 0 : b))).result,
    Result.OK,
  );
  assert.deepEqual(told.slice(5), [`removed ${s}`], "a release is no lease");
});
