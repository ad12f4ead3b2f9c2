//! The tenant's audit log: who did what, recorded in the same transaction as
//! the change it describes.

use serde::Serialize;
use tenancy::TenantTx;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::error::Result;
use crate::page::{Page, PageRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    /// `user`, `api_key`, `operator` or `anonymous`.
    pub actor_kind: String,
    pub actor_id: Option<String>,
    /// What happened, e.g. `course.created`.
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    pub created_at: String,
    /// The client's address, as the limits key it: an IPv4 address, an IPv6
    /// /64, or `unknown`. Absent for events no request caused.
    pub client: Option<String>,
    /// The request's `User-Agent`, at most 200 characters.
    pub user_agent: Option<String>,
}

/// The longest `User-Agent` kept in the audit log, in characters.
pub const USER_AGENT_MAX: usize = 200;

/// Where a request came from, as its audit events record it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    /// The client address (see [`crate::throttle::ClientAddr`]).
    pub client: Option<String>,
    /// The `User-Agent`, cut to [`USER_AGENT_MAX`] characters, control
    /// characters replaced (it is the client's to choose).
    pub user_agent: Option<String>,
}

impl Origin {
    pub fn new(request_id: String, client: Option<String>, user_agent: Option<&str>) -> Self {
        let user_agent = user_agent.map(|ua| {
            ua.chars()
                .take(USER_AGENT_MAX)
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect()
        });
        Origin {
            request_id,
            client,
            user_agent,
        }
    }
}

async fn insert(
    tx: &mut TenantTx,
    actor: (&str, Option<&str>),
    origin: Option<&Origin>,
    action: &str,
    target: Option<(&str, &str)>,
    details: Option<serde_json::Value>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (id, actor_kind, actor_id, action, target_type, target_id, request_id, details, created_at, client, user_agent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(actor.0)
    .bind(actor.1)
    .bind(action)
    .bind(target.map(|t| t.0))
    .bind(target.map(|t| t.1))
    .bind(origin.map(|o| o.request_id.as_str()))
    .bind(details.map(|d| d.to_string()))
    .bind(tenancy::clock::now())
    .bind(origin.and_then(|o| o.client.as_deref()))
    .bind(origin.and_then(|o| o.user_agent.as_deref()))
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub(crate) async fn record(
    tx: &mut TenantTx,
    actor: &Principal,
    origin: &Origin,
    action: &str,
    target: Option<(&str, &str)>,
    details: Option<serde_json::Value>,
) -> Result<()> {
    let (kind, id) = actor.audit_actor();
    insert(tx, (kind, Some(id)), Some(origin), action, target, details).await
}

pub(crate) async fn record_anonymous(
    tx: &mut TenantTx,
    origin: &Origin,
    action: &str,
    details: serde_json::Value,
) -> Result<()> {
    insert(
        tx,
        ("anonymous", None),
        Some(origin),
        action,
        None,
        Some(details),
    )
    .await
}

pub(crate) async fn record_operator(
    tx: &mut TenantTx,
    action: &str,
    target: Option<(&str, &str)>,
) -> Result<()> {
    insert(tx, ("operator", None), None, action, target, None).await
}

/// The tenant's audit log, newest first. Admins only.
pub async fn list(cx: &crate::Cx, page: &PageRequest) -> Result<Page<AuditEvent>> {
    cx.require(&[Role::Admin])?;
    let mut tx = cx.read().await?;
    let events = read(&mut tx, page.after.as_deref(), page.fetch()).await?;
    Ok(Page::from_rows(events, page, |e| e.id.clone()))
}

/// The tenant's latest `limit` audit events, for its operators (the
/// console's tenant page): read through the tenant's own handle.
pub async fn latest_for_operator(
    kernel: &tenancy::Kernel,
    tenant: &tenancy::Tenant,
    limit: i64,
) -> Result<Vec<AuditEvent>> {
    let mut tx = kernel.begin(tenant).await?;
    read(&mut tx, None, limit).await
}

/// Events older than `after` (an id), newest first, at most `limit`.
async fn read(tx: &mut TenantTx, after: Option<&str>, limit: i64) -> Result<Vec<AuditEvent>> {
    let rows = sqlx::query(
        "SELECT id, actor_kind, actor_id, action, target_type, target_id, request_id, details, created_at,
                client, user_agent
         FROM audit_events WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|r| {
            let details: Option<String> = crate::col(r, "details")?;
            Ok(AuditEvent {
                id: crate::col(r, "id")?,
                actor_kind: crate::col(r, "actor_kind")?,
                actor_id: crate::col(r, "actor_id")?,
                action: crate::col(r, "action")?,
                target_type: crate::col(r, "target_type")?,
                target_id: crate::col(r, "target_id")?,
                request_id: crate::col(r, "request_id")?,
                details: details.and_then(|d| serde_json::from_str(&d).ok()),
                created_at: crate::col(r, "created_at")?,
                client: crate::col(r, "client")?,
                user_agent: crate::col(r, "user_agent")?,
            })
        })
        .collect::<Result<Vec<_>>>()
}
