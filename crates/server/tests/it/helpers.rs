//! `spawn_app()` and a small typed client.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use server::{AppState, ServerConfig};
use tenancy::{Kernel, KernelConfig};

pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    /// The control plane's own listener, when the app has one.
    pub admin_base: Option<String>,
    pub kernel: Kernel,
    /// What the kernel was opened with: to open another one over the same store.
    pub config: KernelConfig,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// A tenant made through the control-plane API, with its admin logged in.
#[derive(Clone, Debug)]
pub struct TestTenant {
    pub slug: String,
    pub id: String,
    pub admin: Session,
}

/// A logged-in user of one tenant.
#[derive(Clone, Debug)]
pub struct Session {
    pub tenant: String,
    pub token: String,
    pub user_id: String,
    pub email: String,
}

/// A slug no other test uses.
pub fn unique_slug(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand_u32();
    format!("{prefix}-{n}-{r:08x}")
}

fn rand_u32() -> u32 {
    let u = uuid::Uuid::now_v7();
    let b = u.as_bytes();
    u32::from_le_bytes([b[12], b[13], b[14], b[15]])
}

/// The backend the suite runs against: `CAMPUS_TEST_BACKEND` = `sqlite`
/// (default), `schema`, `pool` or `database` (the last three on PostgreSQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Schema,
    Pool,
    Database,
}

pub fn backend() -> Backend {
    match std::env::var("CAMPUS_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("schema") => Backend::Schema,
        Ok("pool") => Backend::Pool,
        Ok("database") => Backend::Database,
        Ok(other) => {
            panic!("CAMPUS_TEST_BACKEND={other}: expected sqlite, schema, pool or database")
        }
    }
}

impl Backend {
    pub fn is_postgres(self) -> bool {
        self != Backend::Sqlite
    }

    /// The isolation mode tenants get on this backend.
    pub fn isolation(self) -> &'static str {
        match self {
            Backend::Sqlite | Backend::Database => "database",
            Backend::Schema => "schema",
            Backend::Pool => "pool",
        }
    }
}

/// The PostgreSQL server the suite uses, as a superuser (to make roles and
/// fresh databases): `CAMPUS_TEST_PG`, default the machine's local server.
pub fn pg_admin_url() -> String {
    std::env::var("CAMPUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops a test database made by [`fresh_pg_database`], and what its tenants
/// made outside it: their databases and roles are cluster-wide. Best effort.
pub fn drop_pg_database(database: &str) {
    let mut url = url::Url::parse(&pg_admin_url()).expect("CAMPUS_TEST_PG");
    url.set_path(&format!("/{database}"));
    let listed = std::process::Command::new("psql")
        .args([url.as_str(), "-Atq", "-c"])
        .arg("SELECT 't_' || replace(id, '-', '') FROM campus_control.tenants")
        .output()
        .expect("psql");
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|n| n.len() == 34 && n[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    // One statement per line, each its own transaction (DROP DATABASE must be).
    let mut script = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE);\n");
    for n in &names {
        script.push_str(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE);\n"));
    }
    for n in &names {
        script.push_str(&format!("DROP ROLE IF EXISTS \"{n}\";\n"));
    }
    let mut child = std::process::Command::new("psql")
        .args([&pg_admin_url(), "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(script.as_bytes());
    }
    let _ = child.wait();
}

/// The owner and serving roles of the suite (cluster-wide, made once):
/// names of the tests' own, so that a deployment's `campus_owner` and
/// `campus_app` on the same cluster (docs/operations.md) are never touched.
pub const PG_OWNER: &str = "campus_test_owner";
pub const PG_APP: &str = "campus_test_app";

fn ensure_pg_roles() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        psql(
            &pg_admin_url(),
            &format!(
                "DO $$ BEGIN
                    CREATE ROLE {PG_OWNER} LOGIN CREATEROLE CREATEDB;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
                 DO $$ BEGIN
                    CREATE ROLE {PG_APP} LOGIN NOINHERIT;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
            ),
        );
    });
}

/// A fresh PostgreSQL database owned by the owner role; returns its name.
pub fn fresh_pg_database() -> String {
    ensure_pg_roles();
    let name = format!("campus_test_{}", uuid::Uuid::now_v7().simple());
    psql(
        &pg_admin_url(),
        &format!("CREATE DATABASE {name} OWNER {PG_OWNER}"),
    );
    name
}

