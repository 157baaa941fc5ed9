#!/bin/bash
# A/B of idle and half-load first-step latency: A = before (9a6d07a..e632fc5 build), B = born-claimed local start.
for round in 1 2; do
  for mode in "" "--batch"; do
    for bin in A B; do
      out=/tmp/ab/$bin-r$round${mode:+-batch}.json
      /tmp/stepwise-$bin bench --sagas 2000 --limit-seconds 0 --idle-samples 100 --half-load-seconds 5 $mode --json > $out 2>/dev/null
      python3 -c "
import json; r=json.load(open('$out')); l=r['latency_ms']; i=l['idle']; h=l.get('half_load') or {}
print('$bin r$round ${mode:-per-saga}', 'idle p50', i['first_step_p50'], 'p99', i['first_step_p99'], '| half p50', h.get('first_step_p50'), 'p99', h.get('first_step_p99'))"
    done
  done
done
