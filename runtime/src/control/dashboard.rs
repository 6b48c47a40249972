//! The dashboard: one page, its script and style compiled into the binary and inlined, so it
//! works offline, nothing is fetched from elsewhere, and a token in the page's address
//! (`/?token=…`) covers the one request the browser makes for it. The page polls `/job`,
//! `/checkpoints` and `/exceptions` once a second and draws everything itself (SVG, no
//! libraries).

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("assets/index.html").replacen("/*STYLE*/", include_str!("assets/dashboard.css"), 1).replacen(
        "/*SCRIPT*/",
        include_str!("assets/dashboard.js"),
        1,
    )
});

pub(super) async fn index() -> Response {
    ([("content-type", "text/html; charset=utf-8"), ("cache-control", "no-cache")], PAGE.as_str()).into_response()
}
