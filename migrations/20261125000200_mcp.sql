-- The MCP facade: bearer tokens for the HTTP transport, and the audit of every tool call.

-- A token is shown once, when it is created; only its SHA-256 is kept, so a copy of the
-- database gives no one a usable token. Tokens are random (32 bytes), so a plain hash is
-- enough: there is nothing to brute-force that a salt would protect.
CREATE TABLE stepwise.mcp_tokens (
    id           uuid PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    role         text NOT NULL CHECK (role IN ('guest', 'staff', 'manager', 'operator')),
    subject      text NOT NULL CHECK (length(subject) BETWEEN 1 AND 320 AND subject !~ '[[:space:]]'),
    created_at   timestamptz NOT NULL,
    created_by   text NOT NULL,
    revoked_at   timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

-- One row per tool call (and per task or resource request that touches a saga): who, what,
-- when, which saga, how it ended. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.
-- Retention, when it is needed, is by partitioning on `at` and detaching old partitions.
CREATE TABLE stepwise.mcp_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    principal   text NOT NULL CHECK (principal ~ '^(guest|staff|manager|operator):[^[:space:]]+$'),
    transport   text NOT NULL CHECK (transport IN ('stdio', 'http')),
    tool        text NOT NULL CHECK (length(tool) BETWEEN 1 AND 200),
    saga_id     uuid,
    -- ok: done (or a read answered); pending: the saga was still running when the call
    -- returned; saga_failed: the saga ended compensated or failed; refused: not allowed;
    -- invalid: malformed arguments; conflict: idempotency key reused with other input;
    -- error: the facade could not serve the call.
    outcome     text NOT NULL
                CHECK (outcome IN ('ok', 'pending', 'saga_failed', 'refused', 'invalid', 'conflict', 'error')),
    error_code  text CHECK (error_code IS NULL OR length(error_code) BETWEEN 1 AND 100),
    duration_ms integer NOT NULL CHECK (duration_ms >= 0),
    CHECK ((outcome IN ('ok', 'pending')) = (error_code IS NULL))
);
CREATE INDEX mcp_audit_at ON stepwise.mcp_audit (at DESC);
CREATE INDEX mcp_audit_principal ON stepwise.mcp_audit (principal, at DESC);
CREATE INDEX mcp_audit_saga ON stepwise.mcp_audit (saga_id) WHERE saga_id IS NOT NULL;

CREATE FUNCTION stepwise.mcp_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stepwise.mcp_audit is append-only';
END $$;
CREATE TRIGGER mcp_audit_no_update_delete BEFORE UPDATE OR DELETE ON stepwise.mcp_audit
    FOR EACH ROW EXECUTE FUNCTION stepwise.mcp_audit_is_append_only();
CREATE TRIGGER mcp_audit_no_truncate BEFORE TRUNCATE ON stepwise.mcp_audit
    FOR EACH STATEMENT EXECUTE FUNCTION stepwise.mcp_audit_is_append_only();
