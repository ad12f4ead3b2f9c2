//! Signing in to the console, its sessions and its CSRF tokens.
//!
//! * The operator signs in with the operator token, and with nothing else:
//!   a tenant's token, API key or password never opens the console, and a
//!   bearer header is not looked at. Failed sign-ins spend the login
//!   throttle's budgets like a tenant user's logins, keyed by the client's
//!   address (so that failures from elsewhere never lock an operator out).
//! * The session is a random 256-bit id in a cookie that scripts cannot
//!   read (`HttpOnly`), that no other site's request carries
//!   (`SameSite=Strict`), and that is `Secure` (and `__Host-`) when a
//!   trusted proxy says the request came over TLS. The registry keeps its
//!   SHA-256, not the id: signing out, or revoking, ends it on every node at
//!   once; unused for the idle timeout, it is over.
//! * Every state-changing request carries the session's CSRF token in a
//!   form field, compared in constant time; and a request that a browser
//!   marks as coming from another site (`Sec-Fetch-Site`, `Origin`) is
//!   refused before that, signed in or not.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lms::audit::Origin;
use sha2::{Digest, Sha256};
use tenancy::operators::ConsoleSession;

use super::{Fail, Outcome, audit};
use crate::state::AppState;

/// The cookie's name over plain HTTP, and behind TLS.
pub const COOKIE: &str = "campus_console";
pub const COOKIE_TLS: &str = "__Host-campus_console";

/// How long a session lives unused, unless configured.
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// How long a session lives at most, used or not: a stolen cookie in use
/// does not live for ever.
pub const LIFETIME_S: i64 = 12 * 3600;

/// A session's last sight is written at most this often.
const TOUCH_S: i64 = 60;

/// Who a console line of the audit log names for the operator token.
pub const OPERATOR: &str = "operator token";

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session cookies a request carries under the name its scheme uses
/// (`__Host-` over TLS: a cookie set over plain HTTP, by anyone, is never
/// read there), well-formed ones only, at most a few.
fn cookies(headers: &HeaderMap, tls: bool) -> Vec<&str> {
    let name = if tls { COOKIE_TLS } else { COOKIE };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, value)| value)
        // Ours are 43 characters of base64url; anything else is not one.
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .take(4)
        .collect()
}

/// Whether the request came to the proxy in front over TLS.
fn over_tls(parts: &Parts, state: &AppState) -> bool {
    crate::edge::client::forwarded_https(
        &parts.headers,
        &parts.extensions,
        &state.config.trusted_proxies,
    )
}

