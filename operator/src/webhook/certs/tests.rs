use super::*;

fn sans_() -> Vec<String> {
    sans(
        Some(("taskstream-system", "taskstream-operator-webhook")),
        &["127.0.0.1".to_string()],
    )
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn fresh() -> Material {
    issue(&Plan::Fresh, None, &sans_(), t0()).expect("issues")
}

fn blocks(bundle: &str) -> usize {
    bundle.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn service_names_and_extra_sans() {
    assert_eq!(
        sans_(),
        [
            "taskstream-operator-webhook.taskstream-system.svc",
            "taskstream-operator-webhook.taskstream-system.svc.cluster.local",
            "taskstream-operator-webhook.taskstream-system",
            "127.0.0.1",
        ]
    );
}

#[test]
fn nothing_yet_means_a_fresh_ca_and_certificate() {
    assert_eq!(plan(None, &sans_(), t0()), Plan::Fresh);
    let m = fresh();
    assert_eq!(blocks(&m.ca_bundle_pem), 1);
    assert_eq!(
        m.cert_not_after,
        Some((t0() + CERT_VALIDITY).unix_timestamp())
    );
    assert_eq!(m.ca_not_after, Some((t0() + CA_VALIDITY).unix_timestamp()));
    assert_eq!(plan(Some(&m), &sans_(), t0()), Plan::Keep);
}

#[test]
fn the_serving_certificate_is_renewed_well_before_it_ends() {
    let m = fresh();
    let almost = t0() + CERT_VALIDITY - CERT_RENEW_BEFORE;
    assert_eq!(
        plan(Some(&m), &sans_(), almost - Duration::minutes(1)),
        Plan::Keep
    );
    assert_eq!(
        plan(Some(&m), &sans_(), almost + Duration::minutes(1)),
        Plan::Leaf
    );
    let renewed = issue(&Plan::Leaf, Some(&m), &sans_(), almost).expect("renews");
    assert_eq!(
        renewed.ca_bundle_pem, m.ca_bundle_pem,
        "same CA: no caBundle change"
    );
    assert_eq!(renewed.ca_key_pem, m.ca_key_pem);
    assert_ne!(renewed.cert_pem, m.cert_pem);
    assert_eq!(plan(Some(&renewed), &sans_(), almost), Plan::Keep);
}

#[test]
fn changed_names_reissue_the_certificate() {
    let m = fresh();
    let mut other = sans_();
    other.push("10.0.0.7".into());
    assert_eq!(plan(Some(&m), &other, t0()), Plan::Leaf);
    let mut reordered = sans_();
    reordered.reverse();
    assert_eq!(plan(Some(&m), &reordered, t0()), Plan::Keep);
}

#[test]
fn an_ending_ca_is_replaced_and_the_old_one_stays_trusted() {
    let m = fresh();
    let late = t0() + CA_VALIDITY - CA_RENEW_BEFORE + Duration::days(1);
    assert_eq!(plan(Some(&m), &sans_(), late), Plan::Fresh);
    let next = issue(&Plan::Fresh, Some(&m), &sans_(), late).expect("issues");
    assert_eq!(blocks(&next.ca_bundle_pem), 2);
    assert!(next.ca_bundle_pem.ends_with(&m.ca_bundle_pem));
    assert_ne!(next.ca_key_pem, m.ca_key_pem);
    // A third CA drops the oldest: the bundle never grows past two.
    let later = issue(&Plan::Fresh, Some(&next), &sans_(), late).expect("issues");
    assert_eq!(blocks(&later.ca_bundle_pem), 2);
}

#[test]
fn unusable_material_starts_over() {
    let mut m = fresh();
    m.ca_key_pem = None;
    assert_eq!(plan(Some(&m), &sans_(), t0()), Plan::Fresh);
    let mut m = fresh();
    m.ca_not_after = None;
    assert_eq!(plan(Some(&m), &sans_(), t0()), Plan::Fresh);
}

#[test]
fn the_secret_round_trips() {
    let m = fresh();
    let (data, annotations) = m.to_secret_parts();
    let mut secret = Secret {
        data: Some(data),
        ..Default::default()
    };
    secret.metadata.annotations = Some(annotations);
    assert_eq!(Material::from_secret(&secret), Some(m));
    assert!(!managed_by_cert_manager(&secret));
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CERT_MANAGER_ANNOTATION.into(), "webhook".into());
    assert!(managed_by_cert_manager(&secret));
    assert_eq!(Material::from_secret(&Secret::default()), None);
}
