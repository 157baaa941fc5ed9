-- Starting a saga in one round trip: the saga row (idempotent on skill + key), its step rows,
-- its `saga_started` event and the NOTIFY that wakes a worker, in one call. It was six round
-- trips (BEGIN, three INSERTs, NOTIFY, COMMIT), which sat in front of every saga's first step.
-- Used by `PgStore::insert_saga` (a start) and `PgStore::insert_replay` (restart and fork,
-- inside the transaction that checked the original saga).
--
-- `p_reused` holds the outputs of the leading steps a fork reuses: those steps start
-- `succeeded` and the cursor starts after them. When the key is taken, nothing is written and
-- the existing saga comes back with `created = false` and whether its input is the same.
CREATE FUNCTION stepwise.start_saga(
    p_id uuid,
    p_skill text,
    p_skill_version int4,
    p_idempotency_key text,
    p_input jsonb,
    p_started_by text,
    p_replay_of uuid,
    p_step_names text[],
    p_reused jsonb[],
    p_at timestamptz,
    p_channel text)
RETURNS TABLE (
    id uuid,
    skill text,
    skill_version int4,
    status text,
    idempotency_key text,
    created_at timestamptz,
    updated_at timestamptz,
    created boolean,
    same_input boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH inserted AS (
    INSERT INTO stepwise.sagas AS s
        (id, skill, skill_version, status, idempotency_key, input, started_by, replay_of,
         cursor, step_count, wake_at, created_at, updated_at)
    VALUES (p_id, p_skill, p_skill_version, 'pending', p_idempotency_key, p_input, p_started_by,
            p_replay_of, COALESCE(cardinality(p_reused), 0), cardinality(p_step_names),
            p_at, p_at, p_at)
    ON CONFLICT ON CONSTRAINT sagas_idempotency DO NOTHING
    RETURNING s.id, s.skill, s.skill_version, s.status::text, s.idempotency_key, s.created_at,
              s.updated_at)
    SELECT i.*, true, true FROM inserted i;
    IF NOT FOUND THEN
        RETURN QUERY
        SELECT s.id, s.skill, s.skill_version, s.status::text, s.idempotency_key, s.created_at,
               s.updated_at, false, s.input = p_input
        FROM stepwise.sagas s
        WHERE s.skill = p_skill AND s.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;

    INSERT INTO stepwise.steps (saga_id, position, name, status, output, finished_at)
    SELECT p_id, t.ord::int - 1, t.name,
           CASE WHEN p_reused[t.ord::int] IS NULL THEN 'pending' ELSE 'succeeded' END,
           p_reused[t.ord::int],
           CASE WHEN p_reused[t.ord::int] IS NULL THEN NULL ELSE p_at END
    FROM UNNEST(p_step_names) WITH ORDINALITY AS t(name, ord);

    INSERT INTO stepwise.events (saga_id, at, kind, actor)
    VALUES (p_id, p_at, 'saga_started', p_started_by);

    PERFORM pg_notify(p_channel, '');
END
$$;
