-- The invariants of a saga row and of a step row, each checked by one plpgsql function
-- instead of one table CHECK per rule (docs/storage.md, "Invariants").
--
-- Same rules, cheaper where it matters: PostgreSQL re-reads every CHECK expression of a table
-- from its stored text and prepares it again for each statement that writes the table, which
-- cost ~90 µs of the ~290 µs a step commit spent in the server (measured: 3,000 calls of
-- stepwise.commit_steps in one transaction, with and without these CHECKs; BENCHMARKS.md). A
-- CHECK that calls a plpgsql function is one function call to prepare; the function's own
-- expressions are compiled once per connection. A broken rule is reported by name.

ALTER TABLE stepwise.sagas
    DROP CONSTRAINT sagas_skill_check,
    DROP CONSTRAINT sagas_skill_version_check,
    DROP CONSTRAINT sagas_idempotency_key_check,
    DROP CONSTRAINT sagas_check,
    DROP CONSTRAINT sagas_step_count_check,
    DROP CONSTRAINT sagas_terminal_has_no_wake,
    DROP CONSTRAINT sagas_terminal_has_no_lease,
    DROP CONSTRAINT sagas_waiting_is_recorded,
    DROP CONSTRAINT sagas_waiting_has_no_lease,
    DROP CONSTRAINT sagas_attempt_in_flight;

ALTER TABLE stepwise.steps
    DROP CONSTRAINT steps_position_check,
    DROP CONSTRAINT steps_name_check,
    DROP CONSTRAINT steps_attempts_check,
    DROP CONSTRAINT steps_check,
    DROP CONSTRAINT steps_compensation_attempts_check,
    DROP CONSTRAINT steps_check1,
    DROP CONSTRAINT steps_output_means_success,
    DROP CONSTRAINT steps_possibly_done_was_attempted,
    DROP CONSTRAINT steps_compensation_needs_success;

-- Raises check_violation naming the first rule the row breaks; true otherwise.
CREATE FUNCTION stepwise.check_saga_row(
    p_id uuid,
    p_skill text,
    p_skill_version int4,
    p_idempotency_key text,
    p_status text,
    p_cursor int4,
    p_step_count int4,
    p_wake_at timestamptz,
    p_lease_owner text,
    p_waiting_for jsonb,
    p_attempt_position int4,
    p_attempt_compensation boolean,
    p_attempt int4,
    p_attempt_started_at timestamptz,
    p_attempt_seq int8,
    p_attempt_actor text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_rule text;
    v_nulls int := num_nulls(p_attempt_position, p_attempt_compensation, p_attempt,
                             p_attempt_started_at, p_attempt_seq, p_attempt_actor);
BEGIN
    v_rule := CASE
        WHEN p_skill = '' THEN 'skill_not_empty'
        WHEN p_skill_version <= 0 THEN 'skill_version_positive'
        WHEN p_idempotency_key = '' THEN 'idempotency_key_not_empty'
        WHEN p_step_count <= 0 THEN 'step_count_positive'
        WHEN p_cursor < 0 OR p_cursor > p_step_count THEN 'cursor_within_steps'
        -- a saga is terminal exactly when nothing will look at it again
        WHEN (p_status IN ('completed', 'compensated', 'failed')) <> (p_wake_at IS NULL)
            THEN 'terminal_has_no_wake'
        WHEN p_lease_owner IS NOT NULL AND p_status NOT IN ('running', 'compensating')
            THEN 'only_a_running_saga_has_a_lease'
        WHEN (p_status = 'waiting') <> (p_waiting_for IS NOT NULL)
            THEN 'waiting_is_recorded'
        WHEN p_status = 'waiting' AND (p_lease_owner IS NOT NULL OR p_wake_at IS NULL)
            THEN 'waiting_has_no_lease_and_a_wake_time'
        -- the attempt in flight: all of it or nothing, on a saga that can run it
        WHEN v_nulls NOT IN (0, 6) THEN 'attempt_in_flight_complete'
        WHEN v_nulls = 0 AND (p_attempt <= 0 OR p_attempt_position < 0
                              OR p_attempt_position >= p_step_count
                              OR p_status NOT IN ('running', 'waiting', 'compensating'))
            THEN 'attempt_in_flight_valid'
        END;
    IF v_rule IS NOT NULL THEN
        RAISE EXCEPTION 'saga % breaks the rule %', p_id, v_rule
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sagas_row_invariants';
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION stepwise.check_step_row(
    p_saga_id uuid,
    p_position int4,
    p_name text,
    p_status text,
    p_attempts int4,
    p_attempts_round_base int4,
    p_output_is_null boolean,
    p_possibly_done boolean,
    p_compensation_status text,
    p_compensation_attempts int4,
    p_compensation_round_base int4)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_rule text;
BEGIN
    v_rule := CASE
        WHEN p_position < 0 THEN 'position_not_negative'
        WHEN p_name = '' THEN 'name_not_empty'
        WHEN p_attempts < 0 OR p_attempts_round_base > p_attempts THEN 'attempts_counted'
        WHEN p_compensation_attempts < 0 OR p_compensation_round_base > p_compensation_attempts
            THEN 'compensation_attempts_counted'
        WHEN NOT p_output_is_null AND p_status <> 'succeeded' THEN 'output_means_success'
        WHEN p_possibly_done AND p_attempts = 0 THEN 'possibly_done_was_attempted'
        -- only a step that succeeded (or may have) has something to undo
        WHEN p_compensation_status <> 'not_needed' AND p_status <> 'succeeded'
             AND NOT p_possibly_done THEN 'compensation_needs_success'
        END;
    IF v_rule IS NOT NULL THEN
        RAISE EXCEPTION 'step % of saga % breaks the rule %', p_position, p_saga_id, v_rule
            USING ERRCODE = 'check_violation', CONSTRAINT = 'steps_row_invariants';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE stepwise.sagas ADD CONSTRAINT sagas_row_invariants CHECK (stepwise.check_saga_row(
    id, skill, skill_version, idempotency_key, status, cursor, step_count, wake_at, lease_owner,
    waiting_for, attempt_position, attempt_compensation, attempt, attempt_started_at,
    attempt_seq, attempt_actor));

ALTER TABLE stepwise.steps ADD CONSTRAINT steps_row_invariants CHECK (stepwise.check_step_row(
    saga_id, position, name, status, attempts, attempts_round_base, output IS NULL,
    possibly_done, compensation_status, compensation_attempts, compensation_round_base));
