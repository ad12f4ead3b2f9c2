//! Roles inside one tenant (API.md, "Authentication and roles" and the
//! resource table): each role's forbidden calls answer 403 `forbidden` and
//! change nothing, and their allowed counterparts succeed.

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::*;

// ---------------------------------------------------------------------------
// Fixture and small helpers

/// A tenant with one user of each role and a little to work on.
struct School {
    t: TestTenant,
    instructor: Session,
    /// Not enrolled anywhere.
    learner: Session,
    /// Another learner, enrolled in `course`, with progress.
    other: Session,
    /// Published.
    course: String,
    lesson: String,
    /// Unpublished, with one lesson.
    draft: String,
    draft_lesson: String,
    /// An admin-role API key's id.
    key_id: String,
}

async fn school(app: &TestApp) -> School {
    let t = app.tenant("roles").await;
    let instructor = app.user(&t, "instructor").await;
    let learner = app.user(&t, "learner").await;
    let other = app.user(&t, "learner").await;
    let course = app.course(&instructor, "Published", true).await;
    let lesson = app.lesson(&instructor, &course, "Lesson").await;
    let draft = app.course(&instructor, "Draft", false).await;
    let draft_lesson = app.lesson(&instructor, &draft, "Draft lesson").await;
    app.enroll(&instructor, &course, &other.user_id).await;
    let res = app
        .put(
            &other,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/progress"),
            json!({ "position_s": 12.0, "completed": true }),
        )
        .send()
        .await
        .expect("progress");
    assert_eq!(res.status().as_u16(), 204);
    let key = json_ok(
        app.post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "ci", "role": "admin" }),
        )
        .send()
        .await
        .expect("key"),
        201,
    )
    .await;
    School {
        t,
        instructor,
        learner,
        other,
        course,
        lesson,
        draft,
        draft_lesson,
        key_id: key["id"].as_str().expect("key id").to_owned(),
    }
}

/// One request of a table.
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

async fn send(app: &TestApp, s: &Session, c: &Call) -> Response {
    let mut req = app.req(c.method.clone(), s, &c.path);
    if let Some(body) = &c.body {
        req = req.json(body);
    }
    req.send().await.expect("send")
}

/// Sends `c` as `s` and asserts the status (and, for errors, the problem code).
async fn expect(app: &TestApp, s: &Session, c: &Call, status: u16, code: Option<&str>) -> Value {
    let res = send(app, s, c).await;
    let got = res.status().as_u16();
    if got != status {
        let body = res.text().await.unwrap_or_default();
        panic!(
            "{} {} as {}: expected {status}, got {got}: {body}",
            c.method, c.path, s.email
        );
    }
    match code {
        Some(code) => assert_problem(res, status, code).await,
        None => json_ok(res, status).await,
    }
}

async fn forbidden(app: &TestApp, s: &Session, calls: &[Call]) {
    for c in calls {
        expect(app, s, c, 403, Some("forbidden")).await;
    }
}

async fn get_json(app: &TestApp, s: &Session, path: &str) -> Value {
    json_ok(app.get(s, path).send().await.expect("get"), 200).await
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i[field].as_str().expect("id").to_owned())
        .collect()
}

