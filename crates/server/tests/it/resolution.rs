//! Every row of API.md's tenant-identification table.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn x_tenant_header_names_the_tenant() {
    let app = spawn_app().await;
    let t = app.tenant("hdr").await;
    let me = json_ok(app.get(&t.admin, "/api/v1/me").send().await.unwrap(), 200).await;
    assert_eq!(me["id"], t.admin.user_id.as_str());
}

#[tokio::test]
async fn host_under_the_base_domain_names_the_tenant() {
    let app = spawn_app_with(|_, s| s.base_domain = Some("campus.test".into())).await;
    let t = app.tenant("host").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Host", format!("{}.campus.test", t.slug))
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    let me = json_ok(res, 200).await;
    assert_eq!(me["id"], t.admin.user_id.as_str());

    // With a port, too.
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Host", format!("{}.campus.test:8080", t.slug))
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Header and host naming the same tenant is fine.
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Host", format!("{}.campus.test", t.slug))
        .header("X-Tenant", &t.slug)
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn host_is_ignored_without_a_base_domain() {
    let app = spawn_app().await;
    let t = app.tenant("nobase").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Host", format!("{}.campus.test", t.slug))
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "tenant_required").await;
}

#[tokio::test]
async fn header_and_host_naming_different_tenants_conflict() {
    let app = spawn_app_with(|_, s| s.base_domain = Some("campus.test".into())).await;
    let a = app.tenant("ca").await;
    let b = app.tenant("cb").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Host", format!("{}.campus.test", b.slug))
        .header("X-Tenant", &a.slug)
        .bearer_auth(&a.admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "tenant_conflict").await;
}

#[tokio::test]
async fn neither_header_nor_host_is_tenant_required() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/api/v1/courses"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "tenant_required").await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": "a@b.c", "password": "whatever1" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "tenant_required").await;
}

#[tokio::test]
async fn two_x_tenant_headers_conflict() {
    let app = spawn_app().await;
    let a = app.tenant("dup").await;
    // Even when both name the same tenant.
    for other in [a.slug.clone(), "someone-else".to_owned()] {
        let res = app
            .client
            .get(app.url("/api/v1/me"))
            .header("X-Tenant", &a.slug)
            .header("X-Tenant", &other)
            .bearer_auth(&a.admin.token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "tenant_conflict").await;
    }
}

#[tokio::test]
async fn malformed_unknown_and_deleted_tenants_answer_alike() {
    let app = spawn_app().await;
    let gone = app.tenant("gone").await;
    let res = app
        .operator(
            reqwest::Method::DELETE,
            &format!("/admin/api/v1/tenants/{}", gone.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let mut bodies = Vec::new();
    for name in [
        "ACME",
        "a",
        "bad_slug",
        "-x-",
        "../etc",
        "no-such-tenant",
        gone.slug.as_str(),
    ] {
        let res = app
            .client
            .get(app.url("/api/v1/courses"))
            .header("X-Tenant", name)
            .bearer_auth(&gone.admin.token)
            .send()
            .await
            .unwrap();
        let mut body = assert_problem(res, 401, "invalid_tenant").await;
        body.as_object_mut().unwrap().remove("request_id");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "bodies differ: {bodies:?}"
    );
}

#[tokio::test]
async fn slugs_are_compared_exactly() {
    let app = spawn_app().await;
    let t = app.tenant("exact").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("X-Tenant", t.slug.to_uppercase())
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "invalid_tenant").await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("X-Tenant", format!(" {}", t.slug))
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    // reqwest/hyper trims leading whitespace in header values; either way it
    // must not reach another tenant.
    assert!(matches!(res.status().as_u16(), 200 | 401));
}

#[tokio::test]
async fn a_suspended_tenant_answers_403() {
    let app = spawn_app().await;
    let t = app.tenant("susp").await;
    let res = app
        .operator(
            reqwest::Method::POST,
            &format!("/admin/api/v1/tenants/{}/suspend", t.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["status"], "suspended");
    let res = app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    assert_problem(res, 403, "tenant_suspended").await;
    let res = app
        .operator(
            reqwest::Method::POST,
            &format!("/admin/api/v1/tenants/{}/resume", t.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["status"], "active");
    let res = app.get(&t.admin, "/api/v1/courses").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tenant_in_maintenance_reads_but_does_not_write() {
    let app = spawn_app().await;
    let t = app.tenant("maint").await;
    let course = app.course(&t.admin, "Before", true).await;
    let slug = tenancy::Slug::parse(&t.slug).unwrap();
    app.kernel.begin_maintenance(&slug).await.unwrap();

    let res = app
        .get(&t.admin, &format!("/api/v1/courses/{course}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(&t.admin, "/api/v1/courses", json!({ "title": "During" }))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "tenant_maintenance").await;

    app.kernel.end_maintenance(&slug).await.unwrap();
    let res = app
        .post(&t.admin, "/api/v1/courses", json!({ "title": "After" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}
