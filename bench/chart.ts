/**
 * Grouped bar charts as standalone SVG text, for bench/results/. No library:
 * axes, ticks, bars, value labels and a legend, all in plain SVG elements.
 *
 * @module
 */

/** One series of bars (one bar per category). */
export interface Series {
  name: string;
  color: string;
  values: number[];
}

/** What {@linkcode barChart} draws. */
export interface BarChart {
  title: string;
  /** A note under the title (conditions of the run). */
  subtitle?: string;
  /** One group of bars per category, left to right. */
  categories: string[];
  series: Series[];
  /** Label of the vertical axis. */
  yLabel: string;
  /** Label of the horizontal axis. */
  xLabel: string;
  /** Formats a value for tick and bar labels. */
  format?: (v: number) => string;
  width?: number;
  height?: number;
}

/** Escapes text for SVG. */
function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks up to `max`. */
export function niceStep(max: number, n = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / n;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

/** Short number: 1.2M, 340k, 12.5. */
export function shortNumber(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(a >= 1e7 ? 0 : 2)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`;
  return `${+v.toFixed(a >= 10 ? 0 : 1)}`;
}

/** Draws a grouped bar chart; returns the SVG document. */
export function barChart(c: BarChart): string {
  const W = c.width ?? 720;
  const H = c.height ?? 420;
  const fmt = c.format ?? shortNumber;
  const m = { top: c.subtitle ? 78 : 60, right: 20, bottom: 64, left: 78 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const finite = c.series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const max = Math.max(0, ...finite);
  const step = niceStep(max);
  const top = Math.max(step, Math.ceil((max * 1.08) / step) * step);
  const y = (v: number) => m.top + ph - (Math.max(0, v) / top) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${
      esc(c.title)
    }</text>`,
  );
  if (c.subtitle) {
    out.push(
      `<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(c.subtitle)}</text>`,
    );
  }
  // Grid and y ticks.
  for (let v = 0; v <= top + step / 2; v += step) {
    const yy = y(v).toFixed(1);
    out.push(
      `<line x1="${m.left}" x2="${m.left + pw}" y1="${yy}" y2="${yy}" stroke="#e3e3e3"/>`,
      `<text x="${m.left - 8}" y="${yy}" text-anchor="end" dominant-baseline="middle">${
        esc(fmt(v))
      }</text>`,
    );
  }
  out.push(
    `<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`,
    `<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${
      m.top + ph
    }" stroke="#333"/>`,
    `<text x="18" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 18 ${
      m.top + ph / 2
    })">${esc(c.yLabel)}</text>`,
    `<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle">${esc(c.xLabel)}</text>`,
  );
  // Bars.
  const group = pw / Math.max(1, c.categories.length);
  const bw = Math.min(60, (group * 0.75) / Math.max(1, c.series.length));
  c.categories.forEach((cat, i) => {
    const gx = m.left + i * group + (group - bw * c.series.length) / 2;
    c.series.forEach((s, k) => {
      const v = s.values[i];
      const x = gx + k * bw;
      if (v === undefined || !Number.isFinite(v)) {
        out.push(
          `<text x="${x + bw / 2}" y="${
            m.top + ph - 4
          }" text-anchor="middle" fill="#999">n/a</text>`,
        );
        return;
      }
      const yy = y(v);
      out.push(
        `<rect x="${x.toFixed(1)}" y="${yy.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${
          (m.top + ph - yy).toFixed(1)
        }" fill="${s.color}"><title>${esc(`${s.name}, ${cat}: ${fmt(v)}`)}</title></rect>`,
        `<text x="${(x + bw / 2 - 1).toFixed(1)}" y="${
          (yy - 4).toFixed(1)
        }" text-anchor="middle" font-size="11">${esc(fmt(v))}</text>`,
      );
    });
    out.push(
      `<text x="${(m.left + i * group + group / 2).toFixed(1)}" y="${
        m.top + ph + 18
      }" text-anchor="middle">${esc(cat)}</text>`,
    );
  });
  // Legend, top right.
  c.series.forEach((s, k) => {
    const lx = m.left + pw - 190;
    const ly = m.top - 14;
    const off = k * 95;
    out.push(
      `<rect x="${lx + off}" y="${ly - 9}" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${lx + off + 16}" y="${ly + 1}">${esc(s.name)}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
