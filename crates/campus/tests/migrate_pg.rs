//! `campus migrate` at scale, on the real binary: 200 tenants left at schema
//! version 0, the run killed (SIGKILL) part-way through, run again — every
//! tenant ends at the latest version, each migration recorded exactly once in
//! its ledger. Two runs at once do not collide, and a broken tenant is named in
//! the summary and fails the run while the others migrate.
//!
//! Where: `CAMPUS_TEST_BACKEND` = `schema`, `pool` or `database` runs on
//! PostgreSQL (`CAMPUS_TEST_PG`, default the local server; trust auth), in a
//! fresh database, with `schema` tenants (plus a few `database` tenants on the
//! `database` backend); unset or `sqlite` runs on a fresh data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;
use std::time::{Duration, Instant};
use support::{campus_in, fresh_pg_database, pg_admin_url, pg_url, psql, psql_ok};

use futures_util::StreamExt;
use sqlx::Connection;
use tenancy::dataplane::postgres::{PgConfig, PlacementConfig};
use tenancy::{Isolation, Kernel, KernelConfig, MigrationSet, Tenant};

const TENANTS: usize = 200;
/// How many tenants the registry shows migrated when the run is killed.
const KILL_AT: i64 = 20;

/// The tenants' schema as a build with no tenant migrations saw it: tenants
/// provisioned with it stay at version 0. (The shared tables of `pool`
/// isolation keep their real set: they are migrated once per placement, and
/// an empty set could not grant on them.)
const VERSION_0: MigrationSet = MigrationSet {
    sqlite: &[],
    postgres: &[],
    pool: lms::TENANT_MIGRATIONS.pool,
};

fn latest() -> i64 {
    lms::TENANT_MIGRATIONS.latest()
}

/// Where the test's registry and tenants live.
enum Store {
    Sqlite {
        data: PathBuf,
    },
    Postgres {
        database: String,
        owner: String,
        app: String,
    },
}

