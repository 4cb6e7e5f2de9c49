/**
 * `dpm server --ha` on a real pair (issue 21, docs/ha.md): two gateway
 * namespaces with keepalived and conntrackd from Debian, dpm on both (the
 * standby mirroring the replicated conntracks into its table and maps), a
 * LAN of hosts running drivers, a WAN to a router and peers
 * (testing/ha_dpm.ts). While 100 TCP connections and 100 UDP flows are busy
 * every 20 ms and fresh sessions are opened: the failure, then failback.
 *
 * Asserted (the counts that must be 0, and what must work): no TCP reset
 * from a peer, none of an established connection (a fresh connection being
 * opened across the takeover may be: reported), no TCP connection broken; no flow whose public pair
 * changed; no packet leaving from a wrong pair (nor untranslated); the
 * `dpm map`, PCP and NAT-PMP mappings (the last made by Debian's natpmpc,
 * both kept by testing/remap_child.ts, which maps again after the new
 * active's ANNOUNCE) reachable from a peer on their first pairs within 2 s
 * of the new active serving after each takeover; fresh reservations
 * answered after each takeover; the standby's mirror held the busy
 * sessions before the failure. Reported, not asserted (no timing
 * thresholds on a shared machine): the takeover time, datagrams lost per
 * flow, the sync traffic per session.
 *
 * Needs root, iproute2, nftables, conntrack, keepalived, conntrackd,
 * tcpdump, iputils-arping, python3, natpmpc (tools/install-deps).
 */

import assert from "node:assert/strict";
import { needsRoot } from "../../testing/root.ts";
import {
  type DpmHaResult,
  MAPPING_KINDS,
  type MappingFigures,
  type MappingKind,
  runDpmHa,
} from "../../testing/ha_dpm.ts";
import type { Failure } from "../../testing/ha_failover.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };

function report(name: string, r: DpmHaResult): void {
  const w = r.wan.windows.map((x) =>
    `${x.event}: takeover ${x.takeoverMs} ms (claim ${x.claimMs} ms), RST in/out ${x.rstIn}/${x.rstOut} (in ${
      x.rstInFlows.join(" ")
    }; out ${x.rstOutFlows.join(" ")}), ` +
    `wrong-pair ${x.wrongPair} (stray TCP ${x.strayTcp}, untranslated ${x.untranslated}; flows ${
      x.wrongPairFlows.slice(0, 8).join(" ")
    }), misrouted ${x.misrouted}`
  );
  const takeovers = r.after.map((a) =>
    `${a.lastClaimMs}/${a.lastTakeoverMs} ms (mirrored ${a.mirror.sessions}, refused ${a.mirror.refused})`
  );
  console.log(
    `${name}:\n  ${w.join("\n  ")}\n  dpm's own claim/serve after keepalived's MASTER: ${
      takeovers.join(", ")
    }\n  UDP lost ${r.hosts.udpLost} (max ${r.hosts.udpLostMax}/flow), TCP broken ${r.hosts.tcpBroken}, ` +
      `(${r.hosts.tcpErrors.join("; ")}), pairs changed ${r.wan.pairChanged.length} ${
        r.wan.pairChanged.slice(0, 8).join(" ")
      }, ` +
      `UDP max gap ${r.hosts.udpMaxGapMs} ms, TCP max gap ${r.hosts.tcpMaxGapMs} ms, standby mirrored ${r.standbyBefore.mirror.sessions} ` +
      `session(s) (conntrackd: ${JSON.stringify(r.standbyBefore.sync)}), sync ${
        r.sync.bitsPerSecPerSession.toFixed(1)
      } bit/s per busy session, ` +
      `${r.sync.bytesPerNewSession.toFixed(0)} bytes per new session; fresh per window ${
        JSON.stringify(r.hosts.fresh)
      }`,
  );
  console.log(
    `  adverts: the standby before ${JSON.stringify(r.standbyBefore.adverts)}; after each event ${
      r.after.map((a) => JSON.stringify(a.adverts)).join(" ")
    }`,
  );
  console.log(`  the standby's guard dropped: ${JSON.stringify(r.guard)}`);
  const m = r.mapping;
  const kinds = (x: Record<MappingKind, MappingFigures>, takeover: number | null | undefined) =>
    MAPPING_KINDS.map((k) =>
      `${k} back ${x[k].backAfterMs ?? "never"} ms${
        x[k].backAfterMs !== null && takeover != null
          ? ` (${Math.round(x[k].backAfterMs! - takeover)} after the takeover)`
          : ""
      } (outage ${x[k].outageMs} ms${x[k].withinWindow ? "" : ", not within 2 s of serving"})`
    ).join(", ");
  console.log(
    `  mappings ${JSON.stringify(m.pairs)}, answered before ${JSON.stringify(m.before)}; ${
      m.after.map((x, i) => `${r.events[i]?.name ?? i}: ${kinds(x, r.wan.windows[i]?.takeoverMs)}`)
        .join("; ")
    } (back: ms from the event to the first probe answered after the outage, then from the takeover)\n  PCP/NAT-PMP client: ${
      m.clientLog.trim().split("\n").filter((l) => l.includes('"mapped"') || l.includes('"error"'))
        .join(" ")
    }`,
  );
}

