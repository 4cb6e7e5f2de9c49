/**
 * What the server's operator socket answers (`dpm status`, `dpm drop`):
 *
 * - `{"op": "status"}`: the status with at most 1000 rows, one JSON line
 *   (older clients, metrics scrapers of the socket).
 * - `{"op": "status", "stream": true, "host"?: A, "limit"?: n}`: the status
 *   header, then every row (or host A's), streamed (see `socket.ts`).
 * - `{"op": "watch", "host"?: A}`: a stream of session events that ends when
 *   the client goes (`dpm status --watch`).
 * - `{"op": "drop", "host": A}` or `{"op": "drop", "proto", "internal",
 *   "remote"}`: `{"dropped": n}` (`dpm drop`).
 *
 * @module
 */

import { formatIPv4, parseAddrPort, parseIPv4 } from "../wire/addr.ts";
import { protoNumber } from "../wire/meta.ts";
import { type LocalHandler, LocalStream } from "./socket.ts";
import { feed } from "./feed.ts";
import type { DropReply, SessionEvent, SessionView, StatusReply } from "./types.ts";

/** The part of the server core the operator socket uses. */
export interface OperatorCore {
  status(limit?: number): StatusReply;
  statusHeader(host?: number): Omit<StatusReply, "shown">;
  rows(o?: { host?: number; limit?: number }): Iterable<SessionView>;
  watch(fn: (e: SessionEvent) => void): () => void;
  drop(
    sel: { host: number } | { proto: number; a: number; pa: number; x: number; px: number },
  ): number;
}

/**
 * The server's operator handler. `changed` runs after a drop changed the
 * table (the state file's commit), before the answer.
 */
export function serverOperator(core: OperatorCore, changed: () => void = () => {}): LocalHandler {
  return (req) => {
    const r = (req ?? {}) as Record<string, unknown>;
    let host: number | undefined;
    if (r.host !== undefined && r.host !== null) {
      const a = typeof r.host === "string" ? parseIPv4(r.host) : null;
      if (a === null) {
        return { error: `Invalid host ${JSON.stringify(r.host)}: want an IPv4 address` };
      }
      host = a;
    }
    switch (r.op) {
      case "status": {
        if (r.stream !== true) return core.status();
        const limit = typeof r.limit === "number" && r.limit >= 0 ? r.limit : undefined;
        const header = core.statusHeader(host);
        return new LocalStream(
          header as unknown as Record<string, unknown>,
          () =>
            core.rows({
              ...(host !== undefined ? { host } : {}),
              ...(limit !== undefined ? { limit } : {}),
            }),
        );
      }
      case "watch": {
        const want = host === undefined ? null : formatIPv4(host);
        const mine = (e: SessionEvent) => want === null || eventHost(e) === want;
        return new LocalStream(
          { op: "watch", ...(want !== null ? { host: want } : {}) },
          (signal) => feed<SessionEvent>((fn) => core.watch(fn), signal, mine),
        );
      }
      case "drop": {
        let reply: DropReply;
        if (host !== undefined) reply = { dropped: core.drop({ host }) };
        else {
          const proto = protoNumber(String(r.proto));
          const i = typeof r.internal === "string" ? parseAddrPort(r.internal) : null;
          // An ICMP remote may come without a port.
          const x = typeof r.remote === "string"
            ? parseAddrPort(r.remote) ??
              (proto === 1 && parseIPv4(r.remote) !== null
                ? { addr: parseIPv4(r.remote)!, port: 0 }
                : null)
            : null;
          if (proto === undefined || !i || !x) {
            return {
              error: "Malformed drop: want host, or proto, internal and remote",
              dropped: 0,
            };
          }
          // ICMP: the port of `internal` is the echo identifier; the remote has none.
          const px = proto === 1 ? 0 : x.port;
          reply = { dropped: core.drop({ proto, a: i.addr, pa: i.port, x: x.addr, px }) };
        }
        if (reply.dropped) changed();
        return reply;
      }
      default:
        return { error: `Unknown operator request ${JSON.stringify(r.op)}` };
    }
  };
}

/** The host an event is about (its internal address). */
function eventHost(e: SessionEvent): string {
  return e.event === "refused" ? e.host : e.internal.slice(0, e.internal.lastIndexOf(":"));
}
