/**
 * UPnP control: the XML reader (src/upnp/xml.ts), the SOAP decoder and
 * writers (src/upnp/soap.ts), on real request bodies as miniupnpc sends
 * them and on hostile ones (entity bombs, external entities, deep nesting,
 * oversize), plus a fast-check fuzz of the whole control path: hostile and
 * malformed bodies through UpnpService never throw, always get a fault, and
 * change no mapping.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { parseXml } from "../../src/upnp/xml.ts";
import {
  decodeSoap,
  encodeSoapRequest,
  MAX_SOAP_CHARS,
  MAX_STRING,
  soapFault,
  soapResponse,
  type UpnpRequest,
} from "../../src/upnp/soap.ts";
import { serviceType, UPNP_ERROR_TEXT, UpnpError } from "../../src/upnp/igd.ts";
import { IgdDocuments } from "../../src/upnp/description.ts";
import { FakeUpnpMappings } from "../../src/upnp/fake.ts";
import { UpnpService } from "../../src/upnp/service.ts";
import { RateLimiter } from "../../src/control/ratelimit.ts";
import type { HttpRequest } from "../../src/upnp/http.ts";
import { G, H1, LAN } from "../../testing/fixtures.ts";

const WANIP1 = serviceType("WANIPConnection", 1);

/** AddPortMapping exactly as miniupnpc 2.2.4 writes it (upnpcommands.c, minisoap.c). */
const MINIUPNPC_ADD = '<?xml version="1.0"?>\r\n' +
  '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" ' +
  's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">' +
  "<s:Body>" +
  `<u:AddPortMapping xmlns:u="${WANIP1}">` +
  "<NewRemoteHost></NewRemoteHost><NewExternalPort>6000</NewExternalPort>" +
  "<NewProtocol>UDP</NewProtocol><NewInternalPort>5000</NewInternalPort>" +
  "<NewInternalClient>10.0.0.11</NewInternalClient><NewEnabled>1</NewEnabled>" +
  "<NewPortMappingDescription>libminiupnpc</NewPortMappingDescription>" +
  "<NewLeaseDuration>0</NewLeaseDuration>" +
  "</u:AddPortMapping></s:Body></s:Envelope>\r\n";

const ADD_ARGS: [string, string][] = [
  ["NewRemoteHost", ""],
  ["NewExternalPort", "6000"],
  ["NewProtocol", "UDP"],
  ["NewInternalPort", "5000"],
  ["NewInternalClient", "10.0.0.11"],
  ["NewEnabled", "1"],
  ["NewPortMappingDescription", "game"],
  ["NewLeaseDuration", "3600"],
];

function decode(soapAction: string | null, body: string, version = 2) {
  return decodeSoap({ soapAction, body, service: "WANIPConnection", version });
}

function faultCode(r: ReturnType<typeof decode>): number {
  assert.ok(!r.ok, "expected a fault");
  return r.fault.code;
}

// ---------------------------------------------------------------- XML reader

Deno.test("upnp xml: elements, namespaces, attributes and text are read; CDATA is text", () => {
  const r = parseXml(
    '<?xml version="1.0" encoding="UTF-8"?><a:x xmlns:a="urn:a" b="1"><y>t&amp;<![CDATA[<z>]]></y><!-- c --></a:x>',
  );
  assert.ok(r.ok);
  assert.equal(r.root.uri, "urn:a");
  assert.equal(r.root.local, "x");
  assert.deepEqual(r.root.attrs, [{ uri: "", local: "b", value: "1" }]);
  assert.equal(r.root.children[0]!.text, "t&<z>");
});

Deno.test("upnp xml: an entity bomb is refused before any expansion", () => {
  const bomb = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' +
    Array.from(
      { length: 9 },
      (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i === 0 ? "" : i};`.repeat(10)}">`,
    ).join("") +
    "]><lolz>&lol9;</lolz>";
  const r = parseXml(bomb);
  assert.ok(!r.ok);
  assert.match(r.reason, /DOCTYPE/);
});

Deno.test("upnp xml: external entities (XXE) are neither read nor expanded", () => {
  for (
    const doc of [
      '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
      '<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://198.51.100.1/x.dtd"><a/>',
      "<a>&x;</a>", // an undefined entity without a DOCTYPE
    ]
  ) {
    const r = parseXml(doc);
    assert.ok(!r.ok, doc);
    assert.match(r.reason, /DOCTYPE|undefined entity/);
  }
});

