/**
 * examples/sip_register.ts end to end, as root, on both data paths: an
 * application that puts its public pair (from the driver, `reserve` in
 * src/api.ts) into its payload is accepted by a registrar that checks the
 * Contact against the datagram's source; the same application behind
 * ordinary NAT, naming its private address, is refused.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { denoScript, DPM_ENV, withDpm } from "../../testing/launch.ts";
import { DATAPATHS, needsRoot } from "../../testing/root.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
const EXAMPLE = fileURLToPath(new URL("../../examples/sip_register.ts", import.meta.url));
const REGISTRAR = fileURLToPath(new URL("../../examples/sip_registrar.py", import.meta.url));

for (const datapath of DATAPATHS) {
  Deno.test(needsRoot({
    name:
      `example root [${datapath}]: a SIP REGISTER carrying the public pair from dpm is accepted; behind ordinary NAT the private Contact is refused`,
    ...SAN,
    fn: () =>
      withDpm({ datapath }, async (t, d) => {
        const p1 = t.peers[0]!;
        const reg = t.spawn(p1.ns, ["python3", "-u", REGISTRAR, "5060"]);
        await reg.waitForOutput(/listening/, 10_000);
        const run = (host: number, ...extra: string[]) =>
          t.exec(t.hosts[host]!.ns, [
            ...denoScript(EXAMPLE),
            "5060",
            `${p1.addrText}:5060`,
            ...extra,
          ], { env: DPM_ENV, timeoutMs: 30_000 });
        // h1 runs a driver: the Contact is the public pair the registrar sees.
        const ok = await run(0, "--socket", d.driverSocket("h1"));
        assert.equal(ok.code, 0, ok.stderr);
        const a = JSON.parse(ok.stdout.trim().split("\n").pop()!);
        assert.match(a.contact, /^203\.0\.113\.1[0-3]:5060$/, "a pool address, port kept");
        assert.equal(a.status, "SIP/2.0 200 OK");
        // h3 runs no driver (ordinary NAT): its private Contact is wrong.
        const bad = await run(2, "--no-dpm");
        assert.equal(bad.code, 0, bad.stderr);
        const b = JSON.parse(bad.stdout.trim().split("\n").pop()!);
        assert.match(b.status, /^SIP\/2\.0 400 Contact 10\.0\.0\.13:5060 is not the source/);
      }),
  }));
}
