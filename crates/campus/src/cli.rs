//! The command line: flags, their environment twins, and `campus.toml`.
//!
//! Precedence: a flag wins over its environment variable (clap), which wins
//! over the config file, which wins over the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "campus",
    version,
    about = "A multi-tenant learning platform server with hard tenant isolation"
)]
pub struct Cli {
    /// Where the registry, the tenants' databases and files live.
    #[arg(long, env = "CAMPUS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The configuration file (default: ./campus.toml, when it exists).
    #[arg(long, env = "CAMPUS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PostgreSQL for the registry and tenants, as the serving role (no
    /// superuser, no BYPASSRLS, NOINHERIT, owns nothing). Without it, the
    /// embedded SQLite data plane under --data-dir.
    #[arg(long, env = "CAMPUS_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The same PostgreSQL database as the owner role (owns the schemas,
    /// creates tenant roles and databases; used for DDL and migrations only).
    #[arg(long, env = "CAMPUS_OWNER_DATABASE_URL", global = true)]
    pub owner_database_url: Option<String>,
    /// Connections of the serving pool of each placement (shared by all its
    /// `schema` and `pool` tenants, whatever their number).
    #[arg(long, env = "CAMPUS_POOL_SIZE", global = true)]
    pub pool_size: Option<u32>,
    /// Where tenants' files go: `file:///path` or `s3://bucket/prefix`
    /// (endpoint, region and credentials from the AWS_* variables). Default:
    /// `<data dir>/objects`.
    #[arg(long, env = "CAMPUS_STORAGE_URL", global = true)]
    pub storage_url: Option<String>,
    /// A file holding the master key (32 bytes, base64) that wraps tenants'
    /// data keys; `CAMPUS_MASTER_KEY` may hold it instead. Default:
    /// `<data dir>/master.key`, made on first start.
    #[arg(long, env = "CAMPUS_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// Redis (`redis://host:6379/0`) for the tenant cache, rate limits and
    /// invalidations shared by every node. Required to run more than one
    /// node; without it, cache and limits are in this process. The tenant
    /// commands use it too (a purge removes the tenant's keys).
    #[arg(long, env = "CAMPUS_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// The first part of every cache and limit key (`prod`, `staging`…), so
    /// that deployments can share one Redis. Default `campus`.
    #[arg(long, env = "CAMPUS_ENVIRONMENT", global = true)]
    pub environment: Option<String>,
    /// Log format.
    #[arg(long, env = "CAMPUS_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// A tenant's isolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// A database of its own (a SQLite file embedded; a PostgreSQL database).
    Database,
    /// A PostgreSQL schema and role of its own.
    Schema,
    /// Shared PostgreSQL tables under row-level security.
    Pool,
}

/// A tenant's plan (its rate limits and storage quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanArg {
    Free,
    Standard,
    Enterprise,
}

