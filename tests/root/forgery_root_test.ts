/**
 * Control requests forged from inside the LAN, as root, on both data paths:
 * h2 sends raw-socket datagrams with h1's (and h3's) source address. The
 * server's return-routability cookie (docs/protocol.md, "Cookies") means
 * none of them creates, renews or releases anything, and h1 and h3 are still
 * served for themselves.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { Topology } from "../../testing/topology.ts";
import {
  denoScript,
  type Dpm,
  type StartOptions,
  withDpm as withDpmOn,
} from "../../testing/launch.ts";
import { rawSender, udpClient, udpEcho, udpPong } from "../../testing/apps.ts";
import { perDataPath } from "../../testing/root.ts";
import { buildUdp } from "../../testing/packets.ts";
import { encodeRequest, newNonce, Op } from "../../src/control/proto.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const CLIENT = fileURLToPath(new URL("../../testing/control_client.ts", import.meta.url));

function test(
  name: string,
  opts: StartOptions & { hosts?: number },
  fn: (t: Topology, d: Dpm) => Promise<void>,
): void {
  for (
    const t of perDataPath({
      name: `forgery root: ${name}`,
      ...SAN,
      fn: (datapath) => withDpmOn({ datapath, ...opts }, fn),
    })
  ) Deno.test(t);
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

test(
  "requests forged from h2 in h1's and h3's names create, renew and release nothing; both are still served",
  { hosts: 3, serverArgs: ["--max-sessions-per-host", "50"] },
  async (t, d) => {
    const [h1, h2, h3] = [t.hosts[0]!, t.hosts[1]!, t.hosts[2]!];
    const peer = t.peers[0]!;
    const p1 = `${peer.addrText}:7000`;
    const echo = t.spawn(peer.ns, udpEcho(7000));
    await echo.waitForOutput(/listening/, 10_000);
    const q = await d.query("h1", "udp", `${h1.addrText}:40000`, p1, true);
    assert.equal(q.result, "ok");
    const before = await d.status();
    assert.equal(before.sessions, 1);
    const expiresBefore = Number(before.shown[0]!.expiresIn);

    const req = (op: number, a: number, pa: number, lifetime: number) =>
      encodeRequest({
        op,
        nonce: newNonce(),
        proto: 17,
        replaceable: true,
        internalAddr: a,
        internalPort: pa,
        remoteAddr: peer.addr,
        remotePort: 7000,
        lifetime,
      });
    // In h1's name: renew its session for a day, release it, fill its quota;
    // in h3's name (a host without a driver): fill its quota.
    const forged = [
      { src: h1.addr, b: req(Op.RENEW, h1.addr, 40000, 86400) },
      { src: h1.addr, b: req(Op.RELEASE, h1.addr, 40000, 0) },
      ...Array.from({ length: 50 }, (_, i) => ({
        src: h1.addr,
        b: req(Op.RESERVE, h1.addr, 41000 + i, 86400),
      })),
      ...Array.from({ length: 50 }, (_, i) => ({
        src: h3.addr,
        b: req(Op.RESERVE, h3.addr, 41000 + i, 86400),
      })),
    ].map(({ src, b }) =>
      hex(buildUdp({ src, sport: 40999, dst: t.gateway.lanAddr, dport: 4750, payload: b }))
    );
    const sent = await t.exec(h2.ns, rawSender(forged));
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stdout, /sent 102/);
    await new Promise((ok) => setTimeout(ok, 700));

    const st = await d.status() as Awaited<ReturnType<Dpm["status"]>> & {
      results: Record<string, number>;
    };
    assert.equal(st.sessions, 1, "no session was created in h1's or h3's name");
    assert.equal(String(st.shown[0]!.internal), `${h1.addrText}:40000`, "h1's was not released");
    assert.equal(st.shown[0]!.public, q.public, "nor moved");
    assert.ok(
      Number(st.shown[0]!.expiresIn) <= expiresBefore,
      `nor renewed for a day (expires in ${st.shown[0]!.expiresIn} s)`,
    );
    assert.ok(
      (st.results["cookie-required"] ?? 0) >= 102,
      `every forged request was refused for its cookie: ${JSON.stringify(st.results)}`,
    );
    // The server logged the refusals at the default level.
    assert.match(d.server.output(), /refused .*cookie-required/);

    // h1's own flow and new reservations work.
    const out = JSON.parse(
      (await t.exec(h1.ns, udpClient(40000, [p1], { rounds: 3 }))).stdout.trim().split("\n").pop()!,
    );
    assert.deepEqual(out.errors, []);
    assert.equal(out.replies.length, 3);
    assert.equal(out.replies[0].data.split("|")[0].replace("seen ", ""), q.public);
    const again = await d.query("h1", "udp", `${h1.addrText}:40001`, p1, true);
    assert.equal(again.result, "ok");
    // h3 (no driver) still has its whole quota for itself.
    const r = await t.exec(h3.ns, [
      ...denoScript(CLIENT),
      `${t.gateway.lanText}:4750`,
      "reserve",
      "udp",
      `${h3.addrText}:42000`,
      p1,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).result, "ok");
  },
);

test(
  "packets forged on the WAN side with a LAN host's or a pool source never reach a mapping's host; a real outside peer's do",
  { hosts: 2, driverHosts: ["h1"] },
  async (t) => {
    const [h1, h2] = t.hosts as [typeof t.hosts[0], typeof t.hosts[0]];
    const p1 = t.peers[0]!;
    const g = t.gateway.lanText;
    // h2 (no driver) maps UDP 5000 with NAT-PMP and listens, printing every datagram's source (udpPong).
    const map = await t.exec(h2.ns, ["natpmpc", "-g", g, "-a", "6000", "5000", "udp", "60"], {
      timeoutMs: 15_000,
    });
    assert.equal(map.code, 0, map.stdout + map.stderr);
    const addr = await t.exec(h2.ns, ["natpmpc", "-g", g], { timeoutMs: 15_000 });
    const pub = /Public IP address : (\S+)/.exec(addr.stdout)?.[1];
    assert.ok(pub, addr.stdout);
    const port = Number(/Mapped public port (\d+)/.exec(map.stdout)?.[1]);
    const listener = t.spawn(h2.ns, udpPong(5000));
    await listener.waitForOutput(/listening/, 10_000);
    const dst = (pub.split(".").reduce((v, o) => v * 256 + Number(o), 0)) >>> 0;
    const otherPool = dst === 0xcb00710a ? 0xcb00710b : 0xcb00710a; // another pool address
    const forged = [
      buildUdp({
        src: h1.addr,
        sport: 5555,
        dst,
        dport: port,
        payload: new TextEncoder().encode("forged-as-lan"),
      }),
      buildUdp({
        src: otherPool,
        sport: 5556,
        dst,
        dport: port,
        payload: new TextEncoder().encode("forged-as-pool"),
      }),
    ].map(hex);
    // From the ISP's router, which can put any source on the wire.
    const sent = await t.exec(t.router!.ns, rawSender(forged));
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stdout, /sent 2/);
    const real = await t.exec(p1.ns, [
      "python3",
      "-c",
      `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"real", ("${pub}", ${port}))`,
    ]);
    assert.equal(real.code, 0, real.stderr);
    await listener.waitForOutput(/"data": "real"/, 10_000);
    await new Promise((ok) => setTimeout(ok, 300));
    const out = listener.stdout();
    assert.match(
      out,
      new RegExp(`"from": "${p1.addrText.replaceAll(".", "\\.")}:\\d+", "data": "real"`),
    );
    assert.doesNotMatch(out, /forged/, `nothing forged arrived: ${out}`);
    await listener.stop();
  },
);
