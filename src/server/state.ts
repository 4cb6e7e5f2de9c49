/**
 * The server's state file (`--state`): the session table survives restarts,
 * SIGKILL included (the packet walk in README.md, "How it works", step 4).
 *
 * Theory of operation. The file is an SQLite database (`node:sqlite`) in WAL
 * mode, `synchronous=NORMAL`, opened with an exclusive lock (a second server
 * on the same file fails at start). It holds one row per session and the
 * epoch. The store listens to the table: a session added, removed or renewed
 * changes its row inside a transaction that is opened at the first change of
 * an event-loop turn and committed at the end of it (`setImmediate`), so the
 * changes of all the requests that arrived together share one commit (group
 * commit). The server commits before it sends the replies of a turn, as it
 * commits the data path's elements (`run.ts`): no grant is answered before
 * it is on disk. A commit in WAL mode is a write(2) to the
 * WAL file, no fsync: it survives the process dying (SIGKILL, a crash); a
 * power cut may lose the last commits before the next checkpoint.
 * Packet counters are written at a clean stop only.
 *
 * Each row keeps who created it (dpm's protocol, PCP with its nonce,
 * NAT-PMP, UPnP with its description; `Owner` in the table), so that after
 * a restart PCP, NAT-PMP and UPnP still renew and delete only their own.
 * The meta table also keeps the UPnP boot id, which grows only when the
 * state is lost (`src/upnp/boot.ts`). Rows of a file written before
 * owners were kept come back ADOPTED. The file, its WAL and its shared
 * memory file list every host's peers: they are created mode 0600 (and an
 * existing file is made 0600), whatever the umask.
 *
 * At start the rows are restored into the table one by one; a row that
 * cannot be restored is dropped for a reason (expired, its public address no
 * longer in the pool, a clash with a session restored before it, malformed),
 * counted per reason with an example (`DropLog`, `restore.ts`). A drop for any
 * reason but expiry makes the server take a new epoch, so every driver
 * re-reserves at its next exchange instead of announcing a public pair the
 * gateway no longer holds (an expired lease is one the driver has given up
 * too). Then {@linkcode StateStore.start} makes the rows equal to the table
 * (dropped rows deleted, sessions adopted from the kernel's maps added).
 *
 * Compatibility: a state file in the JSON format of version 1 (written at
 * exit and every 60 s by earlier versions) is read, and migrated once: the
 * JSON is kept beside it as `<state>.v1.json`, and the file becomes the
 * SQLite database. Earlier versions cannot read the new file; to go back,
 * put the `.v1.json` copy in its place.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { setImmediate } from "node:timers";
import {
  NONCE_LEN,
  Owner,
  OWNER_NAMES,
  type SessionRecord,
  type SessionTable,
} from "../table/table.ts";
import { logger } from "../runtime/log.ts";
import { isSessionRecord } from "./restore.ts";

const log = logger("server");

/** The JSON state file of version 1 (read for compatibility). */
interface StateFile {
  format: "dpm-state";
  version: 1;
  epoch: number;
  savedAt: number;
  sessions: SessionRecord[];
}

