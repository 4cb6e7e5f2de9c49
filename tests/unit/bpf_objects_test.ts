/**
 * The embedded BPF objects (bpf/objects.ts) are what the
 * sources under bpf/ compile to, and the TypeScript mirror of bpf/nat.h
 * (src/datapath/bpf/layout.ts) matches the layouts the compiler gave the
 * programs (read from the objects' BTF with `bpftool btf dump`). Needs
 * clang-14, llvm-14 and bpftool (tools/install-deps); no root.
 *
 * @module
 */

import assert from "node:assert/strict";
import { buildBpfObjects, objectsModule } from "../../tools/build-bpf.ts";
import { bpfObject } from "../../bpf/objects.ts";
import {
  HostConfigLayout,
  NatConfigLayout,
  NatDir,
  NatEntryLayout,
  NatFlag,
  NatHandoff,
  NatKeyLayout,
} from "../../src/datapath/bpf/layout.ts";

Deno.test("bpf objects: the committed objects are what bpf/*.bpf.c compile to (deno task bpf)", async () => {
  const built = await buildBpfObjects();
  for (const role of ["gateway", "host"] as const) {
    const committed = bpfObject(role);
    assert.ok(
      committed.length === built[role].length && committed.every((b, i) => b === built[role][i]),
      `${role}: the committed object differs from the sources: run deno task bpf`,
    );
  }
  // And the module text is what the generator writes (nothing edited by hand).
  const text = await Deno.readTextFile(
    new URL("../../bpf/objects.ts", import.meta.url),
  );
  assert.equal(text, objectsModule(built));
});

/** Member byte offsets and struct sizes by name, from `bpftool btf dump file F format raw`. */
async function btfStructs(
  obj: Uint8Array,
): Promise<Map<string, { size: number; members: Map<string, number> }>> {
  const f = await Deno.makeTempFile({ suffix: ".o" });
  try {
    await Deno.writeFile(f, obj);
    const out = await new Deno.Command("bpftool", {
      args: ["btf", "dump", "file", f, "format", "raw"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const structs = new Map<string, { size: number; members: Map<string, number> }>();
    let cur: Map<string, number> | null = null;
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      const s = /^\[\d+\] STRUCT '(\w+)' size=(\d+)/.exec(line);
      if (s) {
        cur = new Map();
        structs.set(s[1]!, { size: Number(s[2]), members: cur });
        continue;
      }
      const m = /^\s+'(\w+)' type_id=\d+ bits_offset=(\d+)/.exec(line);
      if (m && cur) cur.set(m[1]!, Number(m[2]) / 8);
      else if (!line.startsWith("\t")) cur = null;
    }
    return structs;
  } finally {
    await Deno.remove(f);
  }
}

Deno.test("bpf objects: layout.ts mirrors nat.h as compiled (BTF offsets and sizes)", async () => {
  for (const role of ["gateway", "host"] as const) {
    const st = await btfStructs(bpfObject(role));
    const check = (
      name: string,
      layout: Record<string, number>,
      fields: Record<string, string>,
    ) => {
      const s = st.get(name);
      assert.ok(s, `${role}: no struct ${name} in the BTF`);
      assert.equal(s.size, layout.SIZE, `${role}: sizeof(struct ${name})`);
      for (const [c, f] of Object.entries(fields)) {
        assert.equal(s.members.get(f), layout[c], `${role}: ${name}.${f}`);
      }
      assert.equal(
        s.members.size,
        Object.keys(fields).length,
        `${role}: ${name} has other members`,
      );
    };
    check("nat_key", NatKeyLayout, {
      SADDR: "saddr",
      DADDR: "daddr",
      SPORT: "sport",
      DPORT: "dport",
      PROTO: "proto",
      DIR: "dir",
      PAD: "pad",
    });
    check("nat_entry", NatEntryLayout, {
      SADDR: "saddr",
      DADDR: "daddr",
      SPORT: "sport",
      DPORT: "dport",
      FLAGS: "flags",
      PACKETS: "packets",
      BYTES: "bytes",
      LAST_NS: "last_ns",
      NH_IFINDEX: "nh_ifindex",
      NH_AT: "nh_at",
      NH_MTU: "nh_mtu",
      NH_DMAC: "nh_dmac",
    });
    if (role === "gateway") {
      check("nat_config", NatConfigLayout, {
        LAN_IFINDEX: "lan_ifindex",
        WAN_IFINDEX: "wan_ifindex",
        LAN_NET: "lan_net",
        LAN_MASK: "lan_mask",
        GATEWAY: "gateway",
        EDGE_LO: "edge_lo",
        EDGE_HI: "edge_hi",
        LAN_MAC: "lan_mac",
        WAN_MAC: "wan_mac",
        LAN_HANDOFF: "lan_handoff",
        WAN_HANDOFF: "wan_handoff",
        PAD: "pad",
      });
    } else {
      check("host_config", HostConfigLayout, {
        LAN_NET: "lan_net",
        LAN_MASK: "lan_mask",
        PASS_MARK: "pass_mark",
        GATEWAY: "gateway",
        ALIVE_UNTIL_NS: "alive_until_ns",
      });
    }
  }
});

Deno.test("bpf objects: nat.h flag, direction and hand-off values are layout.ts values", async () => {
  const h = await Deno.readTextFile(new URL("../../bpf/nat.h", import.meta.url));
  const val = (name: string): number => {
    const m = new RegExp(`\\b${name} = ([^,]+),`).exec(h);
    assert.ok(m, `nat.h defines ${name}`);
    // "1 << 3" or "1" or "NAT_F_SEEN_OUT | NAT_F_SEEN_IN"
    return m[1]!.split("|").map((t) => t.trim()).reduce((acc: number, t: string): number => {
      const sh = /^(\d+) << (\d+)$/.exec(t);
      if (sh) return acc | (Number(sh[1]) << Number(sh[2]));
      if (/^\d+$/.test(t)) return acc | Number(t);
      return acc | val(t);
    }, 0);
  };

  assert.equal(val("NAT_DIR_OUT"), NatDir.OUT);
  assert.equal(val("NAT_DIR_IN"), NatDir.IN);
  for (const [k, v] of Object.entries(NatFlag)) assert.equal(val(`NAT_F_${k}`), v, `NAT_F_${k}`);
  for (const [k, v] of Object.entries(NatHandoff)) {
    assert.equal(val(`NAT_HANDOFF_${k}`), v, `NAT_HANDOFF_${k}`);
  }
});
