//! Clients that give up half-way: a request cancelled at any point (while
//! waiting for its turn, while beginning, mid-statement, mid-commit) rolls
//! back and gives its connection back whole. The tenant stays writable, no
//! pooled connection is left inside a transaction (on SQLite: holding the
//! tenant's write lock; on PostgreSQL: "idle in transaction").

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use server::edge::limits::Rate;
use tenancy::{Kernel, Slug, Tenant};

use crate::helpers::*;

fn unlimited() -> Rate {
    let n = NonZeroU32::new(1_000_000).expect("non-zero");
    Rate::new(n, n)
}

/// A small pseudo-random sequence (the test needs spread, not quality).
fn spread(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// PostgreSQL: sessions of the serving role on this app's databases (its
/// own, and the tenant's if it has one) that sit inside a transaction with
/// nothing running. Polls for a few seconds: a session between two
/// statements of a live transaction is "idle in transaction" for a moment.
async fn lingering_idle_in_transaction(app: &TestApp, tenant_id: &str) -> i64 {
    let tenant_db = format!("t_{}", tenant_id.replace('-', ""));
    let db = app.pg_database().expect("PostgreSQL");
    let mut n = 0;
    for _ in 0..50 {
        n = app
            .pg_count(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND datname IN ($2, $3) AND state LIKE 'idle in transaction%'",
                &[PG_APP, &db, &tenant_db],
            )
            .await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_giving_up_mid_write_leave_the_tenant_writable() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let app = spawn_app_with(|_, s| {
            s.rates.free = unlimited();
            s.rates.standard = unlimited();
            s.rates.enterprise = unlimited();
            s.user_rates.free = unlimited();
            s.user_rates.standard = unlimited();
            s.user_rates.enterprise = unlimited();
        })
        .await;
        let t = app.tenant("impatient").await;

        // Hundreds of course POSTs whose clients give up after 1-20 ms,
        // 64 at a time.
        const IMPATIENT: u64 = 600;
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..IMPATIENT {
            let permit = gate.clone().acquire_owned().await.expect("gate");
            let req = app
                .post(
                    &t.admin,
                    "/api/v1/courses",
                    json!({ "title": format!("impatient {i}"), "description": "", "published": false }),
                )
                .timeout(Duration::from_millis(1 + spread(i) % 20));
            set.spawn(async move {
                let res = req.send().await;
                drop(permit);
                res.map(|r| r.status()).ok()
            });
        }
        let mut answered = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Some(status) = r.expect("client task") {
                answered.push(status);
            }
        }
        // Those that were answered in time were answered well.
        assert!(
            answered
                .iter()
                .all(|s| *s == StatusCode::CREATED || *s == StatusCode::SERVICE_UNAVAILABLE),
            "answers to impatient clients: {answered:?}"
        );

        if backend().is_postgres() {
            assert_eq!(
                lingering_idle_in_transaction(&app, &t.id).await,
                0,
                "sessions left idle in transaction by cancelled requests"
            );
        }

        // Then a patient client: every write of the tenant succeeds.
        for i in 0..20 {
            let res = app
                .post(
                    &t.admin,
                    "/api/v1/courses",
                    json!({ "title": format!("patient {i}"), "description": "", "published": false }),
                )
                .send()
                .await
                .expect("patient POST");
            let status = res.status();
            assert_eq!(
                status,
                StatusCode::CREATED,
                "patient write {i} after the cancellations: {}",
                res.text().await.unwrap_or_default()
            );
        }
        // And it can read them back.
        let res = app.get(&t.admin, "/api/v1/courses?limit=100").send().await.expect("list");
        assert_eq!(res.status(), StatusCode::OK);
    })
    .await
    .expect("the test ran within its overall bound");
}

async fn one_tenant(kernel: &Kernel) -> Tenant {
    let slug = unique_slug("drop");
    let req: lms::ops::NewTenant = serde_json::from_value(json!({
        "slug": slug, "name": slug,
        "admin": { "email": format!("admin@{slug}.test"), "name": "Admin", "password": PASSWORD }
    }))
    .expect("request");
    lms::ops::create_tenant(kernel, req)
        .await
        .expect("provision");
    kernel
        .find(&Slug::parse(&slug).expect("slug"))
        .await
        .expect("find")
}

