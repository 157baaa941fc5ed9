-- Retention-friendly history: `stepwise.events` becomes a table partitioned by RANGE (saga_id),
-- one partition per calendar month (UTC) of saga creation. Saga ids are UUIDv7, whose leading
-- 48 bits are the creation time in milliseconds, so every event of a saga lands in the partition
-- of the month the saga was created, and a saga's history is read from one partition.
-- `stepwise sagas prune` drops a whole month's partition (no row-by-row DELETE, no dead tuples,
-- no vacuum debt) once every saga created in that month has been pruned; younger or unfinished
-- sagas keep their month's partition and are pruned row by row. Ids that are not UUIDv7, or
-- months without a partition yet, go to `events_default`. See docs/operators.md.
--
-- Columns, the identity `id` (which orders a saga's history: `seq` is its rank), the primary key
-- and the append-only trigger are unchanged.

-- The smallest UUIDv7 of a millisecond: a partition bound.
CREATE FUNCTION stepwise.uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- Creates the monthly partitions covering [from_ts, to_ts] that do not exist yet; returns how
-- many it created. A month whose rows already went to the default partition is skipped (with a
-- notice): its events stay there and are pruned row by row.
CREATE FUNCTION stepwise.ensure_event_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    part_name   text;
    created     integer := 0;
BEGIN
    WHILE month_start <= to_ts LOOP
        part_name := 'events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass('stepwise.' || part_name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE stepwise.%I PARTITION OF stepwise.events FOR VALUES FROM (%L) TO (%L)',
                    part_name,
                    stepwise.uuid_v7_floor(month_start),
                    stepwise.uuid_v7_floor(month_start + interval '1 month'));
                created := created + 1;
            EXCEPTION WHEN check_violation OR invalid_object_definition THEN
                RAISE NOTICE 'stepwise: partition % not created: %', part_name, SQLERRM;
            END;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;

ALTER TABLE stepwise.events RENAME TO events_unpartitioned;
ALTER TABLE stepwise.events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;

CREATE TABLE stepwise.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    saga_id     uuid NOT NULL,
    at          timestamptz NOT NULL,
    kind        text NOT NULL CHECK (kind IN (
                    'saga_started', 'step_started', 'step_succeeded', 'step_failed', 'retry_scheduled',
                    'compensation_started', 'compensation_succeeded', 'compensation_failed',
                    'saga_completed', 'saga_compensated', 'saga_failed', 'cancel_requested',
                    'lease_expired', 'operator_retry', 'operator_restart', 'operator_fork')),
    step        text,
    attempt     integer CHECK (attempt > 0),
    actor       text NOT NULL,
    detail      jsonb,
    PRIMARY KEY (saga_id, id)
) PARTITION BY RANGE (saga_id);

CREATE TABLE stepwise.events_default PARTITION OF stepwise.events DEFAULT;

-- Partitions for every month that already has sagas, and for the months around now.
SELECT stepwise.ensure_event_partitions(
    LEAST(now() - interval '1 month', (SELECT min(created_at) FROM stepwise.sagas)),
    now() + interval '2 months');

INSERT INTO stepwise.events (id, saga_id, at, kind, step, attempt, actor, detail)
    OVERRIDING SYSTEM VALUE
SELECT id, saga_id, at, kind, step, attempt, actor, detail
FROM stepwise.events_unpartitioned ORDER BY id;

SELECT setval(pg_get_serial_sequence('stepwise.events', 'id'),
              COALESCE((SELECT max(id) FROM stepwise.events), 1),
              (SELECT count(*) > 0 FROM stepwise.events));

DROP TABLE stepwise.events_unpartitioned;

-- History rows are never updated; they are deleted only together with their terminal saga.
CREATE TRIGGER events_no_update BEFORE UPDATE ON stepwise.events
    FOR EACH ROW EXECUTE FUNCTION stepwise.events_are_append_only();

-- Operators list and replay by skill, status and time (`sagas list`, bulk retry/restart).
-- None of its columns changes on the per-step commit (status changes a few times per saga and
-- is indexed already), so step commits stay HOT.
CREATE INDEX sagas_skill_status_created ON stepwise.sagas (skill, status, created_at DESC);
