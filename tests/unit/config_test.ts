/**
 * Configuration: flags and JSON files validated by one schema per role;
 * flags win over the file; every error names the offending value.
 */

import assert from "node:assert/strict";
import { ConfigError, driverConfig, serverConfig } from "../../src/config.ts";
import { main, mergeSettings } from "../../src/cli/main.ts";
import { parsePool } from "../../src/wire/addr.ts";

const base = { "lan-addr": "10.0.0.1", pool: "203.0.113.10-203.0.113.13" };

Deno.test("config: server defaults respect the documented values", () => {
  const c = serverConfig(base);
  assert.equal(c.controlPort, 4750);
  assert.deepEqual(c.portRange, [1024, 65535]);
  assert.deepEqual(c.gatewayPorts, [61000, 65535]);
  assert.equal(c.pool.length, 4);
  assert.equal(c.masquerade, true);
  assert.equal(c.lanIf, null);
  assert.equal(c.pcp, true);
  assert.equal(c.upnp, true, "the UPnP IGD is on by default (docs/upnp.md says why)");
  assert.equal(c.upnpPort, 5000);
  assert.equal(c.upnpMaxPerHost, 64);
});

Deno.test("config: every bad value is named", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ ...base, "lan-addr": "10.0.0.256" }, /--lan-addr "10\.0\.0\.256"/],
    [{ ...base, pool: "203.0.113.9-203.0.113.1" }, /ends before it starts/],
    [{ ...base, "control-port": "0" }, /--control-port "0"/],
    [{ ...base, "port-range": "2000-1000" }, /--port-range "2000-1000"/],
    [{ ...base, lifetime: 1 }, /--lifetime 1/],
    [{ ...base, "lan-if": "lan0" }, /--lan-if and --wan-if go together/],
    [{ ...base, pool: "10.0.0.1" }, /must not contain --lan-addr/],
    [{ ...base, "control-port": 61000 }, /inside --gateway-ports/],
    [{ ...base, "upnp-port": 61000 }, /--upnp-port 61000 lies inside --gateway-ports/],
    [{ ...base, "upnp-port": "http" }, /--upnp-port "http"/],
    [{ ...base, "upnp-max-per-host": -1 }, /--upnp-max-per-host -1/],
    [
      { ...base, "metrics-addr": "10.0.0.1:5000" },
      /--metrics-addr and --upnp-port both want TCP 5000/,
    ],
    [{ ...base, colour: "red" }, /Unknown setting "colour"/],
    [{ pool: "203.0.113.10" }, /Missing required --lan-addr/],
    [{ ...base, "lan-if": "this-name-is-too-long", "wan-if": "wan0" }, /--lan-if/],
  ];
  for (const [raw, re] of bad) {
    assert.throws(
      () => serverConfig(raw),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      JSON.stringify(raw),
    );
  }
  assert.throws(
    () => driverConfig({ server: "10.0.0.1:99999" }),
    /Invalid --server "10\.0\.0\.1:99999"/,
  );
  assert.throws(
    () => driverConfig({ server: "10.0.0.1", "fixed-ports": "500,x" }),
    /Invalid port "x"/,
  );
  assert.deepEqual(
    driverConfig({ server: "10.0.0.1:5000", "fixed-ports": [500, 4500] }).fixedPorts,
    [500, 4500],
  );
  assert.equal(driverConfig({ server: "10.0.0.1" }).serverPort, 4750);
});

Deno.test("config: pools expand singles, ranges and prefixes, sorted and unique", () => {
  assert.deepEqual(parsePool("203.0.113.2,203.0.113.0/31,203.0.113.1-203.0.113.3"), [
    0xcb007100,
    0xcb007101,
    0xcb007102,
    0xcb007103,
  ]);
  assert.match(String(parsePool("1.2.3.4,,5.6.7.8")), /Empty item/);
  assert.match(String(parsePool("10.0.0.0/8")), /more than 65536/);
});

