-- The operator console's sessions: server-side, so that signing out (or
-- revoking every session) ends them on every node at once. The cookie
-- holds a random id; only its SHA-256 is kept here. A session not seen for
-- the idle timeout, or begun 12 hours ago, is over, and is deleted by the
-- next sign-in.
CREATE TABLE console_sessions (
    id_sha256  TEXT PRIMARY KEY,
    operator   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    client     TEXT,
    user_agent TEXT,
    created_at TEXT NOT NULL,
    -- Unix seconds: when it began (a session ends 12 hours after), and when
    -- it was last used (to the minute).
    created_unix BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);

-- What operators did, from the console, the control-plane API or the CLI: who, what,
-- which tenant, when, from where, and how it ended. Kept for the
-- deployment's life (a tenant's purge does not remove its lines).
CREATE TABLE operator_audit (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         TEXT NOT NULL,
    operator   TEXT NOT NULL,
    action     TEXT NOT NULL,
    tenant     TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    client     TEXT,
    user_agent TEXT,
    via        TEXT NOT NULL
);
CREATE INDEX operator_audit_tenant ON operator_audit (tenant, id);
