-- Rate limits shared by every worker, on any number of hosts (docs/skills.md, "Rate limits
-- shared by every worker"): the connectors ask PostgreSQL before each call to an external
-- system, so the system's limits hold for all workers together.

-- One row per system and window: a token bucket kept as GCRA's theoretical arrival time. A
-- call reserves the next slot (tat moves one interval on) and waits until its slot is due.
CREATE TABLE hotel.rate_limits (
    -- e.g. `salesforce/second`, `salesforce/day`.
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 100),
    -- Seconds between two calls at the limit (1 / rate).
    interval_s double precision NOT NULL CHECK (interval_s > 0),
    -- How far ahead of the schedule calls may go: (bucket size - 1) intervals.
    burst_s    double precision NOT NULL CHECK (burst_s >= 0),
    -- When the next call is due if the bucket is empty.
    tat        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Concurrent sessions (the legacy housekeeping system allows 2): one row per session slot,
-- held under a lease so that a worker that dies cannot keep it. Rows rather than advisory
-- locks, so it works through a transaction-pooling PgBouncer too.
CREATE TABLE hotel.session_slots (
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    slot       integer NOT NULL CHECK (slot >= 0),
    holder     uuid,
    expires_at timestamptz,
    PRIMARY KEY (name, slot)
);
