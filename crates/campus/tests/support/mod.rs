//! What the tests of the real `campus` binary share: a running `campus
//! serve`, and PostgreSQL through `psql` (trust auth).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

/// `cmd` without any of this environment's `CAMPUS_*` settings: the test
/// says everything it means (a `CAMPUS_DATABASE_URL` of the developer's
/// shell must not turn an embedded test into a PostgreSQL one).
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CAMPUS_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// The `campus` binary under test, run in `work`, with a clean environment
/// ([`clean_env`]).
pub fn campus_in(work: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_campus"));
    clean_env(&mut c).current_dir(work);
    c
}

/// `campus serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Runs `cmd` (a `campus` command whose global flags are set) as
    /// `--log-format json serve --listen 127.0.0.1:0 <extra>`, and waits for
    /// the server to say where it listens.
    pub fn start(mut cmd: Command, extra: &[&str]) -> Self {
        cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn campus serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let mut server = Self {
            child,
            base: String::new(),
            log: log.clone(),
        };
        let (tx, rx) = mpsc::channel();
        // Drains stderr for the server's whole life, so that it never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "campus is serving"
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = tx.send(addr.to_owned());
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.base = format!("http://{addr}"),
            Err(_) => panic!("campus serve did not start:\n{}", server.log()),
        }
        server
    }

    /// Stops the server as an operator or a service manager does
    /// (`SIGTERM`) and waits for it to exit (at most 30 s): whether it
    /// exited with success.
    pub fn stop(mut self) -> bool {
        use rustix::process::{Pid, Signal, kill_process};
        kill_process(Pid::from_child(&self.child), Signal::TERM).expect("SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("CAMPUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `postgres://<user>@<host:port of the admin URL>/<database>` (trust auth).
pub fn pg_url(user: &str, database: &str) -> String {
    let admin = pg_admin_url();
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    format!("postgres://{user}@{host}/{database}")
}

/// Drops a test database made by [`fresh_pg_database`] and what its tenants
/// made outside it (their databases and roles are cluster-wide). Best effort.
pub fn drop_test_database(database: &str) {
    let listed = psql(
        &pg_url("postgres", database),
        "SELECT 't_' || replace(id, '-', '') FROM campus_control.tenants",
    );
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|n| n.len() == 34 && n[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    // One statement per line (psql -f): DROP DATABASE takes no transaction.
    let mut script = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE);\n");
    for n in &names {
        script.push_str(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE);\n"));
    }
    for n in &names {
        script.push_str(&format!("DROP ROLE IF EXISTS \"{n}\";\n"));
    }
    let _ = psql(&pg_admin_url(), &script);
}

/// Runs SQL statements through `psql`, one transaction each.
pub fn psql(url: &str, script: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args([url, "-X", "-q", "-At", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write to psql");
    child.wait_with_output().expect("psql")
}

pub fn psql_ok(url: &str, script: &str) -> String {
    let out = psql(url, &format!("\\set ON_ERROR_STOP 1\n{script}"));
    assert!(
        out.status.success(),
        "psql {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh database owned by `campus_test_owner`, served to `campus_test_app` (both
/// made if missing): `(database, owner URL, app URL)`.
pub fn fresh_pg_database() -> (String, String, String) {
    psql_ok(
        &pg_admin_url(),
        "DO $$ BEGIN CREATE ROLE campus_test_owner LOGIN CREATEROLE CREATEDB;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE campus_test_app LOGIN NOINHERIT;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    );
    let database = format!("campus_test_{}", tenancy::TenantId::new().simple());
    psql_ok(
        &pg_admin_url(),
        &format!("CREATE DATABASE {database} OWNER campus_test_owner;"),
    );
    let owner = pg_url("campus_test_owner", &database);
    let app = pg_url("campus_test_app", &database);
    (database, owner, app)
}
