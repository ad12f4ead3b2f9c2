//! `campus tenant export | import`, and the purge's verdict: the CLI side
//! of a tenant's archive (the work itself is `lms::ops`, as for the API).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tenancy::archive::ArchiveKey;
use tokio::io::AsyncWriteExt;

use crate::cli::{ArchiveKeyArgs, BackupArgs, ExportArgs, ImportArgs, MoveArgs};

/// The exit codes of these commands (also in docs/operations.md).
pub const EXIT_ARCHIVE_REFUSED: u8 = 3;
pub const EXIT_PURGE_INCOMPLETE: u8 = 4;
pub const EXIT_MOVE_INCOMPLETE: u8 = 5;

fn key(args: &ArchiveKeyArgs) -> anyhow::Result<ArchiveKey> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(match (&args.key_file, &args.passphrase_file) {
        (Some(k), _) => ArchiveKey::from_key_file(&read(k)?)
            .with_context(|| format!("the key file {}", k.display()))?,
        (None, Some(p)) => ArchiveKey::from_passphrase(&read(p)?)
            .with_context(|| format!("the passphrase file {}", p.display()))?,
        (None, None) => ArchiveKey::Deployment,
    })
}

/// A progress bar on standard error, when it is a terminal.
fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg:>6} {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// What the bar shows for one report of the work: rows, or bytes of files.
fn report(bar: &ProgressBar) -> impl Fn(&str, u64, Option<u64>) + Send + Sync + use<> {
    let bar = bar.clone();
    move |phase: &str, done: u64, total: Option<u64>| {
        if bar.message() != phase {
            bar.set_message(phase.to_owned());
            bar.set_length(total.unwrap_or(done));
        }
        if let Some(t) = total {
            bar.set_length(t);
        } else if done > bar.length().unwrap_or(0) {
            bar.set_length(done);
        }
        bar.set_position(done);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Whether a failure is the archive's (refused, nothing changed).
fn refused(e: &lms::Error) -> bool {
    matches!(e, lms::Error::Kernel(tenancy::Error::Archive(_)))
}

pub async fn export(kernel: &tenancy::Kernel, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let key = key(&args.key)?;
    let bar = bar();
    let progress = report(&bar);
    let to_stdout = args.output.as_os_str() == "-";
    let summary = if to_stdout {
        let out = tokio::io::BufWriter::new(tokio::io::stdout());
        lms::ops::export_tenant(kernel, &args.slug, &key, out, &progress).await
    } else {
        let partial = partial_path(&args.output);
        let file = create_private(&partial).await?;
        let mut out = tokio::io::BufWriter::new(file);
        let done = lms::ops::export_tenant(kernel, &args.slug, &key, &mut out, &progress).await;
        let finished = match done {
            Ok(summary) => {
                async {
                    out.flush().await?;
                    out.get_ref().sync_all().await?;
                    tokio::fs::rename(&partial, &args.output).await?;
                    Ok::<_, anyhow::Error>(summary)
                }
                .await
            }
            Err(e) => Err(e.into()),
        };
        if finished.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        match finished {
            Ok(s) => Ok(s),
            Err(e) => match e.downcast::<lms::Error>() {
                Ok(e) => Err(e),
                Err(other) => {
                    bar.finish_and_clear();
                    return Err(other);
                }
            },
        }
    };
    bar.finish_and_clear();
    let summary = match summary {
        Ok(s) => s,
        Err(lms::Error::NotFound) => bail!("no tenant `{}`", args.slug),
        Err(e) => return Err(e.into()),
    };
    let line = format!(
        "exported {}: {} rows in {} tables, {} files ({}) → {} ({}), archive {}",
        summary.slug,
        summary.rows,
        summary.tables.len(),
        summary.files,
        mib(summary.file_bytes),
        args.output.display(),
        mib(summary.archive_bytes),
        summary.archive_id
    );
    if args.json && !to_stdout {
        crate::print_json(&summary)?;
    } else if args.json {
        eprintln!("{}", serde_json::to_string_pretty(&summary)?);
    } else if to_stdout {
        eprintln!("{line}");
    } else {
        writeln!(std::io::stdout(), "{line}")?;
    }
    if summary.skipped > 0 {
        eprintln!(
            "warning: {} object(s) under the tenant's prefix are not files of its layout and were left out (see the log)",
            summary.skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn import(kernel: &tenancy::Kernel, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let key = key(&args.key)?;
    let req = lms::ops::ImportRequest {
        slug: args.slug.clone(),
        isolation: args.isolation.map(crate::cli::IsolationArg::name),
        placement: args.placement.clone(),
        plan: args.plan.map(crate::cli::PlanArg::name),
    };
    let bar = bar();
    let progress = report(&bar);
    let done = if args.archive.as_os_str() == "-" {
        let input = tokio::io::BufReader::new(tokio::io::stdin());
        lms::ops::import_tenant(kernel, input, req, &key, &progress).await
    } else {
        let file = tokio::fs::File::open(&args.archive)
            .await
            .with_context(|| format!("cannot open {}", args.archive.display()))?;
        let input = tokio::io::BufReader::with_capacity(256 * 1024, file);
        lms::ops::import_tenant(kernel, input, req, &key, &progress).await
    };
    bar.finish_and_clear();
    let done = match done {
        Ok(d) => d,
        Err(e) if refused(&e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was imported");
            return Ok(ExitCode::from(EXIT_ARCHIVE_REFUSED));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        crate::print_json(&done)?;
    } else {
        writeln!(
            std::io::stdout(),
            "{} {} ({}, {} on {}): {} rows, {} files ({}){}",
            if done.restored {
                "restored"
            } else {
                "copied into"
            },
            done.tenant.slug,
            done.tenant.id,
            done.tenant.isolation,
            done.tenant.placement,
            done.rows,
            done.files,
            mib(done.file_bytes),
            if done.resumed {
                "; an interrupted import of it was cleared first"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn move_tenant(kernel: &tenancy::Kernel, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let req = lms::ops::MoveRequest {
        isolation: args.isolation.map(crate::cli::IsolationArg::name),
        placement: args.placement.clone(),
    };
    let bar = bar();
    let progress = report(&bar);
    let done = lms::ops::move_tenant(
        kernel,
        &args.slug,
        req,
        Duration::from_millis(args.freeze_wait_ms),
        &progress,
    )
    .await;
    bar.finish_and_clear();
    let done = match done {
        Ok(d) => d,
        Err(lms::Error::NotFound) => bail!("no tenant `{}`", args.slug),
        Err(lms::Error::Kernel(tenancy::Error::Incomplete(why))) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(EXIT_MOVE_INCOMPLETE));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        crate::print_json(&done)?;
    } else {
        writeln!(
            std::io::stdout(),
            "moved {}: {} on {} → {} on {}; {} rows; writes paused {} ms; {} ms in all{}",
            done.slug,
            done.from_isolation,
            done.from_placement,
            done.to_isolation,
            done.to_placement,
            done.rows,
            done.freeze_ms,
            done.total_ms,
            if done.resumed {
                " (an interrupted move was settled first)"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn backup(kernel: &tenancy::Kernel, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let bar = bar();
    let progress = report(&bar);
    let done = kernel.backup(&args.output, &progress).await;
    bar.finish_and_clear();
    let done = done?;
    if args.json {
        crate::print_json(&done)?;
    } else {
        writeln!(
            std::io::stdout(),
            "backed up {} tenant(s) and {} file(s) ({}) into {}",
            done.tenants,
            done.files,
            mib(done.file_bytes),
            done.output.display()
        )?;
    }
    eprintln!(
        "the master key is not in the backup: keep a copy of it apart (it is needed to read the \
         backup's files)"
    );
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a purge, after printing what it found on standard error.
pub fn purge_verdict(report: &tenancy::lifecycle::PurgeReport) -> ExitCode {
    for c in &report.checks {
        eprintln!(
            "  {} {}",
            if c.gone { "gone:   " } else { "REMAINS:" },
            c.what
        );
    }
    if report.clean() {
        eprintln!(
            "purged: none of the {} checks found anything left",
            report.checks.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the purge ran, but something of the tenant remains (above); run it again, and see docs/operations.md"
        );
        ExitCode::from(EXIT_PURGE_INCOMPLETE)
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// A new file only its owner can read (an archive holds a tenant's data).
async fn create_private(path: &Path) -> anyhow::Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))
}
