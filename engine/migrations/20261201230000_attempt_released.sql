-- A graceful release gives back the attempt it began (issue 13 item 3): a worker that stops
-- before running a begun step, or is interrupted by its shutdown, records `attempt_released`
-- and the step goes back to pending with its attempt count as before.
ALTER DOMAIN stepwise.event_kind DROP CONSTRAINT event_kind_check;
ALTER DOMAIN stepwise.event_kind ADD CONSTRAINT event_kind_check
    CHECK (VALUE IN (
        'saga_started', 'step_started', 'step_succeeded', 'step_failed', 'retry_scheduled',
        'compensation_started', 'compensation_succeeded', 'compensation_failed',
        'saga_completed', 'saga_compensated', 'saga_failed', 'cancel_requested',
        'lease_expired', 'operator_retry', 'operator_restart', 'operator_fork',
        'wait_started', 'event_received', 'wait_timed_out', 'sleep_started', 'sleep_ended',
        'attempt_released'));
