/**
 * The busy host of the HA failover measurements (testing/ha_failover.ts):
 * run inside a host's namespace, it keeps TCP connections and UDP flows
 * busy toward the peers' echo servers (testing/apps.ts `tcpEcho`,
 * `udpEcho`, which answer with the source pair they saw), opens fresh
 * sessions at a steady rate, and reports what each saw.
 *
 * ```sh
 * deno run -A testing/ha_traffic.ts '<TrafficPlan as JSON>'
 * ```
 *
 * Prints `ready` once every TCP connection is up and every UDP flow has had
 * an echo. Then reads commands on stdin, one a line: `fresh on` and
 * `fresh off` start and pause the fresh sessions; `stop` (or the end of
 * input) stops sending, waits {@linkcode TrafficPlan.drainMs} for the last
 * echoes, prints one JSON line ({@linkcode TrafficReport}) and exits.
 *
 * Every datagram and every line carries its flow's id and a sequence number
 * (`U <id> <seq>`, `T <id> <seq>`), so a capture on the WAN can tell which
 * flow a packet belongs to whatever pair it leaves with. Times are wall
 * clock milliseconds (`performance.timeOrigin + performance.now()`, sub-ms),
 * comparable with tcpdump's timestamps and the failure injection's.
 *
 * @module
 */

import dgram from "node:dgram";

/** What a host does. */
export interface TrafficPlan {
  /** Busy TCP connections: id and peer echo `ip:port`. */
  tcp: { id: string; dest: string }[];
  /** Busy UDP flows: id and peer echo `ip:port`. */
  udp: { id: string; dest: string }[];
  /** One message per flow every this many ms. */
  intervalMs: number;
  /**
   * Fresh sessions, while `fresh on`: one every `everyMs`, alternating UDP
   * and TCP, toward `udp` / `tcp`; null: none.
   */
  fresh: { everyMs: number; udp: string; tcp: string; idPrefix: string } | null;
  /** How long to wait for the last echoes after `stop`. */
  drainMs: number;
}

/** One busy UDP flow's account. */
export interface UdpFlowReport {
  id: string;
  /** The local port. */
  local: number;
  /** Datagrams sent. */
  sent: number;
  /** Distinct sequence numbers echoed. */
  echoed: number;
  /** Each public pair the peer reported, with how many echoes said so. */
  pairs: Record<string, number>;
  /** Send times (ms) of the last echoed datagram before the longest run of unechoed ones, and of the first after it. */
  gap: [number, number] | null;
  /** ECONNREFUSED and other socket errors seen (an ICMP error from a wrong pair, for instance). */
  errors: string[];
}

/** One busy TCP connection's account. */
export interface TcpConnReport {
  id: string;
  local: number;
  sent: number;
  echoed: number;
  pairs: Record<string, number>;
  /** Arrival times (ms) of the two echoes furthest apart. */
  gap: [number, number] | null;
  /** The error that ended the connection ("ConnectionReset: ...") and when (ms), or null when it lived to the end. */
  error: string | null;
  errorAt: number | null;
}

/** One fresh session's account. */
export interface FreshReport {
  id: string;
  proto: "udp" | "tcp";
  /** When it started (ms). */
  at: number;
  /** When its first echo arrived (ms), or null. */
  okAt: number | null;
  /** The public pair the peer saw, or null. */
  pair: string | null;
  error: string | null;
}

/** What the script prints at the end. */
export interface TrafficReport {
  udp: UdpFlowReport[];
  tcp: TcpConnReport[];
  fresh: FreshReport[];
}

/** Wall clock in ms with sub-ms resolution. */
export const wallMs = (): number => performance.timeOrigin + performance.now();

/** The pair an echo server reported: "seen 203.0.113.10:40000|..." -> "203.0.113.10:40000". */
export function seenPair(echo: string): string | null {
  const m = /^seen (\d+\.\d+\.\d+\.\d+:\d+)\|/.exec(echo);
  return m ? m[1]! : null;
}

/**
 * The longest run of unechoed sequence numbers among those sent: the send
 * times of the echoed datagrams on either side of it (the last one sent
 * when it is at the end), or null when nothing is missing.
 */
export function longestGap(sendTimes: number[], echoed: Set<number>): [number, number] | null {
  let best: [number, number] | null = null;
  let bestLen = 0;
  let lastOk = -1;
  let run = 0;
  for (let seq = 0; seq < sendTimes.length; seq++) {
    if (echoed.has(seq)) {
      if (run > bestLen && lastOk >= 0) {
        best = [sendTimes[lastOk]!, sendTimes[seq]!];
        bestLen = run;
      }
      lastOk = seq;
      run = 0;
    } else {
      run++;
    }
  }
  if (run > bestLen && lastOk >= 0) best = [sendTimes[lastOk]!, sendTimes[sendTimes.length - 1]!];
  return best;
}

