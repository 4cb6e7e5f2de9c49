/**
 * The HA role of `dpm server --ha` (docs/ha.md, "The takeover, ordered"):
 * which of the pair's two gateways serves, driven by keepalived's VRRP
 * state, one change at a time and in order.
 *
 * keepalived owns only the VRRP state and moves no address; it writes one
 * line per state change into its notify FIFO (`vrrp_notify_fifo`),
 * `INSTANCE "dpm" MASTER 150`. {@linkcode HaRole} turns those lines into
 * the ordered steps of a {@linkcode HaSteps}:
 *
 * - MASTER (takeover): `prepare` (the replicated state is in this kernel
 *   and in the maps: the mirror's last events applied), then `claim` (G on
 *   the LAN link, the pool on the WAN link, gratuitous ARPs), then `serve`
 *   (a new epoch, the control listeners answer, ANNOUNCE). Packets reach
 *   this box only once it has claimed, and by then every replicated session
 *   translates here: the RST race of keepalived's own address move is
 *   closed.
 * - BACKUP, FAULT, STOP (release): `unserve` and `release` first (nothing
 *   more arrives), then `mirror` (back to rebuilding the table from
 *   replicas).
 *
 * Changes queue behind the one in progress, so a fast BACKUP -> MASTER ->
 * BACKUP applies in order. The steps are the seam: `run.ts` gives the
 * real ones, the unit test a fake that records them.
 *
 * @module
 */

/** The states keepalived reports for a VRRP instance. */
export type VrrpState = "MASTER" | "BACKUP" | "FAULT" | "STOP";

/** The role this gateway plays: serving, mirroring, or mirroring because keepalived says it is unfit. */
export type HaRoleName = "active" | "standby" | "fault";

/**
 * One line of keepalived's notify FIFO: `INSTANCE "<name>" <STATE> <priority>`
 * (GROUP lines and keepalived's own lines are not instance states: null).
 */
export function parseNotifyLine(line: string): { instance: string; state: VrrpState } | null {
  const m = /^INSTANCE\s+"?([^"\s]+)"?\s+(MASTER|BACKUP|FAULT|STOP)\b/.exec(line.trim());
  if (!m) return null;
  return { instance: m[1]!, state: m[2] as VrrpState };
}

/** The ordered steps of a transition (see the module's text). */
export interface HaSteps {
  /** The replicated state is in this kernel and the maps: before anything is claimed. */
  prepare(): Promise<void>;
  /** G and the pool on this box, gratuitous ARPs sent. */
  claim(): Promise<void>;
  /** A new epoch; the control listeners answer; ANNOUNCE. */
  serve(): void;
  /** The control listeners stop answering. */
  unserve(): void;
  /** G and the pool off this box. */
  release(): Promise<void>;
  /** Back to mirroring the replicas (a full reconcile). */
  mirror(): Promise<void>;
}

/** What the role has done: `dpm status` and the metrics show it. */
export interface HaRoleStatus {
  role: HaRoleName;
  /** Wall clock (ms) of the last role change, or of the start. */
  since: number;
  /** Role changes since start. */
  transitions: number;
  /** The last VRRP state keepalived reported, or null before the first. */
  vrrp: VrrpState | null;
  /** The last takeover's duration from keepalived's MASTER line to serving, ms (null before one). */
  lastTakeoverMs: number | null;
  /** Of that takeover: until the addresses were claimed, ms. */
  lastClaimMs: number | null;
  /** Transitions whose steps failed (logged). */
  failed: number;
}

/** The role state machine (see the module's text). */
export class HaRole {
  readonly #steps: HaSteps;
  readonly #now: () => number;
  readonly #log: (line: string) => void;
  /** What the log line of a takeover adds (the mirror's counts). */
  readonly #describe: () => string;
  /** The transition in progress, and those queued behind it. */
  #chain: Promise<void> = Promise.resolve();
  readonly status: HaRoleStatus;

  constructor(
    steps: HaSteps,
    o: { now?: () => number; log?: (line: string) => void; describe?: () => string } = {},
  ) {
    this.#steps = steps;
    this.#describe = o.describe ?? (() => "");
    this.#now = o.now ?? Date.now;
    this.#log = o.log ?? (() => {});
    this.status = {
      role: "standby",
      since: this.#now(),
      transitions: 0,
      vrrp: null,
      lastTakeoverMs: null,
      lastClaimMs: null,
      failed: 0,
    };
  }

  get role(): HaRoleName {
    return this.status.role;
  }

  /** Queues the change a FIFO line reports (other lines are ignored); resolves when it was applied. */
  line(text: string): Promise<void> {
    const p = parseNotifyLine(text);
    return p ? this.vrrp(p.state) : this.#chain;
  }

  /** Queues a VRRP state change; resolves when it (and all before it) was applied. */
  vrrp(state: VrrpState): Promise<void> {
    const at = this.#now();
    this.#chain = this.#chain.then(() => this.#apply(state, at));
    return this.#chain;
  }

  async #apply(state: VrrpState, at: number): Promise<void> {
    this.status.vrrp = state;
    const want: HaRoleName = state === "MASTER"
      ? "active"
      : state === "FAULT"
      ? "fault"
      : "standby";
    const was = this.status.role;
    try {
      if (want === "active") {
        if (was === "active") return;
        await this.#steps.prepare();
        await this.#steps.claim();
        const claimed = this.#now();
        this.#steps.serve();
        this.#set(want);
        this.status.lastClaimMs = claimed - at;
        this.status.lastTakeoverMs = this.#now() - at;
        this.#log(
          `active (keepalived: ${state}): claimed after ${this.status.lastClaimMs} ms, ` +
            `serving after ${this.status.lastTakeoverMs} ms${this.#describe()}`,
        );
        return;
      }
      if (was === "active") {
        this.#steps.unserve();
        await this.#steps.release();
      }
      if (want !== was) this.#set(want);
      // Mirroring (again), and a full resync asked for: also for a box that
      // (re)starts as backup, so that it holds every session before it may
      // take over (keepalived's preempt_delay leaves the time).
      await this.#steps.mirror();
      this.#log(
        `${want} (keepalived: ${state})${
          was === "active" ? ": addresses released" : ""
        }; mirroring`,
      );
    } catch (e) {
      this.status.failed++;
      this.#log(`becoming ${want} (keepalived: ${state}) failed: ${(e as Error).message}`);
    }
  }

  #set(role: HaRoleName): void {
    this.status.role = role;
    this.status.since = this.#now();
    this.status.transitions++;
  }
}
