-- BENCHMARKS.md, "the claim's steps as json". Run on a database with the engine's migrations
-- and no sagas: psql -v n=3200 -v b=16 -d DB -f benches/micro/claim.sql
-- N pending sagas of 10 steps; N/B claims of B sagas each through claim_sagas in one
-- transaction: the server's time per claimed saga (the claim's statements and the steps of
-- each saga as the worker reads them), without commit or WAL flush.
\set ON_ERROR_STOP 1
SELECT count(*) FROM generate_series(1, :n) n,
  LATERAL stepwise.start_saga(('01900000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid, 'syn', 1,
    NULL, '{"steps":10}'::jsonb, 'bench', NULL, (SELECT array_agg('s' || g) FROM generate_series(0, 9) g),
    NULL, now() - interval '1 s', 'bench');
VACUUM ANALYZE stepwise.sagas, stepwise.steps;
SET my.n = :n; SET my.b = :b;
DO $$
DECLARE
  n int := current_setting('my.n')::int; b int := current_setting('my.b')::int;
  t0 timestamptz; claimed int := 0; got int;
BEGIN
  t0 := clock_timestamp();
  LOOP
    SELECT count(*) INTO got
    FROM stepwise.claim_sagas(now(), b, 'w', now() + interval '1 h', ARRAY['syn@1']) c
    WHERE c.steps IS NOT NULL;
    EXIT WHEN got = 0;
    claimed := claimed + got;
  END LOOP;
  RAISE NOTICE 'sagas claimed: %, us per claimed saga (B = %): %', claimed, b,
    round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / greatest(claimed, 1));
END $$;
