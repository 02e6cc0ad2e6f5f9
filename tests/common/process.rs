//! A real `caliper serve` process on port 0 for socket-level tests: started with `--log-json`,
//! its address read from the "listening on" log line, its stderr drained for its whole life, and
//! killed when dropped.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A running server.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Log lines written before "listening on".
    pub startup_logs: Vec<String>,
    _logs: mpsc::Receiver<String>,
    /// The feedback-log directory of servers started by [`Server::with_repository`].
    _state: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `caliper --log-json serve --addr 127.0.0.1:0 --sessions-per-model 1 ARGS...` and
    /// waits (up to two minutes) for it to listen.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_binary(Path::new(env!("CARGO_BIN_EXE_caliper")), args)
    }

    /// [`Server::start`] with another `caliper` binary (an older build, to record its answers).
    pub fn start_binary<I, S>(binary: &Path, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(binary)
            .args([
                "--log-json",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--sessions-per-model",
                "1",
            ])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // Keeps draining stderr for the life of the process so that it never blocks on a pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = logs
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("server did not start; log: {seen:#?}"));
            let msg = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
                .unwrap_or_default();
            if let Some(a) = msg.strip_prefix("listening on ") {
                break a.to_string();
            }
            seen.push(line);
        };
        Self {
            child,
            addr,
            startup_logs: seen,
            _logs: logs,
            _state: None,
        }
    }

    /// Serves the repository `models` + `calib` with `extra` flags, its feedback log in a
    /// temporary directory (so that no `state/` folder appears where the tests run).
    pub fn with_repository(models: &Path, calib: &Path, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut args: Vec<&OsStr> = vec!["--models".as_ref(), models.as_os_str()];
        args.extend(["--calib".as_ref(), calib.as_os_str()]);
        args.extend(["--state-dir".as_ref(), state.path().as_os_str()]);
        args.extend(extra.iter().map(OsStr::new));
        let mut server = Self::start(args);
        server._state = Some(state);
        server
    }

    /// Serves a repository folder (`models/` + `calib/`) with its feedback log in `state` and a
    /// fixed `--feedback-key`, so that a restarted process over the same `state` accepts the
    /// first one's prediction ids (the crash and restart tests).
    pub fn with_state_dir(repo: &Path, state: &Path, feedback_key: &str) -> Self {
        Self::start([
            "--models".as_ref(),
            repo.join("models").as_os_str(),
            "--calib".as_ref(),
            repo.join("calib").as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--feedback-key".as_ref(),
            OsStr::new(feedback_key),
        ])
    }

    /// `GET /v1/models/{model}/monitor` as JSON.
    pub async fn monitor(&self, client: &reqwest::Client, model: &str) -> serde_json::Value {
        let url = self.url(&format!("/v1/models/{model}/monitor"));
        client.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// `POST /v1/feedback` of a batch of `{prediction_id, label}` items; the answer as JSON.
    pub async fn feedback(&self, client: &reqwest::Client, items: &[Value]) -> Value {
        let body = serde_json::json!({ "feedback": items });
        let req = client.post(self.url("/v1/feedback")).json(&body);
        req.send().await.unwrap().json().await.unwrap()
    }

    /// `http://host:port` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