fn set_cookie(value: &str, tls: bool) -> HeaderValue {
    let text = if tls {
        format!("{COOKIE_TLS}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
    } else {
        format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict")
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn clear_cookie(tls: bool) -> HeaderValue {
    HeaderValue::from_static(if tls {
        "__Host-campus_console=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    } else {
        "campus_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"
    })
}

/// A signed-in operator.
pub struct Signed {
    pub session: ConsoleSession,
    pub origin: Origin,
}

impl Signed {
    /// Refuses a state-changing request whose form lacks this session's
    /// CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), Fail> {
        if crate::edge::auth::same(given.as_bytes(), self.session.csrf.as_bytes()) {
            Ok(())
        } else {
            crate::edge::metrics::security_event("console_csrf");
            tracing::warn!(
                target: "campus::security",
                event = "console_csrf",
                "a console form came without its session's CSRF token"
            );
            Err(Fail::Csrf)
        }
    }

    /// Who the audit log names.
    pub fn who(&self) -> String {
        format!(
            "{} (session {})",
            self.session.operator,
            self.session
                .id_sha256
                .get(..8)
                .unwrap_or(&self.session.id_sha256)
        )
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Fail> {
        let htmx = parts.headers.contains_key("hx-request");
        // Back to this page once signed in (a page, not a form's post).
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| parts.method == axum::http::Method::GET && next_page(p) == *p)
            .map(|p| format!("/console/sign-in?next={}", super::pages::url_escape(p)))
            .unwrap_or_else(|| "/console/sign-in".to_owned());
        let out = if htmx {
            Fail::SignInHtmx
        } else {
            Fail::SignIn(here)
        };
        let idle = i64::try_from(state.config.console_idle.as_secs()).unwrap_or(i64::MAX);
        // A stale cookie beside the live one (another path's, say) is tried
        // too: the first that names a live session wins.
        for value in cookies(&parts.headers, over_tls(parts, state)) {
            let found = state
                .kernel
                .registry()
                .console_session(
                    &digest(value),
                    tenancy::clock::unix_now(),
                    idle,
                    LIFETIME_S,
                    TOUCH_S,
                )
                .await
                .map_err(Fail::from)?;
            if let Some(session) = found {
                return Ok(Signed {
                    session,
                    origin: crate::edge::auth::origin(parts),
                });
            }
        }
        Err(out)
    }
}

/// Refuses a state-changing request that a browser says another site
/// made: the CSRF token's second line, and the only one for the sign-in
/// form. Browsers that send `Sec-Fetch-Site` are believed (`same-origin`,
/// or `none` for what the user typed); for the others, an `Origin` must
/// name this host (as the request's `Host` does: a proxy in front must
/// pass it on, as nginx's `proxy_set_header Host $host` does).
pub fn same_origin(headers: &HeaderMap) -> Result<(), Fail> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return if matches!(site, "same-origin" | "none") {
            Ok(())
        } else {
            Err(Fail::Csrf)
        };
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(Fail::Csrf);
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a console page, never elsewhere.
fn next_page(next: &str) -> &str {
    let safe = next.starts_with("/console/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.len() < 512
        && next.bytes().all(|b| b.is_ascii_graphic());
    if safe { next } else { "/console/tenants" }
}

pub async fn sign_in_page(
    signed: Result<Signed, Fail>,
    query: axum::extract::Query<NextQuery>,
) -> Response {
    if signed.is_ok() {
        return super::see_other(next_page(&query.next)).into_response();
    }
    super::render(
        StatusCode::OK,
        &super::pages::SignIn {
            next: next_page(&query.next).to_owned(),
            error: None,
        },
    )
}

#[derive(serde::Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

pub async fn sign_in(
    State(state): State<AppState>,
    parts: Parts,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    let origin = crate::edge::auth::origin(&parts);
    let client = parts
        .extensions
        .get::<lms::throttle::ClientAddr>()
        .cloned()
        .unwrap_or_else(lms::throttle::ClientAddr::unknown);
    let next = next_page(&form.next).to_owned();
    let page = |status, error: &str| {
        super::render(
            status,
            &super::pages::SignIn {
                next: next.clone(),
                error: Some(error.to_owned()),
            },
        )
    };
    let shared = state.kernel.shared();
    // The login throttle's budgets, keyed by address only: the operator
    // token is one secret for everyone, and a budget of its own across
    // addresses would let anyone lock the operators out by failing from
    // many places. One address gets a few tries, then waits.
    let console: tenancy::TenantId = uuid::Uuid::nil().into();
    let account = format!("operator-console@{}", client.as_str());
    let attempt = match state
        .sessions
        .throttle
        .attempt(shared, console, &account, &client)
        .await
    {
        Ok(a) => a,
        Err(lms::Error::RateLimited { retry_after_s }) => {
            let mut res = page(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed sign-ins. Try again in {retry_after_s} s."),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            return res;
        }
        Err(e) => return Fail::from(e).into_response(),
    };
    let token = form.token.trim();
    if token.len() > 512 || !crate::edge::auth::is_operator_token(&state, token) {
        // Logged and counted, not written to the audit log: anyone can
        // fail a sign-in, and the log keeps what operators did.
        crate::edge::metrics::security_event("console_sign_in_failed");
        tracing::warn!(
            target: "campus::security",
            event = "console_sign_in_failed",
            client = origin.client.as_deref().unwrap_or(""),
            "a console sign-in with a wrong token"
        );
        return page(
            StatusCode::UNAUTHORIZED,
            "That is not the operator token. (A tenant's token or password does not open the console.)",
        );
    }
    state.sessions.throttle.succeeded(shared, &attempt).await;
    let id = random_token();
    let session = ConsoleSession {
        id_sha256: digest(&id),
        operator: OPERATOR.to_owned(),
        csrf: random_token(),
        client: origin.client.clone(),
        user_agent: origin.user_agent.clone(),
        created_at: tenancy::clock::now(),
        last_seen: tenancy::clock::unix_now(),
        created_unix: tenancy::clock::unix_now(),
    };
    let idle = i64::try_from(state.config.console_idle.as_secs()).unwrap_or(i64::MAX);
    if let Err(e) = state
        .kernel
        .registry()
        .create_console_session(&session, idle, LIFETIME_S)
        .await
    {
        return Fail::from(e).into_response();
    }
    let who = format!(
        "{OPERATOR} (session {})",
        &session.id_sha256[..8.min(session.id_sha256.len())]
    );
    audit(
        &state,
        &who,
        "console.sign_in",
        None,
        Outcome::Ok(String::new()),
        &origin,
    )
    .await;
    let tls = over_tls(&parts, &state);
    let mut res = super::see_other(&next).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, tls));
    res
}

#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    /// Absent: refused by the CSRF check, as a wrong one is.
    #[serde(default)]
    pub csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Result<Response, Fail> {
    signed.check_csrf(&form.csrf)?;
    state
        .kernel
        .registry()
        .revoke_console_sessions(Some(&signed.session.id_sha256), None)
        .await
        .map_err(Fail::from)?;
    audit(
        &state,
        &signed.who(),
        "console.sign_out",
        None,
        Outcome::Ok(String::new()),
        &signed.origin,
    )
    .await;
    let mut res = super::see_other("/console/sign-in").into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(over_tls(&parts, &state)));
    Ok(res)
}

#[derive(serde::Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    /// One session (its digest's first 8 characters, as listed); absent:
    /// every other session.
    #[serde(default)]
    session: String,
}

