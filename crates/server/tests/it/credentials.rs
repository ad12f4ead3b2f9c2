//! Credentials that must stop, events that must not be misattributed,
//! secrets that must not be cached, sessions that must go.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn api_key(app: &TestApp, s: &Session) -> Session {
    let created = json_ok(
        app.post(
            s,
            "/api/v1/api-keys",
            json!({ "name": "k", "role": "instructor" }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await;
    Session {
        tenant: s.tenant.clone(),
        token: created["key"].as_str().unwrap().to_owned(),
        user_id: String::new(),
        email: String::new(),
    }
}

#[tokio::test]
async fn an_api_key_stops_when_its_creator_is_demoted_or_deleted() {
    let app = spawn_app().await;
    let t = app.tenant("keyowner").await;
    for change in ["demote", "delete"] {
        let other = app.user(&t, "admin").await;
        let key = api_key(&app, &other).await;
        let res = app.get(&key, "/api/v1/courses").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let path = format!("/api/v1/users/{}", other.user_id);
        let res = match change {
            "demote" => app.patch(&t.admin, &path, json!({ "role": "learner" })),
            _ => app.delete(&t.admin, &path),
        }
        .send()
        .await
        .unwrap();
        assert!(res.status().is_success(), "{change}: {}", res.status());
        let res = app.get(&key, "/api/v1/courses").send().await.unwrap();
        assert_problem(res, 401, "unauthorized").await;
    }
    // The admin's keys are listed as revoked.
    let list = json_ok(
        app.get(&t.admin, "/api/v1/api-keys").send().await.unwrap(),
        200,
    )
    .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|k| k["revoked_at"].is_string()), "{list}");
    // An admin's own key still works.
    let mine = api_key(&app, &t.admin).await;
    let res = app.get(&mine, "/api/v1/courses").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_made_up_token_naming_another_tenant_is_not_counted_as_its_token() {
    let app = spawn_app().await;
    let a = app.tenant("forge-a").await;
    let b = app.tenant("forge-b").await;
    let b_simple = b.id.replace('-', "");
    let by_b = format!(
        r#"campus_cross_tenant_tokens_total{{issued_by="{}"}}"#,
        b.id
    );
    let forged_before = app
        .metric(r#"campus_security_events_total{kind="forged_token"}"#)
        .await;

    let made_up = Session {
        token: format!("cmp_{b_simple}_{}", "A".repeat(43)),
        ..a.admin.clone()
    };
    let res = app.get(&made_up, "/api/v1/me").send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
    assert_eq!(
        app.metric(&by_b).await,
        0.0,
        "a made-up token counted as B's"
    );
    assert!(
        app.metric(r#"campus_security_events_total{kind="forged_token"}"#)
            .await
            > forged_before
    );

    // B's real token under A: counted, and attributed to B.
    let real = Session {
        tenant: a.slug.clone(),
        ..b.admin.clone()
    };
    let res = app.get(&real, "/api/v1/me").send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
    assert_eq!(app.metric(&by_b).await, 1.0);
}

#[tokio::test]
async fn responses_carrying_a_secret_are_not_stored_by_caches() {
    let app = spawn_app().await;
    let t = app.tenant("nostore").await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Tenant", &t.slug)
        .json(&json!({ "email": t.admin.email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = app
        .post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "k", "role": "learner" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn changing_ones_own_password_needs_the_current_one() {
    let app = spawn_app().await;
    let t = app.tenant("curpw").await;
    let learner = app.user(&t, "learner").await;
    let path = format!("/api/v1/users/{}", learner.user_id);
    let patch = |body: Value| app.patch(&learner, &path, body);

    let res = patch(json!({ "password": "a brand new one" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "validation_failed").await;
    let res = patch(json!({ "password": "a brand new one", "current_password": "not it at all" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
    // Nothing changed: the old password still logs in.
    app.login(&t.slug, &learner.email, PASSWORD).await;
    let res = patch(json!({ "password": "a brand new one", "current_password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.login(&t.slug, &learner.email, "a brand new one").await;

    // An admin setting another user's password needs none of theirs.
    let res = app
        .patch(&t.admin, &path, json!({ "password": "set by the admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.login(&t.slug, &learner.email, "set by the admin").await;
}

#[tokio::test]
async fn expired_sessions_are_deleted() {
    let app = spawn_app_with(|_, s| s.session_ttl = Duration::from_secs(2)).await;
    let t = app.tenant("sweep").await;
    let learner = app.user(&t, "learner").await;
    app.login(&t.slug, &learner.email, PASSWORD).await;
    app.login(&t.slug, &t.admin.email, PASSWORD).await;
    assert!(app.count_rows(&t.id, "sessions").await >= 4);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Any login of the tenant sweeps what has expired (bounded batches).
    app.login(&t.slug, &t.admin.email, PASSWORD).await;
    assert_eq!(app.count_rows(&t.id, "sessions").await, 1);
}
