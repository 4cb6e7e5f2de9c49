/**
 * Small real applications for the demo and the end-to-end tests, run with
 * Debian's python3 inside the namespaces: a UDP echo and an HTTP server that
 * report the source they saw, an ICMP echo watcher, and UDP clients. Each
 * prints JSON (servers print "listening" first).
 *
 * @module
 */

/**
 * UDP echo on `port`: answers every datagram with "seen <ip>:<port>|<payload>".
 * Its receive buffer holds 8 MB (SO_RCVBUFFORCE as root), so a burst of
 * thousands of first datagrams at once is not lost at the echo itself.
 */
export function udpEcho(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", ${port}))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(("seen %s:%d|" % a).encode() + d, a)
`,
  ];
}

/** HTTP server on `port`: answers GET with "seen <ip>:<port>". */
export function httpSeen(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("seen %s:%d" % self.client_address).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("0.0.0.0", ${port}), H)
print("listening", flush=True)
s.serve_forever()
`,
  ];
}

/**
 * A UDP client bound to `bind` (0 = ephemeral) that sends `rounds` datagrams
 * to each destination in turn and collects the replies. Prints
 * {"local": port, "replies": [{"from": "ip:port", "data": "..."}], "errors": [...]}.
 */
export function udpClient(
  bind: number,
  dests: string[],
  opts: { rounds?: number; intervalMs?: number; timeoutMs?: number } = {},
): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, time
dests = ${JSON.stringify(dests)}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${bind}))
s.settimeout(${(opts.timeoutMs ?? 3000) / 1000})
out = {"local": s.getsockname()[1], "replies": [], "errors": []}
for r in range(${opts.rounds ?? 1}):
    for d in dests:
        h, p = d.rsplit(":", 1)
        msg = ("%s#%d" % (d, r)).encode()
        s.sendto(msg, (h, int(p)))
        try:
            data, a = s.recvfrom(65535)
            out["replies"].append({"from": "%s:%d" % a, "data": data.decode()})
        except Exception as e:
            out["errors"].append("%s: %s" % (d, type(e).__name__))
    time.sleep(${(opts.intervalMs ?? 0) / 1000})
print(json.dumps(out))
`,
  ];
}

/**
 * A connected UDP socket from `bind` to `dest` that sends once and reports
 * how the kernel answered: {"result": "reply" | "refused" | "unreachable" | "prohibited" | "timeout", ...}.
 */
export function udpProbe(bind: number, dest: string): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, errno
h, p = "${dest}".rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${bind}))
s.connect((h, int(p)))
s.settimeout(3)
res = {}
try:
    s.send(b"probe")
    d = s.recv(65535)
    res = {"result": "reply", "data": d.decode()}
except ConnectionRefusedError:
    res = {"result": "refused"}
except socket.timeout:
    res = {"result": "timeout"}
except OSError as e:
    res = {"result": {errno.EHOSTUNREACH: "unreachable", errno.EACCES: "prohibited", errno.ENETUNREACH: "unreachable"}.get(e.errno, "error"), "errno": e.errno}
print(json.dumps(res))
`,
  ];
}

/**
 * Watches ICMP echo requests arriving at this namespace (a raw socket; the
 * kernel still answers them). Prints "listening", then one JSON line per
 * request: {"src": "ip", "id": identifier, "seq": sequence}.
 */
export function icmpSeen(): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    ihl = (d[0] & 15) * 4
    if len(d) >= ihl + 8 and d[ihl] == 8:
        ident, seq = struct.unpack("!HH", d[ihl + 4:ihl + 8])
        print(json.dumps({"src": a[0], "id": ident, "seq": seq}), flush=True)
`,
  ];
}

/**
 * TCP echo on `port`: for each connection, answers every line with
 * "seen <ip>:<port>|<line>" (threads, so several connections at once).
 */
export function tcpEcho(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, threading
def serve(c, a):
    f = c.makefile("rwb")
    for line in f:
        f.write(("seen %s:%d|" % a).encode() + line)
        f.flush()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", ${port}))
s.listen(16)
print("listening", flush=True)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
`,
  ];
}

