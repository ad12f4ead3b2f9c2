//! The contract, checked from outside with widely used tools against a live
//! server (the scripts and their pinned versions are in this folder):
//!
//! - schemathesis generates requests from the served OpenAPI document and
//!   checks every answer against it (status codes, media types, headers,
//!   schemas; schema-valid requests accepted, invalid ones refused): zero
//!   findings at a fixed seed.
//! - `openapi-python-client` generates a client from the document; a login,
//!   a course, a lesson and a file upload and download go through it.
//!
//! Needs Python 3 with `crates/server/tests/contract/requirements.txt`
//! installed; without it the summary counts the tests as ignored, with the
//! reason, and under CI they fail. They run on the embedded backend (the
//! document is the same on every backend but for the modes it offers).

#![allow(clippy::unwrap_used)]

#[path = "../it/helpers.rs"]
mod helpers;
#[path = "../support/trials.rs"]
mod trials;

use std::path::{Path, PathBuf};
use std::process::Command;

use helpers::*;
use trials::{Skip, trial};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract")
}

/// Where pip puts the tools' commands (`st`), for this `python3`.
fn scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Why the contract tests cannot run here, if they cannot.
fn not_here() -> Option<Skip> {
    if backend() != Backend::Sqlite {
        return Some(Skip::elsewhere(
            "a contract test: runs on the embedded backend (CAMPUS_TEST_BACKEND unset)",
        ));
    }
    let install = "python3 -m pip install -r crates/server/tests/contract/requirements.txt";
    let imports = Command::new("python3")
        .args([
            "-c",
            "import schemathesis, openapi_python_client, httpx, attrs",
        ])
        .output();
    if !imports.is_ok_and(|o| o.status.success()) {
        return Some(Skip::missing(format!(
            "needs schemathesis and openapi-python-client: {install}"
        )));
    }
    if !scripts_dir().is_some_and(|d| d.join("st").is_file()) {
        return Some(Skip::missing(format!(
            "schemathesis's `st` is not where pip puts commands: {install}"
        )));
    }
    None
}

/// Runs `cmd`, echoing what it printed; panics (with it) unless it succeeded.
async fn run(mut cmd: Command, what: &str) {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("--- {what}\n{stdout}{stderr}");
}

async fn schemathesis_finds_nothing_against_a_live_server() {
    let app = spawn_app_with(|_, s| lift_anonymous_limits(s)).await;
    let t = app.tenant("st").await;
    let mut cmd = Command::new("bash");
    cmd.arg(here().join("schemathesis.sh"))
        .args([&app.base, &t.slug, &t.admin.token, OPERATOR_TOKEN])
        // A fixed seed: the same cases every run (another: CAMPUS_ST_SEED).
        .env(
            "SEED",
            std::env::var("CAMPUS_ST_SEED").unwrap_or_else(|_| "1".into()),
        )
        .env("MAX_EXAMPLES", "30")
        .env("ST", scripts_dir().unwrap().join("st"));
    run(cmd, "schemathesis").await;
}

async fn a_generated_python_client_logs_in_creates_a_course_and_uploads_a_file() {
    let app = spawn_app_with(|_, s| lift_anonymous_limits(s)).await;
    let t = app.tenant("client").await;
    let mut cmd = Command::new("python3");
    cmd.arg(here().join("client_test.py")).args([
        app.base.as_str(),
        &t.slug,
        &format!("admin@{}.test", t.slug),
        PASSWORD,
    ]);
    run(cmd, "the generated client").await;
}

fn main() -> std::process::ExitCode {
    trials::main(vec![
        trial(
            "schemathesis_finds_nothing_against_a_live_server",
            2,
            not_here(),
            schemathesis_finds_nothing_against_a_live_server,
        ),
        trial(
            "a_generated_python_client_logs_in_creates_a_course_and_uploads_a_file",
            2,
            not_here(),
            a_generated_python_client_logs_in_creates_a_course_and_uploads_a_file,
        ),
    ])
}
