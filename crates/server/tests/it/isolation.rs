//! Hard tenant isolation, through the public API only: another tenant's ids
//! name nothing, another tenant's credentials open nothing, no list shows
//! another tenant's rows, and the same email lives apart in two tenants.

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::*;

// ---------------------------------------------------------------------------
// Fixtures

/// One tenant filled with recognisable rows of every kind.
struct World {
    t: TestTenant,
    learner: Session,
    instructor: Session,
    /// Published; `learner` is enrolled and has progress on both lessons.
    course: String,
    /// Unpublished.
    draft: String,
    lesson: String,
    lesson2: String,
    /// An admin-role API key: its id, and the key itself.
    key_id: String,
    key: String,
}

impl World {
    /// Every id of this tenant's rows (and the tenant's own id).
    fn ids(&self) -> Vec<String> {
        vec![
            self.t.id.clone(),
            self.t.admin.user_id.clone(),
            self.learner.user_id.clone(),
            self.instructor.user_id.clone(),
            self.course.clone(),
            self.draft.clone(),
            self.lesson.clone(),
            self.lesson2.clone(),
            self.key_id.clone(),
        ]
    }

    /// The API key, as a session of this tenant.
    fn key_session(&self) -> Session {
        as_key(&self.t, &self.key)
    }
}

fn as_key(t: &TestTenant, key: &str) -> Session {
    Session {
        tenant: t.slug.clone(),
        token: key.to_owned(),
        user_id: String::new(),
        email: String::new(),
    }
}

/// `s`'s token presented under another tenant's `X-Tenant`.
fn under(s: &Session, other: &TestTenant) -> Session {
    Session {
        tenant: other.slug.clone(),
        ..s.clone()
    }
}

async fn populate(app: &TestApp, prefix: &str) -> World {
    let t = app.tenant(prefix).await;
    let learner = app.user(&t, "learner").await;
    let instructor = app.user(&t, "instructor").await;
    let course = app
        .course(&t.admin, &format!("{prefix} course"), true)
        .await;
    let draft = app
        .course(&instructor, &format!("{prefix} draft"), false)
        .await;
    let lesson = app
        .lesson(&t.admin, &course, &format!("{prefix} one"))
        .await;
    let lesson2 = app
        .lesson(&instructor, &course, &format!("{prefix} two"))
        .await;
    app.enroll(&t.admin, &course, &learner.user_id).await;
    for (l, body) in [
        (&lesson, json!({ "position_s": 42.5, "completed": true })),
        (&lesson2, json!({ "position_s": 7.0 })),
    ] {
        let res = app
            .put(
                &learner,
                &format!("/api/v1/courses/{course}/lessons/{l}/progress"),
                body,
            )
            .send()
            .await
            .expect("progress");
        assert_eq!(res.status().as_u16(), 204);
    }
    let res = app
        .post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": format!("{prefix} key"), "role": "admin" }),
        )
        .send()
        .await
        .expect("api key");
    let created = json_ok(res, 201).await;
    World {
        key_id: created["id"].as_str().expect("key id").to_owned(),
        key: created["key"].as_str().expect("key").to_owned(),
        t,
        learner,
        instructor,
        course,
        draft,
        lesson,
        lesson2,
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// One request of a table: method, path, optional JSON body.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

/// Constructors for [`Call`]s, relative to `/api/v1/`.
mod r {
    use reqwest::Method;
    use serde_json::Value;

    use super::Call;

    fn call(method: Method, path: impl std::fmt::Display, body: Option<Value>) -> Call {
        Call {
            method,
            path: format!("/api/v1/{path}"),
            body,
        }
    }
    pub fn get(path: impl std::fmt::Display) -> Call {
        call(Method::GET, path, None)
    }
    pub fn delete(path: impl std::fmt::Display) -> Call {
        call(Method::DELETE, path, None)
    }
    pub fn post(path: impl std::fmt::Display, body: Value) -> Call {
        call(Method::POST, path, Some(body))
    }
    pub fn patch(path: impl std::fmt::Display, body: Value) -> Call {
        call(Method::PATCH, path, Some(body))
    }
    pub fn put(path: impl std::fmt::Display, body: Value) -> Call {
        call(Method::PUT, path, Some(body))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

async fn send(app: &TestApp, s: &Session, c: &Call) -> Response {
    let mut req = app.req(c.method.clone(), s, &c.path);
    if let Some(body) = &c.body {
        req = req.json(body);
    }
    req.send().await.expect("send")
}

/// `assert_problem`, saying which call failed.
async fn expect_problem(
    res: Response,
    status: u16,
    code: &str,
    ctx: &dyn std::fmt::Display,
) -> Value {
    if res.status().as_u16() != status {
        let got = res.status();
        panic!(
            "{ctx}: expected {status} {code}, got {got}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    assert_problem(res, status, code).await
}

/// A problem body without its per-request id, for comparing answers.
fn sans_request_id(mut problem: Value) -> Value {
    problem
        .as_object_mut()
        .expect("problem object")
        .remove("request_id");
    problem
}

/// Every item of a list, walking `next_cursor` `limit` at a time, and
/// checking the `Link` header agrees with the cursor.
async fn walk(app: &TestApp, s: &Session, path: &str, limit: u32) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let url = match &after {
            Some(a) => format!("{path}?limit={limit}&after={a}"),
            None => format!("{path}?limit={limit}"),
        };
        let res = app.get(s, &url).send().await.expect("list");
        let link = res
            .headers()
            .get("link")
            .map(|v| v.to_str().expect("link header").to_owned());
        let page = json_ok(res, 200).await;
        let batch = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: {page}"));
        assert!(
            batch.len() <= limit as usize,
            "{url}: page larger than its limit"
        );
        items.extend(batch.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.unwrap_or_else(|| panic!("{url}: next_cursor without Link"));
                assert!(link.contains(&format!("after={cursor}")), "{url}: {link}");
                after = Some(cursor.to_owned());
            }
            None => {
                assert!(link.is_none(), "{url}: Link on the last page");
                return items;
            }
        }
    }
    panic!("{path}: pagination never ends")
}

/// The values of `field` in `items`.
fn field(items: &[Value], name: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {i}"))
                .to_owned()
        })
        .collect()
}

