/**
 * linux/waiter.ts `serveLoop` with a fake socket (a queue of wake-ups, each
 * with the reads that follow it): drains are bounded by the redrain, the
 * turn ends once per wake-up, a stop ends the loop, and an exception goes to
 * `onFatal` once.
 *
 * @module
 */

import assert from "node:assert/strict";
import { serveLoop, type ServeLoopParts } from "../../linux/waiter.ts";

/** A fake socket: each wake-up is the list of what its successive drains read. */
class FakeSocket {
  readonly wakes: number[][];
  readonly log: string[] = [];
  #current: number[] = [];
  #idle: (() => void) | null = null;
  #stopped = false;
  #readable = false;

  constructor(wakes: number[][]) {
    this.wakes = wakes;
  }

  /** Resolves true for each queued wake-up, then waits until stopped (resolving false). */
  wait(_ms: number): Promise<boolean> {
    const next = this.wakes.shift();
    if (next !== undefined) {
      this.#current = next;
      this.log.push("wake");
      return Promise.resolve(true);
    }
    if (this.#stopped) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.#idle = () => resolve(this.#readable);
    });
  }

  drain(): number {
    const n = this.#current.shift() ?? 0;
    this.log.push(`drain ${n}`);
    return n;
  }

  /** Resolves once every wake-up was handed out and the loop waits again. */
  async settled(): Promise<void> {
    while (this.wakes.length > 0 || this.#idle === null) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Ends the pending wait: `readable` true as if a datagram came just as the loop stopped. */
  stop(readable = false): void {
    this.#stopped = true;
    const idle = this.#idle;
    this.#idle = null;
    if (idle) readable ? this.#wakeIdle(idle) : idle();
  }

  #wakeIdle(idle: () => void): void {
    this.#current = [7];
    this.log.push("wake");
    this.#readable = true;
    idle();
  }
}

function parts(s: FakeSocket, redrain: number, turns: string[]): ServeLoopParts {
  return {
    wait: (ms) => s.wait(ms),
    drain: () => s.drain(),
    redrain,
    onTurnEnd: () => s.log.push("turn"),
    onFatal: (e) => turns.push(`fatal ${e.message}`),
  };
}

Deno.test("serveLoop: redrains while reads return something, at most `redrain` times; one turn end per wake-up", async () => {
  const s = new FakeSocket([[3, 2, 0, 9], [5, 5, 5, 5, 5]]);
  const fatal: string[] = [];
  const stop = serveLoop(parts(s, 2, fatal));
  await s.settled();
  stop();
  s.stop();
  assert.deepEqual(s.log, [
    "wake",
    "drain 3",
    "drain 2",
    "drain 0",
    "turn",
    "wake",
    "drain 5",
    "drain 5",
    "drain 5",
    "turn",
  ]);
  assert.deepEqual(fatal, []);
});

Deno.test("serveLoop: an exception of a drain ends the loop and reaches onFatal once", async () => {
  const s = new FakeSocket([[1], [1]]);
  const fatal: string[] = [];
  let drains = 0;
  const p = parts(s, 4, fatal);
  p.drain = () => {
    drains++;
    throw new Error("fd failed");
  };
  serveLoop(p);
  while (fatal.length === 0) await new Promise((r) => setTimeout(r, 1));
  await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(fatal, ["fatal fd failed"]);
  assert.equal(drains, 1);
  assert.equal(s.wakes.length, 1, "the loop stopped waiting after the failure");
});

Deno.test("serveLoop: a wake-up that comes after stop is not drained", async () => {
  const s = new FakeSocket([]);
  const fatal: string[] = [];
  const stop = serveLoop(parts(s, 1, fatal));
  await s.settled();
  stop();
  s.stop(true);
  await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(s.log, ["wake"]);
  assert.deepEqual(fatal, []);
});
