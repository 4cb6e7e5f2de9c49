/**
 * A netfilter queue reader, spoken directly over an `AF_NETLINK` /
 * `NETLINK_NETFILTER` socket through Deno FFI (no libnetfilter_queue).
 *
 * ## Theory of operation
 *
 * iptables' `NFQUEUE --queue-num N` target hands each matching packet to the
 * socket bound to queue N, one netlink message per packet, and parks the
 * packet in the kernel until user space returns a verdict for its id. This
 * module:
 *
 * 1. waits for packets with `poll(2)` declared `nonblocking` (it runs on a
 *    worker thread, so Deno's event loop keeps running: timers, the control
 *    socket);
 * 2. reads every waiting packet with `recvmmsg(2)` and `MSG_DONTWAIT` into
 *    buffers allocated once at {@linkcode NfQueue.open};
 * 3. hands each packet to a handler on a view into those buffers; the
 *    handler may rewrite bytes in place;
 * 4. answers with as few `sendmsg(2)` calls as possible: one
 *    `NFQNL_MSG_VERDICT_BATCH` ("accept every id up to N") covers a run of
 *    plain accepts, individual verdicts carry payloads (gathered by iovecs
 *    straight from the receive buffers, no copy) and drops, and all verdict
 *    messages of one read go out in one `sendmsg`.
 *
 * Ordering rules for batch verdicts (the kernel applies "every id <= N" to
 * all packets still queued, in id order):
 *
 * - A payload verdict first closes the pending run of accepts (emits its
 *   batch verdict), so accepted packets are not overtaken by a rewritten
 *   one: the kernel re-injects in verdict order.
 * - A drop verdict does not close the run: the run's batch is emitted later
 *   and the dropped id is gone from the kernel's list by then.
 * - A held packet (handler returned HOLD) must never be covered by a batch.
 *   While any packet is held, an accept for a later id is sent as an
 *   individual verdict; once every older held packet is resolved with
 *   {@linkcode NfQueue.verdict}, batching resumes.
 *
 * Byte order: netlink and attribute headers are host order; `nfgenmsg.res_id`
 * and every NFQA value are big endian.
 *
 * Requires `--allow-ffi` and root (CAP_NET_ADMIN) to open a queue.
 *
 * @module
 */

import { Meta, Verdict } from "../src/wire/meta.ts";
import {
  addressOf,
  EAGAIN,
  EINTR,
  ENOBUFS,
  EPERM,
  errno,
  HOST_LITTLE_ENDIAN as LE,
  IOVEC_SIZE,
  libc,
  MMsgHdr,
  mmsgSlots,
  MSG_DONTWAIT,
  MSG_TRUNC,
  MsgHdr,
  OsError,
  setU64,
  strerror,
} from "./libc.ts";
import { FdWaiter, serveLoop } from "./waiter.ts";
import {
  align4 as align4_,
  attrLen as attrLen_,
  attrType as attrType_,
  type MessageHandler,
  msgLen as msgLen_,
  NETLINK_NETFILTER,
  NetlinkParseError,
  NetlinkSocket,
  Nfgen,
  NFNL_SUBSYS_QUEUE,
  nfnlType,
  NFPROTO_IPV4,
  NFPROTO_UNSPEC,
  Nla,
  NLA_MAX_LEN,
  NlBuilder,
  NLM_F_ACK,
  NLM_F_REQUEST,
  Nlmsg,
  NLMSG_ERROR,
  NLMSG_OVERRUN,
  putAttrHeader,
  putMsgHeader,
  putNfgen,
} from "./netlink.ts";

/** `NF_DROP`: discard the packet. */
export const VERDICT_DROP = 0;
/** `NF_ACCEPT`: let the packet continue through the stack. */
export const VERDICT_ACCEPT = 1;

