//! `spawn_app()` and a small typed client.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use server::{AppState, ServerConfig};
use tenancy::{Kernel, KernelConfig};

pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub kernel: Kernel,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// A tenant made through the control-plane API, with its admin logged in.
#[derive(Clone, Debug)]
pub struct TestTenant {
    pub slug: String,
    pub id: String,
    pub admin: Session,
}

/// A logged-in user of one tenant.
#[derive(Clone, Debug)]
pub struct Session {
    pub tenant: String,
    pub token: String,
    pub user_id: String,
    pub email: String,
}

/// A slug no other test uses.
pub fn unique_slug(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand_u32();
    format!("{prefix}-{n}-{r:08x}")
}

fn rand_u32() -> u32 {
    let u = uuid::Uuid::now_v7();
    let b = u.as_bytes();
    u32::from_le_bytes([b[12], b[13], b[14], b[15]])
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut KernelConfig, &mut ServerConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut kcfg = KernelConfig::new(dir.path(), lms::TENANT_MIGRATIONS);
    let mut scfg = ServerConfig::new(OPERATOR_TOKEN);
    tune(&mut kcfg, &mut scfg);
    let kernel = Kernel::open(kcfg).await.expect("kernel");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(kernel.clone(), scfg);
    tokio::spawn(async move {
        server::serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    TestApp {
        base,
        kernel,
        client: reqwest::Client::new(),
        dir,
        _shutdown: tx,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to a tenant route, as `session`.
    pub fn req(&self, method: Method, s: &Session, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Tenant", &s.tenant)
            .bearer_auth(&s.token)
    }

    pub fn get(&self, s: &Session, path: &str) -> RequestBuilder {
        self.req(Method::GET, s, path)
    }

    pub fn post(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::POST, s, path).json(&body)
    }

    pub fn patch(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::PATCH, s, path).json(&body)
    }

    pub fn put(&self, s: &Session, path: &str, body: Value) -> RequestBuilder {
        self.req(Method::PUT, s, path).json(&body)
    }

    pub fn delete(&self, s: &Session, path: &str) -> RequestBuilder {
        self.req(Method::DELETE, s, path)
    }

    /// A control-plane request, with the operator token.
    pub fn operator(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(OPERATOR_TOKEN)
    }

    /// Provisions a tenant through the control-plane API and logs its admin in.
    pub async fn tenant(&self, prefix: &str) -> TestTenant {
        let slug = unique_slug(prefix);
        let email = format!("admin@{slug}.test");
        let res = self
            .operator(Method::POST, "/admin/api/v1/tenants")
            .json(&json!({
                "slug": slug,
                "name": format!("Org {slug}"),
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
        let t: Value = res.json().await.expect("json");
        let admin = self.login(&slug, &email, PASSWORD).await;
        TestTenant {
            slug,
            id: t["id"].as_str().expect("id").to_owned(),
            admin,
        }
    }

    pub async fn login(&self, slug: &str, email: &str, password: &str) -> Session {
        let res = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .header("X-Tenant", slug)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK, "login as {email}");
        let body: Value = res.json().await.expect("json");
        Session {
            tenant: slug.to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            user_id: body["user"]["id"].as_str().expect("user id").to_owned(),
            email: email.to_owned(),
        }
    }

    /// Creates a user with `role` in `t` (as its admin) and logs them in.
    pub async fn user(&self, t: &TestTenant, role: &str) -> Session {
        let email = format!("{role}-{}@{}.test", unique_slug("u"), t.slug);
        let res = self
            .post(&t.admin, "/api/v1/users", json!({ "name": format!("A {role}"), "email": email, "role": role, "password": PASSWORD }))
            .send()
            .await
            .expect("create user");
        assert_eq!(res.status(), StatusCode::CREATED);
        self.login(&t.slug, &email, PASSWORD).await
    }

    /// Creates a course as `s` and returns its id.
    pub async fn course(&self, s: &Session, title: &str, published: bool) -> String {
        let res = self
            .post(
                s,
                "/api/v1/courses",
                json!({ "title": title, "description": "about it", "published": published }),
            )
            .send()
            .await
            .expect("create course");
        assert_eq!(res.status(), StatusCode::CREATED);
        id_of(res).await
    }

    /// Creates a lesson in `course` as `s` and returns its id.
    pub async fn lesson(&self, s: &Session, course: &str, title: &str) -> String {
        let res = self
            .post(
                s,
                &format!("/api/v1/courses/{course}/lessons"),
                json!({ "title": title }),
            )
            .send()
            .await
            .expect("create lesson");
        assert_eq!(res.status(), StatusCode::CREATED);
        id_of(res).await
    }

    /// Enrolls `user` in `course`, as `s`.
    pub async fn enroll(&self, s: &Session, course: &str, user: &str) {
        let res = self
            .post(
                s,
                &format!("/api/v1/courses/{course}/enrollments"),
                json!({ "user_id": user }),
            )
            .send()
            .await
            .expect("enroll");
        assert_eq!(res.status(), StatusCode::CREATED);
    }
}

pub async fn id_of(res: Response) -> String {
    let v: Value = res.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// Asserts a problem response: status, `code`, content type, request id.
pub async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "expected {status} {code}");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["request_id"].is_string(), "{body}");
    body
}

/// The JSON body of a response, asserting its status.
pub async fn json_ok(res: Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
