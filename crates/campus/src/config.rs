//! `campus config`: the configuration a command here would run with, each
//! value with where it came from, secrets masked. Reads nothing but the
//! command line, the environment and `campus.toml` (no database).

use std::io::Write;

use clap::parser::ValueSource;
use serde::Serialize;

use crate::cli::{Cli, FileConfig};

#[derive(Serialize)]
struct Setting {
    name: &'static str,
    value: String,
    /// `flag`, `environment`, `campus.toml` or `default`.
    source: &'static str,
}

/// `scheme://user:secret@host?password=…` → `scheme://user:***@host?password=***`:
/// a password in the authority, and any query parameter that names one.
fn mask_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    match query {
        None => base,
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.to_ascii_lowercase().contains("password")
                            || k.to_ascii_lowercase().contains("secret")
                            || k.to_ascii_lowercase().contains("token") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", q.join("&"))
        }
    }
}

pub fn print(cli: &Cli, matches: &clap::ArgMatches, json: bool) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let file_name = cli
        .config
        .as_ref()
        .map_or("campus.toml".to_owned(), |p| p.display().to_string());
    let from = |id: &str, in_file: bool| -> &'static str {
        match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ if in_file => "campus.toml",
            _ => "default",
        }
    };
    // Serve's own settings: environment or file here (their flags are `serve`'s).
    let env_or_file = |var: &str, in_file: bool| -> &'static str {
        if std::env::var_os(var).is_some() {
            "environment"
        } else if in_file {
            "campus.toml"
        } else {
            "default"
        }
    };
    let mut out = Vec::new();
    let mut set = |name, value: String, source| {
        out.push(Setting {
            name,
            value,
            source,
        })
    };

    set(
        "config",
        file_name,
        if cli.config.is_some() {
            from("config", false)
        } else {
            "default"
        },
    );
    set(
        "data_dir",
        cli.data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| "./data".into())
            .display()
            .to_string(),
        from("data_dir", file.data_dir.is_some()),
    );
    let db = cli.database_url.clone().or(file.database_url.clone());
    set(
        "database_url",
        db.as_deref()
            .map_or("(none: the embedded SQLite data plane)".into(), mask_url),
        from("database_url", file.database_url.is_some()),
    );
    set(
        "owner_database_url",
        cli.owner_database_url
            .clone()
            .or(file.owner_database_url.clone())
            .as_deref()
            .map_or("(none)".into(), mask_url),
        from("owner_database_url", file.owner_database_url.is_some()),
    );
    set(
        "pool_size",
        cli.pool_size.or(file.pool_size).unwrap_or(16).to_string(),
        from("pool_size", file.pool_size.is_some()),
    );
    set(
        "placements",
        if file.placements.is_empty() {
            "default".into()
        } else {
            std::iter::once("default".to_owned())
                .chain(file.placements.keys().cloned())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if file.placements.is_empty() {
            "default"
        } else {
            "campus.toml"
        },
    );
    set(
        "storage_url",
        cli.storage_url
            .clone()
            .or(file.storage_url.clone())
            .map_or_else(|| "file://<data dir>/objects".into(), |u| mask_url(&u)),
        from("storage_url", file.storage_url.is_some()),
    );
    let (key, key_source) =
        if std::env::var("CAMPUS_MASTER_KEY").is_ok_and(|k| !k.trim().is_empty()) {
            ("(set, hidden)".to_owned(), "environment")
        } else if let Some(p) = cli.master_key_file.clone().or(file.master_key_file.clone()) {
            (
                format!("the file {}", p.display()),
                from("master_key_file", file.master_key_file.is_some()),
            )
        } else {
            (
                "<data dir>/master.key (made on first start)".to_owned(),
                "default",
            )
        };
    set("master_key", key, key_source);
    set(
        "redis_url",
        cli.redis_url
            .clone()
            .or(file.redis_url.clone())
            .as_deref()
            .map_or("(none: cache and limits in the process)".into(), mask_url),
        from("redis_url", file.redis_url.is_some()),
    );
    set(
        "environment",
        cli.environment
            .clone()
            .or(file.environment.clone())
            .unwrap_or_else(|| "campus".into()),
        from("environment", file.environment.is_some()),
    );
    set(
        "log_format",
        format!(
            "{:?}",
            cli.log_format
                .or(file.log_format)
                .unwrap_or(crate::cli::LogFormat::Text)
        )
        .to_lowercase(),
        from("log_format", file.log_format.is_some()),
    );
    set(
        "operator_token",
        if std::env::var_os("CAMPUS_OPERATOR_TOKEN").is_some() || file.operator_token.is_some() {
            "(set, hidden)".into()
        } else {
            "(the deployment's, from the registry; generated on first start)".into()
        },
        env_or_file("CAMPUS_OPERATOR_TOKEN", file.operator_token.is_some()),
    );
    let env = |var: &str| std::env::var(var).ok();
    set(
        "listen",
        env("CAMPUS_LISTEN")
            .or(file.listen.map(|a| a.to_string()))
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        env_or_file("CAMPUS_LISTEN", file.listen.is_some()),
    );
    set(
        "admin_listen",
        env("CAMPUS_ADMIN_LISTEN")
            .or(file.admin_listen.map(|a| a.to_string()))
            .unwrap_or_else(|| "(none: the control plane on the public listener)".into()),
        env_or_file("CAMPUS_ADMIN_LISTEN", file.admin_listen.is_some()),
    );
    set(
        "base_domain",
        env("CAMPUS_BASE_DOMAIN")
            .or(file.base_domain.clone())
            .unwrap_or_else(|| "(none: tenants named by X-Tenant only)".into()),
        env_or_file("CAMPUS_BASE_DOMAIN", file.base_domain.is_some()),
    );
    set(
        "cors_origins",
        env("CAMPUS_CORS_ORIGINS")
            .or(file.cors_origins.as_ref().map(|o| o.join(",")))
            .unwrap_or_else(|| "(none)".into()),
        env_or_file("CAMPUS_CORS_ORIGINS", file.cors_origins.is_some()),
    );
    set(
        "console_idle_minutes",
        env("CAMPUS_CONSOLE_IDLE_MINUTES")
            .or(file.console_idle_minutes.map(|m| m.to_string()))
            .unwrap_or_else(|| "30".into()),
        env_or_file(
            "CAMPUS_CONSOLE_IDLE_MINUTES",
            file.console_idle_minutes.is_some(),
        ),
    );
    set(
        "trusted_proxies",
        env("CAMPUS_TRUSTED_PROXIES")
            .or(file.trusted_proxies.as_ref().map(|o| o.join(",")))
            .unwrap_or_else(|| "(none: the socket's peer is the client)".into()),
        env_or_file("CAMPUS_TRUSTED_PROXIES", file.trusted_proxies.is_some()),
    );
    set(
        "rate_limits",
        if file.rate_limits.is_empty() {
            "the built-in plans".into()
        } else {
            format!(
                "built-in, with [rate_limits.{}]",
                file.rate_limits
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("], [rate_limits.")
            )
        },
        if file.rate_limits.is_empty() {
            "default"
        } else {
            "campus.toml"
        },
    );

    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        for s in &out {
            writeln!(stdout, "{:<20} {:<12} {}", s.name, s.source, s.value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            mask_url("postgres://campus_app:s3cret@db:5432/campus"),
            "postgres://campus_app:***@db:5432/campus"
        );
        assert_eq!(
            mask_url("redis://:pw@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            mask_url("postgres://app@db/campus"),
            "postgres://app@db/campus"
        );
        assert_eq!(mask_url("not a url"), "not a url");
        assert_eq!(
            mask_url("postgres://db/campus?user=app&password=pw&sslmode=require"),
            "postgres://db/campus?user=app&password=***&sslmode=require"
        );
    }
}
