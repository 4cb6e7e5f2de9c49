/**
 * A PCP and a NAT-PMP client that keep their mappings across a server's
 * loss of state, run inside a LAN host's namespace by the HA rig
 * (testing/ha_dpm.ts):
 *
 *   ip netns exec NS deno run -A testing/remap_child.ts '<json Config>'
 *
 * - NAT-PMP: the mapping is made by Debian's `natpmpc` (libnatpmp), a real
 *   client: `natpmpc -g G -a <public port> <private port> udp <lifetime>`.
 *   `natpmpc` is one-shot, it does not listen for announcements; this
 *   program is its listener and runs it again, asking for the same public
 *   port.
 * - PCP: a MAP request built by testing/pcp_client.ts (the project's own
 *   byte-exact client; Debian has no PCP client), the same nonce each
 *   time, suggesting the pair it had.
 *
 * Both listen on 0.0.0.0:5350 for the server's unsolicited announcements
 * (the NAT-PMP address notification, the PCP ANNOUNCE) and judge each
 * epoch the server sends, in an announcement or a response, by
 * {@linkcode stateLost} (RFC 6887 section 8.5, RFC 6886 section 3.6): when
 * the server's epoch went back, it lost its mappings, and the client maps
 * again at once. (A client among thousands may wait a random moment first
 * to spread the load; this one does not, so the time measured is the
 * protocol's, not a chosen delay.)
 *
 * Prints one JSON line per event: `{"ev":"mapped","kind":"pcp"|"natpmp",
 * "ext":"R:p","why":"start"|"lost","t":ms}`, `{"ev":"announce",
 * "kind":...,"epoch":n,"lost":bool,"t":ms}`, `{"ev":"error",...}`, and
 * `ready` once both mappings are made.
 *
 * @module
 */

import dgram from "node:dgram";
import { buildMap, parseNatPmpResponse, parsePcpResponse, RESULT } from "./pcp_client.ts";

/** What to map. */
export interface Config {
  /** G, the gateway's LAN address. */
  gateway: string;
  /** This host's address (PCP's client field). */
  client: string;
  /** The PCP mapping's internal UDP port. */
  pcpPort: number;
  /** The NAT-PMP mapping's internal UDP port. */
  natpmpPort: number;
  /** Lifetime asked for, seconds. */
  lifetime: number;
}

/** The last epoch heard from a server, and when (the client's clock, seconds). */
export interface EpochSeen {
  epoch: number;
  at: number;
}

/**
 * True when a server's epoch `e` heard at client time `at` (seconds) says
 * it lost its state since `prev` (RFC 6887 section 8.5: the epoch went
 * back by more than 1, or the two clocks moved apart by more than 2 s plus
 * 1/16 of the elapsed time; RFC 6886 section 3.6 is the same test with
 * 1/8). Pure.
 */
export function stateLost(prev: EpochSeen | null, e: number, at: number): boolean {
  if (!prev) return false;
  if (e + 1 < prev.epoch) return true;
  const client = at - prev.at;
  const server = e - prev.epoch;
  return client + 2 < server - server / 16 || server + 2 < client - client / 16;
}

const MAP_TRIES = 6;
const RETRY_MS = 250;

function now(): number {
  return performance.timeOrigin + performance.now();
}

function say(o: Record<string, unknown>): void {
  console.log(JSON.stringify({ ...o, t: Math.round(now()) }));
}

/** One PCP MAP exchange, retried: the response's external pair and epoch. */
async function pcpMap(
  c: Config,
  nonce: Uint8Array,
  want: { addr: string; port: number } | null,
): Promise<{ ext: string; epoch: number }> {
  const req = buildMap({
    lifetime: c.lifetime,
    client: c.client,
    nonce,
    protocol: 17,
    internalPort: c.pcpPort,
    externalPort: want?.port ?? 0,
    ...(want ? { externalAddr: want.addr } : {}),
  });
  const s = dgram.createSocket("udp4");
  try {
    const reply = await new Promise<Uint8Array>((resolve, reject) => {
      let tries = 0;
      const send = () => {
        if (tries++ >= MAP_TRIES) return reject(new Error("PCP MAP: no answer"));
        s.send(req, 5351, c.gateway);
        timer = setTimeout(send, RETRY_MS * tries);
      };
      let timer = setTimeout(() => {}, 0);
      s.on("message", (m) => {
        clearTimeout(timer);
        resolve(new Uint8Array(m));
      });
      s.on("error", reject);
      s.bind(0, send);
    });
    const r = parsePcpResponse(reply);
    if (r.result !== RESULT.SUCCESS) throw new Error(`PCP MAP: result ${r.result}`);
    return { ext: `${r.externalAddr}:${r.externalPort}`, epoch: r.epoch };
  } finally {
    s.close();
  }
}