/// Panics if any of `foreign` appears anywhere in `items`.
fn assert_none_of(items: &[Value], foreign: &[String], ctx: &str) {
    for item in items {
        let text = item.to_string();
        for id in foreign {
            assert!(
                !text.contains(id.as_str()),
                "{ctx}: another tenant's id {id} in {item}"
            );
        }
    }
}

async fn get_json(app: &TestApp, s: &Session, path: &str) -> Value {
    json_ok(app.get(s, path).send().await.expect("get"), 200).await
}

/// Everything a tenant holds, read through its own sessions. Two snapshots
/// are equal only if nothing in the tenant changed, and taking one proves
/// each object still exists and each credential still works.
async fn snapshot(app: &TestApp, w: &World) -> Value {
    let admin = &w.t.admin;
    let course = &w.course;
    json!({
        "users": walk(app, admin, "/api/v1/users", 200).await,
        "admin": get_json(app, admin, &format!("/api/v1/users/{}", admin.user_id)).await,
        "learner": get_json(app, admin, &format!("/api/v1/users/{}", w.learner.user_id)).await,
        "instructor": get_json(app, admin, &format!("/api/v1/users/{}", w.instructor.user_id)).await,
        "courses": walk(app, admin, "/api/v1/courses", 200).await,
        "course": get_json(app, admin, &format!("/api/v1/courses/{course}")).await,
        "draft": get_json(app, admin, &format!("/api/v1/courses/{}", w.draft)).await,
        "draft_lessons": walk(app, admin, &format!("/api/v1/courses/{}/lessons", w.draft), 200).await,
        "lessons": walk(app, admin, &format!("/api/v1/courses/{course}/lessons"), 200).await,
        "lesson": get_json(app, admin, &format!("/api/v1/courses/{course}/lessons/{}", w.lesson)).await,
        "lesson2": get_json(app, admin, &format!("/api/v1/courses/{course}/lessons/{}", w.lesson2)).await,
        "enrollments": walk(app, admin, &format!("/api/v1/courses/{course}/enrollments"), 200).await,
        "progress": get_json(app, admin, &format!("/api/v1/courses/{course}/progress?user_id={}", w.learner.user_id)).await,
        "own_progress": get_json(app, &w.learner, &format!("/api/v1/courses/{course}/progress")).await,
        "learner_me": get_json(app, &w.learner, "/api/v1/me").await,
        "instructor_me": get_json(app, &w.instructor, "/api/v1/me").await,
        "api_keys": walk(app, admin, "/api/v1/api-keys", 200).await,
        "key_courses": walk(app, &w.key_session(), "/api/v1/courses", 200).await,
    })
}

