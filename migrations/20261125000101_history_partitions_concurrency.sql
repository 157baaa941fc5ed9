-- Several processes may create the coming month's history partition at the same moment (every
-- `migrate`, worker start and prune does): serialize them with a transaction-scoped advisory
-- lock, so the loser finds the partition made instead of failing with `duplicate_table`.
CREATE OR REPLACE FUNCTION stepwise.ensure_event_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    part_name   text;
    created     integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stepwise.ensure_event_partitions'));
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
            EXCEPTION WHEN check_violation OR invalid_object_definition OR duplicate_table THEN
                RAISE NOTICE 'stepwise: partition % not created: %', part_name, SQLERRM;
            END;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;
