//! Runs the real `caliper` binary as a user would and reads its `--json` answer.

use serde_json::Value;

/// Runs the real `caliper` binary with `args`, asserts success and parses its stdout as JSON.
pub fn caliper_json<I, S>(args: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