Deno.test("upnp xml: limits of size, depth, elements, attributes and text hold", () => {
  assert.match(
    (parseXml("<a/>".padEnd(20, " "), { maxChars: 10 }) as { reason: string }).reason,
    /longer/,
  );
  assert.match(
    (parseXml("<a>".repeat(10) + "</a>".repeat(10), { maxDepth: 9 }) as { reason: string }).reason,
    /deeper/,
  );
  assert.ok(parseXml("<a>".repeat(9) + "</a>".repeat(9), { maxDepth: 9 }).ok);
  assert.match(
    (parseXml(`<a>${"<b/>".repeat(70)}</a>`) as { reason: string }).reason,
    /more than 64 elements/,
  );
  assert.match(
    (parseXml(`<a ${Array.from({ length: 9 }, (_, i) => `x${i}="1"`).join(" ")}/>`) as {
      reason: string;
    }).reason,
    /attributes/,
  );
  assert.match(
    (parseXml(`<a>${"x".repeat(20)}</a>`, { maxText: 10 }) as { reason: string }).reason,
    /character data/,
  );
});

Deno.test("upnp xml: not well-formed, processing instructions and other encodings are refused", () => {
  for (
    const doc of [
      "",
      "<a>",
      "<a></b>",
      "<a><b></a></b>",
      "text",
      "<a/><b/>",
      '<a x="1" x="2"/>',
      "<?php echo 1 ?><a/>",
      '<?xml version="1.0" encoding="ISO-8859-1"?><a/>',
      "<a>\u0001</a>",
      "<a>&#0;</a>",
      "<p:a/>",
    ]
  ) assert.ok(!parseXml(doc).ok, JSON.stringify(doc));
});

// ---------------------------------------------------------------- decoder

Deno.test("upnp soap: miniupnpc's AddPortMapping decodes to the typed request", () => {
  const r = decode(`"${WANIP1}#AddPortMapping"`, MINIUPNPC_ADD);
  assert.ok(r.ok);
  assert.deepEqual(r.req, {
    action: "AddPortMapping",
    service: "WANIPConnection",
    version: 1,
    remoteHost: "",
    externalPort: 6000,
    protocol: "UDP",
    internalPort: 5000,
    internalClient: "10.0.0.11",
    enabled: true,
    description: "libminiupnpc",
    leaseDuration: 0,
  });
  // Without quotes around SOAPACTION, and with the arguments in another order.
  const { body } = encodeSoapRequest(
    "WANIPConnection",
    1,
    "AddPortMapping",
    ADD_ARGS.slice().reverse(),
  );
  assert.ok(decode(`${WANIP1}#AddPortMapping`, body).ok);
});

Deno.test("upnp soap: every action of the tables decodes from its own encoding", () => {
  const cases: [string, [string, string][], number][] = [
    ["GetExternalIPAddress", [], 1],
    ["GetStatusInfo", [], 1],
    ["GetGenericPortMappingEntry", [["NewPortMappingIndex", "3"]], 1],
    ["DeletePortMapping", [["NewRemoteHost", ""], ["NewExternalPort", "80"], [
      "NewProtocol",
      "TCP",
    ]], 1],
    ["AddAnyPortMapping", ADD_ARGS, 2],
    [
      "GetListOfPortMappings",
      [["NewStartPort", "1"], ["NewEndPort", "65535"], ["NewProtocol", "TCP"], ["NewManage", "1"], [
        "NewNumberOfPorts",
        "0",
      ]],
      2,
    ],
  ];
  for (const [action, args, v] of cases) {
    const e = encodeSoapRequest("WANIPConnection", v, action, args);
    const r = decode(e.soapAction, e.body);
    assert.ok(r.ok, `${action}: ${!r.ok && r.fault.reason}`);
    assert.equal(r.req.action, action);
    assert.equal(r.req.version, v);
  }
  const l = encodeSoapRequest("WANCommonInterfaceConfig", 1, "GetTotalBytesSent", []);
  const r = decodeSoap({ ...l, service: "WANCommonInterfaceConfig", version: 1 });
  assert.ok(r.ok && r.req.action === "GetTotalBytesSent");
});

