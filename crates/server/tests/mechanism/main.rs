//! Leak tests that attack the isolation mechanism itself on PostgreSQL, not
//! just the API: a tiny serving pool shared by many tenants under load, a
//! transaction cancelled half-way followed by another tenant on the same
//! connection, deliberately unscoped SQL inside a tenant's transaction, the
//! state a pooled connection carries after release, the start-up audit
//! against a tampered database, and slugs that look like SQL.
//!
//! They run in the PostgreSQL matrix (`CAMPUS_TEST_BACKEND=schema`, `pool`,
//! and `database` where it makes sense); elsewhere the summary counts them
//! as ignored, with the reason (see `support/trials.rs`).

#![allow(clippy::unwrap_used)]

#[path = "../it/helpers.rs"]
mod helpers;
#[path = "../support/trials.rs"]
mod trials;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use tenancy::dataplane::postgres::{POOL_SCHEMA, PgConfig};
use tenancy::dataplane::{DataPlane, quote, sql_name};
use tenancy::{DbConn, Isolation, Kernel, KernelConfig, Slug, Tenant};

use crate::helpers::*;
use crate::trials::{Skip, trial};

// ---------------------------------------------------------------------------
// Helpers of this file.

/// Why a test of this file does not run on the suite's backend: they attack
/// PostgreSQL's mechanism, which the PostgreSQL matrix runs; `shared_pool`
/// tests look at the serving pool tenants share, which database mode's
/// tenants (a database each) never use.
fn not_here(shared_pool: bool) -> Option<Skip> {
    match backend() {
        Backend::Sqlite => Some(Skip::elsewhere(
            "a PostgreSQL mechanism test: runs with CAMPUS_TEST_BACKEND=schema, pool or database",
        )),
        Backend::Database if shared_pool => Some(Skip::elsewhere(
            "database tenants never share a serving connection: runs on schema and pool",
        )),
        _ => None,
    }
}

/// The isolation mode of the suite's backend.
fn isolation() -> Isolation {
    Isolation::parse(backend().isolation()).expect("isolation")
}

/// The default search path of a PostgreSQL session.
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";

/// A connection to `db` as the suite's superuser (sees every row and catalog).
async fn su(db: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let mut url = url::Url::parse(&pg_admin_url()).expect("CAMPUS_TEST_PG");
    url.set_path(&format!("/{db}"));
    sqlx::AnyConnection::connect(url.as_str())
        .await
        .expect("superuser connection")
}

/// Runs `sql` on `db` as the superuser.
async fn su_exec(db: &str, sql: &str) {
    let mut c = su(db).await;
    sqlx::Executor::execute(&mut c, sql).await.expect(sql);
    c.close().await.expect("close");
}

/// One count on `db` as the superuser, `$1`… bound to `args`.
async fn su_count(db: &str, sql: &str, args: &[&str]) -> i64 {
    let mut c = su(db).await;
    let mut q = sqlx::query_scalar(sql);
    for a in args {
        q = q.bind(*a);
    }
    let n = q.fetch_one(&mut c).await.expect(sql);
    c.close().await.expect("close");
    n
}

/// `psql` as the superuser (for the synchronous clean-up of a `Drop`).
fn psql_quiet(db: &str, sql: &str) -> bool {
    let mut url = url::Url::parse(&pg_admin_url()).expect("CAMPUS_TEST_PG");
    url.set_path(&format!("/{db}"));
    std::process::Command::new("psql")
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// What a test made outside its kernel: a data directory, and a fresh
/// PostgreSQL database dropped (with its tenants' databases and roles) at
/// the end — unless the test failed: then it stays, to be looked at.
struct Scratch {
    _dir: tempfile::TempDir,
    db: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            drop_pg_database(&self.db);
        }
    }
}

/// A fresh PostgreSQL database and data directory for one test.
fn scratch() -> Scratch {
    Scratch {
        _dir: tempfile::tempdir().expect("temp dir"),
        db: fresh_pg_database(),
    }
}

/// A kernel over `s`'s database that serves as `serving` (a role of the
/// test's own), with a serving pool of `pool_size`.
async fn kernel_serving_as(s: &Scratch, serving: &str, pool_size: u32) -> Kernel {
    let mut cfg = KernelConfig::new(s._dir.path(), lms::TENANT_MIGRATIONS);
    let mut pg = pg_config(&s.db, pool_size);
    pg.placements[0].url = pg_url(serving, &s.db);
    cfg.postgres = Some(pg);
    cfg.default_isolation = Some(isolation());
    let kernel = Kernel::open(cfg).await.expect("kernel");
    assert_eq!(
        postgres(&kernel)
            .serving_role("default")
            .expect("placement"),
        serving
    );
    kernel
}

/// A kernel over a fresh PostgreSQL database (its name returned) with a
/// serving pool of `pool_size`, tenants in the backend's isolation mode.
async fn pg_kernel(pool_size: u32, tune: impl FnOnce(&mut PgConfig)) -> (Kernel, String, Scratch) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = fresh_pg_database();
    let mut cfg = KernelConfig::new(dir.path(), lms::TENANT_MIGRATIONS);
    let mut pg = pg_config(&db, pool_size);
    tune(&mut pg);
    cfg.postgres = Some(pg);
    cfg.default_isolation = Some(isolation());
    let kernel = Kernel::open(cfg).await.expect("kernel");
    let scratch = Scratch {
        _dir: dir,
        db: db.clone(),
    };
    (kernel, db, scratch)
}

/// A tenant provisioned through the kernel (its admin and one committed
/// course titled `<slug> secret`), in `isolation` or the kernel's default.
async fn kernel_tenant(kernel: &Kernel, prefix: &str, isolation: Option<&str>) -> Tenant {
    let slug = unique_slug(prefix);
    let req = lms::ops::NewTenant {
        slug: slug.clone(),
        name: slug.clone(),
        isolation: isolation.map(str::to_owned),
        placement: None,
        plan: None,
        admin: lms::ops::NewAdmin {
            email: format!("admin@{slug}.test"),
            name: "Admin".into(),
            password: Some(PASSWORD.into()),
        },
    };
    lms::ops::create_tenant(kernel, req)
        .await
        .expect("provision");
    let t = kernel
        .find(&Slug::parse(&slug).expect("slug"))
        .await
        .expect("find");
    let mut tx = kernel.begin_write(&t).await.expect("begin");
    add_course(tx.conn(), &format!("{slug} secret")).await;
    tx.commit().await.expect("commit");
    t
}

async fn add_course(conn: &mut DbConn, title: &str) {
    let now = tenancy::clock::now();
    sqlx::query(
        "INSERT INTO courses (id, title, description, published, created_at, updated_at) VALUES ($1, $2, '', $3, $4, $4)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(title)
    .bind(true)
    .bind(now)
    .execute(conn)
    .await
    .expect("insert course");
}

async fn titles(conn: &mut DbConn) -> Vec<String> {
    sqlx::query_scalar("SELECT title FROM courses ORDER BY title")
        .fetch_all(conn)
        .await
        .expect("titles")
}

async fn backend_pid(conn: &mut DbConn) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

/// Runs `sql` (`$1`… bound to `args`) and asserts it fails with one of `codes`.
async fn refused(conn: &mut DbConn, sql: &str, args: &[&str], codes: &[&str]) -> String {
    let mut q = sqlx::query(sql);
    for a in args {
        q = q.bind(*a);
    }
    let err = q
        .execute(conn)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql} ran; it must be refused"));
    let code = sqlstate(&err);
    assert!(
        codes.contains(&code.as_str()),
        "{sql}: SQLSTATE {code} ({err}), expected one of {codes:?}"
    );
    err.to_string()
}

