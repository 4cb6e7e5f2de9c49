/**
 * The PCP (RFC 6887) and NAT-PMP (RFC 6886) server of `dpm server`: UDP 5351
 * on the LAN address, answered from the same session table and allocation
 * policy as dpm's own protocol (`docs/pcp.md`).
 *
 * - NAT-PMP opcode 0 answers the host's public address (its paired address,
 *   else its home address); PCP ANNOUNCE answers the epoch.
 * - NAT-PMP map and PCP MAP create an inbound mapping (`SessionTable.map`):
 *   `R:p -> a:pa` from every remote, with lifetime, renewal (the same
 *   request again) and delete (lifetime 0).
 * - PCP PEER is one of dpm's own sessions toward one remote (`reserve`,
 *   replaceable), reserved `direct`: the asking host may have no driver, so
 *   its packets reach the gateway addressed to the remote and inbound ones
 *   go back from the remote's own pair (`table/allocate.ts`, "Direct sessions"; a
 *   session a driver already holds stays the driver's).
 * - Checks, in order: the source is a unicast LAN host and not the gateway
 *   (`src/policy/hosts.ts`; else silence, counted in `notHost`), the
 *   datagram decodes, PCP's client address is the datagram's source
 *   (ADDRESS_MISMATCH), the host's request rate (a limiter of these two
 *   protocols' own, `--pcp-rate-limit`, apart from dpm's protocol's), then
 *   the mapping policy (`src/policy/mappings.ts`, the same as dpm's MAP):
 *   ownership (PCP renews or deletes only what PCP made with the same nonce,
 *   NAT-PMP only what NAT-PMP made; neither touches dpm's sessions and
 *   mappings), the port rules, the gateway's own ports, the budgets
 *   (`--pcp-max-per-host`, `--pcp-max-share`). Refusals that are not a
 *   verified host's own business are answered within the same per-source
 *   refusal budget as dpm's protocol.
 * - Neither protocol can prove the source address (no cookie): docs/pcp.md,
 *   "What a forger can still do", says what that leaves and bounds it.
 * - Epoch time: seconds since this server started, so a client sees a
 *   restart (RFC 6886 section 3.6, RFC 6887 section 8.5).
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import type { RateLimiter } from "../control/ratelimit.ts";
import { Result } from "../control/result.ts";
import { type Grant, Owner, type SessionTable } from "../table/table.ts";
import type { LanHosts } from "../policy/hosts.ts";
import type { MappingPolicy, Outcome } from "../policy/mappings.ts";
import {
  decodeRequest,
  encodePcpResponse,
  NATPMP_VERSION,
  natPmpAddressResponse,
  natPmpErrorResponse,
  natPmpMapResponse,
  type NatPmpRequest,
  NatPmpResult,
  pcpErrorResponse,
  PcpOp,
  PcpOption,
  type PcpRequest,
  PcpResult,
} from "./codec.ts";

/** Lifetime of a short-lived PCP error (resources), seconds (RFC 6887 section 7.4). */
export const SHORT_ERROR_LIFETIME = 30;
/** Lifetime of a long-lived PCP error (policy, malformed), seconds. */
export const LONG_ERROR_LIFETIME = 1800;

/** What the service needs from the server core. */
export interface PcpContext {
  table: SessionTable;
  /** Only unicast LAN hosts, never the gateway, are answered. */
  hosts: LanHosts;
  /** Grants, renews and deletes mappings and PEER sessions (the same as dpm's MAP). */
  policy: MappingPolicy;
  /** When the server's epoch began (ms): epoch time counts from it. */
  epochStart: () => number;
  /** The host's request rate for these two protocols (their own, not dpm's protocol's). */
  limiter: RateLimiter;
  /** The per-source budget of refusals that are not a verified host's own business. */
  refusals: RateLimiter;
  /**
   * False when the data path cannot forward mappings and direct sessions (a
   * queue path without its steering table): MAP and PEER get UNSUPP_OPCODE.
   */
  mapSupported: () => boolean;
  /** PEER's remote must be outside (not the LAN, not G). */
  remoteIsOutside: (x: number) => boolean;
  /** Refusal log (rate-limited by the caller). */
  log: (line: string) => void;
}

