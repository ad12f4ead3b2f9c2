//! Courses and their lessons. Learners see published courses only; lessons
//! are for enrolled learners and staff.

use serde::{Deserialize, Serialize};
use tenancy::TenantTx;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{Cx, col, col_bool, enrollments, validate};
use tenancy::dataplane::DbRow;

const STAFF: &[Role] = &[Role::Admin, Role::Instructor];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Course {
    pub id: String,
    pub title: String,
    pub description: String,
    pub published: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCourse {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub published: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoursePatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub published: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Lesson {
    pub id: String,
    pub course_id: String,
    pub title: String,
    /// Lessons are listed by position, then id.
    pub position: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLesson {
    pub title: String,
    /// Defaults to after the last lesson.
    #[serde(default, deserialize_with = "validate::whole_number")]
    pub position: Option<i64>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LessonPatch {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "validate::whole_number")]
    pub position: Option<i64>,
}

const COURSE_COLUMNS: &str = "id, title, description, published, created_at, updated_at";
const LESSON_COLUMNS: &str = "id, course_id, title, position, created_at, updated_at";
const MAX_POSITION: i64 = 1_000_000;

fn decode_course(r: &DbRow) -> Result<Course> {
    Ok(Course {
        id: col(r, "id")?,
        title: col(r, "title")?,
        description: col(r, "description")?,
        published: col_bool(r, "published")?.unwrap_or(false),
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

fn decode_lesson(r: &DbRow) -> Result<Lesson> {
    Ok(Lesson {
        id: col(r, "id")?,
        course_id: col(r, "course_id")?,
        title: col(r, "title")?,
        position: col(r, "position")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

fn position(p: i64) -> Result<i64> {
    if (0..=MAX_POSITION).contains(&p) {
        Ok(p)
    } else {
        Err(Error::Validation(format!(
            "position must be between 0 and {MAX_POSITION}"
        )))
    }
}

/// The course, if it exists and the caller may see it (learners: published only).
pub(crate) async fn visible(cx: &Cx, tx: &mut TenantTx, id: &str) -> Result<Course> {
    let sql = format!("SELECT {COURSE_COLUMNS} FROM courses WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(tx.conn()).await?;
    let course = row
        .as_ref()
        .map(decode_course)
        .transpose()?
        .ok_or(Error::NotFound)?;
    if !course.published && !cx.is_staff() {
        return Err(Error::NotFound);
    }
    Ok(course)
}

/// The course, visible, and the caller may read its lessons (staff, or enrolled).
pub(crate) async fn readable(cx: &Cx, tx: &mut TenantTx, id: &str) -> Result<Course> {
    let course = visible(cx, tx, id).await?;
    if !cx.is_staff() {
        let enrolled = match cx.actor.user_id() {
            Some(user) => enrollments::is_enrolled(tx, id, user).await?,
            None => false,
        };
        if !enrolled {
            return Err(Error::Forbidden("enroll in the course to see its lessons"));
        }
    }
    Ok(course)
}

/// How long a cached course list may live (every course write flushes it sooner).
const LIST_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// A page of courses: cached per tenant (staff and learners see different
/// lists), dropped by every course write.
pub async fn list(cx: &Cx, page: &PageRequest) -> Result<Page<Course>> {
    let key = format!(
        "courses:{}:{}:{}",
        if cx.is_staff() { "staff" } else { "learner" },
        page.limit,
        page.after.as_deref().unwrap_or("-")
    );
    cx.kernel
        .cache(&cx.tenant)
        .get_or_load(&key, LIST_TTL, async || load_list(cx, page).await)
        .await
}

async fn load_list(cx: &Cx, page: &PageRequest) -> Result<Page<Course>> {
    let mut tx = cx.read().await?;
    let sql = format!(
        "SELECT {COURSE_COLUMNS} FROM courses WHERE ($1 IS NULL OR id > $1) AND (published = $2 OR $3) ORDER BY id LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(&page.after)
        .bind(true)
        .bind(cx.is_staff())
        .bind(page.fetch())
        .fetch_all(tx.conn())
        .await?;
    let courses = rows.iter().map(decode_course).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(courses, page, |c| c.id.clone()))
}

pub async fn get(cx: &Cx, id: &str) -> Result<Course> {
    let mut tx = cx.read().await?;
    visible(cx, &mut tx, id).await
}

pub async fn create(cx: &Cx, req: NewCourse) -> Result<Course> {
    cx.require(STAFF)?;
    let now = tenancy::clock::now();
    let course = Course {
        id: Uuid::now_v7().to_string(),
        title: validate::text("title", &req.title, 200)?,
        description: validate::long_text("description", &req.description, 20_000)?,
        published: req.published,
        created_at: now.clone(),
        updated_at: now,
    };
    let mut tx = cx.write().await?;
    sqlx::query(
        "INSERT INTO courses (id, title, description, published, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&course.id)
    .bind(&course.title)
    .bind(&course.description)
    .bind(course.published)
    .bind(&course.created_at)
    .execute(tx.conn())
    .await?;
    cx.audit(
        &mut tx,
        "course.created",
        Some(("course", &course.id)),
        None,
    )
    .await?;
    tx.commit().await?;
    cx.flush_cache().await;
    Ok(course)
}

pub async fn update(cx: &Cx, id: &str, patch: CoursePatch) -> Result<Course> {
    cx.require(STAFF)?;
    let title = patch
        .title
        .as_deref()
        .map(|t| validate::text("title", t, 200))
        .transpose()?;
    let description = patch
        .description
        .as_deref()
        .map(|d| validate::long_text("description", d, 20_000))
        .transpose()?;
    let mut tx = cx.write().await?;
    let done = sqlx::query(
        "UPDATE courses SET title = COALESCE($2, title), description = COALESCE($3, description),
            published = COALESCE($4, published), updated_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(&title)
    .bind(&description)
    .bind(patch.published)
    .bind(tenancy::clock::now())
    .execute(tx.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(&mut tx, "course.updated", Some(("course", id)), None)
        .await?;
    let course = visible(cx, &mut tx, id).await?;
    tx.commit().await?;
    cx.flush_cache().await;
    Ok(course)
}

pub async fn delete(cx: &Cx, id: &str) -> Result<()> {
    cx.require(STAFF)?;
    let mut tx = cx.write().await?;
    // Its lessons go with it (ON DELETE CASCADE), and so do their files.
    let lessons: Vec<String> = sqlx::query_scalar("SELECT id FROM lessons WHERE course_id = $1")
        .bind(id)
        .fetch_all(tx.conn())
        .await?;
    let done = sqlx::query("DELETE FROM courses WHERE id = $1")
        .bind(id)
        .execute(tx.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(&mut tx, "course.deleted", Some(("course", id)), None)
        .await?;
    tx.commit().await?;
    cx.flush_cache().await;
    crate::files::forget_lessons(cx, &lessons).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Lessons

pub async fn list_lessons(cx: &Cx, course_id: &str, page: &PageRequest) -> Result<Page<Lesson>> {
    let mut tx = cx.read().await?;
    readable(cx, &mut tx, course_id).await?;
    let sql = format!(
        "SELECT {LESSON_COLUMNS} FROM lessons WHERE course_id = $1
           AND ($2 IS NULL OR (position, id) > (SELECT position, id FROM lessons WHERE id = $2 AND course_id = $1))
         ORDER BY position, id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(course_id)
        .bind(&page.after)
        .bind(page.fetch())
        .fetch_all(tx.conn())
        .await?;
    let lessons = rows.iter().map(decode_lesson).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(lessons, page, |l| l.id.clone()))
}

pub(crate) async fn lesson_in(
    tx: &mut TenantTx,
    course_id: &str,
    lesson_id: &str,
) -> Result<Lesson> {
    let sql = format!("SELECT {LESSON_COLUMNS} FROM lessons WHERE id = $1 AND course_id = $2");
    let row = sqlx::query(&sql)
        .bind(lesson_id)
        .bind(course_id)
        .fetch_optional(tx.conn())
        .await?;
    row.as_ref()
        .map(decode_lesson)
        .transpose()?
        .ok_or(Error::NotFound)
}

pub async fn get_lesson(cx: &Cx, course_id: &str, lesson_id: &str) -> Result<Lesson> {
    let mut tx = cx.read().await?;
    readable(cx, &mut tx, course_id).await?;
    lesson_in(&mut tx, course_id, lesson_id).await
}

pub async fn create_lesson(cx: &Cx, course_id: &str, req: NewLesson) -> Result<Lesson> {
    cx.require(STAFF)?;
    let title = validate::text("title", &req.title, 200)?;
    let requested = req.position.map(position).transpose()?;
    let mut tx = cx.write().await?;
    visible(cx, &mut tx, course_id).await?;
    let pos = match requested {
        Some(p) => p,
        None => {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT MAX(position) FROM lessons WHERE course_id = $1")
                    .bind(course_id)
                    .fetch_one(tx.conn())
                    .await?;
            // After the last, or with it at the end of the range: ties are
            // ordered by id (UUIDv7, in creation order), so it still
            // comes last.
            position(last.map_or(0, |p| (p + 1).min(MAX_POSITION)))?
        }
    };
    let now = tenancy::clock::now();
    let lesson = Lesson {
        id: Uuid::now_v7().to_string(),
        course_id: course_id.to_owned(),
        title,
        position: pos,
        created_at: now.clone(),
        updated_at: now,
    };
    sqlx::query(
        "INSERT INTO lessons (id, course_id, title, position, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&lesson.id)
    .bind(&lesson.course_id)
    .bind(&lesson.title)
    .bind(lesson.position)
    .bind(&lesson.created_at)
    .execute(tx.conn())
    .await?;
    cx.audit(
        &mut tx,
        "lesson.created",
        Some(("lesson", &lesson.id)),
        Some(serde_json::json!({ "course_id": course_id })),
    )
    .await?;
    tx.commit().await?;
    Ok(lesson)
}

pub async fn update_lesson(
    cx: &Cx,
    course_id: &str,
    lesson_id: &str,
    patch: LessonPatch,
) -> Result<Lesson> {
    cx.require(STAFF)?;
    let title = patch
        .title
        .as_deref()
        .map(|t| validate::text("title", t, 200))
        .transpose()?;
    let pos = patch.position.map(position).transpose()?;
    let mut tx = cx.write().await?;
    let done = sqlx::query(
        "UPDATE lessons SET title = COALESCE($3, title), position = COALESCE($4, position), updated_at = $5
         WHERE id = $1 AND course_id = $2",
    )
    .bind(lesson_id)
    .bind(course_id)
    .bind(&title)
    .bind(pos)
    .bind(tenancy::clock::now())
    .execute(tx.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(&mut tx, "lesson.updated", Some(("lesson", lesson_id)), None)
        .await?;
    let lesson = lesson_in(&mut tx, course_id, lesson_id).await?;
    tx.commit().await?;
    Ok(lesson)
}

pub async fn delete_lesson(cx: &Cx, course_id: &str, lesson_id: &str) -> Result<()> {
    cx.require(STAFF)?;
    let mut tx = cx.write().await?;
    let done = sqlx::query("DELETE FROM lessons WHERE id = $1 AND course_id = $2")
        .bind(lesson_id)
        .bind(course_id)
        .execute(tx.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    cx.audit(&mut tx, "lesson.deleted", Some(("lesson", lesson_id)), None)
        .await?;
    tx.commit().await?;
    crate::files::forget_lessons(cx, &[lesson_id.to_owned()]).await;
    Ok(())
}
