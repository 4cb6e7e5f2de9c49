/**
 * A small leveled logger writing one line per event to stderr:
 * `2026-11-25T09:00:00.000Z info  server: listening on 10.0.0.1:4750`.
 * Levels: error < warn < info < debug. Debug lines are cheap to skip.
 *
 * @module
 */

/** Log levels, most severe first. */
export const LEVELS = ["error", "warn", "info", "debug"] as const;
/** A log level name. */
export type Level = (typeof LEVELS)[number];

let threshold = 2; // info
const encoder = new TextEncoder();

/** Sets the most verbose level that is printed. */
export function setLevel(level: Level): void {
  threshold = LEVELS.indexOf(level);
}

/** True when `level` would be printed (guard expensive debug formatting with it). */
export function enabled(level: Level): boolean {
  return LEVELS.indexOf(level) <= threshold;
}

function write(level: Level, scope: string, msg: string): void {
  if (LEVELS.indexOf(level) > threshold) return;
  const line = `${new Date().toISOString()} ${level.padEnd(5)} ${scope}: ${msg}\n`;
  try {
    Deno.stderr.writeSync(encoder.encode(line));
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
