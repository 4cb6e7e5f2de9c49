/**
 * `sudo deno task demo`: dpm at work on one machine, in a minute's reading.
 *
 * Builds a throw-away network of Linux network namespaces (three private
 * hosts, a gateway, a router and three outside peers; src/topology.ts),
 * starts `dpm server` on the gateway and `dpm driver` on h1 and h2 (h3 has
 * none), and runs real programs through it: curl, a python3 UDP socket on the
 * fixed port 5060, ping. For every exchange it prints what the outside peer
 * saw beside what `dpm query` answered on the host: they must match. Then it
 * prints the gateway's table (`dpm status`) and tears everything down, also
 * on failure and on Ctrl-C. The dpm processes' output goes to a log file
 * under /tmp; its tail is shown when something fails.
 *
 * The server gets one public address from the topology's pool, as a home or
 * office gateway often has, so that the hosts must share it: that is where
 * dpm differs from a plain NAT (fixed ports kept and shared, told apart by
 * the remote peer, claims 8-10; a real conflict refused at once).
 *
 * Exit status: 0 when every check passed and everything was torn down, 1
 * otherwise, 130/143 on SIGINT/SIGTERM.
 *
 * @module
 */

import { type Dpm, DPM_ENV, dpmCommand, MOD, startDpm } from "./testing/launch.ts";
import {
  cleanupStaleTopologies,
  createTopology,
  type Node,
  NS_PREFIX,
  type Spawned,
  type Topology,
} from "./testing/topology.ts";
import { httpSeen, icmpSeen, udpClient, udpEcho, udpProbe } from "./testing/apps.ts";

/** Programs the demo runs, and the Debian package of each. */
const NEEDED: [program: string, pkg: string][] = [
  ["ip", "iproute2"],
  ["iptables", "iptables"],
  ["sysctl", "procps"],
  ["python3", "python3"],
  ["curl", "curl"],
  ["ping", "iputils-ping"],
];

const HTTP_PORT = 8080;
const SIP_PORT = 5060;
const PING_ID = 4242;

const useColor = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const paint = (code: string) => (s: string) => useColor ? `\x1b[${code}m${s}\x1b[0m` : s;
const bold = paint("1");
const dim = paint("2");
const green = paint("32");
const red = paint("31");
const OK = green("✓");
const BAD = red("✗");

// --- preflight -----------------------------------------------------------------

function onPath(program: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const st = Deno.statSync(`${dir}/${program}`);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

function preflight(): string | null {
  if (Deno.uid() !== 0) {
    return "dpm demo: run it as root (it creates network namespaces and iptables rules):\n" +
      "  sudo deno task demo";
  }
  const missing = NEEDED.filter(([prog]) => !onPath(prog));
  if (missing.length > 0) {
    const pkgs = [...new Set(missing.map(([, pkg]) => pkg))].join(" ");
    return `dpm demo: missing program(s): ${missing.map(([p]) => p).join(", ")}\n` +
      `Install them (Debian/Ubuntu):  sudo apt-get install ${pkgs}\n` +
      "or everything the demo and the tests need:  sudo tools/install-deps";
  }
  return null;
}

/** Fetches dpm's npm dependencies into the cache: the namespaces have no way out. */
async function cacheDeps(): Promise<string | null> {
  if (Deno.env.get("DPM_BIN")) return null;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["cache", "--quiet", MOD],
    stdout: "null",
    stderr: "piped",
    env: DPM_ENV,
  }).output();
  if (out.success) return null;
  return `dpm demo: cannot fetch dpm's dependencies (deno cache mod.ts):\n` +
    new TextDecoder().decode(out.stderr).trim();
}

// --- the log file ----------------------------------------------------------------

/** Appends the output of tracked processes to a file, line-prefixed with their name. */
class LogFile {
  #tracked: { name: string; proc: Spawned; done: number }[] = [];
  #timer: ReturnType<typeof setInterval>;

  constructor(readonly path: string) {
    Deno.writeTextFileSync(path, `# dpm demo ${new Date().toISOString()}\n`);
    this.#timer = setInterval(() => this.flush(), 250);
  }

  track(name: string, proc: Spawned): void {
    this.#tracked.push({ name, proc, done: 0 });
  }

