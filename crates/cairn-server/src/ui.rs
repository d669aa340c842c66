//! The dashboard (`/`) and the interactive API reference (`/docs`): static files embedded in
//! the binary from `crates/cairn-server/ui/` (read from that folder at run time in debug builds,
//! so a change to a page needs no rebuild while developing).
//!
//! The pages are plain HTML, CSS and ES modules: no build step, no CDN, no request leaves the
//! server's origin. Every answer carries a strict Content-Security-Policy (no inline script, no
//! inline style attribute, nothing from another origin) and is revalidated by ETag, so a new
//! binary's pages replace the old ones at the next load.
//!
//! The files are public (they hold no data); everything they show comes from `/v1`, called with
//! the signed-in token in the `Authorization` header, streams included (read with `fetch`, not
//! `EventSource`), so no token is ever put in a URL and no cookie can be ridden by another site.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "ui/"]
struct Assets;

/// The policy of every page: scripts, styles, images and connections from this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `/`, `/ui/…` and `/docs`. Not under `/v1` and not in the OpenAPI document: pages, not API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/docs", get(docs))
        .route("/docs/", get(docs))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn docs(headers: HeaderMap) -> Response {
    serve("docs.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// One embedded file, or a 404 in the API's error shape.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    // rust-embed never resolves outside its folder, but refuse the obvious anyway.
    if path.split('/').any(|seg| seg == ".." || seg.is_empty()) {
        return ApiError::not_found(format!("no such file {path:?}")).into_response();
    }
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("no such file {path:?}")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let mut out = if headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static(content_type(path)))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    out
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_has_a_known_type_and_the_entry_points_exist() {
        for must in [
            "index.html",
            "docs.html",
            "app.css",
            "js/app.js",
            "js/api.js",
        ] {
            assert!(Assets::get(must).is_some(), "{must} is not embedded");
        }
        for path in Assets::iter() {
            if path.ends_with("LICENSE") || path.ends_with(".txt") {
                continue;
            }
            assert_ne!(
                content_type(&path),
                "text/plain; charset=utf-8",
                "{path} would be served as text/plain"
            );
        }
    }

    #[test]
    fn no_page_has_inline_script_or_style() {
        for path in Assets::iter().filter(|p| p.ends_with(".html")) {
            let text = String::from_utf8(Assets::get(&path).unwrap().data.into_owned()).unwrap();
            for (i, _) in text.match_indices("<script") {
                let tag = &text[i..i + text[i..].find('>').unwrap()];
                assert!(tag.contains("src="), "{path}: inline <script> at byte {i}");
            }
            assert!(!text.contains("<style"), "{path}: inline <style>");
            assert!(!text.contains(" style="), "{path}: inline style attribute");
            assert!(!text.contains(" onclick="), "{path}: inline handler");
        }
    }
}
