-- stepwise.commit_steps with the same arguments, writes and answer, without a join that grew
-- with the square of the batch: the steps update and the history insert joined the input rows
-- `i` to the updated sagas `s`, two CTE scans that a nested loop (hash joins are off inside the
-- function, so its cached plan cannot depend on table sizes) compared pairwise, 4,032 rows
-- filtered out for a batch of 64, ~2.7 of its 5.4 ms (EXPLAIN ANALYZE through auto_explain,
-- BENCHMARKS.md). `s` now returns what the later writes need from `i`, and they read `s` alone.

CREATE OR REPLACE FUNCTION stepwise.commit_steps(
    p_ids uuid[],
    p_tokens int8[],
    p_ats timestamptz[],
    p_actors text[],
    p_statuses text[],
    p_cursors int4[],
    p_set_wakes bool[],
    p_wakes timestamptz[],
    p_releases bool[],
    p_outputs jsonb[],
    p_errors jsonb[],
    p_waiting jsonb[],
    p_end_attempts bool[],
    f_pos int4[],
    f_comp bool[],
    f_attempt int4[],
    f_started timestamptz[],
    f_seq int8[],
    f_output jsonb[],
    b_pos int4[],
    b_comp bool[],
    b_attempt int4[],
    b_next bool[],
    e_saga uuid[],
    e_kind text[],
    e_step text[],
    e_attempt int4[],
    e_detail jsonb[])
RETURNS TABLE (saga_id uuid, cancel_requested boolean, begun_seq int8)
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
        SELECT u.*,
               CASE WHEN u.f_pos IS NOT NULL THEN nextval('stepwise.events_id_seq') END
                   AS f_end_seq
        FROM UNNEST(p_ids, p_tokens, p_ats, p_actors, p_statuses, p_cursors, p_set_wakes,
                    p_wakes, p_releases, p_outputs, p_errors, p_waiting, p_end_attempts,
                    f_pos, f_comp, f_attempt, f_started, f_seq, f_output,
                    b_pos, b_comp, b_attempt, b_next)
            AS u(id, token, at, actor, status, cursor, set_wake, wake_at, release, output, error,
                 waiting, end_attempt, f_pos, f_comp, f_attempt, f_started, f_seq, f_output,
                 b_pos, b_comp, b_attempt, b_next)),
    s AS (
        UPDATE stepwise.sagas g
        SET status = COALESCE(i.status, g.status),
            cursor = COALESCE(i.cursor, g.cursor),
            wake_at = CASE WHEN i.set_wake THEN i.wake_at ELSE g.wake_at END,
            lease_owner = CASE WHEN i.release THEN NULL ELSE g.lease_owner END,
            output = COALESCE(i.output, g.output),
            error = COALESCE(i.error, g.error),
            waiting_for = i.waiting,
            updated_at = i.at,
            attempt_position = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN i.b_pos
                WHEN i.end_attempt THEN NULL ELSE g.attempt_position END,
            attempt_compensation = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN i.b_comp
                WHEN i.end_attempt THEN NULL ELSE g.attempt_compensation END,
            attempt = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN i.b_attempt
                WHEN i.end_attempt THEN NULL ELSE g.attempt END,
            attempt_started_at = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN i.at
                WHEN i.end_attempt THEN NULL ELSE g.attempt_started_at END,
            attempt_seq = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN nextval('stepwise.events_id_seq')
                WHEN i.end_attempt THEN NULL ELSE g.attempt_seq END,
            attempt_actor = CASE
                WHEN i.b_pos IS NOT NULL AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                    THEN i.actor
                WHEN i.end_attempt THEN NULL ELSE g.attempt_actor END
        FROM i
        WHERE g.id = i.id AND g.fencing_token = i.token
        RETURNING g.id, g.cancel_requested_at IS NOT NULL AS cancel_requested,
                  CASE WHEN i.b_pos IS NOT NULL
                            AND NOT (i.b_next AND g.cancel_requested_at IS NOT NULL)
                       THEN g.attempt_seq END AS begun_seq,
                  i.at, i.actor, i.f_pos, i.f_comp, i.f_attempt, i.f_started, i.f_seq,
                  i.f_output, i.f_end_seq),
    f AS (
        UPDATE stepwise.steps st
        SET status = CASE WHEN i.f_comp THEN st.status ELSE 'succeeded' END,
            attempts = CASE WHEN i.f_comp THEN st.attempts ELSE i.f_attempt END,
            output = CASE WHEN i.f_comp THEN st.output ELSE i.f_output END,
            error = CASE WHEN i.f_comp THEN st.error END,
            started_at = CASE WHEN i.f_comp THEN st.started_at ELSE i.f_started END,
            finished_at = CASE WHEN i.f_comp THEN st.finished_at ELSE i.at END,
            started_seq = CASE WHEN i.f_comp THEN st.started_seq ELSE i.f_seq END,
            finished_seq = CASE WHEN i.f_comp THEN st.finished_seq ELSE i.f_end_seq END,
            actor = CASE WHEN i.f_comp THEN st.actor ELSE i.actor END,
            compensation_status = CASE WHEN i.f_comp THEN 'compensated'
                                       ELSE st.compensation_status END,
            compensation_attempts = CASE WHEN i.f_comp THEN i.f_attempt
                                         ELSE st.compensation_attempts END,
            compensation_output = CASE WHEN i.f_comp THEN i.f_output
                                       ELSE st.compensation_output END,
            compensation_error = CASE WHEN i.f_comp THEN NULL ELSE st.compensation_error END,
            compensation_started_at = CASE WHEN i.f_comp THEN i.f_started
                                           ELSE st.compensation_started_at END,
            compensation_finished_at = CASE WHEN i.f_comp THEN i.at
                                            ELSE st.compensation_finished_at END,
            compensation_started_seq = CASE WHEN i.f_comp THEN i.f_seq
                                            ELSE st.compensation_started_seq END,
            compensation_finished_seq = CASE WHEN i.f_comp THEN i.f_end_seq
                                             ELSE st.compensation_finished_seq END,
            compensation_actor = CASE WHEN i.f_comp THEN i.actor ELSE st.compensation_actor END
        FROM s i
        WHERE i.f_pos IS NOT NULL AND st.saga_id = i.id AND st.position = i.f_pos),
    ev AS (
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT e.saga_id, s.at, e.kind, e.step, e.attempt, s.actor, e.detail
        FROM UNNEST(e_saga, e_kind, e_step, e_attempt, e_detail)
            WITH ORDINALITY AS e(saga_id, kind, step, attempt, detail, ord)
        JOIN s ON s.id = e.saga_id
        ORDER BY e.ord)
    SELECT s.id, s.cancel_requested, s.begun_seq FROM s;
END
$$;
