//! Files: lesson content and avatars, through the public API — round trips,
//! ranges, signed links, isolation, encryption at rest, quotas, purge. Runs on
//! local disk or S3 (`CAMPUS_TEST_STORAGE=s3`).

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;

const CHUNK: usize = 64 * 1024;

/// A PDF-looking file of `len` bytes: the magic, then pseudo-random bytes
/// with `marker` planted every 10 000 bytes.
fn pdf(len: usize, marker: &str, seed: u64) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut x = seed | 1;
    while out.len() < len {
        if out.len() % 10_000 < 9 {
            out.extend_from_slice(marker.as_bytes());
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out.truncate(len);
    out
}

fn mp4(len: usize) -> Vec<u8> {
    let mut out = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    out.resize(len.max(out.len()), 7);
    out
}

fn png(len: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    out.resize(len.max(out.len()), 1);
    out
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// A tenant with a course and a lesson, made by its admin.
struct Fixture {
    t: TestTenant,
    course: String,
    lesson: String,
}

impl Fixture {
    fn content(&self) -> String {
        content_path(&self.course, &self.lesson)
    }
}

fn content_path(course: &str, lesson: &str) -> String {
    format!("/api/v1/courses/{course}/lessons/{lesson}/content")
}

async fn fixture(app: &TestApp, prefix: &str) -> Fixture {
    let t = app.tenant(prefix).await;
    let course = app.course(&t.admin, "Files", true).await;
    let lesson = app.lesson(&t.admin, &course, "One").await;
    Fixture { t, course, lesson }
}

async fn upload(
    app: &TestApp,
    s: &Session,
    path: &str,
    mime: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.req(Method::PUT, s, path)
        .header("content-type", mime)
        .body(body)
        .send()
        .await
        .expect("upload")
}

/// A signed link to the fixture's lesson content, as its admin asks for one.
async fn content_url(app: &TestApp, f: &Fixture) -> Value {
    let res = app
        .req(Method::POST, &f.t.admin, &format!("{}-url", f.content()))
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await
}

async fn download(app: &TestApp, s: &Session, path: &str) -> Vec<u8> {
    let res = app.get(s, path).send().await.expect("download");
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.expect("body").to_vec()
}

async fn range(app: &TestApp, s: &Session, path: &str, spec: &str) -> reqwest::Response {
    app.get(s, path)
        .header("range", spec)
        .send()
        .await
        .expect("range")
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The stored objects under a tenant's prefix: (key, size).
async fn objects(app: &TestApp, tenant_id: &str) -> Vec<(String, u64)> {
    let store = app.kernel.object_store();
    let prefix = object_store::path::Path::from(format!("tenants/{tenant_id}"));
    let mut out = Vec::new();
    let mut listed = store.list(Some(&prefix));
    while let Some(m) = listed.next().await {
        let m = m.expect("list");
        out.push((m.location.to_string(), m.size));
    }
    out.sort();
    out
}

async fn stored_bytes(app: &TestApp, slug: &str) -> i64 {
    let res = app
        .operator(Method::GET, &format!("/admin/api/v1/tenants/{slug}"))
        .send()
        .await
        .expect("tenant");
    let v = json_ok(res, 200).await;
    v["usage"]["stored_bytes"].as_i64().expect("stored_bytes")
}

#[tokio::test]
async fn content_round_trips_with_ranges_and_etags() {
    let app = spawn_app().await;
    let f = fixture(&app, "files").await;
    let file = pdf(3 * CHUNK + 1234, "MARKER-ROUND-TRIP", 1);
    let len = file.len();
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        res.text().await
    );

    let res = app.get(&f.t.admin, &f.content()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "application/pdf");
    assert_eq!(header(&res, "accept-ranges"), "bytes");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(header(&res, "content-length"), len.to_string());
    let etag = header(&res, "etag");
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    assert_eq!(sha(&res.bytes().await.unwrap()), sha(&file));

    // If-None-Match with the current tag: 304, no body.
    let res = app
        .get(&f.t.admin, &f.content())
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert!(res.bytes().await.unwrap().is_empty());

    // First byte, last byte, a suffix, a span across chunk boundaries.
    for (spec, from, to) in [
        ("bytes=0-0".to_owned(), 0, 0),
        (format!("bytes={}-", len - 1), len - 1, len - 1),
        ("bytes=-500".to_owned(), len - 500, len - 1),
        (
            format!("bytes={}-{}", CHUNK - 10, 2 * CHUNK + 10),
            CHUNK - 10,
            2 * CHUNK + 10,
        ),
        (format!("bytes={}-{}", CHUNK, CHUNK), CHUNK, CHUNK),
        (format!("bytes=100-{}", len + 5000), 100, len - 1),
    ] {
        let res = range(&app, &f.t.admin, &f.content(), &spec).await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(
            header(&res, "content-range"),
            format!("bytes {from}-{to}/{len}"),
            "{spec}"
        );
        assert_eq!(header(&res, "content-length"), (to - from + 1).to_string());
        let got = res.bytes().await.unwrap();
        assert_eq!(&got[..], &file[from..=to], "{spec}");
    }

    // Unsatisfiable: 416 with the length.
    for spec in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 10, len + 20),
        "bytes=-0".into(),
    ] {
        let res = range(&app, &f.t.admin, &f.content(), &spec).await;
        assert_eq!(
            header(&res, "content-range"),
            format!("bytes */{len}"),
            "{spec}"
        );
        assert_problem(res, 416, "range_not_satisfiable").await;
    }

    // Many ranges of uneven sizes put the exact file back together.
    let mut whole = Vec::new();
    let mut at = 0;
    let mut step = 777;
    while at < len {
        let to = (at + step).min(len) - 1;
        let res = range(&app, &f.t.admin, &f.content(), &format!("bytes={at}-{to}")).await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        whole.extend_from_slice(&res.bytes().await.unwrap());
        at = to + 1;
        step = step * 3 % 70_001 + 1;
    }
    assert_eq!(sha(&whole), sha(&file));

    // Replaced: a new tag, the new bytes, one object.
    let next = mp4(CHUNK);
    let res = upload(&app, &f.t.admin, &f.content(), "video/mp4", next.clone()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get(&f.t.admin, &f.content()).send().await.unwrap();
    assert_eq!(header(&res, "content-type"), "video/mp4");
    assert_ne!(header(&res, "etag"), etag);
    assert_eq!(sha(&res.bytes().await.unwrap()), sha(&next));
    assert_eq!(objects(&app, &f.t.id).await.len(), 1);
    // Exactly a chunk: the empty final chunk round-trips too.
    let res = range(
        &app,
        &f.t.admin,
        &f.content(),
        &format!("bytes={}-", CHUNK - 1),
    )
    .await;
    assert_eq!(&res.bytes().await.unwrap()[..], &next[CHUNK - 1..]);
}

#[tokio::test]
async fn uploads_are_checked_against_their_magic_bytes_and_roles() {
    let app = spawn_app().await;
    let f = fixture(&app, "magic").await;
    // Declared PDF, really MP4; declared MP4, really PDF; a type not taken.
    for (mime, body) in [
        ("application/pdf", mp4(1000)),
        ("video/mp4", pdf(1000, "x", 2)),
        ("text/html", b"<html><script>alert(1)</script>".to_vec()),
        ("application/pdf", Vec::new()),
    ] {
        let res = upload(&app, &f.t.admin, &f.content(), mime, body).await;
        assert_problem(res, 415, "unsupported_media_type").await;
    }
    assert!(objects(&app, &f.t.id).await.is_empty());
    assert_eq!(stored_bytes(&app, &f.t.slug).await, 0);
    let res = app.get(&f.t.admin, &f.content()).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;

    // Instructors may upload; learners may not, and read only when enrolled.
    let instructor = app.user(&f.t, "instructor").await;
    let learner = app.user(&f.t, "learner").await;
    let file = pdf(5000, "ROLES", 3);
    let res = upload(
        &app,
        &instructor,
        &f.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = upload(
        &app,
        &learner,
        &f.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_problem(res, 403, "forbidden").await;
    let res = app.get(&learner, &f.content()).send().await.unwrap();
    assert_problem(res, 403, "forbidden").await;
    let res = app
        .req(Method::POST, &learner, &format!("{}-url", f.content()))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;
    app.enroll(&f.t.admin, &f.course, &learner.user_id).await;
    assert_eq!(download(&app, &learner, &f.content()).await, file);
    // Without a token (and without a signature): 401.
    let res = app
        .client
        .get(app.url(&f.content()))
        .header("X-Tenant", &f.t.slug)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn another_tenant_cannot_reach_content_by_any_route() {
    let app = spawn_app().await;
    let a = fixture(&app, "files-a").await;
    let b = fixture(&app, "files-b").await;
    let file = pdf(2 * CHUNK, "B-SECRET", 4);
    let res = upload(
        &app,
        &b.t.admin,
        &b.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let before = objects(&app, &b.t.id).await;

    // A's admin names B's course and lesson under A: not found, every route.
    let res = app.get(&a.t.admin, &b.content()).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = upload(
        &app,
        &a.t.admin,
        &b.content(),
        "application/pdf",
        pdf(100, "A", 5),
    )
    .await;
    assert_problem(res, 404, "not_found").await;
    let res = app
        .req(Method::POST, &a.t.admin, &format!("{}-url", b.content()))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    // A's course with B's lesson id: not found either.
    let res = app
        .get(&a.t.admin, &content_path(&a.course, &b.lesson))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
    let res = app
        .get(
            &a.t.admin,
            &format!("/api/v1/users/{}/avatar", b.t.admin.user_id),
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;

    // Ids crafted as paths go nowhere.
    for lesson in [
        "..",
        "..%2F..%2Ftenants",
        "%2Fetc%2Fpasswd",
        &format!("{}%00", b.lesson),
        &format!("..%2F{}", b.t.id),
        "%2E%2E",
    ] {
        for path in [
            content_path(&a.course, lesson),
            format!("/api/v1/courses/{}/lessons/{lesson}/content", b.course),
        ] {
            let res = app.get(&a.t.admin, &path).send().await.unwrap();
            let status = res.status().as_u16();
            assert!(status == 400 || status == 404, "{path}: {status}");
            let res = upload(&app, &a.t.admin, &path, "application/pdf", pdf(100, "A", 6)).await;
            let status = res.status().as_u16();
            assert!(status == 400 || status == 404, "{path}: {status}");
        }
    }

    // B's object is untouched, and A stored nothing.
    assert_eq!(objects(&app, &b.t.id).await, before);
    assert_eq!(
        sha(&download(&app, &b.t.admin, &b.content()).await),
        sha(&file)
    );
    assert!(objects(&app, &a.t.id).await.is_empty());

    // Even B's sealed bytes copied into A's prefix, behind the storage's back,
    // do not open as A's: they are bound to B's key and B's object key.
    let store = app.kernel.object_store();
    let key = |t: &TestTenant, lesson: &str| {
        object_store::path::Path::from(format!("tenants/{}/lessons/{lesson}/content", t.id))
    };
    store
        .copy(&key(&b.t, &b.lesson), &key(&a.t, &a.lesson))
        .await
        .expect("copy");
    let res = app.get(&a.t.admin, &a.content()).send().await.unwrap();
    assert_problem(res, 500, "internal").await;
    // The same from the middle of the file: no byte of B's comes out.
    let res = range(
        &app,
        &a.t.admin,
        &a.content(),
        &format!("bytes={}-", CHUNK + 5),
    )
    .await;
    assert_problem(res, 500, "internal").await;
}

#[tokio::test]
async fn signed_links_work_without_a_token_only_as_signed() {
    // Links without a token are unauthenticated traffic, limited per
    // address: this test sends a few hundred altered ones from one.
    let app = spawn_app_with(|_, s| lift_anonymous_limits(s)).await;
    let f = fixture(&app, "signed").await;
    let other = app.tenant("signed-other").await;
    let file = pdf(CHUNK + 99, "SIGNED", 7);
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let v = content_url(&app, &f).await;
    let url = v["url"].as_str().expect("url").to_owned();
    let expires_at = v["expires_at"].as_str().expect("expires_at");
    let expires = humantime_secs(expires_at);
    let now = now_secs();
    assert!(
        expires > now && expires <= now + 15 * 60 + 5,
        "{expires_at}"
    );

    let anon = |slug: &str, url: &str| {
        app.client
            .get(app.url(url))
            .header("X-Tenant", slug.to_owned())
    };
    let res = anon(&f.t.slug, &url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(sha(&res.bytes().await.unwrap()), sha(&file));
    // Ranges work through the link too.
    let res = anon(&f.t.slug, &url)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&res.bytes().await.unwrap()[..], &file[file.len() - 10..]);

    // Under another tenant: refused.
    let res = anon(&other.slug, &url).send().await.unwrap();
    assert_problem(res, 403, "invalid_signature").await;

    // Any hex digit of the ids, the expiry or the signature changed: refused.
    let (path, query) = url.split_once('?').expect("query");
    let course_at = "/api/v1/courses/".len();
    let lesson_at = path.find("/lessons/").expect("lessons") + "/lessons/".len();
    let mut altered = 0;
    for (i, c) in url.char_indices() {
        let in_ids =
            (course_at..course_at + 36).contains(&i) || (lesson_at..lesson_at + 36).contains(&i);
        let in_query = i > path.len() && c.is_ascii_alphanumeric() && !query.is_empty();
        if !(in_ids || in_query) {
            continue;
        }
        let swapped = match c {
            '0'..='8' => ((c as u8) + 1) as char,
            '9' => '0',
            'a'..='e' => ((c as u8) + 1) as char,
            'f' => 'a',
            _ => continue,
        };
        let mut bad = url.clone();
        bad.replace_range(i..i + 1, &swapped.to_string());
        let res = anon(&f.t.slug, &bad).send().await.unwrap();
        let status = res.status().as_u16();
        // A changed parameter name drops the signature: then a token is wanted.
        assert!(status == 403 || status == 401, "{bad}: {status}");
        altered += 1;
    }
    assert!(altered > 100, "{altered}");
    // The signature in capitals (64 hex digits: some are letters).
    let (before_sig, sig) = url.split_once("&sig=").expect("sig");
    let upper = format!("{before_sig}&sig={}", sig.to_uppercase());
    assert_ne!(upper, url);
    let res = anon(&f.t.slug, &upper).send().await.unwrap();
    assert_problem(res, 403, "invalid_signature").await;
    let res = anon(&f.t.slug, &format!("{path}?expires={expires}&sig="))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "invalid_signature").await;

    // Expired, though properly signed: refused. So is one from too far ahead.
    let tenant = app.tenant_row(&f.t.id).await;
    let storage = app.kernel.storage(&tenant).await.expect("storage");
    for exp in [now - 1, now + 24 * 3600] {
        let sig = storage.sign("lesson-content", &[&f.course, &f.lesson], exp);
        let res = anon(&f.t.slug, &format!("{path}?expires={exp}&sig={sig}"))
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "invalid_signature").await;
    }
    // The same link minted with the other tenant's key does not open ours.
    let theirs = app
        .kernel
        .storage(&app.tenant_row(&other.id).await)
        .await
        .unwrap();
    let sig = theirs.sign("lesson-content", &[&f.course, &f.lesson], expires);
    let res = anon(&f.t.slug, &format!("{path}?expires={expires}&sig={sig}"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "invalid_signature").await;
}

#[tokio::test]
async fn a_signed_link_spends_the_tenants_allowance_not_an_addresss() {
    // A tiny anonymous allowance (per address and per tenant): a video
    // played through a signed link sends many range requests from one
    // address (a school behind NAT), and must not run into it.
    let tiny = server::edge::limits::Rate::new(
        std::num::NonZeroU32::new(1).expect("non-zero"),
        std::num::NonZeroU32::new(3).expect("non-zero"),
    );
    let app = spawn_app_with(|_, s| {
        s.address_rate = tiny;
        s.anonymous_rates = tenancy::PerPlan {
            free: tiny,
            standard: tiny,
            enterprise: tiny,
        };
    })
    .await;
    let f = fixture(&app, "nat").await;
    let file = mp4(3 * CHUNK);
    let res = upload(&app, &f.t.admin, &f.content(), "video/mp4", file.clone()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let url = content_url(&app, &f).await["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let get = |url: &str, range: String| {
        app.client
            .get(app.url(url))
            .header("X-Tenant", f.t.slug.clone())
            .header("range", range)
    };
    // Ten times the anonymous burst, as a player would fetch it.
    for i in 0..30 {
        let res = get(&url, format!("bytes={}-{}", i * 100, i * 100 + 99))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "request {i}");
        assert_eq!(
            &res.bytes().await.unwrap()[..],
            &file[i * 100..i * 100 + 100]
        );
    }
    // A link that does not hold is anonymous traffic: refused past the burst.
    let (before_sig, sig) = url.split_once("&sig=").expect("sig");
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let bad = format!("{before_sig}&sig={flipped}{}", &sig[1..]);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            get(&bad, "bytes=0-9".into())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    // The burst of 3 (less the admin's login, more what a second refills)
    // answers the link itself; then the address's allowance is spent.
    assert_eq!(statuses[0], 403, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [403, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_signed_link_has_an_allowance_of_its_own_like_a_user() {
    // One user's allowance, tiny: a link shared too widely spends like one
    // user, and the signed-in users keep theirs.
    let app = spawn_app_with(|_, s| {
        s.user_rates.standard = server::edge::limits::Rate::new(
            std::num::NonZeroU32::new(1).expect("non-zero"),
            std::num::NonZeroU32::new(6).expect("non-zero"),
        );
    })
    .await;
    let f = fixture(&app, "shared").await;
    let res = upload(&app, &f.t.admin, &f.content(), "video/mp4", mp4(CHUNK)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let url = content_url(&app, &f).await["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let mut statuses = Vec::new();
    for _ in 0..14 {
        let res = app
            .client
            .get(app.url(&url))
            .header("X-Tenant", f.t.slug.clone())
            .header("range", "bytes=0-9")
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses[0], 206, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [206, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another user of the tenant is not refused for it.
    let learner = app.user(&f.t, "learner").await;
    let res = app
        .req(Method::GET, &learner, "/api/v1/me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn humantime_secs(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339).expect("rfc3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn files_are_ciphertext_at_rest_and_purge_shreds_them() {
    let app = spawn_app().await;
    let f = fixture(&app, "sealed").await;
    let marker = "KNOWN-PLAINTEXT-MARKER-0123456789";
    let file = pdf(2 * CHUNK + 17, marker, 8);
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        file.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let listed = objects(&app, &f.t.id).await;
    assert_eq!(
        listed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [format!("tenants/{}/lessons/{}/content", f.t.id, f.lesson)]
    );
    let raw = app
        .kernel
        .object_store()
        .get(&object_store::path::Path::from(listed[0].0.as_str()))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert!(raw.len() > file.len());
    assert!(!raw.windows(marker.len()).any(|w| w == marker.as_bytes()));
    assert!(
        !raw.windows(8).any(|w| w == &file[..8]),
        "the PDF magic shows"
    );
    assert_eq!(stored_bytes(&app, &f.t.slug).await, raw.len() as i64);
    if storage() == Storage::File {
        // The file on disk is that same ciphertext.
        let on_disk = std::fs::read(app.dir.path().join("objects").join(&listed[0].0)).unwrap();
        assert_eq!(on_disk, raw.to_vec());
    }

    let tenant = app.tenant_row(&f.t.id).await;
    assert!(app.kernel.has_storage_key(&tenant).await.unwrap());
    let res = app
        .operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{}?purge=true", f.t.slug),
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert!(
        !app.kernel.has_storage_key(&tenant).await.unwrap(),
        "key left"
    );
    assert!(objects(&app, &f.t.id).await.is_empty(), "objects left");
}

#[tokio::test]
async fn quota_and_size_limits_refuse_uploads_and_count_nothing() {
    let app = spawn_app_with(|k, s| {
        k.storage.quotas.standard = 200_000;
        s.upload_limit = 150_000;
    })
    .await;
    let f = fixture(&app, "quota").await;
    let second = app.lesson(&f.t.admin, &f.course, "Two").await;
    let first = pdf(120_000, "Q1", 9);
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        first.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let used = stored_bytes(&app, &f.t.slug).await;
    assert!(used > 120_000 && used < 121_000, "{used}");

    // Over the quota (not over the size limit): 413 quota_exceeded.
    let res = upload(
        &app,
        &f.t.admin,
        &content_path(&f.course, &second),
        "application/pdf",
        pdf(100_000, "Q2", 10),
    )
    .await;
    assert_problem(res, 413, "quota_exceeded").await;
    assert_eq!(stored_bytes(&app, &f.t.slug).await, used);
    assert_eq!(objects(&app, &f.t.id).await.len(), 1);

    // Over the size limit, declared or streamed without a length:
    // payload_too_large (a replacement, so the quota would allow it).
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        pdf(160_000, "Q3", 11),
    )
    .await;
    assert_problem(res, 413, "payload_too_large").await;
    let big = pdf(160_000, "Q4", 12);
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let res = app
        .req(Method::PUT, &f.t.admin, &f.content())
        .header("content-type", "application/pdf")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "payload_too_large").await;
    assert_eq!(stored_bytes(&app, &f.t.slug).await, used);
    assert_eq!(download(&app, &f.t.admin, &f.content()).await, first);

    // Replacing the file frees the old bytes: a same-size file fits.
    let again = pdf(120_000, "Q5", 13);
    let res = upload(
        &app,
        &f.t.admin,
        &f.content(),
        "application/pdf",
        again.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(stored_bytes(&app, &f.t.slug).await, used);
    assert_eq!(download(&app, &f.t.admin, &f.content()).await, again);

    // Usage is the exact sum of the objects; deleting the lesson frees it all.
    let sum: u64 = objects(&app, &f.t.id).await.iter().map(|(_, n)| n).sum();
    assert_eq!(sum as i64, used);
    let res = app
        .delete(
            &f.t.admin,
            &format!("/api/v1/courses/{}/lessons/{}", f.course, f.lesson),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(stored_bytes(&app, &f.t.slug).await, 0);
    assert!(objects(&app, &f.t.id).await.is_empty());
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing() {
    let app = spawn_app().await;
    let f = fixture(&app, "cut").await;
    let good = pdf(CHUNK * 2, "CUT", 14);
    let mut pieces: Vec<Result<bytes::Bytes, std::io::Error>> = good
        .chunks(8192)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    pieces.push(Err(std::io::Error::other("client gone")));
    let res = app
        .req(Method::PUT, &f.t.admin, &f.content())
        .header("content-type", "application/pdf")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    // The client gave up mid-body: whatever it saw, nothing is stored.
    if let Ok(res) = res {
        assert!(!res.status().is_success(), "{}", res.status());
    }
    // The server may still be unwinding the upload.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(objects(&app, &f.t.id).await.is_empty());
    assert_eq!(stored_bytes(&app, &f.t.slug).await, 0);
    let res = app.get(&f.t.admin, &f.content()).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
}

#[tokio::test]
async fn deleting_a_course_removes_its_lessons_files() {
    let app = spawn_app().await;
    let f = fixture(&app, "course-del").await;
    let res = upload(&app, &f.t.admin, &f.content(), "video/mp4", mp4(10_000)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(objects(&app, &f.t.id).await.len(), 1);
    let res = app
        .delete(&f.t.admin, &format!("/api/v1/courses/{}", f.course))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(objects(&app, &f.t.id).await.is_empty());
    assert_eq!(stored_bytes(&app, &f.t.slug).await, 0);
}

#[tokio::test]
async fn avatars_round_trip_for_their_tenant_only() {
    let app = spawn_app().await;
    let t = app.tenant("avatars").await;
    let other = app.tenant("avatars-other").await;
    let learner = app.user(&t, "learner").await;
    let peer = app.user(&t, "learner").await;
    let path = format!("/api/v1/users/{}/avatar", learner.user_id);

    let res = app.get(&peer, &path).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    let image = png(3000);
    let res = upload(&app, &learner, &path, "image/png", image.clone()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get(&peer, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "image/png");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    let etag = header(&res, "etag");
    assert_eq!(res.bytes().await.unwrap().to_vec(), image);
    let res = app
        .get(&peer, &path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // Someone else's avatar: only an admin may set it.
    let res = upload(&app, &peer, &path, "image/png", png(100)).await;
    assert_problem(res, 403, "forbidden").await;
    let res = upload(&app, &t.admin, &path, "image/jpeg", png(100)).await;
    assert_problem(res, 415, "unsupported_media_type").await;
    let res = upload(&app, &t.admin, &path, "image/gif", b"GIF89a......".to_vec()).await;
    assert_problem(res, 415, "unsupported_media_type").await;
    let res = upload(&app, &t.admin, &path, "image/png", png(5 * 1024 * 1024 + 1)).await;
    assert_problem(res, 413, "payload_too_large").await;
    // Another tenant's admin: the user does not exist there.
    let res = upload(&app, &other.admin, &path, "image/png", png(100)).await;
    assert_problem(res, 404, "not_found").await;
    let res = app.get(&other.admin, &path).send().await.unwrap();
    assert_problem(res, 404, "not_found").await;
    assert_eq!(download(&app, &peer, &path).await, image);
    assert!(objects(&app, &other.id).await.is_empty());

    // Deleting the user deletes the avatar.
    let res = app
        .delete(&t.admin, &format!("/api/v1/users/{}", learner.user_id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(objects(&app, &t.id).await.is_empty());
    assert_eq!(stored_bytes(&app, &t.slug).await, 0);
}

#[tokio::test]
async fn concurrent_uploads_are_counted_exactly() {
    let app = spawn_app_with(|k, _| k.storage.quotas.standard = 200_000).await;
    let f = fixture(&app, "race").await;
    let mut lessons = vec![f.lesson.clone()];
    for title in ["Two", "Three"] {
        lessons.push(app.lesson(&f.t.admin, &f.course, title).await);
    }

    // Three files of 90 kB at once against a 200 kB quota: two fit, never three.
    let paths: Vec<String> = lessons.iter().map(|l| content_path(&f.course, l)).collect();
    let sent = futures_util::future::join_all(paths.iter().enumerate().map(|(i, p)| {
        upload(
            &app,
            &f.t.admin,
            p,
            "application/pdf",
            pdf(90_000, "RACE", 20 + i as u64),
        )
    }))
    .await;
    let mut stored = 0;
    let mut kept = None;
    for (i, res) in sent.into_iter().enumerate() {
        if res.status() == StatusCode::NO_CONTENT {
            stored += 1;
            kept = Some(i);
        } else {
            assert_problem(res, 413, "quota_exceeded").await;
        }
    }
    assert_eq!(stored, 2);
    let sum: u64 = objects(&app, &f.t.id).await.iter().map(|(_, n)| n).sum();
    assert_eq!(objects(&app, &f.t.id).await.len(), 2);
    assert_eq!(stored_bytes(&app, &f.t.slug).await, sum as i64);

    // Several replacements of one stored file at once (each smaller than
    // it, so the quota allows any order): one object, counted once.
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| pdf(10_000 + 7_000 * i, "SAME", 30 + i as u64))
        .collect();
    let path = paths[kept.expect("one stored")].clone();
    let sent = futures_util::future::join_all(
        files
            .iter()
            .map(|b| upload(&app, &f.t.admin, &path, "application/pdf", b.clone())),
    )
    .await;
    for res in sent {
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let listed = objects(&app, &f.t.id).await;
    assert_eq!(listed.len(), 2);
    let sum: u64 = listed.iter().map(|(_, n)| n).sum();
    assert_eq!(stored_bytes(&app, &f.t.slug).await, sum as i64);
    let now = download(&app, &f.t.admin, &path).await;
    assert!(files.contains(&now));
}

#[tokio::test]
async fn a_signed_link_opens_from_any_page_without_header_or_subdomain() {
    let app = spawn_app().await;
    let f = fixture(&app, "portable").await;
    let other = fixture(&app, "elsewhere").await;
    let file = mp4(150_000);
    let res = upload(&app, &f.t.admin, &f.content(), "video/mp4", file.clone()).await;
    assert!(res.status().is_success());
    let link = content_url(&app, &f).await;
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.contains(&format!("tenant={}", f.t.slug)), "{url}");
    // As a <video> on another origin loads it: no header, no token, no subdomain.
    let res = app.client.get(app.url(&url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), file);
    let res = app
        .client
        .get(app.url(&url))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    // Under another tenant's name the signature does not hold.
    let moved = url.replace(
        &format!("tenant={}", f.t.slug),
        &format!("tenant={}", other.t.slug),
    );
    let res = app.client.get(app.url(&moved)).send().await.unwrap();
    assert_problem(res, 403, "invalid_signature").await;
    // A header naming another tenant wins, and the link fails there.
    let res = app
        .client
        .get(app.url(&url))
        .header("X-Tenant", &other.t.slug)
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "invalid_signature").await;
    // The tenant's name alone opens nothing: the signature is what counts.
    let unsigned = format!("{}?tenant={}", f.content(), f.t.slug);
    let res = app.client.get(app.url(&unsigned)).send().await.unwrap();
    assert_problem(res, 400, "tenant_required").await;
    let forged = url.replace("sig=", "sig=00");
    let res = app.client.get(app.url(&forged)).send().await.unwrap();
    assert_problem(res, 403, "invalid_signature").await;
}
