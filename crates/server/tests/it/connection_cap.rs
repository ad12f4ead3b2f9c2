//! More connections than the server takes: past the cap a clean 503; near
//! it, connections doing nothing give way within seconds (the pressure).
//! Over raw sockets, with the helpers of `connections.rs`; every wait is
//! bounded, assertions are on outcomes (open, closed, status), never on
//! latency.

use std::time::Duration;

use server::connection::PRESSED_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connections::{GUARD, answer, closed, connect, quick};
use crate::helpers::{TestApp, spawn_app_with};

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_a_clean_503_and_healthz_answers_once_a_slot_frees()
 {
    let app = spawn_app_with(|_, s| {
        quick(s);
        s.connections.max_connections = 3;
        s.connections.header_read_timeout = Duration::from_millis(1500);
    })
    .await;
    // Three connections that never finish their headers fill the cap.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = healthz_request(&app).await;
    let a = answer(&mut s).await.expect("an answer, not a reset");
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.problem()["code"], "overloaded");
    assert_eq!(a.header("retry-after"), Some("1"));
    closed(&mut s).await;
    // Once the slow ones are cut, /healthz answers again.
    for s in &mut slow {
        closed(s).await;
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let mut s = healthz_request(&app).await;
        if answer(&mut s).await.is_some_and(|a| a.status == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new connection with a whole `GET /healthz` sent on it.
async fn healthz_request(app: &TestApp) -> TcpStream {
    let mut s = connect(app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    s
}

/// Whether the server still holds `s` open: nothing to read, no end.
async fn still_open(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(50), s.read(&mut b))
        .await
        .is_err()
}

#[tokio::test]
async fn near_the_cap_connections_doing_nothing_give_way_within_seconds() {
    // Timeouts of a minute: only the pressure can close these sooner.
    let app = spawn_app_with(|_, s| {
        s.connections.max_connections = 8;
        s.connections.header_read_timeout = Duration::from_secs(60);
        s.connections.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let slow = |i: usize| format!("GET /healthz HTTP/1.1\r\nX-{i}: a\r\n");
    // Half the slots: two never finishing their headers, two kept alive
    // after a request. No pressure: they outlive the pressed timeout.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = connect(&app).await;
        s.write_all(slow(i).as_bytes()).await.unwrap();
        held.push(s);
    }
    for _ in 0..2 {
        let mut s = healthz_request(&app).await;
        let a = answer(&mut s).await.expect("an answer");
        assert_eq!(a.status, 200, "{a:?}");
        held.push(s);
    }
    tokio::time::sleep(PRESSED_TIMEOUT + Duration::from_secs(1)).await;
    for s in &mut held {
        assert!(still_open(s).await, "closed with free slots left");
    }
    // Four more: no slot free, the pressure is on, and the four that were
    // doing nothing for longer than the pressed timeout are closed at once,
    // long before their minute (`closed` waits 15 s at most). Only when all
    // four have gone are half the slots free again: the pressure is off,
    // and the four newest keep their full timeouts.
    let mut newest = Vec::new();
    for i in 2..6 {
        let mut s = connect(&app).await;
        s.write_all(slow(i).as_bytes()).await.unwrap();
        newest.push(s);
    }
    for s in &mut held {
        closed(s).await;
    }
    for s in &mut newest {
        assert!(still_open(s).await, "the pressure is off again");
    }
    // A client with a request to send is served.
    let mut s = healthz_request(&app).await;
    let a = answer(&mut s).await.expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
}
