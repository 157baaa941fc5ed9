//! A console served on a loopback port over a per-test database, tokens for each role, and a
//! signed-in HTTP client (cookies kept by hand, redirects not followed).
#![allow(dead_code, clippy::unwrap_used)]

use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use stepwise::console::{live::Live, Console};
use stepwise::http::proxy::TrustProxy;
use stepwise_engine::Engine;
use stepwise_mcp::{Principal, TokenStore};
use tokio_util::sync::CancellationToken;

pub struct Served {
    pub base: String,
    pub stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the console over `engine` (live updates from `engine`'s database) with the proxy
/// rule `trust`.
pub async fn serve_console(engine: &Engine, trust: TrustProxy) -> Served {
    let stop = CancellationToken::new();
    let live = Live::start(engine.store().clone(), stop.clone());
    let router = stepwise::console::router(Console::new(engine.clone(), live));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = stop.clone();
    tokio::spawn(async move {
        stepwise::http::serve(listener, router, trust, token, Duration::from_secs(1))
            .await
            .unwrap();
    });
    Served { base, stop }
}

/// A new bearer token for `role:subject`.
pub async fn token(pool: &PgPool, engine: &Engine, principal: &str) -> String {
    let principal = Principal::parse(engine.registry(), principal).unwrap();
    TokenStore::new(pool.clone())
        .create(&principal, "test")
        .await
        .unwrap()
        .token
}

/// The value of `name="<field>" value="..."` in an HTML page.
pub fn hidden(html: &str, field: &str) -> Option<String> {
    let marker = format!("name=\"{field}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

/// The `name=value` of a `Set-Cookie` header named `name`.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A signed-in session: its cookie header and CSRF token.
pub struct Session {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    pub http: reqwest::Client,
}

/// Fetches the sign-in form and posts `token`: the raw answer, with the form's cookie.
pub async fn post_sign_in(base: &str, token: &str) -> reqwest::Response {
    let http = client();
    let form = http
        .get(format!("{base}/console/signin"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let cookie = set_cookie(&form, "stepwise_console_signin").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let html = form.text().await.unwrap();
    let csrf = hidden(&html, "signin_csrf").unwrap();
    http.post(format!("{base}/console/signin"))
        .header("cookie", cookie)
        .form(&[("token", token), ("signin_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

pub async fn sign_in(base: &str, token: &str) -> Session {
    let answer = post_sign_in(base, token).await;
    assert_eq!(answer.status(), 303, "signed in");
    let cookie = set_cookie(&answer, "stepwise_console").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let http = client();
    let page = http
        .get(format!("{base}/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf = hidden(&page.text().await.unwrap(), "csrf").unwrap();
    Session {
        base: base.to_string(),
        cookie,
        csrf,
        http,
    }
}

impl Session {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_ok(&self, path: &str) -> String {
        let answer = self.get(path).await;
        assert_eq!(answer.status(), 200, "GET {path}");
        answer.text().await.unwrap()
    }

    /// Posts `fields` plus this session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", self.csrf.as_str()));
        self.post_raw(path, &form).await
    }

    /// Posts exactly `fields`.
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(fields)
            .send()
            .await
            .unwrap()
    }
}

/// Where a redirect points.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The saga a redirect to `/console/sagas/ID[?...]` points at (a replay's new saga).
pub fn redirected_saga(response: &reqwest::Response) -> uuid::Uuid {
    location(response)
        .trim_start_matches("/console/sagas/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