Deno.test("upnp soap: the SOAPACTION must name this service, a version it has, and an action of it", () => {
  const e = encodeSoapRequest("WANIPConnection", 1, "GetExternalIPAddress", []);
  assert.equal(faultCode(decode(null, e.body)), UpnpError.INVALID_ACTION);
  assert.equal(faultCode(decode("GetExternalIPAddress", e.body)), UpnpError.INVALID_ACTION);
  assert.equal(
    faultCode(decode(`"${serviceType("WANIPConnection", 3)}#GetExternalIPAddress"`, e.body)),
    UpnpError.INVALID_ACTION,
  );
  // A v2 action at a v1 control URL, or in a v1 namespace.
  const any = encodeSoapRequest("WANIPConnection", 2, "AddAnyPortMapping", ADD_ARGS);
  assert.equal(faultCode(decode(any.soapAction, any.body, 1)), UpnpError.INVALID_ACTION);
  assert.equal(
    faultCode(decode(`"${WANIP1}#AddAnyPortMapping"`, any.body)),
    UpnpError.INVALID_ACTION,
  );
  assert.equal(faultCode(decode(`"${WANIP1}#Nope"`, e.body)), UpnpError.INVALID_ACTION);
  // The header names one action, the body another.
  assert.equal(faultCode(decode(`"${WANIP1}#GetStatusInfo"`, e.body)), UpnpError.INVALID_ACTION);
  // Another service's namespace at this URL.
  const l = encodeSoapRequest("WANCommonInterfaceConfig", 1, "GetTotalBytesSent", []);
  assert.equal(faultCode(decode(l.soapAction, l.body)), UpnpError.INVALID_ACTION);
});

Deno.test("upnp soap: the envelope must be SOAP 1.1, with one Body holding one action", () => {
  const sa = `"${WANIP1}#GetExternalIPAddress"`;
  const act = `<u:GetExternalIPAddress xmlns:u="${WANIP1}"/>`;
  const env = (inner: string, ns = "http://schemas.xmlsoap.org/soap/envelope/") =>
    `<s:Envelope xmlns:s="${ns}">${inner}</s:Envelope>`;
  assert.ok(decode(sa, env(`<s:Body>${act}</s:Body>`)).ok);
  assert.ok(decode(sa, env(`<s:Header><x/></s:Header><s:Body>${act}</s:Body>`)).ok);
  for (
    const bad of [
      env(`<s:Body>${act}</s:Body>`, "http://www.w3.org/2003/05/soap-envelope"), // SOAP 1.2
      env(`<s:Body>${act}${act}</s:Body>`),
      env(`<s:Body></s:Body>`),
      env(`<s:Body>x${act}</s:Body>`),
      env(`<s:Body>${act}</s:Body><s:Body>${act}</s:Body>`),
      env(`${act}`),
      env(`<s:Body>${act}</s:Body><s:Header/>`),
      env(`<s:Header><x s:mustUnderstand="1"/></s:Header><s:Body>${act}</s:Body>`),
      `<Envelope><Body>${act}</Body></Envelope>`,
      env(`<s:Body><GetExternalIPAddress/></s:Body>`), // action without its namespace
      "not xml",
    ]
  ) {
    assert.equal(faultCode(decode(sa, bad)), UpnpError.INVALID_ACTION, bad);
  }
});

Deno.test("upnp soap: arguments are checked: present once, known, typed, in their lists", () => {
  const sa = `"${WANIP1}#AddPortMapping"`;
  const body = (args: [string, string][]) =>
    encodeSoapRequest("WANIPConnection", 1, "AddPortMapping", args).body;
  const set = (name: string, v: string) =>
    ADD_ARGS.map(([n, x]) => [n, n === name ? v : x] as [string, string]);
  assert.equal(faultCode(decode(sa, body(ADD_ARGS.slice(1)))), UpnpError.INVALID_ARGS);
  assert.equal(
    faultCode(decode(sa, body([...ADD_ARGS, ["NewExternalPort", "1"]]))),
    UpnpError.INVALID_ARGS,
  );
  assert.equal(faultCode(decode(sa, body([...ADD_ARGS, ["NewX", "1"]]))), UpnpError.INVALID_ARGS);
  for (
    const [n, v] of [
      ["NewExternalPort", "65536"],
      ["NewExternalPort", "-1"],
      ["NewExternalPort", "0x10"],
      [
        "NewExternalPort",
        "",
      ],
      ["NewLeaseDuration", "4294967296"],
      ["NewEnabled", "maybe"],
    ]
  ) {
    assert.equal(faultCode(decode(sa, body(set(n!, v!)))), UpnpError.INVALID_ARGS, `${n}=${v}`);
  }
  assert.equal(
    faultCode(decode(sa, body(set("NewProtocol", "ICMP")))),
    UpnpError.ARGUMENT_VALUE_OUT_OF_RANGE,
  );
  assert.equal(
    faultCode(decode(sa, body(set("NewProtocol", "tcp")))),
    UpnpError.ARGUMENT_VALUE_OUT_OF_RANGE,
  );
  assert.equal(
    faultCode(decode(sa, body(set("NewPortMappingDescription", "x".repeat(MAX_STRING + 1))))),
    UpnpError.STRING_ARGUMENT_TOO_LONG,
  );
  assert.ok(decode(sa, body(set("NewPortMappingDescription", "x".repeat(MAX_STRING)))).ok);
  assert.ok(decode(sa, body(set("NewExternalPort", " 6000 "))).ok, "white space around numbers");
  // An argument holding an element.
  const nested = body(ADD_ARGS).replace(
    "<NewRemoteHost></NewRemoteHost>",
    "<NewRemoteHost><x/></NewRemoteHost>",
  );
  assert.equal(faultCode(decode(sa, nested)), UpnpError.INVALID_ARGS);
  // Arguments in the action's namespace (a default xmlns) are accepted; in another, not.
  const dflt = `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>` +
    `<GetGenericPortMappingEntry xmlns="${WANIP1}"><NewPortMappingIndex>0</NewPortMappingIndex>` +
    `</GetGenericPortMappingEntry></s:Body></s:Envelope>`;
  assert.ok(decode(`"${WANIP1}#GetGenericPortMappingEntry"`, dflt).ok);
  assert.equal(
    faultCode(decode(
      `"${WANIP1}#GetGenericPortMappingEntry"`,
      dflt.replace("<NewPortMappingIndex>", '<o:NewPortMappingIndex xmlns:o="urn:o">').replace(
        "</NewPortMappingIndex>",
        "</o:NewPortMappingIndex>",
      ),
    )),
    UpnpError.INVALID_ARGS,
  );
});

