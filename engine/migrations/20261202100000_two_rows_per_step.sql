-- Storage v2, part 2 (docs/storage.md): the writers. A step commit writes the finished step's
-- row and the saga row (both HOT updates) and no history row; an attempt begins on the saga
-- row only. Every worker commit, single or grouped, goes through one function over arrays
-- (`stepwise.commit_steps`); an attempt that ends without success is written to the history
-- by one function (`stepwise.interrupt_attempts`), which the claim, the reclaim and the
-- failure path share; the claim and the reclaim read a saga's steps through one function
-- (`stepwise.step_states`).

DROP FUNCTION stepwise.commit_step(uuid, int8, text, int4, bool, timestamptz, bool, jsonb, jsonb,
    timestamptz, text, int4[], text[], jsonb[], text[], text[], int4[], jsonb[], bool[]);
DROP FUNCTION stepwise.commit_transitions(uuid[], int8[], text[], int4[], bool[], timestamptz[],
    bool[], jsonb[], jsonb[], timestamptz[], uuid[], int4[], text[], jsonb[], uuid[], text[],
    text[], int4[], jsonb[], bool[], text[]);
DROP FUNCTION stepwise.claim_sagas(timestamptz, int8, text, timestamptz, text[]);

-- An attempt is in flight only while its saga can run it: never on a pending or ended saga.
ALTER TABLE stepwise.sagas DROP CONSTRAINT sagas_attempt_in_flight;
ALTER TABLE stepwise.sagas ADD CONSTRAINT sagas_attempt_in_flight CHECK (
    num_nulls(attempt_position, attempt_compensation, attempt, attempt_started_at, attempt_seq,
              attempt_actor) = 6
    OR (num_nulls(attempt_position, attempt_compensation, attempt, attempt_started_at,
                  attempt_seq, attempt_actor) = 0
        AND attempt > 0 AND attempt_position >= 0 AND attempt_position < step_count
        AND status IN ('running', 'waiting', 'compensating')));

-- Attempts in flight when this migration runs (written the earlier way: the steps row
-- `running` with the attempt counted, and a `step_started` / `compensation_started` row in the
-- history) move to the saga row, so the worker that goes on with them finishes them the new
-- way; their history row is taken out and its id becomes the attempt's place, so the history
-- reads the same. The steps row keeps showing the attempt as before.
WITH in_flight AS (
    SELECT s.id, st.position, false AS compensation, st.attempts AS attempt, st.started_at,
           e.id AS seq, e.actor
    FROM stepwise.sagas s
    JOIN stepwise.steps st ON st.saga_id = s.id AND st.position = s.cursor
    JOIN LATERAL (SELECT e.id, e.actor FROM stepwise.events e
                  WHERE e.saga_id = s.id AND e.kind = 'step_started' AND e.step = st.name
                    AND e.attempt = st.attempts
                  ORDER BY e.id DESC LIMIT 1) e ON true
    WHERE s.status IN ('running', 'waiting') AND st.status = 'running'
      AND st.started_at IS NOT NULL
    UNION ALL
    SELECT s.id, st.position, true, st.compensation_attempts, st.compensation_started_at,
           e.id, e.actor
    FROM stepwise.sagas s
    JOIN stepwise.steps st ON st.saga_id = s.id AND st.compensation_status = 'running'
    JOIN LATERAL (SELECT e.id, e.actor FROM stepwise.events e
                  WHERE e.saga_id = s.id AND e.kind = 'compensation_started'
                    AND e.step = st.name AND e.attempt = st.compensation_attempts
                  ORDER BY e.id DESC LIMIT 1) e ON true
    WHERE s.status = 'compensating' AND st.compensation_started_at IS NOT NULL),
moved AS (
    UPDATE stepwise.sagas s
    SET attempt_position = f.position, attempt_compensation = f.compensation,
        attempt = f.attempt, attempt_started_at = f.started_at, attempt_seq = f.seq,
        attempt_actor = f.actor
    FROM in_flight f WHERE s.id = f.id
    RETURNING s.id, s.attempt_seq)
DELETE FROM stepwise.events e USING moved m WHERE e.saga_id = m.id AND e.id = m.attempt_seq;

