/**
 * The flood bench (issue 20's "a flood from one host leaves every other
 * host's reservations at p99 < 50 ms"): on one server, an honest host (h1,
 * bench/flood_probe.ts) opens new sessions at a modest rate, first alone,
 * then while another host (h2) floods the control port as fast as one
 * python3 raw socket can send.
 *
 * The flood: version-2 RESERVE requests (one request per datagram: the most
 * datagrams per request, so the most work per request for the server's
 * socket and loop), each without a cookie, from one of two sources:
 *
 * - `forged`: h2 writes h3's address as the source (raw socket, own IP
 *   header): a host forging another host's name, the flood. The
 *   server refuses every one COOKIE_REQUIRED and answers them (to h3)
 *   within h3's refusal budget;
 * - `own`: h2's own address: a host flooding in its own name (its datagrams
 *   are as cheap to refuse, and its answers come back to it);
 * - `cookie`: h2 in its own name holding its cookie (bench/flood_sender.ts,
 *   a UDP socket): its requests pass the cookie check and meet its rate
 *   limit, RATE_LIMITED beyond it.
 *
 * The row is the honest host's figures beside the flood against the same
 * without it. The flood's rate is the sender's count (datagrams the sending
 * socket took); the server's results counters afterwards tell how many it
 * refused.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import type { Topology } from "../testing/topology.ts";
import { denoScript, type Dpm, DPM_ENV } from "../testing/launch.ts";
import { buildUdp } from "../testing/packets.ts";
import { encodeRequest, Op } from "../src/control/proto.ts";
import { CLK_TCK, processTicks } from "./measure.ts";

const HERE = fileURLToPath(new URL(".", import.meta.url));

/** Whose address the flood's datagrams carry. */
export type FloodSource = "forged" | "own" | "cookie";

/** The honest host's figures in one run (bench/flood_probe.ts's JSON line). */
export interface ProbeResult {
  sent: number;
  answered: number;
  ok: number;
  results: Record<string, number>;
  latencyMs: { p50: number | null; p99: number | null; max: number | null };
}

/** One data path's flood row. */
export interface FloodResult {
  datapath: string;
  source: FloodSource;
  seconds: number;
  honestRate: number;
  quiet: ProbeResult;
  flooded: ProbeResult;
  /** Datagrams the flooder sent, per second. */
  floodPerSec: number;
  /** The server's CPU time over the flooded run per flood datagram it counted, µs. */
  serverUsPerFloodDatagram: number | null;
  /** The server's counters after the flooded run (results by name, unanswered refusals). */
  server: Record<string, unknown> | null;
}

/**
 * python3: sends the IPv4 packets given as hex arguments through a raw
 * socket, round and round, from unix time `startMs` for `seconds`, as fast
 * as it can. Prints "sent N SECONDS".
 */
