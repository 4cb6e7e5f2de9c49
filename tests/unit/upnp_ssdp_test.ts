/**
 * SSDP: the codec (src/upnp/ssdp.ts) on searches as real clients send them,
 * the responder and the advertiser (src/upnp/discovery.ts) with a fake
 * clock and timers, and a fast-check fuzz of the responder with hostile
 * and malformed datagrams (no crash, answers never over 4x the search).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  aliveNotify,
  MAX_DATAGRAM,
  parseSearch,
  parseSsdpHeaders,
  parseTarget,
  searchResponse,
} from "../../src/upnp/ssdp.ts";
import {
  advertisements,
  AMPLIFICATION,
  matches,
  NOTIFY_COPIES,
  SsdpAdvertiser,
  SsdpResponder,
} from "../../src/upnp/discovery.ts";
import { IgdDocuments, type RootDevice } from "../../src/upnp/description.ts";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import { H1, LAN, P1 } from "../../testing/fixtures.ts";

const enc = new TextEncoder();
const docs = new IgdDocuments({ seed: "ssdp test", version: "1.2.3" });
const ads = advertisements(docs);
const advertised = (root: RootDevice) => ({
  location: `http://10.0.0.1:5000${root.descPath}`,
  server: "Linux/6 UPnP/1.1 dpm/1.2.3",
  maxAge: 1800,
  bootId: 42,
  configId: docs.configId,
});

/** An M-SEARCH exactly as miniupnpc 2.2.4 sends it (miniupnpc.c, ssdpDiscoverDevices). */
function msearch(st: string, mx: number | null = 2): Uint8Array {
  return enc.encode(
    "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n" + `ST: ${st}\r\n` +
      'MAN: "ssdp:discover"\r\n' + (mx === null ? "" : `MX: ${mx}\r\n`) + "\r\n",
  );
}

function responder(limiter = new RateLimiter(1e9), random = () => 0.5): SsdpResponder {
  return new SsdpResponder({ ads, advertised, lan: LAN, limiter, random });
}

// ---------------------------------------------------------------- codec

Deno.test("upnp ssdp: miniupnpc's M-SEARCH parses; targets of every kind", () => {
  const r = parseSearch(msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:1"));
  assert.ok(r.ok);
  assert.deepEqual(r.search, {
    st: "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    target: {
      kind: "type",
      domainType: "urn:schemas-upnp-org:device:InternetGatewayDevice",
      version: 1,
    },
    mx: 2,
  });
  assert.deepEqual(parseTarget("ssdp:all"), { kind: "all" });
  assert.deepEqual(parseTarget("upnp:rootdevice"), { kind: "rootdevice" });
  assert.deepEqual(parseTarget("uuid:abc"), { kind: "uuid", uuid: "abc" });
  for (
    const bad of [
      "",
      "uuid:",
      "urn:x:device:y",
      "urn:x:thing:y:1",
      "urn:x:device:y:0",
      "urn:x:device:y:v",
    ]
  ) {
    assert.equal(parseTarget(bad), null, bad);
  }
  // MX is capped at 5; absent on a unicast search; LF-only lines are read.
  const big = parseSearch(msearch("ssdp:all", 120));
  assert.ok(big.ok && big.search.mx === 5);
  const uni = parseSearch(msearch("ssdp:all", null));
  assert.ok(uni.ok && uni.search.mx === null);
  const lf = parseSearch(enc.encode('M-SEARCH * HTTP/1.1\nST: ssdp:all\nMAN: "ssdp:discover"\n\n'));
  assert.ok(lf.ok);
});

