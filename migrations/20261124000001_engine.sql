-- Stepwise engine schema. Every table lives in the `stepwise` schema.
-- See engine/src/lib.rs for a page that explains each table and the state machine.

CREATE SCHEMA IF NOT EXISTS stepwise;

-- One row per saga. The hot path (a worker committing step k and starting k+1 while it holds
-- the lease) only rewrites `cursor` and `updated_at`, which no index covers, so those updates
-- stay HOT; `fillfactor` leaves page room for them.
CREATE TABLE stepwise.sagas (
    id                  uuid PRIMARY KEY,
    skill               text NOT NULL CHECK (skill <> ''),
    skill_version       integer NOT NULL CHECK (skill_version > 0),
    status              text NOT NULL
                        CHECK (status IN ('pending', 'running', 'compensating', 'completed', 'compensated', 'failed')),
    idempotency_key     text CHECK (idempotency_key <> ''),
    input               jsonb NOT NULL,
    output              jsonb,
    error               jsonb,
    started_by          text NOT NULL,
    replay_of           uuid REFERENCES stepwise.sagas (id) ON DELETE SET NULL,
    -- position of the forward step in progress or to run next (0-based)
    cursor              integer NOT NULL DEFAULT 0 CHECK (cursor >= 0 AND cursor <= step_count),
    step_count          integer NOT NULL CHECK (step_count > 0),
    -- When a worker must look at this saga next: the due time of a waiting saga (start, retry),
    -- or the lease expiry of a claimed one. NULL exactly when the saga is terminal.
    wake_at             timestamptz,
    lease_owner         text,
    -- changes on every claim; every write a worker makes is conditioned on it
    fencing_token       bigint NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT sagas_idempotency UNIQUE (skill, idempotency_key),
    CONSTRAINT sagas_terminal_has_no_wake
        CHECK ((status IN ('completed', 'compensated', 'failed')) = (wake_at IS NULL)),
    CONSTRAINT sagas_terminal_has_no_lease
        CHECK (lease_owner IS NULL OR status IN ('running', 'compensating'))
) WITH (fillfactor = 70);

CREATE INDEX sagas_due ON stepwise.sagas (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX sagas_created ON stepwise.sagas (created_at DESC);
CREATE INDEX sagas_status_skill ON stepwise.sagas (status, skill);
CREATE INDEX sagas_replay_of ON stepwise.sagas (replay_of) WHERE replay_of IS NOT NULL;

-- One row per step of a saga, created with the saga. `attempts` counts every attempt ever
-- started (operator retries included); `*_round_base` is the count when the current round of
-- attempts began, so an operator retry gets a fresh budget without forgetting history.
CREATE TABLE stepwise.steps (
    saga_id                     uuid NOT NULL REFERENCES stepwise.sagas (id) ON DELETE CASCADE,
    position                    integer NOT NULL CHECK (position >= 0),
    name                        text NOT NULL CHECK (name <> ''),
    status                      text NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    attempts                    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    attempts_round_base         integer NOT NULL DEFAULT 0 CHECK (attempts_round_base <= attempts),
    output                      jsonb,
    error                       jsonb,
    started_at                  timestamptz,
    finished_at                 timestamptz,
    compensation_status         text NOT NULL DEFAULT 'not_needed'
                                CHECK (compensation_status IN ('not_needed', 'pending', 'running', 'compensated', 'failed')),
    compensation_attempts       integer NOT NULL DEFAULT 0 CHECK (compensation_attempts >= 0),
    compensation_round_base     integer NOT NULL DEFAULT 0 CHECK (compensation_round_base <= compensation_attempts),
    compensation_output         jsonb,
    compensation_error          jsonb,
    compensation_started_at     timestamptz,
    compensation_finished_at    timestamptz,
    PRIMARY KEY (saga_id, position),
    CONSTRAINT steps_name_unique UNIQUE (saga_id, name),
    -- only a step that succeeded has something to undo
    CONSTRAINT steps_compensation_needs_success
        CHECK (compensation_status = 'not_needed' OR status = 'succeeded'),
    CONSTRAINT steps_output_means_success CHECK (output IS NULL OR status = 'succeeded')
) WITH (fillfactor = 80);

-- Append-only history: one row per transition, with who did it and when.
CREATE TABLE stepwise.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    saga_id     uuid NOT NULL,
    at          timestamptz NOT NULL,
    kind        text NOT NULL CHECK (kind IN (
                    'saga_started', 'step_started', 'step_succeeded', 'step_failed', 'retry_scheduled',
                    'compensation_started', 'compensation_succeeded', 'compensation_failed',
                    'saga_completed', 'saga_compensated', 'saga_failed', 'cancel_requested',
                    'lease_expired', 'operator_retry', 'operator_restart', 'operator_fork')),
    step        text,
    attempt     integer CHECK (attempt > 0),
    actor       text NOT NULL,
    detail      jsonb,
    PRIMARY KEY (saga_id, id)
);

-- History rows are never updated; they are deleted only together with their terminal saga.
CREATE FUNCTION stepwise.events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stepwise.events is append-only';
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON stepwise.events
    FOR EACH ROW EXECUTE FUNCTION stepwise.events_are_append_only();