/** Options of {@linkcode NfQueue.open}. */
export interface NfQueueOptions {
  /** The queue number, as in `NFQUEUE --queue-num N` (0-65535). */
  queue: number;
  /**
   * Packets the kernel keeps waiting for a verdict (`NFQA_CFG_QUEUE_MAXLEN`).
   * @default {16384}
   */
  maxLen?: number;
  /**
   * Bytes of each packet copied to user space. A payload verdict replaces the
   * whole packet, so this must cover the packet. Clamped to 65531, the
   * kernel's limit (`0xffff` minus the attribute header).
   * @default {65531}
   */
  copyRange?: number;
  /**
   * `NFQA_CFG_F_FAIL_OPEN`: when the queue is full, accept packets instead
   * of dropping them. Off by default: an overflow then causes loss, which
   * transports recover from, instead of untranslated packets leaking.
   * @default {false}
   */
  failOpen?: boolean;
  /**
   * `NFQA_CFG_F_GSO`: queue GSO/GRO super-packets whole (up to 64 KB) instead
   * of having the kernel segment them to MTU size first, and leave partial
   * checksums as they are. The handler then gets `NFQA_SKB_INFO` bits
   * ({@link Meta.PARTIAL_CHECKSUM}, {@link Meta.GSO}) and must keep
   * such packets' checksums right itself when it rewrites them.
   * @default {true}
   */
  gso?: boolean;
  /**
   * Socket receive buffer in bytes (`SO_RCVBUFFORCE`, falling back to
   * `SO_RCVBUF`).
   * @default {16777216}
   */
  rcvbuf?: number;
  /**
   * Packets read per `recvmmsg` call (its `vlen`); also the number of
   * receive buffers allocated.
   * @default {64}
   */
  batch?: number;
}

/**
 * Decides one packet. `pkt` is a view into a reused buffer (the IPv4 packet
 * from its first header byte); `id` is the kernel's packet id; `hook` the
 * netfilter hook (0 PREROUTING, 1 INPUT, 2 FORWARD, 3 OUTPUT, 4 POSTROUTING);
 * `skbInfo` the `NFQA_SKB_INFO` bits (`SKB_INFO_*`, 0 when absent); `mark`
 * the packet's mark (`NFQA_MARK`, 0 when absent).
 * Returns one of {@linkcode Verdict}.
 */
export type PacketHandler = (
  pkt: Uint8Array,
  id: number,
  hook: number,
  skbInfo: number,
  mark: number,
) => number;

/** Counters of one queue. */
export interface NfQueueStats {
  /** Packets handed to the handler. */
  packets: number;
  /** `recvmmsg` calls that returned at least one message. */
  batches: number;
  /** `sendmsg` calls carrying verdicts. */
  verdictSends: number;
  /** Times the socket reported `ENOBUFS`: the kernel dropped packet messages. */
  enobufs: number;
  /** Malformed messages, netlink error answers, failed sends, handler exceptions. */
  errors: number;
  /** Packets longer than the copy range (only part of them was read). */
  truncated: number;
  /**
   * Truncated packets the handler rewrote: dropped, because a payload
   * verdict replaces the whole packet and would cut it.
   */
  truncatedDrops: number;
  /** Packets queued as GSO/GRO super-packets (`NFQA_SKB_GSO`). */
  gso: number;
}

// nfnetlink_queue (linux/netfilter/nfnetlink_queue.h). The framing
// (netlink and nfnetlink headers, attributes, the socket and its
// acknowledgements) is linux/netlink.ts's.
/** `enum nfqnl_msg_types`, as full message types of subsystem `NFNL_SUBSYS_QUEUE`. */
const NFQNL_MSG = {
  PACKET: nfnlType(NFNL_SUBSYS_QUEUE, 0),
  VERDICT: nfnlType(NFNL_SUBSYS_QUEUE, 1),
  CONFIG: nfnlType(NFNL_SUBSYS_QUEUE, 2),
  VERDICT_BATCH: nfnlType(NFNL_SUBSYS_QUEUE, 3),
} as const;
/** `enum nfqnl_attr_type`: the packet and verdict attributes used here. */
const NFQA = {
  PACKET_HDR: 1,
  VERDICT_HDR: 2,
  MARK: 3,
  PAYLOAD: 10,
  CAP_LEN: 13,
  SKB_INFO: 14,
} as const;
/** `struct nfqnl_msg_packet_hdr` (packed, 7 bytes): be32 id, be16 hw proto, u8 hook. */
const PacketHdr = { ID: 0, HW_PROTO: 4, HOOK: 6, SIZE: 7 } as const;
/** `enum nfqnl_attr_config`: the configuration attributes. */
const NFQA_CFG = { CMD: 1, PARAMS: 2, QUEUE_MAXLEN: 3, MASK: 4, FLAGS: 5 } as const;
/** `enum nfqnl_msg_config_cmds`: the commands of `NFQA_CFG.CMD`. */
const NFQNL_CFG_CMD = { BIND: 1, UNBIND: 2, PF_BIND: 3, PF_UNBIND: 4 } as const;
/** `NFQA_CFG_F_*`: the bits of `NFQA_CFG.FLAGS` (and `.MASK`). */
const NFQA_CFG_F = { FAIL_OPEN: 0x1, GSO: 0x4 } as const;
/** `enum nfqnl_config_mode`: copy the whole packet (up to the copy range). */
const NFQNL_COPY_PACKET = 2;
// Module-local names for what the per-packet walks use: V8 checks an
// imported binding for initialisation at every use, a local const it does not.
const align4 = align4_;
const attrLen = attrLen_;
const attrType = attrType_;
const msgLen = msgLen_;
/** Where a queue message's attributes start: after nlmsghdr and nfgenmsg. */
const ATTRS_AT = Nlmsg.SIZE + Nfgen.SIZE;
/** An attribute's header size, as a module-local number for the per-packet walk. */
const NLA_HDRLEN = Nla.SIZE;
/** The kernel's copy range limit: the payload attribute length is a u16. */
const MAX_COPY_RANGE = NLA_MAX_LEN - Nla.SIZE;

