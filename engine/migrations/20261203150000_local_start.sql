-- A saga started in a process whose worker has a free slot is claimed by that worker in the
-- transaction that starts it (engine/src/executor/handoff.rs), the way Temporal's eager
-- workflow start hands the first task to a co-located worker: one commit and its WAL flush
-- instead of two (the start's, then the claim's after a NOTIFY woke a worker), and no other
-- worker woken for nothing.
--
-- `take_sagas` becomes the one statement that puts sagas under a worker's lease and begins
-- the attempt of a saga going forward; `claim_sagas` (due sagas, found with SKIP LOCKED) and
-- `start_claimed_saga` (a saga inserted in the same transaction) both call it.
-- `start_saga` sends no NOTIFY when `p_channel` is NULL: the worker that holds the saga already
-- knows, and the live views hear of it from that worker's announcements.

CREATE FUNCTION stepwise.take_sagas(
    p_ids uuid[],
    p_now timestamptz,
    p_worker text,
    p_lease_until timestamptz)
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
BEGIN
    RETURN QUERY
    WITH d AS (
        SELECT s.id, s.lease_owner AS previous_owner, s.status = 'waiting' AS resumed,
               (s.status IN ('pending', 'running') AND s.cancel_requested_at IS NULL
                AND s.attempt_position IS NULL
                AND st.status IN ('pending', 'failed')) AS begins,
               st.attempts + 1 AS next_attempt
        FROM stepwise.sagas s
        LEFT JOIN stepwise.steps st ON st.saga_id = s.id AND st.position = s.cursor
        WHERE s.id = ANY(p_ids)),
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

-- As in 20261203130000, with the taking moved to take_sagas.
CREATE OR REPLACE FUNCTION stepwise.claim_sagas(
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

    RETURN QUERY SELECT * FROM stepwise.take_sagas(v_ids, p_now, p_worker, p_lease_until);
END
$$;

-- As in the baseline, but for the NOTIFY, sent only when a channel is given.
CREATE OR REPLACE FUNCTION stepwise.start_saga(
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

    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
END
$$;

-- Starts a saga already claimed by `p_worker`, its first attempt begun, in one call: the rows
-- of a claim for it, or none if the idempotency key is taken (the caller then starts it the
-- usual way, which reports the saga that holds the key).
CREATE FUNCTION stepwise.start_claimed_saga(
    p_id uuid,
    p_skill text,
    p_skill_version int4,
    p_idempotency_key text,
    p_input jsonb,
    p_started_by text,
    p_step_names text[],
    p_at timestamptz,
    p_worker text,
    p_lease_until timestamptz)
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
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
    FROM stepwise.start_saga(p_id, p_skill, p_skill_version, p_idempotency_key, p_input,
                             p_started_by, NULL, p_step_names, NULL, p_at, NULL) s
    WHERE s.created;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM stepwise.take_sagas(ARRAY[p_id], p_at, p_worker, p_lease_until);
END
$$;