function rawFloodFor(hexPackets: string[], startMs: number, seconds: number): string[] {
  return [
    "python3",
    "-c",
    `
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
pk = [bytes.fromhex(h) for h in sys.argv[1:]]
dst = (socket.inet_ntoa(pk[0][16:20]), 0)
time.sleep(max(0, ${startMs} / 1000 - time.time()))
t0 = time.monotonic()
end = t0 + ${seconds}
n = 0
while time.monotonic() < end:
    for p in pk:
        try:
            s.sendto(p, dst)
            n += 1
        except OSError:
            pass
print("sent", n, time.monotonic() - t0, flush=True)
`,
    ...hexPackets,
  ];
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** 64 cookie-less version-2 RESERVEs from `src` to the gateway's control port, as hex packets. */
function floodPackets(t: Topology, src: number): string[] {
  const peer = t.peers[0]!.addr;
  return Array.from({ length: 64 }, (_, i) => {
    const nonce = new Uint8Array(8);
    new DataView(nonce.buffer).setUint32(4, i);
    const payload = encodeRequest({
      op: Op.RESERVE,
      nonce,
      proto: 17,
      replaceable: true,
      internalAddr: src,
      internalPort: 20000 + i,
      remoteAddr: peer,
      remotePort: 7000,
      lifetime: 60,
    });
    return hex(buildUdp({ src, sport: 40999, dst: t.gateway.lanAddr, dport: 4750, payload }));
  });
}

/** Runs the probe on h1 (and, when `flood`, the flooder on h2) from a common start. */
async function probeRun(
  t: Topology,
  seconds: number,
  rate: number,
  flood: FloodSource | null,
): Promise<{ probe: ProbeResult; floodPerSec: number }> {
  const [h1, h2, h3] = [t.hosts[0]!, t.hosts[1]!, t.hosts[2]!];
  // Deno starts in about a second on a loaded 2-core machine; start together after that.
  const start = Date.now() + 3000;
  // The flood starts half a second before the probe and ends after it (its drain too).
  const flooder = flood === null ? null : t.exec(
    h2.ns,
    flood === "cookie"
      ? [
        ...denoScript(`${HERE}flood_sender.ts`),
        ...["--server", t.gateway.lanText, "--addr", h2.addrText],
        ...["--seconds", String(seconds + 1), "--start", String(start - 500)],
      ]
      : rawFloodFor(
        floodPackets(t, flood === "forged" ? h3.addr : h2.addr),
        start - 500,
        seconds + 1,
      ),
    { timeoutMs: (seconds + 30) * 1000, env: DPM_ENV },
  );
  const probe = await t.exec(h1.ns, [
    ...denoScript(`${HERE}flood_probe.ts`),
    "--server",
    t.gateway.lanText,
    "--addr",
    h1.addrText,
    "--rate",
    String(rate),
    "--seconds",
    String(seconds),
    "--start",
    String(start),
  ], { timeoutMs: (seconds + 60) * 1000, env: DPM_ENV });
  let floodPerSec = 0;
  if (flooder) {
    const f = await flooder;
    if (f.code !== 0) throw new Error(`flooder failed (${f.code}): ${f.stderr}`);
    const m = /sent (\d+) ([\d.]+)/.exec(f.stdout);
    if (!m) throw new Error(`flooder said: ${f.stdout}`);
    floodPerSec = Math.round(Number(m[1]) / Number(m[2]));
  }
  if (probe.code !== 0) throw new Error(`flood_probe failed (${probe.code}): ${probe.stderr}`);
  return { probe: JSON.parse(probe.stdout.trim().split("\n").pop()!), floodPerSec };
}

/**
 * The flood row on a running server `d` (default flags: the flood meets the
 * server's real rate limits and refusal budgets): the honest host alone,
 * then beside the flood.
 */
export async function floodRow(
  t: Topology,
  d: Dpm,
  datapath: string,
  o: { seconds: number; rate: number; source: FloodSource },
): Promise<FloodResult> {
  if (t.hosts.length < 3) throw new Error("the flood bench needs 3 hosts");
  const quiet = await probeRun(t, o.seconds, o.rate, null);
  const refusals = async () => {
    const st = await d.status().catch(() => null) as Record<string, any> | null;
    const r = st?.results ?? {};
    return { st, n: (r["cookie-required"] ?? 0) + (r["rate-limited"] ?? 0) };
  };
  const r0 = await refusals();
  const c0 = processTicks(d.server.pid);
  const flooded = await probeRun(t, o.seconds, o.rate, o.source);
  const c1 = processTicks(d.server.pid);
  const r1 = await refusals();
  const st = r1.st;
  const counted = r1.n - r0.n;
  return {
    datapath,
    source: o.source,
    seconds: o.seconds,
    honestRate: o.rate,
    quiet: quiet.probe,
    flooded: flooded.probe,
    floodPerSec: flooded.floodPerSec,
    // Includes the honest host's requests and the idle seconds around the flood (small beside it).
    serverUsPerFloodDatagram: counted > 0
      ? +(((c1 - c0) * 1e6) / CLK_TCK / counted).toFixed(2)
      : null,
    server: st ? { results: st.results ?? null, control: st.control ?? null } : null,
  };
}
