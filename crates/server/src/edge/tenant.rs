//! Where a request is resolved to a tenant — once, at the edge — and gated on
//! the tenant's status. The tenant then travels as a value in the request's
//! extensions ([`ResolvedTenant`]); there is no ambient "current tenant".
//!
//! | the request | the answer |
//! | --- | --- |
//! | `X-Tenant: acme` or `Host: acme.<base domain>` | the tenant `acme` |
//! | both, naming different tenants; or two `X-Tenant` | 400 `tenant_conflict` |
//! | neither | 400 `tenant_required` |
//! | malformed, unknown or deleted | 401 `invalid_tenant`, one body for all |
//! | suspended | 403 `tenant_suspended` |
//! | the registry cannot be read (and the directory is too old to trust) | 503 `unavailable` |
//! | maintenance, or schema behind this build | writes: 503 `tenant_maintenance` |

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tenancy::{Slug, Tenant, TenantStatus};

use super::auth::Credential;
use crate::problem::ApiError;
use crate::state::AppState;

/// The tenant a request was resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedTenant(pub Tenant);

pub const HEADER: &str = "x-tenant";

/// The tenant name a request carries, before any validation.
pub fn requested_name(headers: &HeaderMap, base_domain: Option<&str>) -> Result<String, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let from_header = values.next();
    if values.next().is_some() {
        return Err(conflict("more than one X-Tenant header"));
    }
    let from_header = match from_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid_tenant())?
                .to_owned(),
        ),
        None => None,
    };
    let from_host = base_domain.and_then(|base| {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let label = host.strip_suffix(base)?.strip_suffix('.')?;
        Some(label.to_owned())
    });
    match (from_header, from_host) {
        (Some(h), Some(d)) if h != d => Err(conflict("X-Tenant and Host name different tenants")),
        (Some(h), _) => Ok(h),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "tenant_required",
            "name the tenant with the X-Tenant header",
        )),
    }
}

/// The tenant a signed content link names in its query (`?tenant=`), for
/// a `GET`/`HEAD` of a lesson's content that carries a signature: a
/// `<video>` on any page can load it, with no header and no subdomain. The
/// signature binds the tenant's id, so a link of one tenant never opens
/// under another's name. `None` for any other request.
fn link_tenant<'q>(method: &Method, path: &str, query: Option<&'q str>) -> Option<&'q str> {
    if !matches!(*method, Method::GET | Method::HEAD) || !path.ends_with("/content") {
        return None;
    }
    let mut tenant = None;
    let mut signed = false;
    for pair in query?.split('&') {
        match pair.split_once('=') {
            // Given twice: not as signed.
            Some(("tenant", v)) if tenant.replace(v).is_some() => return None,
            Some(("sig", _)) => signed = true,
            _ => {}
        }
    }
    tenant.filter(|_| signed)
}

/// The tenant a request names: [`requested_name`], or, when neither header
/// nor host names one, the tenant a signed link names. A header or host
/// naming another tenant than the link wins, and the link's signature then
/// fails there (403 `invalid_signature`, as for any link used under another
/// tenant).
fn requested_tenant(
    headers: &HeaderMap,
    base_domain: Option<&str>,
    method: &Method,
    uri: &axum::http::Uri,
) -> Result<String, ApiError> {
    match requested_name(headers, base_domain) {
        Err(e) if !headers.contains_key(HEADER) => {
            match link_tenant(method, uri.path(), uri.query()) {
                Some(linked) => Ok(linked.to_owned()),
                None => Err(e),
            }
        }
        named => named,
    }
}

fn conflict(why: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "tenant_conflict", why)
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn maintenance(why: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "tenant_maintenance", why).retry_after(5)
}

/// The gate: may this tenant be served this request?
pub fn gate(t: &Tenant, method: &Method, latest: i64) -> Result<(), ApiError> {
    match t.status {
        TenantStatus::Active => {}
        TenantStatus::Maintenance if !is_write(method) => {}
        TenantStatus::Maintenance => return Err(maintenance("the tenant is under maintenance")),
        TenantStatus::Suspended => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_suspended",
                "the tenant is suspended",
            ));
        }
        TenantStatus::Provisioning | TenantStatus::Deleted | TenantStatus::Purged => {
            return Err(ApiError::invalid_tenant());
        }
    }
    // A tenant whose schema is behind this build is not served at all: no
    // query here may assume columns it does not have yet.
    if t.schema_version < latest {
        return Err(maintenance("the tenant's data is being migrated"));
    }
    Ok(())
}

