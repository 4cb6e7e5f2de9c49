/**
 * `dpm driver --socket-group`, as root: the query socket is mode 0660 and
 * owned by the group; an unprivileged user (nobody) in that group gets an
 * answer from `dpm query` and `dpm map`; the same user outside the group
 * gets a clear refusal (exit 3, "Permission denied" and what to do). A group
 * that does not exist stops the driver at start (exit 2), and a socket
 * directory the group cannot enter is refused with its mode named.
 *
 * The unprivileged commands run dpm's bundle (`deno bundle` of mod.ts, as
 * the bundle package ships it) so that nobody needs no access to the source
 * tree or the root user's Deno cache.
 */

import assert from "node:assert/strict";
import { DPM_ENV, dpmCommand, MOD, withDpm } from "../../testing/launch.ts";
import type { Topology } from "../../testing/topology.ts";
import { needsRoot } from "../../testing/root.ts";
import { serveLocal } from "../../src/operator/socket.ts";

const SAN = { sanitizeOps: false, sanitizeResources: false };
/** Debian's "users" group: nobody is not a member. */
const GROUP = "users";
const GID = 100;
const NOBODY = 65534;

/** A directory nobody can read, holding dpm's bundle; removed by the caller. */
async function bundleForNobody(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dpm-nobody-" });
  await Deno.chmod(dir, 0o755);
  const b = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "deno", "--output", `${dir}/dpm.js`, MOD],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(b.code, 0, new TextDecoder().decode(b.stderr));
  await Deno.mkdir(`${dir}/home`, { mode: 0o777 });
  await Deno.chmod(`${dir}/home`, 0o777);
  return dir;
}

/** `dpm <args>` in `ns` as nobody, with `groups` as its supplementary groups. */
function asNobody(t: Topology, ns: string, dir: string, groups: number[], args: string[]) {
  return t.exec(ns, [
    "setpriv",
    `--reuid=${NOBODY}`,
    `--regid=${NOBODY}`,
    ...(groups.length ? [`--groups=${groups.join(",")}`] : ["--clear-groups"]),
    "env",
    `HOME=${dir}/home`,
    `DENO_DIR=${dir}/home/deno`,
    "DENO_NO_UPDATE_CHECK=1",
    Deno.execPath(),
    "run",
    "--allow-all",
    "--no-config",
    `${dir}/dpm.js`,
    ...args,
  ], { timeoutMs: 30_000 });
}

Deno.test(needsRoot({
  name:
    "socket-group root: nobody in the socket's group gets answers from dpm query and dpm map; outside it a clear refusal",
  ...SAN,
  fn: async () => {
    const dir = await bundleForNobody();
    const sockDir = `/run/dpm-sgtest-${crypto.randomUUID().slice(0, 8)}`;
    const sock = `${sockDir}/driver.sock`;
    try {
      await withDpm(
        { driverHosts: ["h1"], driverArgs: ["--socket-group", GROUP, "--socket", sock] },
        async (t) => {
          const h1 = t.hosts[0]!;
          const p1 = t.peers[0]!;
          const st = await Deno.stat(sock);
          assert.equal(st.mode! & 0o777, 0o660, "the socket is 0660");
          assert.equal(st.gid, GID, "and belongs to the group");
          assert.equal((await Deno.stat(sockDir)).mode! & 0o777, 0o755);

          const q = await asNobody(t, h1.ns, dir, [GID], [
            "query",
            "udp",
            `${h1.addrText}:40100`,
            `${p1.addrText}:7000`,
            "--reserve",
            "--json",
            "--socket",
            sock,
          ]);
          assert.equal(q.code, 0, q.stdout + q.stderr);
          const res = JSON.parse(q.stdout) as { result: string; public: string };
          assert.equal(res.result, "ok");
          assert.match(res.public, /^203\.0\.113\.\d+:\d+$/);

          const m = await asNobody(t, h1.ns, dir, [GID], [
            "map",
            "udp",
            "6000",
            "--json",
            "--socket",
            sock,
          ]);
          assert.equal(m.code, 0, m.stdout + m.stderr);
          assert.equal(JSON.parse(m.stdout).result, "ok");

          // Outside the group: refused by the kernel, and told why and what to do.
          const no = await asNobody(t, h1.ns, dir, [], [
            "query",
            "udp",
            `${h1.addrText}:40100`,
            `${p1.addrText}:7000`,
            "--json",
            "--socket",
            sock,
          ]);
          assert.equal(no.code, 3, no.stdout + no.stderr);
          const err = JSON.parse(no.stdout) as { result: string; error: string };
          assert.equal(err.result, "no-driver");
          assert.match(err.error, /Permission denied/);
          assert.match(err.error, /member of the socket's group \(gid 100/);
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(sockDir, { recursive: true }).catch(() => {});
    }
  },
}));

Deno.test(needsRoot({
  name:
    "socket-group root: a group that does not exist stops the driver at start (exit 2); a directory the group cannot enter is refused",
  ...SAN,
  fn: async () => {
    const r = await new Deno.Command(dpmCommand()[0]!, {
      args: [
        ...dpmCommand().slice(1),
        "driver",
        "--server",
        "10.0.0.1",
        "--socket-group",
        "no-such-group-dpm",
        "--no-intercept",
        "--socket",
        "/run/dpm-sgtest-none/driver.sock",
      ],
      env: DPM_ENV,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 2, stderr);
    assert.match(stderr, /No such group "no-such-group-dpm"/);
    await assert.rejects(
      Deno.stat("/run/dpm-sgtest-none"),
      Deno.errors.NotFound,
      "nothing created",
    );

    const dir = await Deno.makeTempDir({ prefix: "dpm-sg-" }); // 0700
    try {
      await assert.rejects(
        () => serveLocal(`${dir}/x.sock`, () => ({}), { group: GROUP }),
        /cannot be entered by group "users": give it mode 0711/,
      );
      await assert.rejects(Deno.stat(`${dir}/x.sock`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
}));