function split(dest: string): [string, number] {
  const i = dest.lastIndexOf(":");
  return [dest.slice(0, i), Number(dest.slice(i + 1))];
}

function bump(m: Record<string, number>, k: string): void {
  m[k] = (m[k] ?? 0) + 1;
}

class UdpFlow {
  readonly sock = dgram.createSocket("udp4");
  readonly sendTimes: number[] = [];
  readonly echoed = new Set<number>();
  readonly pairs: Record<string, number> = {};
  readonly errors: string[] = [];
  #timer: ReturnType<typeof setInterval> | undefined;
  #host: string;
  #port: number;

  constructor(readonly id: string, dest: string) {
    [this.#host, this.#port] = split(dest);
    this.sock.on("message", (msg) => {
      const s = msg.toString();
      const pair = seenPair(s);
      const m = / (\d+)$/.exec(s);
      if (pair) bump(this.pairs, pair);
      if (m) this.echoed.add(Number(m[1]));
    });
    this.sock.on("error", (e) => this.errors.push(String(e.message)));
  }

  async start(intervalMs: number, offsetMs: number): Promise<void> {
    await new Promise<void>((r) => this.sock.bind(0, () => r()));
    await new Promise((r) => setTimeout(r, offsetMs));
    this.#send();
    this.#timer = setInterval(() => this.#send(), intervalMs);
  }

  #send(): void {
    const seq = this.sendTimes.length;
    this.sendTimes.push(wallMs());
    this.sock.send(`U ${this.id} ${seq}`, this.#port, this.#host, (e) => {
      if (e) this.errors.push(String(e.message));
    });
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  report(): UdpFlowReport {
    const local = this.sock.address().port;
    this.sock.close();
    return {
      id: this.id,
      local,
      sent: this.sendTimes.length,
      echoed: this.echoed.size,
      pairs: this.pairs,
      gap: longestGap(this.sendTimes, this.echoed),
      errors: this.errors.slice(0, 5),
    };
  }
}

class TcpConn {
  conn: Deno.TcpConn | null = null;
  sent = 0;
  readonly echoTimes: number[] = [];
  readonly pairs: Record<string, number> = {};
  error: string | null = null;
  errorAt: number | null = null;
  local = 0;
  #timer: ReturnType<typeof setInterval> | undefined;
  #reading: Promise<void> = Promise.resolve();
  #closing = false;

  constructor(readonly id: string, readonly dest: string) {}

  async connect(): Promise<void> {
    const [hostname, port] = split(this.dest);
    this.conn = await Deno.connect({ hostname, port });
    this.conn.setNoDelay(true);
    this.local = (this.conn.localAddr as Deno.NetAddr).port;
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.conn!.readable) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const pair = seenPair(line);
          if (pair) bump(this.pairs, pair);
          this.echoTimes.push(wallMs());
        }
      }
      if (!this.#closing) this.#fail("closed by the peer");
    } catch (e) {
      if (!this.#closing) this.#fail(`${(e as Error).name}: ${(e as Error).message}`);
    }
  }

  #fail(what: string): void {
    if (this.error !== null) return;
    this.error = what;
    this.errorAt = wallMs();
    clearInterval(this.#timer);
  }

  start(intervalMs: number, offsetMs: number): void {
    const enc = new TextEncoder();
    setTimeout(() => {
      if (this.error !== null) return;
      this.#timer = setInterval(() => {
        if (this.error !== null || !this.conn) return;
        const seq = this.sent++;
        this.conn.write(enc.encode(`T ${this.id} ${seq}\n`)).catch((e) =>
          this.#fail(`${(e as Error).name}: ${(e as Error).message}`)
        );
      }, intervalMs);
    }, offsetMs);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async report(): Promise<TcpConnReport> {
    this.#closing = true;
    try {
      this.conn?.close();
    } catch {
      // Already closed.
    }
    await this.#reading;
    let gap: [number, number] | null = null;
    for (let i = 1; i < this.echoTimes.length; i++) {
      const d = this.echoTimes[i]! - this.echoTimes[i - 1]!;
      if (gap === null || d > gap[1] - gap[0]) gap = [this.echoTimes[i - 1]!, this.echoTimes[i]!];
    }
    return {
      id: this.id,
      local: this.local,
      sent: this.sent,
      echoed: this.echoTimes.length,
      pairs: this.pairs,
      gap,
      error: this.error,
      errorAt: this.errorAt,
    };
  }
}

