/**
 * The ctnetlink client against the real kernel, in two namespaces of its own:
 *
 * ```
 *   netns dpmt-ct-<r>-a (client, conntrack on)     netns dpmt-ct-<r>-b (servers)
 *   veth a0 10.9.0.1/24  <------------------------>  veth b0 10.9.0.2/24
 * ```
 *
 * Conntrack only tracks packets in a namespace once some rule needs it, so
 * namespace A gets an nftables chain matching `ct state`. Real TCP and UDP
 * flows (python3) and `conntrack -I` entries fill A's table; the client runs
 * as a child inside A (testing/ct_child.ts) and its results are checked
 * against `conntrack -L`. The namespaces are deleted in `finally`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type CtEntry, type CtTuple, TcpState } from "../../linux/conntrack.ts";
import {
  createNsPair,
  deleteNsPair,
  inNs,
  type NsPair,
  Proc,
  run,
  sh,
} from "../../testing/netns.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";

const CHILD = new URL("../../testing/ct_child.ts", import.meta.url).pathname;

const tag = () => `dpmt-ct-${crypto.randomUUID().slice(0, 6)}-`;

const ip = (s: string) => s.split(".").reduce((a, b) => a * 256 + Number(b), 0);

/** Turns conntrack on in `ns` (with accounting) and lengthens the UDP timeouts. */
async function enableConntrack(ns: string): Promise<void> {
  await sh(inNs(ns, ["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]));
  await sh(inNs(ns, ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=300"]));
  const r = await run(
    inNs(ns, ["nft", "-f", "-"]),
    `table ip dpmtest {
  chain out { type filter hook output priority 0; ct state new counter; }
  chain in { type filter hook input priority 0; ct state new counter; }
}
`,
  );
  assert.equal(r.code, 0, `nft: ${r.stderr}`);
}

/** Runs the child in `ns` and parses its JSON line. */
async function child<T>(ns: string, ...args: string[]): Promise<T> {
  const r = await run(inNs(ns, [Deno.execPath(), "run", "-A", CHILD, ...args]));
  assert.equal(r.code, 0, `ct_child ${args[0]} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as T;
}

/** python3 in B: a TCP server that answers once and holds the connection; a UDP echo. */
const SERVERS = `
import socket, threading, time
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("10.9.0.2", 8080)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.9.0.2", 5353))
def echo():
    while True:
        d, a = u.recvfrom(2048); u.sendto(d, a)
threading.Thread(target=echo, daemon=True).start()
print("ready", flush=True)
c, _ = t.accept(); c.recv(100); c.sendall(b"world!")
time.sleep(120)
`;

/** python3 in A: one TCP exchange (held open) from port 40001, three UDP echoes from 40002. */
const CLIENT = `
import socket, time
c = socket.create_connection(("10.9.0.2", 8080), source_address=("10.9.0.1", 40001))
c.sendall(b"hello"); c.recv(100)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.9.0.1", 40002)); u.settimeout(5)
for i in range(3):
    u.sendto(b"ping%d" % i, ("10.9.0.2", 5353)); u.recv(100)
print("done", flush=True)
time.sleep(120)
`;

const same = (a: CtTuple, b: CtTuple) =>
  a.proto === b.proto && a.src === b.src && a.dst === b.dst && a.sport === b.sport &&
  a.dport === b.dport;

Deno.test(needsRoot("conntrack root: dump, get and delete real entries", async () => {
  let pair: NsPair | null = null;
  const procs: Proc[] = [];
  try {
    pair = await createNsPair(tag());
    await enableConntrack(pair.a);
    const servers = new Proc(inNs(pair.b, ["python3", "-c", SERVERS]));
    procs.push(servers);
    await waitFor(() => servers.out.includes("ready"), {
      what: `the servers (${servers.err})`,
      timeoutMs: 10000,
    });
    const client = new Proc(inNs(pair.a, ["python3", "-c", CLIENT]));
    procs.push(client);
    await waitFor(() => client.out.includes("done"), {
      what: `the client (${client.err})`,
      timeoutMs: 10000,
    });
    for (const sport of ["1111", "1112"]) {
      await sh(inNs(pair.a, [
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "10.77.0.1",
        "--sport",
        sport,
        "-d",
        "10.77.0.2",
        "--dport",
        "2222",
        "--timeout",
        "300",
      ]));
    }

    const A = ip("10.9.0.1");
    const B = ip("10.9.0.2");
    const tcp: CtTuple = { proto: 6, src: A, dst: B, sport: 40001, dport: 8080 };
    const udp: CtTuple = { proto: 17, src: A, dst: B, sport: 40002, dport: 5353 };
    const ins1: CtTuple = {
      proto: 17,
      src: ip("10.77.0.1"),
      dst: ip("10.77.0.2"),
      sport: 1111,
      dport: 2222,
    };
    const ins2: CtTuple = { ...ins1, sport: 1112 };
    const missing: CtTuple = { ...ins1, sport: 9 };

    const all = await child<CtEntry[]>(pair.a, "dump");
    const find = (t: CtTuple) => all.find((e) => same(e.orig, t));
    const t = find(tcp);
    assert.ok(t, `no TCP entry in ${JSON.stringify(all)}`);
    assert.equal(t.tcpState, TcpState.ESTABLISHED);
    assert.ok(t.packetsOrig > 0 && t.bytesOrig > 0, `TCP orig counters ${JSON.stringify(t)}`);
    assert.ok(t.packetsReply > 0 && t.bytesReply > 0, `TCP reply counters ${JSON.stringify(t)}`);
    assert.ok(same(t.reply, { proto: 6, src: B, dst: A, sport: 8080, dport: 40001 }));
    assert.ok(t.timeout > 0);
    const u = find(udp);
    assert.ok(u, "no UDP entry");
    assert.equal(u.tcpState, undefined);
    assert.equal(u.packetsOrig, 3);
    assert.equal(u.packetsReply, 3);
    assert.equal(u.bytesOrig, 3 * (20 + 8 + 5));
    assert.ok(find(ins1) && find(ins2), "the conntrack -I entries are missing");

    // A callback that throws leaves the socket usable for the next dump.
    const th = await child<{ thrown: string; count: number }>(pair.a, "throw");
    assert.equal(th.thrown, "stop");
    assert.equal(th.count, all.length);

    const got = await child<CtEntry | null>(pair.a, "get", JSON.stringify(tcp));
    assert.ok(got);
    assert.equal(got.id, t.id);
    assert.equal(got.tcpState, TcpState.ESTABLISHED);
    assert.equal(await child<CtEntry | null>(pair.a, "get", JSON.stringify(missing)), null);

    const del = await child<{ deleted: number }>(
      pair.a,
      "delete",
      JSON.stringify([udp, ins1, missing]),
    );
    assert.equal(del.deleted, 2);

    const list = await sh(inNs(pair.a, ["conntrack", "-L"]));
    assert.ok(!/sport=40002 dport=5353/.test(list), `the UDP flow is still there:\n${list}`);
    assert.ok(!/sport=1111 /.test(list), `the inserted entry is still there:\n${list}`);
    assert.ok(
      /ESTABLISHED src=10\.9\.0\.1 dst=10\.9\.0\.2 sport=40001 dport=8080/.test(list),
      list,
    );
    assert.ok(/sport=1112 dport=2222/.test(list), list);
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    for (const p of procs) await p.finish(5000);
    if (pair) await deleteNsPair(pair);
  }
}));

/** python3 in A: one UDP datagram to each port lo..hi of B (one conntrack each). */
const SPRAY = `
import socket, sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in range(lo, hi + 1):
    s.sendto(b"x", ("10.9.0.2", p))
`;

Deno.test(needsRoot("conntrack root: dump and delete rate of 50k entries", async () => {
  const lo = 10000;
  const hi = 59999;
  let pair: NsPair | null = null;
  try {
    pair = await createNsPair(tag());
    await enableConntrack(pair.a);
    // B answers closed ports with ICMP errors: turn them off, it is not what is measured.
    await sh(inNs(pair.b, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]));
    await sh(inNs(pair.b, ["nft", "add", "table", "ip", "q"]));
    await sh(inNs(pair.b, [
      "nft",
      "add chain ip q in { type filter hook input priority 0; udp dport 10000-59999 drop; }",
    ]));
    const r = await run(inNs(pair.a, ["python3", "-c", SPRAY, String(lo), String(hi)]));
    assert.equal(r.code, 0, r.stderr);
    const count = async () => Number((await run(inNs(pair!.a, ["conntrack", "-C"]))).stdout.trim());
    await waitFor(async () => (await count()) >= hi - lo + 1, {
      what: "50k conntrack entries",
      timeoutMs: 20000,
    });
    const b = await child<{
      before: number;
      dumpMs: number;
      dump2Ms: number;
      matched: number;
      deleted: number;
      deleteMs: number;
      after: number;
    }>(pair.a, "bench", String(lo), String(hi));
    console.log(
      `dump ${b.before} entries: ${b.dumpMs.toFixed(0)} ms (${
        (b.before / b.dumpMs * 1000).toFixed(0)
      }/s), again ${b.dump2Ms.toFixed(0)} ms (${(b.before / b.dump2Ms * 1000).toFixed(0)}/s); ` +
        `delete ${b.deleted}: ${b.deleteMs.toFixed(0)} ms (${
          (b.deleted / b.deleteMs * 1000).toFixed(0)
        }/s); left ${b.after}`,
    );
    assert.equal(b.matched, hi - lo + 1);
    assert.equal(b.deleted, b.matched);
    assert.ok(b.after < b.before - b.deleted + 10, `left ${b.after}`);
    assert.ok((await count()) < 10);
  } finally {
    if (pair) await deleteNsPair(pair);
  }
}));
