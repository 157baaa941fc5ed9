//! The OAuth 2.1 resource server of `/mcp`, as the MCP authorization specification defines it
//! (docs/mcp.md, "OAuth"): this server publishes its protected-resource metadata (RFC 9728),
//! names its authorization server there, and accepts JWT access tokens that server issued for
//! it (`aud` = this resource, RFC 8707).
//!
//! A token is accepted when:
//! - its header's `alg` is one of the pinned asymmetric algorithms (`STEPWISE_OAUTH_ALGORITHMS`,
//!   default `RS256,ES256`; `none` and every HMAC algorithm are refused, so a token "signed"
//!   with the public key as an HMAC secret is refused before any key is used);
//! - its `kid` names a key of the issuer's JWKS, of that algorithm's family (the JWKS is found
//!   through the issuer's metadata, cached, and fetched again for an unknown `kid` at most once
//!   per `STEPWISE_OAUTH_JWKS_MIN_REFRESH_SECS`);
//! - its signature verifies, `iss` is `STEPWISE_OAUTH_ISSUER`, `aud` contains
//!   `STEPWISE_OAUTH_AUDIENCE`, and `exp`/`nbf` hold within `STEPWISE_OAUTH_LEEWAY_SECS`;
//! - it carries a subject (`STEPWISE_OAUTH_SUBJECT_CLAIM`, default `sub`) and grants one of the
//!   catalog's roles (`STEPWISE_OAUTH_ROLES_CLAIM`, default `scope`, values
//!   `STEPWISE_OAUTH_ROLE_PREFIX` + role, default `stepwise:`); a token that grants none is
//!   `insufficient_scope`.

use crate::auth::Principal;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stepwise_engine::Registry;
use tokio::sync::{Mutex, RwLock};

/// How the resource server is configured (from `STEPWISE_OAUTH_*`).
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The authorization server's issuer identifier (`iss`).
    pub issuer: String,
    /// This resource's canonical URI, e.g. `https://stepwise.example/mcp` (`aud`, RFC 8707).
    pub audience: String,
    /// The accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim naming the subject.
    pub subject_claim: String,
    /// The claim holding roles or scopes (a dotted path reaches into objects, e.g.
    /// `realm_access.roles`); a space-separated string or an array of strings.
    pub roles_claim: String,
    /// What a value of the roles claim starts with to name a role (`stepwise:` + role).
    pub role_prefix: String,
    /// Precedence when a token grants several roles: the first of these it grants. Empty:
    /// a token granting several roles is refused.
    pub role_order: Vec<String>,
    /// The claim naming the principal's region (data residency).
    pub region_claim: String,
    /// The JWKS location; discovered from the issuer's metadata when `None`.
    pub jwks_uri: Option<String>,
    /// The least time between two fetches of the JWKS caused by unknown `kid`s.
    pub jwks_min_refresh: Duration,
}

/// A configuration error, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn env_secs(name: &str, default: u64) -> Result<Duration, ConfigError> {
    match env(name) {
        None => Ok(Duration::from_secs(default)),
        Some(text) => text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ConfigError(format!("{name} must be a number of seconds, not `{text}`"))),
    }
}

