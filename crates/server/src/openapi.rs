//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! Per-route errors are annotated on each handler; the errors of the edge that
//! every tenant route shares (tenant resolution, authentication, rate limits)
//! are added here, once, to every `/api/v1` operation.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use crate::problem::Problem;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Campus", description = "A multi-tenant learning platform server with hard tenant isolation."),
    components(schemas(Problem)),
    modifiers(&EdgeErrors),
)]
pub struct ApiDoc;

struct EdgeErrors;

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

impl Modify for EdgeErrors {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token or API key of the tenant"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator token"))
                    .build(),
            ),
        );
    }
}

/// Adds the shared edge errors to every tenant operation.
pub fn add_edge_errors(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let tenant_route = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            let r = &mut op.responses.responses;
            if tenant_route {
                let login = path == "/api/v1/auth/login";
                r.entry("400".into()).or_insert_with(|| {
                    problem("`tenant_required`, `tenant_conflict`, `invalid_body`, `invalid_query`")
                });
                r.entry("401".into()).or_insert_with(|| {
                    problem(if login {
                        "`invalid_tenant`"
                    } else {
                        "`invalid_tenant`, `unauthorized`"
                    })
                });
                r.entry("403".into())
                    .or_insert_with(|| problem("`tenant_suspended`"));
                r.entry("503".into()).or_insert_with(|| {
                    problem(
                        "`tenant_maintenance` (writes, with `Retry-After`); `overloaded`: the tenant's database work stayed at its limit (`Retry-After`); `unavailable`: the database cannot be reached now (`Retry-After`)",
                    )
                });
                r.entry("429".into()).or_insert_with(|| {
                    problem(
                        "`rate_limited`: the tenant's plan allows no more now (`Retry-After`, `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`)",
                    )
                });
            }
            if op.request_body.is_some() {
                r.entry("413".into())
                    .or_insert_with(|| problem("`payload_too_large`"));
                r.entry("408".into()).or_insert_with(|| {
                    problem("`request_timeout`: the body stalled or arrived too slowly; the connection is closed")
                });
                r.entry("415".into())
                    .or_insert_with(|| problem("`unsupported_media_type`: not JSON"));
                r.entry("400".into())
                    .or_insert_with(|| problem("`invalid_body`: malformed JSON or unknown fields"));
            }
            r.entry("500".into())
                .or_insert_with(|| problem("`internal`"));
        }
    }
}

/// What this deployment offers, for the document it serves: a request
/// naming anything else is refused (422), so the document says so.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The isolation modes tenants may be given here.
    pub isolations: Vec<&'static str>,
    /// The placements tenants may be put on.
    pub placements: Vec<String>,
}

impl Offer {
    pub fn of(kernel: &tenancy::Kernel) -> Self {
        match kernel.data_plane() {
            tenancy::dataplane::DataPlane::Embedded(_) => Offer {
                isolations: vec!["database"],
                placements: vec!["default".into()],
            },
            p @ tenancy::dataplane::DataPlane::Postgres(_) => Offer {
                isolations: vec!["schema", "pool", "database"],
                placements: p
                    .placements_reachable()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
            },
        }
    }
}

/// The document without the control plane: what a public listener serves
/// when the control plane has a listener of its own (its paths, and the
/// placements' names, are the admin listener's to tell). Its schemas stay
/// (nothing public refers to them), the placements' names go.
pub fn without_control_plane(doc: &serde_json::Value) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.retain(|path, _| !path.starts_with("/admin/"));
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for schema in schemas.values_mut() {
            if let Some(p) = schema.pointer_mut("/properties/placement")
                && (p.get("anyOf").is_some() || p.get("enum").is_some())
            {
                *p = serde_json::json!({ "type": ["string", "null"] });
            }
        }
    }
    doc
}

/// A slug, as `tenancy::Slug` takes it.
pub const SLUG_PATTERN: &str = "^[a-z][a-z0-9-]{1,61}[a-z0-9]$";

/// The plans.
pub const PLANS: &[&str] = &["free", "standard", "enterprise"];

