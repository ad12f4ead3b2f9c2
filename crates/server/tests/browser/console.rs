//! The operator console in a real browser: what an operator does all day,
//! clicked and typed, with the API checked after each action.
//!
//! With `CAMPUS_CONSOLE_SCREENSHOTS=<dir>` it also saves the pages that
//! `docs/console.md` shows (see there for the command).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Browser, tools};
use crate::helpers::*;

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// The element `css` matches, waiting up to 20 s for it to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .run_sync(
                    "return document.querySelector(arguments[0]) !== null;",
                    json!([css]),
                )
                .await;
            if found == true {
                let v = self
                    .call(
                        Method::POST,
                        "element",
                        json!({ "using": "css selector", "value": css }),
                    )
                    .await;
                return v[ELEMENT].as_str().expect("element id").to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(Method::POST, &format!("element/{id}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(Method::POST, &format!("element/{id}/clear"), json!({}))
            .await;
        self.call(
            Method::POST,
            &format!("element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(Method::GET, &format!("element/{id}/text"), json!(null))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn run_sync(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            "execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn url(&self) -> String {
        self.call(Method::GET, "url", json!(null))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits (up to 20 s) until `script` returns true.
    async fn wait_for(&self, what: &str, script: &str, args: Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.run_sync(script, args.clone()).await != true {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` is `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        self.wait_for(
            &format!("{css} to read {want}"),
            "const e = document.querySelector(arguments[0]); return e !== null && e.textContent.trim() === arguments[1];",
            json!([css, want]),
        )
        .await;
    }

    /// Saves the page as `<dir>/<name>.png` when screenshots are asked for.
    async fn shot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CAMPUS_CONSOLE_SCREENSHOTS") else {
            return;
        };
        use base64::Engine;
        let png = self.call(Method::GET, "screenshot", json!(null)).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        let path = std::path::Path::new(&dir).join(format!("{name}.png"));
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(&path, bytes).expect("write screenshot");
        eprintln!("saved {}", path.display());
    }

    async fn window(&self, width: u32, height: u32) {
        self.call(
            Method::POST,
            "window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// What the browser's console said that mentions the page's
    /// Content-Security-Policy (a refused script or style).
    async fn csp_violations(&self) -> Vec<String> {
        let logs = self
            .driver
            .call(
                Method::POST,
                &format!("/session/{}/se/log", self.session),
                Some(json!({ "type": "browser" })),
            )
            .await;
        logs.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                m.contains("Content Security Policy") || m.contains("Content-Security-Policy")
            })
            .map(str::to_owned)
            .collect()
    }
}

/// The body text of the page now.
async fn body(b: &Browser) -> String {
    b.text("body").await
}

/// Sign in, create, find among many, suspend (the API answers 403),
/// resume, change the plan (the API's limits follow), delete with the typed
/// slug; a form without its CSRF token and a tenant's token are refused.
pub async fn an_operator_runs_a_tenants_life_from_the_console() {
    let (chromium, chromedriver) = tools().unwrap_or_else(|_| unreachable!("checked before"));
    let app = spawn_app().await;
    // Many tenants, so that the one made below has to be searched for.
    let many = 60;
    let made = futures_util::future::join_all((0..many).map(|i| {
        let client = app.client.clone();
        let url = app.url("/admin/api/v1/tenants");
        async move {
            let slug = format!("school-{i:03}");
            let plan = ["free", "standard", "enterprise"][i % 3];
            let res = client
                .post(url)
                .bearer_auth(OPERATOR_TOKEN)
                .json(&json!({
                    "slug": slug,
                    "name": format!("School number {i}"),
                    "plan": plan,
                    "admin": { "email": format!("head@{slug}.test"), "name": "Head", "password": PASSWORD }
                }))
                .send()
                .await
                .expect("provision");
            res.status()
        }
    }))
    .await;
    assert!(made.iter().all(|s| *s == StatusCode::CREATED), "{made:?}");

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.window(1400, 1000).await;

    // Not signed in: the sign-in page. A tenant admin's token does not open it.
    let head = app
        .login("school-007", "head@school-007.test", PASSWORD)
        .await;
    browser.goto(&app.url("/console/tenants")).await;
    browser.find("#token").await;
    assert!(
        browser.url().await.contains("/console/sign-in?next="),
        "{}",
        browser.url().await
    );
    browser.shot("sign-in").await;
    browser.type_into("#token", &head.token).await;
    browser.click("#sign-in").await;
    let refused = browser.text("#sign-in-error").await;
    assert!(refused.contains("not the operator token"), "{refused}");

    browser.type_into("#token", OPERATOR_TOKEN).await;
    browser.click("#sign-in").await;
    browser.find("#tenants").await;
    let count = browser.text("#count").await;
    assert!(count.contains(&format!("of {many} matching")), "{count}");
    browser.shot("tenants").await;

    // Create one, with a generated password shown once.
    browser.click("a[href='/console/new-tenant']").await;
    browser.type_into("#slug", "riverside").await;
    browser.type_into("#name", "Riverside Academy").await;
    browser
        .type_into("#admin_email", "head@riverside.test")
        .await;
    browser.type_into("#admin_name", "Ada Head").await;
    browser.shot("new-tenant").await;
    browser.click("#create").await;
    let password = browser.text("#admin-password").await;
    assert!(password.len() >= 20, "{password}");
    browser.shot("created").await;
    let admin = app
        .login("riverside", "head@riverside.test", &password)
        .await;

    // Find it among the many by typing: htmx searches as one types.
    browser.click("a[href='/console/tenants']").await;
    browser.find("#tenants").await;
    browser.type_into("#q", "rivers").await;
    browser
        .wait_for(
            "the search to narrow the table to one tenant",
            "const rows = document.querySelectorAll('#tenants tbody tr');
             return rows.length === 1 && rows[0].dataset.slug === arguments[0];",
            json!(["riverside"]),
        )
        .await;
    assert!(
        browser.url().await.contains("q=rivers"),
        "the search is in the address bar: {}",
        browser.url().await
    );
    browser
        .click("#tenants a[href='/console/tenants/riverside']")
        .await;
    browser.find("#details").await;

    let me = || async { app.get(&admin, "/api/v1/me").send().await.expect("me") };
    assert_eq!(me().await.status(), 200);

    // Suspend: the API answers 403 at once.
    browser.click("#suspend").await;
    browser.wait_text("#tenant-status", "suspended").await;
    assert!(browser.text("#notice").await.contains("Suspended"));
    assert_problem(me().await, 403, "tenant_suspended").await;

    // Resume.
    browser.click("#resume").await;
    browser.wait_text("#tenant-status", "active").await;
    assert_eq!(me().await.status(), 200);

    // A plan change: the API's limits are the new plan's.
    let enterprise = server::edge::limits::default_rates().enterprise;
    let shown = |v: &Value| v["limits"]["requests_per_second"].as_u64();
    let before = app.tenant_view("riverside").await;
    assert_ne!(
        shown(&before),
        Some(u64::from(enterprise.requests_per_second.get()))
    );
    browser
        .run_sync(
            "const s = document.querySelector('#plan'); s.value = 'enterprise';",
            json!([]),
        )
        .await;
    browser.click("#change-plan").await;
    browser
        .wait_for(
            "the plan's notice",
            "const n = document.querySelector('#notice'); return n !== null && n.textContent.includes('Plan changed');",
            json!([]),
        )
        .await;
    let after = app.tenant_view("riverside").await;
    assert_eq!(after["plan"], "enterprise");
    assert_eq!(
        shown(&after),
        Some(u64::from(enterprise.requests_per_second.get()))
    );
    assert!(
        body(&browser).await.contains(&format!(
            "{} (burst {})",
            enterprise.requests_per_second, enterprise.burst
        )),
        "the page shows the new limits"
    );
    // Some traffic for the charts, then the page again.
    for _ in 0..20 {
        let _ = me().await;
    }
    browser.goto(&app.url("/console/tenants/riverside")).await;
    browser.find("svg.chart rect").await;
    browser.shot("tenant").await;

    // A form post without the CSRF token, from the page itself: refused.
    let status = browser
        .run_async(
            "const done = arguments[arguments.length - 1];
             fetch('/console/tenants/riverside/suspend', { method: 'POST',
               headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: '' })
               .then((r) => done(r.status), (e) => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(status, 403, "a form post without the CSRF token");
    assert_eq!(me().await.status(), 200, "and nothing changed");

    // Delete: the slug typed wrong does nothing; typed right, it is gone.
    browser.type_into("#delete-confirm", "riverbank").await;
    browser.click("#delete").await;
    let error = browser.text("#error").await;
    assert!(error.contains("type the tenant"), "{error}");
    assert_eq!(me().await.status(), 200);
    browser.type_into("#delete-confirm", "riverside").await;
    browser.click("#delete").await;
    browser.wait_text("#tenant-status", "deleted").await;
    assert_problem(me().await, 401, "invalid_tenant").await;

    // The fleet and the audit log, which has every action above.
    browser.click("a[href='/console/fleet']").await;
    browser.find("#placements").await;
    browser.shot("fleet").await;
    browser.click("a[href='/console/audit']").await;
    browser.find("#audit").await;
    let log = browser.text("#audit").await;
    for action in [
        "console.sign_in",
        "tenant.create",
        "tenant.suspend",
        "tenant.resume",
        "tenant.plan",
        "tenant.delete",
    ] {
        assert!(log.contains(action), "{action} missing: {log}");
    }
    browser.shot("audit").await;

    // On a phone: the table scrolls inside its box, the page does not.
    browser.window(390, 844).await;
    browser.goto(&app.url("/console/tenants")).await;
    browser.find("#tenants").await;
    let overflow = browser
        .run_sync(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            json!([]),
        )
        .await;
    assert_eq!(overflow, true, "the page is wider than a phone");
    browser.shot("tenants-phone").await;

    // Every page above ran under the CSP with nothing refused.
    let violations = browser.csp_violations().await;
    assert!(violations.is_empty(), "{violations:?}");

    // Signing out ends it.
    browser.window(1400, 1000).await;
    browser.click(".signout button").await;
    browser.find("#token").await;
    browser.goto(&app.url("/console/fleet")).await;
    browser.find("#token").await;
    browser.close().await;
}
