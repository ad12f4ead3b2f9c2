-- The shared tables of `pool` isolation (PostgreSQL), once per placement, run
-- with campus_pool first on the search_path by the owner role.
--
-- Every table carries tenant_id, filled from the transaction's
-- app.tenant_id setting; row-level security is enabled AND forced (the owner
-- is bound too), and its policies read the setting once per statement and
-- fail closed: no setting, no rows. Foreign keys include tenant_id, so a row
-- can only ever reference rows of its own tenant.
--
-- Transactions of pool tenants see these tables only through the views of
-- campus_pool_api, which add the explicit tenant predicate and hide
-- tenant_id, so the learning domain's SQL is the same in every mode.

CREATE SCHEMA IF NOT EXISTS campus_pool_api;

CREATE TABLE users (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id            TEXT NOT NULL,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'instructor', 'learner')),
    password_hash TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, email)
);
CREATE INDEX users_tenant ON users (tenant_id);
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.users WITH (security_invoker = true) AS
    SELECT id, email, name, role, password_hash, created_at, updated_at
    FROM campus_pool.users
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE sessions (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_tenant ON sessions (tenant_id);
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.sessions WITH (security_invoker = true) AS
    SELECT id, user_id, token_hash, created_at, expires_at
    FROM campus_pool.sessions
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE api_keys (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'instructor', 'learner')),
    key_hash    TEXT NOT NULL UNIQUE,
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id) ON DELETE SET NULL (created_by)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.api_keys WITH (security_invoker = true) AS
    SELECT id, name, role, key_hash, created_by, created_at, revoked_at
    FROM campus_pool.api_keys
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE courses (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id          TEXT NOT NULL PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    published   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE INDEX courses_tenant ON courses (tenant_id);
ALTER TABLE courses ENABLE ROW LEVEL SECURITY;
ALTER TABLE courses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON courses
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.courses WITH (security_invoker = true) AS
    SELECT id, title, description, published, created_at, updated_at
    FROM campus_pool.courses
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE lessons (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id          TEXT NOT NULL PRIMARY KEY,
    course_id   TEXT NOT NULL,
    title       TEXT NOT NULL,
    position    BIGINT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX lessons_tenant ON lessons (tenant_id);
ALTER TABLE lessons ENABLE ROW LEVEL SECURITY;
ALTER TABLE lessons FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lessons
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.lessons WITH (security_invoker = true) AS
    SELECT id, course_id, title, position, created_at, updated_at
    FROM campus_pool.lessons
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE enrollments (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    course_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (course_id, user_id),
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX enrollments_tenant ON enrollments (tenant_id);
ALTER TABLE enrollments ENABLE ROW LEVEL SECURITY;
ALTER TABLE enrollments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON enrollments
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.enrollments WITH (security_invoker = true) AS
    SELECT course_id, user_id, created_at
    FROM campus_pool.enrollments
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE progress (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    user_id      TEXT NOT NULL,
    lesson_id    TEXT NOT NULL,
    course_id    TEXT NOT NULL,
    position_s   DOUBLE PRECISION NOT NULL DEFAULT 0,
    completed    BOOLEAN NOT NULL DEFAULT FALSE,
    completed_at TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, lesson_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, lesson_id) REFERENCES lessons (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX progress_tenant ON progress (tenant_id);
ALTER TABLE progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE progress FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON progress
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.progress WITH (security_invoker = true) AS
    SELECT user_id, lesson_id, course_id, position_s, completed, completed_at, updated_at
    FROM campus_pool.progress
    WHERE tenant_id = current_setting('app.tenant_id', true);

CREATE TABLE audit_events (
    tenant_id     TEXT NOT NULL DEFAULT current_setting('app.tenant_id'),
    id          TEXT NOT NULL PRIMARY KEY,
    actor_id    TEXT,
    actor_kind  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    request_id  TEXT,
    details     TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id);
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
    USING (tenant_id = (SELECT current_setting('app.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id', true)));
CREATE VIEW campus_pool_api.audit_events WITH (security_invoker = true) AS
    SELECT id, actor_id, actor_kind, action, target_type, target_id, request_id, details, created_at
    FROM campus_pool.audit_events
    WHERE tenant_id = current_setting('app.tenant_id', true);
