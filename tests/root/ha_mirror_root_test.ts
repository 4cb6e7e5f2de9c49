/**
 * The HA standby's parts on a real kernel, without keepalived or
 * conntrackd: `dpm server --ha` in a gateway namespace of the HA rig
 * (testing/ha_topology.ts), conntracks created and deleted through
 * ctnetlink (`conntrack -I` / `-D`, as conntrackd writes its replicas), and
 * keepalived's FIFO lines written by the test:
 *
 * - a replicated dpm session reaches the table (`dpm status`) and the
 *   kernel's maps (`nft list map`) from its conntrack event; its deletion
 *   takes it out; an entry that is not dpm's is ignored;
 * - the standby holds neither G nor the pool and answers nothing;
 * - MASTER claims G (with the LAN prefix) and the pool and starts a new
 *   epoch; BACKUP releases them;
 * - the active refreshes the timeout of its UDP sessions' conntracks;
 * - a conntrack the standby's table drops is not deleted by dpm (it is
 *   conntrackd's).
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import { createHaTopology, type HaTopology } from "../../testing/ha_topology.ts";
import { DPM_ENV, dpmCommand } from "../../testing/launch.ts";
import { waitFor } from "../../testing/wait.ts";
import type { StatusReply } from "../../src/operator/types.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** `conntrack -I` arguments of a dpm session h1:40000 -> G:61000, reply X:7 -> R:port. */
function sessionArgs(t: HaTopology, r: string, port: number, g = t.vipText): string[] {
  return [
    "-p",
    "udp",
    "--orig-src",
    t.hosts[0]!.addrText,
    "--orig-dst",
    g,
    "--sport",
    "40000",
    "--dport",
    "61000",
    "--reply-src",
    t.peers[0]!.addrText,
    "--reply-dst",
    r,
    "--reply-port-src",
    "7",
    "--reply-port-dst",
    String(port),
    "--timeout",
    "50",
  ];
}

