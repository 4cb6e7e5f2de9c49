/**
 * Tests of linux/sockdiag.ts: the `unix_diag_req` it sends and the replies
 * it decodes, on bytes laid out by hand after the kernel's
 * `include/uapi/linux/unix_diag.h` (no root); then against the kernel: the
 * uid at the other end of a real connection, our own (no root) and
 * nobody's through setpriv (root).
 */

import assert from "node:assert/strict";
import {
  AcceptedPeers,
  AF_UNIX,
  parseUnixDiag,
  parseUnixDiagDatagram,
  SOCK_DIAG_BY_FAMILY,
  socketInodes,
  UDIAG_SHOW_NAME,
  UDIAG_SHOW_PEER,
  UDIAG_SHOW_UID,
  UnixDiag,
  unixDiagRequest,
} from "../../linux/sockdiag.ts";
import { NetlinkParseError, NLM_F_MULTI, NLMSG_DONE } from "../../linux/netlink.ts";
import { needsRoot } from "../../testing/root.ts";

const LE = true; // the test hosts (x86_64, aarch64) are little endian

/** One netlink message: header (len, type, flags, seq 7, pid 0), then `body` padded to 4. */
function nlmsg(type: number, flags: number, body: number[]): number[] {
  const len = 16 + body.length;
  const h = new DataView(new ArrayBuffer(16));
  h.setUint32(0, len, LE);
  h.setUint16(4, type, LE);
  h.setUint16(6, flags, LE);
  h.setUint32(8, 7, LE);
  const out = [...new Uint8Array(h.buffer), ...body];
  while (out.length % 4) out.push(0);
  return out;
}

/** One attribute: len u16, type u16, value, padding to 4. */
function nla(type: number, value: number[]): number[] {
  const len = 4 + value.length;
  const out = [len & 0xff, len >> 8, type & 0xff, type >> 8, ...value];
  while (out.length % 4) out.push(0);
  return out;
}

const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
const bytes = (s: string) => [...new TextEncoder().encode(s)];

/** `struct unix_diag_msg`: family, type, state, pad, ino, cookie[2]. */
function diagMsg(type: number, state: number, ino: number): number[] {
  return [AF_UNIX, type, state, 0, ...u32(ino), ...u32(0x11), ...u32(0x22)];
}

Deno.test("sockdiag: the request is a SOCK_DIAG_BY_FAMILY unix_diag_req of 24 bytes, cookie unchecked", () => {
  const m = unixDiagRequest(1234, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER);
  assert.equal(m.length, 16 + 24);
  const dv = new DataView(m.buffer);
  assert.equal(dv.getUint32(0, LE), 40, "nlmsg_len");
  assert.equal(dv.getUint16(4, LE), 20, "SOCK_DIAG_BY_FAMILY");
  assert.equal(SOCK_DIAG_BY_FAMILY, 20);
  assert.equal(m[16], 1, "sdiag_family AF_UNIX");
  assert.equal(m[17], 0, "sdiag_protocol");
  assert.equal(dv.getUint32(16 + 4, LE), 0xffffffff, "udiag_states: all");
  assert.equal(dv.getUint32(16 + 8, LE), 1234, "udiag_ino");
  assert.equal(dv.getUint32(16 + 12, LE), 0x05, "udiag_show NAME|PEER");
  assert.equal(dv.getUint32(16 + 16, LE), 0xffffffff, "udiag_cookie[0]: INET_DIAG_NOCOOKIE");
  assert.equal(dv.getUint32(16 + 20, LE), 0xffffffff, "udiag_cookie[1]");
  assert.equal(UDIAG_SHOW_UID, 0x40);
  // A dump of the established ones only.
  const d = new DataView(unixDiagRequest(0, UDIAG_SHOW_UID, 1 << 1).buffer);
  assert.equal(d.getUint32(16 + 4, LE), 2);
  assert.equal(d.getUint32(16 + 8, LE), 0);
});

