//! One deployment, one master key; data keys made only where it is safe;
//! a private data directory; quota shared by uploads running at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;
use tenancy::Kernel;

/// Runs one statement on the app's registry, whatever its backend: the
/// SQLite file, or PostgreSQL as the suite's superuser.
async fn registry_exec(app: &TestApp, sql_sqlite: &str, sql_pg: &str, arg: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    if app.pg_database().is_some() {
        let sql = format!("WITH d AS ({sql_pg} RETURNING 1) SELECT count(*) FROM d");
        app.pg_count(&sql, &[arg]).await;
    } else {
        let url = format!("sqlite://{}", app.dir.path().join("registry.db").display());
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("registry");
        sqlx::query(sql_sqlite)
            .bind(arg)
            .execute(&mut conn)
            .await
            .expect(sql_sqlite);
        conn.close().await.expect("close");
    }
}

fn pdf(len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    out.resize(len, b'k');
    out
}

#[tokio::test]
async fn a_second_kernel_with_another_master_key_refuses_to_open_and_writes_nothing() {
    let app = spawn_app().await;
    let t = app.tenant("mk").await;
    let course = app.course(&t.admin, "Keys", true).await;
    let lesson = app.lesson(&t.admin, &course, "One").await;
    let path = format!("/api/v1/courses/{course}/lessons/{lesson}/content");
    let res = app
        .req(Method::PUT, &t.admin, &path)
        .header("content-type", "application/pdf")
        .body(pdf(5_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Another node's configuration: the same registry, another key.
    let mut other = app.config.clone();
    other.storage.master_key = Some(tenancy::MasterKey::random());
    let err = match Kernel::open(other).await {
        Ok(_) => panic!("a kernel with another master key opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("master key is not the deployment's"), "{err}");
    assert!(!err.contains("base64"), "{err}");

    // The same key opens; and this node still reads its files.
    let mut same = app.config.clone();
    same.storage.master_key = None;
    Kernel::open(same).await.expect("the deployment's own key");
    let res = app.get(&t.admin, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 5_000);
}

#[tokio::test]
async fn no_request_makes_a_data_key_only_provisioning_and_authorised_uploads_do() {
    let app = spawn_app().await;
    let t = app.tenant("dk").await;
    let row = app.tenant_row(&t.id).await;
    // Provisioning made it, before any request could race for it.
    assert!(app.kernel.has_storage_key(&row).await.unwrap());

    // A tenant provisioned before keys were made at provisioning: none.
    registry_exec(
        &app,
        "DELETE FROM tenant_storage WHERE tenant_id = $1",
        "DELETE FROM campus_control.tenant_storage WHERE tenant_id = $1",
        &t.id,
    )
    .await;
    // Any change of the tenant drops what this node knew of its key.
    let res = app
        .operator(Method::PATCH, &format!("/admin/api/v1/tenants/{}", t.slug))
        .json(&json!({ "name": "Renamed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!app.kernel.has_storage_key(&row).await.unwrap());

    let course = app.course(&t.admin, "Keys", true).await;
    let lesson = app.lesson(&t.admin, &course, "One").await;
    let path = format!("/api/v1/courses/{course}/lessons/{lesson}/content");
    // Forged links, with and without a token; reads; a real link to nothing.
    for (expires, sig) in [("9999999999", "00"), ("1", "ab"), ("", ""), ("x", "zz")] {
        let res = app
            .client
            .get(app.url(&format!("{path}?expires={expires}&sig={sig}")))
            .header("X-Tenant", &t.slug)
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "invalid_signature").await;
    }
    let res = app.get(&t.admin, &path).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = app
        .get(
            &t.admin,
            &format!("/api/v1/users/{}/avatar", t.admin.user_id),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let link = json_ok(
        app.post(&t.admin, &format!("{path}-url"), json!({}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let res = app
        .client
        .get(app.url(link["url"].as_str().unwrap()))
        .header("X-Tenant", &t.slug)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    // A learner's refused upload makes none either.
    let learner = app.user(&t, "learner").await;
    let res = app
        .req(Method::PUT, &learner, &path)
        .header("content-type", "application/pdf")
        .body(pdf(1_000))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
    assert!(
        !app.kernel.has_storage_key(&row).await.unwrap(),
        "a request that may not write made a data key"
    );

    // The first authorised upload makes it, once, and it works.
    let sent = futures_util::future::join_all((0..4).map(|_| {
        app.req(Method::PUT, &t.admin, &path)
            .header("content-type", "application/pdf")
            .body(pdf(3_000))
            .send()
    }))
    .await;
    for res in sent {
        assert_eq!(res.unwrap().status(), StatusCode::NO_CONTENT);
    }
    assert!(app.kernel.has_storage_key(&row).await.unwrap());
    let res = app.get(&t.admin, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 3_000);
}

#[cfg(unix)]
fn modes_open_to_others(root: &std::path::Path) -> Vec<String> {
    tenancy::private::open_to_others(root, 50)
        .into_iter()
        .map(|(p, m)| format!("{} {m:o}", p.display()))
        .collect()
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private_and_an_old_one_is_tightened_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let t = app.tenant("perm").await;
    let course = app.course(&t.admin, "Private", true).await;
    let lesson = app.lesson(&t.admin, &course, "One").await;
    let res = app
        .req(
            Method::PUT,
            &t.admin,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/content"),
        )
        .header("content-type", "application/pdf")
        .body(pdf(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let root = app.dir.path();
    let mut seen = (0, 0);
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            seen.0 += 1;
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
            seen.1 += 1;
        }
    }
    if backend() == Backend::Sqlite {
        // The registry and the tenant's database, with their -wal and -shm.
        for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
            assert!(root.join(f).exists(), "{f}");
        }
        let db = root.join("tenants").join(&t.id).join("tenant.db-wal");
        assert!(db.exists(), "{}", db.display());
    }
    assert!(root.join("master.key").exists());
    assert!(seen.1 >= 2, "{seen:?}");

    // An install from before: everything world-readable. The next start
    // tightens it.
    let loosen = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    loosen(root, 0o755);
    loosen(&root.join("master.key"), 0o644);
    // Files on local disk (not with CAMPUS_TEST_STORAGE=s3): their directory too.
    if root.join("objects").exists() {
        loosen(&root.join("objects"), 0o755);
    }
    if backend() == Backend::Sqlite {
        loosen(&root.join("registry.db"), 0o644);
        loosen(&root.join("tenants"), 0o755);
        loosen(&root.join("tenants").join(&t.id), 0o755);
        loosen(&root.join("tenants").join(&t.id).join("tenant.db"), 0o644);
    }
    assert!(!modes_open_to_others(root).is_empty());
    let mut again = app.config.clone();
    again.storage.master_key = None;
    Kernel::open(again).await.expect("kernel");
    assert_eq!(modes_open_to_others(root), Vec::<String>::new());
}

/// A body that sends `bytes`, then stays open until `close` is dropped.
fn held_open(
    bytes: Vec<u8>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) {
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let stream =
        futures_util::stream::unfold((Some(bytes), Some(closed)), |(first, closed)| async move {
            if let Some(b) = first {
                return Some((Ok(Bytes::from(b)), (None, closed)));
            }
            let _ = closed?.await;
            None
        });
    (close, stream)
}

#[tokio::test]
async fn uploads_at_once_share_the_quota_and_those_beyond_it_are_refused_mid_stream() {
    const SIZE: usize = 100_000;
    // The stored size of SIZE bytes: header, one full sealed chunk, the rest.
    const STORED: u64 = 32 + (65_536 + 16) + (SIZE as u64 - 65_536) + 16;
    let app = spawn_app_with(|k, _| k.storage.quotas.standard = 3 * STORED + 1_000).await;
    let t = app.tenant("resv").await;
    let row = app.tenant_row(&t.id).await;
    let storage = app.kernel.storage(&row).await.unwrap();

    // Six uploads, each sending its whole file and holding the stream open:
    // three fit; the other three are refused before their bodies end,
    // rather than each being allowed the whole quota until its commit.
    let mut running = Vec::new();
    for _ in 0..6 {
        let (close, body) = held_open(pdf(SIZE));
        let s = storage.clone();
        let key = s.lesson_content(uuid::Uuid::now_v7());
        let task = tokio::spawn(async move {
            s.put_stream(&key, tenancy::MediaKind::Pdf, u64::MAX, body)
                .await
        });
        running.push((close, task));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while running.iter().filter(|(_, t)| t.is_finished()).count() < 3 {
        assert!(
            Instant::now() < deadline,
            "no upload refused while all six were streaming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = Vec::new();
    for (close, task) in running {
        if task.is_finished() {
            match task.await.unwrap() {
                Err(tenancy::Error::QuotaExceeded) => {}
                other => panic!("expected QuotaExceeded, got {other:?}"),
            }
        } else {
            open.push((close, task));
        }
    }
    assert_eq!(open.len(), 3, "three fit");
    for (close, task) in open {
        drop(close);
        let stored = task.await.unwrap().expect("a reserved upload commits");
        assert_eq!(stored.len, SIZE as u64);
    }
    assert_eq!(
        app.kernel.stored_bytes(&row).await.unwrap(),
        3 * STORED as i64
    );
    // What the operator sees counts exactly what is stored.
    let res = app
        .operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(res, 200).await["usage"]["stored_bytes"], 3 * STORED);
}
