//! Progress through a course: a resume position and completion per lesson,
//! rolled up per course.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::{Cx, courses, enrollments};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressUpdate {
    /// Resume position in seconds.
    pub position_s: Option<f64>,
    /// Once true, stays true.
    pub completed: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LessonProgress {
    pub lesson_id: String,
    pub completed: bool,
    pub position_s: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CourseProgress {
    pub completed: i64,
    pub total: i64,
    /// 0 to 100, rounded down.
    pub percent: i64,
    pub lessons: Vec<LessonProgress>,
}

/// Records the caller's progress on a lesson. Idempotent; completion never
/// goes back to false.
pub async fn record(cx: &Cx, course_id: &str, lesson_id: &str, req: ProgressUpdate) -> Result<()> {
    let user_id = cx.user_id()?;
    if let Some(p) = req.position_s
        && !(p.is_finite() && (0.0..=10_000_000.0).contains(&p))
    {
        return Err(Error::Validation(
            "position_s must be between 0 and 10000000".into(),
        ));
    }
    let mut tx = cx.write().await?;
    courses::visible(cx, &mut tx, course_id).await?;
    courses::lesson_in(&mut tx, course_id, lesson_id).await?;
    if !enrollments::is_enrolled(&mut tx, course_id, user_id).await? {
        return Err(Error::Forbidden("enroll in the course to record progress"));
    }
    let now = tenancy::clock::now();
    let completed = req.completed.unwrap_or(false);
    // The position is always bound as a number, with a flag for "not sent":
    // sqlx 0.8's Any driver binds a NULL f64 as a 4-byte float on PostgreSQL,
    // which poisons the connection's prepared statement for later values.
    sqlx::query(
        "INSERT INTO progress (user_id, lesson_id, course_id, position_s, completed, completed_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 THEN $6 END, $6)
         ON CONFLICT (user_id, lesson_id) DO UPDATE SET
            position_s = CASE WHEN $7 THEN excluded.position_s ELSE progress.position_s END,
            completed = progress.completed OR excluded.completed,
            completed_at = COALESCE(progress.completed_at, excluded.completed_at),
            updated_at = excluded.updated_at",
    )
    .bind(user_id)
    .bind(lesson_id)
    .bind(course_id)
    .bind(req.position_s.unwrap_or(0.0))
    .bind(completed)
    .bind(&now)
    .bind(req.position_s.is_some())
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A user's progress through a course: their own, or (staff) anyone's.
pub async fn course(cx: &Cx, course_id: &str, user_id: Option<&str>) -> Result<CourseProgress> {
    let own = cx.actor.user_id();
    let user_id = match user_id {
        Some(u) if Some(u) != own => {
            if !cx.is_staff() {
                return Err(Error::Forbidden(
                    "only staff may see another user's progress",
                ));
            }
            u
        }
        _ => cx.user_id()?,
    };
    let mut tx = cx.read().await?;
    courses::visible(cx, &mut tx, course_id).await?;
    // Staff naming a user who is not in this tenant: not found, as for any id.
    if crate::users::get(&mut tx, user_id).await?.is_none() {
        return Err(Error::NotFound);
    }
    if !cx.is_staff() && !enrollments::is_enrolled(&mut tx, course_id, user_id).await? {
        return Err(Error::Forbidden("enroll in the course to track progress"));
    }
    let rows = sqlx::query(
        "SELECT l.id, p.completed, p.position_s FROM lessons l
         LEFT JOIN progress p ON p.lesson_id = l.id AND p.user_id = $2
         WHERE l.course_id = $1 ORDER BY l.position, l.id",
    )
    .bind(course_id)
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let lessons = rows
        .iter()
        .map(|r| {
            Ok(LessonProgress {
                lesson_id: crate::col(r, "id")?,
                completed: crate::col_bool(r, "completed")?.unwrap_or(false),
                position_s: crate::col::<Option<f64>>(r, "position_s")?.unwrap_or(0.0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let total = lessons.len() as i64;
    let completed = lessons.iter().filter(|l| l.completed).count() as i64;
    let percent = if total == 0 {
        0
    } else {
        completed * 100 / total
    };
    Ok(CourseProgress {
        completed,
        total,
        percent,
        lessons,
    })
}
