/**
 * The small hardenings of issue 17, without root: the rate limiter's map of
 * sources stays bounded and fair under a flood of forged sources; the
 * sysctl journal trusts only network sysctl paths and never writes through
 * a symbolic link; the operator socket's directory is made 0700 (0711 for
 * a group's socket).
 */

import assert from "node:assert/strict";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import { isNetSysctlPath, recoverSysctls, writeJournal } from "../../linux/sysctl.ts";
import { ensureSocketDir } from "../../src/operator/socket.ts";

Deno.test("hardening: a flood of 70,000 forged sources neither grows the limiter past its bound nor locks a real host out", () => {
  const l = new RateLimiter(10, 20, 1000);
  const host = 0x0a00000b;
  assert.ok(l.allow(host, 0));
  for (let i = 0; i < 70_000; i++) l.allow(0x0a010000 + i, 1);
  assert.equal(l.size, 1000, "bounded");
  assert.ok(l.evicted >= 69_000);
  // The host was forgotten (it is the least recently heard): it starts again with a full bucket.
  for (let i = 0; i < 20; i++) assert.ok(l.allow(host, 2), `request ${i} of the burst`);
  assert.equal(l.allow(host, 2), false, "and its own rate still holds");
  // A host heard recently is kept while older sources go.
  const busy = 0x0a00000c;
  for (let i = 0; i < 5; i++) {
    l.allow(busy, 3 + i);
    for (let k = 0; k < 900; k++) l.allow(0x0b000000 + i * 900 + k, 3 + i);
  }
  let tokens = 0;
  while (l.allow(busy, 8)) tokens++;
  assert.ok(tokens < 20, `its bucket was kept, not refilled by an eviction (${tokens} left)`);
});

Deno.test("hardening: spent() tells whether allow() would refuse, and takes nothing", () => {
  const l = new RateLimiter(10, 2);
  const h = 0x0a00000b;
  assert.equal(l.spent(h, 0), false, "an unknown source has a full bucket");
  assert.ok(l.allow(h, 0));
  assert.equal(l.spent(h, 0), false);
  assert.ok(l.allow(h, 0));
  assert.equal(l.spent(h, 0), true);
  assert.equal(l.spent(h, 0), true, "asking again changes nothing");
  assert.equal(l.allow(h, 0), false);
  assert.equal(l.spent(h, 100), false, "a token refilled after 100 ms at 10/s");
  assert.equal(l.spent(h, 100), false, "and spent() did not take it");
  assert.ok(l.allow(h, 100));
  assert.equal(l.spent(h, 100), true);
});

Deno.test("hardening: the sysctl journal trusts only /proc/sys/net paths, normalised", async () => {
  for (
    const p of [
      "/proc/sys/net/ipv4/ip_forward",
      "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
    ]
  ) assert.ok(isNetSysctlPath(p), p);
  for (
    const p of [
      "/proc/sys/net/../kernel/core_pattern",
      "/proc/sys/net/ipv4/./ip_forward",
      "/proc/sys/net//ipv4",
      "/proc/sys/net/",
      "/proc/sys/kernel/core_pattern",
      "/proc/sys/net/ipv4/conf/x y/rp_filter",
      "/etc/passwd",
    ]
  ) assert.ok(!isNetSysctlPath(p), p);
  // A journal naming a path outside the network sysctls: nothing is written, the journal goes.
  const dir = await Deno.makeTempDir();
  try {
    const target = `${dir}/victim`;
    await Deno.writeTextFile(target, "keep\n");
    const journal = `${dir}/j.json`;
    await Deno.writeTextFile(
      journal,
      JSON.stringify([[`/proc/sys/net/../../..${target}`, "owned"], [target, "owned"]]),
    );
    assert.equal(await recoverSysctls(journal), 0);
    assert.equal(await Deno.readTextFile(target), "keep\n");
    await assert.rejects(Deno.stat(journal), Deno.errors.NotFound);
    // A journal that is a symbolic link is not followed.
    await Deno.writeTextFile(`${dir}/real.json`, JSON.stringify([]));
    await Deno.symlink(`${dir}/real.json`, journal);
    assert.equal(await recoverSysctls(journal), 0);
    await assert.rejects(Deno.lstat(journal), Deno.errors.NotFound);
    assert.ok((await Deno.stat(`${dir}/real.json`)).isFile, "its target is left alone");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hardening: the journal's temporary file is created anew, never written through a link planted in its place", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const victim = `${dir}/victim`;
    await Deno.writeTextFile(victim, "keep\n");
    const journal = `${dir}/j.json`;
    await Deno.symlink(victim, `${journal}.tmp`);
    await writeJournal(journal, [["/proc/sys/net/ipv4/ip_forward", "0"]]);
    assert.equal(await Deno.readTextFile(victim), "keep\n", "the link's target is untouched");
    assert.deepEqual(JSON.parse(await Deno.readTextFile(journal)), [[
      "/proc/sys/net/ipv4/ip_forward",
      "0",
    ]]);
    assert.equal((await Deno.lstat(journal)).isFile, true);
    assert.equal((await Deno.stat(journal)).mode! & 0o777, 0o600);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hardening: the operator socket's directory is made 0700, or 0711 for a group's socket; an existing one is left alone", async () => {
  const dir = await Deno.makeTempDir();
  const old = Deno.umask(0o022);
  try {
    assert.equal(await ensureSocketDir(`${dir}/a/server.sock`), 0o700);
    assert.equal((await Deno.stat(`${dir}/a`)).mode! & 0o777, 0o700);
    assert.equal(await ensureSocketDir(`${dir}/b/driver.sock`, true), 0o711);
    assert.equal((await Deno.stat(`${dir}/b`)).mode! & 0o777, 0o711);
    await Deno.chmod(`${dir}/a`, 0o755);
    assert.equal((await ensureSocketDir(`${dir}/a/server.sock`)) & 0o777, 0o755);
  } finally {
    Deno.umask(old);
    await Deno.remove(dir, { recursive: true });
  }
});
