//! Files: lesson content and avatars. The role rules live here; the bytes go
//! through the tenant's [`TenantStorage`], whose keys are built from the
//! lesson's or user's id once it is known to exist in this tenant.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use tenancy::storage::{Object, Stored};
use tenancy::{Kernel, MediaKind, Tenant, TenantStorage};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::{Cx, courses, users};

const STAFF: &[Role] = &[Role::Admin, Role::Instructor];
const CONTENT_KINDS: &[MediaKind] = &[MediaKind::Mp4, MediaKind::Pdf];
const AVATAR_KINDS: &[MediaKind] = &[MediaKind::Png, MediaKind::Jpeg, MediaKind::Webp];
/// The largest avatar, in bytes.
pub const AVATAR_MAX: u64 = 5 * 1024 * 1024;
/// How long a signed content link lives, at most.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);
const LINK_PURPOSE: &str = "lesson-content";

/// A signed link to a lesson's content.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContentUrl {
    /// Path and query, relative to the server the link was asked of; it needs
    /// no `Authorization`, only the tenant (by `Host` or `X-Tenant`).
    pub url: String,
    pub expires_at: String,
}

/// A file, opened for reading, and the storage to read it from.
pub struct Opened {
    pub storage: TenantStorage,
    pub object: Object,
}

fn kind_of(mime: Option<&str>, allowed: &[MediaKind]) -> Result<MediaKind> {
    let names = || {
        allowed
            .iter()
            .map(|k| k.mime())
            .collect::<Vec<_>>()
            .join(", ")
    };
    mime.and_then(MediaKind::from_mime)
        .filter(|k| allowed.contains(k))
        .ok_or_else(|| Error::UnsupportedMediaType(format!("send one of: {}", names())))
}

fn uuid(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::NotFound)
}

/// Stores a lesson's content (admin, instructor), replacing any earlier file.
pub async fn put_lesson_content<S, E>(
    cx: &Cx,
    course_id: &str,
    lesson_id: &str,
    mime: Option<&str>,
    max_len: u64,
    body: S,
) -> Result<Stored>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    cx.require(STAFF)?;
    {
        let mut tx = cx.read().await?;
        courses::visible(cx, &mut tx, course_id).await?;
        courses::lesson_in(&mut tx, course_id, lesson_id).await?;
    }
    let kind = kind_of(mime, CONTENT_KINDS)?;
    let storage = cx.kernel.storage(&cx.tenant).await?;
    let key = storage.lesson_content(uuid(lesson_id)?);
    let stored = storage.put_stream(&key, kind, max_len, body).await?;
    // Deleted while it was uploading: its file must not outlive it.
    let mut tx = cx.write().await?;
    if courses::lesson_in(&mut tx, course_id, lesson_id)
        .await
        .is_err()
    {
        drop(tx);
        storage.delete(&key).await?;
        return Err(Error::NotFound);
    }
    cx.audit(
        &mut tx,
        "lesson.content_stored",
        Some(("lesson", lesson_id)),
        Some(serde_json::json!({ "bytes": stored.len, "content_type": kind.mime() })),
    )
    .await?;
    tx.commit().await?;
    Ok(stored)
}

/// Opens a lesson's content (staff, or an enrolled learner).
pub async fn lesson_content(cx: &Cx, course_id: &str, lesson_id: &str) -> Result<Opened> {
    {
        let mut tx = cx.read().await?;
        courses::readable(cx, &mut tx, course_id).await?;
        courses::lesson_in(&mut tx, course_id, lesson_id).await?;
    }
    open_lesson(&cx.kernel, &cx.tenant, lesson_id).await
}

async fn open_lesson(kernel: &Kernel, tenant: &Tenant, lesson_id: &str) -> Result<Opened> {
    let storage = kernel.storage(tenant).await?;
    let object = storage
        .open(&storage.lesson_content(uuid(lesson_id)?))
        .await?;
    Ok(Opened { storage, object })
}

