//! Specs the API server must refuse (schema ranges, patterns, CEL rules), sent as dry runs.

use super::*;

/// Specs the CRD's schema (ranges, patterns, CEL) must refuse. Sent as dry runs: nothing stays.
pub async fn refused_specs(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let base = full_spec();
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let mut both = base.clone();
    both["redis"]["url"] = json!("redis://x:6379");
    cases.push((
        "both redis url and urlSecretRef",
        both,
        "exactly one of redis.url",
    ));
    let mut neither = base.clone();
    neither["redis"] = json!({});
    cases.push(("no redis url", neither, "exactly one of redis.url"));
    let mut jwt_no_key = base.clone();
    jwt_no_key["auth"] = json!({"mode": "jwt"});
    cases.push(("jwt without a key", jwt_no_key, "auth.mode jwt needs"));
    let mut port = base.clone();
    port["app"]["port"] = json!(70000);
    cases.push(("port out of range", port, "65535"));
    let mut clash = base.clone();
    clash["app"]["port"] = json!(8080);
    cases.push(("port of the sidecar", clash, "must not be 8080 or 9090"));
    let mut path = base.clone();
    path["websocket"] = json!({"path": "ws/tasks"});
    cases.push(("relative websocket path", path, "should match '^/'"));
    let mut replicas = base.clone();
    replicas["replicas"] = json!(-1);
    cases.push((
        "negative replicas",
        replicas,
        "should be greater than or equal to 0",
    ));

    let mut both_routes = base.clone();
    both_routes["gateway"] = json!({"parentRefs": [{"name": "public"}]});
    cases.push((
        "gateway and ingress",
        both_routes,
        "set only one of gateway and ingress",
    ));
    let mut scaled = base.clone();
    scaled["autoscaling"] = json!({"maxReplicas": 4});
    cases.push((
        "replicas and autoscaling",
        scaled,
        "set only one of replicas and autoscaling",
    ));
    let mut inverted = base.clone();
    inverted.as_object_mut().map(|s| s.remove("replicas"));
    inverted["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
    cases.push((
        "minReplicas above maxReplicas",
        inverted,
        "must not exceed autoscaling.maxReplicas",
    ));
    let mut ha = base.clone();
    ha["redis"]["sentinel"] = json!({"hosts": ["s1:26379"], "masterName": "m"});
    ha["redis"]["cluster"] = json!(true);
    cases.push((
        "sentinel and cluster",
        ha,
        "set only one of redis.sentinel and redis.cluster",
    ));
    let mut host = base.clone();
    host["redis"]["sentinel"] = json!({"hosts": ["s1"], "masterName": "m"});
    cases.push(("sentinel host without port", host, "should match"));
    let mut hostname = base.clone();
    hostname.as_object_mut().map(|s| s.remove("ingress"));
    hostname["gateway"] =
        json!({"parentRefs": [{"name": "public"}], "hostnames": ["Shop_Example"]});
    cases.push(("invalid route hostname", hostname, "should match"));
    let mut history = base.clone();
    history["history"] = json!({"size": 10001});
    cases.push((
        "history size out of range",
        history,
        "should be less than or equal to 10000",
    ));

    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(USER.into()),
    };
    for (what, spec, expected) in cases {
        let ts: TaskStream = match serde_json::from_value(manifest("invalid", spec.clone())) {
            Ok(ts) => ts,
            // Some invalid specs (a negative u32) cannot even be typed; send those untyped.
            Err(_) => {
                let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    ns,
                    &kube::api::ApiResource::erase::<TaskStream>(&()),
                );
                let obj: kube::api::DynamicObject =
                    serde_json::from_value(manifest("invalid", spec))?;
                check_refused(what, expected, raw.create(&dry_run, &obj).await.map(|_| ()))?;
                continue;
            }
        };
        check_refused(what, expected, tss.create(&dry_run, &ts).await.map(|_| ()))?;
    }
    Ok(())
}

fn check_refused(what: &str, expected: &str, result: Result<(), kube::Error>) -> Result<()> {
    match result {
        Ok(()) => bail!("{what}: accepted, expected refusal mentioning {expected:?}"),
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.code == 422,
                "{what}: expected 422 Invalid, got {}: {}",
                status.code,
                status.message
            );
            ensure!(
                status.message.contains(expected),
                "{what}: refusal does not mention {expected:?}: {}",
                status.message
            );
            Ok(())
        }
        Err(e) => bail!("{what}: {e}"),
    }
}
