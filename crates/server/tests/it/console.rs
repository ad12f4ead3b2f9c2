//! The operator console over HTTP, on every backend: who may open it, what
//! its session and forms refuse, that its actions are the API's (a
//! suspension from the console is the API's 403), and that each is in the
//! operator audit log. The browser drives it in `tests/browser/console.rs`.

use reqwest::{Method, StatusCode, header};

use crate::helpers::*;

/// A browser's view of the console, without a browser: no redirects
/// followed, the session cookie kept by hand.
struct Console {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Console {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header(header::COOKIE, c);
        }
        r
    }

    async fn sign_in(&mut self, token: &str) -> reqwest::Response {
        let res = self
            .req(Method::POST, "/console/sign-in")
            .form(&[("token", token), ("next", "/console/tenants")])
            .send()
            .await
            .unwrap();
        if let Some(set) = res.headers().get(header::SET_COOKIE) {
            let set = set.to_str().unwrap().to_owned();
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        res
    }

    async fn page(&self, path: &str) -> (StatusCode, String) {
        let res = self.req(Method::GET, path).send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    }

    /// The CSRF token of the signed-in pages.
    async fn csrf(&self) -> String {
        let (status, html) = self.page("/console/tenants").await;
        assert_eq!(status, 200, "{html}");
        csrf_of(&html)
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.req(Method::POST, path)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn only_the_operator_token_opens_the_console_and_its_session_is_a_strict_httponly_cookie() {
    let app = spawn_app().await;
    let t = app.tenant("cons-auth").await;
    let mut c = Console::new(&app.base);

    // Nothing, or a tenant's bearer token: the sign-in page, not the console.
    let res = c.req(Method::GET, "/console/tenants").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/sign-in");
    let res = c
        .req(Method::GET, "/console/tenants")
        .bearer_auth(&t.admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "a tenant token opened it"
    );
    let res = c
        .req(Method::GET, "/console/tenants")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "a bearer header is not a session"
    );

    // A tenant's token, or its admin's password, typed in the form.
    for wrong in [t.admin.token.as_str(), PASSWORD, ""] {
        let res = c.sign_in(wrong).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().get(header::SET_COOKIE).is_none());
    }
    assert!(c.cookie.is_none());

    let res = c.sign_in(OPERATOR_TOKEN).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/tenants");
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: not Secure ({set})");

    let res = c.req(Method::GET, "/console/tenants").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
    let html = res.text().await.unwrap();
    assert!(html.contains(&t.slug), "the tenant is listed");
    assert!(!html.contains("style=\""), "no inline style");
    assert!(!html.contains("<script>"), "no inline script");

    // Signing out ends the session on the server: the old cookie is dead.
    let csrf = csrf_of(&html);
    let res = c.post("/console/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (status, _) = c.page("/console/tenants").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "revoked on sign-out");
}

#[tokio::test]
async fn behind_a_trusted_tls_proxy_the_cookie_is_secure_and_host_prefixed() {
    let app = spawn_app_with(|_, s| {
        s.trusted_proxies = server::edge::client::TrustedProxies::parse(&["127.0.0.1/32"]).unwrap()
    })
    .await;
    let c = Console::new(&app.base);
    let res = c
        .req(Method::POST, "/console/sign-in")
        .header("x-forwarded-proto", "https")
        .form(&[("token", OPERATOR_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-campus_console="), "{set}");
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(set.contains(part), "{set}");
    }
}

#[tokio::test]
async fn a_form_without_the_csrf_token_or_from_another_site_changes_nothing() {
    let app = spawn_app().await;
    let t = app.tenant("cons-csrf").await;
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    let csrf = c.csrf().await;
    let suspend = format!("/console/tenants/{}/suspend", t.slug);

    let res = c.post(&suspend, &[]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c.post(&suspend, &[("csrf", "forged")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .req(Method::POST, &suspend)
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "another origin");
    let res = c
        .req(Method::POST, &suspend)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "a cross-site request");
    // Another session's token is not this one's.
    let mut other = Console::new(&app.base);
    other.sign_in(OPERATOR_TOKEN).await;
    let res = other.post(&suspend, &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
    assert_eq!(res.status(), 200, "still active after every refusal");

    // With it, from this origin: done, and the API says so at once.
    let res = c
        .req(Method::POST, &suspend)
        .header(header::ORIGIN, &app.base)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_problem(
        app.get(&t.admin, "/api/v1/me").send().await.unwrap(),
        403,
        "tenant_suspended",
    )
    .await;
}

#[tokio::test]
async fn console_actions_are_the_apis_and_every_one_is_in_the_operator_audit_log() {
    let app = spawn_app().await;
    let t = app.tenant("cons-act").await;
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    let csrf = c.csrf().await;
    let base = format!("/console/tenants/{}", t.slug);

    // Plan: the API's limits follow.
    let res = c
        .post(
            &format!("{base}/plan"),
            &[("csrf", &csrf), ("plan", "enterprise")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), format!("{base}?done=plan"));
    let v = json_ok(
        app.operator(Method::GET, &format!("/admin/api/v1/tenants/{}", t.slug))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v["plan"], "enterprise");
    // A plan that is not one: refused with the API's words, nothing changed.
    let res = c
        .post(
            &format!("{base}/plan"),
            &[("csrf", &csrf), ("plan", "platinum")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("plan must be free, standard or enterprise")
    );

    // Delete asks for the slug typed again.
    let res = c
        .post(
            &format!("{base}/delete"),
            &[("csrf", &csrf), ("confirm", "nope")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app.get(&t.admin, "/api/v1/me").send().await.unwrap();
    assert_eq!(res.status(), 200, "not deleted without the typed slug");
    let res = c
        .post(
            &format!("{base}/delete"),
            &[("csrf", &csrf), ("confirm", &t.slug)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_problem(
        app.get(&t.admin, "/api/v1/me").send().await.unwrap(),
        401,
        "invalid_tenant",
    )
    .await;

    // An API call is in the same log.
    let other = app.tenant("cons-api").await;
    let res = app
        .operator(
            Method::POST,
            &format!("/admin/api/v1/tenants/{}/suspend", other.slug),
        )
        .header(header::USER_AGENT, "ops-script/1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let (status, html) = c.page("/console/audit").await;
    assert_eq!(status, 200);
    for needle in [
        "console.sign_in",
        "tenant.plan",
        "plan enterprise",
        "tenant.delete",
        "to confirm.",
        "tenant.suspend",
        "127.0.0.1",
    ] {
        assert!(html.contains(needle), "{needle} missing from the log");
    }
    let lines = app
        .kernel
        .registry()
        .operator_actions(Some(&other.slug), None, 10)
        .await
        .unwrap();
    let api = lines
        .iter()
        .find(|l| l.action == "tenant.suspend")
        .expect("the API's suspension is logged");
    assert_eq!(api.via, "api");
    assert_eq!(api.outcome, "ok");
    assert_eq!(api.user_agent.as_deref(), Some("ops-script/1"));
    assert_eq!(api.client.as_deref(), Some("127.0.0.1"));
    let mine = app
        .kernel
        .registry()
        .operator_actions(Some(&t.slug), None, 10)
        .await
        .unwrap();
    let outcomes: Vec<(&str, &str)> = mine
        .iter()
        .map(|l| (l.action.as_str(), l.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("tenant.delete", "ok"),
            ("tenant.delete", "refused"),
            ("tenant.plan", "refused"),
            ("tenant.plan", "ok"),
            ("tenant.create", "ok"),
        ]
    );
    let vias: Vec<&str> = mine.iter().map(|l| l.via.as_str()).collect();
    assert_eq!(vias, ["console", "console", "console", "console", "api"]);
}

#[tokio::test]
async fn create_shows_the_apis_validation_and_the_generated_password_once() {
    let app = spawn_app().await;
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    let csrf = c.csrf().await;
    let slug = unique_slug("cons-new");
    let form = |slug: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("slug", slug.to_owned()),
            ("name", "Console School".to_owned()),
            ("plan", "free".to_owned()),
            ("admin_email", format!("head@{slug}.test")),
            ("admin_name", "Head".to_owned()),
            ("admin_password", String::new()),
        ]
    };
    let res = c
        .req(Method::POST, "/console/tenants")
        .form(&form("Not A Slug"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert!(html.contains("role=\"alert\""), "{html}");
    assert!(
        html.contains("Console School"),
        "the form keeps what was typed"
    );

    let res = c
        .req(Method::POST, "/console/tenants")
        .form(&form(&slug))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let html = res.text().await.unwrap();
    let at = html.find(r#"id="admin-password">"#).expect("the password") + 20;
    let password = html[at..].split('<').next().unwrap().to_owned();
    assert!(password.len() >= 20, "{password}");
    // It is the admin's real password.
    app.login(&slug, &format!("head@{slug}.test"), &password)
        .await;
    // And it is nowhere after this answer.
    let (_, page) = c.page(&format!("/console/tenants/{slug}")).await;
    assert!(!page.contains(&password));
    let (_, log) = c.page("/console/audit").await;
    assert!(!log.contains(&password));

    let res = c
        .req(Method::POST, "/console/tenants")
        .form(&form(&slug))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT, "the slug is taken");
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_by_address_and_never_lock_out_another() {
    let app = spawn_app_with(|_, s| {
        s.trusted_proxies = server::edge::client::TrustedProxies::parse(&["127.0.0.1/32"]).unwrap();
        s.login_throttle.per_account_address =
            lms::throttle::Budget::new(3, std::time::Duration::from_secs(3600));
    })
    .await;
    let c = Console::new(&app.base);
    let from = |addr: &str, token: &str| {
        c.req(Method::POST, "/console/sign-in")
            .header("x-forwarded-for", addr)
            .form(&[("token", token.to_owned())])
            .send()
    };
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            from("203.0.113.5", "wrong-token")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [401, 401, 401, 429, 429]);
    let res = from("203.0.113.5", OPERATOR_TOKEN).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "that address waits"
    );
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    // The operator, elsewhere, is not locked out by someone else's failures.
    let res = from("198.51.100.7", OPERATOR_TOKEN).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(res.headers().contains_key(header::SET_COOKIE));
}

#[tokio::test]
async fn an_idle_session_ends_and_a_revoked_one_ends_at_once() {
    let app = spawn_app_with(|_, s| s.console_idle = std::time::Duration::from_secs(1)).await;
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    assert_eq!(c.page("/console/tenants").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(c.page("/console/tenants").await.0, StatusCode::SEE_OTHER);

    let app = spawn_app().await;
    let mut a = Console::new(&app.base);
    let mut b = Console::new(&app.base);
    a.sign_in(OPERATOR_TOKEN).await;
    b.sign_in(OPERATOR_TOKEN).await;
    let csrf = a.csrf().await;
    let res = a.post("/console/sessions/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(b.page("/console/tenants").await.0, StatusCode::SEE_OTHER);
    assert_eq!(a.page("/console/tenants").await.0, 200, "this one stays");
}

#[tokio::test]
async fn with_an_admin_listener_the_console_is_there_and_not_on_the_public_one() {
    let app = spawn_app_with(|_, s| s.separate_admin = true).await;
    let admin = app.admin_base.clone().expect("an admin listener");
    let public = Console::new(&app.base);
    let (status, _) = public.page("/console/sign-in").await;
    assert_eq!(status, 404);
    let mut c = Console::new(&admin);
    assert_eq!(
        c.sign_in(OPERATOR_TOKEN).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(c.page("/console/fleet").await.0, 200);
}

#[tokio::test]
async fn the_tenants_table_searches_filters_sorts_and_pages() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(app.tenant(&format!("cons-list{i}")).await);
    }
    let res = app
        .operator(
            Method::POST,
            &format!("/admin/api/v1/tenants/{}/suspend", made[1].slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    let rows = |html: &str| -> Vec<String> {
        html.split("<tr data-slug=\"")
            .skip(1)
            .map(|r| r.split('"').next().unwrap().to_owned())
            .collect()
    };
    let (_, html) = c
        .page(&format!("/console/tenants?q={}", made[2].slug))
        .await;
    assert_eq!(rows(&html), [made[2].slug.clone()]);
    let (_, html) = c
        .page("/console/tenants?q=cons-list&status=suspended")
        .await;
    assert_eq!(rows(&html), [made[1].slug.clone()]);
    let (_, html) = c
        .page("/console/tenants?q=cons-list&sort=slug&dir=desc")
        .await;
    let mut want: Vec<String> = made.iter().map(|t| t.slug.clone()).collect();
    want.sort();
    want.reverse();
    assert_eq!(rows(&html), want);
    // Unknown values filter nothing out and break nothing.
    let (status, _) = c
        .page("/console/tenants?sort=%3Cscript%3E&page=999999")
        .await;
    assert_eq!(status, 200);
    let (status, _) = c.page("/console/tenants?page=-1").await;
    assert_eq!(status, 400, "a page that is not a number is a bad query");
}
