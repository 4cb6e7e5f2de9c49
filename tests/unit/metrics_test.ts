/**
 * src/operator/metrics.ts: the families both roles build the same way (one
 * unlabelled sample; the data path's state), as Prometheus reads them.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dataPathFamilies, render, single } from "../../src/operator/metrics.ts";

Deno.test("metrics: single is one family of one unlabelled sample", () => {
  assert.deepEqual(single("dpm_x", "An x.", "counter", 7), {
    name: "dpm_x",
    help: "An x.",
    type: "counter",
    samples: [{ value: 7 }],
  });
  assert.equal(
    render([single("dpm_y", "A y.", "gauge", 2.5)]),
    [
      "# HELP dpm_y A y.",
      "# TYPE dpm_y gauge",
      "dpm_y 2.5",
      "",
    ].join("\n"),
  );
});

Deno.test("metrics: dataPathFamilies is up 1 only when on, labelled by kind, with the reinstalls", () => {
  const on = render(dataPathFamilies({ kind: "kernel", state: "on", reinstalls: 3 }));
  assert.match(on, /^dpm_datapath_up\{kind="kernel"\} 1$/m);
  assert.match(on, /^# TYPE dpm_datapath_reinstalls_total counter$/m);
  assert.match(on, /^dpm_datapath_reinstalls_total 3$/m);
  const degraded = render(dataPathFamilies({ kind: "queue", state: "degraded", reinstalls: 0 }));
  assert.match(degraded, /^dpm_datapath_up\{kind="queue"\} 0$/m);
  const off = render(dataPathFamilies({ kind: "off", state: "off", reinstalls: 0 }));
  assert.match(off, /^dpm_datapath_up\{kind="off"\} 0$/m);
});
