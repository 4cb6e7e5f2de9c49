/**
 * The UPnP IGD's mappings on the gateway's session table
 * (src/upnp/gateway.ts, through a real ServerCore: table, mapping policy,
 * LAN hosts): the owner and description in the row, exact and any ports,
 * renewals, moves (and their rollback), the other protocols' and other
 * hosts' mappings, the port policy, the gateway's own ports, the per-host
 * cap, and what the service answers for each (UPnP error codes) over the
 * real table; the boot id's rule (src/upnp/boot.ts).
 */

import assert from "node:assert/strict";
import { ServerCore } from "../../src/server/core.ts";
import { Owner } from "../../src/table/table.ts";
import { UpnpService } from "../../src/upnp/service.ts";
import { IgdDocuments } from "../../src/upnp/description.ts";
import { UpnpError } from "../../src/upnp/igd.ts";
import { bootIdFor, MAX_BOOT_ID } from "../../src/upnp/boot.ts";
import type { AddMapping } from "../../src/upnp/mappings.ts";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import { add, call, key } from "../../testing/upnp_calls.ts";
import { G, H1, H2, LAN, R1, R2, serverCfg } from "../../testing/fixtures.ts";
import type { ServerConfig } from "../../src/config.ts";

const T0 = 1_000_000;

function setup(over: Partial<ServerConfig> = {}) {
  let now = T0;
  const log: string[] = [];
  const core = new ServerCore(serverCfg(over), {
    lan: LAN,
    now: () => now,
    refusalLog: (l) => log.push(l),
  });
  return {
    core,
    m: core.upnp,
    t: core.table,
    log,
    at: (ms: number) => (now = ms),
  };
}

function ask(o: Partial<AddMapping> = {}): AddMapping {
  return {
    client: H1,
    proto: 17,
    internalPort: 5000,
    externalPort: 6000,
    any: false,
    lifetime: 600,
    description: "game",
    ...o,
  };
}

Deno.test("upnp gateway: a mapping is a row of the table, UPnP's, with its description, on the host's external address", () => {
  const { m, t } = setup();
  const ext = m.externalAddress(H1);
  assert.ok(ext === R1 || ext === R2);
  const r = m.add(ask(), T0);
  assert.ok(r.ok, JSON.stringify(r));
  assert.deepEqual(r.mapping, {
    proto: 17,
    externalAddr: ext,
    externalPort: 6000,
    internalClient: H1,
    internalPort: 5000,
    leaseRemaining: 600,
    description: "game",
  });
  const s = t.lookupMapOf(17, H1, 5000);
  assert.ok(s >= 0);
  assert.equal(t.owner(s), Owner.UPNP);
  assert.equal(t.description(s), "game");
  assert.equal(t.upnpOf(H1), 1);
  assert.equal(t.lookupMapping(17, ext, 6000), s, "inbound R:p -> a:pa from every remote");
  // The same request again renews it: lease and description, no second row.
  const again = m.add(ask({ lifetime: 900, description: "game 2" }), T0 + 10_000);
  assert.ok(again.ok);
  assert.equal(again.mapping.leaseRemaining, 900);
  assert.equal(t.size, 1);
  assert.equal(t.description(s), "game 2");
  assert.deepEqual(m.list(H1, T0 + 10_000).map((x) => x.description), ["game 2"]);
  assert.equal(m.lookup(H1, 17, 6000, T0 + 10_000)?.internalPort, 5000);
  assert.equal(m.lookup(H1, 6, 6000, T0 + 10_000), null, "TCP is another mapping");
  // Deleted by its owner: gone from the table and the listing.
  assert.equal(m.delete(H1, 17, 6000, T0 + 20_000), "deleted");
  assert.equal(t.size, 0);
  assert.deepEqual(m.list(H1, T0), []);
  assert.equal(m.delete(H1, 17, 6000, T0 + 20_000), "not-found");
});