async fn audit_log(app: &TestApp, w: &World) -> Vec<Value> {
    walk(app, &w.t.admin, "/api/v1/audit-events", 200).await
}

const CROSS_TENANT_TOKENS: &str = r#"campus_security_events_total{kind="cross_tenant_token"}"#;

// ---------------------------------------------------------------------------
// 1. Another tenant's ids name nothing.

/// Every id-taking tenant route, aimed (as a caller of `a`) at `b`'s objects,
/// or at `a`'s objects mixed with `b`'s.
fn foreign_calls(a: &World, b: &World) -> Vec<Call> {
    let (bc, bl, bu) = (&b.course, &b.lesson, &b.learner.user_id);
    let (bi, ba, bd) = (&b.instructor.user_id, &b.t.admin.user_id, &b.draft);
    let (ac, al, ai) = (&a.course, &a.lesson, &a.instructor.user_id);
    let pwned = json!({ "title": "pwned" });
    vec![
        // users
        r::get(format!("users/{bu}")),
        r::get(format!("users/{ba}")),
        r::patch(
            format!("users/{bu}"),
            json!({ "name": "pwned", "role": "admin" }),
        ),
        r::patch(
            format!("users/{ba}"),
            json!({ "password": "pwned password" }),
        ),
        r::patch(format!("users/{bi}"), json!({ "email": "pwned@evil.test" })),
        r::delete(format!("users/{bu}")),
        r::delete(format!("users/{bi}")),
        // courses
        r::get(format!("courses/{bc}")),
        r::get(format!("courses/{bd}")),
        r::patch(format!("courses/{bc}"), pwned.clone()),
        r::patch(format!("courses/{bd}"), json!({ "published": true })),
        r::delete(format!("courses/{bc}")),
        r::delete(format!("courses/{bd}")),
        // lessons
        r::get(format!("courses/{bc}/lessons")),
        r::post(format!("courses/{bc}/lessons"), pwned.clone()),
        r::get(format!("courses/{bc}/lessons/{bl}")),
        r::patch(
            format!("courses/{bc}/lessons/{bl}"),
            json!({ "position": 9 }),
        ),
        r::delete(format!("courses/{bc}/lessons/{bl}")),
        // ... an own course with a foreign lesson, and the other way round
        r::get(format!("courses/{ac}/lessons/{bl}")),
        r::patch(format!("courses/{ac}/lessons/{bl}"), pwned),
        r::delete(format!("courses/{ac}/lessons/{bl}")),
        r::get(format!("courses/{bc}/lessons/{al}")),
        // enrollments
        r::post(
            format!("courses/{bc}/enrollments"),
            json!({ "user_id": bi }),
        ),
        r::post(
            format!("courses/{bc}/enrollments"),
            json!({ "user_id": ai }),
        ),
        r::post(
            format!("courses/{ac}/enrollments"),
            json!({ "user_id": bu }),
        ),
        r::post(
            format!("courses/{ac}/enrollments"),
            json!({ "user_id": bi }),
        ),
        r::get(format!("courses/{bc}/enrollments")),
        r::delete(format!("courses/{bc}/enrollments/{bu}")),
        r::delete(format!("courses/{ac}/enrollments/{bu}")),
        // progress
        r::put(
            format!("courses/{bc}/lessons/{bl}/progress"),
            json!({ "position_s": 1.0 }),
        ),
        r::put(
            format!("courses/{ac}/lessons/{bl}/progress"),
            json!({ "completed": true }),
        ),
        r::get(format!("courses/{bc}/progress")),
        r::get(format!("courses/{bc}/progress?user_id={bu}")),
        // api keys
        r::delete(format!("api-keys/{}", b.key_id)),
    ]
}

