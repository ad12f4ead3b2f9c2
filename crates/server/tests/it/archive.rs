//! A tenant's archive and moves, through the control-plane API, on every
//! backend: a restore after a purge comes back identical (rows by their
//! checksums, files byte for byte, passwords and tokens working); a copy is
//! a tenant of its own; hostile archives are refused and leave nothing; a
//! move keeps serving reads, freezes writes briefly, loses no acknowledged
//! write, and leaves nothing at the old place; the other tenants never see
//! a difference.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A tenant with a learner, a course, a lesson with a video spanning
/// several sealed chunks, an enrollment and progress (and the audit events
/// all that wrote).
struct Seeded {
    t: TestTenant,
    learner: Session,
    course: String,
    lesson: String,
    video: Vec<u8>,
}

fn video(len: usize) -> Vec<u8> {
    let mut out = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

async fn seeded(app: &TestApp, prefix: &str) -> Seeded {
    let t = app.tenant(prefix).await;
    let learner = app.user(&t, "learner").await;
    let course = app.course(&t.admin, "Archived course", true).await;
    let lesson = app.lesson(&t.admin, &course, "Lesson one").await;
    app.enroll(&t.admin, &course, &learner.user_id).await;
    let res = app
        .put(
            &learner,
            &format!("/api/v1/courses/{course}/lessons/{lesson}/progress"),
            json!({ "position_s": 12.5, "completed": true }),
        )
        .send()
        .await
        .expect("progress");
    assert!(res.status().is_success(), "progress: {}", res.status());
    let video = video(200_000);
    let res = app
        .req(Method::PUT, &t.admin, &content(&course, &lesson))
        .header("content-type", "video/mp4")
        .body(video.clone())
        .send()
        .await
        .expect("upload");
    assert!(res.status().is_success(), "upload: {}", res.status());
    Seeded {
        t,
        learner,
        course,
        lesson,
        video,
    }
}

fn content(course: &str, lesson: &str) -> String {
    format!("/api/v1/courses/{course}/lessons/{lesson}/content")
}

async fn export(app: &TestApp, slug: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = app.operator(
        Method::POST,
        &format!("/admin/api/v1/tenants/{slug}/export"),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("export");
    assert_eq!(res.status(), StatusCode::OK, "export {slug}");
    assert_eq!(res.headers()["content-type"], "application/x-tar");
    res.bytes().await.expect("archive").to_vec()
}

async fn import(
    app: &TestApp,
    archive: Vec<u8>,
    query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app
        .operator(
            Method::POST,
            &format!("/admin/api/v1/tenants/import{query}"),
        )
        .header("content-type", "application/x-tar")
        .body(archive);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("import")
}

/// An archive's entries, by name, in order.
type Entries = Vec<(String, Vec<u8>)>;

/// A hostile archive: what it is, its bytes, the headers it is sent with,
/// and what the refusal says.
type Case<'a> = (&'a str, Vec<u8>, &'a [(&'a str, &'a str)], &'a str);

/// The archive's entries, in order.
fn entries(archive: &[u8]) -> Entries {
    let mut a = tar::Archive::new(archive);
    a.entries()
        .expect("tar")
        .map(|e| {
            use std::io::Read;
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body).expect("read");
            (path, body)
        })
        .collect()
}

/// A tar of `entries`, as a hostile writer would make it.
fn retar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).expect("path");
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &body[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

fn manifest(archive: &[u8]) -> Value {
    let (name, body) = &entries(archive)[0];
    assert_eq!(name, "campus-archive.json");
    serde_json::from_slice(body).expect("manifest")
}

/// Each table's name, rows and SHA-256: equal checksums mean every row
/// came through byte-identical.
fn table_sums(archive: &[u8]) -> Vec<(String, u64, String)> {
    manifest(archive)["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_owned(),
                t["rows"].as_u64().expect("rows"),
                t["sha256"].as_str().expect("sha").to_owned(),
            )
        })
        .collect()
}

