//! The noisy-neighbour scenario: tenant B's request latency alone, then while
//! tenant A floods the same server with many times its plan's allowance.
//! Both tenants are `schema` tenants on one PostgreSQL serving pool; the
//! server runs in this process with its default limits (rate limits by plan,
//! bulkheads), as `campus serve` would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tenancy::Isolation;
use tenancy::Kernel;

use crate::{Args, Bench, ms, pct, provision_many, seed_sessions};

/// B's steady pace: inside its plan's allowance, for the tenant (200/s on
/// `standard`) and for its one user (50/s), so that any 429 B gets is
/// A's doing.
const B_EVERY: Duration = Duration::from_millis(25);

async fn b_latencies(
    client: &reqwest::Client,
    base: &str,
    (slug, token): &(String, String),
    duration: Duration,
) -> Result<(Vec<Duration>, usize)> {
    let mut lat = Vec::new();
    let mut refused = 0;
    let end = Instant::now() + duration;
    let mut tick = tokio::time::interval(B_EVERY);
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let res = client
            .get(format!("{base}/api/v1/courses"))
            .header("X-Tenant", slug)
            .bearer_auth(token)
            .send()
            .await?;
        let status = res.status();
        res.bytes().await?;
        lat.push(t0.elapsed());
        if status.as_u16() == 429 {
            refused += 1;
        } else if !status.is_success() {
            anyhow::bail!("tenant B got {status}");
        }
    }
    lat.sort();
    Ok((lat, refused))
}

/// Runs `make()` to completion on a new thread with a runtime of its own.
async fn own_runtime<T, F>(make: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    F: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(make())
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
}

/// A kibibyte figure of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One flood request of A: a `GET` with A's token, or (`--login-flood`) an
/// anonymous login with a wrong password for an unknown email, from one of
/// 65,536 addresses (the server believes `X-Forwarded-For` from 127.0.0.1).
fn flood_request(
    client: &reqwest::Client,
    base: &str,
    (slug, token): &(String, String),
    login: bool,
    n: u64,
) -> reqwest::RequestBuilder {
    if !login {
        return client
            .get(format!("{base}/api/v1/courses"))
            .header("X-Tenant", slug)
            .bearer_auth(token);
    }
    client
        .post(format!("{base}/api/v1/auth/login"))
        .header("X-Tenant", slug)
        .header(
            "X-Forwarded-For",
            format!("10.77.{}.{}", (n >> 8) & 0xff, n & 0xff),
        )
        .json(&serde_json::json!({
            "email": format!("guess{}@flood.test", n % 1000),
            "password": format!("wrong password {n}"),
        }))
}

