-- The engine's schema `stepwise`: sagas, their steps, their history, and the functions of the
-- hot path. One file, today's whole schema (the 0.x migrations squashed; see docs/operators.md
-- for databases made before). engine/src/lib.rs explains each table and the state machine.
-- The hotel's and the MCP facade's tables live in their own schemas, migrated by their crates.

CREATE SCHEMA IF NOT EXISTS stepwise;

-- The state columns' allowed values are domains rather than table CHECKs: same invariant,
-- cheaper on the hot path. PostgreSQL re-reads a table's CHECK constraints from their stored
-- text and re-plans them for every statement that writes the table, and the IN lists were the
-- costliest part of that (~14% of PostgreSQL's CPU per step, profiled); a domain's constraint
-- is parsed once per backend and cached (4-9% less backend CPU per step commit, BENCHMARKS.md).
-- Queries compare these columns with text: a domain over text resolves to text.
CREATE DOMAIN stepwise.saga_status AS text
    CHECK (VALUE IN ('pending', 'running', 'compensating', 'completed', 'compensated', 'failed'));
CREATE DOMAIN stepwise.step_status AS text
    CHECK (VALUE IN ('pending', 'running', 'succeeded', 'failed', 'skipped'));
CREATE DOMAIN stepwise.compensation_status AS text
    CHECK (VALUE IN ('not_needed', 'pending', 'running', 'compensated', 'failed'));
CREATE DOMAIN stepwise.event_kind AS text
    CHECK (VALUE IN (
        'saga_started', 'step_started', 'step_succeeded', 'step_failed', 'retry_scheduled',
        'compensation_started', 'compensation_succeeded', 'compensation_failed',
        'saga_completed', 'saga_compensated', 'saga_failed', 'cancel_requested',
        'lease_expired', 'operator_retry', 'operator_restart', 'operator_fork'));

-- One row per saga. The hot path (a worker committing step k and starting k+1 while it holds
-- the lease) only rewrites `cursor` and `updated_at`, which no index covers, so those updates
-- stay HOT; `fillfactor` leaves page room for them.
CREATE TABLE stepwise.sagas (
    id                  uuid PRIMARY KEY,
    skill               text NOT NULL CHECK (skill <> ''),
    skill_version       integer NOT NULL CHECK (skill_version > 0),
    status              stepwise.saga_status NOT NULL,
    idempotency_key     text CHECK (idempotency_key <> ''),
    input               jsonb NOT NULL,
    output              jsonb,
    error               jsonb,
    started_by          text NOT NULL,
    replay_of           uuid REFERENCES stepwise.sagas (id) ON DELETE SET NULL,
    -- position of the forward step in progress or to run next (0-based)
    cursor              integer NOT NULL DEFAULT 0 CHECK (cursor >= 0 AND cursor <= step_count),
    step_count          integer NOT NULL CHECK (step_count > 0),
    -- When a worker must look at this saga next: the due time of a waiting saga (start, retry),
    -- or the lease expiry of a claimed one. NULL exactly when the saga is terminal.
    wake_at             timestamptz,
    lease_owner         text,
    -- changes on every claim; every write a worker makes is conditioned on it
    fencing_token       bigint NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT sagas_idempotency UNIQUE (skill, idempotency_key),
    CONSTRAINT sagas_terminal_has_no_wake
        CHECK ((status IN ('completed', 'compensated', 'failed')) = (wake_at IS NULL)),
    CONSTRAINT sagas_terminal_has_no_lease
        CHECK (lease_owner IS NULL OR status IN ('running', 'compensating'))
) WITH (fillfactor = 70);

CREATE INDEX sagas_due ON stepwise.sagas (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX sagas_created ON stepwise.sagas (created_at DESC);
CREATE INDEX sagas_status_skill ON stepwise.sagas (status, skill);
CREATE INDEX sagas_replay_of ON stepwise.sagas (replay_of) WHERE replay_of IS NOT NULL;
-- Operators list and replay by skill, status and time (`sagas list`, bulk retry/restart).
-- None of its columns changes on the per-step commit (status changes a few times per saga and
-- is indexed already), so step commits stay HOT.
CREATE INDEX sagas_skill_status_created ON stepwise.sagas (skill, status, created_at DESC);

-- One row per step of a saga, created with the saga. `attempts` counts every attempt ever
-- started (operator retries included); `*_round_base` is the count when the current round of
-- attempts began, so an operator retry gets a fresh budget without forgetting history.
CREATE TABLE stepwise.steps (
    saga_id                     uuid NOT NULL REFERENCES stepwise.sagas (id) ON DELETE CASCADE,
    position                    integer NOT NULL CHECK (position >= 0),
    name                        text NOT NULL CHECK (name <> ''),
    status                      stepwise.step_status NOT NULL DEFAULT 'pending',
    attempts                    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    attempts_round_base         integer NOT NULL DEFAULT 0 CHECK (attempts_round_base <= attempts),
    output                      jsonb,
    error                       jsonb,
    started_at                  timestamptz,
    finished_at                 timestamptz,
    compensation_status         stepwise.compensation_status NOT NULL DEFAULT 'not_needed',
    compensation_attempts       integer NOT NULL DEFAULT 0 CHECK (compensation_attempts >= 0),
    compensation_round_base     integer NOT NULL DEFAULT 0 CHECK (compensation_round_base <= compensation_attempts),
    compensation_output         jsonb,
    compensation_error          jsonb,
    compensation_started_at     timestamptz,
    compensation_finished_at    timestamptz,
    PRIMARY KEY (saga_id, position),
    CONSTRAINT steps_name_unique UNIQUE (saga_id, name),
    -- only a step that succeeded has something to undo
    CONSTRAINT steps_compensation_needs_success
        CHECK (compensation_status = 'not_needed' OR status = 'succeeded'),
    CONSTRAINT steps_output_means_success CHECK (output IS NULL OR status = 'succeeded')
) WITH (fillfactor = 80);

-- The append-only history: one row per transition, with who did it and when. The identity
-- `id` orders a saga's history (`seq` is its rank).
--
-- Partitioned by RANGE (saga_id), one partition per calendar month (UTC) of saga creation.
-- Saga ids are UUIDv7, whose leading 48 bits are the creation time in milliseconds, so every
-- event of a saga lands in the partition of the month the saga was created, and a saga's
-- history is read from one partition. `stepwise sagas prune` drops a whole month's partition
-- (no row-by-row DELETE, no dead tuples, no vacuum debt) once every saga created in that month
-- has been pruned; younger or unfinished sagas keep their month's partition and are pruned row
-- by row. Ids that are not UUIDv7, or months without a partition yet, go to `events_default`.
-- See docs/operators.md.
CREATE TABLE stepwise.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    saga_id     uuid NOT NULL,
    at          timestamptz NOT NULL,
    kind        stepwise.event_kind NOT NULL,
    step        text,
    attempt     integer CHECK (attempt > 0),
    actor       text NOT NULL,
    detail      jsonb,
    PRIMARY KEY (saga_id, id)
) PARTITION BY RANGE (saga_id);

CREATE TABLE stepwise.events_default PARTITION OF stepwise.events DEFAULT;

-- History rows are never updated; they are deleted only together with their terminal saga.
CREATE FUNCTION stepwise.events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stepwise.events is append-only';
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON stepwise.events
    FOR EACH ROW EXECUTE FUNCTION stepwise.events_are_append_only();

-- The smallest UUIDv7 of a millisecond: a partition bound.
CREATE FUNCTION stepwise.uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- Creates the monthly partitions covering [from_ts, to_ts] that do not exist yet; returns how
-- many it created. A month whose rows already went to the default partition is skipped (with a
-- notice): its events stay there and are pruned row by row. Several processes may create the
-- coming month's partition at the same moment (every `migrate`, worker start and prune does):
-- a transaction-scoped advisory lock serialises them, so the loser finds the partition made
-- instead of failing with `duplicate_table`.
CREATE FUNCTION stepwise.ensure_event_partitions(from_ts timestamptz, to_ts timestamptz)
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

-- Partitions for the months around now (`PgStore::migrate` keeps them ahead).
SELECT stepwise.ensure_event_partitions(now() - interval '1 month', now() + interval '2 months');

-- Starting a saga in one round trip: the saga row (idempotent on skill + key), its step rows,
-- its `saga_started` event and the NOTIFY that wakes a worker, in one call (it was six round
-- trips in front of every saga's first step). Used by `PgStore::insert_saga` (a start) and
-- `PgStore::insert_replay` (restart and fork, inside the transaction that checked the original
-- saga).
--
-- `p_reused` holds the outputs of the leading steps a fork reuses: those steps start
-- `succeeded` and the cursor starts after them. When the key is taken, nothing is written and
-- the existing saga comes back with `created = false` and whether its input is the same.
CREATE FUNCTION stepwise.start_saga(
    p_id uuid,
    p_skill text,
    p_skill_version int4,
    p_idempotency_key text,
    p_input jsonb,
    p_started_by text,
    p_replay_of uuid,
    p_step_names text[],
    p_reused jsonb[],
    p_at timestamptz,
    p_channel text)
RETURNS TABLE (
    id uuid,
    skill text,
    skill_version int4,
    status text,
    idempotency_key text,
    created_at timestamptz,
    updated_at timestamptz,
    created boolean,
    same_input boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH inserted AS (
    INSERT INTO stepwise.sagas AS s
        (id, skill, skill_version, status, idempotency_key, input, started_by, replay_of,
         cursor, step_count, wake_at, created_at, updated_at)
    VALUES (p_id, p_skill, p_skill_version, 'pending', p_idempotency_key, p_input, p_started_by,
            p_replay_of, COALESCE(cardinality(p_reused), 0), cardinality(p_step_names),
            p_at, p_at, p_at)
    ON CONFLICT ON CONSTRAINT sagas_idempotency DO NOTHING
    RETURNING s.id, s.skill, s.skill_version, s.status::text, s.idempotency_key, s.created_at,
              s.updated_at)
    SELECT i.*, true, true FROM inserted i;
    IF NOT FOUND THEN
        RETURN QUERY
        SELECT s.id, s.skill, s.skill_version, s.status::text, s.idempotency_key, s.created_at,
               s.updated_at, false, s.input = p_input
        FROM stepwise.sagas s
        WHERE s.skill = p_skill AND s.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;

    INSERT INTO stepwise.steps (saga_id, position, name, status, output, finished_at)
    SELECT p_id, t.ord::int - 1, t.name,
           CASE WHEN p_reused[t.ord::int] IS NULL THEN 'pending' ELSE 'succeeded' END,
           p_reused[t.ord::int],
           CASE WHEN p_reused[t.ord::int] IS NULL THEN NULL ELSE p_at END
    FROM UNNEST(p_step_names) WITH ORDINALITY AS t(name, ord);

    INSERT INTO stepwise.events (saga_id, at, kind, actor)
    VALUES (p_id, p_at, 'saga_started', p_started_by);

    PERFORM pg_notify(p_channel, '');
END
$$;

-- The claim as a function, so that its plan is made once per connection. As a prepared
-- statement PostgreSQL re-planned it on every call (a custom plan, which sees the LIMIT and the
-- skill list, always looks cheaper than the generic one): ~0.4 ms of planning per claim,
-- measured in the server log, more than executing it. See `claim` in
-- engine/src/store/queries.rs for what each part does. It only reaches rows through indexes,
-- so sequential scans, hash and merge joins are off inside it and the one cached plan cannot
-- depend on how big the tables were when it was made.
CREATE FUNCTION stepwise.claim_sagas(
    p_now timestamptz,
    p_limit int8,
    p_worker text,
    p_lease_until timestamptz,
    p_skills text[])
RETURNS TABLE (
    id uuid,
    skill text,
    skill_version int4,
    status text,
    input jsonb,
    cursor int4,
    fencing_token int8,
    cancel_requested boolean,
    previous_owner text,
    begun_attempt int4,
    steps jsonb)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT id, lease_owner AS previous_owner FROM stepwise.sagas
        WHERE wake_at <= p_now AND skill || '@' || skill_version = ANY(p_skills)
        ORDER BY wake_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE stepwise.sagas s
        SET lease_owner = p_worker, fencing_token = s.fencing_token + 1, wake_at = p_lease_until,
            status = CASE WHEN s.status = 'pending' THEN 'running' ELSE s.status END,
            updated_at = p_now
        WHERE s.id = ANY(ARRAY(SELECT id FROM due))
        RETURNING s.id, s.skill, s.skill_version, s.status::text, s.input, s.cursor,
                  s.fencing_token, s.cancel_requested_at IS NOT NULL AS cancel_requested),
    begun AS (
        UPDATE stepwise.steps st
        SET status = 'running', attempts = st.attempts + 1, started_at = p_now,
            finished_at = NULL
        FROM claimed
        WHERE st.saga_id = claimed.id AND st.position = claimed.cursor
          AND claimed.status = 'running' AND NOT claimed.cancel_requested
          AND st.status IN ('pending', 'failed')
        RETURNING st.saga_id, st.name, st.attempts),
    history AS (
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT h.saga_id, p_now, h.kind, h.step, h.attempt, p_worker, h.detail
        FROM (SELECT claimed.id AS saga_id, 1 AS ord, 'lease_expired' AS kind,
                     NULL::text AS step, NULL::int4 AS attempt,
                     jsonb_build_object('previous_owner', due.previous_owner) AS detail
              FROM claimed JOIN due ON due.id = claimed.id
              WHERE due.previous_owner IS NOT NULL
              UNION ALL
              SELECT begun.saga_id, 2, 'step_started', begun.name, begun.attempts, NULL
              FROM begun) h
        ORDER BY h.saga_id, h.ord)
    SELECT claimed.id, claimed.skill, claimed.skill_version, claimed.status, claimed.input,
           claimed.cursor, claimed.fencing_token, claimed.cancel_requested, due.previous_owner,
           begun.attempts AS begun_attempt,
           (SELECT jsonb_agg(jsonb_build_object(
                       'position', st.position, 'name', st.name, 'status', st.status,
                       'attempts', st.attempts,
                       'attempts_round_base', st.attempts_round_base,
                       'has_output', st.output IS NOT NULL, 'output', st.output,
                       'compensation_status', st.compensation_status,
                       'compensation_attempts', st.compensation_attempts,
                       'compensation_round_base', st.compensation_round_base)
                   ORDER BY st.position)
            FROM stepwise.steps st WHERE st.saga_id = claimed.id) AS steps
    FROM claimed JOIN due ON due.id = claimed.id
    LEFT JOIN begun ON begun.saga_id = claimed.id;
END
$$;

-- One saga's step commit as plain statements: the unbatched hot path (`commit_batch = 1`).
-- Same effect as one saga's share of `stepwise.commit_transitions` (below), which serves group
-- commit: there its data-modifying CTEs over arrays are set up once for up to 64 sagas. For one
-- saga that set-up costs more than plain statements: a primary-key UPDATE per changed row and
-- one INSERT of the history rows take 6-11% less backend CPU per call (BENCHMARKS.md).
--
-- Returns whether a cancel was requested, or NULL when the fencing token no longer matches
-- (the lease was lost: nothing is written). Step changes (`c_*`) and history rows (`e_*`) come
-- in order; a `begin_next` change and the history rows marked `e_next` are skipped when a
-- cancel was requested, so the worker compensates instead of starting the next step.
--
-- It needs no planner settings: each statement reaches one row by primary-key equality, which
-- PostgreSQL plans as an index scan even on an empty table (and the settings themselves cost
-- ~12% of a call).
CREATE FUNCTION stepwise.commit_step(
    p_id uuid,
    p_token int8,
    p_status text,
    p_cursor int4,
    p_set_wake bool,
    p_wake timestamptz,
    p_release bool,
    p_output jsonb,
    p_error jsonb,
    p_at timestamptz,
    p_actor text,
    c_pos int4[],
    c_kind text[],
    c_output jsonb[],
    e_kind text[],
    e_step text[],
    e_attempt int4[],
    e_detail jsonb[],
    e_next bool[])
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_cancel boolean;
BEGIN
    UPDATE stepwise.sagas g
    SET status = COALESCE(p_status, g.status),
        cursor = COALESCE(p_cursor, g.cursor),
        wake_at = CASE WHEN p_set_wake THEN p_wake ELSE g.wake_at END,
        lease_owner = CASE WHEN p_release THEN NULL ELSE g.lease_owner END,
        output = COALESCE(p_output, g.output),
        error = COALESCE(p_error, g.error),
        updated_at = p_at
    WHERE g.id = p_id AND g.fencing_token = p_token
    RETURNING g.cancel_requested_at IS NOT NULL INTO v_cancel;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    FOR k IN 1 .. COALESCE(cardinality(c_kind), 0) LOOP
        CONTINUE WHEN c_kind[k] = 'begin_next' AND v_cancel;
        CASE c_kind[k]
        WHEN 'begin', 'begin_next' THEN
            UPDATE stepwise.steps
            SET status = 'running', attempts = attempts + 1, started_at = p_at, finished_at = NULL
            WHERE saga_id = p_id AND position = c_pos[k];
        WHEN 'succeeded' THEN
            UPDATE stepwise.steps
            SET status = 'succeeded', output = c_output[k], error = NULL, finished_at = p_at
            WHERE saga_id = p_id AND position = c_pos[k];
        WHEN 'comp_begin' THEN
            UPDATE stepwise.steps
            SET compensation_status = 'running',
                compensation_attempts = compensation_attempts + 1,
                compensation_started_at = COALESCE(compensation_started_at, p_at)
            WHERE saga_id = p_id AND position = c_pos[k];
        WHEN 'comp_succeeded' THEN
            UPDATE stepwise.steps
            SET compensation_status = 'compensated', compensation_output = c_output[k],
                compensation_error = NULL, compensation_finished_at = p_at
            WHERE saga_id = p_id AND position = c_pos[k];
        END CASE;
    END LOOP;

    INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
    SELECT p_id, p_at, e.kind, e.step, e.attempt, p_actor, e.detail
    FROM UNNEST(e_kind, e_step, e_attempt, e_detail, e_next)
        WITH ORDINALITY AS e(kind, step, attempt, detail, next, ord)
    WHERE NOT e.next OR NOT v_cancel
    ORDER BY e.ord;

    RETURN v_cancel;
END
$$;

-- Group commit: one round trip and one commit for a batch of sagas' transitions (the fenced
-- saga updates, the step rows and the history rows) in one statement. See `commit_batch` in
-- engine/src/store/queries.rs for what each part does.
--
-- It is a function so that its plan is cached once per connection: as a prepared statement,
-- PostgreSQL re-plans it on every execution (a custom plan looks cheaper than the generic one
-- because it sees the arrays' lengths), and planning this statement costs ~0.6 ms, more than
-- executing it. `plan_cache_mode = force_generic_plan` applies inside the function only.
-- The statement only ever reaches rows by primary key, so its one cached plan must not depend
-- on how big the tables were when it was made (a plan made on a fresh, nearly empty database
-- would otherwise hash-join sequential scans of `sagas` and `steps` until the next ANALYZE):
-- sequential scans, hash and merge joins are off inside the function.
CREATE FUNCTION stepwise.commit_transitions(
    p_ids uuid[],
    p_tokens int8[],
    p_statuses text[],
    p_cursors int4[],
    p_set_wakes bool[],
    p_wakes timestamptz[],
    p_releases bool[],
    p_outputs jsonb[],
    p_errors jsonb[],
    p_ats timestamptz[],
    c_saga uuid[],
    c_pos int4[],
    c_kind text[],
    c_output jsonb[],
    e_saga uuid[],
    e_kind text[],
    e_step text[],
    e_attempt int4[],
    e_detail jsonb[],
    e_next bool[],
    e_actor text[])
RETURNS TABLE (saga_id uuid, cancel_requested boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH i AS (
        SELECT * FROM UNNEST(p_ids, p_tokens, p_statuses, p_cursors, p_set_wakes,
                             p_wakes, p_releases, p_outputs, p_errors, p_ats)
            AS i(id, token, status, cursor, set_wake, wake_at, release, output, error, at)
    ),
    s AS (
        UPDATE stepwise.sagas g
        SET status = COALESCE(i.status, g.status),
            cursor = COALESCE(i.cursor, g.cursor),
            wake_at = CASE WHEN i.set_wake THEN i.wake_at ELSE g.wake_at END,
            lease_owner = CASE WHEN i.release THEN NULL ELSE g.lease_owner END,
            output = COALESCE(i.output, g.output),
            error = COALESCE(i.error, g.error),
            updated_at = i.at
        FROM i
        WHERE g.id = i.id AND g.fencing_token = i.token
        RETURNING g.id, i.at, g.cancel_requested_at IS NOT NULL AS cancel_requested
    ),
    c AS (
        SELECT c.saga_id, c.position, c.kind, c.output, s.at
        FROM UNNEST(c_saga, c_pos, c_kind, c_output)
            AS c(saga_id, position, kind, output)
        JOIN s ON s.id = c.saga_id
        WHERE c.kind <> 'begin_next' OR NOT s.cancel_requested
    ),
    st AS (
        UPDATE stepwise.steps p
        SET status = CASE WHEN c.kind IN ('begin', 'begin_next') THEN 'running'
                          WHEN c.kind = 'succeeded' THEN 'succeeded'
                          ELSE p.status END,
            attempts = CASE WHEN c.kind IN ('begin', 'begin_next') THEN p.attempts + 1
                            ELSE p.attempts END,
            started_at = CASE WHEN c.kind IN ('begin', 'begin_next') THEN c.at ELSE p.started_at END,
            finished_at = CASE WHEN c.kind IN ('begin', 'begin_next') THEN NULL
                               WHEN c.kind = 'succeeded' THEN c.at
                               ELSE p.finished_at END,
            output = CASE WHEN c.kind = 'succeeded' THEN c.output ELSE p.output END,
            error = CASE WHEN c.kind = 'succeeded' THEN NULL ELSE p.error END,
            compensation_status = CASE WHEN c.kind = 'comp_begin' THEN 'running'
                                       WHEN c.kind = 'comp_succeeded' THEN 'compensated'
                                       ELSE p.compensation_status END,
            compensation_attempts = CASE WHEN c.kind = 'comp_begin' THEN p.compensation_attempts + 1
                                         ELSE p.compensation_attempts END,
            compensation_started_at = CASE WHEN c.kind = 'comp_begin'
                                           THEN COALESCE(p.compensation_started_at, c.at)
                                           ELSE p.compensation_started_at END,
            compensation_output = CASE WHEN c.kind = 'comp_succeeded' THEN c.output
                                       ELSE p.compensation_output END,
            compensation_error = CASE WHEN c.kind = 'comp_succeeded' THEN NULL
                                      ELSE p.compensation_error END,
            compensation_finished_at = CASE WHEN c.kind = 'comp_succeeded' THEN c.at
                                            ELSE p.compensation_finished_at END
        FROM c
        WHERE p.saga_id = c.saga_id AND p.position = c.position
    ),
    ev AS (
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT e.saga_id, s.at, e.kind, e.step, e.attempt, e.actor, e.detail
        FROM UNNEST(e_saga, e_kind, e_step, e_attempt, e_detail, e_next,
                    e_actor)
            WITH ORDINALITY AS e(saga_id, kind, step, attempt, detail, next, actor, ord)
        JOIN s ON s.id = e.saga_id
        WHERE NOT e.next OR NOT s.cancel_requested
        ORDER BY e.ord
    )
    SELECT s.id, s.cancel_requested FROM s;
END
$$;