async fn status_of(app: &TestApp, slug: &str) -> StatusCode {
    app.operator(Method::GET, &format!("/admin/api/v1/tenants/{slug}"))
        .send()
        .await
        .expect("show")
        .status()
}

/// Every object key in the store.
async fn objects(app: &TestApp) -> Vec<String> {
    let store = app.kernel.object_store();
    let mut list = store.list(None);
    let mut out = Vec::new();
    while let Some(m) = list.next().await {
        out.push(m.expect("list").location.to_string());
    }
    out.sort();
    out
}

async fn purge(app: &TestApp, slug: &str) -> Value {
    let res = app
        .operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{slug}?purge=true"),
        )
        .send()
        .await
        .expect("purge");
    json_ok(res, 200).await
}

#[tokio::test]
async fn a_purged_tenant_restored_from_its_archive_comes_back_identical() {
    let app = spawn_app().await;
    let s = seeded(&app, "restore").await;
    let other = seeded(&app, "bystander").await;
    let other_before = table_sums(&export(&app, &other.t.slug, &[]).await);
    let usage_before = json_ok(
        app.operator(Method::GET, &format!("/admin/api/v1/tenants/{}", s.t.slug))
            .send()
            .await
            .expect("show"),
        200,
    )
    .await["usage"]["stored_bytes"]
        .clone();

    let archive = export(&app, &s.t.slug, &[]).await;
    let before = table_sums(&archive);
    assert_eq!(before.len(), 8);
    let rows: u64 = before.iter().map(|(_, n, _)| n).sum();
    assert!(
        rows >= 10,
        "a seeded tenant has rows in most tables: {before:?}"
    );
    // Files stay sealed: the video's bytes appear nowhere in the archive.
    assert!(
        !archive.windows(64).any(|w| w == &s.video[1000..1064]),
        "a file's plaintext is in the archive"
    );

    // The purge checks that nothing remains.
    let purged = purge(&app, &s.t.slug).await;
    let checks = purged["purge"]["checks"].as_array().expect("checks");
    assert!(checks.len() >= 5, "{purged}");
    assert!(checks.iter().all(|c| c["gone"] == true), "{purged}");
    assert_eq!(status_of(&app, &s.t.slug).await, StatusCode::NOT_FOUND);

    // The restore: same slug, same id (through the name API.md gives the route).
    let res = app
        .operator(Method::POST, "/admin/api/v1/tenants/imports")
        .header("content-type", "application/x-tar")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    let done = json_ok(res, 201).await;
    assert_eq!(done["restored"], true, "{done}");
    assert_eq!(done["id"], s.t.id.as_str());
    assert_eq!(done["status"], "active");
    assert_eq!(done["isolation"], backend().isolation());
    assert_eq!(done["usage"]["stored_bytes"], usage_before, "{done}");

    // Every row byte-identical: a new export has the same checksums.
    let res = app
        .operator(
            Method::POST,
            &format!("/admin/api/v1/tenants/{}/exports", s.t.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let again = res.bytes().await.unwrap().to_vec();
    assert_eq!(table_sums(&again), before);
    // Tokens issued before work; passwords are the same.
    let res = app.get(&s.t.admin, "/api/v1/courses").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let learner = app.login(&s.t.slug, &s.learner.email, PASSWORD).await;
    let res = app
        .get(&learner, &content(&s.course, &s.lesson))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), s.video, "the file");
    // The tenant next door never noticed.
    assert_eq!(
        table_sums(&export(&app, &other.t.slug, &[]).await),
        other_before
    );
    // A restore over a live tenant is refused: purge it first, or copy.
    let res = import(&app, archive, "", &[]).await;
    assert_problem(res, 409, "conflict").await;
}

