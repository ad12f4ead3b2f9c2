//! Authentication: passwords, session tokens, API keys, the login throttle.
//!
//! Tokens and keys are 256 random bits, stored only as SHA-256 hashes. Each
//! carries the id of the tenant that issued it in its visible prefix
//! (`cmp_<tenant>_<secret>`, `cmk_<tenant>_<secret>`), so that a token shown to
//! another tenant is recognised — and reported — without looking anywhere but
//! in the tenant the request named.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenancy::{Kernel, Lookup, Tenant, TenantId, TenantTx};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{Error, Result};
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

fn argon() -> Argon2<'static> {
    Argon2::default()
}

/// Hashes a password with Argon2id, off the async threads.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// Verifies a password against a stored hash, off the async threads. With no
/// stored hash it still does the work, so that an unknown email costs the
/// same time as a wrong password.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let known = stored.is_some();
    tokio::task::spawn_blocking(move || {
        let hash = stored.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut rand::rngs::OsRng);
                    argon()
                        .hash_password(b"not a password anyone has", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let ok = PasswordHash::new(&hash)
            .map(|h| argon().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
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
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
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

/// Counts logins per (tenant, email) that have not succeeded: `max_failures`
/// at once, then one more per `window / max_failures` (GCRA). An attempt
/// counts before its password is checked — so that guesses sent at once
/// each count — and a successful login forgets the count. With Redis the count is shared
/// by every node (one atomic script); without it, or while Redis is
/// unavailable, each node counts on its own.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    /// Per (tenant, email): the GCRA's theoretical arrival time. By hand,
    /// because the throttle must forget a key on success, which `governor`
    /// does not offer; the same arithmetic as the Redis script.
    failures: Mutex<HashMap<(TenantId, String), Instant>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(15 * 60))
    }
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, String), Instant>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of a (tenant, email)'s count in Redis: the email hashed.
    fn shared_name(email: &str) -> String {
        format!("login:{}", digest(email))
    }

    fn interval(&self) -> Duration {
        self.window / self.max_failures.max(1)
    }

    /// Counts one attempt of this (tenant, email); Err with the seconds to
    /// wait when it is throttled (and then nothing is counted).
    async fn attempt(
        &self,
        shared: Option<&tenancy::Redis>,
        key: &(TenantId, String),
    ) -> Result<()> {
        if let Some(redis) = shared
            && let Some(v) = redis
                .gcra(
                    key.0,
                    &Self::shared_name(&key.1),
                    self.interval(),
                    self.max_failures,
                    true,
                )
                .await
        {
            return if v.allowed {
                Ok(())
            } else {
                Err(Error::RateLimited {
                    retry_after_s: v.wait.as_secs().max(1),
                })
            };
        }
        self.attempt_here(key)
    }

    async fn succeeded(&self, shared: Option<&tenancy::Redis>, key: &(TenantId, String)) {
        if let Some(redis) = shared {
            redis.forget_limit(key.0, &Self::shared_name(&key.1)).await;
        }
        self.succeeded_here(key);
    }

    fn attempt_here(&self, key: &(TenantId, String)) -> Result<()> {
        let now = Instant::now();
        let mut map = self.map();
        if map.len() > 100_000 {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(key).map_or(now, |tat| (*tat).max(now)) + self.interval();
        // Past the burst: the attempt would arrive before its turn.
        if let Some(allow_at) = tat.checked_sub(self.window)
            && allow_at > now
        {
            let retry_after_s = (allow_at - now).as_secs().max(1);
            return Err(Error::RateLimited { retry_after_s });
        }
        map.insert(key.clone(), tat);
        Ok(())
    }

    fn succeeded_here(&self, key: &(TenantId, String)) {
        self.map().remove(key);
    }
}

/// How long a session token lives, unless configured otherwise.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The session policy of a server: token lifetime and the login throttle.
pub struct Sessions {
    pub ttl: Duration,
    pub throttle: LoginThrottle,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            ttl: SESSION_TTL,
            throttle: LoginThrottle::default(),
        }
    }
}

/// Logs a user in: checks the password and issues a session token.
pub async fn login(
    kernel: &Kernel,
    tenant: &Tenant,
    sessions: &Sessions,
    request_id: &str,
    req: LoginRequest,
) -> Result<LoginResponse> {
    let throttle = &sessions.throttle;
    let email = req.email.trim().to_lowercase();
    let key = (tenant.id, email.clone());
    let shared = kernel.shared();
    throttle.attempt(shared, &key).await?;

    let mut tx = kernel.begin(tenant).await?;
    let found = users::find_by_email(&mut tx, &email).await?;
    drop(tx);
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, None),
    };
    if !verify_password(req.password, hash).await {
        let mut tx = kernel.begin_write(tenant).await?;
        crate::audit::record_anonymous(
            &mut tx,
            request_id,
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
    throttle.succeeded(shared, &key).await;

    let token = new_secret(SESSION_PREFIX, tenant.id);
    let session_id = Uuid::now_v7().to_string();
    let expires_at = tenancy::clock::after(sessions.ttl);
    let mut tx = kernel.begin_write(tenant).await?;
    sqlx::query("INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&session_id)
        .bind(&user.id)
        .bind(digest(&token))
        .bind(tenancy::clock::now())
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
        Some(request_id),
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