/// What the tenant holds, read by its admin; equal snapshots mean nothing changed.
async fn snapshot(app: &TestApp, s: &School) -> Value {
    let admin = &s.t.admin;
    let (c, d) = (&s.course, &s.draft);
    let mut out = serde_json::Map::new();
    for path in [
        "users".to_owned(),
        format!("users/{}", s.other.user_id),
        format!("users/{}", s.learner.user_id),
        format!("users/{}", s.instructor.user_id),
        "courses".to_owned(),
        format!("courses/{c}"),
        format!("courses/{c}/lessons"),
        format!("courses/{c}/lessons/{}", s.lesson),
        format!("courses/{d}/lessons/{}", s.draft_lesson),
        format!("courses/{c}/enrollments"),
        format!("courses/{c}/progress?user_id={}", s.other.user_id),
        "api-keys".to_owned(),
        "audit-events".to_owned(),
    ] {
        // (every list here is shorter than the default page of 50)
        let v = get_json(app, admin, &format!("/api/v1/{path}")).await;
        out.insert(path, v);
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------
// Learners

#[tokio::test]
async fn a_learner_is_forbidden_staff_and_admin_calls_and_they_change_nothing() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let (c, l, other) = (&s.course, &s.lesson, &s.other.user_id);
    let me = &s.learner;
    let before = snapshot(&app, &s).await;

    let new_user =
        json!({ "name": "N", "email": "n@x.test", "role": "admin", "password": PASSWORD });
    // Staff calls on courses, lessons and enrollments.
    let staff_calls = [
        r::post("courses", json!({ "title": "Mine", "published": true })),
        r::patch(format!("courses/{c}"), json!({ "title": "pwned" })),
        r::delete(format!("courses/{c}")),
        r::post(format!("courses/{c}/lessons"), json!({ "title": "pwned" })),
        r::patch(
            format!("courses/{c}/lessons/{l}"),
            json!({ "title": "pwned" }),
        ),
        r::delete(format!("courses/{c}/lessons/{l}")),
        r::get(format!("courses/{c}/enrollments")),
        r::delete(format!("courses/{c}/enrollments/{other}")),
    ];
    let other_calls = [
        // users: list, create, read/change/delete another user, delete anyone
        r::get("users"),
        r::post("users", new_user),
        r::get(format!("users/{other}")),
        r::patch(format!("users/{other}"), json!({ "name": "pwned" })),
        r::delete(format!("users/{other}")),
        r::delete(format!("users/{}", s.instructor.user_id)),
        r::delete(format!("users/{}", me.user_id)),
        // enrolling someone else
        r::post(
            format!("courses/{c}/enrollments"),
            json!({ "user_id": other }),
        ),
        // another user's progress
        r::get(format!("courses/{c}/progress?user_id={other}")),
        // audit log and API keys
        r::get("audit-events"),
        r::get("api-keys"),
        r::post("api-keys", json!({ "name": "mine", "role": "admin" })),
        r::delete(format!("api-keys/{}", s.key_id)),
    ];
    forbidden(&app, me, &staff_calls).await;
    forbidden(&app, me, &other_calls).await;
    // An enrolled learner fares no better on the staff calls.
    forbidden(&app, &s.other, &staff_calls).await;

    assert_eq!(
        snapshot(&app, &s).await,
        before,
        "a forbidden call changed something"
    );

    // The allowed counterparts.
    let mine = expect(
        &app,
        me,
        &r::get(format!("users/{}", me.user_id)),
        200,
        None,
    )
    .await;
    assert_eq!(mine["role"], "learner");
    let me_json = expect(&app, me, &r::get("me"), 200, None).await;
    assert_eq!(me_json["id"], me.user_id.as_str());
    expect(&app, me, &r::get(format!("courses/{c}")), 200, None).await;
    let enrolled = r::post(
        format!("courses/{c}/enrollments"),
        json!({ "user_id": me.user_id }),
    );
    let e = expect(&app, me, &enrolled, 201, None).await;
    assert_eq!(e["user_id"], me.user_id.as_str());
    expect(&app, me, &enrolled, 409, Some("conflict")).await;
    expect(&app, me, &r::get(format!("courses/{c}/lessons")), 200, None).await;
    let progress = r::put(
        format!("courses/{c}/lessons/{l}/progress"),
        json!({ "position_s": 3.0 }),
    );
    let res = send(&app, me, &progress).await;
    assert_eq!(res.status().as_u16(), 204);
    for path in [
        format!("courses/{c}/progress"),
        format!("courses/{c}/progress?user_id={}", me.user_id),
    ] {
        let p = expect(&app, me, &r::get(path), 200, None).await;
        assert_eq!(p["lessons"][0]["position_s"].as_f64(), Some(3.0));
        assert_eq!(
            p["completed"], 0,
            "the other learner's completion is not mine"
        );
    }
}

#[tokio::test]
async fn staff_may_make_the_calls_learners_may_not() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let (c, other) = (&s.course, &s.other.user_id);

    for staff in [&s.t.admin, &s.instructor] {
        let list = expect(
            &app,
            staff,
            &r::get(format!("courses/{c}/enrollments")),
            200,
            None,
        )
        .await;
        assert_eq!(ids(&list, "user_id"), vec![other.clone()]);
        let p = expect(
            &app,
            staff,
            &r::get(format!("courses/{c}/progress?user_id={other}")),
            200,
            None,
        )
        .await;
        assert_eq!(p["completed"], 1);
        assert_eq!(p["lessons"][0]["position_s"].as_f64(), Some(12.0));
    }
    let admin = &s.t.admin;
    let users = expect(&app, admin, &r::get("users"), 200, None).await;
    assert_eq!(users["items"].as_array().expect("users").len(), 4);
    let other_user = expect(&app, admin, &r::get(format!("users/{other}")), 200, None).await;
    assert_eq!(other_user["role"], "learner");
    let audit = expect(&app, admin, &r::get("audit-events"), 200, None).await;
    assert!(!audit["items"].as_array().expect("events").is_empty());
    let keys = expect(&app, admin, &r::get("api-keys"), 200, None).await;
    assert_eq!(ids(&keys, "id"), vec![s.key_id.clone()]);
}

