//! The OpenAPI document describes every route the server answers.

use serde_json::Value;

use crate::helpers::*;

const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users/{id}"),
    ("patch", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("get", "/api/v1/courses"),
    ("post", "/api/v1/courses"),
    ("get", "/api/v1/courses/{id}"),
    ("patch", "/api/v1/courses/{id}"),
    ("delete", "/api/v1/courses/{id}"),
    ("get", "/api/v1/courses/{id}/lessons"),
    ("post", "/api/v1/courses/{id}/lessons"),
    ("get", "/api/v1/courses/{cid}/lessons/{lid}"),
    ("patch", "/api/v1/courses/{cid}/lessons/{lid}"),
    ("delete", "/api/v1/courses/{cid}/lessons/{lid}"),
    ("post", "/api/v1/courses/{id}/enrollments"),
    ("get", "/api/v1/courses/{id}/enrollments"),
    ("delete", "/api/v1/courses/{cid}/enrollments/{user_id}"),
    ("put", "/api/v1/courses/{cid}/lessons/{lid}/progress"),
    ("put", "/api/v1/courses/{cid}/lessons/{lid}/content"),
    ("get", "/api/v1/courses/{cid}/lessons/{lid}/content"),
    ("post", "/api/v1/courses/{cid}/lessons/{lid}/content-url"),
    ("put", "/api/v1/users/{id}/avatar"),
    ("get", "/api/v1/users/{id}/avatar"),
    ("get", "/api/v1/courses/{id}/progress"),
    ("get", "/api/v1/audit-events"),
    ("post", "/api/v1/api-keys"),
    ("get", "/api/v1/api-keys"),
    ("delete", "/api/v1/api-keys/{id}"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/admin/api/v1/tenants"),
    ("get", "/admin/api/v1/tenants"),
    ("get", "/admin/api/v1/tenants/{slug}"),
    ("patch", "/admin/api/v1/tenants/{slug}"),
    ("delete", "/admin/api/v1/tenants/{slug}"),
    ("post", "/admin/api/v1/tenants/{slug}/suspend"),
    ("post", "/admin/api/v1/tenants/{slug}/resume"),
    ("get", "/admin/api/v1/migrations"),
    ("post", "/admin/api/v1/tenants/{slug}/export"),
    ("post", "/admin/api/v1/tenants/{slug}/move"),
    ("post", "/admin/api/v1/tenants/import"),
    ("post", "/admin/api/v1/tenants/{slug}/exports"),
    ("post", "/admin/api/v1/tenants/imports"),
];

async fn doc() -> Value {
    let app = spawn_app().await;
    // Served without a tenant or a token.
    json_ok(
        app.client
            .get(app.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await
}

#[tokio::test]
async fn every_route_is_documented_and_nothing_else() {
    let doc = doc().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.push((method.to_owned(), path.clone()));
            }
        }
    }
    let mut expected: Vec<_> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn every_documented_route_is_answered() {
    // The reverse: a documented route never falls through to the 404 fallback
    // as an unknown path (it may answer 400/401 for want of a tenant or token).
    let app = spawn_app().await;
    let some_id = "01900000-0000-7000-8000-000000000000";
    for (method, path) in ROUTES {
        let path = path
            .replace("{id}", some_id)
            .replace("{cid}", some_id)
            .replace("{lid}", some_id)
            .replace("{user_id}", some_id)
            .replace("{slug}", "nobody");
        let res = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            !(status == 404 && body["code"] == "not_found") && status != 405,
            "{method} {path} is documented but not routed ({status})"
        );
    }
}

#[tokio::test]
async fn error_codes_and_bodies_are_documented() {
    let doc = doc().await;
    let op = &doc["paths"]["/api/v1/users"]["post"];
    assert!(op["requestBody"].is_object());
    for status in ["201", "400", "401", "403", "409", "413", "422", "503"] {
        assert!(
            op["responses"][status].is_object(),
            "POST /api/v1/users lacks {status}"
        );
    }
    let text = doc.to_string();
    for code in [
        "tenant_required",
        "tenant_conflict",
        "invalid_tenant",
        "tenant_suspended",
        "tenant_maintenance",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "invalid_body",
        "payload_too_large",
        "validation_failed",
        "invalid_credentials",
        "rate_limited",
    ] {
        assert!(
            text.contains(&format!("`{code}`")),
            "code {code} is not documented"
        );
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["schemas"]["Course"].is_object());
}

