//! A database outage, on a PostgreSQL cluster of the test's own (initdb and
//! pg_ctl on a free port in a temporary directory), so that stopping and
//! restarting it disturbs nothing else: while it is down, requests answer
//! 503 `unavailable` at once (never 500, never `overloaded`) and `/readyz`
//! 503; started again, requests succeed without restarting Campus; and a
//! restart under a write load answers no 500 and loses no acknowledged write.
//!
//! Where PostgreSQL's server binaries are missing the summary counts the
//! tests as ignored, with the reason; under CI that fails them.

#![allow(clippy::unwrap_used)]

#[path = "support/trials.rs"]
mod trials;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{AppState, ServerConfig};
use sqlx::Connection;
use tenancy::dataplane::postgres::{PgConfig, PlacementConfig};
use tenancy::{Kernel, KernelConfig};
use trials::{Skip, trial};

const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";
const PASSWORD: &str = "correct horse battery";
/// The bound of every request: a hang check, not a latency assertion.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL cluster of this test's own.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn start_new() -> Result<Self, String> {
        let bin = pg_bin().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new()
            .prefix("campus-outage-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        if as_postgres {
            // initdb refuses root: the cluster belongs to `postgres`.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err("chown of the cluster directory failed".into());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let c = Self {
            bin,
            data: dir.path().join("data"),
            port,
            as_postgres,
            _dir: dir,
        };
        c.run(
            "initdb",
            &[
                "-D",
                c.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        c.start()?;
        Ok(c)
    }

    fn start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                self.log().to_str().unwrap(),
                "-w",
                "start",
            ],
        )
    }

    fn stop(&self, mode: &str) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        )
    }

    fn socket_dir(&self) -> PathBuf {
        self.data.parent().unwrap().to_path_buf()
    }

    fn log(&self) -> PathBuf {
        self.data.parent().unwrap().join("postgres.log")
    }

    fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    async fn admin(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.url("postgres", "postgres"))
            .await
            .expect("connect as postgres")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

/// Why the outage tests cannot run here: they need PostgreSQL's server
/// binaries to start a cluster of their own.
fn no_cluster() -> Option<Skip> {
    pg_bin().is_none().then(|| {
        Skip::missing(
            "needs PostgreSQL's server binaries (initdb, pg_ctl) under /usr/lib/postgresql",
        )
    })
}

/// A cluster of the test's own; failing to start one fails the test.
fn cluster() -> Cluster {
    Cluster::start_new()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster for the outage test: {e}"))
}

struct App {
    base: String,
    client: reqwest::Client,
    _kernel: Kernel,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn spawn_app(pg: &Cluster) -> App {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAMPUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    sqlx::any::install_default_drivers();
    let mut admin = pg.admin().await;
    for sql in [
        "CREATE ROLE campus_owner LOGIN CREATEROLE CREATEDB",
        "CREATE ROLE campus_app LOGIN NOINHERIT",
        "CREATE DATABASE campus OWNER campus_owner",
    ] {
        sqlx::query(sql).execute(&mut admin).await.expect(sql);
    }
    admin.close().await.expect("close");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut k = KernelConfig::new(dir.path(), lms::TENANT_MIGRATIONS);
    k.postgres = Some(PgConfig {
        placements: vec![PlacementConfig {
            name: "default".into(),
            url: pg.url("campus_app", "campus"),
            owner_url: pg.url("campus_owner", "campus"),
            pool_size: 8,
        }],
        max_open_databases: std::num::NonZeroUsize::new(8).unwrap(),
        database_pool_size: 2,
        database_transactions: 8,
        owner_pool_size: 4,
    });
    k.default_isolation = tenancy::Isolation::parse("schema");
    let kernel = Kernel::open(k).await.expect("kernel");
    let mut s = ServerConfig::new(OPERATOR_TOKEN);
    let many = server::edge::limits::Rate::new(
        std::num::NonZeroU32::new(100_000).unwrap(),
        std::num::NonZeroU32::new(100_000).unwrap(),
    );
    for r in [&mut s.rates, &mut s.user_rates] {
        r.free = many;
        r.standard = many;
        r.enterprise = many;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(kernel.clone(), s);
    tokio::spawn(async move {
        server::serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    App {
        base,
        client: reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap(),
        _kernel: kernel,
        _dir: dir,
        _shutdown: tx,
    }
}

struct Tenant {
    id: String,
    slug: String,
    token: String,
}

impl App {
    async fn tenant(&self) -> Tenant {
        let slug = format!("out-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let email = format!("admin@{slug}.test");
        let res = self
            .client
            .post(format!("{}/admin/api/v1/tenants", self.base))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({
                "slug": slug, "name": slug,
                "admin": { "email": email, "name": "Admin", "password": PASSWORD }
            }))
            .send()
            .await
            .expect("provision");
        assert_eq!(res.status(), StatusCode::CREATED);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = self
            .client
            .post(format!("{}/api/v1/auth/login", self.base))
            .header("X-Tenant", &slug)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK);
        let token = res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        Tenant { id, slug, token }
    }

    /// POSTs a course; the status and the problem code, if any.
    async fn post_course(&self, t: &Tenant, title: &str) -> (StatusCode, Option<String>) {
        let res = self
            .client
            .post(format!("{}/api/v1/courses", self.base))
            .header("X-Tenant", &t.slug)
            .bearer_auth(&t.token)
            .json(&json!({ "title": title, "description": "", "published": true }))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("POST {title} got no answer within {CLIENT_TIMEOUT:?}: {e}")
            });
        answer(res).await
    }

    async fn list_courses(&self, t: &Tenant) -> (StatusCode, Option<String>) {
        let res = self
            .client
            .get(format!("{}/api/v1/courses", self.base))
            .header("X-Tenant", &t.slug)
            .bearer_auth(&t.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET courses got no answer within {CLIENT_TIMEOUT:?}: {e}"));
        answer(res).await
    }

    async fn readyz(&self) -> StatusCode {
        self.client
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/readyz got no answer within {CLIENT_TIMEOUT:?}: {e}"))
            .status()
    }
}

async fn answer(res: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = res.status();
    if status.is_success() {
        return (status, None);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            res.headers().get("retry-after").is_some(),
            "a 503 without Retry-After"
        );
    }
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().map(str::to_owned))
}

