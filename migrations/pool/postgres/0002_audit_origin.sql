-- Where an audited request came from (see tenant/postgres/0002): two columns
-- on the shared table, and the tenant view shows them (columns added at the
-- end keep the view's grants).
ALTER TABLE audit_events ADD COLUMN client TEXT;
ALTER TABLE audit_events ADD COLUMN user_agent TEXT;
CREATE OR REPLACE VIEW campus_pool_api.audit_events WITH (security_invoker = true) AS
    SELECT id, actor_id, actor_kind, action, target_type, target_id, request_id, details, created_at,
           client, user_agent
    FROM campus_pool.audit_events
    WHERE tenant_id = current_setting('app.tenant_id', true);
