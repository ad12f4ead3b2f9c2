//! Per-tenant rate limits: a tenant flooding the server gets 429s and spends
//! only its own allowance; its neighbours are not slowed into refusals. And
//! bulkheads: a tenant whose database work is at its cap waits for its own
//! share, then gets 503 `overloaded`; its neighbours are not held up.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server::edge::limits::Rate;

use crate::helpers::*;

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate::new(
        NonZeroU32::new(per_second).expect("non-zero"),
        NonZeroU32::new(burst).expect("non-zero"),
    )
}

fn header(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_gets_429s_while_its_neighbour_gets_none() {
    flooding_tenant(CacheAt::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_gets_429s_while_its_neighbour_gets_none_with_limits_in_redis() {
    flooding_tenant(CacheAt::Redis).await;
}

async fn flooding_tenant(at: CacheAt) {
    const PER_SECOND: u32 = 5;
    const BURST: u32 = 10;
    const FLOOD: usize = 80;
    let app = spawn_app_with(|k, s| {
        use_cache(k, at);
        s.rates.standard = rate(PER_SECOND, BURST);
    })
    .await;
    let a = app.tenant("flood-a").await;
    let b = app.tenant("flood-b").await;

    // A sends many times its allowance at once…
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let req = app.get(&a.admin, "/api/v1/courses");
        flood.spawn(async move { req.send().await.expect("send") });
    }
    // …while B, at a normal pace, stays well inside its own.
    let mut b_statuses = Vec::new();
    for _ in 0..4 {
        let res = app
            .get(&b.admin, "/api/v1/courses")
            .send()
            .await
            .expect("send");
        assert_eq!(header(&res, "ratelimit-limit"), Some(u64::from(BURST)));
        assert!(header(&res, "ratelimit-remaining").is_some());
        b_statuses.push(res.status());
    }
    let (mut ok, mut refused) = (0u64, 0u64);
    while let Some(res) = flood.join_next().await {
        let res = res.expect("task");
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let retry: u64 = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After in seconds");
                assert!(retry >= 1, "Retry-After {retry}");
                assert_eq!(header(&res, "ratelimit-remaining"), Some(0));
                assert_eq!(header(&res, "ratelimit-limit"), Some(u64::from(BURST)));
                let body: Value = res.json().await.expect("problem");
                assert_eq!(body["code"], "rate_limited");
            }
            other => panic!("tenant A got {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        b_statuses.iter().all(|s| *s == StatusCode::OK),
        "tenant B was refused while A flooded: {b_statuses:?}"
    );
    assert!(
        refused > 0,
        "A sent {FLOOD} requests at once and none was refused"
    );
    // What passed stays within the burst plus what the rate refilled
    // meanwhile (the login of the setup spent one more).
    let most = f64::from(BURST) + f64::from(PER_SECOND) * elapsed.ceil();
    assert!(
        (ok as f64) <= most,
        "{ok} of A's requests passed in {elapsed:.2} s; at most {most}"
    );
}

#[tokio::test]
async fn a_plan_change_through_the_control_plane_changes_the_limit_at_once() {
    let app = spawn_app_with(|_, s| {
        s.rates.free = rate(1, 2);
        s.rates.enterprise = rate(1000, 1000);
    })
    .await;
    let t = app.tenant("plan-limit").await;
    let patch = |plan: &str| {
        app.operator(Method::PATCH, &format!("/admin/api/v1/tenants/{}", t.slug))
            .json(&json!({ "plan": plan }))
    };
    let res = patch("free").send().await.expect("patch");
    assert_eq!(res.status(), StatusCode::OK);

    // Two at once pass, then the free plan's allowance is spent.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = app.get(&t.admin, "/api/v1/me").send().await.expect("send");
        statuses.push(res.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the free plan allows 2 at once: {statuses:?}"
    );

    let res = patch("enterprise").send().await.expect("patch");
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..20 {
        let res = app.get(&t.admin, "/api/v1/me").send().await.expect("send");
        assert_eq!(res.status(), StatusCode::OK, "on the enterprise plan");
        assert_eq!(header(&res, "ratelimit-limit"), Some(1000));
    }
}

#[tokio::test]
async fn the_control_plane_and_health_are_not_counted_against_tenants() {
    let app = spawn_app_with(|_, s| s.rates.standard = rate(1, 1)).await;
    let t = app.tenant("cp-limit").await;
    for _ in 0..10 {
        let res = app
            .operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit-limit").is_none());
    }
}

/// Inside one tenant, one user's flood spends only that user's allowance.
async fn flooding_user(at: CacheAt) {
    const BURST: u32 = 5;
    let app = spawn_app_with(|k, s| {
        use_cache(k, at);
        s.rates.standard = rate(1000, 1000);
        s.user_rates.standard = rate(2, BURST);
    })
    .await;
    let t = app.tenant("user-flood").await;
    let (a, b) = (app.user(&t, "learner").await, app.user(&t, "learner").await);
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let req = app.get(&a, "/api/v1/courses");
        flood.spawn(async move { req.send().await.expect("send") });
    }
    let mut b_statuses = Vec::new();
    for _ in 0..4 {
        let res = app.get(&b, "/api/v1/courses").send().await.expect("send");
        b_statuses.push(res.status());
    }
    let (mut ok, mut refused) = (0u32, 0u32);
    while let Some(res) = flood.join_next().await {
        let res = res.expect("task");
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(header(&res, "ratelimit-limit"), Some(u64::from(BURST)));
                assert_eq!(header(&res, "ratelimit-remaining"), Some(0));
                assert!(header(&res, "retry-after").is_some_and(|s| s >= 1));
                let body: Value = res.json().await.expect("problem");
                assert_eq!(body["code"], "rate_limited");
            }
            other => panic!("user A got {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(refused > 0, "user A sent 40 at once and none was refused");
    let most = f64::from(BURST) + 2.0 * elapsed.ceil();
    assert!(
        f64::from(ok) <= most,
        "{ok} of A's passed in {elapsed:.2} s; at most {most}"
    );
    assert!(
        b_statuses.iter().all(|s| *s == StatusCode::OK),
        "user B was refused while A flooded: {b_statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_user_gets_429s_while_another_user_of_the_tenant_gets_none() {
    flooding_user(CacheAt::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_user_gets_429s_while_another_user_of_the_tenant_gets_none_in_redis() {
    flooding_user(CacheAt::Redis).await;
}

#[tokio::test]
async fn the_control_plane_shows_each_tenants_limits_and_a_plan_change_changes_them() {
    let app = spawn_app_with(|_, s| {
        s.rates.free = rate(3, 7);
        s.user_rates.free = rate(1, 2);
        s.rates.enterprise = rate(300, 700);
        s.user_rates.enterprise = rate(100, 200);
    })
    .await;
    let t = app.tenant("show-limits").await;
    let path = format!("/admin/api/v1/tenants/{}", t.slug);
    for (plan, want) in [
        ("free", [3u32, 7, 1, 2]),
        ("enterprise", [300, 700, 100, 200]),
    ] {
        let res = app
            .operator(Method::PATCH, &path)
            .json(&json!({ "plan": plan }))
            .send()
            .await
            .expect("patch");
        let patched = json_ok(res, 200).await;
        let shown = json_ok(
            app.operator(Method::GET, &path).send().await.expect("get"),
            200,
        )
        .await;
        let listed = json_ok(
            app.operator(Method::GET, "/admin/api/v1/tenants")
                .send()
                .await
                .expect("list"),
            200,
        )
        .await;
        let listed = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|x| x["slug"] == t.slug.as_str())
            .cloned()
            .expect("listed");
        for view in [&patched, &shown, &listed] {
            assert_eq!(view["plan"], plan);
            assert_eq!(
                view["limits"],
                json!({
                    "requests_per_second": want[0],
                    "burst": want[1],
                    "user_requests_per_second": want[2],
                    "user_burst": want[3],
                }),
                "{view}"
            );
        }
        // And the tenant's API answers by that plan.
        let res = app.get(&t.admin, "/api/v1/me").send().await.expect("me");
        assert_eq!(header(&res, "ratelimit-limit"), Some(u64::from(want[1])));
    }
}

/// A tenant whose database work stays at its bulkhead's cap gets 503
/// `overloaded` with `Retry-After` once its wait runs out — and its write
/// changes nothing — while its neighbour on the same pool writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_at_its_bulkhead_gets_503_overloaded_while_its_neighbour_writes() {
    const SHARE: usize = 2;
    let app = spawn_app_with(|k, _| {
        k.tenant_transactions = NonZeroUsize::new(SHARE).expect("non-zero");
        k.tenant_transaction_wait = Duration::from_millis(300);
    })
    .await;
    let a = app.tenant("bulk-a").await;
    let b = app.tenant("bulk-b").await;
    // Token lookups cached, so that what waits below is the write itself.
    for s in [&a.admin, &b.admin] {
        json_ok(
            app.get(s, "/api/v1/courses").send().await.expect("send"),
            200,
        )
        .await;
    }

    // A's database work at its cap: both of its shares held.
    let a_row = app.tenant_row(&a.id).await;
    let mut held = Vec::new();
    for _ in 0..SHARE {
        held.push(app.kernel.begin(&a_row).await.expect("begin A"));
    }
    let started = Instant::now();
    let res = app
        .post(
            &a.admin,
            "/api/v1/courses",
            json!({"title": "Never written"}),
        )
        .send()
        .await
        .expect("send");
    let waited = started.elapsed();
    assert_eq!(header(&res, "retry-after"), Some(1));
    assert_problem(res, 503, "overloaded").await;
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );

    // B, same pool, same moment: not held up by A's full bulkhead.
    let res = app
        .post(&b.admin, "/api/v1/courses", json!({"title": "B's course"}))
        .send()
        .await
        .expect("send");
    json_ok(res, 201).await;

    // A's shares back: A writes again, and the refused write left nothing.
    drop(held);
    let res = app
        .post(&a.admin, "/api/v1/courses", json!({"title": "Written"}))
        .send()
        .await
        .expect("send");
    json_ok(res, 201).await;
    let list = json_ok(
        app.get(&a.admin, "/api/v1/courses")
            .send()
            .await
            .expect("send"),
        200,
    )
    .await;
    let titles: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["title"].as_str())
        .collect();
    assert_eq!(titles, vec!["Written"]);
}
