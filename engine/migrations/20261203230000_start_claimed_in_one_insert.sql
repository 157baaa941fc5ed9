-- A local start (engine/src/executor/handoff.rs) inserts its saga already held by the
-- starting worker, its first attempt begun, instead of inserting it pending and then taking it
-- with `take_sagas` in the same transaction. The take rewrote the row it had just inserted: a
-- second heap tuple and, as `status` and `wake_at` change, a second entry in each of the
-- saga's seven indexes. A local start's transaction (pgbench at C = 1, commit included) went
-- from 0.81-1.01 ms to 0.63-0.71 ms (BENCHMARKS.md, "3 December 2026, night").
--
-- The row written is the one `take_sagas` makes of a saga `start_saga` has just inserted:
-- running, leased to `p_worker` until `p_lease_until`, fencing token 1, the attempt of step 0
-- (attempt 1) begun at `p_at` by `p_worker`, its sequence number drawn after the
-- `saga_started` row's. The test `a_local_start_writes_the_rows_a_start_and_a_claim_write`
-- (engine/src/store/claim_rows.rs) holds the two to the same rows. The steps come back as their
-- number, as `take_sagas` returns them for a saga nothing has run in yet.
--
-- A key already taken writes nothing and returns no row, as before; the caller then starts
-- the usual way, which reports the saga holding the key.

CREATE OR REPLACE FUNCTION stepwise.start_claimed_saga(
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
#variable_conflict use_column
DECLARE
    -- Drawn first, so that the history orders the start before the first attempt (a number
    -- lost to a taken key is only a gap).
    v_started_seq int8 := nextval('stepwise.events_id_seq');
BEGIN
    RETURN QUERY
    INSERT INTO stepwise.sagas AS s
        (id, skill, skill_version, status, idempotency_key, input, started_by, cursor,
         step_count, wake_at, lease_owner, fencing_token, created_at, updated_at,
         attempt_position, attempt_compensation, attempt, attempt_started_at, attempt_seq,
         attempt_actor)
    VALUES (p_id, p_skill, p_skill_version, 'running', p_idempotency_key, p_input, p_started_by,
            0, cardinality(p_step_names), p_lease_until, p_worker, 1, p_at, p_at,
            0, false, 1, p_at, nextval('stepwise.events_id_seq'), p_worker)
    ON CONFLICT ON CONSTRAINT sagas_idempotency DO NOTHING
    RETURNING s.id, s.skill, s.skill_version, s.status::text, s.input, s.cursor,
              s.fencing_token, false, NULL::text, false, s.attempt_position,
              s.attempt_compensation, s.attempt, s.attempt_started_at, s.attempt_seq,
              to_json(s.step_count);
    IF NOT FOUND THEN
        RETURN;
    END IF;

    INSERT INTO stepwise.steps (saga_id, position, name)
    SELECT p_id, t.ord::int - 1, t.name
    FROM UNNEST(p_step_names) WITH ORDINALITY AS t(name, ord);

    INSERT INTO stepwise.events (id, saga_id, at, kind, actor)
    OVERRIDING SYSTEM VALUE
    VALUES (v_started_seq, p_id, p_at, 'saga_started', p_started_by);
END
$$;
