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
