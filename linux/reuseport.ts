/**
 * The control socket's reuseport program (`dpm server --workers N`): a
 * classic BPF program attached with `SO_ATTACH_REUSEPORT_CBPF` to a group
 * of `SO_REUSEPORT` sockets picks, for each datagram, the socket at the
 * index it returns (sockets are indexed in the order they joined the
 * group). This one returns the IPv4 source address mod N, so that a host
 * always reaches the same worker (`src/table/slice.ts` `workerOf` is the
 * same arithmetic): its rate limiter, cookies, quota and ports are that
 * worker's alone.
 *
 * The kernel runs a UDP socket's reuseport program with the packet's data
 * pulled past the UDP header, so the source address is read relative to
 * the network header: `SKF_NET_OFF + 12` (the IPv4 header's `saddr`).
 * `BPF_LD | BPF_W | BPF_ABS` loads it in network order as the number
 * dpm writes addresses as (host order of the dotted quad). An index at or
 * beyond the group's size makes the kernel fall back to its hash: the
 * server drops a datagram that reached the wrong worker (`src/server/`),
 * which only happens while the group is still being built.
 *
 * @module
 */

import { errno, libc, OsError, SOL_SOCKET } from "./libc.ts";

/** `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h). */
export const SO_ATTACH_REUSEPORT_CBPF = 51;
/** `SKF_NET_OFF` (linux/filter.h): offsets relative to the network header. */
export const SKF_NET_OFF = -0x100000;

/** Classic BPF opcodes (linux/bpf_common.h). */
const BPF_LD_W_ABS = 0x00 | 0x00 | 0x20;
const BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00;
const BPF_RET_A = 0x06 | 0x10;

/** One `struct sock_filter`: code (u16), jt (u8), jf (u8), k (u32), native order. */
const INSN = 8;

/**
 * The program as `struct sock_filter[]` bytes: A = saddr; A %= n; return A.
 * `n` is 1..65535.
 */
export function shardBySourceProgram(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new RangeError(`Reuseport group of "${n}" sockets is not in 1-65535`);
  }
  const insns: [number, number][] = [
    [BPF_LD_W_ABS, (SKF_NET_OFF + 12) >>> 0],
    [BPF_ALU_MOD_K, n],
    [BPF_RET_A, 0],
  ];
  const out = new Uint8Array(insns.length * INSN);
  const dv = new DataView(out.buffer);
  insns.forEach(([code, k], i) => {
    dv.setUint16(i * INSN, code, true);
    dv.setUint8(i * INSN + 2, 0);
    dv.setUint8(i * INSN + 3, 0);
    dv.setUint32(i * INSN + 4, k, true);
  });
  return out;
}

/**
 * Attaches `program` (`struct sock_filter[]` bytes) to the reuseport group
 * of `fd` (a socket with `SO_REUSEPORT`, bound or not: an unbound one
 * creates the group it will bind with).
 */
export function attachReuseportProgram(fd: number, program: Uint8Array): void {
  if (program.length === 0 || program.length % INSN !== 0) {
    throw new RangeError(`A classic BPF program is whole instructions of ${INSN} bytes`);
  }
  // struct sock_fprog { unsigned short len; struct sock_filter *filter; }: 16 bytes on LP64.
  const fprog = new Uint8Array(16);
  const dv = new DataView(fprog.buffer);
  dv.setUint16(0, program.length / INSN, true);
  dv.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(program))), true);
  if (libc().setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog, fprog.length) < 0) {
    throw new OsError("setsockopt SO_ATTACH_REUSEPORT_CBPF", errno());
  }
}
