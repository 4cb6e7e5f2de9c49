/**
 * SSDP (UDA section 1, HTTP over UDP on 239.255.255.250:1900): the parser
 * of M-SEARCH requests and the writers of search responses and NOTIFY
 * announcements. Pure: no sockets, no clock.
 *
 * The parser reads only what a device must answer: an `M-SEARCH * HTTP/1.1`
 * request with `MAN: "ssdp:discover"` and one `ST`. Everything else that
 * reaches port 1900 (other devices' NOTIFYs, responses, garbage) is
 * `ignore`d silently; malformed searches are `ignore`d with a reason for
 * the counters. Lines end in CRLF (a bare LF is accepted: some stacks send
 * it); header names are case-insensitive; a repeated header, an over-long
 * line or datagram, or more than {@linkcode MAX_HEADERS} headers make the
 * search malformed.
 *
 * @module
 */

/** The SSDP multicast group (IPv4). */
export const SSDP_GROUP = "239.255.255.250";
/** The SSDP port. */
export const SSDP_PORT = 1900;
/** Longest datagram read; longer ones are dropped unread. */
export const MAX_DATAGRAM = 2048;
/** Most header lines read in one datagram. */
export const MAX_HEADERS = 32;
/** Longest MX honoured, seconds (UDA 1.1 section 1.3.2: values over 5 count as 5). */
export const MAX_MX = 5;

/** A search target as the device understands it. */
export type SearchTarget =
  | { kind: "all" }
  | { kind: "rootdevice" }
  | { kind: "uuid"; uuid: string }
  | { kind: "type"; domainType: string; version: number };

/** A parsed M-SEARCH. */
export interface Search {
  /** The ST header as sent (echoed in the answers, with the version asked). */
  st: string;
  target: SearchTarget;
  /** MX in seconds, capped at {@linkcode MAX_MX}; null when absent (a unicast search). */
  mx: number | null;
}

/** The result of {@linkcode parseSearch}. */
export type SearchResult =
  | { ok: true; search: Search }
  | { ok: false; malformed: boolean; reason: string };

const latin1 = new TextDecoder("latin1");

/**
 * Parses a search target. Device and service types are
 * `urn:<domain>:device|service:<type>:<version>`; the version is a positive
 * integer.
 */
export function parseTarget(st: string): SearchTarget | null {
  if (st === "ssdp:all") return { kind: "all" };
  if (st === "upnp:rootdevice") return { kind: "rootdevice" };
  if (st.startsWith("uuid:")) {
    const u = st.slice(5);
    return u.length > 0 && u.length <= 128 ? { kind: "uuid", uuid: u } : null;
  }
  const f = st.split(":");
  if (f.length !== 5 || f[0] !== "urn" || (f[2] !== "device" && f[2] !== "service")) return null;
  if (!/^[1-9][0-9]{0,4}$/.test(f[4]!) || f[1] === "" || f[3] === "") return null;
  return { kind: "type", domainType: f.slice(0, 4).join(":"), version: Number(f[4]) };
}

/** Parses one datagram that arrived on port 1900. */
export function parseSearch(msg: Uint8Array): SearchResult {
  const ignore = (reason: string): SearchResult => ({ ok: false, malformed: false, reason });
  const bad = (reason: string): SearchResult => ({ ok: false, malformed: true, reason });
  if (msg.length > MAX_DATAGRAM) return bad(`longer than ${MAX_DATAGRAM} bytes`);
  const text = latin1.decode(msg);
  const end = text.indexOf("\n");
  const first = (end < 0 ? text : text.slice(0, end)).replace(/\r$/, "");
  if (!first.startsWith("M-SEARCH ")) return ignore("not an M-SEARCH");
  if (first !== "M-SEARCH * HTTP/1.1") return bad("request line is not 'M-SEARCH * HTTP/1.1'");
  // The last piece after the final LF is not a whole line.
  const lines = text.slice(end + 1).split("\n").slice(0, -1);
  const h = new Map<string, string>();
  let ended = false;
  for (const raw of lines) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line === "") {
      ended = true;
      break;
    }
    if (h.size >= MAX_HEADERS) return bad(`more than ${MAX_HEADERS} headers`);
    const c = line.indexOf(":");
    if (c <= 0) return bad("a header line without a name");
    const name = line.slice(0, c).trim().toLowerCase();
    if (!/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(name)) return bad("a header name with bad characters");
    if (h.has(name)) return bad(`header ${name} repeated`);
    h.set(name, line.slice(c + 1).trim());
  }
  if (!ended) return bad("no empty line after the headers");
  const man = h.get("man");
  if (man !== '"ssdp:discover"' && man !== "ssdp:discover") {
    return bad('MAN is not "ssdp:discover"');
  }
  const st = h.get("st");
  if (!st) return bad("no ST");
  const target = parseTarget(st);
  if (!target) return bad("ST is not a search target");
  let mx: number | null = null;
  const mxText = h.get("mx");
  if (mxText !== undefined) {
    if (!/^[0-9]{1,9}$/.test(mxText)) return bad("MX is not a number of seconds");
    mx = Math.min(Number(mxText), MAX_MX);
  }
  return { ok: true, search: { st, target, mx } };
}

