/**
 * Tells the service manager about the process's state (systemd `Type=notify`:
 * READY=1 once the data path is up and the control listener answers;
 * RELOADING=1 / READY=1 around a SIGHUP reload; STOPPING=1). A failure is
 * logged, never fatal: dpm works the same without systemd.
 *
 * @module
 */

import { logger } from "./log.ts";
import { sdNotify } from "../../linux/sdnotify.ts";

const log = logger("systemd");

/** Sends `state` when under systemd; logs (once per kind) when that fails. */
export function notify(state: string): void {
  try {
    sdNotify(state);
  } catch (e) {
    log.warn((e as Error).message);
  }
}