Deno.test("upnp gateway: another host can neither overwrite, delete nor see a mapping; the host sees its own of every protocol, others' without a description", () => {
  // One pool address: both hosts map on it.
  const { m, t, core } = setup({ pool: [R1] });
  assert.ok(m.add(ask(), T0).ok);
  const o = m.add(ask({ client: H2 }), T0);
  assert.deepEqual(o.ok ? null : o.error, "conflict", "the public port is H1's");
  assert.equal(m.delete(H2, 17, 6000, T0), "not-yours");
  assert.equal(m.lookup(H2, 17, 6000, T0), null);
  assert.deepEqual(m.list(H2, T0), []);
  // H2 gets another port on the same address with AddAnyPortMapping.
  const any = m.add(ask({ client: H2, any: true }), T0);
  assert.ok(any.ok);
  assert.notEqual(any.mapping.externalPort, 6000);
  // The host's own NAT-PMP and PCP mappings: listed (no description), not UPnP's to touch.
  core.policy.map({ owner: Owner.NATPMP, a: H1 }, {
    proto: 6,
    pa: 7000,
    p: 7000,
    r: 0,
    lifetime: 600,
    exact: false,
  }, T0);
  assert.deepEqual(
    m.list(H1, T0).map((x) => [x.proto, x.externalPort, x.description]),
    [[17, 6000, "game"], [6, 7000, ""]],
    "by external port, then protocol",
  );
  assert.equal(m.delete(H1, 6, 7000, T0), "not-yours", "NAT-PMP's");
  // A range delete takes UPnP's only; a range holding none of UPnP's is 606.
  const range = (start: number, end: number, protocol: string) =>
    call(service(core), H1, "DeletePortMappingRange", [
      ["NewStartPort", String(start)],
      ["NewEndPort", String(end)],
      ["NewProtocol", protocol],
      ["NewManage", "1"],
    ], { igd: 2 });
  assert.equal(range(7000, 7000, "TCP").code, UpnpError.ACTION_NOT_AUTHORIZED);
  assert.equal(t.owner(t.lookupMapOf(6, H1, 7000)), Owner.NATPMP, "still there");
  const over = m.add(ask({ proto: 6, internalPort: 7000, externalPort: 7000 }), T0);
  assert.deepEqual(over.ok ? null : over.error, "conflict");
  const moveIt = m.add(ask({ proto: 6, internalPort: 7000, externalPort: 7001 }), T0);
  assert.deepEqual(moveIt.ok ? null : moveIt.error, "conflict");
  assert.equal(t.owner(t.lookupMapOf(6, H1, 7000)), Owner.NATPMP, "left as it was");
  assert.equal(t.p(t.lookupMapOf(6, H1, 7000)), 7000);
  assert.deepEqual(core.upnp.countByOwner(), {
    adopted: 0,
    dpm: 0,
    pcp: 0,
    natpmp: 1,
    upnp: 2,
  });
});

Deno.test("upnp gateway: a new external port moves the mapping; refused, the old one stays as it was", () => {
  const { m, t } = setup({ pool: [R1] });
  assert.ok(m.add(ask(), T0).ok);
  // Moved: 6000 is free again, 6500 holds it, lease and description as asked.
  const moved = m.add(ask({ externalPort: 6500, description: "moved", lifetime: 300 }), T0);
  assert.ok(moved.ok);
  assert.equal(moved.mapping.externalPort, 6500);
  assert.equal(t.lookupMapping(17, R1, 6000), -1);
  assert.equal(t.description(t.lookupMapping(17, R1, 6500)), "moved");
  assert.equal(t.size, 1);
  // To a privileged port: refused by the rules, the mapping back on 6500 with its lease left.
  const priv = m.add(ask({ externalPort: 80 }), T0 + 100_000);
  assert.deepEqual(priv.ok ? null : priv.error, "not-authorized");
  const s = t.lookupMapOf(17, H1, 5000);
  assert.equal(t.p(s), 6500);
  assert.equal(t.description(s), "moved");
  assert.equal(Math.round((t.expiresAt(s) - (T0 + 100_000)) / 1000), 200);
  // To another host's port: conflict, nothing changed.
  assert.ok(m.add(ask({ client: H2, externalPort: 6600, internalPort: 5000 }), T0).ok);
  const taken = m.add(ask({ externalPort: 6600 }), T0 + 100_000);
  assert.deepEqual(taken.ok ? null : taken.error, "conflict");
  assert.equal(t.p(t.lookupMapOf(17, H1, 5000)), 6500);
  assert.equal(t.size, 2);
});

