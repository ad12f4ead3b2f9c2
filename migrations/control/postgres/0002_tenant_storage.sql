-- Each tenant's file storage: its data key, wrapped (encrypted) by the master
-- key, and the bytes its objects take. Deleting the row destroys the key, and
-- with it every copy of the tenant's files (crypto-shredding).
CREATE TABLE tenant_storage (
    tenant_id    TEXT PRIMARY KEY REFERENCES tenants (id),
    wrapped_key  TEXT NOT NULL,
    stored_bytes BIGINT NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    created_at   TEXT NOT NULL
);
