//! Who is calling from where: the client's address, scheme and host, read from the TCP
//! connection, or from `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` only when
//! `STEPWISE_TRUST_PROXY` says the proxy in front may be believed (docs/mcp.md, "Behind a
//! proxy"). TLS ends at that proxy; Stepwise itself speaks plain HTTP.
//!
//! `STEPWISE_TRUST_PROXY` accepts:
//! - unset, empty, `0` or `false`: the headers are ignored (a client could forge them);
//! - `1` or `true`: every peer is a trusted proxy (Stepwise is reachable only through it);
//! - a comma-separated list of IP addresses or CIDR blocks (`10.0.0.0/8, 127.0.0.1`): the
//!   headers are believed only on connections from those addresses.
//!
//! Of `X-Forwarded-For`, the client is the rightmost address that is not itself a trusted
//! proxy (addresses further left were written by the client and prove nothing); with `1`, the
//! rightmost entry (the one the proxy in front wrote).

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The environment variable that says which proxies are believed.
pub const TRUST_PROXY_ENV: &str = "STEPWISE_TRUST_PROXY";

/// Which peers' `X-Forwarded-*` headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustProxy {
    Nobody,
    Everyone,
    Networks(Vec<IpNet>),
}

impl TrustProxy {
    /// Parses the value of [`TRUST_PROXY_ENV`] (see the module's documentation).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "" | "0" | "false" => return Ok(Self::Nobody),
            "1" | "true" => return Ok(Self::Everyone),
            _ => {}
        }
        let networks = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "{TRUST_PROXY_ENV}: `{item}` is not an IP address or CIDR block \
                             (use 1/true, 0/false, or a comma-separated list like 10.0.0.0/8,127.0.0.1)"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Networks(networks))
    }

    /// From the environment; unset means [`TrustProxy::Nobody`].
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(TRUST_PROXY_ENV) {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(Self::Nobody),
        }
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        match self {
            Self::Nobody => false,
            Self::Everyone => true,
            Self::Networks(networks) => networks.iter().any(|n| n.contains(&addr)),
        }
    }
}

/// Where a request came from, as far as this server can tell; attached to every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's IP address.
    pub addr: IpAddr,
    /// `http` or `https`, as the client reached us.
    pub scheme: String,
    /// The `Host` the client addressed, if it sent one.
    pub host: Option<String>,
}

impl ClientInfo {
    /// Reads `headers` of a connection from `peer` under `trust`.
    pub fn from_request(peer: IpAddr, headers: &HeaderMap, trust: &TrustProxy) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let direct = Self {
            addr: peer,
            scheme: "http".to_string(),
            host: header("host").map(str::to_string),
        };
        if !trust.trusts(peer) {
            return direct;
        }
        let forwarded_for: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        let addr = match trust {
            // Only the nearest proxy is known to be ours: it wrote the rightmost entry.
            TrustProxy::Everyone => forwarded_for.last(),
            _ => forwarded_for
                .iter()
                .rev()
                .find(|a| !trust.trusts(**a))
                .or(forwarded_for.first()),
        }
        .copied()
        .unwrap_or(peer);
        let scheme = match header("x-forwarded-proto").and_then(|v| v.split(',').next()) {
            Some(proto) if proto.trim().eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = header("x-forwarded-host")
            .and_then(|v| v.split(',').next())
            .map(|h| h.trim().to_string())
            .or(direct.host);
        Self {
            addr,
            scheme: scheme.to_string(),
            host,
        }
    }
}

/// Wraps `router` so every request carries its [`ClientInfo`] (served with
/// `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn layer(router: Router, trust: TrustProxy) -> Router {
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let trust = trust.clone();
        attach_client_info(trust, request, next)
    }))
}

async fn attach_client_info(trust: TrustProxy, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let info = ClientInfo::from_request(peer, request.headers(), &trust);
        tracing::debug!(client = %info.addr, scheme = %info.scheme, "request");
        request.extensions_mut().insert(info);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_setting_accepts_booleans_and_address_lists_only() {
        for off in ["", " ", "0", "false", "FALSE"] {
            assert_eq!(TrustProxy::parse(off).unwrap(), TrustProxy::Nobody, "{off}");
        }
        for on in ["1", "true", "True"] {
            assert_eq!(TrustProxy::parse(on).unwrap(), TrustProxy::Everyone, "{on}");
        }
        let list = TrustProxy::parse("10.0.0.0/8, 127.0.0.1,::1").unwrap();
        assert!(list.trusts(ip("10.1.2.3")));
        assert!(list.trusts(ip("127.0.0.1")));
        assert!(list.trusts(ip("::1")));
        assert!(!list.trusts(ip("192.168.1.1")));
        let error = TrustProxy::parse("10.0.0.0/8,proxy.local").unwrap_err();
        assert!(error.contains("`proxy.local`"), "{error}");
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_the_peer_is_trusted() {
        let forwarded = headers(&[
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "mcp.example.com"),
        ]);
        let direct = ClientInfo::from_request(ip("10.0.0.9"), &forwarded, &TrustProxy::Nobody);
        assert_eq!(direct.addr, ip("10.0.0.9"));
        assert_eq!(direct.scheme, "http");
        assert_eq!(direct.host.as_deref(), Some("10.0.0.5:8080"));

        let only_lan = TrustProxy::parse("10.0.0.0/8").unwrap();
        let outsider = ClientInfo::from_request(ip("198.51.100.1"), &forwarded, &only_lan);
        assert_eq!(outsider.addr, ip("198.51.100.1"));
        assert_eq!(outsider.scheme, "http");

        let proxied = ClientInfo::from_request(ip("10.0.0.9"), &forwarded, &only_lan);
        assert_eq!(proxied.addr, ip("203.0.113.7"));
        assert_eq!(proxied.scheme, "https");
        assert_eq!(proxied.host.as_deref(), Some("mcp.example.com"));
    }

    #[test]
    fn the_client_is_the_rightmost_address_not_a_trusted_proxy() {
        // The client forged the first entry; the proxies appended the rest.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.2")]);
        let trust = TrustProxy::parse("10.0.0.0/8").unwrap();
        let info = ClientInfo::from_request(ip("10.0.0.9"), &chain, &trust);
        assert_eq!(info.addr, ip("203.0.113.7"));
        let everyone = ClientInfo::from_request(ip("10.0.0.9"), &chain, &TrustProxy::Everyone);
        assert_eq!(everyone.addr, ip("10.0.0.2"));
    }
}
