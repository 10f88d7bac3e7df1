//! The TaskStream's status, computed from the spec, the applied Deployment and any problem.
//!
//! Pure, so it is tested without an API server. A condition's `lastTransitionTime` moves only
//! when its status flips: an unchanged world yields a byte-identical status, and the status
//! patch then changes nothing (no new resourceVersion, no watch event, no hot loop).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{TaskStream, TaskStreamStatus};
use crate::resources::status_url;

/// A problem the user must fix, as shown in the `Degraded` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// CamelCase reason (`SecretNotFound`, `ProgressDeadlineExceeded`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// What the Deployment says about the rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    pub ready: i32,
    pub in_progress: bool,
    /// The Deployment's own `Progressing=False` message when its progress deadline passed.
    pub stalled: Option<String>,
}

impl Rollout {
    /// Reads the rollout state of an applied Deployment.
    pub fn of(deployment: &Deployment, desired: i32) -> Self {
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
            ready,
            in_progress: !observed || updated < desired || total > updated || ready < desired,
            stalled,
        }
    }
}

/// The status to apply. `rollout` is `None` when the children could not be applied (a problem
/// stopped the reconcile first); the replica counts then keep their last known values.
pub fn compute(
    ts: &TaskStream,
    rollout: Option<&Rollout>,
    problem: Option<&Problem>,
    now: Timestamp,
) -> TaskStreamStatus {
    let old = ts.status.clone().unwrap_or_default();
    let generation = ts.metadata.generation;
    let desired = ts.spec.replicas();
    let ready = rollout.map(|r| r.ready).or(old.ready_replicas).unwrap_or(0);
    let stalled = rollout
        .and_then(|r| r.stalled.clone())
        .map(|message| Problem {
            reason: "ProgressDeadlineExceeded".into(),
            message: format!("deployment does not progress: {message}"),
        });
    let problem = problem.cloned().or(stalled);
    let in_progress = rollout.is_some_and(|r| r.in_progress);

    let (ready_status, ready_reason, ready_message) = match &problem {
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
    let (degraded_status, degraded_reason, degraded_message) = match &problem {
        Some(p) => ("True", p.reason.clone(), p.message.clone()),
        None => ("False", "AsExpected".into(), "no problem found".into()),
    };

    let condition = |type_: &str, status: &str, reason: String, message: String| {
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
    };

    TaskStreamStatus {
        observed_generation: generation,
        replicas: Some(desired),
        ready_replicas: Some(ready),
        replica_summary: Some(format!("{ready}/{desired}")),
        url: Some(status_url(ts)),
        conditions: vec![
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
        ],
    }
}

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
        let s = compute(&ts, Some(&r), None, at(1));
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
        let s = compute(&ts, Some(&r), None, at(1));
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
        let s = compute(&TaskStream::test(), Some(&r), None, at(1));
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
        ts.status = Some(compute(&ts, Some(&r), None, at(1)));
        let p = Problem {
            reason: "SecretNotFound".into(),
            message: "secret redis not found".into(),
        };
        let s = compute(&ts, None, Some(&p), at(5));
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
        let first = compute(&ts, Some(&r), None, at(1));
        ts.status = Some(first.clone());
        let again = compute(&ts, Some(&r), None, at(99));
        assert_eq!(first, again, "same world, same status");
        let rolling = Rollout::of(&deployment(3, settled(1)), 1);
        let next = compute(&ts, Some(&rolling), None, at(99));
        assert_eq!(cond(&next, "Ready").last_transition_time, Time(at(99)));
        assert_eq!(cond(&next, "Degraded").last_transition_time, Time(at(1)));
    }
}