impl OAuthConfig {
    /// A configuration for `issuer` and `audience` with the defaults above.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: Duration::from_secs(30),
            subject_claim: "sub".into(),
            roles_claim: "scope".into(),
            role_prefix: "stepwise:".into(),
            role_order: Vec::new(),
            region_claim: "region".into(),
            jwks_uri: None,
            jwks_min_refresh: Duration::from_secs(30),
        }
    }

    /// From the environment: `None` when `STEPWISE_OAUTH_ISSUER` is unset (static tokens only).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(issuer) = env("STEPWISE_OAUTH_ISSUER") else {
            return Ok(None);
        };
        let audience = env("STEPWISE_OAUTH_AUDIENCE").ok_or_else(|| {
            ConfigError(
                "STEPWISE_OAUTH_AUDIENCE must be set with STEPWISE_OAUTH_ISSUER: this server's \
                 public /mcp URL, e.g. https://stepwise.example/mcp"
                    .into(),
            )
        })?;
        let mut config = Self::new(issuer, audience);
        if let Some(list) = env("STEPWISE_OAUTH_ALGORITHMS") {
            config.algorithms = parse_algorithms(&list)?;
        }
        config.leeway = env_secs("STEPWISE_OAUTH_LEEWAY_SECS", 30)?;
        config.jwks_min_refresh = env_secs("STEPWISE_OAUTH_JWKS_MIN_REFRESH_SECS", 30)?;
        if let Some(claim) = env("STEPWISE_OAUTH_SUBJECT_CLAIM") {
            config.subject_claim = claim;
        }
        if let Some(claim) = env("STEPWISE_OAUTH_ROLES_CLAIM") {
            config.roles_claim = claim;
        }
        if let Ok(prefix) = std::env::var("STEPWISE_OAUTH_ROLE_PREFIX") {
            config.role_prefix = prefix.trim().to_string();
        }
        if let Some(order) = env("STEPWISE_OAUTH_ROLES") {
            config.role_order = order
                .split(',')
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect();
        }
        if let Some(claim) = env("STEPWISE_OAUTH_REGION_CLAIM") {
            config.region_claim = claim;
        }
        config.jwks_uri = env("STEPWISE_OAUTH_JWKS_URI");
        config.check()?;
        Ok(Some(config))
    }

    fn check(&self) -> Result<(), ConfigError> {
        for (name, url) in [
            ("STEPWISE_OAUTH_ISSUER", &self.issuer),
            ("STEPWISE_OAUTH_AUDIENCE", &self.audience),
        ] {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(ConfigError(format!(
                        "{name} must be an http(s) URL, not `{url}`"
                    )))
                }
            }
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError(
                "STEPWISE_OAUTH_ALGORITHMS names no algorithm".into(),
            ));
        }
        Ok(())
    }

    /// The metadata document's URL for this resource (RFC 9728 section 3.1: the well-known
    /// path inserted before the resource's path).
    pub fn metadata_url(&self) -> String {
        metadata_url_for(&self.audience)
    }

    /// The scope that grants `role`.
    pub fn scope_for(&self, role: &str) -> String {
        format!("{}{role}", self.role_prefix)
    }

    /// The protected-resource metadata (RFC 9728) of this resource for `catalog`'s roles.
    pub fn metadata(&self, catalog: &Registry) -> Value {
        let mut roles: Vec<String> = catalog
            .roles()
            .iter()
            .map(|r| self.scope_for(r.name()))
            .collect();
        roles.sort();
        serde_json::json!({
            "resource": self.audience,
            "authorization_servers": [self.issuer],
            "scopes_supported": roles,
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": self.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "resource_name": "Stepwise",
            "resource_documentation": "https://github.com/stepwise-dev/stepwise/blob/main/docs/mcp.md",
        })
    }
}

/// `https://host/.well-known/oauth-protected-resource/path` for the resource
/// `https://host/path` (no suffix for a resource without a path).
pub fn metadata_url_for(resource: &str) -> String {
    match reqwest::Url::parse(resource) {
        Ok(url) => {
            let origin = url.origin().ascii_serialization();
            let path = url.path().trim_end_matches('/');
            format!("{origin}{WELL_KNOWN}{path}")
        }
        Err(_) => format!("{}{WELL_KNOWN}", resource.trim_end_matches('/')),
    }
}

/// The well-known path of RFC 9728.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|name| {
            let alg: Algorithm = name.parse().map_err(|_| {
                ConfigError(format!(
                    "STEPWISE_OAUTH_ALGORITHMS: `{name}` is not a JWS algorithm"
                ))
            })?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(ConfigError(format!(
                    "STEPWISE_OAUTH_ALGORITHMS: `{name}` is symmetric; a resource server accepts \
                     only the issuer's public-key signatures (RS*, PS*, ES*, EdDSA)"
                )));
            }
            Ok(alg)
        })
        .collect()
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// `401 invalid_token`, with a description for the client.
    Invalid(String),
    /// `403 insufficient_scope`: the scopes that would do, and a description.
    InsufficientScope {
        scopes: Vec<String>,
        description: String,
    },
    /// The authorization server could not be reached for its keys (`503`).
    Unavailable(String),
}