Deno.test("upnp soap: oversized and hostile bodies get faults", () => {
  const sa = `"${WANIP1}#GetExternalIPAddress"`;
  const big = encodeSoapRequest("WANIPConnection", 1, "GetExternalIPAddress", []).body.replace(
    "<s:Body>",
    `<s:Body>${" ".repeat(MAX_SOAP_CHARS)}`,
  );
  assert.equal(faultCode(decode(sa, big)), UpnpError.INVALID_ACTION);
  const xxe =
    '<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file:///etc/shadow">]>' +
    MINIUPNPC_ADD.slice(MINIUPNPC_ADD.indexOf("<s:Envelope")).replace("libminiupnpc", "&x;");
  assert.equal(faultCode(decode(`"${WANIP1}#AddPortMapping"`, xxe)), UpnpError.INVALID_ACTION);
});

// ---------------------------------------------------------------- writers

Deno.test("upnp soap: responses carry the out-arguments in order, in the request's namespace", () => {
  const req = {
    action: "GetSpecificPortMappingEntry",
    service: "WANIPConnection",
    version: 1,
    remoteHost: "",
    externalPort: 80,
    protocol: "TCP",
  } as UpnpRequest;
  const xml = soapResponse(req, {
    NewLeaseDuration: 60,
    NewInternalPort: 8080,
    NewInternalClient: "10.0.0.11",
    NewEnabled: true,
    NewPortMappingDescription: "a<b&c",
  });
  const r = parseXml(xml);
  assert.ok(r.ok);
  const resp = r.root.children[0]!.children[0]!;
  assert.equal(resp.uri, WANIP1);
  assert.equal(resp.local, "GetSpecificPortMappingEntryResponse");
  assert.deepEqual(resp.children.map((c) => [c.local, c.text]), [
    ["NewInternalPort", "8080"],
    ["NewInternalClient", "10.0.0.11"],
    ["NewEnabled", "1"],
    ["NewPortMappingDescription", "a<b&c"],
    ["NewLeaseDuration", "60"],
  ]);
  assert.throws(() => soapResponse(req, {}), /lacks NewInternalPort/);
});

Deno.test("upnp soap: a fault is a SOAP 1.1 Client fault with the UPnPError code and its name", () => {
  const r = parseXml(soapFault(718));
  assert.ok(r.ok);
  const f = r.root.children[0]!.children[0]!;
  assert.equal(f.local, "Fault");
  assert.deepEqual(f.children.map((c) => c.local), ["faultcode", "faultstring", "detail"]);
  assert.equal(f.children[0]!.text, "s:Client");
  const e = f.children[2]!.children[0]!;
  assert.equal(e.uri, "urn:schemas-upnp-org:control-1-0");
  assert.deepEqual(e.children.map((c) => c.text), ["718", "ConflictInMappingEntry"]);
});

// ---------------------------------------------------------------- fuzz

function service(m: FakeUpnpMappings): UpnpService {
  return new UpnpService({
    mappings: m,
    docs: new IgdDocuments({ seed: "fuzz", version: "0" }),
    lan: LAN,
    lanAddr: G,
    httpPort: 5000,
    startedAt: 0,
    maxLease: 3600,
    limiter: new RateLimiter(1e9),
    log: () => {},
  });
}