Deno.test("sockdiag: a reply datagram decodes name, peer and uid; DONE is skipped", () => {
  const path = "/run/dpm/driver.sock";
  const dgram = new Uint8Array([
    // The accepted socket: named as the listener (sun_path with its NUL), peer 5001.
    ...nlmsg(
      SOCK_DIAG_BY_FAMILY,
      NLM_F_MULTI,
      [...diagMsg(1, 1, 5000), ...nla(0, [...bytes(path), 0]), ...nla(2, u32(5001))],
    ),
    // The client's socket: unnamed, peer 5000, uid 65534 (attributes in any order).
    ...nlmsg(
      SOCK_DIAG_BY_FAMILY,
      NLM_F_MULTI,
      [...diagMsg(1, 1, 5001), ...nla(7, u32(65534)), ...nla(2, u32(5000))],
    ),
    // An abstract name; an attribute it does not know (RQLEN) is skipped.
    ...nlmsg(
      SOCK_DIAG_BY_FAMILY,
      NLM_F_MULTI,
      [
        ...diagMsg(2, 7, 5002),
        ...nla(0, [0, ...bytes("dpm-x")]),
        ...nla(4, [...u32(0), ...u32(0)]),
      ],
    ),
    ...nlmsg(NLMSG_DONE, NLM_F_MULTI, u32(0)),
  ]);
  assert.deepEqual(parseUnixDiagDatagram(dgram), [
    { ino: 5000, type: 1, state: 1, name: path, peer: 5001, uid: null },
    { ino: 5001, type: 1, state: 1, name: null, peer: 5000, uid: 65534 },
    { ino: 5002, type: 2, state: 7, name: "@dpm-x", peer: null, uid: null },
  ]);
});

Deno.test("sockdiag: a short or foreign payload is no socket; a bad attribute length throws", () => {
  const short = new Uint8Array(diagMsg(1, 1, 9).slice(0, 12));
  assert.equal(parseUnixDiag(new DataView(short.buffer), 0, short.length), null);
  const inet = new Uint8Array(diagMsg(1, 1, 9));
  inet[0] = 2; // AF_INET
  assert.equal(parseUnixDiag(new DataView(inet.buffer), 0, inet.length), null);
  const bad = new Uint8Array([...diagMsg(1, 1, 9), 40, 0, 2, 0, ...u32(1)]); // says 40 bytes, has 8
  assert.throws(() => parseUnixDiag(new DataView(bad.buffer), 0, bad.length), NetlinkParseError);
  // The payload is read where it lies, not from the buffer's start.
  const at = new Uint8Array([0, 0, 0, 0, ...diagMsg(1, 10, 77), ...nla(7, u32(0))]);
  assert.deepEqual(parseUnixDiag(new DataView(at.buffer), 4, at.length - 4), {
    ino: 77,
    type: 1,
    state: 10,
    name: null,
    peer: null,
    uid: 0,
  });
});

/** A listener at a fresh path that anyone may connect to; removed with it. */
async function listener(): Promise<{ path: string; l: Deno.UnixListener; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "dpm-sockdiag-" });
  await Deno.chmod(dir, 0o755);
  const path = `${dir}/s.sock`;
  const l = Deno.listen({ transport: "unix", path });
  await Deno.chmod(path, 0o777);
  return { path, l, dir };
}

Deno.test("sockdiag: the kernel names the uid at the other end of a real connection (our own)", async () => {
  const { path, l, dir } = await listener();
  const peers = new AcceptedPeers(path);
  try {
    peers.mark();
    const accepting = l.accept();
    const client = await Deno.connect({ transport: "unix", path });
    const conn = await accepting;
    try {
      assert.deepEqual(peers.peer(), { uid: Deno.uid() });
      // Straight from the tables: the listener is named, listening, without a peer.
      using d = UnixDiag.open();
      const mine = d.dump(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_UID)
        .filter((s) => s.name === path);
      assert.ok(mine.some((s) => s.state === 10 && s.peer === null), JSON.stringify(mine));
      const acc = mine.find((s) => s.state === 1 && s.peer !== null);
      assert.ok(acc, "the accepted socket carries the listener's name");
      assert.ok(socketInodes().has(acc.ino), "and is one of our descriptors");
      assert.deepEqual(d.peerUid(acc.ino, path), { uid: Deno.uid() });
      assert.match(d.peerUid(acc.ino, "/elsewhere").why ?? "", /not a connection to/);
      assert.equal(d.get(0xfffffff0, UDIAG_SHOW_UID), null, "no such inode: null");
    } finally {
      client.close();
      conn.close();
    }
    // Nothing accepted since the mark: no answer, and a reason.
    peers.mark();
    const p = peers.peer();
    assert.equal(p.uid, null);
    assert.match(p.why ?? "", /no new socket/);
  } finally {
    peers.close();
    l.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test(needsRoot({
  name: "sockdiag root: a connection made by nobody (setpriv, python3) is told as uid 65534",
  fn: async () => {
    const { path, l, dir } = await listener();
    const peers = new AcceptedPeers(path);
    const py = new Deno.Command("setpriv", {
      args: [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)",
        path,
      ],
      stdout: "null",
      stderr: "piped",
    });
    try {
      peers.mark();
      const accepting = l.accept();
      const child = py.spawn();
      const conn = await accepting;
      assert.deepEqual(peers.peer(), { uid: 65534 });
      await conn.write(new Uint8Array([1]));
      conn.close();
      const st = await child.output();
      assert.equal(st.code, 0, new TextDecoder().decode(st.stderr));
    } finally {
      peers.close();
      l.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
}));
