-- BENCHMARKS.md, "the grouped commit by statement". Run on a database with the engine's
-- migrations and no sagas: psql -v m=64 -v r=40 -d DB -f benches/micro/commit_batch.sql
-- M sagas of R+1 steps; R grouped commits of all M (each: every saga's step succeeds and its
-- next begins) through commit_steps in one transaction: the server's CPU per step of a grouped
-- commit, without commit or WAL flush. Compare runs at the same R only: each round adds a row
-- version to every saga's HOT chain that nothing can prune inside the transaction.
\set ON_ERROR_STOP 1
SELECT count(*) FROM generate_series(1, :m) n,
  LATERAL stepwise.start_saga(('01900000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid, 'syn', 1,
    NULL, '{}'::jsonb, 'bench', NULL, (SELECT array_agg('s' || g) FROM generate_series(0, :r) g),
    NULL, now() - interval '1 s', 'bench');
SELECT count(*) FROM stepwise.claim_sagas(now(), :m, 'w', now() + interval '1 h', ARRAY['syn@1']);
SET my.m = :m; SET my.r = :r;
DO $$
DECLARE
  m int := current_setting('my.m')::int; rounds int := current_setting('my.r')::int;
  ids uuid[]; toks int8[]; seqs int8[]; t0 timestamptz; k int;
  ats timestamptz[]; actors text[]; ntext text[]; ntime timestamptz[]; no bool[]; yes bool[];
  njson jsonb[]; ones int4[]; outs jsonb[]; curs int4[]; nexts int4[];
BEGIN
  SELECT array_agg(id ORDER BY id), array_agg(fencing_token ORDER BY id), array_agg(attempt_seq ORDER BY id)
    INTO ids, toks, seqs FROM stepwise.sagas;
  ats := array_fill(now(), ARRAY[m]); actors := array_fill('w'::text, ARRAY[m]);
  ntext := array_fill(NULL::text, ARRAY[m]); ntime := array_fill(NULL::timestamptz, ARRAY[m]);
  no := array_fill(false, ARRAY[m]); yes := array_fill(true, ARRAY[m]);
  njson := array_fill(NULL::jsonb, ARRAY[m]); ones := array_fill(1, ARRAY[m]);
  outs := array_fill('{"ok":1}'::jsonb, ARRAY[m]);
  t0 := clock_timestamp();
  FOR k IN 0 .. rounds - 1 LOOP
    curs := array_fill(k, ARRAY[m]); nexts := array_fill(k + 1, ARRAY[m]);
    SELECT array_agg(r.begun_seq ORDER BY r.saga_id) INTO seqs FROM stepwise.commit_steps(
      ids, toks, ats, actors, ntext, nexts, no, ntime, no, njson, njson, njson, yes,
      curs, no, ones, ats, seqs, outs, nexts, no, ones, yes,
      ARRAY[]::uuid[], ARRAY[]::text[], ARRAY[]::text[], ARRAY[]::int4[], ARRAY[]::jsonb[]) r;
    IF cardinality(seqs) <> m THEN RAISE EXCEPTION 'lost % sagas', m - cardinality(seqs); END IF;
  END LOOP;
  RAISE NOTICE 'M=% us per step in a grouped commit: %', m,
    round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / (m * rounds), 1);
END $$;
