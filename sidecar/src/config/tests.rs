//! Flag parsing and validation: every bad value names its flag.

use super::*;

fn args(extra: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["taskstream-sidecar"];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .validate()
        .map_err(|e| e.to_string())
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
    assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("5d").is_err());
}

#[test]
fn auth_has_no_default() {
    let err = args(&["--broker", "memory"]).unwrap_err();
    assert!(err.contains("--auth"), "{err}");
}

#[test]
fn redis_needs_url() {
    let err = args(&["--auth", "none"]).unwrap_err();
    assert!(err.contains("--redis-url"), "{err}");
    let cfg = args(&["--auth", "none", "--redis-url", "redis://127.0.0.1:6379"]).unwrap();
    assert!(
        matches!(cfg.broker, BrokerConfig::Redis { ref channel_prefix, .. } if channel_prefix == "taskstream:")
    );
}

#[test]
fn jwt_needs_exactly_one_key() {
    let err = args(&["--auth", "jwt", "--broker", "memory"]).unwrap_err();
    assert!(err.contains("--jwt-secret"), "{err}");
    let err = args(&[
        "--auth",
        "jwt",
        "--broker",
        "memory",
        "--jwt-secret",
        "0123456789abcdef0123",
        "--jwt-public-key-file",
        "/nonexistent",
    ])
    .unwrap_err();
    assert!(err.contains("only one"), "{err}");
    let err = args(&[
        "--auth",
        "jwt",
        "--broker",
        "memory",
        "--jwt-secret",
        "short",
    ])
    .unwrap_err();
    assert!(err.contains("16 bytes"), "{err}");
}

#[test]
fn bad_values_name_the_flag() {
    let err = args(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--upstream",
        "ftp://x",
    ])
    .unwrap_err();
    assert!(err.contains("--upstream"), "{err}");
    let err = args(&["--auth", "none", "--broker", "memory", "--ws-path", "ws"]).unwrap_err();
    assert!(err.contains("--ws-path"), "{err}");
    let err = args(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--allowed-origins",
        "example.com",
    ])
    .unwrap_err();
    assert!(err.contains("--allowed-origins"), "{err}");
    let err = args(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--ping-interval",
        "soon",
    ])
    .unwrap_err();
    assert!(err.contains("--ping-interval"), "{err}");
}

#[test]
fn origins_parse() {
    let cfg = args(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--allowed-origins",
        "https://A.example.com/,http://b:8080",
    ])
    .unwrap();
    assert_eq!(
        cfg.allowed_origins,
        AllowedOrigins::List(vec!["https://a.example.com".into(), "http://b:8080".into()])
    );
    let cfg = args(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--allowed-origins",
        "*",
    ])
    .unwrap();
    assert_eq!(cfg.allowed_origins, AllowedOrigins::Any);
}

#[test]
fn publish_is_loopback_only_unless_opened() {
    let base = ["--auth", "none", "--broker", "memory"];
    assert!(!args(&base).unwrap().publish_allow_remote);
    let open = [&base[..], &["--publish-allow-remote"]].concat();
    assert!(args(&open).unwrap().publish_allow_remote);
    let cmd = <Args as clap::CommandFactory>::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == "publish_allow_remote")
        .unwrap();
    assert_eq!(
        arg.get_env().and_then(|e| e.to_str()),
        Some("TASKSTREAM_PUBLISH_ALLOW_REMOTE")
    );
}

#[test]
fn history_flags() {
    let base = ["--auth", "none", "--broker", "memory"];
    let cfg = args(&base).unwrap();
    assert_eq!(cfg.history, None, "off by default");
    assert!(!cfg.ready_requires_broker);
    let on = [
        &base[..],
        &["--history-size", "100", "--history-ttl", "90s"],
    ]
    .concat();
    assert_eq!(
        args(&on).unwrap().history,
        Some(HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(90)
        })
    );
    let big = [&base[..], &["--history-size", "10001"]].concat();
    assert!(args(&big).unwrap_err().contains("--history-size"));
    let short = [
        &base[..],
        &["--history-size", "1", "--history-ttl", "500ms"],
    ]
    .concat();
    assert!(args(&short).unwrap_err().contains("--history-ttl"));
    let channels = [
        "--auth",
        "none",
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-protocol",
        "channels",
        "--history-size",
        "10",
    ];
    let err = args(&channels).unwrap_err();
    assert!(
        err.contains("--history-size") && err.contains("at-most-once"),
        "{err}"
    );
    let strict = [&base[..], &["--ready-requires-broker"]].concat();
    assert!(args(&strict).unwrap().ready_requires_broker);
}

#[test]
fn jwks_url_is_https_and_excludes_static_keys() {
    let base = ["--auth", "jwt", "--broker", "memory"];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        args(&a)
    };
    let cfg = with(&["--jwt-jwks-url", "https://idp.example.com/jwks"]).unwrap();
    assert!(matches!(
        cfg.auth,
        AuthConfig::Jwt { key: JwtKey::Jwks(ref c), .. } if c.url == "https://idp.example.com/jwks" && c.roots.is_none()
    ));
    let err = with(&["--jwt-jwks-url", "http://idp.example.com/jwks"]).unwrap_err();
    assert!(
        err.contains("--jwt-jwks-url") && err.contains("https://"),
        "{err}"
    );
    let err = with(&["--jwt-jwks-url", "https:///jwks"]).unwrap_err();
    assert!(err.contains("--jwt-jwks-url"), "{err}");
    let err = with(&[
        "--jwt-jwks-url",
        "https://idp.example.com/jwks",
        "--jwt-secret",
        "0123456789abcdef0123",
    ])
    .unwrap_err();
    assert!(
        err.contains("--jwt-jwks-url") && err.contains("only one"),
        "{err}"
    );
    let err = with(&["--jwt-jwks-ca-file", "/nonexistent"]).unwrap_err();
    assert!(err.contains("--jwt-jwks-ca-file"), "{err}");
    let err = with(&[
        "--jwt-jwks-url",
        "https://idp.example.com/jwks",
        "--jwt-jwks-ca-file",
        "/nonexistent/ca.pem",
    ])
    .unwrap_err();
    assert!(
        err.contains("--jwt-jwks-ca-file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    // A file without a certificate (a private key) is refused, naming the flag.
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/jwks/ec256-a.pem");
    let err = with(&[
        "--jwt-jwks-url",
        "https://idp.example.com/jwks",
        "--jwt-jwks-ca-file",
        key,
    ])
    .unwrap_err();
    assert!(err.contains("no PEM certificate"), "{err}");
}