/// What scopes a transaction: whom it runs as, where it looks, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    user: String,
    search_path: String,
    tenant_setting: Option<String>,
    database: String,
}

async fn scope(conn: &mut DbConn) -> Scope {
    let (user, search_path, tenant_setting, database): (String, String, Option<String>, String) =
        sqlx::query_as(
            "SELECT current_user::text, current_setting('search_path'),
                    NULLIF(current_setting('app.tenant_id', true), ''), current_database()::text",
        )
        .fetch_one(conn)
        .await
        .expect("scope");
    Scope {
        user,
        search_path,
        tenant_setting,
        database,
    }
}

/// The scope a transaction of `t` must have (`db`: the placement's database).
fn expected_scope(t: &Tenant, db: &str) -> Scope {
    let name = sql_name(t.id);
    match t.isolation {
        Isolation::Schema => Scope {
            user: name.clone(),
            search_path: quote(&name),
            tenant_setting: None,
            database: db.to_owned(),
        },
        Isolation::Pool => Scope {
            user: PG_APP.into(),
            search_path: "campus_pool_api".into(),
            tenant_setting: Some(t.id.to_string()),
            database: db.to_owned(),
        },
        Isolation::Database => Scope {
            user: PG_APP.into(),
            search_path: DEFAULT_SEARCH_PATH.into(),
            tenant_setting: None,
            database: name,
        },
    }
}

fn postgres(kernel: &Kernel) -> &tenancy::dataplane::postgres::Placements {
    match kernel.data_plane() {
        DataPlane::Postgres(p) => p,
        DataPlane::Embedded(_) => panic!("a PostgreSQL data plane"),
    }
}

/// Asserts what an idle connection of the serving pool carries: the serving
/// role, the default search path, no tenant setting.
async fn assert_idle_clean(kernel: &Kernel) {
    let p = postgres(kernel);
    let serving = p.serving_role("default").expect("placement").to_owned();
    assert_eq!(serving, PG_APP);
    let (user, search_path, setting) = p.idle_session_state("default").await.expect("probe");
    assert_eq!(user, serving, "an idle connection runs as a tenant role");
    assert_eq!(
        search_path, DEFAULT_SEARCH_PATH,
        "an idle connection keeps a tenant search path"
    );
    assert!(
        setting.as_deref().unwrap_or("").is_empty(),
        "an idle connection keeps app.tenant_id = {setting:?}"
    );
}

/// The rows of `table` that tenant `t` has, counted as the superuser
/// wherever its backend keeps them (`db`: the placement's database).
async fn rows_of(db: &str, t: &Tenant, table: &str) -> i64 {
    let name = sql_name(t.id);
    match t.isolation {
        Isolation::Schema => {
            su_count(
                db,
                &format!("SELECT count(*) FROM {}.{table}", quote(&name)),
                &[],
            )
            .await
        }
        Isolation::Pool => {
            su_count(
                db,
                &format!("SELECT count(*) FROM {POOL_SCHEMA}.{table} WHERE tenant_id = $1"),
                &[&t.id.to_string()],
            )
            .await
        }
        Isolation::Database => {
            su_count(&name, &format!("SELECT count(*) FROM public.{table}"), &[]).await
        }
    }
}

// ---------------------------------------------------------------------------
// 1. A serving pool of two shared by fifty tenants under interleaved load.

struct Loaded {
    t: TestTenant,
    seeded: String,
}

/// The highest counts a [`Watch`] saw.
#[derive(Debug, Default)]
struct Peaks {
    /// Connections of the serving role to the placement's database (PostgreSQL's view).
    serving: u32,
    /// Connections of the serving role to the tenants' own databases (PostgreSQL's view).
    tenant_databases: u32,
    /// The data plane's own count: pools and connections open.
    pools: usize,
    conns: u32,
    samples: u32,
}

/// Watches, from outside (as the superuser), the connections of the serving
/// role, and the data plane's own count, keeping the highest of each, until
/// told to stop. `tenant_dbs`: the tenants' own databases, filled in later.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Peaks>,
}

impl Watch {
    fn start(kernel: Kernel, db: String, tenant_dbs: Arc<std::sync::Mutex<Vec<String>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = su(&db).await;
                let mut peaks = Peaks::default();
                while !stop.load(Ordering::SeqCst) {
                    let (pools, conns) = kernel.data_plane().open_stats();
                    peaks.pools = peaks.pools.max(pools);
                    peaks.conns = peaks.conns.max(conns);
                    let others = tenant_dbs.lock().expect("databases").join(",");
                    let (serving, tenant_databases): (i64, i64) = sqlx::query_as(
                        "SELECT count(*) FILTER (WHERE datname = $2),
                                count(*) FILTER (WHERE datname = ANY(string_to_array($3, ',')))
                         FROM pg_stat_activity WHERE usename = $1",
                    )
                    .bind(PG_APP)
                    .bind(&db)
                    .bind(others)
                    .fetch_one(&mut c)
                    .await
                    .expect("pg_stat_activity");
                    peaks.serving = peaks.serving.max(u32::try_from(serving).expect("count"));
                    peaks.tenant_databases = peaks
                        .tenant_databases
                        .max(u32::try_from(tenant_databases).expect("count"));
                    peaks.samples += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = c.close().await;
                peaks
            })
        };
        Self { stop, task }
    }

    async fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("watcher")
    }
}

/// Asserts a response body carries nothing of any tenant but `own`.
fn assert_no_foreign(body: &str, own: &str, all: &[String]) {
    for other in all {
        assert!(
            other == own || !body.contains(other.as_str()),
            "{own} was answered with {other}'s data: {body}"
        );
    }
}

/// One request of the load, for tenant `me`: reads and writes, each answer
/// checked for foreign data. Returns the id of a course it created.
async fn load_request(
    app: &TestApp,
    all: &[Loaded],
    slugs: &[String],
    i: usize,
) -> Option<(usize, String)> {
    let n = all.len();
    let me = (i * 13 + i / n) % n;
    let Loaded { t, seeded } = &all[me];
    let mine = format!("{} ", t.slug);
    let (res, created) = match i % 5 {
        0 => (
            app.get(&t.admin, "/api/v1/courses?limit=200").send().await,
            None,
        ),
        1 => (app.get(&t.admin, "/api/v1/me").send().await, None),
        2 | 4 => {
            let title = format!("{} written {i}", t.slug);
            let res = app
                .post(
                    &t.admin,
                    "/api/v1/courses",
                    json!({ "title": title, "description": t.slug }),
                )
                .send()
                .await;
            (res, Some(title))
        }
        _ => (app.get(&t.admin, "/api/v1/users").send().await, None),
    };
    let res = res.expect("send");
    let status = res.status();
    let body = res.text().await.expect("body");
    assert_no_foreign(&body, &t.slug, slugs);
    let v: Value = serde_json::from_str(&body).expect("json");
    match i % 5 {
        0 => {
            assert_eq!(status, StatusCode::OK, "{body}");
            let items = v["items"].as_array().expect("items");
            assert!(
                items
                    .iter()
                    .all(|c| c["title"].as_str().is_some_and(|s| s.starts_with(&mine))),
                "{body}"
            );
            assert!(
                items.iter().any(|c| c["id"] == seeded.as_str()),
                "{} lost its course: {body}",
                t.slug
            );
        }
        1 => {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(v["id"], t.admin.user_id.as_str());
            assert_eq!(v["email"], t.admin.email.as_str());
        }
        2 | 4 => {
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(v["title"].as_str(), created.as_deref());
            // Its own course answers; its neighbour's is not found.
            let id = v["id"].as_str().expect("id").to_owned();
            let other = &all[(me + 1) % n].seeded;
            let res = app
                .get(&t.admin, &format!("/api/v1/courses/{other}"))
                .send()
                .await
                .expect("send");
            assert_problem(res, 404, "not_found").await;
            return Some((me, id));
        }
        _ => {
            assert_eq!(status, StatusCode::OK, "{body}");
            let users = v["items"].as_array().expect("items");
            assert_eq!(users.len(), 1, "{body}");
            assert_eq!(users[0]["id"], t.admin.user_id.as_str());
        }
    }
    None
}