/**
 * Bytes before the payload in a packet message: nlmsghdr, nfgenmsg and the
 * metadata attributes (packet header, mark, timestamp, interfaces, hardware
 * address, conntrack info, uid/gid...). Generous: a truncated read is an error.
 */
const RX_OVERHEAD = 1024;
/**
 * One verdict message's fixed part: nlmsghdr + nfgenmsg + NFQA.VERDICT_HDR
 * (4 + 8), then, for a payload verdict, the NFQA.PAYLOAD attribute header.
 */
const VERDICT_MSG_SIZE = Nlmsg.SIZE + Nfgen.SIZE + Nla.SIZE + 8;
const VERDICT_HDR_SLOT = VERDICT_MSG_SIZE + Nla.SIZE;
/** Linux accepts at most UIO_MAXIOV iovecs per sendmsg. */
const UIO_MAXIOV = 1024;
/** Bytes per verdict sendmsg; the socket's send buffer is sized above it. */
const MAX_SEND_BYTES = 1 << 20;

const align8 = (n: number) => (n + 7) & ~7;

/** True when packet id `a` comes after `b` in the kernel's wrapping u32 sequence. */
function idAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

/**
 * One netfilter queue, bound to this process. Single-threaded: call
 * {@linkcode wait}, {@linkcode drain}, {@linkcode verdict} and
 * {@linkcode flush} from the same event loop, one `wait` at a time.
 *
 * @example
 * ```ts ignore
 * using q = NfQueue.open({ queue: 0 });
 * while (running) {
 *   if (await q.wait(1000)) q.drain((pkt) => Verdict.ACCEPT);
 * }
 * ```
 */
export class NfQueue {
  /** The queue number. */
  readonly queue: number;
  /** Counters, updated in place. */
  readonly stats: NfQueueStats = {
    packets: 0,
    batches: 0,
    verdictSends: 0,
    enobufs: 0,
    errors: 0,
    truncated: 0,
    truncatedDrops: 0,
    gso: 0,
  };
  /** The last error seen (netlink error answer or failed send), for diagnostics. */
  lastError = "";

  readonly #nl: NetlinkSocket;
  /** The socket's descriptor, for the packet path's recvmmsg and sendmsg. */
  #fd: number;
  readonly #waiter: FdWaiter;
  #closed = false;
  /** The first exception a handler threw during the current drain. */
  #thrown: unknown = null;

  // Receive side: `batch` slots of `slotSize` bytes, one iovec and one
  // mmsghdr per slot, all pointing into `#rx`.
  readonly #batch: number;
  readonly #slotSize: number;
  readonly #rx: Uint8Array;
  readonly #rxDv: DataView;
  readonly #rxAddr: number;
  readonly #mmsg: Uint8Array;
  readonly #mmsgDv: DataView;
  /** The iovecs the mmsghdrs point at: referenced so they live as long. */
  readonly #rxIov: Uint8Array;
  readonly #rxPkt = new PacketFields();

  // Send side: verdict headers written into `#txHdr`, gathered with
  // `#txIov` (headers, payloads in place, padding from `#zero`).
  readonly #txMaxMsgs: number;
  readonly #txHdr: Uint8Array;
  readonly #txHdrDv: DataView;
  readonly #txHdrAddr: number;
  readonly #txIov: Uint8Array;
  readonly #txIovDv: DataView;
  readonly #txMsg: Uint8Array;
  readonly #txMsgDv: DataView;
  readonly #zero: Uint8Array;
  readonly #zeroAddr: number;
  #txMsgs = 0;
  #txIovs = 0;
  #txBytes = 0;
  /** Caller-owned payloads of held verdicts: kept alive until sent. */
  #keep: Uint8Array[] = [];

  // Batching state: the open run of plain accepts, and held ids.
  #runOpen = false;
  #runMax = 0;
  readonly #held = new Set<number>();
  /** Held ids in the order they came (the kernel's id order): the oldest is found lazily. */
  #heldOrder: number[] = [];
  #heldHead = 0;

