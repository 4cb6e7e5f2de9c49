/**
 * The linux/ modules that use FFI load without `--allow-ffi`: they open the
 * libraries lazily, on first use. No root needed.
 *
 * @module
 */

import assert from "node:assert/strict";
import { run } from "../../testing/netns.ts";

Deno.test("linux: the ffi modules import without --allow-ffi", async () => {
  for (
    const m of [
      "libc.ts",
      "nfqueue.ts",
      "rawsock.ts",
      "udp.ts",
      "waiter.ts",
      "ct_events.ts",
      "sysctl.ts",
      "iptables.ts",
      "sockdiag.ts",
      "procnet.ts",
      "libbpf.ts",
      "tcfilter.ts",
    ]
  ) {
    const path = new URL(`../../linux/${m}`, import.meta.url).pathname;
    const r = await run([Deno.execPath(), "run", "--no-prompt", path]);
    assert.equal(r.code, 0, `${m}: ${r.stderr}`);
  }
});