/**
 * A long-lived pair of sessions to one peer: one TCP connection and one UDP
 * socket, each exchanging a message every `intervalMs` until "stop" arrives
 * on stdin or `seconds` pass. Prints "connected" once the TCP connection is
 * up, then one JSON line at the end: TCP exchanges that succeeded and the
 * first error (a reset would end the connection), UDP sends and replies, the
 * longest UDP silence, and every distinct source the peer reported seeing, per protocol.
 */
export function steadyFlows(
  tcpDest: string,
  udpDest: string,
  opts: { seconds?: number; intervalMs?: number } = {},
): string[] {
  const [th, tp] = tcpDest.split(":");
  const [uh, up] = udpDest.split(":");
  return [
    "python3",
    "-u",
    "-c",
    `
import json, socket, time
t = socket.create_connection(("${th}", ${tp}), timeout=5)
f = t.makefile("rwb")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("${uh}", ${up}))
u.settimeout(${(opts.intervalMs ?? 100) / 1000})
print("connected", flush=True)
res = {"tcp_ok": 0, "tcp_error": None, "udp_sent": 0, "udp_replies": 0, "udp_max_gap_ms": 0, "tcp_seen": [], "udp_seen": []}
end = time.time() + ${opts.seconds ?? 20}
last = time.time()
i = 0
while time.time() < end:
    i += 1
    if res["tcp_error"] is None:
        try:
            f.write(b"t%d\\n" % i); f.flush()
            line = f.readline().decode().strip()
            if not line:
                raise ConnectionError("closed by the peer")
            res["tcp_ok"] += 1
            s = line.split("|")[0]
            if s not in res["tcp_seen"]: res["tcp_seen"].append(s)
        except Exception as e:
            res["tcp_error"] = "%s: %s" % (type(e).__name__, e)
    u.send(b"u%d" % i)
    res["udp_sent"] += 1
    try:
        d = u.recv(2048).decode()
        res["udp_replies"] += 1
        now = time.time()
        res["udp_max_gap_ms"] = max(res["udp_max_gap_ms"], int((now - last) * 1000))
        last = now
        s = d.split("|")[0]
        if s not in res["udp_seen"]: res["udp_seen"].append(s)
    except socket.timeout:
        pass
    time.sleep(${(opts.intervalMs ?? 100) / 1000})
res["udp_max_gap_ms"] = max(res["udp_max_gap_ms"], int((time.time() - last) * 1000))
print(json.dumps(res), flush=True)
`,
  ];
}

/**
 * UDP on `port` that answers every datagram twice: first from a second
 * socket on `otherPort` ("other-port|<payload>"), then from `port`
 * ("seen <ip>:<port>|<payload>"). Prints "listening", then one JSON line
 * per datagram: {"seen": "ip:port"}. For filtering tests: a NAT that filters
 * by address and port delivers only the second answer.
 */
export function udpMultiReply(port: number, otherPort: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${port}))
o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
o.bind(("0.0.0.0", ${otherPort}))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    o.sendto(b"other-port|" + d, a)
    s.sendto(("seen %s:%d|" % a).encode() + d, a)
    print(json.dumps({"seen": "%s:%d" % a}), flush=True)
`,
  ];
}

/**
 * A UDP socket bound to `bind` that sends "hello" to `dest`, then collects
 * every datagram that arrives for `ms` milliseconds. Prints "sent", then at
 * the end {"got": [{"from": "ip:port", "data": "..."}]}.
 */
export function udpCollect(bind: number, dest: string, ms: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, time
h, p = "${dest}".rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${bind}))
s.sendto(b"hello", (h, int(p)))
print("sent", flush=True)
got = []
end = time.time() + ${ms / 1000}
while True:
    left = end - time.time()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        d, a = s.recvfrom(65535)
        got.append({"from": "%s:%d" % a, "data": d.decode()})
    except socket.timeout:
        break
print(json.dumps({"got": got}), flush=True)
`,
  ];
}

