#!/usr/bin/env bash
# A/B: base (f57eb62) vs new (untouched claims), alternated.
set -u
out=/work/main/benches/results/2026-12-03/untouched-claim/ab
cp /work/main/target/dist/stepwise /tmp/stepwise-new
run() { # label bin args...
  local label=$1 bin=$2; shift 2
  "$bin" bench --steps 10 --concurrency 8 --limit-seconds 5 --limit-runs 1 --idle-samples 20 --half-load-seconds 0 --json "$@" 2>/dev/null > "$out/$label.json"
  python3 -c "
import json; d=json.load(open('$out/$label.json')); print('$label', d['steps_per_s'], d['efficiency'], d['limit'].get('l1b_steps_per_s') if d['batch_commits'] else d['limit']['l1_steps_per_s'], 'pg', d['per_step']['postgres_cpu_us'], 'w', d['per_step']['worker_cpu_us'], 'idle p50', d['latency_ms']['idle']['first_step_p50'])"
}
for r in 1 2; do
  for b in base new; do run "batch-m64-$b-$r" /tmp/stepwise-$b --sagas 4000 --batch; done
  for b in new base; do run "single-$b-$r" /tmp/stepwise-$b --sagas 3000; done
  for b in base new; do run "batch-m768-k6-$b-$r" /tmp/stepwise-$b --sagas 8000 --batch --in-flight 768 --committers 6; done
done
