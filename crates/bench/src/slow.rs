//! `slow-clients`: the real `campus serve` (embedded SQLite, its default
//! connection limits) while 1,000 slow connections (slowloris) are held open
//! against it, on loopback. Half never finish their headers (a header line
//! every 2 s), half trickle a JSON body (1 byte/s) to an authenticated route
//! of tenant A; each is reopened as soon as the server closes it, so that the
//! number stays up for the whole measurement, as an attacker would keep it.
//!
//! Measured, in the same run: `/healthz` and tenant B's authenticated
//! `GET /api/v1/courses` (one each per 25 ms), first with no slow connection,
//! then while the slow ones are open — p50/p99 and their ratio; how many slow
//! connections the server closed, how (closed, or 408) and after how long;
//! the server's resident set (`VmRSS`) before, at its peak and after.
//!
//! Beside them, `--packet-clients` connections (default 20) send A a JSON
//! body one byte per TCP packet, 250 bytes a second (under the 500 B/s
//! minimum rate, so each is cut after about 60 s): each piece of a body the
//! server reads is a separate chunk, which is what once made a body held
//! piece by piece cost a whole read buffer per byte.
//!
//! A's rate limits are raised out of the way in `campus.toml`, so that its
//! trickles reach the body reading rather than a 429 (B keeps the defaults).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Options, PASSWORD, Server, TOKEN, campus_binary, rss};
use crate::{ms, pct};

const EVERY: Duration = Duration::from_millis(25);

const CONFIG: &str = "[rate_limits.enterprise]
requests_per_second = 1000000
burst = 1000000
user_requests_per_second = 1000000
user_burst = 1000000
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Headers,
    Body,
    Packets,
}

/// How often a `Packets` connection sends its next byte.
const PACKET_EVERY: Duration = Duration::from_millis(4);

/// How one slow connection ended.
struct Ended {
    kind: Kind,
    lived: Duration,
    /// The server's status line, if it answered before closing.
    status: Option<u16>,
}