  private constructor(
    nl: NetlinkSocket,
    waiter: FdWaiter,
    queue: number,
    batch: number,
    copyRange: number,
  ) {
    this.#nl = nl;
    const fd = nl.fd;
    this.#fd = fd;
    this.#waiter = waiter;
    this.queue = queue;
    this.#batch = batch;
    this.#slotSize = align8(copyRange + RX_OVERHEAD);
    const rx = mmsgSlots(batch, this.#slotSize);
    this.#rx = rx.data;
    this.#rxDv = new DataView(this.#rx.buffer);
    this.#rxAddr = addressOf(this.#rx);
    this.#mmsg = rx.mmsg;
    this.#mmsgDv = new DataView(this.#mmsg.buffer);
    // Keep the iovec array reachable for as long as the mmsghdrs point at it.
    this.#rxIov = rx.iov;

    this.#txMaxMsgs = Math.min(batch + 32, Math.floor(UIO_MAXIOV / 3));
    this.#txHdr = new Uint8Array(this.#txMaxMsgs * VERDICT_HDR_SLOT);
    this.#txHdrDv = new DataView(this.#txHdr.buffer);
    this.#txHdrAddr = addressOf(this.#txHdr);
    this.#txIov = new Uint8Array(this.#txMaxMsgs * 3 * IOVEC_SIZE);
    this.#txIovDv = new DataView(this.#txIov.buffer);
    this.#txMsg = new Uint8Array(MsgHdr.SIZE);
    this.#txMsgDv = new DataView(this.#txMsg.buffer);
    setU64(this.#txMsgDv, MsgHdr.IOV, addressOf(this.#txIov));
    this.#zero = new Uint8Array(4);
    this.#zeroAddr = addressOf(this.#zero);
  }

  /**
   * Opens a netlink socket, binds it to queue `opts.queue` and configures
   * packet copy, queue length and flags. Requires `--allow-ffi` and root.
   *
   * @throws {Error} when not root, when another process holds the queue, or
   * when the kernel refuses a setting; the socket is closed first.
   */
  static open(opts: NfQueueOptions): NfQueue {
    const queue = opts.queue;
    if (!Number.isInteger(queue) || queue < 0 || queue > 65535) {
      throw new RangeError(`Queue number "${queue}" is not in 0-65535`);
    }
    const batch = opts.batch ?? 64;
    if (!Number.isInteger(batch) || batch < 1 || batch > 1024) {
      throw new RangeError(`Batch "${batch}" is not in 1-1024`);
    }
    const copyRange = Math.min(opts.copyRange ?? MAX_COPY_RANGE, MAX_COPY_RANGE);
    if (!Number.isInteger(copyRange) || copyRange < 20) {
      throw new RangeError(`Copy range "${opts.copyRange}" is below an IPv4 header`);
    }
    const maxLen = opts.maxLen ?? 16384;
    // Packet messages arrive unasked: the socket must not take their
    // overflow for a lost answer while the queue is configured.
    const nl = NetlinkSocket.open(NETLINK_NETFILTER, {
      rcvbuf: opts.rcvbuf ?? 16 << 20,
      sndbuf: 2 * MAX_SEND_BYTES,
      unsolicited: true,
    });
    let waiter: FdWaiter | null = null;
    try {
      waiter = FdWaiter.open(nl.fd, "NfQueue");
      const q = new NfQueue(nl, waiter, queue, batch, copyRange);
      q.#configure(copyRange, maxLen, opts.failOpen ?? false, opts.gso ?? true);
      return q;
    } catch (e) {
      if (waiter) waiter.close(() => nl.close());
      else nl.close();
      throw e;
    }
  }

  /** Sends the configuration messages, each acknowledged. */
  #configure(copyRange: number, maxLen: number, failOpen: boolean, gso: boolean): void {
    const early: number[] = [];
    const command = (c: number) => (b: NlBuilder) => b.bytes(NFQA_CFG.CMD, cmd(c, NFPROTO_IPV4));
    // PF_UNBIND/PF_BIND are no-ops since Linux 3.8 but harmless; older
    // kernels need them before a queue of that family gets packets.
    this.#config(NFPROTO_IPV4, 0, command(NFQNL_CFG_CMD.PF_UNBIND), null, early);
    this.#config(NFPROTO_IPV4, 0, command(NFQNL_CFG_CMD.PF_BIND), null, early);
    // Bind before sending parameters: they apply to an existing instance.
    const queue = this.queue;
    this.#config(
      NFPROTO_UNSPEC,
      queue,
      command(NFQNL_CFG_CMD.BIND),
      `bind netfilter queue ${queue}`,
      early,
    );
    const params = new Uint8Array(5); // packed: be32 copy range, u8 mode
    new DataView(params.buffer).setUint32(0, copyRange, false);
    params[4] = NFQNL_COPY_PACKET;
    this.#config(
      NFPROTO_UNSPEC,
      queue,
      (b) => b.bytes(NFQA_CFG.PARAMS, params),
      "set copy mode",
      early,
    );
    this.#config(
      NFPROTO_UNSPEC,
      queue,
      (b) => b.be32(NFQA_CFG.QUEUE_MAXLEN, maxLen),
      "set queue length",
      early,
    );
    // The kernel only looks at NFQA_CFG.FLAGS together with NFQA_CFG.MASK.
    const flags = (failOpen ? NFQA_CFG_F.FAIL_OPEN : 0) | (gso ? NFQA_CFG_F.GSO : 0);
    this.#config(
      NFPROTO_UNSPEC,
      queue,
      (b) =>
        b.be32(NFQA_CFG.MASK, NFQA_CFG_F.FAIL_OPEN | NFQA_CFG_F.GSO).be32(NFQA_CFG.FLAGS, flags),
      "set queue flags",
      early,
    );
    // Packets queued between bind and the copy-mode change came without
    // payload: nobody has looked at them, so they are dropped rather than
    // passed untranslated (transports retransmit).
    for (const id of early) this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_DROP, 0, 0);
    this.#send();
  }

  /**
   * Sends one NFQNL_MSG.CONFIG whose attributes `attrs` appends and waits
   * for its acknowledgement. `what` null: failures are ignored. Packet
   * messages read meanwhile are recorded in `early` for a verdict.
   */
  #config(
    family: number,
    resId: number,
    attrs: (b: NlBuilder) => void,
    what: string | null,
    early: number[],
  ): void {
    const b = new NlBuilder(64).begin(NFQNL_MSG.CONFIG, NLM_F_REQUEST | NLM_F_ACK);
    attrs(b.nfgen(family, resId));
    const pkt = new PacketFields();
    const onPacket: MessageHandler = (type, dv, off, len) => {
      if (type === NFQNL_MSG.PACKET && pkt.read(dv, off - Nlmsg.SIZE, off + len)) {
        early.push(pkt.id);
      }
    };
    let err: number;
    try {
      err = this.#nl.requestAll([b.end().finish()], what ?? "configure", onPacket)[0]!.errno;
    } catch (e) {
      if (what === null) return;
      throw e instanceof OsError ? new OsError(`Cannot ${what}`, e.errno) : e;
    }
    if (err <= 0 || what === null) return;
    if (err === EPERM && what.startsWith("bind")) {
      throw new Error(
        hasNetAdmin()
          ? `Cannot ${what}: it is bound by another socket (is another dpm running?)`
          : `Cannot ${what}: root (CAP_NET_ADMIN) is needed`,
      );
    }
    throw new OsError(`Cannot ${what}`, err);
  }

  /**
   * Resolves `true` when packets (or a socket error) are waiting, `false` on
   * timeout or once the queue is closed. `poll` runs on a worker thread, so
   * the event loop keeps running meanwhile. One wait at a time.
   *
   * @param timeoutMs milliseconds; negative or `Infinity`: no timeout.
   */
  wait(timeoutMs: number): Promise<boolean> {
    return this.#waiter.wait(timeoutMs);
  }

  /**
   * Reads every packet waiting, up to `max`, calls `handler` for each and
   * sends the verdicts (see the module notes on batching). Never blocks.
   * Returns the number of packets handled.
   *
   * No allocation per packet beyond the `Uint8Array` view handed to the
   * handler. If the handler throws, that packet is dropped, the others are
   * still decided, and the first exception is rethrown after the verdicts
   * are sent.
   */
  drain(handler: PacketHandler, max = 1024): number {
    if (this.#closed) return 0;
    const c = libc();
    let total = 0;
    this.#thrown = null;
    while (total < max) {
      const want = Math.min(this.#batch, max - total);
      const n = c.recvmmsg(this.#fd, this.#mmsg, want, MSG_DONTWAIT, null);
      if (n < 0) {
        const e = errno();
        if (e === EAGAIN) break;
        if (e === EINTR) continue;
        if (e === ENOBUFS) {
          // The kernel could not queue some packet messages (they were
          // dropped, or accepted with fail-open); the socket itself is fine.
          this.stats.enobufs++;
          continue;
        }
        this.stats.errors++;
        this.lastError = `recvmmsg: ${strerror(e)} (errno ${e})`;
        break;
      }
      if (n === 0) break;
      this.stats.batches++;
      for (let i = 0; i < n; i++) {
        const m = i * MMsgHdr.SIZE;
        const len = this.#mmsgDv.getUint32(m + MMsgHdr.LEN, LE);
        const flags = this.#mmsgDv.getInt32(m + MMsgHdr.HDR + MsgHdr.FLAGS, LE);
        total += this.#datagram(i * this.#slotSize, len, (flags & MSG_TRUNC) !== 0, handler);
      }
      // The next recvmmsg overwrites the buffers payload verdicts point at.
      this.#closeRun();
      this.#send();
      if (n < want) break;
    }
    this.#send();
    const thrown = this.#thrown;
    if (thrown !== null) {
      this.#thrown = null;
      throw thrown;
    }
    return total;
  }

  /** Handles the netlink messages of one datagram; returns packets handled. */
  #datagram(base: number, n: number, trunc: boolean, handler: PacketHandler): number {
    const dv = this.#rxDv;
    const end = base + n;
    let off = base;
    let handled = 0;
    try {
      for (let len = 0; (len = msgLen(dv, off, end)) !== 0; off += align4(len)) {
        const type = dv.getUint16(off + Nlmsg.TYPE, LE);
        if (type === NFQNL_MSG.PACKET) {
          handled += this.#packet(off, off + len, handler);
        } else if (type === NLMSG_ERROR) {
          // Verdicts are sent without NLM_F_ACK: an answer means one failed
          // (typically ENOENT, an unknown or already decided id).
          const err = len >= Nlmsg.SIZE + 4 ? -dv.getInt32(off + Nlmsg.SIZE, LE) : 0;
          if (err !== 0) this.#fail(`verdict refused: ${strerror(err)} (errno ${err})`);
        } else if (type === NLMSG_OVERRUN) {
          this.#fail("netlink overrun");
        }
      }
    } catch (e) {
      if (!(e instanceof NetlinkParseError)) throw e;
      // Framing broken (or cut by MSG_TRUNC): nothing after this is trustworthy.
      this.#fail(trunc ? "packet message longer than the receive buffer" : "bad netlink length");
    }
    if (trunc && off < end) this.#fail("truncated datagram");
    return handled;
  }

  /** Parses the packet message `[start, end)`, runs the handler, records the verdict. */
  #packet(start: number, end: number, handler: PacketHandler): number {
    const p = this.#rxPkt;
    p.read(this.#rxDv, start, end);
    const id = p.id;
    if (id < 0) {
      this.#fail("packet message without a packet header");
      return 0;
    }
    const payOff = p.payOff;
    const payLen = p.payLen;
    if (payOff < 0 || payLen === 0) {
      this.#fail("packet message without payload");
      this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_DROP, 0, 0);
      return 0;
    }
    const skbInfo = p.skbInfo;
    const truncated = p.capLen > payLen;
    this.stats.packets++;
    if (skbInfo & Meta.GSO) this.stats.gso++;
    let r: number;
    try {
      r = handler(this.#rx.subarray(payOff, payOff + payLen), id, p.hook, skbInfo, p.mark);
    } catch (e) {
      // Keep deciding the other packets; drain() rethrows afterwards.
      this.stats.errors++;
      this.#thrown ??= e;
      r = Verdict.DROP;
    }
    switch (r) {
      case Verdict.ACCEPT:
        if (this.#held.size === 0 || !idAfter(id, this.#oldestHeld())) {
          if (!this.#runOpen || idAfter(id, this.#runMax)) this.#runMax = id;
          this.#runOpen = true;
        } else {
          // A held packet is older: a batch would cover it.
          this.#closeRun();
          this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_ACCEPT, 0, 0);
        }
        break;
      case Verdict.MODIFIED:
        if (truncated) {
          // Only part of the packet is here: its payload verdict would cut it.
          // (IPv4 GSO/GRO packets stop at 64 KB; only a 65532-65535 byte one,
          // or one from BIG TCP, can be longer than the 65531-byte copy range.)
          this.stats.truncatedDrops++;
          this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_DROP, 0, 0);
        } else {
          this.#closeRun(); // keep earlier accepts ahead of the rewritten packet
          this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_ACCEPT, this.#rxAddr + payOff, payLen);
        }
        break;
      case Verdict.HOLD:
        this.#closeRun();
        this.#held.add(id);
        this.#heldOrder.push(id);
        break;
      default:
        this.#emit(NFQNL_MSG.VERDICT, id, VERDICT_DROP, 0, 0);
    }
    if (truncated) this.stats.truncated++;
    return 1;
  }

  /**
   * Decides a packet the handler held. Accept as is, accept with `payload`
   * replacing the whole packet (at least 20 bytes, at most 65531; the
   * caller must not change it until the next {@linkcode flush} or
   * {@linkcode drain}), or drop. Buffered: sent by `flush()` or the next
   * `drain()`.
   */
  verdict(id: number, verdict: number, payload?: Uint8Array): void {
    if (this.#closed) return;
    if (payload !== undefined && (payload.length < 20 || payload.length > MAX_COPY_RANGE)) {
      throw new RangeError(`Payload of ${payload.length} bytes is not a packet (20-65531)`);
    }
    if (this.#held.delete(id) && this.#held.size === 0) {
      this.#heldOrder = [];
      this.#heldHead = 0;
    }
    this.#closeRun();
    if (payload !== undefined && verdict === VERDICT_ACCEPT) {
      this.#keep.push(payload);
      this.#emit(NFQNL_MSG.VERDICT, id >>> 0, VERDICT_ACCEPT, addressOf(payload), payload.length);
    } else {
      this.#emit(NFQNL_MSG.VERDICT, id >>> 0, verdict >>> 0, 0, 0);
    }
  }

  /** Sends buffered verdicts now. */
  flush(): void {
    if (this.#closed) return;
    this.#closeRun();
    this.#send();
  }

  /** The oldest id still held (call only while some is). */
  #oldestHeld(): number {
    const order = this.#heldOrder;
    while (!this.#held.has(order[this.#heldHead]!)) this.#heldHead++;
    if (this.#heldHead > 1024 && this.#heldHead * 2 > order.length) {
      this.#heldOrder = order.slice(this.#heldHead);
      this.#heldHead = 0;
    }
    return this.#heldOrder[this.#heldHead]!;
  }

  /** Packets held by the handler and not yet decided. */
  get heldCount(): number {
    return this.#held.size;
  }

  /** Emits the batch verdict of the open run of accepts. */
  #closeRun(): void {
    if (!this.#runOpen) return;
    this.#runOpen = false;
    this.#emit(NFQNL_MSG.VERDICT_BATCH, this.#runMax, VERDICT_ACCEPT, 0, 0);
  }

  /** Appends one verdict message to the send list (payload gathered in place). */
  #emit(type: number, id: number, verdict: number, payAddr: number, payLen: number): void {
    const pad = align4(payLen) - payLen;
    const hlen = payLen > 0 ? VERDICT_HDR_SLOT : VERDICT_MSG_SIZE;
    const total = hlen + payLen + pad;
    if (this.#txMsgs === this.#txMaxMsgs || this.#txBytes + total > MAX_SEND_BYTES) this.#send();
    const h = this.#txMsgs * VERDICT_HDR_SLOT;
    const dv = this.#txHdrDv;
    putMsgHeader(dv, h, total, type, NLM_F_REQUEST);
    putNfgen(dv, h + Nlmsg.SIZE, NFPROTO_UNSPEC, this.queue);
    const v = h + Nlmsg.SIZE + Nfgen.SIZE;
    putAttrHeader(dv, v, Nla.SIZE + 8, NFQA.VERDICT_HDR); // struct nfqnl_msg_verdict_hdr
    dv.setUint32(v + Nla.SIZE, verdict, false);
    dv.setUint32(v + Nla.SIZE + 4, id, false);
    if (payLen > 0) putAttrHeader(dv, v + Nla.SIZE + 8, Nla.SIZE + payLen, NFQA.PAYLOAD);
    this.#iov(this.#txHdrAddr + h, hlen);
    if (payLen > 0) this.#iov(payAddr, payLen);
    if (pad > 0) this.#iov(this.#zeroAddr, pad);
    this.#txMsgs++;
    this.#txBytes += total;
  }

  #iov(addr: number, len: number): void {
    const o = this.#txIovs * IOVEC_SIZE;
    setU64(this.#txIovDv, o, addr);
    setU64(this.#txIovDv, o + 8, len);
    this.#txIovs++;
  }

  /** Sends the verdict list in one sendmsg. */
  #send(): void {
    if (this.#txMsgs === 0) return;
    setU64(this.#txMsgDv, MsgHdr.IOVLEN, this.#txIovs);
    const r = Number(libc().sendmsg(this.#fd, this.#txMsg, 0));
    if (r < 0) {
      // The packets stay queued in the kernel until the queue is closed;
      // nothing sensible can be retried with the buffers about to be reused.
      const e = errno();
      this.#fail(`sendmsg verdicts: ${strerror(e)} (errno ${e})`);
    }
    this.stats.verdictSends++;
    this.#txMsgs = 0;
    this.#txIovs = 0;
    this.#txBytes = 0;
    if (this.#keep.length > 0) this.#keep = [];
  }

  #fail(what: string): void {
    this.stats.errors++;
    this.lastError = what;
  }

  /**
   * Sends pending verdicts, unbinds the queue (the kernel drops packets still
   * held) and closes the socket. Idempotent. A pending {@linkcode wait}
   * resolves `false`.
   */
  close(): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
    // Best effort (failures ignored): closing the socket unbinds too.
    this.#config(
      NFPROTO_UNSPEC,
      this.queue,
      (b) => b.bytes(NFQA_CFG.CMD, cmd(NFQNL_CFG_CMD.UNBIND, NFPROTO_IPV4)),
      null,
      [],
    );
    // A poll running on another thread keeps the socket until it returned
    // (linux/waiter.ts).
    this.#waiter.close(() => {
      this.#nl.close();
      this.#fd = -1;
    });
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `struct nfqnl_msg_config_cmd`: u8 command, u8 pad, be16 pf. */
function cmd(command: number, pf: number): Uint8Array {
  const b = new Uint8Array(4);
  b[0] = command;
  new DataView(b.buffer).setUint16(2, pf, false);
  return b;
}

/**
 * The fields of one `NFQNL_MSG_PACKET` message dpm reads, decoded in place
 * (one object reused from packet to packet: no allocation per packet).
 */
class PacketFields {
  /** The kernel's packet id, -1 when the message had no packet header. */
  id = -1;
  /** The netfilter hook. */
  hook = 0;
  /** Offset of the packet bytes (`NFQA_PAYLOAD`) in the view, -1 when absent. */
  payOff = -1;
  /** Length of the packet bytes read. */
  payLen = 0;
  /** `NFQA_CAP_LEN`: the packet's real length when it was cut, -1 when absent. */
  capLen = -1;
  /** `NFQA_SKB_INFO` bits, 0 when absent. */
  skbInfo = 0;
  /** `NFQA_MARK`, 0 when absent. */
  mark = 0;

  /**
   * Decodes the message at `[start, end)` of `dv` (from its netlink
   * header). A malformed attribute ends the walk: what came before it
   * stands. Returns true when the message had a packet header.
   */
  read(dv: DataView, start: number, end: number): boolean {
    this.id = -1;
    this.hook = 0;
    this.payOff = -1;
    this.payLen = 0;
    this.capLen = -1;
    this.skbInfo = 0;
    this.mark = 0;
    try {
      let len = 0;
      for (let a = start + ATTRS_AT; (len = attrLen(dv, a, end)) !== 0; a += align4(len)) {
        const type = attrType(dv, a);
        const v = a + NLA_HDRLEN;
        const n = len - NLA_HDRLEN;
        if (type === NFQA.PACKET_HDR && n >= PacketHdr.SIZE) {
          this.id = dv.getUint32(v + PacketHdr.ID, false);
          this.hook = dv.getUint8(v + PacketHdr.HOOK);
        } else if (type === NFQA.PAYLOAD) {
          this.payOff = v;
          this.payLen = n;
        } else if (type === NFQA.CAP_LEN && n >= 4) {
          this.capLen = dv.getUint32(v, false);
        } else if (type === NFQA.SKB_INFO && n >= 4) {
          this.skbInfo = dv.getUint32(v, false);
        } else if (type === NFQA.MARK && n >= 4) {
          this.mark = dv.getUint32(v, false);
        }
      }
    } catch (e) {
      if (!(e instanceof NetlinkParseError)) throw e;
    }
    return this.id >= 0;
  }
}

/** True when this process has CAP_NET_ADMIN (bit 12 of CapEff); false when unknown. */
function hasNetAdmin(): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return m !== null && (BigInt(`0x${m[1]}`) & (1n << 12n)) !== 0n;
  } catch {
    return false;
  }
}

/** Extra synchronous drains {@linkcode pump} tries after one that returned packets. */
export const PUMP_REDRAIN = 8;

/**
 * Runs the queue's receive loop until the returned function is called:
 * wait (off the event loop), drain, repeat. `onFatal` gets an error that
 * ends the loop (the fd failed); handler exceptions are the caller's bugs and
 * also end up there.
 */
export function pump(
  queue: NfQueue,
  handler: PacketHandler,
  onFatal: (e: Error) => void,
  redrain = PUMP_REDRAIN,
): () => void {
  return serveLoop({
    wait: (ms) => queue.wait(ms),
    drain: () => queue.drain(handler),
    redrain,
    onFatal,
  });
}