/// The document as served, with what the annotations cannot say: every
/// tenant operation takes `X-Tenant` (generated clients must be able to
/// send it); file bodies are binary, not arrays of integers; problems are
/// `application/problem+json` (RFC 9457); the modes, placements and plans
/// this deployment takes; the headers a file route reads.
pub fn polish(doc: &OpenApi, offer: &Offer) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
    // What names a choice: (property or query parameter, allowed values).
    let choices: Vec<(&str, Value)> = vec![
        ("isolation", json!(offer.isolations)),
        ("placement", json!(offer.placements)),
        ("plan", json!(PLANS)),
    ];
    let binary = |schema: &Value| schema["type"] == "array" && schema["items"]["type"] == "integer";
    let fix_content = |content: &mut Value| {
        let Some(map) = content.as_object_mut() else {
            return;
        };
        for (_, media) in map.iter_mut() {
            if binary(&media["schema"]) {
                media["schema"] = json!({ "type": "string", "format": "binary" });
            }
        }
        if map
            .get("application/json")
            .is_some_and(|m| m["schema"]["$ref"] == "#/components/schemas/Problem")
            && let Some(m) = map.remove("application/json")
        {
            map.insert("application/problem+json".into(), m);
        }
    };
    // Every problem's `code` is one of the stable ones.
    if let Some(code) = v
        .pointer_mut("/components/schemas/Problem/properties/code")
        .and_then(|c| c.as_object_mut())
    {
        code.insert("enum".into(), json!(PROBLEM_CODES));
    }
    // Ids are UUIDs, times RFC 3339.
    if let Some(schemas) = v
        .pointer_mut("/components/schemas")
        .and_then(|c| c.as_object_mut())
    {
        for (schema_name, schema) in schemas.iter_mut() {
            let takes_password = schema_name.starts_with("New") || schema_name.ends_with("Patch");
            // What a request names: only what this deployment takes.
            let request = matches!(
                schema_name.as_str(),
                "NewTenant" | "TenantPatch" | "MoveRequest" | "ImportRequest"
            );
            // `get_mut`, never `[]` on a `&mut Value`: indexing inserts a
            // null where the key is missing, which would change the document.
            if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
                for (name, prop) in props.iter_mut() {
                    format_of(name, prop);
                    bounds_of(name, prop, takes_password);
                    if request {
                        choice_of(name, prop, &choices);
                        if name == "slug" {
                            prop["pattern"] = json!(SLUG_PATTERN);
                        }
                    }
                }
            }
        }
        // A page's items are the item's own schema (its formats, its name
        // in generated clients), not a copy of it.
        let names: Vec<String> = schemas.keys().cloned().collect();
        for (schema_name, schema) in schemas.iter_mut() {
            let Some(item) = schema_name
                .strip_prefix("Page_")
                .filter(|item| names.iter().any(|n| n == item))
            else {
                continue;
            };
            if let Some(items) = schema.pointer_mut("/properties/items")
                && items.get("type").is_some_and(|t| t == "array")
            {
                items["items"] = json!({ "$ref": format!("#/components/schemas/{item}") });
            }
        }
    }
    let Some(paths) = v.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return v;
    };
    for (path, item) in paths.iter_mut() {
        let tenant_route = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_, op) in item.iter_mut() {
            if !op.is_object() {
                continue;
            }
            if tenant_route {
                let params = op
                    .as_object_mut()
                    .map(|o| o.entry("parameters").or_insert_with(|| json!([])));
                if let Some(Value::Array(params)) = params {
                    params.push(json!({
                        "name": "X-Tenant",
                        "in": "header",
                        "required": false,
                        "description": "The tenant's slug. Required unless the host names the tenant (`<slug>.<base domain>` with `--base-domain`); both naming different tenants is 400 `tenant_conflict`.",
                        "schema": { "type": "string", "pattern": "^[a-z][a-z0-9-]{1,61}[a-z0-9]$" }
                    }));
                }
            }
            if path.ends_with("/content") || path.ends_with("/avatar") {
                let method_get = op.get("requestBody").is_none()
                    && op
                        .get("responses")
                        .and_then(|r| r.get("200"))
                        .and_then(|r| r.get("content"))
                        .is_some();
                if method_get
                    && let Some(r) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                {
                    r.entry("206").or_insert_with(
                        || json!({ "description": "The part of the file a `Range` asked for" }),
                    );
                    r.entry("416").or_insert_with(|| {
                        json!({
                            "description": "`range_not_satisfiable`: the range starts past the end of the file",
                            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                        })
                    });
                }
                if method_get && let Some(Value::Array(params)) = op.get_mut("parameters") {
                    params.push(json!({
                        "name": "Range",
                        "in": "header",
                        "required": false,
                        "description": "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`): 206 with `Content-Range`; a range past the end is 416 `range_not_satisfiable`; several ranges are answered with the whole file.",
                        "schema": { "type": "string" }
                    }));
                    params.push(json!({
                        "name": "If-None-Match",
                        "in": "header",
                        "required": false,
                        "description": "An `ETag` from an earlier answer: 304, no body, while the file is unchanged.",
                        "schema": { "type": "string" }
                    }));
                }
            }
            if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                for p in params.iter_mut() {
                    let name = p["name"].as_str().unwrap_or("").to_owned();
                    if p["in"] == "query"
                        && let Some(schema) = p.get_mut("schema")
                    {
                        choice_of(&name, schema, &choices);
                        if name == "slug" {
                            schema["pattern"] = json!(SLUG_PATTERN);
                        }
                    }
                    match (p["in"].as_str(), name.as_str()) {
                        (Some("query"), "limit") => {
                            p["schema"] = json!({ "type": "integer", "minimum": 1, "maximum": 200, "default": 50 });
                        }
                        // As `lms::ops::create_tenant` has it.
                        (Some("header"), "Idempotency-Key") => {
                            p["schema"] = json!({ "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$" });
                        }
                        (Some("query"), "after") => {
                            p["schema"] = json!({ "type": "string", "format": "uuid" });
                        }
                        (Some("path"), "id" | "cid" | "lid" | "user_id") => {
                            p["schema"] = json!({ "type": "string", "format": "uuid" });
                        }
                        _ => {}
                    }
                }
            }
            let is_list = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "after"));
            // A route with query parameters refuses others, and bad values.
            let takes_query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if takes_query && let Some(r) = op.get_mut("responses").and_then(|r| r.as_object_mut())
            {
                match r.get_mut("400") {
                    Some(bad) => {
                        if let Some(d) = bad.get_mut("description")
                            && let Some(text) = d.as_str()
                            && !text.contains("invalid_query")
                        {
                            *d = json!(format!(
                                "{text}; `invalid_query`: an unknown query parameter, or a bad value"
                            ));
                        }
                    }
                    None => {
                        r.insert(
                            "400".into(),
                            json!({
                                "description": "`invalid_query`: an unknown query parameter, or a bad value",
                                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                            }),
                        );
                    }
                }
            }
            if let Some(content) = op.get_mut("requestBody").and_then(|b| b.get_mut("content")) {
                fix_content(content);
            }
            if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
                for (status, r) in responses.iter_mut() {
                    if let Some(content) = r.get_mut("content") {
                        fix_content(content);
                    }
                    let headers = match status.as_str() {
                        "429" => vec![
                            ("Retry-After", "Seconds to wait before trying again"),
                            ("RateLimit-Limit", "Requests the allowance holds"),
                            ("RateLimit-Remaining", "Requests left in it now"),
                            ("RateLimit-Reset", "Seconds until it is full again"),
                        ],
                        "503" => vec![("Retry-After", "Seconds to wait before trying again")],
                        "200" if is_list => vec![(
                            "Link",
                            "`<…?limit=N&after=CURSOR>; rel=\"next\"` while there is a next page",
                        )],
                        "200" if path.ends_with("/content") || path.ends_with("/avatar") => {
                            vec![
                                ("ETag", "The stored file's version"),
                                ("Accept-Ranges", "`bytes`"),
                            ]
                        }
                        "206" if path.ends_with("/content") || path.ends_with("/avatar") => {
                            vec![
                                ("ETag", "The stored file's version"),
                                ("Accept-Ranges", "`bytes`"),
                                ("Content-Range", "`bytes FIRST-LAST/LENGTH`: the part sent"),
                            ]
                        }
                        _ => vec![],
                    };
                    // What a file route answers with: the file's own type
                    // (a part of it, for 206).
                    let file_answer = status == "206"
                        && (path.ends_with("/content") || path.ends_with("/avatar"));
                    if matches!(status.as_str(), "200" | "206")
                        && (r.get("content").is_some() || file_answer)
                    {
                        let types: &[&str] = if path.ends_with("/lessons/{lid}/content") {
                            &["video/mp4", "application/pdf"]
                        } else if path.ends_with("/avatar") {
                            &["image/png", "image/jpeg", "image/webp"]
                        } else {
                            &[]
                        };
                        if !types.is_empty() {
                            let mut content = serde_json::Map::new();
                            for t in types {
                                content.insert(
                                    (*t).into(),
                                    json!({ "schema": { "type": "string", "format": "binary" } }),
                                );
                            }
                            r["content"] = Value::Object(content);
                        }
                    }
                    for (name, description) in headers {
                        let string =
                            matches!(name, "Link" | "ETag" | "Accept-Ranges" | "Content-Range");
                        r["headers"][name] = json!({
                            "description": description,
                            "schema": { "type": if string { "string" } else { "integer" } }
                        });
                    }
                }
            }
        }
    }
    v
}

