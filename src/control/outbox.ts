/**
 * The control client's request datagrams: version 3 batches up to
 * {@link MAX_ENTRIES} requests per datagram (`batch.ts`), version 2 sends
 * each request alone (`proto.ts`). Either way every datagram carries the
 * client's nonce half (`salt`), the host's address and the last cookie.
 * When requests go and again is `client.ts`'s (and `retransmit.ts`'s).
 *
 * @module
 */

import { encodeRequest, NONCE_LEN, REQUEST_LEN } from "./proto.ts";
import {
  ENTRY_LEN,
  type EntryRequest,
  HEADER_LEN,
  MAX_DATAGRAM,
  MAX_ENTRIES,
  newEntry,
  writeEntry,
  writeRequestHeader,
} from "./batch.ts";

/**
 * How the client reaches the server: a UDP socket (`udpLink` in
 * `driver/run.ts`, over `linux/udp.ts`), or
 * an in-memory link to a ServerCore in tests (`testing/fixtures.ts`).
 */
export interface DatagramLink {
  /** Queues one datagram to the server (the bytes are copied). */
  send(data: Uint8Array, len: number): void;
  /** Sends what `send` queued. */
  flush(): void;
  /** Set by the client: called with every datagram from the server. */
  onReceive: ((data: Uint8Array) => void) | null;
  close(): void;
}

/** One request as it goes out: its operation, nonce half, proposal, lifetime and whom it is about. */
export interface OutRequest {
  op: number;
  /** The nonce's low half (the high half is the client's `salt`). */
  seq: number;
  /** The proposed gateway port (version 3 only), 0: none. */
  pg: number;
  lifetime: number;
  ask: { proto: number; replaceable: boolean; pa: number; x: number; px: number };
}

/** Builds and sends the request datagrams of one client. */
export class Outbox {
  readonly #link: DatagramLink;
  readonly #salt: number;
  readonly #local: number;
  /** Called once per datagram sent (the client's counter). */
  readonly #sent: () => void;
  #dgram = 1;
  readonly #out = new Uint8Array(MAX_DATAGRAM);
  #count = 0;
  readonly #entry: EntryRequest = newEntry();

  constructor(link: DatagramLink, salt: number, local: number, sent: () => void) {
    this.#link = link;
    this.#salt = salt;
    this.#local = local;
    this.#sent = sent;
  }

  /** Sends `r` alone, as a version-2 request. */
  single(r: OutRequest, cookie: Uint8Array | null): void {
    const q = r.ask;
    const nonce = new Uint8Array(NONCE_LEN);
    const dv = new DataView(nonce.buffer);
    dv.setUint32(0, this.#salt);
    dv.setUint32(4, r.seq);
    const bytes = encodeRequest({
      op: r.op,
      nonce,
      proto: q.proto,
      replaceable: q.replaceable,
      internalAddr: this.#local,
      internalPort: q.pa,
      remoteAddr: q.x,
      remotePort: q.px,
      lifetime: r.lifetime,
      ...(cookie ? { cookie } : {}),
    });
    this.#link.send(bytes, REQUEST_LEN);
    this.#sent();
  }

  /** Puts `r` in the version-3 datagram being built; a full one is sent. */
  add(r: OutRequest, cookie: Uint8Array | null): void {
    const q = r.ask;
    const e = this.#entry;
    e.op = r.op;
    e.proto = q.proto;
    e.replaceable = q.replaceable;
    e.nonceHi = this.#salt;
    e.nonceLo = r.seq;
    e.remoteAddr = q.x;
    e.internalPort = q.pa;
    e.remotePort = q.px;
    e.gatewayPort = r.pg;
    e.lifetime = r.lifetime;
    writeEntry(this.#out, this.#count++, e);
    if (this.#count === MAX_ENTRIES) this.seal(cookie);
  }

  /** Sends the datagram being built (if it holds any request). */
  seal(cookie: Uint8Array | null): void {
    const n = this.#count;
    if (n === 0) return;
    this.#count = 0;
    const d = this.#dgram;
    this.#dgram = d >= 0x3fffffff ? 1 : d + 1;
    writeRequestHeader(this.#out, this.#salt, d, n, this.#local, cookie);
    this.#link.send(this.#out, HEADER_LEN + n * ENTRY_LEN);
    this.#sent();
  }
}
