//! Provisioning and the control plane: crash safety of the provisioning steps,
//! slug reuse, idempotency keys, input validation, operator authentication,
//! the operator's views, schema versions and purging.

use std::collections::HashSet;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use server::{AppState, ServerConfig};
use tenancy::{Kernel, KernelConfig, Migration, Plan, ProvisionSpec, Slug, TenantStatus};

use crate::helpers::*;

const OLD_PASSWORD: &str = "an earlier run's password";

fn body(slug: &str, email: &str, password: &str) -> Value {
    json!({
        "slug": slug,
        "name": format!("Org {slug}"),
        "admin": { "email": email, "name": "Admin", "password": password }
    })
}

fn spec(slug: &str) -> ProvisionSpec {
    ProvisionSpec {
        slug: Slug::parse(slug).expect("slug"),
        name: format!("Interrupted {slug}"),
        isolation: None,
        placement: None,
        plan: Plan::Standard,
    }
}

async fn provision(app: &TestApp, body: &Value) -> Response {
    app.operator(Method::POST, "/admin/api/v1/tenants")
        .json(body)
        .send()
        .await
        .expect("provision")
}

async fn login_raw(app: &TestApp, slug: &str, email: &str, password: &str) -> Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("X-Tenant", slug)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
}

/// Every tenant the control plane lists (one page is enough in these tests).
async fn registry_rows(app: &TestApp) -> Vec<Value> {
    let res = app
        .operator(Method::GET, "/admin/api/v1/tenants?limit=200")
        .send()
        .await
        .expect("list");
    let page = json_ok(res, 200).await;
    assert!(page["next_cursor"].is_null(), "{page}");
    page["items"].as_array().expect("items").clone()
}

async fn rows_with_slug(app: &TestApp, slug: &str) -> Vec<Value> {
    registry_rows(app)
        .await
        .into_iter()
        .filter(|t| t["slug"] == slug)
        .collect()
}

async fn operator_view(app: &TestApp, slug: &str) -> Value {
    let res = app
        .operator(Method::GET, &format!("/admin/api/v1/tenants/{slug}"))
        .send()
        .await
        .expect("show");
    json_ok(res, 200).await
}

async fn users_of(app: &TestApp, s: &Session) -> Vec<Value> {
    let res = app
        .get(s, "/api/v1/users?limit=200")
        .send()
        .await
        .expect("users");
    json_ok(res, 200).await["items"]
        .as_array()
        .expect("items")
        .clone()
}

async fn audit_actions(app: &TestApp, s: &Session) -> Vec<String> {
    let res = app
        .get(s, "/api/v1/audit-events?limit=200")
        .send()
        .await
        .expect("audit");
    json_ok(res, 200).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect()
}

/// The tenant is not served: its API answers `invalid_tenant`, as for a
/// tenant that does not exist.
async fn assert_not_served(app: &TestApp, slug: &str, email: &str) {
    for password in [PASSWORD, OLD_PASSWORD] {
        let res = login_raw(app, slug, email, password).await;
        assert_problem(res, 401, "invalid_tenant").await;
    }
    let res = app
        .client
        .get(app.url("/api/v1/courses"))
        .header("X-Tenant", slug)
        .send()
        .await
        .expect("courses");
    assert_problem(res, 401, "invalid_tenant").await;
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    /// The registry row exists, nothing else.
    AfterReserve,
    /// ... and the tenant's database, empty (killed inside `build`).
    AfterEmptyDatabase,
    /// ... and the database, migrated.
    AfterBuild,
    /// ... and an admin row with another password, committed without its
    /// audit event (killed inside the seed, or a seed by an older run).
    AfterPartialSeed,
    /// ... and a seed transaction that never committed.
    DuringSeed,
}

