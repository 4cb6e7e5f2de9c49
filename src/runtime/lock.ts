/**
 * One dpm server and one driver per network namespace. The lock is an
 * abstract Unix socket (`\0dpm-server`, `\0dpm-driver`): abstract names
 * belong to the network namespace, and the kernel releases them when the
 * process dies however it dies, so a SIGKILLed run never leaves a stale lock.
 *
 * @module
 */

import net from "node:net";

/**
 * Takes the role's lock in this network namespace. Resolves with the
 * release function; rejects with a one-line reason when another process
 * holds it.
 */
export function lockRole(role: "server" | "driver"): Promise<() => Promise<void>> {
  const srv = net.createServer();
  return new Promise((resolve, reject) => {
    srv.once("error", (e: Error & { code?: string }) => {
      reject(
        new Error(
          e.code === "EADDRINUSE"
            ? `another dpm ${role} runs in this network namespace; stop it first (one per namespace)`
            : `cannot take the dpm ${role} lock: ${e.message}`,
        ),
      );
    });
    srv.listen(`\0dpm-${role}`, () => {
      // Not a service: nobody connects; it must not keep the process alive.
      srv.unref();
      resolve(() => new Promise<void>((done) => srv.close(() => done())));
    });
  });
}