/// `url` with another user and database.
pub fn pg_url(user: &str, database: &str) -> String {
    let mut u = url::Url::parse(&pg_admin_url()).expect("CAMPUS_TEST_PG");
    u.set_username(user).expect("user");
    u.set_password(None).expect("password");
    u.set_path(&format!("/{database}"));
    u.to_string()
}

/// A PostgreSQL configuration over `database`, the default placement.
pub fn pg_config(database: &str, pool_size: u32) -> tenancy::dataplane::postgres::PgConfig {
    use tenancy::dataplane::postgres::{PgConfig, PlacementConfig};
    PgConfig {
        placements: vec![PlacementConfig {
            name: "default".into(),
            url: pg_url(PG_APP, database),
            owner_url: pg_url(PG_OWNER, database),
            pool_size,
        }],
        max_open_databases: std::num::NonZeroUsize::new(8).expect("8"),
        database_pool_size: 2,
        database_transactions: 16,
        owner_pool_size: 4,
    }
}

/// Where the suite keeps files: `CAMPUS_TEST_STORAGE` = `file` (default: the
/// app's data directory) or `s3` (a bucket on the S3 server the `AWS_*`
/// variables name, e.g. a local moto server; required when chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    S3,
}

pub fn storage() -> Storage {
    match std::env::var("CAMPUS_TEST_STORAGE").as_deref() {
        Err(_) | Ok("") | Ok("file") => Storage::File,
        Ok("s3") => Storage::S3,
        Ok(other) => panic!("CAMPUS_TEST_STORAGE={other}: expected file or s3"),
    }
}

/// The bucket the suite uses on S3.
pub const S3_BUCKET: &str = "campus-test";

/// Makes the suite's bucket (idempotent). Fails the test if the S3 server
/// does not answer: asking for S3 and not getting it is an error, not a skip.
pub async fn ensure_bucket() {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .expect("CAMPUS_TEST_STORAGE=s3 needs AWS_ENDPOINT_URL (and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP)");
    let url = format!("{}/{S3_BUCKET}", endpoint.trim_end_matches('/'));
    let res = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {endpoint} does not answer: {e}"));
    // 200 made, 409 already there (ours).
    assert!(
        res.status().is_success() || res.status() == StatusCode::CONFLICT,
        "creating bucket {url}: {}",
        res.status()
    );
}

/// A kernel configuration over a fresh store of the chosen backend: a
/// temporary directory for SQLite, a fresh database for PostgreSQL; files
/// in the directory, or under a fresh prefix of the S3 bucket.
pub fn kernel_config(dir: &Path) -> KernelConfig {
    let mut k = KernelConfig::new(dir, lms::TENANT_MIGRATIONS);
    let b = backend();
    if b.is_postgres() {
        k.postgres = Some(pg_config(&fresh_pg_database(), 8));
        k.default_isolation = tenancy::Isolation::parse(b.isolation());
    }
    if storage() == Storage::S3 {
        k.storage.url = Some(format!(
            "s3://{S3_BUCKET}/run-{}",
            uuid::Uuid::now_v7().simple()
        ));
    }
    k
}

