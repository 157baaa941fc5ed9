-- BENCHMARKS.md, "local starts". Run on a database with the engine's migrations:
-- psql -v n=2000 -d DB -f benches/micro/start.sql
-- The server time of one start of a saga of 10 steps, without commit or WAL flush (N calls in
-- one transaction each): `stepwise.start_saga` as a start without a local worker calls it
-- (no NOTIFY here: it would be sent once, at the commit), then `stepwise.start_claimed_saga`
-- as a local start calls it (the saga, its steps and its history row, then the claim).
\set ON_ERROR_STOP 1
SET my.n = :n;
DO $$
DECLARE
  n int := current_setting('my.n')::int;
  names text[] := (SELECT array_agg('s' || g) FROM generate_series(0, 9) g);
  t0 timestamptz;
BEGIN
  t0 := clock_timestamp();
  FOR i IN 1..n LOOP
    PERFORM * FROM stepwise.start_saga(gen_random_uuid(), 'syn', 1, NULL, '{"steps":10}'::jsonb,
      'bench', NULL, names, NULL, now(), NULL);
  END LOOP;
  RAISE NOTICE 'us per start_saga: %',
    round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / n);
END $$;
DO $$
DECLARE
  n int := current_setting('my.n')::int;
  names text[] := (SELECT array_agg('s' || g) FROM generate_series(0, 9) g);
  t0 timestamptz;
BEGIN
  t0 := clock_timestamp();
  FOR i IN 1..n LOOP
    PERFORM * FROM stepwise.start_claimed_saga(gen_random_uuid(), 'syn', 1, NULL,
      '{"steps":10}'::jsonb, 'bench', names, now(), 'w', now() + interval '30 s');
  END LOOP;
  RAISE NOTICE 'us per start_claimed_saga: %',
    round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / n);
END $$;
