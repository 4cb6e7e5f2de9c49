/**
 * What conntrackd says of the sync (`conntrackd -C <conf> -s`, `-s queue`):
 * the figures `dpm status` shows as the pair's sync state, parsed from
 * conntrackd 1.4's text (the only interface it offers). Pure: `run.ts`
 * runs the commands.
 *
 * @module
 */

import type { ConntrackdStats } from "../operator/types.ts";

export type { ConntrackdStats };

/** The first number after `label` in `text` (the column right after it), or 0. */
function after(text: string, label: RegExp): number {
  const m = new RegExp(`${label.source}[:\\s]*(\\d+)`).exec(text);
  return m ? Number(m[1]) : 0;
}

/** The number before `label` on its line ("  24 Bytes sent   32 Bytes recv"), or 0. */
function before(text: string, label: string): number {
  const m = new RegExp(`(\\d+) ${label}`).exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * Parses `conntrackd -s` (and, when given, `conntrackd -s queue`). Returns
 * null for text that is not conntrackd's statistics.
 */
export function parseConntrackdStats(general: string, queue?: string): ConntrackdStats | null {
  if (!/message tracking|UDP traffic/.test(general)) return null;
  const ext = general.slice(Math.max(0, general.indexOf("external inject")));
  const inject = (what: string) => {
    const m = new RegExp(`connections ${what}:\\s*(\\d+)\\s*failed:\\s*(\\d+)`).exec(ext);
    return m ? [Number(m[1]), Number(m[2])] as const : [0, 0] as const;
  };
  const [created, f1] = inject("created");
  const [updated, f2] = inject("updated");
  const [destroyed, f3] = inject("destroyed");
  let resendQueue: number | null = null;
  if (queue !== undefined) {
    const q = queue.slice(Math.max(0, queue.indexOf("queue rsqueue")));
    resendQueue = queue.includes("queue rsqueue") ? after(q, /current elements/) : null;
  }
  return {
    bytesSent: before(general, "Bytes sent"),
    bytesReceived: before(general, "Bytes recv"),
    packetsSent: before(general, "Pckts sent"),
    packetsReceived: before(general, "Pckts recv"),
    errors: before(general, "Error send") + before(general, "Error recv"),
    lostMessages: before(general, "Lost msgs"),
    malformedMessages: before(general, "Malformed msgs"),
    injected: { created, updated, destroyed, failed: f1 + f2 + f3 },
    resendQueue,
  };
}
