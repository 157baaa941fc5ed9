-- The MCP facade's schema `mcp`: bearer tokens for the HTTP transport, and the audit of every
-- tool call (the 0.x migrations squashed; see docs/operators.md). Role names are the skill
-- catalog's, checked in Rust when a token is made: the facade knows no application's roles.

CREATE SCHEMA IF NOT EXISTS mcp;

-- A token is shown once, when it is created; only its SHA-256 is kept, so a copy of the
-- database gives no one a usable token. Tokens are random (32 bytes), so a plain hash is
-- enough: there is nothing to brute-force that a salt would protect.
CREATE TABLE mcp.tokens (
    id           uuid PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    role         text NOT NULL CHECK (role ~ '^[a-z][a-z0-9_-]*$'),
    subject      text NOT NULL CHECK (length(subject) BETWEEN 1 AND 320 AND subject !~ '[[:space:]]'),
    created_at   timestamptz NOT NULL,
    created_by   text NOT NULL,
    revoked_at   timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

-- One row per tool call (and per task or resource request that touches a saga): who, what,
-- when, which saga, how it ended. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.
-- Retention, when it is needed, is by partitioning on `at` and detaching old partitions.
CREATE TABLE mcp.audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    -- `role:subject`
    principal   text NOT NULL CHECK (principal ~ '^[a-z][a-z0-9_-]*:[^[:space:]]+$'),
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
CREATE INDEX audit_at ON mcp.audit (at DESC);
CREATE INDEX audit_principal ON mcp.audit (principal, at DESC);
CREATE INDEX audit_saga ON mcp.audit (saga_id) WHERE saga_id IS NOT NULL;

CREATE FUNCTION mcp.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'mcp.audit is append-only';
END $$;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON mcp.audit
    FOR EACH ROW EXECUTE FUNCTION mcp.audit_is_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON mcp.audit
    FOR EACH STATEMENT EXECUTE FUNCTION mcp.audit_is_append_only();