/// Middleware: resolves and gates the tenant, or answers the problem. What
/// a resolved tenant was answered (refusals included), and how fast, is
/// counted under its id.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tenant = match resolve(&state, req.headers(), req.method(), req.uri()).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    tracing::Span::current().record("tenant", tenant.slug.as_str());
    let id = tenant.id;
    let started = std::time::Instant::now();
    let res = serve(state.clone(), req, next, tenant).await;
    let elapsed = started.elapsed();
    super::metrics::tenant_response(&id, res.status().as_u16(), elapsed);
    state
        .console
        .activity
        .record(id, res.status().as_u16(), elapsed);
    res
}

/// The rest of [`layer`], for a resolved tenant.
async fn serve(state: AppState, mut req: Request, next: Next, tenant: Tenant) -> Response {
    // The request layer's (outermost): computed once per request.
    let client = req
        .extensions()
        .get::<lms::throttle::ClientAddr>()
        .cloned()
        .unwrap_or_else(|| {
            super::client::address(
                req.headers(),
                req.extensions(),
                &state.config.trusted_proxies,
            )
        });
    let credential = match super::auth::bearer_of(req.headers()) {
        None => Credential::Missing,
        Some(token) => match lms::auth::authenticate(&state.kernel, &tenant, token).await {
            Ok(Ok(p)) => Credential::Valid(p),
            Ok(Err(r)) => Credential::Refused(r),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    // A signed content link that holds was handed by the tenant to one of
    // its users: its reads (a video's range requests, a whole school behind
    // one address) spend the tenant's allowance and the link's own (as one
    // user's), not the small anonymous one of an address. Checked without
    // I/O; the handler checks it again.
    let link = match (&credential, req.method()) {
        (Credential::Missing, &Method::GET | &Method::HEAD) => {
            lms::files::signed_link(&state.kernel, &tenant, req.uri().path(), req.uri().query())
                .map(str::to_owned)
        }
        _ => None,
    };
    let verdict = if matches!(credential, Credential::Valid(_)) || link.is_some() {
        // The tenant's own allowance: a flood here spends nobody else's.
        let verdict = state.limits.check(state.kernel.shared(), &tenant).await;
        if !verdict.allowed() {
            state.limits.refuse(&tenant, "tenant").await;
            return verdict.refusal("this organisation").into_response();
        }
        if let Some(sig) = &link {
            let own = state
                .limits
                .check_user(
                    state.kernel.shared(),
                    &tenant,
                    super::limits::Holder::Link(sig),
                )
                .await;
            if !own.allowed() {
                state.limits.refuse(&tenant, "link").await;
                return own.refusal("this link").into_response();
            }
        }
        verdict
    } else {
        // Logins, missing or bad tokens, links that do not hold: an allowance of
        // their own, per client address and per tenant, so that nobody
        // signed out can spend what the signed-in users have.
        match state
            .limits
            .check_anonymous(state.kernel.shared(), &tenant, &client)
            .await
        {
            Ok(v) => v,
            Err((v, limit)) => {
                state.limits.refuse(&tenant, limit).await;
                let whose = if limit == "address" {
                    "this address"
                } else {
                    "unauthenticated traffic to this organisation"
                };
                return v.refusal(whose).into_response();
            }
        }
    };
    req.extensions_mut().insert(client);
    req.extensions_mut().insert(credential);
    req.extensions_mut().insert(ResolvedTenant(tenant));
    let mut res = next.run(req).await;
    // A user's own limit, when it refused, speaks for itself.
    if !res.headers().contains_key("ratelimit-limit") {
        verdict.apply(res.headers_mut());
    }
    res
}

async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    uri: &axum::http::Uri,
) -> Result<Tenant, ApiError> {
    let name = requested_tenant(headers, state.config.base_domain.as_deref(), method, uri)?;
    let slug = Slug::parse(&name).map_err(|_| ApiError::invalid_tenant())?;
    let tenant = state
        .kernel
        .resolve(&slug)
        .await
        .map_err(|e| {
            // Expected while the registry is down: not an internal error.
            // An outage is logged once by the registry's watcher when it
            // starts (`registry refresh failed`), not once per request;
            // anything else is worth a line each.
            if matches!(e, tenancy::Error::Unavailable(_)) {
                tracing::debug!(error = %e, "tenant not resolved: the registry cannot be read");
            } else {
                tracing::warn!(error = %e, "tenant not resolved: the registry cannot be read");
            }
            ApiError::unavailable("the service cannot reach its registry; try again shortly")
        })?
        .ok_or_else(ApiError::invalid_tenant)?;
    gate(&tenant, method, state.kernel.latest_version())?;
    Ok(tenant)
}
