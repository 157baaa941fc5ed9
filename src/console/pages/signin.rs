//! `GET/POST /console/signin` and `POST /console/signout`: a bearer token (`stepwise tokens
//! create`) becomes a session. Roles that see only their own sagas (guests) may not enter;
//! roles that may replay sagas (the operator) may act; every other role reads.

use crate::console::layout::{self, html_response, Nav};
use crate::console::session::{
    self, cookie, is_https, random_token, same_secret, set_cookie, Access, SignedIn,
};
use crate::console::Console;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;
use stepwise_engine::SagaScope;

fn form_page(status: StatusCode, signin_csrf: &str, error: Option<&str>, secure: bool) -> Response {
    let mut response = html_response(
        status,
        layout::page(
            "Sign in",
            None,
            Nav::None,
            html! {
                h1 { "Sign in to the Stepwise console" }
                @if let Some(error) = error { p.notice.error role="alert" { (error) } }
                form.action method="post" action="/console/signin" {
                    input type="hidden" name="signin_csrf" value=(signin_csrf);
                    label for="token" { "Bearer token" }
                    input #token type="password" name="token" required autocomplete="off"
                        autofocus placeholder="swt_…";
                    p { "A token from " code { "stepwise tokens create" } ". Operators may act; managers and staff read." }
                    div { button type="submit" { "Sign in" } }
                }
            },
        ),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            session::SIGNIN_COOKIE,
            signin_csrf,
            Some(std::time::Duration::from_secs(3600)),
            secure,
        ),
    );
    response
}

fn https(request: &Option<Extension<crate::http::proxy::ClientInfo>>) -> bool {
    request
        .as_ref()
        .is_some_and(|Extension(c)| c.scheme == "https")
}

/// `GET /console/signin`.
pub async fn form(
    State(console): State<Console>,
    headers: HeaderMap,
    client: Option<Extension<crate::http::proxy::ClientInfo>>,
) -> Response {
    let signed_in = cookie(&headers, session::COOKIE)
        .and_then(|id| console.sessions.viewer(&id))
        .is_some();
    if signed_in {
        return Redirect::to("/console").into_response();
    }
    form_page(StatusCode::OK, &random_token(), None, https(&client))
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
    #[serde(default)]
    signin_csrf: String,
}

/// `POST /console/signin`.
pub async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    client: Option<Extension<crate::http::proxy::ClientInfo>>,
    Form(form): Form<SignIn>,
) -> Response {
    let secure = https(&client);
    let expected = cookie(&headers, session::SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&expected, &form.signin_csrf) {
        return form_page(
            StatusCode::FORBIDDEN,
            &random_token(),
            Some("The sign-in form expired or came from elsewhere; please try again."),
            secure,
        );
    }
    let registry = console.engine.registry();
    let principal = match console
        .tokens
        .authenticate(form.token.trim(), registry)
        .await
    {
        Ok(Some(principal)) => principal,
        Ok(None) => {
            return form_page(
                StatusCode::UNAUTHORIZED,
                &random_token(),
                Some("Unknown or revoked token."),
                secure,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in could not check the token");
            return form_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &random_token(),
                Some("The token could not be checked (database unavailable?)."),
                secure,
            );
        }
    };
    let role = principal.role();
    if role.saga_scope() == SagaScope::Own {
        return form_page(
            StatusCode::FORBIDDEN,
            &random_token(),
            Some("This role sees only its own sagas and may not use the console."),
            secure,
        );
    }
    let access = if role.can_replay() {
        Access::Act
    } else {
        Access::Read
    };
    let id = console.sessions.open(principal.to_string(), access);
    tracing::info!(principal = %principal, "console sign-in");
    let mut response = Redirect::to("/console").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(session::COOKIE, &id, Some(session::SESSION_TTL), secure),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(session::SIGNIN_COOKIE, "", None, secure),
    );
    response
}

#[derive(Deserialize)]
pub struct Csrf {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /console/signout`.
pub async fn signout(
    State(console): State<Console>,
    SignedIn(viewer, id): SignedIn,
    request_extensions: axum::http::Extensions,
    Form(form): Form<Csrf>,
) -> Response {
    if !same_secret(&viewer.csrf, &form.csrf) {
        return layout::message(
            StatusCode::FORBIDDEN,
            Some(&viewer),
            "Refused",
            "The form's CSRF token does not match this session.",
        );
    }
    console.sessions.close(&id);
    let mut response = Redirect::to("/console/signin").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session::COOKIE, "", None, is_https(&request_extensions)),
    );
    response
}