#[tokio::test]
async fn a_learner_sees_published_courses_only() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let (me, c, d, dl) = (&s.learner, &s.course, &s.draft, &s.draft_lesson);

    // Staff see the draft; in the list too.
    for staff in [&s.t.admin, &s.instructor] {
        expect(&app, staff, &r::get(format!("courses/{d}")), 200, None).await;
        let list = expect(&app, staff, &r::get("courses"), 200, None).await;
        let mut got = ids(&list, "id");
        got.sort();
        let mut want = vec![c.clone(), d.clone()];
        want.sort();
        assert_eq!(got, want);
    }

    // A learner does not, even once enrolled in it by staff: it is 404 as if
    // it did not exist, everywhere, and absent from the list.
    app.enroll(&s.instructor, d, &s.other.user_id).await;
    for who in [me, &s.other] {
        let list = expect(&app, who, &r::get("courses"), 200, None).await;
        assert_eq!(ids(&list, "id"), vec![c.clone()]);
        let hidden = [
            r::get(format!("courses/{d}")),
            r::get(format!("courses/{d}/lessons")),
            r::get(format!("courses/{d}/lessons/{dl}")),
            r::post(
                format!("courses/{d}/enrollments"),
                json!({ "user_id": who.user_id }),
            ),
            r::put(
                format!("courses/{d}/lessons/{dl}/progress"),
                json!({ "completed": true }),
            ),
            r::get(format!("courses/{d}/progress")),
        ];
        for call in &hidden {
            expect(&app, who, call, 404, Some("not_found")).await;
        }
    }

    // Published, it appears; unpublished again, it is gone again.
    let publish = |on: bool| r::patch(format!("courses/{d}"), json!({ "published": on }));
    expect(&app, &s.instructor, &publish(true), 200, None).await;
    let seen = expect(&app, me, &r::get(format!("courses/{d}")), 200, None).await;
    assert_eq!(seen["published"], true);
    let list = expect(&app, me, &r::get("courses"), 200, None).await;
    assert!(ids(&list, "id").contains(d));
    expect(&app, &s.instructor, &publish(false), 200, None).await;
    expect(
        &app,
        me,
        &r::get(format!("courses/{d}")),
        404,
        Some("not_found"),
    )
    .await;
    let list = expect(&app, me, &r::get("courses"), 200, None).await;
    assert_eq!(ids(&list, "id"), vec![c.clone()]);
}

