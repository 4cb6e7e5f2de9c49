/**
 * BOOTID.UPNP.ORG of `dpm server`'s IGD (UDA 1.1 section 1.2.2): the number
 * every SSDP message carries so that control points can tell a device that
 * lost its state from one that merely announced itself again. It grows when
 * the gateway's mappings were lost, and only then:
 *
 * - without `--state`, every start loses the table: the boot id is the
 *   start's time in seconds, which grows from one start to the next (as
 *   miniupnpd's `upnp_bootid` does);
 * - with `--state`, a start that restored the table (the same epoch as the
 *   file's: `src/server/state.ts`) keeps the file's boot id, so control
 *   points that see it again know their mappings are still there; a new
 *   file, or one whose restore dropped rows (a new epoch), gets a boot id
 *   above both the file's and the time's.
 *
 * UDA says a boot id is a non-negative 31-bit number: the time is taken
 * modulo 2^31 (it reaches that in 2038; the file's +1 still grows then).
 *
 * @module
 */

/** What the state file held of the previous run (`SavedState`). */
export interface SavedBoot {
  epoch: number;
  bootId?: number;
}

/** The largest boot id (UDA: 31 bits). */
export const MAX_BOOT_ID = 0x7fffffff;

/**
 * The boot id to announce, given what the state file held (null: no file,
 * or a new one), the epoch the server runs in after its restore, and the
 * clock (ms).
 */
export function bootIdFor(saved: SavedBoot | null, epoch: number, nowMs: number): number {
  const time = Math.max(1, Math.floor(nowMs / 1000) % (MAX_BOOT_ID + 1));
  const kept = saved?.bootId;
  if (kept === undefined) return time;
  if (saved!.epoch === epoch) return kept;
  return Math.min(MAX_BOOT_ID, Math.max(time, kept + 1));
}
