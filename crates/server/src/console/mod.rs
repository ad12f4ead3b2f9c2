//! The operator console, `/console`: server-rendered pages (askama
//! templates, `templates/console/`) with htmx for live search and progress
//! (vendored, `assets/console/`), on the admin listener (or the public one
//! when there is none).
//!
//! Every action calls the same `lms::ops` service as the CLI and the
//! control-plane API, and is written to the operator audit log.
//!
//! * [`session`] — signing in, sessions, CSRF.
//! * [`pages`] — the tenants, a tenant, the create form, the fleet, the
//!   audit log; [`actions`] — what the forms do.
//! * [`activity`] — a tenant's last hour of traffic, for its charts.
//! * [`jobs`] — long actions run on tasks of their own, with progress.

pub mod actions;
pub mod activity;
pub mod chart;
pub mod jobs;
pub mod pages;
pub mod session;

use askama::Template;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use lms::audit::Origin;

use crate::state::AppState;

/// What the console keeps in memory on this node.
#[derive(Default)]
pub struct ConsoleState {
    pub activity: activity::Activity,
    pub jobs: jobs::Jobs,
    /// The last isolation audit run from the console: when, and its findings.
    audit: std::sync::Mutex<Option<(String, Vec<String>)>>,
    /// Every tenant, as of a registry generation: listing 10,000 tenants
    /// costs ~100 ms, asking whether anything changed one small query.
    list: std::sync::Mutex<Option<(i64, std::sync::Arc<Vec<tenancy::Tenant>>)>>,
}

impl ConsoleState {
    /// Every tenant that is not purged, read again only when the registry
    /// changed since the last read (its generation moved).
    pub async fn tenants(
        &self,
        kernel: &tenancy::Kernel,
    ) -> Result<std::sync::Arc<Vec<tenancy::Tenant>>, tenancy::Error> {
        let now = kernel.registry().generation().await?;
        if let Some((seen, list)) = self.list.lock().ok().and_then(|l| l.clone())
            && seen == now
        {
            return Ok(list);
        }
        // Read after the generation: a change in between makes the next
        // call read again, never hides one.
        let list = std::sync::Arc::new(kernel.list().await?);
        if let Ok(mut l) = self.list.lock() {
            *l = Some((now, list.clone()));
        }
        Ok(list)
    }

    pub fn last_audit(&self) -> Option<(String, Vec<String>)> {
        self.audit.lock().ok().and_then(|a| a.clone())
    }

    pub fn set_audit(&self, findings: Vec<String>) {
        if let Ok(mut a) = self.audit.lock() {
            *a = Some((tenancy::clock::now(), findings));
        }
    }
}

/// The console's Content-Security-Policy: its own scripts and styles only
/// (no inline script or style, no `eval`), no frames, forms post to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The routes under `/console`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { see_other("/console/tenants") }))
        .route("/console/", get(|| async { see_other("/console/tenants") }))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/sessions/revoke", post(session::revoke))
        .route(
            "/console/tenants",
            get(pages::tenants).post(actions::create),
        )
        .route("/console/new-tenant", get(pages::new_tenant))
        .route(
            "/console/import",
            get(pages::import_page).post(actions::import.layer(DefaultBodyLimit::disable())),
        )
        .route("/console/tenants/{slug}", get(pages::tenant))
        .route("/console/tenants/{slug}/{action}", post(actions::act))
        .route("/console/tenants/{slug}/export", post(actions::export))
        .route("/console/fleet", get(pages::fleet))
        .route("/console/fleet/migrate", post(actions::migrate))
        .route("/console/fleet/audit", post(actions::run_audit))
        .route("/console/jobs/{id}", get(pages::job))
        .route("/console/audit", get(pages::audit_log))
        .route("/console/assets/htmx.min.js", get(htmx))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .layer(axum::middleware::from_fn(same_site_only))
        .layer(axum::middleware::map_response(secure_headers))
}

/// Every request that may change something (any method but `GET` and
/// `HEAD`) is refused when a browser says another site made it
/// ([`session::same_origin`]), before any handler — sign-in included; the
/// session's CSRF token is each form's own check on top.
async fn same_site_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::Method;
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && let Err(refused) = session::same_origin(req.headers())
    {
        return refused.into_response();
    }
    next.run(req).await
}

/// The console's routes that take a large body (an archive upload).
pub fn body_limit(route: &str) -> Option<u64> {
    (route == "/console/import").then_some(u64::MAX)
}

async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// htmx 2.0.11 (`assets/console/README.md`).
const HTMX: &str = include_str!("../../assets/console/htmx.min.js");
const CSS: &str = include_str!("../../assets/console/console.css");
const JS: &str = include_str!("../../assets/console/console.js");

async fn htmx() -> Response {
    asset("text/javascript; charset=utf-8", HTMX)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// 303 See Other: where a form's post leads.
pub fn see_other(to: &str) -> Redirect {
    Redirect::to(to)
}

/// A page, or the error page if the template fails.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => Fail::Unavailable(format!("a page failed to render: {e}")).into_response(),
    }
}

