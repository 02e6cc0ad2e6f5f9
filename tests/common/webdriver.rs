//! A real headless Chromium driven over W3C WebDriver (chromedriver), for the dashboard test.
//! WebDriver is plain HTTP + JSON, so a few `reqwest` calls replace a client crate. Needs the
//! Debian packages `chromium` and `chromium-driver` (scripts/install-test-deps.sh installs them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// How to get the browser when it is missing.
const INSTALL: &str = "the dashboard test needs a headless Chromium and its WebDriver: run \
                       scripts/install-test-deps.sh (as root), or apt-get install chromium \
                       chromium-driver";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// A browser session; the session and chromedriver end when it is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    client: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium window of `width` x
    /// `height` that records console messages. Panics, saying how to install them, when either
    /// program is missing.
    pub async fn start(width: u32, height: u32) -> Self {
        let driver_bin = which(&["chromedriver"]).unwrap_or_else(|| panic!("{INSTALL}"));
        let chromium = which(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("{INSTALL}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match client.get(format!("{base}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // --no-sandbox: test machines run as root, where Chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={width},{height}")],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let resp: Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {resp}"))
            .to_string();
        Self {
            driver,
            port,
            session,
            client,
        }
    }

    /// One WebDriver command on the session; returns its `value`, panics on a WebDriver error.
    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        );
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = resp["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", resp["value"]["message"]);
        }
        resp["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The WebDriver id of the first element matching `css`.
    pub async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        // The W3C element reference key.
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `textContent` of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls `probe` (every 100 ms, up to `secs` seconds) until it returns Some.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, secs: u64, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Chooses the local file `path` in the `<input type=file>` matching `css`.
    pub async fn choose_file(&self, css: &str, path: &Path) {
        let id = self.find(css).await;
        let text = path.to_str().unwrap();
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// Resizes the window to show the whole page, then writes a PNG of it to `path`.
    pub async fn screenshot_page(&self, path: &Path, width: u32) {
        // The window's height is the page's plus what the window keeps for itself.
        let height = self
            .execute(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap();
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        write_png(path, &png);
    }

    /// Writes a PNG of the element matching `css` to `path`.
    pub async fn screenshot_element(&self, css: &str, path: &Path) {
        let id = self.find(css).await;
        let png = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{id}/screenshot"),
                None,
            )
            .await;
        write_png(path, &png);
    }

    /// Console messages (and failed loads) logged since the last call, as "LEVEL message".
    pub async fn console(&self) -> Vec<String> {
        self.post("/se/log", json!({"type": "browser"}))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]))
            .collect()
    }
}

fn write_png(path: &Path, base64_png: &Value) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_png.as_str().unwrap())
        .unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so that chromedriver closes Chromium (a killed chromedriver would leave
        // it running); Drop cannot await, so this is one blocking HTTP request by hand.
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