pub(crate) async fn run(bench: &Bench, args: &Args) -> Result<()> {
    let flooders = args.clients;
    let login = args.login_flood;
    println!(
        "\nnoisy: tenant B at one request per {} alone, then while tenant A floods with {flooders} clients{}, {} each",
        ms(B_EVERY),
        if login {
            " sending anonymous logins with wrong passwords"
        } else {
            ""
        },
        crate::secs(args.duration)
    );
    let mut kc = bench.kernel_config(lms::TENANT_MIGRATIONS, args.pool_size);
    if let Some(url) = &args.redis_url {
        kc.cache.redis_url = Some(url.clone());
        kc.cache.environment = format!("bench-{}", &tenancy::TenantId::new().simple()[20..]);
    }
    let kernel: Kernel = Kernel::open(kc).await?;
    println!(
        "  cache and rate limits: {}",
        match &args.redis_url {
            Some(url) => format!("in Redis ({url})"),
            None => "in process".into(),
        }
    );
    let tenants = provision_many(&kernel, "n", 2, Isolation::Schema, 2).await?;
    let tokens = seed_sessions(&kernel, tenants, 2).await?;
    let (a, b) = (tokens[0].clone(), tokens[1].clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut config = server::ServerConfig::new("campus-bench-operator-token-0123456789");
    if login {
        config.trusted_proxies = server::edge::client::TrustedProxies::parse(&["127.0.0.1"])
            .map_err(|e| anyhow::anyhow!(e))?;
        // CAMPUS_BENCH_LIFT_ANONYMOUS=1: the unauthenticated allowances out
        // of the way, so that every login reaches password hashing and only
        // its bounds stand between A's flood and B.
        if std::env::var("CAMPUS_BENCH_LIFT_ANONYMOUS").as_deref() == Ok("1") {
            let lots = tenancy::shared::Rate::new(
                std::num::NonZeroU32::new(1_000_000).unwrap_or(std::num::NonZeroU32::MIN),
                std::num::NonZeroU32::new(1_000_000).unwrap_or(std::num::NonZeroU32::MIN),
            );
            config.address_rate = lots;
            config.anonymous_rates.standard = lots;
            config.login_throttle.per_account =
                lms::throttle::Budget::new(1_000_000, Duration::from_secs(3600));
        }
        let (anon, h) = (config.anonymous_rates.standard, config.hashing);
        println!(
            "  login flood: unauthenticated allowance {}/s with a burst of {} per tenant, {}/s per address; password hashing {} at once, {} per tenant, wait {}",
            anon.requests_per_second,
            anon.burst,
            config.address_rate.requests_per_second,
            h.global,
            h.per_tenant,
            ms(h.wait)
        );
    }
    let (rate, user) = (config.rates.standard, config.user_rates.standard);
    println!(
        "  server: serving pool {}, tenant A's plan allows {}/s with a burst of {} ({}/s, {} per user); bulkhead {} transactions per tenant",
        args.pool_size,
        rate.requests_per_second,
        rate.burst,
        user.requests_per_second,
        user.burst,
        tenancy::KernelConfig::new("", lms::TENANT_MIGRATIONS).tenant_transactions
    );
    // The server logs as `campus serve --log-format json` would, to a file:
    // what a request costs includes its log line.
    let log_dir = tempfile::tempdir()?;
    let log_path = log_dir.path().join("server.log");
    let log_file = std::fs::File::create(&log_path)?;
    let logging = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        .with_writer(std::sync::Mutex::new(log_file))
        .try_init()
        .is_ok();
    let state = server::AppState::new(kernel.clone(), config);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    // B's client and A's clients each run on a thread and runtime of their
    // own, as separate machines would: B's latency is then the server's,
    // not B's client queued behind A's clients in one scheduler. The server
    // keeps this runtime.
    let measure_b = |duration: Duration| {
        let (base, b) = (base.clone(), b.clone());
        own_runtime(move || async move {
            let client = reqwest::Client::new();
            b_latencies(&client, &base, &b, duration).await
        })
    };

    // Warm-up, then B alone.
    measure_b(Duration::from_secs(2)).await?;
    let (alone, b_refused_alone) = measure_b(args.duration).await?;

    // A floods; B keeps its pace; the process's resident memory is sampled.
    let rss_before = proc_status_mib("VmRSS:").unwrap_or(0.0);
    let hwm_before = proc_status_mib("VmHWM:").unwrap_or(0.0);
    let flooding = Arc::new(AtomicBool::new(true));
    let rss_peak = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while flooding.load(Ordering::Relaxed) {
                peak = peak.max(proc_status_mib("VmRSS:").unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let (a_ok, a_429) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a_401, a_503) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (base, a) = (base.clone(), a.clone());
        let (flooding, a_ok, a_429) = (flooding.clone(), a_ok.clone(), a_429.clone());
        let (a_401, a_503, sent) = (a_401.clone(), a_503.clone(), sent.clone());
        tokio::spawn(own_runtime(move || async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(flooders)
                .build()?;
            let mut flood = tokio::task::JoinSet::new();
            for _ in 0..flooders {
                let (client, base, a) = (client.clone(), base.clone(), a.clone());
                let (flooding, a_ok, a_429) = (flooding.clone(), a_ok.clone(), a_429.clone());
                let (a_401, a_503, sent) = (a_401.clone(), a_503.clone(), sent.clone());
                flood.spawn(async move {
                    while flooding.load(Ordering::Relaxed) {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        let Ok(res) = flood_request(&client, &base, &a, login, n).send().await
                        else {
                            continue;
                        };
                        match res.status().as_u16() {
                            429 => a_429.fetch_add(1, Ordering::Relaxed),
                            401 => a_401.fetch_add(1, Ordering::Relaxed),
                            503 => a_503.fetch_add(1, Ordering::Relaxed),
                            _ => a_ok.fetch_add(1, Ordering::Relaxed),
                        };
                        let _ = res.bytes().await;
                    }
                });
            }
            while flood.join_next().await.is_some() {}
            Ok(())
        }))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let (a_ok0, a_4290) = (a_ok.load(Ordering::Relaxed), a_429.load(Ordering::Relaxed));
    let (a_4010, a_5030) = (a_401.load(Ordering::Relaxed), a_503.load(Ordering::Relaxed));
    let (flooded, b_refused) = measure_b(args.duration).await?;
    let window = t0.elapsed().as_secs_f64();
    let (a_ok1, a_4291) = (a_ok.load(Ordering::Relaxed), a_429.load(Ordering::Relaxed));
    let (a_4011, a_5031) = (a_401.load(Ordering::Relaxed), a_503.load(Ordering::Relaxed));
    flooding.store(false, Ordering::Relaxed);
    flood.await??;
    let rss_peak = rss_peak.join().unwrap_or(0.0);
    let hwm_after = proc_status_mib("VmHWM:").unwrap_or(0.0);
    let _ = stop_server.send(());
    let _ = served.await;

    let row = |what: &str, l: &[Duration]| {
        println!(
            "  {what:<28} n={:<6} p50 {:>9}  p99 {:>9}  max {:>9}",
            l.len(),
            ms(pct(l, 50.0)),
            ms(pct(l, 99.0)),
            ms(*l.last().unwrap_or(&Duration::ZERO))
        );
    };
    row("B alone", &alone);
    row("B while A floods", &flooded);
    let (a_served, a_denied) = (a_ok1 - a_ok0, a_4011 - a_4010);
    let a_sent = a_served + a_denied + (a_4291 - a_4290) + (a_5031 - a_5030);
    println!(
        "  A during B's measurement: {:.0} requests/s sent, {:.0}/s served, {:.0}/s answered 401 (password checked), {:.0}/s refused with 429, {:.0}/s 503 overloaded",
        a_sent as f64 / window,
        a_served as f64 / window,
        a_denied as f64 / window,
        (a_4291 - a_4290) as f64 / window,
        (a_5031 - a_5030) as f64 / window
    );
    println!(
        "  process RSS (server and clients, /proc/self/status): {rss_before:.0} MiB before the flood, peak {rss_peak:.0} MiB during it (sampled every 50 ms); VmHWM {hwm_before:.0} → {hwm_after:.0} MiB"
    );
    println!("  B refused with 429: {b_refused_alone} alone, {b_refused} while A flooded");
    if logging {
        let log = std::fs::read_to_string(&log_path)?;
        let summaries = log
            .lines()
            .filter(|l| l.contains("rate limit refusing requests"))
            .count();
        println!(
            "  server log (JSON, info): {} lines in all, {summaries} of them refusal summaries",
            log.lines().count()
        );
    }
    let ratio = |p: f64| pct(&flooded, p).as_secs_f64() / pct(&alone, p).as_secs_f64().max(1e-9);
    let p99 = ratio(99.0);
    println!(
        "\ngoal: B's p99 under A's flood within 1.5x of B's p99 alone: {p99:.2}x (p50 {:.2}x) → {}",
        ratio(50.0),
        if p99 <= 1.5 { "met" } else { "MISSED" }
    );
    Ok(())
}
