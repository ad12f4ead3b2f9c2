-- The control plane (PostgreSQL, schema campus_control): which tenants exist, where they live, what state they are in.
CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    slug           TEXT NOT NULL,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'maintenance', 'deleted', 'purged')),
    isolation      TEXT NOT NULL CHECK (isolation IN ('database', 'schema', 'pool')),
    placement      TEXT NOT NULL,
    plan           TEXT NOT NULL,
    schema_version BIGINT NOT NULL DEFAULT 0,
    change_gen     BIGINT NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    deleted_at     TEXT
);

-- A slug names one tenant until that tenant is purged.
CREATE UNIQUE INDEX tenants_slug_live ON tenants (slug) WHERE status <> 'purged';
CREATE INDEX tenants_change_gen ON tenants (change_gen);

-- Bumped by every change to `tenants`; servers poll it to invalidate caches.
CREATE TABLE registry_generation (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO registry_generation (id, value) VALUES (1, 0);

-- Idempotency keys of the control-plane API (provisioning retries).
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    created_at  TEXT NOT NULL
);
