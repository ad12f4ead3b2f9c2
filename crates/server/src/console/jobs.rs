//! The console's long actions (a move, `migrate`, an import, the isolation
//! audit): each runs on a task of its own, so that a closed tab does not
//! stop it, and reports its progress here for the page that polls it.
//!
//! Bounded: the last [`KEPT`] jobs are kept (running ones are never
//! dropped), on this node; the operator audit log keeps the outcome of
//! every one. A job's page is on the node that runs it: behind a load
//! balancer, the console's address should reach one node (sticky sessions,
//! or the admin listener of one node).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Finished jobs kept for their pages.
pub const KEPT: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Done(String),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub title: String,
    pub tenant: Option<String>,
    pub started_at: String,
    pub by: String,
    pub step: String,
    pub done: u64,
    pub total: Option<u64>,
    pub state: State,
    /// Lines worth keeping (one per tenant migrated, say), the last 200.
    pub lines: Vec<String>,
}

impl Snapshot {
    pub fn running(&self) -> bool {
        self.state == State::Running
    }

    /// Progress in percent, when the total is known.
    pub fn percent(&self) -> Option<u64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| (self.done.min(t) * 100) / t)
    }
}

pub struct Job(Mutex<Snapshot>);

impl Job {
    fn with<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// Where the job stands: a step's name, and how far into it.
    pub fn progress(&self, step: &str, done: u64, total: Option<u64>) {
        self.with(|s| {
            if s.step != step {
                s.step = step.to_owned();
            }
            s.done = done;
            s.total = total;
        });
    }

    pub fn line(&self, line: String) {
        self.with(|s| {
            if s.lines.len() >= 200 {
                s.lines.remove(0);
            }
            s.lines.push(line);
        });
    }

    pub fn finish(&self, outcome: Result<String, String>) {
        self.with(|s| {
            s.state = match outcome {
                Ok(m) => State::Done(m),
                Err(m) => State::Failed(m),
            };
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }
}

#[derive(Default)]
pub struct Jobs(Mutex<VecDeque<Arc<Job>>>);

impl Jobs {
    /// A new running job (dropping the oldest finished ones past [`KEPT`]).
    pub fn start(&self, title: String, tenant: Option<String>, by: String) -> Arc<Job> {
        let mut bytes = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let job = Arc::new(Job(Mutex::new(Snapshot {
            id,
            title,
            tenant,
            started_at: tenancy::clock::now(),
            by,
            step: "starting".into(),
            done: 0,
            total: None,
            state: State::Running,
            lines: Vec::new(),
        })));
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.push_back(job.clone());
        while all.len() > KEPT {
            match all.iter().position(|j| !j.snapshot().running()) {
                Some(i) => {
                    all.remove(i);
                }
                None => break,
            }
        }
        job
    }

    pub fn get(&self, id: &str) -> Option<Snapshot> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().map(|j| j.snapshot()).find(|s| s.id == id)
    }

    /// The jobs kept, the latest first.
    pub fn list(&self) -> Vec<Snapshot> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().rev().map(|j| j.snapshot()).collect()
    }
}
