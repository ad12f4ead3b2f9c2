//! The real `campus` binary, run as an operator would: the tenant commands,
//! `migrate`, and `serve` — a server that sees the CLI's changes within one
//! second, and the operator token it generates when none is configured.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{Server, campus_in};

use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "cli-test-operator-token-0123456789";
const PASSWORD: &str = "correct horse battery";

/// A scratch working directory with the data directory inside it.
struct Env {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    data: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().to_owned();
        let data = work.join("data");
        Self {
            _tmp: tmp,
            work,
            data,
        }
    }

    /// `campus --data-dir <data>`, isolated from the caller's environment and
    /// from any `campus.toml` in the caller's working directory.
    fn campus(&self) -> Command {
        let mut c = campus_in(&self.work);
        c.arg("--data-dir").arg(&self.data);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.campus()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run campus")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "campus {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("campus {args:?}: {e}:\n{out}"))
    }

    /// Runs a command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "campus {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout when failing: {out:?}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    }

    fn create(&self, slug: &str, extra: &[&str]) -> Value {
        let email = format!("admin@{slug}.test");
        let mut args = vec![
            "tenant",
            "create",
            slug,
            "--name",
            slug,
            "--admin-email",
            &email,
        ];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    fn tenant_dir(&self, id: &str) -> PathBuf {
        self.data.join("tenants").join(id)
    }
}

/// `campus serve` on `env`'s data directory.
fn serve(env: &Env, token: Option<&str>) -> Server {
    let mut cmd = env.campus();
    if let Some(t) = token {
        cmd.env("CAMPUS_OPERATOR_TOKEN", t);
    }
    Server::start(cmd, &[])
}

async fn login(
    client: &reqwest::Client,
    srv: &Server,
    slug: &str,
    email: &str,
    pw: &str,
) -> reqwest::Response {
    client
        .post(srv.url("/api/v1/auth/login"))
        .header("X-Tenant", slug)
        .json(&json!({ "email": email, "password": pw }))
        .send()
        .await
        .expect("login")
}

async fn me(client: &reqwest::Client, srv: &Server, slug: &str, token: &str) -> reqwest::Response {
    client
        .get(srv.url("/api/v1/me"))
        .header("X-Tenant", slug)
        .bearer_auth(token)
        .send()
        .await
        .expect("me")
}

