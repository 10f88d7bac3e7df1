//! Who a WebSocket client is and which groups it may join, decided before the upgrade.
//!
//! Modes: `jwt` (token from `?token=` or `Authorization: Bearer`; a static key, or the keys of a
//! JWKS endpoint chosen by `kid`, see `crate::jwks`), `forward` (ask the app at
//! `GET <upstream><auth-path>` with the client's cookies), `none` (groups from `?groups=`).
//! In every mode `?groups=a,b` may narrow the granted groups, never widen them.
//! Tokens and cookies are never logged.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use tracing::warn;

mod jwt;
use jwt::JwtKeys;

use crate::config::AuthConfig;
use crate::error::ConfigError;
use crate::jwks::Jwks;
use crate::metrics::RejectReason;
use crate::proxy::{Upstream, add_forwarded, empty};

/// Longest group name accepted.
const MAX_GROUP_LEN: usize = 200;
/// Most groups one client may be in.
const MAX_GROUPS: usize = 100;
/// Largest answer of the forward-auth endpoint read.
const MAX_AUTH_BODY: usize = 64 * 1024;

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub groups: Vec<String>,
}

/// Why a client was refused; becomes the HTTP answer to the handshake.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            RejectReason::Unauthorized,
            message,
        )
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, RejectReason::Forbidden, message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, RejectReason::BadRequest, message)
    }
}

/// Query parameters the sidecar understands on the WebSocket path.
#[derive(Debug, Default)]
pub struct WsQuery {
    pub token: Option<String>,
    pub groups: Option<Vec<String>>,
}

impl WsQuery {
    pub fn parse(query: Option<&str>) -> Self {
        let mut q = WsQuery::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "token" => q.token = Some(v.into_owned()),
                "groups" => {
                    let list = q.groups.get_or_insert_with(Vec::new);
                    list.extend(
                        v.split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned),
                    );
                }
                _ => {}
            }
        }
        q
    }
}

enum Mode {
    Jwt {
        keys: JwtKeys,
        groups_claim: String,
        user_group: String,
    },
    Forward {
        path: String,
        timeout: Duration,
        user_group: String,
    },
    None,
}

/// Decides identities; built once at start-up.
pub struct Authenticator {
    mode: Mode,
    upstream: Upstream,
}

