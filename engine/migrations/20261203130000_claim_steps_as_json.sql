-- A claim returns each saga's steps as `json` text built from the rows, instead of a `jsonb`
-- value built key by key: the worker only parses it (engine/src/store/claim.rs), and building
-- `jsonb` (every object's keys sorted, then the binary form, then text again on the wire) cost
-- the server about twice as much. Measured with pgbench on one saga of ten steps
-- (BENCHMARKS.md, 3 December, afternoon): ~250-270 µs against ~155-165 µs per call, client
-- included. `step_states` also becomes plpgsql, so its query is planned once per connection
-- instead of once per claim (a SQL function that cannot be inlined is planned again each time
-- the statement calling it runs).
--
-- The keys and values are the same; claim_sagas and reclaim_sagas are restated only for the
-- type of their `steps` column (a function's result type cannot be changed in place).

DROP FUNCTION stepwise.claim_sagas(timestamptz, int8, text, timestamptz, text[]);
DROP FUNCTION stepwise.reclaim_sagas(timestamptz, text, timestamptz, uuid[], int8[]);
DROP FUNCTION stepwise.step_states(uuid);

-- A saga's steps as a worker needs them, in position order; the attempt in flight is on the
-- saga row, not here: the caller overlays it.
CREATE FUNCTION stepwise.step_states(p_saga uuid) RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT json_agg(r ORDER BY r.position)
        FROM (SELECT st.position, st.name, st.status, st.attempts, st.attempts_round_base,
                     st.output IS NOT NULL AS has_output, st.output, st.compensation_status,
                     st.compensation_attempts, st.compensation_round_base, st.wait_deadlines,
                     st.possibly_done
              FROM stepwise.steps st WHERE st.saga_id = p_saga) r);
END
$$;

-- The claim: one call, a few statements with cached plans (a prepared statement was re-planned
-- on every call, ~0.4 ms, more than executing it). See `claim` in engine/src/store/claim.rs.
--  1. lock up to `p_limit` due sagas of the skill versions the worker runs, oldest due first;
--  2. a saga whose lease expired while an attempt was in flight: that attempt is interrupted
--     (`interrupt_attempts`), and the takeover is recorded (`lease_expired`);
--  3. take them (new lease and fencing token; a pending or waiting saga becomes running) and,
--     for a saga going forward whose step at the cursor waits to run (`pending`, or `failed`
--     with its retry due) with nothing in flight and no cancel requested, begin that step's
--     next attempt on the saga row, so the worker runs it without another commit.
-- A waiting saga keeps its attempt in flight: the worker goes on with it (`resumed`).
-- It only reaches rows through indexes, so sequential scans, hash and merge joins are off
-- inside it and the cached plans cannot depend on how big the tables were when they were made.
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
    resumed boolean,
    attempt_position int4,
    attempt_compensation boolean,
    attempt int4,
    attempt_started_at timestamptz,
    attempt_seq int8,
    steps json)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
DECLARE
    v_ids uuid[];
    v_expired uuid[];
    v_expired_tokens int8[];
