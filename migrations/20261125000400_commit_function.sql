-- One round trip and one commit per step (and per batch of sagas' steps): the fenced saga
-- update, the step rows and the history rows of one or many sagas' transitions in one
-- statement. See `commit_batch` in engine/src/store/queries.rs for what each part does.
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
