/**
 * Prometheus metrics over HTTP (`--metrics-addr ADDR:PORT`, path
 * `/metrics`), in the text exposition format 0.0.4: `# HELP` and `# TYPE`
 * lines, then one sample per line, label values escaped.
 *
 * A role hands {@linkcode serveMetrics} a function that returns its metric
 * families at scrape time; nothing is kept between scrapes except the
 * histograms the role owns. Scrapes are cheap: the roles read counters they
 * already keep.
 *
 * @module
 */

import { formatIPv4 } from "../wire/addr.ts";
import { logger } from "../runtime/log.ts";
import type { DataPathStatus } from "./types.ts";

const log = logger("metrics");

/** One sample: label set and value. */
export interface Sample {
  labels?: Record<string, string>;
  value: number;
  /** Name suffix (`_bucket`, `_sum`, `_count` for histograms). */
  suffix?: string;
}

/** One metric family. */
export interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  samples: Sample[];
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Renders families in the text exposition format. */
export function render(families: Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
    out.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const l = s.labels && Object.keys(s.labels).length
        ? `{${Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`
        : "";
      out.push(`${f.name}${s.suffix ?? ""}${l} ${formatValue(s.value)}`);
    }
  }
  return out.join("\n") + "\n";
}

/** A cumulative histogram (seconds), for latencies. */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array(bounds.length).fill(0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }
  /** The family's samples. */
  samples(labels: Record<string, string> = {}): Sample[] {
    const s: Sample[] = this.bounds.map((b, i) => ({
      suffix: "_bucket",
      labels: { ...labels, le: String(b) },
      value: this.counts[i]!,
    }));
    s.push({ suffix: "_bucket", labels: { ...labels, le: "+Inf" }, value: this.count });
    s.push({ suffix: "_sum", labels, value: this.sum });
    s.push({ suffix: "_count", labels, value: this.count });
    return s;
  }
}

/** Latency buckets from 10 µs to 1 s. */
export const LATENCY_BUCKETS = [
  0.00001,
  0.000025,
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.1,
  1,
] as const;

/** Counter and gauge families from a record of numbers (one label per key). */
export function byLabel(
  name: string,
  help: string,
  type: "counter" | "gauge",
  label: string,
  values: Record<string, number>,
): Family {
  return {
    name,
    help,
    type,
    samples: Object.entries(values).map(([k, v]) => ({ labels: { [label]: k }, value: v })),
  };
}

/** A family of one sample without labels. */
export function single(
  name: string,
  help: string,
  type: "counter" | "gauge",
  value: number,
): Family {
  return { name, help, type, samples: [{ value }] };
}

/** The process's own metrics (resident memory, heap, uptime). */
export function processFamilies(startedAt: number): Family[] {
  const m = Deno.memoryUsage();
  return [
    single("process_resident_memory_bytes", "Resident memory of the dpm process.", "gauge", m.rss),
    single("dpm_heap_used_bytes", "JavaScript heap in use.", "gauge", m.heapUsed),
    single(
      "process_start_time_seconds",
      "When the process started, Unix time.",
      "gauge",
      Math.floor(startedAt / 1000),
    ),
  ];
}

/** A role's data path: whether it is up (labelled with its kind) and its watchdog's reinstalls. */
export function dataPathFamilies(dp: DataPathStatus): Family[] {
  return [
    {
      name: "dpm_datapath_up",
      help: "1 when the data path is on and complete, 0 when degraded or off.",
      type: "gauge",
      samples: [{ labels: { kind: dp.kind }, value: dp.state === "on" ? 1 : 0 }],
    },
    single(
      "dpm_datapath_reinstalls_total",
      "Times the watchdog found dpm's kernel rules gone or changed and reinstalled them.",
      "counter",
      dp.reinstalls,
    ),
  ];
}

/**
 * Serves `/metrics` on `addr:port` until the returned function is called.
 * Rejects (with a one-line reason) when the address cannot be bound.
 */
export async function serveMetrics(
  endpoint: { addr: number; port: number },
  collect: () => Family[],
): Promise<() => Promise<void>> {
  const hostname = formatIPv4(endpoint.addr);
  let server: Deno.HttpServer;
  try {
    server = Deno.serve({ hostname, port: endpoint.port, onListen: () => {} }, (req) => {
      const url = new URL(req.url);
      if (url.pathname !== "/metrics") {
        return new Response("dpm: metrics are at /metrics\n", { status: 404 });
      }
      try {
        return new Response(render(collect()), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      } catch (e) {
        log.error(`collecting metrics: ${(e as Error).message}`);
        return new Response("collecting metrics failed\n", { status: 500 });
      }
    });
  } catch (e) {
    throw new Error(
      `Cannot serve metrics on ${hostname}:${endpoint.port}: ${(e as Error).message}`,
    );
  }
  await Promise.resolve();
  log.info(`metrics on http://${hostname}:${endpoint.port}/metrics`);
  return () => server.shutdown();
}
