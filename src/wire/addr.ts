/**
 * IPv4 addresses as unsigned 32-bit numbers, and the textual forms the CLI
 * accepts. Every address inside dpm is a plain `number` in host order
 * (`0xc0000201` is 192.0.2.1); only the edges parse and format.
 *
 * @module
 */

/** Parses dotted-quad IPv4 text. Returns `null` for anything else. */
export function parseIPv4(text: string): number | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  let n = 0;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    n = n * 256 + v;
  }
  return n >>> 0;
}

/**
 * Parses the address text a socket reports for an IPv4 peer: dotted quad,
 * or an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). Null for anything else.
 */
export function parseSocketIPv4(text: string): number | null {
  return parseIPv4(text.startsWith("::ffff:") ? text.slice(7) : text);
}

/** Formats a host-order address as dotted quad. */
export function formatIPv4(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

/** An IPv4 prefix: network address and length. */
export interface Cidr {
  addr: number;
  len: number;
}

/** Parses `a.b.c.d/len`. Returns `null` when malformed. The host bits are cleared. */
export function parseCidr(text: string): Cidr | null {
  const m = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text);
  if (!m) return null;
  const a = parseIPv4(m[1]!);
  const len = Number(m[2]);
  if (a === null || len > 32) return null;
  return { addr: (a & prefixMask(len)) >>> 0, len };
}

/** The netmask of a prefix length, host order. */
export function prefixMask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** True when `a` lies inside `c`. */
export function cidrContains(c: Cidr, a: number): boolean {
  return ((a & prefixMask(c.len)) >>> 0) === c.addr;
}

/** Formats a prefix as `a.b.c.d/len`. */
export function formatCidr(c: Cidr): string {
  return `${formatIPv4(c.addr)}/${c.len}`;
}

/** Parses `addr:port`. Returns `null` when malformed. */
export function parseAddrPort(text: string): { addr: number; port: number } | null {
  const i = text.lastIndexOf(":");
  if (i < 0) return null;
  const addr = parseIPv4(text.slice(0, i));
  const ps = text.slice(i + 1);
  if (addr === null || !/^[0-9]{1,5}$/.test(ps)) return null;
  const port = Number(ps);
  if (port > 65535) return null;
  return { addr, port };
}

/**
 * Expands a pool specification: comma-separated items, each a single
 * address, an inclusive range `a-b`, or a CIDR prefix (every address in it,
 * network and broadcast included, as a pool of public /32s usually is).
 * Returns the sorted, de-duplicated list, or an error message naming the bad item.
 */
export function parsePool(spec: string, limit = 65536): number[] | string {
  const out = new Set<number>();
  for (const raw of spec.split(",")) {
    const item = raw.trim();
    if (item === "") return `Empty item in pool "${spec}"`;
    let lo: number;
    let hi: number;
    if (item.includes("/")) {
      const c = parseCidr(item);
      if (!c) return `Cannot parse pool prefix "${item}"`;
      lo = c.addr;
      hi = (c.addr + 2 ** (32 - c.len) - 1) >>> 0;
    } else if (item.includes("-")) {
      const [a, b] = item.split("-");
      const l = parseIPv4(a ?? "");
      const h = parseIPv4(b ?? "");
      if (l === null || h === null) return `Cannot parse pool range "${item}"`;
      lo = l;
      hi = h;
      if (hi < lo) return `Pool range "${item}" ends before it starts`;
    } else {
      const one = parseIPv4(item);
      if (one === null) return `Cannot parse pool address "${item}"`;
      lo = hi = one;
    }
    if (hi - lo + 1 + out.size > limit) return `Pool "${spec}" has more than ${limit} addresses`;
    for (let a = lo; a <= hi; a++) out.add(a >>> 0);
  }
  return [...out].sort((x, y) => x - y);
}
