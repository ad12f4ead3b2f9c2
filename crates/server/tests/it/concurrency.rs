//! Many tenants on few pooled connections: requests and transactions of
//! different tenants interleave on a tiny LRU of pools (two tenants open at
//! once, one connection each) or, on PostgreSQL, on a small serving pool
//! shared by all, and never see each other's rows. Each tenant's own store,
//! and the one rule for a tenant's directory, as a property.

use std::num::NonZeroUsize;
use std::path::Component;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use server::ServerConfig;
use tenancy::{Kernel, KernelConfig, Slug, Tenant, TenantId, TenantTx};

use crate::helpers::*;

/// Few connections: on SQLite two tenants' pools open at once, one connection
/// each; on PostgreSQL a serving pool of `serving` connections shared by every
/// `schema` and `pool` tenant, and two `database` tenants' pools of one, with
/// `serving` transactions at once on `database` tenants.
fn few(k: &mut KernelConfig, serving: u32) {
    k.max_open_tenants = NonZeroUsize::new(2).expect("non-zero");
    k.tenant_pool_size = 1;
    if let Some(pg) = &mut k.postgres {
        pg.placements[0].pool_size = serving;
        pg.max_open_databases = NonZeroUsize::new(2).expect("non-zero");
        pg.database_pool_size = 1;
        pg.database_transactions = serving as usize;
    }
}

fn few_connections(k: &mut KernelConfig, _: &mut ServerConfig) {
    few(k, 2);
}

/// The pools and connections open stay within what [`few`] allows, however
/// many tenants were served.
fn assert_few_open(kernel: &Kernel, serving: u32) {
    let (pools, conns) = kernel.data_plane().open_stats();
    let (max_pools, max_conns) = match backend() {
        Backend::Sqlite => (2, 2),
        // The placement's serving pool, and nothing per tenant.
        Backend::Schema | Backend::Pool => (1, serving),
        // The serving pool, and two tenants' databases of one connection.
        Backend::Database => (1 + 2, serving + 2),
    };
    assert!(
        pools <= max_pools && conns <= max_conns,
        "{pools} pools, {conns} connections open; at most {max_pools} and {max_conns}"
    );
}

struct Seeded {
    t: TestTenant,
    courses: Vec<String>,
}

/// What one interleaved request did, for the final tally.
enum Done {
    Read,
    Created { tenant: usize, id: String },
}

