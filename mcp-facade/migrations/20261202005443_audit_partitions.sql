-- The audit, partitioned by month so that it can be kept and pruned (docs/mcp.md, Audit).
--
-- `mcp.audit` becomes a table partitioned by RANGE (at), one partition per calendar month
-- (UTC) named `audit_YYYY_MM`. Same columns, same order, same constraints and indexes, so
-- every reader sees the same rows. There is no default partition: a row of a month without a
-- partition is refused, and the writer (`AuditStore::record`) then calls
-- `mcp.ensure_audit_partitions` and writes again. `migrate` (every process start) makes the
-- current and next month's partitions ahead.
--
-- Still append-only: the trigger refuses UPDATE, DELETE and TRUNCATE, except the DELETE of
-- rows older than the cutoff of a prune, which `mcp.prune_audit` alone makes (it drops whole
-- old partitions and deletes the older rows of the boundary month).

CREATE OR REPLACE FUNCTION mcp.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('mcp.audit_prune_cutoff', true) IS NOT NULL
       AND current_setting('mcp.audit_prune_cutoff', true) <> ''
       AND OLD.at < current_setting('mcp.audit_prune_cutoff', true)::timestamptz THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mcp.audit is append-only (old rows go with `stepwise audit prune`)';
END $$;

-- Renamed out of the way; its rows are copied below and it is dropped.
ALTER TABLE mcp.audit RENAME TO audit_unpartitioned;
ALTER INDEX mcp.audit_pkey RENAME TO audit_unpartitioned_pkey;
ALTER INDEX mcp.audit_at RENAME TO audit_unpartitioned_at;
ALTER INDEX mcp.audit_principal RENAME TO audit_unpartitioned_principal;
ALTER INDEX mcp.audit_saga RENAME TO audit_unpartitioned_saga;

CREATE TABLE mcp.audit (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL,
    -- `role:subject`
    principal   text NOT NULL CHECK (principal ~ '^[a-z][a-z0-9_-]*:[^[:space:]]+$'),
    transport   text NOT NULL CHECK (transport IN ('stdio', 'http')),
    tool        text NOT NULL CHECK (length(tool) BETWEEN 1 AND 200),
    saga_id     uuid,
    -- ok: done (or a read answered); pending: the saga was still running when the call
    -- returned; saga_failed: the saga ended compensated or failed; refused: not allowed;
    -- invalid: malformed arguments; conflict: idempotency key reused with other input;
    -- error: the facade could not serve the call.
    outcome     text NOT NULL
                CHECK (outcome IN ('ok', 'pending', 'saga_failed', 'refused', 'invalid', 'conflict', 'error')),
    error_code  text CHECK (error_code IS NULL OR length(error_code) BETWEEN 1 AND 100),
    duration_ms integer NOT NULL CHECK (duration_ms >= 0),
    CHECK ((outcome IN ('ok', 'pending')) = (error_code IS NULL)),
    -- A partitioned table's key must hold the partition key; `id` alone is still unique (an
    -- identity), and leading with it keeps `ORDER BY id DESC` an index scan per partition.
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX audit_at ON mcp.audit (at DESC);
CREATE INDEX audit_principal ON mcp.audit (principal, at DESC);
CREATE INDEX audit_saga ON mcp.audit (saga_id) WHERE saga_id IS NOT NULL;

CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON mcp.audit
    FOR EACH ROW EXECUTE FUNCTION mcp.audit_is_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON mcp.audit
    FOR EACH STATEMENT EXECUTE FUNCTION mcp.audit_is_append_only();

-- Creates the monthly partitions covering [from_ts, to_ts] that do not exist yet; returns how
-- many it created. Each partition gets its own TRUNCATE trigger (a statement trigger of the
-- parent does not fire for a partition truncated by name). Several processes may make the
-- coming month's partition at once (every `migrate`, and a writer whose row found none): a
-- transaction-scoped advisory lock serialises them.
CREATE FUNCTION mcp.ensure_audit_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    part_name   text;
    created     integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('mcp.ensure_audit_partitions'));
    WHILE month_start <= to_ts LOOP
        part_name := 'audit_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass('mcp.' || part_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE mcp.%I PARTITION OF mcp.audit FOR VALUES FROM (%L) TO (%L)',
                part_name, month_start, month_start + interval '1 month');
            EXECUTE format(
                'CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON mcp.%I
                     FOR EACH STATEMENT EXECUTE FUNCTION mcp.audit_is_append_only()',
                part_name);
            created := created + 1;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;

-- Prunes the audit before `cutoff`: drops every partition wholly older than it and deletes
-- the older rows of the month it falls in. Returns the partitions dropped, the rows they held,
-- and the rows deleted one by one. Only rows older than `cutoff` can go (the trigger checks
-- each one). A lock on an old partition is waited for at most 2 s (the writers only ever write
-- the current month).
CREATE FUNCTION mcp.prune_audit(
    cutoff timestamptz,
    OUT partitions_dropped text[], OUT rows_dropped bigint, OUT rows_deleted bigint)
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    n    bigint;
BEGIN
    partitions_dropped := ARRAY[]::text[];
    rows_dropped := 0;
    PERFORM set_config('lock_timeout', '2s', true);
    FOR part IN
        SELECT c.relname::text AS name
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'mcp.audit'::regclass
          AND c.relname ~ '^audit_[0-9]{4}_[0-9]{2}$'
          AND (to_date(substr(c.relname, 7), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC')
              + interval '1 month' <= cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('SELECT count(*) FROM mcp.%I', part.name) INTO n;
        EXECUTE format('DROP TABLE mcp.%I', part.name);
        rows_dropped := rows_dropped + n;
        partitions_dropped := partitions_dropped || part.name;
    END LOOP;
    PERFORM set_config('mcp.audit_prune_cutoff', cutoff::text, true);
    DELETE FROM mcp.audit WHERE at < cutoff;
    GET DIAGNOSTICS rows_deleted = ROW_COUNT;
    PERFORM set_config('mcp.audit_prune_cutoff', '', true);
END $$;

-- The rows so far, in the partitions of their months, with their ids (the identity goes on
-- from the largest).
SELECT mcp.ensure_audit_partitions(
    least((SELECT min(at) FROM mcp.audit_unpartitioned), now()),
    now() + interval '1 month');
INSERT INTO mcp.audit (id, at, principal, transport, tool, saga_id, outcome, error_code, duration_ms)
    OVERRIDING SYSTEM VALUE
    SELECT id, at, principal, transport, tool, saga_id, outcome, error_code, duration_ms
    FROM mcp.audit_unpartitioned;
SELECT setval(pg_get_serial_sequence('mcp.audit', 'id'),
              coalesce((SELECT max(id) FROM mcp.audit), 0) + 1, false);
DROP TABLE mcp.audit_unpartitioned;
