//! `lifecycle`: one tenant's whole life on a real `campus serve` over
//! PostgreSQL — --rows rows (courses, each with its audit event) and --mb
//! MiB of lesson videos — exported, purged and imported with the real
//! `campus` CLI (time and the CLI's peak resident set, against the archive's
//! size), then moved `schema` → `pool` → `schema` while a reader and a
//! writer keep going: the freeze as the move reports it and as the writer
//! sees it (first to last refused write), and the reader's latency during
//! the move against the same reader's before it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::process::{MB, Options, Server, campus_binary, mib, sample_peak};
use crate::{APP, Args, Bench, OWNER};

/// The `campus` CLI on the server's data directory and database.
struct Cli<'a> {
    binary: &'a Path,
    server: &'a Server,
    global: &'a [String],
}

/// What one CLI run took.
struct Run {
    out: Value,
    elapsed: Duration,
    peak_rss: u64,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = Command::new(self.binary);
        for (var, _) in std::env::vars() {
            if var.starts_with("CAMPUS_") {
                cmd.env_remove(var);
            }
        }
        let t0 = Instant::now();
        let child = cmd
            .current_dir(self.server.data.path())
            .arg("--data-dir")
            .arg(self.server.data.path().join("data"))
            .args(self.global)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("campus")?;
        let running = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(0));
        sample_peak(child.id(), running.clone(), peak.clone());
        let out = child.wait_with_output()?;
        running.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        ensure!(
            out.status.success(),
            "campus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok(Run {
            out,
            elapsed,
            peak_rss: peak.load(Ordering::Relaxed),
        })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(bench: &Bench, args: &Args) -> Result<()> {
    let binary = campus_binary(args.campus.as_ref())?;
    let http = reqwest::Client::new();
    let global = vec![
        "--database-url".to_owned(),
        bench.url(APP, &bench.database),
        "--owner-database-url".to_owned(),
        bench.url(OWNER, &bench.database),
    ];
    let server = Server::start(
        &binary,
        &http,
        &Options {
            // Seeding is not what is measured: no rate limit in its way.
            config: "[rate_limits.enterprise]\nrequests_per_second = 100000\nburst = 100000\n\
                     user_requests_per_second = 100000\nuser_burst = 100000\n"
                .into(),
            global_args: global.clone(),
        },
    )
    .await?;
    let cli = Cli {
        binary: &binary,
        server: &server,
        global: &global,
    };
    println!(
        "server: {} (pid {}), PostgreSQL, a `schema` tenant with {} courses and {} MiB of files",
        binary.display(),
        server.pid(),
        args.rows,
        args.mb
    );
    let token = server
        .tenant(&http, "bench", "enterprise", "schema")
        .await?;
    let base = server.base.clone();
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .header("X-Tenant", "bench")
            .bearer_auth(&token)
    };

    // The rows: courses, --setup-concurrency at a time.
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.setup_concurrency {
        let (http, base, token, next) = (http.clone(), base.clone(), token.clone(), next.clone());
        let rows = args.rows as u64;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= rows {
                    return Ok::<_, anyhow::Error>(());
                }
                let res = http
                    .post(format!("{base}/api/v1/courses"))
                    .header("X-Tenant", "bench")
                    .bearer_auth(&token)
                    .json(&json!({ "title": format!("Course {i}"), "description": "a course of the lifecycle bench", "published": true }))
                    .send()
                    .await?;
                ensure!(res.status().as_u16() == 201, "course {i}: {}", res.status());
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    println!(
        "seeded {} courses in {:.1} s",
        args.rows,
        t0.elapsed().as_secs_f64()
    );

    // The files: videos of at most 128 MiB, one per lesson.
    let t0 = Instant::now();
    let course = api(reqwest::Method::POST, "/api/v1/courses")
        .json(&json!({ "title": "Films", "description": "big", "published": true }))
        .send()
        .await?
        .json::<Value>()
        .await?["id"]
        .as_str()
        .context("course id")?
        .to_owned();
    let mut left = args.mb * MB;
    let mut n = 0;
    while left > 0 {
        let size = left.min(128 * MB);
        left -= size;
        n += 1;
        let lesson = api(
            reqwest::Method::POST,
            &format!("/api/v1/courses/{course}/lessons"),
        )
        .json(&json!({ "title": format!("Film {n}") }))
        .send()
        .await?
        .json::<Value>()
        .await?["id"]
            .as_str()
            .context("lesson id")?
            .to_owned();
        let res = api(
            reqwest::Method::PUT,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/content"),
        )
        .header("content-type", "video/mp4")
        .body(crate::upload::body(size))
        .send()
        .await?;
        ensure!(res.status().is_success(), "upload: {}", res.status());
    }
    println!(
        "uploaded {n} files ({} MiB) in {:.1} s",
        args.mb,
        t0.elapsed().as_secs_f64()
    );

    // Export, purge, import.
    let archive = server.data.path().join("bench.campus");
    let archive_s = archive.display().to_string();
    let export = cli.run(&["tenant", "export", "bench", "-o", &archive_s, "--json"])?;
    let size = std::fs::metadata(&archive)?.len();
    let rows = export.out["rows"].as_u64().unwrap_or(0);
    cli.run(&["tenant", "delete", "bench", "--purge"])?;
    let import = cli.run(&["tenant", "import", &archive_s, "--json"])?;
    ensure!(
        import.out["rows"].as_u64() == Some(rows),
        "import: {}",
        import.out
    );
    println!();
    println!("| step | rows | archive | wall time | throughput | CLI peak RSS | RSS / archive |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (what, r) in [("export", &export), ("import", &import)] {
        println!(
            "| {what} | {rows} | {} | {:.1} s | {:.0} MiB/s | {} | {:.3} |",
            mib(size),
            r.elapsed.as_secs_f64(),
            size as f64 / MB as f64 / r.elapsed.as_secs_f64(),
            mib(r.peak_rss),
            r.peak_rss as f64 / size as f64
        );
    }
    // The admin's token came back with the tenant (a restore keeps ids and sessions).

    // Moves, with a reader and a writer going.
    println!();
    println!(
        "| move | rows | freeze (move's own figure) | writes refused | refused window (client) | reader p50 / p99 before | during | p99 ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for to in ["pool", "schema"] {
        let reads = |stop: Arc<AtomicBool>| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let res = http
                        .get(format!("{base}/api/v1/courses?limit=20"))
                        .header("X-Tenant", "bench")
                        .bearer_auth(&token)
                        .send()
                        .await?;
                    ensure!(res.status().is_success(), "read: {}", res.status());
                    let _ = res.bytes().await?;
                    lat.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                lat.sort();
                Ok::<_, anyhow::Error>(lat)
            })
        };
        // Before: the same reader, alone.
        let stop = Arc::new(AtomicBool::new(false));
        let before = reads(stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let before = before.await??;
        // During.
        let stop = Arc::new(AtomicBool::new(false));
        let during = reads(stop.clone());
        let writer = {
            let (http, base, token, stop) =
                (http.clone(), base.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut refused, mut first, mut last) = (0u64, None, None);
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let res = http
                        .post(format!("{base}/api/v1/courses"))
                        .header("X-Tenant", "bench")
                        .bearer_auth(&token)
                        .json(&json!({ "title": "during the move", "description": "d" }))
                        .send()
                        .await?;
                    match res.status().as_u16() {
                        201 => {}
                        503 => {
                            refused += 1;
                            let at = t0.elapsed();
                            first.get_or_insert(at);
                            last = Some(at);
                        }
                        s => anyhow::bail!("a write during the move: {s}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let window = match (first, last) {
                    (Some(a), Some(b)) => b - a,
                    _ => Duration::ZERO,
                };
                Ok::<_, anyhow::Error>((refused, window))
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let moved = cli.run(&["tenant", "move", "bench", "--isolation", to, "--json"])?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let during = during.await??;
        let (refused, window) = writer.await??;
        let p99 = |v: &[Duration]| percentile(v, 0.99);
        println!(
            "| {} → {to} | {} | {} ms | {refused} | {} | {} / {} | {} / {} | {:.2} |",
            moved.out["from_isolation"].as_str().unwrap_or("?"),
            moved.out["rows"],
            moved.out["freeze_ms"],
            ms(window),
            ms(percentile(&before, 0.5)),
            ms(p99(&before)),
            ms(percentile(&during, 0.5)),
            ms(p99(&during)),
            p99(&during).as_secs_f64() / p99(&before).as_secs_f64().max(1e-9),
        );
    }
    println!(
        "\nfiles do not move in a move (the object store is keyed by tenant id): the freeze is the \
         wait for every node to see it (1 s) plus the copy of the rows"
    );
    Ok(())
}