/** dpm's result code as PCP's. */
export function pcpResultOf(r: number): number {
  switch (r) {
    case Result.OK:
    case Result.NO_SUCH_SESSION:
      return PcpResult.SUCCESS;
    case Result.NO_RESOURCES:
    case Result.RATE_LIMITED:
      return PcpResult.NO_RESOURCES;
    case Result.QUOTA_EXCEEDED:
      return PcpResult.USER_EX_QUOTA;
    case Result.CONFLICT:
      return PcpResult.CANNOT_PROVIDE_EXTERNAL;
    case Result.UNSUPPORTED_PROTOCOL:
      return PcpResult.UNSUPP_PROTOCOL;
    case Result.UNSUPPORTED_OPCODE:
      return PcpResult.UNSUPP_OPCODE;
    case Result.NOT_AUTHORIZED:
    case Result.BAD_REMOTE:
      return PcpResult.NOT_AUTHORIZED;
    default:
      return PcpResult.MALFORMED_REQUEST;
  }
}

/** dpm's result code as NAT-PMP's. */
export function natPmpResultOf(r: number): number {
  switch (r) {
    case Result.OK:
    case Result.NO_SUCH_SESSION:
      return NatPmpResult.SUCCESS;
    case Result.NO_RESOURCES:
    case Result.RATE_LIMITED:
    case Result.QUOTA_EXCEEDED:
    case Result.CONFLICT:
      return NatPmpResult.NO_RESOURCES;
    case Result.UNSUPPORTED_OPCODE:
      return NatPmpResult.UNSUPP_OPCODE;
    default:
      return NatPmpResult.NOT_AUTHORIZED;
  }
}

/** PCP errors whose cause lasts (RFC 6887 section 7.4): answered with the long lifetime. */
function errorLifetime(pcpResult: number): number {
  return pcpResult === PcpResult.NO_RESOURCES || pcpResult === PcpResult.USER_EX_QUOTA ||
      pcpResult === PcpResult.CANNOT_PROVIDE_EXTERNAL || pcpResult === PcpResult.NETWORK_FAILURE
    ? SHORT_ERROR_LIFETIME
    : LONG_ERROR_LIFETIME;
}

/** The PCP and NAT-PMP request handler (no sockets: tests call `handle` with bytes). */
export class PcpService {
  readonly #c: PcpContext;
  /** Answers sent, by protocol and result code (for tests and status). */
  readonly pcpResults = new Float64Array(14);
  readonly natPmpResults = new Float64Array(6);
  /** Datagrams dropped unanswered because their source is not a LAN host (the gateway's own, ...). */
  notHost = 0;

  constructor(ctx: PcpContext) {
    this.#c = ctx;
  }

