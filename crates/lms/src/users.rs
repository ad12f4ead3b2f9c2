//! Users of one tenant and their roles.

use serde::{Deserialize, Serialize};
use tenancy::TenantTx;
use tenancy::dataplane::DbRow;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{self, Principal, Role};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{Cx, col, validate};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub role: Role,
    /// Optional: a user without a password cannot log in until one is set.
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub name: Option<String>,
    /// Admins only.
    pub email: Option<String>,
    /// Admins only.
    pub role: Option<Role>,
    /// Ends the user's other sessions. Changing one's own password needs
    /// `current_password`; an admin setting another user's does not.
    pub password: Option<String>,
    /// The caller's current password: required with `password` when the
    /// caller changes their own (403 `forbidden` when wrong).
    pub current_password: Option<String>,
}

const COLUMNS: &str = "id, email, name, role, created_at, updated_at";

fn decode(r: &DbRow) -> Result<User> {
    let role: String = col(r, "role")?;
    Ok(User {
        id: col(r, "id")?,
        email: col(r, "email")?,
        name: col(r, "name")?,
        role: Role::parse(&role)?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

pub(crate) async fn get(tx: &mut TenantTx, id: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(tx.conn()).await?;
    row.as_ref().map(decode).transpose()
}

/// A user and their password hash, by (normalised) email.
pub(crate) async fn find_by_email(
    tx: &mut TenantTx,
    email: &str,
) -> Result<Option<(User, Option<String>)>> {
    let sql = format!("SELECT {COLUMNS}, password_hash FROM users WHERE email = $1");
    let row = sqlx::query(&sql)
        .bind(email)
        .fetch_optional(tx.conn())
        .await?;
    row.map(|r| Ok((decode(&r)?, col(&r, "password_hash")?)))
        .transpose()
}

/// Validated fields of a new user, with the password already hashed.
pub(crate) struct Checked {
    name: String,
    email: String,
    role: Role,
    password_hash: Option<String>,
}

pub(crate) async fn check(
    req: NewUser,
    hasher: &crate::hashing::Hasher,
    tenant: tenancy::TenantId,
) -> Result<Checked> {
    let name = validate::text("name", &req.name, 200)?;
    let email = validate::email(&req.email)?;
    let password_hash = match req.password {
        Some(p) => {
            validate::password(&p)?;
            Some(hasher.hash(tenant, p).await?)
        }
        None => None,
    };
    Ok(Checked {
        name,
        email,
        role: req.role,
        password_hash,
    })
}

pub(crate) async fn insert(tx: &mut TenantTx, u: Checked) -> Result<User> {
    let now = tenancy::clock::now();
    let user = User {
        id: Uuid::now_v7().to_string(),
        email: u.email,
        name: u.name,
        role: u.role,
        created_at: now.clone(),
        updated_at: now,
    };
    let res = sqlx::query(
        "INSERT INTO users (id, email, name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&user.id)
    .bind(&user.email)
    .bind(&user.name)
    .bind(user.role.as_str())
    .bind(&u.password_hash)
    .bind(&user.created_at)
    .execute(tx.conn())
    .await
    .map_err(Error::from);
    match res {
        Err(e) if e.is_unique_violation() => Err(Error::Conflict(
            "a user with this email already exists in this tenant".into(),
        )),
        other => other.map(|_| user),
    }
}

/// Creates the first admin of a tenant being provisioned, or — when an
/// interrupted run already did — sets their name and password again.
pub(crate) async fn upsert_admin(tx: &mut TenantTx, u: Checked) -> Result<User> {
    let email = u.email.clone();
    match find_by_email(tx, &email).await? {
        Some((existing, _)) => {
            sqlx::query(
                "UPDATE users SET name = $2, role = 'admin', password_hash = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(&existing.id)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(tenancy::clock::now())
            .execute(tx.conn())
            .await?;
        }
        None => {
            insert(tx, u).await?;
        }
    }
    Ok(find_by_email(tx, &email).await?.ok_or(Error::NotFound)?.0)
}

/// The caller.
pub async fn me(cx: &Cx) -> Result<User> {
    let id = cx.user_id()?;
    let mut tx = cx.read().await?;
    get(&mut tx, id).await?.ok_or(Error::NotFound)
}

pub async fn list(cx: &Cx, page: &PageRequest) -> Result<Page<User>> {
    cx.require(&[Role::Admin])?;
    let mut tx = cx.read().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM users WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2");
    let rows = sqlx::query(&sql)
        .bind(&page.after)
        .bind(page.fetch())
        .fetch_all(tx.conn())
        .await?;
    let users = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(users, page, |u| u.id.clone()))
}

pub async fn create(cx: &Cx, hasher: &crate::hashing::Hasher, req: NewUser) -> Result<User> {
    cx.require(&[Role::Admin])?;
    let checked = check(req, hasher, cx.tenant.id).await?;
    let mut tx = cx.write().await?;
    let user = insert(&mut tx, checked).await?;
    cx.audit(
        &mut tx,
        "user.created",
        Some(("user", &user.id)),
        Some(serde_json::json!({ "role": user.role })),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

fn is_self(cx: &Cx, id: &str) -> bool {
    cx.actor.user_id() == Some(id)
}

pub async fn fetch(cx: &Cx, id: &str) -> Result<User> {
    if !is_self(cx, id) {
        cx.require(&[Role::Admin])?;
    }
    let mut tx = cx.read().await?;
    get(&mut tx, id).await?.ok_or(Error::NotFound)
}

async fn admins(tx: &mut TenantTx) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(tx.conn())
            .await?,
    )
}

/// Revokes the API keys `user_id` created (they were demoted or deleted:
/// what they granted goes with them); how many.
async fn revoke_keys_of(tx: &mut TenantTx, user_id: &str) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = $2 WHERE created_by = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(tenancy::clock::now())
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected())
}

/// The stored password hash of a user.
async fn password_hash_of(cx: &Cx, id: &str) -> Result<Option<String>> {
    let mut tx = cx.read().await?;
    Ok(
        sqlx::query_scalar::<_, Option<String>>("SELECT password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(tx.conn())
            .await?
            .flatten(),
    )
}

pub async fn update(
    cx: &Cx,
    hasher: &crate::hashing::Hasher,
    id: &str,
    patch: UserPatch,
) -> Result<User> {
    let admin = cx.actor.role() == Role::Admin;
    if !admin {
        if !is_self(cx, id) {
            return Err(Error::Forbidden("only admins may change other users"));
        }
        if patch.email.is_some() || patch.role.is_some() {
            return Err(Error::Forbidden(
                "only admins may change an email or a role",
            ));
        }
    }
    let name = patch
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 200))
        .transpose()?;
    let email = patch.email.as_deref().map(validate::email).transpose()?;
    if let Some(current) = &patch.current_password {
        validate::password_to_check(current)?;
    }
    let password_hash = match patch.password {
        Some(p) => {
            validate::password(&p)?;
            // One's own password needs the current one: a stolen token
            // alone must not be enough to take the account over.
            if is_self(cx, id) {
                let Some(current) = patch.current_password else {
                    return Err(Error::Validation(
                        "current_password is required to change your own password".into(),
                    ));
                };
                let stored = password_hash_of(cx, id).await?;
                if !hasher.verify(cx.tenant.id, current, stored).await? {
                    return Err(Error::Forbidden("current_password is wrong"));
                }
            }
            Some(hasher.hash(cx.tenant.id, p).await?)
        }
        None => None,
    };

    let mut tx = cx.write().await?;
    let before = get(&mut tx, id).await?.ok_or(Error::NotFound)?;
    if before.role == Role::Admin
        && patch.role.is_some_and(|r| r != Role::Admin)
        && admins(&mut tx).await? <= 1
    {
        return Err(Error::Conflict("a tenant keeps at least one admin".into()));
    }
    let res = sqlx::query(
        "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email), role = COALESCE($4, role),
            password_hash = COALESCE($5, password_hash), updated_at = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(&name)
    .bind(&email)
    .bind(patch.role.map(Role::as_str))
    .bind(&password_hash)
    .bind(tenancy::clock::now())
    .execute(tx.conn())
    .await
    .map_err(Error::from);
    if let Err(e) = res {
        return Err(if e.is_unique_violation() {
            Error::Conflict("a user with this email already exists in this tenant".into())
        } else {
            e
        });
    }
    let demoted = before.role == Role::Admin && patch.role.is_some_and(|r| r != Role::Admin);
    let revoked_keys = if demoted {
        revoke_keys_of(&mut tx, id).await?
    } else {
        0
    };
    if password_hash.is_some() {
        let keep = match &cx.actor {
            Principal::User {
                session_id,
                user_id,
                ..
            } if user_id == id => Some(session_id.as_str()),
            _ => None,
        };
        auth::end_sessions(&mut tx, id, keep).await?;
    }
    let changed: Vec<&str> = [
        name.as_ref().map(|_| "name"),
        email.as_ref().map(|_| "email"),
        patch.role.map(|_| "role"),
        password_hash.as_ref().map(|_| "password"),
    ]
    .into_iter()
    .flatten()
    .collect();
    cx.audit(
        &mut tx,
        "user.updated",
        Some(("user", id)),
        Some(serde_json::json!({ "changed": changed, "revoked_api_keys": revoked_keys })),
    )
    .await?;
    let user = get(&mut tx, id).await?.ok_or(Error::NotFound)?;
    tx.commit().await?;
    // A cached token carries the user's role; a password change ended sessions.
    cx.flush_cache().await;
    Ok(user)
}

pub async fn delete(cx: &Cx, id: &str) -> Result<()> {
    cx.require(&[Role::Admin])?;
    let mut tx = cx.write().await?;
    let user = get(&mut tx, id).await?.ok_or(Error::NotFound)?;
    if user.role == Role::Admin && admins(&mut tx).await? <= 1 {
        return Err(Error::Conflict("a tenant keeps at least one admin".into()));
    }
    let revoked_keys = revoke_keys_of(&mut tx, id).await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(tx.conn())
        .await?;
    cx.audit(
        &mut tx,
        "user.deleted",
        Some(("user", id)),
        Some(serde_json::json!({ "revoked_api_keys": revoked_keys })),
    )
    .await?;
    tx.commit().await?;
    cx.flush_cache().await;
    crate::files::forget_avatar(cx, id).await;
    Ok(())
}
