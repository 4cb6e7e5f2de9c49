/**
 * Tells the service manager about the process's state (systemd `Type=notify`:
 * READY=1 once the data path is up and the control listener answers;
 * RELOADING=1 / READY=1 around a SIGHUP reload; STOPPING=1). A failure is
 * logged, never fatal: dpm works the same without systemd.
 *
 * The sender is given by the role's process file (`useNotifier`, with
 * `linux/sdnotify.ts`), so this module and its users stay free of the
 * kernel; until then nothing is sent.
 *
 * @module
 */

import { logger } from "./log.ts";

const log = logger("systemd");

let send: (state: string) => void = () => {};

/** Sets how states are sent (`sdNotify` under systemd). */
export function useNotifier(sender: (state: string) => void): void {
  send = sender;
}

/** Sends `state` when under systemd; logs when that fails. */
export function notify(state: string): void {
  try {
    send(state);
  } catch (e) {
    log.warn((e as Error).message);
  }
}
