//! Authentication: passwords, session tokens, API keys, the login throttle.
//!
//! Tokens and keys are 256 random bits, stored only as SHA-256 hashes. Each
//! carries the id of the tenant that issued it in its visible prefix
//! (`cmp_<tenant>_<secret>`, `cmk_<tenant>_<secret>`), so that a token shown to
//! another tenant is recognised — and reported — without looking anywhere but
//! in the tenant the request named.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenancy::{Kernel, Lookup, Tenant, TenantId, TenantTx};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Origin;
use crate::error::{Error, Result};
use crate::hashing::Hasher;
use crate::throttle::{ClientAddr, LoginThrottle};
use crate::users::{self, User};

/// A role inside one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Instructor,
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Instructor => "instructor",
            Role::Learner => "learner",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "instructor" => Ok(Role::Instructor),
            "learner" => Ok(Role::Learner),
            _ => Err(Error::Internal(format!("stored role `{s}` is unknown"))),
        }
    }
}

/// Who is calling: a user (by session token) or an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    User {
        user_id: String,
        session_id: String,
        role: Role,
    },
    ApiKey {
        key_id: String,
        role: Role,
    },
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::User { role, .. } | Principal::ApiKey { role, .. } => *role,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User { user_id, .. } => Some(user_id),
            Principal::ApiKey { .. } => None,
        }
    }

    pub(crate) fn audit_actor(&self) -> (&'static str, &str) {
        match self {
            Principal::User { user_id, .. } => ("user", user_id),
            Principal::ApiKey { key_id, .. } => ("api_key", key_id),
        }
    }
}

// ---------------------------------------------------------------------------
// Passwords

/// Hashes a password with Argon2id on the process's hashing pool (see
/// [`crate::hashing`]); for tools and tests. The server hashes through its
/// own [`crate::hashing::Hasher`], in each tenant's turn.
pub async fn hash_password(password: String) -> Result<String> {
    crate::hashing::global()
        .hash(uuid::Uuid::nil().into(), password)
        .await
}

/// A random password for a generated first admin.
pub fn generate_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Tokens

const SESSION_PREFIX: &str = "cmp";
const API_KEY_PREFIX: &str = "cmk";

fn new_secret(prefix: &str, tenant: TenantId) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}_{}",
        tenant.simple(),
        URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a bearer credential was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Missing, malformed, unknown, expired or revoked.
    Invalid,
    /// Well-formed, but issued by another tenant: a security event.
    OtherTenant { issued_by: String },
}

/// What a bearer credential looks like before any lookup.
enum Credential<'a> {
    Session(&'a str),
    ApiKey(&'a str),
}

fn classify<'a>(tenant: &Tenant, bearer: &'a str) -> std::result::Result<Credential<'a>, Refused> {
    let mut parts = bearer.splitn(3, '_');
    let (Some(prefix), Some(issuer), Some(secret)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Invalid);
    };
    if issuer.len() != 32 || secret.len() != 43 || !issuer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::Invalid);
    }
    if issuer != tenant.id.simple() {
        return Err(Refused::OtherTenant {
            issued_by: issuer.to_owned(),
        });
    }
    match prefix {
        SESSION_PREFIX => Ok(Credential::Session(bearer)),
        API_KEY_PREFIX => Ok(Credential::ApiKey(bearer)),
        _ => Err(Refused::Invalid),
    }
}

/// How long a credential's answer may be cached. A logout, a revocation, a
/// role or password change or a deleted user flushes the tenant's cache at
/// once, on every node.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A credential's answer, as cached.
#[derive(Serialize, Deserialize)]
struct Known {
    principal: Principal,
    /// When the session ends; API keys do not.
    expires_at: Option<String>,
}

/// Authenticates a bearer credential for `tenant`: from the tenant's cache,
/// else from its database (and then cached).
pub async fn authenticate(
    kernel: &Kernel,
    tenant: &Tenant,
    bearer: &str,
) -> Result<std::result::Result<Principal, Refused>> {
    let cred = match classify(tenant, bearer) {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    let now = tenancy::clock::now();
    let hash = match cred {
        Credential::Session(s) | Credential::ApiKey(s) => digest(s),
    };
    let cache = kernel.cache(tenant);
    let key = format!("token:{hash}");
    let ticket = match cache.get::<Known>(&key).await {
        Lookup::Hit(known) => {
            return Ok(match known.expires_at {
                Some(end) if end <= now => Err(Refused::Invalid),
                _ => Ok(known.principal),
            });
        }
        Lookup::Miss(ticket) => Some(ticket),
        Lookup::Bypass => None,
    };
    let mut tx = kernel.begin(tenant).await?;
    let known = match cred {
        Credential::Session(_) => {
            let row: Option<(String, String, String, String)> = sqlx::query_as(
                "SELECT s.id, s.user_id, u.role, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2",
            )
            .bind(&hash)
            .bind(&now)
            .fetch_optional(tx.conn())
            .await?;
            match row {
                Some((session_id, user_id, role, expires_at)) => Some(Known {
                    principal: Principal::User {
                        user_id,
                        session_id,
                        role: Role::parse(&role)?,
                    },
                    expires_at: Some(expires_at),
                }),
                None => None,
            }
        }
        Credential::ApiKey(_) => {
            // A key acts only while its creator is still an admin (keys
            // are revoked when their creator is demoted or deleted; this
            // holds for keys from before that, too).
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT k.id, k.role FROM api_keys k LEFT JOIN users u ON u.id = k.created_by
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL
                   AND (k.created_by IS NULL OR u.role = 'admin')",
            )
            .bind(&hash)
            .fetch_optional(tx.conn())
            .await?;
            match row {
                Some((key_id, role)) => Some(Known {
                    principal: Principal::ApiKey {
                        key_id,
                        role: Role::parse(&role)?,
                    },
                    expires_at: None,
                }),
                None => None,
            }
        }
    };
    drop(tx);
    let Some(known) = known else {
        return Ok(Err(Refused::Invalid));
    };
    if let Some(ticket) = ticket {
        cache.put(ticket, &key, &known, TOKEN_TTL).await;
    }
    Ok(Ok(known.principal))
}

