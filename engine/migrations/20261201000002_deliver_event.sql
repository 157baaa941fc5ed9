-- A delivery as one function, so it is one round trip like the rest of the hot path (README
-- "Waits": delivery -> next step is measured in BENCHMARKS.md). Same statements and order as
-- before: lock the saga row (ordering the delivery with the worker commits that change its
-- status), check the key, refuse a terminal saga, store the delivery and its `event_received`
-- history row, and make a saga that waits for this event due now (NOTIFY wakes a worker).
-- Returns the outcome (`delivered`, `duplicate`, `conflict`, `terminal`, `not_found`) and the
-- saga's status before the delivery.
CREATE FUNCTION stepwise.deliver_event(
    p_saga uuid,
    p_event text,
    p_key text,
    p_payload jsonb,
    p_actor text,
    p_now timestamptz,
    p_channel text)
RETURNS TABLE (outcome text, status text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_status text;
    v_awaited text;
    v_earlier_event text;
    v_earlier_payload jsonb;
BEGIN
    SELECT s.status, s.waiting_for->>'event' INTO v_status, v_awaited
    FROM stepwise.sagas s WHERE s.id = p_saga
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::text;
        RETURN;
    END IF;

    SELECT d.event, d.payload INTO v_earlier_event, v_earlier_payload
    FROM stepwise.deliveries d WHERE d.saga_id = p_saga AND d.delivery_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT CASE WHEN v_earlier_event = p_event AND v_earlier_payload = p_payload
                                 THEN 'duplicate' ELSE 'conflict' END, v_status;
        RETURN;
    END IF;

    IF v_status IN ('completed', 'compensated', 'failed') THEN
        RETURN QUERY SELECT 'terminal'::text, v_status;
        RETURN;
    END IF;

    INSERT INTO stepwise.deliveries (saga_id, event, delivery_key, payload, actor, received_at)
    VALUES (p_saga, p_event, p_key, p_payload, p_actor, p_now);
    INSERT INTO stepwise.events (saga_id, at, kind, actor, detail)
    VALUES (p_saga, p_now, 'event_received', p_actor,
            jsonb_build_object('event', p_event, 'key', p_key, 'actor', p_actor));

    IF v_status = 'waiting' AND v_awaited = p_event THEN
        UPDATE stepwise.sagas s SET wake_at = LEAST(s.wake_at, p_now), updated_at = p_now
        WHERE s.id = p_saga;
        PERFORM pg_notify(p_channel, '');
    END IF;

    RETURN QUERY SELECT 'delivered'::text, v_status;
END
$$;
