//! The TaskStream's status, computed from the spec, the applied Deployment, the HTTPRoute's
//! acceptance by its Gateways and any problem.
//!
//! Pure, so it is tested without an API server. A condition's `lastTransitionTime` moves only
//! when its status flips: an unchanged world yields a byte-identical status, and the status
//! patch then changes nothing (no new resourceVersion, no watch event, no hot loop).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{TaskStream, TaskStreamStatus};
use crate::resources::route::Acceptance;
use crate::resources::status_url;

/// A problem the user must fix, as shown in the `Degraded` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// CamelCase reason (`SecretNotFound`, `ProgressDeadlineExceeded`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// Whether the TaskStream's current status already shows `problem` (`Degraded=True` with its
/// reason and message).
pub fn shows(ts: &TaskStream, problem: &Problem) -> bool {
    ts.status.iter().flat_map(|s| &s.conditions).any(|c| {
        c.type_ == "Degraded"
            && c.status == "True"
            && c.reason == problem.reason
            && c.message == problem.message
    })
}

/// What the Deployment says about the rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    /// The Deployment's replica count (the autoscaler's, with `spec.autoscaling`).
    pub desired: i32,
    pub ready: i32,
    pub in_progress: bool,
    /// The Deployment's own `Progressing=False` message when its progress deadline passed.
    pub stalled: Option<String>,
}

impl Rollout {
    /// Reads the rollout state of an applied Deployment; `fallback` is the desired count when
    /// the Deployment has none yet.
    pub fn of(deployment: &Deployment, fallback: i32) -> Self {
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(fallback);
        let status = deployment.status.clone().unwrap_or_default();
        let generation = deployment.metadata.generation.unwrap_or(0);
        let observed = status.observed_generation.unwrap_or(0) >= generation;
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let total = status.replicas.unwrap_or(0);
        let stalled = status.conditions.iter().flatten().find_map(|c| {
            (c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .then(|| c.message.clone().unwrap_or_default())
        });
        Self {
            desired,
            ready,
            in_progress: !observed || updated < desired || total > updated || ready < desired,
            stalled,
        }
    }
}

/// The applied HTTPRoute, as the status sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub acceptance: Acceptance,
    /// The URL through the route's Gateway, when it could be worked out.
    pub url: Option<String>,
}

/// The status to apply. `rollout` is `None` when the children could not be applied (a problem
/// stopped the reconcile first); the replica counts then keep their last known values. `route`
/// is the applied HTTPRoute (with `spec.gateway`).
pub fn compute(
    ts: &TaskStream,
    rollout: Option<&Rollout>,
    problem: Option<&Problem>,
    route: Option<&Route>,
    now: Timestamp,
) -> TaskStreamStatus {
    let old = ts.status.clone().unwrap_or_default();
    let generation = ts.metadata.generation;
    let desired = match (rollout, &ts.spec.autoscaling) {
        (Some(r), _) => r.desired,
        (None, Some(_)) => old.replicas.unwrap_or(ts.spec.min_replicas()),
        (None, None) => ts.spec.replicas(),
    };
    let ready = rollout.map(|r| r.ready).or(old.ready_replicas).unwrap_or(0);
    let stalled = rollout
        .and_then(|r| r.stalled.clone())
        .map(|message| Problem {
            reason: "ProgressDeadlineExceeded".into(),
            message: format!("deployment does not progress: {message}"),
        });
    let problem = problem.cloned().or(stalled);
    let in_progress = rollout.is_some_and(|r| r.in_progress);
    // A Gateway refusing the route is the user's to fix, but it blocks no rollout.
    let refused = route.and_then(|r| match &r.acceptance {
        Acceptance::Refused {
            gateway,
            reason,
            message,
        } => Some(Problem {
            reason: "RouteNotAccepted".into(),
            message: format!("gateway {gateway} refused the route: {reason}: {message}"),
        }),
        _ => None,
    });
    let shown = problem.clone().or(refused);

    let (ready_status, ready_reason, ready_message) = match &shown {
        Some(p) => ("False", p.reason.clone(), p.message.clone()),
        None if ready >= desired && !in_progress => (
            "True",
            "AllReplicasReady".into(),
            format!("{ready}/{desired} replicas ready"),
        ),
        None => (
            "False",
            "ReplicasNotReady".into(),
            format!("{ready}/{desired} replicas ready"),
        ),
    };
    let (progressing_status, progressing_reason, progressing_message) = match &problem {
        Some(p) => (
            "False",
            p.reason.clone(),
            format!("rollout blocked: {}", p.message),
        ),
        None if in_progress => (
            "True",
            "RollingOut".into(),
            "the deployment is rolling out".into(),
        ),
        None => (
            "False",
            "RolloutComplete".into(),
            "the deployment is up to date".into(),
        ),
    };
    let (degraded_status, degraded_reason, degraded_message) = match &shown {
        Some(p) => ("True", p.reason.clone(), p.message.clone()),
        None => ("False", "AsExpected".into(), "no problem found".into()),
    };

    let condition = |type_: &str, status: &str, reason: String, message: String| {
        condition(&old, generation, now, type_, status, reason, message)
    };

    let mut conditions = vec![
        condition("Ready", ready_status, ready_reason, ready_message),
        condition(
            "Progressing",
            progressing_status,
            progressing_reason,
            progressing_message,
        ),
        condition(
            "Degraded",
            degraded_status,
            degraded_reason,
            degraded_message,
        ),
    ];
    if ts.spec.gateway.is_some() {
        let (status, reason, message) = match route.map(|r| &r.acceptance) {
            None => (
                "Unknown",
                "NotApplied".to_string(),
                "the HTTPRoute is not applied".to_string(),
            ),
            Some(Acceptance::Pending) => (
                "Unknown",
                "Pending".to_string(),
                "no Gateway has reported on the HTTPRoute yet".to_string(),
            ),
            Some(Acceptance::Accepted) => (
                "True",
                "Accepted".to_string(),
                "the Gateways accepted the HTTPRoute".to_string(),
            ),
            Some(Acceptance::Refused {
                gateway,
                reason,
                message,
            }) => (
                "False",
                reason.clone(),
                format!("gateway {gateway}: {message}"),
            ),
        };
        conditions.push(condition("RouteAccepted", status, reason, message));
    }
    // Through the route when its Gateway tells the address; else the in-cluster address (the
    // one URL known to work).
    let url = route
        .and_then(|r| r.url.clone())
        .unwrap_or_else(|| status_url(ts));

    TaskStreamStatus {
        observed_generation: generation,
        replicas: Some(desired),
        ready_replicas: Some(ready),
        replica_summary: Some(format!("{ready}/{desired}")),
        url: Some(url),
        attach: None,
        conditions,
    }
}

