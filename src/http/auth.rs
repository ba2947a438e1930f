//! Who may connect: API keys (`Authorization: Bearer`, or on a WebSocket upgrade from a browser
//! that cannot set headers, the `openai-insecure-api-key.KEY` subprotocol or `?token=`), allowed browser origins on upgrades (cross-site WebSocket
//! hijacking), and per-client-address limits on open requests and request rate.
//!
//! Everything here runs as one middleware in front of every route, before any handler does
//! work. This module must not look at request bodies, and must never log a key or a token.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, Http};
use crate::access::{Caller, Owner};
use crate::metrics;

/// Distinct client addresses the rate limiter remembers before it forgets idle ones.
const RATE_KEYS_BEFORE_SWEEP: usize = 10_000;

/// The configured API keys, kept only as SHA-256 digests so comparing takes the same time
/// whatever the key's length or how much of it matches.
pub struct Keys {
    /// Digests of the accepted keys; empty = no authentication.
    digests: Vec<[u8; 32]>,
}

impl Keys {
    /// Keys from the configuration (blank entries ignored).
    pub fn new(keys: &[String]) -> Self {
        let digests = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(digest)
            .collect();
        Keys { digests }
    }

    /// Whether any key is required.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, in constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        let mut ok = subtle::Choice::from(0);
        for key in &self.digests {
            ok |= key.ct_eq(&presented);
        }
        ok.into()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key a request presents: the bearer token, or (upgrades only) the `token` query value.
fn presented_key<'a>(headers: &'a HeaderMap, uri: &'a Uri, upgrade: bool) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_string());
    if bearer.is_some() || !upgrade {
        return bearer;
    }
    subprotocol_key(headers).or_else(|| url_query_value(uri.query()?, "token"))
}

/// The key a browser offers as the WebSocket subprotocol `openai-insecure-api-key.KEY`, the
/// way OpenAI's Realtime API takes it from pages that cannot set headers.
fn subprotocol_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("openai-insecure-api-key."))
        .map(str::to_string)
}

/// One value of a URL query string, percent-decoded.
fn url_query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Whether the request asks to become a WebSocket.
pub fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether a browser page from `origin` may open a WebSocket here. No list = any origin.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Open requests and connections per client address.
pub type ClientSlots = crate::access::Shares<IpAddr>;

/// One held per-address slot; released when dropped. Upgrades move it into the WebSocket
/// session.
pub type ClientSlot = crate::access::Share<IpAddr>;

/// A per-address request-rate limiter (token bucket), or none.
pub struct RateLimit {
    /// `None` when no rate is configured.
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl RateLimit {
    /// `per_minute` requests per minute per address, bursts of the same size; 0 = unlimited.
    pub fn new(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        RateLimit { limiter }
    }

    /// `Ok` to go ahead, or how many seconds to wait.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > RATE_KEYS_BEFORE_SWEEP {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// Paths anyone may call, even when keys are required (liveness probes).
fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET && path == "/healthz"
}

/// The middleware: rate → key → origin → per-address slot, then the route. Refusals happen
/// before any handler runs, so nothing is read or allocated for a refused request.
pub async fn guard(
    State(http): State<Arc<Http>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let response = match admit(&http, peer.ip(), &request) {
        Err(err) => err.into_response(),
        Ok((slot, caller)) if is_upgrade(request.method(), request.headers()) => {
            request.extensions_mut().insert(caller);
            // The session keeps the slot for its whole life (see server::routes).
            request.extensions_mut().insert(Arc::new(slot));
            next.run(request).await
        }
        Ok((slot, caller)) => {
            request.extensions_mut().insert(caller);
            // A streamed answer keeps a copy for as long as it streams (see `super::sse`).
            let slot = Arc::new(slot);
            request.extensions_mut().insert(slot.clone());
            let response = next.run(request).await;
            drop(slot);
            response
        }
    };
    metrics::http_response(response.status().as_u16());
    response
}

/// Admits a request or refuses it; an admitted one gets its per-address slot and its
/// [`Caller`] (whose key, for task ownership and per-client shares).
fn admit(http: &Http, ip: IpAddr, request: &Request) -> Result<(ClientSlot, Caller), ApiError> {
    let (method, headers, uri) = (request.method(), request.headers(), request.uri());
    if let Err(secs) = http.rate.check(ip) {
        metrics::rejected("rate");
        tracing::debug!(%ip, "rate limited");
        return Err(ApiError::rate_limited(
            "too many requests from this address; slow down",
            secs,
        ));
    }
    let upgrade = is_upgrade(method, headers);
    let mut caller = Caller::anonymous(ip);
    if http.keys.required() && !is_public(method, uri.path()) {
        let key = presented_key(headers, uri, upgrade).filter(|k| http.keys.accepts(k));
        let Some(key) = key else {
            metrics::rejected("unauthorized");
            tracing::info!(%ip, path = uri.path(), "refused: missing or wrong API key");
            return Err(ApiError::unauthorized());
        };
        caller.owner = Some(Owner::of_key(&key));
    }
    if upgrade {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if !origin_allowed(&http.app.config.allowed_origins, origin) {
            metrics::rejected("origin");
            tracing::info!(%ip, origin, "refused: origin not allowed");
            return Err(ApiError::forbidden_origin());
        }
    }
    let slot = http.clients.acquire(ip).ok_or_else(|| {
        metrics::rejected("client_connections");
        tracing::info!(%ip, "refused: at --max-connections-per-ip");
        ApiError::rate_limited("too many open connections from this address", 1)
    })?;
    Ok((slot, caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_only_their_own() {
        let keys = Keys::new(&["alpha".into(), " beta ".into(), "".into()]);
        assert!(keys.required());
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts("alphaa"));
        assert!(!keys.accepts(""));
        assert!(!Keys::new(&[]).required());
    }

    #[test]
    fn bearer_header_or_token_query_on_upgrades_only() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/ws?x=1&token=s%20ecret".parse().unwrap();
        assert_eq!(presented_key(&headers, &uri, false), None);
        assert_eq!(
            presented_key(&headers, &uri, true).as_deref(),
            Some("s ecret")
        );
        headers.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&headers, &uri, true).as_deref(), Some("k1"));
        headers.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(presented_key(&headers, &uri, false), None);
    }

    #[test]
    fn browsers_may_offer_the_key_as_a_subprotocol_on_upgrades() {
        let mut headers = HeaderMap::new();
        let uri: Uri = "/v1/realtime?token=q".parse().unwrap();
        let offer = "realtime, openai-insecure-api-key.sk-1, openai-beta.realtime-v1";
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, offer.parse().unwrap());
        assert_eq!(presented_key(&headers, &uri, true).as_deref(), Some("sk-1"));
        assert_eq!(presented_key(&headers, &uri, false), None);
        headers.insert(header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_eq!(presented_key(&headers, &uri, true).as_deref(), Some("b"));
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_present() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&allowed, Some("https://app.example.com")));
        assert!(origin_allowed(&allowed, Some("https://APP.example.com/")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example")));
        assert!(origin_allowed(&[], Some("https://evil.example")));
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_with_a_wait() {
        let rate = RateLimit::new(3);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..3 {
            assert!(rate.check(ip).is_ok());
        }
        let wait = rate.check(ip).unwrap_err();
        assert!((1..=20).contains(&wait), "wait {wait}");
        assert!(rate.check("10.0.0.10".parse().unwrap()).is_ok());
        assert!(RateLimit::new(0).check(ip).is_ok());
    }
}