Deno.test("cli: a config file sets values, flags win, and errors exit 2", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/dpm.json`;
  await Deno.writeTextFile(
    file,
    JSON.stringify({ server: "10.0.0.1", "fixed-ports": "5060", "log-level": "nonsense" }),
  );
  // The file sets what no flag gives; a flag replaces the file's value, even a bad one.
  const merged = driverConfig(
    (await mergeSettings({ config: file, "fixed-ports": "500,4500", "log-level": "debug" })).raw,
  );
  assert.equal(merged.server, 0x0a000001, "the file's server");
  assert.deepEqual(merged.fixedPorts, [500, 4500], "--fixed-ports over the file's 5060");
  assert.equal(merged.logLevel, "debug", "--log-level over the file's bad value");
  const fileOnly = driverConfig((await mergeSettings({ config: file, "log-level": "warn" })).raw);
  assert.deepEqual(fileOnly.fixedPorts, [5060], "the file's fixed ports without the flag");
  // Without a flag to replace it, the file's bad log level is reported by name.
  const errs: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void errs.push(a.join(" "));
  try {
    assert.equal(await main(["driver", "--config", file]), 2);
    assert.match(errs[0]!, /log-level/);
    errs.length = 0;
    assert.equal(await main(["driver", "--config", `${dir}/missing.json`]), 2);
    assert.match(errs[0]!, /Cannot read config file/);
    errs.length = 0;
    assert.equal(await main(["server", "--pool"]), 2);
    assert.match(errs[0]!, /--pool/);
    errs.length = 0;
    assert.equal(await main(["query", "udp", "1.2.3.4:5"]), 2);
    assert.match(errs[0]!, /Expected 3 arguments/);
    assert.equal(await main(["bogus"]), 2);
  } finally {
    console.error = orig;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: flags win over the config file; --no-* flags negate", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/dpm.json`;
  await Deno.writeTextFile(
    file,
    JSON.stringify({ ...base, "control-port": 5000, masquerade: true, lifetime: 600 }),
  );
  const m = await mergeSettings({ config: file, "control-port": "6000", "no-masquerade": true });
  const c = serverConfig(m.raw, m.origins);
  assert.equal(c.controlPort, 6000, "flag wins");
  assert.equal(c.lifetime, 600, "file value kept");
  assert.equal(c.masquerade, false, "--no-masquerade");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("config: the example files in contrib/ are valid", async () => {
  const read = async (name: string) =>
    JSON.parse(await Deno.readTextFile(new URL(`../../contrib/${name}`, import.meta.url)));
  const s = serverConfig(await read("server.example.json"));
  assert.equal(s.lanIf, "lan0");
  assert.equal(s.pool.length, 4);
  const d = driverConfig(await read("driver.example.json"));
  assert.deepEqual(d.fixedPorts, [500, 4500, 5060]);
});

Deno.test("config: a pool that cannot be public, a pool inside the LAN, one interface for both sides are refused", () => {
  const refuse = (raw: Record<string, unknown>, re: RegExp) =>
    assert.throws(
      () => serverConfig(raw),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      JSON.stringify(raw),
    );
  refuse({ ...base, pool: "224.0.0.1" }, /multicast/);
  refuse({ ...base, pool: "0.0.0.0,203.0.113.1" }, /0\.0\.0\.0/);
  refuse({ ...base, pool: "127.0.0.5" }, /loopback/);
  refuse({ ...base, pool: "10.0.0.5-10.0.0.9", lan: "10.0.0.0/24" }, /overlaps the LAN/);
  refuse({ ...base, "lan-if": "eth0", "wan-if": "eth0" }, /both "eth0"/);
  refuse({ ...base, lan: "192.168.1.0/24" }, /--lan-addr is not inside --lan/);
});

Deno.test("config: every problem is reported, each with its key and the file it came from", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/server.json`;
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({ "lan-addr": 42, pool: "203.0.113.10", lifetime: "soon", colour: "red" }),
    );
    const { raw, origins } = await mergeSettings({ config: file, "control-port": "0" });
    let msg = "";
    try {
      serverConfig(raw, origins);
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      msg = e.message;
    }
    const lines = msg.split("\n");
    assert.ok(lines.length >= 4, `all problems, one per line: ${msg}`);
    assert.ok(
      lines.some((l) => /--lan-addr 42/.test(l) && l.includes(`config file "${file}"`)),
      "a key of the wrong type is named with its value and file, not called missing",
    );
    assert.ok(lines.some((l) => /--lifetime "soon"/.test(l) && l.includes(file)));
    assert.ok(lines.some((l) => /Unknown setting "colour"/.test(l) && l.includes(file)));
    assert.ok(
      lines.some((l) => /--control-port "0"/.test(l) && !l.includes("config file")),
      "a flag's problem is not blamed on the file",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: the help's spelling of a switch works as a config key too (no-masquerade, no-intercept)", () => {
  assert.equal(serverConfig({ ...base, "no-masquerade": true }).masquerade, false);
  assert.equal(serverConfig({ ...base, masquerade: false }).masquerade, false);
  assert.equal(driverConfig({ server: "10.0.0.1", "no-intercept": true }).intercept, false);
  assert.equal(serverConfig({ ...base, "no-upnp": true }).upnp, false);
  assert.equal(serverConfig({ ...base, upnp: false }).upnp, false);
  // Off, its port is nobody's business.
  assert.equal(serverConfig({ ...base, upnp: false, "upnp-port": 61000 }).upnpPort, 61000);
  assert.throws(
    () => serverConfig({ ...base, "no-masquerade": true, masquerade: true }),
    /--masquerade and --no-masquerade disagree/,
  );
});

Deno.test("cli: dpm query exits 3 when no driver answers (1 is for no such session), with a JSON error under --json", async () => {
  const out: string[] = [];
  const err: string[] = [];
  const [ol, oe] = [console.log, console.error];
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const sock = `/tmp/dpm-no-driver-${crypto.randomUUID()}.sock`;
    const args = ["query", "udp", "10.0.0.11:5060", "198.51.100.7:5060", "--socket", sock];
    assert.equal(await main(args), 3);
    assert.match(err.join("\n"), /no dpm driver answers on/);
    assert.equal(await main([...args, "--json"]), 3);
    const j = JSON.parse(out.at(-1)!);
    assert.equal(j.result, "no-driver");
    assert.match(j.error, /no dpm driver answers/);
  } finally {
    console.log = ol;
    console.error = oe;
  }
});

Deno.test("config: --map-allow and --map-deny are one ordered list, before the defaults; the command line's replace the file's; bad rules are named", async () => {
  const texts = (c: ReturnType<typeof serverConfig>) => c.mapRules.map((r) => r.text);
  const dflt = serverConfig(base);
  assert.deepEqual(dflt.fixedPorts, [500, 4500, 5060]);
  assert.equal(dflt.pcpMaxPerHost, 64);
  assert.equal(dflt.pcpMaxShare, 25);
  assert.equal(dflt.pcpRateLimit, 20);
  assert.deepEqual(texts(dflt).map((t) => t.split(" (")[0]), [
    "deny 0.0.0.0/0 1-65535 500",
    "deny 0.0.0.0/0 1-65535 4500",
    "deny 0.0.0.0/0 1-65535 5060",
    "deny 0.0.0.0/0 1-65535 1-1023",
    "allow 0.0.0.0/0 1-65535 1-65535",
  ]);
  // The command line, interleaved, through the real parser.
  const { parseArgs } = await import("node:util");
  const { parseSpec, SERVER_FLAGS } = await import("../../src/config.ts");
  const args = [
    "--map-deny",
    "10.0.0.0/24 * 6000-6999",
    "--map-allow",
    "10.0.0.5 80 80",
    "--map-deny",
    "10.0.0.66",
    "--fixed-ports",
    "5060",
  ];
  const p = parseArgs({ args, options: parseSpec(SERVER_FLAGS, true), tokens: true });
  const m = await mergeSettings(p.values, p.tokens);
  const c = serverConfig({ ...base, ...m.raw }, m.origins, m.order);
  assert.deepEqual(texts(c).slice(0, 3), [
    "deny 10.0.0.0/24 1-65535 6000-6999",
    "allow 10.0.0.5/32 80 80",
    "deny 10.0.0.66/32 1-65535 1-65535",
  ]);
  assert.match(texts(c)[3]!, /^deny 0\.0\.0\.0\/0 1-65535 5060 \(default/);
  // A file: its keys in order, each array in order; a command-line rule replaces them all.
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/dpm.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        ...base,
        "map-allow": ["10.0.0.5 22", "10.0.0.6"],
        "map-deny": "10.0.0.0/24",
      }),
    );
    const f = await mergeSettings({ config: file });
    assert.deepEqual(texts(serverConfig(f.raw, f.origins, f.order)).slice(0, 3), [
      "allow 10.0.0.5/32 22 1-65535",
      "allow 10.0.0.6/32 1-65535 1-65535",
      "deny 10.0.0.0/24 1-65535 1-65535",
    ]);
    const both = await mergeSettings({ config: file, "map-deny": ["10.0.0.7"] }, [
      { kind: "option", name: "map-deny" },
    ]);
    assert.deepEqual(texts(serverConfig(both.raw, both.origins, both.order)).slice(0, 2), [
      "deny 10.0.0.7/32 1-65535 1-65535",
      "deny 0.0.0.0/0 1-65535 500 (default: a fixed port, shared by remote (--fixed-ports))",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.throws(
    () => serverConfig({ ...base, "map-allow": ["10.0.0.5 0"] }),
    (e) => e instanceof ConfigError && /Invalid --map-allow "10\.0\.0\.5 0"/.test(e.message),
  );
  assert.throws(
    () => serverConfig({ ...base, "pcp-max-share": "101" }),
    (e) => e instanceof ConfigError && /--pcp-max-share "101"/.test(e.message),
  );
});
