//! The deployment files under `docs/deploy/` are parsed and cross-checked, so that they cannot
//! silently rot: every Kubernetes object is well-formed, the objects refer to each other
//! consistently, the PrometheusRule carries exactly the standalone rule file, and every container
//! command line is accepted by `caliper serve`'s real argument parser.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy")
}

fn documents(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn all_objects() -> Vec<Value> {
    [
        "kubernetes/caliper.yaml",
        "kubernetes/prometheusrule.yaml",
        "kserve/caliper-runtime.yaml",
    ]
    .iter()
    .flat_map(|f| documents(f))
    .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn find<'a>(objs: &'a [Value], k: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == k)
        .unwrap_or_else(|| panic!("no {k} in docs/deploy"))
}

#[test]
fn every_expected_object_is_present_and_well_formed() {
    let objs = all_objects();
    for k in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PrometheusRule",
        "ServingRuntime",
        "InferenceService",
    ] {
        let o = find(&objs, k);
        assert!(
            o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.contains('/') || v == "v1"),
            "{k}"
        );
        assert!(
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{k} has a name"
        );
    }
}

#[test]
fn objects_refer_to_each_other_consistently() {
    let objs = all_objects();
    let dep = find(&objs, "Deployment");
    let name = dep["metadata"]["name"].as_str().unwrap();
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], pod_labels);
    assert_eq!(&find(&objs, "Service")["spec"]["selector"], pod_labels);
    let hpa = find(&objs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"].as_str(), Some(name));
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/v2/health/ready")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/v2/health/live")
    );
    let isvc = find(&objs, "InferenceService");
    let runtime = find(&objs, "ServingRuntime");
    assert_eq!(
        isvc["spec"]["predictor"]["model"]["runtime"],
        runtime["metadata"]["name"]
    );
    assert_eq!(
        isvc["spec"]["predictor"]["model"]["protocolVersion"].as_str(),
        Some("v2")
    );
}

#[test]
fn prometheus_rule_is_exactly_the_standalone_rule_file() {
    let standalone = &documents("prometheus/caliper-rules.yml")[0];
    let objs = all_objects();
    let rule = find(&objs, "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], standalone["groups"]);
    let records: Vec<&str> = standalone["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["record"].as_str())
        .collect();
    assert!(records.contains(&"caliper:calibration_ece:fleet_total"));
    assert!(records.contains(&"caliper:calibration_ece:fleet_1h"));
}

#[test]
fn container_command_lines_are_accepted_by_caliper_serve() {
    use clap::Parser;
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: caliper::cli::serve::ServeArgs,
    }
    let objs = all_objects();
    let mut checked = 0;
    for o in &objs {
        let containers = match kind(o) {
            "Deployment" => &o["spec"]["template"]["spec"]["containers"],
            "ServingRuntime" => &o["spec"]["containers"],
            _ => continue,
        };
        for c in containers.as_sequence().unwrap() {
            let args: Vec<&str> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(args[0], "serve");
            let argv = std::iter::once("caliper").chain(args[1..].iter().copied());
            if let Err(e) = Serve::try_parse_from(argv) {
                panic!("{} args {args:?}: {e}", kind(o));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2);
}
