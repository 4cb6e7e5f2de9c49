/**
 * `dpm driver --socket-group`, as root: the query socket is mode 0660 and
 * owned by the group; an unprivileged user (nobody) in that group gets an
 * answer from `dpm query` and `dpm map`; the same user outside the group
 * gets a clear refusal (exit 3, "Permission denied" and what to do). A group
 * that does not exist stops the driver at start (exit 2), and a socket
 * directory the group cannot enter is refused with its mode named.
 *
 * Per user: the driver learns the asker's uid from the kernel and a port's
 * owner from the socket tables, so nobody (in the group) is answered about
 * the ports a socket of its own holds (python3 processes run as nobody and
 * as root hold them while the commands run) and refused `not-yours` about
 * root's; `dpm status --driver` as nobody lists only nobody's sessions and
 * mappings, while root sees everything.
 *
 * The unprivileged commands run dpm's bundle (`deno bundle` of mod.ts, as
 * the bundle package ships it) so that nobody needs no access to the source
 * tree or the root user's Deno cache.
 */

import assert from "node:assert/strict";
import { DPM_ENV, dpmCommand, lastJson, MOD, withDpm } from "../../testing/launch.ts";
import type { Spawned, Topology } from "../../testing/topology.ts";
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

/** Binds each `proto/port` given (TCP: listening) on 0.0.0.0, says "ready", then holds them. */
const HOLD_PY = `
import socket, sys, time
held = []
for spec in sys.argv[1:]:
    proto, port = spec.split("/")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen()
    held.append(s)
print("ready", flush=True)
time.sleep(600)
`;

/** A python3 in `ns` holding `ports` (`udp/40100`...), as nobody or as root, until stopped. */
async function holdPorts(
  t: Topology,
  ns: string,
  asNobody: boolean,
  ports: string[],
): Promise<Spawned> {
  const who = asNobody
    ? ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"]
    : [];
  const p = t.spawn(ns, [...who, "/usr/bin/python3", "-c", HOLD_PY, ...ports]);
  await p.waitForOutput(/ready/, 10_000);
  return p;
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
          assert.equal(
            (await Deno.stat(sockDir)).mode! & 0o777,
            0o711,
            "the directory dpm made: reachable by name, not listable",
          );
          // The driver answers nobody about nobody's ports only: it holds these two.
          const held = await holdPorts(t, h1.ns, true, ["udp/40100", "udp/6000"]);

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
          await held.stop();
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

Deno.test(needsRoot({
  name:
    "socket-group root: per user: nobody is answered about the ports its sockets hold, refused not-yours about root's; status lists only its own; root sees all",
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
          const mine = await holdPorts(t, h1.ns, true, ["udp/40100", "udp/6000"]);
          const roots = await holdPorts(t, h1.ns, false, ["udp/40200", "tcp/6001"]);
          const nobody = (args: string[]) =>
            asNobody(t, h1.ns, dir, [GID], [...args, "--socket", sock]);
          const root = (args: string[]) =>
            lastJson(t, h1.ns, [...dpmCommand(), ...args, "--json", "--socket", sock]);
          const query = (port: number, proto = "udp") => [
            "query",
            proto,
            `${h1.addrText}:${port}`,
            `${p1.addrText}:${proto === "icmp" ? 0 : 7000}`,
            "--reserve",
          ];

          // Its own port: reserved and answered.
          const ok = await nobody([...query(40100), "--json"]);
          assert.equal(ok.code, 0, ok.stdout + ok.stderr);
          assert.equal(JSON.parse(ok.stdout).result, "ok");
          assert.match(JSON.parse(ok.stdout).public, /^203\.0\.113\.\d+:\d+$/);

          // Root's port: refused, nothing reserved, and said why (JSON and text).
          const no = await nobody([...query(40200), "--json"]);
          assert.equal(no.code, 1, no.stdout + no.stderr);
          const refusal = JSON.parse(no.stdout) as { result: string; error: string };
          assert.equal(refusal.result, "not-yours");
          assert.match(refusal.error, /udp port 40200 is held by another user's socket/);
          assert.match(refusal.error, /uid 65534/);
          const text = await nobody(query(40200));
          assert.equal(text.code, 1);
          assert.match(text.stderr, /refused, not yours: udp port 40200 is held by another/);
          // A port nobody's sockets do not hold, and ICMP: refused too.
          const free = await nobody([...query(40300), "--json"]);
          assert.equal(free.code, 1);
          assert.match(JSON.parse(free.stdout).error, /No socket of yours \(uid 65534\)/);
          const icmp = await nobody([...query(4242, "icmp"), "--json"]);
          assert.equal(icmp.code, 1);
          assert.equal(JSON.parse(icmp.stdout).result, "not-yours");

          // dpm map: its own port works, root's is refused with the reason.
          const m = await nobody(["map", "udp", "6000", "--json"]);
          assert.equal(m.code, 0, m.stdout + m.stderr);
          assert.equal(JSON.parse(m.stdout).result, "ok");
          const mr = await nobody(["map", "tcp", "6001"]);
          assert.equal(mr.code, 1, mr.stdout + mr.stderr);
          assert.match(mr.stderr, /map tcp 6001 refused, not yours: tcp port 6001 is held by/);

          // Root: everything, its own port included.
          assert.equal((await root(query(40200))).result, "ok");
          assert.equal((await root(["map", "tcp", "6001"])).result, "ok");

          // Status: nobody sees its session and mapping only; root sees all.
          type St = { sessions: { local: string }[]; mappings: { local: string }[] };
          const ns = await nobody(["status", "--driver", "--json"]);
          assert.equal(ns.code, 0, ns.stdout + ns.stderr);
          const st = JSON.parse(ns.stdout) as St;
          assert.deepEqual(st.sessions.map((s) => s.local), [`${h1.addrText}:40100`]);
          assert.deepEqual(st.mappings.map((x) => x.local), [`${h1.addrText}:6000`]);
          const rs = await t.exec(h1.ns, [
            ...dpmCommand(),
            "status",
            "--driver",
            "--json",
            "--socket",
            sock,
          ]);
          assert.equal(rs.code, 0, rs.stderr);
          const all = JSON.parse(rs.stdout) as St;
          assert.deepEqual(all.sessions.map((s) => s.local).sort(), [
            `${h1.addrText}:40100`,
            `${h1.addrText}:40200`,
          ]);
          assert.deepEqual(all.mappings.map((x) => x.local).sort(), [
            `${h1.addrText}:6000`,
            `${h1.addrText}:6001`,
          ]);
          const nt = await nobody(["status", "--driver"]);
          assert.equal(nt.code, 0, nt.stderr);
          assert.match(nt.stdout, /:40100/);
          assert.doesNotMatch(nt.stdout, /:40200|:6001/);

          // Once nobody's socket is gone, its session is no longer its to see.
          await mine.stop();
          const gone = await nobody([...query(40100), "--json"]);
          assert.equal(gone.code, 1);
          assert.equal(JSON.parse(gone.stdout).result, "not-yours");
          await roots.stop();
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(sockDir, { recursive: true }).catch(() => {});
    }
  },
}));
