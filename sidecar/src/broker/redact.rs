//! Redis URLs as logs and errors may show them: host and port, never the credentials.
//!
//! ```text
//! redis://user:secret@host:6379/0 --redacted()--> redis://host:6379/0 --> logs, errors, /metrics
//! ```

/// `redis://user:secret@host:6379/0` -> `redis://host:6379/0`, for logs.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => "<redis url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_credentials() {
        assert_eq!(
            redacted("redis://:s3cret@redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(redacted("rediss://u:p@w@h:1"), "rediss://h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
