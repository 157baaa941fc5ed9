#!/usr/bin/env bash
# An MCP client nobody here wrote: the official MCP Python SDK (PyPI `mcp`, pinned) in a venv
# this script creates, against `stepwise mcp --http`, answering sagas that wait for input in
# each way the SDK supports (.ci/mcp_python_input.py says which and why).
set -euo pipefail
cd "$(dirname "$0")/.."

MCP_SDK=mcp==2.3.0

command -v python3 >/dev/null || { echo "mcp-python: python3 is required" >&2; exit 2; }

base=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export DATABASE_URL="${base%/*}/stepwise_mcp_python"
export RUST_LOG=${RUST_LOG:-warn}
export STEPWISE_MCP_WAIT_MS=10000

name=mcp-python
# shellcheck source=.ci/stepwise-http.sh
. .ci/stepwise-http.sh

python3 -m venv "$work/venv"
for attempt in 1 2 3; do
  if "$work/venv/bin/pip" install --quiet --disable-pip-version-check "$MCP_SDK" >"$work/pip.log" 2>&1; then
    break
  fi
  [ "$attempt" = 3 ] && { cat "$work/pip.log" >&2; exit 1; }
  sleep 5
done
echo "mcp-python: Python $("$work/venv/bin/python" -c 'import sys; print(sys.version.split()[0])'), $MCP_SDK"

cargo build --quiet --bin stepwise
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug/stepwise
operator=$("$bin" tokens create --role operator --subject python-sdk)

start_stepwise_http "$bin"

if ! MCP_URL="http://$addr/mcp" OPERATOR_TOKEN="$operator" "$work/venv/bin/python" .ci/mcp_python_input.py; then
  tail -50 "$work/server.log" >&2
  exit 1
fi

# A remote client with an OAuth access token (.ci/mcp_python_oauth.py plays the authorization
# server and starts its own `stepwise serve` configured for it).
if ! BIN="$bin" "$work/venv/bin/python" .ci/mcp_python_oauth.py; then
  exit 1
fi