impl IsolationArg {
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

impl PlanArg {
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Bring the control plane and every tenant (or one) to the latest schema.
    Migrate(MigrateArgs),
    /// Check that the database enforces isolation (what `serve` checks before serving).
    Doctor,
    /// Copy the whole embedded deployment (registry, every tenant's
    /// database, every file) into a new directory, while it serves. The
    /// master key is not copied: keep it apart.
    Backup(BackupArgs),
    /// Print a shell completion script (e.g. `campus completions bash >
    /// /etc/bash_completion.d/campus`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `campus man | man -l -`).
    Man,
    /// Print the effective configuration (secrets masked) and where each
    /// value comes from: flag, environment, campus.toml or default.
    Config {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The deployment's operator token (one for every node).
    #[command(subcommand)]
    OperatorToken(OperatorTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum OperatorTokenCommand {
    /// Make `CAMPUS_OPERATOR_TOKEN` the deployment's operator token, on
    /// every node (running ones within a second).
    Set,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "CAMPUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A second address (e.g. 127.0.0.1:9090) for the control plane,
    /// `/metrics` and readiness; with it, the public listener serves none of
    /// the control plane or `/metrics`.
    #[arg(long, env = "CAMPUS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Origins (comma-separated, e.g. `https://app.example.com`) whose pages
    /// may call the API from a browser (CORS); `*` for any. Default: none.
    #[arg(long, env = "CAMPUS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Minutes an operator's console session lives unused (1 to 1440).
    /// Default 30.
    #[arg(long, env = "CAMPUS_CONSOLE_IDLE_MINUTES", value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub console_idle_minutes: Option<u64>,
    /// With `example.com`, requests to `acme.example.com` are for the tenant `acme`.
    #[arg(long, env = "CAMPUS_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// Registry lookups of tenant names this node does not know, per second
    /// (burst twice that); beyond it they are answered 401 `invalid_tenant`
    /// unasked. Default 100.
    #[arg(long, env = "CAMPUS_UNKNOWN_TENANT_LOOKUPS_PER_SECOND")]
    pub unknown_tenant_lookups_per_second: Option<std::num::NonZeroU32>,
    /// How long, in milliseconds, tenants keep being served from the
    /// directory while the registry cannot be read; then 503 `unavailable`.
    /// Default 5000.
    #[arg(long, env = "CAMPUS_REGISTRY_MAX_STALENESS_MS")]
    pub registry_max_staleness_ms: Option<u64>,
    /// Proxies (addresses or networks, comma-separated) whose
    /// `X-Forwarded-For` names the client; without, the socket's peer is.
    #[arg(long, env = "CAMPUS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Connections and slow clients (docs/operations.md); each also in
/// `[connections]` of `campus.toml`.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionArgs {
    /// Connections served at once; past it new ones are answered 503
    /// (default: three quarters of the open-files limit, at most 4096).
    #[arg(long, env = "CAMPUS_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Milliseconds from a request's first byte to the end of its headers
    /// (default 10000).
    #[arg(long, env = "CAMPUS_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<std::num::NonZeroU64>,
    /// Milliseconds a request body may go without a byte; also its
    /// allowance before the minimum rate applies (default 30000).
    #[arg(long, env = "CAMPUS_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<std::num::NonZeroU64>,
    /// Bytes per second a request body must average after that allowance;
    /// 0 turns the rate off (default 500).
    #[arg(long, env = "CAMPUS_BODY_MIN_BYTES_PER_SECOND")]
    pub body_min_bytes_per_second: Option<u64>,
    /// Milliseconds a connection may stay without a request, or with a
    /// response its client does not read (default 60000).
    #[arg(long, env = "CAMPUS_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<std::num::NonZeroU64>,
    /// Milliseconds requests in flight may take to finish after SIGTERM or
    /// Ctrl-C (default 10000).
    #[arg(long, env = "CAMPUS_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Milliseconds after SIGTERM during which the server still takes
    /// requests while `/readyz` answers 503 (so that a load balancer takes
    /// it out first); set it to the balancer's check interval (default 0).
    #[arg(long, env = "CAMPUS_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Provision a tenant and its first admin; prints the tenant as JSON.
    Create(CreateArgs),
    /// List tenants.
    List {
        /// Print JSON (an array of tenants) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        /// The tenant.
        slug: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a tenant's name or plan.
    #[command(alias = "rename")]
    Update {
        /// The tenant.
        slug: String,
        /// The new display name.
        #[arg(long)]
        name: Option<String>,
        /// The new plan.
        #[arg(long, value_enum)]
        plan: Option<PlanArg>,
    },
    /// Suspend a tenant: its API answers 403 until resumed.
    Suspend {
        /// The tenant.
        slug: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// The tenant.
        slug: String,
    },
    /// Delete a tenant (kept on disk); with --purge, destroy its data too,
    /// then check that nothing of it remains (exit code 4 if anything does).
    Delete {
        /// The tenant.
        slug: String,
        /// Destroy its data, files, data key and cache entries for good.
        #[arg(long)]
        purge: bool,
    },
    /// Write a tenant into one archive file: its rows as of one snapshot
    /// and its files, still encrypted, while it keeps serving.
    Export(ExportArgs),
    /// Restore a tenant from an archive (same slug, same id), or copy it
    /// under another slug (exit code 3 if the archive is refused).
    Import(ImportArgs),
    /// Move a tenant online to another isolation mode or placement (writes
    /// pause for a few seconds; files do not move). Run it again to finish
    /// or roll back an interrupted move.
    Move(MoveArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new (or empty) directory for the backup.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The tenant to move.
    pub slug: String,
    /// The isolation mode to move to (default: the current one).
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// A configured placement (default: the current one).
    #[arg(long)]
    pub placement: Option<String>,
    /// How long every node takes to see a registry change, in milliseconds:
    /// the move waits this long after freezing writes and after switching.
    #[arg(long, default_value_t = 1000)]
    pub freeze_wait_ms: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The key an archive's data key is wrapped with; neither: this
/// deployment's master key (for archives that stay in this deployment).
#[derive(Debug, Args)]
pub struct ArchiveKeyArgs {
    /// A file holding 32 random bytes, base64 (`head -c 32 /dev/urandom | base64`).
    #[arg(long, conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
    /// A file holding a passphrase (at least 12 characters), stretched with Argon2id.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The tenant to export.
    pub slug: String,
    /// The archive to write (`-`: standard output). Written beside it as
    /// `<output>.partial` and renamed when whole.
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub key: ArchiveKeyArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive to read (`-`: standard input).
    pub archive: PathBuf,
    /// Import as a copy under this slug (a new tenant: new id, new data
    /// key); without it, a restore under the archive's slug and id.
    #[arg(long)]
    pub slug: Option<String>,
    /// The isolation mode (default: the archive's, when this deployment
    /// offers it, else the deployment's default).
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// The placement (default: the archive's, when this deployment has it,
    /// else `default`).
    #[arg(long)]
    pub placement: Option<String>,
    /// The plan (default: the archive's). The files must fit its storage
    /// quota.
    #[arg(long, value_enum)]
    pub plan: Option<PlanArg>,
    #[command(flatten)]
    pub key: ArchiveKeyArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The tenant's name in URLs and `X-Tenant`: 3-63 of a-z, 0-9 and `-`.
    pub slug: String,
    /// The organisation's display name.
    #[arg(long)]
    pub name: String,
    /// The first admin's email (their sign-in name).
    #[arg(long)]
    pub admin_email: String,
    /// The first admin's name (default: the part of the email before '@').
    #[arg(long)]
    pub admin_name: Option<String>,
    /// Generated and printed once when absent.
    #[arg(long, env = "CAMPUS_ADMIN_PASSWORD")]
    pub admin_password: Option<String>,
    /// The isolation mode (default: `database` embedded, `schema` on PostgreSQL).
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// The placement: a PostgreSQL server of `[placements]` (default: `default`).
    #[arg(long)]
    pub placement: Option<String>,
    /// The plan (default: standard).
    #[arg(long, value_enum)]
    pub plan: Option<PlanArg>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// `campus.toml`: the same settings as the flags, lowest precedence but the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub owner_database_url: Option<String>,
    pub pool_size: Option<u32>,
    /// More PostgreSQL servers tenants can be placed on, by name.
    #[serde(default)]
    pub placements: std::collections::BTreeMap<String, PlacementFile>,
    pub log_format: Option<LogFormat>,
    pub listen: Option<SocketAddr>,
    /// The control plane's own listener (see `--admin-listen`).
    pub admin_listen: Option<SocketAddr>,
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Option<Vec<String>>,
    /// Minutes an operator's console session lives unused.
    pub console_idle_minutes: Option<u64>,
    pub base_domain: Option<String>,
    pub redis_url: Option<String>,
    pub environment: Option<String>,
    pub storage_url: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub operator_token: Option<String>,
    /// At most this many transactions of one tenant at once (its bulkhead).
    pub tenant_transactions: Option<std::num::NonZeroUsize>,
    /// How long, in milliseconds, a request waits for one of its tenant's
    /// shares before it is answered 503 `overloaded`.
    pub tenant_transaction_wait_ms: Option<u64>,
    /// Registry lookups of unknown tenant names per second, per node (burst
    /// twice that); beyond it they are answered 401 `invalid_tenant` unasked.
    pub unknown_tenant_lookups_per_second: Option<std::num::NonZeroU32>,
    /// How long, in milliseconds, tenants keep being served from the
    /// directory while the registry cannot be read; then 503 `unavailable`.
    pub registry_max_staleness_ms: Option<u64>,
    /// `[rate_limits.<plan>]`: each tenant's allowance on that plan.
    #[serde(default)]
    pub rate_limits: std::collections::BTreeMap<String, RateFile>,
    /// `[connections]`: the connection cap and the slow-client timeouts.
    #[serde(default)]
    pub connections: ConnectionArgs,
    /// `[memory]`: the bounds that keep the server's memory flat whatever
    /// the number of tenants.
    #[serde(default)]
    pub memory: MemoryFile,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// `[address_limit]`: unauthenticated requests from one client address.
    pub address_limit: Option<AddressLimitFile>,
    /// `[login_throttle]`: failed logins allowed before attempts wait.
    pub login_throttle: Option<LoginThrottleFile>,
    /// `[password_hashing]`: how much Argon2 work runs at once.
    pub password_hashing: Option<PasswordHashingFile>,
}

/// `[address_limit]` in `campus.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressLimitFile {
    pub requests_per_second: Option<std::num::NonZeroU32>,
    pub burst: Option<std::num::NonZeroU32>,
}

/// `[login_throttle]` in `campus.toml`: each budget is so many failures at
/// once, then one more per window / failures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginThrottleFile {
    pub per_account_address: Option<std::num::NonZeroU32>,
    pub per_account_address_window_s: Option<std::num::NonZeroU64>,
    pub per_address: Option<std::num::NonZeroU32>,
    pub per_address_window_s: Option<std::num::NonZeroU64>,
    pub per_account: Option<std::num::NonZeroU32>,
    pub per_account_window_s: Option<std::num::NonZeroU64>,
}

/// `[password_hashing]` in `campus.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingFile {
    /// Hashes at once in the process (its threads).
    pub concurrency: Option<std::num::NonZeroUsize>,
    /// Hashes at once for one tenant.
    pub per_tenant: Option<std::num::NonZeroUsize>,
    /// How long a login waits for its turn before 503 `overloaded`.
    pub wait_ms: Option<u64>,
}

/// `[memory]` in `campus.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryFile {
    /// The in-process tenant cache, in MiB (no effect with Redis).
    pub cache_mib: Option<std::num::NonZeroUsize>,
    /// Tenant databases open at once: SQLite files (embedded) or
    /// `database`-mode pools (PostgreSQL); the least recently used is closed.
    pub open_tenants: Option<std::num::NonZeroUsize>,
    /// Connections of each open tenant database.
    pub tenant_connections: Option<std::num::NonZeroU32>,
    /// SQLite's page cache per connection, in KiB.
    pub sqlite_cache_kib: Option<std::num::NonZeroU32>,
}

/// `[rate_limits.<plan>]` in `campus.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub requests_per_second: Option<std::num::NonZeroU32>,
    pub burst: Option<std::num::NonZeroU32>,
    /// Each user's (or API key's) share inside the tenant's allowance.
    pub user_requests_per_second: Option<std::num::NonZeroU32>,
    pub user_burst: Option<std::num::NonZeroU32>,
    /// Unauthenticated requests (logins, bad tokens) to one tenant.
    pub anonymous_requests_per_second: Option<std::num::NonZeroU32>,
    pub anonymous_burst: Option<std::num::NonZeroU32>,
}

/// `[placements.<name>]` in `campus.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementFile {
    pub url: String,
    pub owner_url: String,
    pub pool_size: Option<u32>,
}

impl FileConfig {
    pub fn load(explicit: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let p = PathBuf::from("campus.toml");
                if !p.exists() {
                    return Ok(Self::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        // The error's message and place, never its quote of the line (which
        // may hold a password).
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(n) => anyhow::anyhow!("{} line {n}: {}", path.display(), e.message()),
                None => anyhow::anyhow!("{}: {}", path.display(), e.message()),
            }
        })
    }
}