Deno.test("upnp ssdp: NOTIFYs and responses are ignored; malformed searches are told apart", () => {
  const notify = aliveNotify(
    advertised(docs.roots[0]!),
    "upnp:rootdevice",
    "uuid:x::upnp:rootdevice",
  );
  const n = parseSearch(notify);
  assert.ok(!n.ok && !n.malformed);
  const resp = parseSearch(searchResponse(advertised(docs.roots[0]!), "ssdp:all", "uuid:x"));
  assert.ok(!resp.ok && !resp.malformed);
  const cases = [
    'M-SEARCH / HTTP/1.1\r\nST: ssdp:all\r\nMAN: "ssdp:discover"\r\n\r\n',
    "M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n", // no MAN
    'M-SEARCH * HTTP/1.1\r\nMAN: "ssdp:discover"\r\n\r\n', // no ST
    'M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\nST: ssdp:all\r\nMAN: "ssdp:discover"\r\n\r\n',
    'M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\nMAN: "ssdp:discover"\r\n', // no empty line
    'M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\nMAN: "ssdp:discover"\r\nMX: soon\r\n\r\n',
    "M-SEARCH * HTTP/1.1\r\nST ssdp:all\r\n\r\n",
    "M-SEARCH * HTTP/1.1\r\n" + "X: 1\r\n".repeat(40) + "\r\n",
  ];
  for (const c of cases) {
    const r = parseSearch(enc.encode(c));
    assert.ok(!r.ok && r.malformed, JSON.stringify(c));
  }
  const long = parseSearch(new Uint8Array(MAX_DATAGRAM + 1));
  assert.ok(!long.ok && long.malformed);
});

Deno.test("upnp ssdp: a search response carries the UDA 1.1 headers", () => {
  const d = searchResponse(
    advertised(docs.roots[1]!),
    "upnp:rootdevice",
    "uuid:u::upnp:rootdevice",
  );
  const { first, headers } = parseSsdpHeaders(d);
  assert.equal(first, "HTTP/1.1 200 OK");
  assert.deepEqual(Object.fromEntries(headers), {
    "cache-control": "max-age=1800",
    ext: "",
    location: "http://10.0.0.1:5000/igd2/desc.xml",
    server: "Linux/6 UPnP/1.1 dpm/1.2.3",
    st: "upnp:rootdevice",
    usn: "uuid:u::upnp:rootdevice",
    "bootid.upnp.org": "42",
    "configid.upnp.org": String(docs.configId),
  });
});

// ---------------------------------------------------------------- discovery

Deno.test("upnp ssdp: each root advertises rootdevice, its devices' UUIDs and types, its services", () => {
  const nts = ads.map((a) => a.nt);
  assert.equal(ads.length, 2 * (1 + 3 * 2 + 2));
  for (const v of [1, 2]) {
    for (
      const t of [
        `urn:schemas-upnp-org:device:InternetGatewayDevice:${v}`,
        `urn:schemas-upnp-org:device:WANDevice:${v}`,
        `urn:schemas-upnp-org:device:WANConnectionDevice:${v}`,
        `urn:schemas-upnp-org:service:WANIPConnection:${v}`,
      ]
    ) assert.ok(nts.includes(t), t);
  }
  assert.equal(nts.filter((n) => n === "upnp:rootdevice").length, 2);
  assert.equal(
    nts.filter((n) => n === "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1").length,
    2,
  );
  // UDNs are stable per seed and differ between the roots.
  const again = advertisements(new IgdDocuments({ seed: "ssdp test", version: "1.2.3" }));
  assert.deepEqual(again.map((a) => a.usn), ads.map((a) => a.usn));
  assert.notEqual(docs.roots[0]!.device.udn, docs.roots[1]!.device.udn);
});

Deno.test("upnp ssdp: a type search matches its version and later ones, the exact one first, echoing the version asked", () => {
  const st1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
  const m1 = matches(ads, parseTarget(st1)!, st1);
  assert.deepEqual(m1.map((m) => m.ad.root.igdVersion), [1, 2]);
  assert.ok(m1.every((m) => m.st === st1 && m.usn.endsWith(`::${st1}`)));
  const st2 = "urn:schemas-upnp-org:service:WANIPConnection:2";
  assert.deepEqual(matches(ads, parseTarget(st2)!, st2).map((m) => m.ad.root.igdVersion), [2]);
  const st3 = "urn:schemas-upnp-org:service:WANIPConnection:3";
  assert.equal(matches(ads, parseTarget(st3)!, st3).length, 0);
  const u = docs.roots[1]!.device.udn;
  assert.deepEqual(matches(ads, parseTarget(u)!, u).map((m) => m.usn), [u]);
});