/// A signed link to a lesson's content, valid for [`LINK_TTL`] (staff, or an
/// enrolled learner: whoever may read it).
pub async fn content_url(cx: &Cx, course_id: &str, lesson_id: &str) -> Result<ContentUrl> {
    {
        let mut tx = cx.read().await?;
        courses::readable(cx, &mut tx, course_id).await?;
        courses::lesson_in(&mut tx, course_id, lesson_id).await?;
    }
    let storage = cx.kernel.storage(&cx.tenant).await?;
    let expires = tenancy::clock::unix_now() + i64::try_from(LINK_TTL.as_secs()).unwrap_or(900);
    let slug = cx.tenant.slug.to_string();
    let sig = storage.sign(LINK_PURPOSE, &[course_id, lesson_id, &slug], expires);
    let expires_at = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_secs(u64::try_from(expires).unwrap_or(0)),
    )
    .to_string();
    Ok(ContentUrl {
        // The link names its tenant itself: it opens from any page, with
        // no header and no subdomain (the signature binds the tenant's id).
        url: format!(
            "/api/v1/courses/{course_id}/lessons/{lesson_id}/content?tenant={slug}&expires={expires}&sig={sig}"
        ),
        expires_at,
    })
}

/// Whether a link's signature is `tenant`'s for these ids and expiry, and
/// the expiry is between now and [`LINK_TTL`] from now. No I/O.
fn link_holds(
    kernel: &Kernel,
    tenant: &Tenant,
    course_id: &str,
    lesson_id: &str,
    linked_tenant: &str,
    expires: &str,
    sig: &str,
) -> bool {
    let exp: i64 = match expires.parse::<i64>() {
        // One spelling only: `+5` or `05` would sign the same value.
        Ok(e) if e.to_string() == expires => e,
        _ => return false,
    };
    let now = tenancy::clock::unix_now();
    if exp < now || exp > now + i64::try_from(LINK_TTL.as_secs()).unwrap_or(900) {
        return false;
    }
    // The tenant's name as the link spells it is signed too: a link opens
    // only as it was handed out (and only for the tenant whose id signed it).
    kernel.verify_signature(
        tenant.id,
        LINK_PURPOSE,
        &[course_id, lesson_id, linked_tenant],
        exp,
        sig,
    )
}

/// The signature of a signed link in a request for `path` and `query`,
/// exactly as sent, if the request is a signed link to lesson content of
/// `tenant` that holds now: a link the tenant handed to one of its users
/// ([`content_url`]). No I/O — an HMAC with the deployment's signing key —
/// so that the edge can count such requests (a video's many range requests,
/// from a whole school behind one address) with the tenant's traffic rather
/// than as anonymous, before anything is looked up. `None` for anything
/// else, including a link spelled differently from how it was signed (a
/// parameter twice, say); the handler checks it again.
pub fn signed_link<'q>(
    kernel: &Kernel,
    tenant: &Tenant,
    path: &str,
    query: Option<&'q str>,
) -> Option<&'q str> {
    let rest = path.strip_prefix("/api/v1/courses/")?;
    let mut seg = rest.split('/');
    let (Some(course), Some("lessons"), Some(lesson), Some("content"), None) =
        (seg.next(), seg.next(), seg.next(), seg.next(), seg.next())
    else {
        return None;
    };
    let (mut linked, mut expires, mut sig) = (None, None, None);
    for pair in query?.split('&') {
        let slot = match pair.split_once('=') {
            Some(("tenant", v)) => (&mut linked, v),
            Some(("expires", v)) => (&mut expires, v),
            Some(("sig", v)) => (&mut sig, v),
            _ => continue,
        };
        if slot.0.replace(slot.1).is_some() {
            return None; // given twice: not as signed
        }
    }
    let (linked, expires, sig) = (linked?, expires?, sig?);
    link_holds(kernel, tenant, course, lesson, linked, expires, sig).then_some(sig)
}

