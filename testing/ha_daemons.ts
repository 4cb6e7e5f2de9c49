/**
 * keepalived and conntrackd from Debian's packages, started inside the
 * gateway namespaces of an HA topology (testing/ha_topology.ts) with
 * configurations rendered per run from templates (contrib/ha/*.in, the
 * anchor's in bench/ha/): `@NAME@` placeholders, replaced by
 * {@linkcode renderTemplate}.
 *
 * Each gateway gets its own run directory under the topology's scratch
 * directory (`<scratch>/<gw>/`): its configurations, pid files,
 * conntrackd's UNIX socket, lock and log. conntrackd's defaults
 * (`/var/run/conntrackd.ctl`, `/var/lock/conntrack.lock`) would be shared by
 * every namespace of the machine; keepalived's pid files likewise. The
 * scratch directory goes with the topology, so nothing is left behind.
 *
 * Both daemons run in the foreground (keepalived `-n`, conntrackd without
 * `-d`) as processes of the topology, so its teardown stops them.
 * keepalived forks a VRRP child: {@linkcode GatewayDaemons.kill} signals the
 * whole process group, as a crash would take both.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import type { Spawned } from "./topology.ts";
import type { HaGateway, HaTopology } from "./ha_topology.ts";

/** The repository root, for the templates. */
const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** contrib/ha/conntrackd.conf.in */
export const CONNTRACKD_TEMPLATE = `${ROOT}contrib/ha/conntrackd.conf.in`;
/** contrib/ha/keepalived.conf.in: dpm's ordered takeover (no virtual_ipaddress). */
export const KEEPALIVED_TEMPLATE = `${ROOT}contrib/ha/keepalived.conf.in`;
/** bench/ha/keepalived-anchor.conf.in: keepalived moves the addresses itself. */
export const KEEPALIVED_ANCHOR_TEMPLATE = `${ROOT}bench/ha/keepalived-anchor.conf.in`;

/**
 * Replaces every `@NAME@` in `text` with `vars[NAME]`. A placeholder alone
 * on its line may take a multi-line value: each line gets the
 * placeholder's indentation (an empty value removes the line).
 *
 * @throws {RangeError} naming the first placeholder without a value, or the
 *   first value no placeholder used (a typo on either side).
 */
export function renderTemplate(text: string, vars: Readonly<Record<string, string>>): string {
  const used = new Set<string>();
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const alone = /^(\s*)@([A-Z][A-Z0-9_]*)@\s*$/.exec(line);
    if (alone) {
      const [, indent, name] = alone;
      const v = vars[name!];
      if (v === undefined) throw new RangeError(`Template placeholder "@${name}@" has no value`);
      used.add(name!);
      for (const l of v.split("\n")) if (l !== "") out.push(indent + l);
      continue;
    }
    out.push(line.replace(/@([A-Z][A-Z0-9_]*)@/g, (_, name: string) => {
      const v = vars[name];
      if (v === undefined) throw new RangeError(`Template placeholder "@${name}@" has no value`);
      if (v.includes("\n")) {
        throw new RangeError(`Template placeholder "@${name}@" takes one line, got several`);
      }
      used.add(name);
      return v;
    }));
  }
  const unused = Object.keys(vars).find((k) => !used.has(k));
  if (unused !== undefined) throw new RangeError(`Template value "${unused}" has no placeholder`);
  return out.join("\n");
}

/** How the pair is run. */
export interface PairOptions {
  /**
   * keepalived's template: {@linkcode KEEPALIVED_TEMPLATE} (dpm, hooks own
   * the addresses) or {@linkcode KEEPALIVED_ANCHOR_TEMPLATE}.
   */
  keepalivedTemplate: string;
  /** VRRP advertisement interval, seconds (VRRPv3: centiseconds). */
  advertInt: number;
  /** The notify hook's command line for a gateway (keepalived appends its arguments). */
  notify: (gw: HaGateway, dir: string) => string;
  /** Extra template values for keepalived (e.g. VIRTUAL_ADDRESSES for the anchor), given the run directory. */
  keepalivedVars?: (gw: HaGateway, dir: string) => Record<string, string>;
  /**
   * conntrackd's `DisableExternalCache`: true writes replicated entries into
   * the kernel at once.
   * @default {true}
   */
  disableExternalCache?: boolean;
  /** VRRP priorities of gwa and gwb. @default {[150, 100]} */
  priorities?: [number, number];
}

/** The running daemons of one gateway. */
export interface GatewayDaemons {
  gw: HaGateway;
  /** This gateway's run directory. */
  dir: string;
  /** Its conntrackd configuration file. */
  conntrackdConf: string;
  keepalived: Spawned | null;
  conntrackd: Spawned | null;
  /** Starts conntrackd (and waits until its socket answers), then keepalived. */
  start(): Promise<void>;
  /** SIGKILLs the named daemons (process groups); default both. */
  kill(which?: readonly ("keepalived" | "conntrackd")[]): Promise<void>;
  /** `conntrackd -C <conf> <args>` in the gateway. */
  ctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
}

