/**
 * The HA rig (issue 21, step 1) on real namespaces: the pair's topology
 * (testing/ha_topology.ts), keepalived and conntrackd from Debian started in
 * the gateway namespaces with per-run configurations
 * (testing/ha_daemons.ts, contrib/ha/), the measurement tooling
 * (testing/ha_failover.ts, testing/ha_analysis.ts) on a real failover, and
 * the ordered takeover hook (contrib/ha/dpm-ha-notify). Needs root, iproute2,
 * nftables, conntrack, keepalived, conntrackd, tcpdump, iputils-arping,
 * python3 (tools/install-deps).
 *
 * dpm's own HA root test (tests/root/ha_root_test.ts) comes with step 2.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { needsRoot } from "../../testing/root.ts";
import { MARKER_DIR } from "../../testing/topology.ts";
import { createHaTopology, type HaTopology } from "../../testing/ha_topology.ts";
import {
  type GatewayDaemons,
  holdsVip,
  KEEPALIVED_ANCHOR_TEMPLATE,
  KEEPALIVED_TEMPLATE,
  preparePair,
  vipHolder,
} from "../../testing/ha_daemons.ts";
import { inject, startBusy, startCapture, startEchoes } from "../../testing/ha_failover.ts";
import { analyzeWan, summarizeHosts } from "../../testing/ha_analysis.ts";
import { waitFor } from "../../testing/wait.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const SAN = { sanitizeOps: false, sanitizeResources: false };

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function netnsList(): string[] {
  const out = new Deno.Command("ip", { args: ["netns", "list"] }).outputSync();
  return new TextDecoder().decode(out.stdout).split("\n").map((l) => l.split(" ")[0]!)
    .filter(Boolean);
}

/** Pids of processes whose command line mentions `text`. */
function pidsMentioning(text: string): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      if (cmd.includes(text)) out.push(Number(e.name));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

async function ping(t: HaTopology, ns: string, dst: string): Promise<boolean> {
  return (await t.exec(ns, ["ping", "-n", "-c", "1", "-W", "1", dst], { timeoutMs: 5000 })).code ===
    0;
}

/** The anchor's pair: SNAT to the first pool address, keepalived moving G and the pool. */
async function anchorPair(t: HaTopology): Promise<GatewayDaemons[]> {
  for (const g of t.gateways) {
    const r = await t.exec(g.ns, [
      "iptables",
      "-t",
      "nat",
      "-A",
      "POSTROUTING",
      "-o",
      g.wanIf,
      "-s",
      t.lanCidr,
      "-j",
      "SNAT",
      "--to-source",
      t.pool[0]!,
    ]);
    assert.equal(r.code, 0, r.stderr);
  }
  return await preparePair(t, {
    keepalivedTemplate: KEEPALIVED_ANCHOR_TEMPLATE,
    advertInt: 0.1,
    notify: (_g, dir) =>
      `${ROOT}bench/ha/anchor-notify.sh ${dir}/conntrackd.conf ${dir}/notify.log`,
    keepalivedVars: (g) => ({
      VIRTUAL_ADDRESSES: [
        `${t.vipText}/${t.lanPrefixLen} dev ${g.lanIf}`,
        `${t.pool[0]}/32 dev ${g.wanIf}`,
      ].join("\n"),
    }),
  });
}

Deno.test(needsRoot({
  name: "ha rig root: the pair's network connects, and destroy leaves nothing",
  ...SAN,
  fn: async () => {
    const t = await createHaTopology({ hosts: 2, peers: 2 });
    let destroyed = false;
    try {
      const [ga, gb] = t.gateways;
      assert.deepEqual(
        netnsList().filter((n) => n.startsWith(t.prefix)).sort(),
        [...t.namespaces].sort(),
      );
      assert.ok(await ping(t, ga.ns, gb.syncText), "gwa -> gwb over the sync link");
      assert.ok(await ping(t, gb.ns, ga.lanText), "gwb -> gwa over the LAN");
      assert.ok(await ping(t, t.hosts[0]!.ns, gb.lanText), "h1 -> gwb");
      assert.ok(await ping(t, ga.ns, t.peers[1]!.addrText), "gwa -> p2 through the router");
      assert.ok(await ping(t, gb.ns, t.router.addrText), "gwb -> router");
      // Nobody holds G or the pool until keepalived (or a hook) claims them.
      assert.equal(await vipHolder(t), null);
      assert.equal(await ping(t, t.hosts[0]!.ns, t.vipText), false, "G is unclaimed");
      // A link taken down takes its routes; brought up, the default route returns.
      await t.setLinks(ga, ["lan", "wan", "sync"], "down");
      assert.equal(await ping(t, gb.ns, ga.syncText), false);
      await t.setLinks(ga, ["lan", "wan", "sync"], "up");
      await waitFor(() => ping(t, ga.ns, t.peers[0]!.addrText), {
        what: "gwa to reach p1 again",
        timeoutMs: 5000,
      });
      assert.equal(await t.escaped(), 0);
      await Deno.mkdir(t.scratch, { recursive: true });
      await t.destroy();
      destroyed = true;
      assert.deepEqual(netnsList().filter((n) => n.startsWith(t.prefix)), []);
      assert.equal(exists(`${MARKER_DIR}/${t.prefix}.pid`), false);
      assert.equal(exists(t.scratch), false);
    } finally {
      if (!destroyed) await t.destroy();
    }
  },
}));