function check(r: DpmHaResult): void {
  // The standby had the busy sessions in its table before anything failed.
  assert.ok(
    r.standbyBefore.mirror.sessions >= 200,
    `standby mirrored ${r.standbyBefore.mirror.sessions} sessions`,
  );
  assert.equal(r.standbyBefore.role, "standby");
  // The standby's status reads conntrackd's figures and says it keeps up.
  assert.ok(r.standbyBefore.sync !== null, `conntrackd's figures: ${r.standbyBefore.syncError}`);
  assert.ok(r.standbyBefore.sync.injected.created > 0, "the peer's entries were injected");
  assert.equal(r.standbyBefore.behind, false, "the standby keeps up");
  // The standby hears the active's VRRP adverts (its raw socket, src/ha/vrrp.ts).
  const adv = r.standbyBefore.adverts;
  assert.ok(adv && adv.heard > 0, `adverts heard by the standby: ${JSON.stringify(adv)}`);
  assert.equal(adv.lastPriority, r.after.at(-1)?.priority ?? adv.lastPriority);
  assert.equal(r.wan.wrongPairBefore, 0, "the rig is sound before the failure");
  // The standby's guard (src/ha/guard.ts) is up on the standby only, and
  // lifted on each new active.
  assert.equal(r.guard.before.active, null, "no guard on the active");
  assert.notEqual(r.guard.before.standby, null, "the guard is up on the standby");
  assert.deepEqual(r.guard.newActive, r.after.map(() => null), "the guard lifted at each takeover");
  for (const w of r.wan.windows) {
    // No reset from a peer; none of an established (busy) connection, none
    // of a tuple no flow used. A fresh connection being opened across the
    // takeover may be reset (reported; its host counts it as failed).
    assert.equal(w.rstIn, 0, `${w.event}: TCP resets from the peers`);
    const established = w.rstOutFlows.filter((f) => !/^h\d+f/.test(f));
    assert.deepEqual(established, [], `${w.event}: TCP resets of established connections`);
    assert.equal(w.wrongPair, 0, `${w.event}: packets from a wrong pair ${w.wrongPairFlows}`);
    assert.notEqual(w.takeoverMs, null, `${w.event}: the new active translated`);
  }
  assert.equal(r.hosts.tcpBroken, 0, `TCP connections broken: ${r.hosts.tcpErrors}`);
  assert.deepEqual(r.wan.pairChanged, [], "flows whose public pair changed");
  assert.deepEqual(r.hosts.pairsSeenChanged, [], "flows whose peers saw another pair");
  // Every mapping (dpm map, PCP, NAT-PMP) answers a peer before the
  // failure and within 2 s of the new active serving after each event,
  // on the pair it was first granted.
  for (const k of MAPPING_KINDS) {
    assert.ok(r.mapping.before[k], `the ${k} mapping works before the failure`);
    for (const [i, a] of r.mapping.after.entries()) {
      const what = `the ${k} mapping after ${r.events[i]?.name}: ${JSON.stringify(a[k])}`;
      assert.notEqual(a[k].backAfterMs, null, `${what} answers again`);
      assert.ok(a[k].withinWindow, `${what} answers within 2 s of the new active serving`);
    }
  }
  assert.equal(r.mapping.after.length, r.after.length);
  // The PCP and NAT-PMP mappings came back because their client heard each
  // new active's announcements (it never renews otherwise) and mapped again.
  for (const kind of ["pcp", "natpmp"]) {
    const remapped = r.mapping.clientLog.split("\n").filter((l) =>
      l.includes('"ev":"mapped"') && l.includes(`"kind":"${kind}"`) && l.includes('"why":"lost"')
    ).length;
    assert.ok(remapped >= r.after.length, `${kind}: mapped again ${remapped} time(s)`);
  }
  for (const [i, a] of r.after.entries()) assert.equal(a.role, "active", `event ${i}`);
  // Fresh sessions opened after each event were answered.
  for (const [i, f] of r.hosts.fresh.entries()) {
    if (i === 0) continue; // before the first event
    assert.ok(f.ok > 0, `fresh sessions answered in window ${i}: ${JSON.stringify(f)}`);
  }
}

for (const datapath of ["kernel", "bpf"] as const) {
  for (const failure of ["kill", "lan-down"] as Failure[]) {
    Deno.test(needsRoot({
      name:
        `ha root [${datapath}]: dpm server --ha, ${failure} of the active then failback, nothing lost`,
      ...SAN,
      async fn() {
        const debug = Deno.env.get("DPM_HA_DEBUG");
        const r = await runDpmHa({
          failure,
          datapath,
          ...(debug ? { debugDir: `${debug}/${datapath}-${failure}` } : {}),
        });
        report(`${datapath} ${failure}`, r);
        check(r);
      },
    }));
  }
}