/// A fresh store of the chosen backend, cleaned up when dropped.
struct Fixture {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    store: Store,
    /// `Some(Database)` on the `database` backend: a few tenants of that mode too.
    extra_mode: Option<Isolation>,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().to_owned();
        let backend = std::env::var("CAMPUS_TEST_BACKEND").unwrap_or_default();
        let (store, extra_mode) = match backend.as_str() {
            "" | "sqlite" => (
                Store::Sqlite {
                    data: work.join("data"),
                },
                None,
            ),
            "schema" | "pool" | "database" => {
                let (database, owner, app) = fresh_pg_database();
                (
                    Store::Postgres {
                        owner,
                        app,
                        database,
                    },
                    (backend == "database").then_some(Isolation::Database),
                )
            }
            other => {
                panic!("CAMPUS_TEST_BACKEND={other}: expected sqlite, schema, pool or database")
            }
        };
        sqlx::any::install_default_drivers();
        Self {
            _tmp: tmp,
            work,
            store,
            extra_mode,
        }
    }

    fn kernel_config(&self, migrations: MigrationSet) -> KernelConfig {
        match &self.store {
            Store::Sqlite { data } => KernelConfig::new(data, migrations),
            Store::Postgres { owner, app, .. } => {
                let mut k = KernelConfig::new(self.work.join("unused"), migrations);
                k.postgres = Some(PgConfig {
                    placements: vec![PlacementConfig {
                        name: "default".into(),
                        url: app.clone(),
                        owner_url: owner.clone(),
                        pool_size: 4,
                    }],
                    max_open_databases: std::num::NonZeroUsize::new(4).expect("4"),
                    database_pool_size: 1,
                    database_transactions: 8,
                    owner_pool_size: 4,
                });
                k
            }
        }
    }

    /// Provisions tenants `<prefix>-000`… at schema version 0 (`mode`: the
    /// backend's default when `None`), eight at a time.
    async fn tenants_at_version_0(
        &self,
        prefix: &str,
        n: usize,
        mode: Option<Isolation>,
    ) -> Vec<Tenant> {
        let kernel = Kernel::open(self.kernel_config(VERSION_0))
            .await
            .expect("kernel");
        let kernel = &kernel;
        let mode = mode.or(match self.store {
            Store::Sqlite { .. } => None,
            Store::Postgres { .. } => Some(Isolation::Schema),
        });
        let made: Vec<Tenant> = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let slug = format!("{prefix}-{i:03}");
                let spec = tenancy::ProvisionSpec {
                    slug: tenancy::Slug::parse(&slug).expect("slug"),
                    name: slug.clone(),
                    isolation: mode,
                    placement: None,
                    plan: tenancy::Plan::Standard,
                };
                let r = kernel.reserve(&spec).await.expect("reserve");
                kernel.build(&r).await.expect("build");
                kernel.activate(&r).await.expect("activate")
            })
            .buffer_unordered(8)
            .collect()
            .await;
        assert!(made.iter().all(|t| t.schema_version == 0));
        made
    }

    /// `campus` on this store, isolated from the caller's environment.
    fn campus(&self) -> Command {
        let mut c = campus_in(&self.work);
        c.stdin(Stdio::null());
        match &self.store {
            Store::Sqlite { data } => {
                c.arg("--data-dir").arg(data);
            }
            Store::Postgres { owner, app, .. } => {
                // The kernel's data directory: its master key is the
                // deployment's, and a node without it is refused.
                c.arg("--data-dir").arg(self.work.join("unused"));
                c.args(["--database-url", app, "--owner-database-url", owner]);
            }
        }
        c
    }

    fn migrate(&self, extra: &[&str]) -> Output {
        self.campus()
            .arg("migrate")
            .args(extra)
            .output()
            .expect("run campus migrate")
    }

    async fn registry(&self) -> sqlx::AnyConnection {
        let url = match &self.store {
            Store::Sqlite { data } => sqlite_url(&data.join("registry.db")),
            Store::Postgres { owner, .. } => owner.clone(),
        };
        sqlx::AnyConnection::connect(&url).await.expect("registry")
    }

    fn tenants_table(&self) -> &'static str {
        match self.store {
            Store::Sqlite { .. } => "tenants",
            Store::Postgres { .. } => "campus_control.tenants",
        }
    }

    /// How many tenants the registry shows at the latest version.
    async fn registry_at_latest(&self) -> i64 {
        let mut conn = self.registry().await;
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE schema_version = $1",
            self.tenants_table()
        );
        let n = sqlx::query_scalar(&sql)
            .bind(latest())
            .fetch_one(&mut conn)
            .await
            .expect("count");
        conn.close().await.expect("close");
        n
    }

    /// The registry's schema version of each tenant.
    async fn registry_versions(&self, tenants: &[Tenant]) -> Vec<i64> {
        let mut conn = self.registry().await;
        let sql = format!(
            "SELECT schema_version FROM {} WHERE id = $1",
            self.tenants_table()
        );
        let mut out = Vec::new();
        for t in tenants {
            let v: i64 = sqlx::query_scalar(&sql)
                .bind(t.id.to_string())
                .fetch_one(&mut conn)
                .await
                .expect("tenant row");
            out.push(v);
        }
        conn.close().await.expect("close");
        out
    }

    /// The versions recorded in a tenant's own ledger, one entry per row
    /// (`_campus_migrations`, read on the store as the owner).
    async fn ledger(&self, t: &Tenant) -> Vec<i64> {
        let name = tenancy::dataplane::sql_name(t.id);
        let (url, table) = match (&self.store, t.isolation) {
            (Store::Sqlite { data }, _) => (
                sqlite_url(
                    &data
                        .join("tenants")
                        .join(t.id.to_string())
                        .join("tenant.db"),
                ),
                "_campus_migrations".to_owned(),
            ),
            (Store::Postgres { owner, .. }, Isolation::Schema) => {
                (owner.clone(), format!("\"{name}\"._campus_migrations"))
            }
            (Store::Postgres { .. }, Isolation::Database) => (
                pg_url("campus_test_owner", &name),
                "public._campus_migrations".to_owned(),
            ),
            (Store::Postgres { .. }, Isolation::Pool) => unreachable!("no pool tenants here"),
        };
        let mut conn = sqlx::AnyConnection::connect(&url)
            .await
            .expect("tenant store");
        let versions: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {table} ORDER BY version"))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("ledger of {}: {e}", t.slug));
        conn.close().await.expect("close");
        versions
    }

    /// How many of `tenants` have the latest version in their own ledger.
    async fn ledgers_at_latest(&self, tenants: &[Tenant]) -> usize {
        let mut n = 0;
        for t in tenants {
            if self.ledger(t).await.last() == Some(&latest()) {
                n += 1;
            }
        }
        n
    }

    /// Every tenant at the latest version in the registry, and every version
    /// recorded exactly once in its ledger.
    async fn assert_all_at_latest_once(&self, tenants: &[Tenant]) {
        let expected: Vec<i64> = (1..=latest()).collect();
        let versions = self.registry_versions(tenants).await;
        for (t, v) in tenants.iter().zip(versions) {
            assert_eq!(v, latest(), "registry version of {}", t.slug);
            assert_eq!(
                self.ledger(t).await,
                expected,
                "ledger of {}: each version exactly once",
                t.slug
            );
        }
    }

    /// Makes a tenant's database unusable behind the kernel's back.
    fn break_tenant(&self, t: &Tenant) {
        match &self.store {
            Store::Sqlite { data } => {
                let dir = data.join("tenants").join(t.id.to_string());
                std::fs::remove_file(dir.join("tenant.db")).expect("remove tenant.db");
            }
            Store::Postgres { owner, .. } => {
                let name = tenancy::dataplane::sql_name(t.id);
                psql_ok(owner, &format!("DROP SCHEMA \"{name}\" CASCADE;"));
            }
        }
    }
}

