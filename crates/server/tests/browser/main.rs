//! Real browsers: an operator at the console (`console.rs`); the API
//! reference; and one that plays and seeks an uploaded MP4 through a
//! signed link: the path a `<video>` tag takes, which sends no
//! `Authorization` and no `X-Tenant` — the tenant comes from the subdomain
//! (`--base-domain localhost`; Chromium resolves `*.localhost` to loopback).
//!
//! Drives Debian's `chromium` headless through `chromedriver` with the W3C
//! WebDriver JSON protocol over `reqwest`. A small recording proxy in front of
//! the server shows which `Range` requests the browser made and that the
//! server answered them with 206.
//!
//! Needs `chromium` and `chromedriver` on `PATH` (`.ci/run` installs them).
//! Without them the summary counts the test as ignored, with the reason;
//! under CI (`CI` set) their absence fails it. It runs on the embedded
//! backend only (the file path is the same on every database backend, and a
//! browser is costly on a 2-core machine): with `CAMPUS_TEST_BACKEND` set to
//! a PostgreSQL mode it is ignored. It does run in CI's S3 storage run.

#![allow(clippy::unwrap_used)]

#[path = "../it/helpers.rs"]
mod helpers;
#[path = "../support/trials.rs"]
mod trials;

mod console;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::trials::{Skip, trial};

/// 8 s of 320x240 H.264 at 25 fps, a keyframe every 10 frames, `moov` first
/// (see `tests/fixtures/README.md`): ~417 KB, so 7 chunks of 64 KiB.
const VIDEO: &[u8] = include_bytes!("../fixtures/seek.mp4");
const VIDEO_SECONDS: f64 = 8.0;
const SEEK_TO: f64 = 6.0;

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The browser and its driver, or why the test does not run here.
fn tools() -> Result<(PathBuf, PathBuf), Skip> {
    if backend() != Backend::Sqlite {
        return Err(Skip::elsewhere(
            "a browser test: runs on the embedded backend (CAMPUS_TEST_BACKEND unset)",
        ));
    }
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => Err(Skip::missing(format!(
            "needs chromium ({}) and chromedriver ({}): apt-get install chromium chromium-driver",
            if c.is_some() { "found" } else { "missing" },
            if d.is_some() { "found" } else { "missing" },
        ))),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `chromedriver` in a process group of its own, which the
/// browsers it starts join: dropping it kills the whole group, so a failing
/// test leaves no browser behind.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(path: &PathBuf) -> Self {
        let port = free_port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let d = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = d.http.get(format!("{}/status", d.base)).send().await
                && let Ok(v) = res.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("webdriver request");
        let status = res.status();
        let v: Value = res.json().await.expect("webdriver json");
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }
}

/// A WebDriver session, deleted (browser closed) on drop when possible.
struct Browser {
    driver: Driver,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &PathBuf, driver: &PathBuf) -> Self {
        let driver = Driver::start(driver).await;
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-crash-reporter".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let v = driver
            .call(
                Method::POST,
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": { "binary": chromium, "args": args },
                        "goog:loggingPrefs": { "browser": "ALL" }
                    }}
                })),
            )
            .await;
        let session = v["sessionId"].as_str().expect("sessionId").to_owned();
        let b = Self {
            driver,
            session,
            _profile: profile,
        };
        b.call(
            Method::POST,
            "timeouts",
            json!({ "script": 90_000, "pageLoad": 60_000 }),
        )
        .await;
        b
    }

    async fn call(&self, method: Method, what: &str, body: Value) -> Value {
        self.driver
            .call(
                method,
                &format!("/session/{}/{what}", self.session),
                // A GET has no body (`null` stands for none).
                Some(body).filter(|b| !b.is_null()),
            )
            .await
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "url", json!({ "url": url })).await;
    }

    /// Runs `script` (which calls its last argument when done) and returns what it gave.
    async fn run_async(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            "execute/async",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn close(self) {
        let _ = self
            .driver
            .http
            .delete(format!("{}/session/{}", self.driver.base, self.session))
            .send()
            .await;
    }
}