/// Polls `GET /api/v1/me` until it answers `status` (and `code`, for a
/// problem), failing if that takes more than one second.
async fn within_one_second(
    client: &reqwest::Client,
    srv: &Server,
    slug: &str,
    token: &str,
    status: u16,
    code: Option<&str>,
) {
    let start = Instant::now();
    loop {
        let res = me(client, srv, slug, token).await;
        let got = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if got == status {
            if let Some(code) = code {
                assert_eq!(body["code"], code, "{body}");
            }
            return;
        }
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "still {got} {body} after {waited:?}; wanted {status} {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn tenant_commands_create_list_show_update_and_lifecycle() {
    let env = Env::new();
    let t = env.json(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme",
        "--admin-email",
        "a@acme.test",
        "--admin-password",
        PASSWORD,
    ]);
    assert_eq!(t["slug"], "acme");
    assert_eq!(t["name"], "Acme");
    assert_eq!(t["status"], "active");
    assert_eq!(t["isolation"], "database");
    assert_eq!(t["placement"], "default");
    assert_eq!(t["plan"], "standard");
    assert_eq!(t["schema_version"], lms::TENANT_MIGRATIONS.latest());
    assert_eq!(t["migration_pending"], false);
    assert_eq!(t["usage"]["users"], 1);
    assert!(
        t.get("admin_password").is_none(),
        "a given password is not echoed: {t}"
    );
    let id = t["id"].as_str().expect("id").to_owned();
    assert!(env.tenant_dir(&id).join("tenant.db").is_file());

    let other = env.create("globex", &["--admin-password", PASSWORD, "--plan", "free"]);
    assert_eq!(other["plan"], "free");

    // The table, and the same as JSON.
    let table = env.ok(&["tenant", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("SLUG"), "{table}");
    let acme = lines
        .iter()
        .find(|l| l.starts_with("acme "))
        .expect("acme row");
    for word in ["active", "database", "standard", "Acme"] {
        assert!(acme.contains(word), "{word} in {acme}");
    }
    let all = env.json(&["tenant", "list", "--json"]);
    let slugs: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["acme", "globex"]);

    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["name"], "Acme");
    let table = env.ok(&["tenant", "show", "acme"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("acme ")),
        "{table}"
    );
    let err = env.fails(&["tenant", "show", "nope", "--json"]);
    assert!(err.contains("no tenant `nope`"), "{err}");

    // Update.
    let u = env.json(&[
        "tenant",
        "update",
        "acme",
        "--name",
        "X",
        "--plan",
        "enterprise",
    ]);
    assert_eq!(
        (u["name"].as_str(), u["plan"].as_str()),
        (Some("X"), Some("enterprise"))
    );
    let shown = env.json(&["tenant", "show", "acme", "--json"]);
    assert_eq!(
        (shown["name"].as_str(), shown["plan"].as_str()),
        (Some("X"), Some("enterprise"))
    );
    let err = env.fails(&["tenant", "update", "acme"]);
    assert!(err.contains("nothing to change"), "{err}");
    let err = env.fails(&["tenant", "update", "acme", "--plan", "gold"]);
    assert!(err.contains("plan"), "{err}");
    let err = env.fails(&["tenant", "update", "nope", "--name", "Y"]);
    assert!(err.contains("no tenant `nope`"), "{err}");
    assert_eq!(
        env.json(&["tenant", "show", "acme", "--json"])["plan"],
        "enterprise"
    );

    // Suspend and resume, each idempotent.
    for _ in 0..2 {
        assert_eq!(
            env.json(&["tenant", "suspend", "acme"])["status"],
            "suspended"
        );
    }
    for _ in 0..2 {
        assert_eq!(env.json(&["tenant", "resume", "acme"])["status"], "active");
    }
    let err = env.fails(&["tenant", "suspend", "nope"]);
    assert!(err.contains("no tenant `nope`"), "{err}");

    // Delete keeps the data and the slug; a deleted tenant cannot be resumed.
    let d = env.json(&["tenant", "delete", "acme"]);
    assert_eq!(d["status"], "deleted");
    assert!(d["deleted_at"].is_string());
    assert!(env.tenant_dir(&id).is_dir());
    let err = env.fails(&["tenant", "resume", "acme"]);
    assert!(err.contains("deleted"), "{err}");
    let err = env.fails(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme again",
        "--admin-email",
        "a@acme.test",
        "--admin-password",
        PASSWORD,
    ]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        env.json(&["tenant", "show", "acme", "--json"])["status"],
        "deleted"
    );

    // Purge destroys it; the slug is free again, for a new tenant.
    let p = env.json(&["tenant", "delete", "acme", "--purge"]);
    assert_eq!(p["status"], "purged");
    assert!(!env.tenant_dir(&id).exists());
    let err = env.fails(&["tenant", "show", "acme"]);
    assert!(err.contains("no tenant `acme`"), "{err}");
    let all = env.json(&["tenant", "list", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    let again = env.create("acme", &["--admin-password", PASSWORD]);
    assert_ne!(again["id"], id.as_str());
    assert_eq!(again["usage"]["users"], 1);
    assert_eq!(again["usage"]["courses"], 0);

    // Every command that changed something is a line of the operator audit
    // log (the console shows it), refusals included; reads are not.
    let lines = operator_audit(&env.data, "acme");
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .map(|(a, o, _)| (a.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("tenant.create", "ok"),
            ("tenant.update", "ok"),
            ("tenant.update", "refused"),
            ("tenant.suspend", "ok"),
            ("tenant.suspend", "ok"),
            ("tenant.resume", "ok"),
            ("tenant.resume", "ok"),
            ("tenant.delete", "ok"),
            ("tenant.resume", "refused"),
            ("tenant.create", "refused"),
            ("tenant.purge", "ok"),
            ("tenant.create", "ok"),
        ]
    );
    assert!(lines.iter().all(|(_, _, via)| via == "cli"));
}

/// The operator audit log's lines about `slug` in the registry under
/// `data`, oldest first: (action, outcome, via).
fn operator_audit(data: &std::path::Path, slug: &str) -> Vec<(String, String, String)> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", data.join("registry.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("registry");
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT action, outcome, via FROM operator_audit WHERE tenant = $1 ORDER BY id",
        )
        .bind(slug)
        .fetch_all(&mut conn)
        .await
        .expect("operator_audit");
        rows
    })
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    // `campus tenant list | head -1`: the reader is gone before campus
    // writes; the command ends with success, and says on stderr only what
    // it says when its output is read (no panic, no error).
    let env = Env::new();
    env.create("acme", &[]);
    for args in [
        &["tenant", "list"][..],
        &["tenant", "list", "--json"],
        &["tenant", "show", "acme"],
        &["migrate"],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = env
            .campus()
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .output()
            .expect("run campus");
        assert!(out.status.success(), "campus {args:?}: {}", out.status);
        let read = env.run(args);
        assert!(read.status.success() && !read.stdout.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&read.stderr),
            "campus {args:?}"
        );
    }
}

