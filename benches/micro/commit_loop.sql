-- BENCHMARKS.md, "the row invariants off the statement path". Run on a database with the
-- engine's migrations and no sagas: psql -d DB -f benches/micro/commit_loop.sql
-- One saga of 3001 steps; 3000 step commits through commit_steps in one transaction:
-- executor CPU of the hot-path statement, without commit or WAL flush.
\set ON_ERROR_STOP 1
SELECT created FROM stepwise.start_saga('01900000-0000-7000-8000-0000000000aa', 'syn', 1, NULL, '{}'::jsonb, 'test', NULL,
   (SELECT array_agg('s' || g) FROM generate_series(0, 3000) g), NULL, now(), 'x');
SELECT count(*) FROM stepwise.claim_sagas(now(), 1, 'w', now() + interval '1 h', ARRAY['syn@1']);
DO $$
DECLARE
  v_seq int8; v_tok int8; t0 timestamptz; r record; n int := 3000;
BEGIN
  SELECT attempt_seq, fencing_token INTO v_seq, v_tok FROM stepwise.sagas WHERE id = '01900000-0000-7000-8000-0000000000aa';
  t0 := clock_timestamp();
  FOR k IN 0 .. n - 1 LOOP
    SELECT * INTO r FROM stepwise.commit_steps(
      ARRAY['01900000-0000-7000-8000-0000000000aa'::uuid], ARRAY[v_tok], ARRAY[now()], ARRAY['w'],
      ARRAY[NULL::text], ARRAY[k + 1], ARRAY[false], ARRAY[NULL::timestamptz], ARRAY[false],
      ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], ARRAY[true],
      ARRAY[k], ARRAY[false], ARRAY[1], ARRAY[now()], ARRAY[v_seq], ARRAY['{"ok":1}'::jsonb],
      ARRAY[k + 1], ARRAY[false], ARRAY[1], ARRAY[true],
      ARRAY[]::uuid[], ARRAY[]::text[], ARRAY[]::text[], ARRAY[]::int4[], ARRAY[]::jsonb[]);
    v_seq := r.begun_seq;
  END LOOP;
  RAISE NOTICE 'us per commit_steps call: %', round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / n);
END $$;
