//! Slow and hostile clients at the connection level, over raw sockets:
//! headers that never end, bodies that trickle or stall, idle keep-alive
//! connections, oversized heads, unknown methods (more connections than the
//! cap: `connection_cap.rs`). Timeouts are small here; every wait is bounded by [`GUARD`] so
//! that a server that never closes fails the test instead of hanging it.
//! Assertions are on outcomes (closed, status, code), never on latency.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Storage, TestApp, spawn_app_with, storage};

/// The longest any step may take before the test fails.
pub(crate) const GUARD: Duration = Duration::from_secs(15);

pub(crate) fn quick(s: &mut ServerConfig) {
    let c = &mut s.connections;
    c.header_read_timeout = Duration::from_millis(400);
    c.idle_timeout = Duration::from_millis(400);
    c.body.read_timeout = Duration::from_millis(400);
    c.body.min_rate = 100;
}

async fn quick_app() -> TestApp {
    spawn_app_with(|_, s| quick(s)).await
}

pub(crate) fn addr(app: &TestApp) -> SocketAddr {
    app.base
        .trim_start_matches("http://")
        .parse()
        .expect("address")
}

pub(crate) async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(addr(app)).await.expect("connect")
}

/// An answer read off a raw socket.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn problem(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body).expect("a problem body")
    }
}

/// Reads one answer (head, then a `Content-Length` body); `None` if the
/// server closed the connection first.
pub(crate) async fn answer(s: &mut TcpStream) -> Option<Answer> {
    tokio::time::timeout(GUARD, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[end + 4..].to_vec();
        while body.len() < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        Some(Answer {
            status,
            headers,
            body,
        })
    })
    .await
    .expect("the server neither answered nor closed the connection in time")
}

/// Waits until the server closes `s` (end of stream or reset), reading and
/// dropping what it sends; fails the test if it stays open past [`GUARD`].
pub(crate) async fn closed(s: &mut TcpStream) {
    tokio::time::timeout(GUARD, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server kept the connection open");
}

fn post_head(path: &str, slug: &str, token: &str, len: u64, kind: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Tenant: {slug}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let app = quick_app().await;
    let mut s = connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    closed(&mut s).await;

    // Nor does a header line now and then keep it open (slowloris).
    let mut s = connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let closed_while_trickling = tokio::time::timeout(GUARD, async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut b = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(closed_while_trickling.is_ok(), "still open");
    // The server still answers.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = quick_app().await;
    let mut s = connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await.expect("an answer").status, 200);
    // Kept alive for a second request…
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await.expect("an answer").status, 200);
    // …then closed once idle.
    closed(&mut s).await;
}

