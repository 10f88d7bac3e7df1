//! The dashboard's structure: the rules of Grafana's own schema for the schemaVersion it
//! declares (variables, panel ids and types, the 24-column grid, datasources, targets).

use std::collections::BTreeSet;

use serde_json::Value;

/// The schemaVersion the dashboard is written for (Grafana 10.4 / 11).
const SCHEMA_VERSION: u64 = 39;

/// Structural rules of a Grafana dashboard of the declared schemaVersion (39): what Grafana's
/// own schema (the `Dashboard` kind, schemaVersion 39) requires of what this dashboard uses.
pub(super) fn check_dashboard_structure(d: &Value, problems: &mut Vec<String>) {
    let mut fail = |m: String| problems.push(m);
    if d["schemaVersion"].as_u64() != Some(SCHEMA_VERSION) {
        fail(format!(
            "schemaVersion {}, want {SCHEMA_VERSION}",
            d["schemaVersion"]
        ));
    }
    for key in ["uid", "title"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            fail(format!("dashboard {key} missing"));
        }
    }
    if d["uid"].as_str().is_some_and(|u| u.len() > 40) {
        fail("uid longer than 40 characters".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "namespace", "taskstream"] {
        if !names.contains(want) {
            fail(format!("no template variable {want}"));
        }
    }
    for v in &vars {
        let ok_type = [
            "query",
            "datasource",
            "custom",
            "constant",
            "interval",
            "textbox",
            "adhoc",
        ]
        .contains(&v["type"].as_str().unwrap_or_default());
        if !ok_type {
            fail(format!("variable {}: type {}", v["name"], v["type"]));
        }
        if v["type"] == "query" && v["datasource"]["uid"] != "${datasource}" {
            fail(format!(
                "variable {}: not on the datasource variable",
                v["name"]
            ));
        }
    }
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeSet<(u64, u64)> = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("<untitled>");
        let id = p["id"].as_u64();
        if !id.is_some_and(|id| ids.insert(id)) {
            fail(format!("panel {title}: id missing or repeated"));
        }
        let kind = p["type"].as_str().unwrap_or_default();
        if !["row", "timeseries", "stat", "table", "gauge", "text"].contains(&kind) {
            fail(format!("panel {title}: type {kind:?}"));
        }
        let g = &p["gridPos"];
        let (Some(x), Some(y), Some(w), Some(h)) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        ) else {
            fail(format!("panel {title}: gridPos needs integer x, y, w, h"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            fail(format!(
                "panel {title}: gridPos {g} outside the 24-column grid"
            ));
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if !cells.insert((cx, cy)) {
                    fail(format!(
                        "panel {title}: overlaps another panel at ({cx},{cy})"
                    ));
                }
            }
        }
        if kind == "row" {
            continue;
        }
        if p["datasource"] != serde_json::json!({"type": "prometheus", "uid": "${datasource}"}) {
            fail(format!(
                "panel {title}: datasource is not the prometheus ${{datasource}} ref"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            fail(format!("panel {title}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for t in &targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| ref_ids.insert(r.to_owned()))
            {
                fail(format!("panel {title}: refId missing or repeated"));
            }
            if t["datasource"] != p["datasource"] {
                fail(format!("panel {title}: a target on another datasource"));
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            // Every variable a query uses is defined (or one of Grafana's own `$__...`).
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.starts_with("__") && !names.contains(name.as_str()) {
                    fail(format!("panel {title}: ${name} is no template variable"));
                }
            }
            // Sidecar series are filtered by the dashboard's variables.
            if expr.contains("taskstream_") && !expr.contains("taskstream_operator_") {
                for var in ["$namespace", "$taskstream"] {
                    if !expr.contains(var) {
                        fail(format!("panel {title}: {expr} ignores {var}"));
                    }
                }
            }
        }
    }
}