#[tokio::test]
async fn clients_generated_from_the_document_can_name_the_tenant_and_send_files() {
    let doc = doc().await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            let tenant = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
            assert_eq!(
                names.contains(&"X-Tenant"),
                tenant,
                "{method} {path}: X-Tenant declared {names:?}"
            );
            // Problems are problem+json, never plain JSON.
            for (status, r) in op["responses"].as_object().unwrap() {
                if let Some(c) = r["content"].as_object() {
                    assert!(
                        !(c.contains_key("application/json")
                            && c["application/json"]["schema"]["$ref"]
                                == "#/components/schemas/Problem"),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let upload = &doc["paths"]["/api/v1/courses/{cid}/lessons/{lid}/content"]["put"]["requestBody"]
        ["content"]["video/mp4"]["schema"];
    assert_eq!(upload["type"], "string");
    assert_eq!(upload["format"], "binary");
    let problem = &doc["paths"]["/api/v1/courses"]["post"]["responses"]["422"]["content"];
    assert!(problem["application/problem+json"].is_object(), "{problem}");
}

#[tokio::test]
async fn ids_times_bounds_codes_and_headers_are_declared() {
    let doc = doc().await;
    let course = &doc["components"]["schemas"]["Course"]["properties"];
    assert_eq!(course["id"]["format"], "uuid");
    assert_eq!(course["created_at"]["format"], "date-time");
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    assert!(problem["request_id"].get("format").is_none());
    let codes = problem["code"]["enum"].as_array().expect("the code enum");
    assert!(codes.iter().any(|c| c == "invalid_tenant"));
    let list = &doc["paths"]["/api/v1/courses"]["get"];
    let limit = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 200);
    assert!(list["responses"]["200"]["headers"]["Link"].is_object());
    assert!(list["responses"]["429"]["headers"]["RateLimit-Remaining"].is_object());
    assert!(list["responses"]["503"]["headers"]["Retry-After"].is_object());
    let content = &doc["paths"]["/api/v1/courses/{cid}/lessons/{lid}/content"]["get"];
    assert!(content["responses"]["200"]["headers"]["ETag"].is_object());
    let cid = content["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cid")
        .expect("cid");
    assert_eq!(cid["schema"]["format"], "uuid");
}

/// What schemathesis and generated clients found missing: the choices this
/// deployment takes, the slug's grammar, the import's query parameters, a
/// file's ranges, list items as their own schema, and `invalid_query` on
/// every operation that takes a query.
#[tokio::test]
async fn choices_ranges_pages_and_queries_are_declared() {
    let doc = doc().await;
    let schemas = &doc["components"]["schemas"];
    let plan = &schemas["NewTenant"]["properties"]["plan"];
    let plans = plan["anyOf"][0]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(plans.len(), 3, "{plan}");
    assert_eq!(plan["anyOf"][1]["type"], "null", "{plan}");
    let isolation = &schemas["NewTenant"]["properties"]["isolation"]["anyOf"][0]["enum"];
    let offered: Vec<&str> = isolation
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    if backend().is_postgres() {
        assert_eq!(offered, ["schema", "pool", "database"]);
    } else {
        assert_eq!(offered, ["database"]);
    }
    assert!(
        schemas["NewTenant"]["properties"]["slug"]["pattern"]
            .as_str()
            .is_some()
    );
    assert!(
        schemas["TenantPatch"]["properties"]["plan"]["anyOf"][0]["enum"]
            .as_array()
            .is_some()
    );
    // The import's choices are query parameters.
    let import = &doc["paths"]["/admin/api/v1/tenants/import"]["post"];
    for name in ["slug", "isolation", "placement", "plan"] {
        let p = import["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not declared: {import}"));
        assert_eq!(p["in"], "query", "{p}");
    }
    // A file's ranges.
    let get = &doc["paths"]["/api/v1/courses/{cid}/lessons/{lid}/content"]["get"];
    let headers: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for h in ["X-Tenant", "Range", "If-None-Match"] {
        assert!(headers.contains(&h), "{headers:?}");
    }
    let partial = &get["responses"]["206"];
    assert!(partial["headers"]["Content-Range"].is_object(), "{partial}");
    assert!(partial["content"]["video/mp4"].is_object(), "{partial}");
    assert!(get["responses"]["416"].is_object());
    let avatar = &doc["paths"]["/api/v1/users/{id}/avatar"]["get"]["responses"];
    assert!(
        avatar["206"]["headers"]["Content-Range"].is_object(),
        "{avatar}"
    );
    // A page's items are the item's schema.
    assert_eq!(
        schemas["Page_Course"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/Course"
    );
    // Every operation with a query documents its 400.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let takes_query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if takes_query {
                let bad = op["responses"]["400"]["description"].as_str().unwrap_or("");
                assert!(bad.contains("invalid_query"), "{method} {path}: {bad}");
            }
        }
    }
}

/// The paths in `v` that hold `null`: a document generators read must say
/// nothing it does not mean (an operation with `"requestBody": {"content":
/// null}` would get a body in every generated client).
fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(at.to_owned()),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                nulls(x, &format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                nulls(x, &format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_document_holds_no_null() {
    let doc = doc().await;
    let mut found = Vec::new();
    nulls(&doc, "", &mut found);
    assert!(found.is_empty(), "{found:?}");
    // Only operations that take a body declare one.
    assert!(
        doc["paths"]["/api/v1/courses"]["get"]
            .get("requestBody")
            .is_none()
    );
}

/// The reference for people, from the binary: `/api/v1/docs` is Redoc over
/// this document, its script served by this server (no CDN), the page under
/// a policy that runs no inline script and loads nothing from elsewhere.
#[tokio::test]
async fn the_api_reference_is_served_from_the_binary() {
    use sha2::Digest;
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/api/v1/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap();
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = res.text().await.unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    assert!(page.contains("spec-url=\"openapi.json\""), "{page}");
    let script = format!("docs/redoc-{}.js", server::docs::REDOC_VERSION);
    assert!(page.contains(&format!("src=\"{script}\"")), "{page}");
    assert!(!page.contains("<script>"), "an inline script: {page}");

    let res = app
        .client
        .get(app.url(&format!("/api/v1/{script}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        res.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let body = res.bytes().await.unwrap();
    let digest: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The vendored bundle, unchanged (crates/server/assets/redoc/README.md).
    assert_eq!(
        digest,
        "52dd9fc0390a689ce66bf7ec2352aeba4772d22eb93fc504c7a2c2110fa426eb"
    );
    // The page's relative links resolve to what it needs.
    let res = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