/// The PostgreSQL database a kernel configuration uses (`None` on SQLite).
pub fn pg_database_of(config: &KernelConfig) -> Option<String> {
    let pg = config.postgres.as_ref()?;
    let url = url::Url::parse(&pg.placements[0].url).expect("placement URL");
    Some(url.path().trim_start_matches('/').to_owned())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut KernelConfig, &mut ServerConfig)) -> TestApp {
    // Server logs, shown for failing tests (`CAMPUS_LOG=debug` for more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAMPUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    if storage() == Storage::S3 {
        ensure_bucket().await;
    }
    let mut kcfg = kernel_config(dir.path());
    let mut scfg = ServerConfig::new(OPERATOR_TOKEN);
    // Tests provision and log in many tenants at once on a shared, busy
    // machine: a hash may wait its turn longer than the production default
    // (2 s) without that being what a test is about. The tests of the
    // hashing bounds set their own (sign_in.rs).
    scfg.hashing.wait = std::time::Duration::from_secs(60);
    // Likewise the process-wide pool that kernel-level provisioning uses.
    lms::hashing::configure(lms::hashing::HashingConfig {
        wait: std::time::Duration::from_secs(60),
        ..Default::default()
    });
    tune(&mut kcfg, &mut scfg);
    let kernel = Kernel::open(kcfg.clone()).await.expect("kernel");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let admin = match scfg.separate_admin {
        true => Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind admin"),
        ),
        false => None,
    };
    let admin_base = admin
        .as_ref()
        .map(|a| format!("http://{}", a.local_addr().expect("addr")));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(kernel.clone(), scfg);
    tokio::spawn(async move {
        server::serve_with_admin(listener, admin, state, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    TestApp {
        base,
        admin_base,
        kernel,
        config: kcfg,
        client: reqwest::Client::new(),
        dir,
        _shutdown: tx,
    }
}

impl Drop for TestApp {
    /// Drops the app's PostgreSQL database and its tenants' databases and
    /// roles — unless the test failed: then they stay, to be looked at.
    fn drop(&mut self) {
        if let Some(db) = self.pg_database()
            && !std::thread::panicking()
        {
            drop_pg_database(&db);
        }
    }
}

/// What one tenant has on the store itself — the files on disk, the
/// PostgreSQL catalogs and pool tables — rather than as the data plane says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// SQLite: `tenants/<uuid>/tenant.db` under the data directory.
    pub file: bool,
    /// PostgreSQL: the schema `t_<uuid hex>` in the app's database.
    pub schema: bool,
    /// PostgreSQL: the role `t_<uuid hex>`.
    pub role: bool,
    /// PostgreSQL: the database `t_<uuid hex>`.
    pub database: bool,
    /// PostgreSQL: the tenant's rows in the shared tables of `pool` isolation.
    pub pool_rows: i64,
}

impl TestApp {
    /// Sends the server its stop signal (as SIGTERM does `campus serve`).
    pub fn begin_shutdown(&mut self) {
        let (tx, _) = tokio::sync::oneshot::channel();
        drop(std::mem::replace(&mut self._shutdown, tx));
    }

    /// The app's PostgreSQL database (`None` on SQLite).
    pub fn pg_database(&self) -> Option<String> {
        pg_database_of(&self.config)
    }

    /// One count, `sql` with `$1`, `$2`… bound to `args`, run on the app's PostgreSQL
    /// database as the suite's superuser: it sees every catalog and every row
    /// (forced row-level security binds even the owner role, so the owner
    /// would see no pool rows at all).
    pub async fn pg_count(&self, sql: &str, args: &[&str]) -> i64 {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let db = self.pg_database().expect("a PostgreSQL backend");
        let mut url = url::Url::parse(&pg_admin_url()).expect("CAMPUS_TEST_PG");
        url.set_path(&format!("/{db}"));
        let mut conn = sqlx::AnyConnection::connect(url.as_str())
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

    /// What tenant `id` has on the store.
    pub async fn footprint(&self, id: &str) -> Footprint {
        let file = self
            .dir
            .path()
            .join("tenants")
            .join(id)
            .join("tenant.db")
            .is_file();
        if self.pg_database().is_none() {
            return Footprint {
                file,
                ..Default::default()
            };
        }
        let name = tenancy::dataplane::sql_name(tenancy::TenantId::parse(id).expect("tenant id"));
        let pool_rows = tenancy::dataplane::postgres::POOL_TABLES
            .iter()
            .map(|t| format!("(SELECT count(*) FROM campus_pool.{t} WHERE tenant_id = $1)"))
            .collect::<Vec<_>>()
            .join(" + ");
        let named = |catalog: &str, column: &str| {
            format!("SELECT count(*) FROM {catalog} WHERE {column} = $1")
        };
        Footprint {
            file,
            schema: self
                .pg_count(&named("pg_namespace", "nspname"), &[&name])
                .await
                > 0,
            role: self.pg_count(&named("pg_roles", "rolname"), &[&name]).await > 0,
            database: self
                .pg_count(&named("pg_database", "datname"), &[&name])
                .await
                > 0,
            pool_rows: self.pg_count(&format!("SELECT {pool_rows}"), &[id]).await,
        }
    }

    /// The registry's row of tenant `id`, whatever its status.
    pub async fn tenant_row(&self, id: &str) -> tenancy::Tenant {
        let id = tenancy::TenantId::parse(id).expect("tenant id");
        self.kernel
            .registry()
            .by_id(id)
            .await
            .expect("registry")
            .expect("row")
    }

    /// The number of rows of `table` tenant `id` sees, read on a transaction
    /// of its own (whatever its status: the kernel does not gate).
    pub async fn count_rows(&self, id: &str, table: &str) -> i64 {
        let t = self.tenant_row(id).await;
        let mut tx = self.kernel.begin(&t).await.expect("begin");
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(tx.conn())
            .await
            .expect("count")
    }

    /// Asserts the tenant's data is where its backend keeps it, and only
    /// there: its own SQLite file, its own schema and role, its own database,
    /// or (pool) rows of its own in the shared tables — it has at least its admin.
    pub async fn assert_stored(&self, id: &str) {
        let f = self.footprint(id).await;
        let own = match backend() {
            Backend::Sqlite => Footprint {
                file: true,
                ..Default::default()
            },
            Backend::Schema => Footprint {
                schema: true,
                role: true,
                ..Default::default()
            },
            Backend::Database => Footprint {
                database: true,
                ..Default::default()
            },
            Backend::Pool => Footprint {
                pool_rows: f.pool_rows,
                ..Default::default()
            },
        };
        assert_eq!(f, own, "tenant {id}");
        assert!(
            backend() != Backend::Pool || f.pool_rows > 0,
            "tenant {id}: no pool rows"
        );
        let t = self.tenant_row(id).await;
        assert!(
            self.kernel.data_plane().exists(&t).await.expect("exists"),
            "tenant {id}"
        );
    }

    /// Asserts nothing of the tenant's data is left anywhere.
    pub async fn assert_destroyed(&self, id: &str) {
        assert_eq!(
            self.footprint(id).await,
            Footprint::default(),
            "tenant {id}"
        );
        assert!(
            !self.dir.path().join("tenants").join(id).exists(),
            "tenant {id}: directory left"
        );
        // A pool tenant has no object of its own: the data plane cannot tell
        // it from one not yet seeded; its rows (none, above) are what counts.
        if backend() != Backend::Pool {
            let t = self.tenant_row(id).await;
            assert!(
                !self.kernel.data_plane().exists(&t).await.expect("exists"),
                "tenant {id}"
            );
        }
    }

    /// What `/metrics` says now (on the public listener).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one Prometheus series (summed over the lines that start
    /// with `series`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|rest| rest.trim().parse::<f64>().ok())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to a tenant route, as `session`.
    pub fn req(&self, method: Method, s: &Session, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Tenant", &s.tenant)
            .bearer_auth(&s.token)
    }

    pub fn get(&self, s: &Session, path: &str) -> RequestBuilder {
        self.req(Method::GET, s, path)
    }

    pub fn post(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::POST, s, path).json(&body)
    }

    pub fn patch(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::PATCH, s, path).json(&body)
    }

    pub fn put(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::PUT, s, path).json(&body)
    }

    pub fn delete(&self, s: &Session, path: &str) -> RequestBuilder {
        self.req(Method::DELETE, s, path)
    }

    /// A control-plane request, with the operator token.
    pub fn operator(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(OPERATOR_TOKEN)
    }

    /// The control plane's view of tenant `slug` (`GET /admin/api/v1/tenants/{slug}`).
    pub async fn tenant_view(&self, slug: &str) -> Value {
        let res = self
            .operator(Method::GET, &format!("/admin/api/v1/tenants/{slug}"))
            .send()
            .await
            .expect("show tenant");
        json_ok(res, 200).await
    }

    /// Provisions a tenant through the control-plane API and logs its admin in.
    pub async fn tenant(&self, prefix: &str) -> TestTenant {
        let base = self.base.clone();
        self.tenant_on(&base, prefix).await
    }

    /// [`tenant`](Self::tenant), through the control plane at `base` (the
    /// admin listener, when the app has one).
    pub async fn tenant_on(&self, base: &str, prefix: &str) -> TestTenant {
        let slug = unique_slug(prefix);
        let email = format!("admin@{slug}.test");
        let res = self
            .client
            .post(format!("{base}/admin/api/v1/tenants"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({
                "slug": slug,
                "name": format!("Org {slug}"),
                "admin": { "email": email, "name": "Admin", "password": PASSWORD }
            }))
            .send()
            .await
            .expect("provision");
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{}",
            res.text().await.unwrap_or_default()
        );
        let t: Value = res.json().await.expect("json");
        let admin = self.login(&slug, &email, PASSWORD).await;
        TestTenant {
            slug,
            id: t["id"].as_str().expect("id").to_owned(),
            admin,
        }
    }

    pub async fn login(&self, slug: &str, email: &str, password: &str) -> Session {
        let res = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .header("X-Tenant", slug)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK, "login as {email}");
        let body: Value = res.json().await.expect("json");
        Session {
            tenant: slug.to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            user_id: body["user"]["id"].as_str().expect("user id").to_owned(),
            email: email.to_owned(),
        }
    }

    /// Creates a user with `role` in `t` (as its admin) and logs them in.
    pub async fn user(&self, t: &TestTenant, role: &str) -> Session {
        let email = format!("{role}-{}@{}.test", unique_slug("u"), t.slug);
        let res = self
            .post(&t.admin, "/api/v1/users", json!({ "name": format!("A {role}"), "email": email, "role": role, "password": PASSWORD }))
            .send()
            .await
            .expect("create user");
        assert_eq!(res.status(), StatusCode::CREATED);
        self.login(&t.slug, &email, PASSWORD).await
    }

    /// Creates a course as `s` and returns its id.
    pub async fn course(&self, s: &Session, title: &str, published: bool) -> String {
        let res = self
            .post(
                s,
                "/api/v1/courses",
                json!({ "title": title, "description": "about it", "published": published }),
            )
            .send()
            .await
            .expect("create course");
        assert_eq!(res.status(), StatusCode::CREATED);
        id_of(res).await
    }

    /// Creates a lesson in `course` as `s` and returns its id.
    pub async fn lesson(&self, s: &Session, course: &str, title: &str) -> String {
        let res = self
            .post(
                s,
                &format!("/api/v1/courses/{course}/lessons"),
                json!({ "title": title }),
            )
            .send()
            .await
            .expect("create lesson");
        assert_eq!(res.status(), StatusCode::CREATED);
        id_of(res).await
    }

    /// Enrolls `user` in `course`, as `s`.
    pub async fn enroll(&self, s: &Session, course: &str, user: &str) {
        let res = self
            .post(
                s,
                &format!("/api/v1/courses/{course}/enrollments"),
                json!({ "user_id": user }),
            )
            .send()
            .await
            .expect("enroll");
        assert_eq!(res.status(), StatusCode::CREATED);
    }
}

