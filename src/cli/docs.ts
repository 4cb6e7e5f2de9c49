/**
 * Everything written about the flags, generated from the one table in
 * `src/config.ts`: each command's help, the main usage, the man page
 * (`dpm.8`, roff), a JSON Schema of each role's config file (for editors),
 * and bash and zsh completions. `dpm help --man | --json-schema <role> |
 * --completion <bash|zsh>` prints them; `deno task docs` writes them to
 * `contrib/`.
 *
 * @module
 */

import { z } from "zod";
import { type Command, type CommandName, COMMANDS, type Flag } from "../config.ts";
import { VERSION } from "../version.ts";

function flagLabel(name: string, f: Flag): string {
  const n = f.negated ? `no-${name}` : name;
  return f.arg ? `--${n} ${f.arg}` : `--${n}`;
}

/** The help of one command. */
export function commandHelp(name: CommandName): string {
  const c: Command = COMMANDS[name];
  const entries = Object.entries(c.flags);
  const width = Math.max(...entries.map(([n, f]) => flagLabel(n, f).length), 18) + 2;
  const groups = [...new Set(entries.map(([, f]) => f.group))];
  const lines = [`Usage: ${c.synopsis}`, "", c.about, ""];
  for (const g of groups) {
    lines.push(`${g}:`);
    for (const [n, f] of entries.filter(([, f]) => f.group === g)) {
      const extra = f.required ? " (required)" : f.dflt !== undefined ? ` (default ${f.dflt})` : "";
      lines.push(`  ${flagLabel(n, f).padEnd(width)}${f.help}${extra}`);
    }
  }
  lines.push("Other:");
  if (c.config) {
    lines.push(
      `  ${
        "--config <file>".padEnd(width)
      }JSON file with any of the above (long names as keys); flags win`,
    );
  }
  lines.push(`  ${"-h, --help".padEnd(width)}this help`);
  return lines.join("\n") + "\n";
}

/** The main usage. */
export function mainHelp(): string {
  const rows = (Object.keys(COMMANDS) as CommandName[]).map((n) => [
    COMMANDS[n].synopsis,
    COMMANDS[n].about.split(". ")[0]!.replace(/\.$/, ""),
  ]);
  return [
    `dpm ${VERSION} — cooperative NAT (dynamic port management) for Linux`,
    "",
    "Usage:",
    ...rows.map(([s, a]) => `  ${s}\n      ${a}`),
    "  dpm help [command] | dpm <command> --help | dpm --version",
    "",
    "Documentation: man 8 dpm; docs/ in the source tree.",
    "",
  ].join("\n");
}

const roffEscape = (s: string) =>
  s.replace(/\\/g, "\\e").replace(/-/g, "\\-").replace(/^\./, "\\&.");

/** The man page, dpm(8), in roff. */
export function manPage(date = "2026-12-01"): string {
  const out = [
    `.TH DPM 8 "${date}" "dpm ${VERSION}" "System Administration"`,
    ".SH NAME",
    "dpm \\- cooperative NAT (dynamic port management) for Linux",
    ".SH SYNOPSIS",
  ];
  for (const c of Object.values(COMMANDS) as Command[]) {
    out.push(".B " + roffEscape(c.synopsis), ".br");
  }
  out.push(
    ".SH DESCRIPTION",
    "A private network reaches the outside through a gateway that owns a pool of public",
    "addresses. \\fBdpm server\\fR runs on the gateway and \\fBdpm driver\\fR on each host",
    "behind it: the driver asks the server to reserve a public address and, if the",
    "application's port is replaceable, a replacement port; sessions that need the same",
    "fixed port are told apart by the remote peer; and the driver tells the application",
    "its public address and port (\\fBdpm query\\fR).",
  );
  for (const [name, c] of Object.entries(COMMANDS) as [string, Command][]) {
    out.push(`.SH ${name.toUpperCase()}`, roffEscape(c.about));
    for (const [n, f] of Object.entries(c.flags)) {
      out.push(".TP", `.B ${roffEscape(flagLabel(n, f))}`);
      const extra = f.required ? " (required)" : f.dflt !== undefined ? ` (default ${f.dflt})` : "";
      out.push(roffEscape(f.help + extra) + ".");
    }
    if (c.config) {
      out.push(
        ".TP",
        ".B \\-\\-config \\fIfile\\fR",
        "A JSON object with any of the flags above, long names as keys; flags win.",
      );
    }
  }
  out.push(
    ".SH SIGNALS",
    "SIGHUP re-reads the configuration (the log level changes live; other changes are named",
    "as needing a restart). SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 stop with cleanup.",
    "On the kernel data path a stopped role leaves established sessions translating; the",
    "same command with \\fB\\-\\-cleanup\\fR removes everything.",
    ".SH EXIT STATUS",
    "0 on success; 1 on a runtime error (or, for \\fBquery\\fR, no such session); 2 on bad",
    "usage or configuration.",
    ".SH FILES",
    ".TP",
    ".I /run/dpm/server.sock, /run/dpm/driver.sock",
    "operator sockets (mode 0600).",
    ".SH SEE ALSO",
    ".BR nft (8),",
    ".BR conntrack (8),",
    ".BR iptables (8)",
    "",
  );
  return out.join("\n");
}

