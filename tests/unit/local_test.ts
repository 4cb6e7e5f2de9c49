/**
 * The operator socket (`dpm status`, `dpm query`): one JSON line each way,
 * mode 0600, garbage answered with an error, stale socket files replaced,
 * a second instance refused.
 */

import assert from "node:assert/strict";
import { MAX_CONNECTIONS, requestLocal, serveLocal } from "../../src/operator/socket.ts";

async function raw(path: string, bytes: Uint8Array): Promise<string> {
  const c = await Deno.connect({ transport: "unix", path });
  await c.write(bytes);
  const buf = new Uint8Array(4096);
  let out = "";
  for (;;) {
    const n = await c.read(buf);
    if (n === null) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
    if (out.endsWith("\n")) break;
  }
  c.close();
  return out;
}

Deno.test("local socket: answers JSON, is private, and survives garbage", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const srv = await serveLocal(path, (req) => ({ echo: req }));
  try {
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.deepEqual(await requestLocal(path, { op: "x" }), { echo: { op: "x" } });
    assert.match(
      await raw(path, new TextEncoder().encode("not json\n")),
      /"error":"Request is not JSON"/,
    );
    assert.match(await raw(path, new Uint8Array([0xff, 0xfe, 0, 10])), /error/);
    // A request past the size limit is refused, not buffered without end.
    const big = new TextEncoder().encode("[" + "1,".repeat(40_000) + "1]\n");
    assert.match(await raw(path, big), /too long/);
    // Still serving.
    assert.deepEqual(await requestLocal(path, 7), { echo: 7 });
    // A second instance on the same path is refused.
    await assert.rejects(serveLocal(path, () => null), /Another dpm instance/);
  } finally {
    await srv.close();
  }
  // The file is gone after close; a stale file (no listener) is replaced.
  await assert.rejects(Deno.stat(path));
  const l = Deno.listen({ transport: "unix", path });
  l.close(); // leaves the socket file behind, like a crash
  const again = await serveLocal(path, () => "ok");
  assert.equal(await requestLocal(path, {}), "ok");
  await again.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("local socket: a clear error when nothing listens", async () => {
  await assert.rejects(
    requestLocal("/nonexistent/dpm.sock", {}),
    /Nothing listens on "\/nonexistent\/dpm.sock"/,
  );
});

Deno.test("local socket: past MAX_CONNECTIONS open connections one more is closed at once; the others keep being served", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const srv = await serveLocal(path, (req) => ({ echo: req }));
  const held: Deno.Conn[] = [];
  try {
    for (let i = 0; i < MAX_CONNECTIONS; i++) {
      held.push(await Deno.connect({ transport: "unix", path }));
    }
    // Let the server accept them all.
    await new Promise((ok) => setTimeout(ok, 100));
    const extra = await Deno.connect({ transport: "unix", path });
    const n = await extra.read(new Uint8Array(16)).catch(() => null);
    assert.equal(n, null, "the connection past the cap is closed without an answer");
    extra.close();
    // One held connection still gets its answer.
    const c = held.pop()!;
    await c.write(new TextEncoder().encode('{"op":"ping"}\n'));
    const buf = new Uint8Array(256);
    const m = await c.read(buf);
    assert.ok(m && new TextDecoder().decode(buf.subarray(0, m)).includes("ping"));
    c.close();
  } finally {
    for (const c of held) c.close();
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});
