/**
 * `dpm server --cleanup`: removes everything a server left in the kernel on
 * either data path (the kernel path leaves its table translating on exit, a
 * SIGKILLed queue path leaves its chains and its table of steered endpoints,
 * `dpm-server-q`): dpm's nftables tables, its
 * iptables chains, the sysctls it changed (from the journal) and, with
 * `--add-pool-addresses`, the pool addresses. Idempotent.
 *
 * @module
 */

import type { Cidr } from "../wire/addr.ts";
import type { ServerConfig } from "../config.ts";
import { logger } from "../runtime/log.ts";
import { removeChains } from "../../linux/iptables.ts";
import { loadRuleset } from "../../linux/nft.ts";
import { recoverSysctls } from "../../linux/sysctl.ts";
import { removeAddresses } from "../../linux/iface.ts";
import { deleteSteerTable, QUEUE_TABLE, serverChains } from "../datapath/queue/server.ts";
import { deleteTable, SERVER_TABLE, serverKernelChains } from "../datapath/kernel/rules.ts";

const log = logger("server");

/** Removes what any earlier server run left; logs what it did. */
export async function cleanupServer(cfg: ServerConfig, lan: Cidr): Promise<void> {
  await loadRuleset(deleteTable(SERVER_TABLE));
  await loadRuleset(deleteSteerTable());
  await removeChains(serverKernelChains(cfg));
  await removeChains(serverChains(cfg, lan));
  const n = await recoverSysctls(`${cfg.socket}.sysctls.json`);
  if (cfg.addPoolAddresses) await removeAddresses(cfg.wanIf!, cfg.pool);
  log.info(
    `removed tables ip ${SERVER_TABLE} and ip ${QUEUE_TABLE} and dpm's chains; restored ${n} sysctl(s)` +
      (cfg.addPoolAddresses ? `; removed the pool from ${cfg.wanIf}` : ""),
  );
}