Deno.test("upnp ssdp: answers to one search stay within 4x its size, closest match first", () => {
  const r = responder();
  for (
    const st of [
      "ssdp:all",
      "upnp:rootdevice",
      "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
      "urn:schemas-upnp-org:service:WANIPConnection:1",
      "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    ]
  ) {
    const q = msearch(st);
    const a = r.handle(q, H1, 0);
    assert.ok(a, st);
    const total = a.datagrams.reduce((n, d) => n + d.length, 0);
    assert.ok(total <= AMPLIFICATION * q.length, `${st}: ${total} > 4 x ${q.length}`);
    const first = parseSsdpHeaders(a.datagrams[0]!).headers;
    if (st.endsWith(":1")) assert.match(first.get("location")!, /\/igd1\/desc\.xml$/);
    if (st.endsWith(":2")) assert.match(first.get("location")!, /\/igd2\/desc\.xml$/);
    if (st.startsWith("urn:")) assert.equal(first.get("st"), st);
  }
  assert.ok(r.counters.overBudget > 0, "ssdp:all had more matches than the budget allows");
  // A tiny search buys no answer at all rather than an oversized one.
  const tiny = enc.encode('M-SEARCH * HTTP/1.1\nST:ssdp:all\nMAN:"ssdp:discover"\n\n');
  assert.equal(r.handle(tiny, H1, 0), null);
});

Deno.test("upnp ssdp: outside the LAN, over the rate, or unmatched: silence, counted", () => {
  const r = responder(new RateLimiter(1, 2));
  const q = msearch("upnp:rootdevice");
  assert.equal(r.handle(q, P1, 0), null);
  assert.equal(r.counters.notLan, 1);
  assert.ok(r.handle(q, H1, 0));
  assert.ok(r.handle(q, H1, 0));
  assert.equal(r.handle(q, H1, 0), null);
  assert.equal(r.counters.rateLimited, 1);
  assert.ok(r.handle(q, H1, 1000), "a second later, one more token");
  assert.equal(
    responder().handle(msearch("urn:schemas-upnp-org:device:MediaServer:1"), H1, 0),
    null,
  );
});

Deno.test("upnp ssdp: multicast answers wait a random part of the first half of MX; unicast ones none", () => {
  assert.equal(
    responder(undefined, () => 0.999).handle(msearch("ssdp:all", 2), H1, 0)!.delayMs,
    999,
  );
  assert.equal(
    responder(undefined, () => 0.999).handle(msearch("ssdp:all", 9), H1, 0)!.delayMs,
    2497,
  );
  assert.equal(
    responder(undefined, () => 0.999).handle(msearch("ssdp:all", null), H1, 0)!.delayMs,
    0,
  );
});

class FakeTimers {
  next = 1;
  due = new Map<number, { at: number; fn: () => void }>();
  now = 0;
  setTimeout(fn: () => void, ms: number): unknown {
    this.due.set(this.next, { at: this.now + ms, fn });
    return this.next++;
  }
  clearTimeout(h: unknown): void {
    this.due.delete(h as number);
  }
  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      const first = [...this.due].sort((a, b) => a[1].at - b[1].at)[0];
      if (!first || first[1].at > end) break;
      this.due.delete(first[0]);
      this.now = first[1].at;
      first[1].fn();
    }
    this.now = end;
  }
}

