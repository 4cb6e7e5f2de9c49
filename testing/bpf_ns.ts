/**
 * Network namespaces for the BPF program tests (tests/root/bpf_*): the
 * programs' FIB lookups and MTU checks need interfaces, routes and
 * neighbours, and these give them fixed ones, with no traffic at all
 * (BPF_PROG_TEST_RUN sends nothing):
 *
 * ```
 * gateway namespace (forwarding on)           host namespace
 *   lan0 veth 10.0.0.1/24      02:00:00:00:01:01   eth0 veth 10.0.0.11/24   02:00:00:00:00:11
 *     neighbour 10.0.0.11 -> 02:00:00:00:00:11       default via 10.0.0.1
 *     (10.0.0.12: no neighbour entry)                neighbour 10.0.0.1 -> 02:00:00:00:01:01
 *   wan0 veth 203.0.113.1/24   02:00:00:00:02:02
 *     default via 203.0.113.254 -> 02:00:00:00:00:fe
 * ```
 *
 * Each veth's peer (lanp, wanp, peer0) stays in the same namespace, up and
 * unaddressed: the kernel here has no dummy interfaces.
 *
 * Named `dpmt-bpf-<hex>-gw` and `-h1`; deleted by {@linkcode BpfNs.destroy}
 * (also when the test failed).
 *
 * @module
 */

import { run, sh } from "./netns.ts";

/** The fixed MAC addresses of {@linkcode createBpfNs}'s interfaces and neighbours. */
export const MAC = {
  lan0: "02:00:00:00:01:01",
  wan0: "02:00:00:00:02:02",
  host: "02:00:00:00:00:11",
  router: "02:00:00:00:00:fe",
} as const;

/** The two namespaces. */
export interface BpfNs extends AsyncDisposable {
  gw: string;
  host: string;
  destroy(): Promise<void>;
}

async function batch(ns: string, lines: string[]): Promise<void> {
  const r = await run(["ip", "-n", ns, "-batch", "-"], lines.join("\n") + "\n");
  if (r.code !== 0) throw new Error(`ip -n ${ns} -batch failed: ${r.stderr}`);
}

/** Creates the namespaces of the module doc. */
export async function createBpfNs(): Promise<BpfNs> {
  const tag = crypto.randomUUID().slice(0, 6);
  const gw = `dpmt-bpf-${tag}-gw`;
  const host = `dpmt-bpf-${tag}-h1`;
  const destroy = async () => {
    for (const ns of [gw, host]) {
      const pids = await run(["ip", "netns", "pids", ns]);
      for (const p of pids.stdout.split(/\s+/).filter((s) => s !== "")) {
        try {
          Deno.kill(Number(p), "SIGKILL");
        } catch { /* gone */ }
      }
      await run(["ip", "netns", "del", ns]);
    }
  };
  try {
    await sh(["ip", "netns", "add", gw]);
    await sh(["ip", "netns", "add", host]);
    await sh(["ip", "netns", "exec", gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    await batch(gw, [
      "link set lo up",
      `link add lan0 address ${MAC.lan0} type veth peer name lanp`,
      `link add wan0 address ${MAC.wan0} type veth peer name wanp`,
      "link set lanp up",
      "link set wanp up",
      "addr add 10.0.0.1/24 dev lan0",
      "addr add 203.0.113.1/24 dev wan0",
      "link set lan0 up",
      "link set wan0 up",
      "route add default via 203.0.113.254 dev wan0",
      `neigh replace 203.0.113.254 lladdr ${MAC.router} dev wan0 nud permanent`,
      `neigh replace 10.0.0.11 lladdr ${MAC.host} dev lan0 nud permanent`,
    ]);
    await batch(host, [
      "link set lo up",
      `link add eth0 address ${MAC.host} type veth peer name peer0`,
      "link set peer0 up",
      "addr add 10.0.0.11/24 dev eth0",
      "link set eth0 up",
      "route add default via 10.0.0.1 dev eth0",
      `neigh replace 10.0.0.1 lladdr ${MAC.lan0} dev eth0 nud permanent`,
    ]);
  } catch (e) {
    await destroy();
    throw e;
  }
  return { gw, host, destroy, [Symbol.asyncDispose]: destroy };
}

/** `aa:bb:...` as 6 bytes. */
export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(":").map((x) => parseInt(x, 16)));
}

/** An Ethernet II frame (IPv4) of `ip` from `src` to `dst`. */
export function ethFrame(dst: string, src: string, ip: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + ip.length);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = 0x08;
  f[13] = 0x00;
  f.set(ip, 14);
  return f;
}