/** VRRP virtual router id of the pair. */
export const VRID = 51;

/** The sync link's UDP port (conntrackd.conf.in). */
export const SYNC_PORT = 3780;

/**
 * Renders both gateways' configurations into their run directories and
 * returns their daemons, not started yet.
 */
export async function preparePair(t: HaTopology, o: PairOptions): Promise<GatewayDaemons[]> {
  const [ka, ct] = await Promise.all([
    Deno.readTextFile(o.keepalivedTemplate),
    Deno.readTextFile(CONNTRACKD_TEMPLATE),
  ]);
  const prios = o.priorities ?? [150, 100];
  return t.gateways.map((gw, i) => {
    const other = t.gateways[1 - i]!;
    const dir = `${t.scratch}/${gw.name}`;
    const conntrackdConf = `${dir}/conntrackd.conf`;
    const keepalivedConf = `${dir}/keepalived.conf`;
    // The gateways' own addresses, never G nor the pool: conntrackd's
    // address filter matches the original source and destination, and every
    // dpm session is addressed to G on the LAN side (a PCP mapping to a pool
    // address on the WAN side).
    const ignore = t.gateways.flatMap((g) => [g.lanText, g.wanText, g.syncText])
      .map((a) => `IPv4_address ${a}`).join("\n");
    const ctText = renderTemplate(ct, {
      DISABLE_EXTERNAL_CACHE: (o.disableExternalCache ?? true) ? "On" : "Off",
      SYNC_ADDR: gw.syncText,
      PEER_SYNC_ADDR: other.syncText,
      SYNC_IF: gw.syncIf,
      RUN_DIR: dir,
      IGNORE_ADDRESSES: ignore,
      SYSTEMD: "off",
    });
    const kaText = renderTemplate(ka, {
      ROUTER_ID: gw.name,
      LAN_IF: gw.lanIf,
      WAN_IF: gw.wanIf,
      VRID: String(VRID),
      PRIORITY: String(prios[i]),
      ADVERT_INT: String(o.advertInt),
      LAN_ADDR: gw.lanText,
      PEER_LAN_ADDR: other.lanText,
      NOTIFY: o.notify(gw, dir),
      ...(o.keepalivedVars?.(gw, dir) ?? {}),
    });
    const d: GatewayDaemons = {
      gw,
      dir,
      conntrackdConf,
      keepalived: null,
      conntrackd: null,
      async start() {
        await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
        await Deno.writeTextFile(conntrackdConf, ctText);
        await Deno.writeTextFile(keepalivedConf, kaText);
        // A crashed run's lock would stop conntrackd from starting.
        await Deno.remove(`${dir}/conntrackd.lock`).catch(() => {});
        await Deno.remove(`${dir}/conntrackd.ctl`).catch(() => {});
        d.conntrackd = t.spawn(gw.ns, ["conntrackd", "-C", conntrackdConf]);
        await waitCtl(d);
        d.keepalived = t.spawn(gw.ns, [
          "keepalived",
          "--dont-fork",
          "--log-console",
          "--log-detail",
          "--no-syslog",
          "--vrrp",
          "--use-file",
          keepalivedConf,
          "--pid",
          `${dir}/keepalived.pid`,
          "--vrrp_pid",
          `${dir}/vrrp.pid`,
        ]);
      },
      async kill(which = ["keepalived", "conntrackd"]) {
        const procs = which.map((w) => w === "keepalived" ? d.keepalived : d.conntrackd);
        await Promise.all(procs.map((p) => p?.stop("SIGKILL", 0)));
      },
      ctl(args) {
        return t.exec(gw.ns, ["conntrackd", "-C", conntrackdConf, ...args]);
      },
    };
    return d;
  });
}

/** Waits until conntrackd answers on its socket (`-s`), or throws with its output. */
async function waitCtl(d: GatewayDaemons): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await d.ctl(["-s", "network"]);
    if (r.code === 0) return;
    if (d.conntrackd && (await Promise.race([d.conntrackd.status, Promise.resolve(null)]))) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`conntrackd in ${d.gw.name} does not answer:\n${d.conntrackd?.output() ?? ""}`);
}

/** Whether `gw` holds G on its LAN link now. */
export async function holdsVip(t: HaTopology, gw: HaGateway): Promise<boolean> {
  const r = await t.exec(gw.ns, ["ip", "-4", "-o", "addr", "show", "dev", gw.lanIf]);
  return r.stdout.includes(` ${t.vipText}/`);
}

/** The gateway that holds G on its LAN link now, or null (none, or both: a split). */
export async function vipHolder(t: HaTopology): Promise<HaGateway | null> {
  const held = await Promise.all(t.gateways.map((g) => holdsVip(t, g)));
  const holders = t.gateways.filter((_, i) => held[i]);
  return holders.length === 1 ? holders[0]! : null;
}