/** `natpmpc -a`: the granted public port and the epoch it printed. */
async function natpmpMap(
  c: Config,
  publicPort: number,
): Promise<{ port: number; epoch: number; addr: string }> {
  const out = await new Deno.Command("natpmpc", {
    args: [
      "-g",
      c.gateway,
      "-a",
      String(publicPort),
      String(c.natpmpPort),
      "udp",
      String(c.lifetime),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const m = /Mapped public port (\d+) protocol UDP to local port (\d+)/.exec(text);
  const epochs = [...text.matchAll(/epoch\s*=\s*(\d+)/g)].map((x) => Number(x[1]));
  const addr = /Public IP address\s*:\s*(\d+\.\d+\.\d+\.\d+)/.exec(text)?.[1] ?? "";
  if (!out.success || !m) throw new Error(`natpmpc failed (${out.code}): ${text.trim()}`);
  return { port: Number(m[1]), epoch: epochs.at(-1) ?? 0, addr };
}

async function main(c: Config): Promise<void> {
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const seen: Record<"pcp" | "natpmp", EpochSeen | null> = { pcp: null, natpmp: null };
  let pcpExt: { addr: string; port: number } | null = null;
  let natPort = c.natpmpPort;
  const busy = { pcp: false, natpmp: false };

  const mapPcp = async (why: string) => {
    if (busy.pcp) return;
    busy.pcp = true;
    try {
      const r = await pcpMap(c, nonce, pcpExt);
      const [addr, port] = r.ext.split(":");
      pcpExt = { addr: addr!, port: Number(port) };
      seen.pcp = { epoch: r.epoch, at: now() / 1000 };
      say({ ev: "mapped", kind: "pcp", ext: r.ext, why });
    } catch (e) {
      say({ ev: "error", kind: "pcp", why, message: (e as Error).message });
    } finally {
      busy.pcp = false;
    }
  };
  const mapNatPmp = async (why: string) => {
    if (busy.natpmp) return;
    busy.natpmp = true;
    try {
      const r = await natpmpMap(c, natPort);
      natPort = r.port;
      seen.natpmp = { epoch: r.epoch, at: now() / 1000 };
      say({ ev: "mapped", kind: "natpmp", ext: `${r.addr}:${r.port}`, why });
    } catch (e) {
      say({ ev: "error", kind: "natpmp", why, message: (e as Error).message });
    } finally {
      busy.natpmp = false;
    }
  };

  const listener = dgram.createSocket({ type: "udp4", reuseAddr: true });
  listener.on("message", (m, from) => {
    const b = new Uint8Array(m);
    if (from.address !== c.gateway) return;
    const at = now() / 1000;
    if (b[0] === 0 && b.length === 12) {
      const r = parseNatPmpResponse(b);
      const lost = stateLost(seen.natpmp, r.epoch, at);
      say({ ev: "announce", kind: "natpmp", epoch: r.epoch, lost });
      if (lost) void mapNatPmp("lost");
      else if (seen.natpmp) seen.natpmp = { epoch: r.epoch, at };
    } else if (b[0] === 2) {
      const r = parsePcpResponse(b);
      const lost = stateLost(seen.pcp, r.epoch, at);
      say({ ev: "announce", kind: "pcp", epoch: r.epoch, lost });
      if (lost) void mapPcp("lost");
      else if (seen.pcp) seen.pcp = { epoch: r.epoch, at };
    }
  });
  await new Promise<void>((resolve) => listener.bind(5350, "0.0.0.0", resolve));
  await mapPcp("start");
  await mapNatPmp("start");
  if (!pcpExt || !seen.natpmp) {
    listener.close();
    Deno.exit(1);
  }
  console.log("ready");
}

if (import.meta.main) await main(JSON.parse(Deno.args[0]!) as Config);
