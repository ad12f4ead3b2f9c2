//! What the console's forms do. Each checks the session's CSRF token and
//! the request's origin first, calls the `lms::ops` service the CLI and
//! the control-plane API call, and writes a line to the operator audit log
//! whatever the outcome.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lms::ops::{MoveRequest, NewAdmin, NewTenant, TenantPatch};

use super::pages::{Created, ImportPage, Nav, NewTenantForm, NewTenantPage, tenant_page};
use super::session::Signed;
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
    Path((slug, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, Fail> {
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
        Err(e) => return Err(Fail::from(e)),
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
    let (state2, slug2) = (state.clone(), slug.to_owned());
    Ok(start_job(
        state,
        signed,
        format!("Move {slug} {to}"),
        Some(slug.to_owned()),
        "tenant.move",
        move |job| async move {
            let progress =
                move |step: &str, done: u64, total: Option<u64>| job.progress(step, done, total);
            let r = lms::ops::move_tenant(
                &state2.kernel,
                &slug2,
                req,
                crate::admin::MOVE_FREEZE_WAIT,
                &progress,
            )
            .await;
            let outcome = match r {
                Ok(m) => Outcome::Ok(format!(
                    "moved {} rows {to}; writes were refused for {} ms; {} ms in all",
                    m.rows, m.freeze_ms, m.total_ms
                )),
                Err(e) => {
                    let (status, why) = said(e);
                    Outcome::of_status(status, format!("{to}: {why}"))
                }
            };
            (Some(slug2), outcome)
        },
    ))
}

/// Starts a job: `work` runs on a task of its own with the job (for its
/// progress), and says which tenant it was about and how it ended. That
/// outcome ends the job and is written to the audit log as `action` — a
/// panic too, as `failed`: no job is left running, or unlogged. Answers
/// the way to the job's page.
fn start_job<F, Fut>(
    state: &AppState,
    signed: &Signed,
    title: String,
    tenant: Option<String>,
    action: &'static str,
    work: F,
) -> Response
where
    F: FnOnce(Arc<super::jobs::Job>) -> Fut,
    Fut: std::future::Future<Output = (Option<String>, Outcome)> + Send + 'static,
{
    let job = state
        .console
        .jobs
        .start(title, tenant.clone(), signed.who());
    let id = job.snapshot().id;
    let task = tokio::spawn(work(job.clone()));
    let (state, who, origin) = (state.clone(), signed.who(), signed.origin.clone());
    tokio::spawn(async move {
        let (tenant, outcome) = match task.await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, action, "a console job stopped");
                let why = format!("the job stopped: {e} (see the server's log)");
                (tenant, Outcome::Failed(why))
            }
        };
        job.finish(outcome.result());
        audit(&state, &who, action, tenant.as_deref(), outcome, &origin).await;
    });
    see_other(&format!("/console/jobs/{id}")).into_response()
}

/// Create a tenant: on success, its first admin's password, shown once.
pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
    axum::Form(form): axum::Form<NewTenantForm>,
) -> Result<Response, Fail> {
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
    Path(slug): Path<String>,
    axum::Form(form): axum::Form<ExportForm>,
) -> Result<Response, Fail> {
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
    mut form: Multipart,
) -> Result<Response, Fail> {
    use tokio::io::AsyncWriteExt;
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
            let file = tempfile::NamedTempFile::new().map_err(Fail::from)?;
            let mut out = tokio::fs::File::from_std(file.reopen().map_err(Fail::from)?);
            let mut field = field;
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => out.write_all(&bytes).await.map_err(Fail::from)?,
                    Ok(None) => break,
                    Err(e) => return Ok(refuse(format!("The upload failed: {e}"))),
                }
            }
            out.flush().await.map_err(Fail::from)?;
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
    let (state2, asked) = (state.clone(), req.slug.clone());
    Ok(start_job(
        &state,
        &signed,
        title,
        req.slug.clone(),
        "tenant.import",
        move |job| async move {
            let file = match tokio::fs::File::open(spool.path()).await {
                Ok(file) => file,
                Err(e) => return (asked, Outcome::Failed(e.to_string())),
            };
            let progress =
                move |step: &str, done: u64, total: Option<u64>| job.progress(step, done, total);
            let r = lms::ops::import_tenant(&state2.kernel, file, req, &key, &progress).await;
            drop(spool);
            match r {
                Ok(done) => (
                    Some(done.tenant.slug.clone()),
                    Outcome::Ok(format!(
                        "{} {} as {}: {} rows, {} files",
                        if done.restored { "restored" } else { "copied" },
                        done.source_slug,
                        done.tenant.slug,
                        done.rows,
                        done.files
                    )),
                ),
                Err(e) => {
                    let (status, why) = said(e);
                    (asked, Outcome::of_status(status, why))
                }
            }
        },
    ))
}

/// `campus migrate`, as a job: every tenant behind is brought to this
/// build's schema, a few at once, each reported as it ends.
pub async fn migrate(
    State(state): State<AppState>,
    signed: Signed,
    axum::Form(form): axum::Form<super::session::CsrfOnly>,
) -> Result<Response, Fail> {
    signed.check_csrf(&form.csrf)?;
    let latest = state.kernel.latest_version();
    let tenants: Vec<_> = lms::ops::migratable(&state.kernel, None)
        .await
        .map_err(Fail::from)?
        .into_iter()
        .filter(|t| t.schema_version < latest)
        .collect();
    let total = tenants.len() as u64;
    let state2 = state.clone();
    Ok(start_job(
        &state,
        &signed,
        format!("Migrate {total} tenants to schema {latest}"),
        None,
        "fleet.migrate",
        move |job| async move {
            job.progress("migrating", 0, Some(total));
            let count = std::sync::atomic::AtomicU64::new(0);
            let on_done: lms::ops::OnMigrated = Arc::new(move |t, r| {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                job.progress("migrating", n, Some(total));
                job.line(match r {
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
            let outcome = if summary.failed.is_empty() {
                Outcome::Ok(text)
            } else {
                Outcome::Failed(text)
            };
            (None, outcome)
        },
    ))
}

/// `campus doctor`'s audit, as a job; its findings stay on the fleet page.
pub async fn run_audit(
    State(state): State<AppState>,
    signed: Signed,
    axum::Form(form): axum::Form<super::session::CsrfOnly>,
) -> Result<Response, Fail> {
    signed.check_csrf(&form.csrf)?;
    let state2 = state.clone();
    Ok(start_job(
        &state,
        &signed,
        "Isolation audit (campus doctor)".into(),
        None,
        "fleet.audit",
        move |job| async move {
            job.progress("auditing", 0, None);
            let outcome = match tenancy::audit::run(&state2.kernel).await {
                Ok(findings) => {
                    let lines: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
                    for l in &lines {
                        job.line(l.clone());
                    }
                    let n = lines.len();
                    state2.console.set_audit(lines);
                    if n == 0 {
                        Outcome::Ok(
                            "no findings: the database enforces tenant isolation as Campus expects"
                                .into(),
                        )
                    } else {
                        Outcome::Failed(format!(
                            "{n} findings (listed below and on the fleet page)"
                        ))
                    }
                }
                Err(e) => Outcome::Failed(format!("the audit could not run: {e}")),
            };
            (None, outcome)
        },
    ))
}
