/**
 * A small leveled logger writing one line per event to stderr. Levels:
 * error < warn < info < debug; debug lines are cheap to skip.
 *
 * Formats:
 * - `text` (default): `2026-11-25T09:00:00.000Z info  server: listening on 10.0.0.1:4750`;
 *   under systemd (`JOURNAL_STREAM` set, stderr connected to the journal) the
 *   line starts with the syslog priority instead of the time (`<6>server: ...`,
 *   sd-daemon(3)), so `journalctl -p warning` filters and the journal's own
 *   timestamp is not doubled;
 * - `json`: one object per line for log shippers:
 *   `{"time":"...","level":"info","scope":"server","msg":"..."}`.
 *
 * The level and format can change at run time (SIGHUP reload).
 *
 * @module
 */

/** Log levels, most severe first. */
export const LEVELS = ["error", "warn", "info", "debug"] as const;
/** A log level name. */
export type Level = (typeof LEVELS)[number];
/** Output formats. */
export type Format = "text" | "json";

/** syslog priorities of the levels (err 3, warning 4, info 6, debug 7). */
const PRIORITY = [3, 4, 6, 7];

let threshold = 2; // info
let format: Format = "text";
let journal = detectJournal();
const encoder = new TextEncoder();

/**
 * True when stderr is the journal: systemd sets `JOURNAL_STREAM` to the
 * device and inode of the stream it connected (systemd.exec(5)).
 */
function detectJournal(): boolean {
  try {
    const js = Deno.env.get("JOURNAL_STREAM");
    if (!js) return false;
    const [dev, ino] = js.split(":").map(Number);
    const st = Deno.statSync("/proc/self/fd/2");
    return st.dev === dev && st.ino === ino;
  } catch {
    // No permission to read the environment, or stderr is not a file: assume
    // the journal when the variable is set at all (the usual case under systemd).
    try {
      return Deno.env.get("JOURNAL_STREAM") !== undefined;
    } catch {
      return false;
    }
  }
}

/** Sets the most verbose level that is printed. */
export function setLevel(level: Level): void {
  threshold = LEVELS.indexOf(level);
}

/** Sets the output format. */
export function setFormat(f: Format): void {
  format = f;
}

/** Overrides journal detection (tests). */
export function setJournal(on: boolean): void {
  journal = on;
}

/** True when `level` would be printed (guard expensive debug formatting with it). */
export function enabled(level: Level): boolean {
  return LEVELS.indexOf(level) <= threshold;
}

/** Formats one line (without writing it); exported for tests. */
export function formatLine(level: Level, scope: string, msg: string, now = new Date()): string {
  const i = LEVELS.indexOf(level);
  if (format === "json") {
    return JSON.stringify({ time: now.toISOString(), level, scope, msg }) + "\n";
  }
  // One event, one line: a message with newlines (a stack) stays one record.
  const text = msg.replaceAll("\n", " | ");
  if (journal) return `<${PRIORITY[i]}>${scope}: ${text}\n`;
  return `${now.toISOString()} ${level.padEnd(5)} ${scope}: ${text}\n`;
}

function write(level: Level, scope: string, msg: string): void {
  if (LEVELS.indexOf(level) > threshold) return;
  try {
    Deno.stderr.writeSync(encoder.encode(formatLine(level, scope, msg)));
  } catch {
    // stderr closed: nothing sensible to do.
  }
}

/** A logger bound to a scope ("server", "driver", ...). */
export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
}

/** Returns a logger whose lines carry `scope`. */
export function logger(scope: string): Logger {
  return {
    error: (m) => write("error", scope, m),
    warn: (m) => write("warn", scope, m),
    info: (m) => write("info", scope, m),
    debug: (m) => write("debug", scope, m),
  };
}
