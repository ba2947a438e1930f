//! The built-in web page: `GET /` (without a WebSocket upgrade) and its scripts and styles.
//!
//! The files live in `web/` and are compiled into the binary, so the page needs no build step,
//! no file system and no third-party host. The page speaks the ordinary WebSocket protocol
//! (docs/PROTOCOL.md) back to `/`.
//!
//! This module only serves fixed bytes: it must NOT template, read files at run time or
//! know about sessions.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    /// URL path it is served at.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, compiled in.
    body: &'static str,
}

const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../web/index.html"),
};

const JS: &str = "text/javascript; charset=utf-8";

/// A script from `web/`, served at `/<name>`.
macro_rules! script {
    ($name:literal) => {
        Asset {
            path: concat!("/", $name),
            content_type: JS,
            body: include_str!(concat!("../../web/", $name)),
        }
    };
}

/// Every file the page loads: `app.js` and the modules it imports, the audio worklet, the styles.
const ASSETS: [Asset; 9] = [
    script!("app.js"),
    script!("connection.js"),
    script!("upload.js"),
    script!("live.js"),
    script!("transcript.js"),
    script!("ui.js"),
    script!("hash.js"),
    script!("worklet.js"),
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
];

/// Scripts, styles and connections only from this server; no inline code, no framing.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Routes for the page's assets (the page itself is served by the `/` handler, which shares
/// its path with the WebSocket upgrade).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { respond(asset) }))
    })
}

/// The page, for `GET /` without an upgrade.
pub fn index() -> Response {
    respond(&INDEX)
}

fn respond(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // Revalidate every time: a new server version must never run an old script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS.iter().chain([&INDEX]) {
            for quote in ['"', '\''] {
                for part in asset.body.split(quote).skip(1).step_by(2) {
                    let is_local_asset = (part.starts_with("./") || !part.contains('/'))
                        && [".js", ".css"].iter().any(|ext| part.ends_with(ext));
                    if is_local_asset {
                        let path = format!("/{}", part.trim_start_matches("./"));
                        assert!(
                            served.contains(&path.as_str()),
                            "{} refers to {part}, which is not served",
                            asset.path
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_page_loads_nothing_from_other_hosts() {
        for asset in ASSETS.iter().chain([&INDEX]) {
            // An XML namespace name is an identifier, never fetched.
            let body = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} refers to another host",
                asset.path
            );
        }
    }
}
