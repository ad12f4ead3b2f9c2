//! What the console's forms do. Each checks the session's CSRF token and
//! the request's origin first, calls the `lms::ops` service the CLI and
//! the control-plane API call, and writes a line to the operator audit log
//! whatever the outcome.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lms::ops::{MoveRequest, NewAdmin, NewTenant, TenantPatch};

use super::pages::{Created, ImportPage, Nav, NewTenantForm, NewTenantPage, tenant_page};
use super::session::{Signed, same_origin};
use super::{Fail, Outcome, audit, render, render_plain, see_other};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct ActionForm {
    pub csrf: String,
    /// The slug, typed again: what a destructive action asks for.
    pub confirm: String,
    pub plan: String,
    pub name: String,
    pub isolation: String,
    pub placement: String,
}

/// An error of the service, as the console says it: the same status and
/// words as the API's problem.
fn said(e: lms::Error) -> (StatusCode, String) {
    let p = ApiError::from(e);
    (p.status, p.detail)
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// A passphrase as typed (spaces are part of it, as for the CLI and the
/// API); `None` when the field is empty: the deployment's master key.
fn passphrase(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Suspend, resume, plan, rename, delete, purge, move.
pub async fn act(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    Path((slug, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, Fail> {
    same_origin(&parts.headers)?;
    signed.check_csrf(&form.csrf)?;
    let kernel = &state.kernel;
    let typed = || -> Result<(), (StatusCode, String)> {
        if form.confirm.trim() == slug {
            Ok(())
        } else {
            Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Nothing was done: type the tenant's slug ({slug}) to confirm."),
            ))
        }
    };
    let (name, done): (&str, Result<&str, (StatusCode, String)>) = match action.as_str() {
        "suspend" => (
            "tenant.suspend",
            lms::ops::suspend_tenant(kernel, &slug)
                .await
                .map(|_| "suspended")
                .map_err(said),
        ),
        "resume" => (
            "tenant.resume",
            lms::ops::resume_tenant(kernel, &slug)
                .await
                .map(|_| "resumed")
                .map_err(said),
        ),
        "plan" => (
            "tenant.plan",
            lms::ops::update_tenant(
                kernel,
                &slug,
                TenantPatch {
                    name: None,
                    plan: Some(form.plan.clone()),
                },
            )
            .await
            .map(|_| "plan")
            .map_err(said),
        ),
        "rename" => (
            "tenant.rename",
            lms::ops::update_tenant(
                kernel,
                &slug,
                TenantPatch {
                    name: Some(form.name.clone()),
                    plan: None,
                },
            )
            .await
            .map(|_| "renamed")
            .map_err(said),
        ),
        "delete" | "purge" => {
            let purge = action == "purge";
            let done = match typed() {
                Err(e) => Err(e),
                Ok(()) => match lms::ops::delete_tenant(kernel, &slug, purge).await {
                    Ok(d) => match d.purge.as_ref().filter(|r| !r.clean()) {
                        Some(r) => Err((
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!(
                                "The purge ran, but these remain: {}. The server's log has the \
                                 whole report; remove them by hand, or ask for help.",
                                r.remaining().join("; ")
                            ),
                        )),
                        None => Ok(if purge { "purged" } else { "deleted" }),
                    },
                    Err(e) => Err(said(e)),
                },
            };
            (
                if purge {
                    "tenant.purge"
                } else {
                    "tenant.delete"
                },
                done,
            )
        }
        "move" => return start_move(&state, &signed, &slug, &form).await,
        _ => return Err(Fail::NotFound),
    };
    let detail = match action.as_str() {
        "plan" => format!("plan {}", form.plan),
        "rename" => format!("name {:?}", form.name.chars().take(100).collect::<String>()),
        _ => String::new(),
    };
    match done {
        Ok(code) => {
            audit(
                &state,
                &signed.who(),
                name,
                Some(&slug),
                Outcome::Ok(detail),
                &signed.origin,
            )
            .await;
            // A purged tenant has no page any more: back to the table.
            let to = match code {
                "purged" => "/console/tenants?done=purged".to_owned(),
                _ => format!("/console/tenants/{slug}?done={code}"),
            };
            Ok(see_other(&to).into_response())
        }
        Err((status, why)) => {
            audit(
                &state,
                &signed.who(),
                name,
                Some(&slug),
                Outcome::of_status(status, why.clone()),
                &signed.origin,
            )
            .await;
            if status == StatusCode::NOT_FOUND {
                return Err(Fail::NotFound);
            }
            refused(&state, &signed, &slug, why, status).await
        }
    }
}

/// The tenant's page with why an action was not done above it; a page of
/// its own when the tenant has none any more (purged half-way).
async fn refused(
    state: &AppState,
    signed: &Signed,
    slug: &str,
    why: String,
    status: StatusCode,
) -> Result<Response, Fail> {
    match tenant_page(state, signed, slug, None, Some(why.clone()), status).await {
        Err(Fail::NotFound) => Ok(render_plain(status, "Not done", &why)),
        other => other,
    }
}

/// A move runs as a job: the page that follows shows its progress.
async fn start_move(
    state: &AppState,
    signed: &Signed,
    slug: &str,
    form: &ActionForm,
) -> Result<Response, Fail> {
    let Ok(parsed) = tenancy::Slug::parse(slug) else {
        return Err(Fail::NotFound);
    };
    let current = match state.kernel.find(&parsed).await {
        Ok(t) => t,
        Err(tenancy::Error::NotFound) => return Err(Fail::NotFound),
        Err(e) => return Err(Fail::Unavailable(e.to_string())),
    };
    // What is unchanged is not asked for: moving to the same place is no move.
    let req = MoveRequest {
        isolation: non_empty(&form.isolation).filter(|i| i != current.isolation.as_str()),
        placement: non_empty(&form.placement).filter(|p| *p != current.placement),
    };
    if req.isolation.is_none() && req.placement.is_none() {
        let why = "Nothing to do: choose another isolation mode or placement.".to_owned();
        audit(
            state,
            &signed.who(),
            "tenant.move",
            Some(slug),
            Outcome::Refused(why.clone()),
            &signed.origin,
        )
        .await;
        return tenant_page(
            state,
            signed,
            slug,
            None,
            Some(why),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let to = format!(
        "to {} on {}",
        req.isolation
            .as_deref()
            .unwrap_or(current.isolation.as_str()),
        req.placement.as_deref().unwrap_or(&current.placement)
    );
    let job = state.console.jobs.start(
        format!("Move {slug} {to}"),
        Some(slug.to_owned()),
        signed.who(),
    );
    let (state2, slug2, who, origin) = (
        state.clone(),
        slug.to_owned(),
        signed.who(),
        signed.origin.clone(),
    );
    let id = job.snapshot().id;
    let (j, done) = (job.clone(), job.clone());
    job.run(async move {
        let progress =
            move |step: &str, done: u64, total: Option<u64>| j.progress(step, done, total);
        let r = lms::ops::move_tenant(
            &state2.kernel,
            &slug2,
            req,
            crate::admin::MOVE_FREEZE_WAIT,
            &progress,
        )
        .await;
        let (outcome, line) = match r {
            Ok(m) => {
                let text = format!(
                    "moved {} rows; writes were refused for {} ms; {} ms in all",
                    m.rows, m.freeze_ms, m.total_ms
                );
                (Ok(text.clone()), Outcome::Ok(format!("{to}: {text}")))
            }
            Err(e) => {
                let (status, why) = said(e);
                (
                    Err(why.clone()),
                    Outcome::of_status(status, format!("{to}: {why}")),
                )
            }
        };
        audit(&state2, &who, "tenant.move", Some(&slug2), line, &origin).await;
        done.finish(outcome);
    });
    Ok(see_other(&format!("/console/jobs/{id}")).into_response())
}

/// Create a tenant: on success, its first admin's password, shown once.
pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    axum::Form(form): axum::Form<NewTenantForm>,
) -> Result<Response, Fail> {
    same_origin(&parts.headers)?;
    signed.check_csrf(&form.csrf)?;
    let req = NewTenant {
        slug: form.slug.trim().to_owned(),
        name: form.name.trim().to_owned(),
        isolation: non_empty(&form.isolation),
        placement: non_empty(&form.placement),
        plan: non_empty(&form.plan),
        admin: NewAdmin {
            email: form.admin_email.trim().to_owned(),
            name: form.admin_name.trim().to_owned(),
            password: (!form.admin_password.is_empty()).then(|| form.admin_password.clone()),
        },
    };
    let slug = req.slug.clone();
    // The form's own key: the same form sent twice (a reload of the answer)
    // makes one tenant, and the second answer says so.
    let key = non_empty(&form.idempotency);
    // Seen before: this is the same form again (its answer is the tenant
    // the first one made).
    let seen = match &key {
        Some(k) => matches!(state.kernel.registry().idempotency(k).await, Ok(Some(_))),
        None => false,
    };
    let made = lms::ops::create_tenant_idempotent(
        &state.kernel,
        &state.sessions.hasher,
        key.as_deref(),
        req,
    )
    .await;
    match made {
        Ok(done) => {
            let replay = seen;
            if !replay {
                audit(
                    &state,
                    &signed.who(),
                    "tenant.create",
                    Some(&slug),
                    Outcome::Ok(format!(
                        "{} on {}, plan {}",
                        done.tenant.isolation, done.tenant.placement, done.tenant.plan
                    )),
                    &signed.origin,
                )
                .await;
            }
            let mut res = render(
                StatusCode::CREATED,
                &Created {
                    nav: Nav::of(&signed, "new"),
                    slug: done.tenant.slug.clone(),
                    admin_email: form.admin_email.trim().to_owned(),
                    password: done.admin_password,
                    replay,
                },
            );
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res)
        }
        Err(e) => {
            let (status, why) = said(e);
            audit(
                &state,
                &signed.who(),
                "tenant.create",
                Some(&slug),
                Outcome::of_status(status, why.clone()),
                &signed.origin,
            )
            .await;
            // The form again, as typed (but for the password).
            let mut again = form.clone();
            again.admin_password.clear();
            Ok(render(
                status,
                &NewTenantPage::build(&state, &signed, again, Some(why)),
            ))
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct ExportForm {
    pub csrf: String,
    pub passphrase: String,
}

/// Export: the archive, streamed as a download.
pub async fn export(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    Path(slug): Path<String>,
    axum::Form(form): axum::Form<ExportForm>,
) -> Result<Response, Fail> {
    same_origin(&parts.headers)?;
    signed.check_csrf(&form.csrf)?;
    let key = match passphrase(&form.passphrase) {
        Some(p) => tenancy::archive::ArchiveKey::from_passphrase(p),
        None => Ok(tenancy::archive::ArchiveKey::Deployment),
    };
    let checked = match key {
        Ok(key) => lms::ops::exportable(&state.kernel, &slug)
            .await
            .map(|t| (t, key))
            .map_err(said),
        Err(e) => Err((StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
    };
    let (tenant, key) = match checked {
        Ok(ok) => ok,
        Err((status, why)) => {
            audit(
                &state,
                &signed.who(),
                "tenant.export",
                Some(&slug),
                Outcome::of_status(status, why.clone()),
                &signed.origin,
            )
            .await;
            if status == StatusCode::NOT_FOUND {
                return Err(Fail::NotFound);
            }
            return tenant_page(&state, &signed, &slug, None, Some(why), status).await;
        }
    };
    let with = if passphrase(&form.passphrase).is_none() {
        "wrapped with the deployment's master key"
    } else {
        "wrapped with a passphrase"
    };
    // The line of the audit log once the archive is out (or failed).
    let (state2, who, origin) = (state.clone(), signed.who(), signed.origin.clone());
    Ok(crate::admin::export_response(
        &state,
        tenant,
        key,
        move |r| async move {
            let outcome = match r {
                Ok(()) => Outcome::Ok(with.into()),
                Err(e) => Outcome::Failed(format!("{with}; failed while streaming: {e}")),
            };
            audit(
                &state2,
                &who,
                "tenant.export",
                Some(&slug),
                outcome,
                &origin,
            )
            .await;
        },
    ))
}

/// The longest text field of the import form, in bytes.
const FIELD_MAX: usize = 4096;

/// Import: the uploaded archive is kept in a temporary file, then imported
/// as a job (progress on the page that follows; a closed tab does not stop
/// it). The form's fields come before the file, so that the CSRF token is
/// checked before a byte of the archive is kept.
pub async fn import(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    mut form: Multipart,
) -> Result<Response, Fail> {
    use tokio::io::AsyncWriteExt;
    same_origin(&parts.headers)?;
    let mut fields: std::collections::HashMap<String, String> = Default::default();
    let mut spool: Option<tempfile::NamedTempFile> = None;
    let refuse = |why: String| {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ImportPage::build(&state, &signed, Some(why)),
        )
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Ok(refuse(format!("The upload failed: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "archive" {
            signed.check_csrf(fields.get("csrf").map_or("", String::as_str))?;
            let file =
                tempfile::NamedTempFile::new().map_err(|e| Fail::Unavailable(e.to_string()))?;
            let mut out = tokio::fs::File::from_std(
                file.reopen()
                    .map_err(|e| Fail::Unavailable(e.to_string()))?,
            );
            let mut field = field;
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => out
                        .write_all(&bytes)
                        .await
                        .map_err(|e| Fail::Unavailable(e.to_string()))?,
                    Ok(None) => break,
                    Err(e) => return Ok(refuse(format!("The upload failed: {e}"))),
                }
            }
            out.flush()
                .await
                .map_err(|e| Fail::Unavailable(e.to_string()))?;
            spool = Some(file);
        } else if fields.len() < 16 {
            // A field is a few words: read up to a bound, never whole.
            let mut text = Vec::new();
            let mut field = field;
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) if text.len() + bytes.len() <= FIELD_MAX => {
                        text.extend_from_slice(&bytes)
                    }
                    Ok(Some(_)) => {
                        return Ok(refuse(format!(
                            "The field {name:?} is longer than {FIELD_MAX} bytes."
                        )));
                    }
                    Ok(None) => break,
                    Err(e) => return Ok(refuse(format!("The upload failed: {e}"))),
                }
            }
            fields.insert(name, String::from_utf8_lossy(&text).into_owned());
        } else {
            return Ok(refuse("The form has too many fields.".into()));
        }
    }
    signed.check_csrf(fields.get("csrf").map_or("", String::as_str))?;
    let Some(spool) = spool else {
        return Ok(refuse("Choose an archive to import.".into()));
    };
    let get = |k: &str| fields.get(k).and_then(|v| non_empty(v));
    let key = match fields.get("passphrase").and_then(|p| passphrase(p)) {
        Some(p) => match tenancy::archive::ArchiveKey::from_passphrase(p) {
            Ok(k) => k,
            Err(e) => return Ok(refuse(e.to_string())),
        },
        None => tenancy::archive::ArchiveKey::Deployment,
    };
    let req = lms::ops::ImportRequest {
        slug: get("slug"),
        isolation: get("isolation"),
        placement: get("placement"),
        plan: get("plan"),
    };
    let title = match &req.slug {
        Some(s) => format!("Import an archive as {s}"),
        None => "Restore an archive".to_owned(),
    };
    let job = state
        .console
        .jobs
        .start(title, req.slug.clone(), signed.who());
    let id = job.snapshot().id;
    let (state2, who, origin) = (state.clone(), signed.who(), signed.origin.clone());
    let asked = req.slug.clone();
    let (j, finished): (Arc<super::jobs::Job>, _) = (job.clone(), job.clone());
    job.run(async move {
        let outcome = match tokio::fs::File::open(spool.path()).await {
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Ok(file) => {
                let progress =
                    move |step: &str, done: u64, total: Option<u64>| j.progress(step, done, total);
                match lms::ops::import_tenant(&state2.kernel, file, req, &key, &progress).await {
                    Ok(done) => Ok((
                        done.tenant.slug.clone(),
                        format!(
                            "{} {} as {}: {} rows, {} files",
                            if done.restored { "restored" } else { "copied" },
                            done.source_slug,
                            done.tenant.slug,
                            done.rows,
                            done.files
                        ),
                    )),
                    Err(e) => Err(said(e)),
                }
            }
        };
        drop(spool);
        let (tenant, line, outcome) = match outcome {
            Ok((slug, m)) => (Some(slug), Outcome::Ok(m.clone()), Ok(m)),
            Err((status, m)) => (asked, Outcome::of_status(status, m.clone()), Err(m)),
        };
        audit(
            &state2,
            &who,
            "tenant.import",
            tenant.as_deref(),
            line,
            &origin,
        )
        .await;
        finished.finish(outcome);
    });
    Ok(see_other(&format!("/console/jobs/{id}")).into_response())
}

/// `campus migrate`, as a job: every tenant behind is brought to this
/// build's schema, a few at once, each reported as it ends.
pub async fn migrate(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    axum::Form(form): axum::Form<super::session::CsrfOnly>,
) -> Result<Response, Fail> {
    same_origin(&parts.headers)?;
    signed.check_csrf(&form.csrf)?;
    let latest = state.kernel.latest_version();
    let tenants: Vec<_> = lms::ops::migratable(&state.kernel, None)
        .await
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .into_iter()
        .filter(|t| t.schema_version < latest)
        .collect();
    let job = state.console.jobs.start(
        format!("Migrate {} tenants to schema {latest}", tenants.len()),
        None,
        signed.who(),
    );
    let id = job.snapshot().id;
    let total = tenants.len() as u64;
    job.progress("migrating", 0, Some(total));
    let (state2, who, origin) = (state.clone(), signed.who(), signed.origin.clone());
    let finished = job.clone();
    job.run(async move {
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let j = finished.clone();
        let on_done: lms::ops::OnMigrated = Arc::new(move |t, r| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            j.progress("migrating", n, Some(total));
            j.line(match r {
                Ok(true) => format!("{}: migrated", t.slug),
                Ok(false) => format!("{}: already current", t.slug),
                Err(e) => format!("{}: failed: {e}", t.slug),
            });
        });
        let summary = lms::ops::migrate_tenants(&state2.kernel, tenants, 4, on_done).await;
        let text = format!(
            "{} migrated, {} already current, {} failed",
            summary.migrated.len(),
            summary.up_to_date,
            summary.failed.len()
        );
        let (line, outcome) = if summary.failed.is_empty() {
            (Outcome::Ok(text.clone()), Ok(text))
        } else {
            (Outcome::Failed(text.clone()), Err(text))
        };
        audit(&state2, &who, "fleet.migrate", None, line, &origin).await;
        finished.finish(outcome);
    });
    Ok(see_other(&format!("/console/jobs/{id}")).into_response())
}

/// `campus doctor`'s audit, as a job; its findings stay on the fleet page.
pub async fn run_audit(
    State(state): State<AppState>,
    signed: Signed,
    parts: Parts,
    axum::Form(form): axum::Form<super::session::CsrfOnly>,
) -> Result<Response, Fail> {
    same_origin(&parts.headers)?;
    signed.check_csrf(&form.csrf)?;
    let job =
        state
            .console
            .jobs
            .start("Isolation audit (campus doctor)".into(), None, signed.who());
    let id = job.snapshot().id;
    let (state2, who, origin) = (state.clone(), signed.who(), signed.origin.clone());
    let job2 = job.clone();
    job.run(async move {
        let job = job2;
        job.progress("auditing", 0, None);
        let outcome: Result<String, String> = match tenancy::audit::run(&state2.kernel).await {
            Ok(findings) => {
                let lines: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
                for l in &lines {
                    job.line(l.clone());
                }
                let n = lines.len();
                state2.console.set_audit(lines);
                if n == 0 {
                    Ok(
                        "no findings: the database enforces tenant isolation as Campus expects"
                            .into(),
                    )
                } else {
                    Err(format!("{n} findings (listed below and on the fleet page)"))
                }
            }
            Err(e) => Err(format!("the audit could not run: {e}")),
        };
        let line = match &outcome {
            Ok(m) => Outcome::Ok(m.clone()),
            Err(m) => Outcome::Failed(m.clone()),
        };
        audit(&state2, &who, "fleet.audit", None, line, &origin).await;
        job.finish(outcome);
    });
    Ok(see_other(&format!("/console/jobs/{id}")).into_response())
}