/// A validated token's principal, its region and the roles it granted.
#[derive(Debug, Clone)]
pub struct OAuthGrant {
    pub principal: Principal,
    pub region: Option<String>,
}

struct Key {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, std::sync::Arc<Key>>,
    jwks_uri: Option<String>,
    /// When the JWKS was last fetched (successfully or not).
    fetched_at: Option<Instant>,
    ever_fetched: bool,
}

/// The resource server: configuration, an HTTP client, the issuer's keys.
pub struct OAuth {
    config: OAuthConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    refresh: Mutex<()>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    pub fn new(config: OAuthConfig) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| ConfigError(format!("could not build an HTTP client: {e}")))?;
        Ok(Self {
            cache: RwLock::new(KeyCache {
                jwks_uri: config.jwks_uri.clone(),
                ..KeyCache::default()
            }),
            config,
            http,
            refresh: Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// How many times the JWKS has been fetched by this process.
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Validates `token` and maps it to a principal of `catalog`.
    pub async fn validate(
        &self,
        token: &str,
        catalog: &Registry,
    ) -> Result<OAuthGrant, TokenError> {
        let invalid = |d: &str| TokenError::Invalid(d.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a JWT signed with an accepted algorithm"))?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(invalid(&format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token names no signing key (kid)"))?;
        let key = self.key(kid).await?;
        if key.key.family() != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
            return Err(invalid(
                "the token's algorithm does not match its signing key",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                invalid(match e.kind() {
                    K::ExpiredSignature => "the token has expired",
                    K::ImmatureSignature => "the token is not valid yet (nbf)",
                    K::InvalidAudience => "the token was not issued for this resource (aud)",
                    K::InvalidIssuer => {
                        "the token was issued by another authorization server (iss)"
                    }
                    K::InvalidSignature => "the token's signature does not verify",
                    K::MissingRequiredClaim(_) => "the token lacks exp, iss or aud",
                    K::InvalidAlgorithm => "the token's algorithm does not match its signing key",
                    _ => "the token is malformed",
                })
            })?
            .claims;
        self.grant(&claims, catalog)
    }

    /// Maps validated claims to a principal.
    fn grant(&self, claims: &Value, catalog: &Registry) -> Result<OAuthGrant, TokenError> {
        let config = &self.config;
        let subject = claim(claims, &config.subject_claim)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                TokenError::Invalid(format!(
                    "the token has no `{}` claim to name its subject",
                    config.subject_claim
                ))
            })?;
        let values: Vec<&str> = match claim(claims, &config.roles_claim) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut granted: Vec<String> = values
            .iter()
            .filter_map(|v| v.strip_prefix(config.role_prefix.as_str()))
            .filter(|role| catalog.role(role).is_some())
            .map(str::to_string)
            .collect();
        granted.sort();
        granted.dedup();
        let role = match granted.as_slice() {
            [] => {
                let mut scopes: Vec<String> = catalog
                    .roles()
                    .iter()
                    .map(|r| config.scope_for(r.name()))
                    .collect();
                scopes.sort();
                return Err(TokenError::InsufficientScope {
                    description: format!(
                        "the token grants no Stepwise role: request one of the scopes {}",
                        scopes.join(", ")
                    ),
                    scopes,
                });
            }
            [one] => one.clone(),
            several => config
                .role_order
                .iter()
                .find(|r| several.contains(r))
                .cloned()
                .ok_or_else(|| {
                    TokenError::Invalid(format!(
                        "the token grants several roles ({}) and STEPWISE_OAUTH_ROLES does not \
                         say which comes first",
                        several.join(", ")
                    ))
                })?,
        };
        let principal = Principal::new(catalog, &role, subject)
            .map_err(|e| TokenError::Invalid(format!("the token's subject is unusable: {e}")))?;
        let region = claim(claims, &config.region_claim)
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(OAuthGrant { principal, region })
    }

    /// The key `kid`, from the cache or, if unknown, from a fresh JWKS (at most one fetch per
    /// `jwks_min_refresh` for unknown keys; concurrent requests share one fetch).
    async fn key(&self, kid: &str) -> Result<std::sync::Arc<Key>, TokenError> {
        if let Some(key) = self.cache.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        let _refreshing = self.refresh.lock().await;
        // Another request may have fetched while this one waited.
        let (recent, ever) = {
            let cache = self.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
            let recent = cache
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.config.jwks_min_refresh);
            (recent, cache.ever_fetched)
        };
        if recent {
            return Err(TokenError::Invalid(
                "the token's signing key (kid) is not one of the authorization server's".into(),
            ));
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let mut cache = self.cache.write().await;
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                cache.ever_fetched = true;
                cache.keys.get(kid).cloned().ok_or_else(|| {
                    TokenError::Invalid(
                        "the token's signing key (kid) is not one of the authorization server's"
                            .into(),
                    )
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, issuer = %self.config.issuer, "could not fetch the authorization server's keys");
                self.cache.write().await.fetched_at = Some(Instant::now());
                if ever {
                    Err(TokenError::Invalid(
                        "the token's signing key (kid) is not one of the authorization server's"
                            .into(),
                    ))
                } else {
                    Err(TokenError::Unavailable(format!(
                        "could not reach the authorization server for its keys: {e}"
                    )))
                }
            }
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| format!("GET {url}: not JSON: {e}"))
    }

    /// The JWKS location from the issuer's metadata: RFC 8414's
    /// `/.well-known/oauth-authorization-server` (inserted before the issuer's path), then
    /// OpenID Connect discovery. The document's `issuer` must be the configured one.
    async fn discover_jwks_uri(&self) -> Result<String, String> {
        let issuer = &self.config.issuer;
        let url = reqwest::Url::parse(issuer).map_err(|e| format!("issuer: {e}"))?;
        let origin = url.origin().ascii_serialization();
        let path = url.path().trim_end_matches('/');
        let candidates = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
            format!("{origin}/.well-known/openid-configuration{path}"),
        ];
        let mut errors = Vec::new();
        for candidate in candidates {
            match self.get_json(&candidate).await {
                Ok(doc) => {
                    if doc.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
                        errors.push(format!("{candidate}: its issuer is not {issuer}"));
                        continue;
                    }
                    match doc.get("jwks_uri").and_then(Value::as_str) {
                        Some(uri) => return Ok(uri.to_string()),
                        None => errors.push(format!("{candidate}: no jwks_uri")),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, std::sync::Arc<Key>>, String> {
        let known = self.cache.read().await.jwks_uri.clone();
        let jwks_uri = match known {
            Some(uri) => uri,
            None => {
                let uri = self.discover_jwks_uri().await?;
                self.cache.write().await.jwks_uri = Some(uri.clone());
                uri
            }
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let set = self.get_json(&jwks_uri).await?;
        let mut keys = HashMap::new();
        for item in set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_uri}: no `keys` array"))?
        {
            // Keys this server cannot use are skipped: symmetric keys (never published by a
            // sound issuer), keys for encryption, keys without a kid, unknown types.
            let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(item.clone()) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.insert(kid, std::sync::Arc::new(Key { key, alg }));
        }
        tracing::info!(keys = keys.len(), %jwks_uri, "fetched the authorization server's keys");
        Ok(keys)
    }
}

/// The value at a dotted path of the claims (`realm_access.roles`), or the claim named by the
/// whole path if it exists as such (`https://example.com/roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, part| value.get(part))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url_for("https://stepwise.example/mcp"),
            "https://stepwise.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url_for("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn symmetric_algorithms_cannot_be_configured() {
        assert!(parse_algorithms("RS256, ES256").is_ok());
        let error = parse_algorithms("RS256,HS256").unwrap_err().to_string();
        assert!(error.contains("symmetric"), "{error}");
        assert!(parse_algorithms("none").is_err());
    }

    #[test]
    fn claims_are_found_by_dotted_path_or_whole_name() {
        let claims = serde_json::json!({
            "realm_access": {"roles": ["stepwise:staff"]},
            "https://example.com/region": "eu"
        });
        assert_eq!(
            claim(&claims, "realm_access.roles"),
            Some(&serde_json::json!(["stepwise:staff"]))
        );
        assert_eq!(
            claim(&claims, "https://example.com/region"),
            Some(&serde_json::json!("eu"))
        );
        assert_eq!(claim(&claims, "missing.path"), None);
    }
}