#[tokio::test]
async fn another_tenants_ids_answer_404_and_change_nothing() {
    let app = spawn_app().await;
    let a = populate(&app, "iso-a").await;
    let b = populate(&app, "iso-b").await;
    let before = snapshot(&app, &b).await;
    let audit_before = audit_log(&app, &b).await;

    // The answer for an id that exists nowhere: a foreign id must get exactly it.
    let nowhere = format!("/api/v1/courses/{}", uuid::Uuid::now_v7());
    let res = app.get(&a.t.admin, &nowhere).send().await.expect("get");
    let baseline = sans_request_id(assert_problem(res, 404, "not_found").await);

    let calls = foreign_calls(&a, &b);
    // A's admin may do all of these in A; its learner is enrolled in A's course
    // and may record progress there and read its own.
    let learner_calls: Vec<Call> = calls
        .iter()
        .filter(|c| c.path.contains("/progress") && !c.path.contains("user_id="))
        .cloned()
        .collect();
    assert_eq!(learner_calls.len(), 3);
    for (who, calls) in [(&a.t.admin, &calls), (&a.learner, &learner_calls)] {
        for c in calls {
            let ctx = format!("{c} as {}", who.email);
            let problem = expect_problem(send(&app, who, c).await, 404, "not_found", &ctx).await;
            assert_eq!(
                sans_request_id(problem),
                baseline,
                "{ctx}: unlike an id that exists nowhere"
            );
        }
    }

    // B, read through its own sessions, is exactly as it was: every user,
    // course, lesson, enrollment, progress row and key is there, unchanged,
    // and nothing was recorded in its audit log.
    assert_eq!(snapshot(&app, &b).await, before);
    assert_eq!(audit_log(&app, &b).await, audit_before);
    // Spelled out for the deletes and the enrollment writes.
    let enrolled = field(
        before["enrollments"].as_array().expect("enrollments"),
        "user_id",
    );
    assert_eq!(enrolled, vec![b.learner.user_id.clone()]);
    assert_eq!(before["progress"]["completed"], 1);
    assert_eq!(before["course"]["title"], "iso-b course");
    assert_eq!(before["draft"]["published"], false);
    assert_eq!(before["learner"]["role"], "learner");
    assert_eq!(before["lessons"].as_array().expect("lessons").len(), 2);
    assert!(before["api_keys"][0]["revoked_at"].is_null());

    // The reads of the table succeed in B itself, and so do a write and a
    // delete, so the 404s above were not merely malformed requests.
    for c in foreign_calls(&b, &b)
        .iter()
        .filter(|c| c.method == Method::GET)
    {
        let res = send(&app, &b.t.admin, c).await;
        assert!(
            res.status().is_success(),
            "{c} in B itself: {}",
            res.status()
        );
    }
    let res = app
        .patch(
            &b.t.admin,
            &format!("/api/v1/courses/{}", b.course),
            json!({ "title": "renamed" }),
        )
        .send()
        .await
        .expect("patch");
    assert_eq!(json_ok(res, 200).await["title"], "renamed");
    let res = app
        .delete(
            &b.t.admin,
            &format!("/api/v1/users/{}", b.instructor.user_id),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
}

// ---------------------------------------------------------------------------
// 2. Another tenant's credentials open nothing.

/// Every authenticated tenant route, aimed at `w`'s real objects, so that a
/// credential accepted by mistake would visibly succeed.
fn every_route(w: &World) -> Vec<Call> {
    let (c, l, u) = (&w.course, &w.lesson, &w.learner.user_id);
    let (i, l2, d, k) = (&w.instructor.user_id, &w.lesson2, &w.draft, &w.key_id);
    let pwned = json!({ "title": "pwned" });
    let new_user =
        json!({ "name": "X", "email": "x@evil.test", "role": "admin", "password": PASSWORD });
    vec![
        r::get("me"),
        r::get("users"),
        r::post("users", new_user),
        r::get(format!("users/{u}")),
        r::patch(format!("users/{u}"), json!({ "name": "pwned" })),
        r::delete(format!("users/{i}")),
        r::get("courses"),
        r::post("courses", pwned.clone()),
        r::get(format!("courses/{c}")),
        r::patch(format!("courses/{c}"), pwned.clone()),
        r::delete(format!("courses/{d}")),
        r::get(format!("courses/{c}/lessons")),
        r::post(format!("courses/{c}/lessons"), pwned.clone()),
        r::get(format!("courses/{c}/lessons/{l}")),
        r::patch(format!("courses/{c}/lessons/{l}"), pwned),
        r::delete(format!("courses/{c}/lessons/{l2}")),
        r::post(format!("courses/{c}/enrollments"), json!({ "user_id": i })),
        r::get(format!("courses/{c}/enrollments")),
        r::delete(format!("courses/{c}/enrollments/{u}")),
        r::put(
            format!("courses/{c}/lessons/{l}/progress"),
            json!({ "position_s": 1.0 }),
        ),
        r::get(format!("courses/{c}/progress")),
        r::get(format!("courses/{c}/progress?user_id={u}")),
        r::get("audit-events"),
        r::post("api-keys", json!({ "name": "pwned", "role": "admin" })),
        r::get("api-keys"),
        r::delete(format!("api-keys/{k}")),
        r::post("auth/logout", json!({})),
    ]
}

#[tokio::test]
async fn a_token_or_key_under_another_tenants_header_is_unauthorized_everywhere() {
    // Refused tokens are unauthenticated traffic, limited per address: this
    // test sends a few hundred from one, and is about answers, not limits.
    let app = spawn_app_with(|_, s| lift_anonymous_limits(s)).await;
    let a = populate(&app, "tok-a").await;
    let b = populate(&app, "tok-b").await;
    let before = snapshot(&app, &b).await;
    let a_before = snapshot(&app, &a).await;
    let events_before = app.metric(CROSS_TENANT_TOKENS).await;

    let routes = every_route(&b);
    // A's admin token, A's learner token and A's admin-role API key, each
    // presented with B's X-Tenant.
    let forged = [
        under(&a.t.admin, &b.t),
        under(&a.learner, &b.t),
        under(&a.key_session(), &b.t),
    ];
    for s in &forged {
        for c in &routes {
            let ctx = format!("{c} with a token of {} under {}", a.t.slug, b.t.slug);
            expect_problem(send(&app, s, c).await, 401, "unauthorized", &ctx).await;
        }
    }

    // Each attempt is counted as a security event (the counter is process-wide
    // and other tests only add to it).
    let events_after = app.metric(CROSS_TENANT_TOKENS).await;
    let attempts = (forged.len() * routes.len()) as f64;
    assert!(
        events_after - events_before >= attempts,
        "cross-tenant token events went from {events_before} to {events_after}, expected at least {attempts} more"
    );

    // Nothing changed in B; and in A, the logouts presented under B's header
    // ended nothing: A's tokens and key all still work (the snapshot uses them).
    assert_eq!(snapshot(&app, &b).await, before);
    assert_eq!(snapshot(&app, &a).await, a_before);
    let me = get_json(&app, &a.t.admin, "/api/v1/me").await;
    assert_eq!(me["id"], a.t.admin.user_id.as_str());

    // A session of A whose own logout does work in A still cannot be replayed
    // in B: log it out in A, then it is simply invalid everywhere.
    let res = app
        .post(&a.learner, "/api/v1/auth/logout", json!({}))
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status().as_u16(), 204);
    for s in [&a.learner, &under(&a.learner, &b.t)] {
        let res = app.get(s, "/api/v1/me").send().await.expect("me");
        assert_problem(res, 401, "unauthorized").await;
    }
}

