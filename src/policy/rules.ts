/**
 * The port policy of inbound mappings: which public ports a host may map
 * to which of its ports, as miniupnpd's `allow`/`deny` permission lines
 * (`upnppermissions.c`). One ordered list of rules; the first rule that
 * matches a request decides it:
 *
 * ```
 * --map-allow "10.0.0.5 22 2222"        host 10.0.0.5, internal port 22, public port 2222
 * --map-deny  "10.0.0.0/24 1-1023"      internal ports below 1024 of the whole LAN, any public port
 * --map-allow "10.0.0.7"                everything for 10.0.0.7 (below the defaults' reach)
 * ```
 *
 * A rule is `HOSTS [INTERNAL-PORTS [PUBLIC-PORTS]]`: an address or a
 * prefix (`a.b.c.d/len`), then ports as `p`, `lo-hi` or `*` (any); a
 * missing field is `*`. The operator's rules come first (in the order
 * given), then the defaults ({@linkcode defaultRules}): the fixed ports that
 * hosts share by remote (`--fixed-ports`, IKE 500/4500, SIP 5060) are never
 * an exclusive public mapping, public ports below 1024 are refused, every
 * other public port is allowed. So a rule can open what the defaults close
 * (`--map-allow "10.0.0.5 500 500"` gives one host IKE's port) and close
 * what they leave open (`--map-deny "0.0.0.0/0"` turns mappings off).
 *
 * Pure: no I/O, no clock (`src/policy/mappings.ts` applies it).
 *
 * @module
 */

import { type Cidr, cidrContains, formatCidr, parseCidr } from "../wire/addr.ts";

/** An inclusive range of ports. */
export type PortRange = readonly [lo: number, hi: number];

/** One rule of the port policy. */
export interface MapRule {
  /** True: `--map-allow`; false: `--map-deny`. */
  allow: boolean;
  /** The internal hosts it concerns (0.0.0.0/0: all). */
  hosts: Cidr;
  /** The internal ports it concerns. */
  internal: PortRange;
  /** The public ports it concerns. */
  external: PortRange;
  /** The rule as text, for logs: `deny 0.0.0.0/0 1-65535 1-1023 (default)`. */
  text: string;
}

const ANY: PortRange = [1, 65535];

function parsePorts(t: string): PortRange | null {
  if (t === "*") return ANY;
  const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(t);
  if (!m) return null;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo >= 1 && hi <= 65535 && lo <= hi ? [lo, hi] : null;
}

function portsText(r: PortRange): string {
  return r[0] === r[1] ? String(r[0]) : `${r[0]}-${r[1]}`;
}

function ruleText(allow: boolean, hosts: Cidr, internal: PortRange, external: PortRange): string {
  return `${allow ? "allow" : "deny"} ${formatCidr(hosts)} ${portsText(internal)} ${
    portsText(external)
  }`;
}

/**
 * Parses one rule (`HOSTS [INTERNAL-PORTS [PUBLIC-PORTS]]`). Returns the rule,
 * or a sentence saying what is wrong with it.
 */
export function parseMapRule(text: string, allow: boolean): MapRule | string {
  const flag = allow ? "--map-allow" : "--map-deny";
  const f = text.trim().split(/\s+/);
  if (f.length === 0 || f[0] === "" || f.length > 3) {
    return `Invalid ${flag} "${text}": want HOSTS [INTERNAL-PORTS [PUBLIC-PORTS]]`;
  }
  const hosts = f[0] === "*"
    ? { addr: 0, len: 0 }
    : parseCidr(f[0]!.includes("/") ? f[0]! : `${f[0]}/32`);
  if (!hosts) {
    return `Invalid ${flag} "${text}": hosts "${f[0]}" is not an address or a.b.c.d/len`;
  }
  const internal = parsePorts(f[1] ?? "*");
  const external = parsePorts(f[2] ?? "*");
  if (!internal) return `Invalid ${flag} "${text}": internal ports "${f[1]}": want p, lo-hi or *`;
  if (!external) return `Invalid ${flag} "${text}": public ports "${f[2]}": want p, lo-hi or *`;
  return { allow, hosts, internal, external, text: ruleText(allow, hosts, internal, external) };
}

/**
 * The rules that follow the operator's: `fixedPorts` and public ports
 * below 1024 refused, every other public port allowed.
 */
export function defaultRules(fixedPorts: readonly number[]): MapRule[] {
  const all = { addr: 0, len: 0 };
  const rule = (allow: boolean, external: PortRange, why: string): MapRule => ({
    allow,
    hosts: all,
    internal: ANY,
    external,
    text: `${ruleText(allow, all, ANY, external)} (default: ${why})`,
  });
  return [
    ...[...new Set(fixedPorts)].sort((a, b) => a - b).map((p) =>
      rule(false, [p, p], "a fixed port, shared by remote (--fixed-ports)")
    ),
    rule(false, [1, 1023], "well-known ports"),
    rule(true, ANY, "every other port"),
  ];
}

/**
 * The public ports `rules` allow for host `a`'s internal port `pa`, as
 * sorted, disjoint, inclusive ranges (empty: none). The first rule whose
 * hosts, internal ports and public ports all match decides each public
 * port; a port no rule matches is refused.
 */
export function allowedPorts(rules: readonly MapRule[], a: number, pa: number): PortRange[] {
  // Walk the rules in order, keeping the ports no rule has decided yet.
  let open: [number, number][] = [[1, 65535]];
  const allowed: [number, number][] = [];
  for (const r of rules) {
    if (open.length === 0) break;
    if (!cidrContains(r.hosts, a) || pa < r.internal[0] || pa > r.internal[1]) continue;
    const [lo, hi] = r.external;
    const next: [number, number][] = [];
    for (const [a0, b0] of open) {
      if (b0 < lo || a0 > hi) {
        next.push([a0, b0]);
        continue;
      }
      if (a0 < lo) next.push([a0, lo - 1]);
      if (r.allow) allowed.push([Math.max(a0, lo), Math.min(b0, hi)]);
      if (b0 > hi) next.push([hi + 1, b0]);
    }
    open = next;
  }
  allowed.sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [lo, hi] of allowed) {
    const last = out[out.length - 1];
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** The rule that decides public port `p` for `a:pa`, or null when none matches (refused). */
export function decidingRule(
  rules: readonly MapRule[],
  a: number,
  pa: number,
  p: number,
): MapRule | null {
  for (const r of rules) {
    if (
      cidrContains(r.hosts, a) && pa >= r.internal[0] && pa <= r.internal[1] &&
      p >= r.external[0] && p <= r.external[1]
    ) return r;
  }
  return null;
}
