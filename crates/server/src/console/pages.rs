//! The console's pages: what each shows, built from the same services as
//! the CLI and the control-plane API, rendered by the templates in
//! `templates/console/`.

use std::time::Instant;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tenancy::{Tenant, TenantStatus};

use super::session::Signed;
use super::{Fail, chart, render};
use crate::state::AppState;

/// Tenants per page of the table.
pub const PAGE: usize = 50;

/// How long the table waits for one tenant's usage.
const USAGE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What every signed-in page's frame needs.
pub struct Nav {
    pub csrf: String,
    pub operator: String,
    pub active: &'static str,
}

impl Nav {
    pub fn of(signed: &Signed, active: &'static str) -> Self {
        Self {
            csrf: signed.session.csrf.clone(),
            operator: signed.session.operator.clone(),
            active,
        }
    }
}

/// A choice of a `<select>`.
pub struct Opt {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

fn options<S: AsRef<str>>(values: &[S], current: &str, any: Option<&str>) -> Vec<Opt> {
    let mut out = Vec::new();
    if let Some(label) = any {
        out.push(Opt {
            value: String::new(),
            label: label.to_owned(),
            selected: current.is_empty(),
        });
    }
    out.extend(values.iter().map(|v| Opt {
        value: v.as_ref().to_owned(),
        label: v.as_ref().to_owned(),
        selected: v.as_ref() == current,
    }));
    out
}

#[derive(Template)]
#[template(path = "console/plain.html")]
pub struct Plain {
    pub title: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignIn {
    pub next: String,
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// The tenants

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct TenantQuery {
    pub q: String,
    pub status: String,
    pub isolation: String,
    pub plan: String,
    pub placement: String,
    pub sort: String,
    pub dir: String,
    pub page: usize,
    /// What the action that led here did (a purge).
    pub done: String,
}

impl TenantQuery {
    fn link(&self, sort: &str, dir: &str, page: usize) -> String {
        let mut parts: Vec<(&str, String)> = vec![];
        for (k, v) in [
            ("q", &self.q),
            ("status", &self.status),
            ("isolation", &self.isolation),
            ("plan", &self.plan),
            ("placement", &self.placement),
        ] {
            if !v.is_empty() {
                parts.push((k, v.clone()));
            }
        }
        if !sort.is_empty() {
            parts.push(("sort", sort.to_owned()));
        }
        if dir == "desc" {
            parts.push(("dir", "desc".into()));
        }
        if page > 1 {
            parts.push(("page", page.to_string()));
        }
        let qs = serde_urlencoded(&parts);
        if qs.is_empty() {
            "/console/tenants".into()
        } else {
            format!("/console/tenants?{qs}")
        }
    }
}

fn serde_urlencoded(parts: &[(&str, String)]) -> String {
    parts
        .iter()
        .map(|(k, v)| format!("{k}={}", url_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct Col {
    pub label: &'static str,
    pub link: Option<String>,
    /// `ascending`, `descending` or `none` (`aria-sort`).
    pub aria_sort: &'static str,
}

pub struct Row {
    pub slug: String,
    pub name: String,
    pub status: String,
    pub isolation: String,
    pub placement: String,
    pub plan: String,
    pub schema_version: i64,
    pub behind: bool,
    pub users: String,
    pub courses: String,
    pub stored: String,
    pub quota: String,
    pub requests: u64,
    pub refused: u64,
    pub last_activity: String,
}

#[derive(Template)]
#[template(path = "console/tenants.html")]
pub struct Tenants {
    pub nav: Nav,
    pub notice: Option<String>,
    pub q: String,
    pub statuses: Vec<Opt>,
    pub isolations: Vec<Opt>,
    pub plans: Vec<Opt>,
    pub placements: Vec<Opt>,
    pub sorts: Vec<Opt>,
    pub desc: bool,
    pub cols: Vec<Col>,
    pub rows: Vec<Row>,
    pub total: usize,
    pub matching: usize,
    pub from: usize,
    pub to: usize,
    pub page: usize,
    pub pages: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub elapsed_ms: String,
}

const STATUSES: [&str; 6] = [
    "provisioning",
    "active",
    "suspended",
    "maintenance",
    "deleted",
    "purged",
];
const PLANS: [&str; 3] = ["free", "standard", "enterprise"];
const SORTS: [(&str, &str); 7] = [
    ("slug", "slug"),
    ("name", "name"),
    ("status", "status"),
    ("plan", "plan"),
    ("created", "created"),
    ("updated", "last change"),
    ("requests", "requests (1 h)"),
];

/// Unix seconds as `2026-12-03 08:15 UTC`, roughly (minutes).
fn when(unix: u64) -> String {
    tenancy::clock::format(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .get(..16)
        .map(|s| format!("{} UTC", s.replace('T', " ")))
        .unwrap_or_default()
}

pub async fn tenants(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<TenantQuery>,
) -> Result<Response, Fail> {
    let started = Instant::now();
    let all = state
        .console
        .tenants(&state.kernel)
        .await
        .map_err(Fail::from)?;
    let total = all.len();
    let needle = q.q.trim().to_lowercase();
    let activity = &state.console.activity;
    // The last hour of every match only when sorting by it; else of the
    // shown page only.
    let by_requests = q.sort == "requests";
    let mut found: Vec<(&Tenant, super::activity::Hour)> = all
        .iter()
        .filter(|t| {
            needle.is_empty()
                || t.slug.as_str().contains(&needle)
                || t.name.to_lowercase().contains(&needle)
                || t.id.to_string() == needle
        })
        .filter(|t| q.status.is_empty() || t.status.as_str() == q.status)
        .filter(|t| q.isolation.is_empty() || t.isolation.as_str() == q.isolation)
        .filter(|t| q.plan.is_empty() || t.plan.as_str() == q.plan)
        .filter(|t| q.placement.is_empty() || t.placement == q.placement)
        .map(|t| {
            let h = if by_requests {
                activity.hour(t.id)
            } else {
                Default::default()
            };
            (t, h)
        })
        .collect();
    let sort = SORTS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| *k == q.sort)
        .unwrap_or("slug");
    let desc = q.dir == "desc";
    found.sort_by(|(a, ha), (b, hb)| {
        let o = match sort {
            // Case-insensitive, without a string per comparison.
            "name" => a
                .name
                .chars()
                .flat_map(char::to_lowercase)
                .cmp(b.name.chars().flat_map(char::to_lowercase)),
            "status" => a.status.as_str().cmp(b.status.as_str()),
            "plan" => a.plan.as_str().cmp(b.plan.as_str()),
            "created" => a.created_at.cmp(&b.created_at),
            "updated" => a.updated_at.cmp(&b.updated_at),
            "requests" => ha.requests.cmp(&hb.requests),
            _ => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.slug.as_str().cmp(b.slug.as_str()));
        if desc { o.reverse() } else { o }
    });
    let matching = found.len();
    let pages = matching.div_ceil(PAGE).max(1);
    let page = q.page.clamp(1, pages);
    let shown: Vec<(Tenant, super::activity::Hour)> = found
        .into_iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .map(|(t, h)| (t.clone(), h))
        .collect();
    // Usage is read from each shown tenant's own database, a few at once.
    use futures_util::StreamExt;
    let kernel = &state.kernel;
    let rows: Vec<Row> = futures_util::stream::iter(shown)
        .map(|(t, h)| async move {
            let h = if by_requests { h } else { activity.hour(t.id) };
            let quota = kernel.storage_quota(t.plan);
            // A database that does not answer at once is shown as `—`,
            // not waited for: the page is for all of them.
            let usage = match t.status {
                TenantStatus::Purged | TenantStatus::Provisioning => None,
                _ => tokio::time::timeout(USAGE_WAIT, lms::ops::usage(kernel, &t))
                    .await
                    .ok()
                    .flatten(),
            };
            Row {
                slug: t.slug.to_string(),
                name: t.name.clone(),
                status: t.status.as_str().into(),
                isolation: t.isolation.as_str().into(),
                placement: t.placement.clone(),
                plan: t.plan.as_str().into(),
                schema_version: t.schema_version,
                behind: t.schema_version < kernel.latest_version(),
                users: usage.as_ref().map_or("—".into(), |u| u.users.to_string()),
                courses: usage.as_ref().map_or("—".into(), |u| u.courses.to_string()),
                stored: usage
                    .as_ref()
                    .map_or("—".into(), |u| chart::bytes(u.stored_bytes)),
                quota: chart::bytes(i64::try_from(quota).unwrap_or(i64::MAX)),
                requests: h.requests,
                refused: h.refused,
                last_activity: h.last_minute.map_or("—".into(), when),
            }
        })
        .buffered(8)
        .collect()
        .await;
    let cols = [
        ("Slug", Some("slug")),
        ("Name", Some("name")),
        ("Status", Some("status")),
        ("Isolation", None),
        ("Placement", None),
        ("Plan", Some("plan")),
        ("Schema", None),
        ("Users", None),
        ("Courses", None),
        ("Stored / quota", None),
        ("Requests (1 h)", Some("requests")),
        ("Refused (1 h)", None),
        ("Last activity", None),
    ]
    .into_iter()
    .map(|(label, key)| match key {
        Some(k) => {
            let current = k == sort;
            let next_dir = if current && !desc { "desc" } else { "" };
            Col {
                label,
                link: Some(q.link(k, next_dir, 1)),
                aria_sort: match (current, desc) {
                    (false, _) => "none",
                    (true, false) => "ascending",
                    (true, true) => "descending",
                },
            }
        }
        None => Col {
            label,
            link: None,
            aria_sort: "none",
        },
    })
    .collect();
    let offer = crate::openapi::Offer::of(&state.kernel);
    let dir = if desc { "desc" } else { "" };
    let page_view = Tenants {
        nav: Nav::of(&signed, "tenants"),
        notice: notice(&q.done),
        q: q.q.clone(),
        statuses: options(&STATUSES, &q.status, Some("any status")),
        isolations: options(&offer.isolations, &q.isolation, Some("any isolation")),
        plans: options(&PLANS, &q.plan, Some("any plan")),
        placements: options(&offer.placements, &q.placement, Some("any placement")),
        sorts: SORTS
            .iter()
            .map(|(k, label)| Opt {
                value: (*k).into(),
                label: (*label).into(),
                selected: *k == sort,
            })
            .collect(),
        desc,
        cols,
        from: if matching == 0 {
            0
        } else {
            (page - 1) * PAGE + 1
        },
        to: ((page - 1) * PAGE + rows.len()),
        rows,
        total,
        matching,
        page,
        pages,
        prev: (page > 1).then(|| q.link(sort, dir, page - 1)),
        next: (page < pages).then(|| q.link(sort, dir, page + 1)),
        elapsed_ms: format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
    };
    Ok(render(StatusCode::OK, &page_view))
}

// ---------------------------------------------------------------------------
// A tenant

pub struct EventRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub client: String,
}

pub struct OpRow {
    pub at: String,
    pub operator: String,
    pub action: String,
    pub tenant: String,
    pub outcome: String,
    pub detail: String,
    pub client: String,
    pub via: String,
}

impl From<tenancy::operators::OperatorAction> for OpRow {
    fn from(a: tenancy::operators::OperatorAction) -> Self {
        OpRow {
            at: a.at.get(..19).unwrap_or(&a.at).replace('T', " "),
            operator: a.operator,
            action: a.action,
            tenant: a.tenant.unwrap_or_default(),
            outcome: a.outcome,
            detail: a.detail,
            client: a.client.unwrap_or_default(),
            via: a.via,
        }
    }
}

pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

pub struct Chart {
    pub title: &'static str,
    pub svg: String,
    pub summary: String,
}

#[derive(Template)]
#[template(path = "console/tenant.html")]
pub struct TenantPage {
    pub nav: Nav,
    pub slug: String,
    pub name: String,
    pub status: String,
    pub facts: Vec<Fact>,
    pub limits: Vec<Fact>,
    pub charts: Vec<Chart>,
    pub events: Vec<EventRow>,
    pub events_note: Option<String>,
    pub operator_lines: Vec<OpRow>,
    pub plans: Vec<Opt>,
    pub isolations: Vec<Opt>,
    pub placements: Vec<Opt>,
    pub can_suspend: bool,
    pub can_resume: bool,
    pub can_change: bool,
    pub can_delete: bool,
    pub can_purge: bool,
    pub can_export: bool,
    pub can_move: bool,
    pub behind: bool,
    pub notice: Option<String>,
    pub error: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Done {
    pub done: String,
}

/// What a finished action's redirect says (fixed texts: nothing of the
/// query is echoed).
fn notice(done: &str) -> Option<String> {
    Some(
        match done {
            "suspended" => "Suspended: its API answers 403 tenant_suspended.",
            "resumed" => "Resumed: its API serves again.",
            "plan" => "Plan changed: the new limits apply now.",
            "renamed" => "Renamed.",
            "deleted" => "Deleted: its API answers invalid_tenant. Purge destroys its data.",
            "purged" => {
                "Purged: its data is destroyed, and the purge checked that nothing remains."
            }
            "created" => "Created.",
            "revoked" => "Sessions revoked.",
            _ => return None,
        }
        .to_owned(),
    )
}

pub async fn tenant(
    State(state): State<AppState>,
    signed: Signed,
    Path(slug): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, Fail> {
    tenant_page(
        &state,
        &signed,
        &slug,
        notice(&done.done),
        None,
        StatusCode::OK,
    )
    .await
}

/// The tenant's page, with a notice or an error above it.
pub async fn tenant_page(
    state: &AppState,
    signed: &Signed,
    slug: &str,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, Fail> {
    let Ok(parsed) = tenancy::Slug::parse(slug) else {
        return Err(Fail::NotFound);
    };
    let t = match state.kernel.find(&parsed).await {
        Ok(t) => t,
        Err(tenancy::Error::NotFound) => return Err(Fail::NotFound),
        Err(e) => return Err(e.into()),
    };
    let kernel = &state.kernel;
    let latest = kernel.latest_version();
    let readable = !matches!(t.status, TenantStatus::Purged | TenantStatus::Provisioning);
    let usage = if readable {
        lms::ops::usage(kernel, &t).await
    } else {
        None
    };
    let quota = kernel.storage_quota(t.plan);
    let moving = kernel.registry().move_described(t.id).await.ok().flatten();
    let mut facts = vec![
        Fact {
            label: "Id",
            value: t.id.to_string(),
        },
        Fact {
            label: "Status",
            value: t.status.as_str().into(),
        },
        Fact {
            label: "Isolation",
            value: t.isolation.as_str().into(),
        },
        Fact {
            label: "Placement",
            value: t.placement.clone(),
        },
        Fact {
            label: "Plan",
            value: t.plan.as_str().into(),
        },
        Fact {
            label: "Schema version",
            value: if t.schema_version < latest {
                format!(
                    "{} — behind this build's {latest}: not served until migrated",
                    t.schema_version
                )
            } else {
                format!("{} (current)", t.schema_version)
            },
        },
        Fact {
            label: "Users",
            value: usage.as_ref().map_or("—".into(), |u| u.users.to_string()),
        },
        Fact {
            label: "Courses",
            value: usage.as_ref().map_or("—".into(), |u| u.courses.to_string()),
        },
        Fact {
            label: "Stored",
            value: format!(
                "{} of {}",
                usage
                    .as_ref()
                    .map_or("—".into(), |u| chart::bytes(u.stored_bytes)),
                chart::bytes(i64::try_from(quota).unwrap_or(i64::MAX))
            ),
        },
        Fact {
            label: "Created",
            value: t.created_at.clone(),
        },
        Fact {
            label: "Last change",
            value: t.updated_at.clone(),
        },
    ];
    if let Some(d) = &t.deleted_at {
        facts.push(Fact {
            label: "Deleted",
            value: d.clone(),
        });
    }
    if let Some(m) = moving {
        facts.push(Fact {
            label: "Move",
            value: m,
        });
    }
    let rates = state.limits.rates().get(t.plan);
    let user = state.limits.user_rates().get(t.plan);
    let limits = vec![
        Fact {
            label: "Requests per second",
            value: format!("{} (burst {})", rates.requests_per_second, rates.burst),
        },
        Fact {
            label: "Per user or API key",
            value: format!("{} (burst {})", user.requests_per_second, user.burst),
        },
        Fact {
            label: "Storage quota",
            value: chart::bytes(i64::try_from(quota).unwrap_or(i64::MAX)),
        },
    ];
    let charts = charts(state, t.id);
    let (events, events_note) = if readable && t.schema_version >= latest {
        match lms::audit::latest_for_operator(kernel, &t, 20).await {
            Ok(ev) => (
                ev.into_iter()
                    .map(|e| EventRow {
                        at: e
                            .created_at
                            .get(..19)
                            .unwrap_or(&e.created_at)
                            .replace('T', " "),
                        actor: match e.actor_id {
                            Some(id) => format!("{} {}", e.actor_kind, id),
                            None => e.actor_kind,
                        },
                        action: e.action,
                        target: match (e.target_type, e.target_id) {
                            (Some(k), Some(id)) => format!("{k} {id}"),
                            (Some(k), None) => k,
                            _ => String::new(),
                        },
                        client: e.client.unwrap_or_default(),
                    })
                    .collect(),
                None,
            ),
            Err(e) => {
                tracing::warn!(tenant = %t.id, error = %e, "console: audit events not read");
                (
                    Vec::new(),
                    Some("Its audit events could not be read now.".into()),
                )
            }
        }
    } else {
        (
            Vec::new(),
            Some("Its database cannot be read now (see its status and schema version).".into()),
        )
    };
    let operator_lines = kernel
        .registry()
        .operator_actions(Some(t.slug.as_str()), None, 20)
        .await
        .map_err(Fail::from)?
        .into_iter()
        .map(OpRow::from)
        .collect();
    let offer = crate::openapi::Offer::of(kernel);
    let live = !matches!(t.status, TenantStatus::Deleted | TenantStatus::Purged);
    let page = TenantPage {
        nav: Nav::of(signed, "tenants"),
        slug: t.slug.to_string(),
        name: t.name.clone(),
        status: t.status.as_str().into(),
        facts,
        limits,
        charts,
        events,
        events_note,
        operator_lines,
        plans: options(&PLANS, t.plan.as_str(), None),
        isolations: options(&offer.isolations, t.isolation.as_str(), None),
        placements: options(&offer.placements, &t.placement, None),
        can_suspend: t.status == TenantStatus::Active,
        can_resume: t.status == TenantStatus::Suspended,
        can_change: live,
        can_delete: live,
        can_purge: t.status != TenantStatus::Purged,
        can_export: readable,
        can_move: live && t.status != TenantStatus::Provisioning,
        behind: t.schema_version < latest,
        notice,
        error,
    };
    Ok(render(status, &page))
}

fn charts(state: &AppState, id: tenancy::TenantId) -> Vec<Chart> {
    let minutes = state.console.activity.minutes(id);
    let series = |f: &dyn Fn(&super::activity::Minute) -> f64| -> Vec<f64> {
        minutes.iter().map(f).collect()
    };
    let requests = series(&|m| f64::from(m.requests));
    let refused = series(&|m| f64::from(m.refused));
    let errors = series(&|m| f64::from(m.errors));
    let latency = series(&|m| {
        if m.requests == 0 {
            0.0
        } else {
            m.latency_us_sum as f64 / f64::from(m.requests) / 1000.0
        }
    });
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let peak = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let storage = state.console.activity.storage(id);
    let stored: Vec<f64> = storage.iter().map(|(_, b)| *b as f64).collect();
    vec![
        Chart {
            title: "Requests per minute",
            svg: chart::bars(
                &requests,
                "requests per minute, last hour",
                &format!("{}", peak(&requests)),
            ),
            summary: format!("{} in the last hour", sum(&requests)),
        },
        Chart {
            title: "Refused per minute (429, 503)",
            svg: chart::bars(
                &refused,
                "refused requests per minute, last hour",
                &format!("{}", peak(&refused)),
            ),
            summary: format!("{} in the last hour", sum(&refused)),
        },
        Chart {
            title: "Server errors per minute",
            svg: chart::bars(
                &errors,
                "server errors per minute, last hour",
                &format!("{}", peak(&errors)),
            ),
            summary: format!("{} in the last hour", sum(&errors)),
        },
        Chart {
            title: "Mean latency per minute",
            svg: chart::bars(
                &latency,
                "mean latency in ms per minute, last hour",
                &format!("{:.1} ms", peak(&latency)),
            ),
            summary: format!("peak {:.1} ms", peak(&latency)),
        },
        Chart {
            title: "Stored bytes",
            svg: chart::bars(
                &stored,
                "stored bytes, sampled each minute",
                &chart::bytes(peak(&stored) as i64),
            ),
            summary: stored
                .last()
                .map_or("no files".into(), |b| chart::bytes(*b as i64)),
        },
    ]
}

// ---------------------------------------------------------------------------
// Create, import

#[derive(Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct NewTenantForm {
    pub csrf: String,
    pub slug: String,
    pub name: String,
    pub isolation: String,
    pub placement: String,
    pub plan: String,
    pub admin_email: String,
    pub admin_name: String,
    pub admin_password: String,
    /// The form's idempotency key, made when the form is shown.
    pub idempotency: String,
}

#[derive(Template)]
#[template(path = "console/new_tenant.html")]
pub struct NewTenantPage {
    pub nav: Nav,
    pub form: NewTenantForm,
    pub isolations: Vec<Opt>,
    pub placements: Vec<Opt>,
    pub plans: Vec<Opt>,
    pub error: Option<String>,
}

impl NewTenantPage {
    pub fn build(
        state: &AppState,
        signed: &Signed,
        mut form: NewTenantForm,
        error: Option<String>,
    ) -> Self {
        if form.idempotency.is_empty() || error.is_some() {
            // A refused form is a new request once corrected: a new key.
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            form.idempotency = format!(
                "console-{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        let offer = crate::openapi::Offer::of(&state.kernel);
        let isolation = if form.isolation.is_empty() {
            state.kernel.default_isolation().as_str().to_owned()
        } else {
            form.isolation.clone()
        };
        let plan = if form.plan.is_empty() {
            "standard".to_owned()
        } else {
            form.plan.clone()
        };
        Self {
            nav: Nav::of(signed, "new"),
            isolations: options(&offer.isolations, &isolation, None),
            placements: options(&offer.placements, &form.placement, None),
            plans: options(&PLANS, &plan, None),
            form,
            error,
        }
    }
}

pub async fn new_tenant(State(state): State<AppState>, signed: Signed) -> Response {
    render(
        StatusCode::OK,
        &NewTenantPage::build(&state, &signed, NewTenantForm::default(), None),
    )
}

#[derive(Template)]
#[template(path = "console/created.html")]
pub struct Created {
    pub nav: Nav,
    pub slug: String,
    pub admin_email: String,
    pub password: Option<String>,
    /// The same form came again (a reload): the tenant was made by the first.
    pub replay: bool,
}

#[derive(Template)]
#[template(path = "console/import.html")]
pub struct ImportPage {
    pub nav: Nav,
    pub isolations: Vec<Opt>,
    pub placements: Vec<Opt>,
    pub plans: Vec<Opt>,
    pub error: Option<String>,
}

impl ImportPage {
    pub fn build(state: &AppState, signed: &Signed, error: Option<String>) -> Self {
        let offer = crate::openapi::Offer::of(&state.kernel);
        Self {
            nav: Nav::of(signed, "import"),
            isolations: options(&offer.isolations, "", Some("as archived (or the default)")),
            placements: options(&offer.placements, "", Some("as archived (or the default)")),
            plans: options(&PLANS, "", Some("as archived")),
            error,
        }
    }
}

pub async fn import_page(State(state): State<AppState>, signed: Signed) -> Response {
    render(StatusCode::OK, &ImportPage::build(&state, &signed, None))
}

// ---------------------------------------------------------------------------
// The fleet, jobs, the audit log

pub struct PlacementRow {
    pub name: String,
    pub reachable: bool,
    pub tenants: String,
    pub connections: String,
}

pub struct VersionRow {
    pub version: i64,
    pub tenants: usize,
    pub behind: bool,
}

pub struct DependencyRow {
    pub name: String,
    pub status: String,
    pub detail: String,
}

pub struct JobRow {
    pub id: String,
    pub title: String,
    pub state: String,
    pub started_at: String,
}

#[derive(Template)]
#[template(path = "console/fleet.html")]
pub struct FleetPage {
    pub nav: Nav,
    pub latest: i64,
    pub versions: Vec<VersionRow>,
    pub behind: Vec<String>,
    pub behind_more: usize,
    pub placements: Vec<PlacementRow>,
    pub dependencies: Vec<DependencyRow>,
    pub audit_at: Option<String>,
    pub findings: Vec<String>,
    /// What the server's own audit (at start, then every five minutes) found last.
    pub serving_audit: String,
    pub jobs: Vec<JobRow>,
    pub tracked: String,
}

pub async fn fleet(State(state): State<AppState>, signed: Signed) -> Result<Response, Fail> {
    let kernel = &state.kernel;
    let all = state.console.tenants(kernel).await.map_err(Fail::from)?;
    let latest = kernel.latest_version();
    let mut by_version: std::collections::BTreeMap<i64, usize> = Default::default();
    let mut by_place: std::collections::BTreeMap<String, std::collections::BTreeMap<&str, usize>> =
        Default::default();
    let mut behind = Vec::new();
    for t in all.iter() {
        if matches!(t.status, TenantStatus::Purged) {
            continue;
        }
        *by_version.entry(t.schema_version).or_default() += 1;
        *by_place
            .entry(t.placement.clone())
            .or_default()
            .entry(t.isolation.as_str())
            .or_default() += 1;
        if t.schema_version < latest && !matches!(t.status, TenantStatus::Provisioning) {
            behind.push(t.slug.to_string());
        }
    }
    let behind_more = behind.len().saturating_sub(100);
    behind.truncate(100);
    let pools = kernel.data_plane().pool_stats();
    // The embedded deployment has one placement, its data directory.
    let mut reachable = kernel.data_plane().placements_reachable();
    if reachable.is_empty() {
        reachable.push(("default".to_owned(), true));
    }
    let placements = reachable
        .into_iter()
        .map(|(name, reachable)| {
            let counts = by_place.get(&name);
            let tenants = counts.map_or("none".into(), |c| {
                c.iter()
                    .map(|(iso, n)| format!("{n} {iso}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let connections = pools.iter().find(|(p, _, _)| *p == name).map_or(
                "embedded (a small pool per SQLite file)".into(),
                |(_, open, idle)| {
                    format!(
                        "{open} open, {} in use, {idle} idle",
                        (*open as usize).saturating_sub(*idle)
                    )
                },
            );
            PlacementRow {
                name,
                reachable,
                tenants,
                connections,
            }
        })
        .collect();
    let dependencies = crate::readiness(&state)
        .await
        .iter()
        .map(|d| {
            let (status, detail) = match &d.health {
                tenancy::kernel::Health::Up => ("up", String::new()),
                tenancy::kernel::Health::Degraded(w) => ("degraded", w.clone()),
                tenancy::kernel::Health::Down(w) => ("down", w.clone()),
            };
            DependencyRow {
                name: d.name.clone(),
                status: status.into(),
                detail,
            }
        })
        .collect();
    let (audit_at, findings) = match state.console.last_audit() {
        Some((at, f)) => (Some(at), f),
        None => (None, Vec::new()),
    };
    let serving_audit = match state.fleet.audit_findings() {
        None => {
            "has not finished a run on this node yet (it runs at start, then every five minutes)"
                .to_owned()
        }
        Some(0) => "found nothing at its last run".to_owned(),
        Some(n) => format!(
            "found {n} problems at its last run (the server's log lists them; run the audit below to see them here)"
        ),
    };
    let (traffic, storage) = state.console.activity.tracked();
    let page = FleetPage {
        nav: Nav::of(&signed, "fleet"),
        latest,
        versions: by_version
            .into_iter()
            .map(|(version, tenants)| VersionRow {
                version,
                tenants,
                behind: version < latest,
            })
            .collect(),
        behind,
        behind_more,
        placements,
        dependencies,
        audit_at,
        findings,
        serving_audit,
        jobs: state
            .console
            .jobs
            .list()
            .into_iter()
            .map(|j| JobRow {
                state: match &j.state {
                    super::jobs::State::Running => "running".into(),
                    super::jobs::State::Done(_) => "done".into(),
                    super::jobs::State::Failed(_) => "failed".into(),
                },
                id: j.id,
                title: j.title,
                started_at: j.started_at.get(..19).unwrap_or_default().replace('T', " "),
            })
            .collect(),
        tracked: format!(
            "{traffic} tenants with traffic in the last hour, {storage} storing files (this node)"
        ),
    };
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "console/job.html")]
pub struct JobPage {
    pub nav: Nav,
    pub job: super::jobs::Snapshot,
    pub outcome: String,
    pub failed: bool,
    pub percent: String,
}

/// The part of a job's page that htmx fetches again every second.
#[derive(Template)]
#[template(path = "console/job_status.html")]
pub struct JobStatus {
    pub job: super::jobs::Snapshot,
    pub outcome: String,
    pub failed: bool,
    pub percent: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Fragment {
    pub fragment: bool,
}

pub async fn job(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(f): Query<Fragment>,
) -> Result<Response, Fail> {
    let job = state.console.jobs.get(&id).ok_or(Fail::NotFound)?;
    let (outcome, failed) = match &job.state {
        super::jobs::State::Running => (String::new(), false),
        super::jobs::State::Done(m) => (m.clone(), false),
        super::jobs::State::Failed(m) => (m.clone(), true),
    };
    let percent = job.percent().map_or(String::new(), |p| p.to_string());
    if f.fragment {
        return Ok(render(
            StatusCode::OK,
            &JobStatus {
                job,
                outcome,
                failed,
                percent,
            },
        ));
    }
    Ok(render(
        StatusCode::OK,
        &JobPage {
            nav: Nav::of(&signed, "fleet"),
            job,
            outcome,
            failed,
            percent,
        },
    ))
}

pub struct SessionRow {
    pub short: String,
    pub operator: String,
    pub client: String,
    pub user_agent: String,
    pub created_at: String,
    pub last_seen: String,
    pub this: bool,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    pub nav: Nav,
    pub tenant: String,
    pub lines: Vec<OpRow>,
    pub older: Option<String>,
    pub sessions: Vec<SessionRow>,
    pub notice: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct AuditQuery {
    pub tenant: String,
    pub before: Option<i64>,
    pub done: String,
}

pub async fn audit_log(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Fail> {
    const LINES: i64 = 100;
    let registry = state.kernel.registry();
    let tenant = q.tenant.trim();
    // One more than shown: whether there are older lines at all.
    let mut lines = registry
        .operator_actions((!tenant.is_empty()).then_some(tenant), q.before, LINES + 1)
        .await
        .map_err(Fail::from)?;
    let more = lines.len() as i64 > LINES;
    lines.truncate(LINES as usize);
    let older = more
        .then(|| lines.last().map(|l| l.id))
        .flatten()
        .map(|id| {
            let t = if tenant.is_empty() {
                String::new()
            } else {
                format!("tenant={}&", url_escape(tenant))
            };
            format!("/console/audit?{t}before={id}")
        });
    let idle = i64::try_from(state.config.console_idle.as_secs()).unwrap_or(i64::MAX);
    let sessions = registry
        .console_sessions(tenancy::clock::unix_now(), idle, super::session::LIFETIME_S)
        .await
        .map_err(Fail::from)?
        .into_iter()
        .map(|s| SessionRow {
            short: s.id_sha256.get(..8).unwrap_or(&s.id_sha256).to_owned(),
            this: s.id_sha256 == signed.session.id_sha256,
            operator: s.operator,
            client: s.client.unwrap_or_default(),
            user_agent: s.user_agent.unwrap_or_default(),
            created_at: s.created_at.get(..19).unwrap_or_default().replace('T', " "),
            last_seen: when(u64::try_from(s.last_seen).unwrap_or(0)),
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            nav: Nav::of(&signed, "audit"),
            tenant: tenant.to_owned(),
            lines: lines.into_iter().map(OpRow::from).collect(),
            older,
            sessions,
            notice: notice(&q.done),
        },
    ))
}
