//! Bad input gets a clear problem and changes nothing; every response has a
//! request id.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn unknown_json_fields_are_rejected_and_change_nothing() {
    let app = spawn_app().await;
    let t = app.tenant("unk").await;
    let res = app
        .post(
            &t.admin,
            "/api/v1/courses",
            json!({ "title": "X", "tenant_id": "other" }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_body").await;
    let list = json_ok(
        app.get(&t.admin, "/api/v1/courses").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn malformed_json_wrong_types_and_wrong_content_type() {
    let app = spawn_app().await;
    let t = app.tenant("bad").await;
    let res = app
        .req(Method::POST, &t.admin, "/api/v1/courses")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_body").await;
    let res = app
        .post(&t.admin, "/api/v1/courses", json!({ "title": 42 }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_body").await;
    let res = app
        .req(Method::POST, &t.admin, "/api/v1/courses")
        .header("content-type", "text/plain")
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app_with(|_, s| s.json_limit = 4096).await;
    let t = app.tenant("big").await;
    let res = app
        .post(
            &t.admin,
            "/api/v1/courses",
            json!({ "title": "x", "description": "a".repeat(10_000) }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "payload_too_large").await;
    let list = json_ok(
        app.get(&t.admin, "/api/v1/courses").send().await.unwrap(),
        200,
    )
    .await;
    assert!(list["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn validation_failures_are_422() {
    let app = spawn_app().await;
    let t = app.tenant("val").await;
    for body in [
        json!({ "title": "" }),
        json!({ "title": "   " }),
        json!({ "title": "a".repeat(201) }),
    ] {
        let res = app
            .post(&t.admin, "/api/v1/courses", body)
            .send()
            .await
            .unwrap();
        assert_problem(res, 422, "validation_failed").await;
    }
    for body in [
        json!({ "name": "x", "email": "not-an-email", "role": "learner" }),
        json!({ "name": "x", "email": "a@b.co", "role": "learner", "password": "short" }),
    ] {
        let res = app
            .post(&t.admin, "/api/v1/users", body)
            .send()
            .await
            .unwrap();
        assert_problem(res, 422, "validation_failed").await;
    }
    let res = app
        .post(
            &t.admin,
            "/api/v1/users",
            json!({ "name": "x", "email": "a@b.co", "role": "owner" }),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_body").await;
}

#[tokio::test]
async fn bad_queries_are_400() {
    let app = spawn_app().await;
    let t = app.tenant("q").await;
    for q in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "after=not-an-id",
        "bogus=1",
    ] {
        let res = app
            .get(&t.admin, &format!("/api/v1/courses?{q}"))
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_query").await;
    }
}

/// A body is a JSON object: a struct written as an array (which serde
/// would take) is refused and makes nothing; whole numbers may be written
/// as floats (`142.0`), as JSON Schema counts them; a description says
/// what is wrong with it.
#[tokio::test]
async fn bodies_are_objects_and_numbers_are_read_as_json_schema_reads_them() {
    let app = spawn_app().await;
    let t = app.tenant("bodies").await;
    for body in [
        "[\"array course\", \"\", true]",
        "\"a string\"",
        "42",
        "null",
    ] {
        let res = app
            .req(Method::POST, &t.admin, "/api/v1/courses")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_body").await;
    }
    let listed = json_ok(
        app.get(&t.admin, "/api/v1/courses").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(listed["items"], json!([]), "nothing was made");

    let c = app.course(&t.admin, "Numbers", true).await;
    let res = app
        .post(
            &t.admin,
            &format!("/api/v1/courses/{c}/lessons"),
            json!({ "title": "Float", "position": 142.0 }),
        )
        .send()
        .await
        .unwrap();
    let made = json_ok(res, 201).await;
    assert_eq!(made["position"], 142);
    for position in [json!(142.5), json!(1e300), json!(-0.5)] {
        let res = app
            .post(
                &t.admin,
                &format!("/api/v1/courses/{c}/lessons"),
                json!({ "title": "Bad", "position": position }),
            )
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_body").await;
    }
    let res = app
        .post(
            &t.admin,
            "/api/v1/courses",
            json!({ "title": "Ctl", "description": "bell \u{7}" }),
        )
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 422, "validation_failed").await;
    assert!(
        p["detail"].as_str().unwrap().contains("control characters"),
        "{p}"
    );
}

/// Each route takes its own query parameters and no other: one route's
/// parameter sent to another is refused, never silently ignored.
#[tokio::test]
async fn a_routes_query_takes_only_its_own_parameters() {
    let app = spawn_app().await;
    let t = app.tenant("qp").await;
    let course = app.course(&t.admin, "Q", true).await;
    for path in [
        "/api/v1/courses?purge=true".to_owned(),
        "/api/v1/courses?user_id=00000000-0000-0000-0000-000000000000".to_owned(),
        "/api/v1/users?purge=false".to_owned(),
        format!("/api/v1/courses/{course}/progress?limit=5"),
        format!("/api/v1/courses/{course}/progress?bogus=1"),
    ] {
        let res = app.get(&t.admin, &path).send().await.unwrap();
        assert_problem(res, 400, "invalid_query").await;
    }
    // The progress route's own parameter still works.
    let me = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
    let me = json_ok(me, 200).await;
    let mine = me["id"].as_str().unwrap().to_owned();
    let res = app
        .get(
            &t.admin,
            &format!("/api/v1/courses/{course}/progress?user_id={mine}"),
        )
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await;
    // The control plane's delete refuses what it does not know, and deletes nothing.
    for q in ["purge=maybe", "purge=true&force=1", "user_id=x"] {
        let res = app
            .operator(
                Method::DELETE,
                &format!("/admin/api/v1/tenants/{}?{q}", t.slug),
            )
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "invalid_query").await;
    }
    let res = app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    json_ok(res, 200).await;
}

#[tokio::test]
async fn ids_that_are_not_uuids_name_nothing() {
    let app = spawn_app().await;
    let t = app.tenant("ids").await;
    for id in [
        "1",
        "..",
        "%2e%2e%2fetc",
        "00000000-0000-0000-0000-000000000000",
        "x'%20OR%201=1",
    ] {
        let res = app
            .get(&t.admin, &format!("/api/v1/courses/{id}"))
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "not_found").await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = app.client.put(app.url("/healthz")).send().await.unwrap();
    assert_problem(res, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn request_ids_are_echoed_when_well_formed_and_made_otherwise() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    // A problem carries the same id in its body.
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("X-Request-Id", "trace-me")
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 400, "tenant_required").await;
    assert_eq!(body["request_id"], "trace-me");
}

#[tokio::test]
async fn errors_never_leak_internals() {
    let app = spawn_app().await;
    let t = app.tenant("leak").await;
    let res = app
        .post(
            &t.admin,
            "/api/v1/courses",
            json!({ "title": "x'); DROP TABLE courses; --" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    let list = json_ok(res, 200).await;
    assert_eq!(list["items"][0]["title"], "x'); DROP TABLE courses; --");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let t = app.tenant("ops").await;
    assert_eq!(
        json_ok(
            app.client.get(app.url("/healthz")).send().await.unwrap(),
            200
        )
        .await["status"],
        "ok"
    );
    assert_eq!(
        json_ok(
            app.client.get(app.url("/readyz")).send().await.unwrap(),
            200
        )
        .await["status"],
        "ready"
    );
    app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    let text = app.metrics_text().await;
    assert!(text.contains("campus_http_requests_total"), "{text}");
    assert!(
        text.contains("campus_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains(r#"route="/api/v1/courses""#), "{text}");
    assert!(
        text.contains(&format!(
            r#"campus_tenant_requests_total{{tenant="{}",class="2xx"}}"#,
            t.id
        )),
        "{text}"
    );
    // Tenants are labelled by id: /metrics does not list the organisations.
    assert!(!text.contains(&t.slug), "slug leaked into /metrics");
}
