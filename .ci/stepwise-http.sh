# Shared by the .ci scripts that check `stepwise mcp --http` with a client from outside
# (mcp-conformance.sh, mcp-python.sh). Source it after setting `name` (the prefix of their
# messages). It sets `work`, a temporary directory removed at exit, kills the processes listed
# in `pids` at exit, and defines `start_stepwise_http BIN`: starts the server on a free port and
# sets `addr` (host:port) once it listens, or exits 1 with its log.
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

start_stepwise_http() {
  "$1" mcp --http 127.0.0.1:0 2>"$work/server.log" &
  local server=$!
  pids+=("$server")
  addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's|^stepwise mcp: listening on http://\([^/]*\)/mcp.*|\1|p' "$work/server.log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; echo "$name: stepwise mcp exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/server.log" >&2; echo "$name: stepwise mcp did not listen" >&2; exit 1; }
  echo "$name: stepwise mcp listening on $addr"
}
