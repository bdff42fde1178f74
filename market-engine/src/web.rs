//! The neighbourhood web app, served from inside the binary at `/`: nothing to install, the
//! app in the binary is the app in the repository (`web/`).
//!
//! Design: the files are compiled in with `include_bytes!`, each beside its gzip form, which
//! `web/scripts/build.mjs` writes and `.ci/run` checks (it must decompress to the file). A
//! browser that accepts gzip gets the compressed bytes. Every answer carries a strong ETag (a
//! SHA-256 of the file) and `Cache-Control: no-cache`, so a browser revalidates with one
//! request and gets a 304 until the binary changes; the app's files have no versioned names,
//! so nothing may be cached without asking.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One file of the app.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static [u8],
    /// The same file, gzip-compressed.
    pub gzip: &'static [u8],
}

macro_rules! asset {
    ($url:literal, $file:literal, $type:expr) => {
        Asset {
            path: $url,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $file)),
            gzip: include_bytes!(concat!("../../web/gz/", $file, ".gz")),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the app consists of.
pub static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app.css", "app.css", "text/css; charset=utf-8"),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
    asset!("/js/main.js", "js/main.js", JS),
    asset!("/js/api.js", "js/api.js", JS),
    asset!("/js/i18n.js", "js/i18n.js", JS),
    asset!("/js/ui.js", "js/ui.js", JS),
    asset!("/js/live.js", "js/live.js", JS),
    asset!("/js/merkle.js", "js/merkle.js", JS),
    asset!("/js/pages/account.js", "js/pages/account.js", JS),
    asset!("/js/pages/home.js", "js/pages/home.js", JS),
    asset!("/js/pages/market.js", "js/pages/market.js", JS),
    asset!("/js/pages/wallet.js", "js/pages/wallet.js", JS),
    asset!("/js/pages/prices.js", "js/pages/prices.js", JS),
    asset!(
        "/js/pages/neighbourhood.js",
        "js/pages/neighbourhood.js",
        JS
    ),
    asset!("/js/pages/operator.js", "js/pages/operator.js", JS),
    asset!("/js/pages/join.js", "js/pages/join.js", JS),
    asset!("/vendor/uPlot.iife.min.js", "vendor/uPlot.iife.min.js", JS),
    asset!(
        "/vendor/uPlot.min.css",
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8"
    ),
];

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = ring::digest::digest(&ring::digest::SHA256, a.body);
                format!("\"{}\"", hex::encode(&digest.as_ref()[..16]))
            })
            .collect()
    })
}

/// The routes serving the app (merged into the API's router).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(index, &headers) }),
        );
    }
    router
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            // `gzip;q=0` refuses it.
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) {
        let mut r = asset.gzip.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.path == "/" {
        // The app talks only to its own origin; nothing may frame it.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("ascii"),
            );
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn every_asset_has_a_distinct_path() {
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
    }
}