async fn one_request(app: &TestApp, all: &[Seeded], i: usize) -> Done {
    let n = all.len();
    let me = (i * 7 + i / n) % n;
    let Seeded { t, courses } = &all[me];
    let own = |title: &str| title.starts_with(&format!("{} ", t.slug));
    match i % 6 {
        0 => {
            let page = json_ok(
                app.get(&t.admin, "/api/v1/courses?limit=200")
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            let items = page["items"].as_array().unwrap();
            for c in items {
                assert!(own(c["title"].as_str().unwrap()), "{} saw {c}", t.slug);
            }
            for id in courses {
                assert!(
                    items.iter().any(|c| c["id"] == id.as_str()),
                    "{} lost {id}",
                    t.slug
                );
            }
            Done::Read
        }
        1 => {
            let v = json_ok(app.get(&t.admin, "/api/v1/me").send().await.unwrap(), 200).await;
            assert_eq!(v["id"], t.admin.user_id.as_str());
            assert_eq!(v["email"], t.admin.email.as_str());
            Done::Read
        }
        2 | 5 => {
            let title = format!("{} written {i}", t.slug);
            let res = app
                .post(
                    &t.admin,
                    "/api/v1/courses",
                    json!({ "title": title, "description": t.slug }),
                )
                .send()
                .await
                .unwrap();
            let v = json_ok(res, 201).await;
            assert_eq!(v["title"], title.as_str());
            Done::Created {
                tenant: me,
                id: v["id"].as_str().unwrap().to_owned(),
            }
        }
        3 => {
            let page = json_ok(
                app.get(&t.admin, "/api/v1/users").send().await.unwrap(),
                200,
            )
            .await;
            let users = page["items"].as_array().unwrap();
            assert_eq!(users.len(), 1, "{} saw {users:?}", t.slug);
            assert_eq!(users[0]["id"], t.admin.user_id.as_str());
            Done::Read
        }
        _ => {
            // Its own course by id, then another tenant's course id: not found.
            let c = json_ok(
                app.get(
                    &t.admin,
                    &format!("/api/v1/courses/{}", courses[i % courses.len()]),
                )
                .send()
                .await
                .unwrap(),
                200,
            )
            .await;
            assert!(own(c["title"].as_str().unwrap()), "{c}");
            let other = &all[(me + 1) % n].courses[0];
            let res = app
                .get(&t.admin, &format!("/api/v1/courses/{other}"))
                .send()
                .await
                .unwrap();
            assert_problem(res, 404, "not_found").await;
            Done::Read
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_requests_on_few_pooled_connections_never_cross() {
    const TENANTS: usize = 12;
    const REQUESTS: usize = 360;
    let app = spawn_app_with(few_connections).await;
    let mut seeded = Vec::new();
    for _ in 0..TENANTS {
        let t = app.tenant("cc").await;
        let mut courses = Vec::new();
        for i in 0..2 {
            courses.push(
                app.course(&t.admin, &format!("{} seeded {i}", t.slug), true)
                    .await,
            );
        }
        seeded.push(Seeded { t, courses });
    }
    let app = Arc::new(app);
    let seeded = Arc::new(seeded);

    let permits = Arc::new(tokio::sync::Semaphore::new(48));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let (app, seeded, permits) = (app.clone(), seeded.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            one_request(&app, &seeded, i).await
        });
    }
    let mut created: Vec<Vec<String>> = vec![Vec::new(); TENANTS];
    while let Some(done) = set.join_next().await {
        match done.expect("request task") {
            Done::Read => {}
            Done::Created { tenant, id } => created[tenant].push(id),
        }
    }
    assert_eq!(created.iter().map(Vec::len).sum::<usize>(), REQUESTS / 3);

    // Every write landed in its own tenant, and only there.
    for (k, Seeded { t, courses }) in seeded.iter().enumerate() {
        let page = json_ok(
            app.get(&t.admin, "/api/v1/courses?limit=200")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        let mut got: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert!(
                    c["title"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{} ", t.slug)),
                    "{c}"
                );
                c["id"].as_str().unwrap().to_owned()
            })
            .collect();
        let mut want: Vec<String> = courses.iter().chain(&created[k]).cloned().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}", t.slug);
    }

    assert_few_open(&app.kernel, 2);
}

async fn titles(tx: &mut TenantTx) -> Vec<String> {
    sqlx::query_scalar("SELECT title FROM courses ORDER BY title")
        .fetch_all(tx.conn())
        .await
        .expect("titles")
}

async fn add_course(tx: &mut TenantTx, title: &str) {
    let now = tenancy::clock::now();
    sqlx::query(
        "INSERT INTO courses (id, title, description, published, created_at, updated_at) VALUES ($1, $2, '', $3, $4, $4)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(title)
    .bind(true)
    .bind(now)
    .execute(tx.conn())
    .await
    .expect("insert course");
}

async fn kernel_tenants(kernel: &Kernel, n: usize) -> Vec<Tenant> {
    let mut out = Vec::new();
    for _ in 0..n {
        let slug = unique_slug("kt");
        let req: lms::ops::NewTenant = serde_json::from_value(json!({
            "slug": slug, "name": slug,
            "admin": { "email": format!("admin@{slug}.test"), "name": "Admin", "password": PASSWORD }
        }))
        .expect("request");
        lms::ops::create_tenant(kernel, req)
            .await
            .expect("provision");
        let t = kernel
            .find(&Slug::parse(&slug).unwrap())
            .await
            .expect("find");
        let mut tx = kernel.begin_write(&t).await.expect("begin");
        add_course(&mut tx, &format!("{slug} 0")).await;
        tx.commit().await.expect("commit");
        out.push(t);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kernel_transactions_interleaved_on_a_tiny_lru_see_only_their_tenant() {
    // On PostgreSQL, a serving pool as large as the number of tenants: the
    // test holds one transaction per tenant at once below.
    const TENANTS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_config(dir.path());
    few(&mut cfg, TENANTS as u32);
    let database = pg_database_of(&cfg);
    let kernel = Kernel::open(cfg).await.expect("kernel");
    let tenants = kernel_tenants(&kernel, TENANTS).await;
    let first = |t: &Tenant| vec![format!("{} 0", t.slug)];

    // Hold a transaction on tenant 0 while every other tenant is opened
    // (which evicts tenant 0's pool from the LRU) and written to.
    let mut held = kernel.begin(&tenants[0]).await.expect("begin");
    assert_eq!(held.tenant_id(), tenants[0].id);
    assert_eq!(titles(&mut held).await, first(&tenants[0]));
    for t in &tenants[1..] {
        let mut tx = kernel.begin_write(t).await.expect("begin");
        assert_eq!(tx.tenant_id(), t.id);
        assert_eq!(titles(&mut tx).await, first(t));
        add_course(&mut tx, &format!("{} 1", t.slug)).await;
        tx.commit().await.expect("commit");
        assert_eq!(titles(&mut held).await, first(&tenants[0]));
    }
    add_course(&mut held, &format!("{} 1", tenants[0].slug)).await;
    held.commit().await.expect("commit held");
    assert_few_open(&kernel, TENANTS as u32);

    // One open transaction per tenant at once: three times the LRU's size.
    let mut txs = Vec::new();
    for t in &tenants {
        txs.push((t, kernel.begin(t).await.expect("begin")));
    }
    for (t, tx) in txs.iter_mut().rev() {
        assert_eq!(tx.tenant_id(), t.id);
        assert_eq!(
            titles(tx).await,
            vec![format!("{} 0", t.slug), format!("{} 1", t.slug)]
        );
    }
    drop(txs);

    // Concurrent writers over all tenants.
    let mut set = tokio::task::JoinSet::new();
    for round in 2..12 {
        for t in &tenants {
            let (kernel, t) = (kernel.clone(), t.clone());
            set.spawn(async move {
                let mut tx = kernel.begin_write(&t).await.expect("begin");
                add_course(&mut tx, &format!("{} {round}", t.slug)).await;
                let seen = titles(&mut tx).await;
                assert!(
                    seen.iter().all(|s| s.starts_with(&format!("{} ", t.slug))),
                    "{seen:?}"
                );
                tx.commit().await.expect("commit");
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.expect("writer");
    }
    for t in &tenants {
        let mut tx = kernel.begin(t).await.expect("begin");
        let mut want: Vec<String> = (0..12).map(|r| format!("{} {r}", t.slug)).collect();
        want.sort();
        assert_eq!(titles(&mut tx).await, want);
    }
    assert_few_open(&kernel, TENANTS as u32);
    if let Some(db) = database {
        drop(kernel);
        drop_pg_database(&db);
    }
}

#[tokio::test]
async fn serving_never_creates_a_tenant_database() {
    let app = spawn_app().await;
    let id = TenantId::new();
    let now = tenancy::clock::now();
    let ghost = tenancy::Tenant {
        id,
        slug: tenancy::Slug::parse("ghost").unwrap(),
        name: "Ghost".into(),
        status: tenancy::TenantStatus::Active,
        isolation: tenancy::Isolation::parse(backend().isolation()).unwrap(),
        placement: "default".into(),
        plan: tenancy::Plan::Standard,
        schema_version: 1,
        created_at: now.clone(),
        updated_at: now,
        deleted_at: None,
    };
    let begun = app.kernel.data_plane().begin(&ghost).await;
    if backend() == Backend::Pool {
        // A pool tenant has nothing of its own to be missing: its
        // transaction opens, and sees no rows (nor makes any).
        let mut tx = begun.expect("begin");
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(tx.conn())
            .await
            .unwrap();
        assert_eq!(users, 0);
    } else {
        let err = begun.err().expect("no database");
        assert!(matches!(err, tenancy::Error::NotFound), "{err:?}");
        assert!(!app.kernel.data_plane().exists(&ghost).await.unwrap());
    }
    assert!(!app.kernel.data_plane().tenant_dir(id).exists());
    assert_eq!(app.footprint(&id.to_string()).await, Footprint::default());
}

/// The embedded backend's rule for a tenant's directory (a property of the
/// path alone: it runs on SQLite whatever the suite's backend).
#[test]
fn a_tenant_dir_is_exactly_one_normal_component_under_the_tenants_root() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let kernel = rt
        .block_on(Kernel::open(KernelConfig::new(
            dir.path(),
            lms::TENANT_MIGRATIONS,
        )))
        .expect("kernel");
    let root = dir.path().join("tenants");
    let check = |id: TenantId| -> Result<(), TestCaseError> {
        let p = kernel.data_plane().tenant_dir(id);
        prop_assert_eq!(p.parent(), Some(root.as_path()));
        let rest: Vec<Component> = p
            .strip_prefix(&root)
            .expect("under root")
            .components()
            .collect();
        prop_assert_eq!(rest.len(), 1);
        prop_assert!(matches!(rest[0], Component::Normal(_)), "{:?}", rest[0]);
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        prop_assert_eq!(name.len(), 36);
        prop_assert!(
            name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{}",
            name
        );
        // The name is the id and nothing else: it reads back as the same id.
        prop_assert_eq!(TenantId::parse(name), Some(id));
        prop_assert!(p.starts_with(dir.path()));
        Ok(())
    };
    proptest!(|(bytes in any::<[u8; 16]>())| {
        check(TenantId::from(uuid::Uuid::from_bytes(bytes)))?;
    });
    for _ in 0..64 {
        check(TenantId::new()).expect("a fresh id");
    }
}

/// Each tenant gets a store of its own — its directory and SQLite file, its
/// schema and role, or its database — or, in a pool, rows of its own only.
#[tokio::test]
async fn provisioned_tenants_live_in_their_own_store() {
    let app = spawn_app().await;
    let root = app.dir.path().join("tenants");
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = app.tenant("dirs").await;
        app.assert_stored(&t.id).await;
        let id = TenantId::parse(&t.id).unwrap();
        let d = app.kernel.data_plane().tenant_dir(id);
        if backend() == Backend::Sqlite {
            assert_eq!(d.parent(), Some(root.as_path()));
            assert!(d.join("tenant.db").is_file());
            seen.push(d);
        }
        ids.push(t.id);
    }
    // Nothing else: no other directory (on PostgreSQL, none at all).
    let mut on_disk: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    on_disk.sort();
    seen.sort();
    assert_eq!(on_disk, seen);
    if backend().is_postgres() {
        // No other tenant schema in the app's database, and no pool row
        // that is not one of these tenants'.
        let names: Vec<String> = ids
            .iter()
            .map(|id| tenancy::dataplane::sql_name(TenantId::parse(id).unwrap()))
            .collect();
        let schemas = app
            .pg_count(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%' AND nspname NOT IN ($1, $2, $3)",
                &[&names[0], &names[1], &names[2]],
            )
            .await;
        assert_eq!(schemas, 0);
        for table in tenancy::dataplane::postgres::POOL_TABLES {
            let sql = format!(
                "SELECT count(*) FROM campus_pool.{table} WHERE tenant_id NOT IN ($1, $2, $3)"
            );
            assert_eq!(
                app.pg_count(&sql, &[&ids[0], &ids[1], &ids[2]]).await,
                0,
                "{table}"
            );
        }
    }
}

/// The bulkhead: one tenant holding all of its shares waits for its own,
/// while another tenant on the same (shared) pool goes straight through;
/// the waiting one proceeds as soon as a share is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_at_its_share_waits_while_another_tenant_is_served() {
    const SHARE: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_config(dir.path());
    // A pool with room for more than one tenant's share (four connections
    // on PostgreSQL's serving pool; four per tenant database on SQLite).
    few(&mut cfg, 4);
    cfg.tenant_pool_size = 4;
    if let Some(pg) = &mut cfg.postgres {
        pg.database_pool_size = 4;
        pg.database_transactions = 8;
    }
    cfg.tenant_transactions = NonZeroUsize::new(SHARE).expect("non-zero");
    let database = pg_database_of(&cfg);
    let kernel = Kernel::open(cfg).await.expect("kernel");
    let tenants = kernel_tenants(&kernel, 2).await;
    let (a, b) = (&tenants[0], &tenants[1]);

    let mut held: Vec<TenantTx> = Vec::new();
    for _ in 0..SHARE {
        held.push(kernel.begin(a).await.expect("begin A"));
    }
    // A's next transaction waits: it cannot open while A holds its share.
    let k = kernel.clone();
    let a2 = a.clone();
    let mut waiting = tokio::spawn(async move { k.begin(&a2).await.map(|tx| tx.tenant_id()) });
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a third transaction of A opened beside the two it holds"
    );
    // B is not held up by A's burst: its transactions open and see its rows.
    for _ in 0..SHARE {
        let mut tx = kernel.begin(b).await.expect("begin B beside A's burst");
        assert_eq!(titles(&mut tx).await, vec![format!("{} 0", b.slug)]);
    }
    // A share given back lets A's waiting transaction through.
    drop(held.pop());
    let opened = waiting
        .await
        .expect("task")
        .expect("begin A after a share came back");
    assert_eq!(opened, a.id);
    drop(held);
    assert!(kernel.bulkhead_tenants() <= 2);
    if let Some(db) = database {
        drop(kernel);
        drop_pg_database(&db);
    }
}

/// Two transactions of one tenant that cross (each changes a row, then the
/// other's) deadlock on PostgreSQL: the one the server picks as the victim
/// is rolled back whole and comes back as [`tenancy::Error::Conflict`] —
/// answered 503 `overloaded` with `Retry-After`, never a 500 — while the
/// other commits. (On SQLite one writer at a time holds a tenant's database,
/// so the same two wait their turn instead: `cancellation.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_is_a_conflict_to_retry_not_an_internal_error() {
    if !backend().is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = kernel_config(dir.path());
    let database = pg_database_of(&cfg);
    let kernel = Kernel::open(cfg).await.expect("kernel");
    let t = kernel_tenants(&kernel, 1).await.remove(0);
    let mut tx = kernel.begin_write(&t).await.expect("begin");
    add_course(&mut tx, "b").await;
    tx.commit().await.expect("commit");
    let rename = |title: &'static str| {
        format!(
            "UPDATE courses SET description = 'x' WHERE title = '{title}' OR title LIKE '% {title}'"
        )
    };
    // `kernel_tenants` made "<slug> 0"; this test made "b".
    let (a, b) = (rename("0"), rename("b"));

    let mut one = kernel.begin(&t).await.expect("begin one");
    let mut two = kernel.begin(&t).await.expect("begin two");
    sqlx::query(&a).execute(one.conn()).await.expect("one: a");
    sqlx::query(&b).execute(two.conn()).await.expect("two: b");
    let (r1, r2) = tokio::join!(
        sqlx::query(&b).execute(one.conn()),
        sqlx::query(&a).execute(two.conn()),
    );
    let (loser, winner) = match (r1, r2) {
        (Err(e), Ok(_)) => (e, two),
        (Ok(_), Err(e)) => (e, one),
        other => panic!("exactly one of the crossing transactions must fail: {other:?}"),
    };
    winner.commit().await.expect("the other commits");
    let err = tenancy::Error::from(loser);
    assert!(matches!(err, tenancy::Error::Conflict(_)), "{err:?}");
    let answer = server::problem::ApiError::from(err);
    assert_eq!(answer.status.as_u16(), 503);
    assert_eq!(answer.code, "overloaded");
    assert!(answer.retry_after_s.is_some());

    drop(kernel);
    if let Some(db) = database {
        drop_pg_database(&db);
    }
}