/** A fresh UDP session: up to 10 tries 100 ms apart until an echo comes back. */
async function freshUdp(id: string, dest: string): Promise<FreshReport> {
  const [host, port] = split(dest);
  const at = wallMs();
  const sock = dgram.createSocket("udp4");
  const out: FreshReport = { id, proto: "udp", at, okAt: null, pair: null, error: null };
  try {
    const got = new Promise<string>((resolve) => sock.on("message", (m) => resolve(m.toString())));
    sock.on("error", (e) => out.error ??= String(e.message));
    await new Promise<void>((r) => sock.bind(0, () => r()));
    for (let i = 0; i < 10 && out.okAt === null; i++) {
      sock.send(`U ${id} ${i}`, port, host);
      const r = await Promise.race([got, new Promise((r) => setTimeout(() => r(null), 100))]);
      if (typeof r === "string") {
        out.okAt = wallMs();
        out.pair = seenPair(r);
      }
    }
  } finally {
    sock.close();
  }
  return out;
}

/** A fresh TCP session: connect, one line, its echo, close (2 s at most). */
async function freshTcp(id: string, dest: string): Promise<FreshReport> {
  const [hostname, port] = split(dest);
  const at = wallMs();
  const out: FreshReport = { id, proto: "tcp", at, okAt: null, pair: null, error: null };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), 2000));
  // A connect or read still pending at the deadline is left to finish on its
  // own (the connection is closed then); the process exits after its report.
  const connecting = Deno.connect({ hostname, port });
  try {
    const conn = await Promise.race([connecting, late]);
    if (conn === "timeout") {
      out.error = "timeout";
      connecting.then((c) => c.close(), () => {});
      return out;
    }
    try {
      await conn.write(new TextEncoder().encode(`T ${id} 0\n`));
      const buf = new Uint8Array(200);
      const n = await Promise.race([conn.read(buf), late]);
      if (n === "timeout") out.error = "timeout";
      else if (n) {
        out.okAt = wallMs();
        out.pair = seenPair(new TextDecoder().decode(buf.subarray(0, n)));
      } else out.error = "closed by the peer";
    } finally {
      conn.close();
    }
  } catch (e) {
    out.error ??= `${(e as Error).name}: ${(e as Error).message}`;
  } finally {
    clearTimeout(timer);
  }
  return out;
}

async function main(plan: TrafficPlan): Promise<void> {
  const udp = plan.udp.map((f) => new UdpFlow(f.id, f.dest));
  const tcp = plan.tcp.map((f) => new TcpConn(f.id, f.dest));
  await Promise.all(tcp.map((c) => c.connect()));
  const n = udp.length + tcp.length;
  // Spread the flows over the interval, so the gateway sees a steady stream.
  let k = 0;
  const offset = () => (plan.intervalMs * k++) / Math.max(n, 1);
  await Promise.all([
    ...udp.map((f) => f.start(plan.intervalMs, offset())),
    ...tcp.map((c) => (c.start(plan.intervalMs, offset()), Promise.resolve())),
  ]);
  const deadline = wallMs() + 10_000;
  while (
    wallMs() < deadline &&
    (udp.some((f) => f.echoed.size === 0) || tcp.some((c) => c.echoTimes.length === 0))
  ) {
    await new Promise((r) => setTimeout(r, 20));
  }
  console.log("ready");

  const fresh: Promise<FreshReport>[] = [];
  let freshTimer: ReturnType<typeof setInterval> | undefined;
  let freshCount = 0;
  const freshOn = () => {
    const f = plan.fresh;
    if (!f || freshTimer !== undefined) return;
    freshTimer = setInterval(() => {
      const id = `${f.idPrefix}${freshCount}`;
      fresh.push(freshCount++ % 2 === 0 ? freshUdp(id, f.udp) : freshTcp(id, f.tcp));
    }, f.everyMs);
  };
  const freshOff = () => {
    clearInterval(freshTimer);
    freshTimer = undefined;
  };

  // Commands on stdin, one a line: "fresh on", "fresh off", "stop" (or the end of input).
  const dec = new TextDecoder();
  let input = "";
  read: for await (const chunk of Deno.stdin.readable) {
    input += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = input.indexOf("\n")) >= 0) {
      const cmd = input.slice(0, nl).trim();
      input = input.slice(nl + 1);
      if (cmd === "fresh on") freshOn();
      else if (cmd === "fresh off") freshOff();
      else if (cmd === "stop") break read;
    }
  }
  freshOff();
  for (const f of udp) f.stop();
  for (const c of tcp) c.stop();
  await new Promise((r) => setTimeout(r, plan.drainMs));
  const report: TrafficReport = {
    udp: udp.map((f) => f.report()),
    tcp: await Promise.all(tcp.map((c) => c.report())),
    fresh: await Promise.all(fresh),
  };
  console.log(JSON.stringify(report));
  Deno.exit(0);
}

if (import.meta.main) {
  await main(JSON.parse(Deno.args[0] ?? "{}") as TrafficPlan);
}