#[tokio::test]
async fn a_learner_not_enrolled_is_forbidden_a_published_courses_lessons() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let (me, c, l) = (&s.learner, &s.course, &s.lesson);
    let lesson_calls = [
        r::get(format!("courses/{c}/lessons")),
        r::get(format!("courses/{c}/lessons/{l}")),
        r::put(
            format!("courses/{c}/lessons/{l}/progress"),
            json!({ "position_s": 5.0 }),
        ),
        r::get(format!("courses/{c}/progress")),
    ];

    // The course itself is visible; its lessons are not, until enrolled.
    expect(&app, me, &r::get(format!("courses/{c}")), 200, None).await;
    forbidden(&app, me, &lesson_calls).await;

    // The enrolled learner, meanwhile, reads them.
    let list = expect(&app, &s.other, &lesson_calls[0], 200, None).await;
    assert_eq!(ids(&list, "id"), vec![l.clone()]);

    let enroll = r::post(
        format!("courses/{c}/enrollments"),
        json!({ "user_id": me.user_id }),
    );
    expect(&app, me, &enroll, 201, None).await;
    let list = expect(&app, me, &lesson_calls[0], 200, None).await;
    assert_eq!(ids(&list, "id"), vec![l.clone()]);
    let lesson = expect(&app, me, &lesson_calls[1], 200, None).await;
    assert_eq!(lesson["id"], l.as_str());
    assert_eq!(
        send(&app, me, &lesson_calls[2]).await.status().as_u16(),
        204
    );
    let p = expect(&app, me, &lesson_calls[3], 200, None).await;
    assert_eq!(p["lessons"][0]["position_s"].as_f64(), Some(5.0));

    // Unenrolled by staff, the door closes again.
    let unenroll = r::delete(format!("courses/{c}/enrollments/{}", me.user_id));
    assert_eq!(
        send(&app, &s.instructor, &unenroll).await.status().as_u16(),
        204
    );
    forbidden(&app, me, &lesson_calls).await;
}

// ---------------------------------------------------------------------------
// Instructors