// ---------------------------------------------------------------------------
// 3. Lists never contain another tenant's rows.

/// Rows added to a [`World`] for the list checks.
#[derive(Default)]
struct Extra {
    /// (course id, published)
    courses: Vec<(String, bool)>,
    /// Learners, each enrolled in the world's `course`.
    learners: Vec<String>,
    keys: Vec<String>,
}

/// Every list endpoint of a tenant, as the session that may read it, with
/// the field naming each item and the exact set of values it must hold
/// (`None` for the audit log, whose rows the test does not count).
fn lists_of<'w>(
    w: &'w World,
    x: &Extra,
) -> Vec<(&'w Session, String, &'static str, Option<Vec<String>>)> {
    let c = &w.course;
    let admin = &w.t.admin;
    let lessons = vec![w.lesson.clone(), w.lesson2.clone()];
    let users = [&admin.user_id, &w.learner.user_id, &w.instructor.user_id]
        .into_iter()
        .cloned()
        .chain(x.learners.iter().cloned())
        .collect();
    let enrolled = std::iter::once(w.learner.user_id.clone())
        .chain(x.learners.iter().cloned())
        .collect();
    let keys = std::iter::once(w.key_id.clone())
        .chain(x.keys.iter().cloned())
        .collect();
    let all_courses: Vec<String> = [w.course.clone(), w.draft.clone()]
        .into_iter()
        .chain(x.courses.iter().map(|(id, _)| id.clone()))
        .collect();
    let published = std::iter::once(w.course.clone())
        .chain(
            x.courses
                .iter()
                .filter(|(_, p)| *p)
                .map(|(id, _)| id.clone()),
        )
        .collect();
    vec![
        (admin, "/api/v1/users".to_owned(), "id", Some(users)),
        (
            admin,
            "/api/v1/courses".to_owned(),
            "id",
            Some(all_courses.clone()),
        ),
        (
            &w.instructor,
            "/api/v1/courses".to_owned(),
            "id",
            Some(all_courses),
        ),
        (
            &w.learner,
            "/api/v1/courses".to_owned(),
            "id",
            Some(published),
        ),
        (
            admin,
            format!("/api/v1/courses/{c}/lessons"),
            "id",
            Some(lessons.clone()),
        ),
        (
            &w.learner,
            format!("/api/v1/courses/{c}/lessons"),
            "id",
            Some(lessons),
        ),
        (
            admin,
            format!("/api/v1/courses/{c}/enrollments"),
            "user_id",
            Some(enrolled),
        ),
        (admin, "/api/v1/api-keys".to_owned(), "id", Some(keys)),
        (admin, "/api/v1/audit-events".to_owned(), "id", None),
    ]
}

