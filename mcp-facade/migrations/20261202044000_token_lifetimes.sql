-- Static bearer tokens get a lifetime, a last use and a region (docs/mcp.md, "Static tokens"):
-- `stepwise tokens create --expires-in 30d [--region R]`. A token past `expires_at` is refused
-- like a revoked one; `last_used_at` is written at most once a minute per token, so a busy
-- token costs no write per request. `region` is the data-residency attribute checked against
-- `STEPWISE_REGION` (NULL: issued by this deployment for itself, valid wherever it is).
ALTER TABLE mcp.tokens
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN region       text CHECK (region IS NULL OR region ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    ADD CONSTRAINT tokens_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at);

-- The MCP sessions of the streamable HTTP transport, shared by every facade of a deployment
-- (docs/mcp.md, "Several facades"): the client's `initialize` parameters, so that any facade
-- can restore a session another one began, with no sticky load balancing.
CREATE TABLE mcp.sessions (
    id         text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    state      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_seen_at ON mcp.sessions (seen_at);

-- A client's answer to a server request (an `elicitation/create` sent during a call) reaches
-- whichever facade the load balancer picks; the facade holding the call is told through
-- NOTIFY `stepwise_mcp_answers` with the row's id and reads it here. Rows are short-lived.
CREATE TABLE mcp.session_answers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL,
    message    jsonb NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_answers_at ON mcp.session_answers (at);
