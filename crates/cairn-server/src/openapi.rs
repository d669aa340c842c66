//! The OpenAPI document (`GET /openapi.json`), generated from the handlers' annotations.
pub async fn endpoint() -> &'static str {
    ""
}
