-- Durable waits (README "Waits"): a step may wait for a named event or for a time. While it
-- waits the saga is `waiting`: no lease, `wake_at` = the deadline or the end of the sleep, so the
-- due scan on `wake_at` finds it when its time comes and a delivery makes it due now. Waiting
-- sagas cost no query of their own. engine/src/lib.rs explains the tables.

ALTER DOMAIN stepwise.saga_status DROP CONSTRAINT saga_status_check;
ALTER DOMAIN stepwise.saga_status ADD CONSTRAINT saga_status_check
    CHECK (VALUE IN ('pending', 'running', 'waiting', 'compensating', 'completed', 'compensated',
                     'failed'));

ALTER DOMAIN stepwise.event_kind DROP CONSTRAINT event_kind_check;
ALTER DOMAIN stepwise.event_kind ADD CONSTRAINT event_kind_check
    CHECK (VALUE IN (
        'saga_started', 'step_started', 'step_succeeded', 'step_failed', 'retry_scheduled',
        'compensation_started', 'compensation_succeeded', 'compensation_failed',
        'saga_completed', 'saga_compensated', 'saga_failed', 'cancel_requested',
        'lease_expired', 'operator_retry', 'operator_restart', 'operator_fork',
        'wait_started', 'event_received', 'wait_timed_out', 'sleep_started', 'sleep_ended'));

-- What a waiting saga awaits: {"step","event","until","prompt","schema"} (`event` null for a
-- sleep). Set exactly while the saga is `waiting`; the claim that wakes it clears it.
ALTER TABLE stepwise.sagas ADD COLUMN waiting_for jsonb;
ALTER TABLE stepwise.sagas ADD CONSTRAINT sagas_waiting_is_recorded
    CHECK ((status = 'waiting') = (waiting_for IS NOT NULL));
ALTER TABLE stepwise.sagas ADD CONSTRAINT sagas_waiting_has_no_lease
    CHECK (status <> 'waiting' OR (lease_owner IS NULL AND wake_at IS NOT NULL));

-- The instants a step's waits end, fixed when each wait is first reached, so that running the
-- step again does not move them: {"event:go:0": "2026-...", "sleep:0": "..."}.
ALTER TABLE stepwise.steps ADD COLUMN wait_deadlines jsonb NOT NULL DEFAULT '{}';

-- Events delivered to sagas, kept until the saga is pruned. A delivery is idempotent on
-- (saga, key); it is consumed by the step whose wait takes it, oldest first.
CREATE TABLE stepwise.deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id         uuid NOT NULL REFERENCES stepwise.sagas (id) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event <> ''),
    delivery_key    text NOT NULL CHECK (delivery_key <> ''),
    payload         jsonb NOT NULL,
    actor           text NOT NULL,
    received_at     timestamptz NOT NULL,
    consumed_by     text,
    consumed_at     timestamptz,
    CONSTRAINT deliveries_key UNIQUE (saga_id, delivery_key),
    CONSTRAINT deliveries_consumed_together CHECK ((consumed_by IS NULL) = (consumed_at IS NULL))
);
CREATE INDEX deliveries_unconsumed ON stepwise.deliveries (saga_id, id) WHERE consumed_at IS NULL;

-- The claim, as in the baseline, also waking `waiting` sagas: they go back to `running` without
-- a new attempt (the waiting step's attempt goes on), and `resumed` tells the worker so. Each
-- step's `wait_deadlines` comes with the steps.
DROP FUNCTION stepwise.claim_sagas(timestamptz, int8, text, timestamptz, text[]);
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
    resumed boolean,
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
        SELECT id, lease_owner AS previous_owner, status = 'waiting' AS resumed
        FROM stepwise.sagas
        WHERE wake_at <= p_now AND skill || '@' || skill_version = ANY(p_skills)
        ORDER BY wake_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE stepwise.sagas s
        SET lease_owner = p_worker, fencing_token = s.fencing_token + 1, wake_at = p_lease_until,
            status = CASE WHEN s.status IN ('pending', 'waiting') THEN 'running' ELSE s.status END,
            waiting_for = NULL,
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
           begun.attempts AS begun_attempt, due.resumed,
           (SELECT jsonb_agg(jsonb_build_object(
                       'position', st.position, 'name', st.name, 'status', st.status,
                       'attempts', st.attempts,
                       'attempts_round_base', st.attempts_round_base,
                       'has_output', st.output IS NOT NULL, 'output', st.output,
                       'compensation_status', st.compensation_status,
                       'compensation_attempts', st.compensation_attempts,
                       'compensation_round_base', st.compensation_round_base,
                       'wait_deadlines', st.wait_deadlines)
                   ORDER BY st.position)
            FROM stepwise.steps st WHERE st.saga_id = claimed.id) AS steps
    FROM claimed JOIN due ON due.id = claimed.id
    LEFT JOIN begun ON begun.saga_id = claimed.id;
END
$$;
