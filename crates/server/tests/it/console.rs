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

    /// A console signed in with the operator token, and its CSRF token.
    async fn signed_in(base: &str) -> (Self, String) {
        let mut c = Self::new(base);
        c.sign_in(OPERATOR_TOKEN).await;
        let csrf = c.csrf().await;
        (c, csrf)
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
    assert_eq!(
        location(&res),
        "/console/sign-in?next=%2Fconsole%2Ftenants",
        "the sign-in page, then back here"
    );
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

    // Signed in from there, back there (a console page only).
    for (next, to) in [
        ("/console/fleet", "/console/fleet"),
        ("https://evil.example/console/", "/console/tenants"),
    ] {
        let res = c
            .req(Method::POST, "/console/sign-in")
            .form(&[("token", OPERATOR_TOKEN), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(location(&res), to, "{next}");
    }

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
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.starts_with("__Host-campus_console="), "{set}");
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = |proto: &'static str, cookie: String| {
        c.http
            .get(format!("{}/console/tenants", c.base))
            .header("x-forwarded-proto", proto)
            .header(header::COOKIE, cookie)
            .send()
    };
    // Over TLS the __Host- cookie opens the console; a plain one does not.
    assert_eq!(page("https", cookie.clone()).await.unwrap().status(), 200);
    let plain = cookie.replacen("__Host-campus_console", "campus_console", 1);
    assert_eq!(
        page("https", plain.clone()).await.unwrap().status(),
        StatusCode::SEE_OTHER,
        "a cookie anyone could set over plain HTTP is not read over TLS"
    );
    // A stale cookie beside the live one does not hide it.
    let both = format!("__Host-campus_console={}; {cookie}", "A".repeat(43));
    assert_eq!(page("https", both).await.unwrap().status(), 200);

    // From a peer that is not a trusted proxy, X-Forwarded-Proto is not believed.
    let app = spawn_app().await;
    let res = Console::new(&app.base)
        .req(Method::POST, "/console/sign-in")
        .header("x-forwarded-proto", "https")
        .form(&[("token", OPERATOR_TOKEN)])
        .send()
        .await
        .unwrap();
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with("campus_console=") && !set.contains("Secure"),
        "{set}"
    );
}

