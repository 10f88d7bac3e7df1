//! The webhook's own CA and serving certificate: what the Secret holds, when to renew, and how
//! to issue. Pure (the clock is a parameter), so every decision is a unit test; `keeper` does
//! the API calls.
//!
//! ```text
//! Secret taskstream-webhook-tls ─> Material::from_secret ─> plan(sans, now) ─┬─> Keep
//!   tls.crt tls.key ca.crt ca.key                                           ├─> Leaf: new serving cert, same CA
//!   + not-after / SAN annotations                                           └─> Fresh: new CA (+ old one kept
//!                                                                               in ca.crt) and serving cert
//! ```
//!
//! A new CA is added to the bundle (`ca.crt`, the webhook's `caBundle`) next to the old one, so
//! API servers trust both the old and the new serving certificate while replicas reload.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// Secret key of the serving certificate (PEM).
pub const CERT_KEY: &str = "tls.crt";
/// Secret key of the serving certificate's private key (PEM).
pub const KEY_KEY: &str = "tls.key";
/// Secret key of the CA bundle (PEM, one or two CAs): the `caBundle` of the webhook.
pub const CA_KEY: &str = "ca.crt";
/// Secret key of the current CA's private key (PEM).
pub const CA_KEY_KEY: &str = "ca.key";
/// Annotation: when the current CA expires (Unix seconds).
pub const CA_NOT_AFTER: &str = "taskstream.dev/ca-not-after";
/// Annotation: when the serving certificate expires (Unix seconds).
pub const CERT_NOT_AFTER: &str = "taskstream.dev/cert-not-after";
/// Annotation: the serving certificate's DNS names and IPs, comma-separated.
pub const CERT_SANS: &str = "taskstream.dev/cert-sans";
/// Annotation cert-manager puts on the Secrets it issues: such a Secret is only read.
pub const CERT_MANAGER_ANNOTATION: &str = "cert-manager.io/certificate-name";

/// Subject of the operator's CA: constant, so a serving certificate issued later chains to it.
const CA_NAME: &str = "taskstream-operator webhook CA";
/// CA lifetime, and how long before its end a new one is made.
pub const CA_VALIDITY: Duration = Duration::days(3650);
pub const CA_RENEW_BEFORE: Duration = Duration::days(365);
/// Serving certificate lifetime, and how long before its end it is renewed: a third of it,
/// so a replica that misses several refreshes still never serves an expired certificate.
pub const CERT_VALIDITY: Duration = Duration::days(365);
pub const CERT_RENEW_BEFORE: Duration = Duration::days(120);

/// The certificate material of the Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    /// Current CA first, then a previous one during a CA change.
    pub ca_bundle_pem: String,
    /// The current CA's key; absent in a Secret issued by cert-manager.
    pub ca_key_pem: Option<String>,
    pub ca_not_after: Option<i64>,
    pub cert_not_after: Option<i64>,
    pub sans: Vec<String>,
}

/// What to do with the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// It is fine as it is.
    Keep,
    /// New serving certificate from the current CA (renewal due, or the names changed).
    Leaf,
    /// New CA and serving certificate (nothing usable, or the CA is ending).
    Fresh,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

impl Material {
    /// Reads the material of a Secret; `None` when the certificate or its key is missing.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let annotation = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .cloned()
        };
        let seconds = |k: &str| annotation(k).and_then(|v| v.parse::<i64>().ok());
        Some(Self {
            cert_pem: text(secret, CERT_KEY)?,
            key_pem: text(secret, KEY_KEY)?,
            ca_bundle_pem: text(secret, CA_KEY).unwrap_or_default(),
            ca_key_pem: text(secret, CA_KEY_KEY),
            ca_not_after: seconds(CA_NOT_AFTER),
            cert_not_after: seconds(CERT_NOT_AFTER),
            sans: annotation(CERT_SANS)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }

    /// The Secret's data and annotations for this material.
    pub fn to_secret_parts(&self) -> (BTreeMap<String, ByteString>, BTreeMap<String, String>) {
        let mut data = BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_string(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
            (
                CA_KEY.to_string(),
                ByteString(self.ca_bundle_pem.clone().into_bytes()),
            ),
        ]);
        if let Some(k) = &self.ca_key_pem {
            data.insert(CA_KEY_KEY.into(), ByteString(k.clone().into_bytes()));
        }
        let mut annotations = BTreeMap::from([(CERT_SANS.to_string(), self.sans.join(","))]);
        for (k, v) in [
            (CA_NOT_AFTER, self.ca_not_after),
            (CERT_NOT_AFTER, self.cert_not_after),
        ] {
            if let Some(v) = v {
                annotations.insert(k.to_string(), v.to_string());
            }
        }
        (data, annotations)
    }
}

