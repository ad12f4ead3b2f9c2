//! Slow and hostile clients against the real `campus serve`, configured from
//! `[connections]` in `campus.toml` as an operator would: headers that never
//! end, more connections than the cap, oversized heads, unknown methods; and
//! what `/metrics` shows of them. Raw sockets; every read is bounded so that
//! a server that never closes fails the test instead of hanging it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::{Server, campus_in, clean_env};

const TOKEN: &str = "conn-test-operator-token-0123456789";
const GUARD: Duration = Duration::from_secs(15);

fn serve(toml: &str) -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("campus.toml"), toml).expect("campus.toml");
    let mut cmd = campus_in(tmp.path());
    cmd.env("CAMPUS_OPERATOR_TOKEN", TOKEN)
        .arg("--data-dir")
        .arg(tmp.path().join("data"));
    (Server::start(cmd, &[]), tmp)
}

fn connect(srv: &Server) -> TcpStream {
    let s = TcpStream::connect(srv.base.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    s
}

/// Everything the server sends until it closes the connection; fails if it
/// keeps it open past [`GUARD`].
fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server kept the connection open; got so far: {out:?}")
            }
            Err(_) => break, // reset
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(srv: &Server, head: &str) -> String {
    let mut s = connect(srv);
    let _ = s.write_all(head.as_bytes());
    until_closed(&mut s)
}

#[test]
fn the_real_server_closes_slow_clients_caps_connections_and_answers_problems() {
    let (srv, _tmp) = serve(
        "[connections]\nmax_connections = 4\nheader_read_timeout_ms = 1000\nidle_timeout_ms = 1000\n",
    );
    assert!(
        srv.log().contains("\"max_connections\":4"),
        "the limits in force are logged:\n{}",
        srv.log()
    );
    // Four connections that never finish their headers fill the cap…
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(&srv);
            s.write_all(b"GET /healthz HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // …so the next gets a clean 503 problem, not a reset or a hang.
    let refused = get(
        &srv,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert!(refused.contains("application/problem+json"), "{refused}");
    assert!(refused.contains("\"code\":\"overloaded\""), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    // The slow ones are closed by the header timeout…
    for s in &mut slow {
        until_closed(s);
    }
    // …and then /healthz answers again.
    let start = Instant::now();
    loop {
        let ok = get(
            &srv,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        if ok.starts_with("HTTP/1.1 200 ") {
            assert!(ok.contains("x-content-type-options: nosniff"), "{ok}");
            break;
        }
        assert!(start.elapsed() < GUARD, "no slot freed: {ok}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A 431 is a problem too.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let too_large = get(&srv, &big);
    assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");
    assert!(
        too_large.contains("\"code\":\"headers_too_large\""),
        "{too_large}"
    );

    // An unknown method is 501, and no label of /metrics names it.
    let custom = get(
        &srv,
        "BREW /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(custom.starts_with("HTTP/1.1 501 "), "{custom}");
    assert!(custom.contains("\"code\":\"not_implemented\""), "{custom}");
    let metrics = get(
        &srv,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    // What was hit is counted.
    assert!(
        metrics.contains("campus_connections_refused_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("campus_connection_timeouts_total{kind=\"headers\"}"),
        "{metrics}"
    );
}

#[test]
fn an_unknown_connections_setting_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        tmp.path().join("campus.toml"),
        "[connections]\nheader_timeout = 5\n",
    )
    .expect("campus.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_campus"))
        .current_dir(tmp.path())
        .env_remove("CAMPUS_CONFIG")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["tenant", "list"])
        .output()
        .expect("run campus");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("header_timeout"), "{err}");
}

#[test]
fn at_the_open_files_limit_the_server_backs_off_and_recovers() {
    // A cap above what the process may open: accepting hits EMFILE.
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        tmp.path().join("campus.toml"),
        "[connections]\nmax_connections = 1000\n",
    )
    .expect("campus.toml");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_campus"));
    clean_env(&mut cmd)
        .current_dir(tmp.path())
        .env("CAMPUS_OPERATOR_TOKEN", TOKEN)
        .arg("--data-dir")
        .arg(tmp.path().join("data"));
    let srv = Server::start(cmd, &[]);
    // More connections than the process has descriptors for.
    let held: Vec<TcpStream> = (0..100).map(|_| connect(&srv)).collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    // Once they are gone, the server serves again: the loop neither died
    // nor spun, and the errors were counted.
    let start = Instant::now();
    let metrics = loop {
        let m = get(
            &srv,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        if m.starts_with("HTTP/1.1 200 ") {
            break m;
        }
        assert!(start.elapsed() < GUARD, "not serving again: {m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("campus_accept_errors_total"),
        "{metrics}\n{}",
        srv.log()
    );
}
