/**
 * The netfilter queue reader against the real kernel, in two namespaces:
 *
 * ```
 *   netns A (sender, queue reader)          netns B (receiver)
 *   raw OUTPUT: udp dport P -> NFQUEUE 0
 *   veth a0 10.9.0.1/24  <------------------>  veth b0 10.9.0.2/24
 * ```
 *
 * A process cannot move itself into a namespace, so the reader runs as a
 * child (`ip netns exec A deno run -A tests/_nfq_echo.ts`), prints `ready`
 * once bound and its counters as JSON on SIGTERM. Traffic is sent and
 * received with python3 inside the namespaces.
 *
 * @module
 */

import assert from "node:assert/strict";
import { installChains } from "../../linux/iptables.ts";
import { NfQueue } from "../../linux/nfqueue.ts";
import { createNsPair, deleteNsPair, inNs, type NsPair, Proc, run } from "../../testing/netns.ts";
import { needsRoot } from "../../testing/root.ts";
import { waitFor } from "../../testing/wait.ts";

const ECHO = new URL("../../testing/nfq_echo.ts", import.meta.url).pathname;
const PORT = 40000;

/** python3: sends optional `first` then `n` datagrams `prefix<i>` to dst:port. */
const SENDER = `
import socket, sys
dst, port, first, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if first:
    s.sendto(first.encode(), (dst, port))
for i in range(n):
    s.sendto(("%s%d" % (prefix, i)).encode(), (dst, port))
`;

/**
 * python3: receives until `want` datagrams or `secs` seconds; prints them as
 * JSON. With a 4th argument `progress`, prints `got <count>` after each one.
 */
const RECEIVER = `
import json, socket, sys, time
port, want, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
progress = len(sys.argv) > 4 and sys.argv[4] == "progress"
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: no loss in the receiver
r.bind(("0.0.0.0", port))
print("ready", flush=True)
got = []
end = time.time() + secs
while len(got) < want:
    left = end - time.time()
    if left <= 0:
        break
    r.settimeout(left)
    try:
        got.append(r.recv(2048).decode())
    except socket.timeout:
        break
    if progress:
        print("got %d" % len(got), flush=True)
print(json.dumps(got), flush=True)
`;

interface EchoStats {
  packets: number;
  batches: number;
  verdictSends: number;
  enobufs: number;
  errors: number;
  modified: number;
  held: number;
  released: number;
  lastError: string;
}

/** The processes of a {@linkcode scenario}, for a `send` that waits on them. */
interface Procs {
  /** The queue reader (testing/nfq_echo.ts) in namespace A. */
  reader: Proc;
  /** The receiver in namespace B (prints `got <count>` with `progress`). */
  receiver: Proc;
}

/**
 * Builds the namespaces and the queue rule, starts the reader in `mode`
 * and a receiver expecting `want` datagrams (reporting each one when
 * `progress`), runs `send`, and returns what the receiver got and the
 * reader's counters. Removes everything in `finally`.
 */
async function scenario(
  tag: string,
  mode: string,
  want: number,
  send: (pair: NsPair, procs: Procs) => Promise<void>,
  progress = false,
): Promise<{ got: string[]; stats: EchoStats }> {
  let pair: NsPair | null = null;
  let reader: Proc | null = null;
  let receiver: Proc | null = null;
  try {
    pair = await createNsPair(tag);
    await installChains([{
      table: "raw",
      hook: "OUTPUT",
      chain: "DPM-TEST-OUT",
      rules: [["-p", "udp", "--dport", String(PORT), "-j", "NFQUEUE", "--queue-num", "0"]],
    }], { netns: pair.a });
    reader = new Proc(inNs(pair.a, [Deno.execPath(), "run", "-A", ECHO, "0", mode]));
    receiver = new Proc(
      inNs(pair.b, [
        "python3",
        "-c",
        RECEIVER,
        String(PORT),
        String(want),
        "10",
        ...(progress ? ["progress"] : []),
      ]),
    );
    const r = reader;
    const rc = receiver;
    await waitFor(() => r.out.includes("ready"), {
      what: `the queue reader (${r.err})`,
      timeoutMs: 30000,
    });
    await waitFor(() => rc.out.includes("ready"), {
      what: `the receiver (${rc.err})`,
      timeoutMs: 10000,
    });
    await send(pair, { reader, receiver });
    await receiver.finish(15000);
    const gotLine = receiver.out.trim().split("\n").at(-1) ?? "[]";
    reader.kill("SIGTERM");
    await reader.finish(10000);
    const statsLine = reader.out.trim().split("\n").at(-1) ?? "";
    assert.ok(statsLine.startsWith("{"), `reader printed no counters: ${reader.out} ${reader.err}`);
    return { got: JSON.parse(gotLine) as string[], stats: JSON.parse(statsLine) as EchoStats };
  } finally {
    reader?.kill("SIGKILL");
    receiver?.kill("SIGKILL");
    await reader?.finish(5000);
    await receiver?.finish(5000);
    if (pair) await deleteNsPair(pair);
  }
}