-- A saga's steps as a worker needs them (engine/src/store/claim.rs reads this shape). The
-- attempt in flight is on the saga row, not here: the caller overlays it.
CREATE FUNCTION stepwise.step_states(p_saga uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_agg(jsonb_build_object(
               'position', st.position, 'name', st.name, 'status', st.status,
               'attempts', st.attempts, 'attempts_round_base', st.attempts_round_base,
               'has_output', st.output IS NOT NULL, 'output', st.output,
               'compensation_status', st.compensation_status,
               'compensation_attempts', st.compensation_attempts,
               'compensation_round_base', st.compensation_round_base,
               'wait_deadlines', st.wait_deadlines,
               'possibly_done', st.possibly_done)
           ORDER BY st.position)
    FROM stepwise.steps st WHERE st.saga_id = p_saga
$$;

-- Ends the attempt in flight of each saga of `p_ids` whose fencing token is still the one in
-- `p_tokens`, without a result: its worker's lease expired, its worker lost the connection,
-- it failed, it was given back at shutdown, or the saga was cancelled while it waited. Its
-- start goes to the history as the `step_started` (or `compensation_started`) row it would
-- have been, with the id taken when it began, so the history keeps its order. When
-- `p_counted`, the steps row counts it and shows it `running` (interrupted, as the worker
-- that takes the saga over reads it; a failure then overwrites that); a given-back attempt
-- is not counted. The attempt columns of the saga are cleared. A saga with nothing in flight
-- is left alone.
CREATE FUNCTION stepwise.interrupt_attempts(p_ids uuid[], p_tokens int8[], p_counted boolean)
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    WITH a AS (
        SELECT s.id, s.attempt_position, s.attempt_compensation, s.attempt,
               s.attempt_started_at, s.attempt_seq, s.attempt_actor
        FROM stepwise.sagas s
        JOIN UNNEST(p_ids, p_tokens) AS h(id, token) ON s.id = h.id AND s.fencing_token = h.token
        WHERE s.attempt_position IS NOT NULL
        -- a worker ending its own attempt holds no lock yet: a takeover that got there first
        -- changed the token, and the row drops out here
        FOR UPDATE OF s),
    history AS (
        INSERT INTO stepwise.events (id, saga_id, at, kind, step, attempt, actor)
        OVERRIDING SYSTEM VALUE
        SELECT a.attempt_seq, a.id, a.attempt_started_at,
               CASE WHEN a.attempt_compensation THEN 'compensation_started'
                    ELSE 'step_started' END,
               st.name, a.attempt, a.attempt_actor
        FROM a JOIN stepwise.steps st ON st.saga_id = a.id AND st.position = a.attempt_position),
    counted AS (
        UPDATE stepwise.steps st
        SET status = CASE WHEN a.attempt_compensation THEN st.status ELSE 'running' END,
            attempts = CASE WHEN a.attempt_compensation THEN st.attempts ELSE a.attempt END,
            started_at = CASE WHEN a.attempt_compensation THEN st.started_at
                              ELSE a.attempt_started_at END,
            finished_at = CASE WHEN a.attempt_compensation THEN st.finished_at ELSE NULL END,
            compensation_status = CASE WHEN a.attempt_compensation THEN 'running'
                                       ELSE st.compensation_status END,
            compensation_attempts = CASE WHEN a.attempt_compensation THEN a.attempt
                                         ELSE st.compensation_attempts END,
            compensation_started_at = CASE WHEN a.attempt_compensation THEN a.attempt_started_at
                                           ELSE st.compensation_started_at END
        FROM a
        WHERE p_counted AND st.saga_id = a.id AND st.position = a.attempt_position)
    UPDATE stepwise.sagas s
    SET attempt_position = NULL, attempt_compensation = NULL, attempt = NULL,
        attempt_started_at = NULL, attempt_seq = NULL, attempt_actor = NULL
    FROM a WHERE s.id = a.id;
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
    steps jsonb)
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
    steps jsonb)
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

-- Every worker commit (engine/src/store/commit.rs): one saga's or a group of sagas', in one
-- statement over arrays, the way the batched ceiling in BENCHMARKS.md commits. Per saga:
--  - `s`: the fenced saga update (a saga whose token no longer matches comes out of nothing:
--    lost lease), with the attempt columns: set when an attempt begins (`b_*`; a `b_next`
--    start is skipped when a cancel was requested), cleared when the attempt in flight ended
--    (`p_end_attempts`), else kept;
--  - `f`: the attempt in flight that succeeded (`f_*`, known to the worker holding the
--    lease): its steps row takes it, with its start's history place and one for its end
--    (taken in `i`, before the next attempt's, so the history keeps its order);
--  - `ev`: the saga's other history rows (a saga's end, waits), in order.
-- The common step commit (step k succeeded, k+1 begins) writes the steps row of k and the
-- saga row, neither touching an indexed column: two HOT updates and no history row.
-- Returns each committed saga with whether a cancel was requested and the history place of
-- the attempt it began, if it began one.
CREATE FUNCTION stepwise.commit_steps(
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
                       THEN g.attempt_seq END AS begun_seq),
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
        FROM i JOIN s ON s.id = i.id
        WHERE i.f_pos IS NOT NULL AND st.saga_id = i.id AND st.position = i.f_pos),
    ev AS (
        INSERT INTO stepwise.events (saga_id, at, kind, step, attempt, actor, detail)
        SELECT e.saga_id, i.at, e.kind, e.step, e.attempt, i.actor, e.detail
        FROM UNNEST(e_saga, e_kind, e_step, e_attempt, e_detail)
            WITH ORDINALITY AS e(saga_id, kind, step, attempt, detail, ord)
        JOIN s ON s.id = e.saga_id
        JOIN i ON i.id = e.saga_id
        ORDER BY e.ord)
    SELECT s.id, s.cancel_requested, s.begun_seq FROM s;
END
$$;
