-- Storage v2, part 1 (docs/storage.md): the attempt in flight lives on the saga row, and the
-- steps row keeps the history places of its last attempt, so the common step commit writes
-- two rows (the finished step's row and the saga row, both HOT updates) and no history row.
-- The history's step_started / step_succeeded (compensation_started / _succeeded) of an
-- attempt that succeeded are derived from the steps row; an attempt that ends any other way
-- has its start written to stepwise.events with the id it was given when it began.

-- The attempt in flight: which step (forward, or its compensation), its number, when and by
-- whom it began, and its place in the history (a value of the events' id sequence, taken when
-- it began). All NULL exactly when no attempt is in flight; a waiting saga keeps its attempt.
ALTER TABLE stepwise.sagas
    ADD COLUMN attempt_position     integer,
    ADD COLUMN attempt_compensation boolean,
    ADD COLUMN attempt              integer,
    ADD COLUMN attempt_started_at   timestamptz,
    ADD COLUMN attempt_seq          bigint,
    ADD COLUMN attempt_actor        text,
    ADD CONSTRAINT sagas_attempt_in_flight CHECK (
        num_nulls(attempt_position, attempt_compensation, attempt, attempt_started_at,
                  attempt_seq, attempt_actor) = 6
        OR (num_nulls(attempt_position, attempt_compensation, attempt, attempt_started_at,
                      attempt_seq, attempt_actor) = 0
            AND attempt > 0 AND attempt_position >= 0 AND attempt_position < step_count));

-- The history places and worker of each step's last action attempt and last compensation
-- attempt, written when the attempt ends. NULL for steps of databases made before this
-- migration (their history is in stepwise.events) and for steps a fork copied.
ALTER TABLE stepwise.steps
    ADD COLUMN started_seq               bigint,
    ADD COLUMN finished_seq              bigint,
    ADD COLUMN actor                     text,
    ADD COLUMN compensation_started_seq  bigint,
    ADD COLUMN compensation_finished_seq bigint,
    ADD COLUMN compensation_actor        text;