#[tokio::test]
async fn an_instructor_cannot_manage_users_audit_events_or_api_keys() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let (me, learner) = (&s.instructor, &s.learner.user_id);
    let before = snapshot(&app, &s).await;

    let new_user =
        json!({ "name": "N", "email": "n@x.test", "role": "learner", "password": PASSWORD });
    let calls = [
        r::get("users"),
        r::post("users", new_user.clone()),
        r::get(format!("users/{learner}")),
        r::patch(format!("users/{learner}"), json!({ "name": "pwned" })),
        r::patch(format!("users/{learner}"), json!({ "role": "instructor" })),
        r::patch(
            format!("users/{learner}"),
            json!({ "password": "a new password" }),
        ),
        r::delete(format!("users/{learner}")),
        r::get("audit-events"),
        r::get("api-keys"),
        r::post("api-keys", json!({ "name": "mine", "role": "instructor" })),
        r::delete(format!("api-keys/{}", s.key_id)),
    ];
    forbidden(&app, me, &calls).await;
    assert_eq!(
        snapshot(&app, &s).await,
        before,
        "a forbidden call changed something"
    );

    // The admin may make every one of them.
    let admin = &s.t.admin;
    for (i, c) in calls.iter().enumerate() {
        let want = match c.method {
            Method::POST => 201,
            Method::DELETE => 204,
            _ => 200,
        };
        let res = send(&app, admin, c).await;
        assert_eq!(
            res.status().as_u16(),
            want,
            "call {i}: {} {} as admin",
            c.method,
            c.path
        );
    }

    // And the instructor does its own work: courses, lessons, enrollments,
    // progress, and reading its own user.
    let mine = expect(
        &app,
        me,
        &r::get(format!("users/{}", me.user_id)),
        200,
        None,
    )
    .await;
    assert_eq!(mine["role"], "instructor");
    let course = expect(
        &app,
        me,
        &r::post("courses", json!({ "title": "New" })),
        201,
        None,
    )
    .await;
    let cid = course["id"].as_str().expect("id");
    expect(
        &app,
        me,
        &r::patch(format!("courses/{cid}"), json!({ "published": true })),
        200,
        None,
    )
    .await;
    let lesson = expect(
        &app,
        me,
        &r::post(format!("courses/{cid}/lessons"), json!({ "title": "L" })),
        201,
        None,
    )
    .await;
    let lid = lesson["id"].as_str().expect("id");
    expect(
        &app,
        me,
        &r::patch(
            format!("courses/{cid}/lessons/{lid}"),
            json!({ "position": 3 }),
        ),
        200,
        None,
    )
    .await;
    let other = &s.other.user_id;
    expect(
        &app,
        me,
        &r::post(
            format!("courses/{cid}/enrollments"),
            json!({ "user_id": other }),
        ),
        201,
        None,
    )
    .await;
    let list = expect(
        &app,
        me,
        &r::get(format!("courses/{cid}/enrollments")),
        200,
        None,
    )
    .await;
    assert_eq!(ids(&list, "user_id"), vec![other.clone()]);
    expect(
        &app,
        me,
        &r::get(format!("courses/{cid}/progress?user_id={other}")),
        200,
        None,
    )
    .await;
    for c in [
        r::delete(format!("courses/{cid}/enrollments/{other}")),
        r::delete(format!("courses/{cid}/lessons/{lid}")),
        r::delete(format!("courses/{cid}")),
    ] {
        assert_eq!(
            send(&app, me, &c).await.status().as_u16(),
            204,
            "{}",
            c.path
        );
    }
}

// ---------------------------------------------------------------------------
// Changing oneself

