//! `GET /openapi.json` over real HTTP: an OpenAPI 3 document that documents
//! every row of the route table (`squad::api::routes`, the table the router is
//! built from), the error body, and the key schemes.

mod support;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, assert_error_body, config_for, gateway};

async fn document(gw: &support::Gateway) -> Value {
    let resp = gw.get("/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    resp.json().await.unwrap()
}

/// Follows a `$ref` to `#/components/schemas/...`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[tokio::test]
async fn every_route_in_the_route_table_is_documented_and_nothing_else() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 3, 1))).await;
    let gw = gateway(config_for(&fake)).await;
    let doc = document(&gw).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);

    let table = squad::api::routes();
    assert!(table.len() >= 14, "the table lists every route");
    for r in &table {
        let op = &doc["paths"][r.path][r.verb.as_str()];
        assert!(op.is_object(), "{} {} is served but not documented", r.verb.as_str(), r.path);
        assert!(op["responses"]["200"].is_object(), "{} {}: no 200 response", r.verb.as_str(), r.path);
        // Routes behind a key say so; open routes do not ask for one.
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(secured, r.access != squad::api::Access::Open, "{} {}: security", r.verb.as_str(), r.path);
        if secured {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s.as_object().unwrap().keys())
                .map(String::as_str)
                .collect();
            assert_eq!(schemes, ["bearer", "api_key"], "{} {}", r.verb.as_str(), r.path);
        }
        // Path parameters are declared.
        for segment in r.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            let declared =
                op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == segment && p["in"] == "path");
            assert!(declared, "{} {}: path parameter {segment} undocumented", r.verb.as_str(), r.path);
        }
    }
    // And nothing is documented that is not served.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for verb in item.as_object().unwrap().keys() {
            let served = table.iter().any(|r| r.path == path && r.verb.as_str() == verb);
            assert!(served, "{verb} {path} is documented but not in the route table");
        }
    }
}

#[tokio::test]
async fn errors_security_streaming_and_query_parameters_are_described() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 3, 1))).await;
    let gw = gateway(config_for(&fake)).await;
    let doc = document(&gw).await;

    // The error body schema requires what every error response carries.
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], json!(["error"]), "{error_body}");
    let object = resolve(&doc, &error_body["properties"]["error"]);
    let required: Vec<&str> = object["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for field in ["type", "message", "code", "request_id"] {
        assert!(required.contains(&field), "ErrorObject must require {field}: {object}");
    }
    // ... and a real error from the running server has those fields.
    let resp = gw.get("/v1/agents/nobody").await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    let err = assert_error_body(&body, "agent_not_found");
    for field in &required {
        assert!(err.get(*field).is_some(), "{field} missing from {body}");
    }

    // Every 4xx/5xx of every operation is the error body.
    let mut error_responses = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (verb, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{verb} {path} {status}");
                    error_responses += 1;
                }
            }
        }
    }
    assert!(error_responses > 20, "only {error_responses} error responses documented");

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");

    let chat = &doc["paths"]["/v1/chat/completions"]["post"];
    let ok = &chat["responses"]["200"]["content"];
    assert_eq!(ok["application/json"]["schema"]["$ref"], "#/components/schemas/ChatCompletion", "{ok}");
    assert!(ok["text/event-stream"].is_object(), "stream: true answers with SSE: {ok}");
    let request = resolve(&doc, &chat["requestBody"]["content"]["application/json"]["schema"]);
    assert!(request["properties"]["stream"].is_object(), "{request}");
    assert!(doc["components"]["schemas"]["CompletionChunk"].is_object());

    let usage = &doc["paths"]["/v1/usage"]["get"]["parameters"];
    let names: Vec<&str> = usage.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["since", "until", "group_by"], "{usage}");
    assert!(usage.as_array().unwrap().iter().all(|p| p["in"] == "query"));

    let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(metrics.as_object().unwrap().keys().all(|k| k.starts_with("text/plain")), "{metrics}");
}
