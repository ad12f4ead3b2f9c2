//! Who takes which course.

use serde::{Deserialize, Serialize};
use tenancy::TenantTx;
use utoipa::ToSchema;

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{Cx, courses, users};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Enrollment {
    pub course_id: String,
    pub user_id: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollment {
    pub user_id: String,
}

pub(crate) async fn is_enrolled(tx: &mut TenantTx, course_id: &str, user_id: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM enrollments WHERE course_id = $1 AND user_id = $2",
    )
    .bind(course_id)
    .bind(user_id)
    .fetch_one(tx.conn())
    .await?;
    Ok(n > 0)
}

/// Enrolls a user. Staff may enroll anyone; a learner only themself, in a
/// published course.
pub async fn enroll(cx: &Cx, course_id: &str, req: NewEnrollment) -> Result<Enrollment> {
    if !cx.is_staff() && cx.actor.user_id() != Some(req.user_id.as_str()) {
        return Err(Error::Forbidden("learners may enroll only themselves"));
    }
    let mut tx = cx.write().await?;
    courses::visible(cx, &mut tx, course_id).await?;
    let user = users::get(&mut tx, &req.user_id)
        .await?
        .ok_or(Error::NotFound)?;
    let e = Enrollment {
        course_id: course_id.to_owned(),
        user_id: user.id,
        created_at: tenancy::clock::now(),
    };
    let res =
        sqlx::query("INSERT INTO enrollments (course_id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(&e.course_id)
            .bind(&e.user_id)
            .bind(&e.created_at)
            .execute(tx.conn())
            .await
            .map_err(Error::from);
    match res {
        Err(err) if err.is_unique_violation() => {
            return Err(Error::Conflict("the user is already enrolled".into()));
        }
        other => other?,
    };
    cx.audit(
        &mut tx,
        "enrollment.created",
        Some(("user", &e.user_id)),
        Some(serde_json::json!({ "course_id": course_id })),
    )
    .await?;
    tx.commit().await?;
    Ok(e)
}

pub async fn list(cx: &Cx, course_id: &str, page: &PageRequest) -> Result<Page<Enrollment>> {
    cx.require(&[Role::Admin, Role::Instructor])?;
    let mut tx = cx.read().await?;
    courses::visible(cx, &mut tx, course_id).await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT course_id, user_id, created_at FROM enrollments
         WHERE course_id = $1 AND ($2 IS NULL OR user_id > $2) ORDER BY user_id LIMIT $3",
    )
    .bind(course_id)
    .bind(&page.after)
    .bind(page.fetch())
    .fetch_all(tx.conn())
    .await?;
    let items = rows
        .into_iter()
        .map(|(course_id, user_id, created_at)| Enrollment {
            course_id,
            user_id,
            created_at,
        })
        .collect();
    Ok(Page::from_rows(items, page, |e| e.user_id.clone()))
}

pub async fn unenroll(cx: &Cx, course_id: &str, user_id: &str) -> Result<()> {
    cx.require(&[Role::Admin, Role::Instructor])?;
    let mut tx = cx.write().await?;
    let done = sqlx::query("DELETE FROM enrollments WHERE course_id = $1 AND user_id = $2")
        .bind(course_id)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(
        &mut tx,
        "enrollment.deleted",
        Some(("user", user_id)),
        Some(serde_json::json!({ "course_id": course_id })),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