#[tokio::test]
async fn a_non_admin_may_change_own_name_and_password_but_not_role_or_email() {
    let app = spawn_app().await;
    let s = school(&app).await;

    for (me, role) in [(&s.learner, "learner"), (&s.instructor, "instructor")] {
        let path = format!("users/{}", me.user_id);
        let renamed = expect(
            &app,
            me,
            &r::patch(&path, json!({ "name": "New Name" })),
            200,
            None,
        )
        .await;
        assert_eq!(renamed["name"], "New Name");

        for body in [
            json!({ "role": "admin" }),
            json!({ "email": "someone.else@x.test" }),
            json!({ "name": "Sneaky", "role": "admin" }),
            json!({ "password": "sneaky password", "email": "sneaky@x.test" }),
        ] {
            expect(&app, me, &r::patch(&path, body), 403, Some("forbidden")).await;
        }
        // None of it took effect, not even the allowed half of a mixed patch.
        let now = expect(&app, me, &r::get("me"), 200, None).await;
        assert_eq!(now["name"], "New Name");
        assert_eq!(now["role"], role);
        assert_eq!(now["email"], me.email.to_lowercase().as_str());
        app.login(&s.t.slug, &me.email, PASSWORD).await;

        // The password, with the current one, may be changed: the new one
        // logs in, the old one not.
        let new_password = format!("{role}'s new password");
        expect(
            &app,
            me,
            &r::patch(
                &path,
                json!({ "password": new_password, "current_password": PASSWORD }),
            ),
            200,
            None,
        )
        .await;
        app.login(&s.t.slug, &me.email, &new_password).await;
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &s.t.slug)
            .json(&json!({ "email": me.email, "password": PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_problem(res, 401, "invalid_credentials").await;
    }

    // The admin may change another user's email and role.
    let path = format!("users/{}", s.learner.user_id);
    let changed = json!({ "email": "moved@x.test", "role": "instructor" });
    let user = expect(&app, &s.t.admin, &r::patch(&path, changed), 200, None).await;
    assert_eq!(
        (user["email"].as_str(), user["role"].as_str()),
        (Some("moved@x.test"), Some("instructor"))
    );
}

// ---------------------------------------------------------------------------
// API keys

/// A new API key of `role`, as a session (its `user_id` holds the key's id).
async fn api_key(app: &TestApp, t: &TestTenant, role: &str) -> Session {
    let body = json!({ "name": format!("{role} key"), "role": role });
    let res = app
        .post(&t.admin, "/api/v1/api-keys", body)
        .send()
        .await
        .expect("key");
    let created = json_ok(res, 201).await;
    assert_eq!(created["role"], role);
    Session {
        tenant: t.slug.clone(),
        token: created["key"].as_str().expect("key").to_owned(),
        user_id: created["id"].as_str().expect("id").to_owned(),
        email: format!("{role} api key"),
    }
}

#[tokio::test]
async fn an_api_key_acts_with_its_role() {
    let app = spawn_app().await;
    let s = school(&app).await;
    let new_user =
        |email: &str| json!({ "name": "Made by a key", "email": email, "role": "learner" });

    // An instructor-role key: courses yes, users, audit and keys no.
    let instructor = api_key(&app, &s.t, "instructor").await;
    let course = expect(
        &app,
        &instructor,
        &r::post("courses", json!({ "title": "By key" })),
        201,
        None,
    )
    .await;
    let cid = course["id"].as_str().expect("id");
    expect(
        &app,
        &instructor,
        &r::post(format!("courses/{cid}/lessons"), json!({ "title": "L" })),
        201,
        None,
    )
    .await;
    expect(
        &app,
        &instructor,
        &r::get(format!("courses/{}", s.draft)),
        200,
        None,
    )
    .await;
    forbidden(
        &app,
        &instructor,
        &[
            r::post("users", new_user("a@x.test")),
            r::get("users"),
            r::get("audit-events"),
            r::get("api-keys"),
            r::post("api-keys", json!({ "name": "escalate", "role": "admin" })),
        ],
    )
    .await;

    // A learner-role key: no writes, published courses only.
    let learner = api_key(&app, &s.t, "learner").await;
    forbidden(
        &app,
        &learner,
        &[
            r::post("courses", json!({ "title": "By learner key" })),
            r::post("users", new_user("b@x.test")),
            r::get(format!("courses/{}/enrollments", s.course)),
        ],
    )
    .await;
    let list = expect(&app, &learner, &r::get("courses"), 200, None).await;
    // (the instructor key's course is unpublished, like the draft)
    assert_eq!(ids(&list, "id"), vec![s.course.clone()]);
    expect(
        &app,
        &learner,
        &r::get(format!("courses/{}", s.draft)),
        404,
        Some("not_found"),
    )
    .await;

    // An admin-role key may create users, and the audit log names the key.
    let admin = api_key(&app, &s.t, "admin").await;
    let made = expect(
        &app,
        &admin,
        &r::post("users", new_user("c@x.test")),
        201,
        None,
    )
    .await;
    let audit = expect(&app, &s.t.admin, &r::get("audit-events"), 200, None).await;
    let events = audit["items"].as_array().expect("events");
    let by_key = |action: &str, target: &str, key: &Session| {
        events.iter().any(|e| {
            e["action"] == action
                && e["target_id"] == target
                && e["actor_kind"] == "api_key"
                && e["actor_id"] == key.user_id.as_str()
        })
    };
    assert!(
        by_key("user.created", made["id"].as_str().expect("id"), &admin),
        "{audit}"
    );
    assert!(by_key("course.created", cid, &instructor), "{audit}");

    // A revoked key stops working at once.
    let revoke = r::delete(format!("api-keys/{}", instructor.user_id));
    assert_eq!(send(&app, &s.t.admin, &revoke).await.status().as_u16(), 204);
    let res = send(&app, &instructor, &r::get("courses")).await;
    assert_problem(res, 401, "unauthorized").await;
}