#[tokio::test]
async fn a_copy_under_another_slug_is_a_tenant_of_its_own() {
    let app = spawn_app().await;
    let s = seeded(&app, "original").await;
    let key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="; // 32 bytes, base64
    let archive = export(&app, &s.t.slug, &[("campus-archive-key", key)]).await;
    let copy = unique_slug("copy");
    // Without its key, the archive opens nowhere.
    let res = import(&app, archive.clone(), &format!("?slug={copy}"), &[]).await;
    assert_problem(res, 422, "invalid_archive").await;
    let res = import(
        &app,
        archive.clone(),
        &format!("?slug={copy}"),
        &[("campus-archive-key", key)],
    )
    .await;
    if backend() == Backend::Pool {
        // Rows keep their ids, which the shared tables hold once per
        // placement: a copy of a pool tenant goes to another placement or
        // mode, and is refused cleanly here.
        let p = assert_problem(res, 422, "invalid_archive").await;
        assert!(p["detail"].as_str().unwrap().contains("pool"), "{p}");
        assert_eq!(status_of(&app, &copy).await, StatusCode::NOT_FOUND);
        let copied = json_ok(
            import(
                &app,
                archive,
                &format!("?slug={copy}&isolation=schema"),
                &[("campus-archive-key", key)],
            )
            .await,
            201,
        )
        .await;
        assert_eq!(copied["isolation"], "schema");
        return;
    }
    let done = json_ok(res, 201).await;
    assert_eq!(done["restored"], false);
    assert_ne!(done["id"], s.t.id.as_str());
    assert_eq!(done["source_id"], s.t.id.as_str());
    assert_eq!(
        table_sums(&export(&app, &copy, &[]).await),
        table_sums(&archive)
    );
    // The copy's users sign in with their passwords; the original's tokens
    // name the original and do not open the copy.
    let res = app
        .client
        .get(app.url("/api/v1/courses"))
        .header("X-Tenant", &copy)
        .bearer_auth(&s.t.admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let learner = app.login(&copy, &s.learner.email, PASSWORD).await;
    let res = app
        .get(&learner, &content(&s.course, &s.lesson))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), s.video);
    // Its files are its own (resealed under its key and prefix): purging
    // the original leaves the copy whole.
    purge(&app, &s.t.slug).await;
    let res = app
        .get(&learner, &content(&s.course, &s.lesson))
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().to_vec(), s.video);
}

