//! The skip rule and the lookups, without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DeploymentSpec;
use kube::runtime::watcher;

use super::*;

fn meta(generation: i64, rv: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some("shop".into()),
        namespace: Some("apps".into()),
        uid: Some("u1".into()),
        generation: Some(generation),
        resource_version: Some(rv.into()),
        labels: Some(BTreeMap::from([("app".into(), "shop".into())])),
        ..Default::default()
    }
}

fn desired() -> ObjectMeta {
    ObjectMeta {
        labels: Some(BTreeMap::from([("app".into(), "shop".into())])),
        ..Default::default()
    }
}

#[test]
fn unchanged_only_after_our_apply_of_the_same_object() {
    let (children, _) = Children::new();
    let digest = [1; 32];
    let cached = meta(3, "100");
    assert!(
        !children.unchanged(
            "Deployment",
            &desired(),
            &digest,
            &cached,
            Version::Generation
        ),
        "nothing applied by this process yet"
    );
    children.record("Deployment", digest, &cached, Version::Generation);
    assert!(children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &cached,
        Version::Generation
    ));

    // A status update (new resourceVersion, same generation) keeps a Deployment unchanged...
    let status_update = meta(3, "101");
    assert!(children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &status_update,
        Version::Generation
    ));
    // ...but not a kind compared by resourceVersion.
    children.record("Service", digest, &cached, Version::ResourceVersion);
    assert!(!children.unchanged(
        "Service",
        &desired(),
        &digest,
        &status_update,
        Version::ResourceVersion
    ));

    // Someone edited the spec, or the spec asks for something else, or it is another object.
    assert!(!children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &meta(4, "102"),
        Version::Generation
    ));
    assert!(!children.unchanged(
        "Deployment",
        &desired(),
        &[2; 32],
        &cached,
        Version::Generation
    ));
    let mut recreated = cached.clone();
    recreated.uid = Some("u2".into());
    assert!(!children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &recreated,
        Version::Generation
    ));
    // Someone removed one of our labels (the generation does not move for metadata).
    let mut relabelled = cached.clone();
    relabelled.labels = None;
    assert!(!children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &relabelled,
        Version::Generation
    ));

    children.forget("apps", "shop");
    assert!(!children.unchanged(
        "Deployment",
        &desired(),
        &digest,
        &cached,
        Version::Generation
    ));
}

#[test]
fn lookups_are_unknown_until_the_first_list() {
    let (children, mut writers) = Children::new();
    assert!(matches!(
        lookup(&children.services, "apps", "shop"),
        Cached::Unknown
    ));
    let service = PartialObjectMeta::<Service> {
        metadata: meta(1, "5"),
        ..Default::default()
    };
    writers
        .services
        .apply_watcher_event(&watcher::Event::InitApply(service));
    writers
        .services
        .apply_watcher_event(&watcher::Event::<PartialObjectMeta<Service>>::InitDone);
    assert!(matches!(
        lookup(&children.services, "apps", "shop"),
        Cached::Present(_)
    ));
    assert!(matches!(
        lookup(&children.services, "apps", "other"),
        Cached::Absent
    ));

    // Routes: while the Gateway API is not served none exists, listed or not.
    assert!(matches!(children.route("apps", "shop"), Cached::Unknown));
    children.routes_unserved.store(true, Ordering::Relaxed);
    assert!(matches!(children.route("apps", "shop"), Cached::Absent));
}

#[test]
fn a_cached_deployment_keeps_status_and_replicas_not_the_template() {
    let mut d = Deployment {
        metadata: meta(1, "5"),
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                metadata: Some(desired()),
                spec: None,
            },
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    d.metadata.managed_fields = Some(vec![Default::default()]);
    slim_deployment(&mut d);
    assert_eq!(d.metadata.managed_fields, None);
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.template, Default::default());
    assert!(d.status.is_some());
}
