//! The lifecycle through the control-plane API: suspend, resume, delete and
//! purge, their effect on the tenant's API (at once), and the transitions
//! that are refused.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tenancy::{Plan, ProvisionSpec, Slug};

use crate::helpers::*;

async fn lifecycle(app: &TestApp, method: Method, slug: &str, action: &str) -> Response {
    let path = match action {
        "" => format!("/admin/api/v1/tenants/{slug}"),
        "?purge=true" => format!("/admin/api/v1/tenants/{slug}?purge=true"),
        a => format!("/admin/api/v1/tenants/{slug}/{a}"),
    };
    app.operator(method, &path).send().await.expect("lifecycle")
}

async fn suspend(app: &TestApp, slug: &str) -> Response {
    lifecycle(app, Method::POST, slug, "suspend").await
}

async fn resume(app: &TestApp, slug: &str) -> Response {
    lifecycle(app, Method::POST, slug, "resume").await
}

async fn delete(app: &TestApp, slug: &str) -> Response {
    lifecycle(app, Method::DELETE, slug, "").await
}

async fn purge(app: &TestApp, slug: &str) -> Response {
    lifecycle(app, Method::DELETE, slug, "?purge=true").await
}

async fn status_of(res: Response) -> String {
    let v = json_ok(res, 200).await;
    v["status"].as_str().expect("status").to_owned()
}

async fn login(app: &TestApp, s: &Session) -> Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Tenant", &s.tenant)
        .json(&json!({ "email": s.email, "password": PASSWORD }))
        .send()
        .await
        .expect("login")
}

