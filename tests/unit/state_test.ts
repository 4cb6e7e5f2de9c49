/**
 * The state file (src/server/state.ts), without root: grants answered
 * before a SIGKILL are all in the file; a JSON file of version 1 is read and
 * migrated once; a restore that drops sessions says why per reason and asks
 * for a new epoch (except for expiry); a --state that cannot be kept fails
 * at open with a one-line reason; rows keep their owner; the files are 0600.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { Owner, SessionTable } from "../../src/table/table.ts";
import { DatabaseSync } from "node:sqlite";
import { checkStatePath, StateStore, type StoredRecord } from "../../src/server/state.ts";
import { DropLog, restoreRecord } from "../../src/server/restore.ts";
import { H1, LAN, P1, R1, R2, serverCfg } from "../../testing/fixtures.ts";
import { ServerCore } from "../../src/server/core.ts";
import { FakeServerDataPath } from "../../src/datapath/fake.ts";
import { decodeNatPmpResponse, encodeNatPmpRequest } from "../../src/pcp/codec.ts";

const CHILD = fileURLToPath(new URL("../../testing/state_child.ts", import.meta.url));
const R3 = R2 + 1;

function newTable(pool = [R1, R2]) {
  return new SessionTable({ pool });
}

/** Opens the store at `path` and restores what it holds into a table over `pool`. */
async function reopen(path: string, pool = [R1, R2], now = Date.now()) {
  const store = await StateStore.open(path);
  const table = newTable(pool);
  const drops = new DropLog();
  for (const rec of store.saved?.sessions ?? []) restoreRecord(table, rec, now, drops, "test");
  return { store, table, drops };
}