/// A condition whose `lastTransitionTime` moves only when its status flips from `old`'s.
pub(crate) fn condition(
    old: &TaskStreamStatus,
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    status: &str,
    reason: String,
    message: String,
) -> Condition {
    let last_transition_time = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

pub mod attach;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("timestamp")
    }

    fn cond<'a>(s: &'a TaskStreamStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(generation);
        d.status = Some(status);
        d
    }

    fn settled(ready: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(ready),
            updated_replicas: Some(ready),
            ready_replicas: Some(ready),
            ..Default::default()
        }
    }

    #[test]
    fn ready_when_all_replicas_are_ready() {
        let ts = TaskStream::test().with_replicas(2);
        let r = Rollout::of(&deployment(2, settled(2)), 2);
        let s = compute(&ts, Some(&r), None, None, at(1));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(s.replica_summary.as_deref(), Some("2/2"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(cond(&s, "Ready").observed_generation, Some(1));
    }

    #[test]
    fn progressing_while_the_deployment_rolls() {
        let ts = TaskStream::test().with_replicas(2);
        let r = Rollout::of(&deployment(3, settled(2)), 2);
        let s = compute(&ts, Some(&r), None, None, at(1));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn stalled_rollout_is_degraded() {
        let mut st = settled(0);
        st.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet shop-1 has timed out progressing.".into()),
            ..Default::default()
        }]);
        let r = Rollout::of(&deployment(2, st), 1);
        let s = compute(&TaskStream::test(), Some(&r), None, None, at(1));
        let d = cond(&s, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ProgressDeadlineExceeded")
        );
        assert!(d.message.contains("timed out"));
    }

    #[test]
    fn a_problem_keeps_the_last_known_counts() {
        let mut ts = TaskStream::test();
        let r = Rollout::of(&deployment(2, settled(1)), 1);
        ts.status = Some(compute(&ts, Some(&r), None, None, at(1)));
        let p = Problem {
            reason: "SecretNotFound".into(),
            message: "secret redis not found".into(),
        };
        let s = compute(&ts, None, Some(&p), None, at(5));
        assert_eq!(s.ready_replicas, Some(1));
        let d = cond(&s, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "SecretNotFound")
        );
        assert_eq!(d.last_transition_time, Time(at(5)));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut ts = TaskStream::test();
        let r = Rollout::of(&deployment(2, settled(1)), 1);
        let first = compute(&ts, Some(&r), None, None, at(1));
        ts.status = Some(first.clone());
        let again = compute(&ts, Some(&r), None, None, at(99));
        assert_eq!(first, again, "same world, same status");
        let rolling = Rollout::of(&deployment(3, settled(1)), 1);
        let next = compute(&ts, Some(&rolling), None, None, at(99));
        assert_eq!(cond(&next, "Ready").last_transition_time, Time(at(99)));
        assert_eq!(cond(&next, "Degraded").last_transition_time, Time(at(1)));
    }
}