/// Loads `src` in a new `<video>`, waits for its metadata, seeks to `target`,
/// waits for `seeked` and a decodable frame, then plays until time moves on.
const PLAY_AND_SEEK: &str = r#"
const [src, target, done] = arguments;
const v = document.createElement('video');
v.muted = true;
v.preload = 'metadata';
const state = (ok, why) => ({
  ok, why,
  error: v.error ? v.error.code : null,
  message: v.error ? v.error.message : null,
  duration: v.duration,
  currentTime: v.currentTime,
  readyState: v.readyState,
  videoWidth: v.videoWidth,
  videoHeight: v.videoHeight,
  seekedAt: window.__seekedAt === undefined ? null : window.__seekedAt,
  readyAtSeek: window.__readyAtSeek === undefined ? null : window.__readyAtSeek,
});
let finished = false;
const finish = (ok, why) => { if (!finished) { finished = true; done(state(ok, why)); } };
v.addEventListener('error', () => finish(false, 'error event'));
v.addEventListener('loadedmetadata', () => {
  window.__duration = v.duration;
  v.addEventListener('seeked', () => {
    window.__seekedAt = v.currentTime;
    const played = () => {
      window.__readyAtSeek = v.readyState;
      const from = v.currentTime;
      v.addEventListener('timeupdate', function tick() {
        if (v.currentTime > from + 0.2) {
          v.removeEventListener('timeupdate', tick);
          v.pause();
          finish(true, 'played after seek');
        }
      });
      v.play().catch((e) => finish(false, 'play(): ' + e));
    };
    if (v.readyState >= 2) played(); else v.addEventListener('canplay', played, { once: true });
  }, { once: true });
  v.currentTime = target;
}, { once: true });
v.src = src;
document.body.appendChild(v);
"#;

/// Loads `src` and reports how it ends: an error, or metadata.
const LOAD_ONLY: &str = r#"
const [src, done] = arguments;
const v = document.createElement('video');
v.muted = true;
v.addEventListener('error', () => done({ error: v.error ? v.error.code : -1 }));
v.addEventListener('loadedmetadata', () => done({ error: null, duration: v.duration }));
v.src = src;
document.body.appendChild(v);
"#;

/// What passed through the proxy: request `Range` headers and response status lines.
#[derive(Default)]
struct Seen {
    ranges: Vec<String>,
    statuses: Vec<String>,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that records, from the
/// bytes going through, the `Range:` request headers and the HTTP status
/// lines. Runs on threads of its own until the process ends.
fn recording_proxy(upstream: std::net::SocketAddr) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let (a, b) = (seen2.clone(), seen2.clone());
            std::thread::spawn(move || pump(client, server, &a, true));
            std::thread::spawn(move || pump(s2, c2, &b, false));
        }
    });
    (port, seen)
}

/// Copies `from` to `to`, noting the lines of interest: `Range:` headers on
/// requests, `HTTP/1.1 NNN` status lines on responses.
fn pump(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Seen>, request: bool) {
    let mut buf = [0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let mut s = seen.lock().unwrap();
                if request && text.to_ascii_lowercase().starts_with("range:") {
                    s.ranges.push(text);
                } else if !request && let Some(at) = text.find("HTTP/1.1 ") {
                    // A status line may follow the previous body without a line break.
                    s.statuses.push(text[at..].to_owned());
                }
                line.clear();
            } else if line.len() < 256 {
                line.push(b);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

async fn chromium_plays_and_seeks_an_uploaded_mp4_through_a_signed_link() {
    let (chromium, chromedriver) = tools().unwrap_or_else(|_| unreachable!("checked before"));
    let app = spawn_app_with(|_, s| s.base_domain = Some("localhost".into())).await;
    let t = app.tenant("video").await;
    let course = app.course(&t.admin, "Films", true).await;
    let lesson = app.lesson(&t.admin, &course, "Seeking").await;
    let content = format!("/api/v1/courses/{course}/lessons/{lesson}/content");
    let res = app
        .req(Method::PUT, &t.admin, &content)
        .header("content-type", "video/mp4")
        .body(VIDEO.to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), StatusCode::NO_CONTENT, "upload");
    let res = app
        .req(Method::POST, &t.admin, &format!("{content}-url"))
        .send()
        .await
        .expect("content-url");
    let v = json_ok(res, 200).await;
    let signed = v["url"].as_str().expect("url").to_owned();
    assert!(signed.contains("sig="), "{signed}");

    let upstream: std::net::SocketAddr = app
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("server addr");
    let (port, seen) = recording_proxy(upstream);
    let origin = format!("http://{}.localhost:{port}", t.slug);
    // The signed link with the tenant named by the Host alone (straight to
    // the server, not through the proxy: what the proxy records is the browser's).
    let res = app
        .client
        .get(app.url(&signed))
        .header("host", format!("{}.localhost", t.slug))
        .header("range", "bytes=0-99")
        .send()
        .await
        .expect("signed link");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&res.bytes().await.expect("body")[..], &VIDEO[..100]);

    let browser = Browser::start(&chromium, &chromedriver).await;
    // A page of the tenant's origin (the health check: only its DOM is used),
    // so the video is a same-origin load, as on a tenant's own site.
    browser.goto(&format!("{origin}/healthz")).await;
    let src = format!("{origin}{signed}");
    let got = browser
        .run_async(PLAY_AND_SEEK, json!([src, SEEK_TO]))
        .await;
    eprintln!("played: {got}");
    assert_eq!(got["ok"], true, "{got}");
    assert!(got["error"].is_null(), "MediaError: {got}");
    let duration = got["duration"].as_f64().expect("duration");
    assert!(
        (duration - VIDEO_SECONDS).abs() < 0.2,
        "duration {duration}: {got}"
    );
    let seeked_at = got["seekedAt"].as_f64().expect("seekedAt");
    assert!(
        (seeked_at - SEEK_TO).abs() < 0.5,
        "seeked to {seeked_at}, wanted {SEEK_TO}: {got}"
    );
    assert!(
        got["readyAtSeek"].as_i64().expect("readyState") >= 2,
        "{got}"
    );
    assert!(
        got["currentTime"].as_f64().expect("currentTime") > SEEK_TO,
        "{got}"
    );
    assert_eq!(got["videoWidth"], 320, "{got}");
    assert_eq!(got["videoHeight"], 240, "{got}");

    // One hex digit of the signature changed: the element errors (the server said 403).
    let (path, query) = signed.split_once('?').expect("query");
    let tampered = {
        let i = query.rfind(|c: char| c.is_ascii_hexdigit()).expect("hex");
        let c = query.as_bytes()[i];
        let flip = if c == b'0' { '1' } else { '0' };
        format!("{path}?{}{flip}{}", &query[..i], &query[i + 1..])
    };
    assert_ne!(tampered, signed);
    let bad = browser
        .run_async(LOAD_ONLY, json!([format!("{origin}{tampered}")]))
        .await;
    eprintln!("tampered: {bad}");
    assert!(
        bad["error"].as_i64().is_some(),
        "a tampered link must not load: {bad}"
    );
    // The same link on another tenant's subdomain: refused as well.
    let other = app.tenant("video-other").await;
    let elsewhere = browser
        .run_async(
            LOAD_ONLY,
            json!([format!("http://{}.localhost:{port}{signed}", other.slug)]),
        )
        .await;
    assert!(
        elsewhere["error"].as_i64().is_some(),
        "a link used under another tenant must not load: {elsewhere}"
    );
    browser.close().await;

    // Which ranges a seek asks for depends on what the browser has cached by
    // then (a later range is often revalidated, 304): shown, not asserted.
    let seen = seen.lock().unwrap();
    eprintln!("ranges asked: {:?}", seen.ranges);
    eprintln!("statuses: {:?}", seen.statuses);
    assert!(
        !seen.ranges.is_empty(),
        "the browser made no Range request: {:?}",
        seen.statuses
    );
    assert!(
        seen.statuses.iter().any(|s| s.starts_with("HTTP/1.1 206")),
        "no 206 answered: {:?}",
        seen.statuses
    );
    assert!(
        seen.statuses.iter().any(|s| s.starts_with("HTTP/1.1 403")),
        "the tampered link was not refused with 403: {:?}",
        seen.statuses
    );
}