/// Runs a prefix of the provisioning steps through the kernel, checks the
/// half-made tenant is not served, then re-runs the whole provisioning.
async fn crash_then_rerun(crash: Crash, rerun_via_ops: bool) {
    let app = spawn_app().await;
    let slug = unique_slug("crash");
    let email = format!("admin@{slug}.test");

    let r = app.kernel.reserve(&spec(&slug)).await.expect("reserve");
    assert!(!r.resumed);
    assert_eq!(r.tenant.status, TenantStatus::Provisioning);
    match crash {
        Crash::AfterReserve => {}
        Crash::AfterEmptyDatabase if backend() == Backend::Sqlite => {
            // An empty database file, as a crash right after creating it leaves.
            let dir = app.kernel.data_plane().tenant_dir(r.tenant.id);
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::File::create(dir.join("tenant.db")).expect("file");
        }
        Crash::AfterEmptyDatabase if backend() == Backend::Pool => {
            // A pool tenant has nothing of its own for `build` to make: the
            // shared tables are made and migrated at start-up, for every
            // tenant. A crash inside its build leaves the state a crash after
            // reserve leaves.
        }
        Crash::AfterEmptyDatabase => {
            // The tenant's schema and role (or its database) made, and no
            // migration: what a crash during the first migration leaves (each
            // migration commits on its own).
            let no_migrations = tenancy::MigrationSet {
                sqlite: &[],
                postgres: &[],
                pool: &[],
            };
            app.kernel
                .data_plane()
                .build(&r.tenant, &no_migrations)
                .await
                .expect("empty build");
            let f = app.footprint(&r.tenant.id.to_string()).await;
            match backend() {
                Backend::Schema => assert!(f.schema && f.role, "{f:?}"),
                Backend::Database => assert!(f.database, "{f:?}"),
                _ => unreachable!("handled above"),
            }
        }
        Crash::AfterBuild => app.kernel.build(&r).await.expect("build"),
        Crash::AfterPartialSeed | Crash::DuringSeed => {
            app.kernel.build(&r).await.expect("build");
            let hash = lms::auth::hash_password(OLD_PASSWORD.into())
                .await
                .expect("hash");
            let now = tenancy::clock::now();
            let mut tx = app.kernel.begin_write(&r.tenant).await.expect("begin");
            sqlx::query(
                "INSERT INTO users (id, email, name, role, password_hash, created_at, updated_at)
                 VALUES ($1, $2, 'Earlier admin', 'admin', $3, $4, $4)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&email)
            .bind(hash)
            .bind(now)
            .execute(tx.conn())
            .await
            .expect("insert admin");
            if matches!(crash, Crash::AfterPartialSeed) {
                tx.commit().await.expect("commit");
            } else {
                drop(tx);
            }
        }
    }

    // Half-made: listed as provisioning for the operator, never served.
    let v = operator_view(&app, &slug).await;
    assert_eq!(v["status"], "provisioning", "{v}");
    assert_eq!(v["id"], r.tenant.id.to_string());
    assert_not_served(&app, &slug, &email).await;
    if matches!(crash, Crash::AfterReserve | Crash::AfterEmptyDatabase) {
        // Nor can it be activated without its database.
        let err = app.kernel.activate(&r).await.expect_err("activate unbuilt");
        assert!(
            matches!(err, tenancy::Error::InvalidTransition(..)),
            "{err:?}"
        );
        assert_not_served(&app, &slug, &email).await;
    }

    // Running the whole provisioning again finishes the same tenant.
    let done = if rerun_via_ops {
        let req: lms::ops::NewTenant =
            serde_json::from_value(body(&slug, &email, PASSWORD)).expect("new tenant");
        let p = lms::ops::create_tenant(&app.kernel, req)
            .await
            .expect("rerun");
        serde_json::to_value(p).expect("json")
    } else {
        json_ok(provision(&app, &body(&slug, &email, PASSWORD)).await, 201).await
    };
    assert_eq!(done["id"], r.tenant.id.to_string(), "{done}");
    assert_eq!(done["status"], "active");
    assert_eq!(
        done["name"],
        format!("Org {slug}"),
        "the rerun's request wins"
    );
    assert_eq!(done["schema_version"], app.kernel.latest_version());
    assert_eq!(done["usage"]["users"], 1, "{done}");

    let s = app.login(&slug, &email, PASSWORD).await;
    let users = users_of(&app, &s).await;
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0]["role"], "admin");
    assert_eq!(users[0]["email"], email.as_str());
    assert_eq!(users[0]["name"], "Admin");
    let provisioned = audit_actions(&app, &s)
        .await
        .into_iter()
        .filter(|a| a == "tenant.provisioned")
        .count();
    assert_eq!(provisioned, 1);
    if matches!(crash, Crash::AfterPartialSeed) {
        // The earlier run's password is replaced by the one the rerun asked for.
        let res = login_raw(&app, &slug, &email, OLD_PASSWORD).await;
        assert_problem(res, 401, "invalid_credentials").await;
    }

    assert_eq!(rows_with_slug(&app, &slug).await.len(), 1);
    app.assert_stored(&r.tenant.id.to_string()).await;

    // Now it is done, another run is a conflict, and changes nothing.
    let res = provision(&app, &body(&slug, "other@x.test", PASSWORD)).await;
    assert_problem(res, 409, "conflict").await;
    assert_eq!(users_of(&app, &s).await.len(), 1);
}