/** Reads a JSON state file of version 1; returns null when absent. Throws on a corrupt file (named). */
export async function readState(path: string): Promise<StateFile | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`Cannot read state file "${path}": ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text) as StateFile;
    if (v.format !== "dpm-state" || v.version !== 1 || !Array.isArray(v.sessions)) {
      throw new Error("not a dpm state file of version 1");
    }
    return v;
  } catch (e) {
    throw new Error(
      `State file "${path}" is corrupt (${(e as Error).message}); move it away to start fresh`,
    );
  }
}

/** A row's PCP nonce as stored (24 hex digits), or null. */
function nonceText(t: SessionTable, s: number): string | null {
  if (t.owner(s) !== Owner.PCP) return null;
  return Array.from(t.nonceOf(s), (x) => x.toString(16).padStart(2, "0")).join("");
}

/** The owner columns as record fields (none: an ADOPTED row, as written before schema 3). */
function ownerFields(owner: unknown, nonce: unknown): Pick<SessionRecord, "owner" | "nonce"> {
  const o = Number(owner);
  if (!Number.isInteger(o) || o <= Owner.ADOPTED || o >= OWNER_NAMES.length) return {};
  const n = typeof nonce === "string" && nonce.length === NONCE_LEN * 2 ? { nonce } : {};
  return { owner: OWNER_NAMES[o]!, ...(o === Owner.PCP ? n : {}) };
}

/** A session row as read back, with its row id. */
export type StoredRecord = SessionRecord & { id?: number };

/** What the state file held at open. */
export interface SavedState {
  /** The epoch of the run that wrote it. */
  epoch: number;
  /** Its sessions, unvalidated (see {@linkcode restoreRecord}). */
  sessions: StoredRecord[];
  /** "sqlite", or "json" for a version 1 file (migrated by start()). */
  format: "sqlite" | "json";
  /** The UPnP boot id the run that wrote it announced (absent: none kept). */
  bootId?: number;
}

const SQLITE_MAGIC = "SQLite format 3\0";
/**
 * 2. The owner and nonce columns were added to it later: an older dpm reads
 * the file as before (its rows' owners are lost on its writes, and come back
 * ADOPTED).
 */
const SCHEMA_VERSION = 2;

const COLUMNS =
  "proto, a, pa, x, px, r, p, pg, expires_at, lifetime, replaceable, shared, packets_out, packets_in, owner, nonce, description";

/**
 * Creates `path` mode 0600 when absent, and makes it and its WAL and shared
 * memory files 0600 when present (SQLite gives those the database file's mode).
 */
function makePrivate(path: string): void {
  try {
    Deno.openSync(path, { write: true, createNew: true, mode: 0o600 }).close();
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
  }
  for (const f of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      Deno.chmodSync(f, 0o600);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

/**
 * Checks that a state file can be kept at `path`: its directory exists and
 * is writable, the path is not a directory, an existing file is writable.
 * Throws with a one-line reason.
 */
export async function checkStatePath(path: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    throw new Error(
      e instanceof Deno.errors.NotFound
        ? `--state ${path}: directory ${dir} does not exist`
        : `--state ${path}: cannot reach directory ${dir}: ${(e as Error).message}`,
    );
  }
  if (!st.isDirectory) throw new Error(`--state ${path}: ${dir} is not a directory`);
  try {
    const f = await Deno.stat(path);
    if (f.isDirectory) throw new Error(`--state ${path}: is a directory, not a file`);
    // Opening for writing is the test that holds for root as for anyone (read-only mounts too).
    (await Deno.open(path, { write: true })).close();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      // Absent: the directory must let us create it (and the temporary file of a migration).
      const probe = `${path}.probe-${Deno.pid}`;
      try {
        (await Deno.open(probe, { write: true, createNew: true, mode: 0o600 })).close();
        await Deno.remove(probe);
      } catch (e2) {
        throw new Error(`--state ${path}: cannot create files in ${dir}: ${(e2 as Error).message}`);
      }
      return;
    }
    if ((e as Error).message.startsWith("--state")) throw e;
    throw new Error(`--state ${path}: not writable: ${(e as Error).message}`);
  }
}

/** Options of {@link StateStore.open}. */
export interface StoreOptions {
  /** Runs the group commit later in the turn; default `setImmediate`. */
  schedule?: (fn: () => void) => void;
}

/**
 * The durable table: see the module documentation. Typical life:
 * `open` → restore `saved` into the table → `start(table, epoch)` →
 * `listen(table)` → ... → `close(table)`.
 */
export class StateStore {
  readonly path: string;
  /** What the file held at open; null when it did not exist. */
  saved: SavedState | null = null;
  #db: DatabaseSync | null = null;
  readonly #schedule: (fn: () => void) => void;
  #insert!: StatementSync;
  #delete!: StatementSync;
  #renew!: StatementSync;
  /** Row id of each table slot (0: none). */
  #ids = new Float64Array(1024);
  #nextId = 1;
  #inTx = false;
  /** Slots inserted by the open transaction (a renewal of them needs no update). */
  readonly #fresh = new Set<number>();
  #broken: string | null = null;
  #table: SessionTable | null = null;
  /** Commits done, and changes they carried (for tests and status). */
  readonly stats = { commits: 0, changes: 0, failures: 0 };

  private constructor(path: string, opts: StoreOptions) {
    this.path = path;
    this.#schedule = opts.schedule ?? ((fn) => void setImmediate(fn));
  }

  /**
   * Opens (or creates) the state file and reads it. Throws, with a one-line
   * reason, when it cannot be kept there (see {@linkcode checkStatePath}), is
   * corrupt, or is in use by another server.
   */
  static async open(path: string, opts: StoreOptions = {}): Promise<StateStore> {
    await checkStatePath(path);
    let head = "";
    try {
      const f = await Deno.open(path, { read: true });
      try {
        const b = new Uint8Array(16);
        const n = (await f.read(b)) ?? 0;
        head = new TextDecoder("latin1").decode(b.subarray(0, n));
      } finally {
        f.close();
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new Error(`Cannot read state file "${path}": ${(e as Error).message}`);
      }
    }
    if (head !== "" && head !== SQLITE_MAGIC) {
      const v1 = await readState(path);
      const store = new StateStore(path, opts);
      store.saved = { epoch: v1!.epoch, sessions: v1!.sessions, format: "json" };
      return store;
    }
    const store = new StateStore(path, opts);
    store.saved = store.#openDb(head !== "");
    return store;
  }

  /** Opens the database at this.path; returns what it holds (null when new). */
  #openDb(existing: boolean): SavedState | null {
    let db: DatabaseSync;
    try {
      makePrivate(this.path);
      db = new DatabaseSync(this.path);
    } catch (e) {
      throw new Error(`Cannot open state file "${this.path}": ${(e as Error).message}`);
    }
    try {
      db.exec("PRAGMA locking_mode=EXCLUSIVE");
      db.exec("PRAGMA journal_mode=WAL");
      db.exec("PRAGMA synchronous=NORMAL");
      // Takes the exclusive lock now (fails when another server holds the file).
      db.exec("BEGIN IMMEDIATE");
      db.exec(
        "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;" +
          "CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY, proto INT, a INT, " +
          "pa INT, x INT, px INT, r INT, p INT, pg INT, expires_at INT, lifetime INT, " +
          "replaceable INT, shared INT, packets_out INT, packets_in INT, owner INT, nonce TEXT, " +
          "description TEXT);",
      );
      // A file of schema 2 gains the owner columns (its rows come back ADOPTED).
      const cols = new Set(
        (db.prepare("PRAGMA table_info(sessions)").all() as { name: string }[]).map((c) => c.name),
      );
      if (!cols.has("owner")) db.exec("ALTER TABLE sessions ADD COLUMN owner INT");
      if (!cols.has("nonce")) db.exec("ALTER TABLE sessions ADD COLUMN nonce TEXT");
      // UPnP's descriptions came later still (an older file's rows have none).
      if (!cols.has("description")) db.exec("ALTER TABLE sessions ADD COLUMN description TEXT");
      const meta = new Map<string, unknown>(
        (db.prepare("SELECT k, v FROM meta").all() as { k: string; v: unknown }[]).map((
          r,
        ) => [r.k, r.v]),
      );
      if (meta.size && meta.get("format") !== "dpm-state") {
        throw new Error("not a dpm state database");
      }
      if (meta.size && Number(meta.get("version")) > SCHEMA_VERSION) {
        throw new Error(`written by a newer dpm (schema ${meta.get("version")})`);
      }
      db.prepare("INSERT OR REPLACE INTO meta VALUES ('format', 'dpm-state'), ('version', ?)")
        .run(SCHEMA_VERSION);
      db.exec("COMMIT");
      this.#db = db;
      this.#prepare();
      if (!existing || !meta.has("epoch")) return null;
      const rows = db.prepare(`SELECT id, ${COLUMNS} FROM sessions`).all() as Record<
        string,
        unknown
      >[];
      let maxId = 0;
      const sessions = rows.map((row): StoredRecord => {
        const id = Number(row.id);
        if (id > maxId) maxId = id;
        const rec = {
          id,
          proto: row.proto,
          a: row.a,
          pa: row.pa,
          x: row.x,
          px: row.px,
          r: row.r,
          p: row.p,
          pg: row.pg,
          expiresAt: row.expires_at,
          lifetime: row.lifetime,
          replaceable: row.replaceable === 1,
          replaced: row.p !== row.pa,
          // The "shared" column holds flag bits: 1 shared, 2 direct (PCP PEER); older files have 0/1.
          shared: (Number(row.shared) & 1) === 1,
          ...((Number(row.shared) & 2) !== 0 ? { direct: true } : {}),
          packetsOut: row.packets_out ?? 0,
          packetsIn: row.packets_in ?? 0,
          ...ownerFields(row.owner, row.nonce),
          ...(typeof row.description === "string" && row.description !== ""
            ? { description: row.description }
            : {}),
        };
        return rec as StoredRecord;
      });
      this.#nextId = maxId + 1;
      const bootId = Number(meta.get("upnpBootId"));
      return {
        epoch: Number(meta.get("epoch")) >>> 0,
        sessions,
        format: "sqlite",
        ...(Number.isInteger(bootId) && bootId > 0 ? { bootId } : {}),
      };
    } catch (e) {
      try {
        db.close();
      } catch { /* already failing */ }
      this.#db = null;
      const m = (e as Error).message;
      throw new Error(
        /locked|busy/i.test(m)
          ? `State file "${this.path}" is in use by another dpm server`
          : /readonly|read-only/i.test(m)
          ? `--state ${this.path}: not writable: ${m}`
          : `State file "${this.path}" is unusable (${m}); move it away to start fresh`,
      );
    }
  }

  #prepare(): void {
    const db = this.#db!;
    this.#insert = db.prepare(
      `INSERT OR REPLACE INTO sessions (id, ${COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
    );
    this.#delete = db.prepare("DELETE FROM sessions WHERE id = ?");
    // A renewal may also have claimed an ADOPTED row for its protocol (src/policy/mappings.ts),
    // or given a UPnP mapping a new description.
    this.#renew = db.prepare(
      "UPDATE sessions SET expires_at = ?, lifetime = ?, owner = ?, nonce = ?, description = ? " +
        "WHERE id = ?",
    );
  }

  /**
   * Makes the file hold exactly `table` and `epoch` (after the restore:
   * dropped rows go, adopted sessions come, a new epoch is kept), migrating
   * a JSON file of version 1 to the database first. `bootId`: the UPnP
   * boot id announced from now on (`src/upnp/boot.ts`), kept for the next
   * run. Synchronous and durable when it returns.
   */
  start(table: SessionTable, epoch: number, bootId?: number): void {
    if (this.saved?.format === "json") this.#migrate();
    const db = this.#db!;
    db.exec("BEGIN");
    try {
      const kept = new Set<number>();
      for (const rec of this.saved?.format === "sqlite" ? this.saved.sessions : []) {
        if (rec.id === undefined || !isSessionRecord(rec)) continue;
        const s = table.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px);
        if (
          s >= 0 && table.r(s) === rec.r && table.p(s) === rec.p && table.pg(s) === rec.pg &&
          table.expiresAt(s) === rec.expiresAt && !kept.has(rec.id)
        ) {
          this.#setId(s, rec.id);
          kept.add(rec.id);
        }
      }
      for (const rec of this.saved?.format === "sqlite" ? this.saved.sessions : []) {
        if (rec.id !== undefined && !kept.has(rec.id)) this.#delete.run(rec.id);
      }
      for (const rec of table.entries()) {
        const s = table.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px);
        if (this.#ids[s] === 0) this.#write(table, s);
      }
      db.prepare("INSERT OR REPLACE INTO meta VALUES ('epoch', ?), ('startedAt', ?)")
        .run(epoch >>> 0, Date.now());
      if (bootId !== undefined) {
        db.prepare("INSERT OR REPLACE INTO meta VALUES ('upnpBootId', ?)").run(bootId);
      }
      db.exec("COMMIT");
    } catch (e) {
      db.exec("ROLLBACK");
      throw new Error(`Cannot write state file "${this.path}": ${(e as Error).message}`);
    }
  }

  /** Replaces a JSON file of version 1 by an empty database (its content is in the table). */
  #migrate(): void {
    const tmp = `${this.path}.tmp-${Deno.pid}`;
    Deno.copyFileSync(this.path, `${this.path}.v1.json`);
    Deno.chmodSync(`${this.path}.v1.json`, 0o600);
    for (const f of [tmp, `${tmp}-wal`, `${this.path}-wal`, `${this.path}-shm`]) {
      try {
        Deno.removeSync(f);
      } catch { /* absent */ }
    }
    makePrivate(tmp);
    new DatabaseSync(tmp).close();
    Deno.renameSync(tmp, this.path);
    this.#openDb(false);
    log.info(
      `state file ${this.path} migrated from JSON (version 1) to SQLite; the JSON is kept as ${this.path}.v1.json`,
    );
  }

  /**
   * Follows `table` from now on: every session added, renewed (a renewal or
   * a repeated grant of any protocol) or removed is written in the turn's
   * transaction, committed by {@linkcode commit}. A row added in this turn
   * is written whole, so its renewals in the same turn need nothing more.
   * Returns the function that stops following.
   */
  listen(table: SessionTable): () => void {
    this.#unlisten();
    this.#table = table;
    this.#unlisten = table.subscribe({
      added: (s) =>
        this.#change(() => {
          this.#write(table, s);
          this.#fresh.add(s);
        }),
      renewed: (s) => {
        if (!table.isLive(s) || this.#fresh.has(s)) return;
        const id = this.#ids[s] ?? 0;
        // A renewal may also have claimed an ADOPTED row for its protocol (src/policy/mappings.ts).
        if (id) {
          this.#change(() =>
            this.#renew.run(
              table.expiresAt(s),
              table.lifetime(s),
              table.owner(s),
              nonceText(table, s),
              table.description(s) || null,
              id,
            )
          );
        }
      },
      removed: (s) => {
        const id = this.#ids[s] ?? 0;
        this.#setId(s, 0);
        this.#fresh.delete(s);
        if (id) this.#change(() => this.#delete.run(id));
      },
    });
    return () => this.#unlisten();
  }

  /** Stops following the table ({@linkcode listen}). */
  #unlisten: () => void = () => {};

  /** Changes waiting for the group commit. */
  get pending(): boolean {
    return this.#inTx;
  }

  #change(op: () => void): void {
    if (!this.#db || this.#broken) return;
    try {
      if (!this.#inTx) {
        this.#db.exec("BEGIN");
        this.#inTx = true;
        this.#schedule(() => this.commit());
      }
      op();
      this.stats.changes++;
    } catch (e) {
      this.#fail(e);
    }
  }

  /**
   * Commits the open transaction (a no-op when nothing changed). The server
   * calls it before it sends the replies of a turn; a change no reply waits
   * for (an expiry) is committed by the turn's scheduled call.
   */
  commit(): void {
    if (!this.#inTx) return;
    this.#inTx = false;
    this.#fresh.clear();
    try {
      this.#db!.exec("COMMIT");
      this.stats.commits++;
    } catch (e) {
      this.#fail(e);
    }
  }

  #fail(e: unknown): void {
    this.stats.failures++;
    if (this.#inTx) {
      this.#inTx = false;
      try {
        this.#db!.exec("ROLLBACK");
      } catch { /* none open */ }
    }
    if (!this.#broken) {
      this.#broken = (e as Error).message;
      log.error(
        `state file ${this.path}: ${this.#broken}; grants are answered but not saved ` +
          "until a full rewrite succeeds (tried every minute)",
      );
    }
  }

  /** The periodic duty: after a failed write, tries to rewrite the whole table. */
  maintain(): void {
    const t = this.#table;
    if (!this.#broken || !t || !this.#db) return;
    this.commit();
    const db = this.#db;
    try {
      db.exec("BEGIN");
      db.exec("DELETE FROM sessions");
      this.#ids.fill(0);
      for (const rec of t.entries()) {
        this.#write(t, t.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px));
      }
      db.exec("COMMIT");
      log.info(`state file ${this.path} rewritten with ${t.size} sessions after "${this.#broken}"`);
      this.#broken = null;
    } catch (e) {
      try {
        db.exec("ROLLBACK");
      } catch { /* none open */ }
      log.warn(`state file ${this.path}: rewrite failed: ${(e as Error).message}`);
    }
  }

  #setId(s: number, id: number): void {
    if (s >= this.#ids.length) {
      const n = new Float64Array(Math.max(this.#ids.length * 2, s + 1));
      n.set(this.#ids);
      this.#ids = n;
    }
    this.#ids[s] = id;
  }

  #write(t: SessionTable, s: number): void {
    const id = this.#nextId++;
    this.#setId(s, id);
    this.#insert.run(
      id,
      t.proto(s),
      t.a(s),
      t.pa(s),
      t.x(s),
      t.px(s),
      t.r(s),
      t.p(s),
      t.pg(s),
      t.expiresAt(s),
      t.lifetime(s),
      t.replaceable(s) ? 1 : 0,
      (t.shared(s) ? 1 : 0) | (t.direct(s) ? 2 : 0),
      t.packetsOut(s),
      t.packetsIn(s),
      t.owner(s),
      nonceText(t, s),
      t.description(s) || null,
    );
  }

  /**
   * Commits what is pending, writes the packet counters of the sessions
   * that have any, and closes the file (its WAL is checkpointed and
   * removed). Stops following the table.
   */
  close(): number {
    const db = this.#db;
    const t = this.#table;
    if (!db) return 0;
    this.commit();
    let n = 0;
    if (t && !this.#broken) {
      const counts = db.prepare(
        "UPDATE sessions SET packets_out = ?, packets_in = ? WHERE id = ?",
      );
      db.exec("BEGIN");
      for (const rec of t.entries()) {
        n++;
        if (rec.packetsOut === 0 && rec.packetsIn === 0) continue;
        const s = t.lookupIdentity(rec.proto, rec.a, rec.pa, rec.x, rec.px);
        const id = this.#ids[s] ?? 0;
        if (id) counts.run(rec.packetsOut, rec.packetsIn, id);
      }
      db.exec("COMMIT");
    }
    this.#unlisten();
    this.#table = null;
    this.#db = null;
    db.close();
    return n;
  }
}