  flush(): void {
    let text = "";
    for (const t of this.#tracked) {
      const all = t.proc.output();
      const end = all.lastIndexOf("\n") + 1;
      if (end <= t.done) continue;
      for (const line of all.slice(t.done, end).split("\n").slice(0, -1)) {
        text += `[${t.name}] ${line}\n`;
      }
      t.done = end;
    }
    if (text) {
      try {
        Deno.writeTextFileSync(this.path, text, { append: true });
      } catch {
        // The log is a convenience; never fail the demo over it.
      }
    }
  }

  note(line: string): void {
    try {
      Deno.writeTextFileSync(this.path, `# ${line}\n`, { append: true });
    } catch {
      // As above.
    }
  }

  close(): void {
    clearInterval(this.#timer);
    for (const t of this.#tracked) {
      const rest = t.proc.output().slice(t.done);
      if (rest) {
        // Whatever is left without a final newline.
        t.done += rest.length;
        try {
          Deno.writeTextFileSync(this.path, `[${t.name}] ${rest}\n`, { append: true });
        } catch {
          // As above.
        }
      }
    }
    this.flush();
  }

  tail(n: number): string {
    try {
      return Deno.readTextFileSync(this.path).trimEnd().split("\n").slice(-n).join("\n");
    } catch {
      return "(log unreadable)";
    }
  }
}

// --- output ------------------------------------------------------------------------

const COLS = [42, 20, 28] as const;

function row(mark: string, what: string, seen: string, query: string, note = ""): string {
  return `  ${mark}  ${what.padEnd(COLS[0])} ${seen.padEnd(COLS[1])} ${query.padEnd(COLS[2])} ${
    dim(note)
  }`.trimEnd();
}

function diagram(t: Topology, pool: string): string {
  const g = t.gateway;
  const roles = ["dpm driver", "dpm driver", "no driver"];
  const apps = [`HTTP :${HTTP_PORT}, UDP :${SIP_PORT}`, `UDP :${SIP_PORT}`, `UDP :${SIP_PORT}`];
  const link = `─ ${g.lanText} [dpm server] ${g.wanText} ─ router ─`;
  const mid = [" ".repeat(link.length), link, `   public pool ${pool}`.padEnd(link.length)];
  const left = t.hosts.slice(0, 3).map((h, i) =>
    `  ${h.name} ${h.addrText.padEnd(11)} ${roles[i]!.padEnd(10)} `
  );
  const right = t.peers.slice(0, 3).map((p, i) =>
    ` ${p.name} ${p.addrText.padEnd(15)} ${dim(apps[i]!)}`
  );
  const lj = ["─┐", "─┼", "─┘"];
  const rj = ["┌─", "┼─", "└─"];
  const head = `  private LAN ${g.lanCidr}`.padEnd(left[0]!.length + 2) +
    "  gateway".padEnd(link.length) + "  the Internet";
  return [head, ...[0, 1, 2].map((i) => `${left[i]}${lj[i]}${mid[i]}${rj[i]}${right[i]}`)].join(
    "\n",
  );
}

// --- the demo ------------------------------------------------------------------

interface Check {
  ok: boolean;
  line: string;
}

async function main(): Promise<number> {
  const problem = preflight() ?? await cacheDeps();
  if (problem) {
    console.error(problem);
    return 1;
  }

  say(bold("dpm demo — a cooperative NAT, live in network namespaces"));
  say(
    dim(
      "Hosts behind the gateway share its public address. Each host's dpm driver reserves\n" +
        "a public address:port with the gateway's dpm server before a session's first packet\n" +
        "leaves, and can tell applications exactly what the outside will see.",
    ),
  );
  const stale = await cleanupStaleTopologies();
  if (stale > 0) say(dim(`(removed ${stale} namespaces left by an earlier crashed run)`));

  let topo: Topology | null = null;
  let dpm: Dpm | null = null;
  let log: LogFile | null = null;
  let topoP: Promise<Topology | null> = Promise.resolve(null);
  let torn: Promise<boolean> | null = null;

  /** Stops everything; resolves true when no namespace of this run is left. Idempotent. */
  const teardown = (): Promise<boolean> =>
    torn ??= (async () => {
      if (dpm) await dpm.stop().catch(() => {});
      const t = topo ?? await topoP;
      log?.close();
      if (!t) return true;
      await t.destroy();
      // t.destroy() removes t.scratch (the operator sockets).
      try {
        return ![...Deno.readDirSync("/run/netns")].some((e) => e.name.startsWith(t.prefix));
      } catch {
        return true; // No /run/netns: no namespace at all.
      }
    })();

  const onSignal = (sig: "SIGINT" | "SIGTERM") => () => {
    silenced = true;
    console.log(`\n${sig === "SIGINT" ? "Interrupted" : "Terminated"}: tearing down...`);
    teardown().then((clean) => {
      console.log(clean ? "Torn down: no namespace left." : "Teardown incomplete: see above.");
      Deno.exit(sig === "SIGINT" ? 130 : 143);
    });
  };
  const handlers = [["SIGINT", onSignal("SIGINT")], ["SIGTERM", onSignal("SIGTERM")]] as const;
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);