#[tokio::test]
async fn a_crash_after_reserve_is_not_served_and_a_rerun_finishes_it() {
    crash_then_rerun(Crash::AfterReserve, false).await;
}

#[tokio::test]
async fn a_crash_inside_build_is_not_served_and_a_rerun_finishes_it() {
    crash_then_rerun(Crash::AfterEmptyDatabase, false).await;
}

#[tokio::test]
async fn a_crash_after_build_is_not_served_and_a_rerun_through_ops_finishes_it() {
    crash_then_rerun(Crash::AfterBuild, true).await;
}

#[tokio::test]
async fn a_crash_after_a_partial_seed_is_not_served_and_a_rerun_finishes_it() {
    crash_then_rerun(Crash::AfterPartialSeed, false).await;
}

#[tokio::test]
async fn a_crash_during_the_seed_is_not_served_and_a_rerun_finishes_it() {
    crash_then_rerun(Crash::DuringSeed, false).await;
}

#[tokio::test]
async fn provisioning_an_active_slug_conflicts() {
    let app = spawn_app().await;
    let t = app.tenant("taken").await;
    let intruder = format!("intruder@{}.test", t.slug);
    let res = provision(&app, &body(&t.slug, &intruder, PASSWORD)).await;
    assert_problem(res, 409, "conflict").await;

    // Nothing changed: one row, the same admin, no new user.
    let rows = rows_with_slug(&app, &t.slug).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], t.id.as_str());
    let res = login_raw(&app, &t.slug, &intruder, PASSWORD).await;
    assert_problem(res, 401, "invalid_credentials").await;
    assert_eq!(users_of(&app, &t.admin).await.len(), 1);
}

#[tokio::test]
async fn a_deleted_slug_stays_taken_until_purged_then_is_fresh() {
    let app = spawn_app().await;
    let old = app.tenant("reuse").await;
    let course = app.course(&old.admin, "Old course", true).await;
    app.assert_stored(&old.id).await;

    let res = app
        .operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{}", old.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["status"], "deleted");
    let new_admin = format!("second@{}.test", old.slug);
    let res = provision(&app, &body(&old.slug, &new_admin, PASSWORD)).await;
    assert_problem(res, 409, "conflict").await;
    // A deleted tenant's data is kept until purged.
    app.assert_stored(&old.id).await;
    assert_eq!(app.count_rows(&old.id, "courses").await, 1);

    let res = app
        .operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{}?purge=true", old.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["status"], "purged");
    app.assert_destroyed(&old.id).await;

    let fresh = json_ok(
        provision(&app, &body(&old.slug, &new_admin, PASSWORD)).await,
        201,
    )
    .await;
    assert_ne!(
        fresh["id"],
        old.id.as_str(),
        "a fresh tenant, not the old one revived"
    );
    assert_eq!(fresh["status"], "active");
    app.assert_stored(fresh["id"].as_str().expect("id")).await;
    assert_eq!(fresh["usage"]["users"], 1);
    assert_eq!(fresh["usage"]["courses"], 0);
    assert_eq!(rows_with_slug(&app, &old.slug).await.len(), 1);

    // The old tenant's credentials and data are gone.
    let res = app.get(&old.admin, "/api/v1/me").send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
    let res = login_raw(&app, &old.slug, &old.admin.email, PASSWORD).await;
    assert_problem(res, 401, "invalid_credentials").await;
    let s = app.login(&old.slug, &new_admin, PASSWORD).await;
    let res = app
        .get(&s, &format!("/api/v1/courses/{course}"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let courses = json_ok(app.get(&s, "/api/v1/courses").send().await.unwrap(), 200).await;
    assert_eq!(courses["items"], json!([]));
    let users = users_of(&app, &s).await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["email"], new_admin.as_str());
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_answer_the_same_tenant() {
    let app = spawn_app().await;
    let slug = unique_slug("idem");
    let email = format!("admin@{slug}.test");
    let b = body(&slug, &email, PASSWORD);
    let send = |b: Value| {
        app.operator(Method::POST, "/admin/api/v1/tenants")
            .header("Idempotency-Key", format!("key-{slug}"))
            .json(&b)
            .send()
    };
    let first = json_ok(send(b.clone()).await.unwrap(), 201).await;
    let second = json_ok(send(b.clone()).await.unwrap(), 201).await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["slug"], slug.as_str());
    assert_eq!(second["status"], "active");
    assert_eq!(rows_with_slug(&app, &slug).await.len(), 1);

    // The same key with another request is refused, and makes nothing.
    let other = unique_slug("idem-other");
    let res = send(body(&other, &email, PASSWORD)).await.unwrap();
    assert_problem(res, 409, "conflict").await;
    let mut changed = b.clone();
    changed["name"] = json!("Another name");
    let res = send(changed).await.unwrap();
    assert_problem(res, 409, "conflict").await;
    assert!(rows_with_slug(&app, &other).await.is_empty());
    assert_eq!(
        operator_view(&app, &slug).await["name"],
        format!("Org {slug}")
    );

    // Another key for the taken slug is an ordinary conflict.
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants")
        .header("Idempotency-Key", format!("another-{slug}"))
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "conflict").await;

    let s = app.login(&slug, &email, PASSWORD).await;
    assert_eq!(users_of(&app, &s).await.len(), 1);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_before_anything_changes() {
    let app = spawn_app().await;
    let slug = unique_slug("badkey");
    for key in ["has space".to_owned(), "k".repeat(201)] {
        let res = app
            .operator(Method::POST, "/admin/api/v1/tenants")
            .header("Idempotency-Key", key)
            .json(&body(&slug, "a@b.test", PASSWORD))
            .send()
            .await
            .unwrap();
        assert_problem(res, 422, "validation_failed").await;
    }
    assert!(registry_rows(&app).await.is_empty());
}

/// Fires `n` copies of one provisioning request at once.
async fn race(app: &TestApp, n: usize, b: &Value, key: Option<&str>) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut req = app.operator(Method::POST, "/admin/api/v1/tenants").json(b);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        set.spawn(async move {
            let res = req.send().await.expect("send");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        });
    }
    set.join_all().await
}

