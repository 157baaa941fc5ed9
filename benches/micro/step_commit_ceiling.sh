#!/usr/bin/env bash
# The ceiling of Stepwise's step-commit statement alone, next to PostgreSQL's (BENCHMARKS.md,
# "The statement's own ceiling"): pgbench drives `stepwise.commit_steps` the way a worker does
# (a step's success and the next step's start, fenced by the saga's token, one commit each;
# then 16 sagas per call, as a grouped commit does), with no executor in the way, and the L1 /
# L1b scripts of src/bench/sql at the same C. What the statement costs against L1's is the
# most a worker could reach, whatever the executor does.
#   benches/micro/step_commit_ceiling.sh [CLIENTS] [SECONDS]    (8, 10)
#   env: DATABASE_URL (any database on the server), BENCH_BIN (stepwise, default
#        target/release/stepwise). Uses and drops the databases stepwise_ceiling and
#        stepwise_ceiling_l1. Prints one JSON line; timings are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=${1:-8}; T=${2:-10}
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${BENCH_BIN:-target/release/stepwise}
sql=src/bench/sql
db=stepwise_ceiling; l1db=stepwise_ceiling_l1
base=${url%/*}
export PGOPTIONS="-c client_min_messages=warning"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tps() { # script database -> transactions/s
  pgbench -n -M prepared -c "$C" -j 2 -T "$T" -f "$1" "$base/$2" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
fresh_sagas() { # one saga of 50,000 no-op steps per pgbench client slot, claimed
  psql "$url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  DATABASE_URL="$base/$db" "$bin" migrate >/dev/null
  psql "$base/$db" >/dev/null <<'SQL'
SELECT count(*) FROM generate_series(1, 512) n,
  LATERAL stepwise.start_saga(('01900000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid, 'ceiling', 1,
    NULL, '{}'::jsonb, 'bench', NULL, (SELECT array_agg('s' || g) FROM generate_series(0, 2000) g),
    NULL, now() - interval '1 s', 'bench');
SELECT count(*) FROM stepwise.claim_sagas(now(), 512, 'bench', now() + interval '1 day', ARRAY['ceiling@1']);
VACUUM ANALYZE;
SQL
}
# Client k commits the sagas k*16+1 .. k*16+16 (one of them per call, in turn, or all 16 in one
# call): each takes the saga's current token, cursor and attempt from its row in the same
# statement, so a run needs no state of its own between transactions.
cat > "$work/one.sql" <<'SQL'
\set sid :client_id * 16 + 1 + random(0, 15)
WITH g AS (SELECT id, fencing_token, cursor, attempt_seq FROM stepwise.sagas
           WHERE id = ('01900000-0000-7000-8000-' || lpad(:sid::text, 12, '0'))::uuid)
SELECT r.* FROM g, LATERAL stepwise.commit_steps(
  ARRAY[g.id], ARRAY[g.fencing_token], ARRAY[now()], ARRAY['bench'], ARRAY[NULL::text],
  ARRAY[g.cursor + 1], ARRAY[false], ARRAY[NULL::timestamptz], ARRAY[false], ARRAY[NULL::jsonb],
  ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], ARRAY[true], ARRAY[g.cursor], ARRAY[false], ARRAY[1],
  ARRAY[now()], ARRAY[g.attempt_seq], ARRAY['{"ok": 1}'::jsonb], ARRAY[g.cursor + 1], ARRAY[false],
  ARRAY[1], ARRAY[true], '{}', '{}', '{}', '{}', '{}') r;
SQL
cat > "$work/batch16.sql" <<'SQL'
\set first :client_id * 16 + 1
WITH g AS (SELECT array_agg(id) ids, array_agg(fencing_token) tokens, array_agg(cursor) cursors,
                  array_agg(cursor + 1) nexts, array_agg(attempt_seq) seqs, array_agg(now()) ats,
                  array_agg('bench'::text) actors, array_agg(NULL::text) no_text,
                  array_agg(NULL::timestamptz) no_time, array_agg(NULL::jsonb) no_json,
                  array_agg(false) no, array_agg(true) yes, array_agg(1) ones,
                  array_agg('{"ok": 1}'::jsonb) outputs
           FROM stepwise.sagas
           WHERE id = ANY(ARRAY(SELECT ('01900000-0000-7000-8000-' || lpad((:first + k)::text, 12, '0'))::uuid
                                FROM generate_series(0, 15) k)))
SELECT count(*) FROM g, LATERAL stepwise.commit_steps(
  g.ids, g.tokens, g.ats, g.actors, g.no_text, g.nexts, g.no, g.no_time, g.no, g.no_json, g.no_json,
  g.no_json, g.yes, g.cursors, g.no, g.ones, g.ats, g.seqs, g.outputs, g.nexts, g.no, g.ones, g.yes,
  '{}', '{}', '{}', '{}', '{}') r;
SQL
[ "$C" -le 32 ] || { echo "at most 32 clients (512 sagas, 16 per client)" >&2; exit 2; }
psql "$url" -c "DROP DATABASE IF EXISTS $l1db" -c "CREATE DATABASE $l1db"
psql "$base/$l1db" -f "$sql/schema.sql"
l1=$(tps "$sql/step.sql" "$l1db")
psql "$base/$l1db" -f "$sql/schema.sql"
l1b=$(tps "$sql/step_batch16.sql" "$l1db")
fresh_sagas; one=$(tps "$work/one.sql" "$db")
fresh_sagas; batch=$(tps "$work/batch16.sql" "$db")
psql "$url" -c "DROP DATABASE IF EXISTS $db" -c "DROP DATABASE IF EXISTS $l1db"
python3 -c "
import json
l1, l1b, one, b = $l1, $l1b * 16, $one, $batch * 16
print(json.dumps({'clients': $C, 'seconds': $T, 'l1_steps_per_s': round(l1), 'commit_steps_one_per_s': round(one),
  'one_vs_l1': round(one / l1, 3), 'l1b_steps_per_s': round(l1b), 'commit_steps_16_steps_per_s': round(b),
  'batch16_vs_l1b': round(b / l1b, 3)}))"
