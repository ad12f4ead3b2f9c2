//! What an operator deploys against: the control plane on a listener of
//! its own, CORS for browser front ends, and a readiness view that tells the
//! truth about each dependency and about stopping.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_admin_listener_alone_serves_the_control_plane_and_metrics() {
    let app = spawn_app_with(|_, s| s.separate_admin = true).await;
    let admin = app.admin_base.clone().expect("an admin listener");
    let t = app.tenant_on(&admin, "admin-split").await;
    // The public listener: the tenant API, health and readiness only.
    for path in ["/admin/api/v1/tenants", "/metrics"] {
        let res = app
            .client
            .get(app.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "not_found").await;
    }
    let res = app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    // The admin listener: the control plane (operator token only), metrics.
    let res = app
        .client
        .get(format!("{admin}/admin/api/v1/tenants"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .client
        .get(format!("{admin}/admin/api/v1/tenants"))
        .bearer_auth(&t.admin.token)
        .header("X-Tenant", &t.slug)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    let text = app
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("campus_http_requests_total"), "{text}");
    // The tenant API is not on the admin listener.
    let res = app
        .client
        .get(format!("{admin}/api/v1/courses"))
        .header("X-Tenant", &t.slug)
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
}

#[tokio::test]
async fn cors_answers_preflights_for_configured_origins_only() {
    let app = spawn_app_with(|_, s| s.cors_origins = vec!["https://app.example".into()]).await;
    let t = app.tenant("cors").await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/v1/courses"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, x-tenant",
            )
            .send()
    };
    let res = preflight("https://app.example").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["authorization", "content-type", "x-tenant"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    // Bearer tokens, never cookies: credentials are not allowed.
    assert!(!h.contains_key("access-control-allow-credentials"));
    // Another origin gets no grant.
    let res = preflight("https://evil.example").await.unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    // A real request: the origin granted, the API's headers exposed.
    let res = app
        .get(&t.admin, "/api/v1/courses")
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["ratelimit-remaining", "retry-after", "link", "etag"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    // Without configuration, no CORS at all.
    let plain = spawn_app().await;
    let res = plain
        .client
        .get(plain.url("/healthz"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {body}"))
}

#[tokio::test]
async fn readiness_lists_each_dependency_and_turns_503_while_stopping() {
    let mut app = spawn_app_with(|_, s| {
        s.connections.shutdown_delay = Duration::from_secs(2);
    })
    .await;
    let body = json_ok(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(body["status"], "ready");
    assert_eq!(check(&body, "registry")["status"], "up");
    assert_eq!(check(&body, "object_store")["status"], "up");
    if backend().is_postgres() {
        assert_eq!(check(&body, "placement:default")["status"], "up");
    }
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still taking requests, but no longer ready: balancers take it out.
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "stopping");
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_redis_that_never_answered_makes_the_node_not_ready() {
    let app = spawn_app_with(|k, _| {
        k.cache.redis_url = Some("redis://127.0.0.1:1/0".into());
        k.cache.environment = unique_environment();
    })
    .await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "not_ready", "{body}");
    let redis = check(&body, "redis");
    assert_eq!(redis["status"], "down");
    assert!(
        redis["detail"].as_str().unwrap().contains("--redis-url"),
        "{body}"
    );
    assert_eq!(check(&body, "registry")["status"], "up");
}