/// Every problem `code` the server answers with (RFC 9457 bodies and
/// `/readyz`); stable, machine-readable. The suite checks every problem it
/// meets against this list.
pub const PROBLEM_CODES: &[&str] = &[
    "bad_request",
    "conflict",
    "forbidden",
    "headers_too_large",
    "incomplete",
    "internal",
    "invalid_archive",
    "invalid_body",
    "invalid_credentials",
    "invalid_query",
    "invalid_signature",
    "invalid_tenant",
    "method_not_allowed",
    "not_found",
    "not_implemented",
    "not_ready",
    "overloaded",
    "payload_too_large",
    "purge_incomplete",
    "quota_exceeded",
    "range_not_satisfiable",
    "rate_limited",
    "request_timeout",
    "tenant_conflict",
    "tenant_maintenance",
    "tenant_required",
    "tenant_suspended",
    "unauthorized",
    "unavailable",
    "unsupported_media_type",
    "uri_too_long",
    "validation_failed",
];

/// What the validation rules accept, so that a schema-valid request is
/// not refused: titles and names are 1 to 200 characters, not all spaces;
/// a new or changed password 8 to 1024.
fn bounds_of(name: &str, prop: &mut serde_json::Value, takes_password: bool) {
    let is = |kind: &str| {
        prop["type"] == kind
            || prop["type"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == kind))
    };
    if name == "position" && is("integer") {
        prop["minimum"] = serde_json::json!(0);
        prop["maximum"] = serde_json::json!(1_000_000);
        return;
    }
    if !is("string") {
        return;
    }
    match name {
        // As `lms::validate::long_text` has it: tabs and line breaks, no
        // other control character.
        "description" => {
            prop["maxLength"] = serde_json::json!(20_000);
            prop["pattern"] = serde_json::json!(
                "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
            );
        }
        "title" | "name" => {
            prop["minLength"] = serde_json::json!(1);
            prop["maxLength"] = serde_json::json!(200);
            // Not all spaces, no control character.
            prop["pattern"] = serde_json::json!(
                "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
            );
        }
        // As `lms::validate::email` has it: one `@`, a dotted domain.
        "email" => {
            prop["maxLength"] = serde_json::json!(254);
            prop["pattern"] = serde_json::json!(
                "^[^@\\s\\u0000-\\u001f\\u007f-\\u009f]+@[^@\\s.\\u0000-\\u001f\\u007f-\\u009f][^@\\s\\u0000-\\u001f\\u007f-\\u009f]*\\.[^@\\s\\u0000-\\u001f\\u007f-\\u009f]*[^@\\s.\\u0000-\\u001f\\u007f-\\u009f]$"
            );
        }
        "password" if takes_password => {
            prop["minLength"] = serde_json::json!(8);
            prop["maxLength"] = serde_json::json!(1024);
        }
        _ => {}
    }
}

