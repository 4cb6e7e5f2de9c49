/**
 * dpm — a cooperative NAT for Linux (dynamic port management).
 *
 * One executable holds both roles: `dpm server` on the gateway owns a pool of
 * public addresses and translates packets with an in-memory lookup table;
 * `dpm driver` on each host reserves public address/port pairs for new
 * outbound sessions and tells applications their real public pair.
 *
 * Where to look (README.md, "Where things are", has the whole map):
 * - a packet is parsed in `src/wire/packet.ts` and rewritten in `src/wire/rewrite.ts`;
 * - a session is allocated in `src/table/table.ts` (`SessionTable.reserve`; policy: `allocate.ts`);
 * - the data paths are `src/datapath/` (the seam, the kernel path, the queue path);
 * - the kernel is touched only under `linux/` (netlink, nftables, conntrack, the queue, iptables, sysctls);
 * - the control protocol is `src/control/proto.ts` (docs/protocol.md); PCP and NAT-PMP `src/pcp/`;
 * - the roles are `src/server/` and `src/driver/`; the CLI is `src/cli/main.ts`.
 *
 * For applications: {@linkcode queryPublic} and {@linkcode reserve} ask the
 * local driver for a session's public address and port; {@linkcode map}
 * asks for an inbound mapping every outside peer reaches.
 *
 * Importing this module has no side effects; run it as a program to get the CLI.
 *
 * @module
 */

export { main } from "./src/cli/main.ts";
export { VERSION } from "./src/version.ts";
export * from "./src/wire/addr.ts";
export { Result, resultName } from "./src/control/result.ts";
export {
  DriverUnavailable,
  map,
  type MapOptions,
  type Mapping,
  type PublicPair,
  type QueryOptions,
  queryPublic,
  reserve,
  SessionRefused,
} from "./src/api.ts";

if (import.meta.main) {
  const { main } = await import("./src/cli/main.ts");
  Deno.exit(await main(Deno.args));
}
