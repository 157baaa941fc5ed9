//! `/mcp` as an OAuth 2.1 resource server (docs/mcp.md, "OAuth"), against an authorization
//! server played by the test: keys generated here, its metadata and JWKS served over HTTP, its
//! tokens signed here. A valid token works; every bad token is refused with the right status
//! and challenge; the JWKS is fetched once per key, not per request; a principal of another
//! region is refused (data residency), with OAuth and with static tokens. Static tokens expire
//! and are revoked; a principal over its rate limit gets `429` with `Retry-After`.
#![allow(clippy::unwrap_used)]

mod common;
mod http_support;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{database_url, json_of, stepwise};
use http_support::{call_tool, initialize, mcp_post, serve, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rand::RngCore;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The resource this server is, as its tokens' audience.
const AUDIENCE: &str = "https://stepwise.test/mcp";
const METADATA: &str = "https://stepwise.test/.well-known/oauth-protected-resource/mcp";

/// A signing key of the test's authorization server.
struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

fn key(kid: &str) -> Key {
    let secret = loop {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let der = secret.to_pkcs8_der().unwrap();
    let public = secret.public_key();
    let point = public.to_sec1_point(false);
    Key {
        kid: kid.to_string(),
        encoding: EncodingKey::from_ec_der(der.as_bytes()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
    }
}

/// The authorization server: RFC 8414 metadata and a JWKS whose fetches are counted.
#[derive(Clone)]
struct Issuer {
    base: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Self {
            base,
            keys: Arc::default(),
            jwks_fetches: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(|State(issuer): State<Issuer>| async move {
                    Json(json!({
                        "issuer": issuer.base,
                        "jwks_uri": format!("{}/jwks", issuer.base),
                        "authorization_endpoint": format!("{}/authorize", issuer.base),
                        "token_endpoint": format!("{}/token", issuer.base),
                        "code_challenge_methods_supported": ["S256"],
                    }))
                }),
            )
            .route(
                "/jwks",
                get(|State(issuer): State<Issuer>| async move {
                    issuer.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"keys": issuer.keys.lock().unwrap().clone()}))
                }),
            )
            .with_state(issuer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        issuer
    }

    fn publish(&self, key: &Key) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token this issuer gives `email` with `scope`, valid for the next hour.
    fn claims(&self, email: &str, scope: &str) -> Value {
        let now = now();
        json!({
            "iss": self.base, "aud": AUDIENCE, "sub": format!("user-{email}"), "email": email,
            "scope": scope, "iat": now, "nbf": now - 5, "exp": now + 3600,
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.encoding).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// `stepwise serve` taking this issuer's tokens (subject from `email`), unknown keys looked
/// for at most every 2 s.
async fn resource_server(url: &str, issuer: &Issuer, region: Option<&str>) -> Server {
    let mut envs = vec![
        ("STEPWISE_OAUTH_ISSUER", issuer.base.as_str()),
        ("STEPWISE_OAUTH_AUDIENCE", AUDIENCE),
        ("STEPWISE_OAUTH_SUBJECT_CLAIM", "email"),
        ("STEPWISE_OAUTH_JWKS_MIN_REFRESH_SECS", "2"),
        ("STEPWISE_MCP_WAIT_MS", "1000"),
    ];
    if let Some(region) = region {
        envs.push(("STEPWISE_REGION", region));
    }
    serve(url, &["--no-worker"], &envs).await
}

/// An `initialize` with `token`: the status, the `WWW-Authenticate` header and the body.
async fn try_token(server: &Server, token: &str) -> (u16, String, Value) {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 7, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "stepwise-tests", "version": "0"}}
    });
    let response = mcp_post(
        &reqwest::Client::new(),
        &server.mcp(),
        token,
        None,
        &initialize,
    )
    .send()
    .await
    .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = if status == 200 {
        http_support::rpc_response(&text)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, challenge, body)
}