async function sendFrom(pair: NsPair, first: string, n: number, prefix: string): Promise<void> {
  const r = await run(
    inNs(pair.a, ["python3", "-c", SENDER, pair.addrB, String(PORT), first, String(n), prefix]),
  );
  assert.equal(r.code, 0, `sender failed: ${r.stderr}`);
}

const tag = (t: string) => `dpmq${Deno.pid % 100000}${t}`;

Deno.test(needsRoot("nfqueue root: every packet comes through and is accepted", async () => {
  const n = 300;
  const { got, stats } = await scenario(tag("acc"), "accept", n, (p) => sendFrom(p, "", n, "p-"));
  assert.equal(got.length, n);
  assert.deepEqual(new Set(got), new Set(Array.from({ length: n }, (_, i) => `p-${i}`)));
  assert.equal(stats.packets, n);
  assert.equal(stats.errors, 0, stats.lastError);
}));

Deno.test(needsRoot("nfqueue root: a MODIFIED verdict changes the bytes on the wire", async () => {
  const n = 100;
  const { got, stats } = await scenario(tag("mod"), "modify", n, (p) => sendFrom(p, "", n, "a-"));
  // The receiver's kernel verified the UDP checksum of each rewritten packet.
  assert.equal(got.length, n);
  assert.deepEqual(got.slice().sort(), Array.from({ length: n }, (_, i) => `A-${i}`).sort());
  assert.equal(stats.modified, n);
  assert.equal(stats.packets, n);
  assert.equal(stats.errors, 0, stats.lastError);
}));

Deno.test(needsRoot(
  "nfqueue root: a held packet is delivered by a later verdict, later packets flow",
  async () => {
    const n = 50;
    const { got, stats } = await scenario(
      tag("hold"),
      "hold",
      n + 1,
      async (p, { reader, receiver }) => {
        await sendFrom(p, "HOLD-x", n, "p-");
        // The packet stays held until all n sent after it have arrived: they
        // were not blocked behind it. Only then is it released.
        const all = new RegExp(`^got ${n}$`, "m");
        await waitFor(() => /^held$/m.test(reader.out) && all.test(receiver.out), {
          what: `the held packet and the ${n} sent after it (reader: ${reader.err})`,
          timeoutMs: 10000,
        });
        reader.kill("SIGUSR1");
      },
      true,
    );
    assert.equal(got.length, n + 1, JSON.stringify(got));
    // The replacement payload given to verdict() is what arrives.
    assert.ok(got.includes("HELD-x"), JSON.stringify(got));
    assert.ok(!got.includes("HOLD-x"));
    // Released after the later packets had arrived: it comes last.
    assert.equal(got.indexOf("HELD-x"), n, JSON.stringify(got));
    assert.deepEqual(got.slice(0, n), Array.from({ length: n }, (_, i) => `p-${i}`));
    assert.equal(stats.held, 1);
    assert.equal(stats.released, 1);
    assert.equal(stats.errors, 0, stats.lastError);
  },
));

Deno.test(needsRoot("nfqueue root: a burst of thousands is read in batches", async () => {
  const n = 5000;
  const { got, stats } = await scenario(tag("bur"), "accept", n, (p) => sendFrom(p, "", n, "b-"));
  assert.equal(got.length, n);
  assert.equal(stats.packets, n);
  assert.equal(stats.enobufs, 0);
  assert.equal(stats.errors, 0, stats.lastError);
  assert.ok(stats.batches < stats.packets, `batches ${stats.batches}, packets ${stats.packets}`);
  assert.ok(stats.verdictSends < stats.packets, `sends ${stats.verdictSends}`);
}));

