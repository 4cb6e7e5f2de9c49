/**
 * `dpm driver --cleanup`: gives back to the server every session a kernel
 * path run left translating (read from the map), then removes dpm's table,
 * its iptables chains (either data path's) and restores the sysctls it
 * changed. Idempotent.
 *
 * @module
 */

import type { Cidr } from "../wire/addr.ts";
import type { DriverConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { removeChains } from "../../linux/iptables.ts";
import { loadRuleset } from "../../linux/nft.ts";
import { recoverSysctls } from "../../linux/sysctl.ts";
import { driverChains } from "../datapath/queue/driver.ts";
import { deleteTable, DRIVER_TABLE, driverKernelChains } from "../datapath/kernel/rules.ts";
import type { DriverCore } from "./core.ts";

const log = logger("driver");

/** How long --cleanup waits for the server to confirm the releases. */
const RELEASE_WAIT_MS = 3000;

/** Releases the previous run's sessions and removes its kernel state. */
export async function cleanupDriver(
  cfg: DriverConfig,
  lan: Cidr,
  dev: string,
  local: number,
  core: DriverCore,
): Promise<void> {
  let released = 0;
  try {
    const { KernelDriverDataPath } = await import("../datapath/kernel/driver.ts");
    const dp = await KernelDriverDataPath.open(cfg, lan, dev, local);
    core.attach(dp, null);
    released = core.counters.adopted;
    // Give them back, but do not wait long for a server that may be gone:
    // their leases run out there by themselves.
    const deadline = new Promise<"late">((r) => setTimeout(() => r("late"), RELEASE_WAIT_MS));
    if (await Promise.race([core.releaseAll(), deadline]) === "late") {
      log.warn(
        `the server did not confirm every release within ${RELEASE_WAIT_MS / 1000} s; ` +
          "the rest expire at the end of their leases",
      );
    }
    core.detach();
    await dp.stop(false);
  } catch (e) {
    log.warn(`releasing the previous run's sessions: ${(e as Error).message}`);
  }
  await loadRuleset(deleteTable(DRIVER_TABLE));
  await removeChains(driverKernelChains(cfg, lan, dev));
  await removeChains(driverChains(cfg, lan, dev));
  const n = await recoverSysctls(`${cfg.socket}.sysctls.json`);
  log.info(
    `released ${released} session(s); removed table ip ${DRIVER_TABLE} and dpm's chains; restored ${n} sysctl(s)`,
  );
}