/** Sends one UDP datagram `payload` from port `bind` to `dest`. Prints {"sent": true}. */
export function udpSendOnce(bind: number, dest: string, payload: string): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
h, p = "${dest}".rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${bind}))
s.sendto(${JSON.stringify(payload)}.encode(), (h, int(p)))
print(json.dumps({"sent": True}))
`,
  ];
}

/**
 * A TCP client from local port `bind` (0 = ephemeral) to `dest` that sends
 * `line` and reads one line back. Prints {"reply": "..."} or {"error": "..."}.
 */
export function tcpClient(bind: number, dest: string, line: string): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
h, p = "${dest}".rsplit(":", 1)
try:
    c = socket.create_connection((h, int(p)), timeout=5, source_address=("0.0.0.0", ${bind}))
    f = c.makefile("rwb")
    f.write(${JSON.stringify(line + "\n")}.encode()); f.flush()
    print(json.dumps({"reply": f.readline().decode().strip()}))
except Exception as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
`,
  ];
}

/** python3: sends the IPv4 packets given in hex through a raw socket (own headers, forged sources). */
export function rawSender(hexPackets: string[]): string[] {
  return [
    "python3",
    "-c",
    `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for h in sys.argv[1:]:
    b = bytes.fromhex(h)
    s.sendto(b, (socket.inet_ntoa(b[16:20]), 0))
print("sent", len(sys.argv) - 1, flush=True)
`,
    ...hexPackets,
  ];
}

/**
 * python3: sends IPv4 packets (own headers, forged sources) read as hex
 * lines from stdin through a raw socket, `batch` at a time with a `pauseMs`
 * pause after each batch (so that thousands do not overrun the receiver's
 * socket buffer). Prints "sent N". Use with `exec(..., { stdin })`:
 * thousands of packets do not fit on a command line.
 */
export function rawFlood(batch = 50, pauseMs = 10): string[] {
  return [
    "python3",
    "-c",
    `
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    b = bytes.fromhex(line)
    s.sendto(b, (socket.inet_ntoa(b[16:20]), 0))
    n += 1
    if n % ${batch} == 0:
        time.sleep(${pauseMs / 1000})
print("sent", n, flush=True)
`,
  ];
}

/**
 * A TCP server on `0.0.0.0:port` that writes `name` and a newline to every
 * connection and closes it: who answers a connection, told apart by name.
 * Prints "listening".
 */
export function tcpBanner(port: number, name: string): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", ${port}))
s.listen(16)
print("listening", flush=True)
while True:
    c, a = s.accept()
    try:
        c.sendall(${JSON.stringify(name + "\n")}.encode())
    finally:
        c.close()
