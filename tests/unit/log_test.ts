import assert from "node:assert/strict";
import { formatLine, setFormat, setJournal } from "../../src/runtime/log.ts";

const T = new Date("2026-12-02T00:00:00.000Z");

Deno.test("log: text lines carry the time and level; under the journal the syslog priority instead", () => {
  setFormat("text");
  setJournal(false);
  assert.equal(
    formatLine("warn", "server", "x", T),
    "2026-12-02T00:00:00.000Z warn  server: x\n",
  );
  setJournal(true);
  try {
    assert.equal(formatLine("error", "server", "a", T), "<3>server: a\n");
    assert.equal(formatLine("warn", "server", "a", T), "<4>server: a\n");
    assert.equal(formatLine("info", "driver", "a", T), "<6>driver: a\n");
    assert.equal(formatLine("debug", "driver", "a\nb", T), "<7>driver: a | b\n", "one record");
  } finally {
    setJournal(false);
  }
});

Deno.test("log: --log-format json gives one parseable object per line", () => {
  setFormat("json");
  try {
    const line = formatLine("info", "server", 'quote " and\nnewline', T);
    assert.ok(line.endsWith("\n") && !line.slice(0, -1).includes("\n"));
    assert.deepEqual(JSON.parse(line), {
      time: "2026-12-02T00:00:00.000Z",
      level: "info",
      scope: "server",
      msg: 'quote " and\nnewline',
    });
  } finally {
    setFormat("text");
  }
});
