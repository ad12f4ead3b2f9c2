//! Signing in under hostile traffic: fields bounded before anything is
//! done with them; guessing throttled per account and client address
//! without handing anyone a lockout; unauthenticated traffic on an
//! allowance of its own; password hashing bounded per tenant and overall.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::json;
use server::edge::client::TrustedProxies;
use server::edge::limits::Rate;

use crate::helpers::*;

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate::new(
        NonZeroU32::new(per_second).expect("non-zero"),
        NonZeroU32::new(burst).expect("non-zero"),
    )
}

/// The test server believes `X-Forwarded-For` from 127.0.0.1, so that a
/// test can speak from many addresses.
fn behind_a_proxy(s: &mut server::ServerConfig) {
    s.trusted_proxies = TrustedProxies::parse(&["127.0.0.1"]).expect("proxies");
}

async fn login_from(app: &TestApp, slug: &str, email: &str, password: &str, ip: &str) -> Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Tenant", slug)
        .header("X-Forwarded-For", ip)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
}

// ---------------------------------------------------------------------------
// 4. Every field is bounded before it is stored, hashed, logged or a key.

#[tokio::test]
async fn megabyte_fields_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let t = app.tenant("big").await;
    let huge = "a".repeat(1_000_000);
    let audit_before = app.count_rows(&t.id, "audit_events").await;

    for body in [
        json!({ "email": format!("{huge}@x.test"), "password": "wrong password" }),
        json!({ "email": t.admin.email, "password": huge }),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &t.slug)
            .json(&body)
            .send()
            .await
            .expect("login");
        assert_problem(res, 422, "validation_failed").await;
    }
    for (path, body) in [
        (
            "/api/v1/users",
            json!({ "name": huge, "email": "n@x.test", "role": "learner" }),
        ),
        (
            "/api/v1/users",
            json!({ "name": "N", "email": format!("{huge}@x.test"), "role": "learner" }),
        ),
        (
            "/api/v1/users",
            json!({ "name": "N", "email": "n@x.test", "role": "learner", "password": huge }),
        ),
        ("/api/v1/courses", json!({ "title": huge })),
        (
            "/api/v1/courses",
            json!({ "title": "T", "description": huge }),
        ),
        (
            "/api/v1/api-keys",
            json!({ "name": huge, "role": "learner" }),
        ),
    ] {
        let res = app.post(&t.admin, path, body).send().await.expect("send");
        assert_problem(res, 422, "validation_failed").await;
    }
    let res = app
        .patch(
            &t.admin,
            &format!("/api/v1/users/{}", t.admin.user_id),
            json!({ "password": "a new password", "current_password": huge }),
        )
        .send()
        .await
        .expect("send");
    assert_problem(res, 422, "validation_failed").await;

    assert_eq!(
        app.count_rows(&t.id, "audit_events").await,
        audit_before,
        "a refused request left an audit event"
    );
    assert_eq!(app.count_rows(&t.id, "users").await, 1);
    assert_eq!(app.count_rows(&t.id, "courses").await, 0);
    // The admin was not throttled by any of it.
    app.login(&t.slug, &t.admin.email, PASSWORD).await;
}

// ---------------------------------------------------------------------------
// 5. Guessing is throttled per address; nobody is locked out from elsewhere.

#[tokio::test]
async fn an_attacker_cannot_lock_the_admin_out_from_another_address() {
    no_lockout(CacheAt::Process).await;
}

#[tokio::test]
async fn an_attacker_cannot_lock_the_admin_out_from_another_address_with_redis() {
    no_lockout(CacheAt::Redis).await;
}

