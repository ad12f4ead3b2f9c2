-- Where an audited request came from (see tenant/postgres/0002): two columns
-- on the shared table, and the tenant view shows them (columns added at the
-- end keep the view's grants).
--
-- The shared table is every pool tenant's: this waits at most 10 s for its
-- lock (behind, say, an export's long read) rather than queue every pool
-- tenant's audited write behind it; the start that runs it then fails with
-- the lock timeout, and the next one applies it.
SET LOCAL lock_timeout = '10s';
ALTER TABLE audit_events ADD COLUMN client TEXT;
ALTER TABLE audit_events ADD COLUMN user_agent TEXT;
CREATE OR REPLACE VIEW campus_pool_api.audit_events WITH (security_invoker = true) AS
    SELECT id, actor_id, actor_kind, action, target_type, target_id, request_id, details, created_at,
           client, user_agent
    FROM campus_pool.audit_events
    WHERE tenant_id = current_setting('app.tenant_id', true);