#[derive(Deserialize)]
struct ForwardAnswer {
    #[serde(default)]
    user: Option<serde_json::Value>,
    #[serde(default)]
    groups: Vec<String>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig, upstream: Upstream) -> Result<Self, ConfigError> {
        let mode = match config {
            AuthConfig::None => Mode::None,
            AuthConfig::Forward {
                path,
                timeout,
                user_group,
            } => Mode::Forward {
                path: path.clone(),
                timeout: *timeout,
                user_group: user_group.clone(),
            },
            AuthConfig::Jwt {
                key,
                groups_claim,
                user_group,
            } => Mode::Jwt {
                keys: JwtKeys::new(key)?,
                groups_claim: groups_claim.clone(),
                user_group: user_group.clone(),
            },
        };
        Ok(Self { mode, upstream })
    }

    /// The JWKS key source, when keys come from one: the caller registers its metrics and
    /// runs its refresh task.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.mode {
            Mode::Jwt {
                keys: JwtKeys::Jwks(jwks),
                ..
            } => Some(jwks),
            _ => None,
        }
    }

    /// Authenticates a handshake and returns the groups the client joins.
    /// `peer` is the client's address, for the `X-Forwarded-For` of forward auth.
    pub async fn authenticate<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Identity, Rejection> {
        let query = WsQuery::parse(req.uri().query());
        let granted = match &self.mode {
            Mode::None => {
                let groups = query.groups.clone().unwrap_or_default();
                Identity { user: None, groups }
            }
            Mode::Jwt {
                keys,
                groups_claim,
                user_group,
            } => {
                let token = bearer(req.headers())
                    .or(query.token.as_deref())
                    .ok_or_else(|| {
                        Rejection::unauthorized(
                            "missing token: pass ?token=<jwt> or Authorization: Bearer <jwt>",
                        )
                    })?;
                keys.verify(token, groups_claim, user_group).await?
            }
            Mode::Forward {
                path,
                timeout,
                user_group,
            } => self.forward(req, peer, path, *timeout, user_group).await?,
        };
        narrow(granted, query.groups.as_deref())
    }

    async fn forward<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        path: &str,
        timeout: Duration,
        user_group: &str,
    ) -> Result<Identity, Rejection> {
        let unavailable = |why: String| {
            warn!(upstream = %self.upstream.base(), path, "forward auth failed: {why}; answering 503");
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                RejectReason::AuthUnavailable,
                "authentication service unavailable, try again later",
            )
        };
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut out = Request::get(self.upstream.uri(&target))
            .body(empty())
            .map_err(|e| unavailable(format!("build request: {e}")))?;
        for h in [
            header::COOKIE,
            header::AUTHORIZATION,
            header::ORIGIN,
            header::HOST,
            header::USER_AGENT,
        ] {
            for v in req.headers().get_all(&h) {
                out.headers_mut().append(h.clone(), v.clone());
            }
        }
        // The same X-Forwarded-* as a proxied request: the app's view of the client must not
        // depend on which of the two it is answering.
        add_forwarded(out.headers_mut(), req.headers(), peer);
        out.headers_mut().insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let call = async {
            let resp = self.upstream.send(out).await?;
            let status = resp.status();
            let body: Bytes = Limited::new(resp.into_body(), MAX_AUTH_BODY)
                .collect()
                .await
                .map_err(|e| format!("read answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(unavailable(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(r)) => r,
        };
        match status {
            s if s.is_success() => {
                let answer: ForwardAnswer = serde_json::from_slice(&body).map_err(|e| {
                    unavailable(format!(
                        "answer is not {{\"user\": ..., \"groups\": [...]}}: {e}"
                    ))
                })?;
                let user = match answer.user {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let mut groups = answer.groups;
                if let Some(u) = &user {
                    groups.extend(user_group_of(user_group, u));
                }
                Ok(Identity { user, groups })
            }
            StatusCode::UNAUTHORIZED => Err(Rejection::unauthorized("not logged in")),
            StatusCode::FORBIDDEN => Err(Rejection::forbidden("forbidden by the app")),
            other => Err(unavailable(format!("app answered {other}"))),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn user_group_of(template: &str, user: &str) -> Option<String> {
    (!template.is_empty()).then(|| template.replace("{sub}", user))
}

/// Applies `?groups=`: only groups already granted may be asked for.
fn narrow(granted: Identity, requested: Option<&[String]>) -> Result<Identity, Rejection> {
    let allowed: BTreeSet<String> = granted.groups.into_iter().collect();
    let groups: Vec<String> = match requested {
        None => allowed.into_iter().collect(),
        Some(req) => {
            let mut out = BTreeSet::new();
            for g in req {
                if !allowed.contains(g) {
                    return Err(Rejection::forbidden(format!(
                        "group {g:?} is not granted to this client"
                    )));
                }
                out.insert(g.clone());
            }
            out.into_iter().collect()
        }
    };
    if groups.is_empty() {
        return Err(Rejection::forbidden(
            "no groups: the client would receive nothing (grant groups, or ask with ?groups=a,b)",
        ));
    }
    if groups.len() > MAX_GROUPS {
        return Err(Rejection::bad_request(format!(
            "too many groups ({}, at most {MAX_GROUPS})",
            groups.len()
        )));
    }
    if let Some(bad) = groups
        .iter()
        .find(|g| g.len() > MAX_GROUP_LEN || g.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(Rejection::bad_request(format!(
            "bad group name {:?}: at most {MAX_GROUP_LEN} bytes, no spaces or control characters",
            bad.chars().take(40).collect::<String>()
        )));
    }
    Ok(Identity {
        user: granted.user,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(groups: &[&str]) -> Identity {
        Identity {
            user: Some("u".into()),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn query_parsing() {
        let q = WsQuery::parse(Some("token=a.b.c&groups=x,%20y&groups=z&other=1"));
        assert_eq!(q.token.as_deref(), Some("a.b.c"));
        assert_eq!(q.groups.unwrap(), vec!["x", "y", "z"]);
        assert!(WsQuery::parse(None).groups.is_none());
    }

    #[test]
    fn narrowing_never_widens() {
        let all = narrow(id(&["a", "b"]), None).unwrap();
        assert_eq!(all.groups, vec!["a", "b"]);
        let one = narrow(id(&["a", "b"]), Some(&["b".into()])).unwrap();
        assert_eq!(one.groups, vec!["b"]);
        let err = narrow(id(&["a"]), Some(&["a".into(), "c".into()])).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(err.message.contains("\"c\""));
        assert_eq!(
            narrow(id(&[]), None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            narrow(id(&["a b"]), None).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn user_group_template() {
        assert_eq!(
            user_group_of("user:{sub}", "42").as_deref(),
            Some("user:42")
        );
        assert_eq!(
            user_group_of("user_{sub}_tasks", "42").as_deref(),
            Some("user_42_tasks")
        );
        assert_eq!(user_group_of("", "42"), None);
    }
}
