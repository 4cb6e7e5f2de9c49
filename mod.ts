/**
 * dpm — a cooperative NAT for Linux (dynamic port management).
 *
 * One executable holds both roles: `dpm server` on the gateway owns a pool of
 * public addresses and translates packets with an in-memory lookup table;
 * `dpm driver` on each host reserves public address/port pairs for new
 * outbound sessions and tells applications their real public pair.
 *
 * Where to look:
 * - a packet is parsed in `src/packet.ts` and rewritten in `src/rewrite.ts`;
 * - a session is allocated in `src/table.ts` (`SessionTable.reserve`);
 * - the kernel is touched only under `ffi/` (netfilter queue, iptables, sysctls, raw socket);
 * - the control protocol is `src/proto.ts` (docs/protocol.md);
 * - the roles are `src/server.ts` and `src/driver.ts`; the CLI is `src/cli.ts`.
 *
 * Importing this module has no side effects; run it as a program to get the CLI.
 *
 * @module
 */

export { main } from "./src/cli/main.ts";
export { VERSION } from "./src/version.ts";
export * from "./src/wire/addr.ts";
export { Result, resultName } from "./src/control/result.ts";

if (import.meta.main) {
  const { main } = await import("./src/cli/main.ts");
  Deno.exit(await main(Deno.args));
}
