//! The learning API end to end: users, courses, lessons, enrollments,
//! progress, pagination, the audit log.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn users_crud_and_duplicate_emails() {
    let app = spawn_app().await;
    let t = app.tenant("users").await;
    let u = json_ok(
        app.post(
            &t.admin,
            "/api/v1/users",
            json!({ "name": "Ada", "email": "Ada@Example.com", "role": "learner" }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await;
    assert_eq!(u["email"], "ada@example.com");
    let id = u["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let res = app
        .post(
            &t.admin,
            "/api/v1/users",
            json!({ "name": "Ada 2", "email": "ada@example.com", "role": "learner" }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;

    let patched = json_ok(
        app.patch(
            &t.admin,
            &format!("/api/v1/users/{id}"),
            json!({ "role": "instructor", "name": "Ada L." }),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(patched["role"], "instructor");
    assert_eq!(patched["name"], "Ada L.");

    assert_eq!(
        app.delete(&t.admin, &format!("/api/v1/users/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        app.get(&t.admin, &format!("/api/v1/users/{id}"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    let app = spawn_app().await;
    let t = app.tenant("last").await;
    let me = &t.admin.user_id;
    let res = app
        .patch(
            &t.admin,
            &format!("/api/v1/users/{me}"),
            json!({ "role": "learner" }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;
    let res = app
        .delete(&t.admin, &format!("/api/v1/users/{me}"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;
    assert_eq!(
        json_ok(app.get(&t.admin, "/api/v1/me").send().await.unwrap(), 200).await["role"],
        "admin"
    );
}

#[tokio::test]
async fn courses_and_ordered_lessons() {
    let app = spawn_app().await;
    let t = app.tenant("courses").await;
    let teacher = app.user(&t, "instructor").await;
    let c = app.course(&teacher, "Rust 101", false).await;
    let course = json_ok(
        app.get(&teacher, &format!("/api/v1/courses/{c}"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(course["title"], "Rust 101");
    assert_eq!(course["published"], false);

    let l1 = app.lesson(&teacher, &c, "One").await;
    let l2 = app.lesson(&teacher, &c, "Two").await;
    let l0 = json_ok(
        app.post(
            &teacher,
            &format!("/api/v1/courses/{c}/lessons"),
            json!({ "title": "Zero", "position": 0 }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await;
    // Move "One" to the end.
    let res = app
        .patch(
            &teacher,
            &format!("/api/v1/courses/{c}/lessons/{l1}"),
            json!({ "position": 10 }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["position"], 10);
    let lessons = json_ok(
        app.get(&teacher, &format!("/api/v1/courses/{c}/lessons"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let titles: Vec<_> = lessons["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(titles, ["Zero", "Two", "One"]);
    assert_eq!(lessons["items"][0]["id"], l0["id"]);

    // Paging through lessons keeps the order.
    let p1 = json_ok(
        app.get(&teacher, &format!("/api/v1/courses/{c}/lessons?limit=2"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = json_ok(
        app.get(
            &teacher,
            &format!("/api/v1/courses/{c}/lessons?limit=2&after={cursor}"),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(p2["items"][0]["id"], l1.as_str());
    assert!(p2["next_cursor"].is_null());

    let res = app
        .delete(&teacher, &format!("/api/v1/courses/{c}/lessons/{l2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&teacher, &format!("/api/v1/courses/{c}/lessons/{l2}"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;

    let res = app
        .patch(
            &teacher,
            &format!("/api/v1/courses/{c}"),
            json!({ "published": true }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["published"], true);
    assert_eq!(
        app.delete(&teacher, &format!("/api/v1/courses/{c}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        app.get(&teacher, &format!("/api/v1/courses/{c}/lessons"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn keyset_pagination_with_link_headers() {
    let app = spawn_app().await;
    let t = app.tenant("pages").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(app.course(&t.admin, &format!("Course {i}"), true).await);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/courses?limit=3".to_owned();
    loop {
        let res = app.get(&t.admin, &path).send().await.unwrap();
        let link = res
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page = json_ok(res, 200).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.expect("Link header with a next page");
                assert_eq!(
                    link,
                    format!("</api/v1/courses?limit=3&after={cursor}>; rel=\"next\"")
                );
                path = format!("/api/v1/courses?limit=3&after={cursor}");
            }
            None => {
                assert!(link.is_none());
                break;
            }
        }
    }
    assert_eq!(seen, ids, "every course once, in id (creation) order");
}

#[tokio::test]
async fn enrollment_and_progress_roll_up() {
    let app = spawn_app().await;
    let t = app.tenant("progress").await;
    let learner = app.user(&t, "learner").await;
    let c = app.course(&t.admin, "Course", true).await;
    let lessons = [
        app.lesson(&t.admin, &c, "L1").await,
        app.lesson(&t.admin, &c, "L2").await,
        app.lesson(&t.admin, &c, "L3").await,
        app.lesson(&t.admin, &c, "L4").await,
    ];
    let progress_path = |lesson: &str| format!("/api/v1/courses/{c}/lessons/{lesson}/progress");

    // Not enrolled yet.
    let res = app
        .put(
            &learner,
            &progress_path(&lessons[0]),
            json!({ "position_s": 1.0 }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    // A learner may enroll self in a published course, once.
    let res = app
        .post(
            &learner,
            &format!("/api/v1/courses/{c}/enrollments"),
            json!({ "user_id": learner.user_id }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .post(
            &learner,
            &format!("/api/v1/courses/{c}/enrollments"),
            json!({ "user_id": learner.user_id }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;

    let put = |lesson: &str, body: Value| app.put(&learner, &progress_path(lesson), body);
    assert_eq!(
        put(&lessons[0], json!({ "position_s": 30.5 }))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put(&lessons[0], json!({ "completed": true }))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    // A later heartbeat never un-completes.
    assert_eq!(
        put(
            &lessons[0],
            json!({ "position_s": 12.0, "completed": false })
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    // Idempotent.
    for _ in 0..2 {
        assert_eq!(
            put(
                &lessons[1],
                json!({ "completed": true, "position_s": 99.0 })
            )
            .send()
            .await
            .unwrap()
            .status(),
            StatusCode::NO_CONTENT
        );
    }
    let res = put(&lessons[2], json!({ "position_s": -1.0 }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "validation_failed").await;

    let p = json_ok(
        app.get(&learner, &format!("/api/v1/courses/{c}/progress"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(p["completed"], 2);
    assert_eq!(p["total"], 4);
    assert_eq!(p["percent"], 50);
    assert_eq!(p["lessons"][0]["lesson_id"], lessons[0].as_str());
    assert_eq!(p["lessons"][0]["completed"], true);
    assert_eq!(p["lessons"][0]["position_s"], 12.0);
    assert_eq!(p["lessons"][2]["completed"], false);

    // Staff see anyone's progress with ?user_id=.
    let p2 = json_ok(
        app.get(
            &t.admin,
            &format!("/api/v1/courses/{c}/progress?user_id={}", learner.user_id),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(p2["completed"], 2);

    let list = json_ok(
        app.get(&t.admin, &format!("/api/v1/courses/{c}/enrollments"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(list["items"][0]["user_id"], learner.user_id.as_str());
    let res = app
        .delete(
            &t.admin,
            &format!("/api/v1/courses/{c}/enrollments/{}", learner.user_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&learner, &format!("/api/v1/courses/{c}/lessons"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
}

#[tokio::test]
async fn the_audit_log_records_changes_newest_first() {
    let app = spawn_app().await;
    let t = app.tenant("audit").await;
    let c = app.course(&t.admin, "Audited", false).await;
    app.patch(
        &t.admin,
        &format!("/api/v1/courses/{c}"),
        json!({ "title": "Audited 2" }),
    )
    .send()
    .await
    .unwrap();
    let res = app
        .req(
            reqwest::Method::DELETE,
            &t.admin,
            &format!("/api/v1/courses/{c}"),
        )
        .header("X-Request-Id", "audit-req-1")
        .header("User-Agent", "Audit-Agent/1.0 \t(tabbed)")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let log = json_ok(
        app.get(&t.admin, "/api/v1/audit-events")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let items = log["items"].as_array().unwrap();
    let actions: Vec<_> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..3],
        ["course.deleted", "course.updated", "course.created"]
    );
    assert_eq!(items[0]["target_id"], c.as_str());
    assert_eq!(items[0]["actor_id"], t.admin.user_id.as_str());
    assert_eq!(items[0]["request_id"], "audit-req-1");
    // Where the request came from: the client address (loopback here) and
    // its user agent, control characters replaced.
    assert_eq!(items[0]["client"], "127.0.0.1");
    assert_eq!(items[0]["user_agent"], "Audit-Agent/1.0 \u{fffd}(tabbed)");
    assert!(actions.contains(&"auth.login"));
    let login = items.iter().find(|e| e["action"] == "auth.login").unwrap();
    assert_eq!(login["client"], "127.0.0.1");
    // The operator's provisioning came through the control plane: no
    // tenant request, no client.
    let made = items
        .iter()
        .find(|e| e["action"] == "tenant.provisioned")
        .unwrap();
    assert!(made["client"].is_null(), "{made}");
}

/// A user agent is the client's to choose: the audit log keeps at most 200
/// characters of it.
#[tokio::test]
async fn the_audit_log_keeps_a_bounded_user_agent() {
    let app = spawn_app().await;
    let t = app.tenant("ua").await;
    let long = "Z".repeat(5000);
    let res = app
        .post(&t.admin, "/api/v1/courses", json!({ "title": "UA" }))
        .header("User-Agent", long.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let log = json_ok(
        app.get(&t.admin, "/api/v1/audit-events?limit=1")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let e = &log["items"][0];
    assert_eq!(e["action"], "course.created");
    assert_eq!(e["user_agent"].as_str().unwrap(), &long[..200]);
}

#[tokio::test]
async fn a_lesson_without_a_position_comes_last_even_after_the_highest_one() {
    let app = spawn_app().await;
    let t = app.tenant("positions").await;
    let c = app.course(&t.admin, "Ordered", true).await;
    let res = app
        .post(
            &t.admin,
            &format!("/api/v1/courses/{c}/lessons"),
            json!({ "title": "At the end", "position": 1_000_000 }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let last = app.lesson(&t.admin, &c, "After it").await;
    let listed = json_ok(
        app.get(&t.admin, &format!("/api/v1/courses/{c}/lessons"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.last().unwrap()["id"], last.as_str(), "{listed}");
}