Deno.test(needsRoot({
  name:
    "ha mirror root: the standby mirrors conntrack events, claims on MASTER, releases on BACKUP",
  ...SAN,
  async fn() {
    await using t = await createHaTopology({ hosts: 1, peers: 1 });
    const gw = t.gateways[0];
    const dir = `${t.scratch}/gwa`;
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const fifo = `${dir}/notify.fifo`;
    const sock = `${dir}/server.sock`;
    const server = t.spawn(gw.ns, [
      ...dpmCommand(),
      "server",
      "--ha",
      "--ha-fifo",
      fifo,
      "--lan-if",
      gw.lanIf,
      "--wan-if",
      gw.wanIf,
      "--lan-addr",
      t.vipText,
      "--pool",
      t.poolText,
      "--socket",
      sock,
      "--no-upnp",
      "--ha-refresh",
      "1",
    ], { env: DPM_ENV });
    await server.waitForOutput(/\bready\b/, 30_000);
    const status = async () => {
      const r = await t.exec(gw.ns, [...dpmCommand(), "status", "--json", "--socket", sock], {
        env: DPM_ENV,
      });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as StatusReply;
    };
    const ct = async (args: string[]) => {
      const r = await t.exec(gw.ns, ["conntrack", ...args]);
      assert.equal(r.code, 0, `conntrack ${args.join(" ")}: ${r.stderr}`);
    };
    const toPublic = async () =>
      (await t.exec(gw.ns, ["nft", "list", "map", "ip", "dpm-server", "to_public"])).stdout;
    const addrs = async () => (await t.exec(gw.ns, ["ip", "-4", "-o", "addr"])).stdout;
    const tell = async (line: string) => {
      const r = await t.exec(gw.ns, ["sh", "-c", `echo '${line}' > ${fifo}`]);
      assert.equal(r.code, 0, r.stderr);
    };

    let s = await status();
    assert.equal(s.ha?.role, "standby");
    assert.ok(!(await addrs()).includes(` ${t.vipText}/`), "the standby does not hold G");

    // A replica appears: the table and the maps have it, with its pair and Pg.
    await ct(["-I", ...sessionArgs(t, t.pool[1]!, 50123)]);
    // Not dpm's: another destination than G.
    await ct(["-I", ...sessionArgs(t, t.pool[1]!, 50124, gw.lanText)]);
    await waitFor(async () => (await status()).sessions === 1, {
      what: "the mirrored session in the table",
      timeoutMs: 10_000,
    });
    s = await status();
    assert.equal(s.ha?.mirror.sessions, 1);
    assert.ok(s.ha!.mirror.events >= 1);
    assert.match(await toPublic(), new RegExp(`${t.pool[1]!.replaceAll(".", "\\.")} \\. 50123`));

    // Its deletion (the active released it) takes it out of both.
    await ct(["-D", ...sessionArgs(t, t.pool[1]!, 50123).slice(0, 10)]);
    await waitFor(async () => (await status()).sessions === 0, {
      what: "the session to leave on its destroy event",
      timeoutMs: 10_000,
    });
    assert.doesNotMatch(await toPublic(), /50123/);

    // Again, then MASTER: G and the pool claimed, a new epoch, the session kept.
    await ct(["-I", ...sessionArgs(t, t.pool[1]!, 50123)]);
    await waitFor(async () => (await status()).sessions === 1, {
      what: "the mirrored session again",
      timeoutMs: 10_000,
    });
    const epoch = (await status()).epoch;
    await tell('INSTANCE "dpm" MASTER 150');
    await waitFor(async () => (await status()).ha?.role === "active", {
      what: "the active role",
      timeoutMs: 10_000,
    });
    const a = await addrs();
    assert.ok(a.includes(` ${t.vipText}/${t.lanPrefixLen} `), `G on the LAN link: ${a}`);
    for (const p of t.pool) assert.ok(a.includes(` ${p}/32 `), `${p} on the WAN link`);
    s = await status();
    assert.notEqual(s.epoch, epoch, "a new epoch");
    assert.equal(s.sessions, 1);
    assert.ok(s.ha!.lastTakeoverMs !== null);

    // The active refreshes the timeout of its UDP sessions to the stream timeout (120 s).
    await waitFor(async () => ((await status()).ha?.refreshed ?? 0) >= 1, {
      what: "a timeout refresh",
      timeoutMs: 10_000,
    });
    const timeout = async () => {
      const l = await t.exec(gw.ns, [
        "conntrack",
        "-L",
        "-p",
        "udp",
        "--dport",
        "61000",
        "-d",
        t.vipText,
      ]);
      return Number(/^udp\s+17\s+(\d+)/m.exec(l.stdout)?.[1] ?? -1);
    };
    const left = await timeout();
    assert.ok(left > 60, `refreshed above the 50 s it was created with: ${left}`);

    // BACKUP: released, mirroring again; the replica's conntrack is left alone.
    await tell('INSTANCE "dpm" BACKUP 150');
    await waitFor(async () => (await status()).ha?.role === "standby", {
      what: "the standby role again",
      timeoutMs: 10_000,
    });
    assert.ok(!(await addrs()).includes(` ${t.vipText}/`), "G released");
    // The standby's table drops the session: its maps' elements go, the replica stays (conntrackd's).
    const dropped = await t.exec(gw.ns, [
      ...dpmCommand(),
      "drop",
      "--host",
      t.hosts[0]!.addrText,
      "--socket",
      sock,
    ], { env: DPM_ENV });
    assert.equal(dropped.code, 0, dropped.stdout + dropped.stderr);
    assert.doesNotMatch(await toPublic(), /50123/);
    const listed = await t.exec(gw.ns, ["conntrack", "-L", "-p", "udp", "--dport", "61000"]);
    assert.match(listed.stdout, /dport=61000/, "the replica stays in the kernel");

    await server.stop("SIGTERM", 10_000);
    assert.match(server.output(), /stopping/);
  },
}));
