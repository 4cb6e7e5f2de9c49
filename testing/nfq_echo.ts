/**
 * Queue reader spawned by tests/root/nfqueue_root_test.ts inside a namespace:
 *
 *   ip netns exec A deno run -A testing/nfq_echo.ts <queue> <mode> [batch]
 *
 * Modes:
 * - `accept`: every packet accepted as is.
 * - `modify`: in UDP packets whose payload starts with "a", that byte
 *   becomes "A" (UDP checksum updated incrementally, RFC 1624); MODIFIED.
 * - `touch`: every packet gets a payload verdict with its own bytes (for
 *   measuring the cost of MODIFIED verdicts).
 * - `hold`: a UDP payload starting with "HOLD" is held (`held` is printed),
 *   then on SIGUSR1 accepted with a copy whose "HOLD" reads "HELD"; everything
 *   else accepted. The test decides when to release, on a condition, not a
 *   timer.
 *
 * The queue is opened without `NFQA_CFG_F_GSO`, so every packet arrives with
 * complete checksums.
 *
 * Prints `ready` once the queue is bound, and the counters as one JSON line
 * on SIGTERM, then exits.
 *
 * @module
 */

import { NfQueue, VERDICT_ACCEPT } from "../linux/nfqueue.ts";
import { Verdict as Handled } from "../src/wire/meta.ts";

const queue = Number(Deno.args[0] ?? "0");
const mode = Deno.args[1] ?? "accept";
const batch = Number(Deno.args[2] ?? "64");

const IPPROTO_UDP = 17;

/** Offset of the UDP header, or -1 when `pkt` is not an unfragmented UDP/IPv4 packet. */
function udpOffset(pkt: Uint8Array): number {
  if (pkt.length < 28 || (pkt[0]! >> 4) !== 4 || pkt[9] !== IPPROTO_UDP) return -1;
  if (((pkt[6]! & 0x1f) | pkt[7]!) !== 0) return -1; // a fragment other than the first
  const ihl = (pkt[0]! & 0x0f) * 4;
  return pkt.length >= ihl + 8 ? ihl : -1;
}

/** RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on one 16-bit word. */
function adjust(sum: number, oldWord: number, newWord: number): number {
  let s = (~sum & 0xffff) + (~oldWord & 0xffff) + newWord;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

let modified = 0;
let held = 0;
let released = 0;
/** Releases of the packets held in `hold` mode, run on SIGUSR1. */
const pending: (() => void)[] = [];

// Without NFQA_CFG_F_GSO: the kernel completes partial checksums before
// queueing, which the RFC 1624 adjustments below rely on (dpm itself runs
// with GSO on and recomputes checksums of partial packets, see src/wire/rewrite.ts).
const q = NfQueue.open({ queue, batch, gso: false });

function handler(pkt: Uint8Array, id: number): number {
  if (mode === "touch") return Handled.MODIFIED;
  const u = udpOffset(pkt);
  if (u < 0) return Handled.ACCEPT;
  const d = u + 8;
  if (mode === "modify" && pkt.length > d && pkt[d] === 0x61 /* a */) {
    const dv = new DataView(pkt.buffer, pkt.byteOffset, pkt.length);
    // The payload starts at an even offset from the UDP header: the high byte of a word.
    const oldWord = dv.getUint16(d);
    pkt[d] = 0x41; /* A */
    const sum = dv.getUint16(u + 6);
    if (sum !== 0) {
      // 0 means "no checksum"; a computed 0 is sent as 0xffff.
      const s = adjust(sum, oldWord, dv.getUint16(d));
      dv.setUint16(u + 6, s === 0 ? 0xffff : s);
    }
    modified++;
    return Handled.MODIFIED;
  }
  if (mode === "hold" && new TextDecoder().decode(pkt.subarray(d, d + 4)) === "HOLD") {
    const copy = pkt.slice();
    held++;
    console.log("held");
    pending.push(() => {
      // HOLD -> HELD: the word at d is "HO" and becomes "HE".
      const dv = new DataView(copy.buffer);
      const oldWord = dv.getUint16(d);
      copy[d + 1] = 0x45; /* E */
      const sum = dv.getUint16(u + 6);
      if (sum !== 0) {
        const s = adjust(sum, oldWord, dv.getUint16(d));
        dv.setUint16(u + 6, s === 0 ? 0xffff : s);
      }
      q.verdict(id, VERDICT_ACCEPT, copy);
      q.flush();
      released++;
    });
    return Handled.HOLD;
  }
  return Handled.ACCEPT;
}

let stop = false;
Deno.addSignalListener("SIGTERM", () => stop = true);
if (mode === "hold") {
  Deno.addSignalListener("SIGUSR1", () => {
    for (const release of pending.splice(0)) release();
  });
}
console.log("ready");
while (!stop) {
  if (await q.wait(50)) q.drain(handler);
}
q.drain(handler);
q.flush();
console.log(JSON.stringify({ ...q.stats, modified, held, released, lastError: q.lastError }));
q.close();
Deno.exit(0);
