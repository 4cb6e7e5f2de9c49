/**
 * An in-memory {@linkcode UpnpMappings} for the unit tests of the UPnP
 * service: it keeps the contract of `mappings.ts` (one mapping per internal
 * endpoint, owners, exact or any port, expiry) on a plain map, with a small
 * port policy of its own (ports below `minPort` and the `held` ports are
 * refused), so the service can be tested without the session table.
 *
 * @module
 */

import {
  type AddMapping,
  type AddResult,
  type DeleteResult,
  type LinkState,
  NO_LINK,
  type PortMapping,
  type UpnpMappings,
} from "./mappings.ts";

interface Row {
  proto: number;
  r: number;
  p: number;
  a: number;
  pa: number;
  expiresAt: number;
  description: string;
}

/** Options of {@linkcode FakeUpnpMappings}. */
export interface FakeMappingsOptions {
  /** The public address of each host (default: `defaultExternal` for every host). */
  external?: (a: number) => number;
  /** @default 0xcb00710a (203.0.113.10) */
  defaultExternal?: number;
  /** Lowest external port the policy allows. @default 1024 */
  minPort?: number;
  /** Mappings one host may hold. @default 64 */
  perHost?: number;
}

/** The in-memory mappings (see the module documentation). */
export class FakeUpnpMappings implements UpnpMappings {
  readonly #o: FakeMappingsOptions;
  readonly #rows = new Map<string, Row>();
  /** External ports (`proto/r/p`) the gateway holds: refused as not-authorized. */
  readonly held = new Set<string>();
  /** False: every add answers `unsupported`. */
  supported = true;
  /** What `link()` answers. */
  linkState: LinkState = { ...NO_LINK };
  /** Calls that changed something (add, delete), for "nothing changed" checks. */
  changes = 0;

  constructor(o: FakeMappingsOptions = {}) {
    this.#o = o;
  }

  externalAddress(a: number): number {
    return this.#o.external?.(a) ?? this.#o.defaultExternal ?? 0xcb00710a;
  }

  link(): LinkState {
    return { ...this.linkState };
  }

  /** Every live row, for tests. */
  all(now: number): PortMapping[] {
    this.#expire(now);
    return [...this.#rows.values()].map((r) => this.#view(r, now));
  }

  add(req: AddMapping, now: number): AddResult {
    this.#expire(now);
    if (!this.supported) return { ok: false, error: "unsupported", reason: "fake: unsupported" };
    const r = this.externalAddress(req.client);
    const mine = [...this.#rows.values()].find((x) =>
      x.proto === req.proto && x.a === req.client && x.pa === req.internalPort
    );
    const allowed = (p: number) =>
      p >= (this.#o.minPort ?? 1024) && p <= 65535 && !this.held.has(`${req.proto}/${r}/${p}`);
    const free = (p: number) => {
      const o = this.#rows.get(`${req.proto}/${r}/${p}`);
      return !o || o === mine;
    };
    let p = req.externalPort;
    if (!req.any) {
      if (!allowed(p)) return { ok: false, error: "not-authorized", reason: `port ${p} refused` };
      if (!free(p)) return { ok: false, error: "conflict", reason: `port ${p} is taken` };
    } else if (p === 0 || !allowed(p) || !free(p)) {
      p = 0;
      for (let c = Math.max(this.#o.minPort ?? 1024, 1); c <= 65535 && p === 0; c++) {
        if (allowed(c) && free(c)) p = c;
      }
      if (p === 0) return { ok: false, error: "no-resources", reason: "no port left" };
    }
    if (!mine) {
      const n = [...this.#rows.values()].filter((x) => x.a === req.client).length;
      if (n >= (this.#o.perHost ?? 64)) {
        return { ok: false, error: "no-resources", reason: "host budget used" };
      }
    } else this.#rows.delete(`${mine.proto}/${mine.r}/${mine.p}`);
    const row: Row = {
      proto: req.proto,
      r,
      p,
      a: req.client,
      pa: req.internalPort,
      expiresAt: now + req.lifetime * 1000,
      description: req.description,
    };
    this.#rows.set(`${req.proto}/${r}/${p}`, row);
    this.changes++;
    return { ok: true, mapping: this.#view(row, now) };
  }

  delete(client: number, proto: number, externalPort: number, now: number): DeleteResult {
    this.#expire(now);
    const k = `${proto}/${this.externalAddress(client)}/${externalPort}`;
    const row = this.#rows.get(k);
    if (!row) return "not-found";
    if (row.a !== client) return "not-yours";
    this.#rows.delete(k);
    this.changes++;
    return "deleted";
  }

  lookup(client: number, proto: number, externalPort: number, now: number): PortMapping | null {
    this.#expire(now);
    const row = this.#rows.get(`${proto}/${this.externalAddress(client)}/${externalPort}`);
    return row && row.a === client ? this.#view(row, now) : null;
  }

  list(client: number, now: number): PortMapping[] {
    this.#expire(now);
    return [...this.#rows.values()]
      .filter((x) => x.a === client)
      .sort((x, y) => x.p - y.p || x.proto - y.proto)
      .map((x) => this.#view(x, now));
  }

  #view(x: Row, now: number): PortMapping {
    return {
      proto: x.proto,
      externalAddr: x.r,
      externalPort: x.p,
      internalClient: x.a,
      internalPort: x.pa,
      leaseRemaining: Math.max(1, Math.ceil((x.expiresAt - now) / 1000)),
      description: x.description,
    };
  }

  #expire(now: number): void {
    for (const [k, x] of this.#rows) if (x.expiresAt <= now) this.#rows.delete(k);
  }
}