#[tokio::test]
async fn a_body_trickled_at_a_few_bytes_a_second_is_cut_with_408_and_the_connection_closed() {
    let app = quick_app().await;
    let t = app.tenant("trickle").await;
    let body = json!({ "title": "x".repeat(500), "description": "d" }).to_string();
    let mut s = connect(&app).await;
    s.write_all(
        post_head(
            "/api/v1/courses",
            &t.slug,
            &t.admin.token,
            body.len() as u64,
            "application/json",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // 10 bytes a second, under the minimum of 100: cut.
    let writer = async {
        for b in body.as_bytes() {
            if s.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    let a = answer(&mut s).await.expect("an answer before closing");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.problem()["code"], "request_timeout");
    assert_eq!(a.header("connection"), Some("close"));
    closed(&mut s).await;
    // Nothing was created.
    let list: Value = app
        .get(&t.admin, "/api/v1/courses")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}

#[tokio::test]
async fn a_declared_body_that_never_arrives_is_cut_and_a_huge_one_refused_before_reading() {
    let app = quick_app().await;
    let t = app.tenant("declared").await;
    // 3 GB declared on a JSON route: 413 at once, connection closed.
    let mut s = connect(&app).await;
    s.write_all(
        post_head(
            "/api/v1/courses",
            &t.slug,
            &t.admin.token,
            3_000_000_000,
            "application/json",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.problem()["code"], "payload_too_large");
    closed(&mut s).await;

    // Within the limit but never sent: cut by the body timeout.
    let mut s = connect(&app).await;
    s.write_all(
        post_head(
            "/api/v1/courses",
            &t.slug,
            &t.admin.token,
            1000,
            "application/json",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.problem()["code"], "request_timeout");
    closed(&mut s).await;
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn an_upload_left_one_byte_short_is_cut_and_what_it_stored_is_dropped() {
    let app = quick_app().await;
    let t = app.tenant("short").await;
    let course = app.course(&t.admin, "Films", true).await;
    let res = app
        .post(
            &t.admin,
            &format!("/api/v1/courses/{course}/lessons"),
            json!({ "title": "Long" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let lesson = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 9 MiB declared: more than one 8 MiB part goes to the store first.
    let len: u64 = 9 * 1024 * 1024;
    let mut s = connect(&app).await;
    let head = format!(
        "PUT /api/v1/courses/{course}/lessons/{lesson}/content HTTP/1.1\r\nHost: localhost\r\n\
         X-Tenant: {}\r\nAuthorization: Bearer {}\r\nContent-Type: video/mp4\r\nContent-Length: {len}\r\n\r\n",
        t.slug, t.admin.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut body = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    body.resize(len as usize - 1, 7);
    s.write_all(&body).await.unwrap();
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.problem()["code"], "request_timeout");
    closed(&mut s).await;
    // The lesson has no content, and the parts sent are gone from the store.
    let res = app
        .get(
            &t.admin,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/content"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    if storage() == Storage::File {
        let objects = app.dir.path().join("objects");
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let left = files_under(&objects);
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left in the store: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn oversized_and_unparsable_heads_are_answered_with_problems() {
    let app = quick_app().await;
    // One header of 100 KiB.
    let mut s = connect(&app).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 431, "{a:?}");
    assert_eq!(a.problem()["code"], "headers_too_large");
    closed(&mut s).await;
    // Too many headers.
    let mut s = connect(&app).await;
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: a\r\n"));
    }
    many.push_str("\r\n");
    let _ = s.write_all(many.as_bytes()).await;
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 431, "{a:?}");
    assert_eq!(a.problem()["code"], "headers_too_large");
    // Not HTTP.
    let mut s = connect(&app).await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.problem()["code"], "bad_request");
    // And the server keeps serving.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_methods_are_501_and_never_become_a_metric_label() {
    let app = quick_app().await;
    let t = app.tenant("methods").await;
    for (method, path) in [
        ("FROBNICATE", "/healthz"),
        ("PROPFIND", "/api/v1/courses"),
        ("QUERYX", "/nowhere"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = app
            .client
            .request(m, app.url(path))
            .header("X-Tenant", &t.slug)
            .bearer_auth(&t.admin.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED, "{method} {path}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{method}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "not_implemented", "{body}");
    }
    // TRACE is a method this server knows and no route allows: 405.
    let res = app
        .client
        .request(reqwest::Method::TRACE, app.url("/api/v1/courses"))
        .header("X-Tenant", &t.slug)
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // An 8 KB method too.
    let long = "X".repeat(8000);
    let res = app
        .client
        .request(
            reqwest::Method::from_bytes(long.as_bytes()).unwrap(),
            app.url("/healthz"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED);
    let metrics = app.metrics_text().await;
    for bad in ["FROBNICATE", "PROPFIND", "TRACE", "XXXXXXXX"] {
        assert!(!metrics.contains(bad), "{bad} is in /metrics");
    }
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    // Routes are labelled as matched, never as the raw path.
    let _ = app
        .get(&t.admin, "/api/v1/courses/some-raw-id")
        .send()
        .await;
    let metrics = app.metrics_text().await;
    assert!(!metrics.contains("some-raw-id"), "a raw path is a label");
}

#[tokio::test]
async fn every_response_says_nosniff() {
    let app = quick_app().await;
    let t = app.tenant("nosniff").await;
    for res in [
        app.client.get(app.url("/healthz")).send().await.unwrap(),
        app.get(&t.admin, "/api/v1/courses").send().await.unwrap(),
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        app.client
            .get(app.url("/api/v1/courses"))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(
            res.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{}",
            res.url()
        );
    }
}

#[tokio::test]
async fn handlers_see_the_peer_address_and_shutdown_waits_a_bounded_grace() {
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = server::connection::ConnectionLimits {
        shutdown_grace: Duration::from_millis(300),
        header_read_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::connection::run(listener, app, limits, async {
        let _ = stopped.await;
    }));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(String::from_utf8_lossy(&a.body), me.to_string());
    // A connection stuck in its headers does not hold the shutdown past the grace.
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck.write_all(b"GET /peer HTTP/1.1\r\n").await.unwrap();
    let _ = stop.send(());
    tokio::time::timeout(GUARD, served)
        .await
        .expect("serve returned within its grace")
        .unwrap()
        .unwrap();
    closed(&mut stuck).await;
}