async fn no_lockout(at: CacheAt) {
    let app = spawn_app_with(|k, s| {
        use_cache(k, at);
        behind_a_proxy(s);
        lift_anonymous_limits(s);
    })
    .await;
    let t = app.tenant("lockout").await;
    let attacker = "203.0.113.7";
    let mut statuses = Vec::new();
    for i in 0..12 {
        let res = login_from(
            &app,
            &t.slug,
            &t.admin.email,
            &format!("guess {i}"),
            attacker,
        )
        .await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");

    // The attacker's address stays throttled, even with the right password…
    let res = login_from(&app, &t.slug, &t.admin.email, PASSWORD, attacker).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 429, "rate_limited").await;
    // …and the same guesses from an IPv6 /64 count as one address.
    for i in 0..6 {
        let ip = format!("2001:db8:7:7::{i}");
        let res = login_from(&app, &t.slug, &t.admin.email, "wrong password", &ip).await;
        let want = if i < 5 { 401 } else { 429 };
        assert_eq!(res.status().as_u16(), want, "guess {i} from {ip}");
    }
    // The admin, from their own address, logs in at once.
    for _ in 0..2 {
        let res = login_from(&app, &t.slug, &t.admin.email, PASSWORD, "198.51.100.20").await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_account_ceiling_stops_a_guess_spread_over_many_addresses() {
    account_ceiling(CacheAt::Process).await;
}

#[tokio::test]
async fn the_account_ceiling_stops_a_guess_spread_over_many_addresses_with_redis() {
    account_ceiling(CacheAt::Redis).await;
}

async fn account_ceiling(at: CacheAt) {
    const CEILING: usize = 8;
    let app = spawn_app_with(|k, s| {
        use_cache(k, at);
        behind_a_proxy(s);
        lift_anonymous_limits(s);
        s.login_throttle.per_account =
            lms::throttle::Budget::new(CEILING as u32, Duration::from_secs(3600));
    })
    .await;
    let t = app.tenant("ceiling").await;
    let victim = app.user(&t, "learner").await;
    let mut statuses = Vec::new();
    for i in 0..CEILING + 4 {
        let ip = format!("192.0.2.{}", 10 + i);
        let res = login_from(&app, &t.slug, &victim.email, "a guess", &ip).await;
        statuses.push(res.status().as_u16());
    }
    // One guess from each address: each address is far from its own limit,
    // but the account's ceiling stops the whole.
    assert_eq!(&statuses[..CEILING], &[401; CEILING], "{statuses:?}");
    assert!(
        statuses[CEILING..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // Another account of the tenant is not concerned.
    let res = login_from(&app, &t.slug, &t.admin.email, PASSWORD, "192.0.2.200").await;
    assert_eq!(res.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------
// 6. Unauthenticated traffic spends an allowance of its own.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anonymous_flood_leaves_the_signed_in_admin_unrefused() {
    anonymous_flood(CacheAt::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anonymous_flood_leaves_the_signed_in_admin_unrefused_with_redis() {
    anonymous_flood(CacheAt::Redis).await;
}

async fn anonymous_flood(at: CacheAt) {
    const BURST: u32 = 10;
    let app = spawn_app_with(|k, s| {
        use_cache(k, at);
        behind_a_proxy(s);
        // The organisation's allowance refills slowly: whatever the flood
        // took of it would still be missing below.
        s.rates.standard = rate(1, BURST);
        s.anonymous_rates.standard = rate(1, 10);
        s.address_rate = rate(1, 5);
    })
    .await;
    let t = app.tenant("anon").await;
    let forged = format!("cmp_{}_{}", t.id.replace('-', ""), "x".repeat(43));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..90 {
        let mut req = app
            .client
            .get(app.url("/api/v1/courses"))
            .header("X-Tenant", &t.slug)
            .header("X-Forwarded-For", format!("192.0.2.{}", i % 30));
        req = match i % 3 {
            0 => req.bearer_auth(&forged),
            1 => req.bearer_auth("not a token"),
            _ => req,
        };
        flood.spawn(async move { req.send().await.expect("send").status() });
    }
    for i in 0..30 {
        let req = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &t.slug)
            .header("X-Forwarded-For", format!("198.51.100.{i}"))
            .json(&json!({ "email": format!("nobody{i}@x.test"), "password": "wrong password" }));
        flood.spawn(async move { req.send().await.expect("send").status() });
    }
    let mut refused = 0;
    while let Some(status) = flood.join_next().await {
        match status.expect("task") {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("a flood request got {other}"),
        }
    }
    assert!(refused > 0, "120 anonymous requests and none refused");
    // The admin's requests spend the organisation's allowance, untouched.
    for i in 0..BURST - 2 {
        let res = app
            .get(&t.admin, "/api/v1/courses")
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::OK, "the admin's request {i}");
    }
}

// ---------------------------------------------------------------------------
// 7. Password hashing: bounded per tenant and overall.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_past_the_hashing_cap_get_503_while_another_tenant_logs_in() {
    let app = spawn_app_with(|_, s| {
        behind_a_proxy(s);
        lift_anonymous_limits(s);
        s.hashing = lms::hashing::HashingConfig {
            global: NonZeroUsize::new(2).expect("2"),
            per_tenant: NonZeroUsize::new(1).expect("1"),
            wait: Duration::from_millis(1),
        };
    })
    .await;
    let a = app.tenant("hash-a").await;
    let b = app.tenant("hash-b").await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..40 {
        let req = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &a.slug)
            .header("X-Forwarded-For", format!("192.0.2.{i}"))
            .json(&json!({ "email": a.admin.email, "password": PASSWORD }));
        burst.spawn(async move { req.send().await.expect("send") });
    }
    // B logs in meanwhile: A can never hold more than its one share.
    for _ in 0..3 {
        let res = login_from(&app, &b.slug, &b.admin.email, PASSWORD, "198.51.100.1").await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(res) = burst.join_next().await {
        let res = res.expect("task");
        match res.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert!(res.headers().contains_key("retry-after"));
                assert_problem(res, 503, "overloaded").await;
                overloaded += 1;
            }
            other => panic!("a login got {other}"),
        }
    }
    assert!(ok >= 1, "no login of A got through");
    assert!(overloaded >= 1, "40 logins at once and none refused");
    // Refused logins were never checked: they counted against nobody.
    let res = login_from(&app, &a.slug, &a.admin.email, PASSWORD, "192.0.2.1").await;
    assert_eq!(res.status(), StatusCode::OK);
}
