//! The committed `docs/openapi.json` must be what the code generates.
//!
//! To regenerate after changing a handler or a schema:
//! `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-server --test cairn_server openapi`

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = cairn_server::openapi::json();
    let path = committed_path();
    if std::env::var_os("CAIRN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "at the end".to_owned(),
                |i| format!("first at line {}", i + 1),
            );
        panic!(
            "docs/openapi.json differs from what the code generates ({line}).\n\
             Regenerate it with:\n    CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-server --test cairn_server openapi\n\
             and commit the result."
        );
    }
}

#[test]
fn document_is_valid_openapi_and_covers_the_api() {
    let doc: serde_json::Value =
        serde_json::from_str(cairn_server::openapi::json()).expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, method) in [
        ("/v1/plans", "post"),
        ("/v1/plans", "get"),
        ("/v1/plans/{id}", "get"),
        ("/v1/plans/{id}", "delete"),
        ("/v1/plans/{id}/pause", "post"),
        ("/v1/plans/{id}/interventions", "post"),
        ("/v1/plans/{id}/checkpoints/{cid}/fork", "post"),
        ("/v1/plans/{id}/events/stream", "get"),
        ("/v1/events/stream", "get"),
        ("/v1/ws", "get"),
        ("/v1/tasks/poll", "post"),
        ("/v1/tasks/{task_id}/heartbeat", "post"),
        ("/v1/tasks/{task_id}/complete", "post"),
        ("/v1/tasks/{task_id}/fail", "post"),
        ("/v1/tokens", "post"),
        ("/v1/tokens/{id}", "delete"),
        ("/metrics", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
    }
    // Every authenticated operation documents the error body for 401 and 403.
    let get = &doc["paths"]["/v1/plans/{id}"]["get"];
    for status in ["401", "403", "404"] {
        assert_eq!(
            get["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{status}"
        );
    }
    for schema in [
        "PlanView",
        "StepView",
        "CheckpointView",
        "Plan",
        "ErrorBody",
        "Event",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}