`,
  ];
}

/**
 * A burst of `n` new UDP sessions at once: `n` sockets on fresh ephemeral
 * ports, each sending its first datagram to `dest` ("ip:port", a
 * {@linkcode udpEcho}, which answers with the source it saw) in one loop,
 * then again every `resendMs` (default 2,000; 0: never, so that a session
 * whose first datagram was lost stays unanswered) until answered or
 * `roundMs` is up. With `rounds` > 1
 * the same sockets send again (a round starts when every socket had its
 * answer or at the deadline; with `gate`, it prints "round N done" and
 * starts the next only once the file `gate` exists). Replies arriving within
 * `drainMs` after the last first reply are kept too.
 *
 * Prints one JSON line at the end: `{"sessions": [{"port", "sends",
 * "firstUs", "seen"}], "allUs"}`: per socket its local port, datagrams sent
 * (every round), the first round's time from its first send to its first
 * reply in µs (null: never answered), and the source pair the peer saw in
 * each reply ("ip:port", every round); `allUs` is the first round's time
 * from the first send to the last first reply (null when one never came).
 * Used by the loss test and by the benchmark's burst row.
 */
export function udpBurst(
  n: number,
  dest: string,
  o: { roundMs: number; rounds?: number; gate?: string; drainMs?: number; resendMs?: number },
): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, time, select, resource, os
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, ${n} + 256)), hard))
h, p = "${dest}".rsplit(":", 1)
dst = (h, int(p))
gate = ${JSON.stringify(o.gate ?? "")}
socks = []
for i in range(${n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    socks.append(s)
by_fd = {s.fileno(): s for s in socks}
sends = {fd: 0 for fd in by_fd}
sent_at = {}
first = {}
seen = {fd: [] for fd in by_fd}
poll = select.poll()
for s in socks:
    poll.register(s, select.POLLIN)
now = time.perf_counter_ns
all_us = None
for r in range(${o.rounds ?? 1}):
    if r > 0 and gate:
        print("round %d done" % r, flush=True)
        while not os.path.exists(gate):
            time.sleep(0.05)
    waiting = set(by_fd)
    start = now()
    deadline = start + ${o.roundMs} * 1000000
    next_send = 0
    last = None
    drain_until = None
    while now() < deadline and (waiting or now() < drain_until):
        if waiting and now() >= next_send:
            for fd in list(waiting):
                try:
                    by_fd[fd].sendto(b"r%d" % r, dst)
                except (BlockingIOError, OSError):
                    continue
                sends[fd] += 1
                if r == 0 and fd not in sent_at:
                    sent_at[fd] = now()
            next_send = now() + ${o.resendMs ?? 2000} * 1000000 if ${
      o.resendMs ?? 2000
    } > 0 else deadline
        for fd, _ in poll.poll(20):
            s = by_fd[fd]
            while True:
                try:
                    d, a = s.recvfrom(65535)
                except BlockingIOError:
                    break
                t1 = now()
                seen[fd].append(d.decode(errors="replace").split("|")[0].replace("seen ", ""))
                if fd in waiting:
                    waiting.discard(fd)
                    if r == 0 and fd in sent_at:
                        first[fd] = (t1 - sent_at[fd]) / 1000
                    last = t1
                    if not waiting:
                        drain_until = t1 + ${o.drainMs ?? 300} * 1000000
    if r == 0 and not waiting and last:
        all_us = (last - start) / 1000
out = [{"port": by_fd[fd].getsockname()[1], "sends": sends[fd], "firstUs": first.get(fd),
        "seen": seen[fd]} for fd in by_fd]
print(json.dumps({"sessions": out, "allUs": all_us}))
`,
  ];
}

/**
 * A TCP server on `port` for connect bursts: every connection is written
 * "seen <ip>:<port>" (the source it saw) and a newline, then closed. One
 * thread, non-blocking accepts, a backlog of 4,096, so a thousand connects at
 * once are all accepted. Prints "listening".
 */