/// Whether the Secret is cert-manager's: the operator then only reads it (cert-manager renews
/// it, its CA injector keeps the `caBundle` current).
pub fn managed_by_cert_manager(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CERT_MANAGER_ANNOTATION))
}

/// What to do with `current` for a serving certificate valid for `sans` at `now`.
pub fn plan(current: Option<&Material>, sans: &[String], now: OffsetDateTime) -> Plan {
    let Some(m) = current else {
        return Plan::Fresh;
    };
    let now = now.unix_timestamp();
    let (Some(ca_key), Some(ca_end)) = (&m.ca_key_pem, m.ca_not_after) else {
        return Plan::Fresh;
    };
    if ca_key.is_empty()
        || m.ca_bundle_pem.is_empty()
        || ca_end - now < CA_RENEW_BEFORE.whole_seconds()
    {
        return Plan::Fresh;
    }
    let mut have = m.sans.clone();
    let mut want = sans.to_vec();
    have.sort();
    want.sort();
    match m.cert_not_after {
        Some(end) if end - now >= CERT_RENEW_BEFORE.whole_seconds() && have == want => Plan::Keep,
        _ => Plan::Leaf,
    }
}

fn ca_params(not_after: Option<OffsetDateTime>, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Clock skew between the operator and the API servers: valid from an hour ago.
    params.not_before = now - Duration::hours(1);
    params.not_after = not_after.unwrap_or(now + CA_VALIDITY);
    params
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Certificate { what, source }
}

/// Carries out `plan` (not `Keep`) on `current`: the new material to store.
pub fn issue(
    plan: &Plan,
    current: Option<&Material>,
    sans: &[String],
    now: OffsetDateTime,
) -> Result<Material> {
    let reuse = match (plan, current) {
        (Plan::Leaf, Some(m)) => m
            .ca_key_pem
            .as_ref()
            .zip(m.ca_not_after)
            .map(|(k, end)| (k.clone(), end, m.ca_bundle_pem.clone())),
        _ => None,
    };
    let (ca_key, ca_end, bundle) = match reuse {
        Some((key_pem, end, bundle)) => {
            let key = KeyPair::from_pem(&key_pem).map_err(cert_error("read the CA key"))?;
            (key, end, bundle)
        }
        None => {
            let key = KeyPair::generate().map_err(cert_error("generate the CA key"))?;
            let params = ca_params(None, now);
            let cert = params
                .self_signed(&key)
                .map_err(cert_error("sign the CA"))?;
            // The previous CA stays trusted until its serving certificates are gone.
            let previous = current
                .map(|m| first_pem(&m.ca_bundle_pem))
                .unwrap_or_default();
            let bundle = format!("{}{previous}", cert.pem());
            (key, params.not_after.unix_timestamp(), bundle)
        }
    };
    let ca_end_time =
        OffsetDateTime::from_unix_timestamp(ca_end).map_err(|_| Error::CertificateData {
            reason: format!("{CA_NOT_AFTER} {ca_end} is out of range"),
        })?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params(Some(ca_end_time), now), ca_key);

    let mut leaf = CertificateParams::new(sans.to_vec()).map_err(cert_error("serving names"))?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        sans.first()
            .cloned()
            .unwrap_or_else(|| "taskstream-operator".into()),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = now - Duration::hours(1);
    // Never past the CA's own end.
    leaf.not_after = (now + CERT_VALIDITY).min(ca_end_time);
    let key = KeyPair::generate().map_err(cert_error("generate the serving key"))?;
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(cert_error("sign the serving certificate"))?;
    Ok(Material {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_bundle_pem: bundle,
        ca_key_pem: Some(ca_key_pem),
        ca_not_after: Some(ca_end),
        cert_not_after: Some(leaf.not_after.unix_timestamp()),
        sans: sans.to_vec(),
    })
}

/// The first PEM block of a bundle (the CA that was current).
fn first_pem(bundle: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    match bundle.find(END) {
        Some(i) => format!("{}\n", &bundle[..i + END.len()]),
        None => String::new(),
    }
}

/// The DNS names of a Service (`namespace/name`) plus the extra names and IPs.
pub fn sans(service: Option<(&str, &str)>, extra: &[String]) -> Vec<String> {
    let mut sans = Vec::new();
    if let Some((ns, name)) = service {
        sans.push(format!("{name}.{ns}.svc"));
        sans.push(format!("{name}.{ns}.svc.cluster.local"));
        sans.push(format!("{name}.{ns}"));
    }
    for s in extra {
        let s = s.trim();
        if !s.is_empty() && !sans.iter().any(|x| x == s) {
            sans.push(s.to_string());
        }
    }
    sans
}

#[cfg(test)]
mod tests;