/// Why a console request was not served: an HTML answer, never a stack of
/// JSON, and a log line where an operator needs one.
#[derive(Debug)]
pub enum Fail {
    /// Not signed in (or the session ended): to the sign-in page (this
    /// address, which names the page to come back to).
    SignIn(String),
    /// The same, for a request htmx made (a live search, a job's progress):
    /// htmx follows `HX-Redirect` with the whole page, where a 303 would be
    /// followed inside the fragment.
    SignInHtmx,
    /// A state-changing request without this session's CSRF token, or made
    /// by another site.
    Csrf,
    NotFound,
    /// Something the console depends on failed (the registry, say).
    Unavailable(String),
}

/// Something the console depends on failed: the registry, a tenant's
/// database, the temporary file of an upload.
impl From<tenancy::Error> for Fail {
    fn from(e: tenancy::Error) -> Self {
        Fail::Unavailable(e.to_string())
    }
}

impl From<lms::Error> for Fail {
    fn from(e: lms::Error) -> Self {
        Fail::Unavailable(e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Unavailable(e.to_string())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            Fail::SignIn(to) => return see_other(&to).into_response(),
            Fail::SignInHtmx => {
                return (
                    StatusCode::OK,
                    [("hx-redirect", HeaderValue::from_static("/console/sign-in"))],
                )
                    .into_response();
            }
            Fail::Csrf => (
                StatusCode::FORBIDDEN,
                "Refused",
                "This form did not carry this session's security token, or came from another \
                 site. Reload the page and try again."
                    .to_owned(),
            ),
            Fail::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page or tenant.".to_owned(),
            ),
            Fail::Unavailable(why) => {
                tracing::error!(error = %why, "console: a request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "The console could not do this now (the server's log says why). Try again."
                        .to_owned(),
                )
            }
        };
        render_plain(status, title, &detail)
    }
}

/// A bare page (no navigation): errors, refusals.
pub(crate) fn render_plain(status: StatusCode, title: &str, detail: &str) -> Response {
    let page = pages::Plain {
        title: title.to_owned(),
        detail: detail.to_owned(),
    };
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(_) => (status, detail.to_owned()).into_response(),
    }
}

/// How an operator action ended, as the audit log says it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done (with what is worth saying).
    Ok(String),
    /// Not done, and nothing changed: the request was wrong or not allowed
    /// now (a 4xx).
    Refused(String),
    /// Tried and failed, perhaps half-way (a 5xx, a partial migration, a
    /// purge that left something, an audit with findings).
    Failed(String),
}

impl Outcome {
    /// A service's answer: refused below 500, failed from 500.
    pub fn of_status(status: StatusCode, why: String) -> Self {
        if status.is_server_error() {
            Outcome::Failed(why)
        } else {
            Outcome::Refused(why)
        }
    }

    /// As a job ends with it: done, or not (with why).
    pub fn result(&self) -> Result<String, String> {
        match self {
            Outcome::Ok(d) => Ok(d.clone()),
            Outcome::Refused(d) | Outcome::Failed(d) => Err(d.clone()),
        }
    }

    fn parts(self) -> (&'static str, String) {
        match self {
            Outcome::Ok(d) => ("ok", d),
            Outcome::Refused(d) => ("refused", d),
            Outcome::Failed(d) => ("failed", d),
        }
    }
}

/// Writes a line to the operator audit log; a failure to write it is
/// logged (the action itself is done by then).
pub async fn audit(
    state: &AppState,
    who: &str,
    action: &str,
    tenant: Option<&str>,
    outcome: Outcome,
    origin: &Origin,
) {
    record(state, who, action, tenant, outcome, origin, "console").await
}

/// [`audit`], saying which door the action came through (`console`, `api`).
/// A tenant that is not a valid slug (a typo in a path) is kept in the
/// detail, not as a tenant: the log's tenant column holds slugs only.
pub async fn record(
    state: &AppState,
    who: &str,
    action: &str,
    tenant: Option<&str>,
    outcome: Outcome,
    origin: &Origin,
    via: &str,
) {
    let (outcome, mut detail) = outcome.parts();
    let slug = tenant.and_then(|t| tenancy::Slug::parse(t).ok().map(|s| s.to_string()));
    if let Some(raw) = tenant.filter(|_| slug.is_none()) {
        let raw: String = raw.chars().take(80).collect();
        detail = format!("(asked for {raw:?}) {detail}");
    }
    let line = tenancy::operators::OperatorAction {
        id: 0,
        at: String::new(),
        operator: who.to_owned(),
        action: action.to_owned(),
        tenant: slug.clone(),
        outcome: outcome.to_owned(),
        detail,
        client: origin.client.clone(),
        user_agent: origin.user_agent.clone(),
        via: via.to_owned(),
    };
    tracing::info!(
        target: "campus::operator",
        operator = %who, action, tenant = slug.as_deref().unwrap_or(""), outcome, via,
        client = origin.client.as_deref().unwrap_or(""),
        "operator action"
    );
    if let Err(e) = state.kernel.registry().record_operator_action(&line).await {
        tracing::error!(error = %e, action, "the operator audit log could not be written");
    }
}
