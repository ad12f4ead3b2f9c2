-- What every node of one deployment must agree on, one row per setting:
-- `master_key_check` (an HMAC of a fixed label under the master key: it tells
-- whether a node holds the deployment's key, and reveals nothing of it), and
-- `operator_token_sha256` (the operator token's hash, one per deployment),
-- with `source` saying whether it was generated or configured.
CREATE TABLE deployment (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL
);

-- Storage a running upload has reserved against its tenant's quota: taken
-- (under the lock of the tenant's usage row) before its bytes are accepted,
-- released when it is committed or refused. A node that dies leaves its
-- reservations to lapse at `expires_at` (Unix seconds).
CREATE TABLE storage_reservations (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    bytes      INTEGER NOT NULL CHECK (bytes >= 0),
    expires_at INTEGER NOT NULL
);
CREATE INDEX storage_reservations_tenant ON storage_reservations (tenant_id);