impl Drop for Fixture {
    /// Drops the test database, then the cluster-wide roles and the
    /// databases its tenants made (`t_<hex>`).
    fn drop(&mut self) {
        let Store::Postgres {
            database, owner, ..
        } = &self.store
        else {
            return;
        };
        let listed = psql(
            owner,
            "SELECT isolation || ' ' || replace(id, '-', '') FROM campus_control.tenants;",
        );
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let mut script = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE);\n");
        let mut roles = Vec::new();
        for line in listed.lines() {
            let Some((mode, hex)) = line.split_once(' ') else {
                continue;
            };
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            match mode {
                "schema" => roles.push(format!("\"t_{hex}\"")),
                "database" => script.push_str(&format!(
                    "DROP DATABASE IF EXISTS \"t_{hex}\" WITH (FORCE);\n"
                )),
                _ => {}
            }
        }
        for chunk in roles.chunks(500) {
            script.push_str(&format!("DROP ROLE IF EXISTS {};\n", chunk.join(", ")));
        }
        let out = psql(&pg_admin_url(), &script);
        if !out.status.success() || !out.stderr.is_empty() {
            eprintln!(
                "cleanup of {database}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=ro", path.display())
}

/// `(migrated, already up to date, failed)` from `campus migrate`'s summary.
fn summary(out: &Output) -> (usize, usize, usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("migrated "))
        .unwrap_or_else(|| {
            panic!(
                "no summary in:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let n: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("count"))
        .collect();
    assert_eq!(n.len(), 3, "{line}");
    (n[0], n[1], n[2])
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_killed_part_way_resumes_and_every_tenant_ends_at_the_latest_version_once() {
    let fx = Fixture::new();
    assert!(latest() >= 1, "the build has tenant migrations");
    let tenants = fx.tenants_at_version_0("m", TENANTS, None).await;
    assert_eq!(fx.registry_at_latest().await, 0);

    // Killed (SIGKILL) once the registry shows a tenth of the tenants migrated.
    let mut child = fx
        .campus()
        .args(["migrate", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn campus migrate");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("campus migrate finished ({status}) before it could be killed");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "campus migrate migrated nothing within two minutes"
        );
        if fx.registry_at_latest().await >= KILL_AT {
            child.kill().expect("SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed, not finished: {status}");
    let registry_done = usize::try_from(fx.registry_at_latest().await).expect("count");
    let ledger_done = fx.ledgers_at_latest(&tenants).await;
    eprintln!(
        "killed after {:?}: {registry_done}/{TENANTS} tenants migrated per the registry, {ledger_done} per their ledgers",
        started.elapsed()
    );
    assert!(
        0 < registry_done && registry_done < TENANTS,
        "the kill landed mid-run: {registry_done}/{TENANTS}"
    );
    // A tenant's ledger commits before the registry records it.
    assert!(ledger_done >= registry_done && ledger_done < TENANTS);

    // Run again: it finishes what the killed run left.
    let out = fx.migrate(&[]);
    assert_success(&out, "the second campus migrate");
    let (migrated, up_to_date, failed) = summary(&out);
    assert_eq!(failed, 0);
    assert_eq!(migrated + up_to_date, TENANTS);
    assert!(
        migrated >= TENANTS - ledger_done,
        "{migrated} migrated, {ledger_done} were already"
    );
    fx.assert_all_at_latest_once(&tenants).await;

    // A third run has nothing to do.
    let out = fx.migrate(&[]);
    assert_success(&out, "the third campus migrate");
    assert_eq!(summary(&out), (0, TENANTS, 0));

    // Two runs at once over 100 more tenants behind: neither fails, and each
    // migration is applied once.
    let mut more = fx.tenants_at_version_0("c", 100, None).await;
    if let Some(mode) = fx.extra_mode {
        more.extend(fx.tenants_at_version_0("d", 5, Some(mode)).await);
    }
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = fx.campus();
            cmd.args(["migrate", "--concurrency", "4"]);
            tokio::task::spawn_blocking(move || cmd.output().expect("run campus migrate"))
        })
        .collect();
    let mut migrated_by_either = 0;
    for run in runs {
        let out = run.await.expect("join");
        assert_success(&out, "a concurrent campus migrate");
        let (migrated, up_to_date, failed) = summary(&out);
        assert_eq!(failed, 0);
        assert_eq!(migrated + up_to_date, TENANTS + more.len());
        migrated_by_either += migrated;
    }
    // A run that waited on the other's lock may count the tenant as migrated too.
    assert!(migrated_by_either >= more.len());
    fx.assert_all_at_latest_once(&more).await;
    fx.assert_all_at_latest_once(&tenants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_fails_is_named_and_fails_the_run_while_the_others_migrate() {
    let fx = Fixture::new();
    let tenants = fx.tenants_at_version_0("f", 5, None).await;
    let broken = &tenants[2];
    fx.break_tenant(broken);

    let out = fx.migrate(&["--concurrency", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a failed tenant fails the run:\n{stdout}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(summary(&out), (4, 0, 1), "{stdout}");
    assert!(
        stdout.contains(&format!("failed: {}: ", broken.slug)),
        "{stdout}"
    );
    let others: Vec<Tenant> = tenants
        .iter()
        .filter(|t| t.id != broken.id)
        .cloned()
        .collect();
    fx.assert_all_at_latest_once(&others).await;
    assert_eq!(
        fx.registry_versions(std::slice::from_ref(broken)).await,
        [0]
    );

    // Again: the healthy ones are up to date, the broken one still fails.
    let out = fx.migrate(&[]);
    assert!(!out.status.success());
    assert_eq!(summary(&out), (0, 4, 1));
}
