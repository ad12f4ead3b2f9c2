//! Two `campus serve` processes on different ports, sharing PostgreSQL and
//! Redis, behave as one server: a logout, a suspend, a role change or an API
//! key revoked on one node takes effect on the other within one second; a
//! write on one is never followed by a stale read on the other; a tenant's
//! rate limit and a login throttle hold across both.
//!
//! The nodes always run on PostgreSQL (a fresh database) and the Redis of
//! `CAMPUS_TEST_REDIS` (default the local server), under an environment name
//! of their own; tenants use the isolation of `CAMPUS_TEST_BACKEND` (`schema`
//! when it is unset or `sqlite`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod support;
use support::{Server, campus_in, fresh_pg_database};

const TOKEN: &str = "nodes-test-operator-token-0123456789";
const PASSWORD: &str = "correct horse battery";
/// The standard plan's allowance in the flood test: small, so that a flood is cheap.
const PER_SECOND: u32 = 4;
const BURST: u32 = 10;

struct Cluster {
    _tmp: tempfile::TempDir,
    database: String,
    nodes: [Server; 2],
    client: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            support::drop_test_database(&self.database);
        }
    }
}

fn isolation() -> &'static str {
    match std::env::var("CAMPUS_TEST_BACKEND").as_deref() {
        Ok("pool") => "pool",
        Ok("database") => "database",
        _ => "schema",
    }
}

impl Cluster {
    /// Two nodes whose standard plan allows `per_second` with `burst`, to
    /// each tenant and to each user.
    fn start(per_second: u32, burst: u32) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work: PathBuf = tmp.path().to_owned();
        let (database, owner, app) = fresh_pg_database();
        let config = work.join("campus.toml");
        std::fs::write(
            &config,
            format!(
                "[rate_limits.standard]\nrequests_per_second = {per_second}\nburst = {burst}\n\
                 user_requests_per_second = {per_second}\nuser_burst = {burst}\n"
            ),
        )
        .expect("campus.toml");
        let redis =
            std::env::var("CAMPUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let environment = format!("n{}", &tenancy::TenantId::new().simple()[20..]);
        let node = || {
            let mut c = campus_in(&work);
            c.env("CAMPUS_OPERATOR_TOKEN", TOKEN)
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(work.join("data"))
                .args(["--database-url", &app, "--owner-database-url", &owner]);
            Server::start(c, &["--redis-url", &redis, "--environment", &environment])
        };
        let first = node();
        let second = node();
        Self {
            _tmp: tmp,
            database,
            nodes: [first, second],
            client: reqwest::Client::new(),
        }
    }

    fn node(&self, n: usize) -> &Server {
        &self.nodes[n - 1]
    }

