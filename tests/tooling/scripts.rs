//! The shell tooling a user runs before anything else: `scripts/fetch-data.sh` finds CIFAR-10 and
//! PneumoniaMNIST through `CALIPER_DATA_MIRROR` (or downloads them), checks a pinned checksum,
//! writes into `CALIPER_DATA_DIR` and fails with one clear line; the benchmark scripts end with one
//! JSON line even when a section fails. Runs the scripts themselves, no benchmark and no network
//! (`CALIPER_DATA_OFFLINE=1` throughout).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CIFAR10: &str = "cifar10-jpg.tar.gz";
const PNEUMONIA: &str = "pneumoniamnist.npz";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder holding the real archives: `CALIPER_DATA_MIRROR`, else `../shared/data` beside the
/// repository (the same default as `scripts/fetch-data.sh`).
fn archives() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(m) = std::env::var_os("CALIPER_DATA_MIRROR").filter(|m| !m.is_empty()) {
        candidates.push(PathBuf::from(m));
    }
    candidates.push(root().join("../shared/data"));
    candidates
        .iter()
        .find(|d| d.join(CIFAR10).is_file() && d.join(PNEUMONIA).is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no folder holds {CIFAR10} and {PNEUMONIA} (looked in {candidates:?}): set \
                 CALIPER_DATA_MIRROR to the folder with the dataset archives (docs/DATA.md)"
            )
        })
}

/// Runs `scripts/fetch-data.sh SETS...` with the given mirror into `data_dir`, never downloading.
fn fetch(mirror: &Path, data_dir: &Path, sets: &[&str]) -> Output {
    Command::new("timeout")
        .arg("300")
        .arg(root().join("scripts/fetch-data.sh"))
        .args(sets)
        .env("CALIPER_DATA_MIRROR", mirror)
        .env("CALIPER_DATA_DIR", data_dir)
        .env("CALIPER_DATA_OFFLINE", "1")
        .output()
        .expect("run scripts/fetch-data.sh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(bytes: &[u8]) -> Vec<String> {
    text(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                usize::from(p.extension().is_some_and(|e| e == ext))
            }
        })
        .sum()
}

#[test]
fn fetch_data_reads_the_mirror_named_by_caliper_data_mirror_into_caliper_data_dir() {
    let src = archives();
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    std::fs::create_dir(&mirror).unwrap();
    for name in [CIFAR10, PNEUMONIA] {
        std::os::unix::fs::symlink(src.join(name).canonicalize().unwrap(), mirror.join(name))
            .unwrap();
    }
    let data = tmp.path().join("data");
    let out = fetch(&mirror, &data, &["pneumonia", "cifar10"]);
    assert!(
        out.status.success(),
        "fetch-data.sh failed: {}",
        text(&out.stderr)
    );
    let npz = data.join(PNEUMONIA);
    assert_eq!(
        std::fs::metadata(&npz).map(|m| m.len()).ok(),
        Some(std::fs::metadata(src.join(PNEUMONIA)).unwrap().len()),
        "{npz:?} is not the mirror's copy"
    );
    assert_eq!(count_files(&data.join("cifar10/test"), "jpg"), 10_000);
    assert_eq!(count_files(&data.join("cifar10/train"), "jpg"), 50_000);
    assert_eq!(count_files(&data.join("cifar10/test/truck"), "jpg"), 1_000);
    // Nothing half-done left beside the sets.
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cifar10", PNEUMONIA]);
    // Idempotent: a second run finds the sets in place and needs no source.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let again = fetch(&tmp.path().join("empty"), &data, &["pneumonia", "cifar10"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
}

#[test]
fn fetch_data_without_a_source_fails_with_one_line_naming_caliper_data_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (set, archive) in [("cifar10", CIFAR10), ("pneumonia", PNEUMONIA)] {
        let data = tmp.path().join(format!("data-{set}"));
        let out = fetch(&empty, &data, &[set]);
        assert!(!out.status.success(), "{set}: succeeded with no source");
        let err = lines(&out.stderr);
        assert_eq!(err.len(), 1, "{set}: expected one line, got {err:#?}");
        assert!(
            err[0].starts_with("error: ")
                && err[0].contains("CALIPER_DATA_MIRROR")
                && err[0].contains(archive),
            "{set}: {}",
            err[0]
        );
        assert_eq!(count_files(&data, "jpg") + count_files(&data, "npz"), 0);
    }
    // A mirror that is not a folder is named as such, in one line.
    let out = fetch(
        &tmp.path().join("no-such-folder"),
        &tmp.path().join("d"),
        &["pneumonia"],
    );
    let err = lines(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.len() == 1 && err[0].contains("CALIPER_DATA_MIRROR") && err[0].contains("not a folder"),
        "{err:#?}"
    );
}

