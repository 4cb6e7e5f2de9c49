/**
 * The gateway's kernel data path: dpm decides, the kernel translates, from
 * dpm's nftables table and conntrack. Its whole working is the table's
 * (`nft/server.ts`, which the bpf path builds on too); this module is what
 * `open.ts` names.
 *
 * @module
 */

import type { GatewayOptions, ServerDataPath } from "../datapath.ts";
import { NO_OTHER_PATHS, type OtherPaths } from "../netfilter.ts";
import { NftServerPath } from "../nft/server.ts";

/** The gateway's kernel data path: open and remove. */
export const KernelServerDataPath = {
  /**
   * Built on dpm's nftables table, which the bpf path shares: a start of
   * either after the other takes the table over instead of removing it.
   */
  family: "nft" as const,
  /** Opens the netlink sockets. Nothing is changed yet (see `begin`). */
  open(cfg: GatewayOptions, others: OtherPaths = NO_OTHER_PATHS): Promise<ServerDataPath> {
    return NftServerPath.open(cfg, others, { kind: "kernel" });
  },
  /**
   * A worker thread's path (`dpm server --workers`): the netlink sockets
   * only, never begun; it programs its sessions in its own transactions.
   */
  openWorker(cfg: GatewayOptions): Promise<ServerDataPath> {
    return NftServerPath.open(cfg, NO_OTHER_PATHS, { kind: "kernel" });
  },
  /** Removes the table and chains a run of this path left (`dpm server --cleanup`). */
  remove(cfg: GatewayOptions): Promise<string> {
    return NftServerPath.remove(cfg);
  },
};