async fn assert_one_tenant_from_race(app: &TestApp, results: &[(u16, Value)], slug: &str) {
    let mut ids = HashSet::new();
    for (status, v) in results {
        match status {
            201 => {
                assert_eq!(v["status"], "active", "{v}");
                ids.insert(v["id"].as_str().expect("id").to_owned());
            }
            409 => assert_eq!(v["code"], "conflict", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "exactly one tenant made: {results:?}");
    let rows = rows_with_slug(app, slug).await;
    assert_eq!(rows.len(), 1);
    assert!(ids.contains(rows[0]["id"].as_str().expect("id")));
    assert_eq!(rows[0]["status"], "active");
    let s = app
        .login(slug, &format!("admin@{slug}.test"), PASSWORD)
        .await;
    let users = users_of(app, &s).await;
    assert_eq!(users.len(), 1, "{users:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_provisioning_makes_one_tenant() {
    let app = spawn_app().await;
    let slug = unique_slug("race");
    let b = body(&slug, &format!("admin@{slug}.test"), PASSWORD);
    let results = race(&app, 8, &b, None).await;
    assert_one_tenant_from_race(&app, &results, &slug).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_with_one_idempotency_key_make_one_tenant() {
    let app = spawn_app().await;
    let slug = unique_slug("race-key");
    let b = body(&slug, &format!("admin@{slug}.test"), PASSWORD);
    let key = format!("k-{slug}");
    let results = race(&app, 8, &b, Some(&key)).await;
    assert_one_tenant_from_race(&app, &results, &slug).await;
    // Once settled, a retry with the key answers the same tenant.
    let id = rows_with_slug(&app, &slug).await[0]["id"].clone();
    let again = race(&app, 1, &b, Some(&key)).await;
    assert_eq!(again[0].0, 201, "{:?}", again[0].1);
    assert_eq!(again[0].1["id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_provisioning_of_different_tenants_makes_each() {
    let app = spawn_app().await;
    let slugs: Vec<String> = (0..8).map(|_| unique_slug("many")).collect();
    let mut set = tokio::task::JoinSet::new();
    for slug in &slugs {
        let req = app
            .operator(Method::POST, "/admin/api/v1/tenants")
            .json(&body(slug, &format!("admin@{slug}.test"), PASSWORD));
        set.spawn(async move { json_ok(req.send().await.expect("send"), 201).await });
    }
    let made = set.join_all().await;
    for slug in &slugs {
        let v = made
            .iter()
            .find(|v| v["slug"] == slug.as_str())
            .expect("made");
        assert_eq!(v["status"], "active", "{v}");
        app.assert_stored(v["id"].as_str().expect("id")).await;
        let s = app
            .login(slug, &format!("admin@{slug}.test"), PASSWORD)
            .await;
        let users = users_of(&app, &s).await;
        assert_eq!(users.len(), 1, "{slug}: {users:?}");
    }
    assert_eq!(registry_rows(&app).await.len(), slugs.len());
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let good = body("good-slug", "admin@good.test", PASSWORD);
    let with = |path: &[&str], value: Value| {
        let mut b = good.clone();
        let mut at = &mut b;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        b
    };
    let mut cases: Vec<(String, Value, u16, &str)> = Vec::new();
    for slug in [
        "ACME",
        "Acme",
        "ab",
        "",
        "public;",
        "a'b-c",
        "o'reilly",
        "\"quoted\"",
        "../x",
        "a/b/c",
        "acme-",
        "1acme",
        "ac me",
        "acme\u{0}",
    ] {
        cases.push((
            format!("slug {slug:?}"),
            with(&["slug"], json!(slug)),
            422,
            "validation_failed",
        ));
    }
    let long = "a".repeat(64);
    cases.push((
        "slug too long".into(),
        with(&["slug"], json!(long)),
        422,
        "validation_failed",
    ));
    cases.push((
        "slug not a string".into(),
        with(&["slug"], json!(7)),
        400,
        "invalid_body",
    ));
    for email in ["not-an-email", "a@b", "@acme.test", "a b@acme.test", ""] {
        cases.push((
            format!("email {email:?}"),
            with(&["admin", "email"], json!(email)),
            422,
            "validation_failed",
        ));
    }
    for pw in ["short", "1234567", ""] {
        cases.push((
            format!("password {pw:?}"),
            with(&["admin", "password"], json!(pw)),
            422,
            "validation_failed",
        ));
    }
    let mut isolations = vec!["bogus", "DATABASE", "Schema", ""];
    if !backend().is_postgres() {
        // Real modes that the embedded data plane does not offer.
        isolations.extend(["schema", "pool"]);
    }
    for iso in isolations {
        cases.push((
            format!("isolation {iso:?}"),
            with(&["isolation"], json!(iso)),
            422,
            "validation_failed",
        ));
    }
    cases.push((
        "placement".into(),
        with(&["placement"], json!("elsewhere")),
        422,
        "validation_failed",
    ));
    cases.push((
        "plan".into(),
        with(&["plan"], json!("platinum")),
        422,
        "validation_failed",
    ));
    cases.push((
        "empty name".into(),
        with(&["name"], json!("   ")),
        422,
        "validation_failed",
    ));
    cases.push((
        "empty admin name".into(),
        with(&["admin", "name"], json!("")),
        422,
        "validation_failed",
    ));
    cases.push((
        "unknown field".into(),
        with(&["colour"], json!("red")),
        400,
        "invalid_body",
    ));
    cases.push((
        "unknown admin field".into(),
        with(&["admin", "role"], json!("learner")),
        400,
        "invalid_body",
    ));
    let mut no_admin = good.clone();
    no_admin.as_object_mut().unwrap().remove("admin");
    cases.push(("no admin".into(), no_admin, 400, "invalid_body"));

    for (what, b, status, code) in cases {
        let res = provision(&app, &b).await;
        let got = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
    }
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_body").await;
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;

    assert!(registry_rows(&app).await.is_empty());
    let migrations = json_ok(
        app.operator(Method::GET, "/admin/api/v1/migrations")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(migrations["tenants"], json!([]));
    let tenants_dir = app.dir.path().join("tenants");
    let made = std::fs::read_dir(&tenants_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(made, 0, "no tenant directory was made");
    if backend().is_postgres() {
        // No tenant schema in the app's database, and no row in the pool
        // tables. (Roles and databases are cluster-wide, shared with other
        // tests running at once: a tenant's would need its id, and none was
        // reserved, as the empty registry shows.)
        let schemas = app
            .pg_count(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'",
                &[],
            )
            .await;
        assert_eq!(schemas, 0, "no tenant schema was made");
        for table in tenancy::dataplane::postgres::POOL_TABLES {
            let sql = format!("SELECT count(*) FROM campus_pool.{table}");
            assert_eq!(app.pg_count(&sql, &[]).await, 0, "a row in {table}");
        }
    }

    // The good request still works afterwards.
    json_ok(provision(&app, &good).await, 201).await;
}

#[tokio::test]
async fn every_control_plane_route_needs_the_operator_token() {
    let app = spawn_app().await;
    let t = app.tenant("guarded").await;
    let slug = t.slug.as_str();
    let new = body(&unique_slug("sneaky"), "a@sneaky.test", PASSWORD);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/admin/api/v1/tenants".into(), None),
        (
            Method::POST,
            "/admin/api/v1/tenants".into(),
            Some(new.clone()),
        ),
        (Method::GET, format!("/admin/api/v1/tenants/{slug}"), None),
        (
            Method::PATCH,
            format!("/admin/api/v1/tenants/{slug}"),
            Some(json!({ "name": "Pwned" })),
        ),
        (
            Method::DELETE,
            format!("/admin/api/v1/tenants/{slug}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/admin/api/v1/tenants/{slug}?purge=true"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/v1/tenants/{slug}/suspend"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/api/v1/tenants/{slug}/resume"),
            None,
        ),
        (Method::GET, "/admin/api/v1/migrations".into(), None),
        (
            Method::GET,
            "/admin/api/v1/tenants/no-such-tenant".into(),
            None,
        ),
    ];
    let wrong_tokens = [
        "wrong-operator-token-0123456789".to_owned(),
        format!("{OPERATOR_TOKEN}x"),
        OPERATOR_TOKEN[..OPERATOR_TOKEN.len() - 1].to_owned(),
        t.admin.token.clone(),
        String::new(),
    ];
    for (method, path, b) in &routes {
        let mut attempts = vec![app.client.request(method.clone(), app.url(path))];
        for tok in &wrong_tokens {
            attempts.push(
                app.client
                    .request(method.clone(), app.url(path))
                    .bearer_auth(tok),
            );
        }
        // The right token under another scheme is no bearer token.
        attempts.push(
            app.client
                .request(method.clone(), app.url(path))
                .header("Authorization", format!("Basic {OPERATOR_TOKEN}")),
        );
        attempts.push(
            app.client
                .request(method.clone(), app.url(path))
                .header("Authorization", OPERATOR_TOKEN),
        );
        for req in attempts {
            let req = match b {
                Some(b) => req.json(b),
                None => req,
            };
            let res = req.send().await.unwrap();
            let body = assert_problem(res, 401, "unauthorized").await;
            assert!(!body.to_string().contains(slug), "{method} {path}: {body}");
        }
    }
    // Nothing happened.
    let rows = registry_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "active");
    assert_eq!(rows[0]["name"], format!("Org {slug}"));
    let res = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_operator_sees_status_placement_versions_and_usage() {
    let app = spawn_app().await;
    let a = app.tenant("view-a").await;
    let b = app.tenant("view-b").await;
    let latest = app.kernel.latest_version();

    let find = |rows: &[Value], slug: &str| {
        rows.iter()
            .find(|r| r["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("{slug} not listed: {rows:?}"))
    };
    let rows = registry_rows(&app).await;
    assert_eq!(rows.len(), 2);
    for t in [&a, &b] {
        let r = find(&rows, &t.slug);
        assert_eq!(r["id"], t.id.as_str());
        assert_eq!(r["name"], format!("Org {}", t.slug));
        assert_eq!(r["status"], "active");
        assert_eq!(r["isolation"], backend().isolation());
        assert_eq!(r["placement"], "default");
        assert_eq!(r["plan"], "standard");
        assert_eq!(r["schema_version"], latest);
        assert_eq!(r["migration_pending"], false);
        assert!(r["deleted_at"].is_null());
        assert!(r["created_at"].is_string() && r["updated_at"].is_string());
        assert_eq!(
            r["usage"],
            json!({ "users": 1, "courses": 0, "stored_bytes": 0 })
        );
    }

    // Usage follows what the tenant's admin does, in that tenant only.
    app.user(&a, "instructor").await;
    app.user(&a, "learner").await;
    for i in 0..3 {
        app.course(&a.admin, &format!("A course {i}"), i % 2 == 0)
            .await;
    }
    let rows = registry_rows(&app).await;
    assert_eq!(find(&rows, &a.slug)["usage"]["users"], 3);
    assert_eq!(find(&rows, &a.slug)["usage"]["courses"], 3);
    assert_eq!(find(&rows, &b.slug)["usage"]["users"], 1);
    assert_eq!(find(&rows, &b.slug)["usage"]["courses"], 0);
    assert_eq!(operator_view(&app, &a.slug).await["usage"]["courses"], 3);

    // Keyset pagination of the list.
    let res = app
        .operator(Method::GET, "/admin/api/v1/tenants?limit=1")
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("link"));
    let page = json_ok(res, 200).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let page2 = json_ok(
        app.operator(
            Method::GET,
            &format!("/admin/api/v1/tenants?limit=1&after={cursor}"),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_ne!(page2["items"][0]["id"], page["items"][0]["id"]);
    assert!(page2["next_cursor"].is_null());

    // PATCH name and plan.
    let path = format!("/admin/api/v1/tenants/{}", a.slug);
    let v = json_ok(
        app.operator(Method::PATCH, &path)
            .json(&json!({ "name": "  Acme University  ", "plan": "enterprise" }))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["name"], "Acme University");
    assert_eq!(v["plan"], "enterprise");
    let v = json_ok(
        app.operator(Method::PATCH, &path)
            .json(&json!({ "plan": "free" }))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        v["name"], "Acme University",
        "an absent field is left alone"
    );
    assert_eq!(v["plan"], "free");
    let v = operator_view(&app, &a.slug).await;
    assert_eq!(
        (v["name"].as_str(), v["plan"].as_str()),
        (Some("Acme University"), Some("free"))
    );
    assert_eq!(
        operator_view(&app, &b.slug).await["name"],
        format!("Org {}", b.slug)
    );

    for (patch, status, code) in [
        (json!({ "plan": "gold" }), 422, "validation_failed"),
        (json!({ "name": "" }), 422, "validation_failed"),
        (json!({ "slug": "renamed" }), 400, "invalid_body"),
        (json!({ "status": "active" }), 400, "invalid_body"),
    ] {
        let res = app
            .operator(Method::PATCH, &path)
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_problem(res, status, code).await;
    }
    let res = app
        .operator(Method::PATCH, "/admin/api/v1/tenants/no-such-tenant")
        .json(&json!({ "name": "X" }))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = app
        .operator(Method::GET, "/admin/api/v1/tenants/NOT..A..SLUG")
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;

    // The migrations view.
    let m = json_ok(
        app.operator(Method::GET, "/admin/api/v1/migrations")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["latest"], latest);
    let tenants = m["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    for t in tenants {
        assert_eq!(t["schema_version"], latest);
        assert_eq!(t["pending"], false);
        assert_eq!(t["status"], "active");
    }
    let slugs: HashSet<_> = tenants
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, HashSet::from([a.slug.as_str(), b.slug.as_str()]));
}

/// A second server over an existing kernel (here: the same data directory,
/// opened by a newer build).
pub(crate) struct OtherServer {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl OtherServer {
    pub(crate) async fn start(kernel: Kernel) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(kernel, ServerConfig::new(OPERATOR_TOKEN));
        tokio::spawn(async move {
            server::serve(listener, state, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Self {
            base,
            client: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    fn as_user(&self, method: Method, s: &Session, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("X-Tenant", &s.tenant)
            .bearer_auth(&s.token)
    }

    fn as_operator(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(OPERATOR_TOKEN)
    }
}

/// The tenant schema plus one more migration, as a newer build would have.
pub(crate) fn newer_migrations() -> tenancy::MigrationSet {
    let extend = |set: &'static [Migration], sql: &'static str| -> &'static [Migration] {
        let mut set = set.to_vec();
        set.push(Migration {
            version: lms::TENANT_MIGRATIONS.latest() + 1,
            name: "course_subtitle",
            sql,
        });
        Box::leak(set.into_boxed_slice())
    };
    let add = "ALTER TABLE courses ADD COLUMN subtitle TEXT NOT NULL DEFAULT '';";
    tenancy::MigrationSet {
        sqlite: extend(lms::TENANT_MIGRATIONS.sqlite, add),
        postgres: extend(lms::TENANT_MIGRATIONS.postgres, add),
        pool: extend(lms::TENANT_MIGRATIONS.pool, add),
    }
}

#[tokio::test]
async fn a_tenant_behind_the_schema_is_not_served_until_migrated() {
    let app = spawn_app().await;
    let t = app.tenant("behind").await;
    let course = app
        .course(&t.admin, "Kept across the migration", true)
        .await;
    let old = app.kernel.latest_version();

    let newer = Kernel::open(KernelConfig {
        tenant_migrations: newer_migrations(),
        ..app.config.clone()
    })
    .await
    .expect("newer kernel");
    assert_eq!(newer.latest_version(), old + 1);
    let srv = OtherServer::start(newer.clone()).await;

    // Reads, writes and logins all wait for the migration.
    for req in [
        srv.as_user(Method::GET, &t.admin, "/api/v1/me"),
        srv.as_user(Method::GET, &t.admin, &format!("/api/v1/courses/{course}")),
        srv.as_user(Method::POST, &t.admin, "/api/v1/courses")
            .json(&json!({ "title": "during" })),
        srv.client
            .post(format!("{}/api/v1/auth/login", srv.base))
            .header("X-Tenant", &t.slug)
            .json(&json!({ "email": t.admin.email, "password": PASSWORD })),
    ] {
        let res = req.send().await.unwrap();
        assert!(res.headers().contains_key("retry-after"));
        assert_problem(res, 503, "tenant_maintenance").await;
    }
    let v = json_ok(
        srv.as_operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["schema_version"], old);
    assert_eq!(v["migration_pending"], true);
    let m = json_ok(
        srv.as_operator(Method::GET, "/admin/api/v1/migrations")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["latest"], old + 1);
    assert_eq!(m["tenants"][0]["pending"], true);

    // A tenant provisioned by the newer build is at its version and served.
    let slug2 = unique_slug("born-new");
    let email2 = format!("admin@{slug2}.test");
    let v = json_ok(
        srv.as_operator(Method::POST, "/admin/api/v1/tenants")
            .json(&body(&slug2, &email2, PASSWORD))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    assert_eq!(v["schema_version"], old + 1);
    let res = srv
        .client
        .post(format!("{}/api/v1/auth/login", srv.base))
        .header("X-Tenant", &slug2)
        .json(&json!({ "email": email2, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Migrated, it is served again, with its data.
    let tenant = newer.find(&Slug::parse(&t.slug).unwrap()).await.unwrap();
    let applied = newer.migrate_tenant(&tenant).await.expect("migrate");
    assert_eq!((applied.from, applied.to), (old, old + 1));
    let me = json_ok(
        srv.as_user(Method::GET, &t.admin, "/api/v1/me")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(me["id"], t.admin.user_id.as_str());
    let c = json_ok(
        srv.as_user(Method::GET, &t.admin, &format!("/api/v1/courses/{course}"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(c["title"], "Kept across the migration");
    let res = srv
        .as_user(Method::POST, &t.admin, "/api/v1/courses")
        .json(&json!({ "title": "after" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let m = json_ok(
        srv.as_operator(Method::GET, "/admin/api/v1/migrations")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(
        m["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["pending"] == false),
        "{m}"
    );
    // Migrating again is a no-op.
    let tenant = newer.find(&Slug::parse(&t.slug).unwrap()).await.unwrap();
    let again = newer.migrate_tenant(&tenant).await.unwrap();
    assert_eq!((again.from, again.to), (old + 1, old + 1));
}

#[tokio::test]
async fn purge_destroys_the_tenants_data_and_its_api() {
    let app = spawn_app().await;
    let t = app.tenant("purge").await;
    let keep = app.tenant("keep").await;
    app.course(&t.admin, "Doomed", true).await;
    app.assert_stored(&t.id).await;
    app.assert_stored(&keep.id).await;

    let v = json_ok(
        app.operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{}?purge=true", t.slug),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["status"], "purged");
    assert!(v["usage"].is_null());
    assert!(v["deleted_at"].is_string());
    app.assert_destroyed(&t.id).await;

    let res = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
    assert_problem(res, 401, "invalid_tenant").await;
    let res = login_raw(&app, &t.slug, &t.admin.email, PASSWORD).await;
    assert_problem(res, 401, "invalid_tenant").await;
    let res = app
        .operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    assert!(rows_with_slug(&app, &t.slug).await.is_empty());
    let m = json_ok(
        app.operator(Method::GET, "/admin/api/v1/migrations")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(!m.to_string().contains(&t.slug), "{m}");

    // The other tenant is untouched.
    let res = app.get(&keep.admin, "/api/v1/me").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.assert_stored(&keep.id).await;
}
