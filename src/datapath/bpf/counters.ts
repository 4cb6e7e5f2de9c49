/**
 * What dpm reads back from the session map (one dump per poll,
 * `NatMap.all()`): the gateway's per-session counters for `dpm status`,
 * the host's lease activity, and the learned flows of mappings that went
 * idle. Pure functions over the records, so they are tested without a
 * kernel.
 *
 * Each entry counts the packets that left the gateway (or the host) in its
 * own direction (`bpf/gateway.bpf.c`: slow ones as the stack sends them,
 * fast ones as they are redirected), so a session's two entries are its
 * two directions.
 *
 * @module
 */

import {
  type Activity,
  gatewayKey,
  type GatewaySession,
  hostKey,
  isMapping,
  type SessionCounters,
} from "../datapath.ts";
import { IPPROTO_TCP } from "../../wire/meta.ts";
import {
  gatewayRecords,
  mirrorKey,
  NatDir,
  type NatEntry,
  NatFlag,
  type NatKey,
  type NatRecord,
} from "./layout.ts";

/** A key as a map index. */
export function keyId(k: NatKey): string {
  return `${k.proto}/${k.dir}/${k.saddr}/${k.sport}/${k.daddr}/${k.dport}`;
}

/** The records by key. */
export function indexRecords(records: Iterable<NatRecord>): Map<string, NatEntry> {
  const out = new Map<string, NatEntry>();
  for (const r of records) out.set(keyId(r.key), r.entry);
  return out;
}

/**
 * Counters of each of `sessions` keyed by {@linkcode gatewayKey} (a
 * mapping's Pg is 0): a session's own two entries (one missing counts 0:
 * the caller may pass only the entries that counted something); a
 * mapping's, the sum of the flows learned from it (its wildcards count
 * nothing). Sessions with neither entry (ICMP, hairpins, not yet written,
 * nothing counted) are left out.
 */
export function gatewayCounters(
  records: Iterable<NatRecord>,
  sessions: Iterable<GatewaySession>,
  g: number,
): Map<number, SessionCounters> {
  const all = [...records];
  const byKey = indexRecords(all);
  // Learned flows by mapping: OUT entries by (proto, a, pa), IN ones by (proto, R, p).
  const learned = new Map<string, { out: number[]; inn: number[] }>();
  const mapId = (proto: number, a: number, pa: number, r: number, p: number) =>
    `${proto}/${a}/${pa}/${r}/${p}`;
  for (const { key: k, entry: e } of all) {
    if ((e.flags & NatFlag.LEARNED) === 0) continue;
    const id = k.dir === NatDir.OUT
      ? mapId(k.proto, k.saddr, k.sport, e.to.saddr, e.to.sport)
      : mapId(k.proto, e.to.daddr, e.to.dport, k.daddr, k.dport);
    let l = learned.get(id);
    if (!l) learned.set(id, l = { out: [0, 0], inn: [0, 0] });
    const side = k.dir === NatDir.OUT ? l.out : l.inn;
    side[0]! += e.packets;
    side[1]! += e.bytes;
  }
  const out = new Map<number, SessionCounters>();
  for (const s of sessions) {
    if (isMapping(s)) {
      const l = learned.get(mapId(s.proto, s.a, s.pa, s.r, s.p));
      if (!l) continue;
      out.set(gatewayKey(s.proto, s.a, 0), {
        packetsOut: l.out[0]!,
        bytesOut: l.out[1]!,
        packetsIn: l.inn[0]!,
        bytesIn: l.inn[1]!,
      });
      continue;
    }
    const recs = gatewayRecords(s, g);
    if (recs.length !== 2) continue;
    const o = byKey.get(keyId(recs[0]!.key));
    const i = byKey.get(keyId(recs[1]!.key));
    if (!o && !i) continue;
    out.set(gatewayKey(s.proto, s.a, s.pg), {
      packetsOut: o?.packets ?? 0,
      bytesOut: o?.bytes ?? 0,
      packetsIn: i?.packets ?? 0,
      bytesIn: i?.bytes ?? 0,
    });
  }
  return out;
}

/**
 * The host's lease activity keyed by {@linkcode hostKey}: packets and bytes
 * of both directions, and for TCP whether it is closing or closed (a FIN
 * each way, or an RST either way). `g`: the gateway's LAN address.
 */
export function hostActivity(records: Iterable<NatRecord>, g: number): Map<number, Activity> {
  const all = [...records];
  const byKey = indexRecords(all);
  const out = new Map<number, Activity>();
  for (const { key: k, entry: e } of all) {
    // A host session's OUT entry: a:pa -> X:px => a:pa -> G:Pg.
    if (k.dir !== NatDir.OUT || e.to.daddr !== g) continue;
    const back = byKey.get(keyId(mirrorKey(k, e)));
    const flagsIn = back?.flags ?? 0;
    const fin = (e.flags & NatFlag.FIN) !== 0 && (flagsIn & NatFlag.FIN) !== 0;
    const rst = ((e.flags | flagsIn) & NatFlag.RST) !== 0;
    out.set(hostKey(k.proto, k.saddr, e.to.dport), {
      packets: e.packets + (back?.packets ?? 0),
      bytes: e.bytes + (back?.bytes ?? 0),
      closed: k.proto === IPPROTO_TCP && (fin || rst),
    });
  }
  return out;
}

/**
 * The keys of learned flows (both entries of each) whose last packet, either
 * way, is older than `idleNs` at `nowNs` (CLOCK_MONOTONIC): what to delete
 * so that a mapping's remotes that went quiet do not fill the map. A flow
 * learned but not counted yet is taken as new.
 */
export function idleLearned(
  records: Iterable<NatRecord>,
  nowNs: bigint,
  idleNs: bigint,
): NatKey[] {
  const all = [...records].filter((r) => (r.entry.flags & NatFlag.LEARNED) !== 0);
  const byKey = indexRecords(all);
  const out: NatKey[] = [];
  for (const { key: k, entry: e } of all) {
    const other = byKey.get(keyId(mirrorKey(k, e)));
    let last = e.lastNs;
    if (other && other.lastNs > last) last = other.lastNs;
    if (last === 0n) continue;
    if (nowNs - last > idleNs) out.push(k);
  }
  return out;
}