#[tokio::test]
async fn lists_never_contain_another_tenants_rows() {
    let app = spawn_app().await;
    let worlds = [
        populate(&app, "list-a").await,
        populate(&app, "list-b").await,
    ];
    let mut extras = [Extra::default(), Extra::default()];

    // Interleave more rows, so that the two tenants' ids (UUIDv7, time-ordered)
    // alternate: a cursor from one tenant lands between the other's rows.
    for round in 0..3 {
        for (w, x) in worlds.iter().zip(extras.iter_mut()) {
            let published = round % 2 == 0;
            let id = app
                .course(
                    &w.t.admin,
                    &format!("{} extra {round}", w.t.slug),
                    published,
                )
                .await;
            app.lesson(&w.t.admin, &id, "extra lesson").await;
            x.courses.push((id, published));
            let learner = app.user(&w.t, "learner").await;
            app.enroll(&w.t.admin, &w.course, &learner.user_id).await;
            x.learners.push(learner.user_id);
            let res = app
                .post(
                    &w.t.admin,
                    "/api/v1/api-keys",
                    json!({ "name": format!("extra {round}"), "role": "learner" }),
                )
                .send()
                .await
                .expect("key");
            x.keys.push(
                json_ok(res, 201).await["id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
    }

    for (me, other) in [(0, 1), (1, 0)] {
        let (w, x) = (&worlds[me], &extras[me]);
        // Every id the other tenant holds.
        let (ow, ox) = (&worlds[other], &extras[other]);
        let mut foreign = ow.ids();
        foreign.extend(ox.courses.iter().map(|(id, _)| id.clone()));
        foreign.extend(ox.learners.iter().cloned());
        foreign.extend(ox.keys.iter().cloned());

        for (s, path, key, want) in lists_of(w, x) {
            let ctx = format!("{path} in {} as {}", w.t.slug, s.email);
            let all = walk(&app, s, &path, 200).await;
            assert!(!all.is_empty(), "{ctx}: empty, so the checks prove nothing");
            assert_none_of(&all, &foreign, &ctx);
            let one_by_one = walk(&app, s, &path, 1).await;
            assert_eq!(
                one_by_one, all,
                "{ctx}: walking one by one differs from one page"
            );
            if let Some(mut want) = want {
                let mut got = field(&all, key);
                got.sort();
                want.sort();
                assert_eq!(got, want, "{ctx}");
            }
        }

        // The audit log holds this tenant's own events, for its own objects.
        let audit = walk(&app, &w.t.admin, "/api/v1/audit-events", 200).await;
        let targets: Vec<&str> = audit
            .iter()
            .filter_map(|e| e["target_id"].as_str())
            .collect();
        for id in [&w.course, &w.key_id, &w.learner.user_id] {
            assert!(
                targets.contains(&id.as_str()),
                "no event for {id} in {}",
                w.t.slug
            );
        }

        // Single-object reads that carry rows of several kinds.
        let me = get_json(&app, &w.t.admin, "/api/v1/me").await;
        assert_eq!(me["id"], w.t.admin.user_id.as_str());
        let progress = get_json(
            &app,
            &w.learner,
            &format!("/api/v1/courses/{}/progress", w.course),
        )
        .await;
        let lessons = field(
            progress["lessons"].as_array().expect("lessons"),
            "lesson_id",
        );
        assert_eq!(lessons, vec![w.lesson.clone(), w.lesson2.clone()]);
        assert_none_of(&[progress, me], &foreign, "progress and me");
    }
}

// ---------------------------------------------------------------------------
// 4. One email, two tenants, two people.

#[tokio::test]
async fn the_same_email_lives_apart_in_two_tenants() {
    let app = spawn_app().await;
    let a = app.tenant("mail-a").await;
    let b = app.tenant("mail-b").await;
    let email = "Shared.Person@Example.test";
    let (pass_a, pass_b) = ("password of a, long", "password of b, long");

    let mut ids = Vec::new();
    for (t, role, pass) in [(&a, "learner", pass_a), (&b, "instructor", pass_b)] {
        let res = app
            .post(
                &t.admin,
                "/api/v1/users",
                json!({ "name": "Shared", "email": email, "role": role, "password": pass }),
            )
            .send()
            .await
            .expect("create");
        let user = json_ok(res, 201).await;
        assert_eq!(user["email"], "shared.person@example.test");
        assert_eq!(user["role"], role);
        ids.push(user["id"].as_str().expect("id").to_owned());
        // Within one tenant the email stays unique.
        let res = app
            .post(
                &t.admin,
                "/api/v1/users",
                json!({ "name": "Again", "email": email, "role": "learner" }),
            )
            .send()
            .await
            .expect("create again");
        assert_problem(res, 409, "conflict").await;
    }
    assert_ne!(ids[0], ids[1]);

    // Each logs in to its own tenant only, as its own user.
    let in_a = app.login(&a.slug, email, pass_a).await;
    let in_b = app.login(&b.slug, email, pass_b).await;
    assert_eq!(in_a.user_id, ids[0]);
    assert_eq!(in_b.user_id, ids[1]);
    let me_a = get_json(&app, &in_a, "/api/v1/me").await;
    let me_b = get_json(&app, &in_b, "/api/v1/me").await;
    assert_eq!(
        (me_a["role"].as_str(), me_b["role"].as_str()),
        (Some("learner"), Some("instructor"))
    );

    // A's password does not open B's account with the same email, nor the
    // other way round; nor do A's admin's credentials open anything in B.
    let bad_logins = [
        (&b.slug, email, pass_a),
        (&a.slug, email, pass_b),
        (&b.slug, a.admin.email.as_str(), PASSWORD),
        (&a.slug, b.admin.email.as_str(), PASSWORD),
    ];
    for (slug, email, password) in bad_logins {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", slug.as_str())
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login");
        let ctx = format!("login to {slug} as {email}");
        expect_problem(res, 401, "invalid_credentials", &ctx).await;
    }

    // Each token is bound to its tenant, same email or not.
    for (s, other) in [(&in_a, &b), (&in_b, &a)] {
        let res = app
            .get(&under(s, other), "/api/v1/me")
            .send()
            .await
            .expect("me");
        assert_problem(res, 401, "unauthorized").await;
    }
    // And neither tenant's admin can reach the other's namesake by id.
    for (t, id) in [(&a, &ids[1]), (&b, &ids[0])] {
        let res = app
            .get(&t.admin, &format!("/api/v1/users/{id}"))
            .send()
            .await
            .expect("get");
        assert_problem(res, 404, "not_found").await;
    }
}

// ---------------------------------------------------------------------------
// 5. Enrollment and progress across tenants.

#[tokio::test]
async fn another_tenants_user_cannot_be_enrolled_or_tracked() {
    let app = spawn_app().await;
    let a = populate(&app, "prog-a").await;
    let b = populate(&app, "prog-b").await;
    let course_a = &a.course;

    // Enrolling B's users (learner, instructor, admin) into A's course: 404,
    // as for a user that exists nowhere, and A's enrollments are unchanged.
    let enrolled_before = walk(
        &app,
        &a.t.admin,
        &format!("/api/v1/courses/{course_a}/enrollments"),
        200,
    )
    .await;
    for (s, id) in [
        (&a.t.admin, &b.learner.user_id),
        (&a.t.admin, &b.instructor.user_id),
        (&a.t.admin, &b.t.admin.user_id),
        (&a.instructor, &b.learner.user_id),
    ] {
        let res = app
            .post(
                s,
                &format!("/api/v1/courses/{course_a}/enrollments"),
                json!({ "user_id": id }),
            )
            .send()
            .await
            .expect("enroll");
        expect_problem(
            res,
            404,
            "not_found",
            &format!("enroll {id} of B as {}", s.email),
        )
        .await;
    }
    let enrolled_after = walk(
        &app,
        &a.t.admin,
        &format!("/api/v1/courses/{course_a}/enrollments"),
        200,
    )
    .await;
    assert_eq!(enrolled_after, enrolled_before);
    // ... while enrolling A's own instructor works, so the route is not just broken.
    app.enroll(&a.t.admin, course_a, &a.instructor.user_id)
        .await;

    // `?user_id=` naming B's learner (who has progress in B) on A's progress
    // route: 404, byte for byte the answer for a user id that exists nowhere,
    // so nothing of B's learner (not even that they exist) comes through.
    let progress = |user: &str| format!("/api/v1/courses/{course_a}/progress?user_id={user}");
    let strip = |mut v: serde_json::Value| {
        v.as_object_mut().expect("problem").remove("request_id");
        v
    };
    let nobody = app
        .get(&a.t.admin, &progress(&uuid::Uuid::now_v7().to_string()))
        .send()
        .await
        .expect("send");
    let nobody = strip(assert_problem(nobody, 404, "not_found").await);
    for s in [&a.t.admin, &a.instructor] {
        let foreign = app
            .get(s, &progress(&b.learner.user_id))
            .send()
            .await
            .expect("send");
        let foreign = strip(assert_problem(foreign, 404, "not_found").await);
        assert_eq!(foreign, nobody, "as {}", s.email);
    }

    // The same route does show real progress for A's own learner, so the
    // zeros above are not the route being blind.
    let own = get_json(&app, &a.t.admin, &progress(&a.learner.user_id)).await;
    assert_eq!(own["completed"], 1);
    assert_eq!(own["percent"], 50);
    assert_eq!(own["lessons"][0]["position_s"].as_f64(), Some(42.5));

    // And B's learner's progress, read in B, is untouched.
    let in_b = get_json(
        &app,
        &b.learner,
        &format!("/api/v1/courses/{}/progress", b.course),
    )
    .await;
    assert_eq!(in_b["completed"], 1);
    assert_eq!(in_b["lessons"][0]["position_s"].as_f64(), Some(42.5));
    assert_eq!(in_b["lessons"][1]["position_s"].as_f64(), Some(7.0));
}
