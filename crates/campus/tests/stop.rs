//! A clean stop of the real `campus serve` on the embedded default: what it
//! leaves on disk is whole without the SQLite write-ahead logs, so that a
//! copy of the data directory taken after it (the backup procedure of
//! docs/operations.md) has every tenant, user and wrapped data key.

use std::path::Path;

mod support;
use support::{Server, campus_in};

use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "stop-test-operator-token-0123456789";
const PASSWORD: &str = "correct horse battery";

fn serve(dir: &Path) -> Server {
    let mut cmd = campus_in(dir);
    cmd.env("CAMPUS_OPERATOR_TOKEN", TOKEN)
        .arg("--data-dir")
        .arg(dir.join("data"));
    Server::start(cmd, &[])
}

/// Copies `from` into `to`, leaving out SQLite's `-wal` and `-shm` files.
fn copy_without_logs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = to.join(&name);
        if entry.file_type().expect("type").is_dir() {
            copy_without_logs(&entry.path(), &target);
        } else if !(name.ends_with("-wal") || name.ends_with("-shm")) {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn logs_under(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().expect("type").is_dir() {
            out.extend(logs_under(&entry.path()));
        } else if name.ends_with("-wal") {
            let len = entry.metadata().expect("metadata").len();
            out.push((entry.path().display().to_string(), len));
        }
    }
    out
}

#[tokio::test]
async fn after_a_clean_stop_the_data_directory_is_whole_without_its_write_ahead_logs() {
    let first = tempfile::tempdir().expect("temp dir");
    let srv = serve(first.path());
    let client = reqwest::Client::new();
    let res = client
        .post(srv.url("/admin/api/v1/tenants"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "slug": "kept", "name": "Kept",
            "admin": { "email": "admin@kept.test", "name": "Admin", "password": PASSWORD }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let login = |srv: &Server| {
        client
            .post(srv.url("/api/v1/auth/login"))
            .header("X-Tenant", "kept")
            .json(&json!({ "email": "admin@kept.test", "password": PASSWORD }))
            .send()
    };
    let token = login(&srv).await.unwrap().json::<Value>().await.unwrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    // Creates what `body` describes at `path`: its id.
    let create = |path: String, body: Value| {
        let req = client
            .post(srv.url(&path))
            .header("X-Tenant", "kept")
            .bearer_auth(&token)
            .json(&body);
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["id"].as_str().expect("an id").to_owned()
        }
    };
    let course = create(
        "/api/v1/courses".into(),
        json!({ "title": "Kept", "published": true }),
    )
    .await;
    let lesson = create(
        format!("/api/v1/courses/{course}/lessons"),
        json!({ "title": "One" }),
    )
    .await;
    // A file, sealed with the tenant's data key (wrapped in the registry).
    let content = format!("/api/v1/courses/{course}/lessons/{lesson}/content");
    let file: Vec<u8> = b"%PDF-1.7\n"
        .iter()
        .copied()
        .chain((0..50_000u32).map(|i| (i % 251) as u8))
        .collect();
    let res = client
        .put(srv.url(&content))
        .header("X-Tenant", "kept")
        .bearer_auth(&token)
        .header("content-type", "application/pdf")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    assert!(srv.stop(), "campus serve exits 0 on SIGTERM");
    let data = first.path().join("data");
    let logs: Vec<_> = logs_under(&data)
        .into_iter()
        .filter(|(_, len)| *len > 0)
        .collect();
    assert!(
        logs.is_empty(),
        "write-ahead logs left with data in them: {logs:?}"
    );

    // A copy without any -wal file serves the same tenant, login and file.
    let second = tempfile::tempdir().expect("temp dir");
    copy_without_logs(&data, &second.path().join("data"));
    let srv = serve(second.path());
    let res = login(&srv).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let res = client
        .get(srv.url(&content))
        .header("X-Tenant", "kept")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.bytes().await.unwrap() == file,
        "the file reads back whole"
    );
}