/// The tenant that issued `bearer` — refused elsewhere as another tenant's —
/// when it really is a live credential of that tenant; `None` for a
/// fabricated one (which must not be reported as that tenant's token).
/// The lookup goes through the issuer's cache first.
pub async fn real_issuer(kernel: &Kernel, bearer: &str) -> Option<Tenant> {
    let issuer = bearer.split('_').nth(1)?;
    let id = TenantId::from(Uuid::try_parse(issuer).ok()?);
    let tenant = kernel.registry().by_id(id).await.ok()??;
    match authenticate(kernel, &tenant, bearer).await {
        Ok(Ok(_)) => Some(tenant),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Login and logout

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The bearer token; shown once.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub expires_at: String,
    pub user: User,
}

/// How long a session token lives, unless configured otherwise.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The session policy of a server: token lifetime, the login throttle and
/// the password hashing pool.
pub struct Sessions {
    pub ttl: Duration,
    pub throttle: LoginThrottle,
    pub hasher: Hasher,
    /// When each tenant's expired sessions were last deleted (by this node).
    swept: Mutex<HashMap<TenantId, Instant>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(
            SESSION_TTL,
            LoginThrottle::default(),
            Hasher::new(Default::default()),
        )
    }
}

/// How many expired sessions one sweep deletes at most (bounded work per
/// login; the next sweep takes the rest).
const SWEEP_BATCH: i64 = 500;

impl Sessions {
    pub fn new(ttl: Duration, throttle: LoginThrottle, hasher: Hasher) -> Self {
        Self {
            ttl,
            throttle,
            hasher,
            swept: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `tenant`'s expired sessions are due to be deleted: at most
    /// once per session lifetime (and per 10 minutes) per tenant and node.
    fn sweep_due(&self, tenant: TenantId) -> bool {
        let every = self.ttl.min(Duration::from_secs(600));
        let now = Instant::now();
        let mut m = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, at| now.duration_since(*at) < every);
        }
        match m.get(&tenant) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                m.insert(tenant, now);
                true
            }
        }
    }

    /// Forgets idle state (bounded memory).
    pub fn forget_idle(&self) {
        self.throttle.forget_idle();
        let every = self.ttl.min(Duration::from_secs(600));
        let now = Instant::now();
        let mut m = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, at| now.duration_since(*at) < every);
        m.shrink_to_fit();
    }
}

/// Deletes up to [`SWEEP_BATCH`] expired sessions of the tenant.
async fn delete_expired(tx: &mut TenantTx, now: &str) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at <= $1 LIMIT $2)",
    )
    .bind(now)
    .bind(SWEEP_BATCH)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected())
}

