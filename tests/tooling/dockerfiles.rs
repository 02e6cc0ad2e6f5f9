//! The two container images, `Dockerfile` (CPU) and `Dockerfile.cuda` (GPU), are parsed and
//! compared, so that the GPU image cannot drift from the CPU one: both are multi-stage, run as
//! the same non-root user with the same entry point, health check and stop signal, set only
//! variables `caliper serve` reads, and ship ONNX Runtime next to the binary. The GPU image's
//! own promises are checked too: a CUDA 13 + cuDNN 9 runtime base, the GPU build of ONNX Runtime
//! with its CUDA provider, `--device cuda:0` by default. No Docker is needed.

use std::collections::BTreeMap;
use std::path::Path;

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
type Instruction = (String, String);

fn parse(name: &str) -> Vec<Instruction> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (k, rest) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                out.push((
                    k.to_string(),
                    rest.split_whitespace().collect::<Vec<_>>().join(" "),
                ));
                current.clear();
            }
        }
    }
    assert!(current.is_empty(), "{name} ends inside a continued line");
    const KNOWN: [&str; 15] = [
        "FROM",
        "RUN",
        "COPY",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "ENTRYPOINT",
        "CMD",
        "VOLUME",
        "LABEL",
        "ADD",
    ];
    for (k, _) in &out {
        assert!(
            KNOWN.contains(&k.as_str()),
            "{name}: unknown instruction {k}"
        );
    }
    out
}

/// The instructions of the final stage.
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let last = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    &all[last..]
}

fn one<'a>(stage: &'a [Instruction], key: &str) -> &'a str {
    let found: Vec<&str> = stage
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{key}: {found:?}");
    found[0]
}

/// `ENV` of a stage as name -> value (both `A=1 B=2` forms on one instruction).
fn env(stage: &[Instruction]) -> BTreeMap<String, String> {
    stage
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, v)| v.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_gpu_image_matches_the_cpu_image_where_it_should() {
    let (cpu, gpu) = (parse("Dockerfile"), parse("Dockerfile.cuda"));
    for (name, all) in [("Dockerfile", &cpu), ("Dockerfile.cuda", &gpu)] {
        let froms: Vec<&str> = all
            .iter()
            .filter(|(k, _)| k == "FROM")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            froms.len() >= 2 && froms[0].ends_with(" AS build"),
            "{name}: {froms:?}"
        );
        let fin = final_stage(all);
        assert!(
            fin.iter().any(|(k, v)| k == "COPY"
                && v.starts_with("--from=build ")
                && v.contains("caliper ")),
            "{name}: the binary is not copied from the build stage"
        );
        assert_eq!(one(fin, "USER"), "caliper", "{name}");
        assert!(
            fin.iter()
                .any(|(k, v)| k == "RUN" && v.contains("useradd --system --uid 10001")),
            "{name}: no non-root user"
        );
    }
    let (c, g) = (final_stage(&cpu), final_stage(&gpu));
    for key in [
        "ENTRYPOINT",
        "CMD",
        "STOPSIGNAL",
        "EXPOSE",
        "WORKDIR",
        "VOLUME",
    ] {
        assert_eq!(one(c, key), one(g, key), "{key}");
    }
    // Same probe; the GPU image may give its warm-up a longer start period.
    let probe = |h: &str| h.split_once(" CMD ").unwrap().1.to_string();
    assert_eq!(probe(one(c, "HEALTHCHECK")), probe(one(g, "HEALTHCHECK")));
    let (ce, ge) = (env(c), env(g));
    for (k, v) in &ce {
        assert_eq!(ge.get(k), Some(v), "ENV {k}");
    }
    // Every variable set is one `caliper serve` reads.
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/serve/config.rs"))
            .unwrap();
    for k in ge.keys().filter(|k| *k != "CALIPER_LOG_JSON") {
        assert!(
            config.contains(&format!("env = \"{k}\"")),
            "ENV {k} is read by nobody"
        );
    }
    assert_eq!(ge["CALIPER_DEVICE"], "cuda:0");
}

#[test]
fn the_gpu_image_runs_onnx_runtimes_gpu_build_on_cuda_13_and_cudnn_9() {
    let gpu = parse("Dockerfile.cuda");
    let base = gpu
        .iter()
        .find(|(k, v)| k == "ARG" && v.starts_with("CUDA_IMAGE="))
        .map(|(_, v)| v.trim_start_matches("CUDA_IMAGE=").to_string())
        .unwrap();
    assert!(
        base.starts_with("nvidia/cuda:13.") && base.contains("-cudnn-runtime-"),
        "{base}"
    );
    assert_eq!(one(final_stage(&gpu), "FROM"), "${CUDA_IMAGE}");
    let build = &gpu[..gpu.iter().rposition(|(k, _)| k == "FROM").unwrap()];
    assert!(
        build
            .iter()
            .any(|(k, v)| k == "RUN" && v.contains("scripts/fetch-onnxruntime.sh --cuda"))
    );
    assert_eq!(
        env(build).get("CALIPER_CUDA").map(String::as_str),
        Some("1")
    );
    let all_runs: String = build
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, v)| v.as_str())
        .collect();
    for lib in [
        "libonnxruntime.so",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
    ] {
        assert!(
            all_runs.contains(&format!("onnxruntime-cuda/lib/{lib}")),
            "{lib} not shipped"
        );
    }
}