#[test]
fn fetch_data_rejects_an_archive_that_does_not_match_its_pinned_checksum() {
    let src = archives();
    let tmp = tempfile::tempdir().unwrap();
    for (set, archive) in [("pneumonia", PNEUMONIA), ("cifar10", CIFAR10)] {
        let mirror = tmp.path().join(format!("mirror-{set}"));
        std::fs::create_dir(&mirror).unwrap();
        let mut bytes = std::fs::read(src.join(archive)).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(mirror.join(archive), &bytes).unwrap();
        let data = tmp.path().join(format!("data-{set}"));
        let out = fetch(&mirror, &data, &[set]);
        assert!(
            !out.status.success(),
            "{set}: a corrupted {archive} was accepted"
        );
        let err = lines(&out.stderr);
        assert_eq!(err.len(), 1, "{set}: expected one line, got {err:#?}");
        assert!(
            err[0].starts_with("error: checksum mismatch") && err[0].contains(archive),
            "{set}: {}",
            err[0]
        );
        assert_eq!(count_files(&data, "jpg") + count_files(&data, "npz"), 0);
        assert!(!data.join("cifar10").exists());
    }
}

/// A PATH with no `wrk` on it: directories that hold one are replaced by a folder of links to
/// everything else they hold.
fn path_without_wrk(scratch: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs = Vec::new();
    for (i, dir) in std::env::split_paths(&path).enumerate() {
        if !dir.join("wrk").exists() {
            dirs.push(dir);
            continue;
        }
        let shadow = scratch.join(format!("path{i}"));
        std::fs::create_dir_all(&shadow).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "wrk" {
                let _ = std::os::unix::fs::symlink(entry.path(), shadow.join(entry.file_name()));
            }
        }
        dirs.push(shadow);
    }
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

fn last_json_line(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no stdout at all; stderr:\n{}", text(&out.stderr)));
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last stdout line is not JSON ({e}): {last}\nstderr:\n{}",
            text(&out.stderr)
        )
    })
}

#[test]
fn bench_serve_without_wrk_still_ends_with_one_json_line_naming_the_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(root().join("scripts/bench-serve.sh"))
        .env("PATH", path_without_wrk(tmp.path()))
        .env_remove("WRK")
        .output()
        .expect("run scripts/bench-serve.sh");
    assert!(
        !out.status.success(),
        "bench-serve.sh succeeded without wrk"
    );
    assert_ne!(out.status.code(), Some(124), "bench-serve.sh ran past 60 s");
    let v = last_json_line(&out);
    assert_eq!(v["benchmark"], "serve", "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let failures = v["failures"].as_array().expect("failures is a list");
    assert_eq!(failures.len(), 1, "{v}");
    assert_eq!(failures[0]["section"], "setup", "{v}");
    assert!(
        failures[0]["error"].as_str().unwrap().contains("wrk"),
        "{v}"
    );
    assert_eq!(v["sections"]["setup"]["status"], "failed", "{v}");
    assert_eq!(v["sections"]["server"]["status"], "skipped", "{v}");
}

#[test]
fn a_benchmark_section_that_fails_is_recorded_in_the_last_json_line() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("bench.sh");
    std::fs::write(
        &script,
        format!(
            r#"set -euo pipefail
source '{}'
bench_init demo first second third
bench_section first
echo "a table row"
bench_record first '{{"images_per_s": 12.5}}'
bench_section second
ls /nonexistent-caliper-path >/dev/null 2>&1
echo unreachable
"#,
            root().join("scripts/bench-lib.sh").display()
        ),
    )
    .unwrap();
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("unreachable"));
    let v = last_json_line(&out);
    assert_eq!(v["benchmark"], "demo", "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["sections"]["first"]["status"], "ok", "{v}");
    assert_eq!(v["sections"]["first"]["images_per_s"], 12.5, "{v}");
    assert_eq!(v["sections"]["second"]["status"], "failed", "{v}");
    assert_eq!(v["sections"]["third"]["status"], "skipped", "{v}");
    assert_eq!(v["failures"][0]["section"], "second", "{v}");
    assert!(
        v["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ls /nonexistent-caliper-path"),
        "{v}"
    );
}
