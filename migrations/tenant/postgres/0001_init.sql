-- One tenant's learning data (PostgreSQL: a schema of its own in `schema`
-- mode, a database of its own in `database` mode; run with the tenant's
-- schema first on the search_path). Ids are UUIDv7 text; times are RFC 3339
-- UTC text with milliseconds (text order is time order), as in SQLite, so a
-- tenant moves between backends without conversion.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'instructor', 'learner')),
    password_hash TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'instructor', 'learner')),
    key_hash    TEXT NOT NULL UNIQUE,
    created_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE courses (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    published   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE lessons (
    id          TEXT PRIMARY KEY,
    course_id   TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    position    BIGINT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX lessons_course_position ON lessons (course_id, position, id);

CREATE TABLE enrollments (
    course_id   TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (course_id, user_id)
);
CREATE INDEX enrollments_user ON enrollments (user_id);

CREATE TABLE progress (
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lesson_id    TEXT NOT NULL REFERENCES lessons (id) ON DELETE CASCADE,
    course_id    TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    position_s   DOUBLE PRECISION NOT NULL DEFAULT 0,
    completed    BOOLEAN NOT NULL DEFAULT FALSE,
    completed_at TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, lesson_id)
);
CREATE INDEX progress_course_user ON progress (course_id, user_id);

CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    actor_id    TEXT,
    actor_kind  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    request_id  TEXT,
    details     TEXT,
    created_at  TEXT NOT NULL
);
