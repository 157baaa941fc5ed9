-- A status change that the worker holding a saga makes (under the fencing token it holds) is
-- announced on `stepwise_saga_changed` by that worker after its commit, through
-- `announce_saga_changes`, instead of by the trigger inside the commit (docs/console.md,
-- "Live updates"; engine/src/store/announce.rs).
--
-- Why: PostgreSQL serialises the transactions that NOTIFY. Each takes a database-wide lock
-- before its commit record and keeps it until it has ended, WAL flush included, so every
-- worker commit that ended a saga (with the group commit: nearly every group commit) waited
-- for the previous one's flush. Measured with the trigger disabled (BENCHMARKS.md, 3 December,
-- afternoon): per saga +12 and +18% steps/s, batched M = 64 +8 and +18%. The worker sends
-- the changes of each 50 ms in one call, so the announcements are a few transactions a second.
--
-- Changes made by anyone else are still announced by the trigger: a claim (it changes the
-- token) and an operator's action on a saga nobody holds.

DROP TRIGGER sagas_status_changed ON stepwise.sagas;
CREATE TRIGGER sagas_status_changed AFTER UPDATE OF status ON stepwise.sagas
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NOT (OLD.status = 'pending' AND NEW.status = 'running')
          AND (OLD.lease_owner IS NULL OR OLD.fencing_token IS DISTINCT FROM NEW.fencing_token))
    EXECUTE FUNCTION stepwise.notify_saga_changed();

-- `<id> <status>` for each saga, in order.
CREATE FUNCTION stepwise.announce_saga_changes(p_ids uuid[], p_statuses text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stepwise_saga_changed', p_ids[k]::text || ' ' || p_statuses[k])
    FROM generate_subscripts(p_ids, 1) AS k
    ORDER BY k;
END
$$;