async fn write_course(kernel: &Kernel, t: &Tenant, title: &str) -> tenancy::Result<()> {
    let mut tx = kernel.begin_write(t).await?;
    let now = tenancy::clock::now();
    sqlx::query(
        "INSERT INTO courses (id, title, description, published, created_at, updated_at) VALUES ($1, $2, '', $3, $4, $4)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(title)
    .bind(false)
    .bind(now)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn begin_write_futures_dropped_at_any_point_leave_no_connection_in_a_transaction() {
    tokio::time::timeout(Duration::from_secs(300), async {
        const POOL: u32 = 4;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = kernel_config(dir.path());
        cfg.tenant_pool_size = POOL;
        if let Some(pg) = &mut cfg.postgres {
            pg.placements[0].pool_size = POOL;
            pg.database_pool_size = POOL;
        }
        let database = pg_database_of(&cfg);
        let kernel = Kernel::open(cfg).await.expect("kernel");
        let t = one_tenant(&kernel).await;

        // Writers dropped after a random delay, 16 at a time: some while
        // waiting for their turn, some in BEGIN, some mid-INSERT or COMMIT.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..800u64 {
            let (k, t) = (kernel.clone(), t.clone());
            let after = Duration::from_micros(spread(i) % 2_000);
            set.spawn(async move {
                let _ = tokio::time::timeout(after, write_course(&k, &t, &format!("dropped {i}")))
                    .await;
            });
            if set.len() >= 16 {
                set.join_next().await.expect("one").expect("writer");
            }
        }
        while let Some(r) = set.join_next().await {
            r.expect("writer");
        }

        if let Some(db) = &database {
            // No serving session left inside a transaction: looked at after
            // each wave of cancelled writers, before anything else borrows
            // the connections (which would end such a transaction).
            let tenant_db = format!("t_{}", t.id.simple());
            for wave in 0..60u64 {
                let mut set = tokio::task::JoinSet::new();
                for j in 0..u64::from(POOL) {
                    let (k, t) = (kernel.clone(), t.clone());
                    let after = Duration::from_micros(spread(1000 + wave * 16 + j) % 1_500);
                    set.spawn(async move {
                        let _ = tokio::time::timeout(after, write_course(&k, &t, "wave")).await;
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.expect("writer");
                }
                let mut lingering = 0;
                for _ in 0..50 {
                    lingering = pg_admin_count(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                         AND datname IN ($2, $3) AND state LIKE 'idle in transaction%'",
                        &[PG_APP, db, &tenant_db],
                    )
                    .await;
                    if lingering == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert_eq!(
                    lingering, 0,
                    "serving sessions idle in transaction after wave {wave}"
                );
            }
        }

        // Every connection the tenant's pool can lend, lent at once: none
        // comes inside a transaction (a leftover one would refuse to begin,
        // "attempted to call begin_with at non-zero transaction depth").
        let mut held = Vec::new();
        for _ in 0..POOL {
            held.push(kernel.begin(&t).await.expect("a read beside the others"));
        }
        for tx in &mut held {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM courses")
                .fetch_one(tx.conn())
                .await
                .expect("count");
            assert!(n >= 0);
        }
        drop(held);
        // And writes go through, as many as the pool has connections and more.
        for i in 0..(3 * POOL) {
            write_course(&kernel, &t, &format!("after {i}"))
                .await
                .expect("a write after the cancellations");
        }
        if let Some(db) = database {
            drop(kernel);
            drop_pg_database(&db);
        }
    })
    .await
    .expect("the test ran within its overall bound");
}

/// One count on the suite's PostgreSQL server, as its superuser.
async fn pg_admin_count(sql: &str, args: &[&str]) -> i64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&pg_admin_url())
        .await
        .expect("connect");
    let mut q = sqlx::query_scalar(sql);
    for a in args {
        q = q.bind(*a);
    }
    let n = q.fetch_one(&mut conn).await.expect(sql);
    conn.close().await.expect("close");
    n
}
