//! The harness of the suites whose tests may not apply where they run: a
//! test that cannot run here is reported as **ignored, with its reason**, in
//! `cargo test`'s own summary line, never counted as passed. Built on
//! `libtest-mimic`, so the binaries take libtest's arguments (a name filter,
//! `--list`, `--ignored`, `--test-threads`, `--nocapture`).
//!
//! Two kinds of reason:
//! - [`Skip::missing`]: something this machine lacks (a browser, a tool, a
//!   PostgreSQL build). Under CI (`CI` set) that is a failure, never a skip.
//! - [`Skip::elsewhere`]: the test belongs to another backend of the matrix
//!   (`CAMPUS_TEST_BACKEND`). Ignored on this one everywhere; `.ci/run`
//!   checks that every test ignored in one run passed in another.

use std::future::Future;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Why a test does not run here.
pub struct Skip {
    why: String,
    fails_under_ci: bool,
}

impl Skip {
    /// The machine lacks what the test needs: ignored, but a failure under CI.
    #[allow(dead_code)] // not every suite needs a tool
    pub fn missing(why: impl Into<String>) -> Skip {
        Skip {
            why: why.into(),
            fails_under_ci: true,
        }
    }

    /// The test is another backend's: ignored here (CI runs it there).
    #[allow(dead_code)] // not every suite spans backends
    pub fn elsewhere(why: impl Into<String>) -> Skip {
        Skip {
            why: why.into(),
            fails_under_ci: false,
        }
    }
}

/// True under CI (`CI` set to anything but `""`, `0` or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// A test whose body runs on a Tokio runtime of `threads` workers (1: the
/// current-thread runtime, as `#[tokio::test]`), unless `skip` says why it
/// cannot run here. A panic in the body fails the test.
pub fn trial<F, Fut>(name: &str, threads: usize, skip: Option<Skip>, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    Trial::ignorable_test(name, move || {
        if let Some(skip) = skip {
            if skip.fails_under_ci && under_ci() {
                return Err(Failed::from(format!(
                    "under CI this test must run, but: {}",
                    skip.why
                )));
            }
            return Ok(Completion::ignored_with(skip.why));
        }
        let rt = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
        rt.block_on(body());
        Ok(Completion::Completed)
    })
}

/// Runs the trials with libtest's command-line arguments. Like libtest (and
/// unlike libtest-mimic alone), it takes several name filters: `cargo test
/// -- a b` runs the tests whose names hold `a` or `b` in every binary.
pub fn main(mut trials: Vec<Trial>) -> ExitCode {
    const TAKES_VALUE: &[&str] = &[
        "--test-threads",
        "--logfile",
        "--skip",
        "--color",
        "--format",
        "-Z",
    ];
    let (mut kept, mut filters) = (Vec::new(), Vec::new());
    let mut argv = std::env::args();
    kept.extend(argv.next());
    while let Some(arg) = argv.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            kept.push(arg);
            kept.extend(argv.next());
        } else if arg.starts_with('-') {
            kept.push(arg);
        } else {
            filters.push(arg);
        }
    }
    let args = Arguments::from_iter(kept);
    if !filters.is_empty() {
        trials.retain(|t| {
            filters.iter().any(|f| {
                if args.exact {
                    t.name() == f
                } else {
                    t.name().contains(f.as_str())
                }
            })
        });
    }
    libtest_mimic::run(&args, trials).exit_code()
}
