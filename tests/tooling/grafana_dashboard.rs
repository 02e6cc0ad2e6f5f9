//! The Grafana dashboard `docs/deploy/grafana/caliper.json` (issue 21) is parsed and checked, so
//! that it cannot silently rot: every panel is well-formed and reads the `datasource` variable,
//! every metric its queries name is one the server exports (`src/serve/prometheus.rs`) or a
//! recording rule of `docs/deploy/prometheus/caliper-rules.yml`, the fleet ECE is on it, and
//! every query is valid PromQL to Prometheus's own `promtool`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = root().join("docs/deploy/grafana/caliper.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every query of every panel.
fn queries(d: &Value) -> Vec<String> {
    panels(d)
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect()
}

/// Identifiers in `expr` that start with `caliper` (metric names and recording rules); label
/// values inside quotes are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_quotes = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("caliper") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

fn recording_rules() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(root().join("docs/deploy/prometheus/caliper-rules.yml")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    v["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn panels_are_well_formed_and_read_the_datasource_variable() {
    let d = dashboard();
    assert_eq!(d["uid"].as_str(), Some("caliper"));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "model"]);
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} repeats");
        let title = p["title"].as_str().unwrap();
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: {pos}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn every_metric_it_queries_is_exported_or_recorded() {
    let d = dashboard();
    let source = std::fs::read_to_string(root().join("src/serve/prometheus.rs")).unwrap();
    let rules = recording_rules();
    let mut seen = BTreeSet::new();
    for q in queries(&d) {
        for name in metric_names(&q) {
            let known = if name.contains(':') {
                rules.contains(&name)
            } else {
                // Histograms are queried through their _bucket, _sum and _count series.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| source.contains(&format!("\"{b}\"")))
                    .unwrap_or(&name);
                source.contains(&format!("\"{base}\""))
            };
            assert!(
                known,
                "{name} (in {q}) is neither exported by src/serve/prometheus.rs nor recorded by \
                 docs/deploy/prometheus/caliper-rules.yml"
            );
            seen.insert(name);
        }
    }
    for wanted in [
        "caliper:calibration_ece:fleet_1h",
        "caliper:calibration_ece:fleet_total",
        "caliper_ood_flagged_total",
        "caliper_abstained_total",
        "caliper_predictions_total",
        "caliper_request_duration_seconds_bucket",
    ] {
        assert!(seen.contains(wanted), "the dashboard shows no {wanted}");
    }
}

#[test]
fn every_query_is_valid_promql() {
    let d = dashboard();
    // Grafana's variables as Prometheus would receive them after substitution.
    let rules: Vec<serde_json::Value> = queries(&d)
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let expr = q.replace("$__rate_interval", "1m").replace("$model", ".*");
            serde_json::json!({"record": format!("grafana:query:{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "grafana", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("queries.yml");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .expect(
            "promtool is needed (Debian package prometheus): run scripts/install-test-deps.sh \
             or apt-get install prometheus",
        );
    assert!(
        out.status.success(),
        "promtool refused a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