Deno.test("state: every grant answered before a SIGKILL is in the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CHILD, path, "16"],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    // Read the answered grants until a few hundred are out, then kill at once.
    const granted: string[] = [];
    let buf = "";
    const reader = child.stdout.getReader();
    while (granted.length < 354) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += new TextDecoder().decode(value);
      const lines = buf.split("\n");
      buf = lines.pop()!;
      granted.push(...lines.filter(Boolean));
    }
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    assert.ok(granted.length >= 354, `the child granted ${granted.length}`);
    const { store, table, drops } = await reopen(path, [0xcb00710a, 0xcb00710b]);
    assert.equal(store.saved?.epoch, 0x1234);
    assert.equal(drops.total, 0, drops.lines().join("; "));
    let missing = 0;
    for (const line of granted) {
      const [a, pa, x, px, r, p, pg] = line.split(" ").map(Number) as number[];
      const s = table.lookupIdentity(17, a!, pa!, x!, px!);
      if (s < 0 || table.r(s) !== r || table.p(s) !== p || table.pg(s) !== pg) missing++;
    }
    assert.equal(missing, 0, `${missing} of ${granted.length} answered grants lost`);
    store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: removals and renewals are durable too; the epoch is kept", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    assert.equal(store.saved, null, "a new file");
    const t = newTable();
    store.start(t, 7);
    store.listen(t);
    const now = Date.now();
    const req = (pa: number) => ({
      proto: 17,
      a: H1,
      pa,
      x: P1,
      px: 7000,
      replaceable: false,
      lifetime: 60,
    });
    const g1 = t.reserve(req(5000), now);
    t.reserve(req(5001), now);
    store.commit();
    t.release(17, H1, 5001, P1, 7000, now);
    // A renewal to a longer lease: the table tells the store (its subscriber).
    t.renew(17, H1, 5000, P1, 7000, 600, now);
    store.commit();
    store.close();
    const again = await reopen(path);
    assert.equal(again.store.saved?.epoch, 7);
    assert.equal(again.table.size, 1);
    const s = again.table.lookupIdentity(17, H1, 5000, P1, 7000);
    assert.ok(s >= 0);
    assert.equal(again.table.pg(s), g1.pg);
    assert.equal(again.table.expiresAt(s), now + 600_000, "the renewed lease");
    again.store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: a JSON file of version 1 is read and migrated once to SQLite", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    const now = Date.now();
    const rec = (pa: number, r: number) => ({
      proto: 17,
      a: H1,
      pa,
      x: P1,
      px: 7000,
      r,
      p: pa,
      pg: 61000 + pa - 5000,
      expiresAt: now + 300_000,
      lifetime: 300,
      replaceable: false,
      replaced: false,
      shared: false,
      packetsOut: 3,
      packetsIn: 4,
    });
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        format: "dpm-state",
        version: 1,
        epoch: 0xabcd,
        savedAt: now,
        sessions: [rec(5000, R1), rec(5001, R2)],
      }),
    );
    const a = await reopen(path);
    assert.equal(a.store.saved?.format, "json");
    assert.equal(a.store.saved?.epoch, 0xabcd);
    assert.equal(a.table.size, 2);
    a.store.start(a.table, 0xabcd);
    a.store.listen(a.table);
    a.store.close();
    const head = new TextDecoder().decode((await Deno.readFile(path)).subarray(0, 15));
    assert.equal(head, "SQLite format 3");
    assert.ok((await Deno.stat(`${path}.v1.json`)).isFile, "the JSON is kept beside it");
    const b = await reopen(path);
    assert.equal(b.store.saved?.format, "sqlite");
    assert.equal(b.store.saved?.epoch, 0xabcd);
    assert.equal(b.table.size, 2);
    const s = b.table.lookupIdentity(17, H1, 5001, P1, 7000);
    assert.equal(b.table.r(s), R2);
    assert.equal(b.table.packetsOut(s), 3, "counters survive a clean stop");
    b.store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: a restore that drops sessions names each reason with an example and asks for a new epoch", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    const t = newTable([R1, R2, R3]);
    store.start(t, 42);
    store.listen(t);
    const now = Date.now();
    for (let i = 0; i < 30; i++) {
      t.reserve({
        proto: 17,
        a: H1 + (i % 3),
        pa: 5000 + i,
        x: P1,
        px: 7000,
        replaceable: false,
        lifetime: 60,
      }, now);
    }
    store.close();
    // Restarted with a smaller pool: the sessions on R2 and R3 cannot come back.
    const { store: s2, table, drops } = await reopen(path, [R1]);
    const onR1 = [...(s2.saved?.sessions ?? [])].filter((r) => r.r === R1).length;
    assert.ok(onR1 < 30, "the sessions were spread over the pool");
    assert.equal(table.size, onR1);
    assert.equal(drops.counts.get("not-in-pool")?.count, 30 - onR1);
    assert.ok(drops.renewsEpoch, "a dropped live session needs a new epoch");
    const lines = drops.lines();
    assert.equal(lines.length, 1);
    assert.match(
      lines[0]!,
      /dropped \d+ session\(s\) from test: public address no longer in the pool, e\.g\. udp 10\.0\.0\.1[123]:50\d\d -> 198\.51\.100\.10:7000 as 203\.0\.113\.1[12]:/,
    );
    // start() deletes the dropped rows: the next open holds only what is restored.
    s2.start(table, 43);
    s2.listen(table);
    s2.close();
    const third = await reopen(path, [R1]);
    assert.equal(third.store.saved?.sessions.length, onR1);
    assert.equal(third.store.saved?.epoch, 43);
    assert.equal(third.drops.total, 0);
    third.store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: drop reasons: expired (keeps the epoch), malformed, conflict", () => {
  const t = newTable();
  const now = 1_000_000;
  const base: StoredRecord = {
    proto: 17,
    a: H1,
    pa: 5000,
    x: P1,
    px: 7000,
    r: R1,
    p: 5000,
    pg: 61000,
    expiresAt: now + 1000,
    lifetime: 60,
    replaceable: false,
    replaced: false,
    shared: false,
    packetsOut: 0,
    packetsIn: 0,
  };
  const expiredOnly = new DropLog();
  assert.equal(restoreRecord(t, { ...base, expiresAt: now }, now, expiredOnly, "f"), false);
  assert.equal(expiredOnly.counts.get("expired")?.count, 1);
  assert.equal(expiredOnly.renewsEpoch, false, "an expired lease is one the driver gave up too");
  const d = new DropLog();
  assert.equal(restoreRecord(t, base, now, d, "f"), true);
  assert.equal(restoreRecord(t, { ...base, pa: 5001 }, now, d, "f"), false, "same Pg");
  assert.equal(restoreRecord(t, { ...base, proto: 99 }, now, d, "f"), false);
  assert.equal(restoreRecord(t, { nonsense: true }, now, d, "f"), false);
  assert.equal(d.counts.get("conflict")?.count, 1);
  assert.equal(d.counts.get("malformed")?.count, 2);
  assert.ok(d.renewsEpoch);
  assert.ok(d.dropped({ ...base, pa: 5001 }), "a dropped identity is remembered (kernel adoption)");
  assert.match(d.lines().join("\n"), /malformed, e\.g\. \{"proto":99/);
});

