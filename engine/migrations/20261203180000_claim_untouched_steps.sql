-- A claim reads a saga's step rows (`step_states`) only if something may have changed them
-- since its start. A saga never claimed before (fencing token 0) at cursor 0 still has its
-- steps exactly as `start_saga` wrote them: every step `pending`, no attempt, no output, no
-- compensation. For such a saga `steps` is the number of its steps (a json number) instead of
-- their rows, and the worker builds them from its skill's step names
-- (engine/src/store/claim.rs, `untouched_steps`). Nothing changes a step row without the
-- saga's lease (a commit under its token, an interrupted attempt, a resumed compensation of a
-- failed saga: each needs a claim first), and a fork's reused steps put the cursor past 0.
--
-- benches/micro/claim.sql, three alternations: claims of 16 sagas 90-93 -> 40-46 µs per
-- claimed saga, of one saga (a local start's take) 252-269 -> 205-223.

CREATE OR REPLACE FUNCTION stepwise.take_sagas(
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
               st.attempts + 1 AS next_attempt,
               s.fencing_token = 0 AND s.cursor = 0 AS untouched
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
        RETURNING s.id, s.skill, s.skill_version, s.status::text AS status, s.input, s.cursor,
                  s.fencing_token, s.cancel_requested_at IS NOT NULL AS cancel_requested,
                  d.previous_owner, d.resumed, s.attempt_position, s.attempt_compensation,
                  s.attempt, s.attempt_started_at, s.attempt_seq, d.untouched, s.step_count)
    SELECT c.id, c.skill, c.skill_version, c.status, c.input, c.cursor, c.fencing_token,
           c.cancel_requested, c.previous_owner, c.resumed, c.attempt_position,
           c.attempt_compensation, c.attempt, c.attempt_started_at, c.attempt_seq,
           CASE WHEN c.untouched THEN to_json(c.step_count) ELSE stepwise.step_states(c.id) END
    FROM claimed c;
END
$$;
