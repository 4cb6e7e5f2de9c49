/**
 * Versions, one definition each: the program's (printed by `dpm --version`,
 * in status replies) and the control protocol's (on the wire, proto.ts).
 *
 * @module
 */

/** The program version (semver), as in deno.json. */
export const VERSION = "0.1.0";
