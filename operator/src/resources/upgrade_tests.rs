//! Upgrades must not roll pods whose spec did not change. `fixtures/pod-templates/<release>/`
//! keeps, per example, the TaskStream and the pod template that release rendered; the current
//! code must render the same template from the same TaskStream and the same sidecar image.
//! Any difference (an annotation, a hash, the order of the sidecar's environment, a default
//! spelled out) changes `spec.template`, and the Deployment controller then replaces every pod,
//! closing every WebSocket.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Params, build};
use crate::crd::TaskStream;

/// The default sidecar image of the release the fixtures were rendered with: the image is part
/// of the template (a new default image does roll the pods; the chart's `sidecar.image` pins it).
fn release_params(release: &str) -> Params {
    Params {
        sidecar_image: format!("ghcr.io/taskstream/taskstream-sidecar:{release}"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fixture {
    task_stream: TaskStream,
    pod_template: Value,
}

fn fixtures() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pod-templates");
    let mut found = Vec::new();
    for release in std::fs::read_dir(&root).expect("fixtures/pod-templates") {
        let release = release.expect("release dir").path();
        let name = release
            .file_name()
            .and_then(|n| n.to_str())
            .expect("release name")
            .to_string();
        for file in std::fs::read_dir(&release).expect("release fixtures") {
            found.push((name.clone(), file.expect("fixture").path()));
        }
    }
    found.sort();
    found
}

fn load(path: &Path) -> Vec<Fixture> {
    let text = std::fs::read_to_string(path).expect("fixture");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Fixture::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The current rendering of `ts`'s pod template, as JSON.
fn render(ts: &TaskStream, params: &Params) -> Value {
    let mut ts = ts.clone();
    ts.metadata
        .namespace
        .get_or_insert_with(|| "examples".into());
    let children = build(&ts, params, None).expect("builds");
    let template = &children.deployment.spec.expect("deployment spec").template;
    serde_json::to_value(template).expect("json")
}

/// Paths where `got` and `want` differ, for a message that says what would roll the pods.
fn differences(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let keys: std::collections::BTreeSet<_> = g.keys().chain(w.keys()).collect();
            for k in keys {
                let (gv, wv) = (
                    g.get(k).unwrap_or(&Value::Null),
                    w.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{k}"), gv, wv, out);
            }
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                differences(&format!("{path}[{i}]"), gv, wv, out);
            }
        }
        _ if got != want => out.push(format!("{path}: was {want}, now {got}")),
        _ => {}
    }
}

#[test]
fn an_unchanged_spec_renders_the_previous_releases_pod_template() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 11, "a fixture per example: {fixtures:?}");
    let mut rolls = Vec::new();
    for (release, path) in &fixtures {
        for fixture in load(path) {
            let got = render(&fixture.task_stream, &release_params(release));
            let mut diff = Vec::new();
            differences("template", &got, &fixture.pod_template, &mut diff);
            if !diff.is_empty() {
                rolls.push(format!(
                    "{} ({}): {}",
                    path.display(),
                    fixture.task_stream.metadata.name.as_deref().unwrap_or("?"),
                    diff.join("; ")
                ));
            }
        }
    }
    assert!(
        rolls.is_empty(),
        "upgrading from these releases would roll pods whose spec did not change:\n{}",
        rolls.join("\n")
    );
}

/// The check is not vacuous: what runs in the pod changing does change the template.
#[test]
fn a_changed_spec_or_sidecar_image_does_roll() {
    let (release, path) = fixtures().into_iter().next().expect("a fixture");
    let fixture = load(&path).into_iter().next().expect("a document");
    let params = release_params(&release);
    assert_eq!(render(&fixture.task_stream, &params), fixture.pod_template);

    let mut changed = fixture.task_stream.clone();
    changed
        .spec
        .app
        .as_mut()
        .expect("an owned-mode fixture")
        .image
        .push_str("-next");
    assert_ne!(render(&changed, &params), fixture.pod_template);

    let newer = Params {
        sidecar_image: "ghcr.io/taskstream/taskstream-sidecar:9.9.9".into(),
    };
    assert_ne!(render(&fixture.task_stream, &newer), fixture.pod_template);
}