async fn fifty_tenants_on_a_serving_pool_of_two_never_see_each_other() {
    const TENANTS: usize = 50;
    const REQUESTS: usize = 400;
    const SERVING: u32 = 2;
    // `database` tenants: at most 4 pools of one connection open at once.
    const OPEN_DATABASES: usize = 4;
    let in_flight = 32;
    let app = spawn_app_with(|k, _| {
        let pg = k.postgres.as_mut().expect("a PostgreSQL configuration");
        pg.placements[0].pool_size = SERVING;
        pg.max_open_databases = std::num::NonZeroUsize::new(OPEN_DATABASES).expect("non-zero");
        pg.database_pool_size = 1;
        pg.database_transactions = OPEN_DATABASES;
        k.default_isolation = Some(isolation());
    })
    .await;
    let db = app.pg_database().expect("a PostgreSQL database");
    let tenant_dbs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watch = Watch::start(app.kernel.clone(), db.clone(), tenant_dbs.clone());

    // Fifty tenants, provisioned eight at a time, each with a course.
    let app = Arc::new(app);
    let mut set = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    for _ in 0..TENANTS {
        let (app, permits) = (app.clone(), permits.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await.expect("semaphore");
            let t = app.tenant("mx").await;
            let seeded = app
                .course(&t.admin, &format!("{} seeded", t.slug), true)
                .await;
            Loaded { t, seeded }
        });
    }
    let mut all = Vec::new();
    while let Some(l) = set.join_next().await {
        all.push(l.expect("provision"));
    }
    if backend() == Backend::Database {
        let mut dbs = tenant_dbs.lock().expect("databases");
        for l in &all {
            dbs.push(sql_name(tenancy::TenantId::parse(&l.t.id).expect("id")));
        }
    }
    let slugs: Arc<Vec<String>> = Arc::new(all.iter().map(|l| l.t.slug.clone()).collect());
    let all = Arc::new(all);

    // A few hundred interleaved reads and writes, many in flight.
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let (app, all, slugs, permits) = (app.clone(), all.clone(), slugs.clone(), permits.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await.expect("semaphore");
            load_request(&app, &all, &slugs, i).await
        });
    }
    let mut created: Vec<Vec<String>> = vec![Vec::new(); TENANTS];
    while let Some(done) = set.join_next().await {
        if let Some((k, id)) = done.expect("request") {
            created[k].push(id);
        }
    }
    let peaks = watch.finish().await;
    eprintln!("{peaks:?}");
    assert_eq!(
        created.iter().map(Vec::len).sum::<usize>(),
        REQUESTS * 2 / 5
    );

    // Every write landed in its own tenant and only there.
    for (k, Loaded { t, seeded }) in all.iter().enumerate() {
        let page = json_ok(
            app.get(&t.admin, "/api/v1/courses?limit=200")
                .send()
                .await
                .expect("send"),
            200,
        )
        .await;
        let mut got: Vec<String> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect();
        let mut want: Vec<String> = std::iter::once(seeded)
            .chain(&created[k])
            .cloned()
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}", t.slug);
    }

    // Bounded whatever the tenant count: the serving pool never held more
    // than two connections, by its own count and by PostgreSQL's.
    assert!(
        peaks.samples > 10,
        "the watcher sampled {} times",
        peaks.samples
    );
    assert!(
        peaks.serving <= SERVING,
        "PostgreSQL saw {} connections of {PG_APP} to the placement; the pool has {SERVING}",
        peaks.serving
    );
    if backend() == Backend::Database {
        // The serving pool, and the LRU of the tenants' small pools.
        let (max_pools, max_conns) = (1 + OPEN_DATABASES, SERVING + OPEN_DATABASES as u32);
        assert!(
            peaks.pools <= max_pools && peaks.conns <= max_conns,
            "the data plane held {} pools and {} connections; at most {max_pools} and {max_conns}",
            peaks.pools,
            peaks.conns
        );
        // The tenants' own databases: not one connection per tenant, nor
        // one per request in flight, but a budget of the placement's: the
        // pools the LRU keeps (4 × 1), the transactions allowed at once
        // (`database_transactions`, 4) on pools it has let go of, and as many
        // again for a moment, closing asynchronously after their
        // transactions ended.
        let most = (3 * OPEN_DATABASES) as u32;
        assert!(
            peaks.tenant_databases <= most && most < TENANTS as u32,
            "PostgreSQL saw {} connections of {PG_APP} to tenant databases; at most {most}",
            peaks.tenant_databases
        );
    } else {
        // Shared by all fifty tenants, and used to the full under the load.
        assert_eq!((peaks.pools, peaks.conns), (1, SERVING), "{peaks:?}");
        assert_eq!(peaks.serving, SERVING, "{peaks:?}");
        assert_eq!(peaks.tenant_databases, 0);
        // And an idle connection carries nothing of the last tenant served.
        assert_idle_clean(&app.kernel).await;
    }
    let now = su_count(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
        &[PG_APP, &db],
    )
    .await;
    assert!(now <= i64::from(SERVING), "{now} serving connections now");
}

// ---------------------------------------------------------------------------
// 2. A transaction cancelled half-way, then another tenant on its connection.

async fn a_transaction_cancelled_mid_query_leaves_nothing_for_the_next_tenant() {
    // One connection: the serving pool's (schema, pool) or each database
    // tenant's pool (database).
    let (kernel, db, _dir) = pg_kernel(1, |pg| pg.database_pool_size = 1).await;
    let a = kernel_tenant(&kernel, "cancel-a", None).await;
    let b = kernel_tenant(&kernel, "cancel-b", None).await;
    let a_secret = format!("{} secret", a.slug);

    let mut tx = kernel.begin_write(&a).await.expect("begin A");
    let pid = backend_pid(tx.conn()).await;
    assert_eq!(scope(tx.conn()).await, expected_scope(&a, &db));
    assert_eq!(titles(tx.conn()).await, vec![a_secret.clone()]);
    add_course(tx.conn(), &format!("{} uncommitted", a.slug)).await;
    let slept = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query("SELECT pg_sleep(5)").execute(tx.conn()),
    )
    .await;
    assert!(slept.is_err(), "pg_sleep(5) finished within 100 ms");
    // The client gave up, but the server is still inside A's transaction.
    let where_db = if backend() == Backend::Database {
        sql_name(a.id)
    } else {
        db.clone()
    };
    let still = su_count(
        &where_db,
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int AND state = 'active' AND query LIKE '%pg_sleep%'",
        &[&pid.to_string()],
    )
    .await;
    assert_eq!(still, 1, "A's backend is not running pg_sleep any more");
    drop(tx);

    let started = Instant::now();
    let mut tx = kernel.begin(&b).await.expect("begin B");
    let pid_b = backend_pid(tx.conn()).await;
    if backend() == Backend::Database {
        // B's database has a connection of its own: never A's.
        assert_ne!(pid_b, pid);
    } else {
        assert_eq!(
            pid_b, pid,
            "B did not get A's connection: the test proves nothing"
        );
        // The connection came back only once PostgreSQL was done with A.
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(scope(tx.conn()).await, expected_scope(&b, &db));
    let seen = titles(tx.conn()).await;
    assert_eq!(seen, vec![format!("{} secret", b.slug)]);
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users")
        .fetch_all(tx.conn())
        .await
        .expect("users");
    assert_eq!(emails, vec![format!("admin@{}.test", b.slug)]);
    match b.isolation {
        Isolation::Schema => {
            let sql = format!("SELECT count(*) FROM {}.courses", quote(&sql_name(a.id)));
            refused(tx.conn(), &sql, &[], &["42501"]).await;
        }
        Isolation::Pool => {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM campus_pool.courses WHERE tenant_id = $1")
                    .bind(a.id.to_string())
                    .fetch_one(tx.conn())
                    .await
                    .expect("count");
            assert_eq!(n, 0);
        }
        Isolation::Database => {}
    }
    drop(tx);

    // A's cancelled transaction was rolled back, on its own connection again.
    let mut tx = kernel.begin(&a).await.expect("begin A again");
    assert_eq!(backend_pid(tx.conn()).await, pid);
    assert_eq!(scope(tx.conn()).await, expected_scope(&a, &db));
    assert_eq!(titles(tx.conn()).await, vec![a_secret]);
    drop(tx);
    assert_eq!(rows_of(&db, &a, "courses").await, 1);
    if backend() != Backend::Database {
        assert_idle_clean(&kernel).await;
    }
    let idle_in_tx = su_count(
        &where_db,
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int AND state <> 'idle'",
        &[&pid.to_string()],
    )
    .await;
    assert_eq!(idle_in_tx, 0, "A's connection is not idle");
}