/// The tenant's API answers `status`/`code` to reads, writes and logins alike.
async fn assert_api(app: &TestApp, s: &Session, status: u16, code: &str) {
    let res = app.get(s, "/api/v1/me").send().await.unwrap();
    assert_problem(res, status, code).await;
    let res = app
        .post(s, "/api/v1/courses", json!({ "title": "blocked" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, status, code).await;
    assert_problem(login(app, s).await, status, code).await;
}

async fn assert_served(app: &TestApp, s: &Session) {
    let res = app.get(s, "/api/v1/me").send().await.unwrap();
    let me = json_ok(res, 200).await;
    assert_eq!(me["id"], s.user_id.as_str());
}

#[tokio::test]
async fn suspend_and_resume_take_effect_at_once_and_are_idempotent() {
    let app = spawn_app().await;
    let t = app.tenant("life").await;
    let other = app.tenant("bystander").await;
    let learner = app.user(&t, "learner").await;
    assert_served(&app, &t.admin).await;

    assert_eq!(status_of(suspend(&app, &t.slug).await).await, "suspended");
    for s in [&t.admin, &learner] {
        assert_api(&app, s, 403, "tenant_suspended").await;
    }
    assert_served(&app, &other.admin).await;
    // Suspending again changes nothing.
    assert_eq!(status_of(suspend(&app, &t.slug).await).await, "suspended");
    let v = json_ok(
        app.operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["status"], "suspended");
    assert!(v["deleted_at"].is_null());

    // Resumed, the tokens issued before work again (suspension revokes nothing).
    assert_eq!(status_of(resume(&app, &t.slug).await).await, "active");
    assert_served(&app, &t.admin).await;
    assert_served(&app, &learner).await;
    assert_eq!(login(&app, &t.admin).await.status(), StatusCode::OK);
    // Resuming an active tenant is idempotent.
    assert_eq!(status_of(resume(&app, &t.slug).await).await, "active");
    assert_served(&app, &t.admin).await;
    let res = app
        .post(&t.admin, "/api/v1/courses", json!({ "title": "after" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_deleted_tenants_tokens_and_keys_stop_working_at_once() {
    let app = spawn_app().await;
    let t = app.tenant("doomed").await;
    let other = app.tenant("survivor").await;
    let learner = app.user(&t, "learner").await;
    let key = json_ok(
        app.post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "ci", "role": "admin" }),
        )
        .send()
        .await
        .unwrap(),
        201,
    )
    .await["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let as_key = |path: &str| {
        app.client
            .get(app.url(path))
            .header("X-Tenant", &t.slug)
            .bearer_auth(&key)
    };
    assert_eq!(
        as_key("/api/v1/users").send().await.unwrap().status(),
        StatusCode::OK
    );

    let v = json_ok(delete(&app, &t.slug).await, 200).await;
    assert_eq!(v["status"], "deleted");
    assert!(v["deleted_at"].is_string());

    // No request after the delete answered is served.
    for s in [&t.admin, &learner] {
        assert_api(&app, s, 401, "invalid_tenant").await;
    }
    let res = as_key("/api/v1/users").send().await.unwrap();
    assert_problem(res, 401, "invalid_tenant").await;
    assert_served(&app, &other.admin).await;

    // Its data is kept (until purged), and the operator still sees it.
    app.assert_stored(&t.id).await;
    assert_eq!(app.count_rows(&t.id, "users").await, 2);
    assert_eq!(app.count_rows(&t.id, "api_keys").await, 1);
    let v = json_ok(
        app.operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["status"], "deleted");
}

#[tokio::test]
async fn refused_and_idempotent_transitions() {
    let app = spawn_app().await;
    let t = app.tenant("fsm").await;

    // A suspended tenant may be deleted.
    assert_eq!(status_of(suspend(&app, &t.slug).await).await, "suspended");
    assert_eq!(status_of(delete(&app, &t.slug).await).await, "deleted");
    assert_api(&app, &t.admin, 401, "invalid_tenant").await;

    // Deleted is final, short of purging: no suspend, resume or rename.
    for res in [suspend(&app, &t.slug).await, resume(&app, &t.slug).await] {
        assert_problem(res, 409, "conflict").await;
    }
    let res = app
        .operator(Method::PATCH, &format!("/admin/api/v1/tenants/{}", t.slug))
        .json(&json!({ "name": "Back from the dead" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;
    assert_api(&app, &t.admin, 401, "invalid_tenant").await;
    // Deleting again is idempotent.
    let v = json_ok(delete(&app, &t.slug).await, 200).await;
    assert_eq!(v["status"], "deleted");
    assert_eq!(v["name"], format!("Org {}", t.slug));

    // Purged, the slug names nothing any more.
    assert_eq!(status_of(purge(&app, &t.slug).await).await, "purged");
    for res in [
        suspend(&app, &t.slug).await,
        resume(&app, &t.slug).await,
        delete(&app, &t.slug).await,
        purge(&app, &t.slug).await,
    ] {
        assert_problem(res, 404, "not_found").await;
    }
    assert_api(&app, &t.admin, 401, "invalid_tenant").await;

    // Unknown and malformed slugs are not found.
    for slug in ["no-such-tenant", "NOT-A-SLUG", "a"] {
        for res in [
            suspend(&app, slug).await,
            resume(&app, slug).await,
            delete(&app, slug).await,
        ] {
            assert_problem(res, 404, "not_found").await;
        }
    }
}

#[tokio::test]
async fn a_tenant_in_maintenance_cannot_be_suspended_or_resumed() {
    let app = spawn_app().await;
    let t = app.tenant("busy").await;
    let slug = Slug::parse(&t.slug).unwrap();
    app.kernel.begin_maintenance(&slug).await.unwrap();
    for res in [suspend(&app, &t.slug).await, resume(&app, &t.slug).await] {
        assert_problem(res, 409, "conflict").await;
    }
    // Still in maintenance: reads go on.
    assert_served(&app, &t.admin).await;
    app.kernel.end_maintenance(&slug).await.unwrap();
    assert_eq!(status_of(suspend(&app, &t.slug).await).await, "suspended");
    let err = app
        .kernel
        .begin_maintenance(&slug)
        .await
        .expect_err("suspended");
    assert!(
        matches!(err, tenancy::Error::InvalidTransition(..)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_tenant_still_provisioning_cannot_be_suspended_or_resumed_but_can_be_abandoned() {
    let app = spawn_app().await;
    let slug = unique_slug("half");
    let r = app
        .kernel
        .reserve(&ProvisionSpec {
            slug: Slug::parse(&slug).unwrap(),
            name: "Half made".into(),
            isolation: None,
            placement: None,
            plan: Plan::Free,
        })
        .await
        .unwrap();
    for res in [suspend(&app, &slug).await, resume(&app, &slug).await] {
        assert_problem(res, 409, "conflict").await;
    }
    let v: Value = json_ok(delete(&app, &slug).await, 200).await;
    assert_eq!(v["status"], "deleted");
    // The abandoned provisioning is not resumed by a new request: the slug is
    // taken until purged.
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants")
        .json(&json!({
            "slug": slug, "name": "Again",
            "admin": { "email": format!("a@{slug}.test"), "name": "A", "password": PASSWORD }
        }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;
    assert_eq!(status_of(purge(&app, &slug).await).await, "purged");
    app.assert_destroyed(&r.tenant.id.to_string()).await;
}
