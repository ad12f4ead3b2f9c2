//! The tenant directory under hostile traffic and a lost registry: unknown
//! names cost no registry query each, and a directory that can no longer be
//! refreshed stops being trusted.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

async fn me(app: &TestApp, slug: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/me"))
        .header("X-Tenant", slug)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flood_of_unknown_names_costs_no_registry_query_each_and_keeps_no_tenant_out() {
    // One lookup a second (burst two) for names the node does not know.
    let app = spawn_app_with(|k, _| {
        k.unknown_tenant_lookups = std::num::NonZeroU32::new(1).unwrap();
    })
    .await;
    let t = app.tenant("known").await;
    let start = Instant::now();
    let before = app.kernel.registry_lookups();

    // The same unknown name, over and over: asked once, then remembered.
    let res = me(&app, "nobody-here", "x").await;
    let malformed = assert_problem(me(&app, "-bad-", "x").await, 401, "invalid_tenant").await;
    let unknown = assert_problem(res, 401, "invalid_tenant").await;
    assert_eq!(unknown["detail"], malformed["detail"]);
    for _ in 0..50 {
        assert_problem(me(&app, "nobody-here", "x").await, 401, "invalid_tenant").await;
    }
    assert!(app.kernel.registry_lookups() - before <= 1);

    // Two hundred made-up names: each answered as unknown, within the budget.
    let names: Vec<String> = (0..200).map(|i| format!("made-up-{i}")).collect();
    let answers = futures_util::future::join_all(names.iter().map(|n| me(&app, n, "x"))).await;
    for res in answers {
        assert_problem(res, 401, "invalid_tenant").await;
    }
    let spent = app.kernel.registry_lookups() - before;
    let allowed = 2 + start.elapsed().as_secs() + 1 + 1;
    assert!(
        spent <= allowed,
        "{spent} registry lookups, at most {allowed} allowed"
    );

    // A known tenant is never kept out by the spent budget, and neither is
    // one created under a name just asked for.
    assert_eq!(
        me(&app, &t.slug, &t.admin.token).await.status(),
        StatusCode::OK
    );
    let slug = "made-up-7";
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants")
        .json(&json!({
            "slug": slug, "name": "Late",
            "admin": { "email": "a@late.test", "name": "A", "password": PASSWORD }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let s = app.login(slug, "a@late.test", PASSWORD).await;
    assert_eq!(me(&app, slug, &s.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_registry_that_cannot_be_read_stops_serving_after_the_staleness_bound() {
    let app = spawn_app_with(|k, _| {
        k.registry_max_staleness = Duration::from_millis(1_500);
    })
    .await;
    let t = app.tenant("stale").await;
    assert_eq!(
        me(&app, &t.slug, &t.admin.token).await.status(),
        StatusCode::OK
    );

    // The registry goes away; the directory still knows the tenant, but may
    // no longer vouch for it (it could be suspended or deleted by now).
    app.kernel.registry().close().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let res = loop {
        let res = me(&app, &t.slug, &t.admin.token).await;
        if res.status() != StatusCode::OK {
            break res;
        }
        assert!(
            Instant::now() < deadline,
            "still served from a stale directory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "unavailable").await;
    // An unknown name too: not an internal error.
    let res = me(&app, "never-seen", "x").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "unavailable").await;
}