/// The same through HTTP: tenant A's request is held inside its transaction
/// (its table locked from outside), its client goes away, then tenant B's
/// request runs on the serving pool's only connection.
async fn a_request_whose_client_went_away_mid_transaction_leaves_nothing_for_the_next_tenant() {
    let app = spawn_app_with(|k, _| {
        let pg = k.postgres.as_mut().expect("a PostgreSQL configuration");
        pg.placements[0].pool_size = 1;
    })
    .await;
    let db = app.pg_database().expect("a PostgreSQL database");
    let a = app.tenant("gone-a").await;
    let b = app.tenant("gone-b").await;
    let b_course = app.course(&b.admin, &format!("{} own", b.slug), true).await;
    let a_id = tenancy::TenantId::parse(&a.id).expect("id");
    let table = match backend() {
        Backend::Schema => format!("{}.courses", quote(&sql_name(a_id))),
        _ => format!("{POOL_SCHEMA}.courses"),
    };

    // Hold A's courses table, so that A's write waits inside its transaction.
    let mut lock = su(&db).await;
    sqlx::Executor::execute(&mut lock, "BEGIN")
        .await
        .expect("begin");
    sqlx::Executor::execute(
        &mut lock,
        format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE").as_str(),
    )
    .await
    .expect("lock");
    let title = format!("{} written by a client that left", a.slug);
    let request = app
        .post(
            &a.admin,
            "/api/v1/courses",
            json!({ "title": title, "description": "" }),
        )
        .send();
    let request = tokio::spawn(request);
    // Wait until the server is inside A's transaction, waiting on the lock
    // (watched from a connection of its own: in a transaction, as `lock` is,
    // pg_stat_activity would answer one snapshot again and again).
    let mut watch = su(&db).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting_pid = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE usename = $1 AND datname = $2 AND wait_event_type = 'Lock' AND state = 'active'",
        )
        .bind(PG_APP)
        .bind(&db)
        .fetch_optional(&mut watch)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = pid {
            break pid;
        }
        if Instant::now() > deadline || request.is_finished() {
            let seen: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(concat_ws(' | ', pid, usename, state, wait_event_type, wait_event, query), E'\n')
                 FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db)
            .fetch_one(&mut watch)
            .await
            .expect("pg_stat_activity");
            let done = if request.is_finished() {
                format!("{:?}", request.await)
            } else {
                "still waiting".into()
            };
            panic!(
                "A's request never reached the lock: {done}; sessions:\n{}",
                seen.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The serving pool's connection, inside a transaction (A's).
    let (xact, role): (bool, String) = sqlx::query_as(
        "SELECT xact_start IS NOT NULL, usename::text FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(waiting_pid)
    .fetch_one(&mut watch)
    .await
    .expect("backend");
    assert!(xact);
    assert_eq!(role, PG_APP);
    // The client goes away; give the server a moment to drop the request.
    request.abort();
    assert!(
        request.await.is_err(),
        "the request finished under the lock"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::Executor::execute(&mut lock, "COMMIT")
        .await
        .expect("unlock");
    watch.close().await.expect("close");
    lock.close().await.expect("close");

    // B, on the one connection there is: B's data only.
    let page = json_ok(
        app.get(&b.admin, "/api/v1/courses")
            .send()
            .await
            .expect("send"),
        200,
    )
    .await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![b_course.as_str()]);
    assert!(!page.to_string().contains(&a.slug), "{page}");
    let res = app
        .post(
            &b.admin,
            "/api/v1/courses",
            json!({ "title": format!("{} after", b.slug), "description": "" }),
        )
        .send()
        .await
        .expect("send");
    json_ok(res, 201).await;
    let pids: Vec<i32> = {
        let mut c = su(&db).await;
        let pids = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
        )
        .bind(PG_APP)
        .bind(&db)
        .fetch_all(&mut c)
        .await
        .expect("pg_stat_activity");
        c.close().await.expect("close");
        pids
    };
    assert_eq!(
        pids,
        vec![waiting_pid],
        "B was not served on A's connection"
    );
    assert_idle_clean(&app.kernel).await;

    // A's cancelled write was rolled back: the request was really cut off
    // inside its transaction, and nothing of it stayed.
    let page = json_ok(
        app.get(&a.admin, "/api/v1/courses")
            .send()
            .await
            .expect("send"),
        200,
    )
    .await;
    assert_eq!(page["items"].as_array().expect("items").len(), 0, "{page}");
    assert_eq!(app.count_rows(&a.id, "courses").await, 0);
    assert_eq!(app.count_rows(&b.id, "courses").await, 2);
}

// ---------------------------------------------------------------------------
// 3. Deliberately unscoped SQL inside tenant A's transaction.