/** What every answer and announcement carries about the device. */
export interface Advertised {
  /** The description's URL (LOCATION). */
  location: string;
  /** SERVER: `OS/version UPnP/1.1 product/version`. */
  server: string;
  /** CACHE-CONTROL max-age, seconds. */
  maxAge: number;
  /** BOOTID.UPNP.ORG. */
  bootId: number;
  /** CONFIGID.UPNP.ORG. */
  configId: number;
}

const enc = new TextEncoder();

/**
 * One SSDP datagram: the start line and `headers`, then the two headers
 * UDA 1.1 puts in every answer and announcement (BOOTID.UPNP.ORG,
 * CONFIGID.UPNP.ORG), each line ended by CRLF, and the blank line.
 */
function datagram(a: Advertised, start: string, headers: readonly string[]): Uint8Array {
  const lines = [
    start,
    ...headers,
    `BOOTID.UPNP.ORG: ${a.bootId}`,
    `CONFIGID.UPNP.ORG: ${a.configId}`,
  ];
  return enc.encode(lines.join("\r\n") + "\r\n\r\n");
}

/** A NOTIFY announcement to the SSDP group: its start line and HOST, then `headers`. */
function notify(a: Advertised, headers: readonly string[]): Uint8Array {
  return datagram(a, "NOTIFY * HTTP/1.1", [`HOST: ${SSDP_GROUP}:${SSDP_PORT}`, ...headers]);
}

/** The answer to a search: one HTTP/1.1 200 response datagram (UDA 1.1 section 1.3.3). */
export function searchResponse(a: Advertised, st: string, usn: string): Uint8Array {
  return datagram(a, "HTTP/1.1 200 OK", [
    `CACHE-CONTROL: max-age=${a.maxAge}`,
    "EXT:",
    `LOCATION: ${a.location}`,
    `SERVER: ${a.server}`,
    `ST: ${st}`,
    `USN: ${usn}`,
  ]);
}

/** A NOTIFY ssdp:alive announcement (UDA 1.1 section 1.2.2). */
export function aliveNotify(a: Advertised, nt: string, usn: string): Uint8Array {
  return notify(a, [
    `CACHE-CONTROL: max-age=${a.maxAge}`,
    `LOCATION: ${a.location}`,
    `NT: ${nt}`,
    "NTS: ssdp:alive",
    `SERVER: ${a.server}`,
    `USN: ${usn}`,
  ]);
}

/** A NOTIFY ssdp:byebye announcement (UDA 1.1 section 1.2.3). */
export function byebyeNotify(a: Advertised, nt: string, usn: string): Uint8Array {
  return notify(a, [`NT: ${nt}`, "NTS: ssdp:byebye", `USN: ${usn}`]);
}

/** Parses the headers of an SSDP datagram (tests and clients): first line and lower-cased names. */
export function parseSsdpHeaders(msg: Uint8Array): { first: string; headers: Map<string, string> } {
  const lines = latin1.decode(msg).split("\r\n");
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const c = l.indexOf(":");
    if (c > 0) headers.set(l.slice(0, c).toLowerCase(), l.slice(c + 1).trim());
  }
  return { first: lines[0] ?? "", headers };
}
