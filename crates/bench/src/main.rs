//! `campus-bench`: the figures of `docs/benchmarks.md`, measured against a
//! PostgreSQL server (figures, not timed assertions).
//!
//! ```text
//! cargo run --release -p campus-bench -- provision [--n 50]
//! cargo run --release -p campus-bench -- migrate --tenants 1000 [--concurrency 4]
//! cargo run --release -p campus-bench -- connections --tenants 10000 [--pool-size 16]
//!     [--clients 64] [--duration 20] [--isolation pool|schema]
//! cargo build --release -p campus -p campus-bench &&
//!     target/release/campus-bench upload [--mb 500] [--rounds 1] [--campus target/release/campus]
//! cargo build --release -p campus -p campus-bench &&
//!     target/release/campus-bench memory [--tenants 1000] [--backend embedded|schema|pool]
//! cargo build --release -p campus -p campus-bench &&
//!     target/release/campus-bench burst [--tenants 100] [--clients 64] [--duration 30]
//! cargo build --release -p campus -p campus-bench &&
//!     target/release/campus-bench console [--tenants 10000] [--rounds 20] [--backend embedded|schema|pool]
//! cargo build --release -p campus -p campus-bench &&
//!     target/release/campus-bench slow-clients [--connections 1000] [--packet-clients 20] [--duration 20]
//! ```
//!
//! `upload` and `slow-clients` need no PostgreSQL: they run the real
//! `campus serve` on the embedded default (see `upload.rs`, `slow.rs`); neither
//! do `memory` and `burst` on `--backend embedded` (see `load.rs`).
//!
//! Each run makes a fresh database `campus_bench_<hex>` (owned by the owner
//! role `campus_owner`, served by `campus_app`; both made if missing), and at
//! the end drops it together with the roles and databases its tenants made
//! (`--keep` leaves everything in place). `CAMPUS_BENCH_PG` names the server
//! as a superuser (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! trust authentication).

/// The allocator of `campus` (see crates/campus/src/main.rs), so that the
/// scenarios that run the server in this process (`noisy`) measure the
/// memory it would use.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod console;
mod lifecycle;
mod load;
mod noisy;
mod process;
mod slow;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use tenancy::dataplane::postgres::{PgConfig, PlacementConfig};
use tenancy::{Isolation, Kernel, KernelConfig, Migration, MigrationSet, Tenant};

const OWNER: &str = "campus_owner";
const APP: &str = "campus_app";

/// A build with no tenant migrations: tenants provisioned with it stay at
/// schema version 0. (The shared `pool` tables keep their real set: they are
/// migrated once per placement.)
const VERSION_0: MigrationSet = MigrationSet {
    sqlite: &[],
    postgres: &[],
    pool: lms::TENANT_MIGRATIONS.pool,
};

/// A small second migration, as a release would add one.
const SMALL_SQL: &str = "ALTER TABLE courses ADD COLUMN bench_note TEXT;";
static POSTGRES_V2: [Migration; 2] = [
    lms::TENANT_MIGRATIONS.postgres[0],
    Migration {
        version: 2,
        name: "bench_small",
        sql: SMALL_SQL,
    },
];
static SQLITE_V2: [Migration; 2] = [
    lms::TENANT_MIGRATIONS.sqlite[0],
    Migration {
        version: 2,
        name: "bench_small",
        sql: SMALL_SQL,
    },
];
/// The real tenant schema plus [`SMALL_SQL`] as version 2.
const WITH_SMALL: MigrationSet = MigrationSet {
    sqlite: &SQLITE_V2,
    postgres: &POSTGRES_V2,
    pool: lms::TENANT_MIGRATIONS.pool,
};