async fn unscoped_sql_inside_a_tenant_transaction_sees_none_of_another_tenant() {
    let (kernel, db, _dir) = pg_kernel(4, |_| {}).await;
    let a = kernel_tenant(&kernel, "unscoped-a", None).await;
    let b = kernel_tenant(&kernel, "unscoped-b", None).await;
    // B has rows to find: zero rows below is the mechanism, not an empty table.
    assert_eq!(rows_of(&db, &b, "courses").await, 1);
    assert_eq!(rows_of(&db, &b, "users").await, 1);
    let a_id = a.id.to_string();
    let b_id = b.id.to_string();
    let a_schema = quote(&sql_name(a.id));
    let b_schema = quote(&sql_name(b.id));

    // Each attack on a transaction of its own (an error aborts one).
    macro_rules! in_a {
        () => {
            kernel.begin_write(&a).await.expect("begin A")
        };
    }

    // The scoped view of A, as a baseline: A's rows only.
    let mut tx = in_a!();
    assert_eq!(titles(tx.conn()).await, vec![format!("{} secret", a.slug)]);
    drop(tx);

    match backend() {
        Backend::Schema => {
            // Naming B's schema: the tenant role has no right on it.
            for sql in [
                format!("SELECT * FROM {b_schema}.users"),
                format!("SELECT * FROM {b_schema}.courses"),
                format!(
                    "INSERT INTO {b_schema}.courses (id, title, description, published, created_at, updated_at)
                     VALUES ('x', 'planted', '', true, 'now', 'now')"
                ),
                format!("DELETE FROM {b_schema}.courses"),
            ] {
                let mut tx = in_a!();
                let msg = refused(tx.conn(), &sql, &[], &["42501"]).await;
                assert!(msg.contains("permission denied"), "{msg}");
            }
            // Search-path tricks: B's schema is not looked into without
            // USAGE, so the unqualified name is A's own or nothing.
            for trick in [
                format!("SET LOCAL search_path TO {b_schema}, public"),
                format!("SET search_path TO {b_schema}"),
            ] {
                let mut tx = in_a!();
                sqlx::Executor::execute(tx.conn(), trick.as_str())
                    .await
                    .expect("SET search_path");
                refused(
                    tx.conn(),
                    "SELECT title FROM courses",
                    &[],
                    &["42P01", "42501"],
                )
                .await;
            }
            let mut tx = in_a!();
            sqlx::Executor::execute(
                tx.conn(),
                format!("SET LOCAL search_path TO {b_schema}, {a_schema}").as_str(),
            )
            .await
            .expect("SET search_path");
            assert_eq!(titles(tx.conn()).await, vec![format!("{} secret", a.slug)]);
            drop(tx);
            // Back to the login role: it has no right on any tenant schema,
            // not even A's (NOINHERIT).
            for target in [&b_schema, &a_schema] {
                let mut tx = in_a!();
                sqlx::Executor::execute(tx.conn(), "RESET ROLE")
                    .await
                    .expect("RESET ROLE");
                let who: String = sqlx::query_scalar("SELECT current_user::text")
                    .fetch_one(tx.conn())
                    .await
                    .expect("current_user");
                assert_eq!(who, PG_APP);
                let sql = format!("SELECT * FROM {target}.users");
                refused(tx.conn(), &sql, &[], &["42501"]).await;
            }
        }
        Backend::Pool => {
            // The base table, no view, no WHERE: A's rows only.
            let mut tx = in_a!();
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT tenant_id, email FROM campus_pool.users")
                    .fetch_all(tx.conn())
                    .await
                    .expect("users");
            assert_eq!(rows, vec![(a_id.clone(), format!("admin@{}.test", a.slug))]);
            let courses: Vec<String> =
                sqlx::query_scalar("SELECT tenant_id FROM campus_pool.courses")
                    .fetch_all(tx.conn())
                    .await
                    .expect("courses");
            assert_eq!(courses, vec![a_id.clone()]);
            // Asking for B by name, or for anyone but A: nothing.
            for table in tenancy::dataplane::postgres::POOL_TABLES {
                for (sql, arg) in [
                    (
                        format!("SELECT count(*) FROM {POOL_SCHEMA}.{table} WHERE tenant_id = $1"),
                        &b_id,
                    ),
                    (
                        format!("SELECT count(*) FROM {POOL_SCHEMA}.{table} WHERE tenant_id <> $1"),
                        &a_id,
                    ),
                ] {
                    let n: i64 = sqlx::query_scalar(&sql)
                        .bind(arg)
                        .fetch_one(tx.conn())
                        .await
                        .expect("count");
                    assert_eq!(n, 0, "{sql}");
                }
            }
            // The base tables by the search path: still A's rows only.
            sqlx::Executor::execute(tx.conn(), "SET LOCAL search_path TO campus_pool, public")
                .await
                .expect("SET search_path");
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM courses")
                .fetch_one(tx.conn())
                .await
                .expect("count");
            assert_eq!(n, 1);
            // Deleting everything deletes A's rows, and only those.
            let gone = sqlx::query("DELETE FROM campus_pool.courses")
                .execute(tx.conn())
                .await
                .expect("delete");
            assert_eq!(gone.rows_affected(), 1);
            drop(tx);
            assert_eq!(rows_of(&db, &b, "courses").await, 1);
            assert_eq!(rows_of(&db, &a, "courses").await, 1, "rolled back");

            // Writing a row for B: refused by WITH CHECK.
            let mut tx = in_a!();
            let msg = refused(
                tx.conn(),
                "INSERT INTO campus_pool.courses (tenant_id, id, title, description, published, created_at, updated_at)
                 VALUES ($1, $2, 'planted', '', true, 'now', 'now')",
                &[&b_id, &uuid::Uuid::now_v7().to_string()],
                &["42501"],
            )
            .await;
            assert!(msg.contains("row-level security"), "{msg}");
            let mut tx2 = in_a!();
            let msg = refused(
                tx2.conn(),
                "UPDATE campus_pool.courses SET tenant_id = $1",
                &[&b_id],
                &["42501"],
            )
            .await;
            assert!(msg.contains("row-level security"), "{msg}");
            drop((tx, tx2));
            assert_eq!(rows_of(&db, &b, "courses").await, 1);

            // No setting, no rows: the policy fails closed.
            let mut tx = in_a!();
            sqlx::query("SELECT set_config('app.tenant_id', '', true)")
                .execute(tx.conn())
                .await
                .expect("unset");
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM campus_pool.users")
                .fetch_one(tx.conn())
                .await
                .expect("count");
            assert_eq!(n, 0);
            drop(tx);
            // Likewise straight on the serving role, and on the owner of the
            // tables (FORCE binds it too), outside any tenant transaction.
            for user in [PG_APP, PG_OWNER] {
                let mut c = sqlx::AnyConnection::connect(&pg_url(user, &db))
                    .await
                    .expect("connect");
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM campus_pool.users")
                    .fetch_one(&mut c)
                    .await
                    .expect("count");
                assert_eq!(n, 0, "{user} sees pool rows without a tenant");
                c.close().await.expect("close");
            }
        }
        Backend::Database => {
            let mut tx = in_a!();
            let here: String = sqlx::query_scalar("SELECT current_database()::text")
                .fetch_one(tx.conn())
                .await
                .expect("database");
            assert_eq!(here, sql_name(a.id));
            drop(tx);
            // B's database by any name: not from A's connection.
            for (sql, codes) in [
                (
                    format!("SELECT * FROM {b_schema}.users"),
                    &["42P01", "3F000"][..],
                ),
                (
                    format!("SELECT * FROM {b_schema}.public.users"),
                    &["0A000"][..],
                ),
                (
                    "CREATE EXTENSION dblink".to_owned(),
                    &["42501", "0A000", "58P01"][..],
                ),
                (
                    "CREATE EXTENSION postgres_fdw".to_owned(),
                    &["42501", "0A000", "58P01"][..],
                ),
            ] {
                let mut tx = in_a!();
                refused(tx.conn(), &sql, &[], codes).await;
            }
            let mut tx = in_a!();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_extension WHERE extname IN ('dblink', 'postgres_fdw')",
            )
            .fetch_one(tx.conn())
            .await
            .expect("extensions");
            assert_eq!(n, 0);
            let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM public.users")
                .fetch_all(tx.conn())
                .await
                .expect("users");
            assert_eq!(emails, vec![format!("admin@{}.test", a.slug)]);
        }
        Backend::Sqlite => unreachable!(),
    }
    assert_eq!(rows_of(&db, &b, "courses").await, 1);
    assert_eq!(rows_of(&db, &b, "users").await, 1);
}

// ---------------------------------------------------------------------------
// 4. What a pooled connection carries after release.

