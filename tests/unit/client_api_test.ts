/**
 * The application API (src/api.ts, exported from mod.ts) against a
 * stand-in driver socket that answers as a driver does.
 */

import assert from "node:assert/strict";
import { DriverUnavailable, queryPublic, reserve, SessionRefused } from "../../mod.ts";
import { serveLocal } from "../../src/operator/socket.ts";

Deno.test("client API: reserve and queryPublic return the public pair, null, or a named refusal", async () => {
  const dir = await Deno.makeTempDir();
  const socket = `${dir}/driver.sock`;
  const seen: unknown[] = [];
  const srv = await serveLocal(socket, (req) => {
    seen.push(req);
    const r = req as { local: string; reserve: boolean };
    if (r.local.endsWith(":1")) return { result: "no-session" };
    if (r.local.endsWith(":2")) return { result: "conflict" };
    return {
      result: "ok",
      public: "203.0.113.10:5060",
      replaced: false,
      shared: true,
      expiresIn: 299,
    };
  });
  try {
    const p = await reserve("udp", "10.0.0.11:5060", "198.51.100.7:5060", { socket });
    assert.deepEqual(p, {
      address: "203.0.113.10",
      port: 5060,
      public: "203.0.113.10:5060",
      replaced: false,
      shared: true,
      expiresIn: 299,
    });
    assert.deepEqual(seen[0], {
      op: "query",
      proto: "udp",
      local: "10.0.0.11:5060",
      remote: "198.51.100.7:5060",
      reserve: true,
    });
    assert.equal(await queryPublic("tcp", "10.0.0.11:1", "198.51.100.7:80", { socket }), null);
    await assert.rejects(
      () => queryPublic("udp", "10.0.0.11:2", "198.51.100.7:80", { socket }),
      (e: Error) => e instanceof SessionRefused && e.reason === "conflict",
    );
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
  await assert.rejects(
    () => queryPublic("udp", "10.0.0.11:5060", "198.51.100.7:5060", { socket }),
    DriverUnavailable,
  );
});