/// A property or query parameter naming an isolation mode, a placement or
/// a plan: one of those this deployment takes (or null, where it may be).
fn choice_of(name: &str, schema: &mut serde_json::Value, choices: &[(&str, serde_json::Value)]) {
    let Some((_, values)) = choices.iter().find(|(n, _)| *n == name) else {
        return;
    };
    let nullable = schema
        .get("type")
        .and_then(|t| t.as_array())
        .is_some_and(|t| t.iter().any(|x| x == "null"));
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let one = serde_json::json!({ "type": "string", "enum": values });
    obj.remove("type");
    // `Option<String>` is `type: [string, null]`: null stays allowed, as a
    // choice of its own (an `enum` would have to list a JSON null).
    if nullable {
        obj.insert("anyOf".into(), serde_json::json!([one, { "type": "null" }]));
    } else {
        obj.insert("type".into(), serde_json::json!("string"));
        obj.insert("enum".into(), values.clone());
    }
}

/// `id` and `…_id` are UUIDs (not `request_id`: a client may send its own),
/// `…_at` RFC 3339 times.
fn format_of(name: &str, prop: &mut serde_json::Value) {
    let is_string = prop["type"] == "string"
        || prop["type"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "string"));
    if !is_string {
        return;
    }
    if (name == "id" || name.ends_with("_id")) && name != "request_id" {
        prop["format"] = serde_json::json!("uuid");
    } else if name.ends_with("_at") {
        prop["format"] = serde_json::json!("date-time");
    }
}

pub fn base() -> OpenApi {
    ApiDoc::openapi()
}
