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
    let app = spawn_app_with(|k, s| {
        k.cache.redis_url = Some("redis://127.0.0.1:1/0".into());
        k.cache.environment = unique_environment();
        s.separate_admin = true;
    })
    .await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "not_ready", "{body}");
    let redis = check(&body, "redis");
    assert_eq!(redis["status"], "down");
    // The public answer names what is down, never why (errors name hosts,
    // roles, buckets): that is the admin listener's.
    assert!(redis.get("detail").is_none(), "{body}");
    assert_eq!(check(&body, "registry")["status"], "up");
    let admin = app.admin_base.clone().expect("admin listener");
    let res = app
        .client
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    let redis = check(&body, "redis");
    assert!(
        redis["detail"].as_str().unwrap().contains("--redis-url"),
        "{body}"
    );
}

/// The metric names an alert rule or a dashboard query uses (histogram
/// series map to their histogram).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("campus_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && base.ends_with("_seconds")
            {
                name = base;
            }
        }
        out.insert(name.to_owned());
        i = end;
    }
    out
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_use_only_metrics_the_server_exports() {
    let rules = include_str!("../../../../deploy/prometheus/alerts.yml");
    let dashboard = include_str!("../../../../deploy/grafana/campus.json");
    let _: Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let known: std::collections::BTreeSet<&str> = server::edge::metrics::DESCRIBED
        .iter()
        .map(|(name, ..)| *name)
        .collect();
    let used: Vec<String> = metric_names(rules)
        .into_iter()
        .chain(metric_names(dashboard))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            known.contains(name.as_str()),
            "{name} is not a metric Campus exports"
        );
    }
    // A live scrape: what the server exports is described (HELP), and the
    // ones the rules lean on most are there after a little traffic.
    let app = spawn_app().await;
    let t = app.tenant("scraped").await;
    app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    let text = app.metrics_text().await;
    for line in text.lines().filter(|l| l.starts_with("# TYPE campus_")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(known.contains(name), "{name} is exported but not described");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    let mut expected = vec![
        "campus_build_info",
        "campus_http_requests_total",
        "campus_http_request_duration_seconds",
        "campus_tenant_requests_total",
        "campus_tenant_request_duration_seconds",
    ];
    if backend().is_postgres() {
        // A serving pool's connections are waited for through one door.
        expected.push("campus_db_waiting");
    }
    for name in expected {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} not scraped"
        );
    }
}

/// The fleet's figures on `/metrics`: where tenants' schemas stand, the
/// bytes their files take (the largest tenants by id, never by slug), and
/// the isolation audit's verdict while serving.
#[tokio::test]
async fn metrics_carry_the_fleets_schema_storage_and_audit_figures() {
    let app = spawn_app().await;
    let t = app.tenant("fleet").await;
    let course = app.course(&t.admin, "Stored", true).await;
    let lesson = app.lesson(&t.admin, &course, "File").await;
    let res = app
        .req(
            Method::PUT,
            &t.admin,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/content"),
        )
        .header("content-type", "video/mp4")
        .body({
            let mut mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
            mp4.resize(12_345, 7);
            mp4
        })
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());

    // What the upkeep does every minute, now.
    let fleet = server::edge::metrics::Fleet::default();
    fleet.refresh(&app.kernel, true).await;
    let text = fleet.render();
    assert!(
        text.contains("# TYPE campus_tenants_by_schema gauge"),
        "{text}"
    );
    assert!(
        text.contains("campus_tenants_by_schema{state=\"behind\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("campus_tenants_by_schema{state=\"ahead\"} 0"),
        "{text}"
    );
    let current: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("campus_tenants_by_schema{state=\"current\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(current >= 1, "{text}");
    let figure = |prefix: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {text}"))
            .parse()
            .unwrap()
    };
    // As stored: the file sealed, a little more than its 12,345 bytes.
    let theirs = figure(&format!(
        "campus_tenant_storage_bytes{{tenant=\"{}\"}} ",
        t.id
    ));
    assert!((12_345..13_000).contains(&theirs), "{text}");
    assert_eq!(figure("campus_storage_bytes "), theirs, "{text}");
    assert!(text.contains("campus_isolation_audit_findings 0"), "{text}");
    assert!(!text.contains(&t.slug), "a slug in /metrics: {text}");

    // The server's own scrape carries them too (its upkeep refreshed them
    // when it started), with the per-tenant latency of the upload.
    let scraped = app.metrics_text().await;
    assert!(
        scraped.contains("# TYPE campus_tenants_by_schema gauge"),
        "{scraped}"
    );
    assert!(
        scraped.contains("campus_isolation_audit_findings "),
        "{scraped}"
    );
    assert!(
        scraped.contains(&format!(
            "campus_tenant_request_duration_seconds_count{{tenant=\"{}\"}}",
            t.id
        )),
        "{scraped}"
    );
}

/// The admin listener has a connection cap of its own: clients holding
/// every one of its slots get 503 `overloaded` there, and take nothing
/// from the public listener (nor the public's flood from the operators).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_a_connection_cap_of_its_own() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|_, s| s.separate_admin = true).await;
    let admin = app.admin_base.clone().unwrap();
    let addr = admin.trim_start_matches("http://").to_owned();
    // Idle connections: connected, nothing sent; each holds a slot until its
    // header timeout, which the pressure (a full listener) shortens to 2 s
    // from its accept. So each round fills the cap and tries one more at
    // once; on a machine too slow for that, another round.
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _round in 0..3 {
        held.clear();
        for _ in 0..server::connection::ADMIN_MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
        over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), over.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("overloaded"), "{answer}");
            answers.clear();
            break;
        }
        answers.push(answer);
    }
    assert!(
        answers.is_empty(),
        "never refused over the cap: {answers:?}"
    );
    // The public listener serves on, untouched.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Slots come back as the held connections go.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ok = app
            .client
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With an admin listener, the public document describes what the public
/// listener serves: no control plane, no placement names; the admin
/// listener serves the whole document.
#[tokio::test]
async fn the_public_document_leaves_the_control_plane_to_the_admin_listener() {
    let app = spawn_app_with(|_, s| s.separate_admin = true).await;
    let admin = app.admin_base.clone().unwrap();
    let public: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = public["paths"].as_object().unwrap();
    assert!(paths.contains_key("/api/v1/courses"));
    assert!(
        paths.keys().all(|p| !p.starts_with("/admin/")),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (name, schema) in public["components"]["schemas"].as_object().unwrap() {
        let placement = &schema["properties"]["placement"];
        assert!(
            placement.get("anyOf").is_none() && placement.get("enum").is_none(),
            "{name} names the placements: {placement}"
        );
    }
    let whole: Value = app
        .client
        .get(format!("{admin}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(whole["paths"]["/admin/api/v1/tenants"].is_object());
    assert!(whole["paths"]["/api/v1/courses"].is_object());
}
