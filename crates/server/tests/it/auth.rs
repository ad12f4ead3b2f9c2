//! Login, logout, tokens bound to their tenant, API keys, the login throttle.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn login_issues_a_bearer_token_and_me_answers() {
    let app = spawn_app().await;
    let t = app.tenant("login").await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Tenant", &t.slug)
        .json(&json!({ "email": t.admin.email.to_uppercase(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let body = json_ok(res, 200).await;
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_at"].is_string());
    assert_eq!(body["user"]["role"], "admin");
    assert!(body["user"].get("password_hash").is_none());
    let me = json_ok(app.get(&t.admin, "/api/v1/me").send().await.unwrap(), 200).await;
    assert_eq!(me["email"], t.admin.email.as_str());
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_the_same() {
    let app = spawn_app().await;
    let t = app.tenant("creds").await;
    let mut bodies = Vec::new();
    for (email, password) in [
        (t.admin.email.as_str(), "wrong password"),
        ("nobody@x.test", PASSWORD),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &t.slug)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        let mut b = assert_problem(res, 401, "invalid_credentials").await;
        b.as_object_mut().unwrap().remove("request_id");
        bodies.push(b);
    }
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test]
async fn missing_malformed_and_forged_tokens_are_unauthorized() {
    let app = spawn_app().await;
    let t = app.tenant("tok").await;
    let forged = format!("cmp_{}_{}", t.id.replace('-', ""), "A".repeat(43));
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic abc"),
        Some("Bearer nonsense"),
        Some(forged.as_str()),
    ] {
        let mut req = app
            .client
            .get(app.url("/api/v1/me"))
            .header("X-Tenant", &t.slug);
        if let Some(a) = auth {
            let a = if a.starts_with("cmp_") {
                format!("Bearer {a}")
            } else {
                a.to_owned()
            };
            req = req.header("Authorization", a);
        }
        assert_problem(req.send().await.unwrap(), 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn logout_revokes_the_token_at_once() {
    let app = spawn_app().await;
    let t = app.tenant("out").await;
    let other = app.login(&t.slug, &t.admin.email, PASSWORD).await;
    let res = app
        .req(Method::POST, &t.admin, "/api/v1/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get(&t.admin, "/api/v1/me").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // Another session of the same user is not affected.
    assert_eq!(
        app.get(&other, "/api/v1/me").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_token_under_another_tenant_is_refused_and_counted() {
    let app = spawn_app().await;
    let a = app.tenant("ta").await;
    let b = app.tenant("tb").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("X-Tenant", &b.slug)
        .bearer_auth(&a.admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"campus_security_events_total{kind="cross_tenant_token"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn changing_a_password_ends_other_sessions() {
    let app = spawn_app().await;
    let t = app.tenant("pw").await;
    let learner = app.user(&t, "learner").await;
    let second = app.login(&t.slug, &learner.email, PASSWORD).await;
    let res = app
        .patch(
            &learner,
            &format!("/api/v1/users/{}", learner.user_id),
            json!({ "password": "a brand new one", "current_password": PASSWORD }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.get(&learner, "/api/v1/me")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_problem(
        app.get(&second, "/api/v1/me").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    app.login(&t.slug, &learner.email, "a brand new one").await;
}

#[tokio::test]
async fn deleting_a_user_ends_their_sessions() {
    let app = spawn_app().await;
    let t = app.tenant("del").await;
    let learner = app.user(&t, "learner").await;
    let res = app
        .delete(&t.admin, &format!("/api/v1/users/{}", learner.user_id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get(&learner, "/api/v1/me").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_per_tenant_and_email() {
    throttled_per_tenant_and_email(CacheAt::Process).await;
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_per_tenant_and_email_with_redis() {
    throttled_per_tenant_and_email(CacheAt::Redis).await;
}

async fn throttled_per_tenant_and_email(at: CacheAt) {
    let app = spawn_app_with(|k, _| use_cache(k, at)).await;
    let t = app.tenant("thr").await;
    let other = app.tenant("thr2").await;
    // The other tenant has a user with the throttled email too.
    let res = app
        .post(
            &other.admin,
            "/api/v1/users",
            json!({ "name": "Namesake", "email": t.admin.email, "role": "learner", "password": PASSWORD }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let attempt = |slug: String, email: String, password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/auth/login"))
                .header("X-Tenant", slug)
                .json(&json!({ "email": email, "password": password }))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        let res = attempt(t.slug.clone(), t.admin.email.clone(), "wrong password").await;
        assert_problem(res, 401, "invalid_credentials").await;
    }
    // Now even the right password is refused for a while.
    let res = attempt(t.slug.clone(), t.admin.email.clone(), PASSWORD).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 429, "rate_limited").await;
    // Another email of the same tenant, and the same email in another tenant, are not.
    let res = attempt(other.slug.clone(), other.admin.email.clone(), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = attempt(other.slug.clone(), t.admin.email.clone(), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = attempt(t.slug.clone(), "someone@else.test".into(), "wrong password").await;
    assert_problem(res, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn api_keys_act_with_their_role_and_stop_when_revoked() {
    let app = spawn_app().await;
    let t = app.tenant("keys").await;
    let created = json_ok(
        app.post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "ci", "role": "instructor" }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let as_key = Session {
        tenant: t.slug.clone(),
        token: key.clone(),
        user_id: String::new(),
        email: String::new(),
    };

    let res = app
        .post(&as_key, "/api/v1/courses", json!({ "title": "By key" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app.get(&as_key, "/api/v1/users").send().await.unwrap();
    assert_problem(res, 403, "forbidden").await;

    // Listed without the secret.
    let list = json_ok(
        app.get(&t.admin, "/api/v1/api-keys").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(list["items"][0]["id"], key_id.as_str());
    assert!(list["items"][0].get("key").is_none());
    assert!(!list.to_string().contains(&key));

    let res = app
        .delete(&t.admin, &format!("/api/v1/api-keys/{key_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get(&as_key, "/api/v1/courses").send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn secrets_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let t = app.tenant("hash").await;
    let created = json_ok(
        app.post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "k", "role": "learner" }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await;
    let key = created["key"].as_str().unwrap();
    // `<prefix>_<tenant>_<secret>`; the secret's base64url may hold `_` too.
    let secret_of = |s: &str| s.splitn(3, '_').nth(2).unwrap().to_owned();
    let secrets = [
        secret_of(&t.admin.token),
        secret_of(key),
        PASSWORD.to_owned(),
    ];

    // Everything the tenant's tables hold, read on its own transaction.
    let tables: [(&str, &[&str]); 4] = [
        ("users", &["id", "email", "name", "role", "password_hash"]),
        ("sessions", &["id", "user_id", "token_hash"]),
        (
            "api_keys",
            &["id", "name", "role", "key_hash", "created_by"],
        ),
        (
            "audit_events",
            &[
                "actor_id",
                "actor_kind",
                "action",
                "target_type",
                "target_id",
                "details",
            ],
        ),
    ];
    let tenant = app.tenant_row(&t.id).await;
    let mut tx = app.kernel.begin(&tenant).await.unwrap();
    let mut stored = Vec::new();
    for (table, columns) in tables {
        for column in columns {
            let values: Vec<Option<String>> =
                sqlx::query_scalar(&format!("SELECT {column} FROM {table}"))
                    .fetch_all(tx.conn())
                    .await
                    .unwrap();
            stored.extend(values.into_iter().flatten());
        }
    }
    let password_hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
            .bind(&t.admin.email)
            .fetch_one(tx.conn())
            .await
            .unwrap();
    assert!(password_hash.starts_with("$argon2id$"), "{password_hash}");
    let token_hashes: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(tx.conn())
        .await
        .unwrap();
    let key_hashes: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(tx.conn())
        .await
        .unwrap();
    assert!(!token_hashes.is_empty() && key_hashes.len() == 1);
    drop(tx);
    for value in &stored {
        for secret in &secrets {
            assert!(
                !value.contains(secret.as_str()),
                "a secret stored in clear: {value}"
            );
        }
    }

    // On SQLite, not in the files either (free pages, the write-ahead log).
    if backend() == Backend::Sqlite {
        let db = app
            .kernel
            .data_plane()
            .tenant_dir(tenancy::TenantId::parse(&t.id).unwrap());
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(&db).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let haystack = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(!haystack.contains(secret.as_str()));
        }
        assert!(haystack.contains("$argon2id$"));
    }
}

#[tokio::test]
async fn expired_tokens_are_unauthorized() {
    let app = spawn_app_with(|_, s| s.session_ttl = std::time::Duration::from_millis(300)).await;
    let t = app.tenant("exp").await;
    let s = app.login(&t.slug, &t.admin.email, PASSWORD).await;
    assert_eq!(
        app.get(&s, "/api/v1/me").send().await.unwrap().status(),
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_problem(
        app.get(&s, "/api/v1/me").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

/// Guesses sent all at once each count before their password is checked:
/// no more than the throttle's five get an answer about the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_sent_at_once_are_throttled_like_guesses_in_a_row() {
    guesses_at_once(CacheAt::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_sent_at_once_are_throttled_like_guesses_in_a_row_with_redis() {
    guesses_at_once(CacheAt::Redis).await;
}

async fn guesses_at_once(at: CacheAt) {
    let app = spawn_app_with(|k, _| use_cache(k, at)).await;
    let t = app.tenant("guess").await;
    let victim = app.user(&t, "learner").await;
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..20 {
        let req = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("X-Tenant", &t.slug)
            .json(&json!({ "email": victim.email, "password": format!("guess {i}") }));
        guesses.spawn(async move { req.send().await.expect("send").status() });
    }
    let (mut checked, mut throttled) = (0, 0);
    while let Some(status) = guesses.join_next().await {
        match status.expect("task") {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("a guess got {other}"),
        }
    }
    assert!(checked <= 5, "{checked} guesses had their password checked");
    assert_eq!(checked + throttled, 20);
}
