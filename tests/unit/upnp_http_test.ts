/**
 * The UPnP HTTP side: the pure request reader and response writer
 * (src/upnp/http.ts) on real requests, malformed and random bytes; the
 * listener (src/upnp/http_server.ts) on real loopback sockets: a request
 * answered, a slow sender closed at the deadline, connections over the
 * caps closed unread, oversize requests refused, refused sources closed.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { readRequest, writeResponse } from "../../src/upnp/http.ts";
import { UpnpHttpServer } from "../../src/upnp/http_server.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The request miniupnpc 2.2.4 sends for a description (miniwget.c). */
const GET = "GET /igd1/desc.xml HTTP/1.1\r\nHost: 10.0.0.1:5000\r\nConnection: Close\r\n" +
  "User-Agent: Debian/12, UPnP/1.1, MiniUPnPc/2.2.4\r\n\r\n";

Deno.test("upnp http: a whole GET and a whole POST are read; partial ones ask for more", () => {
  const g = readRequest(enc.encode(GET));
  assert.ok(g.state === "done");
  assert.equal(g.req.method, "GET");
  assert.equal(g.req.path, "/igd1/desc.xml");
  assert.equal(g.req.headers.get("user-agent"), "Debian/12, UPnP/1.1, MiniUPnPc/2.2.4");
  for (let n = 0; n < GET.length; n++) {
    assert.equal(readRequest(enc.encode(GET.slice(0, n))).state, "more", `first ${n} bytes`);
  }
  const body = "<x/>";
  const post = `POST /ctl?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
  const p = readRequest(enc.encode(post));
  assert.ok(p.state === "done");
  assert.equal(p.req.path, "/ctl");
  assert.equal(dec.decode(p.req.body), body);
  assert.equal(readRequest(enc.encode(post.slice(0, -1))).state, "more");
  const h10 = readRequest(enc.encode("GET / HTTP/1.0\r\n\r\n"));
  assert.ok(h10.state === "done" && h10.req.minor === 0, "HTTP/1.0 needs no Host");
});

Deno.test("upnp http: malformed, oversized and unsupported requests get their status", () => {
  const status = (s: string, limits = {}) => {
    const r = readRequest(enc.encode(s), limits);
    return r.state === "error" ? r.status : r.state;
  };
  assert.equal(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
  assert.equal(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
  assert.equal(status("get / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  assert.equal(status("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  assert.equal(status("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nHost: a\r\n x\r\n\r\n"), 400, "folding");
  assert.equal(status("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
  assert.equal(status("GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), 400, "bare LF");
  assert.equal(status("POST / HTTP/1.1\r\nHost: a\r\n\r\n"), 411);
  assert.equal(status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
  assert.equal(
    status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
    400,
  );
  assert.equal(status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), 400);
  assert.equal(
    status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n", { maxBodyBytes: 99 }),
    413,
  );
  assert.equal(
    status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxy"),
    400,
    "a second request",
  );
  assert.equal(
    status(`GET / HTTP/1.1\r\nHost: a\r\nX: ${"y".repeat(200)}`, { maxHeaderBytes: 100 }),
    431,
  );
  assert.equal(status("GET / HTTP/1.1\r\nHost: a\r\n" + "X: y\r\n".repeat(70) + "\r\n"), 431);
});

Deno.test("upnp http: a response has its length, closes the connection and names the server", () => {
  const b = dec.decode(
    writeResponse({ status: 405, headers: [["Allow", "GET"]], body: "é" }, "dpm/1"),
  );
  assert.equal(
    b,
    "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nServer: dpm/1\r\nContent-Length: 2\r\n" +
      "Connection: close\r\n\r\né",
  );
});

Deno.test("upnp http fuzz: random and spliced bytes never throw", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 400 }),
        fc.tuple(fc.nat({ max: GET.length }), fc.string({ maxLength: 30 })).map(([at, s]) =>
          enc.encode(GET.slice(0, at) + s + GET.slice(at))
        ),
      ),
      (b) => {
        const r = readRequest(b, { maxHeaderBytes: 256, maxBodyBytes: 64 });
        if (r.state === "error") assert.ok(r.status >= 400 && r.status < 600);
        if (r.state === "done") assert.ok(r.req.path.startsWith("/"));
      },
    ),
    { numRuns: 3000 },
  );
});

// ---------------------------------------------------------------- the listener

async function connect(port: number): Promise<Deno.TcpConn> {
  return await Deno.connect({ hostname: "127.0.0.1", port });
}

/** Everything the server sends until it closes. */
async function readAll(c: Deno.Conn): Promise<string> {
  let out = "";
  const buf = new Uint8Array(4096);
  for (;;) {
    let n: number | null;
    try {
      n = await c.read(buf);
    } catch {
      break; // reset
    }
    if (n === null) break;
    out += dec.decode(buf.subarray(0, n));
  }
  c.close();
  return out;
}

function server(o: Partial<Parameters<typeof UpnpHttpServer.listen>[0]> = {}): UpnpHttpServer {
  return UpnpHttpServer.listen({
    hostname: "127.0.0.1",
    port: 0,
    server: "test",
    handler: (req) => ({ status: 200, body: `hello ${req.path}` }),
    ...o,
  });
}

Deno.test("upnp http listener: a request is answered and the connection closed", async () => {
  const s = server();
  try {
    const c = await connect(s.port);
    await c.write(enc.encode(GET));
    const r = await readAll(c);
    assert.match(r, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(r, /\r\n\r\nhello \/igd1\/desc\.xml$/);
    assert.equal(s.counters.served, 1);
  } finally {
    await s.close();
  }
});

Deno.test("upnp http listener: a slow sender is closed at the deadline, unanswered", async () => {
  const s = server({ deadlineMs: 200 });
  try {
    const c = await connect(s.port);
    // One byte now and then, never a whole request (slowloris).
    let stop = false;
    const drip = (async () => {
      for (let i = 0; i < GET.length - 3 && !stop; i++) {
        try {
          await c.write(enc.encode(GET[i]!));
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const r = await readAll(c);
    stop = true;
    await drip;
    assert.equal(r, "", "no answer, just closed");
    assert.equal(s.counters.timedOut, 1);
    assert.equal(s.open, 0);
  } finally {
    await s.close();
  }
});

Deno.test("upnp http listener: connections over the per-source and total caps are closed unread", async () => {
  const s = server({ perSource: 2, maxConnections: 8, deadlineMs: 10_000 });
  const held: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const c = await connect(s.port);
      await c.write(enc.encode("GET / HTTP/1.1\r\n")); // started, never finished
      held.push(c);
    }
    while (s.open < 2) await new Promise((r) => setTimeout(r, 5));
    const extra = await connect(s.port);
    assert.equal(await readAll(extra), "");
    assert.equal(s.counters.busy, 1);
    // The held ones still get their answer when they finish.
    await held[0]!.write(enc.encode("Host: a\r\n\r\n"));
    assert.match(await readAll(held[0]!), /^HTTP\/1\.1 200/);
  } finally {
    for (const c of held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await s.close();
  }
});

Deno.test("upnp http listener: oversize headers get 431, refused sources are closed, a throwing handler gets 500", async () => {
  const errors: unknown[] = [];
  const s = server({
    limits: { maxHeaderBytes: 256 },
    handler: () => {
      throw new Error("boom");
    },
    onError: (e) => errors.push(e),
  });
  try {
    const c = await connect(s.port);
    await c.write(enc.encode(`GET / HTTP/1.1\r\nHost: a\r\nX: ${"y".repeat(400)}\r\n\r\n`));
    assert.match(await readAll(c), /^HTTP\/1\.1 431 /);
    assert.equal(s.counters.malformed, 1);
    const d = await connect(s.port);
    await d.write(enc.encode(GET));
    assert.match(await readAll(d), /^HTTP\/1\.1 500 /);
    assert.equal(errors.length, 1);
  } finally {
    await s.close();
  }
  const refusing = server({ accept: () => false });
  try {
    const c = await connect(refusing.port);
    assert.equal(await readAll(c), "");
    assert.equal(refusing.counters.refused, 1);
  } finally {
    await refusing.close();
  }
});