  /** Seconds since the server's epoch began (both protocols' epoch time). */
  epochTime(now: number): number {
    return Math.max(0, Math.floor((now - this.#c.epochStart()) / 1000)) >>> 0;
  }

  /** Handles one datagram from `src` (host order); returns the reply or null. */
  handle(msg: Uint8Array, src: number, now: number): Uint8Array | null {
    const c = this.#c;
    if (!c.hosts.isHost(src)) {
      // Only the LAN's own hosts are served: never the gateway's addresses (a
      // forged source), the prefix's network or broadcast address, or outsiders.
      this.notHost++;
      return null;
    }
    const epoch = this.epochTime(now);
    const d = decodeRequest(msg);
    if (!d.ok) {
      if (!d.answer || !c.refusals.allow(src, now)) return null;
      c.log(
        `refused a ${d.version === NATPMP_VERSION ? "NAT-PMP" : "PCP"} request from ${
          formatIPv4(src)
        }: ${d.reason}`,
      );
      if (d.version === NATPMP_VERSION) {
        this.natPmpResults[d.result]!++;
        return natPmpErrorResponse(msg[1]!, d.result, epoch);
      }
      this.pcpResults[d.result]!++;
      return pcpErrorResponse(msg, d.result, errorLifetime(d.result), epoch);
    }
    return d.req.kind === "natpmp"
      ? this.#natPmp(d.req, src, now, epoch)
      : this.#pcp(d.req, msg, src, now, epoch);
  }

  // ---------------------------------------------------------------- NAT-PMP

  #natPmp(req: NatPmpRequest, src: number, now: number, epoch: number): Uint8Array | null {
    const c = this.#c;
    const t = c.table;
    if (!c.limiter.allow(src, now)) {
      if (!c.refusals.allow(src, now)) return null;
      return this.#natPmpAnswer(req, NatPmpResult.NO_RESOURCES, epoch, 0, 0);
    }
    if (req.op === 0) {
      this.natPmpResults[0]!++;
      return natPmpAddressResponse(0, epoch, t.externalAddressOf(src));
    }
    if (!c.mapSupported()) return this.#natPmpAnswer(req, NatPmpResult.UNSUPP_OPCODE, epoch, 0, 0);
    const who = { owner: Owner.NATPMP, a: src };
    if (req.lifetime === 0) {
      // Delete one mapping, or (internal port 0) every NAT-PMP mapping of the host for the protocol.
      if (req.internalPort === 0) {
        c.policy.unmapAll(who, req.proto, now);
        return this.#natPmpAnswer(req, NatPmpResult.SUCCESS, epoch, 0, 0);
      }
      const o = c.policy.unmap(who, req.proto, req.internalPort, now);
      return this.#natPmpAnswer(req, natPmpResultOf(o.result), epoch, 0, 0);
    }
    if (req.internalPort === 0) {
      return this.#natPmpAnswer(req, NatPmpResult.NOT_AUTHORIZED, epoch, 0, 0);
    }
    const o = c.policy.map(who, {
      proto: req.proto,
      pa: req.internalPort,
      p: req.externalPort,
      r: 0,
      lifetime: req.lifetime,
      exact: false,
    }, now);
    if (o.result !== Result.OK) {
      return this.#natPmpAnswer(req, natPmpResultOf(o.result), epoch, 0, 0);
    }
    return this.#natPmpAnswer(req, NatPmpResult.SUCCESS, epoch, o.grant!.p, o.grant!.lifetime);
  }

  #natPmpAnswer(
    req: NatPmpRequest,
    result: number,
    epoch: number,
    p: number,
    lifetime: number,
  ): Uint8Array {
    this.natPmpResults[result]!++;
    if (req.op === 0) return natPmpAddressResponse(result, epoch, 0);
    return natPmpMapResponse(req.op, result, epoch, req.internalPort, p, lifetime);
  }

  // ---------------------------------------------------------------- PCP

  #pcp(
    req: PcpRequest,
    msg: Uint8Array,
    src: number,
    now: number,
    epoch: number,
  ): Uint8Array | null {
    const c = this.#c;
    const err = (result: number, budgeted: boolean, why: string): Uint8Array | null => {
      if (budgeted && !c.refusals.allow(src, now)) return null;
      c.log(`refused a PCP ${opName(req.op)} from ${formatIPv4(src)}: ${why}`);
      return this.#pcpError(msg, result, epoch);
    };
    if (req.clientV4 !== src) {
      return err(PcpResult.ADDRESS_MISMATCH, true, "client address is not the source");
    }
    if (!c.limiter.allow(src, now)) return err(PcpResult.NO_RESOURCES, true, "rate limited");
    if (req.op === PcpOp.ANNOUNCE) {
      this.pcpResults[0]!++;
      return encodePcpResponse({ op: 0, result: 0, lifetime: 0, epoch });
    }
    for (const o of req.options) {
      if (o.code === PcpOption.THIRD_PARTY || o.code === PcpOption.FILTER) {
        return err(PcpResult.UNSUPP_OPTION, false, `option ${o.code} not supported`);
      }
    }
    if (!c.mapSupported()) {
      return err(PcpResult.UNSUPP_OPCODE, false, "the data path forwards no mappings");
    }
    const who = { owner: Owner.PCP, a: src, nonce: req.nonce.slice() };
    const answer = (result: number, g: Grant | null, lifetime: number) => {
      this.pcpResults[result]!++;
      return encodePcpResponse({
        op: req.op,
        result,
        lifetime,
        epoch,
        nonce: req.nonce,
        proto: req.proto,
        internalPort: req.internalPort,
        externalPort: g ? g.p : req.externalPort,
        externalAddr: g ? g.r : req.externalAddr,
        remotePort: req.remotePort,
        remoteAddr: req.remoteAddr ?? 0,
        options: req.preferFailure
          ? [{ code: PcpOption.PREFER_FAILURE, data: new Uint8Array(0) }]
          : [],
      });
    };
    if (req.op === PcpOp.MAP && req.lifetime === 0 && req.internalPort === 0) {
      // Delete all (RFC 6887 section 15): every PCP mapping of this client for the
      // protocol (0: every protocol) made with this nonce.
      const n = c.policy.unmapAll(who, req.proto, now);
      c.log(`PCP MAP delete-all from ${formatIPv4(src)}: ${n} mapping(s) deleted`);
      this.pcpResults[PcpResult.SUCCESS]!++;
      return encodePcpResponse({
        op: req.op,
        result: PcpResult.SUCCESS,
        lifetime: 0,
        epoch,
        nonce: req.nonce,
        proto: req.proto,
        internalPort: 0,
        externalPort: 0,
        externalAddr: 0,
        remotePort: 0,
        remoteAddr: 0,
        options: [],
      });
    }
    if (req.proto !== 6 && req.proto !== 17) {
      return err(PcpResult.UNSUPP_PROTOCOL, false, `protocol ${req.proto}`);
    }
    const peer = req.op === PcpOp.PEER;
    const x = req.remoteAddr ?? 0;
    let o: Outcome;
    if (req.lifetime === 0) {
      o = peer
        ? c.policy.unpeer(
          who,
          { proto: req.proto, pa: req.internalPort, x, px: req.remotePort },
          now,
        )
        : c.policy.unmap(who, req.proto, req.internalPort, now);
      if (o.result === Result.OK) return answer(PcpResult.SUCCESS, null, 0);
    } else {
      if (peer && !c.remoteIsOutside(x)) {
        return err(PcpResult.NOT_AUTHORIZED, false, `remote ${formatIPv4(x)} is not outside`);
      }
      o = peer
        ? c.policy.peer(who, {
          proto: req.proto,
          pa: req.internalPort,
          x,
          px: req.remotePort,
          lifetime: req.lifetime,
        }, now)
        : c.policy.map(who, {
          proto: req.proto,
          pa: req.internalPort,
          p: req.externalPort,
          r: req.externalAddr,
          lifetime: req.lifetime,
          exact: req.preferFailure,
        }, now);
      if (o.result === Result.OK) {
        return answer(PcpResult.SUCCESS, o.grant, o.grant!.lifetime);
      }
    }
    // The policy logged the refusal with its reason.
    return this.#pcpError(msg, pcpResultOf(o.result), epoch);
  }

  #pcpError(msg: Uint8Array, result: number, epoch: number): Uint8Array | null {
    this.pcpResults[result]!++;
    return pcpErrorResponse(msg, result, errorLifetime(result), epoch);
  }
}

function opName(op: number): string {
  return op === PcpOp.MAP ? "MAP" : op === PcpOp.PEER ? "PEER" : "ANNOUNCE";
}
