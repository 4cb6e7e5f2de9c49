/**
 * A host's Prometheus metrics (`--metrics-addr`): sessions by state, the
 * driver's events (reserved, refused, renewed, released, epoch changes,
 * fallbacks, adoptions), packets it translated itself, drops by reason, the
 * control client's requests, retransmits and timeouts, the data path's state.
 *
 * @module
 */

import {
  byLabel,
  dataPathFamilies,
  type Family,
  processFamilies,
  single,
} from "../operator/metrics.ts";
import { type DriverCore, State } from "./core.ts";

const STATE_NAMES: Record<number, string> = {
  [State.PENDING]: "pending",
  [State.ACTIVE]: "active",
  [State.REFUSED]: "refused",
  [State.BYPASS]: "untranslated",
};

/** The families, read at scrape time. */
export function driverFamilies(core: DriverCore, startedAt: number): Family[] {
  const states: Record<string, number> = { pending: 0, active: 0, refused: 0, untranslated: 0 };
  for (const s of core.sessions()) {
    const n = STATE_NAMES[s.state];
    if (n) states[n]!++;
  }
  const st = core.stats() as Record<string, unknown>;
  const num = (k: string) => (typeof st[k] === "number" ? st[k] as number : 0);
  const events: Record<string, number> = {};
  for (
    const k of [
      "reserved",
      "refused",
      "renewed",
      "released",
      "epochChanges",
      "bypassed",
      "adopted",
    ]
  ) events[k] = num(k);
  const control = (st.control ?? {}) as Record<string, number>;
  return [
    byLabel("dpm_driver_sessions", "The host's sessions, by state.", "gauge", "state", states),
    byLabel("dpm_driver_events_total", "Session events, by kind.", "counter", "event", events),
    byLabel(
      "dpm_driver_translated_packets_total",
      "Packets the driver translated itself (queue path; ICMP on the kernel path).",
      "counter",
      "direction",
      { out: num("out"), in: num("in") },
    ),
    byLabel(
      "dpm_driver_drops_total",
      "Packets dropped or passed, by reason.",
      "counter",
      "reason",
      (st.drops ?? {}) as Record<string, number>,
    ),
    byLabel(
      "dpm_control_client_total",
      "Control requests of the driver: sent, retransmits, timeouts, rate limited, late answers...",
      "counter",
      "event",
      control,
    ),
    single(
      "dpm_driver_held_packets",
      "First packets held while their session is being reserved.",
      "gauge",
      num("held"),
    ),
    ...dataPathFamilies(core.dataPathStatus()),
    ...processFamilies(startedAt),
  ];
}
