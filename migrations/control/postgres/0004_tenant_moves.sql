-- A tenant being moved to another isolation mode or placement (at most one
-- move per tenant). `copying`: the registry still names the old place, and
-- a re-run rolls the new copy back and starts again; `switched`: the
-- registry names the new place (set in the same transaction), and a re-run
-- only removes the old copy. `prior_status` is what the tenant goes back to
-- once the move is over (the write freeze puts an active one in maintenance).
CREATE TABLE tenant_moves (
    tenant_id      TEXT PRIMARY KEY REFERENCES tenants (id),
    from_isolation TEXT NOT NULL,
    from_placement TEXT NOT NULL,
    to_isolation   TEXT NOT NULL,
    to_placement   TEXT NOT NULL,
    phase          TEXT NOT NULL CHECK (phase IN ('copying', 'switched')),
    prior_status   TEXT NOT NULL,
    started_at     TEXT NOT NULL
);

-- Leases on long operator work that must not run twice at once (a move of
-- one tenant, an import of one slug), from any node or CLI: taken when free
-- or lapsed, kept alive by their holder, released at the end; a holder that
-- dies frees it when `until` (Unix seconds) passes.
CREATE TABLE leases (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until BIGINT NOT NULL
);