pub async fn id_of(res: Response) -> String {
    let v: Value = res.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// Asserts a problem response: status, `code`, content type, request id.
pub async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert!(
        server::openapi::PROBLEM_CODES.contains(&code),
        "`{code}` is not a documented problem code"
    );
    assert_eq!(res.status().as_u16(), status, "expected {status} {code}");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["request_id"].is_string(), "{body}");
    body
}

/// The JSON body of a response, asserting its status.
pub async fn json_ok(res: Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The Redis the suite uses: `CAMPUS_TEST_REDIS`, default the local server.
pub fn redis_url() -> String {
    std::env::var("CAMPUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Where an app keeps its tenant cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheAt {
    Process,
    Redis,
}

/// An environment name no other test uses: every Redis key of the app
/// starts with it.
pub fn unique_environment() -> String {
    format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Points `k`'s cache at `at` (Redis at `redis_url()`, under a fresh environment).
pub fn use_cache(k: &mut KernelConfig, at: CacheAt) {
    k.cache.environment = unique_environment();
    if at == CacheAt::Redis {
        k.cache.redis_url = Some(redis_url());
    }
}

/// Raises the allowances of unauthenticated traffic (per client address and
/// per tenant) out of the way, for tests that send much of it on purpose.
pub fn lift_anonymous_limits(s: &mut ServerConfig) {
    let lots = server::edge::limits::Rate::new(
        std::num::NonZeroU32::new(10_000).expect("non-zero"),
        std::num::NonZeroU32::new(10_000).expect("non-zero"),
    );
    s.address_rate = lots;
    s.anonymous_rates = tenancy::PerPlan {
        free: lots,
        standard: lots,
        enterprise: lots,
    };
}
