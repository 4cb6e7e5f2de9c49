/**
 * `dpm driver --cleanup`: gives back to the server every session a run
 * left translating (read from the kernel by each data path), then removes
 * what any data path left (tables, chains, sysctls). Idempotent.
 *
 * @module
 */

import type { HostOptions } from "../datapath/datapath.ts";
import { leftoverHostSessions, removeDriverDataPaths } from "../datapath/open.ts";
import { logger } from "../runtime/log.ts";
import type { DriverCore } from "./core.ts";

const log = logger("driver");

/** How long --cleanup waits for the server to confirm the releases. */
const RELEASE_WAIT_MS = 3000;

/** Releases the previous run's sessions and removes its kernel state. */
export async function cleanupDriver(opts: HostOptions, core: DriverCore): Promise<void> {
  let released = 0;
  try {
    core.adopt(await leftoverHostSessions(opts));
    released = core.counters.adopted;
    // Give them back, but do not wait long for a server that may be gone:
    // their leases run out there by themselves.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<"late">((r) =>
      timer = setTimeout(() => r("late"), RELEASE_WAIT_MS)
    );
    const outcome = await Promise.race([core.releaseAll(), deadline]);
    clearTimeout(timer);
    if (outcome === "late") {
      log.warn(
        `the server did not confirm every release within ${RELEASE_WAIT_MS / 1000} s; ` +
          "the rest expire at the end of their leases",
      );
    }
  } catch (e) {
    log.warn(`releasing the previous run's sessions: ${(e as Error).message}`);
  }
  const removed = await removeDriverDataPaths(opts);
  log.info(`released ${released} session(s); removed ${removed.join("; ")}`);
}
