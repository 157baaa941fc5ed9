-- Unknown outcomes (issue 13 item 1; README "States", docs/reliability.md): a step whose
-- attempt failed in a way that may have taken effect (a timeout after sending, a 5xx, a
-- connection lost while reading the answer) is "possibly done" once it gives up, and is
-- compensated like a succeeded step, first. The flag is set in the same commit as the failed
-- attempt, so a crash in between cannot lose it.
ALTER TABLE stepwise.steps ADD COLUMN possibly_done boolean NOT NULL DEFAULT false;
ALTER TABLE stepwise.steps ADD CONSTRAINT steps_possibly_done_was_attempted
    CHECK (NOT possibly_done OR attempts > 0);
-- Something to undo: a step that succeeded, or one possibly done.
ALTER TABLE stepwise.steps DROP CONSTRAINT steps_compensation_needs_success;
ALTER TABLE stepwise.steps ADD CONSTRAINT steps_compensation_needs_success
    CHECK (compensation_status = 'not_needed' OR status = 'succeeded' OR possibly_done);

-- The claim, as in 20261201000001_waits.sql, also returning each step's `possibly_done`.
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
                       'wait_deadlines', st.wait_deadlines,
                       'possibly_done', st.possibly_done)
                   ORDER BY st.position)
            FROM stepwise.steps st WHERE st.saga_id = claimed.id) AS steps
    FROM claimed JOIN due ON due.id = claimed.id
    LEFT JOIN begun ON begun.saga_id = claimed.id;
END
$$;
