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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::process::{MB, Options, PASSWORD, Server, TOKEN, campus_binary, mib, rss, sample_peak};

/// The size of each piece of the generated body.
const PIECE: usize = 64 * 1024;

/// An MP4-looking body of `len` bytes, generated piece by piece as it is sent.
pub(crate) fn body(len: u64) -> reqwest::Body {
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

pub async fn run(mb: u64, rounds: usize, campus: Option<&PathBuf>) -> Result<()> {
    let binary = campus_binary(campus)?;
    let http = reqwest::Client::new();
    let server = Server::start(&binary, &http, &Options::default()).await?;
    let pid = server.pid();
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
