//! The console's static files, compiled into the binary (it needs no network): htmx
//! (vendored, 0BSD, see assets/htmx.LICENSE), the console's small script and its stylesheet.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// htmx 2.0.11 (`npm pack htmx.org@2`, dist/htmx.min.js).
pub const HTMX: &str = include_str!("assets/htmx.min.js");
pub const HTMX_LICENSE: &str = include_str!("assets/htmx.LICENSE");
pub const SCRIPT: &str = include_str!("assets/console.js");
pub const STYLE: &str = include_str!("assets/console.css");

/// `GET /console/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx.LICENSE.txt" => (HTMX_LICENSE, "text/plain; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