Deno.test("upnp gateway: the port policy and the gateway's own ports; exact refused, any replaced", () => {
  const { m, t, core } = setup({ pool: [R1] });
  core.gatewayState(new Set([G]), [{ addr: 0, port: 2222 }], []);
  for (const p of [22, 80, 500, 5060]) {
    const r = m.add(ask({ proto: 6, internalPort: p, externalPort: p }), T0);
    assert.deepEqual(r.ok ? null : r.error, "not-authorized", `port ${p}`);
  }
  const held = m.add(ask({ proto: 6, internalPort: 2222, externalPort: 2222 }), T0);
  assert.deepEqual(held.ok ? null : held.error, "not-authorized", "a gateway socket holds it");
  assert.match(held.ok ? "" : held.reason, /gateway's own/);
  assert.equal(t.size, 0, "nothing taken");
  const any = m.add(ask({ proto: 6, internalPort: 2222, externalPort: 2222, any: true }), T0);
  assert.ok(any.ok);
  assert.ok(any.mapping.externalPort >= 1024 && any.mapping.externalPort !== 2222);
  // A mapping already there when the gateway starts listening on its port goes.
  assert.ok(m.add(ask({ proto: 6, internalPort: 8080, externalPort: 8080 }), T0).ok);
  core.gatewayState(new Set([G]), [{ addr: 0, port: 2222 }, { addr: 0, port: 8080 }], []);
  assert.equal(t.lookupMapping(6, R1, 8080), -1);
});

Deno.test("upnp gateway: a cap per host (--upnp-max-per-host) within the host's quota; the service answers 501 (IGD:1) or 728 (IGD:2)", () => {
  const { m, t, core } = setup({ upnpMaxPerHost: 2 });
  assert.ok(m.add(ask({ internalPort: 5000, externalPort: 6000 }), T0).ok);
  assert.ok(m.add(ask({ internalPort: 5001, externalPort: 6001 }), T0).ok);
  const third = m.add(ask({ internalPort: 5002, externalPort: 6002 }), T0);
  assert.deepEqual(third.ok ? null : third.error, "no-resources");
  assert.match(third.ok ? "" : third.reason, /2 UPnP mappings/);
  assert.ok(m.add(ask({ client: H2, internalPort: 5002, externalPort: 6002 }), T0).ok);
  // Other protocols' rows are not UPnP's to count.
  core.policy.map({ owner: Owner.NATPMP, a: H1 }, {
    proto: 17,
    pa: 5003,
    p: 0,
    r: 0,
    lifetime: 600,
    exact: false,
  }, T0);
  assert.equal(t.upnpOf(H1), 2);
  // A renewal is no new row; a deleted one makes room.
  assert.ok(m.add(ask({ internalPort: 5001, externalPort: 6001 }), T0).ok);
  assert.equal(m.delete(H1, 17, 6000, T0), "deleted");
  assert.ok(m.add(ask({ internalPort: 5002, externalPort: 6003 }), T0).ok);

  const svc = service(core);
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6004, 5004)).code,
    UpnpError.ACTION_FAILED,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(6004, 5004), { igd: 2 }).code,
    UpnpError.NO_PORT_MAPS_AVAILABLE,
  );
});

/** The service over `core`'s mappings, as `dpm server` runs it. */
function service(core: ServerCore) {
  return new UpnpService({
    mappings: core.upnp,
    docs: new IgdDocuments({ seed: "gateway test", version: "9.9.9" }),
    lan: LAN,
    isHost: (a) => core.hosts.isHost(a),
    lanAddr: G,
    httpPort: 5000,
    startedAt: T0,
    maxLease: 86400,
    limiter: new RateLimiter(1e9, 1e9),
    log: () => {},
  });
}