/// Logs a user in: checks the password and issues a session token.
pub async fn login(
    kernel: &Kernel,
    tenant: &Tenant,
    sessions: &Sessions,
    client: &ClientAddr,
    origin: &Origin,
    req: LoginRequest,
) -> Result<LoginResponse> {
    // Bounded before anything is counted, hashed, stored or logged.
    let email = crate::validate::email(&req.email)?;
    crate::validate::password_to_check(&req.password)?;
    let throttle = &sessions.throttle;
    let shared = kernel.shared();
    let attempt = throttle.attempt(shared, tenant.id, &email, client).await?;

    let mut tx = kernel.begin(tenant).await?;
    let found = users::find_by_email(&mut tx, &email).await?;
    drop(tx);
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, None),
    };
    let checked = match sessions.hasher.verify(tenant.id, req.password, hash).await {
        Ok(ok) => ok,
        Err(e) => {
            throttle.not_checked(shared, &attempt).await;
            return Err(e);
        }
    };
    if !checked {
        let mut tx = kernel.begin_write(tenant).await?;
        crate::audit::record_anonymous(
            &mut tx,
            origin,
            "auth.login_failed",
            serde_json::json!({ "email": email }),
        )
        .await?;
        tx.commit().await?;
        return Err(Error::InvalidCredentials);
    }
    let Some(user) = user else {
        return Err(Error::InvalidCredentials);
    };
    throttle.succeeded(shared, &attempt).await;

    let token = new_secret(SESSION_PREFIX, tenant.id);
    let session_id = Uuid::now_v7().to_string();
    let now = tenancy::clock::now();
    let expires_at = tenancy::clock::after(sessions.ttl);
    let mut tx = kernel.begin_write(tenant).await?;
    // Expired sessions go: the user's own at each login (indexed), the
    // tenant's in bounded batches now and then.
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2")
        .bind(&user.id)
        .bind(&now)
        .execute(tx.conn())
        .await?;
    if sessions.sweep_due(tenant.id) {
        let n = delete_expired(&mut tx, &now).await?;
        if n > 0 {
            tracing::debug!(deleted = n, "expired sessions deleted");
        }
    }
    sqlx::query("INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&session_id)
        .bind(&user.id)
        .bind(digest(&token))
        .bind(&now)
        .bind(&expires_at)
        .execute(tx.conn())
        .await?;
    let actor = Principal::User {
        user_id: user.id.clone(),
        session_id,
        role: user.role,
    };
    crate::audit::record(
        &mut tx,
        &actor,
        origin,
        "auth.login",
        Some(("user", &user.id)),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(LoginResponse {
        token,
        token_type: "Bearer",
        expires_at,
        user,
    })
}

/// Ends the caller's session at once. API keys are revoked, not logged out.
pub async fn logout(cx: &crate::Cx) -> Result<()> {
    let Principal::User { session_id, .. } = &cx.actor else {
        return Err(Error::Forbidden("an API key is revoked, not logged out"));
    };
    let mut tx = cx.write().await?;
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(session_id)
        .execute(tx.conn())
        .await?;
    cx.audit(&mut tx, "auth.logout", None, None).await?;
    tx.commit().await?;
    cx.flush_cache().await;
    Ok(())
}

/// Ends every session of a user but `keep` (after a password change, a role change).
pub(crate) async fn end_sessions(
    tx: &mut TenantTx,
    user_id: &str,
    keep: Option<&str>,
) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> COALESCE($2, '')")
        .bind(user_id)
        .bind(keep)
        .execute(tx.conn())
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// API keys

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key itself, used as a Bearer token; shown once.
    pub key: String,
}

pub async fn create_api_key(cx: &crate::Cx, req: NewApiKey) -> Result<CreatedApiKey> {
    cx.require(&[Role::Admin])?;
    let name = crate::validate::text("name", &req.name, 200)?;
    let key = new_secret(API_KEY_PREFIX, cx.tenant.id);
    let api_key = ApiKey {
        id: Uuid::now_v7().to_string(),
        name,
        role: req.role,
        created_at: tenancy::clock::now(),
        revoked_at: None,
    };
    let mut tx = cx.write().await?;
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, key_hash, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&api_key.id)
    .bind(&api_key.name)
    .bind(api_key.role.as_str())
    .bind(digest(&key))
    .bind(cx.actor.user_id())
    .bind(&api_key.created_at)
    .execute(tx.conn())
    .await?;
    cx.audit(
        &mut tx,
        "api_key.created",
        Some(("api_key", &api_key.id)),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedApiKey { api_key, key })
}

pub async fn list_api_keys(
    cx: &crate::Cx,
    page: &crate::page::PageRequest,
) -> Result<crate::page::Page<ApiKey>> {
    cx.require(&[Role::Admin])?;
    let mut tx = cx.read().await?;
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, name, role, created_at, revoked_at FROM api_keys
         WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.fetch())
    .fetch_all(tx.conn())
    .await?;
    let keys = rows
        .into_iter()
        .map(|(id, name, role, created_at, revoked_at)| {
            Ok(ApiKey {
                id,
                name,
                role: Role::parse(&role)?,
                created_at,
                revoked_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::page::Page::from_rows(keys, page, |k| k.id.clone()))
}

pub async fn revoke_api_key(cx: &crate::Cx, id: &str) -> Result<()> {
    cx.require(&[Role::Admin])?;
    let mut tx = cx.write().await?;
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
            .bind(id)
            .bind(tenancy::clock::now())
            .execute(tx.conn())
            .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(&mut tx, "api_key.revoked", Some(("api_key", id)), None)
        .await?;
    tx.commit().await?;
    cx.flush_cache().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_tenant_and_256_bits() {
        let t = TenantId::new();
        let s = new_secret(SESSION_PREFIX, t);
        let parts: Vec<_> = s.splitn(3, '_').collect();
        assert_eq!(parts[0], "cmp");
        assert_eq!(parts[1], t.simple());
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 32);
        assert_ne!(s, new_secret(SESSION_PREFIX, t));
    }
}
