/**
 * Who holds a local port: the kernel's socket tables as `/proc/net/udp`,
 * `/proc/net/tcp` (and their IPv6 twins `udp6`, `tcp6`, since a dual-stack
 * socket bound to `::` also receives IPv4) list them, one socket a line,
 * with the uid that created it. The files show the sockets of the reading
 * process's network namespace.
 *
 * A line is `sl: local rem st tx:rx tr:when retrnsmt uid timeout inode ...`
 * with addresses in hex as the kernel stores them and ports in hex (host
 * order as text, so `0035` is port 53). TCP lists listening and connected
 * sockets (a socket only bound, neither listening nor connected, is not
 * listed anywhere); TIME_WAIT and half-open (SYN_RECV) entries carry
 * inode 0 and uid 0 whatever their owner was, so they are skipped as owners.
 *
 * {@linkcode parseProcNet}, {@linkcode portOwners} and {@linkcode ownersByPort}
 * are pure; {@linkcode readProcNet} reads the files.
 * Needs `--allow-read` for the reader, nothing for the parser.
 *
 * @module
 */

/** One socket of a `/proc/net/{udp,tcp}[6]` table. */
export interface ProcNetSocket {
  /** The local address as the kernel prints it (8 hex digits IPv4, 32 IPv6). */
  localAddr: string;
  localPort: number;
  remoteAddr: string;
  remotePort: number;
  /** The `st` column: TCP state (0x0A LISTEN, 0x01 ESTABLISHED...), UDP 0x07 or 0x01. */
  state: number;
  /** The uid that created the socket. */
  uid: number;
  /** The socket's inode; 0 for TIME_WAIT and SYN_RECV entries (no socket of their own). */
  inode: number;
}

function endpoint(s: string): [string, number] | null {
  const i = s.lastIndexOf(":");
  if (i <= 0 || !/^[0-9A-Fa-f]+$/.test(s.slice(0, i)) || !/^[0-9A-Fa-f]{4}$/.test(s.slice(i + 1))) {
    return null;
  }
  return [s.slice(0, i).toUpperCase(), parseInt(s.slice(i + 1), 16)];
}

/**
 * The sockets of one `/proc/net/{udp,tcp}[6]` text. The header line and any
 * line that does not have the expected columns are skipped.
 */
export function parseProcNet(text: string): ProcNetSocket[] {
  const out: ProcNetSocket[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !/^[0-9]+:$/.test(f[0]!)) continue;
    const local = endpoint(f[1]!);
    const remote = endpoint(f[2]!);
    if (!local || !remote || !/^[0-9A-Fa-f]{2}$/.test(f[3]!)) continue;
    if (!/^[0-9]+$/.test(f[7]!) || !/^[0-9]+$/.test(f[9]!)) continue;
    out.push({
      localAddr: local[0],
      localPort: local[1],
      remoteAddr: remote[0],
      remotePort: remote[1],
      state: parseInt(f[3]!, 16),
      uid: Number(f[7]),
      inode: Number(f[9]),
    });
  }
  return out;
}

/**
 * The uids of the sockets bound to local port `port` in `sockets`, sorted,
 * each once. Entries without a socket (inode 0: TIME_WAIT, SYN_RECV) do not
 * count.
 */
export function portOwners(sockets: Iterable<ProcNetSocket>, port: number): number[] {
  const uids = new Set<number>();
  for (const s of sockets) if (s.localPort === port && s.inode !== 0) uids.add(s.uid);
  return [...uids].sort((a, b) => a - b);
}

/**
 * {@linkcode portOwners} of every port at once: local port → the uids of
 * its sockets, sorted.
 */
export function ownersByPort(sockets: Iterable<ProcNetSocket>): Map<number, number[]> {
  const sets = new Map<number, Set<number>>();
  for (const s of sockets) {
    if (s.inode === 0) continue;
    let u = sets.get(s.localPort);
    if (!u) sets.set(s.localPort, u = new Set());
    u.add(s.uid);
  }
  const out = new Map<number, number[]>();
  for (const [port, u] of sets) out.set(port, [...u].sort((a, b) => a - b));
  return out;
}