pub async fn run(
    connections: usize,
    packets: usize,
    duration: Duration,
    campus: Option<&PathBuf>,
) -> Result<()> {
    ensure!(
        connections <= 5000,
        "--connections: at most 5000 (loopback, one machine)"
    );
    ensure!(
        packets <= 200,
        "--packet-clients: at most 200 (each sends 250 packets a second)"
    );
    ensure!(
        duration <= Duration::from_secs(120),
        "--duration: at most 120 s"
    );
    let binary = campus_binary(campus)?;
    let http = reqwest::Client::new();
    let server = Server::start(
        &binary,
        &http,
        &Options {
            config: CONFIG.to_owned(),
            ..Options::default()
        },
    )
    .await?;
    let pid = server.child.id();
    let base = server.base.clone();
    println!(
        "server: {} (pid {pid}), embedded SQLite, default connection limits (header 10 s, body 30 s + 500 B/s, idle 60 s)",
        binary.display()
    );
    let a = tenant(&http, &base, "attacker", "enterprise").await?;
    let b = tenant(&http, &base, "bystander", "standard").await?;
    for i in 0..5 {
        let res = http
            .post(format!("{base}/api/v1/courses"))
            .header("X-Tenant", &b.0)
            .bearer_auth(&b.1)
            .json(&json!({ "title": format!("Course {i}"), "description": "d", "published": true }))
            .send()
            .await?;
        ensure!(res.status().is_success(), "B's course: {}", res.status());
    }

    // Warm-up, then the baseline.
    measure(&base, &b, Duration::from_secs(2)).await?;
    let rss_before = rss(pid).context("VmRSS")?;
    let alone = measure(&base, &b, duration).await?;

    // The slow connections, on a runtime of their own.
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Mutex::new(Vec::<Ended>::new()));
    let started = Instant::now();
    let slow = {
        let (stop, open, ended, base, a) = (
            stop.clone(),
            open.clone(),
            ended.clone(),
            base.clone(),
            a.clone(),
        );
        std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(hold_slow(connections, packets, base, a, stop, open, ended))
        })
    };
    // Wait until they are all open (at most 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while open.load(Ordering::Relaxed) < connections + packets && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp = started.elapsed();
    let peak = Arc::new(AtomicU64::new(0));
    let min_open = Arc::new(AtomicUsize::new(usize::MAX));
    let sampling = Arc::new(AtomicBool::new(true));
    {
        let (peak, min_open, sampling, open) = (
            peak.clone(),
            min_open.clone(),
            sampling.clone(),
            open.clone(),
        );
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(r) = rss(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                min_open.fetch_min(open.load(Ordering::Relaxed), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let ended_before = ended.lock().map(|e| e.len()).unwrap_or(0);
    let under = measure(&base, &b, duration).await?;
    sampling.store(false, Ordering::Relaxed);
    let ended_during = ended.lock().map(|e| e.len()).unwrap_or(0) - ended_before;
    let open_at_end = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || slow.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the slow clients' thread panicked"))??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss(pid).context("VmRSS")?;

    let row = |what: &str, l: &[Duration]| {
        println!(
            "| {what} | {} | {} | {} | {} |",
            l.len(),
            ms(pct(l, 50.0)),
            ms(pct(l, 99.0)),
            ms(*l.last().unwrap_or(&Duration::ZERO))
        );
    };
    println!(
        "\n{} slow connections ({} never finishing headers, {} trickling bodies, {packets} sending \
         bodies in 1-byte packets) opened in {}; during the {} measurement at least {} of them were \
         open (at its end {open_at_end}), and the server closed {ended_during}",
        connections + packets,
        connections.div_ceil(2),
        connections / 2,
        crate::secs(ramp),
        crate::secs(duration),
        min_open.load(Ordering::Relaxed),
    );
    println!("\n| request | n | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    row("`/healthz`, alone", &alone.healthz);
    row("`/healthz`, slow clients open", &under.healthz);
    row("B `GET /api/v1/courses`, alone", &alone.b);
    row("B `GET /api/v1/courses`, slow clients open", &under.b);
    let ratio = |u: &[Duration], a: &[Duration], p: f64| {
        pct(u, p).as_secs_f64() / pct(a, p).as_secs_f64().max(1e-9)
    };
    println!(
        "\nratios (slow clients open / alone): /healthz p50 {:.2}x p99 {:.2}x; B p50 {:.2}x p99 {:.2}x",
        ratio(&under.healthz, &alone.healthz, 50.0),
        ratio(&under.healthz, &alone.healthz, 99.0),
        ratio(&under.b, &alone.b, 50.0),
        ratio(&under.b, &alone.b, 99.0)
    );
    println!(
        "failures: /healthz {} alone, {} with slow clients; B {} alone, {} with slow clients",
        alone.failed_healthz, under.failed_healthz, alone.failed_b, under.failed_b
    );

    let ended = std::mem::take(&mut *ended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    println!(
        "\n| slow connections | closed by the server | answered first | lifetime p50 | lifetime max |"
    );
    println!("| --- | ---: | --- | ---: | ---: |");
    for (kind, name) in [
        (Kind::Headers, "never finishing headers"),
        (Kind::Body, "trickling a body at 1 B/s"),
        (Kind::Packets, "a body in 1-byte packets, 250 B/s"),
    ] {
        let mut lived: Vec<Duration> = ended
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.lived)
            .collect();
        lived.sort();
        let mut statuses: Vec<String> = Vec::new();
        let none = ended
            .iter()
            .filter(|e| e.kind == kind && e.status.is_none())
            .count();
        if none > 0 {
            statuses.push(format!("nothing ×{none}"));
        }
        for code in [408u16, 413, 429, 503, 400] {
            let n = ended
                .iter()
                .filter(|e| e.kind == kind && e.status == Some(code))
                .count();
            if n > 0 {
                statuses.push(format!("{code} ×{n}"));
            }
        }
        println!(
            "| {name} | {} | {} | {} | {} |",
            lived.len(),
            statuses.join(", "),
            crate::secs(pct(&lived, 50.0)),
            crate::secs(*lived.last().unwrap_or(&Duration::ZERO))
        );
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    println!(
        "\nserver VmRSS: {} before, {} peak with slow clients open, {} 2 s after they left",
        mib(rss_before),
        mib(peak.load(Ordering::Relaxed).max(rss_before)),
        mib(rss_after)
    );
    Ok(())
}

/// Makes a tenant on `plan` and logs its admin in: `(slug, token)`.
async fn tenant(
    http: &reqwest::Client,
    base: &str,
    slug: &str,
    plan: &str,
) -> Result<(String, String)> {
    let email = format!("admin@{slug}.test");
    let res = http
        .post(format!("{base}/admin/api/v1/tenants"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "slug": slug, "name": slug, "plan": plan,
            "admin": { "email": email, "name": "Admin", "password": PASSWORD }
        }))
        .send()
        .await?;
    ensure!(
        res.status().as_u16() == 201,
        "provision {slug}: {}",
        res.status()
    );
    let res = http
        .post(format!("{base}/api/v1/auth/login"))
        .header("X-Tenant", slug)
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await?;
    ensure!(res.status().is_success(), "login: {}", res.status());
    let token = res.json::<Value>().await?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    Ok((slug.to_owned(), token))
}

#[derive(Default)]
struct Latencies {
    healthz: Vec<Duration>,
    b: Vec<Duration>,
    failed_healthz: usize,
    failed_b: usize,
}

/// `/healthz` and B's course list, one each per [`EVERY`], on a thread and
/// runtime of their own (as another machine would).
async fn measure(base: &str, b: &(String, String), duration: Duration) -> Result<Latencies> {
    let (base, b) = (base.to_owned(), b.clone());
    let thread = std::thread::spawn(move || -> Result<Latencies> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?;
                let mut l = Latencies::default();
                let end = Instant::now() + duration;
                let mut tick = tokio::time::interval(EVERY);
                while Instant::now() < end {
                    tick.tick().await;
                    let t0 = Instant::now();
                    match client.get(format!("{base}/healthz")).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            l.healthz.push(t0.elapsed());
                        }
                        _ => l.failed_healthz += 1,
                    }
                    let t0 = Instant::now();
                    match client
                        .get(format!("{base}/api/v1/courses"))
                        .header("X-Tenant", &b.0)
                        .bearer_auth(&b.1)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            l.b.push(t0.elapsed());
                        }
                        _ => l.failed_b += 1,
                    }
                }
                l.healthz.sort();
                l.b.sort();
                Ok(l)
            })
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

