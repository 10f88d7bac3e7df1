//! Authentication of WebSocket clients (`spec.auth`): the mode, and the settings of `jwt`
//! and `forward` modes.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// How WebSocket clients are authenticated.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'jwt' || (has(self.jwt) && (has(self.jwt.secretRef) || has(self.jwt.publicKeyRef) || has(self.jwt.jwksUrl)))").message("auth.mode jwt needs auth.jwt.secretRef, auth.jwt.publicKeyRef or auth.jwt.jwksUrl"),
    validation = Rule::new("self.mode == 'jwt' || !has(self.jwt)").message("auth.jwt is only allowed with auth.mode jwt"),
    validation = Rule::new("self.mode == 'forward' || !has(self.forward)").message("auth.forward is only allowed with auth.mode forward")
)]
pub struct AuthSpec {
    /// `jwt` (token checked by the sidecar), `forward` (the app decides) or `none`.
    pub mode: AuthMode,
    /// Settings of `jwt` mode.
    pub jwt: Option<JwtSpec>,
    /// Settings of `forward` mode.
    pub forward: Option<ForwardSpec>,
}

/// Authentication mode of the sidecar.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A JWT (query parameter or cookie) checked by the sidecar.
    #[default]
    Jwt,
    /// The sidecar asks the app (`forward.path`) whether the request may connect.
    Forward,
    /// Anyone may connect. Only for development.
    None,
}

impl AuthMode {
    /// The value of `TASKSTREAM_AUTH`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::Forward => "forward",
            AuthMode::None => "none",
        }
    }
}

/// JWT verification settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.secretRef) && has(self.publicKeyRef))").message("set only one of auth.jwt.secretRef and auth.jwt.publicKeyRef"),
    validation = Rule::new("!has(self.jwksUrl) || !(has(self.secretRef) || has(self.publicKeyRef))").message("auth.jwt.jwksUrl excludes auth.jwt.secretRef and auth.jwt.publicKeyRef: with a JWKS only the identity provider's published keys are trusted"),
    validation = Rule::new("!has(self.jwksCaSecretRef) || has(self.jwksUrl)").message("auth.jwt.jwksCaSecretRef is only used with auth.jwt.jwksUrl")
)]
pub struct JwtSpec {
    /// Secret key holding the HS256 shared secret.
    pub secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a PEM public key (RS256/ES256), mounted into the sidecar as a file.
    pub public_key_ref: Option<SecretKeyRef>,
    /// HTTPS URL of the identity provider's JWK Set (its `jwks_uri`): keys chosen by `kid`,
    /// refreshed by the sidecar. Excludes `secretRef` and `publicKeyRef`.
    #[schemars(
        regex(pattern = r"^https://[^\s/?#@]+([/?#]\S*)?$"),
        length(max = 2048)
    )]
    pub jwks_url: Option<String>,
    /// Secret key holding the PEM CA bundle that signs the JWKS server's certificate (a
    /// private CA; default: the system roots). Mounted into the sidecar as a file.
    pub jwks_ca_secret_ref: Option<SecretKeyRef>,
    /// Claim listing the user's groups (default `groups`).
    pub groups_claim: Option<String>,
    /// Template of the per-user group (default `user:{sub}`).
    pub user_group: Option<String>,
}

/// Forward-auth settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ForwardSpec {
    /// Path on the app that answers 2xx to allow a connection (default `/ws-auth/`).
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Timeout of the auth request in milliseconds (default 5000).
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_ms: Option<u32>,
}