#[tokio::test]
async fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let app = spawn_app().await;
    let s = seeded(&app, "hostile").await;
    let archive = export(&app, &s.t.slug, &[]).await;
    let pass = [("campus-archive-passphrase", "correct horse battery staple")];
    let with_pass = export(&app, &s.t.slug, &pass).await;
    let good = entries(&archive);
    let objects_before = objects(&app).await;
    let file_at = good
        .iter()
        .position(|(p, _)| p.starts_with("files/"))
        .expect("a file entry");
    let table_at = good
        .iter()
        .position(|(p, _)| p == "tables/courses")
        .expect("the courses table");

    let edit = |f: &dyn Fn(&mut Entries)| {
        let mut e = good.clone();
        f(&mut e);
        retar(&e)
    };
    let edit_manifest = |f: &dyn Fn(&mut Value)| {
        edit(&|e| {
            let mut m: Value = serde_json::from_slice(&e[0].1).unwrap();
            f(&mut m);
            e[0].1 = serde_json::to_vec_pretty(&m).unwrap();
        })
    };
    let mut symlink = tar::Header::new_ustar();
    symlink.set_path("files/evil").unwrap();
    symlink.set_link_name("/etc/passwd").unwrap();
    symlink.set_entry_type(tar::EntryType::Symlink);
    symlink.set_size(0);
    symlink.set_cksum();
    let mut with_link = retar(&good[..2]);
    with_link.truncate(with_link.len() - 1024);
    with_link.extend_from_slice(symlink.as_bytes());
    with_link.extend_from_slice(&retar(&good[2..]));
    let mut traversal = tar::Header::new_ustar();
    traversal.as_old_mut().name[..17].copy_from_slice(b"../../tmp/escaped");
    traversal.set_size(0);
    traversal.set_entry_type(tar::EntryType::Regular);
    traversal.set_cksum();
    let mut with_traversal = retar(&good[..2]);
    with_traversal.truncate(with_traversal.len() - 1024);
    with_traversal.extend_from_slice(traversal.as_bytes());
    with_traversal.extend_from_slice(&retar(&good[2..]));

    let cases: Vec<Case> = vec![
        (
            "garbage",
            b"this is not an archive at all".repeat(40),
            &[],
            "not a ustar",
        ),
        ("empty", Vec::new(), &[], "truncated"),
        (
            "truncated in a file",
            archive[..archive.len() / 2].to_vec(),
            &[],
            "truncated",
        ),
        (
            "truncated in the tables",
            archive[..archive.len() - 2048].to_vec(),
            &[],
            "",
        ),
        (
            "a file altered",
            edit(&|e| e[file_at].1[5000] ^= 1),
            &[],
            "failed authentication",
        ),
        (
            "a table altered",
            edit(&|e| {
                let n = e[table_at].1.len();
                e[table_at].1[n - 5] ^= 1
            }),
            &[],
            "failed authentication",
        ),
        (
            "a manifest lying about counts",
            edit_manifest(&|m| m["tables"][3]["rows"] = json!(999)),
            &[],
            "MAC",
        ),
        (
            "a newer schema",
            edit_manifest(&|m| m["schema_version"] = json!(99)),
            &[],
            "newer",
        ),
        (
            "a newer format",
            edit_manifest(&|m| m["format_version"] = json!(2)),
            &[],
            "newer",
        ),
        (
            "a manifest with a field this build does not know",
            edit_manifest(&|m| m["tenant"]["tenant_id_override"] = json!("x")),
            &[],
            "manifest",
        ),
        (
            "a file left out",
            edit(&|e| {
                e.remove(file_at);
            }),
            &[],
            "index",
        ),
        (
            "the file index altered",
            edit(&|e| {
                let i = e
                    .iter()
                    .position(|(p, _)| p == "campus-files.json")
                    .unwrap();
                e[i].1.push(b'\n');
            }),
            &[],
            "MAC",
        ),
        (
            "tables before files",
            edit(&|e| {
                let f = e.remove(file_at);
                e.push(f);
            }),
            &[],
            "",
        ),
        (
            "a file twice",
            edit(&|e| {
                let f = e[file_at].clone();
                e.insert(file_at, f);
            }),
            &[],
            "twice",
        ),
        ("a symbolic link", with_link, &[], "not a regular file"),
        ("a path out of the archive", with_traversal, &[], "layout"),
        (
            "data after the end",
            {
                let mut a = archive.clone();
                a.extend_from_slice(b"trailing");
                a
            },
            &[],
            "follows the archive's end",
        ),
        (
            "a passphrase archive without it",
            with_pass.clone(),
            &[],
            "passphrase",
        ),
        (
            "the wrong passphrase",
            with_pass.clone(),
            &[("campus-archive-passphrase", "incorrect horse battery")],
            "passphrase does not open",
        ),
        (
            "a deployment archive with a key",
            archive.clone(),
            &[(
                "campus-archive-key",
                "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
            )],
            "master key",
        ),
    ];
    for (what, bytes, headers, says) in cases {
        let slug = unique_slug("hostile-copy");
        let res = import(&app, bytes, &copy_query(&slug), headers).await;
        let p = assert_problem(res, 422, "invalid_archive").await;
        assert!(
            p["detail"].as_str().unwrap_or("").contains(says),
            "{what}: {p}"
        );
        assert_eq!(
            status_of(&app, &slug).await,
            StatusCode::NOT_FOUND,
            "{what}: a tenant was left behind"
        );
    }
    // No tenant half-made, no object left in the store.
    let listed = json_ok(
        app.operator(Method::GET, "/admin/api/v1/tenants?limit=200")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let slugs: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, [s.t.slug.as_str()], "{listed}");
    assert_eq!(objects(&app).await, objects_before);
    // And the archive itself still imports.
    let query = copy_query(&unique_slug("fine"));
    json_ok(import(&app, with_pass, &query, &pass).await, 201).await;
}