/// Waits (up to 60 s) until the page's text holds every one of `want`, then
/// reports the text's length, what is missing, and every resource the page
/// loaded from another origin than its own (or from a `blob:`).
const RENDERED: &str = r#"
const [want, done] = arguments;
const deadline = Date.now() + 60000;
const look = () => {
  const text = document.body ? document.body.innerText : '';
  const missing = want.filter((w) => !text.includes(w));
  if (missing.length === 0 || Date.now() > deadline) {
    const foreign = performance.getEntriesByType('resource')
      .map((e) => e.name)
      .filter((n) => !n.startsWith(location.origin) && !n.startsWith('blob:'));
    done({ length: text.length, missing, foreign });
  } else {
    setTimeout(look, 200);
  }
};
look();
"#;

/// The API reference renders in a real browser from what the binary serves:
/// Redoc draws the document's operations, under the page's CSP, and the
/// page loads nothing from another origin.
async fn chromium_renders_the_api_reference_from_the_binary() {
    let (chromium, chromedriver) = tools().unwrap_or_else(|_| unreachable!("checked before"));
    let app = spawn_app().await;
    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/api/v1/docs")).await;
    let got = browser
        .run_async(
            RENDERED,
            json!([[
                "Campus",
                "Log in with email and password",
                "/api/v1/courses"
            ]]),
        )
        .await;
    browser.close().await;
    eprintln!("reference: {got}");
    assert_eq!(got["missing"], json!([]), "{got}");
    assert_eq!(got["foreign"], json!([]), "{got}");
    assert!(got["length"].as_u64().unwrap() > 2000, "{got}");
}

fn main() -> std::process::ExitCode {
    trials::main(vec![
        trial(
            "chromium_plays_and_seeks_an_uploaded_mp4_through_a_signed_link",
            2,
            tools().err(),
            chromium_plays_and_seeks_an_uploaded_mp4_through_a_signed_link,
        ),
        trial(
            "chromium_renders_the_api_reference_from_the_binary",
            2,
            tools().err(),
            chromium_renders_the_api_reference_from_the_binary,
        ),
        trial(
            "an_operator_runs_a_tenants_life_from_the_console",
            2,
            tools().err(),
            console::an_operator_runs_a_tenants_life_from_the_console,
        ),
    ])
}
