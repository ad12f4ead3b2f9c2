//! `upload`: the memory of a real `campus serve` while a large lesson video
//! streams in. Spawns the binary (embedded SQLite, local files in a temporary
//! data directory), makes a tenant, a course and a lesson, then uploads a
//! small and a large generated MP4 (an `ftyp` box, then pseudo-random bytes,
//! made on the fly as the body streams: never held whole) while sampling the
//! server's resident set (`VmRSS` of `/proc/<pid>/status`) every 50 ms.
//! Streaming holds: the peak does not grow with the file. With `--rounds N`
//! the pair of uploads is repeated N times (to tell memory kept by the
//! allocator from memory that keeps growing).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

pub(crate) const TOKEN: &str = "bench-operator-token-0123456789";
pub(crate) const PASSWORD: &str = "correct horse battery";
const MB: u64 = 1024 * 1024;
/// The size of each piece of the generated body.
const PIECE: usize = 64 * 1024;

/// `campus serve`, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `campus` binary: `--campus PATH`, else the one next to this binary
/// (`cargo build --release -p campus -p campus-bench` puts both in
/// `target/release`).
pub(crate) fn campus_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
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

async fn start_server(binary: &PathBuf, http: &reqwest::Client) -> Result<Server> {
    start_server_with(binary, http, "").await
}

/// `campus serve` with `config` as its `campus.toml`.
pub(crate) async fn start_server_with(
    binary: &PathBuf,
    http: &reqwest::Client,
    config: &str,
) -> Result<Server> {
    let data = tempfile::tempdir()?;
    std::fs::write(data.path().join("campus.toml"), config)?;
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
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", server.base)).send().await
            && r.status().is_success()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("campus serve did not answer /healthz within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident set of `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
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
fn sample_peak(pid: u32, running: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            if let Some(r) = rss(pid) {
                peak.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// An MP4-looking body of `len` bytes, generated piece by piece as it is sent.
fn body(len: u64) -> reqwest::Body {
    const FTYP: &[u8] = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom";
    let state = (0u64, 0x9e37_79b9_7f4a_7c15u64);
    let stream = futures_util::stream::unfold(state, move |(sent, mut x)| async move {
        if sent >= len {
            return None;
        }
        let n = (len - sent).min(PIECE as u64) as usize;
        let mut piece = Vec::with_capacity(n);
        if sent == 0 {
            piece.extend_from_slice(&FTYP[..FTYP.len().min(n)]);
        }
        while piece.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let take = (n - piece.len()).min(8);
            piece.extend_from_slice(&x.to_le_bytes()[..take]);
        }
        Some((Ok::<_, std::io::Error>(piece), (sent + n as u64, x)))
    });
    reqwest::Body::wrap_stream(stream)
}

struct Figures {
    mb: u64,
    before: u64,
    peak: u64,
    after: u64,
    elapsed: Duration,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MB as f64)
}

pub async fn run(mb: u64, rounds: usize, campus: Option<&PathBuf>) -> Result<()> {
    let binary = campus_binary(campus)?;
    let http = reqwest::Client::new();
    let server = start_server(&binary, &http).await?;
    let pid = server.child.id();
    println!(
        "server: {} (pid {pid}), embedded SQLite, files on local disk",
        binary.display()
    );

    let res = http
        .post(format!("{}/admin/api/v1/tenants", server.base))
        .bearer_auth(TOKEN)
        .json(&json!({
            "slug": "bench",
            "name": "Bench",
            "admin": { "email": "admin@bench.test", "name": "Admin", "password": PASSWORD }
        }))
        .send()
        .await?;
    ensure!(res.status().as_u16() == 201, "provision: {}", res.status());
    let res = http
        .post(format!("{}/api/v1/auth/login", server.base))
        .header("X-Tenant", "bench")
        .json(&json!({ "email": "admin@bench.test", "password": PASSWORD }))
        .send()
        .await?;
    ensure!(res.status().is_success(), "login: {}", res.status());
    let token = res.json::<Value>().await?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.base))
            .header("X-Tenant", "bench")
            .bearer_auth(&token)
            .json(&body)
    };
    let id = |v: Value| v["id"].as_str().map(str::to_owned).context("id");
    let course = id(post(
        "/api/v1/courses",
        json!({ "title": "Films", "description": "big ones", "published": true }),
    )
    .send()
    .await?
    .json()
    .await?)?;
    let lesson = id(post(
        &format!("/api/v1/courses/{course}/lessons"),
        json!({ "title": "Long" }),
    )
    .send()
    .await?
    .json()
    .await?)?;
    let content = format!(
        "{}/api/v1/courses/{course}/lessons/{lesson}/content",
        server.base
    );

    // A warm-up upload of 1 MB, so the baseline includes what the first
    // upload allocates once (the tenant's storage handle, TLS-free HTTP buffers…).
    let mut all = Vec::new();
    let sizes = std::iter::once(1).chain(
        (0..rounds)
            .flat_map(|_| [mb.div_ceil(10).max(1), mb])
            .collect::<Vec<_>>(),
    );
    for size in sizes {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss(pid).context("the server's VmRSS")?;
        let running = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(before));
        sample_peak(pid, running.clone(), peak.clone());
        let t0 = Instant::now();
        let res = http
            .put(&content)
            .header("X-Tenant", "bench")
            .header("content-type", "video/mp4")
            .header("content-length", size * MB)
            .bearer_auth(&token)
            .body(body(size * MB))
            .send()
            .await?;
        let elapsed = t0.elapsed();
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        ensure!(
            status.as_u16() == 204,
            "upload of {size} MB: {status} {text}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.store(false, Ordering::Relaxed);
        let after = rss(pid).context("the server's VmRSS")?;
        // The stored length, as the server reports it.
        let res = http
            .get(&content)
            .header("X-Tenant", "bench")
            .header("range", "bytes=0-0")
            .bearer_auth(&token)
            .send()
            .await?;
        let range = res
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        ensure!(
            range == format!("bytes 0-0/{}", size * MB),
            "stored length: {range}"
        );
        if size == 1 {
            continue;
        }
        all.push(Figures {
            mb: size,
            before,
            peak: peak.load(Ordering::Relaxed).max(after),
            after,
            elapsed,
        });
    }

    println!(
        "\n| upload | RSS before | RSS peak | peak − before | RSS after | time | throughput |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for f in &all {
        println!(
            "| {} MiB | {} | {} | {} | {} | {:.1} s | {:.0} MiB/s |",
            f.mb,
            mib(f.before),
            mib(f.peak),
            mib(f.peak.saturating_sub(f.before)),
            mib(f.after),
            f.elapsed.as_secs_f64(),
            f.mb as f64 / f.elapsed.as_secs_f64()
        );
    }
    Ok(())
}
