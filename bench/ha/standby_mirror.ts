/**
 * Prototype (issue 21, step 1) of the standby's half of dpm's HA design
 * (docs/ha.md): on the standby gateway, keep dpm's kernel-path table current
 * from the conntrack entries conntrackd replicates into this kernel, so that
 * every replicated session is translatable here before any takeover, and
 * the dpm server started here at takeover adopts the same sessions (it
 * reads its maps back, as after a restart).
 *
 * A dpm session on the kernel path is one conntrack: original
 * `a:pa -> G:Pg`, reply `X:px -> R:p` (G the LAN address, R in the pool).
 * From each, the two map elements dpm's server would have written:
 * `to_remote` (proto . a . Pg -> X . px) and `to_public`
 * (proto . a . pa . X . px -> R . p). Each cycle reads `conntrack -L` and
 * replaces dpm's whole table (src/datapath/nft/rules.ts `serverTable`,
 * the one definition of it) with those elements in one `nft -f -`
 * transaction.
 *
 * Runs every `--interval-ms`, and at once on SIGUSR1; after each cycle it
 * writes the cycle count and the time the cycle began into `--done-file`,
 * which bench/ha/mirror-sync (the takeover hook's PREPARE step) waits on.
 *
 * ```sh
 * deno run -A bench/ha/standby_mirror.ts --lan-if lan0 --wan-if wan0 --lan-addr 10.0.0.1 \
 *   --lan-cidr 10.0.0.0/24 --pool 203.0.113.10-203.0.113.13 --interval-ms 100 \
 *   --pid-file /run/x/mirror.pid --done-file /run/x/mirror.done
 * ```
 *
 * Step 2 does this inside `dpm server --ha standby` from ctnetlink events
 * (docs/ha.md), not from a process per cycle.
 *
 * @module
 */

import { serverConfig } from "../../src/config.ts";
import { gatewayOptions } from "../../src/datapath/open.ts";
import { serverTable, toPublicText, toRemoteText } from "../../src/datapath/nft/rules.ts";
import { parseCidr, parseIPv4 } from "../../src/wire/addr.ts";

/** One dpm session read back from a conntrack entry. */
export interface MirroredSession {
  proto: number;
  a: number;
  pa: number;
  pg: number;
  x: number;
  px: number;
  r: number;
  p: number;
}

/**
 * The dpm sessions among `conntrack -L` lines: TCP and UDP entries whose
 * original destination is `g` and whose reply destination is in `pool`.
 */
export function parseConntrack(
  text: string,
  g: number,
  pool: ReadonlySet<number>,
): MirroredSession[] {
  const out: MirroredSession[] = [];
  for (const line of text.split("\n")) {
    const proto = line.startsWith("tcp ") ? 6 : line.startsWith("udp ") ? 17 : 0;
    if (proto === 0) continue;
    const src = [...line.matchAll(/ src=(\S+)/g)].map((m) => parseIPv4(m[1]!));
    const dst = [...line.matchAll(/ dst=(\S+)/g)].map((m) => parseIPv4(m[1]!));
    const sport = [...line.matchAll(/ sport=(\d+)/g)].map((m) => Number(m[1]));
    const dport = [...line.matchAll(/ dport=(\d+)/g)].map((m) => Number(m[1]));
    if (src.length < 2 || dst.length < 2 || sport.length < 2 || dport.length < 2) continue;
    const [a, x] = src as [number | null, number | null];
    const [og, r] = dst as [number | null, number | null];
    if (a === null || x === null || og === null || r === null) continue;
    if (og !== g || !pool.has(r)) continue;
    out.push({ proto, a, pa: sport[0]!, pg: dport[0]!, x, px: sport[1]!, r, p: dport[1]! });
  }
  return out;
}

function flag(args: string[], name: string): string {
  const i = args.indexOf(`--${name}`);
  const v = i >= 0 ? args[i + 1] : undefined;
  if (v === undefined) throw new TypeError(`standby_mirror: --${name} is required`);
  return v;
}

async function run(cmd: string[], stdin?: string): Promise<string> {
  const child = new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const o = await child.output();
  if (!o.success) {
    throw new Error(`${cmd.join(" ")} failed: ${new TextDecoder().decode(o.stderr).trim()}`);
  }
  return new TextDecoder().decode(o.stdout);
}

async function main(args: string[]): Promise<void> {
  const cfg = serverConfig({
    "lan-if": flag(args, "lan-if"),
    "wan-if": flag(args, "wan-if"),
    "lan-addr": flag(args, "lan-addr"),
    pool: flag(args, "pool"),
  });
  const lan = parseCidr(flag(args, "lan-cidr"));
  if (!lan) throw new TypeError("standby_mirror: bad --lan-cidr");
  const opts = gatewayOptions(cfg, lan);
  const pool = new Set(cfg.pool);
  const intervalMs = Number(flag(args, "interval-ms"));
  const doneFile = flag(args, "done-file");
  await Deno.writeTextFile(flag(args, "pid-file"), `${Deno.pid}\n`);

  let cycles = 0;
  let requested = false;
  let wake: (() => void) | null = null;
  Deno.addSignalListener("SIGUSR1", () => {
    requested = true;
    wake?.();
  });
  let stop = false;
  Deno.addSignalListener("SIGTERM", () => {
    stop = true;
    wake?.();
  });
  while (!stop) {
    requested = false;
    const start = Date.now();
    const sessions = parseConntrack(
      await run(["conntrack", "-L", "-f", "ipv4"]),
      cfg.lanAddr,
      pool,
    );
    await run(
      ["nft", "-f", "-"],
      serverTable(opts, lan, {
        toRemote: sessions.map((s) => toRemoteText(s.proto, s.a, s.pa, s.pg, s.x, s.px)),
        toPublic: sessions.map((s) => toPublicText(s.proto, s.a, s.pa, s.x, s.px, s.r, s.p)),
        queued: [],
      }),
    );
    cycles++;
    // "<cycle> <ms when it began reading conntrack> <sessions>": mirror-sync
    // waits for a cycle that began after its request.
    await Deno.writeTextFile(doneFile, `${cycles} ${start} ${sessions.length}\n`);
    if (requested || stop) continue;
    await new Promise<void>((r) => {
      const t = setTimeout(r, intervalMs);
      wake = () => {
        clearTimeout(t);
        r();
      };
    });
    wake = null;
  }
}

if (import.meta.main) await main(Deno.args);
