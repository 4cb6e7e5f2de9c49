/** The python3 applications, shared with the demo: see src/apps.ts. */

export * from "../src/apps.ts";