    fn operator(&self, n: usize, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.node(n).url(path))
            .bearer_auth(TOKEN)
    }

    fn api(
        &self,
        n: usize,
        method: Method,
        slug: &str,
        token: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.node(n).url(path))
            .header("X-Tenant", slug)
            .bearer_auth(token)
    }

    async fn login(&self, n: usize, slug: &str, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.node(n).url("/api/v1/auth/login"))
            .header("X-Tenant", slug)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login")
    }

    async fn token(&self, n: usize, slug: &str, email: &str) -> String {
        let res = self.login(n, slug, email, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::OK, "login as {email} on node {n}");
        let body: Value = res.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// A tenant made on node 1; its admin's email.
    async fn tenant(&self, slug: &str) -> String {
        let email = format!("admin@{slug}.test");
        let res = self
            .operator(1, Method::POST, "/admin/api/v1/tenants")
            .json(&json!({
                "slug": slug, "name": slug, "isolation": isolation(),
                "admin": { "email": email, "name": "Admin", "password": PASSWORD }
            }))
            .send()
            .await
            .expect("provision");
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{}",
            res.text().await.unwrap_or_default()
        );
        email
    }

    /// Course titles node `n` lists to `token`, in order.
    async fn titles(&self, n: usize, slug: &str, token: &str) -> Vec<String> {
        let res = self
            .api(n, Method::GET, slug, token, "/api/v1/courses")
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::OK, "list on node {n}");
        let body: Value = res.json().await.expect("json");
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["title"].as_str().expect("a title").to_owned())
            .collect()
    }

    /// Polls `path` on node `n` until it answers `status`, failing if that
    /// takes more than one second; how long it took.
    async fn within_one_second(
        &self,
        n: usize,
        slug: &str,
        token: &str,
        path: &str,
        status: StatusCode,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let res = self
                .api(n, Method::GET, slug, token, path)
                .send()
                .await
                .expect("send");
            let got = res.status();
            if got == status {
                return start.elapsed();
            }
            assert!(
                got.is_success() || got.is_client_error(),
                "node {n} answered {got}: {}",
                res.text().await.unwrap_or_default()
            );
            let waited = start.elapsed();
            assert!(
                waited < Duration::from_secs(1),
                "node {n} still {got} after {waited:?}; wanted {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", &tenancy::TenantId::new().simple()[24..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_metrics_show_its_placement_up_from_the_start() {
    // Before any outage (the gauge used to appear only after the first).
    let c = Cluster::start(1000, 1000);
    for n in [1, 2] {
        let text = c
            .client
            .get(c.node(n).url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            text.lines()
                .any(|l| l.starts_with("campus_database_up{") && l.ends_with(" 1")),
            "node {n}: no campus_database_up at 1 in\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_takes_effect_on_the_other_within_one_second() {
    // Polled at a fast pace: a generous allowance.
    let c = Cluster::start(1000, 1000);
    let slug = slug("two-nodes");
    let email = c.tenant(&slug).await;
    let admin = c.token(1, &slug, &email).await;

    // Logout on node 1: node 2 (which has the token cached) refuses it.
    let token = c.token(2, &slug, &email).await;
    for n in [1, 2, 2] {
        let res = c
            .api(n, Method::GET, &slug, &token, "/api/v1/me")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = c
        .api(1, Method::POST, &slug, &token, "/api/v1/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let took = c
        .within_one_second(2, &slug, &token, "/api/v1/me", StatusCode::UNAUTHORIZED)
        .await;
    eprintln!("logout on node 1 seen on node 2 after {took:?}");

    // A role change on node 2: node 1 serves the new role to the same token.
    let res = c
        .api(1, Method::POST, &slug, &admin, "/api/v1/users")
        .json(
            &json!({ "name": "L", "email": "l@two.test", "role": "learner", "password": PASSWORD }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let learner_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let learner = c.token(1, &slug, "l@two.test").await;
    for _ in 0..2 {
        let res = c
            .api(1, Method::GET, &slug, &learner, "/api/v1/users")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    let res = c
        .api(
            2,
            Method::PATCH,
            &slug,
            &admin,
            &format!("/api/v1/users/{learner_id}"),
        )
        .json(&json!({ "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    c.within_one_second(1, &slug, &learner, "/api/v1/users", StatusCode::OK)
        .await;

    // An API key revoked on node 1 is refused on node 2.
    let res = c
        .api(1, Method::POST, &slug, &admin, "/api/v1/api-keys")
        .json(&json!({ "name": "sync", "role": "instructor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let key = created["key"].as_str().unwrap();
    for _ in 0..2 {
        let res = c
            .api(2, Method::GET, &slug, key, "/api/v1/courses")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = c
        .api(
            1,
            Method::DELETE,
            &slug,
            &admin,
            &format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    c.within_one_second(2, &slug, key, "/api/v1/courses", StatusCode::UNAUTHORIZED)
        .await;

    // Suspend on node 2: node 1 answers 403; resume on node 1: node 2 serves again.
    let res = c
        .operator(
            2,
            Method::POST,
            &format!("/admin/api/v1/tenants/{slug}/suspend"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let took = c
        .within_one_second(1, &slug, &admin, "/api/v1/me", StatusCode::FORBIDDEN)
        .await;
    eprintln!("suspend on node 2 seen on node 1 after {took:?}");
    let res = c
        .api(1, Method::GET, &slug, &admin, "/api/v1/me")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "tenant_suspended"
    );
    let res = c
        .operator(
            1,
            Method::POST,
            &format!("/admin/api/v1/tenants/{slug}/resume"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    c.within_one_second(2, &slug, &admin, "/api/v1/me", StatusCode::OK)
        .await;

    // Deleted on node 1: node 2 answers 401 invalid_tenant.
    let res = c
        .operator(1, Method::DELETE, &format!("/admin/api/v1/tenants/{slug}"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    c.within_one_second(2, &slug, &admin, "/api/v1/me", StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_is_never_followed_by_a_stale_read_on_the_other() {
    let c = Cluster::start(1000, 1000);
    let slug = slug("fresh");
    let email = c.tenant(&slug).await;
    let admin = c.token(1, &slug, &email).await;

    // Each write on one node is followed at once (no waiting) by the read
    // on the other, which had the list before the write cached.
    let mut expected: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for round in 0..6 {
        let (writer, reader) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        for _ in 0..2 {
            assert_eq!(c.titles(reader, &slug, &admin).await, expected);
        }
        // Ids are time-ordered, so the list's order is the creation order.
        let title = format!("Course {round}");
        let res = c
            .api(writer, Method::POST, &slug, &admin, "/api/v1/courses")
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
        expected.push(title);
        assert_eq!(c.titles(reader, &slug, &admin).await, expected);

        // Renamed on the reader, read on the writer.
        for _ in 0..2 {
            assert_eq!(c.titles(writer, &slug, &admin).await, expected);
        }
        let renamed = format!("Renamed {round}");
        let res = c
            .api(
                reader,
                Method::PATCH,
                &slug,
                &admin,
                &format!("/api/v1/courses/{}", ids[round]),
            )
            .json(&json!({ "title": renamed }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        expected[round] = renamed;
        assert_eq!(c.titles(writer, &slug, &admin).await, expected);
    }

    // Deleted on node 1, gone on node 2 at once.
    assert_eq!(c.titles(2, &slug, &admin).await, expected);
    let res = c
        .api(
            1,
            Method::DELETE,
            &slug,
            &admin,
            &format!("/api/v1/courses/{}", ids[0]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expected.remove(0);
    assert_eq!(c.titles(2, &slug, &admin).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_rate_limit_and_login_throttle_hold_across_both_nodes() {
    let c = Cluster::start(PER_SECOND, BURST);
    let (flooding, quiet) = (slug("flood"), slug("quiet"));
    let email = c.tenant(&flooding).await;
    let quiet_email = c.tenant(&quiet).await;
    let token = c.token(1, &flooding, &email).await;
    let quiet_token = c.token(2, &quiet, &quiet_email).await;

    // Many times the allowance, half to each node, at once.
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..80 {
        let req = c.api(1 + i % 2, Method::GET, &flooding, &token, "/api/v1/courses");
        flood.spawn(async move { req.send().await.expect("send") });
    }
    let mut quiet_statuses = Vec::new();
    for n in [1, 2, 1, 2] {
        let res = c
            .api(n, Method::GET, &quiet, &quiet_token, "/api/v1/courses")
            .send()
            .await
            .unwrap();
        quiet_statuses.push(res.status());
    }
    let (mut ok, mut refused) = (0u32, 0u32);
    while let Some(res) = flood.join_next().await {
        let res = res.expect("task");
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(res.headers().contains_key("retry-after"));
                assert_eq!(res.headers()["ratelimit-remaining"], "0");
            }
            other => panic!("the flooding tenant got {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // One allowance for both nodes: at most the burst plus what the rate
    // refilled meanwhile (two nodes each limiting alone would pass twice that).
    let most = f64::from(BURST) + f64::from(PER_SECOND) * elapsed.ceil();
    eprintln!("{ok} passed, {refused} refused in {elapsed:.2} s over two nodes; at most {most}");
    assert!(
        f64::from(ok) <= most,
        "{ok} passed in {elapsed:.2} s; the shared limit allows {most}"
    );
    assert!(refused > 0);
    assert!(
        quiet_statuses.iter().all(|s| *s == StatusCode::OK),
        "the quiet tenant was refused: {quiet_statuses:?}"
    );

    // The flood is in each node's log as a summary per tenant and limit (the
    // first refusal at once, then at most a line per 10 s), never as a line
    // per refused request.
    let mut summaries = 0;
    for n in [1, 2] {
        let log = c.node(n).log();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let refusals_logged = lines
            .iter()
            .filter(|l| l["message"] == "request finished" && l["status"] == 429)
            .count();
        assert_eq!(refusals_logged, 0, "node {n} logged each refusal:\n{log}");
        let summary: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("rate limit refusing requests"))
            })
            .collect();
        assert!(summary.len() <= 2, "node {n}: {summary:?}");
        for l in &summary {
            assert_eq!(l["tenant"], flooding.as_str(), "{l}");
            assert_eq!(l["level"], "WARN", "{l}");
            assert!(l["refused"].as_u64() >= Some(1), "{l}");
        }
        summaries += summary.len();
    }
    assert!(summaries >= 1, "no node logged the refusals");

    // Five failed logins, spread over both nodes, throttle the email on both.
    for n in [1, 2, 1, 2, 1] {
        let res = c.login(n, &quiet, &quiet_email, "not the password").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    for n in [2, 1] {
        let res = c.login(n, &quiet, &quiet_email, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "node {n}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
    }
}