const USAGE: &str =
    "usage: campus-bench <provision|migrate|connections|upload|noisy|memory|burst|console|slow-clients> [options]

  provision    [--n 50]                  median/p90 time to provision one tenant in each
                                         mode (schema, pool, database), kernel-level and
                                         full (with the Argon2-hashed first admin)
  migrate      [--tenants 1000] [--concurrency 4]
                                         apply one migration to N schema tenants
  connections  [--tenants 10000] [--pool-size 16] [--clients 64] [--duration 20]
               [--isolation pool|schema] serve requests spread over N tenants and watch
                                         the server's connections to PostgreSQL
  upload       [--mb 500] [--rounds 1] [--campus PATH]
                                         the resident memory of a real `campus serve`
                                         (embedded, no PostgreSQL) while a --mb/10 and a
                                         --mb MiB video stream in, --rounds times; PATH
                                         defaults to the `campus` next to this binary
  noisy        [--clients 64] [--duration 20] [--pool-size 16] [--redis-url URL]
               [--login-flood]           tenant B's latency alone, then while tenant A
                                         floods with --clients clients (schema tenants);
                                         cache and limits in Redis with --redis-url;
                                         --login-flood: A gets anonymous logins with
                                         wrong passwords from many addresses instead,
                                         and the process's peak RSS is reported
  memory       [--tenants 1000] [--courses 20] [--clients 64] [--duration 20]
               [--backend embedded|schema|pool] [--campus PATH]
                                         the resident memory of a real `campus serve`
                                         idle, after provisioning N tenants (create, log
                                         in, --courses courses each) and while --clients
                                         clients read course lists over every tenant
  memory and burst take --server-config FILE: a campus.toml for the server
  burst        [--tenants 100] [--clients 64] [--duration 30] [--give-up-ms 20]
               [--backend embedded|schema|pool] [--campus PATH]
                                         a write burst over N tenants in which half the
                                         clients give up mid-request, then one write per
                                         tenant: failures, and acknowledged writes lost
  lifecycle    [--rows 10000] [--mb 1024] [--campus PATH]
                                         one `schema` tenant with --rows courses and --mb MiB
                                         of videos on a real `campus serve` (PostgreSQL):
                                         `campus tenant export`, purge and `import` (time,
                                         the CLI's peak RSS against the archive's size), then
                                         `move` schema → pool → schema under a reader and a
                                         writer (the freeze; the reader's p99 against before)
  console      [--tenants 10000] [--rounds 20] [--backend embedded|schema|pool] [--campus PATH]
                                         the operator console's pages (tenants table:
                                         first page, search, filter + sort, last page;
                                         a tenant; fleet; audit log) with N tenants on a
                                         real `campus serve`, p50/p95 against the
                                         control-plane API's page of 50 in the same run
  slow-clients [--connections 1000] [--packet-clients 20] [--duration 20] [--campus PATH]
                                         /healthz and tenant B's latency alone, then while
                                         --connections slow connections (slowloris: half
                                         never finish headers, half trickle bodies) and
                                         --packet-clients sending bodies in 1-byte packets
                                         are held open against a real `campus serve` (embedded)

  --setup-concurrency 8   tenants provisioned at once while setting up
  --keep                  leave the database, roles and tenant databases in place
  CAMPUS_BENCH_PG         the PostgreSQL server, as a superuser
                          (default postgres://postgres@127.0.0.1:5432/postgres)
  CAMPUS_BENCH_LOG_STATEMENTS=1   log every statement with its duration (server log)";

#[derive(Debug, Clone)]
struct Args {
    scenario: String,
    n: usize,
    tenants: Option<usize>,
    concurrency: usize,
    setup_concurrency: usize,
    pool_size: u32,
    clients: usize,
    connections: usize,
    /// `slow-clients`: connections sending a body in 1-byte packets.
    packet_clients: usize,
    duration: Duration,
    isolation: Isolation,
    keep: bool,
    mb: u64,
    rounds: usize,
    campus: Option<PathBuf>,
    redis_url: Option<String>,
    backend: load::Backend,
    /// A `campus.toml` for the server of `memory` and `burst`.
    server_config: String,
    courses: usize,
    give_up_ms: u64,
    login_flood: bool,
    /// `lifecycle`: the tenant's courses.
    rows: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let Some(scenario) = it.next() else {
        bail!("{USAGE}");
    };
    if !matches!(
        scenario.as_str(),
        "provision"
            | "migrate"
            | "connections"
            | "upload"
            | "noisy"
            | "memory"
            | "burst"
            | "slow-clients"
            | "console"
            | "lifecycle"
    ) {
        bail!("unknown scenario `{scenario}`\n\n{USAGE}");
    }
    let mut a = Args {
        scenario,
        n: 50,
        tenants: None,
        concurrency: 4,
        setup_concurrency: 8,
        pool_size: 16,
        clients: 64,
        connections: 1000,
        packet_clients: 20,
        duration: Duration::from_secs(20),
        isolation: Isolation::Pool,
        keep: false,
        mb: 500,
        rounds: 1,
        campus: None,
        redis_url: None,
        backend: load::Backend::Embedded,
        server_config: String::new(),
        courses: 20,
        give_up_ms: 20,
        login_flood: false,
        rows: 10_000,
    };
    if a.scenario == "lifecycle" {
        a.mb = 1024;
    }
    if a.scenario == "console" {
        a.rounds = 20;
    }
    if a.scenario == "burst" {
        a.duration = Duration::from_secs(30);
    }
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            a.keep = true;
            continue;
        }
        if flag == "--login-flood" {
            a.login_flood = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let num = || -> Result<usize> {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag}: a positive number, not `{value}`"))
        };
        match flag.as_str() {
            "--n" => a.n = num()?,
            "--mb" => a.mb = u64::try_from(num()?)?,
            "--rounds" => a.rounds = num()?,
            "--campus" => a.campus = Some(PathBuf::from(&value)),
            "--redis-url" => a.redis_url = Some(value),
            "--tenants" => a.tenants = Some(num()?),
            "--server-config" => {
                a.server_config = std::fs::read_to_string(&value)
                    .with_context(|| format!("--server-config: cannot read {value}"))?
            }
            "--courses" => a.courses = value.parse().context("--courses: a number")?,
            "--give-up-ms" => a.give_up_ms = u64::try_from(num()?)?,
            "--rows" => a.rows = num()?,
            "--backend" => {
                a.backend =
                    load::Backend::parse(&value).context("--backend: embedded, schema or pool")?
            }
            "--concurrency" => a.concurrency = num()?,
            "--setup-concurrency" => a.setup_concurrency = num()?,
            "--pool-size" => a.pool_size = u32::try_from(num()?)?,
            "--clients" => a.clients = num()?,
            "--connections" => a.connections = num()?,
            "--packet-clients" => {
                a.packet_clients = value.parse().context("--packet-clients: a number")?
            }
            "--duration" => a.duration = Duration::from_secs(u64::try_from(num()?)?),
            "--isolation" => {
                a.isolation = match value.as_str() {
                    "pool" => Isolation::Pool,
                    "schema" => Isolation::Schema,
                    _ => bail!("--isolation: pool or schema"),
                }
            }
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    sqlx::any::install_default_drivers();
    // The scenarios that need no PostgreSQL: the real binary on the embedded default.
    let embedded = matches!(args.scenario.as_str(), "upload" | "slow-clients")
        || (matches!(args.scenario.as_str(), "memory" | "burst" | "console")
            && args.backend == load::Backend::Embedded);
    if embedded {
        println!("load average at start: {}", load_average());
        let result = match args.scenario.as_str() {
            "upload" => upload::run(args.mb, args.rounds, args.campus.as_ref()).await,
            "slow-clients" => {
                slow::run(
                    args.connections,
                    args.packet_clients,
                    args.duration,
                    args.campus.as_ref(),
                )
                .await
            }
            "memory" => load::memory(&args, None).await,
            "console" => console::run(&args, None).await,
            _ => load::burst(&args, None).await,
        };
        println!("load average at end: {}", load_average());
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let bench = match Bench::create().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot set up the benchmark database: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print_machine(&bench).await;
    let result = match args.scenario.as_str() {
        "provision" => provision(&bench, &args).await,
        "migrate" => migrate(&bench, &args).await,
        "noisy" => noisy::run(&bench, &args).await,
        "lifecycle" => lifecycle::run(&bench, &args).await,
        "memory" => load::memory(&args, Some(&bench)).await,
        "burst" => load::burst(&args, Some(&bench)).await,
        "console" => console::run(&args, Some(&bench)).await,
        _ => connections(&bench, &args).await,
    };
    println!("load average at end: {}", load_average());
    if args.keep {
        println!("\nkept the database {} (--keep)", bench.database);
    } else {
        let t0 = Instant::now();
        match bench.cleanup().await {
            Ok(n) => println!(
                "\ncleaned up: dropped {} and {n} tenant roles/databases in {}",
                bench.database,
                secs(t0.elapsed())
            ),
            Err(e) => eprintln!("warning: cleanup of {} failed: {e:#}", bench.database),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The benchmark database

struct Bench {
    admin: String,
    database: String,
}

impl Bench {
    async fn create() -> Result<Self> {
        let admin = std::env::var("CAMPUS_BENCH_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let database = format!("campus_bench_{}", tenancy::TenantId::new().simple());
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .with_context(|| format!("cannot connect to {admin} (CAMPUS_BENCH_PG)"))?;
        for (role, attrs) in [
            (OWNER, "LOGIN CREATEROLE CREATEDB"),
            (APP, "LOGIN NOINHERIT"),
        ] {
            let sql = format!(
                "DO $$ BEGIN CREATE ROLE {role} {attrs}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            );
            sqlx::Executor::execute(&mut conn, sql.as_str()).await?;
        }
        sqlx::Executor::execute(
            &mut conn,
            format!("CREATE DATABASE {database} OWNER {OWNER}").as_str(),
        )
        .await?;
        if std::env::var_os("CAMPUS_BENCH_LOG_STATEMENTS").is_some() {
            // Every statement and its duration in the server's log: where the time goes.
            sqlx::Executor::execute(
                &mut conn,
                format!("ALTER DATABASE {database} SET log_min_duration_statement = 0").as_str(),
            )
            .await?;
        }
        conn.close().await?;
        Ok(Self { admin, database })
    }

    /// The admin URL with another user and database (trust authentication).
    fn url(&self, user: &str, database: &str) -> String {
        let rest = self
            .admin
            .split_once("://")
            .map_or(self.admin.as_str(), |(_, r)| r);
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split(['/', '?']).next().unwrap_or(host);
        format!("postgres://{user}@{host}/{database}")
    }

    fn kernel_config(&self, migrations: MigrationSet, pool_size: u32) -> KernelConfig {
        let mut k = KernelConfig::new("/nonexistent/campus-bench", migrations);
        k.postgres = Some(PgConfig {
            placements: vec![PlacementConfig {
                name: "default".into(),
                url: self.url(APP, &self.database),
                owner_url: self.url(OWNER, &self.database),
                pool_size,
            }],
            max_open_databases: std::num::NonZeroUsize::new(64)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            database_pool_size: 2,
            database_transactions: 8,
            owner_pool_size: 4,
        });
        k
    }

    async fn admin_conn(&self, database: &str) -> Result<sqlx::AnyConnection> {
        Ok(sqlx::AnyConnection::connect(&self.url_as_admin(database)).await?)
    }

    fn url_as_admin(&self, database: &str) -> String {
        let user = self
            .admin
            .split_once("://")
            .and_then(|(_, r)| r.rsplit_once('@'))
            .map_or("postgres", |(u, _)| u.split(':').next().unwrap_or(u));
        let user = user.to_owned();
        let mut url = self.url(&user, database);
        // Keep the admin's password, if it had one.
        if let Some((_, rest)) = self.admin.split_once("://")
            && let Some((cred, _)) = rest.rsplit_once('@')
            && cred.contains(':')
        {
            url = url.replacen(&format!("{user}@"), &format!("{cred}@"), 1);
        }
        url
    }

    /// Drops the database, then the roles and databases its tenants made.
    async fn cleanup(&self) -> Result<usize> {
        let tenants: Vec<(String, String)> = match self.admin_conn(&self.database).await {
            Ok(mut c) => {
                let rows = sqlx::query_as("SELECT id, isolation FROM campus_control.tenants")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                let _ = c.close().await;
                rows
            }
            Err(_) => Vec::new(),
        };
        let mut conn = self.admin_conn("postgres").await?;
        sqlx::Executor::execute(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database).as_str(),
        )
        .await?;
        let mut roles = Vec::new();
        let mut dropped = 0;
        for (id, isolation) in &tenants {
            let Some(id) = tenancy::TenantId::parse(id) else {
                continue;
            };
            let name = tenancy::dataplane::sql_name(id);
            match isolation.as_str() {
                "schema" => roles.push(format!("\"{name}\"")),
                "database" => {
                    sqlx::Executor::execute(
                        &mut conn,
                        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                    )
                    .await?;
                    dropped += 1;
                }
                _ => {}
            }
        }
        for chunk in roles.chunks(1000) {
            sqlx::Executor::execute(
                &mut conn,
                format!("DROP ROLE IF EXISTS {}", chunk.join(", ")).as_str(),
            )
            .await?;
            dropped += chunk.len();
        }
        conn.close().await?;
        Ok(dropped)
    }
}

async fn print_machine(bench: &Bench) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| format!("{} GiB", kb / 1024 / 1024));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let pg = match bench.admin_conn("postgres").await {
        Ok(mut c) => {
            let v: Option<String> = sqlx::query_scalar("SELECT current_setting('server_version')")
                .fetch_optional(&mut c)
                .await
                .ok()
                .flatten();
            let _ = c.close().await;
            v.unwrap_or_default()
        }
        Err(_) => "?".into(),
    };
    println!("machine: {cores} cores ({cpu}), {mem} RAM; PostgreSQL {pg} on the same machine");
    println!("load average at start: {}", load_average());
    println!("database: {}", bench.database);
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures: other work on the machine
/// skews every number here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// Figures

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Stats {
    median: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
    min: Duration,
    max: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut s = samples.to_vec();
    s.sort();
    let total: Duration = s.iter().sum();
    Stats {
        median: pct(&s, 50.0),
        p90: pct(&s, 90.0),
        p99: pct(&s, 99.0),
        mean: total / u32::try_from(s.len().max(1)).unwrap_or(u32::MAX),
        min: s.first().copied().unwrap_or_default(),
        max: s.last().copied().unwrap_or_default(),
    }
}

fn slug(s: &str) -> Result<tenancy::Slug> {
    Ok(tenancy::Slug::parse(s)?)
}

fn spec(slug_text: &str, isolation: Isolation) -> Result<tenancy::ProvisionSpec> {
    Ok(tenancy::ProvisionSpec {
        slug: slug(slug_text)?,
        name: slug_text.to_owned(),
        isolation: Some(isolation),
        placement: None,
        plan: tenancy::Plan::Standard,
    })
}

/// Provisions `n` tenants `<prefix>-00000`… at the kernel level, `at_once`
/// at a time; prints progress every 10 %.
async fn provision_many(
    kernel: &Kernel,
    prefix: &str,
    n: usize,
    isolation: Isolation,
    at_once: usize,
) -> Result<Vec<Tenant>> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..at_once.min(n) {
        let (kernel, next, done, prefix) = (
            kernel.clone(),
            next.clone(),
            done.clone(),
            prefix.to_owned(),
        );
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let r = kernel
                    .reserve(&spec(&format!("{prefix}-{i:05}"), isolation)?)
                    .await?;
                kernel.build(&r).await?;
                made.push(kernel.activate(&r).await?);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= 1000 && d.is_multiple_of(n / 10) {
                    eprintln!("  … {d}/{n} tenants provisioned ({})", secs(t0.elapsed()));
                }
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

// ---------------------------------------------------------------------------
// provision

const PASSWORD: &str = "correct horse battery staple";
const WARM_UP: usize = 3;

async fn provision(bench: &Bench, args: &Args) -> Result<()> {
    let n = args.n;
    let kernel = Kernel::open(bench.kernel_config(lms::TENANT_MIGRATIONS, 16)).await?;
    println!(
        "\nprovision: one tenant at a time, N={n} per mode and kind (after {WARM_UP} untimed warm-ups)"
    );
    println!(
        "  {:<9} {:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "mode", "what", "median", "p90", "mean", "min", "max"
    );
    let row = |mode: &str, what: &str, s: &Stats| {
        println!(
            "  {:<9} {:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
            mode,
            what,
            ms(s.median),
            ms(s.p90),
            ms(s.mean),
            ms(s.min),
            ms(s.max)
        );
    };
    let mut json = serde_json::Map::new();
    for mode in [Isolation::Schema, Isolation::Pool, Isolation::Database] {
        let m = mode.as_str();
        let (mut total, mut reserve, mut build, mut activate) = (vec![], vec![], vec![], vec![]);
        for i in 0..WARM_UP + n {
            let spec = spec(&format!("k{}-{i:04}", &m[..1]), mode)?;
            let t0 = Instant::now();
            let r = kernel.reserve(&spec).await?;
            let t1 = Instant::now();
            kernel.build(&r).await?;
            let t2 = Instant::now();
            kernel.activate(&r).await?;
            let t3 = Instant::now();
            if i >= WARM_UP {
                total.push(t3 - t0);
                reserve.push(t1 - t0);
                build.push(t2 - t1);
                activate.push(t3 - t2);
            }
        }
        let k = stats(&total);
        row(m, "kernel: reserve + build + activate", &k);
        row("", "  of which reserve", &stats(&reserve));
        row("", "  of which build (create + migrate)", &stats(&build));
        row("", "  of which activate", &stats(&activate));

        let mut full = vec![];
        for i in 0..WARM_UP + n {
            let slug = format!("f{}-{i:04}", &m[..1]);
            let req = lms::ops::NewTenant {
                slug: slug.clone(),
                name: slug.clone(),
                isolation: Some(m.to_owned()),
                placement: None,
                plan: None,
                admin: lms::ops::NewAdmin {
                    email: format!("admin@{slug}.test"),
                    name: "Admin".into(),
                    password: Some(PASSWORD.into()),
                },
            };
            let t0 = Instant::now();
            lms::ops::create_tenant(&kernel, req).await?;
            if i >= WARM_UP {
                full.push(t0.elapsed());
            }
        }
        let f = stats(&full);
        row(m, "full: create_tenant (with Argon2 admin)", &f);
        json.insert(
            m.to_owned(),
            serde_json::json!({
                "kernel_median_ms": k.median.as_secs_f64() * 1000.0,
                "kernel_p90_ms": k.p90.as_secs_f64() * 1000.0,
                "full_median_ms": f.median.as_secs_f64() * 1000.0,
                "full_p90_ms": f.p90.as_secs_f64() * 1000.0,
            }),
        );
    }
    let mut hashes = vec![];
    for _ in 0..10 {
        let t0 = Instant::now();
        lms::auth::hash_password(PASSWORD.into()).await?;
        hashes.push(t0.elapsed());
    }
    let h = stats(&hashes);
    println!(
        "  {:<9} {:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        "(one Argon2id hash alone, N=10)",
        ms(h.median),
        ms(h.p90),
        ms(h.mean),
        ms(h.min),
        ms(h.max)
    );
    let schema = json
        .get("schema")
        .and_then(|v| v.get("kernel_median_ms"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN);
    println!(
        "\ngoal: a schema tenant under 30 ms median (kernel level): {schema:.1} ms → {}",
        if schema < 30.0 { "met" } else { "MISSED" }
    );
    json.insert(
        "argon2_median_ms".into(),
        (h.median.as_secs_f64() * 1000.0).into(),
    );
    println!("json: {}", serde_json::Value::Object(json));
    Ok(())
}

// ---------------------------------------------------------------------------
// migrate

async fn migrate(bench: &Bench, args: &Args) -> Result<()> {
    let n = args.tenants.unwrap_or(1000);
    println!(
        "\nmigrate: {n} schema tenants at version 0, then lms::ops::migrate_tenants \
         (what `campus migrate --concurrency {}` runs)",
        args.concurrency
    );
    let t0 = Instant::now();
    {
        let kernel = Kernel::open(bench.kernel_config(VERSION_0, 4)).await?;
        provision_many(&kernel, "m", n, Isolation::Schema, args.setup_concurrency).await?;
    }
    let setup = t0.elapsed();
    println!(
        "  setup: {n} version-0 schema tenants provisioned in {} ({:.0}/s, {} at a time)",
        secs(setup),
        n as f64 / setup.as_secs_f64(),
        args.setup_concurrency
    );

    let init = run_migrate(
        bench,
        args,
        lms::TENANT_MIGRATIONS,
        n,
        "migration 1 (the whole tenant schema: 8 tables, 6 indexes)",
    )
    .await?;
    let small = run_migrate(
        bench,
        args,
        WITH_SMALL,
        n,
        "migration 2 (one ALTER TABLE … ADD COLUMN)",
    )
    .await?;
    let goal = Duration::from_secs(120).as_secs_f64() * n as f64 / 10_000.0;
    println!(
        "\ngoal: one migration over 10,000 tenants under 2 minutes, i.e. {goal:.0} s for {n} at the same rate:\n  \
         migration 1: {} → {}; migration 2: {} → {}",
        secs(init),
        if init.as_secs_f64() < goal {
            "met"
        } else {
            "MISSED"
        },
        secs(small),
        if small.as_secs_f64() < goal {
            "met"
        } else {
            "MISSED"
        },
    );
    println!(
        "json: {}",
        serde_json::json!({
            "tenants": n,
            "concurrency": args.concurrency,
            "setup_s": setup.as_secs_f64(),
            "migration_1_s": init.as_secs_f64(),
            "migration_2_s": small.as_secs_f64(),
        })
    );
    Ok(())
}

/// Brings every tenant to the latest version of `set`; checks the registry.
async fn run_migrate(
    bench: &Bench,
    args: &Args,
    set: MigrationSet,
    n: usize,
    what: &str,
) -> Result<Duration> {
    // As `campus migrate` sizes it: one owner connection per migrating
    // tenant and one for the registry.
    let mut config = bench.kernel_config(set, 4);
    if let Some(pg) = config.postgres.as_mut() {
        pg.owner_pool_size = u32::try_from(args.concurrency)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
    }
    let kernel = Kernel::open(config).await?;
    let tenants = lms::ops::migratable(&kernel, None).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let on_done: lms::ops::OnMigrated = {
        let done = done.clone();
        Arc::new(move |_t: &Tenant, _r: &lms::Result<bool>| {
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= 1000 && d.is_multiple_of(n / 10) {
                eprintln!("  … {d}/{n} tenants migrated ({})", secs(t0.elapsed()));
            }
        })
    };
    let summary = lms::ops::migrate_tenants(&kernel, tenants, args.concurrency, on_done).await;
    let elapsed = t0.elapsed();
    let at_latest: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM campus_control.tenants WHERE schema_version = $1")
            .bind(set.latest())
            .fetch_one(&mut bench.admin_conn(&bench.database).await?)
            .await?;
    println!(
        "  apply {what} to {n} schema tenants: {} — {:.1} ms per tenant, {:.0} tenants/s; \
         migrated {}, failed {}, at version {} per the registry: {at_latest}",
        secs(elapsed),
        elapsed.as_secs_f64() * 1000.0 / n as f64,
        n as f64 / elapsed.as_secs_f64(),
        summary.migrated.len(),
        summary.failed.len(),
        set.latest(),
    );
    if let Some((slug, e)) = summary.failed.first() {
        bail!(
            "{} tenants failed to migrate, e.g. {slug}: {e}",
            summary.failed.len()
        );
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------
// connections

async fn connections(bench: &Bench, args: &Args) -> Result<()> {
    let n = args.tenants.unwrap_or(10_000);
    let pool_size = args.pool_size;
    let mode = args.isolation;
    println!(
        "\nconnections: {n} {} tenants, serving pool of {pool_size}, {} concurrent clients for {}",
        mode.as_str(),
        args.clients,
        secs(args.duration)
    );
    let kernel = Kernel::open(bench.kernel_config(lms::TENANT_MIGRATIONS, pool_size)).await?;
    let t0 = Instant::now();
    let tenants = provision_many(&kernel, "b", n, mode, args.setup_concurrency).await?;
    println!(
        "  setup: {n} {} tenants provisioned in {} ({:.0}/s)",
        mode.as_str(),
        secs(t0.elapsed()),
        n as f64 / t0.elapsed().as_secs_f64()
    );

    // A user and a session in every tenant, written through the tenant's own
    // transaction (what a login does, without the Argon2 check).
    let t0 = Instant::now();
    let tokens = seed_sessions(&kernel, tenants, args.setup_concurrency).await?;
    println!(
        "  setup: a user and a session token in each of the {} tenants in {}",
        tokens.len(),
        secs(t0.elapsed())
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = server::AppState::new(
        kernel.clone(),
        server::ServerConfig::new("campus-bench-operator-token-0123456789"),
    );
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(listener, state, async {
        let _ = stopped.await;
    }));

    // Sample the server's connections to PostgreSQL while the load runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let mut conn = bench.admin_conn("postgres").await?;
        let database = bench.database.clone();
        tokio::spawn(async move {
            let mut samples: Vec<(i64, i64)> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let row: Result<(i64, i64), _> = sqlx::query_as(
                    "SELECT COUNT(*) FILTER (WHERE usename = $1), COUNT(*) FILTER (WHERE usename = $2)
                     FROM pg_stat_activity WHERE datname = $3",
                )
                .bind(APP)
                .bind(OWNER)
                .bind(&database)
                .fetch_one(&mut conn)
                .await;
                if let Ok(r) = row {
                    samples.push(r);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = conn.close().await;
            samples
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (client, tokens, next, base) =
            (client.clone(), tokens.clone(), next.clone(), base.clone());
        clients.spawn(async move {
            let mut lat = Vec::new();
            let mut ok = 0u64;
            let mut other: Vec<u16> = Vec::new();
            let mut seen = Vec::new();
            while Instant::now() < deadline {
                // Round-robin over every tenant: each request is for another one.
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(0)
                    % tokens.len();
                let (slug, token) = &tokens[i];
                let t0 = Instant::now();
                let res = client
                    .get(format!("{base}/api/v1/me"))
                    .header("x-tenant", slug.as_str())
                    .bearer_auth(token)
                    .send()
                    .await;
                match res {
                    Ok(r) => {
                        let status = r.status();
                        let _ = r.bytes().await;
                        lat.push(t0.elapsed());
                        if status.is_success() {
                            ok += 1;
                            seen.push(i);
                        } else {
                            other.push(status.as_u16());
                        }
                    }
                    Err(_) => other.push(0),
                }
            }
            (lat, ok, other, seen)
        });
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut ok = 0;
    let mut other = Vec::new();
    let mut seen = vec![false; tokens.len()];
    while let Some(r) = clients.join_next().await {
        let (l, o, x, s) = r?;
        lat.extend(l);
        ok += o;
        other.extend(x);
        for i in s {
            seen[i] = true;
        }
    }
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await?;
    let _ = stop_server.send(());
    let _ = served.await;

    let total = lat.len() + other.iter().filter(|s| **s == 0).count();
    let s = stats(&lat);
    let distinct = seen.iter().filter(|s| **s).count();
    let app_max = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let owner_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let mut app_sorted: Vec<i64> = samples.iter().map(|s| s.0).collect();
    app_sorted.sort_unstable();
    let app_median = app_sorted.get(app_sorted.len() / 2).copied().unwrap_or(0);
    other.sort_unstable();
    println!(
        "  requests: {total} in {} = {:.0} requests/s; 200 OK {ok}, other {} {:?}",
        secs(elapsed),
        total as f64 / elapsed.as_secs_f64(),
        other.len(),
        summarize_statuses(&other)
    );
    println!("  tenants answered 200 at least once: {distinct} of {n}");
    println!(
        "  latency: median {}, p90 {}, p99 {}, max {}",
        ms(s.median),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
    println!(
        "  connections to PostgreSQL in pg_stat_activity ({} samples, every 50 ms): \
         serving role {APP}: max {app_max}, median {app_median}; owner role {OWNER} (registry, migrations): max {owner_max}",
        samples.len()
    );
    println!(
        "\ngoal: the serving connections stay at the pool size ({pool_size}) whatever the number of tenants ({n}): {}",
        if app_max <= i64::from(pool_size) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "json: {}",
        serde_json::json!({
            "tenants": n,
            "isolation": mode.as_str(),
            "pool_size": pool_size,
            "clients": args.clients,
            "requests": total,
            "requests_per_s": total as f64 / elapsed.as_secs_f64(),
            "ok": ok,
            "distinct_tenants": distinct,
            "p50_ms": s.median.as_secs_f64() * 1000.0,
            "p99_ms": s.p99.as_secs_f64() * 1000.0,
            "serving_connections_max": app_max,
            "owner_connections_max": owner_max,
        })
    );
    Ok(())
}

fn summarize_statuses(sorted: &[u16]) -> Vec<(u16, usize)> {
    let mut out: Vec<(u16, usize)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((last, n)) if last == s => *n += 1,
            _ => out.push((*s, 1)),
        }
    }
    out
}

/// Inserts an admin and a session into each tenant; returns `(slug, token)`.
async fn seed_sessions(
    kernel: &Kernel,
    tenants: Vec<Tenant>,
    at_once: usize,
) -> Result<Vec<(String, String)>> {
    let tenants = Arc::new(tenants);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..at_once {
        let (kernel, tenants, next) = (kernel.clone(), tenants.clone(), next.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tenants.get(i) else {
                    return Ok::<_, anyhow::Error>(out);
                };
                // The token's format: cmp_<tenant id hex>_<43 URL-safe characters>.
                let secret: String = format!(
                    "{}{}",
                    tenancy::TenantId::new().simple(),
                    tenancy::TenantId::new().simple()
                )
                .chars()
                .take(43)
                .collect();
                let token = format!("cmp_{}_{secret}", t.id.simple());
                let user = tenancy::TenantId::new().to_string();
                let now = tenancy::clock::now();
                let mut tx = kernel.begin_write(t).await?;
                sqlx::query(
                    "INSERT INTO users (id, email, name, role, password_hash, created_at, updated_at)
                     VALUES ($1, $2, 'Bench', 'admin', NULL, $3, $3)",
                )
                .bind(&user)
                .bind(format!("admin@{}.test", t.slug))
                .bind(&now)
                .execute(tx.conn())
                .await?;
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at)
                     VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'), $4, $5)",
                )
                .bind(tenancy::TenantId::new().to_string())
                .bind(&user)
                .bind(&token)
                .bind(&now)
                .bind(tenancy::clock::after(Duration::from_secs(24 * 3600)))
                .execute(tx.conn())
                .await?;
                tx.commit().await?;
                out.push((t.slug.to_string(), token));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = workers.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}