/// Keeps `n` slow connections open until `stop`, reopening each one the
/// server closes.
async fn hold_slow(
    n: usize,
    packets: usize,
    base: String,
    a: (String, String),
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    ended: Arc<Mutex<Vec<Ended>>>,
) -> Result<()> {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n + packets {
        let kind = if i >= n {
            Kind::Packets
        } else if i % 2 == 0 {
            Kind::Headers
        } else {
            Kind::Body
        };
        let (addr, a, stop, open, ended) = (
            addr.clone(),
            a.clone(),
            stop.clone(),
            open.clone(),
            ended.clone(),
        );
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let status = match one_slow(kind, &addr, &a, &stop, &open).await {
                    Ok(s) => s,
                    Err(_) => {
                        // Refused or reset before it began: try again shortly.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut e) = ended.lock() {
                    e.push(Ended {
                        kind,
                        lived: t0.elapsed(),
                        status,
                    });
                }
            }
        });
        // Open them in batches, as a client machine would.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while set.join_next().await.is_some() {}
    if stop.load(Ordering::Relaxed) {
        Ok(())
    } else {
        bail!("the slow clients stopped early")
    }
}

/// One slow connection, until the server closes it (or `stop`): the status
/// the server answered before closing, if any.
async fn one_slow(
    kind: Kind,
    addr: &str,
    a: &(String, String),
    stop: &AtomicBool,
    open: &AtomicUsize,
) -> Result<Option<u16>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // One write, one packet: the server reads each byte as a chunk of its own.
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (first, every): (String, Duration) = match kind {
        Kind::Headers => (
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\n".into(),
            Duration::from_secs(2),
        ),
        Kind::Body => (
            format!(
                "POST /api/v1/courses HTTP/1.1\r\nHost: localhost\r\nX-Tenant: {}\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{{",
                a.0, a.1
            ),
            Duration::from_secs(1),
        ),
        Kind::Packets => (
            format!(
                "POST /api/v1/courses HTTP/1.1\r\nHost: localhost\r\nX-Tenant: {}\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
                a.0, a.1
            ),
            PACKET_EVERY,
        ),
    };
    wr.write_all(first.as_bytes()).await?;
    open.fetch_add(1, Ordering::Relaxed);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut i = 0u64;
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                i += 1;
                let more = match kind {
                    Kind::Headers => format!("X-Slow-{i}: a\r\n"),
                    Kind::Body | Kind::Packets => " ".into(),
                };
                // A failed write means the server is gone: read what it said.
                let _ = wr.write_all(more.as_bytes()).await;
            }
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
    let status = std::str::from_utf8(got.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok());
    Ok(status)
}
