-- stepwise.commit_steps, same arguments, writes and answer, a saga at a time: a loop over the
-- input arrays running short statements with plain parameters, instead of one statement
-- joining the UNNEST of the 23 arrays to the tables.
--
-- Measured with benches/micro/step_commit_ceiling.sh (pgbench driving this function alone,
-- BENCHMARKS.md): the one-statement form reached 0.31 of PostgreSQL's L1 ceiling for one saga
-- per call and 0.32 of L1b for 16. Most of a call went to starting its executor (a plan of
-- three data-modifying CTEs, 33 CASE expressions compiled for every call, a 23-array function
-- scan), and the steps update joined two CTE scans pairwise (64 sagas: 4,032 rows filtered
-- out, half of the call). Here each saga costs one fenced saga update and, when an attempt
-- succeeded, one steps update, each a primary-key statement with a cached generic plan; a
-- forward success and a compensation's success are separate statements, so neither carries
-- the other's columns as CASEs.
--
-- Per saga, in order: the history place of the end of the attempt that succeeded (taken
-- before the next attempt's, so the history keeps its order); the fenced saga update (a saga
-- whose token no longer matches changes nothing and is left out of the answer: lost lease),
-- with the attempt columns set when an attempt begins (`b_*`; a `b_next` start is skipped
-- when a cancel was requested), cleared when the attempt in flight ended (`p_end_attempts`),
-- else kept; the steps row of the attempt that succeeded (`f_*`). Then the history rows of
-- the committed sagas (`e_*`: a saga's end, waits), in order. The common step commit writes
-- the steps row of k and the saga row, neither touching an indexed column: two HOT updates.

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
AS $$
#variable_conflict use_variable
DECLARE
    v_committed uuid[] := '{}';
    v_end_seq int8;
    v_begins boolean;
    v_cancel boolean;
    v_begun int8;
BEGIN
    FOR k IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        v_end_seq := CASE WHEN f_pos[k] IS NOT NULL THEN nextval('stepwise.events_id_seq') END;
        UPDATE stepwise.sagas g
        SET status = COALESCE(p_statuses[k], g.status),
            cursor = COALESCE(p_cursors[k], g.cursor),
            wake_at = CASE WHEN p_set_wakes[k] THEN p_wakes[k] ELSE g.wake_at END,
            lease_owner = CASE WHEN p_releases[k] THEN NULL ELSE g.lease_owner END,
            output = COALESCE(p_outputs[k], g.output),
            error = COALESCE(p_errors[k], g.error),
            waiting_for = p_waiting[k],
            updated_at = p_ats[k],
            attempt_position = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_pos[k]
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt_position END,
            attempt_compensation = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_comp[k]
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt_compensation END,
            attempt = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_attempt[k]
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt END,
            attempt_started_at = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN p_ats[k]
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt_started_at END,
            attempt_seq = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN nextval('stepwise.events_id_seq')
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt_seq END,
            attempt_actor = CASE
                WHEN b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL)
                    THEN p_actors[k]
                WHEN p_end_attempts[k] THEN NULL ELSE g.attempt_actor END
        WHERE g.id = p_ids[k] AND g.fencing_token = p_tokens[k]
        RETURNING g.cancel_requested_at IS NOT NULL,
                  b_pos[k] IS NOT NULL AND NOT (b_next[k] AND g.cancel_requested_at IS NOT NULL),
                  g.attempt_seq
        INTO v_cancel, v_begins, v_begun;
        CONTINUE WHEN NOT FOUND;

        IF f_pos[k] IS NOT NULL AND f_comp[k] THEN
            UPDATE stepwise.steps st
            SET compensation_status = 'compensated',
                compensation_attempts = f_attempt[k],
                compensation_output = f_output[k],
                compensation_error = NULL,
                compensation_started_at = f_started[k],
                compensation_finished_at = p_ats[k],
                compensation_started_seq = f_seq[k],
                compensation_finished_seq = v_end_seq,
                compensation_actor = p_actors[k]
            WHERE st.saga_id = p_ids[k] AND st.position = f_pos[k];
        ELSIF f_pos[k] IS NOT NULL THEN
            UPDATE stepwise.steps st
            SET status = 'succeeded',
                attempts = f_attempt[k],
                output = f_output[k],
                error = NULL,
                started_at = f_started[k],
                finished_at = p_ats[k],
                started_seq = f_seq[k],
                finished_seq = v_end_seq,
                actor = p_actors[k]
            WHERE st.saga_id = p_ids[k] AND st.position = f_pos[k];
        END IF;

        v_committed := v_committed || p_ids[k];
        saga_id := p_ids[k];
        cancel_requested := v_cancel;
        begun_seq := CASE WHEN v_begins THEN v_begun END;
        RETURN NEXT;
    END LOOP;

    IF cardinality(e_saga) > 0 THEN
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT e.saga_id, p_ats[x.k], e.kind, e.step, e.attempt, p_actors[x.k], e.detail
        FROM UNNEST(e_saga, e_kind, e_step, e_attempt, e_detail)
                WITH ORDINALITY AS e(saga_id, kind, step, attempt, detail, ord)
            CROSS JOIN LATERAL (SELECT array_position(p_ids, e.saga_id) AS k) x
        WHERE e.saga_id = ANY(v_committed)
        ORDER BY e.ord;
    END IF;
END
$$;
