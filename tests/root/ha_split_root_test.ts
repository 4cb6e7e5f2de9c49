/**
 * A split brain on a real pair, as a loaded machine makes one (docs/ha.md,
 * "Adverts heard, split brain"): keepalived's VRRP process on the active
 * (priority 150) is stopped (SIGSTOP) for longer than the standby waits
 * (3 x `advert_int` + skew), so the standby (100) takes over while the
 * active still holds G and the pool; then it runs again (SIGCONT), both
 * advertise, the lower priority hears the higher and yields.
 *
 * Asserted: the active's dpm counted the split brain (it heard the peer's
 * adverts of a lower priority while it had been active for long), the
 * standby's did not (it heard a higher priority: a preemption), and the
 * pair ends with one box active, holding G. No traffic runs: this is about
 * what `dpm status` says.
 *
 * Needs root, iproute2, nftables, conntrack, keepalived, conntrackd,
 * iputils-arping (tools/install-deps).
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import { createHaTopology } from "../../testing/ha_topology.ts";
import {
  type GatewayDaemons,
  KEEPALIVED_TEMPLATE,
  preparePair,
  vipHolder,
} from "../../testing/ha_daemons.ts";
import { spawnHaServer, status } from "../../testing/ha_dpm.ts";
import { waitFor } from "../../testing/wait.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

/** keepalived's VRRP process on `d`'s gateway (its pid file). */
async function vrrpPid(d: GatewayDaemons): Promise<number> {
  const pid = Number((await Deno.readTextFile(`${d.dir}/vrrp.pid`)).trim());
  if (!Number.isInteger(pid) || pid <= 1) throw new Error(`no VRRP pid in ${d.dir}`);
  return pid;
}

Deno.test(needsRoot({
  name:
    "ha split root: keepalived stalled on the active, the standby claims too; the active's dpm counts one split brain",
  ...SAN,
  async fn() {
    const t = await createHaTopology({ hosts: 1, peers: 1 });
    try {
      const [ga, gb] = t.gateways;
      const secret = `${t.scratch}/cookie.secret`;
      await Deno.mkdir(t.scratch, { recursive: true, mode: 0o700 });
      await Deno.writeFile(secret, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
      const [da, db] = await preparePair(t, {
        keepalivedTemplate: KEEPALIVED_TEMPLATE,
        advertInt: 0.05,
        notify: null,
        keepalivedVars: (_gw, dir) => ({ RUN_DIR: dir, PREEMPT_DELAY: "2" }),
      }) as [GatewayDaemons, GatewayDaemons];
      await spawnHaServer(t, da, secret, "kernel");
      await spawnHaServer(t, db, secret, "kernel");
      const role = async (d: GatewayDaemons) => (await status(t, d.gw, d.dir)).ha!;
      await da.start();
      await waitFor(async () => (await role(da)).role === "active", {
        what: "gwa active",
        timeoutMs: 20_000,
      });
      await db.start();
      // The standby hears the active's adverts; the active has been active for a while.
      await waitFor(async () => ((await role(db)).adverts?.heard ?? 0) > 0, {
        what: "gwb hearing gwa's adverts",
        timeoutMs: 10_000,
      });
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal((await role(da)).adverts?.splitBrains, 0, "no split brain before");

      const pid = await vrrpPid(da);
      Deno.kill(pid, "SIGSTOP");
      try {
        await waitFor(async () => (await role(db)).role === "active", {
          what: "gwb claiming while gwa's keepalived is stopped",
          timeoutMs: 10_000,
          intervalMs: 20,
        });
      } finally {
        Deno.kill(pid, "SIGCONT");
      }
      await waitFor(async () => (await role(db)).role === "standby", {
        what: "gwb yielding to gwa's higher priority",
        timeoutMs: 10_000,
      });
      const a = await role(da);
      const b = await role(db);
      console.log(`gwa: ${JSON.stringify(a.adverts)}\ngwb: ${JSON.stringify(b.adverts)}`);
      assert.equal(a.role, "active", "gwa stayed active");
      assert.ok((a.adverts?.splitBrains ?? 0) >= 1, `gwa counted it: ${JSON.stringify(a.adverts)}`);
      assert.ok((a.adverts?.whileActive ?? 0) >= 1);
      assert.equal(a.adverts?.lastFrom, gb.lanText, "from the peer's own LAN address");
      assert.equal(b.adverts?.splitBrains, 0, "gwb heard a higher priority: a preemption");
      assert.equal((await vipHolder(t))?.name, ga.name, "one box holds G: gwa");
    } finally {
      await t.destroy();
    }
  },
}));