Deno.test(
  needsRoot("nfqueue root: a bound queue refuses a second reader; wait and close", async () => {
    // No rule sends packets to this queue: binding it here sends no traffic.
    const queue = 30000 + (Deno.pid % 1000);
    const q = NfQueue.open({ queue, batch: 4 });
    try {
      assert.throws(() => NfQueue.open({ queue }), /bound by another socket/);
      const t0 = performance.now();
      assert.equal(await q.wait(50), false);
      assert.ok(performance.now() - t0 >= 40);
      assert.equal(q.drain(() => 1), 0);
      // A pending wait resolves false promptly when the queue closes.
      const pending = q.wait(10000);
      q.close();
      const t1 = performance.now();
      assert.equal(await pending, false);
      assert.ok(performance.now() - t1 < 2000);
      q.close(); // idempotent
    } finally {
      q.close();
    }
  }),
);

Deno.test(
  needsRoot("rawsock root: a packet built in user space is routed and delivered", async () => {
    const pair = await createNsPair(tag("raw"));
    let receiver: Proc | null = null;
    try {
      receiver = new Proc(inNs(pair.b, ["python3", "-c", RECEIVER, String(PORT), "1", "10"]));
      const rc = receiver;
      await waitFor(() => rc.out.includes("ready"), {
        what: `the receiver (${rc.err})`,
        timeoutMs: 10000,
      });
      const mod = new URL("../../linux/rawsock.ts", import.meta.url).href;
      // IPv4 (checksum and length left for the kernel) + UDP without checksum.
      const code = `import { RawSocket } from "${mod}";
      const payload = new TextEncoder().encode("raw-1");
      const p = new Uint8Array(28 + payload.length);
      const dv = new DataView(p.buffer);
      p[0] = 0x45; p[8] = 64; p[9] = 17;
      p.set([10, 9, 0, 1], 12); p.set([10, 9, 0, 2], 16);
      dv.setUint16(20, 1234); dv.setUint16(22, ${PORT}); dv.setUint16(24, 8 + payload.length);
      p.set(payload, 28);
      const s = RawSocket.open();
      s.send(p, p.length, 0x0a090002);
      s.send(p, 10, 0x0a090002); // too short: counted, not thrown
      console.log(JSON.stringify(s.stats));
      s.close(); s.close();`;
      const r = await run(inNs(pair.a, [Deno.execPath(), "eval", code]));
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { sent: 1, errors: 1 });
      await receiver.finish(15000);
      assert.deepEqual(JSON.parse(receiver.out.trim().split("\n").at(-1)!), ["raw-1"]);
    } finally {
      receiver?.kill("SIGKILL");
      await receiver?.finish(5000);
      await deleteNsPair(pair);
    }
  }),
);

Deno.test(needsRoot("sysctl root: values are set and restored", async () => {
  const pair = await createNsPair(tag("sys"));
  try {
    const mod = new URL("../../linux/sysctl.ts", import.meta.url).href;
    // In namespace A, whose /proc/sys/net is its own.
    const code = `import { readSysctl, setSysctls, sysctlPath } from "${mod}";
      const names = ["net.ipv4.conf.a0.accept_local", "net.ipv4.conf.a0.rp_filter"];
      const before = await Promise.all(names.map(readSysctl));
      const restore = await setSysctls({ [names[0]]: "1", [names[1]]: "0" });
      const during = await Promise.all(names.map(readSysctl));
      await restore(); await restore();
      const after = await Promise.all(names.map(readSysctl));
      let unknown = "";
      try { await setSysctls({ [names[0]]: "1", "net.ipv4.conf.nope0.rp_filter": "0" }); }
      catch (e) { unknown = e.message; }
      const untouched = await readSysctl(names[0]);
      console.log(JSON.stringify({ before, during, after, unknown, untouched,
        dotted: sysctlPath("net.ipv4.conf.eth0/100.rp_filter") }));`;
    const r = await run(inNs(pair.a, [Deno.execPath(), "eval", code]));
    assert.equal(r.code, 0, r.stderr);
    const o = JSON.parse(r.stdout);
    assert.deepEqual(o.during, ["1", "0"]);
    assert.deepEqual(o.after, o.before);
    assert.notDeepEqual(o.before, o.during, "the test must change something");
    assert.match(o.unknown, /Unknown sysctl "net.ipv4.conf.nope0.rp_filter"/);
    assert.equal(o.untouched, o.before[0], "a failed set restores what it wrote");
    assert.equal(o.dotted, "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
  } finally {
    await deleteNsPair(pair);
  }
}));
