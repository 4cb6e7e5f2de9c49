/**
 * The HTTP/1.1 of the UPnP server, as a pure reader of one request from the
 * bytes received so far and a writer of one response. The socket side
 * (`http_server.ts`) feeds bytes in and enforces time; this side enforces
 * sizes and syntax, so both can be tested (and fuzzed) without a socket.
 *
 * Deliberately narrow (RFC 9112 where it matters, refusing the rest):
 * - one request per connection (every response says `Connection: close`);
 * - lines end in CRLF; no obsolete line folding; header names are tokens;
 * - the request target is an origin-form path (`/…`, query ignored);
 * - a body only with `Content-Length` (one, decimal); `Transfer-Encoding`
 *   is refused (501), a POST without a length gets 411;
 * - HTTP/1.1 requests need one `Host`; other versions than 1.0/1.1 get 505;
 * - the header block is at most `maxHeaderBytes` (431 beyond), the body at
 *   most `maxBodyBytes` (413 beyond).
 *
 * @module
 */

/** A request, read. */
export interface HttpRequest {
  /** Upper-case method, e.g. `GET`. */
  method: string;
  /** The request target as sent. */
  target: string;
  /** The target without its query. */
  path: string;
  /** Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  /** Headers by lower-cased name (repeats joined with ", "). */
  headers: Map<string, string>;
  body: Uint8Array;
}

/** A response to write. */
export interface HttpResponse {
  status: number;
  /** Extra headers (Content-Length, Connection and Server are added by the writer). */
  headers?: ReadonlyArray<readonly [string, string]>;
  body?: string;
}

/** Size limits of {@linkcode readRequest}. */
export interface HttpLimits {
  /** Request line and headers, with their final CRLF CRLF. @default 8192 */
  maxHeaderBytes?: number;
  /** Body. @default 16384 */
  maxBodyBytes?: number;
}

/** The result of {@linkcode readRequest}. */
export type ReadResult =
  | { state: "more" }
  | { state: "error"; status: number; reason: string }
  | { state: "done"; req: HttpRequest };

/** Most header lines in a request. */
export const MAX_HEADER_LINES = 64;

/** Reason phrases of the statuses this server sends. */
export const STATUS_TEXT: Readonly<Record<number, string>> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  411: "Length Required",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

const latin1 = new TextDecoder("latin1");
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * True when `s` has a control character, DEL or (in a target) a space or a
 * non-ASCII byte; header values may hold tabs, spaces and obs-text.
 */
function badChars(s: string, value: boolean): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x7f || (c < 0x20 && !(value && c === 0x09))) return true;
    if (!value && (c === 0x20 || c > 0x7f)) return true;
  }
  return false;
}

/** The offset of the first CRLF CRLF in `b` (searching at most `limit` bytes), or -1. */
function headerEnd(b: Uint8Array, limit: number): number {
  const n = Math.min(b.length, limit);
  for (let i = 3; i < n; i++) {
    if (b[i] === 10 && b[i - 1] === 13 && b[i - 2] === 10 && b[i - 3] === 13) return i - 3;
  }
  return -1;
}

/**
 * Reads one request from the bytes received so far: `more` until it is
 * complete, then `done`, or `error` with the status to answer as soon as
 * the bytes show it cannot be served. Never throws.
 */
export function readRequest(buf: Uint8Array, limits: HttpLimits = {}): ReadResult {
  const maxHeader = limits.maxHeaderBytes ?? 8192;
  const maxBody = limits.maxBodyBytes ?? 16384;
  const err = (status: number, reason: string): ReadResult => ({ state: "error", status, reason });
  const end = headerEnd(buf, maxHeader);
  if (end < 0) {
    return buf.length >= maxHeader ? err(431, `headers longer than ${maxHeader} bytes`) : {
      state: "more",
    };
  }
  const lines = latin1.decode(buf.subarray(0, end)).split("\r\n");
  const m = /^([A-Z]{1,20}) ([^ ]{1,2048}) HTTP\/([0-9])\.([0-9])$/.exec(lines[0]!);
  if (!m) return err(400, "malformed request line");
  if (m[3] !== "1" || (m[4] !== "0" && m[4] !== "1")) {
    return err(505, `HTTP/${m[3]}.${m[4]}`);
  }
  const target = m[2]!;
  if (!target.startsWith("/")) return err(400, "the request target is not a path");
  if (badChars(target, false)) return err(400, "bad characters in the target");
  if (lines.length - 1 > MAX_HEADER_LINES) return err(431, `more than ${MAX_HEADER_LINES} headers`);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (line.includes("\r") || line.includes("\n")) return err(400, "a bare CR or LF");
    if (line.startsWith(" ") || line.startsWith("\t")) return err(400, "obsolete line folding");
    const c = line.indexOf(":");
    if (c <= 0) return err(400, "a header line without a name");
    const name = line.slice(0, c);
    if (!TOKEN.test(name)) return err(400, "a header name that is not a token");
    const value = line.slice(c + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (badChars(value, true)) return err(400, "control characters in a header");
    const k = name.toLowerCase();
    const had = headers.get(k);
    if (had !== undefined) {
      if (k === "content-length" || k === "host") return err(400, `${k} repeated`);
      headers.set(k, `${had}, ${value}`);
    } else headers.set(k, value);
  }
  const minor = Number(m[4]);
  if (minor === 1 && !headers.has("host")) return err(400, "no Host");
  if (headers.has("transfer-encoding")) return err(501, "Transfer-Encoding is not read");
  const cl = headers.get("content-length");
  let length = 0;
  if (cl !== undefined) {
    if (!/^[0-9]{1,10}$/.test(cl)) return err(400, "Content-Length is not a number");
    length = Number(cl);
    if (length > maxBody) return err(413, `body longer than ${maxBody} bytes`);
  } else if (m[1] === "POST") return err(411, "POST without Content-Length");
  const start = end + 4;
  if (buf.length < start + length) return { state: "more" };
  if (buf.length > start + length) {
    return err(400, "bytes after the body (one request per connection)");
  }
  const q = target.indexOf("?");
  return {
    state: "done",
    req: {
      method: m[1]!,
      target,
      path: q < 0 ? target : target.slice(0, q),
      minor,
      headers,
      body: buf.slice(start, start + length),
    },
  };
}

const enc = new TextEncoder();

/** The bytes of `res`, with Content-Length, `Connection: close` and `Server`. */
export function writeResponse(res: HttpResponse, server: string): Uint8Array {
  const body = enc.encode(res.body ?? "");
  let head = `HTTP/1.1 ${res.status} ${STATUS_TEXT[res.status] ?? "Unknown"}\r\n`;
  for (const [k, v] of res.headers ?? []) head += `${k}: ${v}\r\n`;
  head += `Server: ${server}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  const h = enc.encode(head);
  const out = new Uint8Array(h.length + body.length);
  out.set(h);
  out.set(body, h.length);
  return out;
}