/// Opens a lesson's content for a signed link. The signature is checked over
/// the path's ids exactly as sent, before anything is looked up; a link
/// altered, expired, or signed for another tenant → [`Error::InvalidSignature`].
#[allow(clippy::too_many_arguments)]
pub async fn signed_lesson_content(
    kernel: &Kernel,
    tenant: &Tenant,
    course_id: &str,
    lesson_id: &str,
    linked_tenant: &str,
    expires: &str,
    sig: &str,
) -> Result<Opened> {
    if !link_holds(
        kernel,
        tenant,
        course_id,
        lesson_id,
        linked_tenant,
        expires,
        sig,
    ) {
        return Err(Error::InvalidSignature);
    }
    let storage = kernel.storage(tenant).await?;
    {
        let mut tx = kernel.begin(tenant).await?;
        courses::lesson_in(&mut tx, course_id, lesson_id).await?;
    }
    let object = storage
        .open(&storage.lesson_content(uuid(lesson_id)?))
        .await?;
    Ok(Opened { storage, object })
}

/// The tenant's storage, if it ever stored a file (deleting needs no key
/// made for the occasion).
async fn stored_anything(cx: &Cx) -> Result<Option<TenantStorage>> {
    if !cx.kernel.has_storage_key(&cx.tenant).await? {
        return Ok(None);
    }
    Ok(Some(cx.kernel.storage(&cx.tenant).await?))
}

/// Removes the content files of `lessons` (after their rows are gone).
pub(crate) async fn forget_lessons(cx: &Cx, lessons: &[String]) {
    if lessons.is_empty() {
        return;
    }
    let storage = match stored_anything(cx).await {
        Ok(None) => return,
        Ok(Some(s)) => s,
        Err(e) => {
            tracing::warn!(error = %e, "lesson files left behind");
            return;
        }
    };
    for l in lessons {
        let Ok(id) = Uuid::parse_str(l) else { continue };
        if let Err(e) = storage.delete(&storage.lesson_content(id)).await {
            tracing::warn!(lesson = %l, error = %e, "lesson file left behind");
        }
    }
}

/// Stores a user's avatar (admin, or self).
pub async fn put_avatar<S, E>(cx: &Cx, user_id: &str, mime: Option<&str>, body: S) -> Result<Stored>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    if cx.actor.user_id() != Some(user_id) {
        cx.require(&[Role::Admin])?;
    }
    {
        let mut tx = cx.read().await?;
        users::get(&mut tx, user_id).await?.ok_or(Error::NotFound)?;
    }
    let kind = kind_of(mime, AVATAR_KINDS)?;
    let storage = cx.kernel.storage(&cx.tenant).await?;
    let key = storage.avatar(uuid(user_id)?);
    let stored = storage.put_stream(&key, kind, AVATAR_MAX, body).await?;
    let mut tx = cx.read().await?;
    if users::get(&mut tx, user_id).await?.is_none() {
        drop(tx);
        storage.delete(&key).await?;
        return Err(Error::NotFound);
    }
    Ok(stored)
}

/// Opens a user's avatar (any caller of the tenant).
pub async fn avatar(cx: &Cx, user_id: &str) -> Result<Opened> {
    {
        let mut tx = cx.read().await?;
        users::get(&mut tx, user_id).await?.ok_or(Error::NotFound)?;
    }
    let storage = cx.kernel.storage(&cx.tenant).await?;
    let object = storage.open(&storage.avatar(uuid(user_id)?)).await?;
    Ok(Opened { storage, object })
}

/// Removes a user's avatar (after the user is gone).
pub(crate) async fn forget_avatar(cx: &Cx, user_id: &str) {
    let Ok(id) = Uuid::parse_str(user_id) else {
        return;
    };
    let res = match stored_anything(cx).await {
        Ok(None) => Ok(()),
        Ok(Some(s)) => s.delete(&s.avatar(id)).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        tracing::warn!(user = %user_id, error = %e, "avatar left behind");
    }
}