/** The machine stores words little-endian (x86_64, aarch64): /proc prints words as it stores them. */
const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/** One 32-bit word as /proc prints it (`%08X` of the word in memory order) as a host-order number. */
function word(hex: string): number {
  const v = parseInt(hex, 16) >>> 0;
  return LITTLE_ENDIAN
    ? (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0
    : v;
}

/**
 * The IPv4 address of a socket's `localAddr` as a host-order number: the
 * 8-digit IPv4 form, or an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
 * The unspecified address (`0.0.0.0` or `::`, which also receives IPv4
 * unless the socket is IPv6-only) is 0. null: an IPv6 address that no
 * IPv4 packet reaches.
 */
export function ipv4OfProcAddr(hex: string): number | null {
  if (/^[0-9A-Fa-f]{8}$/.test(hex)) return word(hex);
  if (!/^[0-9A-Fa-f]{32}$/.test(hex)) return null;
  const w = [0, 8, 16, 24].map((i) => word(hex.slice(i, i + 8)));
  if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0) return 0;
  if (w[0] === 0 && w[1] === 0 && w[2] === 0xffff) return w[3]!;
  return null;
}

/**
 * The IPv4 endpoints sockets are bound to: each socket's local address as a
 * host-order number (0: the unspecified address, `0.0.0.0` or `::`) and
 * port. Sockets without a socket of their own (TIME_WAIT, SYN_RECV: inode
 * 0), with no port, or on an IPv6 address no IPv4 packet reaches are left
 * out.
 */
export function boundIPv4(sockets: Iterable<ProcNetSocket>): { addr: number; port: number }[] {
  const out: { addr: number; port: number }[] = [];
  for (const s of sockets) {
    if (s.inode === 0 || s.localPort === 0) continue;
    const addr = ipv4OfProcAddr(s.localAddr);
    if (addr !== null) out.push({ addr, port: s.localPort });
  }
  return out;
}

/**
 * The local addresses of the reading process's network namespace, from the
 * text of `/proc/net/fib_trie`: every `/32 host LOCAL` leaf of the trie
 * (the kernel's local table, as `ip route show table local` lists them).
 */
export function parseLocalAddresses(fibTrie: string): Set<number> {
  const out = new Set<number>();
  let last: number | null = null;
  for (const line of fibTrie.split("\n")) {
    const leaf = /^\s*\|--\s+(\d+)\.(\d+)\.(\d+)\.(\d+)\s*$/.exec(line);
    if (leaf) {
      last = ((+leaf[1]! << 24) | (+leaf[2]! << 16) | (+leaf[3]! << 8) | +leaf[4]!) >>> 0;
      continue;
    }
    if (last !== null && /^\s*\/32 host LOCAL\s*$/.test(line)) out.add(last);
  }
  return out;
}

/** {@linkcode parseLocalAddresses} of this namespace's `/proc/net/fib_trie`. */
export function readLocalAddresses(dir = "/proc/net"): Set<number> {
  return parseLocalAddresses(Deno.readTextFileSync(`${dir}/fib_trie`));
}

/**
 * The sockets of protocol `proto` in this process's network namespace: both
 * `/proc/net/<proto>` and `/proc/net/<proto>6` (a missing IPv6 table, IPv6
 * being off, is no error).
 *
 * @throws when `/proc/net/<proto>` cannot be read.
 */
export function readProcNet(proto: "udp" | "tcp", dir = "/proc/net"): ProcNetSocket[] {
  const out = parseProcNet(Deno.readTextFileSync(`${dir}/${proto}`));
  try {
    out.push(...parseProcNet(Deno.readTextFileSync(`${dir}/${proto}6`)));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out;
}

/**
 * {@linkcode readProcNet} and {@linkcode readLocalAddresses} read off the
 * event loop (Deno's blocking pool): `/proc/net/tcp` walks the kernel's
 * whole TCP hash tables, several milliseconds here even in an empty
 * namespace, which a server must not spend on its event loop every second.
 */
export async function readGatewaySockets(dir = "/proc/net"): Promise<{
  local: Set<number>;
  tcp: ProcNetSocket[];
  udp: ProcNetSocket[];
}> {
  const text = (f: string) =>
    Deno.readTextFile(`${dir}/${f}`).catch((e) => {
      if (e instanceof Deno.errors.NotFound && f.endsWith("6")) return ""; // IPv6 off
      throw e;
    });
  const [fib, tcp, tcp6, udp, udp6] = await Promise.all(
    ["fib_trie", "tcp", "tcp6", "udp", "udp6"].map(text),
  );
  return {
    local: parseLocalAddresses(fib!),
    tcp: [...parseProcNet(tcp!), ...(tcp6 ? parseProcNet(tcp6) : [])],
    udp: [...parseProcNet(udp!), ...(udp6 ? parseProcNet(udp6) : [])],
  };
}
