/**
 * Result codes of the control protocol, shared by the wire codec
 * (`proto.ts`), the session table (`table/`) and the CLI. The numeric values
 * are on the wire: never renumber, only append.
 *
 * @module
 */

/** Result codes carried in every control response. */
export const Result = {
  /** The request succeeded. */
  OK: 0,
  /** The request's version byte is not one this server speaks. */
  UNSUPPORTED_VERSION: 1,
  /** The request is not a well-formed message of its opcode (length, magic, reserved bits, values). */
  MALFORMED: 2,
  /** The request's internal address differs from the packet's source address (claim 2). */
  NOT_AUTHORIZED: 3,
  /** No public address/port is free in the pool. */
  NO_RESOURCES: 4,
  /** The host already holds its maximum number of sessions. */
  QUOTA_EXCEEDED: 5,
  /** A fixed (non-replaceable) port is already used toward the same remote endpoint on every public address. */
  CONFLICT: 6,
  /** Renew or release named a session the server does not hold for this host. */
  NO_SUCH_SESSION: 7,
  /** The host sent requests faster than the server's per-host rate limit. */
  RATE_LIMITED: 8,
  /** The transport protocol number is not TCP, UDP or ICMP. */
  UNSUPPORTED_PROTOCOL: 9,
  /** The opcode is unknown. */
  UNSUPPORTED_OPCODE: 10,
  /** The remote endpoint is not an outside address (inside the LAN, or in the pool, or unusable). */
  BAD_REMOTE: 11,
  /**
   * The request carried no valid cookie for its source address: nothing was
   * changed; the reply carries the cookie, which the host echoes in a retry.
   */
  COOKIE_REQUIRED: 12,
} as const;

/** A result code. */
export type ResultCode = (typeof Result)[keyof typeof Result];

const NAMES: readonly string[] = [
  "ok",
  "unsupported-version",
  "malformed",
  "not-authorized",
  "no-resources",
  "quota-exceeded",
  "conflict",
  "no-such-session",
  "rate-limited",
  "unsupported-protocol",
  "unsupported-opcode",
  "bad-remote",
  "cookie-required",
];

/** The kebab-case name of a result code, for logs, counters and JSON. */
export function resultName(code: number): string {
  return NAMES[code] ?? `unknown-${code}`;
}

/** Number of defined result codes (for counter arrays). */
export const RESULT_COUNT = NAMES.length;