fn unavailable(got: &(StatusCode, Option<String>)) -> bool {
    got.0 == StatusCode::SERVICE_UNAVAILABLE && got.1.as_deref() == Some("unavailable")
}

async fn titles_stored(pg: &Cluster, tenant_id: &str) -> Vec<String> {
    let mut conn = sqlx::AnyConnection::connect(&pg.url("postgres", "campus"))
        .await
        .expect("connect");
    let schema = format!("t_{}", tenant_id.replace('-', ""));
    let titles = sqlx::query_scalar(&format!("SELECT title FROM \"{schema}\".courses"))
        .fetch_all(&mut conn)
        .await
        .expect("titles");
    conn.close().await.expect("close");
    titles
}

async fn a_database_outage_answers_unavailable_and_campus_recovers_when_it_is_back() {
    let pg = cluster();
    tokio::time::timeout(Duration::from_secs(240), async {
        let app = spawn_app(&pg).await;
        let t = app.tenant().await;
        assert_eq!(app.post_course(&t, "before").await.0, StatusCode::CREATED);
        assert_eq!(app.readyz().await, StatusCode::OK);

        // Down: every request is answered 503 `unavailable`, none hangs for
        // the pool's wait, none is a 500 or `overloaded`.
        pg.stop("fast").expect("stop the cluster");
        for i in 0..10 {
            let posted = app.post_course(&t, &format!("while down {i}")).await;
            assert!(unavailable(&posted), "POST while down: {posted:?}");
            let listed = app.list_courses(&t).await;
            assert!(unavailable(&listed), "GET while down: {listed:?}");
        }
        assert_eq!(app.readyz().await, StatusCode::SERVICE_UNAVAILABLE);

        // Back: requests succeed again, Campus untouched.
        pg.start().expect("start the cluster again");
        let mut back = None;
        for _ in 0..100 {
            let got = app.post_course(&t, "after").await;
            if got.0 == StatusCode::CREATED {
                back = Some(got);
                break;
            }
            assert!(unavailable(&got), "POST while coming back: {got:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(back.is_some(), "writes never succeeded again");
        assert_eq!(app.list_courses(&t).await.0, StatusCode::OK);
        let mut ready = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..50 {
            ready = app.readyz().await;
            if ready == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            ready,
            StatusCode::OK,
            "/readyz after the database came back"
        );
        let stored = titles_stored(&pg, &t.id).await;
        assert!(stored.iter().any(|s| s == "after"));
        assert!(!stored.iter().any(|s| s.starts_with("while down")));
    })
    .await
    .expect("the test ran within its overall bound");
}

async fn a_restart_under_write_load_answers_no_500_and_loses_no_acknowledged_write() {
    let pg = cluster();
    tokio::time::timeout(Duration::from_secs(240), async {
        let app = Arc::new(spawn_app(&pg).await);
        let t = Arc::new(app.tenant().await);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (app, t, stop) = (app.clone(), t.clone(), stop.clone());
            writers.spawn(async move {
                let mut acked = Vec::new();
                let mut refused = 0usize;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let title = format!("w{w} n{n}");
                    n += 1;
                    let got = app.post_course(&t, &title).await;
                    match got.0 {
                        StatusCode::CREATED => acked.push(title),
                        _ if unavailable(&got) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => panic!("{title}: {got:?}"),
                    }
                }
                (acked, refused)
            });
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A restart: sessions terminated by the administrator, refused
        // connections while it is down.
        pg.stop("fast").expect("stop");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pg.start().expect("start");
        tokio::time::sleep(Duration::from_millis(3000)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        let mut refused = 0;
        while let Some(r) = writers.join_next().await {
            let (a, r) = r.expect("writer");
            acked.extend(a);
            refused += r;
        }
        let stored = titles_stored(&pg, &t.id).await;
        let stored: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|a| !stored.contains(a.as_str()))
            .collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert!(refused > 0, "the restart was never seen");
        assert!(!acked.is_empty());
        // And writing works again after the restart.
        assert_eq!(app.post_course(&t, "last").await.0, StatusCode::CREATED);
    })
    .await
    .expect("the test ran within its overall bound");
}

fn main() -> std::process::ExitCode {
    trials::main(vec![
        trial(
            "a_database_outage_answers_unavailable_and_campus_recovers_when_it_is_back",
            4,
            no_cluster(),
            a_database_outage_answers_unavailable_and_campus_recovers_when_it_is_back,
        ),
        trial(
            "a_restart_under_write_load_answers_no_500_and_loses_no_acknowledged_write",
            4,
            no_cluster(),
            a_restart_under_write_load_answers_no_500_and_loses_no_acknowledged_write,
        ),
    ])
}
