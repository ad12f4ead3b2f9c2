//! Scenarios that drive the real `campus serve` over HTTP from outside the
//! process, on the embedded default or on PostgreSQL:
//!
//! * `memory` — the server's resident set at idle, after provisioning N
//!   tenants (each: create, log in, `--courses` courses) and while
//!   `--clients` clients read course lists spread over every tenant;
//! * `burst` — a write burst over many tenants in which half the clients give
//!   up mid-request (what left SQLite tenants locked), then one write per
//!   tenant on the quiet server: how many fail, and whether every
//!   acknowledged write is still there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::process::{Options, Server, campus_binary, mib, sample_peak};
use crate::{APP, Args, Bench, OWNER, ms, pct};

/// Where the server keeps its tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Schema,
    Pool,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "embedded" | "sqlite" => Some(Self::Embedded),
            "schema" => Some(Self::Schema),
            "pool" => Some(Self::Pool),
            _ => None,
        }
    }

    fn isolation(self) -> &'static str {
        match self {
            Backend::Embedded => "database",
            Backend::Schema => "schema",
            Backend::Pool => "pool",
        }
    }
}

/// Starts the server for `backend` (PostgreSQL: in the bench's database).
pub(crate) async fn start(
    args: &Args,
    bench: Option<&Bench>,
    http: &reqwest::Client,
    config: &str,
) -> Result<Server> {
    let binary: PathBuf = campus_binary(args.campus.as_ref())?;
    let mut opts = Options {
        config: config.to_owned(),
        ..Options::default()
    };
    if let Some(b) = bench {
        opts.global_args = vec![
            "--database-url".into(),
            b.url(APP, &b.database),
            "--owner-database-url".into(),
            b.url(OWNER, &b.database),
        ];
    }
    let server = Server::start(&binary, http, &opts).await?;
    println!(
        "server: {} (pid {}), {}",
        binary.display(),
        server.pid(),
        match args.backend {
            Backend::Embedded => "embedded SQLite, files on local disk".to_owned(),
            b => format!("PostgreSQL, `{}` tenants", b.isolation()),
        }
    );
    Ok(server)
}

/// Provisions `n` tenants `<prefix>-00000`… (`at_once` at a time), each
/// with its admin logged in and `courses` courses; their slugs and tokens.
async fn provision(
    server: &Arc<Server>,
    http: &reqwest::Client,
    args: &Args,
    prefix: &str,
    n: usize,
    courses: usize,
) -> Result<Vec<(String, String)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.setup_concurrency.min(n) {
        let (server, http, next, done) = (server.clone(), http.clone(), next.clone(), done.clone());
        let prefix = prefix.to_owned();
        let isolation = args.backend.isolation();
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let slug = format!("{prefix}-{i:05}");
                let token = server.tenant(&http, &slug, "standard", isolation).await?;
                for c in 0..courses {
                    let res = crate::process::retrying(|| {
                        http.post(format!("{}/api/v1/courses", server.base))
                            .header("X-Tenant", &slug)
                            .bearer_auth(&token)
                            .json(&json!({
                                "title": format!("Course {c} of {slug}"),
                                "description": "A course with a description of ordinary length, \
                                                as a real organisation would write one.",
                                "published": true
                            }))
                    })
                    .await?;
                    ensure!(res.status().as_u16() == 201, "course: {}", res.status());
                }
                made.push((slug, token));
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % (n / 10).max(1) == 0 {
                    println!(
                        "  provisioned {d}/{n} in {:.0} s, server RSS {}",
                        t0.elapsed().as_secs_f64(),
                        mib(server.rss().unwrap_or(0))
                    );
                }
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        all.extend(r??);
    }
    all.sort();
    Ok(all)
}

/// `e`, with the server's log lines at `WARN` or `ERROR` (at most 20).
fn with_log(e: anyhow::Error, server: &Server) -> anyhow::Error {
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .take(20)
        .collect();
    e.context(format!("the server's log:\n{}", lines.join("\n")))
}

