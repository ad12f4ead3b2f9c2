//! A tenant's life on the real binary, across deployments and backends:
//! `campus tenant export | import | move`, killed and run again.
//!
//! * One tenant travels embedded → PostgreSQL `schema` → `pool` (a copy) →
//!   another deployment's `database` → a second embedded deployment, by
//!   archive and key file: every table's checksum is the same at every
//!   stop, its users sign in with the same password and its video plays
//!   byte for byte.
//! * An import killed half-way leaves a tenant that is never served; the
//!   same command run again clears it and finishes.
//! * A move killed during its freeze is rolled back and redone by running
//!   it again; killed after its switch, it is finished.
//!
//! PostgreSQL: `CAMPUS_TEST_PG` (default the local server; trust auth).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use serde_json::{Value, json};
use support::{Server, campus_in, fresh_pg_database, psql_ok};

const PASSWORD: &str = "correct horse battery";

/// One deployment: a data directory, and PostgreSQL or not.
struct Deployment {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    flags: Vec<String>,
    database: Option<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(db) = &self.database {
            support::drop_test_database(db);
        }
    }
}

impl Deployment {
    fn embedded() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let work = tmp.path().to_owned();
        Self {
            flags: vec!["--data-dir".into(), work.join("data").display().to_string()],
            _tmp: tmp,
            work,
            database: None,
        }
    }

    fn postgres() -> Self {
        let (database, owner, app) = fresh_pg_database();
        let tmp = tempfile::tempdir().expect("tmp");
        let work = tmp.path().to_owned();
        Self {
            flags: vec![
                "--data-dir".into(),
                work.join("data").display().to_string(),
                "--database-url".into(),
                app,
                "--owner-database-url".into(),
                owner,
            ],
            _tmp: tmp,
            work,
            database: Some(database),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = campus_in(&self.work);
        c.args(&self.flags);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("campus")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "campus {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("campus {args:?}: {e}: {out}"))
    }

    /// Runs a command that must succeed and print JSON, again while it is
    /// refused because the run it follows (killed) still holds its lease.
    fn json_once_free(&self, args: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && stderr.contains("is running") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            assert!(
                out.status.success(),
                "campus {args:?}: {}\n{stderr}",
                out.status
            );
            return serde_json::from_slice(&out.stdout).expect("json");
        }
    }

    fn path(&self, name: &str) -> String {
        self.work.join(name).display().to_string()
    }

    fn serve(&self) -> Server {
        let mut c = self.cmd();
        c.env("CAMPUS_OPERATOR_TOKEN", "archive-test-operator-token");
        Server::start(c, &[])
    }
}

