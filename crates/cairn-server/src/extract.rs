//! Request extractors that refuse bad input with our error body: JSON bodies that are strictly
//! typed and depth-limited, and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Deepest JSON nesting accepted in a request body.
pub const MAX_DEPTH: usize = 64;

/// Is the nesting of `[` and `{` (outside strings) deeper than `max`?
fn too_deep(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a JSON body into `T`: 400 for malformed or too deep JSON, 415 for another content
/// type, 422 for JSON of the wrong shape (with serde's message, which names the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if too_deep(bytes, MAX_DEPTH) {
        return Err(ApiError::bad_request(format!(
            "the JSON body is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let value = serde_json::from_slice::<Unique>(bytes)
        .map_err(|e| {
            let text = e.to_string();
            if text.starts_with(DUPLICATE) {
                ApiError::bad_request(format!(
                    "the body {text}; each key may appear once per object"
                ))
            } else {
                ApiError::bad_request(format!("the body is not valid JSON: {text}"))
            }
        })?
        .0;
    serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(format!("the body does not have the expected shape: {e}"))
    })
}

/// 415 unless the request's content type, if it names one, is JSON.
fn json_content_type(req: &Request) -> Result<(), ApiError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send the body as application/json, not {ct:?}"),
            ));
        }
    }
    Ok(())
}

const DUPLICATE: &str = "repeats the key";

/// A JSON value in which no object has the same key twice. A repeated key is refused rather
/// than "last one wins": a proxy or audit log that reads the first would disagree with what
/// the server did. This holds at every depth, free JSON (`params`, `metadata`, outputs)
/// included.
struct Unique(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE} {key:?}")));
            }
            let Unique(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// 413 with our own words (the framework's rejection text names its internals).
fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::bad_request(
            "the body could not be read (the connection broke off or the encoding is wrong)",
        )
    }
}

/// The answer to a body over [`crate::MAX_BODY`].
pub fn too_large() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the body is larger than the {} bytes the server accepts",
            crate::MAX_BODY
        ),
    )
}

/// A JSON request body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_content_type(&req)?;
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the body is empty; send a JSON object",
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: an empty body is `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|ct| ct.to_str().unwrap_or("").to_owned());
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        // Only no body at all is "no body": blank lines are a malformed one.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the body is blank; send a JSON object, or no body at all",
            ));
        }
        // A body that is there must be JSON, as for `ApiJson`.
        if let Some(ct) = content_type {
            if !ct.starts_with("application/json") {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("send the body as application/json, not {ct:?}"),
                ));
            }
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// A query string parsed into `T` (unknown parameters are refused when `T` says so).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_parse(query).map(ApiQuery)
    }
}

fn serde_urlencoded_parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::bad_request("the query string is malformed"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::bad_request(format!("bad query parameters: {}", e.body_text())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        for body in [
            r#"{"type":"skip_step","type":"remove_step"}"#,
            r#"{"steps":[{"step_id":"a","step_id":"b"}]}"#,
            r#"{"params":{"x":{"k":1,"k":2}}}"#,
        ] {
            let e = parse_json::<serde_json::Value>(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains("repeats the key"), "{}", e.message);
        }
        let v: serde_json::Value =
            parse_json(br#"{"a":[1,2.5,"x",null,true,{"b":-3}],"c":{}}"#).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":[1,2.5,"x",null,true,{"b":-3}],"c":{}})
        );
    }

    #[test]
    fn depth_counts_only_outside_strings() {
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert!(too_deep(deep.as_bytes(), 64));
        let ok = format!("{{\"a\": \"{}\"}}", "[".repeat(100));
        assert!(!too_deep(ok.as_bytes(), 64));
    }
}
