//! One deployment, one master key and one operator token, whatever the
//! number of nodes: the real `campus` binary, on the same data directory
//! (embedded) and on the same PostgreSQL with a data directory per node (as
//! two machines would be).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

mod support;
use support::{Server, campus_in, fresh_pg_database, pg_admin_url, psql_ok};

const PASSWORD: &str = "correct horse battery";

/// `campus --data-dir <data>`, isolated from the caller's environment.
fn campus(work: &Path, data: &Path) -> Command {
    let mut c = campus_in(work);
    c.arg("--data-dir").arg(data);
    c
}

/// Runs `cmd serve`, which must refuse to start: its stderr. A server that
/// starts instead is killed and the test fails.
fn refuses_to_serve(mut cmd: Command) -> String {
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn campus serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!status.success(), "exited 0:\n{stderr}");
            assert!(out.stdout.is_empty(), "{out:?}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "campus serve started when it should have refused:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn other_key() -> String {
    tenancy::MasterKey::random().to_base64()
}

#[test]
fn a_node_with_another_master_key_refuses_to_serve_or_write_on_the_same_data_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (work, data) = (tmp.path().to_owned(), tmp.path().join("data"));
    let create = |cmd: &mut Command, slug: &str| {
        cmd.args(["tenant", "create", slug, "--name", slug])
            .args(["--admin-email", &format!("a@{slug}.test")])
            .args(["--admin-password", PASSWORD])
            .stdin(Stdio::null())
            .output()
            .expect("campus tenant create")
    };
    let out = create(&mut campus(&work, &data), "first");
    assert!(out.status.success(), "{out:?}");
    let key = std::fs::read_to_string(data.join("master.key")).expect("master.key");

    let wrong = other_key();
    let mut cmd = campus(&work, &data);
    cmd.env("CAMPUS_MASTER_KEY", &wrong);
    let err = refuses_to_serve(cmd);
    assert!(err.contains("master key is not the deployment's"), "{err}");
    assert!(err.contains("same master key"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(key.trim()), "{err}");

    // Nor may it write: provisioning would make a data key under its key.
    let mut cmd = campus(&work, &data);
    cmd.env("CAMPUS_MASTER_KEY", &wrong);
    let out = create(&mut cmd, "second");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key is not the deployment's"), "{err}");
    assert!(out.stdout.is_empty());

    // Nothing changed: the key file, and no tenant `second`.
    assert_eq!(
        std::fs::read_to_string(data.join("master.key")).unwrap(),
        key
    );
    let out = campus(&work, &data)
        .args(["tenant", "list"])
        .output()
        .expect("list");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("first") && !listed.contains("second"),
        "{listed}"
    );

    // The same key, given explicitly, is fine.
    let mut cmd = campus(&work, &data);
    cmd.env("CAMPUS_MASTER_KEY", key.trim());
    let out = create(&mut cmd, "third");
    assert!(out.status.success(), "{out:?}");

    // What a start cannot tighten (files deep in the store, copied in by
    // hand) `campus doctor` names, without failing over it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let stray = data.join("objects/tenants/copied-in");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, b"x").unwrap();
        std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = campus(&work, &data).arg("doctor").output().expect("doctor");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{out:?}");
        assert!(
            err.contains("permissions:") && err.contains("copied-in"),
            "{err}"
        );
        assert!(err.contains("mode 644"), "{err}");
    }
}

/// Two data directories on one PostgreSQL database, dropped at the end.
struct Shared {
    tmp: tempfile::TempDir,
    database: String,
    owner: String,
    app: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            support::drop_test_database(&self.database);
        }
    }
}

impl Shared {
    fn new() -> Self {
        let (database, owner, app) = fresh_pg_database();
        Self {
            tmp: tempfile::tempdir().expect("temp dir"),
            database,
            owner,
            app,
        }
    }

    fn data(&self, node: &str) -> PathBuf {
        self.tmp.path().join(node)
    }

    fn node(&self, node: &str) -> Command {
        let mut c = campus(self.tmp.path(), &self.data(node));
        c.args([
            "--database-url",
            &self.app,
            "--owner-database-url",
            &self.owner,
        ]);
        c
    }
}