export function tcpSeen(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, select
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", ${port}))
s.listen(4096)
s.setblocking(False)
print("listening", flush=True)
p = select.poll()
p.register(s, select.POLLIN)
while True:
    p.poll()
    while True:
        try:
            c, a = s.accept()
        except BlockingIOError:
            break
        try:
            c.setblocking(False)
            c.send(("seen %s:%d\\n" % a).encode())
        except OSError:
            pass
        c.close()
`,
  ];
}

/**
 * A burst of `n` TCP connects at once to `dest` ("ip:port", a
 * {@linkcode tcpSeen}), from fresh ephemeral ports, all started in one loop
 * (the kernel retransmits an unanswered SYN itself: 1 s, 3 s, ...). Prints
 * one JSON line at the end: `{"sessions": [{"port", "sends", "firstUs",
 * "seen"}], "allUs"}` as {@linkcode udpBurst} does: per connection its local
 * port, 1 (the connect), the time from connect() to established in µs (null:
 * never), and the source the peer saw (its "seen" line); `allUs` from the
 * first connect to the last one established.
 */
export function tcpConnectBurst(n: number, dest: string, o: { timeoutMs: number }): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json, time, select, resource, errno
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, ${n} + 256)), hard))
h, p = "${dest}".rsplit(":", 1)
dst = (h, int(p))
now = time.perf_counter_ns
socks = []
for i in range(${n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    socks.append(s)
by_fd = {s.fileno(): s for s in socks}
poll = select.poll()
start = now()
sent_at, done, seen, port = {}, {}, {}, {}
for s in socks:
    sent_at[s.fileno()] = now()
    e = s.connect_ex(dst)
    port[s.fileno()] = s.getsockname()[1]
    poll.register(s, select.POLLOUT | select.POLLIN)
open_fds = set(by_fd)
deadline = start + ${o.timeoutMs} * 1000000
last = None
while open_fds and now() < deadline:
    for fd, ev in poll.poll(20):
        s = by_fd[fd]
        t1 = now()
        if fd not in done:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0 and ev & select.POLLOUT:
                done[fd] = (t1 - sent_at[fd]) / 1000
                last = t1
                poll.modify(s, select.POLLIN)
            elif err != 0:
                open_fds.discard(fd)
                poll.unregister(s)
            continue
        try:
            d = s.recv(256)
        except BlockingIOError:
            continue
        except OSError:
            d = b""
        if d:
            seen[fd] = d.decode(errors="replace").strip().replace("seen ", "")
        open_fds.discard(fd)
        poll.unregister(s)
out = [{"port": port[fd], "sends": 1, "firstUs": done.get(fd),
        "seen": [seen[fd]] if fd in seen else []} for fd in by_fd]
for s in socks:
    s.close()
all_us = (last - start) / 1000 if last and len(done) == len(socks) else None
print(json.dumps({"sessions": out, "allUs": all_us}))
`,
  ];
}

/**
 * A UDP listener on `port` that answers every datagram with "pong <source>"
 * and prints it: "listening", then one {"from": "ip:port", "data": "..."} line
 * per datagram.
 */
export function udpPong(port: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${port}))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    print(json.dumps({"from": "%s:%d" % a, "data": d.decode()}), flush=True)
    s.sendto(("pong %s:%d" % a).encode(), a)
`,
  ];
}

/**
 * An SSDP listener on a LAN host: joins 239.255.255.250 on the interface of
 * address `local` and prints every datagram to UDP 1900 as one JSON line
 * {"from": "ip:port", "data": "..."} (after "listening").
 */
export function ssdpListen(local: string): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import json, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("239.255.255.250", 1900))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton("${local}")))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    print(json.dumps({"from": "%s:%d" % a, "data": d.decode("latin1")}), flush=True)
`,
  ];
}

/**
 * Sends one SSDP M-SEARCH for `st` from address `local` to `dest`
 * ("239.255.255.250" or a unicast address; port 1900), TTL 2, and collects
 * the answers for `ms`. Prints {"sent": bytes, "answers": ["...", ...]}.
 */
export function ssdpSearch(local: string, dest: string, st: string, ms: number): string[] {
  return [
    "python3",
    "-u",
    "-c",
    `
import json, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("${local}", 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("${local}"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
m = ("M-SEARCH * HTTP/1.1\\r\\nHOST: 239.255.255.250:1900\\r\\nMAN: \\"ssdp:discover\\"\\r\\n"
     "MX: 1\\r\\nST: ${st}\\r\\n\\r\\n").encode()
s.sendto(m, ("${dest}", 1900))
out = []
end = time.time() + ${ms} / 1000
while True:
    left = end - time.time()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        d, a = s.recvfrom(65535)
        out.append(d.decode("latin1"))
    except socket.timeout:
        break
print(json.dumps({"sent": len(m), "answers": out}))
`,
  ];
}
