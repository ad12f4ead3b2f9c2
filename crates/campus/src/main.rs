//! `campus`: the server and its operator's tools, in one binary.

mod archive;
mod cli;
mod config;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tenancy::{Kernel, KernelConfig};

use cli::{Cli, Command, FileConfig, LogFormat, TenantCommand};

/// jemalloc rather than glibc's allocator: glibc kept Argon2's 19 MiB blocks
/// (and SQLite's per-connection buffers) in per-thread arenas long after they
/// were freed, so a burst of logins left the server at over a gigabyte.
/// jemalloc's background threads give freed pages back to the system after
/// a second (`.cargo/config.toml`), also when the thread that freed them —
/// a password-hashing thread after a burst — stays idle; mimalloc, tried
/// first, kept them until that thread allocated again (docs/operations.md,
/// Memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Everything Campus writes is its user's alone (files 0600, directories 0700).
    tenancy::private::restrict_umask();
    let matches = {
        use clap::CommandFactory;
        Cli::command().get_matches()
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Command::Config { json } = &cli.command {
        return match config::print(&cli, &matches, *json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // Whoever read the output went away (`campus tenant list | head`):
        // nothing is wrong, there is just nobody left to tell.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Standard output, written with `writeln!`: unlike `println!`, a closed
/// output is an error to return (see [`broken_pipe`]), not a panic.
fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("CAMPUS_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // What needs no configuration and no database.
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: the generator panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "campus", &mut script);
            stdout().write_all(&script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            stdout().write_all(&page)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let file = FileConfig::load(cli.config.as_deref())?;
    let log_format = cli
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(log_format, if serving { "info,sqlx=warn" } else { "warn" });

    let data_dir = cli
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let mut config = KernelConfig::new(&data_dir, lms::TENANT_MIGRATIONS);
    config.postgres = postgres_config(&cli, &file)?;
    if let Some(n) = file.tenant_transactions {
        config.tenant_transactions = n;
    }
    if let Some(ms) = file.tenant_transaction_wait_ms {
        config.tenant_transaction_wait = std::time::Duration::from_millis(ms);
    }
    memory_bounds(&mut config, &file.memory);
    config.storage.url = cli.storage_url.clone().or(file.storage_url.clone());
    // The cache and shared limits serve requests: only `serve` opens Redis.
    config.cache.redis_url = cli.redis_url.clone().or(file.redis_url.clone());
    if let Some(env) = cli.environment.clone().or(file.environment.clone()) {
        config.cache.environment = env;
    }
    if let Command::Serve(args) = &cli.command {
        if let Some(n) = args
            .unknown_tenant_lookups_per_second
            .or(file.unknown_tenant_lookups_per_second)
        {
            config.unknown_tenant_lookups = n;
        }
        if let Some(ms) = args
            .registry_max_staleness_ms
            .or(file.registry_max_staleness_ms)
        {
            config.registry_max_staleness = Duration::from_millis(ms);
        }
    }
    config.storage.master_key = master_key(&cli, &file)?;
    // Provisioning hashes its first admin's password with the same bounds.
    lms::hashing::configure(hashing_config(&file));
    let what = match &config.postgres {
        Some(_) => "PostgreSQL".to_owned(),
        None => format!("the data directory {}", data_dir.display()),
    };
    // The metrics recorder before the kernel: what the kernel records while
    // it opens (each placement's `campus_database_up`) is kept.
    let _ = server::edge::metrics::handle();
    let kernel = Kernel::open(config)
        .await
        .with_context(|| format!("cannot open {what}"))?;

    let closing = kernel.clone();
    let done = match cli.command {
        Command::Serve(args) => serve(kernel, &data_dir, args, file).await,
        Command::OperatorToken(cli::OperatorTokenCommand::Set) => set_operator_token(kernel).await,
        Command::Tenant(cmd) => tenant(kernel, cmd).await,
        Command::Migrate(args) => migrate(kernel, args).await,
        Command::Doctor => doctor(kernel, &data_dir).await,
        Command::Backup(args) => archive::backup(&kernel, args).await,
        Command::Completions { .. } | Command::Man | Command::Config { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    };
    // A clean stop: the embedded registry's and tenants' write-ahead logs
    // are checkpointed into their files (a copy of `registry.db` alone then
    // has every wrapped data key). Bounded: a connection still held by work
    // cut off at the end of the shutdown grace must not keep the process.
    if tokio::time::timeout(CLOSE_WAIT, closing.close())
        .await
        .is_err()
    {
        tracing::warn!(
            wait_s = CLOSE_WAIT.as_secs(),
            "databases not closed in time; exiting anyway (nothing acknowledged is lost)"
        );
    }
    done
}

/// How long closing the databases may take at the end of a command.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `[memory]` of `campus.toml` over the kernel's defaults.
fn memory_bounds(config: &mut KernelConfig, memory: &cli::MemoryFile) {
    if let Some(mib) = memory.cache_mib {
        config.cache.local_bytes = mib.get().saturating_mul(1024 * 1024);
    }
    if let Some(n) = memory.open_tenants {
        config.max_open_tenants = n;
    }
    if let Some(n) = memory.tenant_connections {
        config.tenant_pool_size = n.get();
    }
    if let Some(kib) = memory.sqlite_cache_kib {
        config.sqlite_cache_kib = kib.get();
    }
    if let Some(pg) = &mut config.postgres {
        pg.max_open_databases = config.max_open_tenants;
        pg.database_pool_size = config.tenant_pool_size;
    }
}

/// The master key: `CAMPUS_MASTER_KEY` (base64), else `--master-key-file`;
/// `None` lets the kernel use (or make) `<data dir>/master.key`. Never logged.
fn master_key(cli: &Cli, file: &FileConfig) -> anyhow::Result<Option<tenancy::MasterKey>> {
    if let Ok(b64) = std::env::var("CAMPUS_MASTER_KEY")
        && !b64.trim().is_empty()
    {
        return Ok(Some(
            tenancy::MasterKey::from_base64(&b64).context("CAMPUS_MASTER_KEY")?,
        ));
    }
    let Some(path) = cli.master_key_file.clone().or(file.master_key_file.clone()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    Ok(Some(tenancy::MasterKey::from_base64(&text).with_context(
        || format!("the master key file {}", path.display()),
    )?))
}

/// The PostgreSQL placements: `default` from the flags (or the file's
/// `database_url`), more from `[placements.<name>]`.
fn postgres_config(
    cli: &Cli,
    file: &FileConfig,
) -> anyhow::Result<Option<tenancy::dataplane::postgres::PgConfig>> {
    use tenancy::dataplane::postgres::{PgConfig, PlacementConfig};
    let Some(url) = cli.database_url.clone().or(file.database_url.clone()) else {
        if !file.placements.is_empty() {
            bail!("[placements] need a default placement: set --database-url");
        }
        return Ok(None);
    };
    let Some(owner_url) = cli
        .owner_database_url
        .clone()
        .or(file.owner_database_url.clone())
    else {
        bail!(
            "--database-url needs --owner-database-url too: the same database as the owner role \
             (which owns the schemas and runs migrations), while --database-url is the serving role"
        );
    };
    let pool_size = cli.pool_size.or(file.pool_size).unwrap_or(16);
    let mut placements = vec![PlacementConfig {
        name: "default".into(),
        url,
        owner_url,
        pool_size,
    }];
    for (name, p) in &file.placements {
        if name == "default" {
            bail!(
                "[placements.default] is the --database-url placement; name the others differently"
            );
        }
        placements.push(PlacementConfig {
            name: name.clone(),
            url: p.url.clone(),
            owner_url: p.owner_url.clone(),
            pool_size: p.pool_size.unwrap_or(pool_size),
        });
    }
    Ok(Some(PgConfig {
        placements,
        max_open_databases: std::num::NonZeroUsize::new(64).unwrap_or(std::num::NonZeroUsize::MIN),
        database_pool_size: 2,
        database_transactions: 32,
        // Builds and registry writes; `campus migrate` asks for more below.
        owner_pool_size: match &cli.command {
            // Each migrating tenant holds one connection, and the registry
            // update after it needs another.
            Command::Migrate(args) => u32::try_from(args.concurrency)
                .unwrap_or(u32::MAX)
                .saturating_add(1),
            _ => 4,
        },
    }))
}

/// Runs the start-up audit; prints what is wrong.
async fn audit(kernel: &Kernel) -> anyhow::Result<bool> {
    let findings = tenancy::audit::run(kernel).await?;
    for f in &findings {
        eprintln!("audit: {f}");
    }
    Ok(findings.is_empty())
}

async fn doctor(kernel: Kernel, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let clean = audit(&kernel).await?;
    // Not a verdict: `campus serve` tightens these at start. Worth knowing
    // when files were copied in, or made by another tool.
    for (path, mode) in tenancy::private::open_to_others(data_dir, 20) {
        eprintln!(
            "permissions: {} is open to others (mode {mode:o}); Campus keeps files 0600 and \
             directories 0700, and `campus serve` tightens the data directory at start",
            path.display()
        );
    }
    // The exit code is the verdict: output nobody reads cannot change it.
    let mut out = stdout();
    if clean {
        let _ = writeln!(
            out,
            "ok: the database enforces tenant isolation as Campus expects"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let _ = writeln!(
            out,
            "the audit found problems (above); `campus serve` refuses to serve until they are fixed"
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The operator token's hash: one per deployment, kept in the registry.
///
/// * A configured token (`CAMPUS_OPERATOR_TOKEN`, or `operator_token` in
///   `campus.toml`) becomes the deployment's when the registry holds none,
///   or holds one that was generated; one that disagrees with a token
///   configured before (on this node or another) refuses to start:
///   `campus operator-token set` changes it, for every node.
/// * Otherwise the registry's is used; without one, this node's old
///   `operator-token.sha256` is adopted, or a token is generated, recorded
///   (insert-if-absent: of two nodes starting at once, one wins and both
///   use its token) and printed once, by the node that made it.
async fn operator_token_hash(
    kernel: &Kernel,
    data_dir: &Path,
    configured: Option<String>,
) -> anyhow::Result<[u8; 32]> {
    use tenancy::kernel::{OPERATOR_TOKEN, decode_hash};
    let registry = kernel.registry();
    let recorded = registry.setting(OPERATOR_TOKEN).await?;
    let damaged = || {
        anyhow::anyhow!(
            "the registry's operator token hash is damaged; run `campus operator-token set`"
        )
    };
    if let Some(token) = std::env::var("CAMPUS_OPERATOR_TOKEN").ok().or(configured) {
        let (hash, hex) = token_hash(&token)?;
        match recorded {
            Some((h, _)) if h == hex => {}
            Some((_, source)) if source == "generated" => {
                registry
                    .replace_setting(OPERATOR_TOKEN, &hex, "configured")
                    .await?;
                tracing::warn!(
                    "the configured operator token replaces the generated one, on every node"
                );
            }
            Some(_) => bail!(
                "refusing to start: the operator token configured here (CAMPUS_OPERATOR_TOKEN or \
                 operator_token) is not the deployment's, which another node or an earlier start \
                 configured; there is one per deployment. Give every node the same token, or \
                 change it for all with `campus operator-token set`"
            ),
            None => {
                let (winner, _) = registry
                    .setting_or_insert(OPERATOR_TOKEN, &hex, "configured")
                    .await?;
                if winner != hex {
                    bail!(
                        "refusing to start: another node recorded a different operator token \
                         just now; give every node the same token"
                    );
                }
            }
        }
        return Ok(hash);
    }
    if let Some((hex, _)) = recorded {
        return decode_hash(&hex).ok_or_else(damaged);
    }
    let path = data_dir.join("operator-token.sha256");
    if let Ok(hex) = std::fs::read_to_string(&path) {
        // A token generated by this node before tokens were per deployment.
        decode_hash(&hex).with_context(|| {
            format!(
                "{} is damaged; delete it to generate a new operator token",
                path.display()
            )
        })?;
        let (winner, _) = registry
            .setting_or_insert(OPERATOR_TOKEN, hex.trim(), "generated")
            .await?;
        return decode_hash(&winner).ok_or_else(damaged);
    }
    let token = format!("cop_{}", lms::auth::generate_password());
    let (hash, hex) = token_hash(&token)?;
    let (winner, _) = registry
        .setting_or_insert(OPERATOR_TOKEN, &hex, "generated")
        .await?;
    if winner != hex {
        // Another node generated one first (and printed it): use that one.
        return decode_hash(&winner).ok_or_else(damaged);
    }
    // A copy for this node's operator; the registry's is the one that counts.
    std::fs::create_dir_all(data_dir)?;
    write_private(&path, &hex)?;
    eprintln!(
        "Generated an operator token for this deployment (shown once; only its hash is kept, \
         in the registry and in {}):",
        path.display()
    );
    eprintln!();
    eprintln!("    {token}");
    eprintln!();
    Ok(hash)
}

/// A configured operator token's hash, as bytes and hex.
fn token_hash(token: &str) -> anyhow::Result<([u8; 32], String)> {
    if token.len() < 16 {
        bail!("CAMPUS_OPERATOR_TOKEN must be at least 16 characters");
    }
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let hex = hash.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hash, hex))
}

/// `campus operator-token set`: makes `CAMPUS_OPERATOR_TOKEN` the
/// deployment's operator token; running nodes take it within a second.
async fn set_operator_token(kernel: Kernel) -> anyhow::Result<ExitCode> {
    let Ok(token) = std::env::var("CAMPUS_OPERATOR_TOKEN") else {
        bail!("put the new operator token in CAMPUS_OPERATOR_TOKEN (not on the command line)");
    };
    let (_, hex) = token_hash(&token)?;
    kernel
        .registry()
        .replace_setting(tenancy::kernel::OPERATOR_TOKEN, &hex, "configured")
        .await?;
    let _ = writeln!(
        stdout(),
        "the operator token is changed for every node of this deployment"
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

async fn serve(
    kernel: Kernel,
    data_dir: &Path,
    args: cli::ServeArgs,
    file: FileConfig,
) -> anyhow::Result<ExitCode> {
    if !audit(&kernel).await? {
        bail!(
            "refusing to serve: the database does not enforce tenant isolation \
             (see the audit above; `campus doctor` checks again)"
        );
    }
    if kernel.cache_backend() == "local" && kernel.registry().is_postgres() {
        tracing::warn!(
            "no --redis-url: cache and rate limits are in this process; run one node only, \
             or give every node the same --redis-url"
        );
    }
    let hashing = hashing_config(&file);
    let mut config = server::ServerConfig::new("");
    config.operator_token_sha256 =
        operator_token_hash(&kernel, data_dir, file.operator_token.clone()).await?;
    config.base_domain = args.base_domain.or(file.base_domain);
    for (plan, r) in &file.rate_limits {
        let Some(plan) = tenancy::Plan::parse(plan) else {
            bail!("[rate_limits.{plan}]: no such plan (free, standard, enterprise)");
        };
        let tenant = config.rates.get_mut(plan);
        *tenant = server::edge::limits::Rate::new(
            r.requests_per_second.unwrap_or(tenant.requests_per_second),
            r.burst.unwrap_or(tenant.burst),
        );
        let user = config.user_rates.get_mut(plan);
        *user = server::edge::limits::Rate::new(
            r.user_requests_per_second
                .unwrap_or(user.requests_per_second),
            r.user_burst.unwrap_or(user.burst),
        );
        let anonymous = config.anonymous_rates.get_mut(plan);
        *anonymous = server::edge::limits::Rate::new(
            r.anonymous_requests_per_second
                .unwrap_or(anonymous.requests_per_second),
            r.anonymous_burst.unwrap_or(anonymous.burst),
        );
    }
    config.connections = connection_limits(&args.connections, &file.connections);
    let limits = &config.connections;
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        body_read_timeout_ms = limits.body.read_timeout.as_millis() as u64,
        body_min_bytes_per_second = limits.body.min_rate,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    if let Some(a) = &file.address_limit {
        let r = config.address_rate;
        config.address_rate = server::edge::limits::Rate::new(
            a.requests_per_second.unwrap_or(r.requests_per_second),
            a.burst.unwrap_or(r.burst),
        );
    }
    let proxies = args
        .trusted_proxies
        .or(file.trusted_proxies.clone())
        .unwrap_or_default();
    config.trusted_proxies = server::edge::client::TrustedProxies::parse(&proxies)
        .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?;
    if let Some(t) = &file.login_throttle {
        let budget = |b: lms::throttle::Budget,
                      n: Option<std::num::NonZeroU32>,
                      w: Option<std::num::NonZeroU64>| {
            lms::throttle::Budget::new(
                n.map_or(b.max_failures, |n| n.get()),
                w.map_or(b.window, |w| Duration::from_secs(w.get())),
            )
        };
        let c = &mut config.login_throttle;
        c.per_account_address = budget(
            c.per_account_address,
            t.per_account_address,
            t.per_account_address_window_s,
        );
        c.per_address = budget(c.per_address, t.per_address, t.per_address_window_s);
        c.per_account = budget(c.per_account, t.per_account, t.per_account_window_s);
    }
    config.hashing = hashing;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
    config.cors_origins = args
        .cors_origins
        .or(file.cors_origins.clone())
        .unwrap_or_default();
    for origin in &config.cors_origins {
        if origin != "*" && !(origin.starts_with("https://") || origin.starts_with("http://")) {
            bail!("cors_origins: `{origin}` is not an origin (scheme://host[:port]) or `*`");
        }
    }
    if let Some(m) = args.console_idle_minutes.or(file.console_idle_minutes) {
        if !(1..=1440).contains(&m) {
            bail!("console_idle_minutes: {m} is not between 1 and 1440");
        }
        config.console_idle = Duration::from_secs(m * 60);
    }
    let admin_listen = args.admin_listen.or(file.admin_listen);
    config.separate_admin = admin_listen.is_some();
    if let Some(redis) = kernel.shared()
        && !redis.health().await.0
    {
        tracing::error!(
            "Redis does not answer (--redis-url): this node serves without it, and /readyz \
             reports it not ready until Redis has answered once"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let admin = match admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?,
        ),
        None => None,
    };
    if let Some(a) = &admin {
        tracing::info!(addr = %a.local_addr()?, "the control plane and /metrics are served here only");
    }
    tracing::info!(addr = %listener.local_addr()?, data_dir = %data_dir.display(), "campus is serving");
    let console_on = match &admin {
        Some(a) => a.local_addr()?,
        None => listener.local_addr()?,
    };
    tracing::info!(
        url = %format!("http://{console_on}/console"),
        "the operator console (sign in with the operator token)"
    );
    let state = server::AppState::new(kernel, config);
    server::serve_with_admin(listener, admin, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The connection limits: flag (or env) over `[connections]` over the
/// default. Without a configured cap, the open-files limit is first raised
/// to its hard limit (as Go's runtime does), and the cap follows it.
fn connection_limits(
    flags: &cli::ConnectionArgs,
    file: &cli::ConnectionArgs,
) -> server::connection::ConnectionLimits {
    let ms = |flag: Option<std::num::NonZeroU64>, file: Option<std::num::NonZeroU64>| {
        flag.or(file).map(|n| Duration::from_millis(n.get()))
    };
    let mut l = server::connection::ConnectionLimits::default();
    match flags.max_connections.or(file.max_connections) {
        Some(n) => l.max_connections = n.get(),
        None =>
        {
            #[cfg(unix)]
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(n) => {
                    l.max_connections = server::connection::max_connections_for(n);
                    tracing::info!(open_files_limit = n, "open-files limit");
                }
                Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
            }
        }
    }
    if let Some(d) = ms(flags.header_read_timeout_ms, file.header_read_timeout_ms) {
        l.header_read_timeout = d;
    }
    if let Some(d) = ms(flags.body_read_timeout_ms, file.body_read_timeout_ms) {
        l.body.read_timeout = d;
    }
    if let Some(r) = flags
        .body_min_bytes_per_second
        .or(file.body_min_bytes_per_second)
    {
        l.body.min_rate = r;
    }
    if let Some(d) = ms(flags.idle_timeout_ms, file.idle_timeout_ms) {
        l.idle_timeout = d;
    }
    if let Some(g) = flags.shutdown_grace_ms.or(file.shutdown_grace_ms) {
        l.shutdown_grace = Duration::from_millis(g);
    }
    if let Some(d) = flags.shutdown_delay_ms.or(file.shutdown_delay_ms) {
        l.shutdown_delay = Duration::from_millis(d);
    }
    l
}

/// `[password_hashing]` over the defaults.
fn hashing_config(file: &FileConfig) -> lms::hashing::HashingConfig {
    let mut c = lms::hashing::HashingConfig::default();
    if let Some(h) = &file.password_hashing {
        if let Some(n) = h.concurrency {
            c.global = n;
            c.per_tenant = std::num::NonZeroUsize::new(n.get().div_ceil(2))
                .unwrap_or(std::num::NonZeroUsize::MIN);
        }
        if let Some(n) = h.per_tenant {
            c.per_tenant = n;
        }
        if let Some(ms) = h.wait_ms {
            c.wait = Duration::from_millis(ms);
        }
    }
    c
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    writeln!(stdout(), "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn print_table(tenants: &[lms::ops::TenantView]) -> anyhow::Result<()> {
    let mut out = stdout();
    writeln!(
        out,
        "{:<24} {:<12} {:<9} {:<10} {:>7} {:>6} {:>8} {:>12}  NAME",
        "SLUG", "STATUS", "ISOLATION", "PLAN", "VERSION", "USERS", "COURSES", "STORED"
    )?;
    for t in tenants {
        let (users, courses, stored) =
            t.usage
                .as_ref()
                .map_or(("-".into(), "-".into(), "-".into()), |u| {
                    (
                        u.users.to_string(),
                        u.courses.to_string(),
                        u.stored_bytes.to_string(),
                    )
                });
        writeln!(
            out,
            "{:<24} {:<12} {:<9} {:<10} {:>7} {:>6} {:>8} {:>12}  {}",
            t.slug, t.status, t.isolation, t.plan, t.schema_version, users, courses, stored, t.name
        )?;
    }
    Ok(())
}

/// What a tenant command changes, for the operator audit log: its action
/// and the tenant's slug (`None` for the commands that only read).
fn audited(cmd: &TenantCommand) -> Option<(&'static str, Option<String>)> {
    Some(match cmd {
        TenantCommand::Create(a) => ("tenant.create", Some(a.slug.clone())),
        TenantCommand::Update { slug, name, plan } => (
            match (name, plan) {
                (None, Some(_)) => "tenant.plan",
                (Some(_), None) => "tenant.rename",
                _ => "tenant.update",
            },
            Some(slug.clone()),
        ),
        TenantCommand::Suspend { slug } => ("tenant.suspend", Some(slug.clone())),
        TenantCommand::Resume { slug } => ("tenant.resume", Some(slug.clone())),
        TenantCommand::Delete { slug, purge } => (
            if *purge {
                "tenant.purge"
            } else {
                "tenant.delete"
            },
            Some(slug.clone()),
        ),
        TenantCommand::Export(a) => ("tenant.export", Some(a.slug.clone())),
        TenantCommand::Import(a) => ("tenant.import", a.slug.clone()),
        TenantCommand::Move(a) => ("tenant.move", Some(a.slug.clone())),
        TenantCommand::List { .. } | TenantCommand::Show { .. } => return None,
    })
}

/// A tenant command, and its line in the operator audit log (the console
/// shows it): who ran it (`cli`, with the user it ran as), what, and how
/// it ended.
async fn tenant(kernel: Kernel, cmd: TenantCommand) -> anyhow::Result<ExitCode> {
    let noted = audited(&cmd);
    let result = tenant_command(&kernel, cmd).await;
    if let Some((action, slug)) = noted {
        let (outcome, detail) = match &result {
            Ok(code) if *code == ExitCode::SUCCESS => ("ok", String::new()),
            Ok(_) => ("refused", "ended with a failure exit code".to_owned()),
            Err(e) => ("refused", format!("{e:#}")),
        };
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let line = tenancy::operators::OperatorAction {
            id: 0,
            at: String::new(),
            operator: format!("cli (as {user})"),
            action: action.to_owned(),
            tenant: slug.and_then(|s| tenancy::Slug::parse(&s).ok().map(|s| s.to_string())),
            outcome: outcome.to_owned(),
            detail,
            client: None,
            user_agent: None,
            via: "cli".to_owned(),
        };
        if let Err(e) = kernel.registry().record_operator_action(&line).await {
            tracing::warn!(error = %e, "the operator audit log could not be written");
        }
    }
    result
}

async fn tenant_command(kernel: &Kernel, cmd: TenantCommand) -> anyhow::Result<ExitCode> {
    use lms::ops;
    let kernel = kernel.clone();
    let result = match cmd {
        TenantCommand::Create(a) => {
            let admin_name = a.admin_name.unwrap_or_else(|| {
                a.admin_email
                    .split('@')
                    .next()
                    .unwrap_or("admin")
                    .to_owned()
            });
            let req = ops::NewTenant {
                slug: a.slug,
                name: a.name,
                isolation: a.isolation.map(cli::IsolationArg::name),
                placement: a.placement,
                plan: a.plan.map(cli::PlanArg::name),
                admin: ops::NewAdmin {
                    email: a.admin_email,
                    name: admin_name,
                    password: a.admin_password,
                },
            };
            let done = ops::create_tenant(&kernel, req).await?;
            if done.admin_password.is_some() {
                eprintln!(
                    "The first admin's password was generated: it is in admin_password below, shown once."
                );
            }
            print_json(&done)?;
            return Ok(ExitCode::SUCCESS);
        }
        TenantCommand::List { json } => {
            let all = ops::list_tenants(&kernel).await?;
            if json {
                print_json(&all)?
            } else {
                print_table(&all)?
            }
            return Ok(ExitCode::SUCCESS);
        }
        TenantCommand::Show { slug, json } => {
            let t = ops::show_tenant(&kernel, &slug).await;
            match (t, json) {
                (Ok(t), true) => print_json(&t)?,
                (Ok(t), false) => print_table(std::slice::from_ref(&t))?,
                (Err(e), _) => return Err(explain(e, &slug)),
            }
            return Ok(ExitCode::SUCCESS);
        }
        TenantCommand::Update { slug, name, plan } => {
            if name.is_none() && plan.is_none() {
                bail!("nothing to change: give --name and/or --plan");
            }
            let plan = plan.map(cli::PlanArg::name);
            ops::update_tenant(&kernel, &slug, ops::TenantPatch { name, plan })
                .await
                .map_err(|e| explain(e, &slug))
        }
        TenantCommand::Suspend { slug } => ops::suspend_tenant(&kernel, &slug)
            .await
            .map_err(|e| explain(e, &slug)),
        TenantCommand::Resume { slug } => ops::resume_tenant(&kernel, &slug)
            .await
            .map_err(|e| explain(e, &slug)),
        TenantCommand::Delete { slug, purge } => {
            let done = ops::delete_tenant(&kernel, &slug, purge)
                .await
                .map_err(|e| explain(e, &slug))?;
            print_json(&done)?;
            return Ok(match &done.purge {
                Some(report) => archive::purge_verdict(report),
                None => ExitCode::SUCCESS,
            });
        }
        TenantCommand::Export(args) => return archive::export(&kernel, args).await,
        TenantCommand::Import(args) => return archive::import(&kernel, args).await,
        TenantCommand::Move(args) => return archive::move_tenant(&kernel, args).await,
    };
    print_json(&result?)?;
    Ok(ExitCode::SUCCESS)
}

fn explain(e: lms::Error, slug: &str) -> anyhow::Error {
    match e {
        lms::Error::NotFound => anyhow::anyhow!("no tenant `{slug}`"),
        other => other.into(),
    }
}

async fn migrate(kernel: Kernel, args: cli::MigrateArgs) -> anyhow::Result<ExitCode> {
    let tenants = lms::ops::migratable(&kernel, args.tenant.as_deref())
        .await
        .map_err(|e| explain(e, args.tenant.as_deref().unwrap_or("")))?;
    let latest = kernel.latest_version();
    eprintln!(
        "control plane is up to date; {} tenant(s) to check against schema version {latest}",
        tenants.len()
    );
    let bar = ProgressBar::new(tenants.len() as u64);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let on_done = {
        let bar = bar.clone();
        Arc::new(move |t: &tenancy::Tenant, r: &lms::Result<bool>| {
            if let Err(e) = r {
                bar.println(format!("failed: {} — {e}", t.slug));
            }
            bar.set_message(t.slug.to_string());
            bar.inc(1);
        })
    };
    let summary = lms::ops::migrate_tenants(&kernel, tenants, args.concurrency, on_done).await;
    bar.finish_and_clear();
    // The exit code is the verdict: output nobody reads cannot change it.
    let mut out = stdout();
    let _ = writeln!(
        out,
        "migrated {}, already up to date {}, failed {}",
        summary.migrated.len(),
        summary.up_to_date,
        summary.failed.len()
    );
    for (slug, error) in &summary.failed {
        let _ = writeln!(out, "  failed: {slug}: {error}");
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
