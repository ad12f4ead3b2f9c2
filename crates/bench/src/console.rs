//! `console`: how long the operator console's pages take with many
//! tenants, on the real `campus serve` over HTTP.
//!
//! Provisions `--tenants` tenants (10,000 by default) through the control
//! plane, signs in to the console, then fetches each page `--rounds` times
//! (20 by default) one after another, timing each answer whole (the body
//! read to its end). The baseline, in the same run, is the control-plane
//! API's own page of 50 tenants (`GET /admin/api/v1/tenants?limit=50`):
//! the same registry and the same usage reads, as JSON instead of HTML.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::process::TOKEN;
use crate::{Args, Bench, ms};

/// The median and the 95th percentile of `samples`.
fn spread(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95))
}

/// Provisions `school-00000`… through the control plane, a few at once
/// (no logins: the console needs none of their tokens); their slugs.
async fn provision(
    server: &Arc<crate::process::Server>,
    http: &reqwest::Client,
    args: &Args,
    n: usize,
) -> Result<Vec<String>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let isolation = match args.backend {
        crate::load::Backend::Embedded => "database",
        crate::load::Backend::Schema => "schema",
        crate::load::Backend::Pool => "pool",
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.setup_concurrency.min(n) {
        let (server, http, next) = (server.clone(), http.clone(), next.clone());
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let slug = format!("school-{i:05}");
                let plan = ["free", "standard", "enterprise"][i % 3];
                server.provision(&http, &slug, plan, isolation).await?;
                if (i + 1) % (n / 10).max(1) == 0 {
                    println!(
                        "  provisioned about {} of {n} in {:.0} s, server RSS {}",
                        i + 1,
                        t0.elapsed().as_secs_f64(),
                        crate::process::mib(server.rss().unwrap_or(0))
                    );
                }
                made.push(slug);
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

pub async fn run(args: &Args, bench: Option<&Bench>) -> Result<()> {
    let n = args.tenants.unwrap_or(10_000);
    let rounds = args.rounds.max(5);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(4)
        .build()?;
    let server = Arc::new(crate::load::start(args, bench, &http, &args.server_config).await?);
    let t0 = Instant::now();
    let tenants = provision(&server, &http, args, n).await?;
    println!(
        "provisioned {} tenants in {:.0} s; server RSS {}",
        tenants.len(),
        t0.elapsed().as_secs_f64(),
        crate::process::mib(server.rss().unwrap_or(0))
    );

    let res = http
        .post(format!("{}/console/sign-in", server.base))
        .form(&[("token", TOKEN)])
        .send()
        .await?;
    ensure!(res.status().as_u16() == 303, "sign-in: {}", res.status());
    let cookie = res
        .headers()
        .get("set-cookie")
        .context("no session cookie")?
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();

    let middle = &tenants[tenants.len() / 2];
    let pages: Vec<(&str, String)> = vec![
        ("tenants, first page", "/console/tenants".into()),
        (
            "tenants, search by slug",
            format!("/console/tenants?q={middle}"),
        ),
        (
            "tenants, filter + sort",
            "/console/tenants?status=active&plan=standard&sort=name&dir=desc".into(),
        ),
        (
            "tenants, last page",
            format!("/console/tenants?page={}", n.div_ceil(50)),
        ),
        ("a tenant's page", format!("/console/tenants/{middle}")),
        ("fleet", "/console/fleet".into()),
        ("audit log", "/console/audit".into()),
    ];
    let time = |path: String, console: bool| {
        let http = http.clone();
        let url = format!("{}{path}", server.base);
        let cookie = cookie.clone();
        async move {
            let started = Instant::now();
            let req = if console {
                http.get(&url).header("cookie", cookie)
            } else {
                http.get(&url).bearer_auth(TOKEN)
            };
            let res = req.send().await?;
            let status = res.status();
            let body = res.bytes().await?;
            ensure!(status.is_success(), "{url}: {status}");
            Ok::<_, anyhow::Error>((started.elapsed(), body.len()))
        }
    };
    // One of each first (warms the registry and the tenants' files).
    time("/admin/api/v1/tenants?limit=50".into(), false).await?;
    for (_, p) in &pages {
        time(p.clone(), true).await?;
    }
    let mut base = Vec::new();
    for _ in 0..rounds {
        base.push(
            time("/admin/api/v1/tenants?limit=50".into(), false)
                .await?
                .0,
        );
    }
    let (base_p50, base_p95) = spread(base);
    println!(
        "\n{n} tenants, {rounds} rounds each, one request at a time; whole answers (body read)\n"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "page", "p50", "p95", "vs API", "bytes"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "API page of 50 (baseline)",
        ms(base_p50),
        ms(base_p95),
        "1.00×",
        "-"
    );
    for (name, path) in &pages {
        let mut samples = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let (d, b) = time(path.clone(), true).await?;
            samples.push(d);
            bytes = b;
        }
        let (p50, p95) = spread(samples);
        println!(
            "{:<28} {:>10} {:>10} {:>9.2}× {:>10}",
            name,
            ms(p50),
            ms(p95),
            p50.as_secs_f64() / base_p50.as_secs_f64().max(1e-9),
            bytes
        );
    }
    println!(
        "\nserver RSS after: {}",
        crate::process::mib(server.rss().unwrap_or(0))
    );
    Ok(())
}