#[test]
fn the_master_key_is_made_once_and_private_and_purge_removes_the_tenants_files() {
    let env = Env::new();
    let t = env.create("files", &["--admin-password", PASSWORD]);
    let other = env.create("keeps", &["--admin-password", PASSWORD]);
    assert_eq!(t["usage"]["stored_bytes"], 0);
    let key_path = env.data.join("master.key");
    let key = std::fs::read_to_string(&key_path).expect("master.key made");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let listed = env.ok(&["tenant", "list"]);
    assert!(listed.contains("STORED"), "{listed}");
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key, "kept");
    assert!(!listed.contains(key.trim()));

    // Objects under each tenant's prefix (as the server leaves them).
    let object = |id: &Value| {
        env.data
            .join("objects/tenants")
            .join(id.as_str().unwrap())
            .join("avatars/0190a000-0000-7000-8000-000000000000")
    };
    for id in [&t["id"], &other["id"]] {
        std::fs::create_dir_all(object(id).parent().unwrap()).unwrap();
        std::fs::write(object(id), b"sealed bytes").unwrap();
    }
    env.json(&["tenant", "delete", "files", "--purge"]);
    assert!(!object(&t["id"]).exists());
    assert!(
        object(&other["id"]).exists(),
        "another tenant's file went too"
    );

    // A storage URL or a master key that cannot be used: refused, clearly.
    let err = env.fails(&["--storage-url", "ftp://files.example/x", "tenant", "list"]);
    assert!(err.contains("storage-url"), "{err}");
    let out = env
        .campus()
        .env("CAMPUS_MASTER_KEY", "bm90IDMyIGJ5dGVz")
        .args(["tenant", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAMPUS_MASTER_KEY"), "{err}");
    assert!(!err.contains("bm90IDMyIGJ5dGVz"), "{err}");
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message_and_changes_nothing() {
    let env = Env::new();
    env.create("keep", &["--admin-password", PASSWORD]);
    for slug in ["Bad_Slug", "ACME", "ab", "../x", "public;", "a'b-c"] {
        let err = env.fails(&[
            "tenant",
            "create",
            slug,
            "--name",
            "X",
            "--admin-email",
            "a@x.test",
            "--admin-password",
            PASSWORD,
        ]);
        assert!(err.contains("slug"), "{slug}: {err}");
        assert!(err.contains("3 to 63 characters"), "{slug}: {err}");
    }
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--admin-email",
                "not-an-email",
                "--admin-password",
                PASSWORD,
            ],
            "email",
        ),
        (
            &["--admin-email", "a@x.test", "--admin-password", "short"],
            "password",
        ),
        (
            &[
                "--admin-email",
                "a@x.test",
                "--admin-password",
                PASSWORD,
                "--isolation",
                "bogus",
            ],
            "isolation",
        ),
        (
            &[
                "--admin-email",
                "a@x.test",
                "--admin-password",
                PASSWORD,
                "--plan",
                "gold",
            ],
            "plan",
        ),
    ];
    for (extra, word) in cases {
        let mut args = vec!["tenant", "create", "fine-slug", "--name", "X"];
        args.extend_from_slice(extra);
        let err = env.fails(&args);
        assert!(err.contains(word), "{extra:?}: {err}");
    }
    // A missing required flag is a usage error.
    let out = env.run(&["tenant", "create", "fine-slug", "--name", "X"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-email"));

    let all = env.json(&["tenant", "list", "--json"]);
    let slugs: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["keep"]);
    let dirs = std::fs::read_dir(env.data.join("tenants")).unwrap().count();
    assert_eq!(dirs, 1);
}

