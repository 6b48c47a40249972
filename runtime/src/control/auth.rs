//! The control token: with `--control-token` every request must carry it, as
//! `Authorization: Bearer <token>` or, for a browser opening the dashboard, `?token=<token>`
//! (the page then sends the header itself). Without a token the endpoint only binds loopback.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ControlState;

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(req: &Request) -> Option<String> {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(t) = header.and_then(|h| h.strip_prefix("Bearer ")) {
        return Some(t.to_string());
    }
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix("token=")).map(String::from)
}

pub(super) async fn check(State(s): State<ControlState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else { return next.run(req).await };
    match presented(&req) {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            "this job's control endpoint needs its token: Authorization: Bearer <token> or ?token=<token>\n",
        )
            .into_response(),
    }
}