function post(path: string, soapAction: string | null, body: string): HttpRequest {
  const headers = new Map([["host", "10.0.0.1:5000"], [
    "content-type",
    'text/xml; charset="utf-8"',
  ]]);
  if (soapAction !== null) headers.set("soapaction", soapAction);
  return {
    method: "POST",
    target: path,
    path,
    minor: 1,
    headers,
    body: new TextEncoder().encode(body),
  };
}

/** The UPnP error code of a fault response body, or null when it is not one. */
function faultOf(body: string): number | null {
  const r = parseXml(body);
  if (!r.ok) return null;
  const f = r.root.children[0]?.children[0];
  const code = f?.children[2]?.children[0]?.children[0]?.text;
  return f?.local === "Fault" && code !== undefined ? Number(code) : null;
}

/** Hostile bodies: none of them is a valid request, so every one must be a fault. */
const hostile: fc.Arbitrary<string> = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.string({ unit: "binary", maxLength: 300 }),
  // A valid request cut short.
  fc.nat({ max: MINIUPNPC_ADD.length - 40 }).map((n) => MINIUPNPC_ADD.slice(0, n)),
  // Markup soup from the envelope's own pieces.
  fc.array(
    fc.constantFrom(
      '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">',
      "</s:Envelope>",
      "<s:Body>",
      "</s:Body>",
      `<u:AddPortMapping xmlns:u="${WANIP1}">`,
      "</u:AddPortMapping>",
      "<NewExternalPort>",
      "</NewExternalPort>",
      "6000",
      "&amp;",
      "&x;",
      "<![CDATA[",
      "]]>",
      '<!DOCTYPE a [<!ENTITY x "y">]>',
      "<?pi?>",
      "\u0000",
      "<",
      ">",
    ),
    { maxLength: 30 },
  ).map((a) => a.join("")),
  // Deep nesting and wide bodies.
  fc.integer({ min: 6, max: 5000 }).map((n) => "<a>".repeat(n) + "</a>".repeat(n)),
  fc.integer({ min: 49, max: 3000 }).map((n) =>
    MINIUPNPC_ADD.replace("<NewRemoteHost></NewRemoteHost>", "<x/>".repeat(n))
  ),
  // Entity expansion in every place an argument could take it.
  fc.constantFrom("lol", "xxe").map((k) =>
    `<?xml version="1.0"?><!DOCTYPE s [<!ENTITY ${k} SYSTEM "file:///etc/passwd">]>` +
    MINIUPNPC_ADD.slice(MINIUPNPC_ADD.indexOf("<s:Envelope")).replace("libminiupnpc", `&${k};`)
  ),
);

Deno.test("upnp soap fuzz: hostile bodies never throw, always get a fault, and change nothing", () => {
  const m = new FakeUpnpMappings();
  const svc = service(m);
  fc.assert(
    fc.property(
      hostile,
      fc.constantFrom(`"${WANIP1}#AddPortMapping"`, `"${WANIP1}#DeletePortMapping"`, "", "#", '"'),
      (body, sa) => {
        const res = svc.handleHttp(post("/igd1/ctl/WANIPConnection", sa, body), H1, 0);
        assert.equal(res.status, 500);
        const code = faultOf(res.body ?? "");
        assert.ok(code !== null && code in UPNP_ERROR_TEXT, `fault code ${code}`);
        assert.equal(m.changes, 0);
      },
    ),
    { numRuns: 1500 },
  );
});

Deno.test("upnp soap fuzz: mutated valid requests either succeed as decoded or fault and change nothing", () => {
  fc.assert(
    fc.property(
      fc.nat({ max: MINIUPNPC_ADD.length - 1 }),
      fc.nat({ max: 8 }),
      fc.string({ maxLength: 8 }),
      (at, cut, insert) => {
        const m = new FakeUpnpMappings();
        const svc = service(m);
        const body = MINIUPNPC_ADD.slice(0, at) + insert + MINIUPNPC_ADD.slice(at + cut);
        const res = svc.handleHttp(
          post("/igd1/ctl/WANIPConnection", `"${WANIP1}#AddPortMapping"`, body),
          H1,
          0,
        );
        if (res.status === 200) {
          // Accepted: then it decoded, and it mapped for the asking host only.
          assert.ok(decode(`"${WANIP1}#AddPortMapping"`, body, 1).ok);
          assert.ok(m.all(0).every((x) => x.internalClient === H1));
        } else {
          assert.equal(res.status, 500);
          assert.ok(faultOf(res.body ?? "") !== null);
          assert.equal(m.changes, 0);
        }
      },
    ),
    { numRuns: 1500 },
  );
});
