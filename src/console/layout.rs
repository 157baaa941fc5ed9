//! The page shell: head, navigation, the viewer and sign-out, and the security headers every
//! HTML answer carries (no framing, no foreign scripts).

use super::session::Viewer;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// Which navigation entry a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Sagas,
    Bulk,
    Audit,
    None,
}

const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// An HTML answer with the console's headers.
pub fn html_response(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// A whole page.
pub fn page(title: &str, viewer: Option<&Viewer>, nav: Nav, content: Markup) -> Markup {
    let current = |n: Nav| if n == nav { Some("page") } else { None };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Stepwise console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/htmx.min.js" defer {}
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a href="/console" { "Stepwise" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Console" {
                            a href="/console" aria-current=[current(Nav::Overview)] { "Overview" } " "
                            a href="/console/sagas" aria-current=[current(Nav::Sagas)] { "Sagas" } " "
                            @if viewer.may_act() {
                                a href="/console/bulk" aria-current=[current(Nav::Bulk)] { "Bulk" } " "
                            }
                            a href="/console/audit" aria-current=[current(Nav::Audit)] { "MCP audit" }
                        }
                        span.who {
                            "Signed in as " strong { (viewer.principal) }
                            @if !viewer.may_act() { " (read only)" }
                            " "
                            form method="post" action="/console/signout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// A page that only says something went wrong (or was refused), with `status`.
pub fn message(status: StatusCode, viewer: Option<&Viewer>, title: &str, text: &str) -> Response {
    html_response(
        status,
        page(
            title,
            viewer,
            Nav::None,
            html! {
                h1 { (title) }
                p.notice.error role="alert" { (text) }
                p { a href="/console" { "Back to the overview" } }
            },
        ),
    )
}