/// `memory`: RSS idle, after provisioning, under read load, after it.
pub async fn memory(args: &Args, bench: Option<&Bench>) -> Result<()> {
    let n = args.tenants.unwrap_or(1000);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let server = Arc::new(start(args, bench, &http, &args.server_config).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss()?;
    println!("RSS idle, no tenant: {}", mib(idle));

    let t0 = Instant::now();
    let tenants = Arc::new(
        provision(&server, &http, args, "mem", n, args.courses)
            .await
            .map_err(|e| with_log(e, &server))?,
    );
    let provisioned_in = t0.elapsed();
    // Let the allocator give back what provisioning's hashing used.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_provisioning = server.rss()?;
    println!(
        "provisioned {n} tenants ({} courses each) in {:.0} s; RSS {}",
        args.courses,
        provisioned_in.as_secs_f64(),
        mib(after_provisioning)
    );

    // Read load spread over every tenant: each client walks the tenants
    // from its own starting point, so that every tenant is touched.
    let running = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    sample_peak(server.pid(), running.clone(), peak.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let (server, http, tenants, ok, failed) = (
            server.clone(),
            http.clone(),
            tenants.clone(),
            ok.clone(),
            failed.clone(),
        );
        clients.spawn(async move {
            let mut i = c * 7919;
            let mut lat = Vec::new();
            while Instant::now() < end {
                let (slug, token) = &tenants[i % tenants.len()];
                i += 7;
                let t = Instant::now();
                let res = http
                    .get(format!("{}/api/v1/courses", server.base))
                    .header("X-Tenant", slug)
                    .bearer_auth(token)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = clients.join_next().await {
        lat.extend(r?);
    }
    lat.sort();
    running.store(false, Ordering::Relaxed);
    let under_load = peak.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss()?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "read load: {} clients for {} s over {n} tenants: {ok} ok ({:.0}/s), {failed} failed, p50 {}, p99 {}",
        args.clients,
        args.duration.as_secs(),
        ok as f64 / args.duration.as_secs_f64(),
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
    );
    println!(
        "\n| backend | tenants | RSS idle | after provisioning | peak under load | after load | peak ÷ idle |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {n} | {} | {} | {} | {} | {:.1}× |",
        args.backend.isolation(),
        mib(idle),
        mib(after_provisioning),
        mib(under_load),
        mib(after),
        under_load as f64 / idle.max(1) as f64
    );
    ensure!(failed == 0, "{failed} reads failed");
    Ok(())
}

/// Outcomes of the burst, by kind.
#[derive(Default)]
struct Tally {
    by_status: HashMap<u16, u64>,
    gave_up: u64,
    /// Acknowledged (201) course ids, by tenant index.
    acknowledged: Vec<(usize, String)>,
}

/// `burst`: the write burst with clients that give up, then one write per tenant.
pub async fn burst(args: &Args, bench: Option<&Bench>) -> Result<()> {
    let n = args.tenants.unwrap_or(100);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    // Rate limits out of the way: this measures the data plane, not the limits.
    // The given config first: its top-level keys must come before any table.
    let config = args.server_config.clone()
        + &["free", "standard", "enterprise"]
            .iter()
            .map(|p| {
                format!(
                    "[rate_limits.{p}]\nrequests_per_second = 1000000\nburst = 1000000\n\
                 user_requests_per_second = 1000000\nuser_burst = 1000000\n"
                )
            })
            .collect::<String>();
    let server = Arc::new(start(args, bench, &http, &config).await?);
    let tenants = Arc::new(
        provision(&server, &http, args, "burst", n, 0)
            .await
            .map_err(|e| with_log(e, &server))?,
    );
    println!(
        "burst: {} clients for {} s over {n} tenants; every other client gives up after 1-{} ms",
        args.clients,
        args.duration.as_secs(),
        args.give_up_ms
    );
    let end = Instant::now() + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let (server, http, tenants) = (server.clone(), http.clone(), tenants.clone());
        let give_up_ms = args.give_up_ms;
        clients.spawn(async move {
            let mut tally = Tally::default();
            let mut i = c;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ c as u64;
            while Instant::now() < end {
                let t = i % tenants.len();
                let (slug, token) = &tenants[t];
                i += 13;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut req = http
                    .post(format!("{}/api/v1/courses", server.base))
                    .header("X-Tenant", slug)
                    .bearer_auth(token)
                    .json(&json!({ "title": "Burst", "description": "a write in a burst" }));
                if c % 2 == 1 {
                    req = req.timeout(Duration::from_millis(1 + x % give_up_ms));
                }
                match req.send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        *tally.by_status.entry(status).or_default() += 1;
                        if status == 201 {
                            match res.json::<Value>().await {
                                Ok(v) => {
                                    if let Some(id) = v["id"].as_str() {
                                        tally.acknowledged.push((t, id.to_owned()));
                                    }
                                }
                                // The body was cut by our own timeout: not
                                // acknowledged as far as the client knows.
                                Err(_) => tally.gave_up += 1,
                            }
                        }
                    }
                    Err(_) => tally.gave_up += 1,
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(r) = clients.join_next().await {
        let t = r?;
        for (s, k) in t.by_status {
            *all.by_status.entry(s).or_default() += k;
        }
        all.gave_up += t.gave_up;
        all.acknowledged.extend(t.acknowledged);
    }
    let mut statuses: Vec<_> = all.by_status.iter().collect();
    statuses.sort();
    println!(
        "during the burst: {} gave up; answers by status: {}",
        all.gave_up,
        statuses
            .iter()
            .map(|(s, k)| format!("{s}: {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The quiet server: one write per tenant, each given 30 s.
    let mut failures = Vec::new();
    let mut lat = Vec::new();
    for (slug, token) in tenants.iter() {
        let t = Instant::now();
        let res = http
            .post(format!("{}/api/v1/courses", server.base))
            .header("X-Tenant", slug)
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .json(&json!({ "title": "After", "description": "one write on the quiet server" }))
            .send()
            .await;
        lat.push(t.elapsed());
        match res {
            Ok(r) if r.status().as_u16() == 201 => {}
            Ok(r) => failures.push(format!("{slug}: {}", r.status())),
            Err(e) => failures.push(format!("{slug}: {e}")),
        }
    }
    lat.sort();

    // Every acknowledged course is still there.
    let mut lost = 0usize;
    let mut by_tenant: HashMap<usize, Vec<String>> = HashMap::new();
    for (t, id) in &all.acknowledged {
        by_tenant.entry(*t).or_default().push(id.clone());
    }
    for (t, ids) in &by_tenant {
        let (slug, token) = &tenants[*t];
        let mut have = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/api/v1/courses?limit=200", server.base);
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page: Value = crate::process::retrying(|| {
                http.get(&url).header("X-Tenant", slug).bearer_auth(token)
            })
            .await?
            .json()
            .await?;
            for c in page["items"].as_array().context("items")? {
                if let Some(id) = c["id"].as_str() {
                    have.insert(id.to_owned());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => after = Some(c.to_owned()),
                None => break,
            }
        }
        lost += ids.iter().filter(|id| !have.contains(*id)).count();
    }
    let log = server.log();
    let locked = log.matches("database is locked").count();
    let depth = log.matches("non-zero transaction depth").count();
    println!(
        "\n| backend | tenants | burst writes acknowledged | 5xx in burst | writes after the burst | failed | slowest | acknowledged lost | \"database is locked\" in log |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let five = all
        .by_status
        .iter()
        .filter(|(s, _)| (500..600).contains(*s) && **s != 503)
        .map(|(_, k)| k)
        .sum::<u64>();
    println!(
        "| {} | {n} | {} | {five} (+{} × 503) | {} | {} | {} | {lost} | {locked} (+{depth} depth errors) |",
        args.backend.isolation(),
        all.acknowledged.len(),
        all.by_status.get(&503).copied().unwrap_or(0),
        tenants.len(),
        failures.len(),
        ms(lat.last().copied().unwrap_or_default()),
    );
    for f in failures.iter().take(10) {
        println!("  failed: {f}");
    }
    ensure!(
        failures.is_empty(),
        "{} tenants could not write",
        failures.len()
    );
    ensure!(lost == 0, "{lost} acknowledged writes lost");
    Ok(())
}