  // A step abandoned by a teardown may reject later: that is no crash.
  let stray: string | null = null;
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    if (!silenced) stray ??= String((e.reason as Error)?.message ?? e.reason).split("\n")[0]!;
  });

  const checks: Check[] = [];
  let failure: string | null = null;
  const started = Date.now();
  try {
    topoP = createTopology({ hosts: 3, peers: 3 }).catch((e) => {
      failure = `building the network: ${(e as Error).message}`;
      return null;
    });
    topo = await topoP;
    if (!topo) throw new Error(failure ?? "building the network failed");
    const t = topo;
    const pool = t.poolText.split("-")[0]!;
    const [h1, h2, h3] = t.hosts as [Node, Node, Node];
    const [p1, p2, p3] = t.peers as [Node, Node, Node];
    log = new LogFile(`/tmp/dpm-demo-${t.prefix.slice(NS_PREFIX.length, -1)}.log`);

    say(`\n${bold("Network")} ${dim(`(namespaces ${t.prefix}*)`)}`);
    say(diagram(t, pool));
    say(`\ndpm processes log to ${log.path}`);

    // Peers' servers and dpm start together.
    const serve = async (name: string, ns: string, cmd: string[]) => {
      const s = t.spawn(ns, cmd);
      log!.track(name, s);
      await s.waitForOutput(/listening/, 10_000);
      return s;
    };
    const servers = Promise.all([
      serve("p1 http", p1.ns, httpSeen(HTTP_PORT)),
      serve("p1 udp", p1.ns, udpEcho(SIP_PORT)),
      serve("p2 udp", p2.ns, udpEcho(SIP_PORT)),
      serve("p3 udp", p3.ns, udpEcho(SIP_PORT)),
      serve("p3 icmp", p3.ns, icmpSeen()),
    ]);
    servers.catch(() => {}); // Awaited below; a teardown meanwhile must not make it unhandled.
    const t0 = Date.now();
    write(`Starting dpm server on gw (pool ${pool}), dpm driver on h1 and h2 ... `);
    try {
      dpm = await startDpm(t, { pool, driverHosts: ["h1", "h2"] });
    } catch (e) {
      say(BAD);
      log.note(`startDpm failed: ${(e as Error).message}`);
      throw new Error("dpm did not start");
    }
    log.track("server", dpm.server);
    for (const [h, d] of dpm.drivers) log.track(`${h} driver`, d);
    const [, , , , icmpWatch] = await servers;
    say(`ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const d = dpm;

    say(
      `\n${bold("Traffic")}\n` +
        dim(
          "  Real programs on the hosts talk to the outside peers; each peer reports the source it\n" +
            "  saw. ✓ when that public address:port is exactly what `dpm query` told the host.",
        ),
    );
    say(dim(row(" ", "what ran", "outside peer saw", "dpm query on host", "")));

    const add = (ok: boolean, what: string, seen: string, query: string, note = "") => {
      const line = row(ok ? OK : BAD, what, seen, query, note);
      checks.push({ ok, line });
      say(line);
    };
    const fail = (what: string, e: unknown) => {
      const msg = (e instanceof Error ? e.message : String(e)).split("\n")[0]!;
      add(false, what, "-", "-", msg.slice(0, 100));
      log!.note(`${what}: ${e instanceof Error ? e.message : String(e)}`);
    };
    const seenOf = (data: string) => data.split("|")[0]!.replace("seen ", "");
    const json = async (ns: string, cmd: string[], timeoutMs = 15_000) => {
      const r = await t.exec(ns, cmd, { timeoutMs });
      if (r.code !== 0) throw new Error(`${cmd[0]} exited ${r.code}: ${r.stderr.trim()}`);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    };
    const curl = async (ns: string, url: string) => {
      const r = await t.exec(ns, [
        "curl",
        "-sS",
        "--max-time",
        "8",
        "-w",
        "\n%{local_ip}:%{local_port}",
        url,
      ], { timeoutMs: 12_000 });
      if (r.code !== 0) throw new Error(`curl exited ${r.code}: ${r.stderr.trim()}`);
      const [body, local] = r.stdout.split("\n");
      return { seen: (body ?? "").replace("seen ", ""), local: local ?? "" };
    };

    // 1. TCP: curl from h1 to p1's HTTP server.
    {
      const url = `http://${p1.addrText}:${HTTP_PORT}/`;
      const what = `h1 curl ${url}`;
      try {
        const c = await curl(h1.ns, url);
        const q = await d.query("h1", "tcp", c.local, `${p1.addrText}:${HTTP_PORT}`);
        const port = c.local.split(":")[1];
        add(
          q.public === c.seen,
          what,
          c.seen,
          String(q.public ?? q.result),
          `from ${c.local}${c.seen.endsWith(`:${port}`) ? ", port kept" : ", port replaced"}`,
        );
      } catch (e) {
        fail(what, e);
      }
    }

    // 2. UDP both ways: one socket on the fixed port 5060 of h2, to p2 and p3.
    {
      const dests = [p2, p3].map((p) => `${p.addrText}:${SIP_PORT}`);
      try {
        const out = await json(h2.ns, udpClient(SIP_PORT, dests));
        const qs = await Promise.all(
          dests.map((x) => d.query("h2", "udp", `${h2.addrText}:${SIP_PORT}`, x)),
        );
        dests.forEach((x, i) => {
          const peer = i === 0 ? "p2" : "p3";
          const reply = (out.replies as { from: string; data: string }[]).find((r) =>
            r.data.endsWith(`|${x}#0`)
          );
          const what = `h2 udp :${SIP_PORT} → ${peer} ${x}`;
          if (!reply) {
            add(
              false,
              what,
              "no reply",
              String(qs[i]!.public ?? qs[i]!.result),
              out.errors.join("; "),
            );
            return;
          }
          const seen = seenOf(reply.data);
          add(
            reply.from === x && qs[i]!.public === seen,
            what,
            seen,
            String(qs[i]!.public ?? qs[i]!.result),
            i === 0 ? "reply received from p2" : "same socket; reply from p3",
          );
        });
      } catch (e) {
        fail(`h2 udp :${SIP_PORT} → p2, p3`, e);
      }
    }

    // 3. ICMP: ping from h1 to p3 with a known identifier.
    {
      const what = `h1 ping ${p3.addrText} (id ${PING_ID})`;
      try {
        const before = icmpWatch.stdout().length;
        const r = await t.exec(h1.ns, [
          "ping",
          "-n",
          "-c",
          "2",
          "-i",
          "0.2",
          "-W",
          "2",
          "-e",
          String(PING_ID),
          p3.addrText,
        ]);
        if (r.code !== 0) throw new Error(`ping exited ${r.code}: ${(r.stdout + r.stderr).trim()}`);
        const seenLines = icmpWatch.stdout().slice(before).trim().split("\n").filter(Boolean);
        const last = JSON.parse(seenLines.pop() ?? "null") as { src: string; id: number } | null;
        if (!last) throw new Error("p3 saw no echo request");
        const seen = `${last.src}:${last.id}`;
        const q = await d.query("h1", "icmp", `${h1.addrText}:${PING_ID}`, `${p3.addrText}:0`);
        add(
          q.public === seen,
          what,
          seen,
          String(q.public ?? q.result),
          "2 replies; address:echo id",
        );
      } catch (e) {
        fail(what, e);
      }
    }

    // 4. Sharing: h1 also uses the fixed port 5060, toward p1 (claims 8-10).
    {
      const x = `${p1.addrText}:${SIP_PORT}`;
      const what = `h1 udp :${SIP_PORT} → p1 ${x}`;
      try {
        const out = await json(h1.ns, udpClient(SIP_PORT, [x]));
        const reply = out.replies[0] as { from: string; data: string } | undefined;
        if (!reply) throw new Error(`no reply: ${out.errors.join("; ")}`);
        const seen = seenOf(reply.data);
        const q = await d.query("h1", "udp", `${h1.addrText}:${SIP_PORT}`, x);
        add(
          reply.from === x && q.public === seen && q.shared === true,
          what,
          seen,
          String(q.public ?? q.result) + (q.shared ? " (shared)" : ""),
          "h2's public pair too: told apart by the peer",
        );
      } catch (e) {
        fail(what, e);
      }
    }

    // 5. A real conflict: h1:5060 to p2, which already talks to h2 from that pair.
    {
      const x = `${p2.addrText}:${SIP_PORT}`;
      const what = `h1 udp :${SIP_PORT} → p2 ${x}`;
      try {
        const probe = await json(h1.ns, udpProbe(SIP_PORT, x));
        const q = await d.query("h1", "udp", `${h1.addrText}:${SIP_PORT}`, x);
        const refused = probe.result !== "reply" && probe.result !== "timeout";
        add(
          refused && q.result === "conflict",
          what,
          refused ? "- (refused)" : `${probe.result}!`,
          String(q.result),
          `p2 already talks to h2 there; app told at once`,
        );
      } catch (e) {
        fail(what, e);
      }
    }

    // 6. h3 has no driver: ordinary NAT on the gateway's own address.
    {
      const url = `http://${p1.addrText}:${HTTP_PORT}/`;
      const what = `h3 curl ${url}`;
      try {
        const c = await curl(h3.ns, url);
        const st = await d.status();
        const mine = st.shown.filter((s) => String(s.internal).startsWith(`${h3.addrText}:`));
        add(
          c.seen.startsWith(`${t.gateway.wanText}:`) && mine.length === 0,
          what,
          c.seen,
          "(no driver)",
          "ordinary NAT: gateway address, no dpm session",
        );
      } catch (e) {
        fail(what, e);
      }
    }

    // The gateway's table, as an operator sees it.
    say(`\n${bold("Gateway table")} ${dim("(dpm status, run on gw)")}`);
    const st = await t.exec(t.gateway.ns, [
      ...dpmCommand(),
      "status",
      "--socket",
      d.serverSocket,
    ], { timeoutMs: 20_000, env: DPM_ENV });
    if (st.code === 0) {
      say(st.stdout.trimEnd().split("\n").map((l) => `  ${l}`.trimEnd()).join("\n"));
    } else {
      failure = `dpm status exited ${st.code}: ${st.stderr.trim()}`;
      say(`  ${BAD} ${failure}`);
    }
    // Nothing dpm or the programs above did may reach beyond the namespaces.
    const out = await t.escaped();
    say(`\n${out === 0 ? OK : BAD} packets sent beyond the topology: ${out}`);
    if (out !== 0) failure ??= `${out} packet(s) left the topology toward outside addresses`;
  } catch (e) {
    failure ??= (e as Error).message;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }

  write(`\nTearing down: stopping dpm, deleting namespaces ... `);
  const clean = await teardown();
  say(clean ? "done, nothing left." : `${BAD} some namespaces are left (see above)`);

  const passed = checks.filter((c) => c.ok).length;
  if (stray) failure ??= `unexpected error: ${stray}`;
  const allOk = failure === null && clean && checks.length > 0 && passed === checks.length;
  if (failure) say(`\n${BAD} ${failure}`);
  if (!allOk && log) {
    say(`\n${bold("Last lines of")} ${log.path}:`);
    say(log.tail(30).split("\n").map((l) => `  ${l}`).join("\n"));
  }
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  say(
    allOk
      ? `\n${OK} All ${checks.length} checks passed in ${secs} s. Logs: ${log?.path}`
      : `\n${BAD} ${passed} of ${checks.length} checks passed. Logs: ${log?.path ?? "(none)"}`,
  );
  return allOk ? 0 : 1;
}

/** Set once a signal starts the teardown: the interrupted steps print nothing more. */
let silenced = false;

function say(s = ""): void {
  if (!silenced) console.log(s);
}

function write(s: string): void {
  if (!silenced) Deno.stdout.writeSync(new TextEncoder().encode(s));
}

if (import.meta.main) Deno.exit(await main());