Deno.test("upnp gateway: through the service: 718 over another host's port, 606 to delete it, 606 for a refused port, 714 for what the host cannot see; the gateway itself is refused", () => {
  const { core, t } = setup({ pool: [R1] });
  const svc = service(core);
  assert.equal(call(svc, H1, "AddPortMapping", add(6000, 5000, { desc: "h1" })).status, 200);
  assert.equal(
    call(svc, H2, "AddPortMapping", add(6000, 5000, { client: "10.0.0.12" })).code,
    UpnpError.CONFLICT_IN_MAPPING_ENTRY,
  );
  assert.equal(call(svc, H2, "DeletePortMapping", key(6000)).code, UpnpError.ACTION_NOT_AUTHORIZED);
  assert.equal(
    call(svc, H2, "GetSpecificPortMappingEntry", key(6000)).code,
    UpnpError.NO_SUCH_ENTRY_IN_ARRAY,
  );
  assert.equal(
    call(svc, H1, "AddPortMapping", add(443, 443, { proto: "TCP" })).code,
    UpnpError.ACTION_NOT_AUTHORIZED,
  );
  const e = call(svc, H1, "GetSpecificPortMappingEntry", key(6000)).out;
  assert.equal(e.NewPortMappingDescription, "h1");
  assert.equal(e.NewInternalClient, "10.0.0.11");
  assert.equal(
    call(svc, H1, "GetExternalIPAddress").out.NewExternalIPAddress,
    "203.0.113.10",
  );
  // A request from the gateway's own address (a process on the gateway) is refused at once.
  const fromG = svc.handleHttp(
    {
      method: "GET",
      target: "/igd1/desc.xml",
      path: "/igd1/desc.xml",
      minor: 1,
      headers: new Map(),
      body: new Uint8Array(0),
    },
    G,
    T0,
  );
  assert.equal(fromG.status, 403);
  assert.equal(t.size, 1);
});

Deno.test("upnp gateway: no data path forwarding mappings: adds are refused (501), nothing taken", () => {
  const { core, m, t } = setup();
  core.detach(); // a stopping server: nothing forwards mappings any more
  const r = m.add(ask(), T0);
  assert.deepEqual(r.ok ? null : r.error, "unsupported");
  assert.equal(
    call(service(core), H1, "AddPortMapping", add(6000, 5000)).code,
    UpnpError.ACTION_FAILED,
  );
  assert.equal(t.size, 0);
});

Deno.test("upnp gateway: the listing follows expiry and release", () => {
  const { core, m, at } = setup();
  assert.ok(m.add(ask({ lifetime: 60 }), T0).ok);
  assert.ok(m.add(ask({ internalPort: 5001, externalPort: 6001, lifetime: 600 }), T0).ok);
  assert.equal(m.list(H1, T0 + 30_000)[0]!.leaseRemaining, 30, "the lease counts down");
  at(T0 + 61_000);
  core.expire();
  assert.deepEqual(m.list(H1, T0 + 61_000).map((x) => x.externalPort), [6001]);
  core.drop({ host: H1 });
  assert.deepEqual(m.list(H1, T0 + 61_000), []);
  assert.deepEqual(m.countByOwner().upnp, 0);
});

Deno.test("upnp boot id: the time without a state file, the file's when the state was kept, greater than both when it was lost", () => {
  const now = 1_700_000_000_000;
  assert.equal(bootIdFor(null, 5, now), 1_700_000_000);
  assert.equal(bootIdFor({ epoch: 5 }, 5, now), 1_700_000_000, "an older file: no boot id kept");
  assert.equal(bootIdFor({ epoch: 5, bootId: 42 }, 5, now), 42, "state kept: the same");
  assert.equal(bootIdFor({ epoch: 5, bootId: 42 }, 6, now), 1_700_000_000, "lost: the time");
  assert.equal(
    bootIdFor({ epoch: 5, bootId: 1_800_000_000 }, 6, now),
    1_800_000_001,
    "lost, and the clock went back: still greater",
  );
  assert.ok(bootIdFor(null, 5, 2 ** 31 * 1000 + 5000) <= MAX_BOOT_ID, "31 bits");
  assert.ok(bootIdFor(null, 5, 0) >= 1);
});
