//! The real `campus serve`, run as a child process for the scenarios that
//! measure it from outside (`upload`, `memory`, `burst`): its address, its
//! resident set read from `/proc`, and its log kept in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

pub const TOKEN: &str = "bench-operator-token-0123456789";
pub const PASSWORD: &str = "correct horse battery";
pub const MB: u64 = 1024 * 1024;

/// `campus serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start the server.
#[derive(Default)]
pub struct Options {
    /// Written to `campus.toml` in the server's working directory.
    pub config: String,
    /// More command-line arguments, before `serve`.
    pub global_args: Vec<String>,
}

/// The `campus` binary: `--campus PATH`, else the one next to this binary
/// (`cargo build --release -p campus -p campus-bench` puts both in
/// `target/release`).
pub fn campus_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .join("campus"),
    };
    ensure!(
        path.is_file(),
        "no campus binary at {} (build it with `cargo build --release -p campus -p campus-bench`, or pass --campus PATH)",
        path.display()
    );
    Ok(path)
}

impl Server {
    /// Starts `binary` on a free loopback port in a fresh data directory and
    /// waits for `/healthz`. Its log goes to `<data>/campus.log`.
    pub async fn start(binary: &Path, http: &reqwest::Client, opts: &Options) -> Result<Self> {
        let data = tempfile::tempdir()?;
        std::fs::write(data.path().join("campus.toml"), &opts.config)?;
        let log = std::fs::File::create(data.path().join("campus.log"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(binary);
        for (var, _) in std::env::vars() {
            if var.starts_with("CAMPUS_") {
                cmd.env_remove(var);
            }
        }
        let child = cmd
            .current_dir(data.path())
            .env("CAMPUS_OPERATOR_TOKEN", TOKEN)
            .env("CAMPUS_LOG_FORMAT", "json")
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(&opts.global_args)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", server.base)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "campus serve did not answer /healthz within 60 s; its log:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("campus.log")).unwrap_or_default()
    }

    /// Its resident set now, in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss(self.pid()).context("the server's VmRSS")
    }

    /// Provisions `slug` through the control plane (its admin
    /// `admin@<slug>.test`, password [`PASSWORD`]). Retries what the server
    /// asks to be retried.
    pub async fn provision(
        &self,
        http: &reqwest::Client,
        slug: &str,
        plan: &str,
        isolation: &str,
    ) -> Result<()> {
        let body = json!({
            "slug": slug, "name": slug, "plan": plan, "isolation": isolation,
            "admin": { "email": format!("admin@{slug}.test"), "name": "Admin", "password": PASSWORD }
        });
        let res = retrying(|| {
            http.post(format!("{}/admin/api/v1/tenants", self.base))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", format!("bench-{slug}"))
                .json(&body)
        })
        .await?;
        ensure!(
            res.status().as_u16() == 201,
            "provision {slug}: {}",
            res.status()
        );
        Ok(())
    }

    /// [`provision`](Self::provision), then logs its admin in: the admin's token.
    pub async fn tenant(
        &self,
        http: &reqwest::Client,
        slug: &str,
        plan: &str,
        isolation: &str,
    ) -> Result<String> {
        self.provision(http, slug, plan, isolation).await?;
        let email = format!("admin@{slug}.test");
        let res = retrying(|| {
            http.post(format!("{}/api/v1/auth/login", self.base))
                .header("X-Tenant", slug)
                .json(&json!({ "email": email, "password": PASSWORD }))
        })
        .await?;
        ensure!(res.status().is_success(), "login {slug}: {}", res.status());
        Ok(res.json::<Value>().await?["token"]
            .as_str()
            .context("token")?
            .to_owned())
    }
}

/// Sends what `make` builds until it is neither 429 nor 503, waiting what
/// `Retry-After` says (at most 50 tries).
pub async fn retrying(make: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
    for _ in 0..50 {
        let res = make().send().await?;
        if !matches!(res.status().as_u16(), 429 | 503) {
            return Ok(res);
        }
        let wait = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 10);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    bail!("still refused after 50 tries")
}

/// The resident set of `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Samples the resident set of `pid` every 50 ms while `running`; the peak.
pub fn sample_peak(pid: u32, running: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            if let Some(r) = rss(pid) {
                peak.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MB as f64)
}