/** A JSON Schema (draft 2020-12) of a role's config file. */
export function jsonSchema(role: "server" | "driver"): Record<string, unknown> {
  const c: Command = COMMANDS[role];
  const properties: Record<string, unknown> = {};
  const required: string[] = [];
  for (const [n, f] of Object.entries(c.flags)) {
    // The schemas transform text into typed values; editors need the input side.
    const input = z.toJSONSchema(f.schema, { io: "input", unrepresentable: "any" }) as Record<
      string,
      unknown
    >;
    delete input.$schema;
    // Values are validated leniently (so a wrong type gets a clear message);
    // an editor should offer what the flag means: text, or the listed words.
    const t = input.type;
    if (f.arg && Array.isArray(t) && t.includes("boolean")) input.type = "string";
    if (!f.arg) input.type = "boolean";
    if (Array.isArray(f.complete)) input.enum = [...f.complete];
    properties[n] = { ...input, description: f.help + (f.dflt ? ` (default ${f.dflt})` : "") };
    if (f.negated) properties[`no-${n}`] = { type: "boolean", description: `the opposite of ${n}` };
    if (f.required) required.push(n);
  }
  return {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    title: `dpm ${role} configuration`,
    type: "object",
    additionalProperties: false,
    properties,
    required,
  };
}

/** bash completion for dpm. */
export function bashCompletion(): string {
  const cases: string[] = [];
  for (const [name, c] of Object.entries(COMMANDS) as [string, Command][]) {
    const flags = Object.entries(c.flags).map(([n, f]) => `--${f.negated ? `no-${n}` : n}`);
    if (c.config) flags.push("--config");
    flags.push("--help");
    const values: string[] = [];
    for (const [n, f] of Object.entries(c.flags)) {
      if (!f.arg) continue;
      if (Array.isArray(f.complete)) {
        values.push(
          `      --${n}) COMPREPLY=($(compgen -W "${f.complete.join(" ")}" -- "$cur")); return;;`,
        );
      } else if (f.complete === "interface") {
        values.push(
          `      --${n}) COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur")); return;;`,
        );
      } else if (f.complete === "file") {
        values.push(`      --${n}) COMPREPLY=($(compgen -f -- "$cur")); return;;`);
      } else values.push(`      --${n}) return;;`);
    }
    if (c.config) values.push(`      --config) COMPREPLY=($(compgen -f -- "$cur")); return;;`);
    cases.push(
      `    ${name})`,
      `      case "$prev" in`,
      ...values.map((v) => "  " + v),
      `      esac`,
      `      COMPREPLY=($(compgen -W "${flags.join(" ")}" -- "$cur"));;`,
    );
  }
  return `# bash completion for dpm (generated by 'dpm help --completion bash')
_dpm() {
  local cur prev cmd
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  cmd="\${COMP_WORDS[1]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${Object.keys(COMMANDS).join(" ")} help --version --help" -- "$cur"))
    return
  fi
  case "$cmd" in
${cases.join("\n")}
  esac
}
complete -F _dpm dpm
`;
}

/** zsh completion for dpm. */
export function zshCompletion(): string {
  const fns: string[] = [];
  for (const [name, c] of Object.entries(COMMANDS) as [string, Command][]) {
    const specs = Object.entries(c.flags).map(([n, f]) => {
      const label = f.negated ? `no-${n}` : n;
      const help = f.help.replace(/[[\]:'"]/g, " ");
      if (!f.arg) return `    '--${label}[${help}]'`;
      const act = Array.isArray(f.complete)
        ? `(${f.complete.join(" ")})`
        : f.complete === "file"
        ? "_files"
        : f.complete === "interface"
        ? "_net_interfaces"
        : " ";
      return `    '--${label}=[${help}]:${f.arg.replace(/[<>:]/g, "")}:${act}'`;
    });
    if (c.config) specs.push(`    '--config=[JSON config file]:file:_files'`);
    specs.push(`    '(-h --help)'{-h,--help}'[help]'`);
    fns.push(`_dpm_${name}() {\n  _arguments \\\n${specs.join(" \\\n")}\n}`);
  }
  return `#compdef dpm
# zsh completion for dpm (generated by 'dpm help --completion zsh')
${fns.join("\n")}
_dpm() {
  local -a commands
  commands=(${
    (Object.entries(COMMANDS) as [string, Command][]).map(([n, c]) =>
      `'${n}:${c.about.split(". ")[0]!.replace(/'/g, "")}'`
    ).join(" ")
  } 'help:show help')
  if (( CURRENT == 2 )); then
    _describe command commands
  else
    local cmd=$words[2]
    shift words; (( CURRENT-- ))
    (( $+functions[_dpm_$cmd] )) && _dpm_$cmd
  fi
}
_dpm "$@"
`;
}