Deno.test("state: a --state that cannot be kept fails at once with one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => StateStore.open(`${dir}/missing/state.db`),
      /^Error: --state .*missing\/state\.db: directory .*missing does not exist$/,
    );
    await assert.rejects(() => checkStatePath(dir), /is a directory, not a file/);
    // Another server on the same file.
    const a = await StateStore.open(`${dir}/s.db`);
    await assert.rejects(() => StateStore.open(`${dir}/s.db`), /in use by another dpm server/);
    a.close();
    // A file that is not writable (root writes through modes: only checked as a user).
    if (Deno.uid() !== 0) {
      await Deno.writeTextFile(`${dir}/ro.db`, "");
      await Deno.chmod(`${dir}/ro.db`, 0o400);
      await assert.rejects(() => StateStore.open(`${dir}/ro.db`), /not writable/);
    }
    // A corrupt file is named, not overwritten.
    await Deno.writeTextFile(`${dir}/bad.db`, "garbage");
    await assert.rejects(() => StateStore.open(`${dir}/bad.db`), /is corrupt/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: a mapping (and its renewed lease through dpm map) and a direct PCP PEER session come back as what they were", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    const t = newTable();
    store.start(t, 9);
    store.listen(t);
    const now = Date.now();
    const m = t.map({ proto: 17, a: H1, pa: 6000, p: 0, r: 0, lifetime: 60 }, now);
    const peer = t.reserve({
      proto: 6,
      a: H1,
      pa: 4000,
      x: P1,
      px: 443,
      replaceable: true,
      lifetime: 60,
      direct: true,
    }, now);
    store.commit();
    // `dpm map` again with a longer lease: the table tells the store.
    t.map({ proto: 17, a: H1, pa: 6000, p: 0, r: 0, lifetime: 900 }, now);
    store.commit();
    store.close();
    const again = await reopen(path, [R1, R2], now);
    const ms = again.table.lookupMapOf(17, H1, 6000);
    assert.ok(ms >= 0, "the mapping is back");
    assert.equal(again.table.isMap(ms), true);
    assert.deepEqual([again.table.r(ms), again.table.p(ms)], [m.r, m.p]);
    assert.equal(again.table.expiresAt(ms), now + 900_000, "with its renewed lease");
    const ps = again.table.lookupIdentity(6, H1, 4000, P1, 443);
    assert.ok(ps >= 0);
    assert.equal(again.table.direct(ps), true, "the PEER session is still direct");
    assert.equal(again.table.pg(ps), peer.pg);
    again.store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: a NAT-PMP mapping renewed to a longer lease comes back with that lease", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    const now = 1_000_000;
    const core = new ServerCore(serverCfg({ pool: [R1, R2] }), { lan: LAN, now: () => now });
    core.attach(new FakeServerDataPath("kernel"));
    store.start(core.table, core.epoch);
    store.listen(core.table);
    const map = (life: number) => {
      const r = core.handlePcp(encodeNatPmpRequest(1, 6000, 6000, life), H1);
      store.commit();
      assert.ok(r);
      assert.equal(decodeNatPmpResponse(r)!.result, 0);
    };
    map(60);
    map(900);
    store.close();
    const again = await reopen(path, [R1, R2], now);
    const s = again.table.lookupMapOf(17, H1, 6000);
    assert.ok(s >= 0);
    assert.equal(again.table.expiresAt(s), now + 900_000, "the renewed lease, not the first");
    again.store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: each row's owner and PCP nonce come back after a restart; a file of an older dpm (no owner column) comes back ADOPTED", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    const t = newTable();
    store.start(t, 9);
    store.listen(t);
    const now = Date.now();
    const nonce = Uint8Array.from({ length: 12 }, (_, i) => 0xa0 + i);
    t.map({ proto: 17, a: H1, pa: 6000, p: 0, r: 0, lifetime: 600, owner: Owner.DPM }, now);
    t.map({ proto: 17, a: H1, pa: 7000, p: 0, r: 0, lifetime: 600, owner: Owner.PCP, nonce }, now);
    t.map({ proto: 6, a: H1, pa: 7001, p: 0, r: 0, lifetime: 600, owner: Owner.NATPMP }, now);
    // A claim (an ADOPTED row renewed by PCP: src/policy/mappings.ts) is written with the renewal.
    const adopted = t.map({ proto: 6, a: H1, pa: 7002, p: 0, r: 0, lifetime: 600 }, now);
    store.commit();
    t.claim(adopted.session, Owner.PCP, nonce);
    t.map({ proto: 6, a: H1, pa: 7002, p: 0, r: 0, lifetime: 900 }, now);
    store.commit();
    store.close();
    const again = await reopen(path, [R1, R2], now);
    const at = again.table;
    const owner = (proto: number, pa: number) => at.owner(at.lookupMapOf(proto, H1, pa));
    assert.deepEqual(
      [owner(17, 6000), owner(17, 7000), owner(6, 7001), owner(6, 7002)],
      [Owner.DPM, Owner.PCP, Owner.NATPMP, Owner.PCP],
    );
    assert.ok(at.nonceIs(at.lookupMapOf(17, H1, 7000), nonce), "the nonce is kept");
    assert.ok(at.nonceIs(at.lookupMapOf(6, H1, 7002), nonce));
    assert.equal(at.unverifiedOf(H1), 3, "the budgets are counted again");
    again.store.close();
    // An older dpm's file: no owner columns.
    const db = new DatabaseSync(path);
    db.exec("ALTER TABLE sessions DROP COLUMN owner");
    db.exec("ALTER TABLE sessions DROP COLUMN nonce");
    db.close();
    const old = await reopen(path, [R1, R2], now);
    assert.equal(old.table.size, 4);
    for (const r of old.table.entries()) assert.equal(r.owner, undefined, "ADOPTED");
    old.store.start(old.table, 9);
    old.store.close();
    const cols = new DatabaseSync(path).prepare("PRAGMA table_info(sessions)").all() as {
      name: string;
    }[];
    assert.ok(cols.some((c) => c.name === "owner"), "the columns are added back");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: a UPnP mapping comes back UPnP's with its description (a renewal's new one too), within the host's UPnP count; the boot id is kept; an older file has no description column and gains it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    assert.equal(store.saved, null);
    const t = newTable();
    store.start(t, 9, 1234);
    store.listen(t);
    const now = Date.now();
    const up = { proto: 17, a: H1, pa: 6000, p: 0, r: 0, lifetime: 600, owner: Owner.UPNP };
    t.map({ ...up, description: "my game" }, now);
    t.map({ ...up, pa: 6001, description: "" }, now);
    store.commit();
    // A renewal with another description is written with it.
    t.map({ ...up, description: "my game, renamed" }, now);
    store.commit();
    store.close();
    const again = await reopen(path, [R1, R2], now);
    assert.equal(again.store.saved?.bootId, 1234, "the boot id is kept");
    assert.equal(again.store.saved?.epoch, 9);
    const at = again.table;
    const s = at.lookupMapOf(17, H1, 6000);
    assert.equal(at.owner(s), Owner.UPNP);
    assert.equal(at.description(s), "my game, renamed");
    assert.equal(at.description(at.lookupMapOf(17, H1, 6001)), "", "no description: none kept");
    assert.equal(at.record(at.lookupMapOf(17, H1, 6001)).description, undefined);
    assert.equal(at.upnpOf(H1), 2, "the UPnP cap counts them again");
    assert.equal(at.unverifiedOf(H1), 0, "UPnP's rows are not PCP/NAT-PMP's");
    again.store.close();
    // A file of a dpm before descriptions: none, and the column comes back.
    const db = new DatabaseSync(path);
    db.exec("ALTER TABLE sessions DROP COLUMN description");
    db.exec("DELETE FROM meta WHERE k = 'upnpBootId'");
    db.close();
    const old = await reopen(path, [R1, R2], now);
    assert.equal(old.store.saved?.bootId, undefined);
    assert.equal(old.table.size, 2);
    for (const r of old.table.entries()) assert.equal(r.description, undefined);
    old.store.start(old.table, 9, 1235);
    old.store.close();
    const check = new DatabaseSync(path);
    const cols = check.prepare("PRAGMA table_info(sessions)").all() as { name: string }[];
    check.close();
    assert.ok(cols.some((c) => c.name === "description"), "the column is added back");
    const last = await StateStore.open(path);
    assert.equal(last.saved?.bootId, 1235);
    last.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state: the file and its WAL are 0600 whatever the umask; an existing file is made 0600", async () => {
  const dir = await Deno.makeTempDir();
  const old = Deno.umask(0o022);
  try {
    const path = `${dir}/state.db`;
    const store = await StateStore.open(path);
    const t = newTable();
    store.start(t, 9);
    store.listen(t);
    t.reserve({ proto: 17, a: H1, pa: 5000, x: P1, px: 7, replaceable: true, lifetime: 0 }, 0);
    store.commit();
    // (Exclusive locking mode keeps the WAL index in memory: a -shm file, if any, is 0600 too.)
    for (const f of [path, `${path}-wal`, `${path}-shm`]) {
      const st = await Deno.stat(f).catch(() => null);
      if (st || !f.endsWith("-shm")) assert.equal(st!.mode! & 0o777, 0o600, f);
    }
    store.close();
    await Deno.chmod(path, 0o644);
    (await StateStore.open(path)).close();
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600, "made private again");
  } finally {
    Deno.umask(old);
    await Deno.remove(dir, { recursive: true });
  }
});
