//! The tenant cache through the API: a write is never followed by a stale
//! read, with the cache in process and in Redis; in Redis every key follows
//! `<environment>:<tenant uuid>:<generation>:<key>` and a flush of one tenant
//! leaves the others' entries; and Redis killed mid-test is not an outage.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

async fn titles(app: &TestApp, s: &Session) -> Vec<String> {
    let res = app.get(s, "/api/v1/courses").send().await.unwrap();
    let body = json_ok(res, 200).await;
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap().to_owned())
        .collect()
}

async fn status_of(app: &TestApp, s: &Session, path: &str) -> StatusCode {
    app.get(s, path).send().await.unwrap().status()
}

/// Every write that could make a cached answer stale, each followed at
/// once by the read it affects (read twice before, so that it is cached).
async fn writes_are_never_followed_by_stale_reads(at: CacheAt) {
    let app = spawn_app_with(|k, _| use_cache(k, at)).await;
    let t = app.tenant("fresh").await;
    let learner = app.user(&t, "learner").await;

    // Course create, rename, unpublish, delete: the learner's list follows.
    for _ in 0..2 {
        assert!(titles(&app, &learner).await.is_empty());
    }
    let course = app.course(&t.admin, "One", true).await;
    assert_eq!(titles(&app, &learner).await, ["One"]);
    assert_eq!(titles(&app, &learner).await, ["One"]);
    let res = app
        .patch(
            &t.admin,
            &format!("/api/v1/courses/{course}"),
            json!({ "title": "Uno" }),
        )
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await;
    assert_eq!(titles(&app, &learner).await, ["Uno"]);
    let res = app
        .patch(
            &t.admin,
            &format!("/api/v1/courses/{course}"),
            json!({ "published": false }),
        )
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await;
    assert!(titles(&app, &learner).await.is_empty());
    assert_eq!(titles(&app, &t.admin).await, ["Uno"]);
    let res = app
        .delete(&t.admin, &format!("/api/v1/courses/{course}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(titles(&app, &t.admin).await.is_empty());

    // A role change reaches the cached token at once: the same token sees
    // the staff list, then the learner's again.
    app.course(&t.admin, "Draft", false).await;
    assert!(titles(&app, &learner).await.is_empty());
    for (role, seen) in [("instructor", vec!["Draft"]), ("learner", vec![])] {
        let res = app
            .patch(
                &t.admin,
                &format!("/api/v1/users/{}", learner.user_id),
                json!({ "role": role }),
            )
            .send()
            .await
            .unwrap();
        json_ok(res, 200).await;
        assert_eq!(titles(&app, &learner).await, seen, "as {role}");
    }

    // Logout: the token is refused at once.
    let s = app.login(&t.slug, &learner.email, PASSWORD).await;
    for _ in 0..2 {
        assert_eq!(status_of(&app, &s, "/api/v1/me").await, StatusCode::OK);
    }
    let res = app
        .post(&s, "/api/v1/auth/logout", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &s, "/api/v1/me").await,
        StatusCode::UNAUTHORIZED
    );

    // A password change ends the user's other sessions at once.
    let (a, b) = (
        app.login(&t.slug, &learner.email, PASSWORD).await,
        app.login(&t.slug, &learner.email, PASSWORD).await,
    );
    assert_eq!(status_of(&app, &b, "/api/v1/me").await, StatusCode::OK);
    let res = app
        .patch(
            &a,
            &format!("/api/v1/users/{}", a.user_id),
            json!({ "password": "another good passphrase", "current_password": PASSWORD }),
        )
        .send()
        .await
        .unwrap();
    json_ok(res, 200).await;
    assert_eq!(
        status_of(&app, &b, "/api/v1/me").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_of(&app, &a, "/api/v1/me").await, StatusCode::OK);

    // An API key revoked is refused at once.
    let res = app
        .post(
            &t.admin,
            "/api/v1/api-keys",
            json!({ "name": "sync", "role": "instructor" }),
        )
        .send()
        .await
        .unwrap();
    let created = json_ok(res, 201).await;
    let key = Session {
        token: created["key"].as_str().unwrap().to_owned(),
        ..t.admin.clone()
    };
    for _ in 0..2 {
        assert_eq!(
            status_of(&app, &key, "/api/v1/courses").await,
            StatusCode::OK
        );
    }
    let res = app
        .delete(
            &t.admin,
            &format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &key, "/api/v1/courses").await,
        StatusCode::UNAUTHORIZED
    );

    // A deleted user's token is refused at once.
    assert_eq!(status_of(&app, &a, "/api/v1/me").await, StatusCode::OK);
    let res = app
        .delete(&t.admin, &format!("/api/v1/users/{}", a.user_id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &a, "/api/v1/me").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn no_stale_read_after_a_write_with_the_cache_in_process() {
    writes_are_never_followed_by_stale_reads(CacheAt::Process).await;
}

#[tokio::test]
async fn no_stale_read_after_a_write_with_the_cache_in_redis() {
    writes_are_never_followed_by_stale_reads(CacheAt::Redis).await;
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// Every key under `prefix`, by SCAN (a test may scan; the server never does).
async fn keys(c: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .unwrap();
        out.extend(page);
        if next == 0 {
            out.sort();
            return out;
        }
        cursor = next;
    }
}

/// `GET key`; a Redis that has just been restarted answers `LOADING` for a
/// moment, which is waited out (at most 10 s), not a failure of the test.
async fn get(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    let start = Instant::now();
    loop {
        match redis::cmd("GET").arg(key).query_async(c).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading) => {
                assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn redis_keys_follow_the_rule_and_a_flush_leaves_other_tenants_entries() {
    let app = spawn_app_with(|k, _| use_cache(k, CacheAt::Redis)).await;
    let env = app.config.cache.environment.clone();
    let mut c = redis_conn(&redis_url()).await;
    let (a, b) = (app.tenant("keys-a").await, app.tenant("keys-b").await);
    for t in [&a, &b] {
        app.course(&t.admin, "Same title", true).await;
        titles(&app, &t.admin).await;
    }

    // Every key of this app is `<env>:<uuid of a or b>:…`; entries are
    // `<env>:<uuid>:<generation>:<key>`, in the tenant's current generation
    // or an older one (left to expire, never read again).
    let all = keys(&mut c, &format!("{env}:")).await;
    assert!(!all.is_empty());
    let mut current = std::collections::HashMap::<&str, Vec<String>>::new();
    for key in &all {
        let rest = key.strip_prefix(&format!("{env}:")).unwrap();
        let (uuid, rest) = rest.split_once(':').unwrap();
        // The one namespace that is no tenant's: the nil id, for what
        // counts per client address across tenants (unauthenticated
        // requests, the login throttle), never for an entry.
        if uuid == uuid::Uuid::nil().to_string() {
            assert!(
                rest.starts_with("limit:address:") || rest.starts_with("login:address:"),
                "only per-address limits live outside a tenant: {key}"
            );
            continue;
        }
        assert!(uuid == a.id || uuid == b.id, "key of no tenant: {key}");
        if rest == "gen" || rest.starts_with("limit:") {
            continue;
        }
        let (generation, _) = rest.split_once(':').unwrap();
        let now = get(&mut c, &format!("{env}:{uuid}:gen")).await.unwrap();
        let (generation, now) = (
            generation.parse::<u64>().unwrap(),
            now.parse::<u64>().unwrap(),
        );
        assert!(
            generation <= now,
            "{key}: generation {generation} after {now}"
        );
        if generation == now {
            current
                .entry(if uuid == a.id { "a" } else { "b" })
                .or_default()
                .push(key.clone());
        }
    }
    let entries = current;
    assert!(
        entries["a"].iter().any(|k| k.contains(":courses:")),
        "{all:?}"
    );
    assert!(
        entries["b"].iter().any(|k| k.contains(":courses:")),
        "{all:?}"
    );
    assert!(
        entries["b"].iter().any(|k| k.contains(":token:")),
        "{all:?}"
    );

    // A write in A bumps A's generation only: B's generation and entries
    // stay, and B's next read is a hit on the very same entry.
    let gen_a = get(&mut c, &format!("{env}:{}:gen", a.id)).await.unwrap();
    let gen_b = get(&mut c, &format!("{env}:{}:gen", b.id)).await.unwrap();
    app.course(&a.admin, "Another", true).await;
    let new_gen_a = get(&mut c, &format!("{env}:{}:gen", a.id)).await.unwrap();
    assert_ne!(gen_a, new_gen_a);
    assert!(new_gen_a.parse::<u64>().unwrap() > gen_a.parse::<u64>().unwrap());
    assert_eq!(
        get(&mut c, &format!("{env}:{}:gen", b.id)).await.unwrap(),
        gen_b
    );
    for key in &entries["b"] {
        assert!(get(&mut c, key).await.is_some(), "B lost {key}");
    }
    assert_eq!(titles(&app, &b.admin).await, ["Same title"]);
    assert_eq!(titles(&app, &a.admin).await, ["Same title", "Another"]);

    // Purged: every key of A is gone from Redis; B's entries and generation
    // are all still there (its limits expire on their own within a second).
    let cached = async |c: &mut redis::aio::MultiplexedConnection| {
        let mut all = keys(c, &format!("{env}:{}:", b.id)).await;
        all.retain(|k| !k.contains(":limit:"));
        all
    };
    let b_keys = cached(&mut c).await;
    let res = app
        .operator(
            Method::DELETE,
            &format!("/admin/api/v1/tenants/{}?purge=true", a.slug),
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        keys(&mut c, &format!("{env}:{}:", a.id)).await,
        Vec::<String>::new()
    );
    assert_eq!(cached(&mut c).await, b_keys);
}

/// A Redis server of the test's own, on a port of its own, with an
/// append-only file so that a restart finds what it held.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OwnRedis {
    fn start() -> Self {
        let mut me = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        me.restart();
        me
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) must be installed")
    }

    /// Starts it again on the same port and files, and waits until it answers.
    fn restart(&mut self) {
        self.child = Some(Self::spawn(self.port, self.dir.path()));
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_is_not_an_outage_and_nothing_is_served_stale() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(|k, s| {
        use_cache(k, CacheAt::Redis);
        k.cache.redis_url = Some(url.clone());
        // One request a second with a large burst: no request of this test
        // is refused, and each one keeps its tenant's limit key in Redis
        // for a second (at the default rate it expires within milliseconds,
        // before a busy machine gets to look for it below).
        let slow = server::edge::limits::Rate::new(
            std::num::NonZeroU32::MIN,
            std::num::NonZeroU32::new(10_000).expect("non-zero"),
        );
        s.rates = tenancy::PerPlan {
            free: slow,
            standard: slow,
            enterprise: slow,
        };
    })
    .await;
    let env = app.config.cache.environment.clone();
    let t = app.tenant("outage").await;
    let learner = app.user(&t, "learner").await;
    app.course(&t.admin, "Before", true).await;
    // Cached: the learner's token and list, the admin's token.
    for _ in 0..2 {
        assert_eq!(titles(&app, &learner).await, ["Before"]);
        assert_eq!(
            status_of(&app, &t.admin, "/api/v1/me").await,
            StatusCode::OK
        );
    }
    let gen_key = format!("{env}:{}:gen", t.id);
    let token_keys_before = {
        let mut c = redis_conn(&url).await;
        keys(&mut c, &format!("{env}:{}:", t.id)).await
    };
    let generation = {
        let mut c = redis_conn(&url).await;
        get(&mut c, &gen_key).await.unwrap()
    };

    redis.kill();
    // Reads keep working, straight to the database: never a 5xx.
    let down = Instant::now();
    let mut reads = 0;
    while down.elapsed() < Duration::from_secs(2) {
        assert_eq!(titles(&app, &learner).await, ["Before"]);
        let res = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
        json_ok(res, 200).await;
        reads += 2;
        // A client's pace, not a flood: this test is not about limits.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads > 4, "{reads} reads in two seconds");
    // Writes too, and what they change is seen at once.
    app.course(&t.admin, "During", true).await;
    assert_eq!(titles(&app, &learner).await, ["Before", "During"]);
    // The learner logs out while Redis is down: refused at once…
    let res = app
        .post(&learner, "/api/v1/auth/logout", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &learner, "/api/v1/me").await,
        StatusCode::UNAUTHORIZED
    );
    // …and the outage shows in the metrics.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("campus_redis_unavailable_total"),
        "no Redis outage counted:\n{metrics}"
    );

    // Redis comes back with everything it held (its append-only file),
    // including the learner's cached token of before the logout.
    redis.restart();
    let mut c = redis_conn(&url).await;
    assert!(!token_keys_before.is_empty());
    let back = Instant::now();
    // The flush made during the outage is written: a new generation, and the
    // old token entry (still in Redis) is never served.
    loop {
        let now = get(&mut c, &gen_key).await.unwrap();
        if now != generation {
            assert!(now.parse::<u64>().unwrap() > generation.parse::<u64>().unwrap());
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the flush made during the outage was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            status_of(&app, &learner, "/api/v1/me").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // Shared behaviour resumes without a restart: entries and limits are
    // written to Redis again.
    let learner = app.login(&t.slug, &learner.email, PASSWORD).await;
    let start = Instant::now();
    loop {
        assert_eq!(titles(&app, &learner).await, ["Before", "During"]);
        let generation = get(&mut c, &gen_key).await.unwrap();
        let now = keys(&mut c, &format!("{env}:{}:", t.id)).await;
        let cached = now
            .iter()
            .any(|k| k.starts_with(&format!("{env}:{}:{generation}:courses:", t.id)));
        let limited = now.iter().any(|k| k.ends_with(":limit:tenant"));
        if cached && limited {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing written to Redis since it came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = app.operator(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
