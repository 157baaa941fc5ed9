-- Live views (the operator console, docs/console.md) follow sagas through LISTEN/NOTIFY: a
-- saga whose status changes sends `<id> <status>` on the channel `stepwise_saga_changed`.
-- The claim's pending -> running is left out (the first step's start is not news to anyone,
-- and it is the one change on the hot path of every saga); new sagas are already announced on
-- `stepwise_work` by `start_saga`. A statement that changes no status queues nothing: the
-- trigger's WHEN is checked before any function runs.
CREATE FUNCTION stepwise.notify_saga_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stepwise_saga_changed', NEW.id::text || ' ' || NEW.status);
    RETURN NULL;
END $$;

CREATE TRIGGER sagas_status_changed AFTER UPDATE OF status ON stepwise.sagas
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NOT (OLD.status = 'pending' AND NEW.status = 'running'))
    EXECUTE FUNCTION stepwise.notify_saga_changed();
