-- stepwise.commit_steps, same arguments, writes and answer, by statement instead of a saga at
-- a time: one fenced UPDATE of all the sagas of the call, then one UPDATE of the steps rows
-- of the attempts that succeeded (and one for compensations, only when the call has one),
-- then the history rows, then the answer.
--
-- Measured with benches/micro/commit_batch.sql (grouped commits of M sagas, 40 rounds in one
-- transaction; BENCHMARKS.md, 3 December): the loop of 20261202130000 started two statements
-- per saga and cost the server 105-145 µs per step whatever M; here a call starts its
-- statements once, 38-40 µs per step for M = 16, 64 and 256. A call of one saga costs ~14% more
-- than the loop (benches/micro/commit_loop.sql, medians ~200 against ~176 µs): the price of
-- one writer for both paths instead of two copies of the same SET list.
--
-- What made the first one-statement form slow (the header of 20261202130000) is not here: the
-- input is one `generate_subscripts` row per saga, every value is read from the arrays by that
-- index (no UNNEST of 18 arrays, each materialized apart; no join of two CTE scans), and every
-- join is a nested loop over a primary-key index, so the cached plans do not depend on the
-- size of the tables.
--
-- Order of the history places: for each saga, the place of the end of the attempt that
-- succeeded (`end_seq`) is taken in its input row, before the saga's UPDATE takes the place
-- of the next attempt. A saga whose token no longer matches changes nothing and is left out
-- of the answer (lost lease). A call holds each saga once (a group commit carries one change
-- per saga); the answer lists the committed sagas in the order of the call.

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
#variable_conflict use_variable
DECLARE
    v_end_seqs int8[];
    v_ks int4[];
    v_cancels boolean[];
    v_begun int8[];
BEGIN
    WITH committed AS (
        UPDATE stepwise.sagas g
        SET status = COALESCE(p_statuses[i.k], g.status),
            cursor = COALESCE(p_cursors[i.k], g.cursor),
            wake_at = CASE WHEN p_set_wakes[i.k] THEN p_wakes[i.k] ELSE g.wake_at END,
            lease_owner = CASE WHEN p_releases[i.k] THEN NULL ELSE g.lease_owner END,
            output = COALESCE(p_outputs[i.k], g.output),
            error = COALESCE(p_errors[i.k], g.error),
            waiting_for = p_waiting[i.k],
            updated_at = p_ats[i.k],
            attempt_position = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_pos[i.k]
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt_position END,
            attempt_compensation = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_comp[i.k]
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt_compensation END,
            attempt = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN b_attempt[i.k]
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt END,
            attempt_started_at = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN p_ats[i.k]
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt_started_at END,
            attempt_seq = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN nextval('stepwise.events_id_seq')
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt_seq END,
            attempt_actor = CASE
                WHEN b_pos[i.k] IS NOT NULL AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                    THEN p_actors[i.k]
                WHEN p_end_attempts[i.k] THEN NULL ELSE g.attempt_actor END
        FROM (SELECT s.k,
                     CASE WHEN f_pos[s.k] IS NOT NULL THEN nextval('stepwise.events_id_seq') END
                         AS end_seq
              FROM generate_subscripts(p_ids, 1) AS s(k)) i
        WHERE g.id = p_ids[i.k] AND g.fencing_token = p_tokens[i.k]
        RETURNING i.k, g.cancel_requested_at IS NOT NULL AS cancel,
                  CASE WHEN b_pos[i.k] IS NOT NULL
                            AND NOT (b_next[i.k] AND g.cancel_requested_at IS NOT NULL)
                       THEN g.attempt_seq END AS begun,
                  i.end_seq)
    SELECT array_agg(c.k), array_agg(c.cancel), array_agg(c.begun), array_agg(c.end_seq)
    INTO v_ks, v_cancels, v_begun, v_end_seqs
    FROM committed c;

    IF v_ks IS NULL THEN
        RETURN;
    END IF;

    UPDATE stepwise.steps st
    SET status = 'succeeded',
        attempts = f_attempt[c.k],
        output = f_output[c.k],
        error = NULL,
        started_at = f_started[c.k],
        finished_at = p_ats[c.k],
        started_seq = f_seq[c.k],
        finished_seq = c.end_seq,
        actor = p_actors[c.k]
    FROM UNNEST(v_ks, v_end_seqs) AS c(k, end_seq)
    WHERE st.saga_id = p_ids[c.k] AND st.position = f_pos[c.k] AND NOT f_comp[c.k];

    IF true = ANY(f_comp) THEN
        UPDATE stepwise.steps st
        SET compensation_status = 'compensated',
            compensation_attempts = f_attempt[c.k],
            compensation_output = f_output[c.k],
            compensation_error = NULL,
            compensation_started_at = f_started[c.k],
            compensation_finished_at = p_ats[c.k],
            compensation_started_seq = f_seq[c.k],
            compensation_finished_seq = c.end_seq,
            compensation_actor = p_actors[c.k]
        FROM UNNEST(v_ks, v_end_seqs) AS c(k, end_seq)
        WHERE st.saga_id = p_ids[c.k] AND st.position = f_pos[c.k] AND f_comp[c.k];
    END IF;

    IF cardinality(e_saga) > 0 THEN
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT e.saga_id, p_ats[x.k], e.kind, e.step, e.attempt, p_actors[x.k], e.detail
        FROM UNNEST(e_saga, e_kind, e_step, e_attempt, e_detail)
                WITH ORDINALITY AS e(saga_id, kind, step, attempt, detail, ord)
            CROSS JOIN LATERAL (SELECT array_position(p_ids, e.saga_id) AS k) x
        WHERE x.k = ANY(v_ks)
        ORDER BY e.ord;
    END IF;

    RETURN QUERY
    SELECT p_ids[c.k], c.cancel, c.begun
    FROM UNNEST(v_ks, v_cancels, v_begun) AS c(k, cancel, begun)
    ORDER BY c.k;
END
$$;
