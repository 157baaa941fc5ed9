#!/usr/bin/env bash
# Runs the peers of `stepwise bench` (DBOS Transact, Absurd) on the same workload, each in its
# own database on the same PostgreSQL, and prints one JSON line per peer.
#   benches/peers/run.sh [dbos|absurd ...]      (default: both)
# env: DATABASE_URL (any database on the server; default postgres://postgres@127.0.0.1:5432/postgres)
#      SAGAS (2000) STEPS (10) CONCURRENCY (8) PROCESSES (number of CPUs) IDLE_SAMPLES (50)
#      PEERS_VENV (where the virtualenv lives; default target/peers-venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${PEERS_VENV:-$root/target/peers-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
peers=("$@"); [ ${#peers[@]} -gt 0 ] || peers=(dbos absurd)
for peer in "${peers[@]}"; do
  "$venv/bin/python" "$here/peers.py" "$peer" \
    --url "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
    --sagas "${SAGAS:-2000}" --steps "${STEPS:-10}" --concurrency "${CONCURRENCY:-8}" \
    --processes "${PROCESSES:-$(nproc)}" --idle-samples "${IDLE_SAMPLES:-50}" \
    || echo "{\"peer\":\"$peer\",\"error\":\"the $peer run failed (see stderr)\"}"
done
