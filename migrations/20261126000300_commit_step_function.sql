-- One saga's step commit as plain statements: the unbatched hot path (`commit_batch = 1`).
-- Same effect as one saga's share of `stepwise.commit_transitions` (migration 20261125000400),
-- which stays for group commit: there its data-modifying CTEs over arrays are set up once for
-- up to 64 sagas. For one saga that set-up (executor start-up of the CTEs, the array scans)
-- costs more than plain statements: a primary-key UPDATE per changed row and one INSERT of the
-- history rows take 6-11% less backend CPU per call (measured, BENCHMARKS.md).
--
-- Returns whether a cancel was requested, or NULL when the fencing token no longer matches
-- (the lease was lost: nothing is written). Step changes (`c_*`) and history rows (`e_*`) come
-- in order; a `begin_next` change and the history rows marked `e_next` are skipped when a
-- cancel was requested, so the worker compensates instead of starting the next step.
--
-- Unlike `commit_transitions`, it needs no planner settings: each statement reaches one row by
-- primary-key equality, which PostgreSQL plans as an index scan even on an empty table (and the
-- settings themselves cost ~12% of a call).
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
