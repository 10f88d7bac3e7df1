//! The operator's one error type. Messages are lowercase and carry the object they concern;
//! `metric_label()` gives each variant a stable, low-cardinality label for the error counter.

use std::net::SocketAddr;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Secret the TaskStream references does not exist.
    #[error("taskstream {namespace}/{name}: secret {secret} not found")]
    SecretNotFound {
        namespace: String,
        name: String,
        secret: String,
    },

    /// A Secret exists but lacks the referenced key.
    #[error("taskstream {namespace}/{name}: secret {secret} has no key {key}")]
    SecretKeyNotFound {
        namespace: String,
        name: String,
        secret: String,
        key: String,
    },

    /// The spec got past the schema but cannot be built into objects.
    #[error("taskstream {name}: invalid spec: {reason}")]
    InvalidSpec { name: String, reason: String },

    /// `spec.gateway` is set but the cluster has no HTTPRoute API (Gateway API CRDs missing).
    #[error(
        "taskstream {namespace}/{name}: spec.gateway needs the Gateway API: HTTPRoute \
         (gateway.networking.k8s.io/v1) is not installed in this cluster"
    )]
    GatewayApiMissing { namespace: String, name: String },

    /// An object lacks a field the operator needs (a name or namespace).
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },

    /// A Kubernetes API call failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Serializing an object failed.
    #[error("serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// Building a Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),

    /// Leader election failed.
    #[error("leader election on lease {namespace}/{lease}: {source}")]
    Lease {
        namespace: String,
        lease: String,
        #[source]
        source: Box<kube_lease_manager::LeaseManagerError>,
    },

    /// The admin HTTP server could not start.
    #[error("admin server {addr}: {source}")]
    AdminServer {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Making the webhook's CA or serving certificate failed.
    #[error("webhook certificate: {what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// The webhook certificate Secret holds something unusable.
    #[error("webhook certificate: {reason}")]
    CertificateData { reason: String },

    /// The webhook HTTPS server could not start.
    #[error("webhook server {addr}: {source}")]
    WebhookServer {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Reading or parsing a manifest for `render` failed.
    #[error("manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable label for the `taskstream_operator_reconcile_errors_total` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::SecretNotFound { .. } => "secret_not_found",
            Error::SecretKeyNotFound { .. } => "secret_key_not_found",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::GatewayApiMissing { .. } => "gateway_api_missing",
            Error::MissingField { .. } => "missing_field",
            Error::Kube { .. } => "kube_api",
            Error::Serialize { .. } => "serialize",
            Error::Client(_) => "client",
            Error::Lease { .. } => "lease",
            Error::AdminServer { .. } => "admin_server",
            Error::Manifest { .. } => "manifest",
            Error::Certificate { .. } | Error::CertificateData { .. } => "webhook_certificate",
            Error::WebhookServer { .. } => "webhook_server",
        }
    }

    /// The `reason` of the `Degraded` condition and of the Warning Event, for every failure
    /// the TaskStream's status must show: the user-fixable ones (a missing Secret, an invalid
    /// spec) and every refusal of the API server (see [`ApiRefusal`]). `None` for failures
    /// that concern no TaskStream (client, lease, admin server, manifest).
    pub fn degraded_reason(&self) -> Option<&'static str> {
        match self {
            Error::SecretNotFound { .. } => Some("SecretNotFound"),
            Error::SecretKeyNotFound { .. } => Some("SecretKeyNotFound"),
            Error::InvalidSpec { .. } => Some("InvalidSpec"),
            Error::GatewayApiMissing { .. } => Some("GatewayAPIMissing"),
            Error::Kube { source, .. } => Some(ApiRefusal::of(source).reason()),
            _ => None,
        }
    }

    /// The message of the `Degraded` condition and of the Warning Event: for an API error, what
    /// the operator did and the API server's own message (not the whole Status dump of
    /// `Display`), bounded so a verbose webhook cannot bloat the status.
    pub fn degraded_message(&self) -> String {
        let message = match self {
            Error::Kube {
                action,
                kind,
                namespace,
                name,
                source,
            } => match source.as_ref() {
                kube::Error::Api(s) => {
                    let code = match s.reason.as_str() {
                        "" => s.code.to_string(),
                        reason => format!("{} {reason}", s.code),
                    };
                    format!("{action} {kind} {namespace}/{name}: {} ({code})", s.message)
                }
                other => format!("{action} {kind} {namespace}/{name}: {other}"),
            },
            other => other.to_string(),
        };
        truncate(message, MAX_MESSAGE_BYTES)
    }
}

/// Longest `Degraded` message kept: a Condition's message may hold 32 KiB, but a verbose
/// webhook must not bloat every status read.
const MAX_MESSAGE_BYTES: usize = 4096;

/// `s` cut to at most `max` bytes on a character boundary, an ellipsis marking the cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Why the API server refused a request, classified from its Status (code, reason, message):
/// the `reason` of the TaskStream's `Degraded` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRefusal {
    /// A ResourceQuota of the namespace is exhausted (`403 ... exceeded quota`).
    QuotaExceeded,
    /// An admission webhook (Kyverno, Gatekeeper, ...) or a ValidatingAdmissionPolicy denied
    /// the child, whatever code it chose.
    AdmissionDenied,
    /// The child is invalid (422): a pass-through setting (`spec.pod`, `app.volumeMounts`,
    /// ...) the CRD schema could not check. Retrying will not fix it.
    ChildInvalid,
    /// Anything else: 5xx (`failed to allocate a serviceIP`, etcd timeouts), RBAC, conflicts,
    /// an unreachable API server.
    ApiServerError,
}

impl ApiRefusal {
    /// Classifies a failed API call.
    pub fn of(error: &kube::Error) -> Self {
        let kube::Error::Api(status) = error else {
            return ApiRefusal::ApiServerError;
        };
        let message = status.message.as_str();
        let webhook =
            message.contains("admission webhook") && message.contains("denied the request");
        // "ValidatingAdmissionPolicy '...' with binding '...' denied request: ..."
        let policy =
            message.contains("ValidatingAdmissionPolicy") && message.contains("denied request");
        if status.code == 403 && message.contains("exceeded quota") {
            ApiRefusal::QuotaExceeded
        } else if webhook || policy {
            ApiRefusal::AdmissionDenied
        } else if status.code == 422 {
            ApiRefusal::ChildInvalid
        } else {
            ApiRefusal::ApiServerError
        }
    }

    /// The `Degraded` reason.
    pub fn reason(self) -> &'static str {
        match self {
            ApiRefusal::QuotaExceeded => "QuotaExceeded",
            ApiRefusal::AdmissionDenied => "AdmissionDenied",
            ApiRefusal::ChildInvalid => "ChildInvalid",
            ApiRefusal::ApiServerError => "APIServerError",
        }
    }
}
