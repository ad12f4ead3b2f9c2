//! What the control plane keeps about its operators, in the registry: the
//! console's server-side sessions and the operator audit log. Neither holds
//! tenant data; both are shared by every node of a deployment.

use sqlx::Row;

use crate::error::Result;
use crate::registry::Registry;

/// A console session, found by the SHA-256 of its cookie.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    pub id_sha256: String,
    pub operator: String,
    /// The token every state-changing request of this session carries.
    pub csrf: String,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: String,
    /// Unix seconds.
    pub last_seen: i64,
    /// Unix seconds.
    pub created_unix: i64,
}

/// One line of the operator audit log.
#[derive(Debug, Clone)]
pub struct OperatorAction {
    pub id: i64,
    pub at: String,
    pub operator: String,
    /// `tenant.suspend`, `console.sign_in`…
    pub action: String,
    /// The tenant's slug, when the action names one.
    pub tenant: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    /// `console` or `api`.
    pub via: String,
}

/// Longest text kept in a field of the audit log (a user agent, a detail).
const FIELD_MAX: usize = 300;

fn bounded(s: &str) -> String {
    match s.char_indices().nth(FIELD_MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

const SESSION_COLUMNS: &str =
    "id_sha256, operator, csrf, client, user_agent, created_at, last_seen, created_unix";

fn session(r: &crate::dataplane::DbRow) -> Result<ConsoleSession> {
    Ok(ConsoleSession {
        id_sha256: r.try_get("id_sha256")?,
        operator: r.try_get("operator")?,
        csrf: r.try_get("csrf")?,
        client: r.try_get("client")?,
        user_agent: r.try_get("user_agent")?,
        created_at: r.try_get("created_at")?,
        last_seen: r.try_get("last_seen")?,
        created_unix: r.try_get("created_unix")?,
    })
}

impl Registry {
    /// Records a new console session, first deleting every session idle
    /// for longer than `idle_s` or older than `lifetime_s` (the table holds
    /// live sessions only).
    pub async fn create_console_session(
        &self,
        s: &ConsoleSession,
        idle_s: i64,
        lifetime_s: i64,
    ) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE last_seen < $1 OR created_unix < $2",
            self.t("console_sessions")
        );
        sqlx::query(&sql)
            .bind(s.last_seen - idle_s)
            .bind(s.created_unix - lifetime_s)
            .execute(self.pool())
            .await?;
        let sql = format!(
            "INSERT INTO {} (id_sha256, operator, csrf, client, user_agent, created_at, last_seen,
                             created_unix)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.t("console_sessions")
        );
        sqlx::query(&sql)
            .bind(&s.id_sha256)
            .bind(&s.operator)
            .bind(&s.csrf)
            .bind(s.client.as_deref())
            .bind(s.user_agent.as_deref().map(bounded))
            .bind(&s.created_at)
            .bind(s.last_seen)
            .bind(s.created_unix)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The session with this cookie digest if it was seen within `idle_s`
    /// of `now` (Unix seconds) and began within `lifetime_s`; its last
    /// sight moves to `now` when it is more than `touch_s` old (one write a
    /// while, not one per page).
    pub async fn console_session(
        &self,
        id_sha256: &str,
        now: i64,
        idle_s: i64,
        lifetime_s: i64,
        touch_s: i64,
    ) -> Result<Option<ConsoleSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}
             FROM {} WHERE id_sha256 = $1 AND last_seen >= $2 AND created_unix >= $3",
            self.t("console_sessions")
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id_sha256)
            .bind(now - idle_s)
            .bind(now - lifetime_s)
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        let mut found = session(&row)?;
        if now - found.last_seen > touch_s {
            let sql = format!(
                "UPDATE {} SET last_seen = $2 WHERE id_sha256 = $1",
                self.t("console_sessions")
            );
            sqlx::query(&sql)
                .bind(id_sha256)
                .bind(now)
                .execute(self.pool())
                .await?;
            found.last_seen = now;
        }
        Ok(Some(found))
    }

    /// Every session seen within `idle_s` of `now` and begun within
    /// `lifetime_s`, the latest first.
    pub async fn console_sessions(
        &self,
        now: i64,
        idle_s: i64,
        lifetime_s: i64,
    ) -> Result<Vec<ConsoleSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}
             FROM {} WHERE last_seen >= $1 AND created_unix >= $2
             ORDER BY last_seen DESC LIMIT 200",
            self.t("console_sessions")
        );
        let rows = sqlx::query(&sql)
            .bind(now - idle_s)
            .bind(now - lifetime_s)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(session).collect()
    }

    /// Ends one session (`Some`), or every session but `keep` (`None`
    /// with a `keep`), on every node at once. Answers how many ended.
    pub async fn revoke_console_sessions(
        &self,
        only: Option<&str>,
        keep: Option<&str>,
    ) -> Result<u64> {
        let table = self.t("console_sessions");
        let done = match only {
            Some(id) => {
                sqlx::query(&format!("DELETE FROM {table} WHERE id_sha256 = $1"))
                    .bind(id)
                    .execute(self.pool())
                    .await?
            }
            None => {
                sqlx::query(&format!("DELETE FROM {table} WHERE id_sha256 <> $1"))
                    .bind(keep.unwrap_or(""))
                    .execute(self.pool())
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// A move of the tenant under way (or interrupted), in words: from
    /// where to where, and how far it got.
    pub async fn move_described(&self, id: crate::TenantId) -> Result<Option<String>> {
        Ok(self.move_of(id).await?.map(|m| {
            format!(
                "{} on {} → {} on {}: {} (an interrupted move is finished or rolled back by running it again)",
                m.from.0.as_str(),
                m.from.1,
                m.to.0.as_str(),
                m.to.1,
                if m.switched { "switched, the old copy still to remove" } else { "copying" }
            )
        }))
    }

    /// Appends a line to the operator audit log (`id` and `at` are set here).
    pub async fn record_operator_action(&self, a: &OperatorAction) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (at, operator, action, tenant, outcome, detail, client, user_agent, via)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.t("operator_audit")
        );
        sqlx::query(&sql)
            .bind(crate::clock::now())
            .bind(bounded(&a.operator))
            .bind(&a.action)
            .bind(a.tenant.as_deref())
            .bind(&a.outcome)
            .bind(bounded(&a.detail))
            .bind(a.client.as_deref())
            .bind(a.user_agent.as_deref().map(bounded))
            .bind(&a.via)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The audit log, the latest first: `limit` lines older than `before`
    /// (an id), of one tenant's slug when given.
    pub async fn operator_actions(
        &self,
        tenant: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OperatorAction>> {
        // Two statements, so that each has a plan that uses its index.
        let columns = "id, at, operator, action, tenant, outcome, detail, client, user_agent, via";
        let table = self.t("operator_audit");
        let before = before.unwrap_or(i64::MAX);
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM {table} WHERE tenant = $1 AND id < $2
                     ORDER BY id DESC LIMIT $3"
                ))
                .bind(t)
                .bind(before)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM {table} WHERE id < $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(before)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(OperatorAction {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    operator: r.try_get("operator")?,
                    action: r.try_get("action")?,
                    tenant: r.try_get("tenant")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    client: r.try_get("client")?,
                    user_agent: r.try_get("user_agent")?,
                    via: r.try_get("via")?,
                })
            })
            .collect()
    }
}