/// Ends one listed session, or every session but this one.
pub async fn revoke(
    State(state): State<AppState>,
    signed: Signed,
    axum::Form(form): axum::Form<RevokeForm>,
) -> Result<Response, Fail> {
    signed.check_csrf(&form.csrf)?;
    let registry = state.kernel.registry();
    let idle = i64::try_from(state.config.console_idle.as_secs()).unwrap_or(i64::MAX);
    let ended = if form.session.is_empty() {
        registry
            .revoke_console_sessions(None, Some(&signed.session.id_sha256))
            .await
            .map_err(Fail::from)?
    } else {
        let all = registry
            .console_sessions(tenancy::clock::unix_now(), idle, LIFETIME_S)
            .await
            .map_err(Fail::from)?;
        match all
            .iter()
            .find(|s| s.id_sha256.starts_with(&form.session) && form.session.len() == 8)
        {
            Some(s) => registry
                .revoke_console_sessions(Some(&s.id_sha256), None)
                .await
                .map_err(Fail::from)?,
            None => 0,
        }
    };
    let named = !form.session.is_empty();
    let what = if !named {
        "every other session".to_owned()
    } else if form.session.len() == 8 && form.session.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("session {}", form.session)
    } else {
        "a session that is none".to_owned()
    };
    let outcome = if named && ended == 0 {
        Outcome::Refused(format!("{what}: no such live session"))
    } else {
        Outcome::Ok(format!("{what}: {ended} ended"))
    };
    audit(
        &state,
        &signed.who(),
        "console.revoke_sessions",
        None,
        outcome,
        &signed.origin,
    )
    .await;
    Ok(super::see_other("/console/audit?done=revoked").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_only_a_console_page_is_a_destination() {
        for bad in [
            "",
            "//evil.example/console/",
            "/\\evil.example",
            "https://evil.example/console/x",
            "/console//evil.example",
            "/consolex",
            "/console/\\evil",
            "/console/a b",
            "javascript:alert(1)",
        ] {
            assert_eq!(next_page(bad), "/console/tenants", "{bad:?}");
        }
        for good in ["/console/fleet", "/console/tenants/acme?done=plan"] {
            assert_eq!(next_page(good), good);
        }
    }

    #[test]
    fn only_a_browsers_same_origin_request_passes() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[])).is_ok(), "a client that is no browser");
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&h(&[("sec-fetch-site", "none")])).is_ok());
        assert!(same_origin(&h(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&h(&[("sec-fetch-site", "cross-site")])).is_err());
        // Sec-Fetch-Site is believed over a Host a proxy rewrote.
        assert!(
            same_origin(&h(&[
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://console.example"),
                ("host", "10.0.0.5:9090")
            ]))
            .is_ok()
        );
        assert!(same_origin(&h(&[("origin", "http://a.example"), ("host", "a.example")])).is_ok());
        assert!(same_origin(&h(&[("origin", "http://b.example"), ("host", "a.example")])).is_err());
        assert!(same_origin(&h(&[("origin", "null"), ("host", "a.example")])).is_err());
    }
}