/// The query of a copy under `slug`: in another mode on the `pool`
/// backend (a copy keeps its rows' ids, which a placement's shared tables
/// hold once).
fn copy_query(slug: &str) -> String {
    match backend() {
        Backend::Pool => format!("?slug={slug}&isolation=schema"),
        _ => format!("?slug={slug}"),
    }
}

/// The mode a tenant of this backend moves to.
fn other_mode() -> &'static str {
    match backend() {
        Backend::Sqlite | Backend::Database => "schema",
        Backend::Schema => "pool",
        Backend::Pool => "database",
    }
}

#[tokio::test]
async fn a_tenant_moves_online_losing_no_write_and_keeping_its_tokens() {
    let app = spawn_app().await;
    let s = seeded(&app, "mover").await;
    let other = seeded(&app, "still").await;
    let other_before = table_sums(&export(&app, &other.t.slug, &[]).await);
    let path = format!("/admin/api/v1/tenants/{}/move", s.t.slug);
    if !backend().is_postgres() {
        // The embedded default has one mode and one placement.
        let res = app
            .operator(Method::POST, &path)
            .json(&json!({ "isolation": "schema" }))
            .send()
            .await
            .unwrap();
        assert_problem(res, 422, "validation_failed").await;
        return;
    }
    let before = table_sums(&export(&app, &s.t.slug, &[]).await);
    let res = app
        .operator(Method::POST, &path)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "validation_failed").await;

    // Readers and a writer keep going throughout the move.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, url, token, slug, stop) = (
            app.client.clone(),
            app.url(&content(&s.course, &s.lesson)),
            s.t.admin.token.clone(),
            s.t.slug.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .get(&url)
                    .header("X-Tenant", &slug)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                statuses.push(res.status());
                let _ = res.bytes().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };
    let writer = {
        let (client, url, token, slug, stop) = (
            app.client.clone(),
            app.url("/api/v1/courses"),
            s.t.admin.token.clone(),
            s.t.slug.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut made, mut refused) = (Vec::new(), 0);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let res = client
                    .post(&url)
                    .header("X-Tenant", &slug)
                    .bearer_auth(&token)
                    .json(&json!({ "title": format!("during {n}"), "description": "d" }))
                    .send()
                    .await
                    .unwrap();
                match res.status() {
                    StatusCode::CREATED => made.push(
                        res.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    ),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(res.headers().contains_key("retry-after"));
                        let p: Value = res.json().await.unwrap();
                        assert_eq!(p["code"], "tenant_maintenance", "{p}");
                        refused += 1;
                    }
                    other => panic!("a write during the move answered {other}"),
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (made, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_move = {
        let req = app
            .operator(Method::POST, &path)
            .json(&json!({ "isolation": other_mode() }));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            req.send().await.unwrap().status()
        })
    };
    let res = app
        .operator(Method::POST, &path)
        .json(&json!({ "isolation": other_mode() }))
        .send()
        .await
        .unwrap();
    let moved = json_ok(res, 200).await;
    // A second move of the tenant while one runs is refused, never run.
    let second = second_move.await.unwrap();
    assert!(
        second == StatusCode::CONFLICT || second == StatusCode::UNPROCESSABLE_ENTITY,
        "a concurrent move answered {second}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    let (made, refused) = writer.await.unwrap();
    assert_eq!(moved["to_isolation"], other_mode(), "{moved}");
    assert!(moved["freeze_ms"].as_u64().unwrap() > 0, "{moved}");
    assert!(
        reads.iter().all(|s| *s == StatusCode::OK),
        "reads during the move: {reads:?}"
    );
    assert!(refused > 0, "no write met the freeze: {moved}");
    assert!(!made.is_empty(), "no write went through before or after");
    // Every acknowledged write is there after the move.
    for id in &made {
        let res = app
            .get(&s.t.admin, &format!("/api/v1/courses/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "course {id} was lost");
    }
    let row = app.tenant_row(&s.t.id).await;
    assert_eq!(row.isolation.as_str(), other_mode());
    assert_eq!(row.status, tenancy::TenantStatus::Active);
    // Nothing is left at the old place (only the new one holds the tenant).
    let f = app.footprint(&s.t.id).await;
    match backend() {
        Backend::Schema => assert!(!f.schema && !f.role && f.pool_rows > 0, "{f:?}"),
        Backend::Pool => assert!(f.pool_rows == 0 && f.database, "{f:?}"),
        Backend::Database => assert!(!f.database && f.schema, "{f:?}"),
        Backend::Sqlite => unreachable!(),
    }
    // The tables moved as they were, plus the writes made meanwhile.
    let after = table_sums(&export(&app, &s.t.slug, &[]).await);
    for (b, a) in before.iter().zip(&after) {
        if b.0 != "courses" && b.0 != "audit_events" {
            assert_eq!(b, a, "{} changed in the move", b.0);
        }
    }
    assert_eq!(
        table_sums(&export(&app, &other.t.slug, &[]).await),
        other_before
    );
    // Moved back, it is as it was before (a round trip).
    let res = app
        .operator(Method::POST, &path)
        .json(&json!({ "isolation": backend().isolation() }))
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await;
    app.assert_stored(&s.t.id).await;
}

#[tokio::test]
async fn a_tenant_moves_to_another_placement() {
    if !backend().is_postgres() {
        return;
    }
    let second = fresh_pg_database();
    let app = spawn_app_with(|k, _| {
        let pg = k.postgres.as_mut().expect("postgres");
        let mut p = pg_config(&second, 4).placements.remove(0);
        p.name = "second".into();
        pg.placements.push(p);
        // Another name for the default placement's own database.
        let mut alias = pg.placements[0].clone();
        alias.name = "alias".into();
        pg.placements.push(alias);
    })
    .await;
    let s = seeded(&app, "traveller").await;
    let before = table_sums(&export(&app, &s.t.slug, &[]).await);
    let path = format!("/admin/api/v1/tenants/{}/move", s.t.slug);
    // A "move" to where it already is, under another name, would destroy
    // it: refused, nothing changed.
    let res = app
        .operator(Method::POST, &path)
        .json(&json!({ "placement": "alias" }))
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 422, "validation_failed").await;
    assert!(
        p["detail"].as_str().unwrap().contains("already holds"),
        "{p}"
    );
    assert_eq!(app.tenant_row(&s.t.id).await.placement, "default");
    assert_eq!(table_sums(&export(&app, &s.t.slug, &[]).await), before);
    // A `database` tenant cannot change placements within one cluster
    // (database names are the cluster's): refused before anything moves.
    if backend() == Backend::Database {
        let res = app
            .operator(Method::POST, &path)
            .json(&json!({ "placement": "second" }))
            .send()
            .await
            .unwrap();
        let p = assert_problem(res, 422, "validation_failed").await;
        assert!(p["detail"].as_str().unwrap().contains("cluster"), "{p}");
    }
    let body = match backend() {
        Backend::Database => json!({ "placement": "second", "isolation": "schema" }),
        _ => json!({ "placement": "second" }),
    };
    let moved = json_ok(
        app.operator(Method::POST, &path)
            .json(&body)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(moved["to_placement"], "second");
    assert_eq!(app.tenant_row(&s.t.id).await.placement, "second");
    // Same rows, same file, same token.
    assert_eq!(table_sums(&export(&app, &s.t.slug, &[]).await), before);
    let res = app
        .get(&s.t.admin, &content(&s.course, &s.lesson))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), s.video);
    // Purged there, nothing remains on either placement.
    let purged = purge(&app, &s.t.slug).await;
    assert!(
        purged["purge"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["gone"] == true),
        "{purged}"
    );
    assert_eq!(app.footprint(&s.t.id).await, Footprint::default());
    drop(app);
    drop_pg_database(&second);
}