Deno.test("upnp ssdp: alive at start and every max-age/4..max-age/2, byebye at stop, each sent twice", () => {
  const t = new FakeTimers();
  const sent: string[] = [];
  const a = new SsdpAdvertiser({
    ads,
    advertised,
    send: (d) => sent.push(new TextDecoder().decode(d)),
    timers: t,
    random: () => 0,
  });
  a.start();
  assert.equal(sent.length, ads.length * NOTIFY_COPIES);
  assert.ok(
    sent.every((s) => s.startsWith("NOTIFY * HTTP/1.1\r\n") && s.includes("NTS: ssdp:alive")),
  );
  const nts = new Set(sent.map((s) => parseSsdpHeaders(enc.encode(s)).headers.get("nt")));
  assert.equal(nts.size, new Set(ads.map((x) => x.nt)).size);
  t.advance(449_999);
  assert.equal(a.rounds, 1);
  t.advance(1);
  assert.equal(a.rounds, 2, "the next round after max-age/4 with random 0");
  sent.length = 0;
  a.stop();
  assert.equal(sent.length, ads.length * NOTIFY_COPIES);
  assert.ok(sent.every((s) => s.includes("NTS: ssdp:byebye") && s.includes("BOOTID.UPNP.ORG: 42")));
  sent.length = 0;
  a.stop();
  t.advance(3_600_000);
  assert.equal(sent.length, 0, "stopped: no more rounds, no second byebye");
  const b = new SsdpAdvertiser({
    ads,
    advertised,
    send: () => {},
    timers: t,
    random: () => 0.999999,
  });
  assert.ok(b.nextDelayMs() < 900_000 && b.nextDelayMs() >= 899_999);
});

Deno.test("upnp ssdp: a send that throws is reported and the round goes on", () => {
  let n = 0;
  const errors: unknown[] = [];
  const a = new SsdpAdvertiser({
    ads,
    advertised,
    send: () => {
      if (n++ % 2 === 0) throw new Error("ENETUNREACH");
    },
    onError: (e) => errors.push(e),
    timers: new FakeTimers(),
  });
  a.start();
  assert.equal(n, ads.length * NOTIFY_COPIES);
  assert.equal(errors.length, ads.length);
});

// ---------------------------------------------------------------- fuzz

const MSEARCH = new TextDecoder().decode(
  msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:1"),
);

const datagrams: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 600 }),
  fc.string({ maxLength: 300 }).map((s) => enc.encode(s)),
  // A real search, cut, spliced and stuffed.
  fc.tuple(fc.nat({ max: MSEARCH.length }), fc.nat({ max: 10 }), fc.string({ maxLength: 20 })).map(
    ([at, cut, ins]) => enc.encode(MSEARCH.slice(0, at) + ins + MSEARCH.slice(at + cut)),
  ),
  // Searches with hostile targets and headers.
  fc.tuple(
    fc.oneof(
      fc.constantFrom("ssdp:all", "upnp:rootdevice", "uuid:", "urn:::::", "urn:a:device:b:99999"),
      fc.string({ maxLength: 200 }),
    ),
    fc.array(fc.tuple(fc.string({ maxLength: 10 }), fc.string({ maxLength: 30 })), {
      maxLength: 40,
    }),
  ).map(([st, hs]) =>
    enc.encode(
      `M-SEARCH * HTTP/1.1\r\nST: ${st}\r\nMAN: "ssdp:discover"\r\n` +
        hs.map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n",
    )
  ),
);

Deno.test("upnp ssdp fuzz: hostile datagrams never throw and never buy more than 4x their size", () => {
  const r = responder();
  fc.assert(
    fc.property(datagrams, fc.constantFrom(H1, P1), (d, src) => {
      const a = r.handle(d, src, 0);
      if (a === null) return;
      assert.equal(src, H1);
      const total = a.datagrams.reduce((n, x) => n + x.length, 0);
      assert.ok(total > 0 && total <= AMPLIFICATION * d.length);
      for (const x of a.datagrams) {
        assert.equal(parseSsdpHeaders(x).first, "HTTP/1.1 200 OK");
        // No header injection: the echoed ST is one line.
        assert.equal(new TextDecoder().decode(x).split("\r\n").length, 11);
      }
    }),
    { numRuns: 3000 },
  );
});