async fn every_pooled_connection_is_clean_after_tenant_transactions() {
    let (kernel, db, _dir) = pg_kernel(2, |_| {}).await;
    let mut tenants = Vec::new();
    for _ in 0..4 {
        tenants.push(kernel_tenant(&kernel, "idle", None).await);
    }

    // Many tenant transactions on two connections, ending every way there
    // is: committed, rolled back, failed, cancelled mid-query.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..48 {
        let (kernel, t, other) = (
            kernel.clone(),
            tenants[i % 4].clone(),
            tenants[(i + 1) % 4].clone(),
        );
        set.spawn(async move {
            let mut tx = kernel.begin_write(&t).await.expect("begin");
            add_course(tx.conn(), &format!("{} churn {i}", t.slug)).await;
            match (i / 4) % 4 {
                0 => tx.commit().await.expect("commit"),
                1 => drop(tx),
                2 => {
                    let sql = match t.isolation {
                        Isolation::Schema => {
                            format!("SELECT * FROM {}.users", quote(&sql_name(other.id)))
                        }
                        _ => format!(
                            "INSERT INTO campus_pool.courses (tenant_id, id, title, description, published, created_at, updated_at)
                             VALUES ('{}', '{}', 'x', '', true, 'now', 'now')",
                            other.id,
                            uuid::Uuid::now_v7()
                        ),
                    };
                    refused(tx.conn(), &sql, &[], &["42501"]).await;
                }
                _ => {
                    let r = tokio::time::timeout(
                        Duration::from_millis(20),
                        sqlx::query("SELECT pg_sleep(0.3)").execute(tx.conn()),
                    )
                    .await;
                    assert!(r.is_err(), "not cancelled");
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("transaction");
    }
    assert_eq!(kernel.data_plane().open_stats(), (1, 2));

    // Hold one connection in a tenant transaction and probe the other, until
    // each of the two has been the probed one.
    let mut held_pids = HashSet::new();
    for attempt in 0..40 {
        let t = &tenants[attempt % 4];
        let mut held = kernel.begin(t).await.expect("begin");
        let pid = backend_pid(held.conn()).await;
        assert_eq!(scope(held.conn()).await, expected_scope(t, &db));
        assert_idle_clean(&kernel).await;
        held_pids.insert(pid);
        drop(held);
        if held_pids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held_pids.len(), 2, "only {held_pids:?} was ever held");
    // Those two are the pool's connections, all of them, and idle (not in a
    // transaction) as seen by PostgreSQL.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = su(&db).await;
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, COALESCE(state, '') FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
    )
    .bind(PG_APP)
    .bind(&db)
    .fetch_all(&mut c)
    .await
    .expect("pg_stat_activity");
    c.close().await.expect("close");
    let pids: HashSet<i32> = rows.iter().map(|(p, _)| *p).collect();
    assert_eq!(pids, held_pids);
    assert!(rows.iter().all(|(_, s)| s == "idle"), "{rows:?}");
    for t in &tenants {
        assert_eq!(rows_of(&db, t, "courses").await, 1 + 3, "{}", t.slug);
    }
}

/// The probe of test 4 can fail: a session-level setting made inside a
/// tenant transaction (what the data plane must never do) outlives it and is
/// seen on the idle connection.
async fn the_idle_probe_sees_a_session_level_leak() {
    let (kernel, _db, _dir) = pg_kernel(1, |_| {}).await;
    let a = kernel_tenant(&kernel, "leak", None).await;
    assert_idle_clean(&kernel).await;
    let mut tx = kernel.begin(&a).await.expect("begin");
    let role = match a.isolation {
        Isolation::Schema => sql_name(a.id),
        _ => PG_APP.to_owned(),
    };
    sqlx::query(
        "SELECT set_config('role', $1, false), set_config('search_path', $2, false), set_config('app.tenant_id', $3, false)",
    )
    .bind(&role)
    .bind(quote(&sql_name(a.id)))
    .bind(a.id.to_string())
    .execute(tx.conn())
    .await
    .expect("session-level set");
    tx.commit().await.expect("commit");
    let (user, search_path, setting) = postgres(&kernel)
        .idle_session_state("default")
        .await
        .expect("probe");
    assert_eq!(user, role);
    assert_eq!(search_path, quote(&sql_name(a.id)));
    assert_eq!(setting, Some(a.id.to_string()));
}

/// PostgreSQL's per-session cache of the roles a login role is a member of
/// loses an invalidation that arrives while it is being rebuilt (acl.c,
/// `roles_is_member_of`): a serving session that was rebuilding it when a
/// tenant's GRANT committed refuses that tenant's role ("permission denied
/// to set role") until the next role change in the cluster. Here the race is
/// provoked on purpose, many times, on a serving pool of one connection, and
/// every tenant transaction must still open as its tenant. (The race is a
/// matter of timing: some runs never hit it, and say so.)
async fn a_grant_lost_by_a_sessions_role_cache_does_not_refuse_the_tenant() {
    const MAX_ROUNDS: usize = 600;
    const ENOUGH: usize = 5;
    const PADDING: usize = 300;
    let scratch = scratch();
    let db = scratch.db.clone();
    // A serving role of this test's own: the race needs a long rebuild, so
    // it is made a member of many roles (dropped with it at the end).
    let role = DedicatedRole {
        name: format!(
            "campus_app_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ),
        db: db.clone(),
    };
    let pad: Vec<String> = (0..PADDING)
        .map(|i| format!("{}_p{i}", role.name))
        .collect();
    let mut ddl = format!("CREATE ROLE {} LOGIN NOINHERIT;", role.name);
    for p in &pad {
        ddl.push_str(&format!(
            "CREATE ROLE {p} NOLOGIN; GRANT {p} TO {};",
            role.name
        ));
    }
    su_exec("postgres", &ddl).await;
    let pad = PadRoles(pad);
    let kernel = kernel_serving_as(&scratch, &role.name, 1).await;
    let x = kernel_tenant(&kernel, "race-x", Some("schema")).await;
    let n = kernel_tenant(&kernel, "race-n", Some("schema")).await;
    let n_role = quote(&sql_name(n.id));
    let mut su_conn = su(&db).await;
    // The data plane's remedy touches N's role: its catalog row changes.
    let touched = "SELECT xmin::text FROM pg_authid WHERE rolname = $1";
    let mut provoked = 0;
    for round in 0..MAX_ROUNDS {
        let before: String = sqlx::query_scalar(touched)
            .bind(sql_name(n.id))
            .fetch_one(&mut su_conn)
            .await
            .expect("xmin");
        // N's grant taken back, and the session's cached lists made stale.
        let reset = format!(
            "REVOKE {n_role} FROM {0}; REVOKE {1} FROM {0}; GRANT {1} TO {0}",
            role.name,
            pad.0[round % PADDING]
        );
        sqlx::Executor::execute(&mut su_conn, reset.as_str())
            .await
            .expect("reset");
        // The session rebuilds its cache (to become X) while N's grant commits.
        let (kernel2, x2) = (kernel.clone(), x.clone());
        let rebuild = tokio::spawn(async move {
            let mut tx = kernel2.begin(&x2).await.expect("begin X");
            backend_pid(tx.conn()).await
        });
        tokio::time::sleep(Duration::from_micros((round % 20) as u64 * 250)).await;
        sqlx::Executor::execute(
            &mut su_conn,
            format!("GRANT {n_role} TO {}", role.name).as_str(),
        )
        .await
        .expect("grant");
        rebuild.await.expect("rebuild");
        // N, on that same session, with no other role change since.
        let mut tx = kernel
            .begin(&n)
            .await
            .unwrap_or_else(|e| panic!("round {round}: tenant N refused: {e}"));
        assert_eq!(scope(tx.conn()).await.user, sql_name(n.id));
        drop(tx);
        let after: String = sqlx::query_scalar(touched)
            .bind(sql_name(n.id))
            .fetch_one(&mut su_conn)
            .await
            .expect("xmin");
        if after != before {
            provoked += 1;
            if provoked == ENOUGH {
                break;
            }
        }
    }
    su_conn.close().await.expect("close");
    // Whether the race happens depends on the machine's timing (CI has seen
    // 600 rounds without it): each round's check above is the invariant;
    // how often the remedy was needed is reported, not asserted.
    eprintln!(
        "the role-cache race was provoked {provoked} time(s) (the remedy ran); \
         stopped after {ENOUGH} or {MAX_ROUNDS} rounds"
    );
    drop(kernel);
}

/// Roles made for one test, dropped at its end.
struct PadRoles(Vec<String>);

impl Drop for PadRoles {
    fn drop(&mut self) {
        for chunk in self.0.chunks(100) {
            psql_quiet(
                "postgres",
                &format!("DROP ROLE IF EXISTS {}", chunk.join(", ")),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 5. The start-up audit refuses a database that does not enforce isolation.

/// The `campus` binary next to this test binary, when it was built
/// (`cargo build -p campus`).
fn campus_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("campus");
    bin.is_file().then_some(bin)
}

/// Runs `campus <args>` against a database (serving `url`, `owner_url`);
/// returns its exit status and standard error (stdout appended). Kills it
/// if it still runs after a minute (it would be serving). It is a node of
/// the scratch deployment: the kernel's data directory holds its master
/// key, without which a node is refused.
async fn run_campus(
    bin: &PathBuf,
    scratch: &Scratch,
    url: &str,
    owner_url: &str,
    args: &[&str],
) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(bin)
        .arg("--database-url")
        .arg(url)
        .arg("--owner-database-url")
        .arg(owner_url)
        .arg("--data-dir")
        .arg(scratch._dir.path())
        .env_remove("CAMPUS_MASTER_KEY")
        .env_remove("CAMPUS_MASTER_KEY_FILE")
        .args(args)
        .current_dir(dir.path())
        .env("CAMPUS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env_remove("CAMPUS_CONFIG")
        .env_remove("CAMPUS_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn campus");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "campus {args:?} still running after a minute: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

async fn audit(kernel: &Kernel) -> Vec<String> {
    tenancy::audit::run(kernel)
        .await
        .expect("audit")
        .into_iter()
        .map(|f| f.to_string())
        .collect()
}

async fn the_audit_refuses_unforced_or_disabled_rls_and_stray_schema_grants() {
    let (kernel, db, scratch) = pg_kernel(2, |_| {}).await;
    let _own = kernel_tenant(&kernel, "audit", None).await;
    // A schema tenant whatever the backend: a schema to grant on.
    let s = kernel_tenant(&kernel, "audit-s", Some("schema")).await;
    let s_schema = quote(&sql_name(s.id));
    assert_eq!(
        audit(&kernel).await,
        Vec::<String>::new(),
        "a fresh setup is clean"
    );
    let bin = campus_binary();
    let (url, owner_url) = (pg_url(PG_APP, &db), pg_url(PG_OWNER, &db));
    if let Some(bin) = &bin {
        let (ok, out) = run_campus(bin, &scratch, &url, &owner_url, &["doctor"]).await;
        assert!(ok, "campus doctor on a clean database: {out}");
    } else {
        // `cargo test --workspace` builds it; CI must never skip this part.
        assert!(
            std::env::var_os("CI").is_none(),
            "the campus binary is not built next to the test binary; CI runs `cargo test --workspace`"
        );
        eprintln!("the campus binary is not built (cargo build -p campus): its part is skipped");
    }

    let cases = [
        (
            "ALTER TABLE campus_pool.courses NO FORCE ROW LEVEL SECURITY".to_owned(),
            "ALTER TABLE campus_pool.courses FORCE ROW LEVEL SECURITY".to_owned(),
            "row-level security is not forced on campus_pool.courses".to_owned(),
        ),
        (
            "ALTER TABLE campus_pool.lessons DISABLE ROW LEVEL SECURITY".to_owned(),
            "ALTER TABLE campus_pool.lessons ENABLE ROW LEVEL SECURITY".to_owned(),
            "row-level security is not enabled on campus_pool.lessons".to_owned(),
        ),
        (
            format!("GRANT USAGE ON SCHEMA {s_schema} TO {PG_APP}"),
            format!("REVOKE USAGE ON SCHEMA {s_schema} FROM {PG_APP}"),
            format!("{} grants rights to {PG_APP}", sql_name(s.id)),
        ),
        (
            format!("GRANT SELECT ON {s_schema}.users TO PUBLIC"),
            format!("REVOKE SELECT ON {s_schema}.users FROM PUBLIC"),
            format!("{}.users grants rights to PUBLIC", sql_name(s.id)),
        ),
    ];
    for (tamper, repair, finding) in &cases {
        su_exec(&db, tamper).await;
        let found = audit(&kernel).await;
        assert_eq!(found.len(), 1, "after {tamper}: {found:?}");
        assert!(
            found[0].contains(finding.as_str()),
            "after {tamper}: {found:?}"
        );
        if let Some(bin) = &bin {
            let (ok, out) = run_campus(
                bin,
                &scratch,
                &url,
                &owner_url,
                &["serve", "--listen", "127.0.0.1:0"],
            )
            .await;
            assert!(!ok, "campus serve started after {tamper}: {out}");
            assert!(out.contains("refusing to serve"), "{out}");
            assert!(out.contains(finding.as_str()), "{out}");
        }
        su_exec(&db, repair).await;
        assert_eq!(audit(&kernel).await, Vec::<String>::new(), "after {repair}");
    }
}

/// A serving role of this test's own (`BYPASSRLS` is cluster-wide: the
/// suite's `campus_app` is in use by every other test), dropped at the end.
struct DedicatedRole {
    name: String,
    db: String,
}

impl Drop for DedicatedRole {
    fn drop(&mut self) {
        let name = &self.name;
        psql_quiet(
            &self.db,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
            ),
        );
        // Its privileges, in every database that has some (a `database`
        // tenant's own, too), then the role.
        let mut dbs = vec![self.db.clone()];
        if let Ok(out) = std::process::Command::new("psql")
            .args([
                pg_admin_url().as_str(),
                "-At",
                "-c",
                &format!(
                    "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
                     WHERE s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = '{name}')"
                ),
            ])
            .output()
        {
            dbs.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned));
        }
        for db in dbs {
            psql_quiet(&db, &format!("DROP OWNED BY {name}"));
        }
        if !psql_quiet(&self.db, &format!("DROP ROLE IF EXISTS {name}")) {
            eprintln!("could not drop the test role {name}");
        }
    }
}

async fn the_audit_refuses_a_serving_role_with_bypassrls() {
    let scratch = scratch();
    let db = scratch.db.clone();
    let role = DedicatedRole {
        name: format!(
            "campus_app_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ),
        db: db.clone(),
    };
    su_exec(
        "postgres",
        &format!("CREATE ROLE {} LOGIN NOINHERIT", role.name),
    )
    .await;
    let kernel = kernel_serving_as(&scratch, &role.name, 2).await;
    let a = kernel_tenant(&kernel, "bypass-a", Some("pool")).await;
    let b = kernel_tenant(&kernel, "bypass-b", Some("pool")).await;
    let _own = kernel_tenant(&kernel, "bypass", None).await;
    assert_eq!(
        audit(&kernel).await,
        Vec::<String>::new(),
        "a fresh setup is clean"
    );

    // B's rows an unscoped query of A's sees.
    let b_id = b.id.to_string();
    let b_rows_seen_by_a = |kernel: Kernel, a: Tenant| {
        let b_id = b_id.clone();
        async move {
            let mut tx = kernel.begin(&a).await.expect("begin");
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM campus_pool.users WHERE tenant_id = $1")
                    .bind(b_id)
                    .fetch_one(tx.conn())
                    .await
                    .expect("count");
            n
        }
    };
    assert_eq!(b_rows_seen_by_a(kernel.clone(), a.clone()).await, 0);

    su_exec("postgres", &format!("ALTER ROLE {} BYPASSRLS", role.name)).await;
    let found = audit(&kernel).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(&format!("the serving role {} has BYPASSRLS", role.name)),
        "{found:?}"
    );
    // Why it matters: row-level security no longer applies to the serving
    // role, and an unscoped query of tenant A sees every tenant's rows.
    assert_eq!(b_rows_seen_by_a(kernel.clone(), a.clone()).await, 1);
    if let Some(bin) = campus_binary() {
        let (ok, out) = run_campus(
            &bin,
            &scratch,
            &pg_url(&role.name, &db),
            &pg_url(PG_OWNER, &db),
            &["serve", "--listen", "127.0.0.1:0"],
        )
        .await;
        assert!(!ok, "campus serve started with BYPASSRLS: {out}");
        assert!(
            out.contains("refusing to serve") && out.contains("has BYPASSRLS"),
            "{out}"
        );
    }

    su_exec("postgres", &format!("ALTER ROLE {} NOBYPASSRLS", role.name)).await;
    assert_eq!(audit(&kernel).await, Vec::<String>::new());
    assert_eq!(b_rows_seen_by_a(kernel.clone(), a).await, 0);
    drop(kernel);
    drop(role);
    drop(scratch);
}

// ---------------------------------------------------------------------------
// 6. Slugs that look like SQL.

async fn provision(app: &TestApp, slug: &str, email: &str) -> reqwest::Response {
    app.operator(Method::POST, "/admin/api/v1/tenants")
        .json(&json!({
            "slug": slug,
            "name": format!("Org {slug}"),
            "admin": { "email": email, "name": "Admin", "password": PASSWORD }
        }))
        .send()
        .await
        .expect("provision")
}

async fn slugs_that_look_like_sql_are_harmless_or_refused() {
    let app = spawn_app().await;
    let db = app.pg_database().expect("PostgreSQL");
    let public_tables = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let public_before = app.pg_count(public_tables, &[]).await;

    let slugs = ["public", "pg-catalog", "campus-pool", "drop-table"];
    let mut made = Vec::new();
    for slug in slugs {
        let email = format!("admin@{slug}.test");
        let res = provision(&app, slug, &email).await;
        let v = json_ok(res, 201).await;
        assert_eq!(v["slug"], slug);
        let id = v["id"].as_str().expect("id").to_owned();
        app.assert_stored(&id).await;
        let name = sql_name(tenancy::TenantId::parse(&id).expect("id"));
        assert_eq!(name, format!("t_{}", id.replace('-', "")));
        let admin = app.login(slug, &email, PASSWORD).await;
        let course = app.course(&admin, &format!("{slug} own"), true).await;
        made.push((slug, id, admin, course));
    }
    // Nothing was named after a slug: the names are t_<uuid hex> only.
    for slug in slugs {
        let schemas = app
            .pg_count(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[slug],
            )
            .await;
        assert_eq!(schemas, i64::from(slug == "public"), "schema {slug}");
        let roles = app
            .pg_count("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[slug])
            .await;
        assert_eq!(roles, 0, "role {slug}");
        let dbs = app
            .pg_count(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[slug],
            )
            .await;
        assert_eq!(dbs, 0, "database {slug}");
    }
    assert_eq!(app.pg_count(public_tables, &[]).await, public_before);
    assert_eq!(
        app.pg_count(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace AND relname IN ('users', 'courses')",
            &[]
        )
        .await,
        0
    );
    // Isolated like any other tenant.
    for (slug, _, admin, course) in &made {
        let page = json_ok(
            app.get(admin, "/api/v1/courses")
                .send()
                .await
                .expect("send"),
            200,
        )
        .await;
        let ids: Vec<&str> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, vec![course.as_str()], "{slug}");
        for (other, _, _, theirs) in &made {
            if other != slug {
                let res = app
                    .get(admin, &format!("/api/v1/courses/{theirs}"))
                    .send()
                    .await
                    .expect("send");
                assert_problem(res, 404, "not_found").await;
            }
        }
    }

    // Quotes, semicolons, underscores, spaces, capitals: refused, nothing made.
    let tenants_before = app.kernel.list().await.expect("list").len();
    let schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'";
    let schemas_before = app.pg_count(schemas, &[]).await;
    let pool_rows_before = su_count(&db, "SELECT count(*) FROM campus_pool.users", &[]).await;
    for bad in [
        "pg_catalog",
        "campus_pool",
        "public;",
        "x'; DROP TABLE users; --",
        "robert'); drop table students;--",
        "a;b",
        "\"public\"",
        "o'brien",
        "drop table",
        "t_0123456789abcdef",
        "PUBLIC",
        "pg-catalog\u{0}",
        "acme$$",
    ] {
        let res = provision(&app, bad, "admin@bad.test").await;
        assert_problem(res, 422, "validation_failed").await;
        // Nor does such a name reach a tenant through the edge.
        if !bad.contains('\u{0}') {
            let res = app
                .client
                .get(app.url("/api/v1/me"))
                .header("X-Tenant", bad)
                .send()
                .await
                .expect("send");
            assert_problem(res, 401, "invalid_tenant").await;
        }
    }
    assert_eq!(app.kernel.list().await.expect("list").len(), tenants_before);
    assert_eq!(app.pg_count(schemas, &[]).await, schemas_before);
    assert_eq!(
        su_count(&db, "SELECT count(*) FROM campus_pool.users", &[]).await,
        pool_rows_before
    );
}

fn main() -> std::process::ExitCode {
    trials::main(vec![
        trial(
            "fifty_tenants_on_a_serving_pool_of_two_never_see_each_other",
            4,
            not_here(false),
            fifty_tenants_on_a_serving_pool_of_two_never_see_each_other,
        ),
        trial(
            "a_transaction_cancelled_mid_query_leaves_nothing_for_the_next_tenant",
            2,
            not_here(false),
            a_transaction_cancelled_mid_query_leaves_nothing_for_the_next_tenant,
        ),
        trial(
            "a_request_whose_client_went_away_mid_transaction_leaves_nothing_for_the_next_tenant",
            2,
            not_here(true),
            a_request_whose_client_went_away_mid_transaction_leaves_nothing_for_the_next_tenant,
        ),
        trial(
            "unscoped_sql_inside_a_tenant_transaction_sees_none_of_another_tenant",
            1,
            not_here(false),
            unscoped_sql_inside_a_tenant_transaction_sees_none_of_another_tenant,
        ),
        trial(
            "every_pooled_connection_is_clean_after_tenant_transactions",
            4,
            not_here(true),
            every_pooled_connection_is_clean_after_tenant_transactions,
        ),
        trial(
            "the_idle_probe_sees_a_session_level_leak",
            1,
            not_here(true),
            the_idle_probe_sees_a_session_level_leak,
        ),
        trial(
            "a_grant_lost_by_a_sessions_role_cache_does_not_refuse_the_tenant",
            4,
            not_here(false),
            a_grant_lost_by_a_sessions_role_cache_does_not_refuse_the_tenant,
        ),
        trial(
            "the_audit_refuses_unforced_or_disabled_rls_and_stray_schema_grants",
            1,
            not_here(false),
            the_audit_refuses_unforced_or_disabled_rls_and_stray_schema_grants,
        ),
        trial(
            "the_audit_refuses_a_serving_role_with_bypassrls",
            1,
            not_here(false),
            the_audit_refuses_a_serving_role_with_bypassrls,
        ),
        trial(
            "slugs_that_look_like_sql_are_harmless_or_refused",
            1,
            not_here(false),
            slugs_that_look_like_sql_are_harmless_or_refused,
        ),
    ])
}
