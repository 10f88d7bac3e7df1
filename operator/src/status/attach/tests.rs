use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("timestamp")
}

/// A pod of Deployment `web` (ReplicaSet `web-abc12`), with the sidecar at `hash` or none.
fn pod(name: &str, hash: Option<&str>, ready: bool) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.labels = Some([("pod-template-hash".to_string(), "abc12".to_string())].into());
    p.metadata.owner_references = Some(vec![OwnerReference {
        kind: "ReplicaSet".into(),
        name: "web-abc12".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    let mut containers = vec![Container {
        name: "web".into(),
        ..Default::default()
    }];
    if let Some(hash) = hash {
        p.metadata.annotations =
            Some([(CONFIG_HASH_ANNOTATION.to_string(), hash.to_string())].into());
        containers.push(Container {
            name: SIDECAR_CONTAINER.into(),
            ..Default::default()
        });
    }
    p.spec = Some(PodSpec {
        containers,
        ..Default::default()
    });
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

fn cond<'a>(
    s: &'a TaskStreamStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition")
}

#[test]
fn census_counts_current_outdated_and_missing_sidecars() {
    let mut gone = pod("c", Some("h1"), true);
    gone.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(1)));
    let pods = [
        pod("a", Some("h1"), true),
        pod("b", Some("h0"), true),
        pod("d", None, true),
        gone,
    ];
    let c = census(&pods, "h1");
    assert_eq!((c.pods, c.up_to_date, c.stale, c.ready), (3, 1, 2, 1));
    assert_eq!(
        c.stale_owners.into_iter().collect::<Vec<_>>(),
        vec![Owner {
            kind: "Deployment".into(),
            name: "web".into()
        }]
    );
}

#[test]
fn owners_fall_back_to_the_direct_owner_and_the_pod() {
    let mut p = pod("x", None, false);
    p.metadata.labels = None;
    assert_eq!(owner_of(&p).to_string(), "replicaset/web-abc12");
    p.metadata.owner_references = None;
    assert_eq!(owner_of(&p).to_string(), "pod/x");
}

#[test]
fn stale_pods_flip_pods_up_to_date_naming_the_workload_and_the_command() {
    let ts = TaskStream::test().attached(8000, None);
    let pods = [pod("a", Some("old"), true), pod("b", Some("new"), true)];
    let s = compute(&ts, Some(&census(&pods, "new")), None, None, at(1));
    let c = cond(&s, "PodsUpToDate");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Stale"));
    assert!(c.message.contains("deployment/web"), "{}", c.message);
    assert!(
        c.message
            .contains("kubectl rollout restart deployment/web -n apps"),
        "{}",
        c.message
    );
    assert_eq!(
        s.attach,
        Some(AttachStatus {
            pods: 2,
            up_to_date: 1,
            stale: 1
        })
    );
    assert_eq!(cond(&s, "Ready").status, "True");

    let fresh = [pod("b", Some("new"), true)];
    let s = compute(&ts, Some(&census(&fresh, "new")), None, None, at(2));
    assert_eq!(cond(&s, "PodsUpToDate").status, "True");
}

#[test]
fn not_ready_without_a_ready_injected_pod_and_counts_kept_on_a_problem() {
    let mut ts = TaskStream::test().attached(8000, None);
    let s = compute(&ts, Some(&census(&[], "h")), None, None, at(1));
    let r = cond(&s, "Ready");
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "NoReadyPods")
    );
    assert!(
        r.message.contains("taskstream.dev/inject: shop"),
        "{}",
        r.message
    );

    let pods = [pod("a", Some("h"), true)];
    ts.status = Some(compute(&ts, Some(&census(&pods, "h")), None, None, at(1)));
    let p = Problem {
        reason: "SecretNotFound".into(),
        message: "secret redis not found".into(),
    };
    let s = compute(&ts, None, Some(&p), None, at(2));
    assert_eq!(s.attach.as_ref().map(|a| a.pods), Some(1));
    assert_eq!(cond(&s, "Ready").reason, "SecretNotFound");
    assert_eq!(cond(&s, "PodsUpToDate").status, "True");
}

#[test]
fn owned_mode_has_no_attach_status() {
    let s = super::super::compute(&TaskStream::test(), None, None, None, at(1));
    assert!(s.attach.is_none());
    assert!(s.conditions.iter().all(|c| c.type_ != "PodsUpToDate"));
}
