//! Signed-in viewers (docs/console.md, "Access"): a bearer token, checked once at sign-in
//! against the token store, becomes a session cookie (HttpOnly, SameSite=Strict, Secure when
//! the client reached us over HTTPS as [`crate::http::proxy`] tells). Each session carries its
//! own CSRF token, which every form repeats and every POST must match.
//!
//! Sessions live in this process's memory for [`SESSION_TTL`]: a restart signs everyone out,
//! and a revoked token's session ends at its expiry at the latest.

use crate::http::proxy::ClientInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "stepwise_console";
/// The cookie that protects the sign-in form itself (login CSRF).
pub const SIGNIN_COOKIE: &str = "stepwise_console_signin";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest are dropped beyond it.
const MAX_SESSIONS: usize = 10_000;

/// What a signed-in viewer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read every page (manager, staff, any role that sees every saga).
    Read,
    /// Read and act (roles that may replay sagas: the operator).
    Act,
}

/// A signed-in viewer.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// `role:subject`, the actor of every action taken.
    pub principal: String,
    pub access: Access,
    /// The CSRF token of this session.
    pub csrf: String,
}

impl Viewer {
    pub fn may_act(&self) -> bool {
        self.access == Access::Act
    }
}

#[derive(Debug, Clone)]
struct Session {
    viewer: Viewer,
    expires: Instant,
}

/// The sessions of this process.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

/// 32 random bytes as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Opens a session for `principal`; returns its id (the cookie's value).
    pub fn open(&self, principal: String, access: Access) -> String {
        let id = random_token();
        let session = Session {
            viewer: Viewer {
                principal,
                access,
                csrf: random_token(),
            },
            expires: Instant::now() + SESSION_TTL,
        };
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session);
        id
    }

    /// The viewer of a live session.
    pub fn viewer(&self, id: &str) -> Option<Viewer> {
        let mut sessions = self.lock();
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.viewer.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a half-written map entry behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The value of cookie `name` in `headers`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether cookies must be `Secure`: the client reached us over HTTPS (directly reported by
/// a trusted proxy's `X-Forwarded-Proto`, see [`crate::http::proxy`]).
pub fn is_https(parts_extensions: &axum::http::Extensions) -> bool {
    parts_extensions
        .get::<ClientInfo>()
        .is_some_and(|c| c.scheme == "https")
}

/// A `Set-Cookie` value for the console's cookies (scoped to `/console`).
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    match max_age {
        Some(age) => text.push_str(&format!("; Max-Age={}", age.as_secs())),
        None => text.push_str("; Max-Age=0"),
    }
    if secure {
        text.push_str("; Secure");
    }
    // Every part is ours (a hex token, a constant name): always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in viewer of a request, or a rejection: a redirect to the sign-in page for a
/// page view, `401` for anything else.
pub struct SignedIn(pub Viewer, pub String);

/// Why a request has no viewer.
pub enum NotSignedIn {
    Redirect,
    Unauthorized,
}

impl axum::response::IntoResponse for NotSignedIn {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode;
        match self {
            Self::Redirect => axum::response::Redirect::to("/console/signin").into_response(),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
        }
    }
}

impl<S> FromRequestParts<S> for SignedIn
where
    S: Send + Sync,
    Sessions: axum::extract::FromRef<S>,
{
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let sessions = <Sessions as axum::extract::FromRef<S>>::from_ref(state);
        let found = cookie(&parts.headers, COOKIE)
            .and_then(|id| sessions.viewer(&id).map(|viewer| (viewer, id)));
        match found {
            Some((viewer, id)) => Ok(Self(viewer, id)),
            None if parts.method == axum::http::Method::GET
                && !parts.uri.path().ends_with("/live")
                && !parts.uri.path().ends_with("/events") =>
            {
                Err(NotSignedIn::Redirect)
            }
            None => Err(NotSignedIn::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; stepwise_console=abc; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn a_closed_session_has_no_viewer_and_secrets_compare_exactly() {
        let sessions = Sessions::default();
        let id = sessions.open("operator:ana".into(), Access::Act);
        assert_eq!(sessions.viewer(&id).unwrap().principal, "operator:ana");
        sessions.close(&id);
        assert!(sessions.viewer(&id).is_none());
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }

    #[test]
    fn cookies_are_strict_http_only_and_secure_over_https() {
        let plain = set_cookie(COOKIE, "x", Some(SESSION_TTL), false);
        let text = plain.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(!text.contains("Secure"));
        let secure = set_cookie(COOKIE, "x", Some(SESSION_TTL), true);
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
    }
}
