//! Who is calling: the [`Caller`] extractor for tenant routes (a bearer token
//! or API key of the resolved tenant) and [`Operator`] for the control plane.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use lms::Cx;
use lms::audit::Origin;
use lms::auth::{Principal, Refused};
use lms::throttle::ClientAddr;

use super::limits::Holder;
use sha2::{Digest, Sha256};

use super::request::RequestId;
use super::tenant::ResolvedTenant;
use crate::problem::ApiError;
use crate::state::AppState;

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The bearer credential of a request, if it carries one.
pub fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the tenant layer found of a request's credential (looked up there,
/// so that the right allowance is spent: the tenant's for signed-in
/// callers, the anonymous one for the rest).
#[derive(Debug, Clone)]
pub enum Credential {
    Missing,
    Valid(Principal),
    Refused(Refused),
}

/// Where a request came from, as its audit events record it: its id, the
/// client address the request layer computed, its `User-Agent`.
pub fn origin(parts: &Parts) -> Origin {
    let ext = &parts.extensions;
    Origin::new(
        ext.get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        ext.get::<ClientAddr>().map(|c| c.as_str().to_owned()),
        parts
            .headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .as_deref(),
    )
}

/// The resolved tenant, for the few routes that need no caller (login).
pub struct TenantOnly(pub tenancy::Tenant, pub Origin);

impl FromRequestParts<AppState> for TenantOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let tenant = parts
            .extensions
            .get::<ResolvedTenant>()
            .map(|t| t.0.clone())
            .ok_or_else(|| ApiError::internal("tenant route without tenant resolution"))?;
        Ok(Self(tenant, origin(parts)))
    }
}

/// An authenticated caller in the resolved tenant.
pub struct Caller(pub Cx);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let TenantOnly(tenant, origin) = TenantOnly::from_request_parts(parts, state).await?;
        let found = match parts.extensions.get::<Credential>() {
            Some(c) => c.clone(),
            // Not through the tenant layer: look it up here.
            None => match bearer(parts) {
                None => Credential::Missing,
                Some(token) => {
                    match lms::auth::authenticate(&state.kernel, &tenant, token).await? {
                        Ok(p) => Credential::Valid(p),
                        Err(r) => Credential::Refused(r),
                    }
                }
            },
        };
        match found {
            Credential::Valid(actor) => {
                let who = match &actor {
                    Principal::User { user_id, .. } => Holder::User(user_id),
                    Principal::ApiKey { key_id, .. } => Holder::ApiKey(key_id),
                };
                let verdict = state
                    .limits
                    .check_user(state.kernel.shared(), &tenant, who)
                    .await;
                if !verdict.allowed() {
                    state.limits.refuse(&tenant, "user").await;
                    return Err(verdict.refusal("this user"));
                }
                Ok(Caller(Cx {
                    kernel: state.kernel.clone(),
                    tenant,
                    actor,
                    origin,
                }))
            }
            Credential::Refused(Refused::OtherTenant { .. }) => {
                // Reported as another tenant's token only when it is one:
                // a made-up token naming a tenant says nothing about it.
                let token = bearer(parts).unwrap_or_default();
                match lms::auth::real_issuer(&state.kernel, token).await {
                    Some(issuer) => {
                        tracing::warn!(
                            target: "campus::security",
                            event = "cross_tenant_token",
                            issued_by = %issuer.id,
                            "a token of another tenant was presented"
                        );
                        super::metrics::security_event("cross_tenant_token");
                        super::metrics::cross_tenant_token(&issuer.id);
                    }
                    None => {
                        tracing::debug!(
                            target: "campus::security",
                            event = "forged_token",
                            "a made-up token naming another tenant was presented"
                        );
                        super::metrics::security_event("forged_token");
                    }
                }
                Err(ApiError::unauthorized())
            }
            Credential::Refused(Refused::Invalid) | Credential::Missing => {
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// An operator of the control plane, and where the request came from (for
/// the operator audit log).
pub struct Operator(pub Origin);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if is_operator_token(state, token) {
            Ok(Operator(origin(parts)))
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Whether `token` is the deployment's operator token: the registry's
/// (one for every node, changed on all within a refresh), else this
/// server's own. Digests compared in constant time.
pub fn is_operator_token(state: &AppState, token: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let expected = state
        .kernel
        .operator_token_sha256()
        .unwrap_or(state.config.operator_token_sha256);
    same(&given, &expected)
}

/// Constant-time equality of two byte strings of the same length (of
/// different lengths: unequal, at once).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