async fn tenants_status(base: &Server, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(base.url("/admin/api/v1/tenants"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list tenants")
        .status()
}

#[tokio::test]
async fn nodes_on_one_registry_share_the_master_key_and_the_operator_token() {
    let shared = Shared::new();
    // The first node makes the deployment's key and token.
    let first = Server::start(shared.node("a"), &[]);
    let log = first.log();
    let token = log
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cop_"))
        .unwrap_or_else(|| panic!("no token printed:\n{log}"))
        .to_owned();
    assert_eq!(tenants_status(&first, &token).await, StatusCode::OK);
    let key = std::fs::read_to_string(shared.data("a").join("master.key")).expect("key");
    let check = psql_ok(
        &support::pg_url("postgres", &shared.database),
        "SELECT value FROM campus_control.deployment WHERE name = 'master_key_check';",
    );
    assert_eq!(check.trim().len(), 64, "{check}");
    assert!(!check.contains(key.trim()));

    // A second machine without the key: refused, and it made none.
    let err = refuses_to_serve(shared.node("b"));
    assert!(err.contains("has no master key"), "{err}");
    assert!(!shared.data("b").join("master.key").exists());
    // With another key: refused.
    let mut cmd = shared.node("b");
    cmd.env("CAMPUS_MASTER_KEY", other_key());
    let err = refuses_to_serve(cmd);
    assert!(err.contains("master key is not the deployment's"), "{err}");

    // With the deployment's key it serves, with the first node's token
    // (and prints none of its own).
    let mut cmd = shared.node("b");
    cmd.env("CAMPUS_MASTER_KEY", key.trim());
    let second = Server::start(cmd, &[]);
    assert!(!second.log().contains("Generated an operator token"));
    assert_eq!(tenants_status(&second, &token).await, StatusCode::OK);
    assert_eq!(
        tenants_status(&second, "another-token-0123456789").await,
        StatusCode::UNAUTHORIZED
    );

    // Configuring a token replaces a generated one, on every node at once.
    let configured = "configured-token-0123456789";
    let mut cmd = shared.node("c");
    cmd.env("CAMPUS_MASTER_KEY", key.trim())
        .env("CAMPUS_OPERATOR_TOKEN", configured);
    let third = Server::start(cmd, &[]);
    for node in [&first, &second, &third] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tenants_status(node, configured).await != StatusCode::OK {
            assert!(Instant::now() < deadline, "not taken by {}", node.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(tenants_status(node, &token).await, StatusCode::UNAUTHORIZED);
    }
    // A node configured with another token now refuses to start…
    let mut cmd = shared.node("d");
    cmd.env("CAMPUS_MASTER_KEY", key.trim())
        .env("CAMPUS_OPERATOR_TOKEN", "yet-another-token-0123456789");
    let err = refuses_to_serve(cmd);
    assert!(err.contains("operator token"), "{err}");
    assert!(!err.contains("yet-another-token"), "{err}");
    // …and `campus operator-token set` changes it for every node.
    let rotated = "rotated-token-0123456789";
    let out = shared
        .node("a")
        .args(["operator-token", "set"])
        .env("CAMPUS_OPERATOR_TOKEN", rotated)
        .output()
        .expect("operator-token set");
    assert!(out.status.success(), "{out:?}");
    for node in [&first, &second, &third] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tenants_status(node, rotated).await != StatusCode::OK {
            assert!(Instant::now() < deadline, "not taken by {}", node.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            tenants_status(node, configured).await,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn the_access_log_names_the_client_its_user_agent_and_the_trace() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(campus(tmp.path(), &tmp.path().join("data")), &[]);
    let res = reqwest::Client::new()
        .get(srv.url("/healthz"))
        .header("User-Agent", "campus-test/1.0 (access log)")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("healthz");
    assert_eq!(res.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = srv.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("request finished") && l.contains("campus-test/1.0"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access log line:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
    let span = &v["span"];
    assert_eq!(span["client"], "127.0.0.1", "{line}");
    assert_eq!(span["user_agent"], "campus-test/1.0 (access log)", "{line}");
    assert_eq!(
        span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(span["parent_span_id"], "00f067aa0ba902b7", "{line}");
}

/// `deploy/postgres/init.sql`, as the docs and the compose file run it,
/// against the local PostgreSQL (under names of this test's own): twice
/// (it is idempotent), then `campus doctor` finds the roles as Campus
/// needs them and `campus serve` serves.
#[tokio::test]
async fn the_shipped_init_sql_makes_a_deployment_campus_accepts() {
    let n = tenancy::TenantId::new().simple()[..12].to_owned();
    let (db, owner, app) = (
        format!("campus_init_{n}"),
        format!("campus_init_owner_{n}"),
        format!("campus_init_app_{n}"),
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/postgres/init.sql"
    );
    for _ in 0..2 {
        let out = Command::new("psql")
            .arg(pg_admin_url())
            .args(["-X", "-q", "-v", &format!("database={db}")])
            .args([
                "-v",
                &format!("owner_role={owner}"),
                "-v",
                &format!("app_role={app}"),
            ])
            .args(["-f", script])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let with_db = |c: &mut Command| {
        c.args([
            "--database-url",
            &support::pg_url(&app, &db),
            "--owner-database-url",
            &support::pg_url(&owner, &db),
        ]);
    };
    let mut doctor = campus(tmp.path(), &tmp.path().join("data"));
    with_db(&mut doctor);
    let out = doctor.arg("doctor").output().expect("doctor");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let mut cmd = campus(tmp.path(), &tmp.path().join("data"));
        with_db(&mut cmd);
        let srv = Server::start(cmd, &[]);
        let res = reqwest::get(srv.url("/readyz")).await.expect("readyz");
        assert_eq!(res.status(), StatusCode::OK);
    }
    psql_ok(
        &pg_admin_url(),
        &format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE);\nDROP ROLE IF EXISTS {app};\nDROP ROLE IF EXISTS {owner};"
        ),
    );
}

/// The image's entry point and health check, as a plain process: `campus`
/// with the Dockerfile's environment, and its HEALTHCHECK command.
#[tokio::test]
async fn the_images_entry_point_serves_and_its_health_check_passes() {
    let dockerfile = include_str!("../../../Dockerfile");
    let check = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("a HEALTHCHECK CMD");
    let argv: Vec<String> = serde_json::from_str(check).expect("the CMD is a JSON array");
    let tmp = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut cmd = campus_in(tmp.path());
    cmd.env("CAMPUS_DATA_DIR", tmp.path().join("data"))
        .env("CAMPUS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CAMPUS_OPERATOR_TOKEN", "image-test-operator-token");
    // As the image runs it: `campus serve` (Server::start adds the listen flag
    // too; it names the same kind of address).
    let _srv = Server::start(cmd, &[]);
    let health = |port: u16| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("CAMPUS_HEALTH_PORT", port.to_string())
            .output()
            .expect("health check")
    };
    let srv_port: u16 = _srv
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        health(srv_port).status.success(),
        "the health check fails on a serving node"
    );
    assert!(
        !health(port).status.success(),
        "the health check passes with nothing listening"
    );
}

/// `deploy/compose.yaml` parses (YAML, anchors merged), and its Campus
/// services are what the docs say: two nodes and a migrate step on one
/// image, with the same database, Redis, store, master key and token, their
/// control plane on the admin listener; behind the proxy. Parsed with
/// Python's PyYAML (no Docker here to run it).
#[test]
fn the_compose_file_describes_two_nodes_sharing_everything() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/compose.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            path,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "parsing compose.yaml (needs python3 with PyYAML): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let services = doc["services"].as_object().expect("services");
    for s in [
        "postgres",
        "redis",
        "minio",
        "minio-bucket",
        "migrate",
        "campus-1",
        "campus-2",
        "proxy",
    ] {
        assert!(services.contains_key(s), "no service {s}");
    }
    let env = |s: &str| services[s]["environment"].clone();
    assert_eq!(env("campus-1"), env("campus-2"));
    assert_eq!(env("campus-1"), env("migrate"));
    let e = env("campus-1");
    for var in [
        "CAMPUS_DATABASE_URL",
        "CAMPUS_OWNER_DATABASE_URL",
        "CAMPUS_REDIS_URL",
        "CAMPUS_STORAGE_URL",
        "CAMPUS_MASTER_KEY",
        "CAMPUS_OPERATOR_TOKEN",
        "CAMPUS_ADMIN_LISTEN",
    ] {
        assert!(e.get(var).is_some(), "campus nodes lack {var}");
    }
    assert_eq!(services["campus-1"]["image"], services["campus-2"]["image"]);
    assert_eq!(
        services["migrate"]["command"],
        serde_json::json!(["migrate"])
    );
    // The init script it mounts is the one the test above runs.
    let mounts = services["postgres"]["volumes"].to_string();
    assert!(mounts.contains("./postgres/init.sql"), "{mounts}");
    // The proxy's configuration names both nodes and checks readiness.
    let caddy = include_str!("../../../deploy/proxy/Caddyfile");
    assert!(caddy.contains("campus-1:8080") && caddy.contains("campus-2:8080"));
    assert!(caddy.contains("health_uri /readyz"));
}