#[tokio::test]
async fn a_form_without_the_csrf_token_or_from_another_site_changes_nothing() {
    let app = spawn_app().await;
    let t = app.tenant("cons-csrf").await;
    let (c, csrf) = Console::signed_in(&app.base).await;
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
    let (c, csrf) = Console::signed_in(&app.base).await;
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
    let v = app.tenant_view(&t.slug).await;
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
    let (c, csrf) = Console::signed_in(&app.base).await;
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

    // The form as the console shows it carries its own key: the same form
    // sent twice (a reload of the answer) makes one tenant, and says so.
    let (_, html) = c.page("/console/new-tenant").await;
    let at = html.find(r#"name="idempotency" value=""#).expect("a key") + 26;
    let key = html[at..].split('"').next().unwrap().to_owned();
    let twice = unique_slug("cons-twice");
    let mut fields = form(&twice);
    fields.push(("idempotency", key));
    fields[6].1 = "a typed password, long enough".to_owned();
    let mut statuses = Vec::new();
    let mut replays = Vec::new();
    for _ in 0..2 {
        let res = c
            .req(Method::POST, "/console/tenants")
            .form(&fields)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        replays.push(res.text().await.unwrap().contains(r#"id="replay""#));
    }
    assert_eq!(statuses, [201, 201]);
    assert_eq!(replays, [false, true]);
    let made = app
        .kernel
        .registry()
        .operator_actions(Some(&twice), None, 10)
        .await
        .unwrap();
    assert_eq!(made.len(), 1, "one tenant, one line");
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
    let app = spawn_app_with(|_, s| s.console_idle = std::time::Duration::from_secs(3)).await;
    let mut c = Console::new(&app.base);
    c.sign_in(OPERATOR_TOKEN).await;
    assert_eq!(c.page("/console/tenants").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(6_500)).await;
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

/// Polls a job's page until it ends; its outcome's text.
async fn job_outcome(c: &Console, job: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, html) = c.page(&format!("{job}?fragment=true")).await;
        assert_eq!(status, 200, "{html}");
        if let Some(at) = html.find(r#"id="job-outcome">"#) {
            return html[at + 17..].split('<').next().unwrap().to_owned();
        }
        assert!(
            html.contains("hx-trigger=\"every 1s\""),
            "a running job's fragment polls again: {html}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not end: {html}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_fleet_page_migrates_the_tenants_behind_as_a_job_and_runs_the_audit() {
    use crate::provisioning::{OtherServer, newer_migrations};
    let app = spawn_app().await;
    let t = app.tenant("cons-mig").await;
    let newer = tenancy::Kernel::open(tenancy::KernelConfig {
        tenant_migrations: newer_migrations(),
        ..app.config.clone()
    })
    .await
    .unwrap();
    let srv = OtherServer::start(newer).await;
    let me = || {
        srv.client
            .get(format!("{}/api/v1/me", srv.base))
            .header("X-Tenant", &t.slug)
            .bearer_auth(&t.admin.token)
            .send()
    };
    assert_problem(me().await.unwrap(), 503, "tenant_maintenance").await;

    let mut c = Console::new(&srv.base);
    c.sign_in(OPERATOR_TOKEN).await;
    let (status, html) = c.page("/console/fleet").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!("href=\"/console/tenants/{}\"", t.slug)),
        "listed as behind"
    );
    // Every placement, with its tenants (the embedded one too).
    let placements = &html[html.find("id=\"placements\"").unwrap()..];
    let placements = &placements[..placements.find("</table>").unwrap()];
    assert!(placements.contains("<td>default</td>"), "{placements}");
    assert!(
        ["1 database", "1 schema", "1 pool"]
            .iter()
            .any(|n| placements.contains(n)),
        "its tenant is counted: {placements}"
    );
    let csrf = csrf_of(&html);
    let res = c.post("/console/fleet/migrate", &[]).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "no CSRF token, no migration"
    );
    let res = c.post("/console/fleet/migrate", &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let job = location(&res);
    assert!(job.starts_with("/console/jobs/"), "{job}");
    let outcome = job_outcome(&c, &job).await;
    assert_eq!(outcome, "Done: 1 migrated, 0 already current, 0 failed");
    assert_eq!(me().await.unwrap().status(), 200, "served again");
    let (_, html) = c.page("/console/fleet").await;
    assert!(html.contains("id=\"none-behind\""), "{html}");

    let res = c.post("/console/fleet/audit", &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let outcome = job_outcome(&c, &location(&res)).await;
    assert!(outcome.starts_with("Done: no findings"), "{outcome}");
    let (_, log) = c.page("/console/audit").await;
    assert!(log.contains("fleet.migrate") && log.contains("fleet.audit"));
}

#[tokio::test]
async fn an_export_from_the_console_imports_back_as_a_copy_through_the_console() {
    let app = spawn_app().await;
    let t = app.tenant("cons-arc").await;
    let course = app.course(&t.admin, "Kept in the archive", true).await;
    let (c, csrf) = Console::signed_in(&app.base).await;
    let passphrase = "a long archive passphrase";
    let res = c
        .post(
            &format!("/console/tenants/{}/export", t.slug),
            &[("csrf", &csrf), ("passphrase", passphrase)],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/x-tar");
    let archive = res.bytes().await.unwrap();
    assert!(archive.len() > 1024);

    let copy = unique_slug("cons-copy");
    let form = |csrf: &str| {
        reqwest::multipart::Form::new()
            .text("csrf", csrf.to_owned())
            .text("slug", copy.clone())
            .text("passphrase", passphrase)
            // A copy of a `pool` tenant cannot share its placement's tables
            // with the original (its ids would repeat): another mode.
            .text(
                "isolation",
                if backend() == Backend::Pool {
                    "schema"
                } else {
                    ""
                },
            )
            .part(
                "archive",
                reqwest::multipart::Part::bytes(archive.to_vec()).file_name("t.campus"),
            )
    };
    // Without the session's token: refused, nothing kept, nothing made.
    let res = c
        .req(Method::POST, "/console/import")
        .multipart(form("forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .req(Method::POST, "/console/import")
        .multipart(form(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let outcome = job_outcome(&c, &location(&res)).await;
    assert!(
        outcome.starts_with(&format!("Done: copied {} as {copy}", t.slug)),
        "{outcome}"
    );
    let admin = app.login(&copy, &t.admin.email, PASSWORD).await;
    let res = app
        .get(&admin, &format!("/api/v1/courses/{course}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the copy has the course");
    let lines = app
        .kernel
        .registry()
        .operator_actions(Some(&copy), None, 5)
        .await
        .unwrap();
    assert_eq!(lines[0].action, "tenant.import");
    assert_eq!(lines[0].outcome, "ok");
}

#[tokio::test]
async fn every_form_refuses_a_missing_or_wrong_token_and_another_sites_request() {
    let app = spawn_app().await;
    let t = app.tenant("cons-forms").await;
    let (c, csrf) = Console::signed_in(&app.base).await;
    let slug = t.slug.as_str();
    let routes = [
        "/console/sign-out".to_owned(),
        "/console/sessions/revoke".to_owned(),
        "/console/tenants".to_owned(),
        "/console/fleet/migrate".to_owned(),
        "/console/fleet/audit".to_owned(),
        format!("/console/tenants/{slug}/export"),
        format!("/console/tenants/{slug}/suspend"),
        format!("/console/tenants/{slug}/resume"),
        format!("/console/tenants/{slug}/plan"),
        format!("/console/tenants/{slug}/rename"),
        format!("/console/tenants/{slug}/move"),
        format!("/console/tenants/{slug}/delete"),
        format!("/console/tenants/{slug}/purge"),
    ];
    let fields = |token: &str| {
        vec![
            ("csrf", token.to_owned()),
            ("confirm", slug.to_owned()),
            ("plan", "free".to_owned()),
            ("name", "Renamed".to_owned()),
            ("isolation", "schema".to_owned()),
            ("slug", unique_slug("cons-forged")),
        ]
    };
    for route in &routes {
        let mut no_token = fields("");
        no_token.remove(0);
        for (what, req) in [
            ("no token", c.req(Method::POST, route).form(&no_token)),
            (
                "a wrong token",
                c.req(Method::POST, route).form(&fields("forged")),
            ),
            (
                "another site",
                c.req(Method::POST, route)
                    .header("sec-fetch-site", "cross-site")
                    .form(&fields(&csrf)),
            ),
            (
                "another origin",
                c.req(Method::POST, route)
                    .header(header::ORIGIN, "http://evil.example")
                    .form(&fields(&csrf)),
            ),
        ] {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{route} with {what}");
            assert!(
                res.text().await.unwrap().contains("Refused"),
                "{route}: the console's page"
            );
        }
    }
    // Nothing of it happened: still signed in, the tenant as it was.
    let v = app.tenant_view(slug).await;
    assert_eq!(
        (v["status"].as_str(), v["plan"].as_str()),
        (Some("active"), Some("standard"))
    );
    assert_eq!(v["name"], format!("Org {slug}"));
    assert_eq!(c.page("/console/tenants").await.0, 200);
    let lines = app
        .kernel
        .registry()
        .operator_actions(None, None, 100)
        .await
        .unwrap();
    assert_eq!(
        lines.iter().map(|l| l.action.as_str()).collect::<Vec<_>>(),
        ["console.sign_in", "tenant.create"],
        "no refused form reached an action"
    );
}

#[tokio::test]
async fn purge_from_the_console_destroys_the_tenant_and_lands_on_the_table() {
    let app = spawn_app().await;
    let t = app.tenant("cons-purge").await;
    let (c, csrf) = Console::signed_in(&app.base).await;
    let purge = format!("/console/tenants/{}/purge", t.slug);
    let res = c.post(&purge, &[("csrf", &csrf), ("confirm", "")]).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_ne!(
        app.footprint(&t.id).await,
        Footprint::default(),
        "nothing purged yet"
    );
    let res = c
        .post(&purge, &[("csrf", &csrf), ("confirm", &t.slug)])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/tenants?done=purged");
    let (status, html) = c.page(&location(&res)).await;
    assert_eq!(status, 200);
    assert!(html.contains("Purged"), "{html}");
    assert!(
        !html.contains(&format!("data-slug=\"{}\"", t.slug)),
        "not listed any more"
    );
    assert_eq!(
        app.footprint(&t.id).await,
        Footprint::default(),
        "nothing of it remains"
    );
    assert_eq!(c.page(&format!("/console/tenants/{}", t.slug)).await.0, 404);
    let lines = app
        .kernel
        .registry()
        .operator_actions(Some(&t.slug), None, 10)
        .await
        .unwrap();
    assert_eq!(
        (lines[0].action.as_str(), lines[0].outcome.as_str()),
        ("tenant.purge", "ok")
    );
}

#[tokio::test]
async fn what_tenants_and_operators_typed_is_shown_escaped() {
    let app = spawn_app().await;
    let t = app.tenant("cons-xss").await;
    let evil = "<img src=x onerror=alert(1)>\"'&";
    let res = app
        .operator(Method::PATCH, &format!("/admin/api/v1/tenants/{}", t.slug))
        .json(&serde_json::json!({ "name": evil }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .get(&t.admin, "/api/v1/me")
        .header(header::USER_AGENT, evil)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (c, csrf) = Console::signed_in(&app.base).await;
    // A typed slug that is none, in a path: not a tenant of the log.
    let res = c
        .post("/console/tenants/%3Cb%3E/suspend", &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status(), 404);
    for page in [
        "/console/tenants".to_owned(),
        format!("/console/tenants/{}", t.slug),
        "/console/audit".to_owned(),
        "/console/tenants?q=%3Cscript%3Ealert(1)%3C/script%3E".to_owned(),
        "/console/audit?tenant=%22%3E%3Cscript%3E".to_owned(),
    ] {
        let (status, html) = c.page(&page).await;
        assert_eq!(status, 200, "{page}");
        assert!(!html.contains("<img src=x"), "{page}: unescaped name");
        assert!(!html.contains("<script>alert"), "{page}: unescaped query");
        assert!(!html.contains("\"><script>"), "{page}: unescaped query");
    }
    let (_, html) = c.page(&format!("/console/tenants/{}", t.slug)).await;
    assert!(
        html.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "the name, escaped: {}",
        &html[html.find("img src").map_or(0, |i| i - 20)..][..80]
    );
}

#[tokio::test]
async fn a_move_from_the_console_runs_as_a_job_and_a_move_to_the_same_place_is_refused() {
    let app = spawn_app().await;
    let t = app.tenant("cons-move").await;
    let course = app.course(&t.admin, "Moves along", true).await;
    let (c, csrf) = Console::signed_in(&app.base).await;
    let before = app.tenant_view(&t.slug).await;
    let here = before["isolation"].as_str().unwrap().to_owned();
    let route = format!("/console/tenants/{}/move", t.slug);
    let res = c
        .post(
            &route,
            &[
                ("csrf", &csrf),
                ("isolation", &here),
                ("placement", "default"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("Nothing to do"));
    let lines = app
        .kernel
        .registry()
        .operator_actions(Some(&t.slug), None, 1)
        .await
        .unwrap();
    assert_eq!(
        (lines[0].action.as_str(), lines[0].outcome.as_str()),
        ("tenant.move", "refused")
    );
    // The embedded deployment has one mode and one placement: nowhere to go.
    if backend() == Backend::Sqlite {
        return;
    }
    let to = if here == "pool" { "schema" } else { "pool" };
    let res = c
        .post(
            &route,
            &[("csrf", &csrf), ("isolation", to), ("placement", "default")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let outcome = job_outcome(&c, &location(&res)).await;
    assert!(outcome.starts_with("Done: moved"), "{outcome}");
    assert_eq!(app.tenant_view(&t.slug).await["isolation"], to);
    let res = app
        .get(&t.admin, &format!("/api/v1/courses/{course}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "served from its new place");
}

#[tokio::test]
async fn a_tenants_page_shows_its_own_events_usage_and_traffic_only() {
    let app = spawn_app().await;
    let a = app.tenant("cons-iso-a").await;
    let b = app.tenant("cons-iso-b").await;
    let course_a = app.course(&a.admin, "Only in A", true).await;
    let course_b = app.course(&b.admin, "Only in B", true).await;
    app.user(&b, "learner").await;
    for _ in 0..30 {
        let res = app.get(&a.admin, "/api/v1/me").send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = app
        .operator(
            Method::POST,
            &format!("/admin/api/v1/tenants/{}/suspend", b.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let (c, _) = Console::signed_in(&app.base).await;
    let page = |slug: String| {
        let c = &c;
        async move {
            let (status, html) = c.page(&format!("/console/tenants/{slug}")).await;
            assert_eq!(status, 200, "{html}");
            html
        }
    };
    let (html_a, html_b) = (page(a.slug.clone()).await, page(b.slug.clone()).await);
    let fact = |html: &str, label: &str| -> String {
        let needle = format!("<dt>{label}</dt><dd>");
        let at = html.find(&needle).expect(label) + needle.len();
        html[at..].split('<').next().unwrap().to_owned()
    };
    let requests = |html: &str| -> u64 {
        let needle = "Requests per minute <span class=\"hint\">";
        let at = html.find(needle).expect("chart") + needle.len();
        html[at..].split(' ').next().unwrap().parse().unwrap()
    };
    // Its own audit events (read through its own handle), not the other's.
    assert!(html_a.contains(&course_a) && !html_a.contains(&course_b));
    assert!(html_b.contains(&course_b) && !html_b.contains(&course_a));
    // Its own usage.
    assert_eq!(
        (fact(&html_a, "Users"), fact(&html_a, "Courses")),
        ("1".into(), "1".into())
    );
    assert_eq!(
        (fact(&html_b, "Users"), fact(&html_b, "Courses")),
        ("2".into(), "1".into())
    );
    // What operators did to it, and to it only.
    assert!(html_b.contains("tenant.suspend") && !html_a.contains("tenant.suspend"));
    // Its own traffic.
    assert!(requests(&html_a) >= 30, "{}", requests(&html_a));
    assert!(requests(&html_b) < 30, "{}", requests(&html_b));
}