BEGIN
    SELECT array_agg(d.id),
           array_agg(d.id) FILTER (WHERE d.lease_owner IS NOT NULL),
           array_agg(d.fencing_token) FILTER (WHERE d.lease_owner IS NOT NULL)
    INTO v_ids, v_expired, v_expired_tokens
    FROM (SELECT s.id, s.lease_owner, s.fencing_token FROM stepwise.sagas s
          WHERE s.wake_at <= p_now AND s.skill || '@' || s.skill_version = ANY(p_skills)
          ORDER BY s.wake_at
          LIMIT p_limit
          FOR UPDATE SKIP LOCKED) d;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    IF v_expired IS NOT NULL THEN
        PERFORM stepwise.interrupt_attempts(v_expired, v_expired_tokens, true);
        INSERT INTO stepwise.events (saga_id, at, kind, actor, detail)
        SELECT s.id, p_now, 'lease_expired', p_worker,
               jsonb_build_object('previous_owner', s.lease_owner)
        FROM stepwise.sagas s WHERE s.id = ANY(v_expired)
        ORDER BY s.id;
    END IF;

    RETURN QUERY
    WITH d AS (
        SELECT s.id, s.lease_owner AS previous_owner, s.status = 'waiting' AS resumed,
               (s.status IN ('pending', 'running') AND s.cancel_requested_at IS NULL
                AND s.attempt_position IS NULL
                AND st.status IN ('pending', 'failed')) AS begins,
               st.attempts + 1 AS next_attempt
        FROM stepwise.sagas s
        LEFT JOIN stepwise.steps st ON st.saga_id = s.id AND st.position = s.cursor
        WHERE s.id = ANY(v_ids)),
    claimed AS (
        UPDATE stepwise.sagas s
        SET lease_owner = p_worker, fencing_token = s.fencing_token + 1, wake_at = p_lease_until,
            status = CASE WHEN s.status IN ('pending', 'waiting') THEN 'running' ELSE s.status END,
            waiting_for = NULL,
            updated_at = p_now,
            attempt_position = CASE WHEN d.begins THEN s.cursor ELSE s.attempt_position END,
            attempt_compensation = CASE WHEN d.begins THEN false ELSE s.attempt_compensation END,
            attempt = CASE WHEN d.begins THEN d.next_attempt ELSE s.attempt END,
            attempt_started_at = CASE WHEN d.begins THEN p_now ELSE s.attempt_started_at END,
            attempt_seq = CASE WHEN d.begins THEN nextval('stepwise.events_id_seq')
                               ELSE s.attempt_seq END,
            attempt_actor = CASE WHEN d.begins THEN p_worker ELSE s.attempt_actor END
        FROM d
        WHERE s.id = d.id
        RETURNING s.id, s.skill, s.skill_version, s.status::text, s.input, s.cursor,
                  s.fencing_token, s.cancel_requested_at IS NOT NULL AS cancel_requested,
                  d.previous_owner, d.resumed, s.attempt_position, s.attempt_compensation,
                  s.attempt, s.attempt_started_at, s.attempt_seq)
    SELECT c.*, stepwise.step_states(c.id) FROM claimed c;
END
$$;

-- Takes back the sagas `p_worker` was driving when its connection to PostgreSQL was lost,
-- without waiting for their leases to expire: only those that still name it as lease owner
-- with the fencing token it held (`p_ids`, `p_tokens`). The attempt in flight was cut short:
-- it is interrupted (counted), and the worker decides what comes next as after a takeover.
-- Each saga taken gets a new token and lease and comes back as a claim returns it.
CREATE FUNCTION stepwise.reclaim_sagas(
    p_now timestamptz,
    p_worker text,
    p_lease_until timestamptz,
    p_ids uuid[],
    p_tokens int8[])
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
    resumed boolean,
    attempt_position int4,
    attempt_compensation boolean,
    attempt int4,
    attempt_started_at timestamptz,
    attempt_seq int8,
    steps json)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_ids uuid[];
    v_tokens int8[];
BEGIN
    SELECT array_agg(s.id), array_agg(s.fencing_token) INTO v_ids, v_tokens
    FROM (SELECT s.id, s.fencing_token FROM stepwise.sagas s
          JOIN UNNEST(p_ids, p_tokens) AS h(id, token)
            ON s.id = h.id AND s.fencing_token = h.token
          WHERE s.lease_owner = p_worker AND s.status IN ('running', 'compensating')
          FOR UPDATE OF s SKIP LOCKED) s;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM stepwise.interrupt_attempts(v_ids, v_tokens, true);
    RETURN QUERY
    WITH claimed AS (
        UPDATE stepwise.sagas s
        SET fencing_token = s.fencing_token + 1, wake_at = p_lease_until, updated_at = p_now
        WHERE s.id = ANY(v_ids)
        RETURNING s.id, s.skill, s.skill_version, s.status::text, s.input, s.cursor,
                  s.fencing_token, s.cancel_requested_at IS NOT NULL AS cancel_requested,
                  NULL::text AS previous_owner, false AS resumed, s.attempt_position,
                  s.attempt_compensation, s.attempt, s.attempt_started_at, s.attempt_seq)
    SELECT c.*, stepwise.step_states(c.id) FROM claimed c;
END
$$;