fn key_file(dir: &Path) -> String {
    let path = dir.join("archive.key");
    std::fs::write(&path, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\n").expect("key");
    path.display().to_string()
}

fn video(len: usize) -> Vec<u8> {
    let mut out = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// Each table's name, rows and SHA-256, from an archive's manifest.
fn table_sums(archive: &str) -> Vec<(String, u64, String)> {
    let file = std::fs::File::open(archive).expect("archive");
    let mut a = tar::Archive::new(file);
    let mut first = a
        .entries()
        .expect("tar")
        .next()
        .expect("manifest")
        .expect("entry");
    assert_eq!(first.path().unwrap().to_str(), Some("campus-archive.json"));
    let mut body = String::new();
    std::io::Read::read_to_string(&mut first, &mut body).expect("read");
    let m: Value = serde_json::from_str(&body).expect("manifest");
    m["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["rows"].as_u64().unwrap(),
                t["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

struct Api<'a> {
    srv: &'a Server,
    client: reqwest::Client,
    slug: String,
}

impl<'a> Api<'a> {
    fn new(srv: &'a Server, slug: &str) -> Self {
        Self {
            srv,
            client: reqwest::Client::new(),
            slug: slug.to_owned(),
        }
    }

    async fn login(&self, email: &str) -> String {
        let res = self
            .client
            .post(self.srv.url("/api/v1/auth/login"))
            .header("X-Tenant", &self.slug)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), 200, "login as {email} on {}", self.slug);
        res.json::<Value>().await.expect("json")["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    fn req(&self, method: reqwest::Method, token: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.srv.url(path))
            .header("X-Tenant", &self.slug)
            .bearer_auth(token)
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let res = self
            .req(reqwest::Method::POST, token, path)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert!(res.status().is_success(), "POST {path}: {}", res.status());
        res.json().await.expect("json")
    }

    async fn get_bytes(&self, token: &str, path: &str) -> Vec<u8> {
        let res = self
            .req(reqwest::Method::GET, token, path)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "GET {path}");
        res.bytes().await.expect("bytes").to_vec()
    }
}

/// What a seeded tenant holds, to check at every stop.
struct Seed {
    admin: String,
    learner: String,
    content: String,
    video: Vec<u8>,
}

async fn seed(d: &Deployment, slug: &str, video_len: usize) -> Seed {
    let admin = format!("admin@{slug}.test");
    d.json(&[
        "tenant",
        "create",
        slug,
        "--name",
        "Travelling School",
        "--admin-email",
        &admin,
        "--admin-password",
        PASSWORD,
    ]);
    let srv = d.serve();
    let api = Api::new(&srv, slug);
    let token = api.login(&admin).await;
    let learner = format!("learner@{slug}.test");
    let user = api
        .post(
            &token,
            "/api/v1/users",
            json!({ "name": "L", "email": learner, "role": "learner", "password": PASSWORD }),
        )
        .await;
    let course = api
        .post(
            &token,
            "/api/v1/courses",
            json!({ "title": "Rust", "description": "d", "published": true }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lesson = api
        .post(
            &token,
            &format!("/api/v1/courses/{course}/lessons"),
            json!({ "title": "One" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post(
        &token,
        &format!("/api/v1/courses/{course}/enrollments"),
        json!({ "user_id": user["id"] }),
    )
    .await;
    let learner_token = api.login(&learner).await;
    let res = api
        .req(
            reqwest::Method::PUT,
            &learner_token,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/progress"),
        )
        .json(&json!({ "position_s": 3.25, "completed": true }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let content = format!("/api/v1/courses/{course}/lessons/{lesson}/content");
    let video = video(video_len);
    let res = api
        .req(reqwest::Method::PUT, &token, &content)
        .header("content-type", "video/mp4")
        .body(video.clone())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "upload: {}", res.status());
    Seed {
        admin,
        learner,
        content,
        video,
    }
}

/// Serves `d` and checks `slug` holds `seed`: both sign in with their
/// passwords, and the learner plays the video byte for byte.
async fn check(d: &Deployment, slug: &str, seed: &Seed) {
    let srv = d.serve();
    let api = Api::new(&srv, slug);
    api.login(&seed.admin).await;
    let learner = api.login(&seed.learner).await;
    assert!(
        api.get_bytes(&learner, &seed.content).await == seed.video,
        "the video on {slug}"
    );
}

#[tokio::test]
async fn a_tenant_travels_across_backends_and_deployments_unchanged() {
    // The chain covers every mode itself: once per suite run is enough.
    if std::env::var("CAMPUS_TEST_BACKEND").is_ok_and(|b| !b.is_empty() && b != "sqlite") {
        return;
    }
    let home = Deployment::embedded();
    let key = key_file(&home.work);
    let s = seed(&home, "traveller", 300_000).await;
    let a = home.path("a.campus");
    home.ok(&[
        "tenant",
        "export",
        "traveller",
        "-o",
        &a,
        "--key-file",
        &key,
    ]);
    let sums = table_sums(&a);
    assert!(sums.iter().map(|t| t.1).sum::<u64>() >= 12, "{sums:?}");

    // Embedded → PostgreSQL `schema`, on another deployment (another master key).
    let pg = Deployment::postgres();
    let out = pg.run(&["tenant", "import", &a]);
    assert_eq!(out.status.code(), Some(3), "without its key: refused");
    let done = pg.json(&[
        "tenant",
        "import",
        &a,
        "--key-file",
        &key,
        "--isolation",
        "schema",
        "--json",
    ]);
    assert_eq!(done["isolation"], "schema");
    assert_eq!(done["restored"], true);
    // Exported again before anyone signs in (which adds sessions and audit events).
    let b = pg.path("b.campus");
    pg.ok(&[
        "tenant",
        "export",
        "traveller",
        "-o",
        &b,
        "--key-file",
        &key,
    ]);
    assert_eq!(table_sums(&b), sums, "schema");
    check(&pg, "traveller", &s).await;

    // `schema` → a copy in `pool` on the same deployment.
    let done = pg.json(&[
        "tenant",
        "import",
        &b,
        "--key-file",
        &key,
        "--slug",
        "traveller-pool",
        "--isolation",
        "pool",
        "--json",
    ]);
    assert_eq!(done["isolation"], "pool");
    assert_eq!(done["restored"], false);
    let c = pg.path("c.campus");
    pg.ok(&[
        "tenant",
        "export",
        "traveller-pool",
        "-o",
        &c,
        "--key-file",
        &key,
    ]);
    assert_eq!(table_sums(&c), sums, "pool");
    check(&pg, "traveller-pool", &s).await;

    // `pool` → `database` on a third deployment.
    let third = Deployment::postgres();
    // A restore keeps the tenant's id, and so its role's name, which is the
    // cluster's: the schema deployment on this cluster holds it, and it is
    // never taken over.
    let out = third.run(&[
        "tenant",
        "import",
        &a,
        "--key-file",
        &key,
        "--isolation",
        "schema",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let done = third.json(&[
        "tenant",
        "import",
        &c,
        "--key-file",
        &key,
        "--isolation",
        "database",
        "--json",
    ]);
    assert_eq!(done["isolation"], "database");
    let d = third.path("d.campus");
    third.ok(&[
        "tenant",
        "export",
        "traveller-pool",
        "-o",
        &d,
        "--key-file",
        &key,
    ]);
    assert_eq!(table_sums(&d), sums, "database");
    check(&third, "traveller-pool", &s).await;

    // `database` → home again, on a new embedded deployment.
    let back = Deployment::embedded();
    let done = back.json(&["tenant", "import", &d, "--key-file", &key, "--json"]);
    assert_eq!(done["isolation"], "database");
    let e = back.path("e.campus");
    back.ok(&[
        "tenant",
        "export",
        "traveller-pool",
        "-o",
        &e,
        "--key-file",
        &key,
    ]);
    assert_eq!(table_sums(&e), sums, "home");
    check(&back, "traveller-pool", &s).await;
    // The archive on disk is its owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&e).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "archive mode {mode:o}");
    }
}

/// The suite's deployment: embedded, or PostgreSQL with tenants of the
/// suite's isolation mode.
fn suite_deployment() -> (Deployment, &'static str) {
    match std::env::var("CAMPUS_TEST_BACKEND").as_deref() {
        Ok("schema") => (Deployment::postgres(), "schema"),
        Ok("pool") => (Deployment::postgres(), "pool"),
        Ok("database") => (Deployment::postgres(), "database"),
        _ => (Deployment::embedded(), "database"),
    }
}

fn kill(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_child(child), Signal::KILL).expect("SIGKILL");
    let _ = child.wait();
}

/// Polls `campus tenant show <slug> --json` until `until` holds (20 s at most).
fn wait_for(d: &Deployment, slug: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.run(&["tenant", "show", slug, "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("json");
            if until(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "{slug} never got there");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn an_import_killed_half_way_is_finished_by_running_it_again() {
    let (d, isolation) = suite_deployment();
    let s = seed(&d, "killed-import", 12 * 1024 * 1024).await;
    let archive = d.path("k.campus");
    d.ok(&["tenant", "export", "killed-import", "-o", &archive]);
    let bytes = std::fs::read(&archive).expect("archive");
    d.ok(&["tenant", "delete", "killed-import", "--purge"]);

    // Half the archive through a pipe, then the importer dies.
    let mut child = d
        .cmd()
        .args(["tenant", "import", "-", "--isolation", isolation])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("import");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&bytes[..bytes.len() / 2]).expect("half");
    stdin.flush().expect("flush");
    let half = wait_for(&d, "killed-import", |t| t["status"] == "provisioning");
    kill(&mut child);
    drop(stdin);
    // Never served meanwhile.
    {
        let srv = d.serve();
        let res = reqwest::Client::new()
            .post(srv.url("/api/v1/auth/login"))
            .header("X-Tenant", "killed-import")
            .json(&json!({ "email": s.admin, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_client_error(),
            "served half-imported: {}",
            res.status()
        );
    }
    let done = d.json_once_free(&[
        "tenant",
        "import",
        &archive,
        "--isolation",
        isolation,
        "--json",
    ]);
    assert_eq!(done["resumed"], true, "{done}");
    assert_eq!(done["id"], half["id"]);
    assert_eq!(done["status"], "active");
    check(&d, "killed-import", &s).await;
}

#[tokio::test]
async fn a_move_killed_at_any_point_is_settled_by_running_it_again() {
    let d = Deployment::postgres();
    let isolation = match std::env::var("CAMPUS_TEST_BACKEND").as_deref() {
        Ok("pool") => "pool",
        Ok("database") => "database",
        _ => "schema",
    };
    let (to, back) = match isolation {
        "schema" => ("pool", "schema"),
        "pool" => ("database", "pool"),
        _ => ("schema", "database"),
    };
    d.json(&[
        "tenant",
        "create",
        "mover",
        "--name",
        "Mover",
        "--admin-email",
        "admin@mover.test",
        "--admin-password",
        PASSWORD,
        "--isolation",
        isolation,
    ]);
    let sums = {
        let a = d.path("before.campus");
        d.ok(&["tenant", "export", "mover", "-o", &a]);
        table_sums(&a)
    };
    let sums_now = |name: &str| {
        let a = d.path(name);
        d.ok(&["tenant", "export", "mover", "-o", &a]);
        table_sums(&a)
    };

    // Killed during the freeze: rolled back and done again.
    let mut child = d
        .cmd()
        .args([
            "tenant",
            "move",
            "mover",
            "--isolation",
            to,
            "--freeze-wait-ms",
            "5000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("move");
    wait_for(&d, "mover", |t| t["status"] == "maintenance");
    kill(&mut child);
    let stuck = d.json(&["tenant", "show", "mover", "--json"]);
    assert_eq!(stuck["status"], "maintenance");
    assert_eq!(stuck["isolation"], isolation, "not switched yet");
    let done = d.json_once_free(&[
        "tenant",
        "move",
        "mover",
        "--isolation",
        to,
        "--freeze-wait-ms",
        "300",
        "--json",
    ]);
    assert_eq!(done["resumed"], true, "{done}");
    assert_eq!(done["to_isolation"], to);
    let t = d.json(&["tenant", "show", "mover", "--json"]);
    assert_eq!(
        (t["status"].as_str(), t["isolation"].as_str()),
        (Some("active"), Some(to))
    );
    assert_eq!(sums_now("after1.campus"), sums);

    // Killed after the switch, before the old copy went: finished.
    let mut child = d
        .cmd()
        .args([
            "tenant",
            "move",
            "mover",
            "--isolation",
            back,
            "--freeze-wait-ms",
            "4000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("move");
    wait_for(&d, "mover", |t| {
        t["isolation"] == back && t["status"] == "active"
    });
    kill(&mut child);
    let done = d.json_once_free(&["tenant", "move", "mover", "--isolation", back, "--json"]);
    assert_eq!(done["resumed"], true, "{done}");
    let t = d.json(&["tenant", "show", "mover", "--json"]);
    assert_eq!(
        (t["status"].as_str(), t["isolation"].as_str()),
        (Some("active"), Some(back))
    );
    assert_eq!(sums_now("after2.campus"), sums);
    // The old copy is gone: the `to` mode holds nothing of it.
    let db = d.database.clone().expect("database");
    let id = t["id"].as_str().unwrap().replace('-', "");
    let left = psql_ok(
        &support::pg_url("postgres", &db),
        &format!(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 't_{id}') * (CASE WHEN '{back}' = 'schema' THEN 0 ELSE 1 END)
                  + (SELECT count(*) FROM pg_database WHERE datname = 't_{id}') * (CASE WHEN '{back}' = 'database' THEN 0 ELSE 1 END)
                  + (SELECT count(*) FROM campus_pool.users WHERE tenant_id = '{}') * (CASE WHEN '{back}' = 'pool' THEN 0 ELSE 1 END)",
            t["id"].as_str().unwrap()
        ),
    );
    assert_eq!(left.trim(), "0", "the old copy is left");
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_whole_deployment() {
    let d = Deployment::embedded();
    let s = seed(&d, "backed-up", 150_000).await;
    let usage = d.json(&["tenant", "show", "backed-up", "--json"])["usage"]["stored_bytes"].clone();
    let backup = d.work.join("backup");
    {
        // Taken while the server runs.
        let _srv = d.serve();
        let out = d.run(&["backup", "-o", backup.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("master key is not in the backup"));
    }
    assert!(
        !backup.join("master.key").exists(),
        "the master key was copied"
    );
    // Into a new directory only.
    assert!(
        !d.run(&["backup", "-o", backup.to_str().unwrap()])
            .status
            .success()
    );
    // Restored: the backup, plus the master key kept apart.
    let restored = Deployment::embedded();
    let data = restored.work.join("data");
    copy_tree(&backup, &data);
    std::fs::copy(d.work.join("data/master.key"), data.join("master.key")).expect("key");
    let t = restored.json(&["tenant", "show", "backed-up", "--json"]);
    assert_eq!(t["usage"]["stored_bytes"], usage, "usage after the restore");
    check(&restored, "backed-up", &s).await;
    // On PostgreSQL the databases are pg_dump's to copy.
    let pg = Deployment::postgres();
    let out = pg.run(&["backup", "-o", pg.path("b").as_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_purge_from_the_cli_removes_the_tenants_redis_keys_and_reports_it() {
    let redis =
        std::env::var("CAMPUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let environment = format!("purge{}", &tenancy::TenantId::new().simple()[..12]);
    let d = Deployment::embedded();
    let flags = [
        "--redis-url",
        redis.as_str(),
        "--environment",
        environment.as_str(),
    ];
    let s = seed(&d, "cached", 1000).await;
    let id = d.json(&["tenant", "show", "cached", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        let mut c = d.cmd();
        c.args(flags)
            .env("CAMPUS_OPERATOR_TOKEN", "archive-test-operator-token");
        let srv = Server::start(c, &[]);
        let api = Api::new(&srv, "cached");
        let token = api.login(&s.admin).await;
        // Signed-in reads fill the cache and the limits, in Redis.
        for _ in 0..3 {
            api.get_bytes(&token, "/api/v1/courses").await;
        }
    }
    let keys = |pattern: &str| {
        let out = Command::new("redis-cli")
            .args(["-u", &redis, "--scan", "--pattern", pattern])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let pattern = format!("{environment}:{id}:*");
    assert!(keys(&pattern) > 0, "no Redis key of the tenant to purge");
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["tenant", "delete", "cached", "--purge"]);
    let out = d.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let checks = report["purge"]["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["what"].as_str().unwrap().starts_with("Redis keys") && c["gone"] == true),
        "{report}"
    );
    assert!(checks.iter().all(|c| c["gone"] == true), "{report}");
    assert_eq!(
        keys(&pattern),
        0,
        "the tenant's Redis keys outlived its purge"
    );
}