#[tokio::test]
async fn a_generated_admin_password_is_printed_once_and_works() {
    let env = Env::new();
    let out = env.run(&[
        "tenant",
        "create",
        "gen",
        "--name",
        "Gen",
        "--admin-email",
        "boss@gen.test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("generated"), "{stderr}");
    let t: Value = serde_json::from_slice(&out.stdout).expect("json");
    let pw = t["admin_password"]
        .as_str()
        .expect("admin_password")
        .to_owned();
    assert!(pw.len() >= 16, "{pw}");
    assert!(
        !stderr.contains(&pw),
        "the password is printed once, in the JSON"
    );
    // It is not shown again.
    let shown = env.json(&["tenant", "show", "gen", "--json"]);
    assert!(shown.get("admin_password").is_none());
    assert!(!env.ok(&["tenant", "list", "--json"]).contains(&pw));

    let srv = serve(&env, Some(TOKEN));
    let client = reqwest::Client::new();
    let res = login(&client, &srv, "gen", "boss@gen.test", &pw).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["role"], "admin");
    assert_eq!(
        body["user"]["name"], "boss",
        "the admin's name defaults to the email's local part"
    );
    let res = login(&client, &srv, "gen", "boss@gen.test", "not the password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_running_server_sees_cli_changes_within_one_second() {
    let env = Env::new();
    let srv = serve(&env, Some(TOKEN));
    let client = reqwest::Client::new();

    let res = client
        .post(srv.url("/admin/api/v1/tenants"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "slug": "live", "name": "Live",
            "admin": { "email": "admin@live.test", "name": "Admin", "password": PASSWORD }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = login(&client, &srv, "live", "admin@live.test", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Served, so the server has the tenant cached.
    assert_eq!(
        me(&client, &srv, "live", &token).await.status(),
        StatusCode::OK
    );

    assert_eq!(
        env.json(&["tenant", "suspend", "live"])["status"],
        "suspended"
    );
    within_one_second(&client, &srv, "live", &token, 403, Some("tenant_suspended")).await;

    assert_eq!(env.json(&["tenant", "resume", "live"])["status"], "active");
    within_one_second(&client, &srv, "live", &token, 200, None).await;

    // A tenant the CLI creates is served at once.
    env.create("fresh", &["--admin-password", PASSWORD]);
    let res = login(&client, &srv, "fresh", "admin@fresh.test", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(env.json(&["tenant", "delete", "live"])["status"], "deleted");
    within_one_second(&client, &srv, "live", &token, 401, Some("invalid_tenant")).await;
    let res = login(&client, &srv, "live", "admin@live.test", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Purged by the CLI while the server runs: the directory goes, the
    // server still refuses the tenant, and the others are untouched.
    assert_eq!(
        env.json(&["tenant", "delete", "live", "--purge"])["status"],
        "purged"
    );
    assert!(!env.tenant_dir(&id).exists());
    within_one_second(&client, &srv, "live", &token, 401, Some("invalid_tenant")).await;
    let res = client
        .get(srv.url("/admin/api/v1/tenants/live"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = login(&client, &srv, "fresh", "admin@fresh.test", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn migrate_brings_every_tenant_up_and_names_failures() {
    let env = Env::new();
    for slug in ["one", "two", "three"] {
        env.create(slug, &["--admin-password", PASSWORD]);
    }
    let out = env.ok(&["migrate"]);
    assert!(
        out.contains("migrated 0, already up to date 3, failed 0"),
        "{out}"
    );
    let out = env.ok(&["migrate", "--tenant", "two", "--concurrency", "1"]);
    assert!(
        out.contains("migrated 0, already up to date 1, failed 0"),
        "{out}"
    );
    let err = env.fails(&["migrate", "--tenant", "nope"]);
    assert!(err.contains("nope"), "{err}");

    // Two tenants left at schema version 0 (made by a build with no tenant
    // migrations), one of them with its database gone.
    let (behind, broken) = {
        let kernel = tenancy::Kernel::open(tenancy::KernelConfig::new(
            &env.data,
            tenancy::MigrationSet {
                sqlite: &[],
                postgres: &[],
                pool: &[],
            },
        ))
        .await
        .expect("kernel");
        let mut made = Vec::new();
        for slug in ["behind", "broken"] {
            let spec = tenancy::ProvisionSpec {
                slug: tenancy::Slug::parse(slug).unwrap(),
                name: slug.into(),
                isolation: None,
                placement: None,
                plan: tenancy::Plan::Standard,
            };
            let r = kernel.reserve(&spec).await.expect("reserve");
            kernel.build(&r).await.expect("build");
            let t = kernel.activate(&r).await.expect("activate");
            assert_eq!(t.schema_version, 0);
            made.push(t);
        }
        (made[0].clone(), made[1].clone())
    };
    std::fs::remove_file(env.tenant_dir(&broken.id.to_string()).join("tenant.db")).unwrap();
    let shown = env.json(&["tenant", "show", "behind", "--json"]);
    assert_eq!(shown["schema_version"], 0);
    assert_eq!(shown["migration_pending"], true);

    let out = env.run(&["migrate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a failed tenant fails the run:\n{stdout}"
    );
    assert!(
        stdout.contains("migrated 1, already up to date 3, failed 1"),
        "{stdout}"
    );
    assert!(stdout.contains("failed: broken"), "{stdout}");
    assert!(!stdout.contains("failed: behind"), "{stdout}");
    let shown = env.json(&["tenant", "show", "behind", "--json"]);
    assert_eq!(shown["schema_version"], lms::TENANT_MIGRATIONS.latest());
    assert_eq!(shown["migration_pending"], false);
    assert_eq!(shown["id"], behind.id.to_string());

    // Only the broken one is left; migrating the rest is a no-op.
    let out = env.ok(&["migrate", "--tenant", "behind"]);
    assert!(
        out.contains("migrated 0, already up to date 1, failed 0"),
        "{out}"
    );
    let out = env.run(&["migrate", "--tenant", "broken"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed: broken"));
}

#[tokio::test]
async fn serve_generates_an_operator_token_once_and_it_works() {
    let env = Env::new();
    // No kept-alive connections: the next server may get the port of the
    // one just stopped, and a pooled connection to that one is dead.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let list = |token: String, srv: &Server| {
        client
            .get(srv.url("/admin/api/v1/tenants"))
            .bearer_auth(token)
            .send()
    };

    let generated = {
        let srv = serve(&env, None);
        let log = srv.log();
        assert!(log.contains("Generated an operator token"), "{log}");
        let tokens: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("cop_"))
            .collect();
        assert_eq!(tokens.len(), 1, "printed once: {log}");
        let token = tokens[0].to_owned();
        assert!(token.len() >= 24, "{token}");
        assert_eq!(
            list(token.clone(), &srv).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            list(format!("{token}x"), &srv).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        token
    };

    // Only its hash is kept, readable by the owner alone.
    let path = env.data.join("operator-token.sha256");
    let stored = std::fs::read_to_string(&path).expect("token hash file");
    assert!(!stored.contains(&generated));
    assert_eq!(stored.trim().len(), 64);
    assert!(stored.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    // A second start does not print it again, and the same token works.
    {
        let srv = serve(&env, None);
        let log = srv.log();
        assert!(!log.contains("Generated an operator token"), "{log}");
        assert!(!log.contains(&generated), "{log}");
        assert_eq!(
            list(generated.clone(), &srv).await.unwrap().status(),
            StatusCode::OK
        );
    }

    // A configured token takes precedence over the generated one.
    {
        let srv = serve(&env, Some(TOKEN));
        assert!(!srv.log().contains("Generated an operator token"));
        assert_eq!(
            list(TOKEN.into(), &srv).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            list(generated.clone(), &srv).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    // A configured token that is too short is refused at start.
    let out = env
        .campus()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAMPUS_OPERATOR_TOKEN", "short")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAMPUS_OPERATOR_TOKEN"));
}

#[test]
fn completions_and_the_manual_need_no_data_and_options_list_their_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (args, needle) in [
        (&["completions", "bash"][..], "_campus()"),
        (&["completions", "zsh"][..], "#compdef campus"),
        (&["man"][..], ".TH campus"),
    ] {
        let out = campus_in(tmp.path()).args(args).output().expect("campus");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{args:?}"
        );
    }
    // Nothing was made: no data directory for a completion script.
    assert!(!tmp.path().join("data").exists());
    let out = campus_in(tmp.path())
        .args([
            "tenant",
            "create",
            "acme",
            "--name",
            "A",
            "--admin-email",
            "a@b.c",
        ])
        .args(["--isolation", "shared"])
        .output()
        .expect("campus");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database") && err.contains("schema") && err.contains("pool"),
        "{err}"
    );
    let help = campus_in(tmp.path())
        .args(["tenant", "import", "--help"])
        .output()
        .expect("campus");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("enterprise"), "{help}");
}

#[test]
fn config_shows_each_value_and_its_source_with_secrets_masked() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("campus.toml"),
        "redis_url = \"redis://:redis-secret@cache:6379/0\"\nlisten = \"0.0.0.0:8080\"\n",
    )
    .expect("campus.toml");
    let out = campus_in(tmp.path())
        .env("CAMPUS_DATABASE_URL", "postgres://app:db-secret@db/campus")
        .env(
            "CAMPUS_MASTER_KEY",
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
        )
        .args(["--pool-size", "32", "config", "--json"])
        .output()
        .expect("campus config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["db-secret", "redis-secret", "QUJDREVG"] {
        assert!(!text.contains(secret), "a secret printed: {text}");
    }
    let all: Vec<Value> = serde_json::from_str(&text).expect("json");
    let get = |name: &str| {
        all.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(get("pool_size")["source"], "flag");
    assert_eq!(get("pool_size")["value"], "32");
    assert_eq!(get("database_url")["source"], "environment");
    assert_eq!(get("database_url")["value"], "postgres://app:***@db/campus");
    assert_eq!(get("redis_url")["source"], "campus.toml");
    assert_eq!(get("listen")["source"], "campus.toml");
    assert_eq!(get("master_key")["source"], "environment");
    assert_eq!(get("environment")["source"], "default");
    // It reads configuration only: no data directory, no database.
    assert!(!tmp.path().join("data").exists());
}

#[test]
fn a_broken_config_file_is_named_without_quoting_its_secrets() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("campus.toml"),
        "listen = \"127.0.0.1:8080\"\ndatabase_url = \"postgres://app:hunter2-secret@db/campus\n",
    )
    .expect("campus.toml");
    let out = campus_in(tmp.path())
        .args(["config"])
        .output()
        .expect("campus config");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("campus.toml line 2"), "{err}");
    assert!(!err.contains("hunter2"), "a secret printed: {err}");
}
