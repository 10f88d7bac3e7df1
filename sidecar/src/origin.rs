//! The Origin check of WebSocket handshakes: cross-site WebSocket hijacking is refused before
//! authentication, since a browser sends the victim's cookies to any site's WebSocket.
//!
//! ```text
//! handshake --Origin--> check_origin(--allowed-origins) --ok--> auth
//!                                                      \--Err(origin)--> 403
//! ```

use http::header;

use crate::config::AllowedOrigins;

/// Refuses browsers from other sites. `Err` carries the offending origin for the log.
pub fn check_origin(allowed: &AllowedOrigins, headers: &http::HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // not a browser, or a same-origin request from an old one
    };
    let origin = origin
        .to_str()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    match allowed {
        AllowedOrigins::Any => Ok(()),
        AllowedOrigins::List(list) => {
            if list.contains(&origin) {
                Ok(())
            } else {
                Err(origin)
            }
        }
        AllowedOrigins::SameHost => {
            let host = headers
                .get("x-forwarded-host")
                .or_else(|| headers.get(header::HOST))
                .and_then(|v| v.to_str().ok())
                .map(|h| {
                    h.split(',')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                });
            let origin_host = origin.split_once("://").map(|(_, h)| h);
            match (host, origin_host) {
                (Some(h), Some(o)) if !h.is_empty() && same_host(&h, o) => Ok(()),
                _ => Err(origin),
            }
        }
    }
}

/// `host[:port]` equality where a missing port and the scheme's default port agree.
fn same_host(a: &str, b: &str) -> bool {
    fn strip(h: &str) -> &str {
        h.strip_suffix(":80")
            .or_else(|| h.strip_suffix(":443"))
            .unwrap_or(h)
    }
    a == b || strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_host_origin_policy() {
        let same = AllowedOrigins::SameHost;
        assert!(check_origin(&same, &headers(&[("host", "app.example.com")])).is_ok());
        assert!(
            check_origin(
                &same,
                &headers(&[
                    ("host", "app.example.com"),
                    ("origin", "https://app.example.com")
                ])
            )
            .is_ok()
        );
        assert!(
            check_origin(
                &same,
                &headers(&[
                    ("host", "localhost:8080"),
                    ("origin", "http://localhost:8080")
                ])
            )
            .is_ok()
        );
        assert!(
            check_origin(
                &same,
                &headers(&[
                    ("host", "app.example.com"),
                    ("origin", "https://evil.example")
                ])
            )
            .is_err()
        );
        assert!(
            check_origin(
                &same,
                &headers(&[
                    ("host", "localhost:8080"),
                    ("origin", "http://localhost:9999")
                ])
            )
            .is_err()
        );
        assert!(check_origin(&same, &headers(&[("origin", "https://app.example.com")])).is_err());
    }

    #[test]
    fn listed_origins() {
        let list = AllowedOrigins::List(vec!["https://app.example.com".into()]);
        assert!(check_origin(&list, &headers(&[("origin", "https://APP.example.com/")])).is_ok());
        assert!(check_origin(&list, &headers(&[("origin", "http://app.example.com")])).is_err());
        assert!(check_origin(&AllowedOrigins::Any, &headers(&[("origin", "https://x")])).is_ok());
    }
}