/// Asserts `token` is refused `401 invalid_token` with a description containing `why`.
async fn refused(server: &Server, token: &str, why: &str) {
    let (status, challenge, body) = try_token(server, token).await;
    assert_eq!(status, 401, "{why}: {body}");
    assert!(
        challenge.starts_with(&format!("Bearer resource_metadata=\"{METADATA}\"")),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains(why), "expected `{why}` in {challenge}");
}

#[sqlx::test(migrations = false)]
async fn access_tokens_of_the_authorization_server_are_checked_as_the_mcp_spec_says(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let issuer = Issuer::start().await;
    let k1 = key("k1");
    issuer.publish(&k1);
    let server = resource_server(&url, &issuer, None).await;
    let http = reqwest::Client::new();

    // Discovery: no token -> 401 pointing at the metadata, which names the issuer.
    let response = http
        .post(server.mcp())
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{METADATA}\"")
    );
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let metadata: Value = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(metadata["resource"], AUDIENCE, "{metadata}");
        assert_eq!(metadata["authorization_servers"], json!([issuer.base]));
        assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
        let scopes = metadata["scopes_supported"].as_array().unwrap();
        for scope in ["stepwise:guest", "stepwise:staff", "stepwise:operator"] {
            assert!(scopes.contains(&json!(scope)), "{metadata}");
        }
    }
    assert_eq!(issuer.fetches(), 0, "nothing fetched before a token came");

    // A valid token works, as often as it is used, with one fetch of the JWKS.
    let staff = sign(
        &k1,
        &issuer.claims("desk@dewy.example", "openid stepwise:staff"),
    );
    for _ in 0..5 {
        let (status, _, body) = try_token(&server, &staff).await;
        assert_eq!(status, 200, "{body}");
    }
    let session = initialize(&http, &server.mcp(), &staff, json!({})).await;
    let list = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"});
    let text = mcp_post(&http, &server.mcp(), &staff, session.as_deref(), &list)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body = http_support::rpc_response(&text);
    let tools = body["result"]["tools"].as_array().unwrap();
    assert!(
        tools.iter().any(|t| t["name"] == "check_in_guest"),
        "{body}"
    );
    assert!(!tools.iter().any(|t| t["name"] == "retry_saga"), "{body}");
    let (status, body) = call_tool(
        &http,
        &server.mcp(),
        &staff,
        session.as_deref(),
        2,
        "list_sagas",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["isError"], json!(false), "{body}");
    assert_eq!(issuer.fetches(), 1, "the JWKS is fetched once per key");

    // A tool the role may not call: 403 insufficient_scope naming the scope that would do.
    let (status, body) = call_tool(
        &http,
        &server.mcp(),
        &staff,
        session.as_deref(),
        3,
        "retry_saga",
        json!({"saga_id": "0197a1b2-0000-7000-8000-000000000000"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert_eq!(body["scope"], "stepwise:operator", "{body}");

    // A token granting no Stepwise role: 403 insufficient_scope with the scopes that would.
    let (status, challenge, body) = try_token(
        &server,
        &sign(&k1, &issuer.claims("desk@dewy.example", "openid email")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("stepwise:staff"), "{challenge}");
    assert!(challenge.contains(&format!("resource_metadata=\"{METADATA}\"")));

    // Every bad token: 401 invalid_token, and why.
    let mut expired = issuer.claims("desk@dewy.example", "stepwise:staff");
    expired["exp"] = json!(now() - 120);
    expired["nbf"] = json!(now() - 3600);
    refused(&server, &sign(&k1, &expired), "expired").await;

    let mut early = issuer.claims("desk@dewy.example", "stepwise:staff");
    early["nbf"] = json!(now() + 600);
    refused(&server, &sign(&k1, &early), "not valid yet").await;

    let mut elsewhere = issuer.claims("desk@dewy.example", "stepwise:staff");
    elsewhere["aud"] = json!("https://other.example/mcp");
    refused(
        &server,
        &sign(&k1, &elsewhere),
        "not issued for this resource",
    )
    .await;

    let mut foreign = issuer.claims("desk@dewy.example", "stepwise:staff");
    foreign["iss"] = json!("https://attacker.example");
    refused(
        &server,
        &sign(&k1, &foreign),
        "another authorization server",
    )
    .await;

    let claims = issuer.claims("desk@dewy.example", "stepwise:staff");
    // `alg: none`, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(&claims)
    );
    refused(
        &server,
        &none,
        "not a JWT signed with an accepted algorithm",
    )
    .await;
    // HS256 "signed" with the issuer's public key as the HMAC secret (key confusion).
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let confused = encode(
        &hs,
        &claims,
        &EncodingKey::from_secret(k1.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    refused(&server, &confused, "HS256 are not accepted").await;
    // Signed by a key the issuer never published.
    let rogue = key("k1");
    refused(&server, &sign(&rogue, &claims), "signature does not verify").await;
    assert_eq!(
        issuer.fetches(),
        1,
        "bad tokens of a known key fetch nothing"
    );

    // An unknown kid: one fetch to look for it (once the bound since the last fetch has
    // passed), then none until the bound has passed again.
    let stranger = key("k-unknown");
    refused(&server, &sign(&stranger, &claims), "kid").await;
    assert_eq!(issuer.fetches(), 1, "too soon after the last fetch");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(&server, &sign(&stranger, &claims), "kid").await;
    assert_eq!(issuer.fetches(), 2);
    for _ in 0..5 {
        refused(&server, &sign(&stranger, &claims), "kid").await;
    }
    assert_eq!(
        issuer.fetches(),
        2,
        "unknown keys are looked for at a bounded rate"
    );

    // Key rotation: a new key published is found on its first use once the bound has passed.
    let k2 = key("k2");
    issuer.publish(&k2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rotated = sign(&k2, &issuer.claims("desk@dewy.example", "stepwise:staff"));
    assert_eq!(try_token(&server, &rotated).await.0, 200);
    assert_eq!(try_token(&server, &rotated).await.0, 200);
    assert_eq!(try_token(&server, &staff).await.0, 200);
    assert_eq!(issuer.fetches(), 3, "one fetch for the new key");
}

#[sqlx::test(migrations = false)]
async fn a_facade_refuses_principals_of_another_region(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let issuer = Issuer::start().await;
    let k1 = key("k1");
    issuer.publish(&k1);
    let server = resource_server(&url, &issuer, Some("eu")).await;

    let with_region = |region: Option<&str>| {
        let mut claims = issuer.claims("ana@example.com", "stepwise:guest");
        if let Some(region) = region {
            claims["region"] = json!(region);
        }
        sign(&k1, &claims)
    };
    assert_eq!(try_token(&server, &with_region(Some("eu"))).await.0, 200);
    for other in [Some("us"), None] {
        let (status, _, body) = try_token(&server, &with_region(other)).await;
        assert_eq!(status, 403, "{other:?}: {body}");
        assert_eq!(body["error"], "wrong_region", "{body}");
        assert!(body["message"].as_str().unwrap().contains("`eu`"), "{body}");
    }

    // Static tokens: one of another region is refused, one of this region or of none is not.
    let token = |region: Option<&str>| {
        let mut args = vec![
            "tokens",
            "create",
            "--role",
            "staff",
            "--subject",
            "desk",
            "--expires-in",
            "1h",
            "--json",
        ];
        if let Some(region) = region {
            args.extend(["--region", region]);
        }
        let created = stepwise(&url, &args);
        assert!(created.status.success(), "{created:?}");
        json_of(&created)["token"].as_str().unwrap().to_string()
    };
    let (status, _, body) = try_token(&server, &token(Some("us"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "wrong_region", "{body}");
    assert_eq!(try_token(&server, &token(Some("eu"))).await.0, 200);
    assert_eq!(try_token(&server, &token(None)).await.0, 200);
}

#[sqlx::test(migrations = false)]
async fn static_tokens_expire_record_their_last_use_and_are_listed_and_revoked(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let create = |extra: &[&str]| {
        let mut args = vec![
            "tokens",
            "create",
            "--role",
            "staff",
            "--subject",
            "desk",
            "--json",
        ];
        args.extend_from_slice(extra);
        let created = stepwise(&url, &args);
        assert!(created.status.success(), "{created:?}");
        json_of(&created)
    };
    let lasting = create(&["--expires-in", "30d"]);
    let expires: chrono::DateTime<chrono::Utc> =
        lasting["expires_at"].as_str().unwrap().parse().unwrap();
    let in_30d = chrono::Utc::now() + chrono::Duration::days(30);
    assert!((expires - in_30d).num_seconds().abs() < 60, "{lasting}");
    let short = create(&["--expires-in", "2s"]);
    let revoked = create(&[]);
    assert_eq!(revoked["expires_at"], Value::Null);

    let bad = stepwise(
        &url,
        &[
            "tokens",
            "create",
            "--role",
            "staff",
            "--subject",
            "x",
            "--expires-in",
            "soon",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    let server = serve(&url, &["--no-worker"], &[]).await;
    let lasting_token = lasting["token"].as_str().unwrap();
    assert_eq!(try_token(&server, lasting_token).await.0, 200);
    let revoke = stepwise(
        &url,
        &[
            "tokens",
            "revoke",
            revoked["id"].as_str().unwrap(),
            "--json",
        ],
    );
    assert!(revoke.status.success(), "{revoke:?}");
    let (status, challenge, _) = try_token(&server, revoked["token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("revoked"), "{challenge}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, challenge, _) = try_token(&server, short["token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("expired"), "{challenge}");
    // Without OAuth configured there is no metadata to discover.
    let response = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource",
        server.base
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 404);

    let listed = json_of(&stepwise(&url, &["tokens", "list", "--json"]));
    let state_of = |id: &Value| {
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| &t["id"] == id)
            .unwrap()
            .clone()
    };
    let used = state_of(&lasting["id"]);
    assert_eq!(used["state"], "active", "{used}");
    assert!(used["last_used_at"].is_string(), "{used}");
    assert_eq!(state_of(&short["id"])["state"], "expired");
    assert_eq!(state_of(&short["id"])["last_used_at"], Value::Null);
    assert_eq!(state_of(&revoked["id"])["state"], "revoked");
}

#[sqlx::test(migrations = false)]
async fn a_principal_over_its_rate_gets_429_with_retry_after_and_others_go_on(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let token = |subject: &str| {
        let created = stepwise(
            &url,
            &[
                "tokens",
                "create",
                "--role",
                "staff",
                "--subject",
                subject,
                "--json",
            ],
        );
        assert!(created.status.success(), "{created:?}");
        json_of(&created)["token"].as_str().unwrap().to_string()
    };
    let (busy, calm) = (token("busy"), token("calm"));
    let server = serve(
        &url,
        &["--no-worker"],
        &[
            ("STEPWISE_MCP_RATE_PER_SECOND", "1"),
            ("STEPWISE_MCP_RATE_BURST", "3"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..5 {
        let response = mcp_post(
            &reqwest::Client::new(),
            &server.mcp(),
            &busy,
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "t", "version": "0"}}}),
        )
        .send()
        .await
        .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .to_string();
            refusal = Some((retry, response.json::<Value>().await.unwrap()));
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "a burst of 3, then refused"
    );
    let (retry, body) = refusal.unwrap();
    assert_eq!(retry, "1");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("STEPWISE_MCP_RATE_PER_SECOND"),
        "{body}"
    );
    // Another principal is not held back; the busy one may go on once its wait is over.
    assert_eq!(try_token(&server, &calm).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(try_token(&server, &busy).await.0, 200);
}
