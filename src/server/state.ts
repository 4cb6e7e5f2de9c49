/**
 * The server's state file: the table survives restarts (DESIGN.md packet
 * walk, step 5). Written atomically (temporary file, fsync, rename); every
 * record is validated before it is restored.
 *
 * @module
 */

import type { SessionRecord } from "../table/table.ts";
import type { ServerCore } from "./core.ts";

interface StateFile {
  format: "dpm-state";
  version: 1;
  epoch: number;
  savedAt: number;
  sessions: SessionRecord[];
}

/** Reads a state file; returns null when absent. Throws on a corrupt file (named). */
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

const u32 = (v: unknown) =>
  Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
const u16 = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;

/** True when `v` has the shape of a SessionRecord a state file may hold. */
export function isSessionRecord(v: unknown): v is SessionRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  return [1, 6, 17].includes(r.proto as number) && u32(r.a) && u32(r.x) && u32(r.r) &&
    u16(r.pa) && u16(r.px) && u16(r.p) && u16(r.pg) && Number.isFinite(r.expiresAt) &&
    typeof r.replaceable === "boolean" && typeof r.replaced === "boolean" &&
    typeof r.shared === "boolean" && Number.isFinite(r.packetsOut) && Number.isFinite(r.packetsIn);
}

/** Writes the table atomically (temporary file, fsync, rename). */
export async function writeState(path: string, core: ServerCore): Promise<void> {
  const state: StateFile = {
    format: "dpm-state",
    version: 1,
    epoch: core.epoch,
    savedAt: core.now(),
    sessions: [...core.table.entries()],
  };
  const tmp = `${path}.tmp-${Deno.pid}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await f.write(new TextEncoder().encode(JSON.stringify(state)));
    await f.sync();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
}
