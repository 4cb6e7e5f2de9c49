/**
 * The XML reader of the UPnP server: a small element tree from untrusted
 * text, within limits, or a reason why not. It never throws.
 *
 * The parser is saxes (npm `saxes`, a streaming, namespace-aware,
 * well-formedness-checking XML 1.0 parser; jsdom's), chosen for it because:
 *
 * - it expands no entity but the five predefined ones and character
 *   references: an internal DTD subset is reported as text, never
 *   interpreted, so entity bombs ("billion laughs") and external entities
 *   (XXE: `<!ENTITY x SYSTEM "file:///...">`) cannot be expanded or fetched:
 *   a reference to them is an "undefined entity" error. On top of that this
 *   reader refuses any DOCTYPE outright (a SOAP message has none);
 * - it is event-driven, so the limits below are checked as the document is
 *   read and the parse stops at the first excess (a tree builder would
 *   first build everything);
 * - it resolves namespaces, so the SOAP decoder compares namespace URIs,
 *   not prefixes a client may choose freely;
 * - it is small (one dependency, `xmlchars`) and widely used.
 *
 * `fast-xml-parser` was the other candidate: it builds the whole object
 * first, strips or keeps prefixes instead of resolving namespaces, and its
 * entity handling has had several advisories; regular expressions were never
 * an option (the issue forbids them, and they cannot tell well-formed XML).
 *
 * Processing instructions other than the XML declaration are refused; the
 * declaration may only name UTF-8 (the text arrives decoded as UTF-8).
 * Comments are skipped, CDATA sections are text.
 *
 * @module
 */

import { SaxesParser } from "saxes";

/** An attribute: namespace URI ("" for none), local name, value. */
export interface XmlAttribute {
  uri: string;
  local: string;
  value: string;
}

/** An element of the tree. */
export interface XmlElement {
  /** Namespace URI ("" when the element has none). */
  uri: string;
  /** Local name (without prefix). */
  local: string;
  /** Attributes, namespace declarations (`xmlns`, `xmlns:p`) left out. */
  attrs: XmlAttribute[];
  /** Child elements, in document order. */
  children: XmlElement[];
  /** The character data directly inside this element (children's excluded), joined. */
  text: string;
}

/** Limits of {@linkcode parseXml}. */
export interface XmlLimits {
  /** Longest document, in UTF-16 code units. @default 16384 */
  maxChars?: number;
  /** Deepest nesting (the root is depth 1). @default 8 */
  maxDepth?: number;
  /** Most elements in the document. @default 64 */
  maxElements?: number;
  /** Most attributes on one element. @default 8 */
  maxAttributes?: number;
  /** Longest character data of one element, UTF-16 code units. @default 4096 */
  maxText?: number;
}

/** The result of {@linkcode parseXml}. */
export type XmlResult = { ok: true; root: XmlElement } | { ok: false; reason: string };

/** Thrown inside the parser's handlers to stop it; never escapes {@linkcode parseXml}. */
class Stop extends Error {}

const XMLNS_URI = "http://www.w3.org/2000/xmlns/";

/**
 * Parses `text` into an element tree, or says why it cannot (not
 * well-formed, a DOCTYPE, a processing instruction, over a limit).
 *
 * @example
 * ```ts
 * const r = parseXml('<a xmlns="urn:x"><b>1</b></a>');
 * r.ok && r.root.children[0]!.text; // "1"
 * ```
 */
export function parseXml(text: string, limits: XmlLimits = {}): XmlResult {
  const maxChars = limits.maxChars ?? 16384;
  const maxDepth = limits.maxDepth ?? 8;
  const maxElements = limits.maxElements ?? 64;
  const maxAttributes = limits.maxAttributes ?? 8;
  const maxText = limits.maxText ?? 4096;
  if (text.length > maxChars) return { ok: false, reason: `longer than ${maxChars} characters` };

  const stack: XmlElement[] = [];
  let root: XmlElement | null = null;
  let elements = 0;
  const stop = (reason: string): never => {
    throw new Stop(reason);
  };
  const addText = (t: string) => {
    const top = stack[stack.length - 1];
    if (!top) {
      // Only whitespace may stand outside the root (saxes checks that too).
      return;
    }
    if (top.text.length + t.length > maxText) stop(`character data longer than ${maxText}`);
    top.text += t;
  };

  const p = new SaxesParser({ xmlns: true });
  p.on("error", (e) => stop(`not well-formed: ${e.message}`));
  p.on("doctype", () => stop("a DOCTYPE is not accepted"));
  p.on("processinginstruction", (pi) => stop(`processing instruction "${pi.target}"`));
  p.on("xmldecl", (d) => {
    if (d.encoding !== undefined && d.encoding.toLowerCase() !== "utf-8") {
      stop(`encoding "${d.encoding}" (only UTF-8 is read)`);
    }
  });
  p.on("opentag", (t) => {
    if (++elements > maxElements) stop(`more than ${maxElements} elements`);
    if (stack.length + 1 > maxDepth) stop(`nested deeper than ${maxDepth}`);
    const attrs: XmlAttribute[] = [];
    for (const a of Object.values(t.attributes)) {
      if (a.uri === XMLNS_URI || a.name === "xmlns") continue;
      attrs.push({ uri: a.uri, local: a.local, value: a.value });
    }
    if (attrs.length > maxAttributes) stop(`more than ${maxAttributes} attributes`);
    const el: XmlElement = {
      uri: t.uri ?? "",
      local: t.local ?? t.name,
      attrs,
      children: [],
      text: "",
    };
    const parent = stack[stack.length - 1];
    if (parent) parent.children.push(el);
    else root = el;
    stack.push(el);
  });
  p.on("closetag", () => {
    stack.pop();
  });
  p.on("text", addText);
  p.on("cdata", addText);
  try {
    p.write(text).close();
  } catch (e) {
    if (e instanceof Stop) return { ok: false, reason: e.message };
    // saxes reports through the "error" handler; anything else is a bug of
    // the parser on hostile input: still an answer, never a crash.
    return { ok: false, reason: `parser failure: ${(e as Error)?.message ?? e}` };
  }
  if (!root) return { ok: false, reason: "no root element" };
  return { ok: true, root };
}

/** Escapes text for XML character data and attribute values. */
export function escapeXml(s: string): string {
  let out = "";
  for (const ch of s) {
    switch (ch) {
      case "&":
        out += "&amp;";
        break;
      case "<":
        out += "&lt;";
        break;
      case ">":
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case "'":
        out += "&apos;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}