Deno.test(needsRoot({
  name:
    "ha rig root: keepalived elects, conntrackd replicates into the standby's kernel, a crash moves the service and is measured",
  ...SAN,
  fn: async () => {
    const t = await createHaTopology({ hosts: 2, peers: 2 });
    try {
      const [ga, gb] = t.gateways;
      const pair = await anchorPair(t);
      const [da, db] = pair as [GatewayDaemons, GatewayDaemons];
      await da.start();
      await waitFor(() => holdsVip(t, ga), { what: "gwa to become active", timeoutMs: 10_000 });
      await db.start();
      // Each gateway has its own socket, lock and log; conntrackd's shared defaults are not used.
      for (const d of pair) {
        assert.ok(exists(`${d.dir}/conntrackd.ctl`), `${d.gw.name}'s conntrackd socket`);
        assert.ok(exists(`${d.dir}/conntrackd.lock`), `${d.gw.name}'s conntrackd lock`);
      }
      assert.equal((await vipHolder(t))?.name, ga.name, "one active, no split");

      // Replication into the standby's kernel, an entry addressed to G (a
      // dpm session: a:pa -> G:Pg, reply X:px -> R:p) included.
      const dpmLike = [
        "-p",
        "udp",
        "-s",
        "10.0.0.11",
        "--sport",
        "40000",
        "-d",
        t.vipText,
        "--dport",
        "61000",
      ];
      const r = await t.exec(ga.ns, [
        "conntrack",
        "-I",
        ...dpmLike,
        "--timeout",
        "300",
        "--dst-nat",
        `${t.peers[0]!.addrText}:7`,
        "--src-nat",
        `${t.pool[1]}:40000`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor(
        async () =>
          (await t.exec(gb.ns, ["conntrack", "-L", ...dpmLike.slice(0, 8)])).stdout.includes(
            `dst=${t.pool[1]} sport=7 dport=40000`,
          ),
        { what: "the entry addressed to G in gwb's kernel", timeoutMs: 5000 },
      );

      // Busy traffic, a crash of the active, the figures.
      await startEchoes(t);
      const busy = await startBusy(t, { tcp: 4, udp: 4, freshEveryMs: 200 });
      await busy.fresh(true);
      const cap = await startCapture(t);
      await new Promise((r) => setTimeout(r, 1000));
      const at = await inject(t, ga, "crash", () => da.kill());
      await waitFor(() => holdsVip(t, gb), { what: "gwb to take over", timeoutMs: 10_000 });
      await new Promise((r) => setTimeout(r, 1500));
      const captured = await cap.stop();
      const reports = await busy.stop();
      const events = [{ name: "crash", at, to: gb.name }];
      const wan = analyzeWan(
        captured.packets,
        events,
        [ga.name, gb.name],
        captured.claims,
        ga.name,
      );
      const hosts = summarizeHosts(reports, events);
      const w = wan.windows[0]!;
      assert.equal(wan.wrongPairBefore, 0, "the rig itself leaks nothing before the failure");
      assert.ok(w.claimMs !== null && w.claimMs > 0, `gwb claimed the pool: ${w.claimMs}`);
      assert.ok(w.takeoverMs !== null && w.takeoverMs >= w.claimMs!, `takeover ${w.takeoverMs}`);
      assert.equal(hosts.udpFlows, 4);
      assert.equal(hosts.tcpConns, 4);
      // Every busy flow goes on after the failover, through gwb, with its pair.
      for (const rep of reports) {
        for (const f of rep.udp) {
          assert.equal(Object.keys(f.pairs).length, 1, `${f.id} kept its pair: ${f.pairs}`);
        }
      }
      const gwbFlows = new Set(
        captured.packets.filter((p) => p.by === gb.name && p.flow !== null).map((p) => p.flow),
      );
      for (const id of [...busy.ids.udp, ...busy.ids.tcp]) {
        assert.ok(gwbFlows.has(id), `${id} went out through gwb`);
      }
      assert.ok(hosts.fresh[1]!.ok > 0, "fresh sessions work after the takeover");
      assert.equal(await t.escaped(), 0);
    } finally {
      await t.destroy();
    }
    // keepalived, its VRRP child and conntrackd went with the topology.
    assert.deepEqual(pidsMentioning(t.scratch), []);
  },
}));

Deno.test(needsRoot({
  name:
    "ha rig root: dpm-ha-notify claims G and the pool only after its PREPARE step, and releases them on FAULT",
  ...SAN,
  fn: async () => {
    const t = await createHaTopology({ hosts: 1, peers: 1 });
    try {
      const [ga, gb] = t.gateways;
      const pair = await preparePair(t, {
        keepalivedTemplate: KEEPALIVED_TEMPLATE,
        advertInt: 0.1,
        notify: (_g, dir) => `${ROOT}contrib/ha/dpm-ha-notify ${dir}/hook.env`,
        keepalivedVars: (_g, dir) => ({ RUN_DIR: dir, PREEMPT_DELAY: "2" }),
      });
      for (const d of pair) {
        await Deno.mkdir(d.dir, { recursive: true, mode: 0o700 });
        // PREPARE stands for dpm's own step: it takes 300 ms and leaves a mark.
        await Deno.writeTextFile(
          `${d.dir}/hook.env`,
          [
            `LAN_IF=${d.gw.lanIf}`,
            `WAN_IF=${d.gw.wanIf}`,
            `LAN_ADDRESSES="${t.vipText}/${t.lanPrefixLen}"`,
            `WAN_ADDRESSES="${t.pool.map((a) => `${a}/32`).join(" ")}"`,
            `CONNTRACKD_CONF=${d.dir}/conntrackd.conf`,
            `LOG=${d.dir}/notify.log`,
            `PREPARE="sh -c 'sleep 0.3; touch ${d.dir}/prepared'"`,
          ].join("\n") + "\n",
        );
      }
      const [da, db] = pair as [GatewayDaemons, GatewayDaemons];
      await da.start();
      await db.start();
      await waitFor(() => holdsVip(t, ga), { what: "gwa to claim G", timeoutMs: 10_000 });
      assert.ok(exists(`${da.dir}/prepared`), "PREPARE ran before G was claimed");
      const pool = await t.exec(ga.ns, ["ip", "-4", "-o", "addr", "show", "dev", ga.wanIf]);
      for (const a of t.pool) assert.ok(pool.stdout.includes(` ${a}/32`), `gwa holds ${a}`);
      const log = await Deno.readTextFile(`${da.dir}/notify.log`);
      const at = (what: string) => {
        const m = new RegExp(`^(\\d+\\.\\d+) ${what}`, "m").exec(log);
        assert.ok(m, `"${what}" in the hook's log:\n${log}`);
        return Number(m[1]);
      };
      assert.ok(at("done prepare rc=0") <= at("claimed"), log);
      assert.ok(at("committed") <= at("claimed"), log);
      assert.ok(at("claimed") <= at("announced"), log);
      assert.equal(await holdsVip(t, gb), false);
      assert.equal(exists(`${db.dir}/prepared`), false, "the standby prepared nothing");

      // gwa's LAN link fails: keepalived FAULT, the hook releases, gwb claims.
      await t.setLinks(ga, ["lan"], "down");
      await waitFor(() => holdsVip(t, gb), { what: "gwb to claim G", timeoutMs: 10_000 });
      await waitFor(async () => !(await holdsVip(t, ga)), {
        what: "gwa to release G",
        timeoutMs: 10_000,
      });
      const wan = await t.exec(ga.ns, ["ip", "-4", "-o", "addr", "show", "dev", ga.wanIf]);
      for (const a of t.pool) {
        assert.equal(wan.stdout.includes(` ${a}/32`), false, `gwa released ${a}`);
      }
      assert.match(await Deno.readTextFile(`${da.dir}/notify.log`), / notify FAULT\n.* released\n/);
      assert.ok(exists(`${db.dir}/prepared`));
    } finally {
      await t.destroy();
    }
  },
}));
